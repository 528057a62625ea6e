"""How the command's process starts and ends, so that a short run pays for neither more than it must.

- Start: a run command imports torch, torchvision and the run's modules (seconds) with the cyclic
  garbage collector paused. Those imports create millions of objects that live as long as the process;
  collecting while they are made rescans them again and again and frees nothing (about a seventh of the
  import time). What exists afterwards is frozen: later collections skip it, and forked loader workers
  do not copy its memory pages by touching their GC headers.
- End: once a command that loaded torch is done, its output flushed, its threads joined and its exit
  handlers run, the process ends at once (`os._exit`). The interpreter's own teardown, freeing every
  module and object one by one, takes seconds with torch loaded and produces nothing: every file was
  closed and every loader worker stopped by the command itself.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

Body = Callable[[dict[str, Any], dict[str, Any]], None]


def preloaded(body: Body) -> Body:
    """A run command's body, which first imports what every run uses with collection paused."""

    @functools.wraps(body)
    def run(given: dict[str, Any], extras: dict[str, Any]) -> None:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            from ..core import models  # noqa: F401  (torch, torchvision: what the configuration checks)
            from ..run import launch  # noqa: F401  (the run's modules, data to report)
        finally:
            gc.freeze()
            if was_enabled:
                gc.enable()
        body(given, extras)

    return run


def leave(code: int) -> NoReturn:
    """End the process with `code`: at once when torch is loaded (see above), else as Python does."""
    if "torch" not in sys.modules:
        sys.exit(code)
    for thread in threading.enumerate():  # what the interpreter would wait for
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what the interpreter would run: logging's flush, multiprocessing's joins
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more to say there
            stream.flush()
    os._exit(code)
