"""Where each process sits in the run, and the process group that joins them.

This is the only module that reads the launcher's environment (torchrun, SLURM). Everything else gets
a `DistContext` value and never asks torch.distributed or os.environ who it is.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import DistConfig
from ..core.context import DistContext
from ..core.errors import RunFailed, UserError

# What the launchers set: the variables that make a process one of their run's, and all that `env` shows.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TORCHRUN_ENV = (
    *TORCHRUN_VARS, "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
)  # fmt: skip
# Where a torchrun worker writes its failure for torchrun's summary ("Root Cause"); torchrun sets it per rank.
TORCHELASTIC_ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
SLURM_ENV = (
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_LOCALID",
    "SLURM_NODEID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_NODELIST", "SLURM_JOB_NODELIST",
    "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_TASK", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_RESTART_COUNT",
)  # fmt: skip
MAX_HOSTS_IN_RANGE = 65536  # as SLURM's hostlist: a typo must not expand to a billion names


@dataclass(frozen=True)
class Topology:
    """How the run's processes are laid out, decided once by the launcher before any of them starts.

    `launcher` is who starts the workers: "single" (this process is the only one), "spawn" (we start
    `nproc_per_node` local workers), "external" (torchrun, srun or the user started every process)."""

    launcher: str
    world_size: int
    nproc_per_node: int
    node_rank: int = 0
    init_method: str | None = None
    external_rank: int | None = None
    external_local_rank: int | None = None
    source: str = "flags"  # who started the processes: flags (the user), spawned, torchrun, slurm

    def global_rank(self, local_index: int) -> int:
        if self.external_rank is not None:
            return self.external_rank
        return self.node_rank * self.nproc_per_node + local_index

    def local_rank(self, local_index: int) -> int:
        return self.external_local_rank if self.external_local_rank is not None else local_index


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def accelerator_count(cfg: DistConfig) -> int:
    """CUDA devices this run may use; counting them does not initialise CUDA, so spawning stays safe."""
    return 0 if cfg.no_accel else torch.cuda.device_count()


def plan(cfg: DistConfig, env: dict[str, str] | None = None) -> Topology:
    """Decide the layout from the launcher's environment first (it knows best), then from flags."""
    env = dict(os.environ) if env is None else env
    if all(k in env for k in TORCHRUN_VARS):
        return Topology(
            launcher="external",
            world_size=int(env["WORLD_SIZE"]),
            nproc_per_node=int(env.get("LOCAL_WORLD_SIZE", "1")),
            init_method="env://",
            external_rank=int(env["RANK"]),
            external_local_rank=int(env["LOCAL_RANK"]),
            source="torchrun",
        )
    if all(k in env for k in SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
        return _slurm_topology(cfg, env)
    if cfg.multiprocessing_distributed:
        nproc = cfg.nproc_per_node or max(1, accelerator_count(cfg))
        world_size = cfg.world_size * nproc
        if cfg.world_size > 1 and not cfg.dist_url:
            raise UserError("a run over several nodes needs --dist-url tcp://HOST:PORT naming node 0")
        init = cfg.dist_url or f"tcp://127.0.0.1:{free_port()}"
        if cfg.rank == 0:
            init = _rendezvous_port_checked(init, movable=cfg.world_size == 1)
        return Topology("spawn", world_size, nproc, node_rank=cfg.rank, init_method=init, source="spawned")
    if cfg.world_size > 1:
        if not cfg.dist_url:
            raise UserError("--world-size > 1 without --multiprocessing-distributed needs --dist-url tcp://HOST:PORT")
        if cfg.rank == 0:
            _rendezvous_port_checked(cfg.dist_url, movable=False)
        return Topology(
            "external", cfg.world_size, 1, node_rank=cfg.rank, init_method=cfg.dist_url,
            external_rank=cfg.rank, external_local_rank=cfg.gpu or 0,
        )  # fmt: skip
    return Topology("single", 1, 1)


def _rendezvous_port_checked(url: str, movable: bool) -> str:
    """The rendezvous URL, checked before any process starts: rank 0 serves it, so its port must be free
    here. A run confined to this machine moves to a free port; one that other nodes join cannot."""
    match = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+)/?", url)  # torch accepts a trailing slash
    if not match:
        return url
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, port))
        return url
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return url  # not an address of this machine: nothing to check here
    if movable:
        moved = f"tcp://{host}:{free_port()}"
        print(f"--dist-url {url}: port {port} is in use; this single-machine run uses {moved}", file=sys.stderr)
        return moved
    raise UserError(
        f"--dist-url {url}: port {port} is already in use on this machine (another run?); "
        "choose a free port, the same on every node"
    )


def _slurm_topology(cfg: DistConfig, env: dict[str, str]) -> Topology:
    """srun starts one task per GPU; every task must agree on node 0's address without talking."""
    ntasks = int(env["SLURM_NTASKS"])
    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    if cfg.dist_url and not cfg.dist_url.startswith("env://"):
        init = cfg.dist_url
    else:
        host = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
        port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        init = f"tcp://{host}:{port}"
    return Topology(
        launcher="external",
        world_size=ntasks,
        nproc_per_node=max(1, ntasks // max(1, nodes)),
        init_method=init,
        external_rank=int(env["SLURM_PROCID"]),
        external_local_rank=int(env["SLURM_LOCALID"]),
        source="slurm",
    )


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as `gpu[003-005,010],cpu1` (here: gpu003): node 0, whose
    address every task uses. SLURM's own `scontrol show hostnames` decides when it is installed; the
    parser below reads the same syntax where it is not (a container without SLURM's tools)."""
    if not nodelist.strip():
        return "127.0.0.1"
    hosts = _scontrol_hostnames(nodelist)
    if not hosts:
        try:
            hosts = slurm_hostnames(nodelist)
        except ValueError as exc:
            raise UserError(f"SLURM_JOB_NODELIST {nodelist!r}: {exc}; set MASTER_ADDR to node 0's address") from exc
    if not hosts:
        raise UserError(f"SLURM_JOB_NODELIST {nodelist!r} names no host; set MASTER_ADDR to node 0's address")
    return hosts[0]


def _scontrol_hostnames(nodelist: str) -> list[str]:
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return []
    try:
        done = subprocess.run(
            [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.split() if done.returncode == 0 else []


def slurm_hostnames(nodelist: str) -> list[str]:
    """Every host of a SLURM node list, in SLURM's order: `n[01-02]-ib,login` gives n01-ib, n02-ib, login.

    A bracket holds numbers and ranges (`1,3,5-6`), each range padded as its first number. Several brackets
    loop as SLURM's hostlist.c loops: the second-last outermost, then the earlier ones, the last innermost."""
    return [host for name in _top_level_names(nodelist) for host in _expand_name(name)]


def _top_level_names(nodelist: str) -> list[str]:
    marked, depth = [], 0  # separators outside brackets become NUL, which no environment variable holds
    for char in nodelist:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            raise ValueError("a ']' without its '['")
        marked.append("\0" if depth == 0 and (char == "," or char.isspace()) else char)
    if depth:
        raise ValueError("a '[' without its ']'")
    return [name for name in "".join(marked).split("\0") if name]


def _expand_name(name: str) -> list[str]:
    texts = re.split(r"\[([^\]]*)\]", name)  # text, bracket, text, ..., text
    ranges = [_bracket_numbers(body) for body in texts[1::2]]
    order = [*range(len(ranges) - 2, -1, -1), len(ranges) - 1] if ranges else []  # outermost loop first
    hosts = []
    for numbers in itertools.product(*(ranges[i] for i in order)):
        chosen = dict(zip(order, numbers, strict=True))
        hosts.append("".join(text + chosen.get(i, "") for i, text in enumerate(texts[::2])))
    return hosts


def _bracket_numbers(body: str) -> list[str]:
    """`01-03,7` -> 01, 02, 03, 7: each range keeps the width of its first number."""
    numbers = []
    for part in body.split(","):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (1, 0)
        if not match or high < low or high - low >= MAX_HOSTS_IN_RANGE:
            raise ValueError(f"[{body}] is not a list of numbers and ranges")
        numbers += [f"{n:0{len(match.group(1))}d}" for n in range(low, high + 1)]
    return numbers


def free_port() -> int:
    """A TCP port free on loopback right now, for a local run that needs no --dist-url."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def select_device(cfg: DistConfig, local_rank: int, topology: Topology) -> torch.device:
    """Each process on its own accelerator: the local rank under any launcher, `--gpu` when alone."""
    if cfg.no_accel or not torch.cuda.is_available():
        if topology.world_size == 1 and not cfg.no_accel and torch.backends.mps.is_available():
            return torch.device("mps")
        if cfg.gpu is not None and not cfg.no_accel:
            raise UserError(f"--gpu {cfg.gpu} was given but no CUDA device is available")
        return torch.device("cpu")
    index = (cfg.gpu or 0) if topology.launcher == "single" else local_rank
    if topology.launcher != "single" and torch.cuda.device_count() == 1:
        index = 0  # the scheduler gave each task its own GPU (e.g. srun --gpus-per-task=1)
    if index >= torch.cuda.device_count():
        raise UserError(
            f"this process needs cuda:{index} but only {torch.cuda.device_count()} CUDA devices are visible"
        )
    return torch.device("cuda", index)


def setup(cfg: DistConfig, topology: Topology, local_index: int) -> DistContext:
    """Bind the device and join the process group; the one place a worker learns who it is."""
    rank, local_rank = topology.global_rank(local_index), topology.local_rank(local_index)
    device = select_device(cfg, local_rank, topology)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = None
    if topology.world_size > 1:
        backend = cfg.dist_backend or default_backend(device)
        timeout = timedelta(seconds=cfg.dist_timeout)
        with _rendezvous_errors(topology, cfg.dist_timeout, rank):
            endpoint = loopback_endpoint(topology.init_method)
            if endpoint is None:  # other machines join: torch's own rendezvous, on every interface
                meeting = {"init_method": topology.init_method}
            else:
                # Gloo and NCCL listen for their peers on the address this machine's hostname resolves to,
                # often a network interface, unless told an interface: every rank is here, so loopback.
                os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = loopback_interface()
                meeting = {"store": _loopback_store(*endpoint, rank, topology.world_size, timeout)}
            dist.init_process_group(backend, world_size=topology.world_size, rank=rank, timeout=timeout, **meeting)
    return DistContext(rank, local_rank, topology.world_size, topology.nproc_per_node, device, backend)


def loopback_endpoint(init_method: str | None) -> tuple[str, int] | None:
    """(address, port) of a `tcp://` rendezvous on this machine's loopback (a local run's own, or a
    --dist-url naming 127.0.0.1, ::1 or localhost), else None. Every rank of such a run is on this machine."""
    match = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+)/?", init_method or "")
    if not match:
        return None
    host = "127.0.0.1" if match.group(1) == "localhost" else match.group(1)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    return (host, int(match.group(2))) if loopback else None


def _loopback_store(host: str, port: int, rank: int, world_size: int, timeout: timedelta) -> dist.TCPStore:
    """The rendezvous store of a run confined to this machine. Given a host, torch's TCPStore still
    listens on every interface (`*:PORT`), where anyone on the network could write to it; rank 0
    therefore serves it from a socket it bound to the loopback address itself."""
    if rank != 0:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(max(128, world_size))
    except OSError as exc:
        listener.close()
        raise RunFailed(f"cannot serve the rendezvous tcp://{host}:{port}: {exc.strerror}") from exc
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach())


def loopback_interface() -> str:
    """This machine's loopback interface: the one flagged IFF_LOOPBACK (`lo` on Linux, `lo0` on macOS)."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    for name in names:
        try:
            with open(f"/sys/class/net/{name}/flags") as f:
                if int(f.read(), 16) & 0x8:  # IFF_LOOPBACK
                    return name
        except (OSError, ValueError):
            continue
    return next((name for name in names if name.startswith("lo")), "lo0" if sys.platform == "darwin" else "lo")


@contextmanager
def _rendezvous_errors(topology: Topology, timeout: float, rank: int) -> Iterator[None]:
    """torch's rendezvous failures, as what happened and what to check."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:  # DistStoreError and DistNetworkError are RuntimeErrors
        text = str(exc)
        joined = re.search(r"(\d+)/(\d+) clients joined", text)
        if joined:
            raise RunFailed(
                f"only {joined.group(1)} of {joined.group(2)} processes joined within --dist-timeout {timeout:g}s; "
                f"start every rank (check --world-size, --rank and the node count) and let all reach "
                f"{topology.init_method}"
            ) from exc
        if "timed out" in text.lower() or "timeout" in text.lower():
            raise RunFailed(
                f"rank {rank} could not reach the rendezvous {topology.init_method} within --dist-timeout "
                f"{timeout:g}s: is rank 0 running, and is its host and port reachable from here?"
            ) from exc
        raise


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
