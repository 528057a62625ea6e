"""Training augmentations of modern recipes (torchvision's references, timm): an automatic policy, then
random erasing, applied per sample in the loader workers to the uint8 crop a training preset made.

Randomness: the policies draw from torch's global generator and erasing from Python's, and a seeded run
seeds both per sample (`randomness.PerSampleSeeded`, and the shard stream likewise), so the augmented
pictures stay a pure function of (seed, epoch, sample) and a resumed run sees exactly the same ones.
With no augmentation configured, nothing here is called: the training preset is used unwrapped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ..config import DataConfig
from .presets import IMAGENET_MEAN, sample_box

ERASE_SCALE = (0.02, 0.33)  # RandomErasing's defaults: the erased area's share of the picture
ERASE_RATIO = (0.3, 3.3)  # ... and its aspect ratio, log-uniform
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104): 0 once the device normalises

Step = Callable[[torch.Tensor], torch.Tensor]


class RandomErase:
    """With probability `p`, fill a random rectangle of a uint8 (C, H, W) picture with `fill`, choosing it
    as torchvision's RandomErasing does. torchvision's recipe erases normalised images to 0; pictures here
    stay uint8 until the device normalises them, so the rectangle gets the mean pixel, which becomes 0."""

    def __init__(self, p: float, fill: Sequence[int] = MEAN_PIXEL) -> None:
        self.p = p
        self.fill = torch.tensor(fill, dtype=torch.uint8).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if random.random() >= self.p:
            return image
        box = erase_box(image.shape[-1], image.shape[-2])
        if box is None:
            return image
        top, left, height, width = box
        erased = image.clone()  # the crop may be a view of pixels that something else holds
        erased[..., top : top + height, left : left + width] = self.fill
        return erased


def erase_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    """A rectangle as torchvision's RandomErasing chooses it, never the whole picture; None when ten tries
    find none (the picture is then left whole, as torchvision does)."""
    return sample_box(width, height, ERASE_SCALE, ERASE_RATIO, whole=False)


def policy(cfg: DataConfig) -> Step | None:
    """The configured automatic augmentation policy, or None. torchvision's tensor rotations and shears
    support only nearest and bilinear sampling, so with bicubic the policies' geometric operations sample
    bilinearly (the crop and validation resizes still use bicubic)."""
    if cfg.auto_augment is None:
        return None
    mode = InterpolationMode(cfg.interpolation)
    mode = InterpolationMode.BILINEAR if mode == InterpolationMode.BICUBIC else mode
    if cfg.auto_augment == "ra":
        return v2.RandAugment(magnitude=cfg.ra_magnitude, interpolation=mode)
    if cfg.auto_augment == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=mode)
    if cfg.auto_augment == "augmix":
        return v2.AugMix(severity=cfg.augmix_severity, interpolation=mode)
    assert cfg.auto_augment == "imagenet", cfg.auto_augment  # DataConfig accepts no other name
    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=mode)


def steps(cfg: DataConfig) -> list[Step]:
    """What runs after the crop and flip, in the recipes' order: the policy, then erasing."""
    chain = [step for step in (policy(cfg),) if step is not None]
    if cfg.random_erase > 0:
        chain.append(RandomErase(cfg.random_erase))
    return chain


class Augmented:
    """A training preset followed by augmentation steps on the uint8 picture it makes."""

    def __init__(self, preset: Callable[[object], torch.Tensor], chain: Sequence[Step]) -> None:
        self.preset, self.chain = preset, list(chain)

    def __call__(self, sample: object) -> torch.Tensor:
        image = self.preset(sample)
        for step in self.chain:
            image = step(image)
        return image


def augmented(preset: Callable[[object], torch.Tensor], cfg: DataConfig) -> Callable[[object], torch.Tensor]:
    """`preset` with the configured augmentations after it; `preset` itself when there are none, so the
    default pipeline does no extra work."""
    chain = steps(cfg)
    return Augmented(preset, chain) if chain else preset
