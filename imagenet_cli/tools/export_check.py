"""The round trip every export makes: the written file, loaded back as a deployment loads it, must compute
the logits the PyTorch model computes, on a real batch, before it is renamed into place.

Each exporter rewrites the model (tracing, torch.export's graph, ONNX operators, another file format for
the weights), and each rewrite can go wrong silently: a batch size baked into a graph, a lost buffer, an
operator translated differently. A comparison on real inputs catches what a successful write never shows.

The batch: `--data`'s validation images, or photo-like pictures (smooth colours, texture, grain), both
through the file's own preprocessing. Random noise would probe the network outside anything it is fed.

The limit: 1e-3 times the largest logit's magnitude (at least 1). fp32 keeps about 7 significant digits;
another kernel or summation order (onnxruntime's, a fused graph's) moves a deep network's logits by about
1e-6 to 1e-5 of their size, far below it; a wrong weight, preprocessing or graph moves them by 1e-1 or more.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset
from torchvision.transforms.v2 import InterpolationMode

from ..checkpoint import read_checkpoint
from ..config import DataConfig
from ..core import models
from ..core.errors import UserError, one_line
from ..data import loaders
from ..data.presets import ValPreset
from .pictures import photo_like

TOLERANCE = 1e-3  # of the largest logit's magnitude (at least 1)
CHECK_IMAGES = 4  # not EXAMPLE_BATCH (2): a batch size baked into a graph fails the check
ONNX_RUNTIME_INSTALL = 'pip install onnxruntime (or pip install "imagenet-cli[onnx]")'


@dataclass(frozen=True)
class Check:
    """What an exported file must reproduce: the model's logits on a real batch."""

    arch: str
    num_classes: int
    batch: torch.Tensor  # normalised float32 NCHW, as the file is fed
    expected: torch.Tensor  # the PyTorch model's logits on it
    inputs: str  # what the batch is, for the report


@dataclass(frozen=True)
class Result:
    """How far the file's logits are from the model's; `runner` is what ran the file (None: not checked)."""

    runner: str | None
    inputs: str
    max_abs_diff: float | None = None
    limit: float | None = None

    def line(self, path: str) -> str:
        if self.max_abs_diff is None:
            return f"not checked {path}: onnxruntime is not installed ({ONNX_RUNTIME_INSTALL})"
        return (
            f"checked {path} with {self.runner} on {self.inputs}: max abs difference of logits "
            f"{self.max_abs_diff:.2e} (limit {self.limit:.1e})"
        )


def make_check(model: nn.Module, arch: str, num_classes: int, data: str | None, view: tuple[int, int, str]) -> Check:
    """The batch a file is checked on, fed through `view` (resize, crop, interpolation), and the logits."""
    resize, crop, interpolation = view
    preset = ValPreset(resize, crop, InterpolationMode(interpolation))
    if data:
        images, inputs = _validation_images(data, view), f"{{}} validation images of {data}"
    else:
        rng = np.random.default_rng(0)
        images = torch.stack([preset(photo_like(rng, 320, 240)) for _ in range(CHECK_IMAGES)])
        inputs = "{} photo-like pictures"
    batch = loaders.Normalizer(torch.device("cpu"), arch=arch)(images)
    with torch.no_grad():
        expected = model(batch)
    return Check(arch, num_classes, batch, expected, inputs.format(len(batch)))


def _validation_images(data: str, view: tuple[int, int, str]) -> torch.Tensor:
    """The first validation images of DATA (any format it comes in), as `evaluate` would see them."""
    resize, crop, interpolation = view
    cfg = DataConfig(
        path=os.path.abspath(data), image_size=crop, val_crop_size=crop, val_resize_size=resize,
        interpolation=interpolation,
    )  # fmt: skip
    val = loaders.build_splits(cfg, with_train=False).val
    if isinstance(val, IterableDataset):
        samples = list(itertools.islice(iter(val), CHECK_IMAGES))
    else:
        samples = [val[i] for i in range(min(CHECK_IMAGES, len(val)))]  # type: ignore[arg-type]
    if not samples:
        raise UserError(f"{data} has no validation images to check the export on")
    return torch.stack([image for image, _ in samples])


def verifier(check: Check, fmt: str, results: list[Result]) -> Callable[[str], None]:
    """`atomic_write`'s check of the temporary file: raising keeps it from ever replacing the target."""

    def verify(path: str) -> None:
        if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            results.append(Result(None, check.inputs))
            return
        runner, run = RUNNERS[fmt]
        try:
            with torch.no_grad():
                got = run(path, check).float()
        except UserError:
            raise
        except Exception as exc:  # a file its own loader cannot run must not be shipped either
            raise UserError(
                f"the exported {fmt} file cannot be run by {runner}: {one_line(exc)[:200]}; nothing was written"
            ) from exc
        diff = (got - check.expected).abs().max().item() if got.shape == check.expected.shape else float("inf")
        limit = TOLERANCE * max(1.0, check.expected.abs().max().item())
        results.append(Result(runner, check.inputs, diff, limit))
        if not diff <= limit:  # NaN fails too
            raise UserError(
                f"the exported {fmt} file does not compute what the model computes: max abs difference of logits "
                f"{diff:.3g} > {limit:.1e} on {check.inputs} (shape {tuple(got.shape)}); nothing was written"
            )

    return verify


def _torchscript(path: str, check: Check) -> torch.Tensor:
    return torch.jit.load(path, map_location="cpu").eval()(check.batch)


def _pt2(path: str, check: Check) -> torch.Tensor:
    """From an open file: torch.export takes a path as its archive only when the name ends in .pt2, and
    the file checked is still the temporary one."""
    with open(path, "rb") as f:
        return torch.export.load(f).module()(check.batch)


def _onnx(path: str, check: Check) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": check.batch.numpy()})[0])


def _safetensors(path: str, check: Check) -> torch.Tensor:
    """Through this tool's own reader: what `evaluate`, `predict` and `finetune --weights` will get."""
    loaded = read_checkpoint(path)
    return models.from_state(loaded.arch or check.arch, loaded.state_dict, check.num_classes).eval()(check.batch)


def _state_dict(path: str, check: Check) -> torch.Tensor:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return models.from_state(check.arch, state, check.num_classes).eval()(check.batch)


RUNNERS: dict[str, tuple[str, Callable[[str, Check], torch.Tensor]]] = {
    "pt2": ("torch.export.load", _pt2),
    "onnx": ("onnxruntime", _onnx),
    "safetensors": ("safetensors", _safetensors),
    "torchscript": ("torch.jit.load", _torchscript),
    "state_dict": ("torch.load", _state_dict),
}
