"""`--config FILE`: options from a JSON, TOML or YAML file whose keys are the long flag names.

A recipe file is read as if its options had been typed before everything on the command line, so a flag
typed after it wins. A run's own `config.json` is such a file. A recipe says what to train, never where:
options that name addresses, ranks, GPUs or folders to write to are refused in it.

A recipe is a flat table of a few dozen options, so what one may hold is bounded: at most MAX_RECIPE_BYTES,
and no YAML aliases (`*name`). Aliases are never needed to write a table of options, and nested ones make
a file of a few hundred bytes expand to gigabytes (the "billion laughs"). A value echoed in an error is
cut to a short length.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import types
from typing import Any

from ..config import INVOCATION_ONLY, OPTION_NAMES, OPTIONS, PLACEMENT, default_for, type_problem
from ..config.options import file_key
from ..core.errors import UserError
from ..core.model_sources import Source
from ..core.text import clip

MAX_RECIPE_BYTES = 1 << 20  # a recipe of every option is about 3 KB


def read_options(path: str, command: str, aliases: dict[str, str]) -> dict[str, Any]:
    """The file's options by their configuration names, checked for name and type. Relative paths in it
    are taken from the current directory, as on the command line."""
    raw = _parse(path)
    recipe_command = raw.pop("command", None)
    if recipe_command not in (None, command):
        shown = clip(recipe_command)
        raise UserError(f"{path} is a {shown} recipe; run it with `imagenet-cli {shown} --config`")
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise UserError(f"{path}: option names are words, not {clip(repr(key))}")
        name = option_name(key, aliases)
        if name not in OPTION_NAMES:
            raise UserError(f"{path}: unknown option {clip(repr(key))}{_suggest(key)}")
        if name in INVOCATION_ONLY | PLACEMENT and value in (None, default_for(command, name)):
            continue  # config.json of earlier versions records these at their defaults: nothing is asked
        if name in INVOCATION_ONLY:
            raise UserError(
                f"{path} sets {clip(repr(key))}: that is a choice of one command line (like --resume, --json or "
                "--download), not of a recipe; give it there"
            )
        if name in PLACEMENT:
            raise UserError(
                f"{path} sets {clip(repr(key))}: where a run happens (addresses, ranks, GPUs, output and log "
                "folders) is never taken from a file; give it on the command line"
            )
        if value is None:
            continue  # a null is the default: not given
        if name == "arch" and isinstance(value, str) and Source.parse(value).is_code:
            raise UserError(
                f"{path} sets arch {clip(repr(value))}: a recipe never names code to run; give --arch on the command line"
            )
        wanted = type_problem(name, value)
        if wanted:  # `lr = "0.1"` is caught in the file, not deep inside a worker
            raise UserError(f"{path}: {key} must be {wanted}, got {clip(repr(value))}")
        options[name] = _declared_case(name, value)
    return options


def _declared_case(name: str, value: Any) -> Any:
    """A choice as declared, whatever its case (`amp = "BF16"`), as the command line takes `--amp BF16`;
    a value no choice matches is left for the configuration's own check to refuse by name."""
    choices = OPTIONS[name].choices
    if choices and isinstance(value, str):
        return next((c for c in choices if c.casefold() == value.casefold()), value)
    return value


def option_name(key: str, aliases: dict[str, str]) -> str:
    """`--lr-step-size`, `lr-step-size` and `lr_step_size` all name the same option; so does any other
    name the command's flag has (`aliases`, from the command itself: `train_crop_size`, `data`, `fake_data`)."""
    name = key.lstrip("-").replace("-", "_")
    return aliases.get(name, name)


def _parse(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise UserError(f"--config {path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise UserError(f"--config {path}: give a .json, .toml or .yaml file")
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_RECIPE_BYTES + 1)
        if len(text) > MAX_RECIPE_BYTES:
            raise UserError(f"--config {path} is larger than {MAX_RECIPE_BYTES:,} bytes; a recipe is a few KB")
        if suffix == ".json":
            raw = json.loads(text)
        elif suffix == ".toml":
            raw = _toml().loads(text.decode())
        else:
            raw = _load_yaml(text, path)
    except UserError:
        raise
    except Exception as exc:  # each parser has its own error type; all mean "not valid"
        reason = clip(" ".join(str(exc).split()), 240)
        raise UserError(f"--config {path} is not valid {suffix[1:].upper()}: {reason}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"--config {path} must hold a table of option = value pairs")
    return raw


def _toml() -> types.ModuleType:
    """tomllib from Python 3.11 on; before it, tomli (the same parser), a dependency there."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise UserError('TOML recipes on Python 3.10 need tomli: pip install "tomli>=2" (or use JSON)') from exc
    return tomllib


def _yaml() -> types.ModuleType:
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise UserError('YAML recipes need PyYAML: pip install "imagenet-cli[yaml]" (or use TOML or JSON)') from exc
    return yaml


def _load_yaml(text: bytes, path: str) -> Any:
    """PyYAML's safe loading (plain data, no Python objects), refusing aliases before they are resolved."""
    yaml = _yaml()

    class RecipeLoader(yaml.SafeLoader):  # type: ignore[name-defined,misc]
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                line = self.peek_event().start_mark.line + 1
                raise UserError(
                    f"--config {path}: line {line}: YAML aliases (*name) are not accepted in recipes; write the value out"
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: plain data, never Python objects


def _suggest(key: str) -> str:
    names = sorted(file_key(n, OPTIONS.get(n)) for n in OPTIONS if n not in INVOCATION_ONLY)
    close = difflib.get_close_matches(key.lstrip("-").replace("_", "-"), names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
