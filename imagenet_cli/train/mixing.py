"""Mixup and CutMix: whole batches blended on the device, targets made soft to match.

Each batch is paired with itself rolled by one (image i with image i-1), as torchvision's batched
transforms do, so no permutation has to be drawn. The mixing weight, and which of the two a batch gets
when both are on, come from a generator keyed by (seed, epoch, step, rank): a resumed run mixes exactly
as the uninterrupted one would have.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..core.randomness import mix_seed


@dataclass(frozen=True)
class BatchMixer:
    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    seed: int | None = None

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, rank: int, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets whose rows sum to 1); images are N×C×H×W, already normalised."""
        soft = F.one_hot(targets, self.num_classes).to(images.dtype if images.is_floating_point() else torch.float32)
        if not self.active or images.shape[0] < 2:
            return images, soft
        rng = random.Random(mix_seed(self.seed, epoch, step, rank) if self.seed is not None else None)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = rng.betavariate(alpha, alpha)
        partner = images.roll(1, dims=0)
        if use_cutmix:
            images, lam = _paste_box(images, partner, lam, rng)
        else:
            images = images.mul(lam).add_(partner, alpha=1 - lam)
        return images, soft.mul(lam).add_(soft.roll(1, dims=0), alpha=1 - lam)


def _paste_box(
    images: torch.Tensor, partner: torch.Tensor, lam: float, rng: random.Random
) -> tuple[torch.Tensor, float]:
    """Paste a box of the partner image covering about 1 - lam of the area; lam is then the exact share
    of each image that is still its own, after clipping the box at the borders."""
    height, width = images.shape[-2:]
    cut = math.sqrt(1 - lam)
    box_h, box_w = int(height * cut), int(width * cut)
    cy, cx = rng.randrange(height), rng.randrange(width)
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    images = images.clone()
    images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return images, 1 - (bottom - top) * (right - left) / (height * width)
