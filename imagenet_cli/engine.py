"""The training and evaluation loops.

Explicit arguments in, metric values out; progress goes through a `Reporter`. Meters accumulate on the
device and are read (a host sync) only at the print interval, not every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import Normalizer
from .distributed import DistContext, all_reduce_sum
from .models import unwrap
from .reporting import Reporter

AUX_LOSS_WEIGHT = 0.4  # Inception v3 / GoogLeNet auxiliary classifiers, as in their papers' recipes


@dataclass(frozen=True)
class Metrics:
    loss: float
    acc1: float
    acc5: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class Meter:
    """Sums of loss and correct predictions kept as device tensors: no sync until `read`."""

    def __init__(self, device: torch.device, topk: int) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1, top-k, count
        self.topk = topk

    @torch.no_grad()
    def add(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor) -> None:
        top = logits.topk(self.topk, dim=1).indices
        hits = top.eq(targets.unsqueeze(1))
        batch = torch.stack(
            [loss_sum.double(), hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
             torch.tensor(float(targets.numel()), dtype=torch.float64, device=logits.device)]
        )  # fmt: skip
        self.sums += batch

    def read(self, seconds: float) -> Metrics:
        loss, top1, topk, count = self.sums.tolist()
        count_or_one = max(count, 1.0)
        return Metrics(loss / count_or_one, 100 * top1 / count_or_one, 100 * topk / count_or_one, int(count), seconds)


def split_outputs(output: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and any auxiliary ones (Inception v3, GoogLeNet return namedtuples in training)."""
    if isinstance(output, torch.Tensor):
        return output, []
    logits = output.logits  # type: ignore[attr-defined]
    aux = [a for name in ("aux_logits", "aux_logits1", "aux_logits2") if (a := getattr(output, name, None)) is not None]
    return logits, aux


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    normalize: Normalizer,
    ctx: DistContext,
    reporter: Reporter,
    epoch: int,
    print_freq: int,
    num_classes: int,
) -> Metrics:
    model.train()
    meter, since_print = Meter(ctx.device, min(5, num_classes)), Meter(ctx.device, min(5, num_classes))
    start = last_print = time.perf_counter()
    reporter.phase_start("train", epoch, len(loader))
    for step, (images, targets) in enumerate(loader, start=1):
        images, targets = normalize(images), targets.to(ctx.device, non_blocking=True)
        logits, aux = split_outputs(model(images))
        loss = criterion(logits, targets) + sum(AUX_LOSS_WEIGHT * criterion(a, targets) for a in aux)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for m in (meter, since_print):
            m.add(logits.detach(), targets, loss.detach() * targets.numel())
        if step % print_freq == 0 or step == len(loader):
            now = time.perf_counter()
            reporter.phase_update(step, since_print.read(now - last_print))
            since_print, last_print = Meter(ctx.device, min(5, num_classes)), now
        else:
            reporter.phase_advance(step)
    all_reduce_sum(meter.sums, ctx)
    result = meter.read(time.perf_counter() - start)
    reporter.phase_end(result)
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    normalize: Normalizer,
    ctx: DistContext,
    reporter: Reporter,
    epoch: int,
    print_freq: int,
    num_classes: int,
) -> Metrics:
    """Exact over the whole validation set, whatever the number of ranks: each rank sees a disjoint
    shard, runs the unwrapped model (no collectives, so uneven shards cannot hang), and the sums are
    added once at the end."""
    net = unwrap(model)
    net.eval()
    meter = Meter(ctx.device, min(5, num_classes))
    start = time.perf_counter()
    reporter.phase_start("val", epoch, len(loader))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")  # sums, not means, stay exact across uneven shards
    for step, (images, targets) in enumerate(loader, start=1):
        images, targets = normalize(images), targets.to(ctx.device, non_blocking=True)
        logits = net(images)
        meter.add(logits, targets, loss_fn(logits, targets))
        if step % print_freq == 0 or step == len(loader):
            reporter.phase_update(step, meter.read(time.perf_counter() - start))
        else:
            reporter.phase_advance(step)
    all_reduce_sum(meter.sums, ctx)
    result = meter.read(time.perf_counter() - start)
    reporter.phase_end(result)
    return result


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train: Metrics
    val: Metrics
    lr: float
    best_acc1: float
    is_best: bool
    saved: str | None


def fit(
    model: nn.Module,
    train_data: DataLoader,
    val_data: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    normalize: Normalizer,
    ctx: DistContext,
    reporter: Reporter,
    *,
    start_epoch: int,
    epochs: int,
    best_acc1: float,
    print_freq: int,
    num_classes: int,
    on_epoch_end: Callable[[int, float, bool], str | None],
) -> float:
    """Train from `start_epoch` to `epochs`, validating after each; `on_epoch_end(epoch, best, is_best)`
    persists the state and returns where it wrote (or None). Returns the best top-1."""
    for epoch in range(start_epoch, epochs):
        train_data.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(
            model, train_data, criterion, optimizer, normalize, ctx, reporter, epoch, print_freq, num_classes
        )
        scheduler.step()
        val = evaluate(model, val_data, normalize, ctx, reporter, epoch, print_freq, num_classes)
        is_best = val.acc1 > best_acc1 or (epoch == start_epoch and best_acc1 == 0.0)
        best_acc1 = max(val.acc1, best_acc1)
        saved = on_epoch_end(epoch, best_acc1, is_best)
        reporter.epoch_end(EpochResult(epoch, train, val, lr, best_acc1, is_best, saved))
    return best_acc1
