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
from .plateau import Plateau


@dataclass(frozen=True)
class Schedule:
    """The run's schedule options (`--lr`, `--lr-scheduler` and the other `--lr-*`), milestones read once."""

    cfg: OptimConfig
    milestones: tuple[int, ...]
    plateau: Plateau | None = None  # --lr-scheduler plateau: the one schedule that depends on the losses seen

    @classmethod
    def from_config(cls, cfg: OptimConfig) -> Schedule:
        return cls(cfg, cfg.milestones(), Plateau(cfg) if cfg.lr_scheduler == "plateau" else None)

    def lr_at(self, progress: float) -> float:
        """The LR after `progress` epochs of training (1.5: half-way through the second epoch)."""
        c = self.cfg
        if progress < c.lr_warmup_epochs:
            if c.lr_warmup_method == "constant":
                return c.lr * c.lr_warmup_decay
            return c.lr * (c.lr_warmup_decay + (1 - c.lr_warmup_decay) * progress / c.lr_warmup_epochs)
        t = progress - c.lr_warmup_epochs
        if c.lr_scheduler == "step":
            return c.lr * c.lr_gamma ** math.floor(t / c.lr_step_size)
        if c.lr_scheduler == "multistep":
            return c.lr * c.lr_gamma ** bisect.bisect_right(self.milestones, t)
        if c.lr_scheduler == "exponential":
            return c.lr * c.lr_gamma**t
        done = min(t / max(c.epochs - c.lr_warmup_epochs, 1e-9), 1.0)  # of the schedule after warmup
        if c.lr_scheduler == "cosine":
            return c.lr_min + (c.lr - c.lr_min) * 0.5 * (1 + math.cos(math.pi * done))
        if c.lr_scheduler == "linear":
            return c.lr_min + (c.lr - c.lr_min) * (1 - done)
        return c.lr * (self.plateau.factor if self.plateau is not None else 1.0)

    def epoch_done(self, val_loss: float) -> None:
        """After each epoch's validation (on every rank, with the loss they share)."""
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def apply(self, optimizer: torch.optim.Optimizer, progress: float) -> None:
        """Set every group's LR (a slower backbone keeps its `LR_MULT` share)."""
        lr = self.lr_at(progress)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get(LR_MULT, 1.0)

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """What the checkpoint's `scheduler` entry says: the schedule and where it stood. Informative only:
        a resume recomputes the LR from its configuration and (epoch, step)."""
        c = self.cfg
        state = {"kind": c.lr_scheduler, "last_epoch": epoch, "lr": self.lr_at(float(epoch)), "base_lr": c.lr}
        return {**state, "plateau": self.plateau.state_dict()} if self.plateau is not None else state
