"""Decisions every rank must take at the same step: stop for a signal (preemption), or save mid-epoch.

A signal may reach the ranks of a job at different moments (SLURM, torchrun and a terminal all deliver
it differently), so no rank acts on its own flag. After each step the ranks sum their flags with an
asynchronous all-reduce on a CPU (Gloo) group, and everyone acts on the result one step later: the same
step everywhere, with no GPU synchronisation and no wait in the training loop.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from ..core.context import DistContext

STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None)


@dataclass(frozen=True)
class Decision:
    stop: bool = False
    save: bool = False


class StepControl:
    """Install with `with StepControl(...) as control:` around training; call `after_step` after every
    optimizer step and `at_epoch_end` after every epoch, on every rank."""

    def __init__(
        self, ctx: DistContext, save_every_steps: int | None = None, save_every_minutes: float | None = None
    ) -> None:
        self.ctx = ctx
        self.save_every_steps = save_every_steps
        self.save_every_seconds = save_every_minutes * 60 if save_every_minutes else None
        self.signal_name: str | None = None
        self._signalled = 0.0
        self._last_save = time.monotonic()
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._group = None
        if ctx.distributed:  # a CPU group, so the vote never waits on the GPU stream
            self._group = dist.new_group(backend="gloo") if ctx.backend != "gloo" else dist.group.WORLD

    def __enter__(self) -> StepControl:
        self._previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._collect()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # A second Ctrl-C means "now". One keypress can arrive twice (from the terminal and forwarded by
        # the launching process), hence the second must come a moment later to count.
        if self.signal_name is not None and signum == signal.SIGINT and time.monotonic() - self._signalled > 1.0:
            raise KeyboardInterrupt
        if self.signal_name is None:
            self.signal_name, self._signalled = signal.Signals(signum).name, time.monotonic()

    def after_step(self, step: int) -> Decision:
        """Step counts from 1 within the epoch. Saves by step count need no vote: every rank counts alike."""
        by_steps = bool(self.save_every_steps) and step % self.save_every_steps == 0  # type: ignore[operator]
        local = torch.tensor([self.signal_name is not None, self._time_to_save()], dtype=torch.int32)
        if not self.ctx.distributed:
            return Decision(stop=bool(local[0]), save=by_steps or bool(local[1]))
        agreed = self._collect()
        self._pending = (dist.all_reduce(local, group=self._group, async_op=True), local)
        return Decision(stop=bool(agreed[0]), save=by_steps or bool(agreed[1]))

    def at_epoch_end(self) -> bool:
        """Whether to stop now that the epoch's checkpoint is written (a signal during validation)."""
        self._last_save = time.monotonic()
        stop = torch.tensor([self.signal_name is not None], dtype=torch.int32)
        if self.ctx.distributed:
            pending = self._collect()
            dist.all_reduce(stop, group=self._group)
            stop += pending[0]
        return bool(stop[0])

    def _time_to_save(self) -> bool:
        """Rank 0's clock decides (clocks differ); it raises the flag once per interval."""
        if self.save_every_seconds is None or not self.ctx.is_main:
            return False
        if time.monotonic() - self._last_save < self.save_every_seconds:
            return False
        self._last_save = time.monotonic()
        return True

    def _collect(self) -> torch.Tensor:
        """The previous step's vote (zeros if none is pending)."""
        if self._pending is None:
            return torch.zeros(2, dtype=torch.int32)
        work, result = self._pending
        work.wait()
        self._pending = None
        return result
