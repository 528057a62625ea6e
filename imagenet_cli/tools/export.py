"""`export CHECKPOINT --format ...`: a trained model as a file that a deployment loads without this tool.

Each file travels with what a server needs to feed the model and read its answer: the class names in
output order and the exact evaluation preprocessing (resize, centre crop, mean, std, interpolation) the
checkpoint was validated with. pt2 and TorchScript keep them inside their archive, safetensors in its
metadata; ONNX and state-dict files get them in a JSON file beside them. Every file is loaded back and
run on a real batch before it is renamed into place (export_check): a file that computes something else,
or half a file, is never left under the target's name.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..checkpoint import read_checkpoint
from ..config import VAL_CROP_RATIO
from ..core.atomicfile import atomic_write
from ..core.errors import UserError
from ..core.model_sources import normalization
from ..data.loaders import IMAGENET_MEAN, IMAGENET_STD
from . import EXPORT_EXTENSIONS
from .export_check import Result, make_check, verifier
from .exporters import ONNX_OPSET, WRITERS, Deployable
from .predict import class_labels, input_sizes, interpolation, load_model, resolve_arch

# format: default file extension; pt2 first, TorchScript (deprecated by torch) kept as a legacy format
FORMATS = EXPORT_EXTENSIONS
SIDECARS = ("onnx", "state_dict")  # formats with no room for metadata: OUTPUT.json beside them
CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".ckpt", ".bin", ".safetensors")  # stripped for the default name
EXAMPLE_BATCH = 2  # tracing with one image could let a batch size of 1 leak into the graph
NEEDS = {  # format: (modules, how to install them)
    "onnx": (("onnx", "onnxscript"), 'pip install "imagenet-cli[onnx]" (onnx, onnxscript, onnxruntime)'),
    "safetensors": (("safetensors",), 'pip install "imagenet-cli[safetensors]" (or pip install safetensors)'),
}


@dataclass(frozen=True)
class Request:
    """What the user asked for, checked by `export`."""

    checkpoint: str
    format: str
    output: str | None = None
    ema: bool = False
    arch: str | None = None
    image_size: int | None = None
    data: str | None = None  # a dataset whose classes name the outputs (a file that stores no names)
    trust_checkpoint_code: bool = False


@dataclass
class Outcome:
    """The files written, main file first, and notes for the user."""

    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    check: Result | None = None  # how far the written file's logits are from the model's


def export(request: Request) -> Outcome:
    """Rebuild the checkpoint's model (or its EMA twin), write it in the requested format, and check the
    written file against it on a real batch."""
    _check(request)
    loaded = read_checkpoint(request.checkpoint)
    arch = resolve_arch(loaded, request.arch, request.trust_checkpoint_code)
    target = os.path.abspath(request.output or default_output(request.checkpoint, request.format, request.ema))
    _check_target(target, request.checkpoint)
    model, num_classes = load_model(replace(loaded, state_dict=loaded.weights(request.ema)), arch)
    outcome = Outcome()
    if request.image_size is None:
        resize, crop = input_sizes(loaded, arch)  # the sizes the model was validated at
    else:
        resize, crop = round(request.image_size / VAL_CROP_RATIO), request.image_size
    metadata = {
        "arch": arch,
        "num_classes": num_classes,
        "class_names": class_labels(loaded, num_classes, outcome.notes, request.data),
        "preprocessing": preprocessing(resize, crop, interpolation(loaded), arch),
        "source": os.path.abspath(request.checkpoint),
        "weights": "ema" if request.ema else "model",
    }
    check = make_check(model, arch, num_classes, request.data, (resize, crop, interpolation(loaded)))
    results: list[Result] = []
    deployable = Deployable(model, torch.randn(EXAMPLE_BATCH, 3, crop, crop), metadata)
    WRITERS[request.format](deployable, target, verifier(check, request.format, results), outcome.notes)
    outcome.written.append(target)
    outcome.check = results[-1]
    if request.format in SIDECARS:
        fields = {"input": "images", "output": "logits", "opset": ONNX_OPSET} if request.format == "onnx" else {}
        outcome.written.append(_write_sidecar(target, {**metadata, **fields, "check": asdict(outcome.check)}))
    return outcome


def _check(request: Request) -> None:
    """Refuse bad requests before any weights are read; a format's missing packages too."""
    if request.format not in FORMATS:
        raise UserError(f"--format takes {', '.join(FORMATS)}, not {request.format!r}")
    if request.image_size is not None and request.image_size < 8:
        raise UserError(f"--image-size must be 8 or more, got {request.image_size}")
    modules, install = NEEDS.get(request.format, ((), ""))
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format {request.format} needs {' and '.join(missing)}: {install}")


def default_output(checkpoint: str, fmt: str, ema: bool) -> str:
    """Beside the checkpoint, named after it: runs/r18/model_best.pth.tar -> runs/r18/model_best.ts."""
    stem, suffix = os.path.splitext(os.path.basename(checkpoint))
    while suffix.lower() in CHECKPOINT_SUFFIXES:
        stem, suffix = os.path.splitext(stem)
    stem += suffix
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), stem + ("-ema" if ema else "") + FORMATS[fmt])


def _check_target(target: str, checkpoint: str) -> None:
    """A plain weights file `model.pth` exported as a state dict would be written over itself."""
    if os.path.exists(target) and os.path.samefile(target, checkpoint):
        raise UserError(f"exporting to {target} would overwrite the checkpoint itself; choose a file with -o")
    if not os.path.isdir(os.path.dirname(target)):
        raise UserError(f"cannot write {target}: no such directory")


def preprocessing(resize: int, crop: int, interpolation: str = "bilinear", arch: str = "") -> dict[str, Any]:
    """The evaluation view, spelled out for code that does not have torchvision's transforms."""
    mean, std = normalization(arch) or (IMAGENET_MEAN, IMAGENET_STD)
    return {
        "resize": resize,
        "crop": crop,
        "interpolation": interpolation,
        "antialias": True,
        "mean": list(mean),
        "std": list(std),
        "input_shape": [3, crop, crop],
        "steps": f"RGB; resize the shorter side to {resize} px ({interpolation}, antialiased); crop the centre "
        f"{crop}x{crop}; scale to [0, 1]; subtract mean and divide by std per channel; NCHW float32",
    }


def _write_sidecar(target: str, metadata: Mapping[str, Any]) -> str:
    """`TARGET.json`: what a deployment of an ONNX or state-dict file reads beside it, and the check's figure."""
    path = target + ".json"
    atomic_write(path, lambda f: f.write((json.dumps(dict(metadata), indent=2) + "\n").encode()))
    return path
