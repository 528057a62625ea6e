"""What this machine and torchvision offer: the architectures `--arch` accepts, and the software,
accelerators and launcher a run would meet here (`imagenet-cli models`, `imagenet-cli env`).

Everything here describes and changes nothing. Listing models must stay fast, so no real model is
built: the facts come from torchvision's weights metadata, and an architecture without published weights
is counted on the meta device. The environment's launcher variables are read only to show them; what a
run would do with them is asked of `distributed.plan`, the one place that decides it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch
import torchvision

from .errors import UserError

# Variables of the launchers a run may be started by, in the order a reader wants them.
TORCHRUN_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
)  # fmt: skip
SLURM_ENV = (
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_LOCALID",
    "SLURM_NODEID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_NODELIST", "SLURM_JOB_NODELIST",
    "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_TASK", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_RESTART_COUNT",
)  # fmt: skip
DEVICE_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


# ---- models ----


def list_models(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per torchvision classifier whose name contains `pattern` (any case); an error if none does,
    so a typo is not mistaken for an empty zoo."""
    from .models import classification_models

    names = [n for n in classification_models() if not pattern or pattern.lower() in n.lower()]
    if not names:
        raise UserError(
            f"no architecture matches {pattern!r}; `imagenet-cli models` lists all {len(classification_models())}"
        )
    return [describe_model(name) for name in names]


def describe_model(name: str) -> dict[str, Any]:
    """Parameters (1000 classes), the input size and ImageNet top-1 of the default weights; None when unknown."""
    weights = _default_weights(name)
    if weights is None:
        return {
            "name": name,
            "parameters": parameter_count(name),
            "crop_size": None,
            "resize_size": None,
            "imagenet_acc1": None,
        }
    meta = weights.meta
    crop, resize = _preset_sizes(weights)
    acc1 = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return {
        "name": name,
        "parameters": int(meta["num_params"]) if "num_params" in meta else parameter_count(name),
        "crop_size": crop,
        "resize_size": resize,
        "imagenet_acc1": float(acc1) if acc1 is not None else None,
    }


def parameter_count(name: str, num_classes: int = 1000) -> int:
    """Parameters of `name` counted on the meta device: the architecture's shape without its weights' cost."""
    from .models import build_model, parameters_on_meta

    with parameters_on_meta():
        model = build_model(name, num_classes)
    return sum(p.numel() for p in model.parameters())


def _default_weights(name: str) -> Any | None:
    """torchvision's default (best) weights enum member for `name`, or None when it publishes none."""
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _preset_sizes(weights: Any) -> tuple[int | None, int | None]:
    """The centre crop and resize the weights were evaluated with (ResNet-50 V2: 224 and 232)."""
    try:
        preset = weights.transforms()
    except (TypeError, ValueError):
        return None, None
    crop, resize = getattr(preset, "crop_size", None), getattr(preset, "resize_size", None)
    return (int(crop[0]) if crop else None), (int(resize[0]) if resize else None)


# ---- environment ----


def describe_environment(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything `imagenet-cli env` reports, as plain values (one JSON object)."""
    env = dict(os.environ) if env is None else env
    cuda = cuda_devices()
    return {
        "versions": versions(),
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
        "imagenet-cli": _own_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pillow": getattr(PIL, "__version__", None),
    }


def _own_version() -> str | None:
    import imagenet_cli

    version = getattr(imagenet_cli, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("imagenet-cli")
    except importlib.metadata.PackageNotFoundError:
        return None


def distributed_backends() -> dict[str, bool]:
    """Which process-group backends this torch build has (ucc only where torch can tell)."""
    import torch.distributed as dist

    if not dist.is_available():
        return {"nccl": False, "gloo": False, "mpi": False, "ucc": False}
    found = {"nccl": dist.is_nccl_available(), "gloo": dist.is_gloo_available(), "mpi": dist.is_mpi_available()}
    if hasattr(dist, "is_ucc_available"):
        found["ucc"] = dist.is_ucc_available()
    return found


def cuda_devices() -> list[dict[str, Any]]:
    """Each visible CUDA device with its memory, the freest first: the one to pick on a shared machine.
    Memory in use counts every process on the device, not just this one."""
    if not torch.cuda.is_available():
        return []
    devices = [_cuda_device(i) for i in range(torch.cuda.device_count())]
    return sorted(devices, key=lambda d: (d["free_bytes"] is None, -(d["free_bytes"] or 0), d["index"]))


def _cuda_device(index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    device: dict[str, Any] = {
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "total_bytes": int(props.total_memory),
        "used_bytes": None,
        "free_bytes": None,
    }
    try:
        free, total = torch.cuda.mem_get_info(index)
    except RuntimeError as exc:  # busy, in exclusive mode, or failing: say so rather than stop
        device["error"] = " ".join(str(exc).split())
        return device
    device.update(total_bytes=int(total), used_bytes=int(total - free), free_bytes=int(free))
    return device


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
    from . import distributed
    from .config import DistConfig

    try:
        topology = distributed.plan(DistConfig(), env)
        rank = topology.global_rank(0)
        local_rank = topology.local_rank(0)
        device = str(distributed.select_device(DistConfig(), local_rank, topology))
    except (UserError, ValueError) as exc:
        return {"launcher": None, "summary": f"a run would fail here: {' '.join(str(exc).split())}"}
    backend = "nccl" if device.startswith("cuda") else "gloo"
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
    partial = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in env]
    if 0 < len(partial) < 3:
        parts.append(
            f"{', '.join(partial)} set without the rest of RANK, WORLD_SIZE, LOCAL_RANK: not a torchrun process"
        )
    if "SLURM_JOB_ID" in env:
        parts.append(
            f"inside SLURM job {env['SLURM_JOB_ID']}, but not one of several srun tasks "
            f"(SLURM_NTASKS {env.get('SLURM_NTASKS', 'unset')})"
        )
    return "; ".join(parts)
