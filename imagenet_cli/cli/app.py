"""The command line: run commands generated from the option declarations, and the tool commands.

Torch is imported only inside commands, so `imagenet-cli --help` answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..core.errors import UserError, one_line
from . import commands
from .declared import command
from .process import leave, preloaded
from .tools import TOOLS, flag

PYDANTIC_PREFIX = "Value error, "  # Typer checks values with pydantic, which puts this before a refused choice

app = typer.Typer(
    name="imagenet-cli",
    help="Train, evaluate, resume and finetune torchvision image classifiers, on one CPU or many GPUs and nodes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

RECIPE_FILE = {
    "config": flag(
        str | None, "--config",
        help="Options from a recipe file (.toml, .yaml or .json; keys are the long flag names, as in a run's "
        "config.json); flags given here override it.",
    )
}  # fmt: skip


def version_line() -> str:
    """This package's version and the torch and torchvision it would run with, read from their installed
    metadata: importing torch would take seconds, and `--version` answers at once."""
    from .. import __version__
    from ..tools import installed_version

    torch, torchvision = (installed_version(name) or "not installed" for name in ("torch", "torchvision"))
    return f"imagenet-cli {__version__} (torch {torch}, torchvision {torchvision})"


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _everywhere(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """The program's own options (`--version`); the help text is the app's."""


for _name, _body, _extra in (
    ("train", commands.train, RECIPE_FILE),
    ("evaluate", commands.evaluate, None),
    ("resume", commands.resume, None),
    ("finetune", commands.finetune, RECIPE_FILE),
):
    app.command(_name)(command(_name, preloaded(_body), _extra))
for _name, _tool in TOOLS.items():
    app.command(_name)(_tool)


def run(argv: list[str] | None = None) -> int:
    """Run one command line (`sys.argv[1:]` by default) and return its exit code, leaving the process
    alive: what `main` does, less the fast exit, so that one interpreter may run several commands. A usage
    error (an unknown flag, a value of the wrong type) is one line too, like every other error."""
    try:
        code = app(args=argv, prog_name="imagenet-cli", standalone_mode=False)
    except Exception as exc:
        if not hasattr(exc, "format_message") or type(exc).__name__ == "NoArgsIsHelpError":
            if hasattr(exc, "show"):  # no command given: the overview
                exc.show()
                return getattr(exc, "exit_code", 2)
            raise
        command = getattr(getattr(exc, "ctx", None), "command_path", "imagenet-cli")
        message = exc.format_message().replace(PYDANTIC_PREFIX, "")
        typer.echo(f"error: {one_line(UserError(message))} (see `{command} --help`)", err=True)
        return getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console entry point (`imagenet-cli`, `python -m imagenet_cli`, `torchrun -m imagenet_cli`). A command
    that loaded torch ends without the interpreter's teardown (`process.leave`)."""
    leave(run())
