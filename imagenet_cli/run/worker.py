"""One rank's whole life: join the run, set up the process, train or evaluate, leave cleanly."""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Callable
from typing import IO

import torch

from ..config import RunConfig, flag_values
from ..core import randomness
from ..core.context import DistContext
from ..data import loaders as data
from ..report import records
from ..report.live import Reporter, Reporters, file_reporter, make_reporter
from ..train.evaluation import run_evaluation
from ..train.training import run_training
from . import distributed, hostmemory
from .distributed import Topology


def run(
    local_index: int,
    cfg: RunConfig,
    topology: Topology,
    on_failure: Callable[[BaseException], None] | None = None,
) -> None:
    """`on_failure` hears of an error before the process group is torn down: leaving it makes the other
    ranks fail too, and the launcher must know whose failure came first."""
    ctx = distributed.setup(cfg.dist, topology, local_index)
    try:
        with records.rank_log(cfg.log_dir, ctx.rank, redirect=not ctx.is_main) as log:
            reporter = build_reporter(cfg, ctx, log)
            try:
                _work(cfg, ctx, topology, reporter)
            except BaseException:
                if log is not None:
                    traceback.print_exc(file=log)
                raise
            finally:
                reporter.close()
    except BaseException as exc:
        if on_failure is not None:
            on_failure(exc)
        release_frames(exc)
        raise
    finally:
        distributed.teardown()


def release_frames(exc: BaseException) -> None:
    """Free what the failed run's frames hold (model, DDP, loaders) now, while the interpreter is whole.

    The propagating exception's traceback keeps every frame of the run alive until the process exits, and
    a DDP model freed during interpreter shutdown takes its Gloo process group with it: Gloo's threads
    then meet a half-torn-down interpreter and the rank aborts (SIGABRT, "terminate called without an
    active exception") after it reported its real failure. The traceback keeps its file and line numbers."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    gc.collect()


def _work(cfg: RunConfig, ctx: DistContext, topology: Topology, reporter: Reporter) -> None:
    configure_process(cfg, ctx)
    reporter.message(describe_run(cfg, ctx, topology))
    if cfg.verbose:
        reporter.message("options:\n" + "\n".join(f"  {k}: {v}" for k, v in flag_values(cfg).items()))
    (run_evaluation if cfg.command == "evaluate" else run_training)(cfg, ctx, reporter)


def build_reporter(cfg: RunConfig, ctx: DistContext, log: IO[str] | None) -> Reporter:
    """The console on the main rank; the metrics file and TensorBoard for its training runs; every
    rank's own log with --log-dir."""
    reporters = [make_reporter(ctx.is_main, cfg.quiet, to_stderr=cfg.json, verbose=cfg.verbose)]
    if ctx.is_main and cfg.command != "evaluate" and not cfg.evaluate_only:
        reporters.append(records.MetricsFile(cfg.output_dir, ctx.device, final_epoch=cfg.optim.epochs - 1))
        if cfg.tensorboard:
            reporters.append(records.TensorBoard(cfg.output_dir))
    if log is not None:
        reporters.append(file_reporter(log))
    return Reporters(*reporters)


def describe_run(cfg: RunConfig, ctx: DistContext, topology: Topology) -> str:
    """The first line of every run: what runs where, so a wrong launch is obvious at once."""
    processes = f"{ctx.world_size} process{'es' if ctx.world_size > 1 else ''}"
    if ctx.distributed:
        processes += f" ({topology.source}, {ctx.backend}, {topology.world_size // topology.nproc_per_node} node(s))"
    return f"{cfg.command} {cfg.model.arch} on {ctx.device.type}: {processes}, {_describe_batch(cfg, ctx)}"


def _describe_batch(cfg: RunConfig, ctx: DistContext) -> str:
    """The batch of the run and how it splits: `85 per process`, or `85-86` for an evaluation that does
    not divide; with accumulation, also the batch of an optimizer step, the one the LR is chosen for."""
    total = cfg.optim.batch_size
    text = f"batch {total}"
    if ctx.distributed:
        smallest, largest = max(1, total // ctx.world_size), max(1, -(-total // ctx.world_size))
        share = f"{smallest}" if smallest == largest else f"{smallest}-{largest}"
        text += f" ({share} per process)"
    if cfg.command != "evaluate" and not cfg.evaluate_only and cfg.optim.grad_accum_steps > 1:
        text += f", {total * cfg.optim.grad_accum_steps} per optimizer step"
    return text


def configure_process(cfg: RunConfig, ctx: DistContext) -> None:
    """Threads, host memory, seeds and cuDNN, per process: the reference seeded only the parent of its workers."""
    if ctx.device.type == "cpu":
        hostmemory.keep_freed_memory()
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(data.default_workers(ctx.local_world_size))
    if cfg.seed is not None:
        randomness.seed_everything(cfg.seed)  # the same on every rank: identical initial weights
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.benchmark = True
