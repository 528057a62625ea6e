"""How a run starts: in this process, as spawned local workers, or as one of many processes a cluster
launcher (torchrun, srun) already started. It decides *how*, never *what*: every mode ends in
`worker.run` with the same configuration.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..checkpoint import BEST_NAME, CHECKPOINT_NAME, read_checkpoint
from ..config import WORKERS_PER_CORE, RunConfig
from ..core.errors import EXIT_FAILURE, EXIT_PREEMPTED, Preempted, RunFailed, UserError, one_line
from ..data import checks as datacheck
from ..data import decoders
from ..data import loaders as data
from ..report import records
from ..train.stops import STOP_SIGNALS
from . import distributed, worker
from .distributed import Topology


def launch(cfg: RunConfig) -> None:
    topology = distributed.plan(cfg.dist)
    _check_process_count(cfg, topology)
    # Every process gets a training batch that splits evenly over the run's processes (a typed -b that does
    # not is refused); said once, by the run's first process, when the batch changed.
    cfg, note = data.fit_batch(cfg, topology.world_size)
    if note and not cfg.quiet and topology.global_rank(topology.external_local_rank or 0) == 0:
        print(f"note: {note}", file=sys.stderr, flush=True)
    preflight(cfg, topology)
    if topology.launcher == "spawn":
        spawn(cfg, topology)
    else:
        torchrun = distributed.TORCHELASTIC_ERROR_FILE in os.environ
        (record_for_torchrun(_launched_rank) if torchrun else _launched_rank)(cfg, topology)


def _launched_rank(cfg: RunConfig, topology: Topology) -> None:
    """One rank that a launcher (torchrun, srun) started; its errors name the rank."""
    index = topology.external_local_rank or 0
    try:
        worker.run(index, cfg, topology)
    except UserError as exc:
        if topology.world_size > 1:
            raise type(exc)(f"rank {topology.global_rank(index)}: {exc}") from exc
        raise


# A rank that fails only because a peer died waits this long before its failure is recorded: torchrun stops
# the run at the first failed rank it sees, so the peer's own error becomes the summary's root cause.
PEER_LOSS_GRACE = 5.0
PEER_LOSS = ("Connection closed by peer", "Connection reset by peer")


def record_for_torchrun(run: Callable[..., None]) -> Callable[..., None]:
    """`run`, writing its failure into TorchElastic's error file as well (torch's `record`). This process
    prints one line on its own stderr and exits 1; torchrun's summary reads only the error file, and
    without one its "Root Cause" says N/A: with it, the summary names the error and the rank. That root
    cause is the earliest failure in whole seconds, the lowest rank on a tie: a rank whose collective broke
    because the failing rank exited would often take its place, hence PEER_LOSS_GRACE."""
    from torch.distributed.elastic.multiprocessing.errors import record

    def waiting(*args: object) -> None:
        try:
            run(*args)
        except Exception as exc:
            if any(text in str(exc) for text in PEER_LOSS):
                time.sleep(PEER_LOSS_GRACE)  # torchrun ends this process meanwhile, having recorded the peer
            raise

    return record(waiting)


def preflight(cfg: RunConfig, topology: Topology) -> None:
    """Cheap checks before any process starts, so mistakes cost seconds, not a cluster allocation."""
    _check_flags(cfg, topology)
    if not cfg.data.fake and topology.global_rank(topology.external_local_rank or 0) == 0:  # one survey a run
        needs_train = cfg.command != "evaluate" and not cfg.evaluate_only
        for note in datacheck.preflight(cfg.data, ("train", "val") if needs_train else (cfg.data.val_split,)):
            if not cfg.quiet:
                print(f"note: {note}", file=sys.stderr, flush=True)
    weights = None if cfg.resume else cfg.model.weights  # a resumed finetune no longer needs its start
    for label, path in (("--resume", cfg.resume), ("--weights", weights), ("checkpoint", cfg.checkpoint)):
        if path and not os.path.isfile(path):
            raise UserError(f"{label}: file not found: {path}")
    if cfg.command != "evaluate" and not cfg.evaluate_only:
        _refuse_another_run(cfg)
        _refuse_going_back(cfg)
        _check_writable(cfg.output_dir, "--output-dir")
    if cfg.log_dir:
        _check_writable(cfg.log_dir, "--log-dir")
        here = range(topology.nproc_per_node) if topology.launcher == "spawn" else [topology.external_local_rank or 0]
        for index in here:  # the processes this machine runs
            records.refuse_unsafe_log(records.worker_log_path(cfg.log_dir, topology.global_rank(index)))


def _check_process_count(cfg: RunConfig, topology: Topology) -> None:
    """A process count far beyond the CPU cores (a typo, a recipe) cannot train faster; it must not fork thousands."""
    cores = os.cpu_count() or 1
    on_cpus = topology.launcher == "spawn" and not distributed.accelerator_count(cfg.dist)
    if on_cpus and topology.nproc_per_node > WORKERS_PER_CORE * cores:
        raise UserError(
            f"--nproc-per-node {topology.nproc_per_node} asks for more than {WORKERS_PER_CORE} processes per "
            f"CPU core of this machine ({cores} cores); CPU processes share the cores, so more cannot train faster"
        )


def _check_flags(cfg: RunConfig, topology: Topology) -> None:
    """Combinations that would fail only after every process started, or silently do something else."""
    gpus = distributed.accelerator_count(cfg.dist)
    if cfg.dist.dist_backend == "nccl" and gpus == 0:
        raise UserError("--dist-backend nccl needs CUDA GPUs; this machine has none (use gloo, or leave it out)")
    if cfg.dist.sync_bn and gpus == 0:
        raise UserError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm does not run on the CPU (leave it out)")
    if topology.launcher == "spawn" and gpus and topology.nproc_per_node > gpus:
        raise UserError(
            f"--nproc-per-node {topology.nproc_per_node} asks for more processes than this machine's {gpus} GPU(s); "
            "use one process per GPU (leave --nproc-per-node out), or --no-accel for CPU processes"
        )
    if cfg.data.decode_on_device and not gpus:
        raise UserError("--decode-on-device decodes JPEGs on a CUDA GPU; this run has none (leave the flag out)")
    if cfg.data.decode_on_device and decoders.chosen().decode_jpegs is None:
        raise UserError(
            f"--decode-on-device needs a GPU JPEG decoder, and {decoders.chosen().name} has none here: install "
            "TorchCodec (pip install 'imagenet-cli[decode]'), or leave the flag out"
        )
    if cfg.dist.gpu is not None and topology.world_size > 1:
        raise UserError(
            "--gpu pins the one process of a single-process run; a distributed run gives each process "
            "its local rank's GPU (leave --gpu out)"
        )


def _refuse_another_run(cfg: RunConfig) -> None:
    """A run never overwrites another run's files in its --output-dir (the current directory unless
    given). Only their own run may go on there: resumed from one of its checkpoints in that directory
    (`resume`, `--resume`, `--resume auto`), or, when it never saved one (killed early), started again
    with exactly its options, which is what `--resume auto` does when it finds no checkpoint."""
    directory = cfg.output_dir
    saved = [name for name in (CHECKPOINT_NAME, BEST_NAME) if os.path.lexists(os.path.join(directory, name))]
    found = records.existing_records(directory) + saved
    resumed_from = os.path.dirname(os.path.abspath(cfg.resume)) if cfg.resume else None
    if not found or (resumed_from and os.path.realpath(resumed_from) == os.path.realpath(directory)):
        return
    if not saved and records.records_same_options(directory, cfg):
        return
    if CHECKPOINT_NAME in saved:
        advice = f"or continue it with `imagenet-cli resume {os.path.join(directory, CHECKPOINT_NAME)}`"
    else:
        advice = "(it saved no checkpoint: only its own command, with the same options, may start it again there)"
    raise UserError(f"{directory} already holds another run ({', '.join(found)}); choose a new --output-dir {advice}")


def _refuse_going_back(cfg: RunConfig) -> None:
    """Resuming an older checkpoint (model_best, an epoch copy) where the run's newer one lies would
    overwrite the newer one at the first save: an epoch of work lost without a word."""
    latest = os.path.join(cfg.output_dir, CHECKPOINT_NAME)
    if not cfg.resume or not os.path.isfile(latest) or os.path.samefile(latest, cfg.resume):
        return
    try:
        resumed, newer = read_checkpoint(cfg.resume), read_checkpoint(latest)
    except UserError:
        return  # an unreadable file is reported where it is read
    if newer.is_own and (newer.epoch or 0, newer.step) > (resumed.epoch or 0, resumed.step):
        raise UserError(
            f"{latest} is further on (epoch {newer.epoch}, step {newer.step}) than {cfg.resume} (epoch "
            f"{resumed.epoch}, step {resumed.step}); continuing here would overwrite it: give another --output-dir"
        )


def _check_writable(directory: str, flag: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {flag} {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise UserError(f"{flag} {directory} is not writable")


def spawn(cfg: RunConfig, topology: Topology) -> None:
    """Start the local workers and watch them. Signals sent to this process (SLURM's preemption notice,
    `kill`, Ctrl-C) are passed on, so the workers save and stop together; if one fails, the others are
    stopped within seconds and the first failure is reported by rank."""
    import torch.multiprocessing as mp

    errors = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(
        _spawned, args=(cfg, topology, errors), nprocs=topology.nproc_per_node, join=False, start_method="spawn"
    )
    with _forwarding_signals(context.processes):
        codes, first = _supervise(context.processes)
    if all(code == 0 for code in codes):
        return
    reports = []  # in the order the ranks failed: each reports before leaving its process group
    while not errors.empty():
        reports.append(errors.get())
    raise _root_cause(codes, first, reports, topology)


def _root_cause(codes: list[int], first: int | None, reports: list[Any], topology: Topology) -> UserError:
    """One line about what ended the run: the first failure, not the other ranks' echoes of it."""
    if codes and all(code == EXIT_PREEMPTED for code in codes):
        main = next((r for r in reports if r[0] == topology.global_rank(0)), None) or next(iter(reports), None)
        return Preempted(main[2] if main else "stopped by a signal")
    failures = [(rank, message) for rank, code, message in reports if code != EXIT_PREEMPTED]
    # killed outright, a rank could report nothing (a rank that reported had failed before it died)
    killed = first is not None and codes[first] < 0 and topology.global_rank(first) not in {r for r, _ in failures}
    if failures and not killed:
        return RunFailed(f"rank {failures[0][0]} failed: {failures[0][1]}")
    index = first if first is not None else next(i for i, c in enumerate(codes) if c not in (0, EXIT_PREEMPTED))
    code = codes[index]
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return RunFailed(f"rank {topology.global_rank(index)} {how}; every other rank was stopped")


def _supervise(processes: list[Any], grace_seconds: float = 3.0) -> tuple[list[int], int | None]:
    """Wait for every worker; returns their exit codes and the index of the first to fail. After a
    failure the rest get `grace_seconds` to end on their own (a minute when the first one was preempted:
    its peers are saving too), then SIGTERM, then SIGKILL: nothing is left behind."""
    pending = {p.sentinel: p for p in processes}
    deadline, first = None, None
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(list(pending), timeout=timeout)
        for sentinel in ready:
            process = pending.pop(sentinel)
            process.join()
            if process.exitcode != 0 and deadline is None:
                first = processes.index(process)
                deadline = time.monotonic() + (60.0 if process.exitcode == EXIT_PREEMPTED else grace_seconds)
        if not ready and deadline is not None:
            for process in pending.values():
                process.terminate()
            for process in pending.values():
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join()
            break
    return [p.exitcode if p.exitcode is not None else -signal.SIGKILL for p in processes], first


@contextmanager
def _forwarding_signals(processes: list[Any]) -> Iterator[None]:
    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawned(index: int, cfg: RunConfig, topology: Topology, errors: Any) -> None:
    """Entry point of a spawned worker: its failure goes to the parent as one line, not a traceback, and
    before its process group is torn down, so the parent hears of the first failure first."""

    reported: list[BaseException] = []

    def report(exc: BaseException) -> None:
        reported.append(exc)
        errors.put((topology.global_rank(index), _exit_code(exc), one_line(exc)))

    try:
        worker.run(index, cfg, topology, on_failure=report)
    except BaseException as exc:
        if cfg.debug and not isinstance(exc, Preempted):
            traceback.print_exc()
        if exc not in reported:  # it failed before its process group existed
            report(exc)
        code = _exit_code(exc)
        raise SystemExit(code if code == EXIT_PREEMPTED else EXIT_FAILURE) from None


def _exit_code(exc: BaseException) -> int:
    return exc.exit_code if isinstance(exc, UserError) else EXIT_FAILURE
