"""Where a rank stands in its run (rank, world size, device) and the collectives every rank calls alike.

A value object and a few reductions: the engine, the loaders and the checkpoints use them without knowing
how the processes were started (run/distributed.py does that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks in place (a no-op alone); counts stay exact, so distributed metrics equal
    single-process ones."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def gather_to_main(obj: object, ctx: DistContext) -> list[object] | None:
    """Every rank's `obj` on the main rank, in rank order (None elsewhere); all ranks must call it."""
    if not ctx.distributed:
        return [obj]
    gathered: list[object] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
