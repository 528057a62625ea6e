"""`--lr-scheduler plateau`: the LR divided when the validation loss stops improving, as the tutorials'
`ReduceLROnPlateau` does it.

torch's own scheduler decides (its patience, threshold, cooldown and mode are exactly torch's), stepped once
an epoch with the validation loss that every rank shares. It drives a one-parameter stand-in optimizer, and
its LR there is read as a factor on the schedule's LR: warmup, the backbone's multiplier and per-step
setting all stay as for the other schedules, and resuming restores the scheduler's counters exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..config import OptimConfig

# The scheduler's counters a checkpoint keeps; its settings come from this run's configuration.
_COUNTERS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")


class Plateau:
    def __init__(self, cfg: OptimConfig) -> None:
        self._holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self.scheduler = ReduceLROnPlateau(
            self._holder, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            threshold=cfg.plateau_threshold, cooldown=cfg.plateau_cooldown,
            min_lr=cfg.lr_min / cfg.lr if cfg.lr > 0 else 0.0,
        )  # fmt: skip

    @property
    def factor(self) -> float:
        return float(self._holder.param_groups[0]["lr"])

    def step(self, val_loss: float) -> None:
        """After each epoch's validation. A loss that is not a number never counts as an improvement."""
        self.scheduler.step(val_loss if math.isfinite(val_loss) else math.inf)

    def state_dict(self) -> dict[str, Any]:
        own = self.scheduler.state_dict()
        return {"factor": self.factor, **{key: own[key] for key in _COUNTERS}}

    def load_state_dict(self, stored: dict[str, Any]) -> None:
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **{k: stored[k] for k in _COUNTERS}})
        self._holder.param_groups[0]["lr"] = float(stored["factor"])
