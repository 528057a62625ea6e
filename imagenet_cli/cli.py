"""The command line: thin Typer commands that turn flags into a `RunConfig` and hand it to the launcher.

Every option defaults to None here and means "not given"; the real defaults live in `config.py`. That is
how `resume` knows which values a user typed and may override. Torch is imported only inside commands,
so `imagenet-cli --help` answers at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from . import options as opt
from .config import PLACEMENT, RunConfig, build_config, changed_values, default_for, from_stored
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, Preempted, UserError, one_line
from .text import clip, printable

app = typer.Typer(
    name="imagenet-cli",
    help="Train, evaluate, resume and finetune torchvision image classifiers, on one CPU or many GPUs and nodes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Command parameters whose option has another name in the configuration.
_RENAMED = {
    "data": "path",
    "data_root": "path",
    "fake_data": "fake",
    "evaluate": "evaluate_only",
    "json_output": "json",
    "plot": "confusion_plot",
}
# Flags with an explicit off switch (--no-channels-last): False is a choice, not an absence.
_TRI_STATE = frozenset({"channels_last", "tensorboard"})


def _given(params: dict[str, Any], command: str | None = None, **renamed: str) -> dict[str, Any]:
    """The options a user typed, by their configuration names: None (absent) and False (an unset flag)
    are not given. Commands pass their `locals()`, so a new option is declared once, in the signature.
    A `--config` file's options come first, as if typed before the flags."""
    names = {**_RENAMED, **renamed}
    if params.get("data") and params.get("data_root") and params["data"] != params["data_root"]:
        raise UserError("DATA was given twice (as an argument and as --data); give it once")
    recipe = params.get("config")
    given = {
        names.get(k, k): v
        for k, v in params.items()
        if k != "config" and v is not None and (v is not False or k in _TRI_STATE)
    }
    if recipe is not None:
        from .configfile import read_options

        given = {**read_options(recipe, command or "train", _flag_aliases(command or "train")), **given}
    paths = ("path", "output_dir", "resume", "weights", "checkpoint", "train_manifest", "val_manifest", "log_dir",
             "confusion_plot")  # fmt: skip
    for key in paths:
        if key in given and not (key == "resume" and given[key] == "auto"):
            given[key] = os.path.abspath(given[key])
    return given


def _flag_aliases(command: str) -> dict[str, str]:
    """Every long flag of `command` (`train-crop-size`, `wd`, `dummy`) by the configuration option it sets,
    so a recipe file may use any name the command line accepts."""
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {
        flag.removeprefix("--").replace("-", "_"): _RENAMED.get(p.name, p.name)
        for p in params
        if p.name
        for flag in p.opts
        if flag.startswith("--")
    }


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """One line and a non-zero exit for anything that goes wrong; a traceback only with --debug."""
    try:
        yield
    except typer.Exit:
        raise  # a command's own exit code
    except UserError as exc:
        if debug and not isinstance(exc, Preempted):
            raise
        typer.echo(f"{'' if isinstance(exc, Preempted) else 'error: '}{one_line(exc)}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {one_line(exc)} (run again with --debug for the traceback)", err=True)
        raise typer.Exit(EXIT_FAILURE) from None


def _launch(cfg: RunConfig) -> None:
    from .launch import launch

    launch(cfg)


def _stored_base(
    path: str, given: dict[str, Any], command: str | None, quiet: bool = True, keys: frozenset[str] | None = None
) -> tuple[RunConfig | None, dict[str, Any]]:
    """A checkpoint's stored configuration (its command replaced by `command` when given) without where
    that run happened, and `given` adjusted to it: a DATA path given for a fake-data run means real data
    now. A torchvision reference checkpoint has no configuration but its `args`: `given` gets the recipe
    they hold where this tool has the same option (a typed flag still wins; only `keys`, when given)."""
    from .checkpoint import read_checkpoint

    loaded = read_checkpoint(path)
    if loaded.config is None:
        return None, _with_file_recipe(loaded, given, quiet, keys)
    stored = from_stored({**loaded.config, **({"command": command} if command else {})}, path)
    _say_placement_ignored(path, stored, quiet)
    base = stored.as_recipe()
    if "path" in given and "fake" not in given and base.data.fake:
        given = {**given, "fake": False}
    return base, given


def _with_file_recipe(loaded: Any, given: dict[str, Any], quiet: bool, keys: frozenset[str] | None) -> dict[str, Any]:
    if loaded.recipe is None:
        return given
    from .torchvision_args import translate

    translation = translate(loaded.recipe)
    try:  # checked as a command line would be, but named as the file's: the user typed none of it
        build_config("train", {**translation.options, "path": "."})
    except UserError as exc:
        raise UserError(f"{loaded.path}: the recipe in its args is not valid here: {exc}") from exc
    if not quiet:
        for line in translation.lines(os.path.basename(loaded.path)):
            typer.echo(printable(line), err=True)
    options = {k: v for k, v in translation.options.items() if keys is None or k in keys}
    return {**options, **given}


# What an evaluation takes of the run that wrote a checkpoint: how it validated, not how it trained.
EVALUATION_KEYS = frozenset({"arch", "val_resize_size", "val_crop_size", "interpolation"})


def _say_placement_ignored(path: str, stored: RunConfig, quiet: bool) -> None:
    """A run stored as spread over nodes continues here only as this command line places it."""
    ignored = {k: v for k, v in stored.placement().items() if k not in ("output_dir", "log_dir")}
    if ignored and not quiet:
        listed = ", ".join(f"--{k.replace('_', '-')} {clip(v)}" for k, v in ignored.items())
        typer.echo(
            f"{os.path.basename(path)} was written by a run with {listed}; where a run happens is never taken "
            "from a file: give those flags again to continue it that way",
            err=True,
        )


def _recorded_arch(path: str, required: bool = False) -> dict[str, str]:
    """{"arch": the architecture a checkpoint records}, or {} (an error when `required`)."""
    from .checkpoint import read_checkpoint

    arch = read_checkpoint(path).arch
    if arch is None and required:
        raise UserError(f"{path} does not record its architecture; pass --arch")
    return {"arch": arch} if arch else {}


def _input_size_of_weights(given: dict[str, Any]) -> dict[str, int]:
    """Finetune at the resolution the starting weights were trained for: a checkpoint's own sizes when it
    records them, else those of torchvision's weights for the arch (Inception v3: 299)."""
    from .models import expected_input

    if "weights" in given:
        stored, _ = _stored_base(given["weights"], {}, None)
        if stored is not None:
            return {k: getattr(stored.data, k) for k in ("image_size", "val_crop_size", "val_resize_size")}
    return expected_input(given.get("arch", default_for("finetune", "arch")))


def _resume_auto(given: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """`--resume auto`: what a restarted job (torchrun --max-restarts, SLURM --requeue) runs every time."""
    from .checkpoint import find_resumable
    from .config import DistConfig
    from .distributed import plan

    first_process = plan(DistConfig(), dict(os.environ)).external_rank in (None, 0)
    latest, notes = find_resumable(given["output_dir"], move_damaged=first_process)
    for note in notes:
        typer.echo(f"--resume auto: {printable(note)}", err=True)
    rest = {k: v for k, v in given.items() if k != "resume"}
    if latest is None:
        if not quiet:
            typer.echo(f"--resume auto: no checkpoint in {given['output_dir']}; starting fresh", err=True)
        return rest
    if not quiet:
        typer.echo(f"--resume auto: continuing from {latest}", err=True)
    return {**rest, "resume": latest}


def _report_overrides(base: RunConfig, cfg: RunConfig, quiet: bool) -> None:
    ignore = {"resume", "checkpoint", "command", "quiet", "verbose", "debug", "json", "batch_size_given", *PLACEMENT}
    changes = {k: v for k, v in changed_values(base, cfg).items() if k not in ignore}
    if changes and not quiet:
        listed = ", ".join(f"{k} {clip(repr(old))} -> {clip(repr(new))}" for k, (old, new) in sorted(changes.items()))
        typer.echo(f"overriding the checkpoint's configuration: {listed}", err=True)


@app.command(no_args_is_help=False)
def train(
    data: opt.DataDir = None,
    arch: opt.Arch = None,
    workers: opt.Workers = None,
    skip_bad_images: opt.SkipBadImages = False,
    max_bad_images: opt.MaxBadImages = None,
    epochs: opt.epochs("train") = None,
    start_epoch: opt.StartEpoch = None,
    batch_size: opt.batch("train") = None,
    lr: opt.lr("train") = None,
    momentum: opt.Momentum = None,
    weight_decay: opt.WeightDecay = None,
    lr_step_size: opt.lr_step("train") = None,
    lr_gamma: opt.LrGamma = None,
    print_freq: opt.PrintFreq = None,
    resume: opt.ResumeFrom = None,
    evaluate: opt.EvaluateOnly = False,
    pretrained: opt.Pretrained = False,
    world_size: opt.WorldSize = None,
    rank: opt.Rank = None,
    dist_url: opt.DistUrl = None,
    dist_backend: opt.DistBackend = None,
    dist_timeout: opt.DistTimeout = None,
    seed: opt.Seed = None,
    gpu: opt.Gpu = None,
    no_accel: opt.NoAccel = False,
    multiprocessing_distributed: opt.MultiProc = False,
    nproc_per_node: opt.NprocPerNode = None,
    data_parallel: opt.DataParallel = False,
    fake_data: opt.FakeData = False,
    image_size: opt.ImageSize = None,
    val_resize_size: opt.ValResize = None,
    val_crop_size: opt.ValCrop = None,
    num_classes: opt.NumClasses = None,
    fake_train_images: opt.FakeTrain = None,
    fake_val_images: opt.FakeVal = None,
    output_dir: opt.OutputDir = None,
    save_every_steps: opt.SaveEverySteps = None,
    save_every_minutes: opt.SaveEveryMinutes = None,
    keep_epochs: opt.KeepEpochs = None,
    grad_clip: opt.GradClip = None,
    opt: opt.Opt = None,
    lr_scheduler: opt.LrScheduler = None,
    lr_milestones: opt.LrMilestones = None,
    lr_min: opt.LrMin = None,
    lr_warmup_epochs: opt.LrWarmupEpochs = None,
    lr_warmup_method: opt.LrWarmupMethod = None,
    lr_warmup_decay: opt.LrWarmupDecay = None,
    label_smoothing: opt.LabelSmoothing = None,
    mixup_alpha: opt.MixupAlpha = None,
    cutmix_alpha: opt.CutmixAlpha = None,
    model_ema: opt.ModelEma = False,
    model_ema_decay: opt.ModelEmaDecay = None,
    model_ema_steps: opt.ModelEmaSteps = None,
    model_ema_warmup_epochs: opt.ModelEmaWarmupEpochs = None,
    best_by: opt.BestBy = None,
    grad_accum_steps: opt.GradAccumSteps = None,
    sync_bn: opt.SyncBn = False,
    norm_weight_decay: opt.NormWeightDecay = None,
    bias_weight_decay: opt.BiasWeightDecay = None,
    freeze_backbone: opt.FreezeBackbone = False,
    backbone_lr_mult: opt.BackboneLrMult = None,
    unfreeze_at_epoch: opt.UnfreezeAtEpoch = None,
    data_format: opt.DataFormat = None,
    dataset: opt.Dataset = None,
    data_root: opt.DataRoot = None,
    train_manifest: opt.TrainManifest = None,
    val_manifest: opt.ValManifest = None,
    download: opt.Download = False,
    shuffle_buffer: opt.ShuffleBuffer = None,
    prefetch_factor: opt.PrefetchFactor = None,
    decode_on_device: opt.DecodeOnDevice = False,
    auto_augment: opt.AutoAugment = None,
    ra_magnitude: opt.RaMagnitude = None,
    augmix_severity: opt.AugmixSeverity = None,
    random_erase: opt.RandomErase = None,
    interpolation: opt.Interpolation = None,
    amp: opt.Amp = None,
    channels_last: opt.ChannelsLast = None,
    compile: opt.Compile = False,
    config: opt.ConfigFile = None,
    tensorboard: opt.TensorBoard = None,
    log_dir: opt.LogDir = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    debug: opt.Debug = False,
) -> None:
    """Train a model from scratch (the reference script's flags keep their meaning).

    [dim]imagenet-cli train --arch resnet18 --multiprocessing-distributed /data/imagenet[/dim]
    """
    with _errors(debug):
        given = _given(locals())
        given.setdefault("output_dir", os.path.abspath("."))
        if resume == "auto":
            given = _resume_auto(given, quiet)
        base = None
        if "resume" in given and not given.get("evaluate_only"):
            base, given = _stored_base(given["resume"], given, "train", quiet)
        if "resume" in given and base is None and "arch" not in given:
            given = {**given, **_recorded_arch(given["resume"])}
        cfg = build_config("train", given, base)
        if base is not None:
            _report_overrides(base, cfg, quiet)
        _launch(cfg)


@app.command()
def evaluate(
    checkpoint: opt.CheckpointFile,
    data: opt.DataDir = None,
    arch: opt.RecordedArch = None,
    batch_size: opt.batch("evaluate") = None,
    workers: opt.Workers = None,
    skip_bad_images: opt.SkipBadImages = False,
    max_bad_images: opt.MaxBadImages = None,
    image_size: opt.ImageSize = None,
    val_resize_size: opt.ValResize = None,
    val_crop_size: opt.ValCrop = None,
    fake_data: opt.FakeData = False,
    num_classes: opt.NumClasses = None,
    fake_val_images: opt.FakeVal = None,
    print_freq: opt.PrintFreq = None,
    world_size: opt.WorldSize = None,
    rank: opt.Rank = None,
    dist_url: opt.DistUrl = None,
    dist_backend: opt.DistBackend = None,
    dist_timeout: opt.DistTimeout = None,
    gpu: opt.Gpu = None,
    no_accel: opt.NoAccel = False,
    multiprocessing_distributed: opt.MultiProc = False,
    nproc_per_node: opt.NprocPerNode = None,
    data_format: opt.DataFormat = None,
    dataset: opt.Dataset = None,
    data_root: opt.DataRoot = None,
    val_manifest: opt.ValManifest = None,
    download: opt.Download = False,
    prefetch_factor: opt.PrefetchFactor = None,
    decode_on_device: opt.DecodeOnDevice = False,
    amp: opt.Amp = None,
    channels_last: opt.ChannelsLast = None,
    ema: opt.EvaluateEma = False,
    json_output: opt.Json = False,
    plot: opt.ConfusionPlot = None,
    log_dir: opt.LogDir = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    debug: opt.Debug = False,
) -> None:
    """Top-1, top-5 and loss of a checkpoint on the val/ split; each image counted once on any number of ranks.

    [dim]imagenet-cli evaluate checkpoint.pth.tar /data/imagenet --json[/dim]
    """
    params = dict(locals())
    with _errors(debug):
        from .checkpoint import read_checkpoint
        from .config import ModelConfig

        given = _given(params)
        stored, given = _stored_base(given["checkpoint"], given, "evaluate", keys=EVALUATION_KEYS)
        arch = arch or (stored.model.arch if stored else read_checkpoint(given["checkpoint"]).arch)
        if arch is None:
            raise UserError(f"{checkpoint} does not record its architecture; pass --arch")
        base = None
        if stored is not None:  # the training run's data settings; its optimiser and processes do not apply
            base = RunConfig(command="evaluate", data=stored.data.for_evaluation(), model=ModelConfig(arch=arch))
        cfg = build_config("evaluate", {**given, "arch": arch}, base)
        _launch(cfg)


@app.command()
def resume(
    checkpoint: opt.ToolCheckpoint,
    data: opt.MovedDataDir = None,
    arch: opt.RecordedArch = None,
    epochs: opt.epochs("train") = None,
    batch_size: opt.batch("train") = None,
    lr: opt.lr("train") = None,
    grad_clip: opt.GradClip = None,
    workers: opt.Workers = None,
    skip_bad_images: opt.SkipBadImages = False,
    max_bad_images: opt.MaxBadImages = None,
    print_freq: opt.PrintFreq = None,
    output_dir: opt.ResumeOutputDir = None,
    world_size: opt.WorldSize = None,
    rank: opt.Rank = None,
    dist_url: opt.DistUrl = None,
    dist_backend: opt.DistBackend = None,
    dist_timeout: opt.DistTimeout = None,
    gpu: opt.Gpu = None,
    no_accel: opt.NoAccel = False,
    multiprocessing_distributed: opt.MultiProc = False,
    nproc_per_node: opt.NprocPerNode = None,
    save_every_steps: opt.SaveEverySteps = None,
    save_every_minutes: opt.SaveEveryMinutes = None,
    keep_epochs: opt.KeepEpochs = None,
    prefetch_factor: opt.PrefetchFactor = None,
    amp: opt.Amp = None,
    channels_last: opt.ChannelsLast = None,
    compile: opt.Compile = False,
    tensorboard: opt.TensorBoard = None,
    log_dir: opt.LogDir = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    debug: opt.Debug = False,
) -> None:
    """Continue a run with the configuration stored in its checkpoint; flags given here override it.

    [dim]imagenet-cli resume runs/r18/checkpoint.pth.tar --epochs 100[/dim]
    """
    with _errors(debug):
        given = _given(locals(), checkpoint="resume")
        given.setdefault("output_dir", os.path.dirname(given["resume"]))
        base, given = _stored_base(given["resume"], given, None, quiet)
        if base is None:  # the reference script's, torchvision's: DATA and the arch come from here
            _require_for_foreign(checkpoint, given)
            _launch(build_config("train", given))
            return
        cfg = build_config(base.command, given, base)
        _report_overrides(base, cfg, quiet)
        _launch(cfg)


def _require_for_foreign(checkpoint: str, given: dict[str, Any]) -> None:
    """A file that stores no configuration of this tool needs DATA and the arch from the command line."""
    given.update({k: v for k, v in _recorded_arch(given["resume"]).items() if "arch" not in given})
    missing = [what for what, key in (("DATA", "path"), ("--arch ARCH", "arch")) if key not in given]
    if missing:
        raise UserError(
            f"{checkpoint} stores no configuration of this tool (a reference-script or weights file?): "
            f"continue it with `imagenet-cli resume {checkpoint} {' '.join(missing)}`"
        )


@app.command()
def finetune(
    data: opt.DataDir = None,
    weights: opt.Weights = None,
    pretrained: opt.Pretrained = False,
    arch: opt.WeightsArch = None,
    workers: opt.Workers = None,
    skip_bad_images: opt.SkipBadImages = False,
    max_bad_images: opt.MaxBadImages = None,
    epochs: opt.epochs("finetune") = None,
    batch_size: opt.batch("finetune") = None,
    lr: opt.lr("finetune") = None,
    momentum: opt.Momentum = None,
    weight_decay: opt.WeightDecay = None,
    lr_step_size: opt.lr_step("finetune") = None,
    lr_gamma: opt.LrGamma = None,
    print_freq: opt.PrintFreq = None,
    world_size: opt.WorldSize = None,
    rank: opt.Rank = None,
    dist_url: opt.DistUrl = None,
    dist_backend: opt.DistBackend = None,
    dist_timeout: opt.DistTimeout = None,
    seed: opt.Seed = None,
    gpu: opt.Gpu = None,
    no_accel: opt.NoAccel = False,
    multiprocessing_distributed: opt.MultiProc = False,
    nproc_per_node: opt.NprocPerNode = None,
    fake_data: opt.FakeData = False,
    image_size: opt.ImageSize = None,
    val_resize_size: opt.ValResize = None,
    val_crop_size: opt.ValCrop = None,
    num_classes: opt.NumClasses = None,
    fake_train_images: opt.FakeTrain = None,
    fake_val_images: opt.FakeVal = None,
    output_dir: opt.OutputDir = None,
    save_every_steps: opt.SaveEverySteps = None,
    save_every_minutes: opt.SaveEveryMinutes = None,
    keep_epochs: opt.KeepEpochs = None,
    grad_clip: opt.GradClip = None,
    opt: opt.Opt = None,
    lr_scheduler: opt.LrScheduler = None,
    lr_milestones: opt.LrMilestones = None,
    lr_min: opt.LrMin = None,
    lr_warmup_epochs: opt.LrWarmupEpochs = None,
    lr_warmup_method: opt.LrWarmupMethod = None,
    lr_warmup_decay: opt.LrWarmupDecay = None,
    label_smoothing: opt.LabelSmoothing = None,
    mixup_alpha: opt.MixupAlpha = None,
    cutmix_alpha: opt.CutmixAlpha = None,
    model_ema: opt.ModelEma = False,
    model_ema_decay: opt.ModelEmaDecay = None,
    model_ema_steps: opt.ModelEmaSteps = None,
    model_ema_warmup_epochs: opt.ModelEmaWarmupEpochs = None,
    best_by: opt.BestBy = None,
    grad_accum_steps: opt.GradAccumSteps = None,
    sync_bn: opt.SyncBn = False,
    norm_weight_decay: opt.NormWeightDecay = None,
    bias_weight_decay: opt.BiasWeightDecay = None,
    freeze_backbone: opt.FreezeBackbone = False,
    backbone_lr_mult: opt.BackboneLrMult = None,
    unfreeze_at_epoch: opt.UnfreezeAtEpoch = None,
    data_format: opt.DataFormat = None,
    dataset: opt.Dataset = None,
    data_root: opt.DataRoot = None,
    train_manifest: opt.TrainManifest = None,
    val_manifest: opt.ValManifest = None,
    download: opt.Download = False,
    shuffle_buffer: opt.ShuffleBuffer = None,
    prefetch_factor: opt.PrefetchFactor = None,
    decode_on_device: opt.DecodeOnDevice = False,
    auto_augment: opt.AutoAugment = None,
    ra_magnitude: opt.RaMagnitude = None,
    augmix_severity: opt.AugmixSeverity = None,
    random_erase: opt.RandomErase = None,
    interpolation: opt.Interpolation = None,
    amp: opt.Amp = None,
    channels_last: opt.ChannelsLast = None,
    compile: opt.Compile = False,
    config: opt.ConfigFile = None,
    tensorboard: opt.TensorBoard = None,
    log_dir: opt.LogDir = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    debug: opt.Debug = False,
) -> None:
    """Start from trained weights, put a new classifier head on for DATA's classes, and train.

    [dim]imagenet-cli finetune --weights model_best.pth.tar --arch resnet18 /data/ants_and_bees[/dim]
    """
    with _errors(debug):
        given = _given(locals(), "finetune")
        given.setdefault("output_dir", os.path.abspath("."))
        if "weights" in given and "arch" not in given:
            given.update(_recorded_arch(given["weights"], required=True))
        if not given.keys() & {"image_size", "val_crop_size", "val_resize_size"}:
            given.update(_input_size_of_weights(given))
        _launch(build_config("finetune", given))


@app.command()
def inspect(checkpoint: opt.AnyCheckpoint, json_output: opt.Json = False, debug: opt.Debug = False) -> None:
    """What a checkpoint holds: format, arch, epoch and step, best top-1, classes, size, configuration, versions.

    [dim]imagenet-cli inspect runs/r18/checkpoint.pth.tar[/dim]
    """
    with _errors(debug):
        from .checkpoint import describe, read_checkpoint
        from .reporting import print_inspection

        print_inspection(describe(read_checkpoint(os.path.abspath(checkpoint))), json_output)


@app.command()
def benchmark(
    data: opt.BenchData = None,
    arch: opt.BenchArch = "resnet50",
    batch_size: opt.BenchBatch = 64,
    image_size: opt.BenchImageSize = 224,
    amp: opt.Amp = None,
    channels_last: opt.ChannelsLast = None,
    compile: opt.Compile = False,
    steps: opt.BenchSteps = 10,
    warmup: opt.BenchWarmup = 3,
    images: opt.BenchImages = 256,
    workers: opt.Workers = None,
    only: opt.BenchOnly = None,
    no_accel: opt.NoAccel = False,
    json_output: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """Images/s of training, evaluation, the input pipeline and training from files, each beside the reference script's way.

    [dim]imagenet-cli benchmark --arch resnet50 -b 256[/dim]
    """
    with _errors(debug):
        parts = tuple(only or ("train", "eval", "pipeline", "e2e"))
        unknown = sorted(set(parts) - {"train", "eval", "pipeline", "e2e"})
        if unknown:
            raise UserError(f"--only takes train, eval, pipeline or e2e, not {', '.join(unknown)}")
        if min(batch_size, steps, images) < 1 or warmup < 0 or image_size < 8:
            raise UserError(
                "--batch-size, --steps and --images must be positive, --warmup 0 or more, --image-size 8 or more"
            )
        if data is not None and not os.path.isdir(os.path.join(data, "train")):
            raise UserError(f"{data} has no train/ folder of class folders to read")
        from .benchmark import BenchmarkConfig, run
        from .config import ComputeConfig
        from .models import check_arch
        from .reporting import print_benchmark

        check_arch(arch)
        compute_given = {k: v for k, v in {"amp": amp, "channels_last": channels_last}.items() if v is not None}
        cfg = BenchmarkConfig(
            arch=arch, batch_size=batch_size, image_size=image_size,
            compute=ComputeConfig(**compute_given, compile=compile), steps=steps, warmup=warmup,
            data=os.path.abspath(data) if data else None, images=images, workers=workers, parts=parts,
            no_accel=no_accel,
        )  # fmt: skip
        progress = (lambda text: typer.echo(text, err=True)) if json_output else typer.echo
        print_benchmark(run(cfg, progress), json_output)


@app.command("check-data")
def check_data(
    data: opt.CheckDataDir,
    data_format: opt.DataFormat = None,
    train_manifest: opt.TrainManifest = None,
    val_manifest: opt.ValManifest = None,
    workers: opt.Workers = None,
    json_output: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """Decode every image as training would: unreadable files, colour modes, sizes; exit 1 if any is unreadable.

    [dim]imagenet-cli check-data /data/imagenet -j 16[/dim]
    """
    params = dict(locals())
    with _errors(debug):
        from .config import DataConfig
        from .data import default_workers
        from .datacheck import check_all
        from .reporting import print_data_check

        given = _given(params)
        cfg = DataConfig(**{k: v for k, v in given.items() if k not in ("json", "debug")})
        report = check_all(cfg, cfg.workers if cfg.workers is not None else default_workers(1))
        print_data_check(report, json_output)
        if report["unreadable"]:
            raise typer.Exit(EXIT_FAILURE)


@app.command("make-shards")
def make_shards(
    data: opt.SourceDir,
    out: opt.ShardsOut,
    shard_size: opt.ShardSize = "1GB",
    data_format: opt.DataFormat = None,
    train_manifest: opt.TrainManifest = None,
    val_manifest: opt.ValManifest = None,
    debug: opt.Debug = False,
) -> None:
    """Pack a dataset (class folders or CSV manifests) into tar shards, for fast sequential reading on clusters.

    [dim]imagenet-cli make-shards /data/imagenet /data/imagenet-shards --shard-size 1GB[/dim]
    """
    params = dict(locals())
    with _errors(debug):
        from . import shards, sources
        from .config import DataConfig

        given = _given(params)
        size = shards.parse_size(shard_size)
        cfg = DataConfig(**{k: v for k, v in given.items() if k not in ("out", "shard_size", "debug")})
        if sources.data_format(cfg) not in ("imagefolder", "csv"):
            raise UserError("make-shards reads class folders (train/, val/) or CSV manifests (train.csv, val.csv)")
        sources.check(cfg, ("train", "val"))
        splits = sources.open_splits(cfg, with_train=True, class_names=None)
        assert splits.train is not None
        samples = {"train": list(splits.train.samples), "val": list(splits.val.samples)}  # type: ignore[attr-defined]
        index = shards.make_shards(samples, splits.class_names, os.path.abspath(out), size)
        for split, written in index["splits"].items():
            count = sum(shard["samples"] for shard in written)
            typer.echo(f"{split}: {count} samples in {len(written)} shard(s)")
        typer.echo(f"wrote {os.path.join(os.path.abspath(out), 'shards.json')}; train with `imagenet-cli train {out}`")


@app.command()
def plot(run_dirs: opt.PlotRunDirs, output: opt.PlotOutput = None, debug: opt.Debug = False) -> None:
    """Loss, top-1 and learning-rate curves of runs, from their metrics.jsonl, as one PNG (needs matplotlib).

    [dim]imagenet-cli plot runs/r18 runs/r50 -o compare.png[/dim]
    """
    with _errors(debug):
        from pathlib import Path

        from .plots import default_output, training_curves

        runs = [Path(run) for run in run_dirs]
        target = Path(output) if output else default_output(runs)
        for note in training_curves(runs, target):
            typer.echo(note, err=True)
        typer.echo(f"wrote {target}")


@app.command()
def predict(
    checkpoint: opt.CheckpointFile,
    inputs: opt.PredictInputs,
    top_k: opt.TopK = 5,
    batch_size: opt.PredictBatch = 32,
    arch: opt.RecordedArch = None,
    data: opt.ClassNamesFrom = None,
    workers: opt.Workers = None,
    no_accel: opt.NoAccel = False,
    json_output: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """The most likely classes of image files, named as the checkpoint names them; exit 1 if any file is unreadable.

    [dim]imagenet-cli predict runs/r18/model_best.pth.tar photos/ --top-k 3[/dim]
    """
    with _errors(debug):
        from dataclasses import asdict

        from .predict import Request
        from .predict import predict as run_predict
        from .reporting import print_predictions

        request = Request(checkpoint, inputs, arch, top_k, batch_size, workers, no_accel, data)
        outcome = run_predict(request)
        print_predictions(asdict(outcome), json_output)
        if outcome.errors:
            raise typer.Exit(EXIT_FAILURE)


@app.command()
def models(pattern: opt.ModelsFilter = None, json_output: opt.Json = False, debug: opt.Debug = False) -> None:
    """The architectures --arch accepts: parameters, input size and ImageNet top-1 of torchvision's weights.

    [dim]imagenet-cli models resnet[/dim]
    """
    with _errors(debug):
        from .listings import list_models
        from .reporting import print_models

        print_models(list_models(pattern), json_output)


@app.command()
def env(json_output: opt.Json = False, debug: opt.Debug = False) -> None:
    """Versions, CPUs, GPUs (freest first), distributed backends, launcher variables, and what a run would do here.

    [dim]imagenet-cli env --json[/dim]
    """
    with _errors(debug):
        from .listings import describe_environment
        from .reporting import print_environment

        print_environment(describe_environment(), json_output)


@app.command("export")
def export_model(
    checkpoint: opt.CheckpointFile,
    fmt: opt.ExportFormat,
    output: opt.ExportOutput = None,
    ema: opt.ExportEma = False,
    arch: opt.RecordedArch = None,
    image_size: opt.ExportImageSize = None,
    data: opt.ClassNamesFrom = None,
    debug: opt.Debug = False,
) -> None:
    """A checkpoint as a deployable file (TorchScript, ONNX or a plain state_dict) with its class names and preprocessing.

    [dim]imagenet-cli export runs/r18/model_best.pth.tar --format torchscript[/dim]
    """
    with _errors(debug):
        from .export import Request
        from .export import export as run_export

        outcome = run_export(Request(checkpoint, fmt, output, ema, arch, image_size, data))
        for note in outcome.notes:
            typer.echo(note, err=True)
        for path in outcome.written:
            typer.echo(f"wrote {path}")


def main() -> None:
    """Console entry point (`imagenet-cli`, `python -m imagenet_cli`, `torchrun -m imagenet_cli`). A usage
    error (an unknown flag, a value of the wrong type) is one line too, like every other error."""
    try:
        code = app(prog_name="imagenet-cli", standalone_mode=False)
    except Exception as exc:
        if not hasattr(exc, "format_message") or type(exc).__name__ == "NoArgsIsHelpError":
            if hasattr(exc, "show"):  # no command given: the overview, as before
                exc.show()
                sys.exit(getattr(exc, "exit_code", 2))
            raise
        command = getattr(getattr(exc, "ctx", None), "command_path", "imagenet-cli")
        typer.echo(f"error: {one_line(UserError(exc.format_message()))} (see `{command} --help`)", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
