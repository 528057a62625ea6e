"""The checkpoint file format: what goes in, how it reaches the disk, and how any file comes back.

Files keep the reference script's keys (`epoch`, `arch`, `state_dict`, `best_acc1`, `optimizer`,
`scheduler`) so its users' tooling keeps working, and add the run's configuration and class names.
Everything is plain data loadable with `torch.load(..., weights_only=True)`: a checkpoint from a stranger
cannot run code on this machine.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import pickle
import re
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .atomicfile import atomic_write
from .errors import UserError

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
FORMAT = "imagenet-cli/1"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
EPOCH_COPY = "checkpoint_epoch_{:03d}.pth.tar"
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
    the last `keep_epochs`) so that a crash at any moment leaves the previous files whole. Each file gets
    a `.sha256` beside it (`sha256sum -c` reads it), which loading verifies."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CHECKPOINT_NAME)
    digest = write_with_checksum(path, lambda f: torch.save(dict(checkpoint), f))
    copies = [BEST_NAME] if is_best else []
    if keep_epochs and checkpoint.get("step", 0) == 0:
        copies.append(EPOCH_COPY.format(int(checkpoint["epoch"]) - 1))
    for name in copies:
        write_with_checksum(os.path.join(output_dir, name), lambda f: _copy_into(path, f), digest)
    if keep_epochs:
        _prune_epoch_copies(output_dir, keep_epochs)
    return path


def _prune_epoch_copies(output_dir: str, keep: int) -> None:
    pattern = re.compile(r"checkpoint_epoch_(\d+)\.pth\.tar$")
    numbered = sorted((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := pattern.match(name)))
    for _, name in numbered[:-keep]:
        for doomed in (name, name + CHECKSUM_SUFFIX):
            if os.path.exists(os.path.join(output_dir, doomed)):
                os.unlink(os.path.join(output_dir, doomed))


CHECKSUM_SUFFIX = ".sha256"


class _Hashing:
    """A file wrapper that hashes what passes through it on the way to the disk (no second read)."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def write_with_checksum(path: str, write: Callable[[Any], None], digest: str | None = None) -> str:
    """`atomic_write`, then the file's sha256 beside it (also atomically). Returns the digest."""

    def hashed(f: Any) -> None:
        nonlocal digest
        wrapper = _Hashing(f)
        write(wrapper)
        digest = wrapper.sha.hexdigest() if digest is None else digest

    atomic_write(path, hashed)
    assert digest is not None
    line = f"{digest}  {os.path.basename(path)}\n"
    atomic_write(path + CHECKSUM_SUFFIX, lambda f: f.write(line.encode()))
    return digest


def verify_checksum(path: str) -> None:
    """Refuse a file whose content no longer matches the sha256 written beside it (a damaged disk, a copy
    cut short): loading it would give silently wrong weights. Files without one are not checked."""
    sidecar = path + CHECKSUM_SUFFIX
    if not os.path.isfile(sidecar):
        return
    with open(sidecar) as f:
        expected = f.read().split(maxsplit=1)[0] if os.path.getsize(sidecar) else ""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    if sha.hexdigest() != expected:
        raise UserError(
            f"{path} does not match its checksum in {os.path.basename(sidecar)}: the file is damaged; "
            "use an earlier checkpoint (`--resume auto` picks the newest intact one)"
        )


def find_resumable(output_dir: str) -> tuple[str | None, list[str]]:
    """The newest intact checkpoint of this tool in `output_dir` (by epoch and step), and
    the problems of the files passed over: what `--resume auto` continues from; None starts afresh."""
    if not os.path.isdir(output_dir):
        return None, []
    candidates, problems = [], []
    for name in sorted(os.listdir(output_dir)):
        if not name.endswith(".pth.tar"):
            continue
        path = os.path.join(output_dir, name)
        try:
            loaded = read_checkpoint(path)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if loaded.kind.startswith("imagenet-cli") and loaded.optimizer is not None and loaded.epoch is not None:
            preference = {CHECKPOINT_NAME: 2, BEST_NAME: 0}.get(name, 1)  # equal states: the canonical file
            candidates.append(((loaded.epoch, loaded.step, preference), path))
    return (max(candidates)[1] if candidates else None), problems


def _copy_into(source: str, f: Any) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f)


def read_checkpoint(path: str) -> LoadedCheckpoint:
    """Load any checkpoint or weights file users bring: this tool's, the reference script's,
    DataParallel/DDP/compiled models' and plain state dicts, without executing pickled code."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    _verified(path, os.path.getmtime(path), os.path.getsize(path))
    try:
        raw = _load(path)
    except pickle.UnpicklingError as exc:
        raise UserError(_unpickling_problem(path, str(exc))) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable checkpoint (truncated or not a PyTorch file?): {exc}") from exc
    if not isinstance(raw, Mapping):
        raise UserError(f"{path} holds a {type(raw).__name__}, not a checkpoint or state dict")
    return _interpret(path, raw)


@functools.lru_cache(maxsize=64)
def _verified(path: str, _mtime: float, _size: int) -> None:
    """Checksums are verified once per file version per process (a command reads a file several times)."""
    verify_checksum(path)


def _unpickling_problem(path: str, text: str) -> str:
    """torch's refusal is a paragraph that suggests `weights_only=False`; we keep only its reason."""
    reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    reason = " ".join(reason.split()) or "unsupported content"
    if "global" in reason.lower():
        return f"{path} cannot be loaded safely: it refers to Python objects that could run code ({reason}); refused"
    return f"{path} is not a readable checkpoint (damaged, or not a PyTorch file): {reason}"


# Plain attribute bags that real checkpoints carry (torchvision's references store their argparse
# `args`); unpickling one sets attributes and runs nothing, so `weights_only` may accept it.
SAFE_EXTRA_TYPES = [argparse.Namespace]


def _load(path: str) -> Any:
    """Memory-map when the file allows it, so reading a large checkpoint's config costs little."""
    with torch.serialization.safe_globals(SAFE_EXTRA_TYPES):
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
    best = raw.get("best_acc1")
    return LoadedCheckpoint(
        path=path,
        state_dict=strip_prefixes({k: v for k, v in state.items() if k != "n_averaged"}),  # AveragedModel's count
        kind=_kind(raw, key, state),
        arch=raw.get("arch") if isinstance(raw.get("arch"), str) else None,
        epoch=int(raw["epoch"]) if isinstance(raw.get("epoch"), (int, torch.Tensor)) else None,
        step=int(raw.get("step", 0)) if isinstance(raw.get("step", 0), int) else 0,
        best_acc1=float(best) if isinstance(best, (int, float, torch.Tensor)) else None,
        optimizer=_mapping(raw, "optimizer"),
        scheduler=_mapping(raw, "scheduler"),
        config=_mapping(raw, "config"),
        class_names=list(raw["class_names"]) if isinstance(raw.get("class_names"), list) else None,
        rng_states=list(raw["rng_states"]) if isinstance(raw.get("rng_states"), list) else None,
        versions=_mapping(raw, "versions"),
        scaler=_mapping(raw, "scaler"),
        state_dict_ema=strip_prefixes(raw["state_dict_ema"])
        if isinstance(raw.get("state_dict_ema"), Mapping)
        else None,
    )


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
        "epoch": loaded.epoch,
        "step": loaded.step,
        "best_acc1": loaded.best_acc1,
        "num_classes": len(loaded.class_names) if loaded.class_names else None,
        "class_names": loaded.class_names,
        "parameters": params,
        "tensors": len(loaded.state_dict),
        "resumable": loaded.optimizer is not None,
        "ranks_with_random_state": len(loaded.rng_states or []),
        "command": config.get("command"),
        "data": "fake data" if data.get("fake") else data.get("path"),
        "epochs": optim.get("epochs"),
        "batch_size": optim.get("batch_size"),
        "lr": optim.get("lr"),
        "versions": loaded.versions,
    }
