"""The checkpoint file format: what goes in, how it reaches the disk, and how any file comes back.

Files keep the reference script's keys (`epoch`, `arch`, `state_dict`, `best_acc1`, `optimizer`,
`scheduler`) so its users' tooling keeps working, and add the run's configuration and class names.
Everything is plain data loadable with `torch.load(..., weights_only=True)`: a checkpoint from a stranger
cannot run code on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import hashlib
import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .atomicfile import atomic_write, remove_stale_temporaries
from .errors import UserError
from .faults import SaveFault

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
FORMAT = "imagenet-cli/1"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
EPOCH_COPY = "checkpoint_epoch_{:03d}.pth.tar"
OWN_NAMES = (re.escape(CHECKPOINT_NAME), re.escape(BEST_NAME), r"checkpoint_epoch_\d+\.pth\.tar")  # as regexes
DAMAGED_SUFFIX = ".damaged"
# Where files from elsewhere keep their weights, most specific first (torchvision's references: `model`,
# and `model_ema` for the averaged copy, used only when nothing else is there).
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "model_ema")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What any supported file tells us; fields a format lacks are None."""

    path: str
    state_dict: dict[str, torch.Tensor]
    kind: str = "state dict"
    arch: str | None = None
    epoch: int | None = None
    step: int = 0
    best_acc1: float | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    class_names: list[str] | None = None
    rng_states: list[dict[str, Any]] | None = None
    versions: dict[str, str] | None = None
    scaler: dict[str, Any] | None = None  # fp16's gradient scaler
    state_dict_ema: dict[str, torch.Tensor] | None = None  # --model-ema's weight average
    stored_epoch: int | None = None  # `epoch` as the file says it; `epoch` above is where training continues
    recipe: dict[str, Any] | None = None  # torchvision's references: the run's own `args`, as plain values
    ema_updates: int | None = None  # torchvision's `model_ema`: AveragedModel's n_averaged
    notes: tuple[str, ...] = ()  # what a reader should know (a checksum the file outlived)

    def weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The model's weights, or with `ema` its weight average (`--model-ema`, torchvision's `model_ema`)."""
        if not ema:
            return self.state_dict
        if not self.state_dict_ema:
            raise UserError(f"{self.path} holds no weight average (its run had no --model-ema); leave out --ema")
        return self.state_dict_ema


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
    ema_state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """(`epoch`, `step`) is where training continues: after a finished epoch that is (next epoch, 0),
    as in the reference script; a mid-epoch save holds the epoch under way and the batches done in it.
    `rng_states` holds every rank's generator states, in rank order."""
    import torchvision

    from . import __version__

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
        **({"state_dict_ema": strip_prefixes(ema_state)} if ema_state is not None else {}),
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
    gets a `.sha256` beside it (`sha256sum -c` reads it), which loading verifies.

    The best copy is written first: a crash before `checkpoint.pth.tar` is replaced leaves `model_best`
    the newest whole file, which `--resume auto` takes. Copies are real copies, as the reference makes
    them, so damage to one file leaves the others whole."""
    os.makedirs(output_dir, exist_ok=True)
    epoch = int(checkpoint["epoch"])
    fault = SaveFault.from_env(epoch)
    names = [BEST_NAME] if is_best else []
    names.append(CHECKPOINT_NAME)
    if keep_epochs and checkpoint.get("step", 0) == 0:
        names.append(EPOCH_COPY.format(epoch - 1))
    first = os.path.join(output_dir, names[0])
    digest = write_with_checksum(first, lambda f: torch.save(dict(checkpoint), f), fault=fault)
    for name in names[1:]:
        copy_with_checksum(first, os.path.join(output_dir, name), digest, fault)
    if keep_epochs:
        _prune_epoch_copies(output_dir, keep_epochs)
    return os.path.join(output_dir, CHECKPOINT_NAME)


def remove_stale_saves(output_dir: str) -> list[str]:
    """Temporary files of saves whose process was killed: never whole, as large as a checkpoint."""
    return remove_stale_temporaries(output_dir, [f"{name}(?:{re.escape(CHECKSUM_SUFFIX)})?" for name in OWN_NAMES])


def _prune_epoch_copies(output_dir: str, keep: int) -> None:
    pattern = re.compile(r"checkpoint_epoch_(\d+)\.pth\.tar$")
    numbered = sorted((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := pattern.match(name)))
    for _, name in numbered[:-keep]:
        for doomed in (name, name + CHECKSUM_SUFFIX):
            if os.path.exists(os.path.join(output_dir, doomed)):
                os.unlink(os.path.join(output_dir, doomed))


CHECKSUM_SUFFIX = ".sha256"
_NO_SPACE_AFTER = 1 << 16  # bytes a `nospace` fault lets through first, so the writer is mid-file


class _Hashing:
    """A file wrapper that hashes what passes through it on the way to the disk (no second read), and
    keeps the OSError a write met: torch's writer reports it only as an internal assertion."""

    def __init__(self, f: Any, no_space: bool = False) -> None:
        self.f, self.sha, self.no_space = f, hashlib.sha256(), no_space
        self.written, self.error = 0, None

    def write(self, data: bytes) -> int:
        try:
            if self.no_space and self.written + len(data) > _NO_SPACE_AFTER:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            count = self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.sha.update(data)
        self.written += len(data)
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def write_with_checksum(path: str, write: Callable[[Any], None], fault: SaveFault | None = None) -> str:
    """`atomic_write`, then the file's sha256 beside it (also atomically). Returns the digest."""
    fault = fault or SaveFault()
    digest = ""

    def hashed(f: Any) -> None:
        nonlocal digest
        wrapper = _Hashing(f, fault.no_space)
        try:
            write(wrapper)
        except Exception as exc:
            if wrapper.error is not None and wrapper.error is not exc:
                raise wrapper.error from exc  # the real cause: a full disk, not "enforce fail at ..."
            raise
        digest = wrapper.sha.hexdigest()

    atomic_write(path, hashed, fault.step)
    _write_sidecar(path, digest, fault)
    return digest


def copy_with_checksum(source: str, path: str, digest: str, fault: SaveFault | None = None) -> None:
    """A copy of a file just written, with the same checksum file."""
    fault = fault or SaveFault()
    atomic_write(path, lambda f: _copy_into(source, f), fault.step)
    _write_sidecar(path, digest, fault)


def _write_sidecar(path: str, digest: str, fault: SaveFault) -> None:
    line = f"{digest}  {os.path.basename(path)}\n"
    atomic_write(path + CHECKSUM_SUFFIX, lambda f: f.write(line.encode()), fault.step)


def verify_checksum(path: str) -> str | None:
    """Refuse a file whose content no longer matches the sha256 written beside it (a damaged disk, a copy
    cut short): loading it would give silently wrong weights. Files without one are not checked.

    A save that was cut off between renaming the file and its checksum leaves a whole file beside the
    previous file's checksum; so does an unreadable checksum file. Such a file is still taken when it proves
    itself whole (torch's archive keeps a CRC-32 of every record): the note returned says so."""
    sidecar = path + CHECKSUM_SUFFIX
    if not os.path.isfile(sidecar):
        return None
    expected = _read_digest(sidecar)
    if expected is not None and _sha256(path) == expected:
        return None
    if _whole_archive(path):
        why = "cannot be read" if expected is None else "belongs to an earlier save (one cut off before its checksum)"
        return f"{os.path.basename(sidecar)} {why}; {path} itself is whole (every record matches its CRC-32)"
    raise UserError(
        f"{path} does not match its checksum in {os.path.basename(sidecar)}: the file is damaged; "
        "use an earlier checkpoint (`--resume auto` picks the newest intact one)"
    )


def _read_digest(sidecar: str) -> str | None:
    """The sha256 a `.sha256` file names, or None when it holds anything else (empty, not text, huge)."""
    with open(sidecar, "rb") as f:
        head = f.read(4096)
    try:
        words = head.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    digest = words[0].lower() if words else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _whole_archive(path: str) -> bool:
    """Whether a torch file's zip archive is complete and every record matches its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError):
        return False


def find_resumable(output_dir: str, move_damaged: bool = True) -> tuple[str | None, list[str]]:
    """The newest whole checkpoint of this tool in `output_dir` (by epoch and step): what `--resume auto`
    continues from (None: start afresh), and what the reader should know of the files passed over.

    A damaged file of this tool is moved aside to NAME.damaged, so no save overwrites it, and named (only
    by the first process of a run: `move_damaged`). When damaged files were found and no whole one is
    left, the run stops instead of starting afresh over them."""
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
            kept = _move_aside(path) if own and move_damaged else None
            messages.append(f"passing over {exc}" + (f"; kept as {kept}" if kept else ""))
            continue
        if loaded.notes and own and move_damaged:  # a whole file that outlived its checksum: true it again
            _write_sidecar(path, _sha256(path), SaveFault())
            messages.extend(f"{note}; its checksum was written again" for note in loaded.notes)
        if loaded.kind.startswith("imagenet-cli") and loaded.optimizer is not None and loaded.epoch is not None:
            preference = {CHECKPOINT_NAME: 2, BEST_NAME: 0}.get(name, 1)  # equal states: the canonical file
            candidates.append(((loaded.epoch, loaded.step, preference), path))
    if damaged and not candidates:
        raise UserError(
            f"no whole checkpoint is left in {output_dir} ({', '.join(damaged)} damaged, kept as "
            f"*{DAMAGED_SUFFIX}); to train from scratch there, move them away, or choose another --output-dir"
        )
    return (max(candidates)[1] if candidates else None), messages


def _move_aside(path: str) -> str:
    """Rename a damaged file (and its checksum) to a name no save writes; returns the new name."""
    target, n = path + DAMAGED_SUFFIX, 1
    while os.path.exists(target):
        target, n = f"{path}{DAMAGED_SUFFIX}.{n}", n + 1
    os.replace(path, target)
    if os.path.exists(path + CHECKSUM_SUFFIX):
        os.replace(path + CHECKSUM_SUFFIX, target + CHECKSUM_SUFFIX)
    return target


def _copy_into(source: str, f: Any) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f)


def read_checkpoint(path: str) -> LoadedCheckpoint:
    """Load any checkpoint or weights file users bring: this tool's, the reference script's,
    torchvision's references', DataParallel/DDP/compiled models' and plain state dicts, without
    executing pickled code."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    note = _verified(path, os.path.getmtime(path), os.path.getsize(path))
    try:
        raw = _load(path)
    except pickle.UnpicklingError as exc:
        raise UserError(_unpickling_problem(path, str(exc))) from exc
    except Exception as exc:  # a damaged file fails in many ways inside torch's reader: each is damage
        raise UserError(
            f"{path} is not a readable checkpoint (damaged, truncated or not a PyTorch file): {_first_line(exc)}"
        ) from exc
    if not isinstance(raw, Mapping):
        raise UserError(f"{path} holds a {type(raw).__name__}, not a checkpoint or state dict")
    try:
        loaded = _interpret(path, raw)
    except UserError:
        raise
    except Exception as exc:  # values of unexpected types or shapes: the file is not what it claims to be
        raise UserError(f"{path} holds values this tool cannot read ({_first_line(exc)}); damaged?") from exc
    return dataclasses.replace(loaded, notes=(note,)) if note else loaded


@functools.lru_cache(maxsize=64)
def _verified(path: str, _mtime: float, _size: int) -> str | None:
    """Checksums are verified once per file version per process (a command reads a file several times)."""
    return verify_checksum(path)


def _unpickling_problem(path: str, text: str) -> str:
    """torch's refusal is a paragraph that suggests loading the file with `weights_only=False`, which
    would let it run code: we keep only what is wrong with the file, and never repeat that advice."""
    forbidden = re.search(r"GLOBAL ([\w.]+)", text)
    if forbidden:
        return (
            f"{path} cannot be loaded safely: it names {forbidden.group(1)}, which could run code on this "
            "machine; refused (this tool never executes code from a file)"
        )
    if zipfile.is_zipfile(path):
        reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        reason = " ".join(reason.split()) if "WeightsUnpickler error:" in text else "unsupported content"
        return f"{path} is not a readable checkpoint (damaged, or written by other software): {reason[:120]}"
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # the opcode every pickle since protocol 2 starts with
    what = "a plain Python pickle, not a PyTorch file" if pickled else "damaged, or not a PyTorch file"
    return f"{path} is not a readable checkpoint ({what}); refused"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


# Plain attribute bags that real checkpoints carry (torchvision's references store their argparse
# `args`); unpickling one sets attributes and runs nothing, so `weights_only` may accept it.
SAFE_EXTRA_TYPES = [argparse.Namespace]


def _load(path: str) -> Any:
    """Memory-map when the file allows it, so reading a large checkpoint's config costs little. torch's
    warnings about a file's pickle protocol are not the user's business: the refusal says what matters."""
    with torch.serialization.safe_globals(SAFE_EXTRA_TYPES), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def _interpret(path: str, raw: Mapping[str, Any]) -> LoadedCheckpoint:
    found = _find_state_dict(raw)
    if found is None:
        raise UserError(
            f"{path} has no model weights (looked for a state dict or the keys {', '.join(STATE_DICT_KEYS)})"
        )
    key, state = found
    stored_epoch = _whole(raw, "epoch", path)
    torchvision_style = _torchvision_references(raw, key)
    ema = raw.get("state_dict_ema") if isinstance(raw.get("state_dict_ema"), Mapping) else None
    if torchvision_style and isinstance(raw.get("model_ema"), Mapping) and key != "model_ema":
        ema = raw["model_ema"]
    _check_sizes(path, {**state, **{f"ema.{k}": v for k, v in (ema or {}).items() if isinstance(v, torch.Tensor)}})
    return LoadedCheckpoint(
        path=path,
        state_dict=_weights(state),
        kind=_kind(raw, key, state),
        arch=_arch(raw),
        # torchvision's references store the index of the last finished epoch; everyone else the count
        epoch=stored_epoch + 1 if torchvision_style and stored_epoch is not None else stored_epoch,
        step=_whole(raw, "step", path) or 0,
        best_acc1=_accuracy(raw.get("best_acc1")),
        optimizer=_mapping(raw, "optimizer"),
        scheduler=_mapping(raw, "lr_scheduler" if torchvision_style else "scheduler"),
        config=_mapping(raw, "config"),
        class_names=_class_names(raw.get("class_names"), path),
        rng_states=list(raw["rng_states"]) if isinstance(raw.get("rng_states"), list) else None,
        versions=_mapping(raw, "versions"),
        scaler=_mapping(raw, "scaler"),
        state_dict_ema=_weights(ema) if ema is not None else None,
        stored_epoch=stored_epoch,
        recipe=_recipe(raw) if torchvision_style else None,
        ema_updates=_count(ema.get("n_averaged")) if ema is not None else None,
    )


MAX_INDEX = 10**9  # an epoch or step beyond this is not a position any run reached
MAX_CLASS_NAME = 1000  # characters: a label, not a text
MAX_CLASS_NAMES = 1_000_000


def _whole(raw: Mapping[str, Any], key: str, path: str) -> int | None:
    """An epoch or step count: a whole number in range, or the file is refused by name."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
        raise UserError(f"{path} stores {key} {str(value)[:40]!r}, not a count of epochs or steps; damaged?")
    return value


def _accuracy(value: Any) -> float | None:
    """best_acc1: a percentage (the reference script stores a one-element tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= float(value) <= 100:
        return float(value)
    return None


def _class_names(value: Any, path: str) -> list[str] | None:
    """Class names are labels (a manifest's may hold any text): strings of a sane length, and no more of
    them than a model may have outputs. They name folders only where they match a folder's entries."""
    if not isinstance(value, list):
        return None
    if len(value) > MAX_CLASS_NAMES or not all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME for n in value):
        raise UserError(f"{path} stores class names that are not names (empty, too long, not text, or too many)")
    return list(value)


def _check_sizes(path: str, state: Mapping[str, torch.Tensor]) -> None:
    """Tensors that claim far more elements than the file holds bytes (broadcast views saved as such)
    would make every model built from them exhaust memory: such a file is refused."""
    claimed = sum(t.numel() * t.element_size() for t in state.values())
    if claimed > 4 * os.path.getsize(path) + (64 << 20):
        raise UserError(
            f"{path} declares {claimed / 2**30:.1f} GiB of weights in a {os.path.getsize(path) / 2**20:.1f} MiB file; refused"
        )


def _torchvision_references(raw: Mapping[str, Any], key: str | None) -> bool:
    """torchvision's `references/classification/train.py` layout: `model`, `optimizer`, `lr_scheduler`,
    `epoch`, `args` (and `model_ema`, `scaler`)."""
    return key in ("model", "model_ema") and ("lr_scheduler" in raw or isinstance(raw.get("args"), argparse.Namespace))


def _weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain model keys; AveragedModel's `n_averaged` count is not a weight."""
    return strip_prefixes({k: v for k, v in state.items() if k != "n_averaged"})


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else None


def _arch(raw: Mapping[str, Any]) -> str | None:
    """The architecture a file names: the reference's `arch`, or the `model` of torchvision's `args`."""
    if isinstance(raw.get("arch"), str):
        return raw["arch"]
    args = raw.get("args")
    model = getattr(args, "model", None) if isinstance(args, argparse.Namespace) else None
    return model if isinstance(model, str) else None


def _recipe(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored `args` as plain values (what `inspect` shows and a resume may take)."""
    args = raw.get("args")
    if not isinstance(args, argparse.Namespace):
        return None
    return {
        k: v for k, v in vars(args).items() if isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None)))
    }


def _mapping(raw: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = raw.get(key)
    return dict(value) if isinstance(value, Mapping) else None


def _kind(raw: Mapping[str, Any], key: str | None, state: Mapping[str, torch.Tensor]) -> str:
    """Which program wrote the file, as far as its layout tells."""
    wrapped = " with DataParallel/DDP prefixes" if any(k.startswith(WRAPPER_PREFIXES) for k in state) else ""
    if raw.get("format") == FORMAT:
        return "imagenet-cli checkpoint"
    if key is None:
        return "plain state_dict" + wrapped
    if key == "state_dict" and "best_acc1" in raw:
        return "PyTorch ImageNet reference script checkpoint" + wrapped
    if key in ("model", "model_ema"):
        return f"torchvision references checkpoint ({key})" + wrapped
    return f"checkpoint with weights under '{key}'" + wrapped


def _find_state_dict(raw: Mapping[str, Any]) -> tuple[str | None, Mapping[str, torch.Tensor]] | None:
    if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return None, raw
    for key in STATE_DICT_KEYS:
        value = raw.get(key)
        if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return key, value
    return None


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as a plain model names them, whatever wrappers the writer had (even nested ones). The
    per-module version metadata a state dict carries is renamed alike: some modules (MNASNet) need it."""
    out: dict[str, torch.Tensor] = OrderedDict((_unwrapped(key), value) for key, value in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict((_unwrapped(key), value) for key, value in metadata.items())  # type: ignore[attr-defined]
    return out


def _unwrapped(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1] if "." in key else ""
    return key


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def describe(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """What `inspect` shows, as plain data (also its `--json`)."""
    params = sum(v.numel() for k, v in loaded.state_dict.items() if not k.endswith(BUFFER_SUFFIXES))
    config = loaded.config or {}
    optim = config.get("optim", {}) if isinstance(config.get("optim"), Mapping) else {}
    data = config.get("data", {}) if isinstance(config.get("data"), Mapping) else {}
    return {
        "path": loaded.path,
        "format": loaded.kind,
        "size_bytes": os.path.getsize(loaded.path),
        "arch": loaded.arch,
        "epoch": loaded.stored_epoch,
        "next_epoch": loaded.epoch,  # where training continues, counted from 0 (torchvision's files: epoch + 1)
        "step": loaded.step,
        "best_acc1": loaded.best_acc1,
        "num_classes": len(loaded.class_names) if loaded.class_names else None,
        "outputs": _outputs(loaded),
        "class_names": loaded.class_names,
        "parameters": params,
        "tensors": len(loaded.state_dict),
        "resumable": loaded.optimizer is not None,
        "weight_average": _describe_ema(loaded),
        "ranks_with_random_state": len(loaded.rng_states or []),
        "command": config.get("command"),
        "data": "fake data" if data.get("fake") else data.get("path"),
        "epochs": optim.get("epochs"),
        "batch_size": optim.get("batch_size"),
        "lr": optim.get("lr"),
        **_describe_recipe(loaded),
        "never_taken_from_file": _never_taken(loaded) or None,
        "notes": list(loaded.notes) or None,
        "versions": loaded.versions,
    }


def _outputs(loaded: LoadedCheckpoint) -> int | None:
    """The width of the classifier, which may exceed the classes (the reference script's 1000)."""
    from .models import check_arch, head_num_classes

    try:
        check_arch(loaded.arch or "")
        return head_num_classes(loaded.arch or "", loaded.state_dict)
    except (UserError, ValueError, TypeError):
        return None


def _describe_ema(loaded: LoadedCheckpoint) -> str | None:
    if loaded.state_dict_ema is None:
        return None
    if loaded.ema_updates is None:
        return "present (--model-ema); `evaluate --ema` scores it"
    return (
        f"model_ema, averaged over {loaded.ema_updates} updates; its `module.` prefix comes from torch's "
        "AveragedModel, not from DDP; `evaluate --ema` scores it"
    )


def _describe_recipe(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """torchvision's stored `args`: what a resume takes as this tool's options, and what has no equivalent."""
    if loaded.recipe is None:
        return {}
    from .torchvision_args import translate

    translation = translate(loaded.recipe)
    return {"recipe": translation.options, "recipe_without_equivalent": translation.without_equivalent or None}


def _never_taken(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """Stored settings of where the run happened (addresses, ranks, GPUs, folders): shown, never obeyed."""
    from .config import PLACEMENT, default_for

    config = loaded.config or {}
    dist = config.get("dist") if isinstance(config.get("dist"), Mapping) else {}
    stored = {**dist, **{k: config.get(k) for k in ("output_dir", "log_dir")}}
    ignored = {k: v for k, v in stored.items() if k in PLACEMENT and v is not None and v != default_for("train", k)}
    if loaded.recipe is not None:
        from .torchvision_args import NEVER_TAKEN

        ignored.update({k: v for k, v in loaded.recipe.items() if k in NEVER_TAKEN and v not in (None, "", False)})
    return dict(sorted(ignored.items()))
