"""`train`, `finetune` and `resume` inside one worker: build, restore, train, save, stop when asked.

A resumed run continues exactly where the saved one stopped (epoch and step, optimizer and schedule,
every rank's random generators, the data order), so with `--seed` it ends bit-identical to a run that was
never interrupted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..checkpoint import (
    CHECKPOINT_NAME,
    LoadedCheckpoint,
    make_checkpoint,
    read_checkpoint,
    remove_stale_saves,
    save_checkpoint,
)
from ..config import RunConfig
from ..core import context, models, randomness
from ..core.context import DistContext
from ..core.errors import Preempted, UserError, one_line
from ..core.faults import Fault
from ..data import loaders as data
from ..data.unreadable import BadImages
from ..report import records
from ..report.live import Reporter
from . import compute, engine, finetune, optim
from . import torchvision_optimizer as torchvision_args
from .ema import ModelEma
from .evaluation import evaluate_and_report
from .mixing import BatchMixer
from .schedule import Schedule
from .stops import StepControl


def run_training(cfg: RunConfig, ctx: DistContext, reporter: Reporter) -> None:
    resumed = read_checkpoint(cfg.resume) if cfg.resume else None
    splits = data.build_splits(cfg.data, with_train=not cfg.evaluate_only, class_names=resumed and resumed.class_names)
    if resumed and resumed.class_names and resumed.class_names != splits.class_names:
        raise UserError(f"the data's classes differ from those {cfg.resume} was trained on")
    num_classes = len(splits.class_names)
    plain = create_model(cfg, num_classes, resumed, reporter)
    outputs = models.head_num_classes(cfg.model.arch, plain.state_dict()) or num_classes
    settings = compute.resolve(cfg.compute, ctx.device, plain)
    plain = compute.place(plain, settings)
    if cfg.dist.sync_bn and ctx.distributed:  # same parameters, new modules: before anything holds them
        plain = nn.SyncBatchNorm.convert_sync_batchnorm(plain)
    reporter.message(f"compute: {settings.describe()}")
    start_epoch = resumed.epoch if resumed and resumed.epoch is not None else cfg.optim.start_epoch
    frozen = finetune.backbone_frozen_at(start_epoch, cfg.optim)
    frozen_norms = finetune.freeze_backbone(plain, cfg.model.arch, frozen)
    model = wrap(plain, ctx, cfg, settings)
    batch = data.per_process_batch(cfg.optim.batch_size, ctx, cfg.dist.data_parallel)
    workers = data.resolve_workers(cfg.data.workers, ctx)
    skip_bad = cfg.data.skip_bad_images
    val_loader = data.val_loader(splits.val, ctx, batch, workers, cfg.data.prefetch_factor, skip_bad)
    if cfg.evaluate_only:
        with data.releasing_workers(val_loader):
            evaluate_and_report(
                cfg, model, val_loader, ctx, reporter, splits.class_names, cfg.resume or cfg.model.arch, settings
            )
        return
    optimizer = optim.build_optimizer(plain, cfg.model.arch, cfg.optim, fused=ctx.device.type == "cuda")
    scaler = settings.grad_scaler()
    ema = ModelEma(plain, cfg.optim.model_ema_decay, cfg.optim.model_ema_steps) if cfg.optim.model_ema else None
    start_step, best_acc1 = 0, 0.0
    if cfg.seed is not None:  # each rank's own stream (dropout, ...), reproducible
        randomness.seed_everything(randomness.mix_seed(cfg.seed, 2, ctx.rank))
    if resumed is not None:
        start_epoch, start_step, best_acc1 = restore_training(cfg, ctx, resumed, optimizer, ema, reporter)
        settings.restore_scaler(scaler, resumed.scaler)  # another precision starts its own scale
    if ctx.is_main:
        for stale in remove_stale_saves(cfg.output_dir):
            reporter.message(f"removed {stale}, left by a save that was cut off")
        records.write_config(cfg)
    if start_epoch >= cfg.optim.epochs:
        reporter.message(
            f"nothing to train: the run has done {start_epoch} of {cfg.optim.epochs} epochs (raise --epochs)"
        )
        return
    assert splits.train is not None
    train_loader = data.train_loader(
        splits.train, ctx, batch, workers, cfg.seed, cfg.data.prefetch_factor, skip_bad=skip_bad
    )
    if start_step >= len(train_loader) > 0:
        raise UserError(
            f"{cfg.resume} continues at step {start_step} of epoch {start_epoch}, but an epoch here has "
            f"{len(train_loader)} steps: were the data, -b or the number of processes changed?"
        )
    parts = engine.TrainParts(
        model,
        optim.build_criterion(cfg.optim.label_smoothing),
        optimizer,
        data.Normalizer(ctx.device, settings.memory_format),
        ctx,
        reporter,
        cfg.print_freq,
        num_classes,
        frozen_norms,
        settings.autocast,
        scaler,
        cfg.optim.grad_clip,
        fault=Fault.from_env(),
        bad_images=BadImages(skip_bad, cfg.data.max_bad_images, ctx.rank),
        schedule=Schedule.from_config(cfg.optim),
        grad_accum_steps=cfg.optim.grad_accum_steps,
        mixer=BatchMixer(outputs, cfg.optim.mixup_alpha, cfg.optim.cutmix_alpha, cfg.seed),
        ema=ema,
        ema_warmup_epochs=cfg.optim.model_ema_warmup_epochs,
    )
    saver = Saver(cfg, ctx, plain, optimizer, parts.schedule, scaler, splits.class_names, best_acc1, ema)
    parts = dataclasses.replace(parts, guard=engine.FiniteGuard(_nan_advice(cfg, settings, saver.path)))
    control = StepControl(ctx, cfg.save.save_every_steps, cfg.save.save_every_minutes)
    with data.releasing_workers(train_loader, val_loader), control:
        hooks = _hooks(cfg, settings, control, saver, frozen, parts.guard)
        best_acc1 = engine.fit(
            parts, train_loader, val_loader, start_epoch=start_epoch, start_step=start_step,
            epochs=cfg.optim.epochs, best_acc1=best_acc1, hooks=hooks, best_by_ema=cfg.optim.best_by == "ema",
        )  # fmt: skip
    reporter.run_end(best_acc1, cfg.output_dir)
    if ctx.is_main:
        reporter.message(records.draw_curves(cfg.output_dir))


class Saver:
    """Writes the run's full state; called on every rank, since every rank's generators go in."""

    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule | None,
        scaler: torch.amp.GradScaler,
        class_names: list[str],
        best_acc1: float,
        ema: ModelEma | None = None,
    ) -> None:
        """`model` is the plain module: DDP wrappers may be replaced during the run, it is not."""
        self.cfg, self.ctx, self.model, self.optimizer, self.schedule = cfg, ctx, model, optimizer, schedule
        self.scaler, self.class_names, self.best_acc1, self.ema = scaler, class_names, best_acc1, ema
        self.path = os.path.join(cfg.output_dir, CHECKPOINT_NAME)

    def save(self, epoch: int, step: int, best_acc1: float | None = None, is_best: bool = False) -> str | None:
        """(epoch, step) is where a resumed run continues. Returns the path on the main rank."""
        if best_acc1 is not None:
            self.best_acc1 = best_acc1
        rng_states = context.gather_to_main(randomness.capture(), self.ctx)
        path = None
        if self.ctx.is_main:
            checkpoint = make_checkpoint(
                model_state=self.model.state_dict(),
                arch=self.cfg.model.arch,
                epoch=epoch,
                step=step,
                best_acc1=self.best_acc1,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.schedule.state_dict(epoch) if self.schedule else {},
                config=self.cfg.to_dict(),
                class_names=self.class_names,
                rng_states=rng_states,  # type: ignore[arg-type]
                scaler=self.scaler.state_dict(),
                ema_state=self.ema.state_dict() if self.ema is not None else None,
            )
            path = save_checkpoint(checkpoint, self.cfg.output_dir, is_best, self.cfg.save.keep_epochs)
        context.barrier(self.ctx)  # no rank may leave before the file is whole
        return path


def wrap(plain: nn.Module, ctx: DistContext, cfg: RunConfig, settings: compute.Compute) -> nn.Module:
    """The module the training steps call: DDP (or DataParallel) around the plain one, compiled in
    place when asked, so state dicts keep their plain keys."""
    model = compute.wrap_model(plain, ctx, cfg.dist.data_parallel, settings.amp_dtype)
    if settings.compile:
        model.compile()
    return model


def _nan_advice(cfg: RunConfig, settings: compute.Compute, checkpoint: str) -> str:
    tries = ["--amp none" if settings.amp_dtype else None, f"a lower --lr (this run: {cfg.optim.lr:g})"]
    if cfg.optim.grad_clip is None:
        tries.append("--grad-clip 1.0")
    listed = ", ".join(t for t in tries if t)
    return f"The last checkpoint, if any, is {checkpoint}: resume it with {listed}."


def _hooks(
    cfg: RunConfig,
    settings: compute.Compute,
    control: StepControl,
    saver: Saver,
    frozen: bool,
    guard: engine.FiniteGuard,
) -> engine.Hooks:
    """Unfreezing at its epoch; mid-epoch saves and stops, agreed by all ranks at the same step."""
    state = {"frozen": frozen}

    def before_epoch(epoch: int, parts: engine.TrainParts) -> engine.TrainParts:
        wanted = finetune.backbone_frozen_at(epoch, cfg.optim)
        if wanted == state["frozen"]:
            return parts
        state["frozen"] = wanted
        plain = models.unwrap(parts.model)
        norms = finetune.freeze_backbone(plain, cfg.model.arch, wanted)
        parts.reporter.message(f"epoch {epoch}: {'freezing' if wanted else 'unfreezing'} the backbone")
        # DDP fixes the set of parameters it synchronises when built: wrap again for the new set.
        return dataclasses.replace(parts, model=wrap(plain, parts.ctx, cfg, settings), frozen_norms=norms)

    def stop(epoch: int, step: int) -> Preempted:
        where = f"epoch {epoch}, step {step}" if step else f"the end of epoch {epoch - 1}"
        return Preempted(
            f"stopped by {control.signal_name} at {where}; checkpoint saved to {saver.path}; "
            f"continue with `imagenet-cli resume {saver.path}`"
        )

    def after_step(epoch: int, step: int) -> None:
        decision = control.after_step(step)
        if decision.save or decision.stop:
            guard.check(saver.ctx)  # never save weights a NaN has touched
            saver.save(epoch, step)
        if decision.stop:
            raise stop(epoch, step)

    def save(epoch: int, best_acc1: float, is_best: bool) -> str | None:
        return saver.save(epoch + 1, 0, best_acc1, is_best)

    def after_epoch(epoch: int) -> None:
        if control.at_epoch_end():
            raise stop(epoch + 1, 0)

    return engine.Hooks(
        before_epoch=before_epoch, after_step=after_step, save=save, after_epoch=after_epoch,
        saves_to=saver.path if saver.ctx.is_main else None,
    )  # fmt: skip


def create_model(cfg: RunConfig, num_classes: int, resumed: LoadedCheckpoint | None, reporter: Reporter) -> nn.Module:
    """A model for data of `num_classes` classes and its starting weights: the resumed run's, a weights
    file, or torchvision's pretrained ones. A resumed model keeps its head, even a wider one (the
    reference's 1000 outputs); a finetune always gets a fresh head for its new classes."""
    arch = cfg.model.arch
    if resumed is not None:
        outputs = models.output_width(arch, resumed.state_dict, num_classes, resumed.path)
        model = models.build_model(arch, outputs)
        models.load_state(model, resumed.state_dict, arch, skip_head=False)
        if outputs > num_classes:
            reporter.message(models.wider_head_note(outputs, num_classes, cfg.data.path))
        return model
    model = models.build_model(arch, requested_outputs(cfg, num_classes))
    if cfg.model.weights:
        state, source = read_checkpoint(cfg.model.weights).state_dict, cfg.model.weights
    elif cfg.model.pretrained:
        state, source = models.pretrained_state_dict(arch), f"torchvision's pretrained {arch}"
    else:
        return model
    outputs = models.head_num_classes(arch, model.state_dict())
    new_head = cfg.command == "finetune" or models.head_num_classes(arch, state) != outputs
    models.load_state(model, state, arch, skip_head=new_head)
    reporter.message(
        f"loaded weights from {source}" + (f" with a new head for {num_classes} classes" if new_head else "")
    )
    return model


def requested_outputs(cfg: RunConfig, num_classes: int) -> int:
    """The data's class count, or more with `--num-classes` on real data (the reference's 1000 outputs,
    whatever the data): never fewer, or some labels could not be predicted."""
    wanted = cfg.data.num_classes if not cfg.data.fake and cfg.data.num_classes else num_classes
    if wanted < num_classes:
        raise UserError(f"--num-classes {wanted} is fewer than the {num_classes} classes of the data")
    return wanted


def _compare_stored_lr(resumed: LoadedCheckpoint, ours: float, reporter: Reporter) -> None:
    """torchvision's files keep their scheduler's next LR: say so when this run's schedule differs (a
    changed --lr, or a schedule this tool sets every step where torchvision steps once an epoch)."""
    stored = (resumed.scheduler or {}).get("_last_lr") if resumed.recipe is not None else None
    if not isinstance(stored, (list, tuple)) or not stored or not isinstance(stored[0], (int, float)):
        return
    if abs(float(stored[0]) - ours) > 1e-9 * max(1.0, abs(ours)):
        reporter.message(
            f"{os.path.basename(resumed.path)}'s scheduler would continue at LR {float(stored[0]):g}; this run's "
            f"schedule gives {ours:g} (from --lr and the schedule options)"
        )


@contextmanager
def _naming(path: str, what: str) -> Iterator[None]:
    """A part of a checkpoint that cannot be restored is the file's problem: say which file and part."""
    try:
        yield
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        raise UserError(f"{path}: its {what} cannot be restored ({one_line(exc)}); damaged?") from exc


def restore_training(
    cfg: RunConfig,
    ctx: DistContext,
    resumed: LoadedCheckpoint,
    optimizer: torch.optim.Optimizer,
    ema: ModelEma | None,
    reporter: Reporter,
) -> tuple[int, int, float]:
    """Where to continue (epoch, step) and the best top-1 so far; optimizer, weight average and this
    rank's generators restored as they were when the checkpoint was written."""
    epoch = resumed.epoch if resumed.epoch is not None else cfg.optim.start_epoch
    with _naming(resumed.path, "optimizer state"):
        optim.restore(optimizer, torchvision_args.resumed_optimizer_state(resumed, optimizer, cfg))
    _compare_stored_lr(resumed, Schedule.from_config(cfg.optim).lr_at(float(epoch)), reporter)
    if ema is not None and resumed.state_dict_ema is not None:
        models.load_state(ema.module, resumed.state_dict_ema, cfg.model.arch, skip_head=False)
    elif ema is not None:
        reporter.message("the checkpoint has no weight average: --model-ema starts from its weights")
    stored_batch = ((resumed.config or {}).get("optim") or {}).get("batch_size")
    if stored_batch not in (None, cfg.optim.batch_size):
        reporter.message(
            f"the checkpoint's run used batch {stored_batch}, this run {cfg.optim.batch_size}: training continues, "
            "but not bit-identically to the original run"
        )
    states = resumed.rng_states or []
    if len(states) == ctx.world_size:
        with _naming(resumed.path, "random generator states"):
            randomness.restore(states[ctx.rank])
    elif states:
        reporter.message(
            f"the checkpoint holds random states of {len(states)} ranks, this run has {ctx.world_size}: "
            "training continues, but not bit-identically to the original run"
        )
    where = f"epoch {epoch}, step {resumed.step}" if resumed.step else f"epoch {epoch}"
    reporter.message(f"resuming {cfg.resume} at {where} (best top-1 so far {resumed.best_acc1 or 0.0:.2f}%)")
    for note in resumed.notes:
        reporter.message(note)
    return epoch, resumed.step, resumed.best_acc1 or 0.0
