"""One rank's whole life: join the run, build everything, train or evaluate, leave cleanly."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data, distributed, engine, models, optim
from .checkpoint import LoadedCheckpoint, make_checkpoint, read_checkpoint, save_checkpoint
from .config import RunConfig
from .distributed import DistContext, Topology
from .errors import UserError
from .reporting import Reporter, make_reporter


def run(local_index: int, cfg: RunConfig, topology: Topology) -> None:
    ctx = distributed.setup(cfg.dist, topology, local_index)
    try:
        configure_process(cfg, ctx)
        reporter = make_reporter(ctx.is_main, cfg.quiet, to_stderr=cfg.json)
        reporter.message(describe_run(cfg, ctx, topology))
        if cfg.command == "evaluate":
            run_evaluation(cfg, ctx, reporter)
        else:
            run_training(cfg, ctx, reporter)
    finally:
        distributed.teardown()


def describe_run(cfg: RunConfig, ctx: DistContext, topology: Topology) -> str:
    """The first line of every run: what runs where, so a wrong launch is obvious at once."""
    processes = f"{ctx.world_size} process{'es' if ctx.world_size > 1 else ''}"
    if ctx.distributed:
        processes += f" ({topology.source}, {ctx.backend}, {topology.world_size // topology.nproc_per_node} node(s))"
    batch = f"batch {cfg.optim.batch_size}"
    if ctx.distributed and not cfg.dist.data_parallel:
        batch += f" ({per_process_batch(cfg, ctx)} per process)"
    return f"{cfg.command} {cfg.model.arch} on {ctx.device.type}: {processes}, {batch}"


def configure_process(cfg: RunConfig, ctx: DistContext) -> None:
    """Threads, seeds and cuDNN, per process: the reference seeded only the parent of its workers."""
    if ctx.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(data.default_workers(ctx.local_world_size))
    if cfg.seed is not None:
        seed_everything(cfg.seed)  # the same on every rank: identical initial weights
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_training(cfg: RunConfig, ctx: DistContext, reporter: Reporter) -> None:
    resumed = read_checkpoint(cfg.resume) if cfg.resume else None
    class_names = resumed.class_names if resumed else None
    splits = data.build_splits(cfg.data, with_train=not cfg.evaluate_only, class_names=class_names)
    if resumed and resumed.class_names and resumed.class_names != splits.class_names:
        raise UserError(f"the data's classes differ from those {cfg.resume} was trained on")
    num_classes = len(splits.class_names)
    model = create_model(cfg, num_classes, resumed, reporter)
    if cfg.seed is not None:  # augmentations drawn in this process differ per rank, reproducibly
        seed_everything(data.derive_seed(cfg.seed, 2, ctx.rank))
    model = distributed.wrap_model(model, ctx, cfg.dist.data_parallel)
    normalize, batch, workers = data.Normalizer(ctx.device), per_process_batch(cfg, ctx), loader_workers(cfg, ctx)
    val_loader = data.val_loader(splits.val, ctx, batch, workers)
    if cfg.evaluate_only:
        evaluate_and_report(cfg, model, val_loader, normalize, ctx, reporter, num_classes, cfg.resume or cfg.model.arch)
        return
    criterion = optim.build_criterion()
    optimizer = optim.build_optimizer(model, cfg.optim)
    scheduler = optim.build_scheduler(optimizer, cfg.optim)
    start_epoch, best_acc1 = cfg.optim.start_epoch, 0.0
    if resumed is not None:
        start_epoch, best_acc1 = restore_training(cfg, resumed, optimizer, scheduler)
        reporter.message(f"resuming {cfg.resume} at epoch {start_epoch} (best top-1 so far {best_acc1:.2f}%)")
    if start_epoch >= cfg.optim.epochs:
        reporter.message(
            f"nothing to train: the run has done {start_epoch} of {cfg.optim.epochs} epochs (raise --epochs)"
        )
        return
    assert splits.train is not None
    train_loader = data.train_loader(splits.train, ctx, batch, workers, cfg.seed)

    def on_epoch_end(epoch: int, best: float, is_best: bool) -> str | None:
        if not ctx.is_main:
            return None
        checkpoint = make_checkpoint(
            model_state=models.unwrap(model).state_dict(),
            arch=cfg.model.arch,
            epoch=epoch + 1,
            best_acc1=best,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            config=cfg.to_dict(),
            class_names=splits.class_names,
        )
        return save_checkpoint(checkpoint, cfg.output_dir, is_best)

    best_acc1 = engine.fit(
        model, train_loader, val_loader, criterion, optimizer, scheduler, normalize, ctx, reporter,
        start_epoch=start_epoch, epochs=cfg.optim.epochs, best_acc1=best_acc1, print_freq=cfg.print_freq,
        num_classes=num_classes, on_epoch_end=on_epoch_end,
    )  # fmt: skip
    reporter.run_end(best_acc1, cfg.output_dir)


def run_evaluation(cfg: RunConfig, ctx: DistContext, reporter: Reporter) -> None:
    """`evaluate CHECKPOINT`: the label order is the checkpoint's own when it recorded one."""
    assert cfg.checkpoint is not None
    loaded = read_checkpoint(cfg.checkpoint)
    splits = data.build_splits(cfg.data, with_train=False, class_names=loaded.class_names)
    num_classes = models.head_num_classes(cfg.model.arch, loaded.state_dict) or len(splits.class_names)
    if num_classes != len(splits.class_names):
        raise UserError(
            f"{cfg.checkpoint} predicts {num_classes} classes but the data has {len(splits.class_names)}; "
            "is this the dataset it was trained on?"
        )
    model = models.build_model(cfg.model.arch, num_classes)
    models.load_state(model, loaded.state_dict, cfg.model.arch, skip_head=False)
    model = distributed.wrap_model(model, ctx, cfg.dist.data_parallel)
    loader = data.val_loader(splits.val, ctx, per_process_batch(cfg, ctx), loader_workers(cfg, ctx))
    evaluate_and_report(cfg, model, loader, data.Normalizer(ctx.device), ctx, reporter, num_classes, cfg.checkpoint)


def evaluate_and_report(
    cfg: RunConfig,
    model: nn.Module,
    loader: Any,
    normalize: data.Normalizer,
    ctx: DistContext,
    reporter: Reporter,
    num_classes: int,
    source: str,
) -> None:
    metrics = engine.evaluate(model, loader, normalize, ctx, reporter, 0, cfg.print_freq, num_classes)
    if ctx.is_main:
        result = {
            "checkpoint": source,
            "arch": cfg.model.arch,
            "images": metrics.images,
            "acc1": metrics.acc1,
            "acc5": metrics.acc5,
            "loss": metrics.loss,
            "images_per_second": metrics.images_per_second,
            "world_size": ctx.world_size,
        }
        reporter.evaluation(result, cfg.json)


def create_model(cfg: RunConfig, num_classes: int, resumed: LoadedCheckpoint | None, reporter: Reporter) -> nn.Module:
    """A model with `num_classes` outputs and its starting weights: the resumed run's, a weights file,
    or torchvision's pretrained ones. A finetune always gets a fresh head for its new classes."""
    arch = cfg.model.arch
    model = models.build_model(arch, num_classes)
    if resumed is not None:
        models.load_state(model, resumed.state_dict, arch, skip_head=False)
        return model
    if cfg.model.weights:
        state, source = read_checkpoint(cfg.model.weights).state_dict, cfg.model.weights
    elif cfg.model.pretrained:
        state, source = models.pretrained_state_dict(arch), f"torchvision's pretrained {arch}"
    else:
        return model
    new_head = cfg.command == "finetune" or models.head_num_classes(arch, state) != num_classes
    models.load_state(model, state, arch, skip_head=new_head)
    reporter.message(
        f"loaded weights from {source}" + (f" with a new head for {num_classes} classes" if new_head else "")
    )
    return model


def restore_training(
    cfg: RunConfig,
    resumed: LoadedCheckpoint,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.StepLR,
) -> tuple[int, float]:
    """The epoch to start at and the best top-1 so far, with optimizer and schedule restored."""
    epoch = resumed.epoch if resumed.epoch is not None else cfg.optim.start_epoch
    stored = RunConfig.from_dict(resumed.config).optim if resumed.config else None
    optim.restore(optimizer, scheduler, cfg.optim, epoch, resumed.optimizer, resumed.scheduler, stored)
    return epoch, resumed.best_acc1 or 0.0


def per_process_batch(cfg: RunConfig, ctx: DistContext) -> int:
    """`-b` is the batch of the whole run; each process takes its share (checked to divide at launch)."""
    if cfg.dist.data_parallel or not ctx.distributed:
        return cfg.optim.batch_size
    return cfg.optim.batch_size // ctx.world_size


def loader_workers(cfg: RunConfig, ctx: DistContext) -> int:
    return cfg.data.workers if cfg.data.workers is not None else data.default_workers(ctx.local_world_size)
