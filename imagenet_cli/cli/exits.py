"""How a command ends when something goes wrong: one line and an exit code; a traceback only with --debug."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, Preempted, UserError, one_line


@contextmanager
def one_line_errors(debug: bool) -> Iterator[None]:
    """One line and a non-zero exit for anything that goes wrong; a traceback only with --debug."""
    try:
        yield
    except typer.Exit:
        raise  # a command's own exit code
    except UserError as exc:
        if debug and not isinstance(exc, Preempted):
            raise
        typer.echo(f"{'' if isinstance(exc, Preempted) else 'error: '}{one_line(exc)}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {one_line(exc)} (run again with --debug for the traceback)", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
