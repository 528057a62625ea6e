"""Loss, optimizer and learning-rate schedule: the reference recipe, and restoring them on resume
so that the configuration, not the stored state, has the last word on hyperparameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .config import OptimConfig


def build_criterion() -> nn.Module:
    return nn.CrossEntropyLoss()


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.StepLR:
    """Stepped once per epoch: LR ÷10 every 30 epochs by default, as the reference."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma)


def restore(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.StepLR,
    cfg: OptimConfig,
    epoch: int,
    optimizer_state: Mapping[str, Any] | None,
    scheduler_state: Mapping[str, Any] | None,
    stored: OptimConfig | None,
) -> None:
    """Continue a run at `epoch`. Loaded states are kept bit for bit unless the user changed the
    schedule's settings (`stored` differs from `cfg`), in which case the LR is recomputed from `cfg`:
    a `--lr` on the command line is honoured, never silently replaced by the stored one."""
    if optimizer_state is not None:
        optimizer.load_state_dict(dict(optimizer_state))
    if scheduler_state is not None:
        scheduler.load_state_dict(dict(scheduler_state))
    else:  # the reference script's older files have no scheduler: place the schedule at `epoch`
        scheduler.last_epoch = epoch
    schedule = (cfg.lr, cfg.lr_step_size, cfg.lr_gamma)
    changed = stored is None or schedule != (stored.lr, stored.lr_step_size, stored.lr_gamma)
    if optimizer_state is None or scheduler_state is None or changed:
        scheduler.step_size, scheduler.gamma = cfg.lr_step_size, cfg.lr_gamma
        scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        lr = cfg.lr * cfg.lr_gamma ** (scheduler.last_epoch // cfg.lr_step_size)
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = cfg.lr, lr
        scheduler._last_lr = [lr for _ in optimizer.param_groups]  # what get_last_lr() reports
    for group in optimizer.param_groups:
        group["momentum"], group["weight_decay"] = cfg.momentum, cfg.weight_decay
