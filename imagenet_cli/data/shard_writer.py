"""`make-shards`: a dataset of class folders or CSV manifests packed into tar shards and their index,
each file written to a temporary name and renamed when whole."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..config import DataConfig
from ..core import formats
from ..core.errors import UserError, one_line
from .presets import read_bytes
from .shards import INDEX_FORMAT

# Our own temporary names (`train-000003.tar.tmp`, `shards.json.tmp`): what an interrupted make-shards
# leaves behind, removed by the next one. Nothing else in the folder is touched.
OWN_TEMPORARIES = re.compile(r"(?:train|val)-\d{6}\.tar\.tmp|" + re.escape(formats.SHARD_INDEX) + r"\.tmp")


def parse_size(text: str) -> int:
    """`1GB`, `500MB`, `64KiB`, `1000000` to bytes (decimal units, and binary ones with an i)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not match:
        raise UserError(f"--shard-size: cannot read {text!r}; write e.g. 1GB, 500MB or a number of bytes")
    number, unit, binary = match.groups()
    power = " kmgt".index(unit or " ")
    size = int(float(number) * (1024 if binary else 1000) ** power)
    if size < 1:
        raise UserError("--shard-size must be positive")
    return size


def make_shards(
    samples_by_split: dict[str, list[tuple[str, int]]], classes: list[str], out: str, shard_size: int
) -> dict[str, Any]:
    """Each split's (path, label) samples, in order, in shards of about `shard_size` bytes, then the index
    (returned). A failure (a full disk, an unreadable source) leaves no temporary file and is one line
    naming the file; temporaries of an earlier run killed outright are removed first."""
    try:
        os.makedirs(out, exist_ok=True)
        for entry in os.scandir(out):
            if OWN_TEMPORARIES.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.remove(entry.path)
    except OSError as exc:
        raise UserError(f"cannot write shards into {out}: {exc.strerror or one_line(exc)}") from exc
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": classes, "splits": {}}
    for split, samples in samples_by_split.items():
        written = index["splits"][split] = []
        for number, chunk in enumerate(_chunks(samples, shard_size)):
            name = f"{split}-{number:06d}.tar"
            _write_whole(os.path.join(out, name), lambda f, chunk=chunk: _write_shard(f, chunk))
            written.append({"file": name, "samples": len(chunk), "bytes": os.path.getsize(os.path.join(out, name))})
    _write_whole(os.path.join(out, formats.SHARD_INDEX), lambda f: f.write(json.dumps(index, indent=1).encode()))
    return index


def _write_whole(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """`write` into `path + ".tmp"`, renamed to `path` once whole; on any failure the temporary file is
    removed and an OSError becomes one line naming `path`."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or one_line(exc)}") from exc
        raise


def _write_shard(f: IO[bytes], chunk: list[tuple[int, str, int]]) -> None:
    with tarfile.open(fileobj=f, mode="w") as tar:
        for position, path, label in chunk:
            suffix = os.path.splitext(path)[1].lower().lstrip(".") or "jpg"
            try:
                image = read_bytes(path).numpy().tobytes()
            except (OSError, ValueError) as exc:  # a UserError, so it is not mistaken for a failure to write
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
                raise UserError(f"cannot pack {path}: {reason}") from exc
            for name, data in ((f"{position:08d}.{suffix}", image), (f"{position:08d}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _chunks(samples: list[tuple[str, int]], shard_size: int) -> Iterator[list[tuple[int, str, int]]]:
    """Consecutive samples, numbered by position, in groups of about `shard_size` bytes."""
    chunk: list[tuple[int, str, int]] = []
    size = 0
    for position, (path, label) in enumerate(samples):
        if chunk and size >= shard_size:
            yield chunk
            chunk, size = [], 0
        chunk.append((position, path, label))
        size += os.path.getsize(path) + 1536  # with the two members' tar headers
    if chunk:
        yield chunk


def make_shards_from(cfg: DataConfig, out: str, shard_size: str) -> dict[str, Any]:
    """Pack the dataset `cfg` describes (class folders or CSV manifests) into `out`; returns the index."""
    from . import sources

    size = parse_size(shard_size)
    if sources.data_format(cfg) not in ("imagefolder", "csv"):
        raise UserError("make-shards reads class folders (train/, val/) or CSV manifests (train.csv, val.csv)")
    sources.check(cfg, ("train", "val"))
    splits = sources.open_splits(cfg, with_train=True, class_names=None)
    assert splits.train is not None
    samples = {"train": list(splits.train.samples), "val": list(splits.val.samples)}  # type: ignore[attr-defined]
    return make_shards(samples, splits.class_names, out, size)
