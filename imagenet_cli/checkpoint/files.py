"""The run's checkpoint files: what one holds, how a save reaches the disk so that a crash at any instant
leaves a whole file to continue from, and which file `--resume auto` continues from."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..core.atomicfile import remove_stale_temporaries, sha256_of
from ..core.errors import UserError
from ..core.faults import SaveFault
from .integrity import CHECKSUM_SUFFIX, copy_with_checksum, write_sidecar, write_with_checksum
from .reading import FORMAT, read_checkpoint, strip_prefixes

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
EPOCH_COPY = "checkpoint_epoch_{:03d}.pth.tar"
EPOCH_PATTERN = r"checkpoint_epoch_(\d+)\.pth\.tar"
OWN_NAMES = (re.escape(CHECKPOINT_NAME), re.escape(BEST_NAME), EPOCH_PATTERN)  # as regexes
DAMAGED_SUFFIX = ".damaged"


def make_checkpoint(
    *,
    model_state: Mapping[str, torch.Tensor],
    arch: str,
    epoch: int,
    best_acc1: float,
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    config: Mapping[str, Any],
    class_names: list[str],
    step: int = 0,
    rng_states: list[dict[str, Any]] | None = None,
    scaler: Mapping[str, Any] | None = None,
    precision: str | None = None,
    ema_state: Mapping[str, torch.Tensor] | None = None,
    model_source: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """(`epoch`, `step`) is where training continues: after a finished epoch that is (next epoch, 0),
    as in the reference script; a mid-epoch save holds the epoch under way and the batches done in it.
    `rng_states` holds every rank's generator states, in rank order."""
    import torchvision

    from .. import __version__

    return {
        "format": FORMAT,
        "epoch": int(epoch),
        "step": int(step),
        "arch": arch,
        "state_dict": strip_prefixes(model_state),
        "best_acc1": float(best_acc1),
        "optimizer": dict(optimizer),
        "scheduler": dict(scheduler),
        "config": dict(config),
        "class_names": list(class_names),
        "rng_states": list(rng_states or []),
        "scaler": dict(scaler or {}),
        **({"precision": precision} if precision else {}),  # what --amp resolved to: fp32, bf16 or fp16
        **({"state_dict_ema": strip_prefixes(ema_state)} if ema_state is not None else {}),
        **({"model_source": dict(model_source)} if model_source else {}),  # your own code: where, and its sha256
        "versions": {
            "imagenet_cli": __version__,
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
        },  # str(): torch.__version__ is a class weights_only refuses
    }


def save_checkpoint(
    checkpoint: Mapping[str, Any], output_dir: str, is_best: bool, keep_epochs: int | None = None
) -> str:
    """Write `checkpoint.pth.tar` (and `model_best.pth.tar` when best, and a per-epoch copy when keeping
    the last `keep_epochs`) so that a crash at any instant leaves a whole file to continue from. Each file
    gets a `.sha256` beside it (`sha256sum -c` reads it), which loading verifies. The best copy is written
    first: a crash before `checkpoint.pth.tar` is replaced leaves `model_best` the newest whole file, which
    `--resume auto` takes. Copies are real copies, as the reference makes them: damage to one spares the rest."""
    os.makedirs(output_dir, exist_ok=True)
    epoch = int(checkpoint["epoch"])
    fault = SaveFault.from_env(epoch)
    names = [BEST_NAME] if is_best else []
    names.append(CHECKPOINT_NAME)
    if keep_epochs and checkpoint.get("step", 0) == 0:
        names.append(EPOCH_COPY.format(epoch - 1))
    first = os.path.join(output_dir, names[0])
    digest = write_with_checksum(first, lambda f: torch.save(dict(checkpoint), f), fault)
    for name in names[1:]:
        copy_with_checksum(first, os.path.join(output_dir, name), digest, fault)
    if keep_epochs:
        _prune_epoch_copies(output_dir, keep_epochs)
    return os.path.join(output_dir, CHECKPOINT_NAME)


def remove_stale_saves(output_dir: str) -> list[str]:
    """Temporary files of saves whose process was killed: never whole, as large as a checkpoint."""
    return remove_stale_temporaries(output_dir, [f"{name}(?:{re.escape(CHECKSUM_SUFFIX)})?" for name in OWN_NAMES])


def _epoch_copies(output_dir: str) -> list[tuple[int, str]]:
    """(epoch number, name) of the run's `--keep-epochs` copies, oldest first."""
    return sorted((int(m[1]), name) for name in os.listdir(output_dir) if (m := re.fullmatch(EPOCH_PATTERN, name)))


def _prune_epoch_copies(output_dir: str, keep: int) -> None:
    for _, name in _epoch_copies(output_dir)[:-keep]:
        for doomed in (name, name + CHECKSUM_SUFFIX):
            if os.path.exists(os.path.join(output_dir, doomed)):
                os.unlink(os.path.join(output_dir, doomed))


def find_resumable(output_dir: str, repair: bool = True) -> tuple[str | None, list[str]]:
    """The newest whole checkpoint of this tool in `output_dir` (by epoch and step): what `--resume auto`
    continues from (None: start afresh), and what the reader should know of the files passed over. With
    `repair` (the first process of a run only), a damaged file of this tool is moved aside to NAME.damaged,
    so no save overwrites it, a whole file's outlived checksum is written again, and a `checkpoint.pth.tar`
    that a cut-off save or the damage left behind is made again. With damaged files and no whole one left,
    the run stops instead of starting afresh over them."""
    if not os.path.isdir(output_dir):
        return None, []
    candidates, messages, damaged = [], [], []
    for name in sorted(os.listdir(output_dir)):
        if not name.endswith(".pth.tar"):
            continue
        path = os.path.join(output_dir, name)
        own = any(re.fullmatch(pattern, name) for pattern in OWN_NAMES)
        try:
            loaded = read_checkpoint(path)
        except UserError as exc:
            if own:
                damaged.append(name)
            kept = _move_aside(path) if own and repair else None
            messages.append(f"passing over {exc}" + (f"; kept as {kept}" if kept else ""))
            continue
        if loaded.notes and own and repair:  # a whole file that outlived its checksum: true it again
            write_sidecar(path, sha256_of(path), SaveFault())
            messages.extend(f"{note}; its checksum was written again" for note in loaded.notes)
        if loaded.is_own and loaded.optimizer_state is not None and loaded.epoch is not None:
            preference = {CHECKPOINT_NAME: 2, BEST_NAME: 0}.get(name, 1)  # equal states: the canonical file
            candidates.append(((loaded.epoch, loaded.step, preference), path))
    if damaged and not candidates:
        raise UserError(
            f"no whole checkpoint is left in {output_dir} ({', '.join(damaged)} damaged, kept as "
            f"*{DAMAGED_SUFFIX}); to train from scratch there, move them away, or choose another --output-dir"
        )
    newest = max(candidates)[1] if candidates else None
    if newest is not None and os.path.basename(newest) != CHECKPOINT_NAME and repair:
        messages.extend(_remade_checkpoint(newest))
    return newest, messages


def _remade_checkpoint(newest: str) -> list[str]:
    """The newest state outside `checkpoint.pth.tar`: a save cut off after its best copy (written first), or
    a damaged `checkpoint.pth.tar` moved aside. The copy is made again, so `checkpoint.pth.tar` holds the
    run's last state even when nothing is left to train. A `checkpoint.pth.tar` written after `newest` is no
    cut-off copy (a run rewound to an earlier file in this directory wrote it): it is left alone."""
    path = os.path.join(os.path.dirname(newest), CHECKPOINT_NAME)
    if not os.path.exists(path):
        why = "was missing"
    elif os.path.getmtime(path) <= os.path.getmtime(newest):
        why = "was older (a save was cut off)"
    else:
        return []
    return [_copied_again(newest, path, why)]


def _copied_again(source: str, target: str, why: str) -> str:
    """A copy a cut-off save did not leave, made again with its checksum; the note that says so."""
    copy_with_checksum(source, target, sha256_of(source), SaveFault())
    return f"{os.path.basename(target)} {why}: copied again from {os.path.basename(source)}"


def remake_epoch_copy(continued: str, output_dir: str, epoch: int, keep_epochs: int) -> list[str]:
    """Under --keep-epochs, the copy of the epoch a run continues from (`epoch`: where it continues), when
    a save was cut off before writing it: it comes after `checkpoint.pth.tar`, and after the best copy a
    crash may leave newest. Made again from the file continued from, in the run's own directory only, and
    only when no later epoch's copy exists (a run rewound to an older file has nothing missing); the copies
    are then pruned to the run's own count, as the save would have."""
    if epoch < 1 or not os.path.samefile(os.path.dirname(os.path.abspath(continued)), output_dir):
        return []
    if any(number >= epoch - 1 for number, _ in _epoch_copies(output_dir)):  # this epoch's copy, or a later one
        return []
    note = _copied_again(
        continued, os.path.join(output_dir, EPOCH_COPY.format(epoch - 1)), "was missing (a save was cut off)"
    )
    _prune_epoch_copies(output_dir, keep_epochs)
    return [note]


def _move_aside(path: str) -> str:
    """Rename a damaged file (and its checksum) to a name no save writes; returns the new name."""
    target, n = path + DAMAGED_SUFFIX, 1
    while os.path.exists(target):
        target, n = f"{path}{DAMAGED_SUFFIX}.{n}", n + 1
    os.replace(path, target)
    if os.path.exists(path + CHECKSUM_SUFFIX):
        os.replace(path + CHECKSUM_SUFFIX, target + CHECKSUM_SUFFIX)
    return target
