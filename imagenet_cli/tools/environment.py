"""`env`: versions, backends, GPUs, CPUs, launcher variables, and what a run would do on this machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from typing import Any

import torch
import torchvision

from .. import __version__
from ..config import DistConfig
from ..core.errors import UserError
from ..run import distributed
from ..run.distributed import SLURM_ENV, TORCHRUN_ENV, TORCHRUN_VARS, default_backend
from . import installed_version

DEVICE_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
DISTRIBUTION = "imagenet-cli"
NOT_EXTRAS = ("dev",)  # the developers' set (tests, linters), not a part of the tool
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def describe_environment(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything `imagenet-cli env` reports, as plain values (one JSON object)."""
    env = dict(os.environ) if env is None else env
    cuda = cuda_devices()
    return {
        "versions": versions(),
        "extras": optional_extras(),
        "distributed_backends": distributed_backends(),
        "cuda": cuda,
        "mps": mps_available(),
        "cpu": cpu_facts(),
        "launcher_env": launcher_variables(env),
        "plan": run_plan(env, cuda),
    }


def versions() -> dict[str, str | None]:
    """The versions a bug report needs; torch's CUDA build says which drivers can run it."""
    import numpy
    import PIL

    return {
        "python": platform.python_version(),
        "imagenet-cli": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pillow": getattr(PIL, "__version__", None),
    }


def optional_extras() -> dict[str, dict[str, Any]]:
    """Each optional part of the package (`pip install "imagenet-cli[plot]"`) with its packages' installed
    versions (None: not installed). Read from the installed package's own metadata, so the list is the
    one pyproject.toml declares and pip would install, not a copy of it kept here."""
    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return {}
    extras: dict[str, dict[str, Any]] = {}
    for requirement in requirements:
        marker = _EXTRA_MARKER.search(requirement)
        name = _NAME.match(requirement)
        if marker is None or name is None or marker.group(1) in NOT_EXTRAS:
            continue
        extra = extras.setdefault(marker.group(1), {"packages": {}, "installed": True, "hint": None})
        extra["packages"][name.group(0)] = installed_version(name.group(0))
    for extra_name, extra in extras.items():
        extra["installed"] = all(version is not None for version in extra["packages"].values())
        extra["hint"] = None if extra["installed"] else f'pip install "{DISTRIBUTION}[{extra_name}]"'
    return extras


def distributed_backends() -> dict[str, bool]:
    """Which process-group backends this torch build has (ucc only where torch can tell)."""
    import torch.distributed as dist

    names = ("nccl", "gloo", "mpi", "ucc")
    if not dist.is_available():
        return dict.fromkeys(names, False)
    return {name: getattr(dist, f"is_{name}_available")() for name in names if hasattr(dist, f"is_{name}_available")}


def cuda_devices() -> list[dict[str, Any]]:
    """Each visible CUDA device with its memory, the freest first: the one to pick on a shared machine.
    Memory in use counts every process on the device, not just this one."""
    if not torch.cuda.is_available():
        return []
    devices = [_cuda_device(i) for i in range(torch.cuda.device_count())]
    return sorted(devices, key=lambda d: (d["free_bytes"] is None, -(d["free_bytes"] or 0), d["index"]))


def _cuda_device(index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    device = {"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}"}
    try:
        free, total = torch.cuda.mem_get_info(index)
    except RuntimeError as exc:  # busy, in exclusive mode, or failing: say so rather than stop
        unknown = {"total_bytes": int(props.total_memory), "used_bytes": None, "free_bytes": None}
        return {**device, **unknown, "error": " ".join(str(exc).split())}
    return {**device, "total_bytes": int(total), "used_bytes": int(total - free), "free_bytes": int(free)}


def mps_available() -> bool | None:
    """Apple's Metal device; None where this torch has no MPS backend at all."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps.is_available()) if mps is not None else None


def cpu_facts() -> dict[str, int | None]:
    """Cores of the machine, the ones this process may run on (a SLURM or cgroup limit), and torch's threads."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        usable = None
    return {
        "count": os.cpu_count(),
        "usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


def launcher_variables(env: dict[str, str]) -> dict[str, str]:
    """The launcher, device and NCCL variables that are set, known ones first, then NCCL_* by name."""
    known = [k for k in (*TORCHRUN_ENV, *SLURM_ENV, *DEVICE_ENV) if k in env]
    nccl = sorted(k for k in env if k.startswith("NCCL_"))
    return {k: env[k] for k in (*known, *nccl)}


def run_plan(env: dict[str, str], cuda: list[dict[str, Any]]) -> dict[str, Any]:
    """What `imagenet-cli train` with no distribution flags would do here, decided by the same code a run uses."""
    try:
        topology = distributed.plan(DistConfig(), env)
        rank = topology.global_rank(0)
        local_rank = topology.local_rank(0)
        device = str(distributed.select_device(DistConfig(), local_rank, topology))
    except (UserError, ValueError) as exc:
        return {"launcher": None, "summary": f"a run would fail here: {' '.join(str(exc).split())}"}
    backend = default_backend(torch.device(device))
    plan = {
        "launcher": topology.source if topology.launcher == "external" else "none",
        "world_size": topology.world_size,
        "rank": rank,
        "local_rank": local_rank,
        "device": device,
        "backend": backend if topology.world_size > 1 else None,
    }
    return {**plan, "summary": _plan_summary(plan, env, len(cuda))}


def _plan_summary(plan: dict[str, Any], env: dict[str, str], gpus: int) -> str:
    """Who started this process and where it would compute; then why launcher variables that are set
    were not taken for a launcher (a stray RANK, a SLURM allocation without an srun step)."""
    if plan["launcher"] in ("torchrun", "slurm"):
        return (
            f"{plan['launcher']} detected: rank {plan['rank']} of {plan['world_size']} "
            f"(local rank {plan['local_rank']}) on {plan['device']}, {plan['backend']} backend"
        )
    spawned = max(1, gpus)
    parts = [
        f"a plain run uses {plan['device']}; --multiprocessing-distributed would start "
        f"{spawned} process{'es' if spawned > 1 else ''}"
    ]
    partial = [k for k in TORCHRUN_VARS if k in env]
    if 0 < len(partial) < len(TORCHRUN_VARS):
        parts.append(f"{', '.join(partial)} set without the rest of {', '.join(TORCHRUN_VARS)}: not a torchrun process")
    if "SLURM_JOB_ID" in env:
        parts.append(
            f"inside SLURM job {env['SLURM_JOB_ID']}, but not one of several srun tasks "
            f"(SLURM_NTASKS {env.get('SLURM_NTASKS', 'unset')})"
        )
    return "; ".join(parts)
