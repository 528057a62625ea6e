"""Command signatures made from the option declarations, and the typed values back to `given`.

Typer reads a command's parameters from `inspect.signature`; a run command's signature is built here
from the options its configuration declares (config.options_of), so an option is written once, on its
field. Every parameter defaults to None, meaning "not given": that is how `resume` tells typed values from
the stored ones.
"""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer

from ..config import OPTIONS, default_for, field_types, options_of
from ..config.options import Option, file_key, long_flags
from ..core.errors import UserError
from ..core.formats import url_scheme
from .exits import one_line_errors

ALIAS_SUFFIX = "_alias"  # the parameter of an argument's option form (DATA as --data)


def typed(name: str, command: str = "train") -> Any:
    """`Annotated[type, typer.Option(...)]` of a declared option, for any command's signature (the tool
    commands take --workers, --json or --data-format from the same declaration)."""
    return _annotation(name, OPTIONS[name].on(command), command)


def _annotation(name: str, found: Option, command: str) -> Any:
    kind = choice_of(found.choices) if found.choices else _value_type(name)
    if found.argument:
        info = typer.Argument(metavar=found.flags[0], help=found.help, show_default=False)
        return Annotated[kind if found.required else kind | None, info]
    info = typer.Option(*found.flags, help=found.help, show_default=_shown(name, found, command),
                        rich_help_panel=found.panel, metavar=found.metavar, case_sensitive=False)  # fmt: skip
    if kind is bool:
        return Annotated[bool | None if found.toggle else bool, info]
    return Annotated[kind | None, info]


def choice_of(choices: tuple[str, ...]) -> Any:
    """`Literal["sgd", "nesterov", ...]`: Typer lists a Literal's values in --help (`<sgd|nesterov|...>`),
    completes them in the shell and refuses any other on the command line, in one line; a value typed in
    another case (`--amp BF16`) arrives as declared (`case_sensitive=False`, which only choices heed).
    Values from files are still checked by the configuration, which holds the same tuple."""
    return Literal[choices]


def _shown(name: str, found: Option, command: str) -> str | bool:
    if found.show_default is not None:
        return found.show_default
    default = default_for(command, name)
    return str(default) if default not in (None, False) else False


def _value_type(name: str) -> type:
    """The field's type without None: `int | None` -> int; a pair stays a pair, so Typer reads two values
    (`--crop-scale 0.35 1`)."""
    hint = field_types()[name]
    if typing.get_origin(hint) is tuple:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def signature(command: str, extra: dict[str, Any] | None = None) -> inspect.Signature:
    """Parameters of a run command: its declared options (arguments first, as typed on a command line),
    then `extra` ones ({name: annotation}) that set no configuration field (`--config`)."""
    params, options = [], []
    for name, found in options_of(command).items():
        param_name = found.param or name
        if found.argument:
            default = inspect.Parameter.empty if found.required else None
            params.append(_param(param_name, _annotation(name, found, command), default))
            if found.alias:
                info = typer.Option(found.alias, help=f"{found.flags[0]}, given as an option.", show_default=False,
                                    rich_help_panel=found.panel)  # fmt: skip
                options.append(_param(param_name + ALIAS_SUFFIX, Annotated[str | None, info], None))
            continue
        default = None if found.toggle or _value_type(name) is not bool else False
        options.append(_param(param_name, _annotation(name, found, command), default))
    options.extend(_param(name, annotation, None) for name, annotation in (extra or {}).items())
    required = [p for p in params if p.default is inspect.Parameter.empty]  # CHECKPOINT before [DATA]
    return inspect.Signature(required + [p for p in params if p not in required] + options)


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)


Body = Callable[[dict[str, Any], dict[str, Any]], None]


def command(name: str, body: Body, extra: dict[str, Any] | None = None) -> Callable[..., None]:
    """A Typer command function for run command `name` whose parameters come from the declarations;
    `body(given, extras)` gets the typed options by configuration name and the extra parameters."""
    sig = signature(name, extra)
    by_param = {found.param or key: key for key, found in options_of(name).items()}

    def run(**values: Any) -> None:
        with one_line_errors(bool(values.get("debug"))):
            extras = {k: values.pop(k) for k in list(values) if k in (extra or {})}
            body(given_options(values, by_param), extras)

    run.__signature__ = sig  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()}
    run.__name__, run.__doc__ = name.replace("-", "_"), body.__doc__
    return run


def given_options(values: dict[str, Any], by_param: dict[str, str]) -> dict[str, Any]:
    """The options a user typed, by configuration name: None (absent) and an unset flag (False) are not
    given; `--no-x` of a toggle is. Paths are made absolute (`--resume auto` stays a word)."""
    _merge_aliases(values)
    given: dict[str, Any] = {}
    for param, value in values.items():
        name = by_param[param]
        found = OPTIONS[name]
        if value is None or (value is False and not found.toggle):
            continue
        if found.filename and not (name == "resume" and value == "auto") and not url_scheme(value):
            value = os.path.abspath(value)
        given[name] = value
    return given


def _merge_aliases(values: dict[str, Any]) -> None:
    for param in [p for p in values if p.endswith(ALIAS_SUFFIX)]:
        alias, argument = values.pop(param), param.removesuffix(ALIAS_SUFFIX)
        if alias is not None and values.get(argument) not in (None, alias):
            raise UserError("DATA was given twice (as an argument and as --data); give it once")
        if alias is not None:
            values[argument] = alias


def recipe_aliases(command: str) -> dict[str, str]:
    """Every long flag of a run command (`train-crop-size`, `wd`, `dummy`) and every file key, by the
    option it sets, so a recipe file may use any name the command line accepts."""
    names: dict[str, str] = {}
    for name, found in options_of(command).items():
        for flag in [*long_flags(found), file_key(name, found), *([found.alias[2:]] if found.alias else [])]:
            names[flag.replace("-", "_")] = name
    return names
