"""The architectures `--arch` accepts (`imagenet-cli models`): torchvision's registry and its weights'
metadata, without building a model.

The facts come from torchvision's weights metadata (parameters, evaluation sizes, ImageNet top-1); an
architecture without published weights is counted on the meta device. Importing torchvision takes
seconds, far longer than listing, and the list changes only with torchvision: so the catalogue is kept
in the user's cache under the installed versions' names (read from their metadata, without importing
them), and a `models` after the first answers without importing torch. The cache is data like any other
file the tool reads: bounded, checked row by row, rebuilt when it is anything but a catalogue.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from typing import Any

from ..core.atomicfile import write_text
from ..core.errors import UserError
from . import installed_version

ROW_KEYS = ("name", "parameters", "crop_size", "resize_size", "imagenet_acc1")
CACHE_FORMAT = 1  # raise when rows change shape: an older cache is then never read
MAX_CACHE_BYTES = 1 << 20  # torchvision's 80 classifiers take about 8 KB
SHIPPED = os.path.join(os.path.dirname(__file__), "torchvision_models.json")
ARCH_NAME = re.compile(r"[A-Za-z0-9_]{1,80}")  # how torchvision names its builders: nothing a terminal acts on


def list_models(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per torchvision classifier whose name contains `pattern` (any case); an error if none does,
    so a typo is not mistaken for an empty zoo."""
    rows = catalogue()
    matching = [row for row in rows if not pattern or pattern.lower() in row["name"].lower()]
    if not matching:
        raise UserError(f"no architecture matches {pattern!r}; `imagenet-cli models` lists all {len(rows)}")
    return matching


def list_timm_models(pattern: str | None = None) -> list[dict[str, Any]]:
    """timm's architectures whose name contains `pattern`, as `--arch timm/NAME`; parameters are counted
    (on the meta device) only for a short list, sizes come from each model's `pretrained_cfg`."""
    from ..core.model_sources import TIMM, timm_input, timm_module

    names = timm_module().list_models(f"*{pattern}*" if pattern else "*")
    if not names:
        raise UserError(f"timm has no model matching {pattern!r}; `imagenet-cli models --source timm` lists them all")
    rows = []
    for name in names:
        sizes = timm_input(name)
        count = parameter_count(TIMM + name) if len(names) <= 20 else None
        rows.append({"name": TIMM + name, "parameters": count, "crop_size": sizes.get("val_crop_size"),
                     "resize_size": sizes.get("val_resize_size"), "imagenet_acc1": None})  # fmt: skip
    return rows


def catalogue(cache: str | None = None) -> list[dict[str, Any]]:
    """Every classifier's row, from the cache of these versions when it holds one, else from torchvision
    (then cached; a cache that cannot be written is skipped, the listing is the same)."""
    path = cache if cache is not None else cache_path()
    rows = _read_cache(path) if path else None
    if rows is None and cache is None:
        rows = _shipped()
    if rows is None:
        rows = [describe_model(name) for name in _classifier_names()]
        if path:
            with contextlib.suppress(UserError, OSError):  # a read-only home, a full disk: list without caching
                write_text(path, json.dumps({"format": CACHE_FORMAT, "models": rows}))
    return rows


def cache_path(env: dict[str, str] | None = None) -> str | None:
    """$XDG_CACHE_HOME/imagenet-cli (~/.cache/imagenet-cli) models-<versions>.json: a new torch, torchvision or
    imagenet-cli is a new file. None when the versions cannot be read (a source tree never installed)."""
    env = dict(os.environ) if env is None else env
    versions = [installed_version(name) for name in ("imagenet-cli", "torch", "torchvision")]
    if None in versions:
        return None
    root = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = re.sub(r"[^A-Za-z0-9.+_-]", "_", "-".join(versions))
    return os.path.join(root, "imagenet-cli", f"models-{CACHE_FORMAT}-{key}.json")


def _shipped() -> list[dict[str, Any]] | None:
    """The catalogue shipped with the package (SHIPPED), when it was listed from the torchvision installed
    here: even a first `models` then answers without importing torch (`python -m imagenet_cli.tools.catalogue`
    writes it; a test keeps it equal to what torchvision lists)."""
    installed = installed_version("torchvision")
    if installed is None:
        return None
    return _read_cache(SHIPPED, torchvision=installed.split("+")[0])  # 0.29.1+cu130 lists the same


def _read_cache(path: str, torchvision: str | None = None) -> list[dict[str, Any]] | None:
    """The cached rows, or None when there is no cache or it is not one this version wrote (nor, with
    `torchvision`, one listed from that torchvision: the shipped catalogue says which it was)."""
    try:  # not blocking: a FIFO under the cache's name must not hang `models`; only a regular file is read
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            text = f.read(MAX_CACHE_BYTES + 1)
        stored = json.loads(text) if len(text) <= MAX_CACHE_BYTES else None
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python recurses
        return None
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT:
        return None
    if torchvision is not None and stored.get("torchvision") != torchvision:
        return None
    rows = stored.get("models")
    if not isinstance(rows, list) or not rows or not all(_is_row(row) for row in rows):
        return None
    return rows


def _is_row(row: Any) -> bool:
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    return (
        isinstance(row, dict)
        and tuple(row) == ROW_KEYS
        and isinstance(row["name"], str)
        and ARCH_NAME.fullmatch(row["name"]) is not None
        and whole(row["parameters"])
        and all(row[key] is None or whole(row[key]) for key in ("crop_size", "resize_size"))
        and (row["imagenet_acc1"] is None or _percentage(row["imagenet_acc1"]))
    )


def _percentage(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0 <= value <= 100


def _classifier_names() -> tuple[str, ...]:
    from ..core.models import classification_models

    return classification_models()


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
    import torchvision

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


if __name__ == "__main__":  # write SHIPPED from the torchvision installed here
    import torchvision

    rows = [describe_model(name) for name in _classifier_names()]
    shipped = {"format": CACHE_FORMAT, "torchvision": torchvision.__version__.split("+")[0], "models": rows}
    write_text(SHIPPED, json.dumps(shipped, indent=0) + "\n")
