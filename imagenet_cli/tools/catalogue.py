"""What this machine and torchvision offer: the architectures `--arch` accepts, and the software,
accelerators and launcher a run would meet here (`imagenet-cli models`, `imagenet-cli env`).

Everything here describes and changes nothing. Listing models must stay fast, so no real model is
built: the facts come from torchvision's weights metadata, and an architecture without published weights
is counted on the meta device. The environment's launcher variables are read only to show them; what a
run would do with them is asked of `distributed.plan`, the one place that decides it.
"""

from __future__ import annotations

from typing import Any

import torchvision

from ..core.errors import UserError


def list_models(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per torchvision classifier whose name contains `pattern` (any case); an error if none does,
    so a typo is not mistaken for an empty zoo."""
    from ..core.models import classification_models

    names = [n for n in classification_models() if not pattern or pattern.lower() in n.lower()]
    if not names:
        raise UserError(
            f"no architecture matches {pattern!r}; `imagenet-cli models` lists all {len(classification_models())}"
        )
    return [describe_model(name) for name in names]


def describe_model(name: str) -> dict[str, Any]:
    """Parameters (1000 classes), the input size and ImageNet top-1 of the default weights; None when unknown."""
    weights = _default_weights(name)
    meta = weights.meta if weights is not None else {}
    crop, resize = _preset_sizes(weights) if weights is not None else (None, None)
    acc1 = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return {
        "name": name,
        "parameters": int(meta["num_params"]) if "num_params" in meta else parameter_count(name),
        "crop_size": crop,
        "resize_size": resize,
        "imagenet_acc1": float(acc1) if acc1 is not None else None,
    }


def parameter_count(name: str, num_classes: int = 1000) -> int:
    """Parameters of `name` counted on the meta device: the architecture's shape without its weights' cost."""
    from ..core.models import build_model, parameters_on_meta

    with parameters_on_meta():
        model = build_model(name, num_classes)
    return sum(p.numel() for p in model.parameters())


def _default_weights(name: str) -> Any | None:
    """torchvision's default (best) weights enum member for `name`, or None when it publishes none."""
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _preset_sizes(weights: Any) -> tuple[int | None, int | None]:
    """The centre crop and resize the weights were evaluated with (ResNet-50 V2: 224 and 232)."""
    try:
        preset = weights.transforms()
    except (TypeError, ValueError):
        return None, None
    crop, resize = getattr(preset, "crop_size", None), getattr(preset, "resize_size", None)
    return (int(crop[0]) if crop else None), (int(resize[0]) if resize else None)
