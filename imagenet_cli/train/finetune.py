"""What transfer learning adds to training: a head and a backbone, treated differently.

The head is whatever `models.head_keys` finds (the parameters that depend on the class count); the
backbone is the rest. Freezing turns the backbone's gradients off and keeps its BatchNorm statistics as
the weights brought them; a learning-rate multiplier slows it down instead.
"""

from __future__ import annotations

from torch import nn

from ..config import OptimConfig
from ..core.models import head_keys


def is_head(name: str, arch: str) -> bool:
    return name in head_keys(arch)


def backbone_frozen_at(epoch: int, cfg: OptimConfig) -> bool:
    """`--freeze-backbone` and `--backbone-lr-mult 0` freeze for good; `--unfreeze-at-epoch E` until E."""
    if cfg.backbone_lr_mult == 0:
        return True
    if cfg.unfreeze_at_epoch is not None:
        return epoch < cfg.unfreeze_at_epoch
    return cfg.freeze_backbone


def freeze_backbone(model: nn.Module, arch: str, frozen: bool) -> tuple[nn.Module, ...]:
    """Set the backbone's `requires_grad`; returns the BatchNorm layers to keep in eval mode (none when
    training everything), so frozen layers keep the running statistics their weights were trained with.
    A model trained whole that nothing froze before is left as it is: finding its head builds the
    architecture twice more (a tenth of a second before a short run's first step)."""
    if not frozen and all(param.requires_grad for param in model.parameters()):
        return ()
    for name, param in model.named_parameters():
        if not is_head(name, arch):
            param.requires_grad_(not frozen)
    if not frozen:
        return ()
    return tuple(
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head(f"{name}.weight", arch)
    )
