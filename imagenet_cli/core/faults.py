"""Faults on purpose: the fault-injection tests make a rank fail in a chosen way at a chosen place.

`IMAGENET_CLI_FAULT="nan:rank=1,epoch=0,step=3"` poisons that rank's loss at that step;
`"raise:rank=1,step=2"` raises an error there; `"crash:epoch=2,file=checkpoint.pth.tar,point=renamed"`
kills the process outright (SIGKILL: nothing of it runs afterwards) when the save of the checkpoint whose
`epoch` is 2 has just renamed that file into place ("written": its temporary file is whole, not yet
renamed); `"nospace:epoch=2"` makes that save's writes fail as on a full disk. Fields left out match
anything. Nothing happens when the variable is unset, which is always, outside tests.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENV = "IMAGENET_CLI_FAULT"
STEP_KINDS = ("nan", "raise")
SAVE_KINDS = ("crash", "nospace")


class InjectedFault(RuntimeError):
    """The error a `raise` fault throws, named so tests can find it in the run's output."""


def _spec() -> tuple[str | None, dict[str, str]]:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None, {}
    kind, _, fields = spec.partition(":")
    if kind not in STEP_KINDS + SAVE_KINDS:
        raise ValueError(f"{ENV}: unknown fault {kind!r} (known: {', '.join(STEP_KINDS + SAVE_KINDS)})")
    return kind, dict(field.split("=", 1) for field in fields.split(",") if field)


@dataclass(frozen=True)
class Fault:
    kind: str | None = None
    rank: int | None = None
    epoch: int | None = None
    step: int | None = None

    @classmethod
    def from_env(cls) -> Fault:
        kind, where = _spec()
        if kind not in STEP_KINDS:
            return cls()
        return cls(kind, **{k: int(v) for k, v in where.items()})

    def apply(self, loss: torch.Tensor, rank: int, epoch: int, step: int) -> torch.Tensor:
        """The loss, poisoned or replaced by an error when this is the fault's place."""
        where = ((self.rank, rank), (self.epoch, epoch), (self.step, step))
        if self.kind is None or any(want is not None and want != have for want, have in where):
            return loss
        if self.kind == "raise":
            raise InjectedFault(f"injected failure at epoch {epoch}, step {step}")
        return loss * float("nan")


@dataclass(frozen=True)
class SaveFault:
    """A crash or a full disk at a chosen instant of one checkpoint save."""

    kind: str | None = None
    epoch: int | None = None
    file: str | None = None
    point: str | None = None

    @classmethod
    def from_env(cls, epoch: int) -> SaveFault:
        """The fault for the save of the checkpoint whose `epoch` field is `epoch`; none for other saves."""
        kind, where = _spec()
        if kind not in SAVE_KINDS or ("epoch" in where and int(where["epoch"]) != epoch):
            return cls()
        return cls(kind, epoch, where.get("file"), where.get("point"))

    @property
    def no_space(self) -> bool:
        return self.kind == "nospace"

    def step(self, path: str, point: str) -> None:
        """`atomic_write`'s progress hook: die here if this is the chosen instant."""
        if self.kind == "crash" and self.file in (None, os.path.basename(path)) and self.point in (None, point):
            os.kill(os.getpid(), signal.SIGKILL)
