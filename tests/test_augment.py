"""Training augmentations of modern recipes: automatic policies, random erasing, the resize interpolation.

Presets are built from a configuration the way a run builds them, and read through the per-sample seeding
a seeded run uses; only the flags' parsing and one short training run go through the command line.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from typer.testing import CliRunner

from imagenet_cli.cli import app, commands
from imagenet_cli.config import AUTO_AUGMENT_POLICIES, DataConfig, RunConfig, build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.randomness import PerSampleSeeded, seeded
from imagenet_cli.data import sources
from imagenet_cli.data.augment import ERASE_SCALE, MEAN_PIXEL
from imagenet_cli.data.loaders import Normalizer, train_loader

from .conftest import TINY_ARCH, ok, run_cli, write_image_folder

SIZE = 32
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    """Noisy 48 px pictures: every resampling and every operation shows in their pixels."""
    return write_image_folder(tmp_path_factory.mktemp("data"), {"ants": 3, "bees": 3}, {"ants": 2, "bees": 2}, 48)


def data_config(folder, **given) -> DataConfig:
    return build_config("train", {"path": str(folder), "image_size": SIZE, **given}).data


def train_images(folder, seeds=SEEDS, index: int = 0, **given) -> list[torch.Tensor]:
    """Sample `index` of the training split under each seed, as a seeded run's loader makes it."""
    train = sources.open_splits(data_config(folder, **given), with_train=True, class_names=None).train
    return [PerSampleSeeded(train)[(index, seed)][0] for seed in seeds]


def val_images(folder, **given) -> list[torch.Tensor]:
    val = sources.open_splits(data_config(folder, **given), with_train=False, class_names=None).val
    return [val[i][0] for i in range(len(val))]


@pytest.mark.parametrize("policy", AUTO_AUGMENT_POLICIES)
def test_each_policy_changes_training_images_keeps_their_shape_and_repeats_per_seed(folder, policy):
    plain = train_images(folder)
    augmented = train_images(folder, auto_augment=policy)
    for image in augmented:
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
    assert any(not torch.equal(a, p) for a, p in zip(augmented, plain, strict=True))
    torch.manual_seed(12345)  # the process's own generator must not matter: each sample is seeded
    assert all(torch.equal(a, b) for a, b in zip(augmented, train_images(folder, auto_augment=policy), strict=True))


def test_a_samples_seed_draws_what_torch_manual_seed_would_and_the_process_draws_on_undisturbed():
    def draws() -> tuple[float, torch.Tensor]:
        return random.random(), torch.rand(4)

    random.seed(1), torch.manual_seed(1)
    with seeded(99):
        inside = draws()
    after = draws()
    random.seed(99), torch.manual_seed(99)
    expected_inside = draws()
    random.seed(1), torch.manual_seed(1)
    expected_after = draws()
    assert inside[0] == expected_inside[0] and torch.equal(inside[1], expected_inside[1])
    assert after[0] == expected_after[0] and torch.equal(after[1], expected_after[1])


def test_random_erasing_fills_a_rectangle_of_the_recipe_size_with_the_mean_pixel(folder):
    normalizer_mean = Normalizer(torch.device("cpu")).mean.flatten().round()  # what the device subtracts
    assert normalizer_mean.tolist() == list(MEAN_PIXEL) == [124, 116, 104]
    mean = torch.tensor(MEAN_PIXEL, dtype=torch.uint8).view(3, 1, 1)
    for plain, erased in zip(train_images(folder), train_images(folder, random_erase=1.0), strict=True):
        rows, cols = (erased != plain).any(0).nonzero(as_tuple=True)
        top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        assert torch.equal(erased[:, top:bottom, left:right], mean.expand(3, bottom - top, right - left))
        h, w = int(bottom - top), int(right - left)
        slack = (h + w) / 2 + 1  # each side is rounded to whole pixels
        assert ERASE_SCALE[0] * SIZE**2 - slack <= h * w <= ERASE_SCALE[1] * SIZE**2 + slack
        outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert torch.equal(erased[:, outside], plain[:, outside])


def test_validation_images_are_never_augmented(folder):
    plain = val_images(folder)
    augmented = val_images(folder, auto_augment="ta_wide", random_erase=1.0)
    assert all(torch.equal(a, p) for a, p in zip(augmented, plain, strict=True))


def test_bicubic_interpolation_changes_the_resized_pixels(folder):
    for images in (val_images, train_images):
        bilinear, bicubic = images(folder), images(folder, interpolation="bicubic")
        assert all(b.shape == c.shape for b, c in zip(bilinear, bicubic, strict=True))
        assert any(not torch.equal(b, c) for b, c in zip(bilinear, bicubic, strict=True))


def test_bicubic_policies_run_on_tensors(folder):
    """torchvision rotates tensors only nearest or bilinear: the policies fall back to bilinear there."""
    for policy in AUTO_AUGMENT_POLICIES:
        for image in train_images(folder, auto_augment=policy, interpolation="bicubic"):
            assert image.shape == (3, SIZE, SIZE)


def test_an_augmented_epoch_resumes_bit_exactly_with_loader_workers(folder):
    train = sources.open_splits(data_config(folder, auto_augment="ra", random_erase=0.5), True, None).train
    ctx = DistContext(0, 0, 1, 1, torch.device("cpu"))

    def epoch(samples_done: int) -> torch.Tensor:
        loader = train_loader(train, ctx, batch_size=2, workers=2, seed=7)
        loader.sampler.set_position(epoch=1, samples_done=samples_done)
        return torch.cat([images for images, _labels in loader])

    assert torch.equal(epoch(2), epoch(0)[2:])


def test_augmentations_are_refused_where_they_could_not_run():
    for given in ({"auto_augment": "ra"}, {"random_erase": 0.5}):
        with pytest.raises(Exception, match="not augmented"):
            DataConfig(fake=True, **given)
        with pytest.raises(Exception, match="--decode-on-device"):
            DataConfig(path="data", decode_on_device=True, **given)
    trained = DataConfig(path="data", auto_augment="augmix", random_erase=0.5)
    assert not trained.for_evaluation().augmented  # evaluating its checkpoint on device-decoded data is fine
    assert DataConfig(path="data").augmented is False


def invoke(*args: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, list[RunConfig]]:
    """The command line in this process, stopped where the run would start."""
    launched: list[RunConfig] = []
    monkeypatch.setattr(commands, "launch", launched.append)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output, launched


def test_train_crop_size_is_another_name_for_image_size(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for command in (["train"], ["finetune", "--pretrained", "-a", TINY_ARCH]):
        sizes = []
        for flag in ("--image-size", "--train-crop-size"):
            code, output, launched = invoke(*command, str(tmp_path), flag, "40", monkeypatch=monkeypatch)
            assert code == 0, output
            sizes.append(launched[0].data.image_size)
        assert sizes == [40, 40]


@pytest.mark.parametrize(
    "flags",
    [("--random-erase", "1.5"), ("--ra-magnitude", "-1"), ("--augmix-severity", "0"),
     ("--fake-data", "--auto-augment", "ra")],
)  # fmt: skip
def test_bad_values_are_one_line_usage_errors(monkeypatch, tmp_path, flags):
    monkeypatch.chdir(tmp_path)
    code, output, launched = invoke("train", str(tmp_path), *flags, monkeypatch=monkeypatch)
    assert code == 2 and not launched
    assert len(output.strip().splitlines()) == 1 and output.startswith("error: "), output


@pytest.mark.parametrize(
    ("flags", "offered"),
    [(("--auto-augment", "foo"), "'ra', 'ta_wide', 'augmix', 'imagenet'"),
     (("--interpolation", "lanczos"), "'bilinear', 'bicubic', 'nearest'")],
)  # fmt: skip
def test_a_word_not_offered_is_refused_before_the_run(monkeypatch, tmp_path, flags, offered):
    """Refused by the command line itself (main() makes it one line: tests/test_listings.py)."""
    monkeypatch.chdir(tmp_path)
    code, output, launched = invoke("train", str(tmp_path), *flags, monkeypatch=monkeypatch)
    assert code == 2 and not launched
    assert f"is not one of {offered}" in " ".join(output.replace("│", " ").split()), output


def test_a_short_augmented_training_run_finishes(tmp_path):
    data = write_image_folder(tmp_path / "data", {"ants": 4, "bees": 4}, {"ants": 2, "bees": 2}, size=40)
    out = tmp_path / "run"
    flags = ("--auto-augment", "ta_wide", "--random-erase", "0.25", "--interpolation", "bicubic")
    common = ("-a", TINY_ARCH, "--epochs", "1", "-b", "4", "--train-crop-size", "32", "-j", "1", "--seed", "0")
    ok(run_cli("train", str(data), *common, *flags, "--output-dir", str(out)))
    recorded = json.loads((out / "config.json").read_text())
    assert math.isclose(recorded["random-erase"], 0.25) and recorded["auto-augment"] == "ta_wide"
