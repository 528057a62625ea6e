"""`train`, `finetune` and `resume` inside one worker: build, restore, train, save, stop when asked.

A resumed run continues exactly where the saved one stopped (epoch and step, optimizer and schedule,
every rank's random generators, the data order), so with `--seed` it ends bit-identical to a run that was
never interrupted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..checkpoint import LoadedCheckpoint, read_checkpoint, remove_stale_saves
from ..config import RunConfig
from ..core import model_sources, models, randomness
from ..core.context import DistContext
from ..core.errors import Preempted, UserError
from ..core.faults import Fault
from ..data import loaders as data
from ..data.unreadable import BadImages
from ..report import records
from ..report.live import Reporter
from . import compute, engine, finetune, optim
from .ema import ModelEma
from .evaluation import evaluate_and_report
from .mixing import BatchMixer
from .schedule import Schedule
from .state import Average, Generators, LearningRate, LossScale, Optimizer, Progress, TrainState, Weights
from .stops import StepControl


def run_training(cfg: RunConfig, ctx: DistContext, reporter: Reporter) -> None:
    resumed = read_checkpoint(cfg.resume) if cfg.resume else None
    splits = data.build_splits(cfg.data, with_train=not cfg.evaluate_only, class_names=resumed and resumed.class_names)
    if resumed and resumed.class_names and resumed.class_names != splits.class_names:
        raise UserError(f"the data's classes differ from those {cfg.resume} was trained on")
    progress = Progress.start(cfg, resumed)
    plain = create_model(cfg, len(splits.class_names), resumed, reporter)  # the model's errors first
    batch = data.per_process_batch(cfg.optim.batch_size, ctx, cfg.dist.data_parallel)
    workers = data.resolve_workers(cfg.data.workers, ctx)
    train_loader = None
    if not cfg.evaluate_only and progress.epoch < cfg.optim.epochs:
        train_loader = _started_train_loader(cfg, ctx, splits, progress, batch, workers)
    with data.releasing_workers(train_loader):
        _run(cfg, ctx, reporter, resumed, splits, progress, plain, batch, workers, train_loader)


def _started_train_loader(
    cfg: RunConfig, ctx: DistContext, splits: data.DataSplits, progress: Progress, batch: int, workers: int
) -> data.DataLoader | data.DeviceBatches:
    """The training loader, its workers already decoding the first epoch's batches while the model is
    placed (CUDA starting, on a GPU), wrapped and restored: the first step then does not wait for them."""
    assert splits.train is not None
    loader = data.train_loader(
        splits.train, ctx, batch, workers, cfg.seed, cfg.data.prefetch_factor, skip_bad=cfg.data.skip_bad_images,
        reps=cfg.data.ra_reps,
    )  # fmt: skip
    if progress.step >= len(loader) > 0:
        raise UserError(
            f"{cfg.resume} continues at step {progress.step} of epoch {progress.epoch}, but an epoch here has "
            f"{len(loader)} steps: were the data, -b or the number of processes changed?"
        )
    size = cfg.data.crop_size_at(progress.epoch, cfg.optim.epochs) if cfg.data.progressive_resize else None
    data.start_early(loader, progress.epoch, progress.step * batch, size)
    return loader


def _run(
    cfg: RunConfig,
    ctx: DistContext,
    reporter: Reporter,
    resumed: LoadedCheckpoint | None,
    splits: data.DataSplits,
    progress: Progress,
    plain: nn.Module,
    batch: int,
    workers: int,
    train_loader: data.DataLoader | data.DeviceBatches | None,
) -> None:
    """The run once its data is open and its model built: evaluation alone, or training from `progress` on
    `train_loader` (None: nothing left to train)."""
    settings = compute.resolve(cfg.compute, ctx.device, plain)
    plain = compute.place(plain, settings)
    if cfg.dist.sync_bn and ctx.distributed:  # same parameters, new modules: before anything holds them
        plain = nn.SyncBatchNorm.convert_sync_batchnorm(plain)
    reporter.message(f"compute: {settings.describe()}")
    frozen = finetune.backbone_frozen_at(progress.epoch, cfg.optim)
    frozen_norms = finetune.freeze_backbone(plain, cfg.model.arch, frozen)
    model = wrap(plain, ctx, cfg, settings)
    val_loader = data.val_loader(splits.val, ctx, batch, workers, cfg.data.prefetch_factor, cfg.data.skip_bad_images)
    if cfg.evaluate_only:
        if resumed is not None:
            Weights(plain, cfg.model.arch).load_state_dict(resumed)
        with data.releasing_workers(val_loader):
            evaluate_and_report(
                cfg, model, val_loader, ctx, reporter, splits.class_names, cfg.resume or cfg.model.arch, settings
            )
        return
    parts, state = _train_state(cfg, ctx, reporter, plain, model, settings, progress, splits.class_names, frozen_norms)
    if cfg.seed is not None:  # each rank's own stream (dropout, ...), reproducible
        randomness.seed_everything(randomness.mix_seed(cfg.seed, 2, ctx.rank))
    _restore(state, resumed, reporter)
    if train_loader is None:
        reporter.message(
            f"nothing to train: the run has done {progress.epoch} of {cfg.optim.epochs} epochs (raise --epochs)"
        )
        return
    control = StepControl(ctx, cfg.save.save_every_steps, cfg.save.save_every_minutes)
    with data.releasing_workers(train_loader, val_loader), control:
        hooks = _hooks(cfg, settings, control, state, frozen, parts.guard, train_loader)
        best_acc1 = engine.fit(
            parts, train_loader, val_loader, start_epoch=progress.epoch, start_step=progress.step,
            epochs=cfg.optim.epochs, best_acc1=progress.best_acc1, hooks=hooks, best_by_ema=cfg.optim.best_by == "ema",
        )  # fmt: skip
    reporter.run_end(best_acc1, cfg.output_dir)
    if ctx.is_main:
        reporter.message(records.draw_curves(cfg.output_dir))


def _train_state(
    cfg: RunConfig,
    ctx: DistContext,
    reporter: Reporter,
    plain: nn.Module,
    model: nn.Module,
    settings: compute.Compute,
    progress: Progress,
    class_names: list[str],
    frozen_norms: tuple[nn.Module, ...],
) -> tuple[engine.TrainParts, TrainState]:
    """What the training steps use, and the state that saves and restores them."""
    arch = cfg.model.arch
    mixer = None
    if cfg.optim.mixup_alpha > 0 or cfg.optim.cutmix_alpha > 0:
        # Mixed labels span the whole head (a resumed reference file's 1000 outputs). Finding the head builds
        # the architecture on the meta device (35 ms for ResNet-18): only a run that mixes waits for it.
        outputs = models.head_num_classes(arch, plain.state_dict()) or len(class_names)
        mixer = BatchMixer(outputs, cfg.optim.mixup_alpha, cfg.optim.cutmix_alpha, cfg.seed)
    optimizer = optim.build_optimizer(plain, arch, cfg.optim, fused=ctx.device.type == "cuda")
    ema = ModelEma(plain, cfg.optim.model_ema_decay, cfg.optim.model_ema_steps) if cfg.optim.model_ema else None
    schedule, scaler = Schedule.from_config(cfg.optim), settings.grad_scaler()
    state = TrainState(
        cfg, ctx, progress, class_names,
        Weights(plain, arch), Optimizer(optimizer, cfg), LearningRate(schedule, progress),
        *([Average(ema, arch)] if ema is not None else []), LossScale(scaler, settings), Generators(ctx),
    )  # fmt: skip
    parts = engine.TrainParts(
        model,
        optim.build_criterion(cfg.optim.label_smoothing),
        optimizer,
        data.Normalizer(ctx.device, settings.memory_format, cfg.model.arch),
        ctx,
        reporter,
        cfg.print_freq,
        len(class_names),
        frozen_norms,
        settings.autocast,
        scaler,
        cfg.optim.grad_clip,
        guard=engine.FiniteGuard(_nan_advice(cfg, settings, state.path)),
        fault=Fault.from_env(),
        bad_images=BadImages(cfg.data.skip_bad_images, cfg.data.max_bad_images, ctx.rank),
        schedule=schedule,
        grad_accum_steps=cfg.optim.grad_accum_steps,
        mixer=mixer,
        ema=ema,
        ema_warmup_epochs=cfg.optim.model_ema_warmup_epochs,
    )
    return parts, state


def _restore(state: TrainState, resumed: LoadedCheckpoint | None, reporter: Reporter) -> None:
    for note in state.restore(resumed):
        reporter.message(note)
    if state.ctx.is_main:
        for stale in remove_stale_saves(state.cfg.output_dir):
            reporter.message(f"removed {stale}, left by a save that was cut off")
        records.write_config(state.cfg)


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
    state: TrainState,
    frozen: bool,
    guard: engine.FiniteGuard,
    train_loader: data.DataLoader | data.DeviceBatches,
) -> engine.Hooks:
    """The epoch's crop size and unfreezing at its epoch; mid-epoch saves and stops, agreed by all ranks at
    the same step."""
    current: dict[str, Any] = {"frozen": frozen, "size": None}

    def resize(epoch: int, reporter: Reporter) -> None:
        """--progressive-resize: the epoch's crop size, a pure function of (epoch, configuration), so a
        resumed run trains each epoch at the size the uninterrupted one did; said where the run starts and
        when it changes (metrics.jsonl records each epoch's, `train_size`, read from the batches)."""
        size = cfg.data.crop_size_at(epoch, cfg.optim.epochs)
        if size != current["size"]:
            data.set_train_size(train_loader, size)
            current["size"] = size
            reporter.message(
                f"epoch {epoch}: training crops of {size} px (--progressive-resize {cfg.data.progressive_resize})"
            )

    def before_epoch(epoch: int, parts: engine.TrainParts) -> engine.TrainParts:
        if cfg.data.progressive_resize is not None:
            resize(epoch, parts.reporter)
        wanted = finetune.backbone_frozen_at(epoch, cfg.optim)
        if wanted == current["frozen"]:
            return parts
        current["frozen"] = wanted
        plain = models.unwrap(parts.model)
        norms = finetune.freeze_backbone(plain, cfg.model.arch, wanted)
        parts.reporter.message(f"epoch {epoch}: {'freezing' if wanted else 'unfreezing'} the backbone")
        # DDP fixes the set of parameters it synchronises when built: wrap again for the new set.
        return dataclasses.replace(parts, model=wrap(plain, parts.ctx, cfg, settings), frozen_norms=norms)

    def stop(epoch: int, step: int) -> Preempted:
        where = f"epoch {epoch}, step {step}" if step else f"the end of epoch {epoch - 1}"
        return Preempted(
            f"stopped by {control.signal_name} at {where}; checkpoint saved to {state.path}; "
            f"continue with `imagenet-cli resume {state.path}`"
        )

    def after_step(epoch: int, step: int) -> None:
        decision = control.after_step(step)
        if decision.save or decision.stop:
            guard.check(state.ctx)  # never save weights a NaN has touched
            state.save(epoch, step)
        if decision.stop:
            raise stop(epoch, step)

    def after_epoch(epoch: int, best_acc1: float, is_best: bool) -> None:
        state.save(epoch + 1, 0, best_acc1, is_best)
        if control.at_epoch_end():
            raise stop(epoch + 1, 0)

    return engine.Hooks(before_epoch, after_step, after_epoch, saves_to=state.path if state.ctx.is_main else None)


def create_model(cfg: RunConfig, num_classes: int, resumed: LoadedCheckpoint | None, reporter: Reporter) -> nn.Module:
    """A model for data of `num_classes` classes, with the starting weights of a weights file or
    torchvision's pretrained ones. A resumed model keeps the file's head, even a wider one (the reference's
    1000 outputs), and gets its weights back with the rest of the run (train/state.py); a finetune always
    gets a fresh head for its new classes."""
    arch = cfg.model.arch
    if resumed is not None:
        outputs = models.output_width(arch, resumed.state_dict, num_classes, resumed.path)
        model = _built(cfg, outputs)  # its weights come back with the rest (train/state.py)
        if outputs > num_classes:
            reporter.message(models.wider_head_note(outputs, num_classes, cfg.data.path))
        return model
    model = _built(cfg, requested_outputs(cfg, num_classes))
    if cfg.model.weights:
        state, source = read_checkpoint(cfg.model.weights).state_dict, cfg.model.weights
    elif cfg.model.pretrained:
        whose = "timm" if arch.startswith(model_sources.TIMM) else "torchvision"
        state, source = models.pretrained_state_dict(arch), f"{whose}'s pretrained {arch}"
    else:
        return model
    outputs = models.head_num_classes(arch, model.state_dict()) or num_classes
    new_head = cfg.command == "finetune" or models.head_num_classes(arch, state) != outputs
    if new_head and hasattr(model, "reset_classifier"):  # timm's models swap their own heads
        model = models.build_model(arch, models.head_num_classes(arch, state) or outputs)
        models.load_state(model, state, arch, skip_head=False)
        model.reset_classifier(outputs)
    else:
        models.load_state(model, state, arch, skip_head=new_head)
    reporter.message(
        f"loaded weights from {source}" + (f" with a new head for {num_classes} classes" if new_head else "")
    )
    return model


def _built(cfg: RunConfig, outputs: int) -> nn.Module:
    """A model of `outputs` outputs; the user's own is checked by a dry forward pass at the run's size."""
    model = models.build_model(cfg.model.arch, outputs)
    if model_sources.Source.parse(cfg.model.arch).is_code:
        model_sources.check_outputs(model, outputs, cfg.data.image_size or 224, cfg.model.arch)
    return model


def requested_outputs(cfg: RunConfig, num_classes: int) -> int:
    """The data's class count, or more with `--num-classes` on real data (the reference's 1000 outputs,
    whatever the data): never fewer, or some labels could not be predicted."""
    wanted = cfg.data.num_classes if not cfg.data.fake and cfg.data.num_classes else num_classes
    if wanted < num_classes:
        raise UserError(f"--num-classes {wanted} is fewer than the {num_classes} classes of the data")
    return wanted
