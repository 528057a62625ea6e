"""What `inspect` shows of any checkpoint, as plain data (also its `--json`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..config import PLACEMENT, default_for
from ..core.errors import UserError
from .reading import LoadedCheckpoint
from .torchvision import NEVER_TAKEN, translate

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def describe(loaded: LoadedCheckpoint) -> dict[str, Any]:
    params = sum(v.numel() for k, v in loaded.state_dict.items() if not k.endswith(BUFFER_SUFFIXES))
    config = loaded.config or {}
    optim = config.get("optim", {}) if isinstance(config.get("optim"), Mapping) else {}
    data = config.get("data", {}) if isinstance(config.get("data"), Mapping) else {}
    return {
        "path": loaded.path,
        "format": loaded.kind,
        "size_bytes": os.path.getsize(loaded.path),
        "arch": loaded.arch,
        "epoch": loaded.stored_epoch,
        "next_epoch": loaded.epoch,  # where training continues, counted from 0 (torchvision's files: epoch + 1)
        "step": loaded.step,
        "best_acc1": loaded.best_acc1,
        "num_classes": len(loaded.class_names) if loaded.class_names else None,
        "outputs": _outputs(loaded),
        "class_names": loaded.class_names,
        "preprocessing": loaded.preprocessing,  # a weights file's own evaluation view (an exported safetensors)
        "parameters": params,
        "tensors": len(loaded.state_dict),
        "resumable": loaded.optimizer_state is not None,
        "precision": loaded.precision,  # what the run trained in (files before 2026-12-02: None)
        "weight_average": _describe_ema(loaded),
        "ranks_with_random_state": len(loaded.rng_states or []),
        "command": config.get("command"),
        "data": "fake data" if data.get("fake") else data.get("path"),
        "epochs": optim.get("epochs"),
        "batch_size": optim.get("batch_size"),
        "lr": optim.get("lr"),
        **_describe_recipe(loaded),
        "never_taken_from_file": _never_taken(loaded) or None,
        "notes": list(loaded.notes) or None,
        "versions": loaded.versions,
    }


def _outputs(loaded: LoadedCheckpoint) -> int | None:
    """The width of the classifier, which may exceed the classes (the reference script's 1000)."""
    from ..core.model_sources import Source
    from ..core.models import check_arch, head_num_classes

    try:
        if Source.parse(loaded.arch or "").is_code:
            return None  # finding its head would run the code the file names: inspect never does

        check_arch(loaded.arch or "")
        return head_num_classes(loaded.arch or "", loaded.state_dict)
    except (UserError, ValueError, TypeError):
        return None


def _describe_ema(loaded: LoadedCheckpoint) -> str | None:
    if loaded.state_dict_ema is None:
        return None
    if loaded.ema_updates is None:
        return "present (--model-ema); `evaluate --ema` scores it"
    return (
        f"model_ema, averaged over {loaded.ema_updates} updates; its `module.` prefix comes from torch's "
        "AveragedModel, not from DDP; `evaluate --ema` scores it"
    )


def _describe_recipe(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """torchvision's stored `args`: what a resume takes as this tool's options, and what has no equivalent."""
    if loaded.recipe is None:
        return {}
    translation = translate(loaded.recipe)
    return {"recipe": translation.options, "recipe_without_equivalent": translation.without_equivalent or None}


def _never_taken(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """Stored settings of where the run happened (addresses, ranks, GPUs, folders): shown, never obeyed."""
    config = loaded.config or {}
    dist = config.get("dist") if isinstance(config.get("dist"), Mapping) else {}
    stored = {**dist, **{k: config.get(k) for k in ("output_dir", "log_dir")}}
    ignored = {k: v for k, v in stored.items() if k in PLACEMENT and v is not None and v != default_for("train", k)}
    if loaded.recipe is not None:
        ignored.update({k: v for k, v in loaded.recipe.items() if k in NEVER_TAKEN and v not in (None, "", False)})
    return dict(sorted(ignored.items()))
