"""User-facing failures.

Anything a user can fix (a wrong path, a bad flag, an unreadable checkpoint) is raised as a `UserError`
and reaches the terminal as one line and a non-zero exit code. Everything else is a bug and keeps its
traceback, but only with `--debug`, so logs stay readable.
"""

from __future__ import annotations

EXIT_FAILURE = 1  # the run itself failed (a rank crashed, a bug)
EXIT_USAGE = 2  # bad input: the same code click uses for usage errors
EXIT_PREEMPTED = 75  # stopped by a signal after saving a checkpoint: resume it (EX_TEMPFAIL, "try again")
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


class UserError(Exception):
    """A problem the user can fix; its message is the whole story."""

    exit_code = EXIT_USAGE


class RunFailed(UserError):
    """A run that started but could not finish (for example, a worker rank died)."""

    exit_code = EXIT_FAILURE


class Preempted(UserError):
    """A signal (SIGTERM, SIGINT, SIGUSR1) stopped training after every rank's step and a saved checkpoint."""

    exit_code = EXIT_PREEMPTED


def one_line(exc: BaseException) -> str:
    """Collapse an exception into a single line a log reader can grep for; what it quotes from files
    (names, values) shows as text, never as terminal control sequences."""
    from .text import printable

    text = printable(" ".join(str(exc).split()))
    if isinstance(exc, UserError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
