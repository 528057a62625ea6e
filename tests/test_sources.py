"""Data sources beyond class folders: CSV manifests, torchvision's datasets, tar shards.

The same pictures must make the same training batches whatever they are stored as, every rank must
see its own share, and every malformed input must be named in one line.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from imagenet_cli.config import build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.data import shards
from imagenet_cli.data.loaders import (
    build_splits,
    releasing_workers,
    set_position,
    start_early,
    train_loader,
    val_loader,
)
from imagenet_cli.data.sources import data_format, open_splits

from .conftest import TINY_ARCH, load, ok, run_cli, write_image_folder, write_manifests, write_mnist


def _ctx(rank: int = 0, world_size: int = 1) -> DistContext:
    return DistContext(rank, rank, world_size, world_size, torch.device("cpu"))


@pytest.fixture(scope="module")
def three_formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 24 + 8 pictures as class folders, as CSV manifests, and as shards."""
    root = tmp_path_factory.mktemp("formats")
    folders = write_image_folder(
        root / "folders", {"ants": 9, "bees": 8, "wasps": 7}, {"ants": 3, "bees": 3, "wasps": 2}
    )
    manifests = write_manifests(folders, root / "manifests")
    ok(run_cli("make-shards", str(folders), str(root / "shards"), "--shard-size", "20KB"))
    return {"imagefolder": folders, "csv": manifests, "webdataset": root / "shards"}


def _config(path: Path, **extra: object):
    return build_config("train", {"path": str(path), "image_size": 32, **extra}).data


def _epoch(path: Path, workers: int = 0, **loader: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    splits = build_splits(_config(path), with_train=True)
    batches = train_loader(splits.train, _ctx(), batch_size=4, workers=workers, seed=0, **loader)
    return list(batches)


def test_the_format_is_recognised_from_the_layout(three_formats):
    for kind, path in three_formats.items():
        assert data_format(_config(path)) == kind


def test_the_same_pictures_make_the_same_batches_as_folders_csv_or_shards(three_formats):
    """Shuffling off, augmentation seeded per sample: the formats differ only in how bytes are stored."""
    classes = {kind: build_splits(_config(path), with_train=True).class_names for kind, path in three_formats.items()}
    assert classes["imagefolder"] == classes["csv"] == classes["webdataset"] == ["ants", "bees", "wasps"]
    epochs = {kind: _epoch(path, shuffle=False) for kind, path in three_formats.items()}
    assert len(epochs["imagefolder"]) == 6
    for kind in ("csv", "webdataset"):
        assert len(epochs[kind]) == 6
        for (images, labels), (ref_images, ref_labels) in zip(epochs[kind], epochs["imagefolder"], strict=True):
            assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def _identified(dataset) -> None:
    """Make a dataset's samples identify themselves: the CRC of their bytes (or pixels) instead of pixels."""
    dataset.transform = lambda sample: torch.tensor(
        zlib.crc32(sample.tobytes() if isinstance(sample, Image.Image) else sample.numpy().tobytes())
    )


@pytest.mark.parametrize("kind", ["imagefolder", "csv", "torchvision"])
def test_two_ranks_with_two_workers_see_every_sample_of_an_epoch_exactly_once(three_formats, kind, tmp_path):
    given = {"path": str(write_mnist(tmp_path)), "dataset": "mnist"} if kind == "torchvision" else {}
    cfg = build_config("train", {"path": str(three_formats.get(kind, "")), "image_size": 32, **given}).data
    seen = []
    for rank in (0, 1):
        splits = build_splits(cfg, with_train=True)
        _identified(splits.train)
        loader = train_loader(splits.train, _ctx(rank, 2), batch_size=4, workers=2, seed=None)
        loader.sampler.set_position(epoch=3)
        seen += [int(crc) for crcs, _ in loader for crc in crcs]
    everything = build_splits(cfg, with_train=True).train
    _identified(everything)
    assert len(seen) == len(everything) and len(set(seen)) == len(seen)
    assert sorted(seen) == sorted(int(everything[i][0]) for i in range(len(everything)))


def test_shards_give_every_rank_the_same_batches_and_validation_every_sample_once(three_formats):
    path = three_formats["webdataset"]
    counts, seen = [], []
    for rank in (0, 1):
        splits = build_splits(_config(path), with_train=True)
        _identified(splits.train)
        _identified(splits.val)
        loader = train_loader(splits.train, _ctx(rank, 2), batch_size=4, workers=2, seed=5)
        counts.append(sum(1 for _ in loader))
        seen += [int(c) for crcs, _ in val_loader(splits.val, _ctx(rank, 2), batch_size=4, workers=2) for c in crcs]
    assert counts == [3, 3] and len(loader) == 3  # 24 samples // 2 ranks // batch 4
    val_files = sorted((three_formats["imagefolder"] / "val").rglob("*.png"))
    assert sorted(seen) == sorted(zlib.crc32(f.read_bytes()) for f in val_files)


def test_shards_smaller_than_the_shuffle_buffer_give_each_sample_once_an_epoch_shuffled(three_formats):
    """24 training samples and the default buffer of 2000: the buffer holds one pass of them, shuffled, not
    the shards read over and over until it is full (copies of samples, each shard opened ~80 times)."""
    splits = build_splits(_config(three_formats["webdataset"]), with_train=True)
    assert splits.train.shuffle_buffer > len(splits.train)
    _identified(splits.train)
    loader = train_loader(splits.train, _ctx(), batch_size=4, workers=0, seed=5)
    orders = []
    for epoch in (0, 1):
        loader.dataset.set_position(epoch=epoch)
        orders.append([int(crc) for crcs, _ in loader for crc in crcs])
    files = sorted((three_formats["imagefolder"] / "train").rglob("*.png"))
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(zlib.crc32(f.read_bytes()) for f in files)
    assert orders[0] != orders[1]


def test_a_sharded_epoch_resumes_mid_way_with_the_very_next_batch(three_formats):
    splits = build_splits(_config(three_formats["webdataset"], shuffle_buffer=5), with_train=True)
    loader = train_loader(splits.train, _ctx(), batch_size=4, workers=2, seed=7)
    loader.dataset.set_position(epoch=2)
    whole = list(loader)
    loader.dataset.set_position(epoch=2, samples_done=3 * 4)
    rest = list(loader)
    assert len(rest) == len(whole) - 3
    for (images, labels), (ref_images, ref_labels) in zip(rest, whole[3:], strict=True):
        assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    loader.dataset.set_position(epoch=3)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(list(loader), whole, strict=True))  # a new shuffle


@pytest.mark.parametrize("kind", ["imagefolder", "webdataset"])
def test_an_epoch_started_early_is_the_epoch_a_late_start_gives_and_a_stale_start_is_dropped(three_formats, kind):
    """A run starts its loader's workers on the first batches before it places the model; the epoch then
    goes on from those batches when the position set at its start is the same, and starts afresh when not."""
    splits = build_splits(_config(three_formats[kind], shuffle_buffer=5), with_train=True)

    def batches(epoch: int, done: int, early: tuple[int, int] | None) -> list[torch.Tensor]:
        loader = train_loader(splits.train, _ctx(), batch_size=4, workers=2, seed=7)
        with releasing_workers(loader):
            if early is not None:
                start_early(loader, *early)
                started = loader._early[1]
            set_position(loader, epoch, done)  # what each epoch of a run does first
            iterator = iter(loader)
            assert early != (epoch, done) or iterator is started  # carried on, not started again
            return [images for images, _labels in iterator]

    for epoch, done in ((1, 0), (2, 8)):
        late = batches(epoch, done, early=None)
        for early in ((epoch, done), (0, 0)):
            assert all(map(torch.equal, batches(epoch, done, early), late)) and len(late) == 6 - done // 4


def test_workers_started_early_for_a_run_that_fails_before_training_are_stopped(three_formats):
    splits = build_splits(_config(three_formats["webdataset"]), with_train=True)
    loader = train_loader(splits.train, _ctx(), batch_size=4, workers=2, seed=None)
    with pytest.raises(RuntimeError), releasing_workers(loader):
        start_early(loader, 0, 0)
        workers = loader._early[1]._workers
        assert all(worker.is_alive() for worker in workers)
        raise RuntimeError("the checkpoint could not be restored")
    assert loader._early is None and not any(worker.is_alive() for worker in workers)


def test_make_shards_round_trips_every_file_and_label(three_formats):
    index = shards.read_index(str(three_formats["webdataset"]))
    folder = build_splits(_config(three_formats["imagefolder"]), with_train=True)
    for split, dataset in (("train", folder.train), ("val", folder.val)):
        members = {}
        for shard in index.splits[split]:
            with tarfile.open(shard.path) as tar:
                members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
        assert sum(s.samples for s in index.splits[split]) == len(dataset.samples) == len(members) // 2
        for position, (path, label) in enumerate(dataset.samples):
            assert members[f"{position:08d}.png"] == Path(path).read_bytes()
            assert int(members[f"{position:08d}.cls"]) == label
    assert len(index.splits["train"]) > 1  # 20 KB shards: the size limit was honoured


def test_training_from_shards_and_from_a_manifest_through_the_cli(three_formats, tmp_path):
    for kind in ("webdataset", "csv"):
        out = tmp_path / kind
        ok(run_cli("train", str(three_formats[kind]), "-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--epochs", "1",
                   "-j", "1", "--output-dir", str(out)))  # fmt: skip
        saved = load(out / "checkpoint.pth.tar")
        assert saved["class_names"] == ["ants", "bees", "wasps"] and saved["config"]["data"]["data_format"] == "auto"


def test_a_torchvision_dataset_root_trains_at_its_own_image_size(tmp_path):
    root = write_mnist(tmp_path / "mnist")
    cfg = build_config("train", {"path": str(root), "dataset": "mnist"}).data
    assert (cfg.image_size, cfg.val_crop_size, cfg.val_resize_size) == (28, 28, 28)  # no upscale to 224
    splits = open_splits(cfg, with_train=True, class_names=None)
    assert len(splits.train) == 40 and splits.class_names[0] == "0 - zero"
    images, label = splits.train[3]
    assert images.shape == (3, 28, 28) and label == 3
    out = tmp_path / "run"
    ok(run_cli("train", "--dataset", "mnist", "--data", str(root), "-a", TINY_ARCH, "-b", "8", "--epochs", "1",
               "-j", "0", "--output-dir", str(out)))  # fmt: skip
    assert load(out / "checkpoint.pth.tar")["class_names"][9] == "9 - nine"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("path,label\nants/ants_000.png\n", "line 2: 1 fields where the header has 2"),
        ("path,label\nants/ants_000.png,\n", "line 2: empty label"),
        ("path,label\nants/ants_000.png,ants\nants/nope.png,ants\n", "line 3: no such file ants/nope.png"),
        ("path,label\nants/ants_000.png,-1\n", "line 2: negative label -1"),
        ("path,label\n", "lists no images"),
        ("just_one_column\nants/ants_000.png\n", "must name a path column and a label column"),
    ],
)
def test_malformed_manifests_are_reported_by_line(tmp_path, rows, message):
    folders = write_image_folder(tmp_path / "folders", {"ants": 1}, {"ants": 1})
    (folders / "train" / "train.csv").write_text(rows)
    (folders / "train" / "val.csv").write_text("path,label\nants/ants_000.png,ants\n")
    result = run_cli("train", str(folders / "train"), "-a", TINY_ARCH, "--epochs", "1")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("layout", "args", "message"),
    [
        ("empty", (), "holds no dataset this tool recognises"),
        ("both", (), "holds several datasets (imagefolder, csv); choose one with --data-format"),
        ("mnist-missing", ("--dataset", "mnist"), "expected "),
        ("empty", ("--dataset", "imagenet21k"), "Invalid value for '--dataset': 'imagenet21k' is not one of 'cifar10'"),
        ("empty", ("--data-format", "parquet"), "'parquet' is not one of 'auto', 'imagefolder', 'csv'"),
        ("unknown-class", (), "has classes the model does not know: moths"),
    ],
)
def test_malformed_data_is_named_in_one_line(tmp_path, layout, args, message):
    root = tmp_path / "data"
    root.mkdir()
    if layout == "both":
        write_image_folder(root, {"ants": 1}, {"ants": 1})
        write_manifests(root, root)
    if layout == "unknown-class":
        write_image_folder(root, {"ants": 1}, {"ants": 1})
        write_manifests(write_image_folder(tmp_path / "other", {"ants": 1}, {"moths": 1}), root / "csv")
        root = root / "csv"
    result = run_cli("train", str(root), *args, "-a", TINY_ARCH, "--epochs", "1", "-j", "0")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    if layout == "mnist-missing":
        assert "MNIST/raw/ with the four *-ubyte files" in result.stderr and "--download" in result.stderr


def test_a_damaged_shard_is_named(three_formats, tmp_path):
    broken = tmp_path / "shards"
    broken.mkdir()
    for item in three_formats["webdataset"].iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    shards = sorted(broken.glob("train-*.tar"))
    for shard in shards:  # every one: an epoch may end before the last shard in its order is opened
        data = bytearray(shard.read_bytes())
        data[130] ^= 0xFF  # a byte of the first header's size field: its checksum no longer adds up
        shard.write_bytes(bytes(data))
    result = run_cli("train", str(broken), "-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--epochs", "1", "-j", "0")
    assert result.returncode == 2, result.stdout
    assert any(f"shard {shard} has a damaged tar header" in result.stderr for shard in shards), result.stderr
