"""How a run's local ranks start (`--multiprocessing-distributed`): forked from one server process that
has imported the engine, instead of each spawned afresh.

A rank's imports (torch, torchvision and, through torchvision's ops, torch._dynamo) take about five
seconds of CPU. Spawned ranks pay them once each, all at once, and only after this process has paid them
too. The server starts as soon as the command line knows that it will spawn ranks, imports while this
process is still importing and checking, then forks each rank ready to run. It is a fresh interpreter that
has touched no accelerator and run no tensor operation, so a rank forked from it starts as clean as a
spawned one; forking this process instead would hand ranks its OpenMP threads (a known hang) and whatever
device state it holds. Linux only: elsewhere ranks are spawned as before.

Free of torch, so the command line can call it before importing anything heavy.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Mapping
from typing import Any

# A process that one of these launchers started is one rank already: it never spawns others.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
PRELOADED = ["imagenet_cli.run.worker"]  # a rank's entry point and everything it imports


def launched_by_torchrun(env: Mapping[str, str]) -> bool:
    return all(name in env for name in TORCHRUN_VARS)


def slurm_tasks(env: Mapping[str, str]) -> int:
    """How many tasks SLURM started for this job step (each one rank); 0 outside SLURM."""
    if not all(name in env for name in SLURM_VARS):
        return 0
    return int(env["SLURM_NTASKS"])


def start_method() -> str:
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def starts_ranks(multiprocessing_distributed: bool, env: Mapping[str, str]) -> bool:
    """Whether this process will start the run's local ranks itself: asked to, and not one rank already."""
    try:
        return multiprocessing_distributed and not launched_by_torchrun(env) and slurm_tasks(env) <= 1
    except ValueError:  # a malformed SLURM_NTASKS: the launcher's planning says so, not this guess
        return False


def start_early(multiprocessing_distributed: bool) -> None:
    """Start the server now if this run will start ranks: its imports then overlap this process's."""
    if starts_ranks(multiprocessing_distributed, os.environ) and start_method() == "forkserver":
        context()


def context() -> Any:
    """The multiprocessing context ranks start in; on Linux its server is running (started here if not
    yet) and has imported, or is importing, what a rank runs."""
    chosen = multiprocessing.get_context(start_method())
    if start_method() == "forkserver":
        from multiprocessing import forkserver

        chosen.set_forkserver_preload(PRELOADED)
        forkserver.ensure_running()
    return chosen
