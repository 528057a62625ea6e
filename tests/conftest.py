"""Tiny datasets, models and checkpoints, and a way to run the real command line.

Everything a test needs is made here, on disk, in a few milliseconds: 32 px images in class folders,
checkpoints in each format users bring, free TCP ports for real process groups.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import runpy
import subprocess
import sys
import tempfile
import time
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
    "yellow": (220, 220, 30), "cyan": (30, 220, 220), "magenta": (220, 30, 220), "orange": (240, 140, 20),
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
    from imagenet_cli.tools.pictures import photo_like

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
    with RunningCli(args, env, cwd) as running:
        return running.finish(timeout)


def run_module(
    module: str, *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS` (torchrun is `torch.distributed.run`) forked as run_cli forks a command."""
    with RunningCli(args, env, None, module) as running:
        return running.finish(timeout)


def start_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> RunningCli:
    """Start the real entry point as run_cli does, without waiting for it."""
    return RunningCli(args, env, cwd)


_PREIMPORTED = multiprocessing.get_context("forkserver")
# What every command would otherwise import again: the command line (typer, which loads pydantic when it
# parses), and the matplotlib parts each `train` draws curves.png with at its end. A module that is not
# installed is passed over by the server (matplotlib is an optional extra).
_PREIMPORTED.set_forkserver_preload(
    ["imagenet_cli.run.launch", "imagenet_cli.tools.benchmark", "tests.conftest", "imagenet_cli.cli.app",
     "typer._adapters", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.lines"]
)  # fmt: skip


class RunningCli:
    """`imagenet-cli ARGS` (or `python -m MODULE ARGS`) in a process forked from the server above, and
    while it runs, for a test that acts on it meanwhile (a signal, a kill): its pid, and its output read
    as it grows. A context manager: a test that fails midway leaves no process behind."""

    def __init__(
        self, args: tuple[str, ...], env: dict[str, str] | None, cwd: Path | None, module: str | None = None
    ) -> None:
        self.args = [module or "imagenet-cli", *args]
        self._captured = tempfile.TemporaryDirectory()
        self._out, self._err = (os.path.join(self._captured.name, name) for name in ("stdout", "stderr"))
        where = cwd if cwd is not None else Path(self._captured.name)
        child = (list(args), env or cli_env(), where, self._out, self._err, module)
        self._process = _PREIMPORTED.Process(target=_cli_process, args=child)
        self._process.start()
        self.pid: int = self._process.pid  # type: ignore[assignment]

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 120) -> None:
        """Until a whole line of its stdout contains `pattern` (or matches it, a regex); fails if the run
        ends first or takes longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            ended = not self._process.is_alive()
            lines = _read(self._out).split("\n")[:-1]  # the last one may be half written
            if any(pattern.search(line) if isinstance(pattern, re.Pattern) else pattern in line for line in lines):
                return
            assert not ended, f"the run ended before printing {pattern!r}: {_read(self._err)[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout}s"
            time.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def finish(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Wait for it to end: its exit code (minus the signal's number if one ended it) and its output."""
        self._process.join(timeout)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
            raise subprocess.TimeoutExpired(self.args, timeout)
        return subprocess.CompletedProcess(self.args, self._process.exitcode, _read(self._out), _read(self._err))

    def __enter__(self) -> RunningCli:
        return self

    def __exit__(self, *_: object) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._captured.cleanup()


def _cli_process(
    argv: list[str], env: dict[str, str], cwd: Path | None, out: str, err: str, module: str | None
) -> None:
    """The child: the test's environment, directory and output files, then the console script's `main`
    (or the module, run as `python -m` runs it)."""
    from imagenet_cli.cli import main

    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [module or "imagenet-cli", *argv]
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:  # not opened by the child yet
        return ""


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
    """A one-epoch fake-data run of the tiny arch made by the real CLI, shared by tests that need one; in
    fp32 on every CPU (`--amp auto` is bf16 on CPUs with AMX), so that its weights are alike everywhere."""
    out = tmp_path_factory.mktemp("run")
    run = ("train", *FAST_FAKE, "-a", TINY_ARCH, "--epochs", "1", "-b", "16", "--seed", "0", "--amp", "none")
    ok(run_cli(*run, "--output-dir", str(out)))
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


# ---------------------------------------------------------------------------------------------------------
# Checkpoints written the way the two reference programs write theirs. Each follows its program's own code
# path step by step (model construction, transforms, optimizer and scheduler, the loop, what is saved and
# how): their users' files are what this tool must read, not look-alikes made to fit it.

REFERENCE_NORMALIZE = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def reference_script_checkpoint(
    data: Path, out: Path, arch: str = "resnet18", epochs: int = 1, batch: int = 20
) -> Path:
    """pytorch/examples `imagenet/main.py` on CPU: `models.__dict__[arch]()` (torchvision's default head of
    1000 outputs, whatever the data), ImageFolder with RandomResizedCrop(224) and flips, SGD (0.1, momentum
    0.9, wd 1e-4), StepLR(30, 0.1) stepped after each epoch's validation, and `torch.save` of `{'epoch':
    epoch + 1, 'arch', 'state_dict', 'best_acc1' (a tensor: its accuracy() returns tensors), 'optimizer',
    'scheduler'}` as checkpoint.pth.tar, copied to model_best.pth.tar when best."""
    import shutil

    from torchvision import datasets, models, transforms

    torch.manual_seed(0)
    model = models.__dict__[arch]()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    normalize = transforms.Normalize(**REFERENCE_NORMALIZE)
    train_set = datasets.ImageFolder(
        str(data / "train"),
        transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
        ),
    )
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True)
    best_acc1 = torch.tensor(0.0)
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(epochs):
        model.train()
        for images, target in loader:
            loss = criterion(model(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        acc1 = reference_script_accuracy(model, data)[0]
        scheduler.step()
        is_best = bool(acc1 > best_acc1)
        best_acc1 = torch.maximum(acc1, best_acc1)
        state = {"epoch": epoch + 1, "arch": arch, "state_dict": model.state_dict(), "best_acc1": best_acc1,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}  # fmt: skip
        torch.save(state, out / "checkpoint.pth.tar")
        if is_best:
            shutil.copyfile(out / "checkpoint.pth.tar", out / "model_best.pth.tar")
    return out / "checkpoint.pth.tar"


def reference_script_predictions(model: torch.nn.Module, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, top-5 output indices) of every val/ image, through the reference's validation transforms
    (Resize(256), CenterCrop(224), ToTensor, Normalize) and its sequential loader."""
    from torchvision import datasets, transforms

    val_set = datasets.ImageFolder(
        str(data / "val"),
        transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
             transforms.Normalize(**REFERENCE_NORMALIZE)]
        ),
    )  # fmt: skip
    targets, top5 = [], []
    model.eval()
    with torch.no_grad():
        for images, target in torch.utils.data.DataLoader(val_set, batch_size=20, shuffle=False):
            targets.append(target)
            top5.append(model(images).topk(5, dim=1).indices)
    return torch.cat(targets), torch.cat(top5)


def reference_script_accuracy(model: torch.nn.Module, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Acc@1 and Acc@5 in percent, as the reference's `validate` prints them."""
    targets, top5 = reference_script_predictions(model, data)
    hits = top5.eq(targets.unsqueeze(1))
    return 100 * hits[:, 0].double().mean(), 100 * hits.any(dim=1).double().mean()


def torchvision_reference_run(
    data: Path,
    out: Path,
    *,
    epochs: int = 2,
    crop: int = 64,
    resize: int = 72,
    batch: int = 8,
    ema: bool = False,
    ema_steps: int = 4,
    ema_decay: float = 0.999,
    arch: str = TINY_ARCH,
) -> dict[str, object]:
    """torchvision's `references/classification/train.py` on CPU (its defaults: SGD 0.1/0.9/1e-4,
    steplr 30/0.1, no warmup; --model-ema optional), trained for `epochs` epochs. Like that script:
    `get_model(arch, weights=None, num_classes=len(classes))`, ClassificationPresetTrain/Eval transforms
    (antialiased resizes, PILToTensor, float, Normalize), RandomSampler, the EMA an AveragedModel whose
    decay is scaled by world size × batch × EMA steps / epochs and updated when `i % model_ema_steps == 0`,
    `lr_scheduler.step()` after each epoch, and after each epoch `torch.save` of `{model, optimizer,
    lr_scheduler, epoch (this epoch's index), args (its argparse Namespace)}` plus `model_ema` to
    model_{epoch}.pth and checkpoint.pth. Returns what its own `evaluate` printed last: Acc@1/Acc@5 of the
    model and, with EMA, of the average."""
    import argparse

    import torchvision
    from torchvision import datasets
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    args = argparse.Namespace(
        data_path=str(data), model=arch, device="cpu", batch_size=batch, epochs=epochs, workers=0, opt="sgd",
        lr=0.1, momentum=0.9, weight_decay=1e-4, norm_weight_decay=None, bias_weight_decay=None,
        transformer_embedding_decay=None, label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
        lr_scheduler="steplr", lr_warmup_epochs=0, lr_warmup_method="constant", lr_warmup_decay=0.01,
        lr_step_size=30, lr_gamma=0.1, lr_min=0.0, print_freq=10, output_dir=str(out), resume="", start_epoch=0,
        cache_dataset=False, sync_bn=False, test_only=False, auto_augment=None, ra_magnitude=9, augmix_severity=3,
        random_erase=0.0, amp=False, world_size=1, dist_url="env://", model_ema=ema, model_ema_steps=ema_steps,
        model_ema_decay=ema_decay, use_deterministic_algorithms=False, interpolation="bilinear",
        val_resize_size=resize, val_crop_size=crop, train_crop_size=crop, clip_grad_norm=None, ra_sampler=False,
        ra_reps=3, weights=None, backend="pil", use_v2=False, distributed=False,
    )  # fmt: skip
    torch.manual_seed(0)
    mean, std = REFERENCE_NORMALIZE["mean"], REFERENCE_NORMALIZE["std"]
    train_tf = T.Compose([T.RandomResizedCrop(crop, interpolation=InterpolationMode.BILINEAR, antialias=True),
                          T.RandomHorizontalFlip(0.5), T.PILToTensor(), T.ConvertImageDtype(torch.float),
                          T.Normalize(mean, std)])  # fmt: skip
    dataset = datasets.ImageFolder(str(data / "train"), train_tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=torch.utils.data.RandomSampler(dataset))
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(dataset.classes))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    model_ema = None
    if ema:
        alpha = min(1.0, (1.0 - ema_decay) * args.world_size * batch * ema_steps / epochs)
        decay = 1.0 - alpha

        def ema_avg(avg_param: torch.Tensor, param: torch.Tensor, _num_averaged: torch.Tensor) -> torch.Tensor:
            return decay * avg_param + (1 - decay) * param

        model_ema = torch.optim.swa_utils.AveragedModel(model, "cpu", ema_avg, use_buffers=True)
    out.mkdir(parents=True, exist_ok=True)
    printed: dict[str, object] = {}
    for epoch in range(epochs):
        model.train()
        for i, (image, target) in enumerate(loader):
            output = model(image)
            optimizer.zero_grad()
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
            if model_ema and i % ema_steps == 0:
                model_ema.update_parameters(model)
                if epoch < args.lr_warmup_epochs:
                    model_ema.n_averaged.fill_(0)
        lr_scheduler.step()
        printed["acc"] = torchvision_reference_accuracy(model, data, crop, resize)
        if model_ema:
            printed["ema_acc"] = torchvision_reference_accuracy(model_ema, data, crop, resize)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "lr_scheduler": lr_scheduler.state_dict(), "epoch": epoch, "args": args}  # fmt: skip
        if model_ema:
            checkpoint["model_ema"] = model_ema.state_dict()
        torch.save(checkpoint, out / f"model_{epoch}.pth")
        torch.save(checkpoint, out / "checkpoint.pth")
    printed["model_ema"] = model_ema
    return printed


def torchvision_reference_accuracy(model: torch.nn.Module, data: Path, crop: int, resize: int) -> tuple[int, int, int]:
    """(top-1 correct, top-5 correct, images) of val/ through torchvision's ClassificationPresetEval and
    its `evaluate` loop (a SequentialSampler, inference mode)."""
    from torchvision import datasets
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    eval_tf = T.Compose([T.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
                         T.CenterCrop(crop), T.PILToTensor(), T.ConvertImageDtype(torch.float),
                         T.Normalize(REFERENCE_NORMALIZE["mean"], REFERENCE_NORMALIZE["std"])])  # fmt: skip
    val_set = datasets.ImageFolder(str(data / "val"), eval_tf)
    top1 = top5 = count = 0
    model.eval()
    with torch.inference_mode():
        for image, target in torch.utils.data.DataLoader(val_set, batch_size=8):
            hits = model(image).topk(5, dim=1).indices.eq(target.unsqueeze(1))
            top1, top5, count = top1 + int(hits[:, 0].sum()), top5 + int(hits.any(1).sum()), count + len(target)
    return top1, top5, count


# The PyTorch CIFAR-10 tutorial's network, as a user's own file: 32-pixel inputs, `num_classes` optional.
TUTORIAL_NET = """
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
"""

# A factory in a package, as `package.module:factory` names it.
PACKAGE_FACTORY = """
from torch import nn


def small_cnn(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, num_classes),
    )
"""
SIZE_32 = ("--image-size", "32", "--val-resize-size", "32", "--val-crop-size", "32")


def write_tutorial_net(folder: Path, name: str = "net.py", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(TUTORIAL_NET + extra)
    return path


def write_model_package(root: Path) -> str:
    """`zoo/nets.py` under `root`: returns the `--arch` naming its factory (run from `root`)."""
    (root / "zoo").mkdir(parents=True, exist_ok=True)
    (root / "zoo" / "__init__.py").write_text("")
    (root / "zoo" / "nets.py").write_text(PACKAGE_FACTORY)
    return "zoo.nets:small_cnn"
