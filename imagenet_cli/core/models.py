"""Build classifiers (torchvision's, timm's, the user's own: see model_sources), find their heads, and load
weights into them.

Heads are found by looking at the model, not by a table of names: the parameters whose shapes change
when only `num_classes` changes *are* the classifier (including Inception's and GoogLeNet's auxiliary
heads). That holds for every family torchvision has and for the ones it will add.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torchvision
from torch import nn

from .errors import UserError
from .model_sources import (
    Source,
    build_code_model,
    build_timm_model,
    check_timm,
    last_layer_keys,
    takes_num_classes,
    timm_input,
    timm_pretrained_state,
)


@functools.cache
def classification_models() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    """Refuse names no source can build, suggesting the closest real ones. User code is not looked at here
    (a checkpoint's may be elsewhere now, and `--arch` point to it): `model_sources.confirmed` and the first
    build say the rest."""
    source = Source.parse(arch)
    if source.kind == "timm":
        return check_timm(source.name)
    if source.is_code:
        return None
    names = classification_models()
    if arch in names:
        return
    close = difflib.get_close_matches(arch.lower(), names, n=4, cutoff=0.5)
    listing = "`python -c 'import torchvision; print(torchvision.models.list_models())'` lists them"
    hint = f"did you mean {', '.join(close)}?" if close else listing
    raise UserError(f"unknown architecture {arch!r}; {hint}")


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier with `num_classes` outputs (user code that takes no `num_classes`
    has the width it has: `model_sources.check_outputs` tells)."""
    source = Source.parse(arch)
    if source.kind == "timm":
        return build_timm_model(source.name, num_classes)
    if source.is_code:
        return build_code_model(source, num_classes)
    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if arch in ("inception_v3", "googlenet"):
        kwargs["init_weights"] = True  # silence torchvision's warning about the future default
    return torchvision.models.get_model(arch, **kwargs)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules without paying for their weights. A plain `torch.device("meta")` context is not
    enough: RegNet computes its widths with tensor ops that must really run."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


@functools.cache
def head_keys(arch: str) -> frozenset[str]:
    """State-dict keys of the classifier head(s) of `arch`."""
    source = Source.parse(arch)
    if source.is_code and not takes_num_classes(source):
        return last_layer_keys(build_code_model(source, 1))
    with parameters_on_meta():
        three = build_model(arch, 3).state_dict()
        five = build_model(arch, 5).state_dict()
    return frozenset(k for k, v in three.items() if v.shape != five[k].shape)


def head_num_classes(arch: str, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """How many classes a state dict of `arch` was trained for, read off its head."""
    layer = _head_weight(arch, state_dict)
    return int(state_dict[layer].shape[0]) if layer is not None else None


def output_width(arch: str, state_dict: Mapping[str, torch.Tensor], num_classes: int, source: str) -> int:
    """How many outputs a model must have to take these weights, for data of `num_classes` classes. A head
    wider than the data is kept, as the reference script trains it: it always builds torchvision's 1000-output
    model, whatever the data, and its labels index the first outputs. A narrower head cannot predict every
    class: that file is for finetuning, not for this data."""
    head = head_num_classes(arch, state_dict)
    if head is None or head >= num_classes:
        return head or num_classes
    layer = _head_weight(arch, state_dict)
    raise UserError(
        f"{source} has a classifier of {head} outputs ({layer} {tuple(state_dict[layer].shape)}) but the data has "
        f"{num_classes} classes: it was trained for fewer classes; to train it on these, use "
        f"`imagenet-cli finetune --weights {source} DATA`"
    )


def wider_head_note(outputs: int, num_classes: int, data: str | None) -> str:
    """The one line that says how a wider head is read."""
    return (
        f"the model has {outputs} outputs; the {num_classes} classes of {data or 'the data'} are outputs "
        f"0–{num_classes - 1}, as the reference script trains them"
    )


def _head_weight(arch: str, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    for key in sorted(head_keys(arch)):
        if key in state_dict and key.endswith("weight") and not key.startswith(("aux", "AuxLogits")):
            return key
    return None


def load_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str, skip_head: bool) -> None:
    """Load weights, keeping the model's own new head when `skip_head`; any other mismatch is a clear
    error naming the layer, both shapes and the likely cause, not a partial load."""
    own = model.state_dict()
    metadata = getattr(state_dict, "_metadata", None) or own._metadata  # type: ignore[attr-defined]
    state_dict = _inner_wrappers_removed(state_dict, own)
    heads = head_keys(arch) if skip_head else frozenset()
    state_dict = OrderedDict((k, v) for k, v in state_dict.items() if k not in heads)
    # Modules check their format version in this metadata; a file without it is taken to be current.
    state_dict._metadata = metadata  # type: ignore[attr-defined]
    wrong_shape = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state_dict and k not in heads]
    unexpected = [k for k in state_dict if k not in own]
    if wrong_shape or missing or unexpected:
        raise UserError(_mismatch(arch, state_dict, own, wrong_shape, missing, unexpected))
    model.load_state_dict(state_dict, strict=not skip_head)


def _mismatch(
    arch: str,
    state_dict: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    wrong_shape: list[str],
    missing: list[str],
    unexpected: list[str],
) -> str:
    """Which layers differ, with the file's shape and the model's, and what most likely went wrong."""
    shapes = [f"{k}: file {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}" for k in wrong_shape[:3]]
    details = "; ".join(
        f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
        for label, keys in (("wrong shape:", shapes), ("missing:", missing), ("unexpected:", unexpected))
        if keys
    )
    if wrong_shape and not missing and not unexpected and set(wrong_shape) <= head_keys(arch):
        cause = "only the classifier differs: the file was trained for another number of classes"
    else:
        cause = f"the file holds another architecture than {arch}: is --arch right?"
    return f"these weights do not fit {arch} ({details}); {cause}"


def _inner_wrappers_removed(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Mapping:
    """The reference script wraps only `features` of AlexNet and VGG in DataParallel, so its files name
    `features.module.0.weight`: such inner `module.` parts go when the model has no such names."""
    if all(k in own for k in state_dict) or not any(".module." in k for k in state_dict):
        return state_dict
    return renamed(
        state_dict, lambda k: k if k in own else k.replace(".module.", "."), lambda k: k.replace(".module", "")
    )


def renamed(state: Mapping[str, Any], key: Callable[[str], str], module: Callable[[str], str]) -> OrderedDict:
    """A state dict under new keys, with the per-module version metadata it carries renamed alike: some
    modules (MNASNet) read it."""
    out = OrderedDict((key(k), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict((module(k), v) for k, v in metadata.items())  # type: ignore[attr-defined]
    return out


def from_state(arch: str, state_dict: Mapping[str, torch.Tensor], num_classes: int) -> nn.Module:
    """A trained model back from its weights, its own head included (evaluate, predict, export)."""
    model = build_model(arch, num_classes)
    load_state(model, state_dict, arch, skip_head=False)
    return model


def pretrained_file(arch: str) -> tuple[str, str]:
    """Where torch.hub keeps torchvision's default weights for `arch`, and where they come from."""
    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError) as exc:
        raise UserError(f"torchvision has no pretrained weights for {arch}") from exc
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)), url


def expected_input(arch: str) -> dict[str, int]:
    """The crop and resize sizes torchvision's weights for `arch` were evaluated with (Inception: 299
    and 342), or timm's `pretrained_cfg`, as data options; empty when the arch has no published weights."""
    source = Source.parse(arch)
    if source.kind == "timm":
        return timm_input(source.name)
    if source.is_code:
        return {}
    try:
        preset = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    except (ValueError, AttributeError, TypeError):
        return {}
    crop, resize = getattr(preset, "crop_size", None), getattr(preset, "resize_size", None)
    if not crop or not resize:
        return {}
    return {"image_size": int(crop[0]), "val_crop_size": int(crop[0]), "val_resize_size": int(resize[0])}


def pretrained_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's (or timm's) weights from the local cache only: this tool must not hang on a closed network."""
    source = Source.parse(arch)
    if source.kind == "timm":
        return timm_pretrained_state(source.name)
    if source.is_code:
        raise UserError(f"--pretrained: {arch} is your own code, which has no published weights; use --weights FILE")
    path, url = pretrained_file(arch)
    if not os.path.isfile(path):
        raise UserError(
            f"pretrained weights for {arch} are not in the local cache: expected {path}; "
            f"download {url} on a machine with internet and copy it there (or set TORCH_HOME), "
            "or pass the file with --weights"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP, DataParallel, torch.compile and this tool's own thin wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers) or getattr(model, "is_thin_wrapper", False):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
