"""Samples that cannot be read: found in the loader workers, decided on in the training process.

A truncated JPEG or a zero-byte file must not kill epoch 37 with a traceback from a worker process.
Workers catch the failure and hand it on with the batch, naming the file; the training process then
stops with that name, or (with `--skip-bad-images`) warns once per file, trains on a substitute (the
next readable sample) and stops only past `--max-bad-images`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from ..core.errors import RunFailed, UserError, one_line
from ..core.text import printable
from .presets import Deferred, DeferredBatch

SUBSTITUTE_TRIES = 16


@dataclass(frozen=True)
class Unreadable:
    source: str  # the file, or the sample's place when there is no file
    reason: str
    replaced: bool  # a substitute took its place (--skip-bad-images)


class Guarded(Dataset):
    """A dataset whose samples come as (image, label, problems): a failure to read is caught and named;
    when skipping, the next readable sample stands in."""

    def __init__(self, dataset: Dataset, skip: bool) -> None:
        self.dataset, self.skip = dataset, skip

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, tuple[Unreadable, ...]]:
        problems = []
        for attempt in range(SUBSTITUTE_TRIES if self.skip else 1):
            current = (index + attempt) % len(self)
            try:
                image, label = self.dataset[current]
                return image, label, tuple(problems)
            except Exception as exc:  # any failure to read or decode: named, never a worker traceback
                problems.append(Unreadable(self._source(current), one_line(exc), self.skip))
        return None, -1, tuple(problems)

    def _source(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)  # (path, label) pairs of file-based datasets
        return str(samples[index][0]) if samples is not None else f"sample {index} of {type(self.dataset).__name__}"


def collate(batch: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """DataLoader's collation, plus two things it cannot do: keep deferred JPEGs as a list for the device
    to decode, and pass the problems met on the way as a third element (only when there are some)."""
    problems = [p for sample in batch if len(sample) == 3 for p in sample[2]]
    pairs = [(sample[0], sample[1]) for sample in batch]
    if any(image is None for image, _ in pairs):
        return None, None, problems
    if any(isinstance(image, Deferred) for image, _ in pairs):
        images, labels = DeferredBatch([image for image, _ in pairs]), torch.tensor([label for _, label in pairs])
    else:
        images, labels = default_collate(pairs)
    return (images, labels, problems) if problems else (images, labels)


@dataclass
class BadImages:
    """What the training process does with the problems a batch carries."""

    skip: bool = False
    limit: int = 100
    rank: int = 0
    count: int = 0
    warned: set[str] = field(default_factory=set)

    def unpack(self, batch: Sequence[Any]) -> tuple[Any, torch.Tensor]:
        if len(batch) == 2:
            return batch[0], batch[1]
        images, labels, problems = batch
        for problem in problems:
            self._note(problem)
        if images is None:  # every substitute failed too
            raise RunFailed(
                f"{len(problems)} images in a row could not be read on rank {self.rank}; the data looks damaged: "
                "run `imagenet-cli check-data DATA`"
            )
        return images, labels

    def _note(self, problem: Unreadable) -> None:
        """Stop, or warn once per file; the file's name and the reason are shown, never acted on by the
        terminal (a file may be named with escape sequences)."""
        source, reason = printable(problem.source), printable(problem.reason)
        if not problem.replaced:
            raise UserError(
                f"cannot read {source}: {reason}; fix or remove it, or pass --skip-bad-images "
                "(`imagenet-cli check-data DATA` lists every such file)"
            )
        self.count += 1
        if problem.source not in self.warned:
            self.warned.add(problem.source)
            print(f"warning: rank {self.rank}: skipped {source}: {reason}", file=sys.stderr, flush=True)
        if self.count > self.limit:
            raise RunFailed(
                f"more than --max-bad-images {self.limit} unreadable images on rank {self.rank} "
                f"({len(self.warned)} files); the data looks damaged: run `imagenet-cli check-data DATA`"
            )
