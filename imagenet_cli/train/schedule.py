"""The learning rate as a function of training progress, set before every optimizer step.

A schedule here is a pure function of how far training has come (epochs, as a fraction), not a stateful
scheduler stepped once an epoch: warmup is smooth, a resume mid-epoch continues on exactly the same curve,
and a `--lr` changed on resume simply takes effect. With warmup, the main schedule starts when the warmup
ends, as torchvision's recipes chain them.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..config import OptimConfig
from .optim import LR_MULT


@dataclass(frozen=True)
class Schedule:
    kind: str
    lr: float
    epochs: int
    step_size: int
    gamma: float
    milestones: tuple[int, ...]
    lr_min: float
    warmup_epochs: float
    warmup_method: str
    warmup_decay: float

    @classmethod
    def from_config(cls, cfg: OptimConfig) -> Schedule:
        return cls(
            cfg.lr_scheduler, cfg.lr, cfg.epochs, cfg.lr_step_size, cfg.lr_gamma, cfg.milestones(), cfg.lr_min,
            cfg.lr_warmup_epochs, cfg.lr_warmup_method, cfg.lr_warmup_decay,
        )  # fmt: skip

    def lr_at(self, progress: float) -> float:
        """The LR after `progress` epochs of training (1.5: half-way through the second epoch)."""
        if progress < self.warmup_epochs:
            if self.warmup_method == "constant":
                return self.lr * self.warmup_decay
            return self.lr * (self.warmup_decay + (1 - self.warmup_decay) * progress / self.warmup_epochs)
        t = progress - self.warmup_epochs
        if self.kind == "step":
            return self.lr * self.gamma ** math.floor(t / self.step_size)
        if self.kind == "multistep":
            return self.lr * self.gamma ** bisect.bisect_right(self.milestones, t)
        if self.kind == "exponential":
            return self.lr * self.gamma**t
        done = min(t / max(self.epochs - self.warmup_epochs, 1e-9), 1.0)  # of the schedule after warmup
        if self.kind == "cosine":
            return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * done))
        if self.kind == "linear":
            return self.lr_min + (self.lr - self.lr_min) * (1 - done)
        return self.lr

    def apply(self, optimizer: torch.optim.Optimizer, progress: float) -> None:
        """Set every group's LR (a slower backbone keeps its `LR_MULT` share)."""
        lr = self.lr_at(progress)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get(LR_MULT, 1.0)

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """What the checkpoint's `scheduler` entry says: the schedule and where it stood. Informative only:
        a resume recomputes the LR from its configuration and (epoch, step)."""
        return {"kind": self.kind, "last_epoch": epoch, "lr": self.lr_at(float(epoch)), "base_lr": self.lr}
