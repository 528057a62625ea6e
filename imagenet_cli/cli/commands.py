"""The run commands: train, evaluate, resume and finetune turn the typed options (`given`, by configuration
name) into a `RunConfig` and hand it to the launcher. Their flags come from the declarations (declared.py)."""

from __future__ import annotations

import os
from typing import Any

import typer

from ..config import PLACEMENT, RunConfig, build_config, changed_values, default_for, from_stored, placement
from ..core.errors import UserError
from ..core.formats import shown, url_scheme
from ..core.text import clip, printable
from .declared import recipe_aliases

# What an evaluation takes of the run that wrote a checkpoint: how it validated, not how it trained.
EVALUATION_KEYS = frozenset({"arch", "val_resize_size", "val_crop_size", "interpolation"})


def launch(cfg: RunConfig) -> None:
    from ..run.launch import launch as start

    start(cfg)


def confirmed_launch(cfg: RunConfig, typed_arch: str | None, checkpoint: str | None) -> None:
    """Launch once the model code a checkpoint names is confirmed by the command line (user code runs only
    when the user names it: `model_sources.confirmed`)."""
    if checkpoint is not None:
        from ..checkpoint import read_checkpoint
        from ..core.model_sources import confirmed

        recorded = read_checkpoint(checkpoint).model_source
        trust = cfg.model.trust_checkpoint_code
        _, note = confirmed(cfg.model.arch, recorded, typed_arch, trust, os.path.basename(checkpoint))
        if note:
            typer.echo(f"{printable(note)}: running it, as --arch says", err=True)
    from ..core.model_sources import Source

    source = Source.parse(cfg.model.arch)
    if source.kind == "file" and not os.path.isfile(source.location):
        raise UserError(f"--arch: no such file {source.location} (pass --arch FILE.py:CALLABLE to point elsewhere)")
    launch(cfg)


def with_recipe(command: str, given: dict[str, Any], recipe: str | None) -> dict[str, Any]:
    """A `--config` file's options come first, as if typed before the flags."""
    if recipe is None:
        return given
    from .recipes import read_options

    return {**read_options(os.path.abspath(recipe), command, recipe_aliases(command)), **given}


def train(given: dict[str, Any], extras: dict[str, Any]) -> None:
    """Train a model from scratch (the reference script's flags keep their meaning).

    [dim]imagenet-cli train --arch resnet18 --multiprocessing-distributed /data/imagenet[/dim]
    """
    typed_arch = given.get("arch")
    given = with_recipe("train", given, extras.get("config"))
    given.setdefault("output_dir", os.path.abspath("."))
    quiet = bool(given.get("quiet"))
    if given.get("resume") == "auto":
        given = resume_auto(given, quiet)
    base = None
    if "resume" in given and not given.get("evaluate_only"):
        base, given = stored_base(given["resume"], given, "train", quiet)
    if "resume" in given and base is None and "arch" not in given:
        given = {**given, **recorded_arch(given["resume"])}
    launch_over(base, "train", given, quiet, typed_arch)


def evaluate(given: dict[str, Any], _extras: dict[str, Any]) -> None:
    """Top-1, top-5 and loss of a checkpoint on the val/ split; each image counted once on any number of ranks.

    [dim]imagenet-cli evaluate checkpoint.pth.tar /data/imagenet --json[/dim]
    """
    from ..checkpoint import read_checkpoint
    from ..config import ModelConfig

    typed_arch = given.get("arch")
    stored, given = stored_base(given["checkpoint"], given, "evaluate", keys=EVALUATION_KEYS)
    arch = given.get("arch") or (stored.model.arch if stored else read_checkpoint(given["checkpoint"]).arch)
    if arch is None:
        raise UserError(f"{given['checkpoint']} does not record its architecture; pass --arch")
    base = None
    if stored is not None:  # the training run's data settings; its optimiser and processes do not apply
        base = RunConfig(command="evaluate", data=stored.data.for_evaluation(), model=ModelConfig(arch=arch))
    else:
        given = {**sizes_named_by(given["checkpoint"], given), **given}
    confirmed_launch(build_config("evaluate", {**given, "arch": arch}, base), typed_arch, given["checkpoint"])


def sizes_named_by(path: str, given: dict[str, Any]) -> dict[str, Any]:
    """The evaluation view a weights file names (an exported safetensors' preprocessing), unless a size
    flag was typed: the model is then fed as it was validated."""
    from ..checkpoint import read_checkpoint

    named = read_checkpoint(path).preprocessing
    if named is None or given.keys() & {"image_size", "val_crop_size", "val_resize_size"}:
        return {}
    crop = named["crop"]
    return {"image_size": crop, "val_crop_size": crop, "val_resize_size": named["resize"],
            "interpolation": named["interpolation"]}  # fmt: skip


def resume(given: dict[str, Any], _extras: dict[str, Any]) -> None:
    """Continue a run with the configuration stored in its checkpoint; flags given here override it.

    [dim]imagenet-cli resume runs/r18/checkpoint.pth.tar --epochs 100[/dim]
    """
    given.setdefault("output_dir", os.path.dirname(given["resume"]))
    quiet, typed_arch = bool(given.get("quiet")), given.get("arch")
    base, given = stored_base(given["resume"], given, None, quiet)
    if base is None:  # the reference script's, torchvision's: DATA and the arch come from here
        require_for_foreign(given)
    launch_over(base, base.command if base else "train", given, quiet, typed_arch)


def finetune(given: dict[str, Any], extras: dict[str, Any]) -> None:
    """Start from trained weights, put a new classifier head on for DATA's classes, and train.

    [dim]imagenet-cli finetune --weights model_best.pth.tar --arch resnet18 /data/ants_and_bees[/dim]
    """
    typed_arch = given.get("arch")
    given = with_recipe("finetune", given, extras.get("config"))
    given.setdefault("output_dir", os.path.abspath("."))
    if "weights" in given and "arch" not in given:
        given.update(recorded_arch(given["weights"], required=True))
    if not given.keys() & {"image_size", "val_crop_size", "val_resize_size", "progressive_resize"}:
        given.update(input_size_of_weights(given))
    confirmed_launch(build_config("finetune", given), typed_arch, given.get("weights"))


def stored_base(
    path: str, given: dict[str, Any], command: str | None, quiet: bool = True, keys: frozenset[str] | None = None
) -> tuple[RunConfig | None, dict[str, Any]]:
    """A checkpoint's stored configuration (its command replaced by `command` when given) without where
    that run happened, and `given` adjusted to it: a DATA path given for a fake-data run means real data
    now. A torchvision reference checkpoint has no configuration but its `args`: `given` gets the recipe
    they hold where this tool has the same option (a typed flag still wins; only `keys`, when given)."""
    from ..checkpoint import read_checkpoint

    loaded = read_checkpoint(path)
    if loaded.config is None:
        return None, _with_file_recipe(loaded, given, quiet, keys)
    stored = from_stored({**loaded.config, **({"command": command} if command else {})}, path)
    _say_placement_ignored(path, stored, quiet)
    base = stored.as_recipe()
    if url_scheme(base.data.path) and "path" not in given:  # a file never chooses an address to connect to
        raise UserError(
            f"{os.path.basename(path)} was trained on data at {shown(base.data.path or '')}; give that URL again as "
            "DATA to read from it (an address is taken from the command line only, never from a file)"
        )
    if "path" in given and "fake" not in given and base.data.fake:
        given = {**given, "fake": False}
    return base, given


def _with_file_recipe(loaded: Any, given: dict[str, Any], quiet: bool, keys: frozenset[str] | None) -> dict[str, Any]:
    if loaded.recipe is None:
        return given
    from ..checkpoint.torchvision import translate

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


def _say_placement_ignored(path: str, stored: RunConfig, quiet: bool) -> None:
    """A run stored as spread over nodes continues here only as this command line places it."""
    ignored = {k: v for k, v in placement(stored).items() if k not in ("output_dir", "log_dir")}
    if ignored and not quiet:
        listed = ", ".join(f"--{k.replace('_', '-')} {clip(v)}" for k, v in ignored.items())
        typer.echo(
            f"{os.path.basename(path)} was written by a run with {listed}; where a run happens is never taken "
            "from a file: give those flags again to continue it that way",
            err=True,
        )


def recorded_arch(path: str, required: bool = False) -> dict[str, str]:
    """{"arch": the architecture a checkpoint records}, or {} (an error when `required`)."""
    from ..checkpoint import read_checkpoint

    arch = read_checkpoint(path).arch
    if arch is None and required:
        raise UserError(f"{path} does not record its architecture; pass --arch")
    return {"arch": arch} if arch else {}


def require_for_foreign(given: dict[str, Any]) -> None:
    """A file that stores no configuration of this tool needs DATA and the arch from the command line."""
    checkpoint = given["resume"]
    given.update({k: v for k, v in recorded_arch(checkpoint).items() if "arch" not in given})
    missing = [what for what, key in (("DATA", "path"), ("--arch ARCH", "arch")) if key not in given]
    if missing:
        raise UserError(
            f"{checkpoint} stores no configuration of this tool (a reference-script or weights file?): "
            f"continue it with `imagenet-cli resume {checkpoint} {' '.join(missing)}`"
        )


def input_size_of_weights(given: dict[str, Any]) -> dict[str, int]:
    """Finetune at the resolution the starting weights were trained for: a checkpoint's own sizes when it
    records them, else those of torchvision's weights for the arch (Inception v3: 299)."""
    from ..core.models import expected_input

    if "weights" in given:
        stored, _ = stored_base(given["weights"], {}, None)
        if stored is not None:
            return {k: getattr(stored.data, k) for k in ("image_size", "val_crop_size", "val_resize_size")}
        named = sizes_named_by(given["weights"], given)
        if named:
            return {k: v for k, v in named.items() if k != "interpolation"}
    return expected_input(given.get("arch", default_for("finetune", "arch")))


def resume_auto(given: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """`--resume auto`: what a restarted job (torchrun --max-restarts, SLURM --requeue) runs every time."""
    from ..checkpoint import find_resumable
    from ..config import DistConfig
    from ..run.distributed import plan

    first_process = plan(DistConfig(), dict(os.environ)).external_rank in (None, 0)
    latest, notes = find_resumable(given["output_dir"], repair=first_process)
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


def launch_over(
    base: RunConfig | None, command: str, given: dict[str, Any], quiet: bool, typed_arch: str | None
) -> None:
    """Launch `given` over a checkpoint's stored configuration (`base`), saying which stored values it changes."""
    cfg = build_config(command, given, base)
    ignore = {"resume", "checkpoint", "command", "quiet", "verbose", "debug", "json", "batch_size_given", *PLACEMENT}
    changes = {k: v for k, v in changed_values(base, cfg).items() if k not in ignore} if base is not None else {}
    if changes and not quiet:
        listed = ", ".join(f"{k} {clip(repr(old))} -> {clip(repr(new))}" for k, (old, new) in sorted(changes.items()))
        typer.echo(f"overriding the checkpoint's configuration: {listed}", err=True)
    confirmed_launch(cfg, typed_arch, given.get("resume"))
