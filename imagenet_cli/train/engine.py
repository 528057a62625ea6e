"""The training and evaluation loops.

Explicit arguments in, metric values out; progress goes through a `Reporter`. Meters accumulate on the
device and are read (a host sync) only at the print interval, not every step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.context import DistContext, all_reduce_min, all_reduce_sum
from ..core.errors import RunFailed
from ..core.faults import Fault
from ..core.models import unwrap
from ..data.loaders import Normalizer, set_position
from ..data.unreadable import BadImages
from ..report.live import Reporter
from ..report.metrics import EpochResult, Metrics
from .ema import ModelEma
from .mixing import BatchMixer
from .schedule import Schedule

AUX_LOSS_WEIGHT = 0.4  # Inception v3 / GoogLeNet auxiliary classifiers, as in their papers' recipes


class Meter:
    """Sums of loss and correct predictions kept as device tensors: no sync until `read`."""

    def __init__(self, device: torch.device, topk: int = 5) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1, top-k, count
        self.topk = topk

    @torch.no_grad()
    def add(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Top-k over every output, as the reference counts it (a 1000-output model on 10 classes: any of the 1000)."""
        top = logits.topk(min(self.topk, logits.shape[1]), dim=1).indices
        hits = top.eq(targets.unsqueeze(1))
        self.sums += torch.stack(
            [loss_sum.double(), hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
             torch.tensor(float(targets.numel()), dtype=torch.float64, device=logits.device)]
        )  # fmt: skip

    def read(self, seconds: float, data_seconds: float = 0.0) -> Metrics:
        loss, top1, topk, count = self.sums.tolist()
        n = max(count, 1.0)
        return Metrics(loss / n, 100 * top1 / n, 100 * topk / n, int(count), seconds, data_seconds=data_seconds)


def split_outputs(output: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and any auxiliary ones (Inception v3, GoogLeNet return namedtuples in training)."""
    if isinstance(output, torch.Tensor):
        return output, []
    logits = output.logits  # type: ignore[attr-defined]
    aux = [a for name in ("aux_logits", "aux_logits1", "aux_logits2") if (a := getattr(output, name, None)) is not None]
    return logits, aux


def _nothing(*_args: object) -> None:
    return None


class FiniteGuard:
    """Watches the loss for NaN and infinity without a host sync per step: the first bad step is kept on
    the device. `check` agrees over all ranks (one reduction) and stops them together, at the same step,
    before anything is saved. The step itself never changes the weights: the grad scaler skips updates
    whose gradients are not finite."""

    NONE = 2**62

    def __init__(self, advice: str = "") -> None:
        self.advice = advice
        self.first: torch.Tensor | None = None

    def observe(self, loss: torch.Tensor, ctx: DistContext, epoch: int, step: int) -> None:
        if self.first is None:
            self.first = torch.full((), self.NONE, dtype=torch.int64, device=loss.device)
        where = (epoch * 10**9 + step) * ctx.world_size + ctx.rank
        bad = ~torch.isfinite(loss.detach()) & (self.first == self.NONE)
        self.first = torch.where(bad, torch.full_like(self.first, where), self.first)

    def check(self, ctx: DistContext) -> None:
        if self.first is None:
            return
        first = all_reduce_min(self.first.clone(), ctx)
        if int(first) < self.NONE:
            place, rank = divmod(int(first), ctx.world_size)
            epoch, step = divmod(place, 10**9)
            on_rank = f" on rank {rank}" if ctx.distributed else ""
            raise RunFailed(
                f"the loss became NaN or infinite at epoch {epoch}, step {step}{on_rank}; training stopped "
                f"without letting it change the weights or the saved checkpoints. {self.advice}".strip()
            )


@dataclass(frozen=True)
class TrainParts:
    """What every training step uses, built once by the worker."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    normalize: Normalizer
    ctx: DistContext
    reporter: Reporter
    print_freq: int
    num_classes: int
    frozen_norms: tuple[nn.Module, ...] = ()  # BatchNorm layers of a frozen backbone: kept in eval mode
    autocast: Callable[[], AbstractContextManager] = nullcontext  # mixed precision, or nothing
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler(enabled=False))
    grad_clip: float | None = None  # max norm of all gradients together
    guard: FiniteGuard = field(default_factory=FiniteGuard)
    fault: Fault = field(default_factory=Fault)  # what the fault-injection tests ask for; nothing otherwise
    bad_images: BadImages = field(default_factory=BadImages)  # stop at an unreadable file, or skip it
    schedule: Schedule | None = None  # sets the LR before every step; None: left as it is
    grad_accum_steps: int = 1
    mixer: BatchMixer | None = None  # mixup / cutmix
    ema: ModelEma | None = None
    ema_warmup_epochs: float = 0.0


def train_one_epoch(
    parts: TrainParts, loader: DataLoader, epoch: int, first_step: int = 0, after_step: Callable[[int], None] = _nothing
) -> Metrics:
    """Steps count batches from 1 within the epoch; a resumed epoch starts after `first_step` batches (its
    loader already skips them). With accumulation the optimizer steps every `grad_accum_steps` batches
    and at the epoch's end; `after_step(step)` runs after each optimizer step, on every rank."""
    model, ctx, reporter = parts.model, parts.ctx, parts.reporter
    model.train()
    for norm in parts.frozen_norms:
        norm.eval()
    parts.optimizer.zero_grad(set_to_none=True)
    meter, since_print = Meter(ctx.device), Meter(ctx.device)
    start = last_print = waiting_since = time.perf_counter()
    waited = waited_since_print = 0.0
    side = 0  # the crops' size, as the batches have it: what metrics.jsonl records of progressive resizing
    total = first_step + len(loader)
    reporter.phase_start("train", epoch, total, first_step)
    for step, batch in enumerate(loader, start=first_step + 1):
        wait = time.perf_counter() - waiting_since
        waited, waited_since_print = waited + wait, waited_since_print + wait
        images, targets = parts.bad_images.unpack(batch)
        images, targets = parts.normalize(images), targets.to(ctx.device, non_blocking=True)
        side = images.shape[-1]
        if parts.schedule is not None:
            parts.schedule.apply(parts.optimizer, epoch + (step - 1) / total)
        last_of_group = step % parts.grad_accum_steps == 0 or step == total
        logits, loss = _forward_backward(parts, images, targets, epoch, step, sync=last_of_group)
        if last_of_group:
            _optimizer_step(parts, epoch, step, total)
        for m in (meter, since_print):
            m.add(logits.detach(), targets, loss.detach() * targets.numel())
        if step % parts.print_freq == 0 or step == total:
            parts.guard.check(ctx)
            now = time.perf_counter()
            reporter.phase_update(step, since_print.read(now - last_print, waited_since_print), _lr(parts.optimizer))
            since_print, last_print, waited_since_print = Meter(ctx.device), now, 0.0
        else:
            reporter.phase_advance(step)
        if last_of_group:
            after_step(step)
        waiting_since = time.perf_counter()
    all_reduce_sum(meter.sums, ctx)
    result = dataclasses.replace(meter.read(time.perf_counter() - start, waited), image_size=side)
    reporter.phase_end(result)
    return result


def _forward_backward(
    parts: TrainParts, images: torch.Tensor, targets: torch.Tensor, epoch: int, step: int, sync: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradients of one batch (mixed, when mixup or cutmix is on). Gradients of the inner
    batches of an accumulation group are not all-reduced: only the group's last one pays for that."""
    ctx = parts.ctx
    labels: torch.Tensor = targets
    if parts.mixer is not None and parts.mixer.active:
        images, labels = parts.mixer(images, targets, ctx.rank, epoch, step)
    no_sync = getattr(parts.model, "no_sync", None)
    with nullcontext() if sync or no_sync is None else no_sync(), parts.autocast():
        logits, aux = split_outputs(parts.model(images))
        loss = parts.criterion(logits, labels) + sum(AUX_LOSS_WEIGHT * parts.criterion(a, labels) for a in aux)
        loss = parts.fault.apply(loss, ctx.rank, epoch, step)
        parts.guard.observe(loss, ctx, epoch, step)
        parts.scaler.scale(loss / parts.grad_accum_steps).backward()
    return logits, loss


def _optimizer_step(parts: TrainParts, epoch: int, step: int, total: int) -> None:
    if parts.grad_clip is not None:
        parts.scaler.unscale_(parts.optimizer)
        params = [p for group in parts.optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, parts.grad_clip, foreach=True)
    parts.scaler.step(parts.optimizer)  # skipped on the device when gradients are not finite
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.ema is not None:
        per_epoch = math.ceil(total / parts.grad_accum_steps)
        done = epoch * per_epoch + math.ceil(step / parts.grad_accum_steps)
        parts.ema.update(done, warming_up=epoch + step / total <= parts.ema_warmup_epochs)


def _lr(optimizer: torch.optim.Optimizer) -> float:
    """The LR a run reports: the head's, when the backbone learns more slowly."""
    return max(group["lr"] for group in optimizer.param_groups)


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
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    bad_images: BadImages | None = None,
    confusion: bool = False,
    phase: str = "val",
) -> Metrics:
    """Exact over the whole validation set, whatever the number of ranks: each rank sees a disjoint
    shard, runs the unwrapped model (no collectives, so uneven shards cannot hang), and the sums are
    added once at the end. The confusion matrix (num_classes squared counts) only when asked; it counts
    the predictions that name one of the data's classes (a wider model can predict an output beyond them)."""
    net = unwrap(model)
    net.eval()
    meter = Meter(ctx.device)
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=ctx.device)  # correct, images
    cells = torch.zeros(num_classes * num_classes if confusion else 0, dtype=torch.float64, device=ctx.device)
    start = time.perf_counter()
    reporter.phase_start(phase, epoch, len(loader))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")  # sums, not means, stay exact across uneven shards
    bad_images = bad_images or BadImages()
    for step, batch in enumerate(loader, start=1):
        images, targets = bad_images.unpack(batch)
        images, targets = normalize(images), targets.to(ctx.device, non_blocking=True)
        with autocast():
            logits = net(images)
        logits = logits.float()  # the loss and the metrics at full precision
        meter.add(logits, targets, loss_fn(logits, targets))
        predicted = logits.argmax(dim=1)
        per_class[0].index_add_(0, targets, predicted.eq(targets).double())
        per_class[1].index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))
        if confusion:  # clamped and weighted by 0 beyond the classes: no host sync for a mask
            inside = predicted.lt(num_classes).double()
            cells.index_add_(0, targets * num_classes + predicted.clamp(max=num_classes - 1), inside)
        if step % print_freq == 0 or step == len(loader):
            reporter.phase_update(step, meter.read(time.perf_counter() - start))
        else:
            reporter.phase_advance(step)
    all_reduce_sum(meter.sums, ctx)
    all_reduce_sum(per_class, ctx)
    counts = tuple((int(c), int(n)) for c, n in per_class.t().tolist())
    matrix = ()
    if confusion:
        all_reduce_sum(cells, ctx)
        matrix = tuple(tuple(int(n) for n in row) for row in cells.view(num_classes, num_classes).tolist())
    result = dataclasses.replace(meter.read(time.perf_counter() - start), per_class=counts, confusion=matrix)
    reporter.phase_end(result)
    return result


@dataclass(frozen=True)
class Hooks:
    """Where the worker persists and steers a run; the loop itself knows nothing of files or signals.

    before_epoch(epoch, parts) -> parts: the parts to train this epoch with (unfreezing a backbone).
    after_step(epoch, step): after each optimizer step (mid-epoch saves, agreeing to stop).
    after_epoch(epoch, best_acc1, is_best): once the epoch is validated and recorded: save it (to `saves_to`),
    then stop there if a signal came during validation."""

    before_epoch: Callable[[int, TrainParts], TrainParts] = lambda _epoch, parts: parts
    after_step: Callable[[int, int], None] = _nothing
    after_epoch: Callable[[int, float, bool], None] = _nothing
    saves_to: str | None = None  # the file each epoch's save writes (on the main rank), for its record


def fit(
    parts: TrainParts,
    train_data: DataLoader,
    val_data: DataLoader,
    *,
    start_epoch: int,
    start_step: int,
    epochs: int,
    best_acc1: float,
    hooks: Hooks,
    best_by_ema: bool = False,
) -> float:
    """Train from (`start_epoch`, `start_step`) to `epochs`, validating after each epoch (the weight
    average too, with EMA); returns the best top-1, by the model's or, with `best_by_ema`, the average's.
    The sampler's position is set explicitly each epoch, so a mid-epoch resume continues with the very
    batch an uninterrupted run would have taken next."""
    for epoch in range(start_epoch, epochs):
        parts = hooks.before_epoch(epoch, parts)
        first_step = start_step if epoch == start_epoch else 0
        set_position(train_data, epoch, first_step * (train_data.batch_size or 1))
        train = train_one_epoch(parts, train_data, epoch, first_step, functools.partial(hooks.after_step, epoch))
        val = _validate(parts, parts.model, val_data, epoch)
        if parts.schedule is not None:
            parts.schedule.epoch_done(val.loss)  # before the save: a resume continues a plateau's counts
        ema = _validate(parts, parts.ema.module, val_data, epoch, "ema") if parts.ema is not None else None
        judged = ema if best_by_ema and ema is not None else val
        is_best = judged.acc1 > best_acc1 or (epoch == start_epoch and best_acc1 == 0.0)
        best_acc1 = max(judged.acc1, best_acc1)
        # The epoch's record first, then its checkpoint: a crash between the two resumes from the previous
        # checkpoint, and metrics.jsonl is trimmed back to it; the reverse order would lose the record.
        result = EpochResult(epoch, train, val, _lr(parts.optimizer), best_acc1, is_best, hooks.saves_to, ema)
        parts.reporter.epoch_end(result)
        hooks.after_epoch(epoch, best_acc1, is_best)
    return best_acc1


def _validate(parts: TrainParts, model: nn.Module, val_data: DataLoader, epoch: int, phase: str = "val") -> Metrics:
    return evaluate(
        model, val_data, parts.normalize, parts.ctx, parts.reporter, epoch, parts.print_freq, parts.num_classes,
        parts.autocast, parts.bad_images, phase=phase,
    )  # fmt: skip
