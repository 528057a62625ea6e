"""Loss and optimizer, and restoring the optimizer on resume so that the configuration, not the stored
state, has the last word on hyperparameters. The LR schedule is in schedule.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig
from ..core.errors import UserError
from . import layer_decay
from .finetune import is_head

# A group's share of the schedule's LR (a slower backbone): set here, read by schedule.Schedule.apply.
LR_MULT = "lr_mult"
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def build_criterion(label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy; it also takes the soft targets mixup and cutmix make."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def build_optimizer(model: nn.Module, arch: str, cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """`fused` (on CUDA) updates every parameter in one kernel instead of a loop of small ones. RMSprop
    takes the settings torchvision's recipes use for it (alpha 0.9, eps 0.0316)."""
    groups = parameter_groups(model, arch, cfg)
    fuse = fused or None
    if cfg.opt in ("sgd", "nesterov"):
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.opt == "nesterov", fused=fuse,
        )  # fmt: skip
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fuse)
    return torch.optim.RMSprop(
        groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, alpha=0.9, eps=0.0316
    )


def restore(optimizer: torch.optim.Optimizer, optimizer_state: Mapping[str, Any] | None) -> None:
    """Continue a run's optimizer: its momentum buffers and step counts bit for bit; momentum and weight
    decay from the configuration (the groups as just built from it), so flags given on resume count. The
    LR needs nothing: the schedule sets it from the configuration before every step."""
    if optimizer_state is None:
        return
    state = dict(optimizer_state)
    saved_groups = state.get("param_groups") or []
    if len(saved_groups) == len(optimizer.param_groups):
        # This run's settings go in before loading: torch places each state tensor by the group's own
        # settings (a fused kernel wants its step counts on the GPU, a CPU-written file has them on the host).
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        state["param_groups"] = [{**saved, **own} for saved, own in zip(saved_groups, fresh, strict=True)]
    try:
        optimizer.load_state_dict(state)
    except ValueError as exc:
        raise UserError(
            f"the checkpoint's optimizer state does not fit this run ({exc}); were --opt, --backbone-lr-mult "
            "or the weight-decay options changed?"
        ) from exc


def parameter_groups(model: nn.Module, arch: str, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Optimizer groups by (part, layer, kind): the head at the LR, the backbone at `backbone_lr_mult` × LR,
    times `--layer-decay`'s share per layer; norm weights and biases with their own weight decay when set.
    Frozen parameters stay in their groups (the optimizer skips them while they have no gradient), so
    unfreezing needs no new optimizer."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    scales = _layer_scales(model, arch, cfg.layer_decay)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        mult = (1.0 if is_head(name, arch) else cfg.backbone_lr_mult) * scales.get(name, 1.0)
        decay = cfg.weight_decay
        if id(param) in norm_params and cfg.norm_weight_decay is not None:
            decay = cfg.norm_weight_decay
        elif name.endswith("bias") and cfg.bias_weight_decay is not None:
            decay = cfg.bias_weight_decay
        groups.setdefault((mult, decay), []).append(param)
    return [
        {"params": params, "lr": cfg.lr * mult, LR_MULT: mult, "weight_decay": decay}
        for (mult, decay), params in groups.items()
    ]


def _layer_scales(model: nn.Module, arch: str, decay: float | None) -> dict[str, float]:
    if decay is None or decay == 1:
        return {}
    head = {name for name, _ in model.named_parameters() if is_head(name, arch)}
    ids, top = layer_decay.layer_ids(model, head)
    if top <= 1:
        raise UserError(
            f"--layer-decay: {arch} has no repeated blocks to number (it finds them in stacks of same-kind "
            "blocks: ViT, ConvNeXt, Swin, timm's models)"
        )
    return {name: decay ** (top - layer) for name, layer in ids.items()}
