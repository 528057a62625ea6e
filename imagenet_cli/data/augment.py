"""Training augmentations of modern recipes (torchvision's references, timm): an automatic policy, then
random erasing, applied per sample in the loader workers to the uint8 crop a training preset made.

The policies draw from torch's global generator and erasing from Python's: a seeded run seeds both per
sample, so the augmented pictures stay a pure function of (seed, epoch, sample), wherever it resumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable

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
    """torchvision's RandomErasing on uint8 pictures. Its recipe erases normalised images to 0; pictures here
    stay uint8 until the device normalises them, so the rectangle gets the mean pixel, which becomes 0."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.fill = torch.tensor(MEAN_PIXEL, dtype=torch.uint8).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if random.random() >= self.p:
            return image
        # Never the whole picture; left whole when ten tries find no rectangle, as torchvision does.
        box = sample_box(image.shape[-1], image.shape[-2], ERASE_SCALE, ERASE_RATIO, whole=False)
        if box is None:
            return image
        top, left, height, width = box
        erased = image.clone()  # the crop may be a view of pixels that something else holds
        erased[..., top : top + height, left : left + width] = self.fill
        return erased


def policy(cfg: DataConfig) -> Step:
    """torchvision's tensor rotations and shears support only nearest and bilinear sampling, so with bicubic
    the policies' geometric operations sample bilinearly (the crop and validation resizes still use bicubic)."""
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


def augmented(preset: Callable[[object], torch.Tensor], cfg: DataConfig) -> Callable[[object], torch.Tensor]:
    """`preset` then, in the recipes' order, the policy and erasing; `preset` itself when neither is
    configured, so the default pipeline does no extra work."""
    chain = [policy(cfg)] if cfg.auto_augment is not None else []
    if cfg.random_erase > 0:
        chain.append(RandomErase(cfg.random_erase))
    return v2.Compose([preset, *chain]) if chain else preset
