"""The run's configuration: frozen, validated once, plain enough to live inside a checkpoint.

The CLI hands over only the flags the user actually typed (`given`); defaults live on the fields, each
declared once with its option (`options.option`). That is what lets `resume` treat the stored
configuration as the base and report exactly which values a command line changed.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from ..core.errors import UserError
from .data import AUTO_AUGMENT_POLICIES, INTERPOLATIONS, VAL_CROP_RATIO, DataConfig
from .model import ModelConfig
from .optim import WARMUP_METHODS, OptimConfig
from .options import Option, declared, file_key
from .run import SECTIONS, TOP_FIELDS, WORKERS_PER_CORE, ComputeConfig, DistConfig, RunConfig, SaveConfig

__all__ = [
    "AUTO_AUGMENT_POLICIES", "INTERPOLATIONS", "VAL_CROP_RATIO", "WARMUP_METHODS", "WORKERS_PER_CORE",
    "ComputeConfig", "DataConfig", "DistConfig", "ModelConfig", "OptimConfig", "RunConfig", "SaveConfig",
    "build_config", "changed_values", "default_for", "flag_values", "from_stored", "options_of", "placement",
    "to_options", "type_problem",
]  # fmt: skip

# In the order --help shows their options: what to train on and with, then how and where, then the run.
ALL_SECTIONS = (DataConfig, ModelConfig, OptimConfig, DistConfig, ComputeConfig, SaveConfig, RunConfig)
OPTIONS: dict[str, Option] = {name: found for name, _, found in declared(ALL_SECTIONS)}
OPTION_NAMES = frozenset(TOP_FIELDS).union(*({f.name for f in dataclasses.fields(s)} for s in SECTIONS.values()))
# Options of one invocation, not of a run (--json, --resume...): never in config.json nor a recipe.
INVOCATION_ONLY = frozenset(name for name, found in OPTIONS.items() if not found.recorded)
# Where a run happens: only from this command line and launcher, never from a checkpoint or recipe.
PLACEMENT = frozenset(name for name, found in OPTIONS.items() if found.placement)
_FIELDS = {spec.name: spec for section in ALL_SECTIONS for spec in dataclasses.fields(section)}
# Values resolved from another option: a new value of the option re-derives them.
_DERIVED = {
    "fake": ("image_size", "val_crop_size", "val_resize_size", "num_classes"),
    "dataset": ("image_size", "val_crop_size", "val_resize_size"),
    "progressive_resize": ("image_size", "val_crop_size", "val_resize_size"),
    "image_size": ("val_crop_size", "val_resize_size"),
    "val_crop_size": ("val_resize_size",),
}


@functools.cache
def field_types() -> dict[str, Any]:
    """Every option's type, resolved once: `get_type_hints` evaluates annotation strings, and --help must
    answer at once."""
    return {name: hint for section in ALL_SECTIONS for name, hint in typing.get_type_hints(section).items()}


def type_problem(name: str, value: Any) -> str | None:
    """What an option's value must be when it is not (a value from a file: `lr = "0.1"`), else None."""
    hint = field_types()[name]
    if typing.get_origin(hint) is tuple:  # a pair (--crop-scale MIN MAX): a list of two numbers in a file
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        return (
            None
            if pair and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            else ("two numbers")
        )
    allowed = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if value is None and type(None) in allowed:
        return None
    allowed.discard(type(None))
    if float in allowed:
        allowed.add(int)
    if isinstance(value, tuple(allowed)) and (bool in allowed or not isinstance(value, bool)):
        return None
    kinds = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return " or ".join(sorted({kinds[t] for t in allowed if not (t is int and float in allowed)}))


def from_stored(raw: Any, source: str) -> RunConfig:
    """A configuration a checkpoint stores, checked as strictly as a command line: every section a table,
    every value of its option's type and in range. A problem names the file, not a flag nobody typed."""
    try:
        if not isinstance(raw, Mapping):
            raise UserError(f"it is a {type(raw).__name__}, not a table")
        values = {k: v for k, v in raw.items() if k not in SECTIONS}
        for name in [n for n in SECTIONS if n in raw]:
            if not isinstance(raw[name], Mapping):
                raise UserError(f"its {name} section is not a table")
            values.update(raw[name])
        for key, value in values.items():
            if key in OPTION_NAMES and (wanted := type_problem(key, value)):
                raise UserError(f"{key} must be {wanted}, got {str(value)[:40]!r}")
        return RunConfig.from_dict(dict(raw))
    except UserError as exc:
        raise UserError(f"{source}: its stored configuration is not valid here: {exc}") from exc
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise UserError(f"{source}: its stored configuration cannot be read ({exc})") from exc


def options_of(command: str) -> dict[str, Option]:
    """The options a run command offers, as it offers them, in declaration order."""
    return {name: found.on(command) for name, found in OPTIONS.items() if command in found.commands}


def default_for(command: str, name: str) -> Any:
    """The default an option has for a command (finetune's shorter schedule)."""
    found = OPTIONS.get(name)
    if found is not None and command in found.defaults:
        return found.defaults[command]
    return _FIELDS[name].default


def flag_values(cfg: RunConfig) -> dict[str, Any]:
    """Every option of the run by its file key (`--verbose` lists them so)."""
    return {file_key(k, OPTIONS.get(k)): v for k, v in cfg.flat().items() if k in OPTIONS or k == "command"}


def to_options(cfg: RunConfig) -> dict[str, Any]:
    """The run's options as a `--config` file holds them: what to train, not where (None: the default)."""
    hidden = {file_key(k, OPTIONS[k]) for k in INVOCATION_ONLY | PLACEMENT}
    return {k: v for k, v in flag_values(cfg).items() if k not in hidden}


def placement(cfg: RunConfig) -> dict[str, Any]:
    """The settings of where a run happened, where they differ from the defaults."""
    values = cfg.flat()
    return {k: values[k] for k in sorted(PLACEMENT) if values[k] != default_for("train", k)}


def build_config(command: str, given: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Merge the flags a user typed over a base: the stored config on resume, else the defaults. Values
    derived from others (validation sizes from the image size) are re-derived unless given, so the stored,
    resolved values of a base do not pin them."""
    unknown = set(given) - OPTION_NAMES
    if unknown:
        raise ValueError(f"unknown option names: {sorted(unknown)}")
    defaults = {name: found.defaults[command] for name, found in OPTIONS.items() if command in found.defaults}
    values = base.flat() if base is not None else {"command": command, **defaults}
    for name in [n for n in given if values.get(n) != given[n]]:
        for derived in _DERIVED.get(name, ()):
            if derived not in given:
                values[derived] = None
    values.update(given)
    if "batch_size_given" not in given:  # typed now, or by the run this one continues
        values["batch_size_given"] = "batch_size" in given or (base is not None and base.optim.batch_size_given)
    sections = {
        name: section(**{f.name: values[f.name] for f in dataclasses.fields(section) if f.name in values})
        for name, section in SECTIONS.items()
    }
    return RunConfig(**{k: values[k] for k in TOP_FIELDS if k in values}, **sections)


def changed_values(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Options whose value differs between two configs: what a resume reports as overridden."""
    old, new = before.flat(), after.flat()
    return {k: (old[k], new[k]) for k in new if old.get(k) != new[k]}
