"""How a run starts: in this process, as spawned local workers, or as one of many processes a cluster
launcher (torchrun, srun) already started. It decides *how*, never *what*: every mode ends in
`worker.run` with the same configuration.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

from . import data, distributed, worker
from .config import RunConfig
from .distributed import Topology
from .errors import EXIT_FAILURE, RunFailed, UserError, one_line


def launch(cfg: RunConfig) -> None:
    topology = distributed.plan(cfg.dist)
    preflight(cfg, topology)
    if topology.launcher == "spawn":
        spawn(cfg, topology)
    else:
        index = topology.external_local_rank or 0
        try:
            worker.run(index, cfg, topology)
        except UserError as exc:
            if topology.world_size > 1:
                raise type(exc)(f"rank {topology.global_rank(index)}: {exc}") from exc
            raise


def preflight(cfg: RunConfig, topology: Topology) -> None:
    """Cheap checks before any process starts, so mistakes cost seconds, not a cluster allocation."""
    world = 1 if cfg.dist.data_parallel else topology.world_size
    if cfg.optim.batch_size % world:
        raise UserError(
            f"--batch-size {cfg.optim.batch_size} is the total over {world} processes and must divide evenly "
            f"(each process would get {cfg.optim.batch_size / world:g})"
        )
    if not cfg.data.fake:
        assert cfg.data.path is not None
        needs_train = cfg.command != "evaluate" and not cfg.evaluate_only
        data.check_data_dir(cfg.data.path, ("train", "val") if needs_train else ("val",))
    weights = None if cfg.resume else cfg.model.weights  # a resumed finetune no longer needs its start
    for label, path in (("--resume", cfg.resume), ("--weights", weights), ("checkpoint", cfg.checkpoint)):
        if path and not os.path.isfile(path):
            raise UserError(f"{label}: file not found: {path}")
    if cfg.command != "evaluate" and not cfg.evaluate_only:
        _check_writable(cfg.output_dir)


def _check_writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --output-dir {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise UserError(f"--output-dir {directory} is not writable")


def spawn(cfg: RunConfig, topology: Topology) -> None:
    """Start the local workers; if any fails, stop the others and report the first failure by rank."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    try:
        mp.start_processes(
            _spawned, args=(cfg, topology, errors), nprocs=topology.nproc_per_node, join=True, start_method="spawn"
        )
    except mp.ProcessExitedException as exc:
        rank, message = errors.get() if not errors.empty() else (exc.error_index, f"exited with code {exc.exit_code}")
        raise RunFailed(f"rank {rank} failed: {message}") from None
    except mp.ProcessRaisedException as exc:
        raise RunFailed(f"a worker failed: {one_line(exc)}") from None


def _spawned(index: int, cfg: RunConfig, topology: Topology, errors: Any) -> None:
    """Entry point of a spawned worker: its failure goes to the parent as one line, not a traceback."""
    try:
        worker.run(index, cfg, topology)
    except BaseException as exc:
        if cfg.debug:
            traceback.print_exc()
        errors.put((topology.global_rank(index), one_line(exc)))
        raise SystemExit(EXIT_FAILURE) from None
