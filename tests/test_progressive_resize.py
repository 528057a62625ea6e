"""--progressive-resize: each epoch's crop size is a pure function of (epoch, configuration), the batches
really come at that size (through loader workers that persist between epochs too), a resumed run trains
bit for bit as an uninterrupted one, and nonsense is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagenet_cli.config import build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.data import loaders

from .conftest import TINY_ARCH, cli_env, load, ok, run_cli, write_image_folder

FAKE = ("--fake-data", "--fake-train-images", "64", "--fake-val-images", "32", "-j", "0")  # the crop size: ours


def _sizes(epochs: int, **options: object) -> list[int]:
    data = build_config("train", {"fake": True, "epochs": epochs, **options}).data
    return [data.crop_size_at(epoch, epochs) for epoch in range(epochs)]


def test_the_crop_rises_from_start_to_end_in_steps_of_16_or_32_pixels():
    # FFCV's rn18_16_epochs configuration: 160 px through epoch 11, 192 px from epoch 12 (its rounding of 176).
    assert _sizes(16, progressive_resize="160:192", progressive_resize_epochs="11:13") == [160] * 12 + [192] * 4
    assert _sizes(8, progressive_resize="64:128", progressive_resize_epochs="0:4") == [64, 80, 96, 112] + [128] * 4
    assert _sizes(6, progressive_resize="128:256", progressive_resize_epochs="1:5") == [128, 128, 160, 192, 224, 256]
    # Never outside START..END, whatever the rounding: 105 rounds to 112, past END; 119 to 112, below START.
    assert _sizes(3, progressive_resize="100:110", progressive_resize_epochs="0:2") == [100, 110, 110]
    assert _sizes(20, progressive_resize="115:200", progressive_resize_epochs="0:20")[:3] == [115, 115, 128]
    # By default it rises over 70% to 85% of the epochs (14 to 17 of 20), as FFCV's ResNet-50 recipes do.
    assert _sizes(20, progressive_resize="64:96") == [64] * 15 + [80, 80] + [96] * 3
    assert _sizes(5, image_size=48) == [48] * 5  # without it: --train-crop-size every epoch


def test_the_end_size_is_the_image_size_that_validation_follows():
    cfg = build_config("train", {"fake": True, "epochs": 4, "progressive_resize": "48:96"})
    assert (cfg.data.image_size, cfg.data.val_crop_size, cfg.data.val_resize_size) == (96, 96, 110)
    higher = build_config(
        "train", {"fake": True, "epochs": 4, "progressive_resize": "48:80", "val_crop_size": 96, "val_resize_size": 96}
    )
    assert (higher.data.image_size, higher.data.val_crop_size) == (80, 96)


def _batch_sides(loader: object, epochs: list[tuple[int, int]]) -> list[set[int]]:
    """The sides of every batch of each epoch, the crop size set before it as the training loop does."""
    seen = []
    for epoch, size in epochs:
        loaders.set_train_size(loader, size)
        loaders.set_position(loader, epoch, 0)
        seen.append({images.shape[-1] for images, _labels in loader})
    return seen


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "persistent-worker"])
def test_batches_come_at_the_size_of_their_epoch(workers, tmp_path):
    root = write_image_folder(tmp_path, {"red": 6, "blue": 6}, {"red": 2, "blue": 2}, size=50)
    cfg = build_config("train", {"path": str(root), "progressive_resize": "32:64"}).data
    splits = loaders.build_splits(cfg, with_train=True)
    ctx = DistContext(0, 0, 1, 1, torch.device("cpu"))
    loader = loaders.train_loader(splits.train, ctx, batch_size=4, workers=workers, seed=0)
    plan = [(0, 32), (1, 48), (2, 48), (3, 64)]
    with loaders.releasing_workers(loader):
        assert _batch_sides(loader, plan) == [{32}, {48}, {48}, {64}]


def _epoch_lines(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["type"] == "epoch"]


def test_a_fake_data_run_trains_each_epoch_on_batches_of_its_size(tmp_path):
    result = ok(
        run_cli(
            "train", *FAKE, "-a", TINY_ARCH, "--epochs", "3", "-b", "16", "--progressive-resize", "16:48",
            "--progressive-resize-epochs", "0:2", "--output-dir", str(tmp_path),
        )
    )  # fmt: skip
    assert [line["train_size"] for line in _epoch_lines(tmp_path)] == [16, 32, 48]  # read from the batches
    assert "epoch 1: training crops of 32 px" in result.stdout and "epoch 2: training crops of 48 px" in result.stdout


# Real pictures through a loader worker that persists between epochs: 36 images in batches of 6.
RUN = ("-a", TINY_ARCH, "-b", "6", "--lr", "0.01", "--seed", "3", "-j", "1", "--progressive-resize", "32:64",
       "--progressive-resize-epochs", "0:2")  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sizes = {"red": 12, "green": 12, "blue": 12}
    return write_image_folder(tmp_path_factory.mktemp("folder"), sizes, {c: 3 for c in sizes}, size=72)


@pytest.fixture(scope="module")
def straight(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    ok(run_cli("train", str(folder), *RUN, "--epochs", "3", "--output-dir", str(out)))
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    left, right = load(a / "checkpoint.pth.tar")["state_dict"], load(b / "checkpoint.pth.tar")["state_dict"]
    assert [k for k in left if not torch.equal(left[k], right[k])] == []
    assert [line["train_size"] for line in _epoch_lines(b)] == [line["train_size"] for line in _epoch_lines(a)]


def test_real_pictures_rise_in_size_epoch_by_epoch(straight):
    assert [line["train_size"] for line in _epoch_lines(straight)] == [32, 48, 64]


def test_one_epoch_then_a_resume_is_bit_identical_to_three_straight(folder, straight, tmp_path):
    ok(run_cli("train", str(folder), *RUN, "--epochs", "1", "--output-dir", str(tmp_path)))
    resumed = ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar"), "--epochs", "3"))
    assert "epoch 1: training crops of 48 px" in resumed.stdout
    _assert_same_run(straight, tmp_path)


def test_a_resume_from_inside_an_epoch_continues_at_that_epochs_size(folder, straight, tmp_path):
    stopped = run_cli(
        "train", str(folder), *RUN, "--epochs", "3", "--save-every-steps", "2", "--output-dir", str(tmp_path),
        env=cli_env(IMAGENET_CLI_FAULT="raise:epoch=1,step=5"),
    )  # fmt: skip
    assert stopped.returncode == 1
    checkpoint = load(tmp_path / "checkpoint.pth.tar")
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 4)
    resumed = ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar")))
    assert "epoch 1: training crops of 48 px" in resumed.stdout
    _assert_same_run(straight, tmp_path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--progressive-resize", "192:160"), "--progressive-resize 192:160: START must not be larger than END"),
        (("--progressive-resize", "8:64"), "--progressive-resize sizes must be from 16 to 1024 pixels, got 8:64"),
        (("--progressive-resize", "160-192"), "--progressive-resize takes START:END in pixels, e.g. 160:192"),
        (("--progressive-resize-epochs", "1:2"), "--progressive-resize-epochs needs --progressive-resize"),
        (("--progressive-resize", "32:64", "--progressive-resize-epochs", "3:1"), "A must not be after B"),
        (("--progressive-resize", "32:64", "--image-size", "48"), "leave out --train-crop-size 48"),
    ],
)
def test_nonsense_is_refused_in_one_line(flags, message, tmp_path):
    result = run_cli("train", *FAKE, "--epochs", "2", *flags, "--output-dir", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
