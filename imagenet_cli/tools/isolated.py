"""Runners that live in a process of their own, so that what we set for our process (the allocator,
threads, cuDNN) does not reach the baseline measured beside it, nor the other way round.

The parent adds runners by naming a module-level factory and its arguments (all picklable); the child
builds them and runs `runner(n)` on request. Work queued on a GPU is waited for before the child answers,
so the parent's clock covers it.
"""

from __future__ import annotations

import gc
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

Runner = Callable[[int], None]


class ChildRunners:
    """A spawned process holding runners; use as a context manager so it always ends."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        # Not a daemon: daemons may not start processes, and the reference's loader has workers.
        self._process = context.Process(target=_serve, args=(child_end,), name="imagenet-cli-baseline")
        self._process.start()
        child_end.close()

    def add(self, name: str, factory: Callable[..., Runner], *args: Any) -> Runner:
        self._ask(("add", name, factory, args))
        return lambda n: self._ask(("run", name, n))

    def clear(self) -> None:
        """Drop every runner and the memory it holds (GPU memory included) before the next part."""
        self._ask(("clear",))

    def _ask(self, message: tuple[Any, ...]) -> None:
        self._conn.send(message)
        try:
            error = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the baseline's process died (exit code {self._process.exitcode})") from None
        if error is not None:
            raise RuntimeError(f"the baseline's process failed: {error}")

    def close(self, wait: float = 30) -> None:
        self._conn.close()  # the child reads end-of-file and returns
        self._process.join(wait)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __enter__(self) -> ChildRunners:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(wait=30 if exc_type is None else 0)  # after an error or Ctrl-C, waiting measures nothing


def _serve(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends this process
    runners: dict[str, Runner] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        try:
            _handle(message, runners)
        except Exception as exc:  # reported to the parent, which raises it there
            conn.send(f"{type(exc).__name__}: {exc}")
        else:
            conn.send(None)


def _handle(message: tuple[Any, ...], runners: dict[str, Runner]) -> None:
    import torch

    if message[0] == "add":
        _, name, factory, args = message
        runners[name] = factory(*args)
    elif message[0] == "run":
        runners[message[1]](message[2])
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    else:
        runners.clear()
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
