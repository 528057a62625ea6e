"""Loss, optimizer and learning-rate schedule: the reference recipe, and restoring them on resume
so that the configuration, not the stored state, has the last word on hyperparameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .config import OptimConfig
from .errors import UserError
from .finetune import parameter_groups


def build_criterion() -> nn.Module:
    return nn.CrossEntropyLoss()


def build_optimizer(model: nn.Module, arch: str, cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """SGD; `fused` (on CUDA) updates every parameter in one kernel instead of a loop of small ones."""
    groups = parameter_groups(model, arch, cfg)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused or None)


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
    a `--lr` on the command line is honoured, never silently replaced by the stored one. Momentum and
    weight decay always come from `cfg` (the groups as just built from it)."""
    fresh = [{k: g[k] for k in ("momentum", "weight_decay", "lr_mult") if k in g} for g in optimizer.param_groups]
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(dict(optimizer_state))
        except ValueError as exc:
            raise UserError(
                f"the checkpoint's optimizer state does not fit this run ({exc}); "
                "were --backbone-lr-mult or the weight-decay options changed?"
            ) from exc
    if scheduler_state is not None:
        scheduler.load_state_dict(dict(scheduler_state))
    else:  # the reference script's older files have no scheduler: place the schedule at `epoch`
        scheduler.last_epoch = epoch
    for group, settings in zip(optimizer.param_groups, fresh, strict=True):
        group.update(settings)
    schedule = (cfg.lr, cfg.lr_step_size, cfg.lr_gamma)
    changed = stored is None or schedule != (stored.lr, stored.lr_step_size, stored.lr_gamma)
    if optimizer_state is None or scheduler_state is None or changed:
        scheduler.step_size, scheduler.gamma = cfg.lr_step_size, cfg.lr_gamma
        decay = cfg.lr_gamma ** (scheduler.last_epoch // cfg.lr_step_size)
        scheduler.base_lrs = [cfg.lr * g.get("lr_mult", 1.0) for g in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["initial_lr"], group["lr"] = base, base * decay
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
