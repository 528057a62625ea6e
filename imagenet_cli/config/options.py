"""How an option is declared: once, on the configuration field it sets.

`option(default, *flags, help=..., panel=..., commands=...)` is a dataclass field that also carries its
flag names, help text, panel, the commands that offer it (with what differs per command) and how files
treat it. The command signatures, recipe-file keys, config.json, `--verbose`'s listing and resume's
override report are all derived from these declarations. No typer here: `--help` imports it lazily.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UserError

OPTION = "imagenet_cli.option"  # the dataclass field metadata key

# Help panels, in the order --help shows them.
DATA, MODEL, OPTIM, RECIPE, TRANSFER, DIST, SPEED, RUN = (
    "Data", "Model", "Optimisation", "Recipe (schedules, regularisation, EMA)", "Transfer learning",
    "Distributed", "Speed", "Run",
)  # fmt: skip

# Which of the run commands offer a flag.
TRAINING = frozenset({"train", "finetune"})
RUNS = TRAINING | {"evaluate"}
RESUMABLE = TRAINING | {"resume"}  # training options a resume may change
EVERYWHERE = RUNS | {"resume"}


@dataclass(frozen=True)
class Option:
    """A flag (or positional argument) of the command line, and how files treat it."""

    flags: tuple[str, ...]  # "--lr", "--learning-rate"; an argument: its metavar, e.g. ("DATA",)
    help: str
    panel: str = RUN
    commands: frozenset[str] = TRAINING
    show_default: str | bool | None = None  # None: the field's default, when it has one worth showing
    defaults: Mapping[str, Any] = field(default_factory=dict)  # a command's own default (finetune's schedule)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per command: other flags, help...
    argument: bool = False  # positional, e.g. DATA
    param: str | None = None  # an argument's parameter name (its name in --help's usage line)
    required: bool = False  # an argument without which the command cannot run
    alias: str | None = None  # an argument also given as this option (DATA as --data)
    metavar: str | None = None
    choices: tuple[str, ...] = ()  # the only values it takes: --help lists them, the shell completes them
    toggle: bool = False  # `--x/--no-x`: False is a choice, not an absence
    filename: bool = False  # a path: made absolute where it is typed, so every process reads the same file
    key: str | None = None  # its name in config.json and recipes; None: the field's name with dashes
    recorded: bool = True  # False: one invocation's (json, debug, resume...): not in config.json nor recipes
    placement: bool = False  # where a run happens: never taken from a checkpoint or recipe

    def on(self, command: str) -> Option:
        """This option as `command` offers it."""
        variant = self.variants.get(command)
        return dataclasses.replace(self, **variant) if variant else self


def option(default: Any, *flags: str, help: str, **declared: Any) -> Any:
    """A configuration field with its option declaration (see `Option`)."""
    return field(default=default, metadata={OPTION: Option(flags, help, **declared)})


def declaration(spec: dataclasses.Field) -> Option | None:
    return spec.metadata.get(OPTION)


def declared(sections: tuple[type, ...]) -> Iterator[tuple[str, dataclasses.Field, Option]]:
    """Every declared option of these dataclasses, in declaration order."""
    for section in sections:
        for spec in dataclasses.fields(section):
            if (found := declaration(spec)) is not None:
                yield spec.name, spec, found


def file_key(name: str, found: Option | None) -> str:
    """An option's name in config.json and recipe files."""
    return (found.key if found and found.key else None) or name.replace("_", "-")


def long_flags(found: Option) -> list[str]:
    return [flag.removeprefix("--") for flag in found.flags if flag.startswith("--")]


def check(condition: bool, message: str) -> None:
    """Values are checked once, where they are declared, with messages a user can act on."""
    if not condition:
        raise UserError(message)


def check_choice(flag: str, value: str | None, choices: tuple[str, ...], optional: bool = False) -> None:
    """One of an option's words (None too, when `optional`): a file may hold any text."""
    if not ((optional and value is None) or value in choices):
        raise UserError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
