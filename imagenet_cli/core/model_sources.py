"""Where a network's code comes from: torchvision's registry, timm, or the user's own file or module.

`--arch` names one of them: `resnet18` (torchvision), `timm/resnet10t`, `path/to/net.py:Net` or
`package.module:factory`. The last two run the user's code, which is the user's own choice: a spec read
from a file (a checkpoint, a recipe, a config.json) is never imported unless the command line confirms it
(`--arch` typed again, or `--trust-checkpoint-code`), see `confirmed`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .atomicfile import sha256_of
from .errors import UserError, one_line

TIMM = "timm/"
TIMM_MISSING = "--arch timm/NAME needs timm: pip install 'imagenet-cli[timm]'"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Source:
    """A parsed `--arch`: `kind` is torchvision, timm, file or module; `name` the model's or callable's
    name; `location` the file (absolute) or module path of user code."""

    kind: str
    name: str
    location: str = ""

    @classmethod
    def parse(cls, arch: str) -> Source:
        if arch.startswith(TIMM):
            return cls("timm", arch.removeprefix(TIMM))
        if ":" not in arch:
            return cls("torchvision", arch)
        location, _, name = arch.rpartition(":")
        if not name.isidentifier() or not location:
            raise UserError(f"--arch {arch!r}: user code is named FILE.py:CALLABLE or package.module:CALLABLE")
        if location.endswith(".py") or "/" in location or os.sep in location:
            return cls("file", name, os.path.abspath(location))
        if not _DOTTED.match(location):
            raise UserError(f"--arch {arch!r}: {location!r} is neither a .py file nor a module path")
        return cls("module", name, location)

    @property
    def is_code(self) -> bool:
        return self.kind in ("file", "module")

    @property
    def spec(self) -> str:
        """The canonical `--arch` (a file's path made absolute, so every process and a later evaluate
        from another folder name the same file)."""
        if self.kind == "timm":
            return TIMM + self.name
        return f"{self.location}:{self.name}" if self.is_code else self.name


def canonical(arch: str) -> str:
    return Source.parse(arch).spec


def timm_module() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise UserError(TIMM_MISSING) from exc
    return timm


def check_timm(name: str) -> None:
    names = timm_module().list_models()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(TIMM + c for c in close)}?" if close else "; `imagenet-cli models --source timm`"
    raise UserError(f"timm has no model {name!r}{hint}")


@functools.cache
def _callable(source: Source) -> Callable[..., Any]:
    """The user's class or function, imported once per process. A file is imported under a name of its
    own (its path's hash), so two files both called `model.py` do not collide."""
    if source.kind == "file":
        if not os.path.isfile(source.location):
            raise UserError(f"--arch: no such file {source.location} (pass --arch FILE.py:CALLABLE to point elsewhere)")
        digest = hashlib.sha256(source.location.encode()).hexdigest()[:12]
        stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(source.location))[0])
        module_name = f"imagenet_cli_user_{digest}_{stem}"
        spec = importlib.util.spec_from_file_location(module_name, source.location)
        if spec is None or spec.loader is None:
            raise UserError(f"--arch: {source.location} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # pickling and torch.compile look classes up by module
        _run_user_code(lambda: spec.loader.exec_module(module), source)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` does: packages beside the user are found
        module = _run_user_code(lambda: importlib.import_module(source.location), source)
    found = getattr(module, source.name, None)
    if not callable(found):
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module))
        has = f"; it defines {', '.join(names)}" if names else ""
        raise UserError(f"--arch: {source.location} has no callable {source.name!r}{has}")
    return found


def _run_user_code(load: Callable[[], Any], source: Source) -> Any:
    try:
        return load()
    except ModuleNotFoundError as exc:
        if source.kind == "module" and exc.name and source.location.startswith(exc.name):
            raise UserError(
                f"--arch: no module {source.location!r} (is its folder the current one or on PYTHONPATH?)"
            ) from exc
        raise UserError(f"--arch: importing {source.location} failed: {one_line(exc)}") from exc
    except Exception as exc:  # the user's code may raise anything: one line, the traceback with --debug
        raise UserError(f"--arch: importing {source.location} failed: {one_line(exc)}") from exc


def takes_num_classes(source: Source) -> bool:
    """Whether the user's callable accepts `num_classes=` (or any keyword)."""
    try:
        parameters = inspect.signature(_callable(source)).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def build_code_model(source: Source, num_classes: int) -> nn.Module:
    factory = _callable(source)
    try:
        model = factory(num_classes=num_classes) if takes_num_classes(source) else factory()
    except Exception as exc:
        raise UserError(f"--arch {source.spec}: building the model failed: {one_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(
            f"--arch {source.spec}: {source.name}(...) gave a {type(model).__name__}, not a torch nn.Module"
        )
    return model


def build_timm_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    check_timm(name)
    return timm_module().create_model(name, pretrained=pretrained, num_classes=num_classes)


def check_outputs(model: nn.Module, num_classes: int, image_size: int, arch: str) -> None:
    """A dry forward pass on a batch of two: the model must give `num_classes` scores per image at this
    input size (a tutorial's `Net` is written for 32-pixel images, say)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, image_size, image_size))
    except Exception as exc:
        raise UserError(
            f"--arch {arch}: a dry forward pass on 2×3×{image_size}×{image_size} images failed ({one_line(exc)}); "
            "does it expect another --image-size (and --val-resize-size, --val-crop-size)?"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"--arch {arch}: the model gives outputs of shape {shape} for 2 images, but the data has {num_classes} "
            "classes: give its callable a num_classes parameter, or make its last layer that wide"
        )


def last_layer_keys(model: nn.Module) -> frozenset[str]:
    """The head of a model whose width cannot be varied: its last Linear or convolution."""
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            return frozenset(f"{name}.{key}" for key, _ in module.named_parameters(recurse=False))
    return frozenset()


def record(arch: str) -> dict[str, str] | None:
    """What a checkpoint notes of user code: where it is, its callable, and the file's sha256, so that a
    later command can tell whether the code it is asked to run is still the code that trained."""
    source = Source.parse(arch)
    if not source.is_code:
        return None
    path = source.location if source.kind == "file" else getattr(sys.modules.get(source.location), "__file__", None)
    return {
        "kind": source.kind,
        "location": source.location,
        "callable": source.name,
        "sha256": sha256_of(path) if path and os.path.isfile(path) else "",
    }


def confirmed(stored: str, recorded: dict | None, typed: str | None, trust: bool, where: str) -> tuple[str, str | None]:
    """The arch to build for a checkpoint that records `stored`, and a note for the user (or None).

    A typed `--arch` is the user's order and wins. A file's own arch is taken as it is unless it is user code:
    that runs only with `--trust-checkpoint-code`, and only while its file is unchanged."""
    if typed:
        return canonical(typed), _changed_note(typed, recorded, where)
    if not Source.parse(stored).is_code:
        return stored, None
    if not trust:
        raise UserError(
            f"{where} was trained with your own code {stored}; this tool runs code only when you name it: "
            f"pass --arch {stored} (or --trust-checkpoint-code)"
        )
    source = Source.parse(stored)
    if source.kind == "file" and not os.path.isfile(source.location):
        raise UserError(f"{where} was trained with {stored}, which is not there any more: pass --arch FILE.py:CALLABLE")
    note = _changed_note(stored, recorded, where)
    if note:
        raise UserError(f"{note}; pass --arch {stored} to run it anyway")
    return stored, None


def _changed_note(arch: str, recorded: dict | None, where: str) -> str | None:
    source = Source.parse(arch)
    if not recorded or source.kind != "file" or recorded.get("location") != source.location:
        return None
    want = recorded.get("sha256")
    now = sha256_of(source.location) if want and os.path.isfile(source.location) else want
    if now == want:
        return None
    return f"{source.location} changed since {where} was written (sha256 {want[:12]}… then, {now[:12]}… now)"


def _timm_cfg(name: str) -> Any:
    return timm_module().models.get_pretrained_cfg(name)


def timm_input(name: str) -> dict[str, Any]:
    """The input a timm model's weights were made for (`pretrained_cfg`), as data options."""
    cfg = _timm_cfg(name)
    if cfg is None or not cfg.input_size:
        return {}
    crop = int(cfg.input_size[-1])
    sizes: dict[str, Any] = {"image_size": crop, "val_crop_size": crop}
    sizes["val_resize_size"] = int(crop / cfg.crop_pct) if cfg.crop_pct else crop
    if cfg.interpolation in ("bilinear", "bicubic"):
        sizes["interpolation"] = cfg.interpolation
    return sizes


def normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std a timm model's weights expect, when they are not ImageNet's (None: ImageNet's)."""
    source = Source.parse(arch)
    if source.kind != "timm":
        return None
    cfg = _timm_cfg(source.name)
    if cfg is None or not cfg.mean or not cfg.std:
        return None
    return tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)


def timm_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """timm's weights from the local Hugging Face cache only, loaded by timm itself (which adapts older
    files): never a download."""
    timm = timm_module()
    check_timm(name)
    cfg = _timm_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    found = None
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            path = try_to_load_from_cache(hub_id, filename)
            if isinstance(path, str):
                found = path
                break
    if found is None:
        cache = constants.HF_HUB_CACHE if hub_id else "the Hugging Face cache"
        raise UserError(
            f"pretrained weights for timm/{name} are not in the local cache ({cache}): on a machine with internet run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`, copy its cache here (or set "
            "HF_HOME), or pass the file with --weights"
        )
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": found}).state_dict()
