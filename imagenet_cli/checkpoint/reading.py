"""Any checkpoint or weights file users bring, read back without executing pickled code: this tool's, the
reference script's, torchvision's references', DataParallel/DDP/compiled models', plain state dicts and
`.safetensors` weights (this tool's exports, timm's, Hugging Face's: `safe_tensors`).

Files of this tool keep the reference script's keys (`epoch`, `arch`, `state_dict`, `best_acc1`,
`optimizer`, `scheduler`) so its users' tooling keeps working, and add the run's configuration and class
names. Every value read is checked: a file is data, and a damaged or hostile one is refused by name.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import UserError
from ..core.models import renamed
from .integrity import verify_checksum
from .safe_tensors import KIND as SAFETENSORS_KIND
from .safe_tensors import is_safetensors, read_safetensors

FORMAT = "imagenet-cli/1"
OWN_KIND = "imagenet-cli checkpoint"  # `kind` of a file in FORMAT
PRECISIONS = ("fp32", "bf16", "fp16")  # what a file may say its run trained in; anything else is not read
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
# Where other programs put a whole torchvision-like model under an attribute: Lightning's and most training
# frameworks' `model.`, PEFT's `base_model.model.`, Hugging Face's timm wrapper `timm_model.`, `backbone.`.
# Removed only when every key has it: no torchvision classifier keeps all of its weights under one name.
HOLDER_PREFIXES = ("model.", "base_model.", "timm_model.", "backbone.")
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
    optimizer_state: dict[str, Any] | None = None  # as read, shared by every reader: see `optimizer`
    scheduler: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    class_names: list[str] | None = None
    rng_states: list[dict[str, Any]] | None = None
    versions: dict[str, str] | None = None
    scaler: dict[str, Any] | None = None  # fp16's gradient scaler
    precision: str | None = None  # what the run trained in (fp32, bf16, fp16); files before 2026-12-02 say nothing
    state_dict_ema: dict[str, torch.Tensor] | None = None  # --model-ema's weight average
    stored_epoch: int | None = None  # `epoch` as the file says it; `epoch` above is where training continues
    recipe: dict[str, Any] | None = None  # torchvision's references: the run's own `args`, as plain values
    ema_updates: int | None = None  # torchvision's `model_ema`: AveragedModel's n_averaged
    notes: tuple[str, ...] = ()  # what a reader should know (a checksum the file outlived)
    preprocessing: dict[str, Any] | None = None  # resize, crop, interpolation a weights file names (safetensors)
    model_source: dict[str, str] | None = None  # user code's file or module, callable and sha256: never imported here

    @functools.cached_property
    def optimizer(self) -> dict[str, Any] | None:
        """This reader's own copy, made when first asked for: an optimizer restored on the CPU keeps the very
        tensors it is given and trains them in place, which must not change what the next reader gets."""
        return copy.deepcopy(self.optimizer_state)

    @property
    def is_own(self) -> bool:
        """Written by this tool (its format marker), so its epoch, step and configuration are this tool's."""
        return self.kind == OWN_KIND

    def weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        if not ema:
            return self.state_dict
        if not self.state_dict_ema:
            raise UserError(f"{self.path} holds no weight average (its run had no --model-ema); leave out --ema")
        return self.state_dict_ema


def read_checkpoint(path: str) -> LoadedCheckpoint:
    """Parsed once per file version per process (a resume's file is asked for by the cli, the launcher and
    the worker); a file replaced on disk is read again. Readers share what was read and only read it."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    stat = os.stat(path)
    version = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return dataclasses.replace(_parsed(path, version))  # a reader of its own, for its own copy of the optimizer state


@functools.lru_cache(maxsize=2)  # each holds a mapped file: one to resume from, one it is compared with
def _parsed(path: str, version: tuple[str, int, int, int]) -> LoadedCheckpoint:
    note = _verified(path, version)
    safetensors = is_safetensors(path)
    raw = read_safetensors(path) if safetensors else _unpickled(path)
    try:
        loaded = _interpret(path, raw)
    except UserError:
        raise
    except Exception as exc:  # values of unexpected types or shapes: the file is not what it claims to be
        raise UserError(f"{path} holds values this tool cannot read ({_first_line(exc)}); damaged?") from exc
    if safetensors:
        loaded = dataclasses.replace(loaded, kind=SAFETENSORS_KIND, preprocessing=raw.get("preprocessing"))
    return dataclasses.replace(loaded, notes=(note,)) if note else loaded


def _unpickled(path: str) -> Mapping[str, Any]:
    """A PyTorch file's contents, or one line saying why it cannot be read safely."""
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
    return raw


@functools.lru_cache(maxsize=64)
def _verified(path: str, _version: tuple[str, int, int, int]) -> str | None:
    """Hashing is what costs: `--resume auto` reads every file of a folder, more than `_parsed` keeps."""
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
    averaged = (ema or {}).get("n_averaged")  # AveragedModel's count of updates
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
        optimizer_state=_mapping(raw, "optimizer"),
        scheduler=_mapping(raw, "lr_scheduler" if torchvision_style else "scheduler"),
        config=_mapping(raw, "config"),
        class_names=_class_names(raw.get("class_names"), path),
        rng_states=list(raw["rng_states"]) if isinstance(raw.get("rng_states"), list) else None,
        versions=_mapping(raw, "versions"),
        scaler=_mapping(raw, "scaler"),
        precision=next((name for name in PRECISIONS if raw.get("precision") == name), None),
        state_dict_ema=_weights(ema) if ema is not None else None,
        stored_epoch=stored_epoch,
        recipe=_recipe(raw) if torchvision_style else None,
        ema_updates=int(averaged) if isinstance(averaged, torch.Tensor) and averaged.numel() == 1 else None,
        model_source=_model_source(raw.get("model_source")),
    )


def _model_source(value: Any) -> dict[str, str] | None:
    """Only short strings: a file names the code that trained it, it never decides what runs."""
    if not isinstance(value, Mapping):
        return None
    return {str(k)[:64]: v for k, v in value.items() if isinstance(v, str) and len(v) <= 4096} or None


MAX_INDEX = 10**9  # an epoch or step beyond this is not a position any run reached
MAX_CLASS_NAME = 1000  # characters: a label, not a text
MAX_CLASS_NAMES = 1_000_000


def _whole(raw: Mapping[str, Any], key: str, path: str) -> int | None:
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
    return _holders_removed(strip_prefixes({k: v for k, v in state.items() if k != "n_averaged"}))


def _holders_removed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`model.conv1.weight` -> `conv1.weight` when every key sits under one of `HOLDER_PREFIXES` (nested
    ones too: `base_model.model.`); whether the rest fits the arch is for the model to say."""
    while state and (prefix := next((p for p in HOLDER_PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = renamed(state, functools.partial(_under, prefix=prefix), functools.partial(_under, prefix=prefix))
    return state


def _under(key: str, prefix: str) -> str:
    """A module's name inside the holder: the holder itself (`model`) becomes the root (``)."""
    return key[len(prefix) :] if key.startswith(prefix) else "" if key == prefix[:-1] else key


def _arch(raw: Mapping[str, Any]) -> str | None:
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
    wrapped = " with DataParallel/DDP prefixes" if any(k.startswith(WRAPPER_PREFIXES) for k in state) else ""
    if raw.get("format") == FORMAT:
        return OWN_KIND
    if key is None:
        return "plain state_dict" + wrapped
    if key == "state_dict" and "best_acc1" in raw:
        return "PyTorch ImageNet reference script checkpoint" + wrapped
    if key in ("model", "model_ema"):
        return f"torchvision references checkpoint ({key})" + wrapped
    return f"checkpoint with weights under '{key}'" + wrapped


def _find_state_dict(raw: Mapping[str, Any]) -> tuple[str | None, Mapping[str, torch.Tensor]] | None:
    for key in (None, *STATE_DICT_KEYS):  # None: the file is a state dict itself
        value = raw if key is None else raw.get(key)
        if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return key, value
    return None


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as a plain model names them, whatever wrappers the writer had (even nested ones)."""
    return renamed(state, _unwrapped, _unwrapped)


def _unwrapped(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1] if "." in key else ""
    return key
