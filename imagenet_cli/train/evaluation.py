"""`evaluate CHECKPOINT` (and `train -e`) inside one worker: exact figures over every validation image."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import read_checkpoint
from ..config import RunConfig
from ..core import models
from ..core.context import DistContext
from ..data import loaders as data
from ..data.unreadable import BadImages
from ..report import plots
from ..report.live import Reporter
from . import compute, engine


def run_evaluation(cfg: RunConfig, ctx: DistContext, reporter: Reporter) -> None:
    """The label order is the checkpoint's own when it recorded one. A model with more outputs than the
    data has classes (the reference script's 1000) is scored over all of them, as the reference does."""
    assert cfg.checkpoint is not None
    loaded = read_checkpoint(cfg.checkpoint)
    weights = loaded.weights(cfg.ema)
    splits = data.build_splits(cfg.data, with_train=False, class_names=loaded.class_names)
    num_classes = len(splits.class_names)
    outputs = models.output_width(cfg.model.arch, weights, num_classes, cfg.checkpoint)
    if outputs > num_classes:
        reporter.message(models.wider_head_note(outputs, num_classes, cfg.data.path))
    model = models.from_state(cfg.model.arch, weights, outputs)
    settings = compute.resolve(cfg.compute, ctx.device, model)
    reporter.message(f"compute: {settings.describe()}")  # bf16 on some CPUs by default: its top-1 differs a little
    model = compute.wrap_model(compute.place(model, settings), ctx, cfg.dist.data_parallel)
    batch = data.per_process_batch(cfg.optim.batch_size, ctx, cfg.dist.data_parallel)
    workers = data.resolve_workers(cfg.data.workers, ctx)
    loader = data.val_loader(splits.val, ctx, batch, workers, cfg.data.prefetch_factor, cfg.data.skip_bad_images)
    with data.releasing_workers(loader):
        evaluate_and_report(cfg, model, loader, ctx, reporter, splits.class_names, cfg.checkpoint, settings)


def evaluate_and_report(
    cfg: RunConfig,
    model: nn.Module,
    loader: DataLoader,
    ctx: DistContext,
    reporter: Reporter,
    class_names: list[str],
    source: str,
    settings: compute.Compute,
) -> None:
    normalize = data.Normalizer(ctx.device, settings.memory_format, cfg.model.arch)
    metrics = engine.evaluate(
        model, loader, normalize, ctx, reporter, 0, cfg.print_freq, len(class_names), settings.autocast,
        BadImages(cfg.data.skip_bad_images, cfg.data.max_bad_images, ctx.rank), confusion=True,
    )  # fmt: skip
    if ctx.is_main:
        matrix = [list(row) for row in metrics.confusion]
        per_class = [
            {"class": name, "images": images, "correct": correct, "acc1": 100 * correct / images if images else None}
            for name, (correct, images) in zip(class_names, metrics.per_class, strict=True)
        ]
        result = {
            "checkpoint": source,
            "arch": cfg.model.arch,
            "weights": "ema" if cfg.ema else "model",
            "images": metrics.images,
            "acc1": metrics.acc1,
            "acc5": metrics.acc5,
            "loss": metrics.loss,
            "images_per_second": metrics.images_per_second,
            "world_size": ctx.world_size,
            "per_class": per_class,
            "confusion": matrix,  # [true class][predicted class], in the order of per_class
            "predicted_beyond_classes": metrics.images - sum(map(sum, matrix)),  # outputs past the data's classes
            "most_confused": plots.most_confused(matrix, class_names),
            "confusion_plot": None,
        }
        if cfg.confusion_plot:
            title = f"{cfg.model.arch}: {os.path.basename(source)}, top-1 {metrics.acc1:.2f}%"
            plots.confusion_matrix_png(matrix, class_names, Path(cfg.confusion_plot), title)
            result["confusion_plot"] = cfg.confusion_plot
        reporter.evaluation(result, cfg.json)
