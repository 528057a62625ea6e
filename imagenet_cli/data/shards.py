"""Sharded tar streams (the WebDataset layout) for clusters, where millions of small files on NFS are slow.

A shard is a plain tar file; a sample is the group of consecutive members that share a key
(`00001234.jpg`, `00001234.cls`). `make-shards` writes `train-NNNNNN.tar`, `val-NNNNNN.tar` and an index,
`shards.json`, with the class names and the samples per shard; its keys are the samples' positions in
the source dataset, so a sample gets the same augmentation seed as it would from the folders.

How an epoch is read: the shards are shuffled per epoch (when shuffling), dealt to ranks and to each
rank's loader workers, read sequentially, and shuffled within a buffer. Every rank takes the same number
of batches, `samples // world_size // batch`, cycling through its shards if they run short, so no rank
waits for another at the end of an epoch. Exactness: with `--seed` and the same ranks and workers, an
epoch and a mid-epoch resume see exactly the same samples in the same order; with other counts, a resumed
epoch continues with the right number of batches but not the same ones. A sample may be seen twice or not
at all in one epoch when shards are dealt unevenly; validation reads every sample exactly once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import random
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..core import formats
from ..core.context import DistContext
from ..core.errors import UserError, one_line
from ..core.formats import url_scheme
from ..core.randomness import mix_seed, seeded
from ..core.text import clip
from . import remote
from .presets import Transform, check_encoded_size
from .unreadable import SUBSTITUTE_TRIES, Unreadable

INDEX_FORMAT = "imagenet-cli shards 1"
DAMAGED = "/damaged"  # a field no member can give (its name would hold a slash): see samples_or_damage
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")
# Integer labels number the classes 0..K-1 (shards without an index, CSV manifests with numbers), so one
# label decides how many classes there are. Beyond a million (ImageNet-21k has 21,841; the largest public
# landmark sets about 200,000) a label is a typo or hostile, and its class list alone would fill memory.
MAX_CLASSES = 1_000_000
SMALLEST_SAMPLE = 1024  # bytes: a sample is at least one tar member, a 512-byte header and a data block
Numbered = tuple[int, dict[str, bytes]]  # a sample's key (its position in the source dataset) and its members


@dataclass(frozen=True)
class Shard:
    path: str
    samples: int
    size: int | None = None  # bytes, as the index's reading found them (a URL's: not asked again at each read)


@dataclass(frozen=True)
class ShardIndex:
    classes: list[str]
    splits: dict[str, list[Shard]]
    max_side: int | None = None  # `make-shards --max-side`: no picture is larger on its longer side


def read_index(root: str) -> ShardIndex:
    """`shards.json` when present; otherwise the tar files are scanned (their headers and labels). A URL is
    read through its index only: an object store or a web server cannot be listed alike."""
    remote_root = url_scheme(root) is not None
    index_path = remote.join(root, formats.SHARD_INDEX) if remote_root else os.path.join(root, formats.SHARD_INDEX)
    if not remote_root and not os.path.isfile(index_path):
        return _scan(root)
    shown_path = formats.shown(index_path)
    try:
        raw = json.loads(_index_text(index_path) if remote_root else Path(index_path).read_bytes())
        entries = [
            (split, _shard_path(root, entry), entry) for split, listed in raw["splits"].items() for entry in listed
        ]
        classes = list(raw["classes"])
        sizes = _sizes([path for _, path, _ in entries], remote_root)
        splits: dict[str, list[Shard]] = {split: [] for split in raw["splits"]}
        for (split, path, entry), size in zip(entries, sizes, strict=True):
            splits[split].append(_indexed_shard(path, int(entry["samples"]), size))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{shown_path} is not a shard index written by `imagenet-cli make-shards` ({exc})") from exc
    if "val" not in splits:  # every command reads val; a missing train split is named by the ones that train
        raise UserError(f"{shown_path} has no val split (it lists {clip(', '.join(splits)) or 'none'})")
    max_side = (raw.get("reencoded") or {}).get("max_side")
    return ShardIndex(classes, splits, int(max_side) if isinstance(max_side, int) else None)


def _index_text(url: str) -> bytes:
    try:
        return remote.read_small(url)
    except UserError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise UserError(
                f"{formats.shown(url)} not found: shards at a URL are read through the index `make-shards` writes"
            ) from exc
        raise


def _shard_path(root: str, entry: dict[str, Any]) -> str:
    """A plain file name beside the index: an index names no other folder, nor another host."""
    name = str(entry["file"])
    if os.path.basename(name) != name or name in ("", ".", "..") or url_scheme(name):
        raise ValueError(f"shard file {clip(name)!r} is not a file name beside the index")
    return remote.join(root, name) if url_scheme(root) else os.path.join(root, name)


def _sizes(paths: list[str], remote_root: bool) -> list[int | None]:
    """Each shard's size in bytes, None when it is missing (named when it is read). A URL's are asked for
    16 at a time: one round trip each."""
    if not remote_root:
        return [os.path.getsize(path) if os.path.isfile(path) else None for path in paths]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(remote.size_or_none, paths))


def _indexed_shard(path: str, samples: int, size: int | None) -> Shard:
    """An index entry, believed only as far as the file bears it out: no more samples than its size can hold
    (a count of 10^12 would make an epoch that never ends)."""
    most = size // SMALLEST_SAMPLE if size is not None else samples
    if not 0 <= samples <= max(most, 1):
        raise ValueError(f"{clip(os.path.basename(path))} is said to hold {samples} samples, more than its size can")
    return Shard(path, samples, size)


def _scan(root: str) -> ShardIndex:
    """Shards without an index: `train*`/`val*` by name, labels from their `.cls` members."""
    if not os.path.isdir(root):
        raise UserError(f"data directory not found: {root}")
    splits: dict[str, list[Shard]] = {"train": [], "val": []}
    top = -1
    for name in sorted(os.listdir(root)):
        split = next((s for s in splits if name.startswith(s) and name.endswith(".tar")), None)
        if split is None:
            continue
        path, count = os.path.join(root, name), 0
        for key, fields in _grouped(_members(path)):
            count += 1
            try:
                top = max(top, label_of(fields))
            except ValueError as exc:
                raise UserError(f"shard {path}, sample {clip(key)}: {exc}") from exc
        splits[split].append(Shard(path, count))
    if not splits["val"]:
        raise UserError(f"{root} has no val*.tar shards (nor a {formats.SHARD_INDEX}); see `imagenet-cli make-shards`")
    return ShardIndex([str(i) for i in range(top + 1)], splits)


class ShardStream(IterableDataset):
    """One split's samples, streamed from its shards. `place` (rank, world size, batch, seed) is set by the
    loader; `set_position` before each epoch's iterator (workers are started anew each epoch)."""

    def __init__(
        self,
        shards: Sequence[Shard],
        transform: Transform,
        classes: Sequence[str] = (),
        training: bool = True,
        shuffle_buffer: int = 0,
    ) -> None:
        self.shards, self.transform, self.training = list(shards), transform, training
        self.shuffle_buffer, self.shuffle = shuffle_buffer, training
        self.classes = list(classes)
        self.rank, self.world_size, self.batch_size, self.seed = 0, 1, 1, None
        self.epoch, self.skip, self.skip_bad = 0, 0, False

    def place(self, ctx: DistContext, batch_size: int, seed: int | None, shuffle: bool, skip_bad: bool) -> None:
        self.rank, self.world_size, self.batch_size, self.seed = ctx.rank, ctx.world_size, batch_size, seed
        self.shuffle, self.skip_bad = shuffle and self.training, skip_bad

    def set_position(self, epoch: int, samples_done: int = 0) -> None:
        self.epoch, self.skip = epoch, samples_done

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)

    def batches_per_rank(self) -> int:
        return self.total // self.world_size // self.batch_size

    def __len__(self) -> int:
        """This rank's samples in an epoch: whole batches when training, all of its share in validation."""
        if self.training:
            return self.batches_per_rank() * self.batch_size
        if len(self.shards) >= self.world_size:
            return sum(s.samples for s in self.shards[self.rank :: self.world_size])
        return len(range(self.rank, self.total, self.world_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slots = self.world_size * workers
        if not self.training:
            yield from self._readable(self._slots_samples(self.rank * workers + worker, slots))
            return
        # Batch k of this rank's epoch is logical worker k % workers's. The loader collects batches from its
        # workers round-robin starting with worker 0, so after `done` batches worker 0 plays `done % workers`.
        done = self.skip // self.batch_size
        worker = (worker + done) % workers
        slot = self.rank * workers + worker
        batches = self.batches_per_rank()
        mine = batches // workers + (worker < batches % workers)
        skipped = -(-(done - worker) // workers) if done > worker else 0
        stream = self._shuffled(self._passes(slot, slots), slot, self._pass_size(slot, slots))
        yield from itertools.islice(
            self._readable(itertools.islice(stream, skipped * self.batch_size, None)),
            (mine - skipped) * self.batch_size,
        )

    def _readable(self, samples: Iterator[Numbered]) -> Iterator[tuple[Any, int, tuple]]:
        """Decoded samples, each with the problems met since the last one, for the training process to report
        by name. With --skip-bad-images a successor takes an unreadable sample's place, but after
        SUBSTITUTE_TRIES in a row none does, so a worker never skips forever through damaged shards."""
        problems: list[Unreadable] = []
        for key, fields in samples:
            try:
                image, label = self._decoded(key, fields)
            except Exception as exc:
                problems.append(Unreadable(f"sample {key} of the shards", one_line(exc), self.skip_bad))
                if self.skip_bad and len(problems) < SUBSTITUTE_TRIES:
                    continue
                image, label = None, -1
            yield image, label, tuple(problems)
            problems = []

    def _order(self) -> list[Shard]:
        """This epoch's shards in the order they are dealt: the same on every rank, seeded or not, so that
        ranks deal them without talking."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(mix_seed(self.seed if self.seed is not None else 0, self.epoch, 17)).shuffle(order)
        return order

    def _pass_size(self, slot: int, slots: int) -> int:
        """How many samples one pass of `_slots_samples` yields, as the index counts them."""
        order = self._order()
        if len(order) >= slots:
            return sum(shard.samples for shard in order[slot::slots])
        return len(range(slot, sum(shard.samples for shard in order), slots))

    def _slots_samples(self, slot: int, slots: int) -> Iterator[Numbered]:
        """Whole shards when there are enough to deal, else every `slots`-th sample of them all."""
        order = self._order()
        if len(order) >= slots:
            for shard in order[slot::slots]:
                yield from _numbered(shard)
            return
        yield from itertools.islice((sample for shard in order for sample in _numbered(shard)), slot, None, slots)

    def _passes(self, slot: int, slots: int) -> Iterator[Iterator[Numbered]]:
        """Passes over the slot's samples, one after another, so a rank dealt fewer than the epoch's batches
        still has enough."""
        while True:
            samples = self._slots_samples(slot, slots)
            first = next(samples, None)
            if first is None:
                return
            yield itertools.chain([first], samples)

    def _shuffled(self, passes: Iterator[Iterator[Numbered]], slot: int, pass_size: int) -> Iterator[Numbered]:
        """Through a buffer of --shuffle-buffer samples, or of one pass of the slot's samples when that is
        fewer: a larger one would fill with the slot's samples read over and over (each shard opened again
        for every pass: a round trip each from an object store) and deal copies of them."""
        size = min(self.shuffle_buffer, pass_size)
        if not self.shuffle or size <= 1:
            yield from itertools.chain.from_iterable(passes)
            return
        seed = self.seed if self.seed is not None else random.getrandbits(62)  # loader workers seed `random`
        rng = random.Random(mix_seed(seed, self.epoch, slot))
        for samples in passes:  # each pass emptied before the next: a buffer of a whole pass is a permutation
            buffer: list[Numbered] = []
            for sample in samples:
                if len(buffer) < size:
                    buffer.append(sample)
                    continue
                i = rng.randrange(len(buffer))
                buffer[i], sample = sample, buffer[i]
                yield sample
            rng.shuffle(buffer)
            yield from buffer

    def _decoded(self, key: int, fields: dict[str, bytes]) -> tuple[torch.Tensor, int]:
        """The preset applied under the sample's own seed when the run is seeded, as for folders."""
        if DAMAGED in fields:
            raise UserError(fields[DAMAGED].decode())
        suffix = next((s for s in IMAGE_SUFFIXES if s in fields), None)
        if suffix is None:
            raise ValueError(f"no image among its members ({clip(', '.join(fields))})")
        encoded = torch.frombuffer(bytearray(fields[suffix]), dtype=torch.uint8)
        label = label_of(fields, len(self.classes) or None)
        if self.seed is None:
            return self.transform(encoded), label
        with seeded(mix_seed(self.seed, self.epoch, key)):
            return self.transform(encoded), label


def _numbered(shard: Shard) -> Iterator[Numbered]:
    """(position key, fields) of a shard's samples: our keys are sample positions; others are numbered
    from the shard's name and the order within it."""
    base = mix_seed(zlib.crc32(os.path.basename(shard.path).encode()))
    for position, (key, fields) in enumerate(samples_or_damage(shard.path, shard.size)):
        yield (int(key) if key.isdigit() else base + position), fields


def samples_or_damage(path: str, size: int | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A shard's samples, then, when it turns out damaged part-way (a bad header, a member claiming more than
    the file holds), a pseudo-sample keyed `damaged` whose DAMAGED field says why: a loader worker or
    check-data reports it like any unreadable sample and goes on, where an exception would end the worker."""
    damage: list[UserError] = []

    def members() -> Iterator[tuple[str, bytes]]:
        try:
            yield from _members(path, size)
        except UserError as exc:  # the samples before it are whole and go on
            damage.append(exc)

    yield from _grouped(members())
    if damage:
        yield "damaged", {DAMAGED: str(damage[0]).encode()}


def _grouped(members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members with the same key (the file name up to its first dot) as one sample."""
    named = ((*os.path.basename(name).partition("."), data) for name, data in members)
    for key, group in itertools.groupby(named, key=lambda member: member[0]):
        yield key, {suffix.lower(): data for _, _, suffix, data in group}


def _members(path: str, size: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of a tar file's regular files, in order. The headers are parsed here, not by `tarfile`,
    whose general reader costs about ten times more per member (a tenth of a millisecond per sample);
    GNU long names and pax paths are understood, other entries skipped, and a damaged header refused."""
    long_name = None
    try:
        with _opened(path, size) as (f, file_size):
            while len(header := f.read(512)) == 512 and header.strip(b"\0"):
                kind, name = header[156:157], long_name or _header_name(header)
                size = _member_size(header, path, name, file_size - f.tell())
                if kind not in (b"L", b"x", b"0", b"\0", b"7"):  # directories, links, devices: nothing to read
                    f.seek(size + -size % 512, os.SEEK_CUR)
                    continue
                data = f.read(size)
                f.read(-size % 512)
                if len(data) < size:
                    raise UserError(f"shard {formats.shown(path)} is truncated")
                if kind in (b"L", b"x"):  # the next member's name: GNU long name, or a pax path record
                    long_name = _text(data.rstrip(b"\0")) if kind == b"L" else _pax_path(data) or long_name
                else:
                    yield name, data
                    long_name = None
    except OSError as exc:
        raise UserError(f"cannot read shard {path}: {exc}") from exc


@contextlib.contextmanager
def _opened(path: str, size: int | None) -> Iterator[tuple[Any, int]]:
    """A shard and its size: a local file, or a URL's stream (retried from where it failed), whose size is
    asked for only when the index's reading did not learn it."""
    if url_scheme(path):
        with remote.RemoteFile(path, size) as stream:
            yield stream, stream.size
        return
    with open(path, "rb", buffering=1 << 20) as f:
        yield f, os.fstat(f.fileno()).st_size


def _member_size(header: bytes, path: str, name: str, remaining: int) -> int:
    """The size a member's header claims, refused before it is read when the header is damaged, or claims more
    than the shard holds (a damaged or hostile header asking for a terabyte) or than any picture this tool decodes."""
    try:
        stored = header[148:156].replace(b"\0", b" ").strip()
        if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):  # the checksum's 8 spaces
            raise ValueError("checksum")
        if header[124] & 0x80:  # GNU base-256 for sizes past 8 GB
            size = int.from_bytes(header[125:136], "big")
        else:
            size = int(header[124:136].replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:  # a checksum that does not add up, or fields that are not octal numbers
        raise UserError(f"shard {path} has a damaged tar header") from None
    if size > remaining:
        raise UserError(
            f"shard {path}: member {clip(name)} claims {size:,} bytes but the file ends {remaining:,} bytes "
            "later; the shard is truncated or damaged"
        )
    try:
        check_encoded_size(size, "the member")
    except ValueError as exc:
        raise UserError(f"shard {path}: member {clip(name)}: {exc}") from None
    return size


def _text(raw: bytes) -> str:
    """A name from a header: UTF-8 as tar writes it, any other byte shown as a replacement character."""
    return raw.decode("utf-8", errors="replace")


def _header_name(header: bytes) -> str:
    name = _text(header[:100].rstrip(b"\0"))
    prefix = _text(header[345:500].rstrip(b"\0")) if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _pax_path(records: bytes) -> str | None:
    for line in records.decode(errors="replace").splitlines():
        _length, _, entry = line.partition(" ")
        if entry.startswith("path="):
            return entry[5:]
    return None


def label_of(fields: dict[str, bytes], classes: int | None = None) -> int:
    """A sample's `.cls` label, checked: a class number from 0 to `classes` - 1 when the index says how many
    there are, else below MAX_CLASSES. ValueError, saying what is wrong with it, otherwise."""
    raw = fields.get("cls")
    if raw is None:
        raise ValueError("it has no .cls label")
    text = _text(raw[:40]).strip()
    if len(raw) > 40 or not re.fullmatch(r"-?[0-9]+", text):
        raise ValueError(f"its .cls label {clip(text)!r} is not a whole number")
    label, bound = int(text), classes if classes is not None else MAX_CLASSES
    if not 0 <= label < bound:
        raise ValueError(f"its .cls label {label} is not a class number (0 to {bound - 1:,})")
    return label
