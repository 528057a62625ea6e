"""The recipe inside a checkpoint of torchvision's classification reference, as this tool's options.

torchvision's `references/classification/train.py` stores its whole `argparse` namespace as `args`. A
resume of such a file continues with that recipe where this tool has the same option (by another name,
or another unit: its `--batch-size` is per process, ours the total), and says which settings it took,
which have no equivalent here, and which it never takes from a file: where a run happens (paths,
addresses, devices) comes only from the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import AUTO_AUGMENT_POLICIES, INTERPOLATIONS, WARMUP_METHODS

# torchvision's name -> (our option, how its value becomes ours)
_SAME = lambda value, _args: value  # noqa: E731
_SCHEDULES = {"steplr": "step", "cosineannealinglr": "cosine", "exponentiallr": "exponential"}


def _one_of(choices: Collection[str]) -> Callable[[Any, Mapping[str, Any]], Any]:
    """A name this tool knows, or None (no equivalent here)."""
    return lambda value, _args: str(value).lower() if str(value).lower() in choices else None


def _batch(value: Any, args: Mapping[str, Any]) -> Any:
    """Per process there; the total over every process here."""
    return int(value) * max(1, int(args.get("world_size") or 1))


def _optimizer(value: Any, _args: Mapping[str, Any]) -> Any:
    name = str(value).lower()
    if name.startswith("sgd"):
        return "nesterov" if "nesterov" in name else "sgd"
    return name if name in ("adamw", "rmsprop") else None


def _ema_decay(value: Any, args: Mapping[str, Any]) -> Any:
    """torchvision scales its decay by how many updates a run makes (world size × batch × EMA steps /
    epochs); ours is the decay of one update, so the scaled value is the one to continue with."""
    adjust = max(1, int(args.get("world_size") or 1)) * int(args["batch_size"]) * int(args["model_ema_steps"])
    alpha = min(1.0, (1.0 - float(value)) * adjust / max(1, int(args["epochs"])))
    return 1.0 - alpha


# torchvision's settings that are ours under the same name and unit
_SAME_NAMES = (
    "epochs", "lr", "momentum", "weight_decay", "norm_weight_decay", "bias_weight_decay", "label_smoothing",
    "mixup_alpha", "cutmix_alpha", "lr_step_size", "lr_gamma", "lr_min", "lr_warmup_epochs", "lr_warmup_decay",
    "ra_magnitude", "augmix_severity", "random_erase", "val_crop_size", "val_resize_size", "model_ema",
    "model_ema_steps", "sync_bn", "print_freq",
)  # fmt: skip
TRANSLATIONS: dict[str, tuple[str, Callable[[Any, Mapping[str, Any]], Any]]] = {
    **{name: (name, _SAME) for name in _SAME_NAMES},
    "model": ("arch", _SAME),
    "train_crop_size": ("image_size", _SAME),
    "clip_grad_norm": ("grad_clip", _SAME),
    "batch_size": ("batch_size", _batch),
    "opt": ("opt", _optimizer),
    "lr_scheduler": ("lr_scheduler", lambda value, _args: _SCHEDULES.get(str(value).lower())),
    "lr_warmup_method": ("lr_warmup_method", _one_of(WARMUP_METHODS)),
    "auto_augment": ("auto_augment", _one_of(AUTO_AUGMENT_POLICIES)),
    "interpolation": ("interpolation", _one_of(INTERPOLATIONS)),
    "model_ema_decay": ("model_ema_decay", _ema_decay),
}
# Where and how that run ran, never taken from a file; and bookkeeping that is not a setting.
NEVER_TAKEN = frozenset({
    "data_path", "output_dir", "resume", "device", "dist_url", "world_size", "rank", "gpu", "distributed",
    "dist_backend", "workers", "start_epoch", "test_only", "cache_dataset", "amp", "weights",
})  # fmt: skip


@dataclass
class Translation:
    """Options by this tool's names, and what the user should hear about the rest."""

    options: dict[str, Any] = field(default_factory=dict)
    taken: list[str] = field(default_factory=list)  # torchvision's names
    without_equivalent: list[str] = field(default_factory=list)
    not_taken: list[str] = field(default_factory=list)

    def lines(self, source: str) -> list[str]:
        """One line each: what came from the file, what has no equivalent here, what a file never sets."""
        out = [f"{source}: torchvision's recipe taken where this tool has the option: " + _listed(self.taken)]
        if self.without_equivalent:
            out.append(f"{source}: torchvision settings with no equivalent here: {_listed(self.without_equivalent)}")
        if self.not_taken:
            out.append(
                f"{source}: never taken from a file (where and how a run happens comes from this command line): "
                + _listed(self.not_taken)
            )
        return out


def translate(args: Mapping[str, Any]) -> Translation:
    """torchvision's `args` as this tool's options. Settings left at a value that means "off" there
    (None) are skipped quietly; values our options cannot hold are listed as having no equivalent."""
    result = Translation()
    for name in sorted(args):
        value = args[name]
        if name in NEVER_TAKEN:
            result.not_taken.append(name)
            continue
        if name not in TRANSLATIONS:
            if value not in (None, False, 0, 0.0, ""):
                result.without_equivalent.append(name)
            continue
        ours, convert = TRANSLATIONS[name]
        try:
            converted = convert(value, args) if value is not None else None
        except (KeyError, TypeError, ValueError):
            converted = None
        if converted is None:
            if value is not None:
                result.without_equivalent.append(f"{name}={value}")
            continue
        result.options[ours] = converted
        result.taken.append(name)
        if name == "lr_warmup_epochs" and args.get("model_ema"):
            # torchvision's average copies the weights during the LR warmup, and starts averaging after it
            result.options["model_ema_warmup_epochs"] = float(value)
    return result


def _listed(names: list[str]) -> str:
    return ", ".join(names) if names else "nothing"
