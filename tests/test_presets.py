"""The uint8 input pipeline: any picture to 3 channels, the reference's pictures, smaller decodes of big JPEGs."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from imagenet_cli.checkpoint import read_checkpoint
from imagenet_cli.config import build_config
from imagenet_cli.core import models
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.errors import UserError
from imagenet_cli.data import presets
from imagenet_cli.data.loaders import IMAGENET_MEAN, IMAGENET_STD, Normalizer, build_splits, train_loader
from imagenet_cli.data.presets import PadCropPreset, TrainPreset, ValPreset

from .conftest import write_photo


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("RGB", "jpg"), ("L", "jpg"), ("CMYK", "jpg"), ("RGB", "png"), ("RGBA", "png"), ("P", "png"), ("LA", "png"),
     ("I;16", "png"), ("RGB", "bmp"), ("RGB", "webp")],
)  # fmt: skip
def test_every_colour_mode_and_format_reaches_the_model_as_three_uint8_channels(tmp_path, mode, suffix):
    encoded = presets.read_bytes(str(write_photo(tmp_path / f"picture.{suffix}", 90, 60, mode=mode)))
    for preset in (TrainPreset(32), ValPreset(37, 32), PadCropPreset(32, 4)):
        image = preset(encoded)
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)


def test_pictures_already_in_memory_go_through_the_same_presets():
    picture = Image.new("L", (28, 28), 200)  # what MNIST's dataset hands out
    for preset in (TrainPreset(24), ValPreset(28, 24), PadCropPreset(28, 4)):
        image = preset(picture)
        assert image.dtype == torch.uint8 and image.shape[0] == 3


def test_small_pictures_are_padded_and_cropped_not_blown_up():
    picture = Image.new("RGB", (32, 32), (10, 200, 30))
    image = PadCropPreset(32, 4)(picture)
    assert image.shape == (3, 32, 32)
    inside = image[:, 4:-4, 4:-4]  # whatever the offset, the centre is the picture, unscaled
    assert torch.equal(inside[:, 0, 0], torch.tensor([10, 200, 30], dtype=torch.uint8))


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(path)
    image = ValPreset(40, 32)(presets.read_bytes(str(path)))
    assert image.float().mean().item() == pytest.approx(128, abs=1)  # PIL's convert("RGB") would give 255


def test_validation_crops_match_the_reference_pil_pipeline(tmp_path):
    path = str(write_photo(tmp_path / "photo.jpg", 160, 120, quality=90))
    ours = ValPreset(73, 64)(presets.read_bytes(path)).float()
    with Image.open(path) as image:
        reference = transforms.Compose([transforms.Resize(73), transforms.CenterCrop(64), transforms.PILToTensor()])(
            image.convert("RGB")
        )
    difference = (ours - reference.float()).abs()
    assert difference.mean() < 1.5 and difference.max() < 40  # grey levels: two antialiasing kernels, one picture


@pytest.mark.parametrize(("width", "height"), [(500, 375), (375, 500), (64, 64), (1000, 40)])
def test_random_crops_follow_random_resized_crop(width, height):
    random.seed(0)
    torch.manual_seed(0)
    ours = [presets.random_crop_box(width, height) for _ in range(2000)]
    theirs = [transforms.RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
              for _ in range(2000)]  # fmt: skip
    for top, left, h, w in ours:
        assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
    area = [h * w / (width * height) for _, _, h, w in ours]
    assert np.mean(area) == pytest.approx(np.mean([h * w / (width * height) for _, _, h, w in theirs]), abs=0.03)
    if width == height:  # no fallback there: every crop obeys the scale and ratio ranges (up to rounding)
        assert min(area) >= 0.07 and all(math.log(w / h) <= math.log(4 / 3) + 0.05 for _, _, h, w in ours)


def test_large_jpegs_are_decoded_smaller_when_the_crop_allows_it(tmp_path, monkeypatch):
    path = str(write_photo(tmp_path / "big.jpg", 1600, 1200, quality=90))
    encoded, header = presets.open_sample(presets.read_bytes(path))
    assert presets.dct_reduction(header, 1200, 256) == 4 and presets.dct_reduction(header, 1200, 224) == 4
    assert presets.dct_reduction(header, 500, 256) == 1
    assert presets.decode_rgb(encoded, header, 4).shape == (3, 300, 400)
    reduced = ValPreset(256, 224)(presets.read_bytes(path)).float()
    monkeypatch.setattr(presets, "REDUCE_FROM_PIXELS", 10**12)  # decode at full size instead
    full = ValPreset(256, 224)(presets.read_bytes(path)).float()
    assert (reduced - full).abs().mean() < 2.0


def test_the_uint8_pipeline_predicts_what_the_reference_pipeline_predicts(trained_run, image_folder):
    """The same trained model, fed by each pipeline: same classes, near-identical probabilities."""
    loaded = read_checkpoint(str(trained_run / "checkpoint.pth.tar"))
    arch = loaded.arch
    model = models.build_model(arch, 10)
    models.load_state(model, loaded.state_dict, arch, skip_head=False)
    model.eval()
    reference = transforms.Compose(
        [transforms.Resize(37), transforms.CenterCrop(32), transforms.ToTensor(),
         transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )  # fmt: skip
    files = sorted(str(p) for p in (image_folder / "val").rglob("*.png"))
    ours = Normalizer(torch.device("cpu"))(torch.stack([ValPreset(37, 32)(presets.read_bytes(f)) for f in files]))
    theirs = torch.stack([reference(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        p_ours, p_theirs = model(ours).softmax(1), model(theirs).softmax(1)
    assert torch.equal(p_ours.argmax(1), p_theirs.argmax(1))
    assert (p_ours - p_theirs).abs().max() < 0.05


def test_decoding_on_the_device_gives_the_batches_the_workers_would(tmp_path):
    """The workers only plan (the same seeded crops and flips); the device decodes JPEGs in a batch. The
    command line refuses `--decode-on-device` without a GPU decoder (tests/test_decoders.py); on the CPU the
    batch path decodes each JPEG as the workers do, so this checks the planning, ordering and batching
    (nvJPEG itself: tests/gpu/test_data.py), and only the resize kernel's rounding may differ."""
    for split, count in (("train", 6), ("val", 3)):
        for i in range(count):
            folder = tmp_path / split / ("cats" if i % 2 else "dogs")
            folder.mkdir(parents=True, exist_ok=True)
            suffix = "png" if i == 2 else "jpg"  # not every file is a JPEG: those decode in the workers
            write_photo(folder / f"{i}.{suffix}", 80, 60, seed=i)
    batches = {}
    for on_device in (False, True):
        cfg = build_config("train", {"path": str(tmp_path), "image_size": 32, "decode_on_device": on_device}).data
        splits = build_splits(cfg, with_train=True)
        ctx = DistContext(0, 0, 1, 1, torch.device("cpu"))
        loader = train_loader(splits.train, ctx, batch_size=3, workers=2, seed=0)
        loader.sampler.set_position(epoch=0)
        normalize = Normalizer(ctx.device)
        batches[on_device] = [(normalize(images), labels) for images, labels in loader]
    for (ours, labels), (theirs, their_labels) in zip(batches[True], batches[False], strict=True):
        assert torch.equal(labels, their_labels) and ours.shape == theirs.shape == (3, 3, 32, 32)
        assert (ours - theirs).abs().mean() < 0.01 and (ours - theirs).abs().max() < 0.1


def test_hflip_sets_how_often_training_images_are_mirrored_and_keeps_the_random_stream(tmp_path):
    from imagenet_cli.data.sources import presets_for

    def flips(hflip: float) -> tuple[list[bool], float]:
        cfg = build_config("train", {"fake": True, "image_size": 32, "hflip": hflip}).data
        train, _ = presets_for(cfg)
        random.seed(0)
        drawn = [train.plan(64, 48).flip for _ in range(400)]
        return drawn, random.random()

    never, after_never = flips(0.0)
    always, after_always = flips(1.0)
    default, after_default = flips(0.5)
    assert not any(never) and all(always) and 150 < sum(default) < 250
    assert after_never == after_always == after_default  # the draw happens whatever P is: seeded runs stay aligned
    assert build_config("train", {"fake": True}).data.hflip == 0.5


def test_hflip_outside_zero_to_one_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"--hflip is a probability, from 0 to 1; got 1.5"):
        build_config("train", {"fake": True, "hflip": 1.5})
