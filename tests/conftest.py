"""Tiny datasets, models and checkpoints, and a way to run the real command line.

Everything a test needs is made here, on disk, in a few milliseconds: 32 px images in class folders,
checkpoints in each format users bring, free TCP ports for real process groups.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Small and fast on two CPU cores; has BatchNorm, so it exercises buffers under DDP.
TINY_ARCH = "shufflenet_v2_x0_5"
CLASSES = ("ants", "bees", "wasps")
COLOURS = {
    "ants": (200, 40, 40), "bees": (40, 200, 40), "wasps": (40, 40, 200),
    "red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220),
    "yellow": (220, 220, 30), "cyan": (30, 220, 220), "magenta": (220, 30, 220),
}  # fmt: skip
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def write_image_folder(
    root: Path, train_per_class: dict[str, int], val_per_class: dict[str, int], size: int = 40
) -> Path:
    """An ImageNet-style tree whose classes differ by colour, so a model can learn them."""
    generator = torch.Generator().manual_seed(0)
    for split, counts in (("train", train_per_class), ("val", val_per_class)):
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = torch.tensor(COLOURS.get(name, (128, 128, 128)), dtype=torch.int16).view(1, 1, 3)
            for i in range(count):
                noise = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.int16)
                pixels = ((colour * 3 + noise) // 4).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    return root


def write_photo(path: Path, width: int, height: int, seed: int = 0, mode: str = "RGB", **save: object) -> Path:
    """A photograph-like picture (smooth colours, texture, grain) in any PIL mode and format."""
    from imagenet_cli.benchmark import photo_like

    image = photo_like(np.random.default_rng(seed), width, height)
    image.convert(mode).save(path, **save)
    return path


def write_manifests(folder_root: Path, manifest_root: Path) -> Path:
    """train.csv and val.csv listing an image folder's files (paths relative to the manifests) by class name."""
    manifest_root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        rows = ["path,label"]
        for image in sorted((folder_root / split).rglob("*.png")):
            rows.append(f"{os.path.relpath(image, manifest_root)},{image.parent.name}")
        (manifest_root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return manifest_root


def write_mnist(root: Path, train: int = 40, test: int = 12) -> Path:
    """A torchvision MNIST root in MNIST's own on-disk format (idx files), with learnable digits:
    each class is a bright square at its own place."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, 4 + row * 12 : 12 + row * 12, 2 + col * 5 : 6 + col * 5] = 255
            images[i, 27, :2] = divmod(i, 256)  # a dim corner mark: every picture is different
        header = np.array([0x803, count, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0x801, count], dtype=">i4").tobytes() + labels.tobytes()
        )
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes; 13 validation images, so 2 or 3 ranks get uneven shards."""
    return write_image_folder(
        tmp_path_factory.mktemp("data"),
        train_per_class={c: 16 for c in CLASSES},
        val_per_class={"ants": 5, "bees": 4, "wasps": 4},
    )


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any launcher variables a CI runner might carry."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real entry point (`imagenet-cli ARGS`, i.e. `imagenet_cli.cli.main`) in a new process, as a
    user's shell would. The process is forked from a server that has imported torch and torchvision
    once: every test would otherwise pay their five-second import. Ranks it spawns start from scratch.
    Without `cwd` it runs in a scratch directory, so a command without --output-dir never writes into
    the checkout."""
    with tempfile.TemporaryDirectory() as captured:
        out, err = os.path.join(captured, "stdout"), os.path.join(captured, "stderr")
        where = cwd if cwd is not None else Path(captured)
        child = _PREIMPORTED.Process(target=_cli_process, args=(list(args), env or cli_env(), where, out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["imagenet-cli", *args], timeout)
        with open(out) as stdout, open(err) as stderr:
            return subprocess.CompletedProcess(["imagenet-cli", *args], child.exitcode, stdout.read(), stderr.read())


_PREIMPORTED = multiprocessing.get_context("forkserver")
_PREIMPORTED.set_forkserver_preload(["imagenet_cli.launch", "imagenet_cli.benchmark", "tests.conftest"])


def _cli_process(argv: list[str], env: dict[str, str], cwd: Path | None, out: str, err: str) -> None:
    """The child: the test's environment, directory and output files, then the console script's `main`."""
    from imagenet_cli.cli import main

    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["imagenet-cli", *argv]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def json_result(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(ok(result).stdout.strip().splitlines()[-1])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


FAST_FAKE = ("--fake-data", "--image-size", "32", "--fake-train-images", "64", "--fake-val-images", "32", "-j", "0")
TWO_RANKS = ("--multiprocessing-distributed", "--nproc-per-node", "2", "--no-accel")  # two local Gloo ranks


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch fake-data run of the tiny arch made by the real CLI, shared by tests that need one."""
    out = tmp_path_factory.mktemp("run")
    ok(
        run_cli(
            "train", *FAST_FAKE, "-a", TINY_ARCH, "--epochs", "1", "-b", "16", "--seed", "0", "--output-dir", str(out)
        )
    )
    return out


class _RunsAShellCommand:
    """Unpickling this would run `touch MARKER`: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def booby_trapped_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint that would create a marker file if it were ever unpickled: (checkpoint, marker)."""
    marker, path = tmp_path / "code-ran", tmp_path / "evil.pth.tar"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _RunsAShellCommand(marker)}, f, protocol=2)  # the protocol torch.save writes
    return path, marker


@pytest.fixture()
def make_checkpoint_file(tmp_path: Path) -> Callable[[str, object], Path]:
    def make(name: str, payload: object) -> Path:
        path = tmp_path / name
        torch.save(payload, path)
        return path

    return make
