"""`make-shards`: a dataset of class folders or CSV manifests packed into tar shards and their index, in a
folder (each file written to a temporary name and renamed when whole) or at a URL (each file uploaded whole),
the pictures re-encoded at a bounded size when asked."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import multiprocessing
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import torch
from PIL import Image

from ..config import DataConfig
from ..core import formats
from ..core.errors import UserError, one_line
from ..core.formats import url_scheme
from . import remote
from .presets import dct_reduction, decode_rgb, open_sample, read_bytes, within_limit
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


@dataclass(frozen=True)
class Reencoding:
    """`--max-side N --quality Q`: pictures whose longer side is over N pixels are shrunk to N (aspect kept) and
    saved as JPEG at quality Q, once, so that no epoch decodes pixels that its crop throws away; smaller
    pictures keep their bytes (never upscaled, never re-compressed)."""

    max_side: int
    quality: int = 90

    def __post_init__(self) -> None:
        if not 16 <= self.max_side <= 65_535:
            raise UserError(f"--max-side must be from 16 to 65535 pixels, got {self.max_side}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality must be from 1 to 100, got {self.quality}")

    def apply(self, encoded: torch.Tensor, suffix: str) -> tuple[bytes, str]:
        """(bytes, suffix) to store: shrunk as the training decoder sees the picture (its colour handling,
        its pixel limits), or the file's own bytes when it is small enough."""
        tensor, header = open_sample(encoded)
        if max(header.size) <= self.max_side:
            return encoded.numpy().tobytes(), suffix
        scale = self.max_side / max(header.size)
        size = (max(1, round(header.width * scale)), max(1, round(header.height * scale)))
        reduce = within_limit(header, dct_reduction(header, max(header.size), self.max_side))
        pixels = decode_rgb(tensor, header, reduce).permute(1, 2, 0).numpy()
        picture = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=self.quality)
        return out.getvalue(), "jpg"


Sample = tuple[int, str, int]  # position in the split, source file, label
Packed = tuple[str, bytes]  # a tar member's name and bytes


def make_shards(
    samples_by_split: dict[str, list[tuple[str, int]]],
    classes: list[str],
    out: str,
    shard_size: int,
    reencoding: Reencoding | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Each split's (path, label) samples, in order, in shards of about `shard_size` bytes, then the index
    (returned). `out` is a folder or a URL. A failure (a full disk, an unreadable source, a store that
    refuses) leaves no temporary file and is one line naming the file; temporaries of an earlier run killed
    outright are removed first."""
    target = Target(out)
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": classes, "splits": {}}
    if reencoding is not None:
        index["reencoded"] = {"max_side": reencoding.max_side, "quality": reencoding.quality}
    with _packing_pool(workers) as pool:
        for split, samples in samples_by_split.items():
            numbered = [(position, path, label) for position, (path, label) in enumerate(samples)]
            pack = functools.partial(_pack, reencoding=reencoding)
            packed = pool.imap(pack, numbered, chunksize=8) if pool else map(pack, numbered)
            index["splits"][split] = _write_split(target, split, packed, shard_size)
    with target.writing(formats.SHARD_INDEX) as f:
        f.write(json.dumps(index, indent=1).encode())
    return index


@contextlib.contextmanager
def _packing_pool(workers: int) -> Iterator[Any]:
    """Processes that read (and re-encode) the pictures, in order: re-encoding ImageNet is hours of one core."""
    if workers <= 0:
        yield None
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield pool


def _write_split(target: Target, split: str, packed: Iterator[list[Packed]], shard_size: int) -> list[dict[str, Any]]:
    """Samples into `split-NNNNNN.tar` files, a new one started once the current one reaches `shard_size`."""
    written: list[dict[str, Any]] = []
    pending = next(packed, None)
    while pending is not None:
        name, count = f"{split}-{len(written):06d}.tar", 0
        with target.writing(name) as f:
            with tarfile.open(fileobj=f, mode="w") as tar:
                while pending is not None and (count == 0 or f.tell() < shard_size):
                    for member, data in pending:
                        info = tarfile.TarInfo(member)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    count, pending = count + 1, next(packed, None)
            size = f.tell()
        written.append({"file": name, "samples": count, "bytes": size})
    return written


def _pack(sample: Sample, reencoding: Reencoding | None) -> list[Packed]:
    """A sample's two members: its picture (re-encoded when asked) and its label."""
    position, path, label = sample
    suffix = os.path.splitext(path)[1].lower().lstrip(".") or "jpg"
    try:
        encoded = read_bytes(path)
        image, suffix = reencoding.apply(encoded, suffix) if reencoding else (encoded.numpy().tobytes(), suffix)
    except (OSError, ValueError) as exc:  # a UserError, so it is not mistaken for a failure to write
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise UserError(f"cannot pack {path}: {reason}") from exc
    return [(f"{position:08d}.{suffix}", image), (f"{position:08d}.cls", str(label).encode())]


class Target:
    """Where finished files go: a folder (written as `NAME.tmp` beside, renamed when whole) or a URL (written
    to a local temporary file, then uploaded whole: an object appears only once complete)."""

    def __init__(self, out: str) -> None:
        self.out, self.scheme = out, url_scheme(out)
        if self.scheme in ("http", "https"):
            raise UserError(
                f"make-shards cannot write to {self.scheme}:// URLs: write them to a folder or an object store "
                "(s3://, gs://...), and serve that"
            )
        if self.scheme is None:
            self._clean_folder()

    def _clean_folder(self) -> None:
        try:
            os.makedirs(self.out, exist_ok=True)
            for entry in os.scandir(self.out):
                if OWN_TEMPORARIES.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    os.remove(entry.path)
        except OSError as exc:
            raise UserError(f"cannot write shards into {self.out}: {exc.strerror or one_line(exc)}") from exc

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[IO[bytes]]:
        if self.scheme is None:
            path = os.path.join(self.out, name)
            with _whole(path, path + ".tmp") as f:
                yield f
            return
        url = remote.join(self.out, name)
        with tempfile.TemporaryDirectory(prefix="imagenet-cli-shard-") as scratch:
            local = os.path.join(scratch, name)
            with _whole(url, local) as f:
                yield f
            fs, path = remote.filesystem(url)
            remote.retried(url, lambda: fs.put_file(local, path))


@contextlib.contextmanager
def _whole(path: str, tmp: str) -> Iterator[IO[bytes]]:
    """A file written as `tmp`, renamed to `path` once whole (when both are local); on any failure the
    temporary file is removed and an OSError becomes one line naming `path`."""
    try:
        with open(tmp, "wb") as f:
            yield f
        if url_scheme(path) is None:
            os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {formats.shown(path)}: {exc.strerror or one_line(exc)}") from exc
        raise


def make_shards_from(
    cfg: DataConfig, out: str, shard_size: str, reencoding: Reencoding | None = None, workers: int = 0
) -> dict[str, Any]:
    """Pack the dataset `cfg` describes (class folders or CSV manifests) into `out`; returns the index."""
    from . import sources

    size = parse_size(shard_size)
    if sources.data_format(cfg) not in ("imagefolder", "csv"):
        raise UserError("make-shards reads class folders (train/, val/) or CSV manifests (train.csv, val.csv)")
    sources.check(cfg, ("train", "val"))
    splits = sources.open_splits(cfg, with_train=True, class_names=None)
    assert splits.train is not None
    samples = {"train": list(splits.train.samples), "val": list(splits.val.samples)}  # type: ignore[attr-defined]
    return make_shards(samples, splits.class_names, out, size, reencoding, workers)
