"""Faults on purpose: the fault-injection tests make a rank fail in a chosen way at a chosen step.

`IMAGENET_CLI_FAULT="nan:rank=1,epoch=0,step=3"` poisons that rank's loss at that step;
`"raise:rank=1,step=2"` raises an error there. Fields left out match anything. Nothing happens when the
variable is unset, which is always, outside tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

ENV = "IMAGENET_CLI_FAULT"
KINDS = ("nan", "raise")


class InjectedFault(RuntimeError):
    """The error a `raise` fault throws, named so tests can find it in the run's output."""


@dataclass(frozen=True)
class Fault:
    kind: str | None = None
    rank: int | None = None
    epoch: int | None = None
    step: int | None = None

    @classmethod
    def from_env(cls) -> Fault:
        spec = os.environ.get(ENV, "")
        if not spec:
            return cls()
        kind, _, fields = spec.partition(":")
        if kind not in KINDS:
            raise ValueError(f"{ENV}: unknown fault {kind!r} (known: {', '.join(KINDS)})")
        where = dict(field.split("=", 1) for field in fields.split(",") if field)
        return cls(kind, **{k: int(v) for k, v in where.items()})

    def apply(self, loss: torch.Tensor, rank: int, epoch: int, step: int) -> torch.Tensor:
        """The loss, poisoned or replaced by an error when this is the fault's place."""
        if self.kind is None or any(
            want is not None and want != have
            for want, have in ((self.rank, rank), (self.epoch, epoch), (self.step, step))
        ):
            return loss
        if self.kind == "raise":
            raise InjectedFault(f"injected failure at epoch {epoch}, step {step}")
        return loss * float("nan")
