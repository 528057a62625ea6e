"""Data: learnable fake images, label orders that cannot shift, shards that cover everything once."""

from __future__ import annotations

import shutil

import pytest
import torch

from imagenet_cli.config import build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.errors import UserError
from imagenet_cli.core.randomness import mix_seed
from imagenet_cli.data.fakedata import DeviceBatches
from imagenet_cli.data.loaders import FakeImages, Normalizer, ShardSampler, build_splits, train_loader
from imagenet_cli.data.sources import check_folders

from .conftest import write_image_folder


def test_fake_images_are_a_pure_function_of_their_index():
    a, b = FakeImages(50, 10, 32, seed=0), FakeImages(50, 10, 32, seed=0)
    image, label = a[7]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and 0 <= label < 10
    assert torch.equal(image, b[7][0]) and label == b[7][1]
    assert not torch.equal(image, FakeImages(50, 10, 32, seed=1)[7][0])


def test_fake_batches_are_made_on_the_device_and_equal_the_images_one_by_one():
    data = FakeImages(50, 10, 32, seed=0)
    ctx = DistContext(rank=0, local_rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"))
    loader = train_loader(data, ctx, batch_size=8, workers=0, seed=3)
    assert isinstance(loader, DeviceBatches) and len(loader) == 6  # 50 // 8: the last, partial batch is dropped
    loader.sampler.set_position(epoch=2, samples_done=16)  # a resume two batches into epoch 2
    batches = list(loader)
    assert len(batches) == 4
    order = [i for i, _seed in loader.sampler]
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.device.type == "cpu"
    for row, index in enumerate(order[:8]):
        image, label = data[index]
        assert torch.equal(images[row], image) and labels[row] == label


def test_fake_images_carry_their_class_so_a_model_can_learn_it():
    """The mean colour of an image tells its class apart from every other class's."""
    data = FakeImages(300, 10, 32, seed=0)
    means = {}
    for i in range(len(data)):
        image, label = data[i]
        means.setdefault(label, []).append(image.float().mean(dim=(1, 2)))
    centres = {k: torch.stack(v).mean(0) for k, v in means.items()}
    spread = max(torch.stack(v).std(0).max().item() for v in means.values())
    gaps = [torch.dist(centres[a], centres[b]).item() for a in centres for b in centres if a < b]
    assert min(gaps) > 3 * spread


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_evaluation_shards_cover_every_image_exactly_once(world_size):
    seen = [i for rank in range(world_size) for i in ShardSampler(13, rank, world_size)]
    assert sorted(seen) == list(range(13))


def test_labels_follow_the_checkpoint_class_order_even_when_val_lacks_a_class(tmp_path):
    root = write_image_folder(tmp_path, {"ants": 1, "bees": 1, "wasps": 1}, {"bees": 2, "wasps": 1})
    cfg = build_config("evaluate", {"path": str(root), "checkpoint": "x"}).data
    splits = build_splits(cfg, with_train=False, class_names=["ants", "bees", "wasps"])
    assert sorted(label for _, label in splits.val.samples) == [1, 1, 2]


def test_val_classes_the_model_does_not_know_are_refused(tmp_path):
    root = write_image_folder(tmp_path, {"ants": 1}, {"ants": 1, "moths": 1})
    cfg = build_config("train", {"path": str(root)}).data
    with pytest.raises(UserError, match="classes the model does not know: moths"):
        build_splits(cfg, with_train=True)


def test_hidden_folders_are_not_classes(tmp_path):
    root = write_image_folder(tmp_path, {"ants": 1, "bees": 1}, {"ants": 1, "bees": 1})
    (root / "train" / ".ipynb_checkpoints").mkdir()
    splits = build_splits(build_config("train", {"path": str(root)}).data, with_train=True)
    assert splits.class_names == ["ants", "bees"]


def test_data_directory_problems_are_named(tmp_path):
    with pytest.raises(UserError, match="data directory not found"):
        check_folders(str(tmp_path / "missing"), ("train", "val"))
    root = write_image_folder(tmp_path / "d", {"ants": 1}, {"ants": 1})
    shutil.rmtree(root / "val")
    with pytest.raises(UserError, match="has no val/ folder"):
        check_folders(str(root), ("train", "val"))
    (root / "train" / "empty_class").mkdir()
    with pytest.raises(UserError, match="class folders without images: empty_class"):
        check_folders(str(root), ("train",))


def test_normalisation_happens_on_the_device_in_float():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = Normalizer(torch.device("cpu"))(images)
    assert out.dtype == torch.float32
    assert torch.allclose(
        out[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )


def test_mixed_seeds_differ_per_part_and_repeat():
    assert mix_seed(0, 1, 0) == mix_seed(0, 1, 0)
    assert len({mix_seed(0, epoch, i) for epoch in range(4) for i in range(1000)}) == 4000
    assert 0 <= mix_seed(2**70, -1) < 2**63
