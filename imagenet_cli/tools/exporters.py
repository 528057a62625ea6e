"""One writer per `export --format`: the model serialised, written atomically, checked before the rename.

Each writer hands `atomic_write` a `verify` (export_check) that loads the temporary file back and compares
its logits with the model's: a file that fails is removed and never appears under its name.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.atomicfile import atomic_write
from ..core.errors import UserError, one_line

ONNX_OPSET = 18  # the dynamo exporter's own opset: older ones go through a version converter
Verify = Callable[[str], None]


@dataclass(frozen=True)
class Deployable:
    """A model ready to write, with what a deployment needs beside it."""

    model: nn.Module
    example: torch.Tensor  # the input torch.export and tracing see; its batch axis stays free
    metadata: dict[str, Any]  # arch, num_classes, class_names, preprocessing, source, weights


def exportable(deployable: Deployable) -> nn.Module:
    """The module each writer serialises: the one place a test can make a writer export something else."""
    return deployable.model


def _free_batch() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1)}


def _embedded(metadata: dict[str, Any]) -> dict[str, str]:
    """The files an archive (TorchScript, pt2) carries beside the model: names, preprocessing, the rest."""
    return {
        "class_names.json": json.dumps(metadata["class_names"]),
        "preprocessing.json": json.dumps(metadata["preprocessing"]),
        "metadata.json": json.dumps(metadata),
    }


def write_pt2(deployable: Deployable, target: str, verify: Verify, _notes: list[str]) -> None:
    """`torch.export`'s program with a free batch axis; `torch.export.load(path).module()` runs it, and
    `extra_files` gives back class_names.json, preprocessing.json and metadata.json."""
    try:
        program = torch.export.export(exportable(deployable), (deployable.example,), dynamic_shapes=(_free_batch(),))
    except Exception as exc:  # torch.export's failures are many (graph breaks, data-dependent shapes)
        raise UserError(
            f"torch.export cannot capture {deployable.metadata['arch']}: {one_line(exc)[:200]}; "
            "--format safetensors or state_dict exports its weights"
        ) from exc
    extra = _embedded(deployable.metadata)
    atomic_write(target, lambda f: torch.export.save(program, f, extra_files=extra), verify=verify)


def write_onnx(deployable: Deployable, target: str, verify: Verify, _notes: list[str]) -> None:
    """ONNX from torch.export's graph (the dynamo exporter, with onnxscript): input `images` with a free
    batch axis, output `logits`, checked by `onnx.checker` and then run by onnxruntime."""
    import onnx

    try:
        program = torch.onnx.export(
            exportable(deployable), (deployable.example,), dynamo=True, input_names=["images"],
            output_names=["logits"], dynamic_shapes=(_free_batch(),), opset_version=ONNX_OPSET, verbose=False,
        )  # fmt: skip
    except Exception as exc:
        raise UserError(
            f"the ONNX exporter cannot translate {deployable.metadata['arch']}: {one_line(exc)[:200]}; "
            "--format pt2 or safetensors may"
        ) from exc
    proto = program.model_proto
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write(target, lambda f: f.write(data), verify=verify)


def write_safetensors(deployable: Deployable, target: str, verify: Verify, _notes: list[str]) -> None:
    """Weights only (no code, no pickle), under torchvision's keys; the metadata holds arch, class names
    (JSON), preprocessing (JSON), source and which weights, as strings, as the format requires."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in exportable(deployable).state_dict().items()}
    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in deployable.metadata.items()}
    data = save(state, metadata={"format": "pt", "producer": "imagenet-cli", **strings})
    atomic_write(target, lambda f: f.write(data), verify=verify)


def write_torchscript(deployable: Deployable, target: str, verify: Verify, notes: list[str]) -> None:
    """Legacy: the model traced in eval mode. torch deprecates `torch.jit` (its FutureWarnings say to move
    to torch.export); asked for by name, it still works, so the warnings become one note saying so."""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", FutureWarning)
        traced = torch.jit.trace(exportable(deployable), deployable.example, check_trace=False)
        extra = _embedded(deployable.metadata)
        atomic_write(target, lambda f: torch.jit.save(traced, f, _extra_files=extra), verify=verify)
    deprecated = [w for w in caught if issubclass(w.category, FutureWarning) and "torch.jit" in str(w.message)]
    for other in (w for w in caught if w not in deprecated):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if deprecated:
        notes.append(
            "note: TorchScript is deprecated by torch (torch.jit warns: switch to torch.export) and is a legacy "
            "format here; --format pt2 is its successor"
        )


def write_state_dict(deployable: Deployable, target: str, verify: Verify, _notes: list[str]) -> None:
    """Plain tensors under a plain model's keys: `torch.load(weights_only=True)` and `load_state_dict` take them."""
    state = exportable(deployable).state_dict()
    atomic_write(target, lambda f: torch.save(state, f), verify=verify)


WRITERS: dict[str, Callable[[Deployable, str, Verify, list[str]], None]] = {
    "pt2": write_pt2,
    "onnx": write_onnx,
    "safetensors": write_safetensors,
    "torchscript": write_torchscript,
    "state_dict": write_state_dict,
}
