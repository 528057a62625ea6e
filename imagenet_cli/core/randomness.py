"""Seeds and random states: what makes a seeded run repeat exactly, even across a stop and a resume.

Two kinds of randomness matter. Data augmentation is made a pure function of (seed, epoch, sample), so it
does not depend on how many loader workers there are, whether they persist, or where a run resumed.
Everything else (dropout, anything a model draws) uses each process's global generators, whose states
go into the checkpoint per rank, as plain tensors and lists that `weights_only=True` accepts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (splitmix64 steps): cheap enough per sample."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (part & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture() -> dict[str, Any]:
    """This process's generator states as plain data."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's own GPU: the one it computes on
    return state


def restore(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # files of earlier versions held every visible GPU's state
        index = torch.cuda.current_device() if torch.cuda.is_available() else len(cuda)
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)  # another machine may show fewer GPUs, or only this process's


class PerSampleSeeded(torch.utils.data.Dataset):
    """Runs a dataset's transforms under a seed chosen per sample by the sampler, without disturbing the
    process's own generators (which dropout and friends use)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded(seed):
            return self.dataset[index]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's generator and torch's CPU generator seeded for one sample's transforms, then put back. Not
    `torch.manual_seed`: it also seeds (or, before they start, queues a seeding of) every accelerator's
    generators, formatting a stack trace each time, which cost 1.3 ms a sample, as much as decoding and
    cropping a small picture; and it would leave the GPU's generator of an in-process loader reseeded."""
    python_state, torch_state = random.getstate(), torch.default_generator.get_state()
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.default_generator.set_state(torch_state)
