"""The tool commands: inspect, benchmark, check-data, make-shards, plot, predict, models, env and export.

Their own options are declared here, once each; those they share with the run commands (--workers,
--json, --arch...) come from the configuration's declarations (`typed`)."""

from __future__ import annotations

import enum
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config.options import DATA, MODEL, OPTIM, RUN
from ..core.errors import EXIT_FAILURE
from ..report import X_AXES
from ..tools import BENCHMARK_PARTS, DEFAULT_BENCHMARK_PARTS, EXPORT_EXTENSIONS
from .declared import choice_of, given_options, typed
from .exits import one_line_errors

Json, Debug, Workers, NoAccel = typed("json"), typed("debug"), typed("workers"), typed("no_accel")
Checkpoint, RecordedArch = typed("checkpoint", "evaluate"), typed("arch", "evaluate")
TrustCode = typed("trust_checkpoint_code", "evaluate")
DataFormat, TrainManifest, ValManifest = typed("data_format"), typed("train_manifest"), typed("val_manifest")
EXPORT_FORMATS = tuple(EXPORT_EXTENSIONS)
# Typer takes a list of choices only as a list of an Enum (not of a Literal): its values are the parts.
BenchPart = enum.Enum("BenchPart", {part: part for part in BENCHMARK_PARTS})


def flag(kind: Any, *flags: str, help: str, panel: str = RUN, **shown: Any) -> Any:
    """An option declared by hand: a tool command's own, or `--config`. A `choice_of(...)` kind lists its
    values in --help and completes them; a value typed in another case arrives as declared."""
    return Annotated[kind, typer.Option(*flags, help=help, rich_help_panel=panel, case_sensitive=False, **shown)]


def argument(kind: Any, metavar: str, help: str) -> Any:
    return Annotated[kind, typer.Argument(metavar=metavar, help=help)]


ClassNamesFrom = flag(
    str | None, "--data", panel=MODEL,
    help="A dataset whose classes name the outputs (for files that store no class names, as the reference script's).",
)  # fmt: skip


def inspect(
    checkpoint: argument(str, "CHECKPOINT", "Any checkpoint or weights file the tool can read."),
    json_output: Json = False,
    debug: Debug = False,
) -> None:
    """What a checkpoint holds: format, arch, epoch and step, best top-1, classes, size, configuration, versions.

    [dim]imagenet-cli inspect runs/r18/checkpoint.pth.tar[/dim]
    """
    with one_line_errors(debug):
        from ..checkpoint import describe, read_checkpoint
        from .printing import print_inspection

        print_inspection(describe(read_checkpoint(os.path.abspath(checkpoint))), json_output)


def benchmark(
    data: argument(
        str | None,
        "[DATA]",
        "A dataset root whose train/ images the pipeline reads; without it, ImageNet-like JPEGs are generated.",
    ) = None,
    arch: flag(str, "-a", "--arch", help="Architecture to measure.", panel=MODEL) = "resnet50",
    batch_size: flag(int, "-b", "--batch-size", help="Batch size.", panel=OPTIM) = 64,
    image_size: flag(int, "--image-size", help="Image size in pixels.", panel=DATA) = 224,
    amp: typed("amp") = None,
    channels_last: typed("channels_last") = None,
    compile: typed("compile") = False,
    steps: flag(int, "--steps", help="Timed steps per measurement.") = 10,
    warmup: flag(int, "--warmup", help="Untimed steps first (autotuning, compilation).") = 3,
    images: flag(int, "--images", help="JPEGs the pipeline reads (and generates without DATA).", panel=DATA) = 256,
    workers: Workers = None,
    only: flag(
        list[BenchPart] | None,
        "--only",
        help="Measure only this part (repeatable); e2e-command (whole `train` commands, timed) only when named.",
        show_default="all but e2e-command",
    ) = None,
    rounds: flag(int, "--rounds", help="e2e-command: runs of each command, alternated (medians reported).") = 3,
    no_accel: NoAccel = False,
    json_output: Json = False,
    debug: Debug = False,
) -> None:
    """Images/s of training, evaluation, the input pipeline and training from files, each beside the reference script's way;
    with --only e2e-command, a short `train` command timed whole against the reference script's.

    [dim]imagenet-cli benchmark --arch resnet50 -b 256[/dim]
    """
    with one_line_errors(debug):
        from ..config import ComputeConfig
        from ..tools.benchmark import BenchmarkConfig, run
        from .printing import print_benchmark

        compute_given = {k: v for k, v in {"amp": amp, "channels_last": channels_last}.items() if v is not None}
        cfg = BenchmarkConfig(
            arch=arch, batch_size=batch_size, image_size=image_size,
            compute=ComputeConfig(**compute_given, compile=compile), steps=steps, warmup=warmup,
            data=os.path.abspath(data) if data else None, images=images, workers=workers,
            parts=tuple(part.value for part in only) if only else DEFAULT_BENCHMARK_PARTS, no_accel=no_accel,
            rounds=rounds,
        )  # fmt: skip
        progress = (lambda text: typer.echo(text, err=True)) if json_output else typer.echo
        print_benchmark(run(cfg, progress), json_output)


def check_data(
    data: argument(str, "DATA", "The dataset to check: class folders, CSV manifests or shards."),
    data_format: DataFormat = None,
    train_manifest: TrainManifest = None,
    val_manifest: ValManifest = None,
    workers: Workers = None,
    json_output: Json = False,
    debug: Debug = False,
) -> None:
    """Decode every image as training would: unreadable files, colour modes, sizes; exit 1 if any is unreadable.

    [dim]imagenet-cli check-data /data/imagenet -j 16[/dim]
    """
    with one_line_errors(debug):
        from ..data.checks import check_all
        from ..data.loaders import default_workers
        from .printing import print_data_check

        cfg = _data_config(data, data_format, train_manifest, val_manifest, workers)
        report = check_all(cfg, cfg.workers if cfg.workers is not None else default_workers(1))
        print_data_check(report, json_output)
        if report["unreadable"]:
            raise typer.Exit(EXIT_FAILURE)


def _data_config(data: str, data_format: str | None, train: str | None, val: str | None, workers: int | None = None):
    from ..config import DataConfig

    given = {"path": data, "data_format": data_format, "train_manifest": train, "val_manifest": val, "workers": workers}
    return DataConfig(**given_options(given, {name: name for name in given}))


def make_shards(
    data: argument(str, "DATA", "A dataset of train/ and val/ class folders, or train.csv and val.csv."),
    out: argument(str, "OUT", "Folder or URL (s3://bucket/prefix/, gs://...) for the shards and their index."),
    shard_size: flag(
        str, "--shard-size", help="About this many bytes per shard: 1GB, 500MB, 64KB.", panel=DATA
    ) = "1GB",
    max_side: flag(
        int,
        "--max-side",
        help="Shrink pictures whose longer side is over this many pixels to it (aspect kept), "
        "re-encoded as JPEG: e.g. 320, so that epochs decode less. Smaller pictures keep their bytes.",
        panel=DATA,
    ) = None,
    quality: flag(int, "--quality", help="JPEG quality of the pictures --max-side shrinks.", panel=DATA) = 90,
    data_format: DataFormat = None,
    train_manifest: TrainManifest = None,
    val_manifest: ValManifest = None,
    workers: Workers = None,
    debug: Debug = False,
) -> None:
    """Pack a dataset (class folders or CSV manifests) into tar shards, for fast sequential reading on clusters.

    [dim]imagenet-cli make-shards /data/imagenet s3://my-bucket/imagenet-320 --max-side 320 -j 16[/dim]
    """
    with one_line_errors(debug):
        from ..core.formats import shown, url_scheme
        from ..data.shard_writer import Reencoding, make_shards_from

        cfg = _data_config(data, data_format, train_manifest, val_manifest)
        reencoding = Reencoding(max_side, quality) if max_side is not None else None
        out = out if url_scheme(out) else os.path.abspath(out)
        if workers is None:  # packing bytes is disk-bound; re-encoding is hours of one core without helpers
            from ..data.loaders import default_workers

            workers = default_workers(1) if reencoding else 0
        index = make_shards_from(cfg, out, shard_size, reencoding, workers)
        for split, written in index["splits"].items():
            count = sum(shard["samples"] for shard in written)
            typer.echo(f"{split}: {count} samples in {len(written)} shard(s)")
        typer.echo(f"wrote {shown(out.rstrip('/'))}/shards.json; train with `imagenet-cli train {shown(out)}`")


def plot(
    run_dirs: argument(
        list[str],
        "RUN_DIR",
        "Runs to draw (their --output-dir, holding metrics.jsonl); several are overlaid, one colour each.",
    ),
    output: flag(
        str | None,
        "-o",
        "--output",
        help="PNG file to write.",
        show_default="RUN_DIR/curves.png for one run, ./runs.png for several",
    ) = None,
    x_axis: flag(
        choice_of(X_AXES),
        "--x-axis",
        help="Place each point at its epoch, or at the training and validation time done by then (start-up "
        "and saving not counted): recipes whose epochs cost differently compare by time.",
    ) = "epoch",
    debug: Debug = False,
) -> None:
    """Loss, top-1 and learning-rate curves of runs, from their metrics.jsonl, as one PNG (needs matplotlib).

    [dim]imagenet-cli plot runs/r18 runs/r50 -o compare.png --x-axis time[/dim]
    """
    with one_line_errors(debug):
        from ..report.plots import default_output, training_curves

        runs = [Path(run) for run in run_dirs]
        target = Path(output) if output else default_output(runs)
        for note in training_curves(runs, target, x_axis):
            typer.echo(note, err=True)
        typer.echo(f"wrote {target}")


def predict(
    checkpoint: Checkpoint,
    inputs: argument(
        list[str],
        "IMAGE_OR_DIR...",
        "Image files, and directories searched recursively for image files (by extension, sorted).",
    ),
    top_k: flag(int, "-k", "--top-k", help="Classes shown per image, most likely first.") = 5,
    batch_size: flag(int, "-b", "--batch-size", help="Images per forward pass.", panel=DATA) = 32,
    arch: RecordedArch = None,
    trust_checkpoint_code: TrustCode = False,
    data: ClassNamesFrom = None,
    workers: Workers = None,
    no_accel: NoAccel = False,
    amp: typed("amp") = None,
    json_output: Json = False,
    debug: Debug = False,
) -> None:
    """The most likely classes of image files, named as the checkpoint names them; exit 1 if any file is unreadable.

    [dim]imagenet-cli predict runs/r18/model_best.pth.tar photos/ --top-k 3[/dim]
    """
    with one_line_errors(debug):
        from ..tools.predict import Request
        from ..tools.predict import predict as run_predict
        from .printing import print_predictions

        request = Request(
            checkpoint, inputs, arch, top_k, batch_size, workers, no_accel, data, trust_checkpoint_code, amp or "auto"
        )
        outcome = run_predict(request)
        print_predictions(asdict(outcome), json_output)
        if outcome.errors:
            raise typer.Exit(EXIT_FAILURE)


def models(
    pattern: argument(
        str | None,
        "FILTER",
        "Show only architectures whose name contains this, in any case (resnet, vit_, efficientnet).",
    ) = None,
    source: flag(
        choice_of(("torchvision", "timm")),
        "--source",
        panel=MODEL,
        help="Whose models: torchvision's, or timm's (with the timm extra; used as --arch timm/NAME).",
    ) = "torchvision",
    json_output: Json = False,
    debug: Debug = False,
) -> None:
    """The architectures --arch accepts: parameters, input size and ImageNet top-1 of torchvision's weights.

    [dim]imagenet-cli models resnet; imagenet-cli models --source timm convnext[/dim]
    """
    with one_line_errors(debug):
        from ..tools.catalogue import list_models, list_timm_models
        from .printing import print_models

        rows = list_timm_models(pattern) if source == "timm" else list_models(pattern)
        print_models(rows, json_output, "timm models (pretrained_cfg)" if source == "timm" else None)


def env(json_output: Json = False, debug: Debug = False) -> None:
    """Versions, CPUs, GPUs (freest first), distributed backends, launcher variables, and what a run would do here.

    [dim]imagenet-cli env --json[/dim]
    """
    with one_line_errors(debug):
        from ..tools.environment import describe_environment
        from .printing import print_environment

        print_environment(describe_environment(), json_output)


def export(
    checkpoint: Checkpoint,
    fmt: flag(
        choice_of(EXPORT_FORMATS), "--format",
        help="pt2 (torch.export program; class names and preprocessing inside), onnx (dynamo exporter; needs "
        "imagenet-cli[onnx]), safetensors (weights and metadata, no code), torchscript (legacy: deprecated by "
        "torch), or state_dict (plain weights for torchvision's model); ONNX and state_dict get OUTPUT.json "
        "beside them. Every file is loaded back and checked against the model on a real batch.",
    ),
    output: flag(
        str | None, "-o", "--output", help="File to write.",
        show_default="CHECKPOINT's name with .pt2, .onnx, .safetensors, .ts or .pth, beside it; NAME-ema.EXT with --ema",
    ) = None,
    ema: flag(
        bool, "--ema", help="Export the weight average of a --model-ema run (or torchvision's model_ema) instead.",
        panel=MODEL,
    ) = False,
    arch: RecordedArch = None,
    trust_checkpoint_code: TrustCode = False,
    image_size: flag(
        int | None, "--image-size", panel=DATA, show_default="the size the checkpoint was validated at",
        help="Input crop size in pixels the exported model is captured at and its preprocessing crops to.",
    ) = None,
    data: ClassNamesFrom = None,
    debug: Debug = False,
) -> None:  # fmt: skip
    """A checkpoint as a deployable file (pt2, ONNX, safetensors, TorchScript, state_dict), checked against the model.

    [dim]imagenet-cli export runs/r18/model_best.pth.tar --format pt2[/dim]
    """
    with one_line_errors(debug):
        from ..tools.export import Request
        from ..tools.export import export as run_export

        outcome = run_export(Request(checkpoint, fmt, output, ema, arch, image_size, data, trust_checkpoint_code))
        for note in outcome.notes:
            typer.echo(note, err=True)
        for path in outcome.written:
            typer.echo(f"wrote {path}")
        if outcome.check is not None:
            typer.echo(outcome.check.line(outcome.written[0]))


TOOLS = {
    "inspect": inspect, "benchmark": benchmark, "check-data": check_data, "make-shards": make_shards, "plot": plot,
    "predict": predict, "models": models, "env": env, "export": export,
}  # fmt: skip
