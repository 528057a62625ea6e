"""`export CHECKPOINT --format ...`: a trained model as a file that a deployment loads without this tool.

Each file travels with what a server needs to feed the model and read its answer: the class names in
output order and the exact evaluation preprocessing (resize, centre crop, mean, std, interpolation) the
checkpoint was validated with. TorchScript keeps them inside its archive; ONNX and state-dict files get
them in a JSON file beside them. Every file is written atomically: a crash leaves the previous file or
none, never half of one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checkpoint import read_checkpoint
from ..config import VAL_CROP_RATIO
from ..core.atomicfile import atomic_write
from ..core.errors import UserError
from ..data.loaders import IMAGENET_MEAN, IMAGENET_STD
from .predict import class_labels, input_sizes, interpolation, load_model, resolve_arch

FORMATS = {"torchscript": ".ts", "onnx": ".onnx", "state_dict": ".pth"}  # format: default file extension
CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".ckpt", ".bin")  # stripped from a checkpoint's name for the default
ONNX_OPSET = 17
EXAMPLE_BATCH = 2  # tracing with one image could let a batch size of 1 leak into the graph


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


@dataclass
class Outcome:
    """The files written, main file first, and notes for the user."""

    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Deployable:
    """A model ready to write, with what a deployment needs beside it."""

    model: nn.Module
    example: torch.Tensor
    metadata: dict[str, Any]  # arch, num_classes, class_names, preprocessing, source, weights


def export(request: Request) -> Outcome:
    """Rebuild the checkpoint's model (or its EMA twin) and write it in the requested format."""
    _check(request)
    loaded = read_checkpoint(request.checkpoint)
    arch = resolve_arch(loaded, request.arch)
    target = os.path.abspath(request.output or default_output(request.checkpoint, request.format, request.ema))
    _check_target(target, request.checkpoint)
    model, num_classes = load_model(dataclasses.replace(loaded, state_dict=loaded.weights(request.ema)), arch)
    outcome = Outcome()
    if request.image_size is None:
        resize, crop = input_sizes(loaded, arch)  # the sizes the model was validated at
    else:
        resize, crop = round(request.image_size / VAL_CROP_RATIO), request.image_size
    metadata = {
        "arch": arch,
        "num_classes": num_classes,
        "class_names": class_labels(loaded, num_classes, outcome.notes, request.data),
        "preprocessing": preprocessing(resize, crop, interpolation(loaded)),
        "source": os.path.abspath(request.checkpoint),
        "weights": "ema" if request.ema else "model",
    }
    deployable = Deployable(model, torch.randn(EXAMPLE_BATCH, 3, crop, crop), metadata)
    outcome.written.extend(WRITERS[request.format](deployable, target))
    return outcome


def _check(request: Request) -> None:
    """Refuse bad requests before any weights are read; ONNX's missing package too."""
    if request.format not in FORMATS:
        raise UserError(f"--format takes {', '.join(FORMATS)}, not {request.format!r}")
    if request.image_size is not None and request.image_size < 8:
        raise UserError(f"--image-size must be 8 or more, got {request.image_size}")
    if request.format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise UserError('--format onnx needs the onnx package: pip install onnx (or pip install "imagenet-cli[onnx]")')


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


def preprocessing(resize: int, crop: int, interpolation: str = "bilinear") -> dict[str, Any]:
    """The evaluation view, spelled out for code that does not have torchvision's transforms."""
    return {
        "resize": resize,
        "crop": crop,
        "interpolation": interpolation,
        "antialias": True,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "input_shape": [3, crop, crop],
        "steps": f"RGB; resize the shorter side to {resize} px ({interpolation}, antialiased); crop the centre "
        f"{crop}x{crop}; scale to [0, 1]; subtract mean and divide by std per channel; NCHW float32",
    }


def _write_sidecar(target: str, metadata: Mapping[str, Any]) -> str:
    """`TARGET.json`: what a deployment of an ONNX or state-dict file reads beside it."""
    path = target + ".json"
    atomic_write(path, lambda f: f.write((json.dumps(dict(metadata), indent=2) + "\n").encode()))
    return path


def write_torchscript(deployable: Deployable, target: str) -> list[str]:
    extra = {
        "class_names.json": json.dumps(deployable.metadata["class_names"]),
        "preprocessing.json": json.dumps(deployable.metadata["preprocessing"]),
    }
    with warnings.catch_warnings(), torch.no_grad():
        # TorchScript is asked for by name here; torch's notice that it is deprecated is no news to the user.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
        traced = torch.jit.trace(deployable.model, deployable.example, check_trace=False)
        _check_same_outputs(traced, deployable)
        atomic_write(target, lambda f: torch.jit.save(traced, f, _extra_files=extra))
    return [target]


def _check_same_outputs(traced: nn.Module, deployable: Deployable) -> None:
    """A traced graph that computes something else (data-dependent control flow) must not be shipped;
    one comparison on a fresh batch costs less than `torch.jit.trace`'s own repeated check."""
    batch = torch.randn_like(deployable.example)
    expected, got = deployable.model(batch), traced(batch)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise UserError(
            f"the traced {deployable.metadata['arch']} does not reproduce the model's outputs "
            f"(largest difference {(expected - got).abs().max().item():.3g}); use --format onnx or state_dict"
        )


def write_onnx(deployable: Deployable, target: str) -> list[str]:
    """ONNX with a free batch axis (input "images", output "logits"), checked before it is written. The
    TorchScript-based exporter is used: it needs only the onnx package, not onnxscript."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice; it still works
        torch.onnx.export(
            deployable.model, (deployable.example,), buffer, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    atomic_write(target, lambda f: f.write(data))
    metadata = {**deployable.metadata, "input": "images", "output": "logits", "opset": ONNX_OPSET}
    return [target, _write_sidecar(target, metadata)]


def write_state_dict(deployable: Deployable, target: str) -> list[str]:
    """Plain tensors under a plain model's keys: `torch.load(weights_only=True)` and `load_state_dict` take them."""
    state = deployable.model.state_dict()
    atomic_write(target, lambda f: torch.save(state, f))
    return [target, _write_sidecar(target, deployable.metadata)]


WRITERS: dict[str, Callable[[Deployable, str], list[str]]] = {
    "torchscript": write_torchscript,
    "onnx": write_onnx,
    "state_dict": write_state_dict,
}
