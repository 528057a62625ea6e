"""Finding bad data before it costs a run: a quick pre-flight before training, a full `check-data`.

The pre-flight looks at names only (no decoding), so it takes seconds even on ImageNet: missing or empty
class folders, classes on one side only, files ImageFolder silently skips, broken symlinks. `check-data`
decodes every file the way training does and reports unreadable files, colour modes and sizes.
"""

from __future__ import annotations

import bisect
import itertools
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import DataConfig
from ..core.errors import UserError, one_line
from . import shards, sources
from .presets import decode_rgb, open_sample, read_bytes, within_limit

# Picture files that torchvision's ImageFolder passes over without a word.
SKIPPED_PICTURES = (".jfif", ".jpe", ".heic", ".heif", ".avif", ".gif", ".jp2", ".j2k", ".ico", ".svg", ".raw")
SIDES = (64, 128, 256, 512, 1024)  # bucket edges of the shorter side, in pixels
SIDE_BUCKETS = [f"{a}-{b - 1} px" for a, b in itertools.pairwise((0, *SIDES))] + [f">= {SIDES[-1]} px"]


@dataclass
class FolderSurvey:
    """One split's class folders, by name only."""

    images: Counter[str] = field(default_factory=Counter)  # per class
    skipped: Counter[str] = field(default_factory=Counter)  # per extension
    broken_links: list[str] = field(default_factory=list)


def survey(split_dir: str) -> FolderSurvey:
    found = FolderSurvey()
    for name in sources.class_folders(split_dir):
        found.images[name] = 0
        for root, dirs, files in os.walk(os.path.join(split_dir, name), followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for file in files:
                path, ext = os.path.join(root, file), os.path.splitext(file)[1].lower()
                if os.path.islink(path) and not os.path.exists(path):
                    found.broken_links.append(path)
                elif ext in sources.IMAGE_EXTENSIONS:
                    found.images[name] += 1
                elif ext in SKIPPED_PICTURES:
                    found.skipped[ext] += 1
    return found


def preflight(cfg: DataConfig, splits: Sequence[str]) -> list[str]:
    """Errors raised, one line each; warnings returned, for the launcher to print."""
    kind = sources.data_format(cfg)
    if kind == "webdataset":  # reading the index is the check (at a URL, a round trip per 16 shards)
        return _shrunk_note(cfg, shards.read_index(cfg.path or "").max_side)
    sources.check(cfg, splits)
    if kind != "imagefolder":
        return []
    assert cfg.path is not None
    found = {split: survey(os.path.join(cfg.path, split)) for split in splits}
    notes = []
    for split, survey_ in found.items():
        if survey_.broken_links:
            listed = ", ".join(survey_.broken_links[:3]) + (" …" if len(survey_.broken_links) > 3 else "")
            raise UserError(f"{split}/ has {len(survey_.broken_links)} broken symlink(s): {listed}")
        if survey_.skipped:
            counts = ", ".join(f"{ext}: {n}" for ext, n in survey_.skipped.most_common())
            notes.append(
                f"{split}/ has {sum(survey_.skipped.values())} picture file(s) ImageFolder does not read ({counts}); "
                "they are not used: convert them (e.g. to .jpg) to include them"
            )
    if "train" in found and "val" in found:
        train, val = set(found["train"].images), set(found["val"].images)
        if val - train:
            raise UserError(
                f"val/ has classes train/ lacks: {', '.join(sorted(val - train)[:5])}; the model could never "
                "predict them (add their training images, or remove the folders from val/)"
            )
        if train - val:
            notes.append(f"val/ has no folder for {len(train - val)} class(es): {', '.join(sorted(train - val)[:5])}")
    return notes


def _shrunk_note(cfg: DataConfig, max_side: int | None) -> list[str]:
    """Shards of shrunk pictures read at a larger size are upscaled: worth knowing, not wrong."""
    wanted = max(cfg.image_size or 0, cfg.val_resize_size or 0)
    if max_side is None or wanted <= max_side:
        return []
    return [
        f"the shards hold pictures shrunk to {max_side} px on their longer side (make-shards --max-side); "
        f"reading them at {wanted} px upscales them: make shards with --max-side {wanted} or more to avoid it"
    ]


# -- check-data: decode everything ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResult:
    source: str
    split: str
    problem: str | None = None
    mode: str | None = None
    format: str | None = None
    shorter_side: int = 0


def check_all(cfg: DataConfig, workers: int) -> dict[str, Any]:
    """Every picture of every split decoded as training would; the report `check-data` prints."""
    kind = sources.data_format(cfg)
    if kind == "torchvision":
        raise UserError("check-data reads files (class folders, CSV manifests, shards); --dataset data is in memory")
    notes = preflight(cfg, ("train", "val"))
    with multiprocessing.get_context("fork").Pool(max(1, workers)) as pool:
        results = list(pool.imap_unordered(_check, _jobs(cfg, kind), chunksize=16))
    return summarise(results, notes)


def _jobs(cfg: DataConfig, kind: str) -> Iterator[tuple[str, str, Any]]:
    if kind == "webdataset":
        index = shards.read_index(cfg.path or "")
        return (
            (split, shard.path, (len(index.classes), shard.size))
            for split, entries in index.splits.items()
            for shard in entries
        )
    splits = sources.open_splits(cfg, with_train=True, class_names=None)
    datasets = (("train", splits.train), ("val", splits.val))
    return ((split, path, None) for split, dataset in datasets for path, _ in dataset.samples)  # type: ignore[union-attr]


def _check(job: tuple[str, str, Any]) -> list[FileResult] | FileResult:
    split, path, shard = job
    if path.endswith(".tar"):
        classes, size = shard
        samples = shards.samples_or_damage(path, size)
        return [_check_sample(split, f"{path}:{key}", fields, classes) for key, fields in samples]
    try:
        encoded = read_bytes(path)
    except (OSError, ValueError) as exc:  # ValueError: larger than any picture this tool decodes
        return FileResult(path, split, problem=one_line(exc))
    return _decode(split, path, encoded)


def _check_sample(split: str, source: str, fields: dict[str, bytes], classes: int) -> FileResult:
    """A shard's sample: its label must number one of the index's classes, as training requires, and its
    picture must decode."""
    if shards.DAMAGED in fields:
        return FileResult(source, split, problem=fields[shards.DAMAGED].decode())
    try:
        shards.label_of(fields, classes)
    except ValueError as exc:
        return FileResult(source, split, problem=str(exc))
    return _decode(split, source, next((v for k, v in fields.items() if k != "cls"), b""))


def _decode(split: str, source: str, encoded: torch.Tensor | bytes) -> FileResult:
    """Decode the whole picture with the training decoder (a truncated file fails here, as it would there)."""
    try:
        tensor = torch.frombuffer(bytearray(encoded), dtype=torch.uint8) if isinstance(encoded, bytes) else encoded
        _, header = open_sample(tensor)
        mode, fmt, size = header.mode, header.format, header.size
        decode_rgb(tensor, header, within_limit(header, 1))
        return FileResult(source, split, mode=mode, format=fmt, shorter_side=min(size))
    except Exception as exc:
        return FileResult(source, split, problem=one_line(exc))


def summarise(results: list[list[FileResult] | FileResult], notes: list[str]) -> dict[str, Any]:
    flat = [r for item in results for r in (item if isinstance(item, list) else [item])]
    bad = sorted((r for r in flat if r.problem), key=lambda r: r.source)
    good = [r for r in flat if not r.problem]
    buckets = Counter(SIDE_BUCKETS[bisect.bisect_right(SIDES, r.shorter_side)] for r in good)
    return {
        "files": len(flat),
        "per_split": {split: sum(1 for r in flat if r.split == split) for split in ("train", "val")},
        "unreadable": [{"file": r.source, "problem": r.problem} for r in bad],
        "modes": dict(Counter(r.mode for r in good).most_common()),
        "formats": dict(Counter(r.format for r in good).most_common()),
        "shorter_side": {label: buckets[label] for label in SIDE_BUCKETS if buckets[label]},
        "notes": notes,
    }
