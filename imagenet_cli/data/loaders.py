"""Datasets, samplers and loaders.

Images travel as uint8 tensors (a quarter of float32's bytes through worker queues and host-to-device
copies) and become normalised floats on the device, in one batched operation.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..config import DataConfig, RunConfig
from ..core import model_sources
from ..core.context import DistContext
from ..core.errors import UserError
from ..core.randomness import PerSampleSeeded, mix_seed
from . import decoders, presets, sources
from .fakedata import DeviceBatches, FakeImages
from .shards import ShardStream
from .sources import DataSplits
from .unreadable import Guarded, collate

IMAGENET_MEAN, IMAGENET_STD = presets.IMAGENET_MEAN, presets.IMAGENET_STD  # defined there: erasing fills with the mean


def build_splits(cfg: DataConfig, with_train: bool, class_names: Sequence[str] | None = None) -> DataSplits:
    if cfg.fake:
        assert cfg.num_classes is not None and cfg.val_crop_size and cfg.image_size
        val = FakeImages(cfg.fake_val_images, cfg.num_classes, cfg.val_crop_size, seed=1)
        train = FakeImages(cfg.fake_train_images, cfg.num_classes, cfg.image_size, seed=0) if with_train else None
        return DataSplits(train, val, list(val.classes))
    return sources.open_splits(cfg, with_train, class_names)


class ShardSampler(Sampler[int]):
    """Every index exactly once across ranks, without the padding DistributedSampler adds: evaluation
    counts each validation image once, so 1, 2 or 3 ranks report the same top-1."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochSampler(DistributedSampler):
    """This rank's share of each epoch's shuffle (the same permutation on every rank, from seed and
    epoch), resumable at any batch. When seeded, each index comes with its own augmentation seed, so the
    data a run sees is a pure function of (seed, epoch, position), wherever it resumed."""

    def __init__(
        self, dataset: Dataset, ctx: DistContext, seed: int | None, shuffle: bool = True, reps: int = 1
    ) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed or 0)
        self.per_sample_seeds = seed is not None
        self.skip, self.reps = 0, reps

    def set_position(self, epoch: int, samples_done: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = samples_done

    def __iter__(self) -> Iterator:  # type: ignore[override]
        if self.reps > 1:
            return iter(self._repeated()[self.skip :])
        indices = list(super().__iter__())[self.skip :]
        if not self.per_sample_seeds:
            return iter(indices)
        return iter([(i, mix_seed(self.seed, self.epoch, i)) for i in indices])

    def _repeated(self) -> list:
        """Repeated augmentation (`--ra-reps`, torchvision's RASampler): the epoch's shuffle with each image
        `reps` times in a row, dealt round-robin, so the copies land on different ranks, each with a seed of
        its own (copy number mixed in); the epoch keeps its length, so it sees 1/reps of the images. One
        global sequence, whatever the number of ranks; a resume skips into it."""
        count = len(self.dataset)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(count, generator=generator).tolist() if self.shuffle else list(range(count))
        copies = [(i, copy) for i in order for copy in range(self.reps)]
        copies = (copies * (self.total_size // len(copies) + 1))[: self.total_size]  # tiny datasets: wrap around
        mine = copies[self.rank : self.total_size : self.num_replicas]
        if not self.per_sample_seeds:
            return [i for i, _ in mine]
        return [(i, mix_seed(self.seed, self.epoch, i, copy)) for i, copy in mine]

    def __len__(self) -> int:
        return self.num_samples - self.skip


def train_loader(
    dataset: Dataset,
    ctx: DistContext,
    batch_size: int,
    workers: int,
    seed: int | None,
    prefetch: int = 2,
    shuffle: bool = True,
    skip_bad: bool = False,
    reps: int = 1,
) -> DataLoader | DeviceBatches:
    if isinstance(dataset, ShardStream):
        if reps > 1:
            raise UserError("--ra-reps needs data read by index (class folders, CSV manifests, --dataset), not shards")
        dataset.place(ctx, batch_size, seed, shuffle, skip_bad)
        if dataset.batches_per_rank() < 1:
            raise UserError(
                f"the shards hold {dataset.total} training samples, too few for a batch of {batch_size} on each of "
                f"{ctx.world_size} process(es); lower --batch-size or use more data"
            )
        return _loader(dataset, None, batch_size, workers, prefetch, ctx)
    sampler = EpochSampler(dataset, ctx, seed, shuffle, reps)
    if len(sampler) < batch_size:
        raise UserError(
            f"each process gets {len(sampler)} training images per epoch, fewer than its batch of {batch_size}; "
            "lower --batch-size or use more data"
        )
    if isinstance(dataset, FakeImages):
        return DeviceBatches(dataset, sampler, batch_size, ctx.device, drop_last=True)
    guarded = Guarded(dataset, skip_bad)
    source = PerSampleSeeded(guarded) if seed is not None else guarded
    return _loader(source, sampler, batch_size, workers, prefetch, ctx)


def val_loader(
    dataset: Dataset, ctx: DistContext, batch_size: int, workers: int, prefetch: int = 2, skip_bad: bool = False
) -> DataLoader | DeviceBatches:
    if isinstance(dataset, ShardStream):
        dataset.place(ctx, batch_size, None, shuffle=False, skip_bad=skip_bad)
        return _loader(dataset, None, batch_size, workers, prefetch, ctx)
    sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)  # type: ignore[arg-type]
    if isinstance(dataset, FakeImages):
        return DeviceBatches(dataset, sampler, batch_size, ctx.device, drop_last=False)
    return _loader(Guarded(dataset, skip_bad), sampler, batch_size, workers, prefetch, ctx)


class Loader(DataLoader):
    """A DataLoader whose workers may start on an epoch's first batches early (`start_early`), while the
    process builds the rest of the run; that epoch's `iter()` then carries on with those batches instead of
    starting over, provided the epoch and position set since are the ones it started with."""

    _early: tuple[tuple[int, int], Iterator] | None = None

    def start_early(self) -> None:
        self._early = (_position(self), super().__iter__())

    def __iter__(self) -> Iterator:
        if self._early is not None and self._early[0] == _position(self):
            early, self._early = self._early[1], None
            return early
        self.drop_early()
        return super().__iter__()

    def drop_early(self) -> None:
        """Stop the workers of an early start no epoch took over (a run that failed before training, or an
        epoch set to another position since)."""
        early, self._early = self._early, None
        if early is not None:
            early[1]._shutdown_workers()  # type: ignore[attr-defined]
            if early[1] is self._iterator:  # persistent workers: the next iterator starts anew
                self._iterator = None


def _positioned(loader: DataLoader | DeviceBatches) -> EpochSampler | ShardStream:
    """What holds a loader's place in the data: a stream itself, else its sampler."""
    return loader.dataset if isinstance(loader.dataset, ShardStream) else loader.sampler  # type: ignore[return-value]


def _position(loader: DataLoader) -> tuple[int, int]:
    """(epoch, samples skipped) as last set by `set_position`."""
    target = _positioned(loader)
    return target.epoch, target.skip


def start_early(loader: DataLoader | DeviceBatches, epoch: int, samples_done: int, size: int | None = None) -> None:
    """Set `loader` to an epoch (its crops at `size` px with progressive resizing) and start its workers on
    it now: decoding the first batches overlaps what the run still builds (placing the model, which starts
    CUDA on a GPU, wrapping it, restoring a checkpoint). Loading in the process itself (-j 0) or on the
    device has nothing to start."""
    if not isinstance(loader, Loader) or loader.num_workers == 0:
        return
    if size is not None:
        set_train_size(loader, size)
    set_position(loader, epoch, samples_done)
    loader.start_early()


def _loader(
    dataset: Dataset, sampler: Sampler[int] | None, batch_size: int, workers: int, prefetch: int, ctx: DistContext
) -> Loader:
    forked = workers > 0 and sys.platform.startswith("linux")
    if forked:  # the decoder chosen once, here: forked workers inherit it instead of each importing and testing it
        decoders.chosen()
    return Loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        # Training keeps to whole batches; validation counts every image, and a stream yields whole batches.
        drop_last=isinstance(sampler, EpochSampler),
        # A stream's workers must start anew each epoch to learn the epoch and position set in this process.
        persistent_workers=workers > 0 and not isinstance(dataset, ShardStream),
        prefetch_factor=prefetch if workers > 0 else None,
        collate_fn=collate,  # also carries deferred JPEGs and the names of unreadable files
        generator=torch.Generator(),  # its own: making an iterator must not draw from the global generator
        worker_init_fn=_leave_signals_to_the_main_process if workers > 0 else None,
        # Workers of a spawned rank would otherwise be spawned too (its default), each re-importing torch:
        # seconds per worker at every start. Forking, as under torchrun, is safe: loader workers never touch CUDA.
        multiprocessing_context="fork" if forked else None,
    )


@contextmanager
def releasing_workers(*loaders: DataLoader | DeviceBatches | None) -> Iterator[None]:
    """Stop the loaders' persistent workers however the block ends: they ignore SIGTERM (to outlive a
    preemption notice), so only the loader's own shutdown stops them, not multiprocessing's `terminate()`."""
    try:
        yield
    finally:
        for loader in loaders:
            _stop_workers(loader)


def _stop_workers(loader: DataLoader | DeviceBatches | None) -> None:
    if loader is None:
        return
    if isinstance(loader, Loader):
        loader.drop_early()
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None  # type: ignore[union-attr]


def set_train_size(loader: DataLoader | DeviceBatches, size: int) -> None:
    """Progressive resizing: the training crops of the next epoch at `size` px. The size lives in the preset,
    which loader workers copy when they start: persistent workers are stopped, so the next epoch's iterator
    starts workers that copy the new size (a stream's start anew each epoch anyway). The size changes a
    handful of times a run, so the restarts cost little."""
    dataset = loader.dataset
    while isinstance(dataset, (Guarded, PerSampleSeeded)):
        dataset = dataset.dataset
    if isinstance(dataset, FakeImages):  # made on the device, at its image size
        dataset.image_size = size
        return
    crop = presets.crop_of(getattr(dataset, "transform", None))
    if crop is None:
        raise UserError(f"--progressive-resize cannot set the crop size of {type(dataset).__name__} data")
    if crop.size != size:
        crop.resize(size)
        _stop_workers(loader)


def _leave_signals_to_the_main_process(_worker_id: int) -> None:
    """A preemption signal or Ctrl-C reaches loader workers too; they must keep serving batches until
    the main process has saved its checkpoint, and they end with it."""
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


def set_position(loader: DataLoader | DeviceBatches, epoch: int, samples_done: int) -> None:
    _positioned(loader).set_position(epoch, samples_done)


def per_process_batch(batch_size: int, ctx: DistContext, data_parallel: bool) -> int:
    """`-b` is the whole run's batch; the first `b % N` ranks take one image more. Only a validation batch
    can split unevenly (`fit_batch` makes training's divide), and it changes no figure: every image is
    counted once on some rank."""
    if data_parallel or not ctx.distributed:
        return batch_size
    share, rest = divmod(batch_size, ctx.world_size)
    return max(1, share + (ctx.rank < rest))


def fit_batch(cfg: RunConfig, processes: int) -> tuple[RunConfig, str | None]:
    """The run's configuration with a training batch that splits evenly over `processes`, and a note when
    it had to change. A batch typed with -b is the optimisation the user asked for, so one that does not
    divide is refused; one nobody typed is rounded down, as the reference's `int(b / N)` per process does,
    and recorded as used, so a resume on the same processes continues exactly."""
    if cfg.dist.data_parallel and processes > 1:
        raise UserError(
            f"--data-parallel drives every local GPU from one process, but this run has {processes} processes "
            "(torchrun, srun or --world-size), each with its own GPU: leave --data-parallel out"
        )
    batch = cfg.optim.batch_size
    if cfg.command == "evaluate" or cfg.evaluate_only or batch % processes == 0:
        return cfg, None
    if cfg.optim.batch_size_given:
        below, above = batch // processes * processes, (batch // processes + 1) * processes
        nearest = f"{below} and {above}" if below else f"{above} (1 per process)"
        raise UserError(
            f"--batch-size {batch} is the total over {processes} processes and must divide evenly (each process "
            f"would get {batch / processes:g}); the nearest that do are {nearest}"
        )
    share = max(1, batch // processes)
    used, steps = share * processes, cfg.optim.grad_accum_steps
    per_step = f"; {used * steps} per optimizer step with --grad-accum-steps {steps}" if steps > 1 else ""
    whose = "the resumed run's batch" if cfg.resume else "the default batch"
    note = (
        f"{whose} {batch} (no -b given) does not split evenly over {processes} processes: this run uses "
        f"{used} = {processes} × {share}{per_step}; give -b to choose another (a multiple of {processes})"
    )
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, batch_size=used)), note


def resolve_workers(workers: int | None, ctx: DistContext) -> int:
    return workers if workers is not None else default_workers(ctx.local_world_size)


def default_workers(local_world_size: int) -> int:
    """The cores of this process's affinity mask, shared with local peers, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no mask
    return max(1, min(8, cores // max(1, local_world_size)))


class Normalizer:
    """uint8 batches to normalised float on the device, in the model's memory layout: one batched pass
    there instead of a float conversion and normalisation per image on the CPU. ImageNet's statistics,
    unless the arch's weights name others (timm's `pretrained_cfg`)."""

    def __init__(
        self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format, arch: str = ""
    ) -> None:
        self.device, self.memory_format = device, memory_format
        mean, std = model_sources.normalization(arch) or (IMAGENET_MEAN, IMAGENET_STD)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)

    def __call__(self, images: torch.Tensor | presets.DeferredBatch) -> torch.Tensor:
        if isinstance(images, presets.DeferredBatch):  # --decode-on-device
            images = images.decode(self.device)
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return (images.float() - self.mean) * self.scale
