"""`predict CHECKPOINT IMAGE_OR_DIR...`: the classes a trained model sees in image files.

Images go through the very validation preset `evaluate` uses, at the sizes the checkpoint was validated
at, so a picture gets the same answer here as in an evaluation. A file that cannot be decoded is named
and skipped; the others are still predicted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode

from ..checkpoint import LoadedCheckpoint, read_checkpoint
from ..config import ComputeConfig, DataConfig, DistConfig, from_stored
from ..core import models
from ..core.errors import UserError, one_line
from ..core.model_sources import confirmed
from ..data import loaders as data
from ..data.presets import ValPreset, read_bytes
from ..data.sources import IMAGE_EXTENSIONS
from ..run.distributed import Topology, select_device
from ..train import compute

DEFAULT_SIZES = (256, 224)  # resize, crop: the reference's evaluation view, for weights of unknown origin


@dataclass(frozen=True)
class Request:
    """What the user asked for, checked by `predict`; the defaults are the command line's (cli/tools.py)."""

    checkpoint: str
    inputs: Sequence[str]
    arch: str | None
    top_k: int
    batch_size: int
    workers: int | None
    no_accel: bool
    data: str | None  # a dataset whose classes name the outputs (a file that stores no names)
    trust_checkpoint_code: bool
    amp: str = "auto"  # --amp: bf16 on GPUs and AMX CPUs unless told otherwise, as in evaluate


@dataclass
class Outcome:
    """Per-image top classes (plain data, the `--json` shape), the files that could not be read, and notes."""

    checkpoint: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_images(inputs: Sequence[str]) -> list[str]:
    """Files as given, directories walked for image files (sorted); checked before any model is loaded,
    so a typo costs nothing."""
    found: list[str] = []
    for path in inputs:
        if os.path.isdir(path):
            images = sorted(
                os.path.join(root, name)
                for root, _, files in os.walk(path)
                for name in files
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not images:
                raise UserError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            found.extend(images)
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UserError(f"no such file or directory: {path}")
    return list(dict.fromkeys(found))  # a file named twice is predicted once


def input_sizes(loaded: LoadedCheckpoint, arch: str) -> tuple[int, int]:
    """(resize, crop) the model was validated at: the stored run's, or those a weights file names (an exported
    safetensors), else torchvision's for the arch."""
    if loaded.config is not None:
        stored = from_stored(loaded.config, loaded.path).data
        assert stored.val_resize_size and stored.val_crop_size
        return stored.val_resize_size, stored.val_crop_size
    if loaded.preprocessing is not None:
        return loaded.preprocessing["resize"], loaded.preprocessing["crop"]
    expected = models.expected_input(arch)
    if expected:
        return expected["val_resize_size"], expected["val_crop_size"]
    return DEFAULT_SIZES


def interpolation(loaded: LoadedCheckpoint) -> str:
    """The resampling the stored run validated with (--interpolation), or a weights file names; else bilinear."""
    if loaded.config is not None:
        return from_stored(loaded.config, loaded.path).data.interpolation
    return (loaded.preprocessing or {}).get("interpolation", "bilinear")


def resolve_arch(loaded: LoadedCheckpoint, given: str | None, trust: bool) -> str:
    """--arch wins; otherwise what the checkpoint records, as `evaluate` decides (its own code only with
    --trust-checkpoint-code)."""
    stored = (loaded.config or {}).get("model")
    recorded = loaded.arch or (stored.get("arch") if isinstance(stored, dict) else None)
    if given is None and recorded is None:
        raise UserError(f"{loaded.path} does not record its architecture; pass --arch")
    arch, _ = confirmed(recorded or "", loaded.model_source, given, trust, os.path.basename(loaded.path))
    models.check_arch(arch)
    return arch


def class_labels(loaded: LoadedCheckpoint, outputs: int, notes: list[str], data_dir: str | None = None) -> list[str]:
    """A name for each output: DATA's classes when given (as training on DATA numbers them), else the
    checkpoint's. A model wider than its classes (the reference script's 1000 outputs) names the rest by
    number; names that cannot fit give numbers throughout, with a note saying why."""
    names = loaded.class_names
    if data_dir:
        names = data.build_splits(DataConfig(path=os.path.abspath(data_dir)), with_train=True).class_names
    where = data_dir or loaded.path
    if names and len(names) <= outputs:
        if len(names) < outputs:
            notes.append(models.wider_head_note(outputs, len(names), where))
        return [str(name) for name in names] + [f"output {i}" for i in range(len(names), outputs)]
    if names:
        notes.append(f"{where} names {len(names)} classes but the model predicts {outputs}; showing class numbers")
    else:
        notes.append(f"{loaded.path} stores no class names; showing class numbers (--data DATA names them)")
    return [f"class {i}" for i in range(outputs)]


def load_model(loaded: LoadedCheckpoint, arch: str) -> tuple[nn.Module, int]:
    """The checkpoint's model with its own head, in eval mode, and how many classes it predicts."""
    num_classes = models.head_num_classes(arch, loaded.state_dict) or len(loaded.class_names or [])
    if num_classes < 1:
        raise UserError(f"cannot tell how many classes {loaded.path} predicts; is --arch right?")
    return models.from_state(arch, loaded.state_dict, num_classes).eval(), num_classes


class ImageFiles(Dataset):
    """(position, uint8 image or None, problem or None): a file that fails to decode is reported, not raised,
    so one bad file does not lose the batch it is in."""

    def __init__(self, paths: Sequence[str], preset: ValPreset) -> None:
        self.paths, self.preset = list(paths), preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.preset(read_bytes(self.paths[index])), None
        except UnidentifiedImageError:  # PIL's own message names an in-memory buffer, not the file
            return index, None, "not a picture in a format this tool decodes (PIL opens every picture first)"
        except Exception as exc:  # any failure to read or decode names the file; the rest go on
            return index, None, one_line(exc)


def _collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[Any, ...]:
    """(positions, stacked images or None, [(position, problem)]): the readable images of a batch go on."""
    good = [(i, image) for i, image, _ in samples if image is not None]
    bad = [(i, problem) for i, image, problem in samples if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [i for i, _ in good], images, bad


def _loader(paths: Sequence[str], preset: ValPreset, request: Request, device: torch.device) -> DataLoader:
    """Workers only when there is more than one batch to overlap with the model."""
    batches = math.ceil(len(paths) / request.batch_size)
    workers = request.workers if request.workers is not None else min(data.default_workers(1), batches - 1)
    return DataLoader(
        ImageFiles(paths, preset),
        batch_size=request.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=_collate,
    )


def _check(request: Request) -> None:
    if request.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {request.top_k}")
    if request.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {request.batch_size}")
    if request.workers is not None and request.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {request.workers}")


def predict(request: Request) -> Outcome:
    """Every image's top-k classes with their probabilities, in input order."""
    _check(request)
    paths = find_images(request.inputs)
    loaded = read_checkpoint(request.checkpoint)
    arch = resolve_arch(loaded, request.arch, request.trust_checkpoint_code)
    model, num_classes = load_model(loaded, arch)
    outcome = Outcome(checkpoint=request.checkpoint)
    names = class_labels(loaded, num_classes, outcome.notes, request.data)
    device = select_device(DistConfig(no_accel=request.no_accel), 0, Topology("single", 1, 1))
    settings = compute.resolve(ComputeConfig(amp=request.amp), device, model)
    model = compute.place(model, settings)
    preset = ValPreset(*input_sizes(loaded, arch), InterpolationMode(interpolation(loaded)))
    loader = _loader(paths, preset, request, device)
    top_k = min(request.top_k, len(names))
    for index, result in _run(model, loader, settings, top_k, arch):
        if isinstance(result, str):
            outcome.errors.append({"path": paths[index], "reason": result})
        else:
            top = [{"class": names[c], "index": c, "probability": p} for c, p in result]
            outcome.predictions.append({"path": paths[index], "top": top})
    return outcome


def _run(
    model: nn.Module, loader: DataLoader, settings: compute.Compute, top_k: int, arch: str
) -> Iterator[tuple[int, list[tuple[int, float]] | str]]:
    """(position, [(class, probability)...] best first) per image, or (position, problem) for a bad file."""
    normalize = data.Normalizer(settings.device, settings.memory_format, arch)
    with torch.inference_mode():
        for positions, images, bad in loader:
            yield from bad
            if images is None:
                continue
            with settings.autocast():
                logits = model(normalize(images))
            probabilities, classes = logits.float().softmax(dim=1).topk(top_k, dim=1)
            for position, ps, cs in zip(positions, probabilities.tolist(), classes.tolist(), strict=True):
                yield position, list(zip(cs, ps, strict=True))
