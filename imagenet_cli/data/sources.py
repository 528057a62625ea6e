"""Datasets from each on-disk format: class folders, CSV manifests, torchvision's datasets, tar shards.

Every source hands the same presets the same kind of sample (a file's bytes, or a picture already in
memory) and labels indexed by one class list: train's, or a checkpoint's. So the augmentations, the
uint8 pipeline and the device-side normalisation are the same whatever the data is stored as.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import datasets

from ..config import DataConfig
from ..core import formats
from ..core.errors import UserError
from ..core.text import clip
from . import augment, shards
from .presets import DeviceDecoded, InterpolationMode, PadCropPreset, TrainPreset, Transform, ValPreset, read_bytes

IMAGE_EXTENSIONS = datasets.folder.IMG_EXTENSIONS


@dataclass(frozen=True)
class DataSplits:
    train: Dataset | None
    val: Dataset
    class_names: list[str]


def data_format(cfg: DataConfig) -> str:
    """The configured format, or the one DATA's layout shows."""
    if cfg.data_format != "auto":
        return cfg.data_format
    return formats.detect(cfg.path, manifests=bool(cfg.train_manifest or cfg.val_manifest))


def open_splits(cfg: DataConfig, with_train: bool, class_names: Sequence[str] | None) -> DataSplits:
    """The train (when asked) and val datasets; `class_names` (a checkpoint's) fixes the label order."""
    kind = data_format(cfg)
    train_preset, val_preset = presets_for(cfg)
    if cfg.val_split != "val" and kind not in ("imagefolder", "csv"):
        raise UserError(f"--split {cfg.val_split}: other splits than val are read from class folders or CSV manifests")
    if kind == "torchvision":
        val = open_torchvision(cfg, "val", val_preset)
        train = open_torchvision(cfg, "train", train_preset) if with_train else None
        names = torchvision_classes(train or val)
        if class_names is not None and list(class_names) != names:
            _check_known(set(names), class_names, f"--dataset {cfg.dataset}")
            raise UserError(f"--dataset {cfg.dataset} orders its classes differently from the checkpoint")
        return DataSplits(train, val, names)
    if kind == "webdataset":
        index = shards.read_index(cfg.path or "")
        if class_names is not None and list(class_names) != index.classes:
            raise UserError("the shards' classes differ from the checkpoint's; to adapt a model, use `finetune`")
        if with_train and not index.splits.get("train"):
            raise UserError(f"{cfg.path} has no training shards")
        train_shards = index.splits.get("train", [])
        train = shards.ShardStream(train_shards, train_preset, index.classes, shuffle_buffer=cfg.shuffle_buffer)
        val = shards.ShardStream(index.splits["val"], val_preset, index.classes, training=False)
        return DataSplits(train if with_train else None, val, index.classes)
    if kind == "csv":
        train_rows = read_manifest(manifest_path(cfg, "train")) if with_train else None
        val_rows = read_manifest(manifest_path(cfg, cfg.val_split))
        names = list(class_names) if class_names is not None else manifest_classes(train_rows or val_rows)
        train = ManifestDataset(train_rows, names, train_preset, "train") if train_rows is not None else None
        return DataSplits(train, ManifestDataset(val_rows, names, val_preset, "val"), names)
    assert cfg.path is not None
    train_dir, val_dir = os.path.join(cfg.path, "train"), os.path.join(cfg.path, cfg.val_split)
    names = list(class_names) if class_names is not None else class_folders(train_dir if with_train else val_dir)
    train = ClassFolder(train_dir, names, train_preset) if with_train else None
    return DataSplits(train, ClassFolder(val_dir, names, val_preset), names)


def presets_for(cfg: DataConfig) -> tuple[Transform, Transform]:
    """Small pictures of a torchvision dataset trained at their own size are padded and cropped (the recipe
    those datasets are known by) rather than blown up by RandomResizedCrop. With `--decode-on-device` the
    workers leave JPEGs encoded for the device (the configuration refuses augmentations there)."""
    assert cfg.image_size and cfg.val_resize_size and cfg.val_crop_size
    size, mode = cfg.image_size, InterpolationMode(cfg.interpolation)
    native = formats.lookup(cfg.dataset).native_size if cfg.dataset else None
    small = native == size and size <= 64
    train = (
        PadCropPreset(size, size // 8, mode, cfg.hflip)
        if small
        else TrainPreset(size, mode, cfg.hflip, cfg.crop_scale, cfg.crop_ratio)
    )
    val = ValPreset(cfg.val_resize_size, cfg.val_crop_size, mode)
    if cfg.decode_on_device:
        return DeviceDecoded(train), DeviceDecoded(val)
    return augment.augmented(train, cfg), val


def check(cfg: DataConfig, splits: Sequence[str]) -> None:
    """Before any process starts: the data is where the configuration says, in the shape it says."""
    kind = data_format(cfg)
    if kind == "imagefolder":
        assert cfg.path is not None
        check_folders(cfg.path, splits)
    elif kind == "csv":
        for split in splits:
            read_manifest(manifest_path(cfg, split))
    elif kind == "webdataset":
        shards.read_index(cfg.path or "")
    elif cfg.path and not os.path.isdir(cfg.path) and not cfg.download:
        raise UserError(f"--dataset {cfg.dataset}: root {cfg.path} not found (pass --download to fetch it there)")


# -- class folders (ImageNet's layout) -----------------------------------------------------------------------


class ClassFolder(datasets.ImageFolder):
    """An ImageFolder labelled by a given class list (train's, or a checkpoint's), so a validation folder
    that lacks a class cannot shift every label after it; its samples are bytes, for the presets to decode."""

    def __init__(self, root: str, classes: Sequence[str], transform: Transform) -> None:
        self._given_classes = list(classes)
        super().__init__(root, transform=transform, loader=read_bytes, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """Only names that are folders of `directory` are walked: a class list from a file ('../../x',
        '/') is matched against the folder's entries, never joined to its path."""
        present = set(class_folders(directory))
        _check_known(present, self._given_classes, directory)
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes) if name in present}


def _check_known(present: set[str], known: Sequence[str], where: str) -> None:
    unknown = sorted(present - set(known))
    if unknown:
        raise UserError(
            f"{where} has classes the model does not know: {', '.join(clip(name) for name in unknown[:5])}; to adapt "
            "a model to these classes, use `imagenet-cli finetune --weights CHECKPOINT DATA`"
        )


def class_folders(directory: str) -> list[str]:
    """Class names as ImageFolder sees them, minus hidden folders such as `.ipynb_checkpoints`."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def check_folders(path: str, splits: Sequence[str]) -> None:
    """Fail before any process starts, with a message naming what is missing."""
    if not os.path.isdir(path):
        raise UserError(f"data directory not found: {path}")
    for split in splits:
        split_dir = os.path.join(path, split)
        if not os.path.isdir(split_dir):
            raise UserError(
                f"{path} has no {split}/ folder; expected {split}/CLASS_NAME/IMAGE files, as ImageNet is laid out"
            )
        classes = class_folders(split_dir)
        if not classes:
            raise UserError(f"{split_dir} has no class folders; expected {split}/CLASS_NAME/IMAGE files")
        empty = [c for c in classes if not _has_image(os.path.join(split_dir, c))]
        if empty:
            raise UserError(f"{split_dir} has class folders without images: {', '.join(empty[:5])}")


def _has_image(directory: str) -> bool:
    return any(
        f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(directory, followlinks=True) for f in files
    )


# -- CSV manifests ----------------------------------------------------------------------------------------------

PATH_COLUMNS = ("path", "filepath", "file", "filename", "image", "image_path", "img")
LABEL_COLUMNS = ("label", "class", "class_name", "target", "category", "y")


def manifest_path(cfg: DataConfig, split: str) -> str:
    given = cfg.train_manifest if split == "train" else cfg.val_manifest
    if given:
        return given
    if not cfg.path:
        raise UserError(f"no {split} manifest: pass --{split}-manifest FILE.csv or DATA holding {split}.csv")
    return os.path.join(cfg.path, formats.MANIFESTS.get(split, f"{split}.csv"))


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str


def read_manifest(path: str) -> list[ManifestRow]:
    """Rows of a `path,label` CSV (a header names the columns; other columns are ignored). Paths are
    relative to the manifest's folder unless absolute. Every malformed row is reported by line number,
    and what it echoes of a field is cut short (a field may be a megabyte long)."""
    if not os.path.isfile(path):
        raise UserError(f"manifest not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(_utf8_lines(f, path))
        try:
            header = [h.strip().lower() for h in next(reader, [])]
            path_col, label_col = _column(header, PATH_COLUMNS, 0), _column(header, LABEL_COLUMNS, 1)
            if path_col == label_col or len(header) < 2:
                raise UserError(f"{path}: the first line must name a path column and a label column, e.g. `path,label`")
            rows, problems = [], []
            for fields in reader:
                if not any(field.strip() for field in fields):
                    continue  # blank lines are not rows
                problem = _row_problem(fields, base, path_col, label_col, len(header))
                if problem:
                    problems.append(f"line {reader.line_num}: {problem}")
                else:
                    rows.append(ManifestRow(os.path.join(base, fields[path_col].strip()), fields[label_col].strip()))
        except csv.Error as exc:  # a field past csv's size limit, a NUL byte, a quote left open
            raise UserError(f"{path}: line {reader.line_num}: not a CSV row ({exc})") from exc
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{path}: {'; '.join(problems[:3])}{more}")
    if not rows:
        raise UserError(f"{path} lists no images")
    return rows


def _utf8_lines(lines: Iterator[str], path: str) -> Iterator[str]:
    """The file's lines, each checked to be UTF-8: the file is read with `surrogateescape`, so a byte that
    is not UTF-8 shows up in its own line, which can then be named."""
    for number, line in enumerate(lines, start=1):
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{path}: line {number} is not UTF-8 text; save the manifest as UTF-8") from None
        yield line


def _column(header: list[str], names: Sequence[str], fallback: int) -> int:
    return next((header.index(n) for n in names if n in header), fallback)


def _row_problem(fields: list[str], base: str, path_col: int, label_col: int, width: int) -> str | None:
    if len(fields) != width:
        return f"{len(fields)} fields where the header has {width}"
    if not fields[path_col].strip():
        return "empty path"
    label = fields[label_col].strip()
    if not label:
        return "empty label"
    if re.fullmatch(r"-[0-9]+", label):
        return f"negative label {clip(label)}"
    if _is_number(label) and (len(label.lstrip("0")) > 7 or int(label) >= shards.MAX_CLASSES):
        return f"label {clip(label)} is past {shards.MAX_CLASSES - 1:,}, the largest class number this tool accepts"
    if not os.path.isfile(os.path.join(base, fields[path_col].strip())):
        return f"no such file {clip(fields[path_col].strip())}"
    return None


def _is_number(label: str) -> bool:
    """Only ASCII digits: `str.isdigit` also takes "²", which `int` refuses."""
    return label.isascii() and label.isdigit()


def manifest_classes(rows: Sequence[ManifestRow]) -> list[str]:
    """Class names in a fixed order: sorted names, or for integer labels "0".."K-1" (so label k stays k;
    each label is below MAX_CLASSES, checked row by row)."""
    labels = {row.label for row in rows}
    if all(_is_number(label) for label in labels):
        return [str(i) for i in range(max(int(label) for label in labels) + 1)]
    return sorted(labels)


class ManifestDataset(Dataset):
    """The images a manifest lists, labelled by index into `classes`."""

    def __init__(self, rows: Sequence[ManifestRow], classes: Sequence[str], transform: Transform, split: str) -> None:
        index = {name: i for i, name in enumerate(classes)}
        _check_known({row.label for row in rows}, classes, f"the {split} manifest")
        self.samples = [(row.path, index[row.label]) for row in rows]
        self.classes, self.transform = list(classes), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(read_bytes(path)), label


# -- torchvision's datasets ----------------------------------------------------------------------------------


def open_torchvision(cfg: DataConfig, split: str, transform: Transform) -> Dataset:
    """A torchvision dataset from its local root; downloading only when asked (--download)."""
    assert cfg.dataset is not None
    entry = formats.lookup(cfg.dataset)
    root = cfg.path or "."
    kwargs = entry.train if split == "train" else entry.val
    try:
        return getattr(datasets, entry.cls)(root, download=cfg.download, transform=transform, **kwargs)
    except (RuntimeError, FileNotFoundError) as exc:
        hint = "" if cfg.download else ", or pass --download on a machine with internet"
        expected = entry.expected.replace("ROOT", root.rstrip("/"))
        raise UserError(f"--dataset {cfg.dataset}: not found under {root}; expected {expected}{hint}") from exc
    except OSError as exc:  # a download that could not connect
        raise UserError(
            f"--dataset {cfg.dataset}: download failed ({exc}); put {entry.expected.replace('ROOT', root)} there by hand"
        ) from exc
    except ImportError as exc:
        raise UserError(f"--dataset {cfg.dataset} needs the package {exc.name}: pip install {exc.name}") from exc


def torchvision_classes(dataset: Any) -> list[str]:
    classes = getattr(dataset, "classes", None)
    if classes:
        return [c if isinstance(c, str) else "/".join(c) for c in classes]  # Imagenette: tuples of synonyms
    labels = getattr(dataset, "labels", None)
    count = int(max(labels)) + 1 if labels is not None else 10  # SVHN: digits
    return [str(i) for i in range(count)]
