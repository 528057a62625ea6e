"""`imagenet-cli benchmark`: this tool's fast path against the reference script's habits, in one run.

Every figure comes with its baseline, measured in the same run on the same machine, in turns. Ours runs
in this process, set up as a training process of the tool is (on the CPU: the allocator of `hostmemory`);
the reference's ways run in a spawned process of their own, as the reference script would, so neither
side's process settings reach the other:
- train: images/s of training steps on synthetic data. Ours is the real training loop (`engine`) on
  data made on the device; the baseline does what the reference's loop does: fp32, NCHW, a float batch
  copied from the host, `loss.item()` and top-k read every step.
- pipeline: images/s of the training input pipeline on JPEG files, per CPU core (one thread, no
  workers) and in total (a DataLoader with N workers). Ours decodes to uint8 and normalises later on the
  device; the baseline is PIL decoding, RandomResizedCrop, flip, `ToTensor` and `Normalize` per image.
  Per core again with each picture under its own seed, as a `--seed` run's workers make it (the reference
  seeds once per process: its per-picture cost is the same).
- eval: images/s of evaluation on synthetic data (autocast, channels-last vs fp32 NCHW with a sync).
- e2e: images/s of training from the JPEG files, where loader workers and the model share the machine:
  everything above together, against the reference's loop fed by its own pipeline.
- e2e-command (only with `--only e2e-command`: it runs whole commands, `--rounds` times each): one short
  epoch, the whole `imagenet-cli train` command timed from start to exit against the reference script run
  the same way, split into start -> first step, steps, and last step -> exit (`e2e_command`).
"""

from __future__ import annotations

import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from ..config import ComputeConfig
from ..config.data import MAX_WORKERS
from ..core import models
from ..core.context import DistContext
from ..core.errors import UserError
from ..core.randomness import mix_seed, seeded
from ..data import loaders as data
from ..data import shards, sources, unreadable
from ..data.fakedata import DeviceBatches, FakeImages
from ..data.presets import TrainPreset, read_bytes
from ..data.shard_writer import make_shards
from ..report.live import Reporter
from ..run import hostmemory
from ..train import compute, engine
from . import BENCHMARK_PARTS as PARTS
from . import e2e_command
from .isolated import ChildRunners, Runner
from .pictures import IMAGENET_LIKE, write_imagenet_like

Progress = Callable[[str], None]  # told what is measured next


@dataclass(frozen=True)
class BenchmarkConfig:
    """What `benchmark` measures; its defaults are the command line's (cli/tools.py), declared once there."""

    arch: str
    batch_size: int
    image_size: int
    compute: ComputeConfig
    steps: int
    warmup: int
    data: str | None  # a dataset root (its train/ folder) for the pipeline; None: generated JPEGs
    images: int  # how many JPEGs the pipeline reads (and generates when there is no data)
    workers: int | None  # None: the CPU cores available
    parts: tuple[str, ...]
    no_accel: bool
    rounds: int  # e2e-command: runs of each command, alternated

    def __post_init__(self) -> None:
        """Mistakes cost a line before anything is measured (or generated)."""
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown:
            raise UserError(f"--only takes {', '.join(PARTS[:-1])} or {PARTS[-1]}, not {', '.join(unknown)}")
        if min(self.batch_size, self.steps, self.images, self.rounds) < 1 or self.warmup < 0 or self.image_size < 8:
            raise UserError(
                "--batch-size, --steps, --images and --rounds must be positive, --warmup 0 or more, "
                "--image-size 8 or more"
            )
        if self.workers is not None and not 0 <= self.workers <= MAX_WORKERS:
            raise UserError(f"--workers must be from 0 to {MAX_WORKERS}, got {self.workers}")
        if self.data is not None and not os.path.isdir(os.path.join(self.data, "train")):
            raise UserError(f"{self.data} has no train/ folder of class folders to read")
        models.check_arch(self.arch)

    @property
    def source(self) -> str:
        return self.data or f"{self.images} generated {IMAGENET_LIKE[0]}x{IMAGENET_LIKE[1]} JPEGs, quality 90"


def run(cfg: BenchmarkConfig, progress: Progress = lambda _text: None) -> dict[str, Any]:
    """Measure each part asked for; returns plain data (the JSON output)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.no_accel else "cpu")
    torch.backends.cudnn.benchmark = True  # on both sides: not among the changes this benchmark credits
    if device.type == "cpu":
        hostmemory.keep_freed_memory()  # as `worker.configure_process` does for a CPU run
    result: dict[str, Any] = {"machine": machine(device), "config": asdict(cfg), "results": []}
    if "e2e-command" in cfg.parts:  # first: its processes then have the machine to themselves
        workers = cfg.workers if cfg.workers is not None else data.default_workers(1)
        result["commands"] = e2e_command.run(cfg, workers, progress)
    if not set(cfg.parts) - {"e2e-command"}:
        return result
    settings = compute.resolve(cfg.compute, device, models.build_model(cfg.arch, 1000))
    if {"train", "eval", "e2e"} & set(cfg.parts):
        result["compute"] = settings.describe()
    with ChildRunners() as reference:
        for part in ("train", "eval"):
            if part in cfg.parts:
                progress(f"{part}: {cfg.arch}, batch {cfg.batch_size}, {cfg.image_size} px on {device.type}")
                ours = model_ours(part, cfg, settings)
                runners = {"ours": ours, "baseline": reference.add(part, model_reference, part, cfg, device)}
                rates = _interleaved(runners, cfg.steps, cfg.batch_size * cfg.steps, cfg.warmup, device)
                result["results"].append(_row(part, f"{cfg.arch} b{cfg.batch_size} {cfg.image_size}px", rates))
                reference.clear()
        if {"pipeline", "e2e"} & set(cfg.parts):
            result["results"].extend(_file_parts(cfg, settings, reference, progress))
    return result


def _file_parts(
    cfg: BenchmarkConfig, settings: compute.Compute, reference: ChildRunners, progress: Progress
) -> list[dict[str, Any]]:
    rows = []
    workers = cfg.workers if cfg.workers is not None else data.default_workers(1)  # 0: load in this process
    with tempfile.TemporaryDirectory(prefix="imagenet-cli-bench-") as scratch:
        root = os.path.join(cfg.data, "train") if cfg.data else write_imagenet_like(scratch, cfg.images)
        if "pipeline" in cfg.parts:
            progress(f"pipeline: {cfg.source}")
            rows.extend(_pipeline_throughput(cfg, root, scratch, workers, reference, progress))
            reference.clear()
        if "e2e" in cfg.parts:
            progress(f"e2e: {cfg.arch} trained from {cfg.source}")
            rows.append(_e2e_throughput(cfg, settings, root, workers, reference))
            reference.clear()
    return rows


def _row(part: str, what: str, rates: dict[str, float]) -> dict[str, Any]:
    ours, baseline = rates["ours"], rates["baseline"]
    return {
        "part": part,
        "what": what,
        "ours_images_per_second": ours,
        "baseline_images_per_second": baseline,
        "ratio": ours / baseline if baseline else None,
    }


def machine(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": device.type,
        "device_name": name,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(
    runners: dict[str, Runner], steps: int, images: int, warmup: int, device: torch.device, rounds: int = 3
) -> dict[str, float]:
    """Images/s of each runner: `warmup` untimed steps first (autotuning, compilation, caches, workers),
    then the best of `rounds` timed rounds of `steps` steps (`images` images), taken in turns so a busy
    machine slows both alike."""
    for run_steps in runners.values():
        if warmup:
            run_steps(warmup)
    best = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run_steps in runners.items():
            _sync(device)
            start = time.perf_counter()
            run_steps(steps)
            _sync(device)
            best[name] = max(best[name], images / (time.perf_counter() - start))
    return best


# -- model throughput: ours ------------------------------------------------------------------------------


def _our_parts(cfg: BenchmarkConfig, settings: compute.Compute) -> tuple[engine.TrainParts, FakeImages]:
    ctx = DistContext(0, 0, 1, 1, settings.device)
    model = compute.place(models.build_model(cfg.arch, 1000), settings)
    if settings.compile:
        model.compile()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, fused=settings.device.type == "cuda" or None
    )
    parts = engine.TrainParts(
        model, nn.CrossEntropyLoss(), optimizer, data.Normalizer(settings.device, settings.memory_format), ctx,
        Reporter(), print_freq=10**9, num_classes=1000, autocast=settings.autocast, scaler=settings.grad_scaler(),
    )  # fmt: skip
    return parts, FakeImages(cfg.batch_size * (cfg.steps + cfg.warmup), 1000, cfg.image_size, seed=0)


def model_ours(part: str, cfg: BenchmarkConfig, settings: compute.Compute) -> Runner:
    """The tool's own training loop ("train") or evaluation ("eval"), on data made on the device."""
    parts, images = _our_parts(cfg, settings)

    def steps(n: int) -> None:
        sampler = data.ShardSampler(n * cfg.batch_size, 0, 1)
        loader = DeviceBatches(images, sampler, cfg.batch_size, settings.device, drop_last=True)
        if part == "train":
            engine.train_one_epoch(parts, loader, epoch=0)
        else:
            engine.evaluate(parts.model, loader, parts.normalize, parts.ctx, Reporter(), 0, 10**9, 1000, parts.autocast)

    return steps


# -- model throughput: the reference script's habits -------------------------------------------------------


def model_reference(part: str, cfg: BenchmarkConfig, device: torch.device) -> Runner:
    """The reference's training ("train") or evaluation ("eval") steps on one batch from the host."""
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size)  # normalised floats, on the host
    targets = torch.randint(0, 1000, (cfg.batch_size,))
    if device.type == "cuda":  # its loader pins memory
        images, targets = images.pin_memory(), targets.pin_memory()
    return _reference_steps(cfg, device, itertools.repeat((images, targets)), training=part == "train")


def _reference_steps(
    cfg: BenchmarkConfig, device: torch.device, batches: Iterator[Any], training: bool = True
) -> Runner:
    """Steps as the reference's `train()` and `validate()` take them: copy, fp32 forward, loss and top-k read
    on the host (`loss.item()`, a sync); in training then `zero_grad`, backward, step."""
    torch.backends.cudnn.benchmark = True  # as in ours: not among the changes this benchmark credits
    model = models.build_model(cfg.arch, 1000).to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train(training)

    def steps(n: int) -> None:
        with torch.set_grad_enabled(training):
            for x, y in itertools.islice(batches, n):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                output = model(x)
                logits = output[0] if isinstance(output, tuple) else output  # with auxiliary outputs (Inception)
                loss = criterion(logits, y)
                _reference_accuracy(logits, y, loss)
                if training:
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

    return steps


def _reference_accuracy(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
    """The reference's meters: top-1/top-5 and the loss, each read to the host every step."""
    with torch.no_grad():
        correct = logits.topk(5, 1).indices.t().eq(targets.view(1, -1))
        for k in (1, 5):
            correct[:k].reshape(-1).float().sum().item()
    loss.item()


# -- input pipeline ------------------------------------------------------------------------------------------


def reference_train_transform(size: int) -> transforms.Compose:
    normalize = transforms.Normalize(mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD)
    return transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )


def _pipeline_throughput(
    cfg: BenchmarkConfig, root: str, scratch: str, workers: int, reference: ChildRunners, progress: Progress
) -> list[dict[str, Any]]:
    files = [path for path, _ in datasets.ImageFolder(root).samples][: cfg.images]
    cpu = torch.device("cpu")
    per_core = {  # unseeded, then each picture under its own seed (the baseline's cost is the same either way)
        seed: _interleaved(
            {"ours": per_core_ours(files, cfg.image_size, seed),
             "baseline": reference.add("per core", per_core_reference, files, cfg.image_size)},
            steps=1, images=len(files), warmup=0, device=cpu,
        )
        for seed in (None, 0)
    }  # fmt: skip
    folder = _train_folder(root, cfg.image_size)
    from_files = loader_passes(folder, cfg, workers)
    total = _interleaved(
        {"ours": from_files, "baseline": reference.add("loader", reference_loader_passes, root, cfg, workers)},
        steps=1, images=min(cfg.images, len(folder)), warmup=1, device=cpu, rounds=2,
    )  # fmt: skip
    samples = folder.samples[: cfg.images]
    size = sum(os.path.getsize(path) for path, _ in samples) // (4 * max(1, workers)) + 1  # shards for all workers
    packed = make_shards({"val": samples}, folder.classes, f"{scratch}/shards", size)
    stream = shards.ShardStream(shards.read_index(f"{scratch}/shards").splits["val"], folder.transform, training=False)
    progress(f"pipeline: the same images from {len(packed['splits']['val'])} tar shard(s)")
    from_shards = _interleaved(
        {"ours": loader_passes(stream, cfg, workers), "baseline": from_files},
        steps=1, images=len(samples), warmup=1, device=cpu, rounds=2,
    )  # fmt: skip
    what = f"{cfg.image_size}px crops of {cfg.source}"
    return [
        _row("pipeline, per core", what, per_core[None]),
        _row("pipeline, per core, --seed", what, per_core[0]),
        _row(f"pipeline, {workers} workers", what, total),
        _row(f"shards vs files, {workers} workers", "ours from tar shards / ours from image files", from_shards),
    ]


def _e2e_throughput(
    cfg: BenchmarkConfig, settings: compute.Compute, root: str, workers: int, reference: ChildRunners
) -> dict[str, Any]:
    folder = _train_folder(root, cfg.image_size)
    if len(folder) < cfg.batch_size:
        raise UserError(
            f"e2e needs at least one batch of images: --images {cfg.images} < --batch-size {cfg.batch_size}"
        )
    ours = e2e_ours(cfg, settings, folder, workers)
    runners = {"ours": ours, "baseline": reference.add("e2e", e2e_reference, cfg, settings.device, root, workers)}
    what = f"{cfg.arch} b{cfg.batch_size} {cfg.image_size}px from {cfg.source}"
    rates = _interleaved(runners, cfg.steps, cfg.batch_size * cfg.steps, cfg.warmup, settings.device)
    return _row(f"e2e: train from files, {workers} workers", what, rates)


def _train_folder(root: str, size: int) -> sources.ClassFolder:
    return sources.ClassFolder(root, sources.class_folders(root), TrainPreset(size))


class _Steps:
    """The next `count` batches of an endless loader, as a loader of their own (what the engine iterates)."""

    def __init__(self, batches: Iterator[Any], count: int) -> None:
        self.batches, self.count = batches, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.batches, self.count)


def _endless(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def _file_loader(dataset: Any, cfg: BenchmarkConfig, workers: int, device: torch.device, prefetch: int) -> DataLoader:
    """Persistent workers on both sides, so short epochs over a few images do not measure worker start-up."""
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=prefetch if workers else None,
        pin_memory=device.type == "cuda", collate_fn=unreadable.collate,
    )  # fmt: skip


def e2e_ours(cfg: BenchmarkConfig, settings: compute.Compute, folder: sources.ClassFolder, workers: int) -> Runner:
    """The tool's training loop fed by its own pipeline (uint8 presets, device-side normalisation)."""
    parts, _ = _our_parts(cfg, settings)
    batches = _endless(_file_loader(folder, cfg, workers, settings.device, prefetch=4))
    return lambda n: engine.train_one_epoch(parts, _Steps(batches, n), epoch=0)  # type: ignore[arg-type]


def e2e_reference(cfg: BenchmarkConfig, device: torch.device, root: str, workers: int) -> Runner:
    """The reference's loop fed by the reference's pipeline (PIL, ToTensor, Normalize in the workers)."""
    images = datasets.ImageFolder(root, transform=reference_train_transform(cfg.image_size))
    return _reference_steps(cfg, device, _endless(_file_loader(images, cfg, workers, device, prefetch=2)))


def per_core_ours(files: list[str], size: int, seed: int | None = None) -> Runner:
    """With `seed`, each picture under its own seed, as the loader workers of a `--seed` run make it."""
    preset = TrainPreset(size)
    if seed is None:
        return _single_threaded(files, lambda path: preset(read_bytes(path)))
    position = itertools.count()

    def one(path: str) -> torch.Tensor:
        with seeded(mix_seed(seed, next(position))):
            return preset(read_bytes(path))

    return _single_threaded(files, one)


def per_core_reference(files: list[str], size: int) -> Runner:
    transform = reference_train_transform(size)
    return _single_threaded(files, lambda path: transform(datasets.folder.pil_loader(path)))  # ImageFolder's loader


def _single_threaded(files: list[str], transform: Callable[[str], Any]) -> Runner:
    """Passes over `files` on one thread: what one loader worker does."""

    def passes(n: int) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for path in files * n:
                transform(path)
        finally:
            torch.set_num_threads(threads)

    return passes


def loader_passes(dataset: Any, cfg: BenchmarkConfig, workers: int) -> Runner:
    """Passes over (the first `images` of) `dataset` through a DataLoader with `workers` persistent workers."""
    if isinstance(dataset, torch.utils.data.IterableDataset):  # a stream: already cut to the images, in order
        subset, shuffle = dataset, False
    else:
        subset, shuffle = torch.utils.data.Subset(dataset, range(min(cfg.images, len(dataset)))), True
    loader = DataLoader(subset, batch_size=32, num_workers=workers, persistent_workers=workers > 0, shuffle=shuffle)

    def passes(n: int) -> None:
        for _ in range(n):
            for _batch in loader:
                pass

    return passes


def reference_loader_passes(root: str, cfg: BenchmarkConfig, workers: int) -> Runner:
    return loader_passes(datasets.ImageFolder(root, transform=reference_train_transform(cfg.image_size)), cfg, workers)
