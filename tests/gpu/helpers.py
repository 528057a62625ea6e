"""What the GPU tests share: the real command line in a new process, checkpoints read back safely, and
small JPEG folders. Nothing here needs pytest, so `python3 -m tests.gpu` runs the tests without it."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = "CUDA is not available: the GPU tests run on a machine with a GPU (scripts/gpu-check.sh)"
CHECKPOINT = "checkpoint.pth.tar"
# Variables a launcher or a fault-injection test may have left in this process's environment.
_NOT_INHERITED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                  "TORCHELASTIC_RUN_ID", "IMAGENET_CLI_FAULT")  # fmt: skip


def need_gpus(count: int) -> None:
    """Skip (in pytest and in the plain runner alike) unless this machine has `count` GPUs."""
    have = torch.cuda.device_count()
    if have < count:
        raise unittest.SkipTest(f"needs {count} GPUs; this machine has {have}")


def need_bf16() -> None:
    if not torch.cuda.is_bf16_supported():
        raise unittest.SkipTest(f"{torch.cuda.get_device_name(0)} has no bf16")


@functools.cache
def session_dir() -> Path:
    """One scratch directory for the whole session: shared runs, and the working directory of every
    command (so nothing is ever written into the checkout)."""
    path = Path(tempfile.mkdtemp(prefix="imagenet-cli-gpu-tests-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def cli_env(hide_gpus: bool = False, **extra: str) -> dict[str, str]:
    """This process's environment with the checkout importable and no launcher variables;
    `hide_gpus`: a machine without CUDA, as far as the command can tell."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "imagenet_cli", *map(str, args)]


def run_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`imagenet-cli ARGS` in a new process, as a user's shell would run it."""
    return subprocess.run(
        command(*args), env=env or cli_env(), cwd=session_dir(), capture_output=True, text=True, timeout=timeout
    )


_BACKGROUND = ThreadPoolExecutor(max_workers=4, thread_name_prefix="imagenet-cli-gpu-test")


def start_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> Future:
    """`run_cli` in the background: independent runs share the GPU, and their start-up (seconds of
    imports each) overlaps. `.result()` waits for the finished process."""
    return _BACKGROUND.submit(run_cli, *args, env=env, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if result.returncode != 0:
        raise AssertionError(f"`imagenet-cli {' '.join(result.args[3:])}` exited with {result.returncode}\n"
                             f"--- stdout (end)\n{result.stdout[-3000:]}\n--- stderr (end)\n{result.stderr[-6000:]}")  # fmt: skip
    return result


def load(path: Path | str, on_saved_devices: bool = False) -> dict[str, Any]:
    """A checkpoint as plain data (`weights_only`); its tensors on the CPU, or where they were saved from."""
    return torch.load(path, map_location=None if on_saved_devices else "cpu", weights_only=True)


def training_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor a resumed run continues from: the weights and buffers, and the optimizer's state."""
    tensors = {f"model/{k}": v for k, v in checkpoint["state_dict"].items()}
    for param, state in checkpoint["optimizer"]["state"].items():
        tensors.update({f"optimizer/{param}/{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return tensors


def differing(a: Path, b: Path) -> list[str]:
    """Names of the training-state tensors that are not bit-identical in two checkpoints (or missing in one)."""
    left, right = training_state(load(a)), training_state(load(b))
    names = sorted(set(left) | set(right))
    return [n for n in names if n not in left or n not in right or not torch.equal(left[n], right[n])]


def devices_of(state: dict[str, torch.Tensor]) -> set[str]:
    return {str(t.device) for t in state.values()}


def write_jpeg_folder(root: Path, train: int, val: int, size: tuple[int, int] = (160, 120), classes: int = 2) -> Path:
    """An ImageNet-style tree of photo-like JPEGs: `train` and `val` pictures per class, each class tinted
    its own way (so a model can tell them apart)."""
    import numpy as np
    from PIL import Image

    from imagenet_cli.tools.pictures import photo_like

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.asarray(photo_like(rng, *size), dtype=np.int16)
                pixels[..., c % 3] = np.minimum(pixels[..., c % 3] + 60, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
    return root
