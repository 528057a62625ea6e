"""Synthetic, learnable images made where the model runs, so `--fake-data` measures the model, not the CPU.

Each class has its own colour under per-pixel noise, so a short run shows loss falling and accuracy
rising. Image `i` is a pure function of (seed, i), computed by integer hashing that gives the same bytes
on any device, in any batch, on any rank: a resumed or re-sharded run sees exactly the same data. The
noise comes from a bank of patterns made once per device, so a batch costs a gather and an add.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

_MASK31 = 0x7FFFFFFF  # keeps every product below 2**62: int64 arithmetic never overflows
NOISE_PATTERNS = 61  # prime: the pattern an image gets is independent of its class


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash, applied elementwise (int64 tensors)."""
    x = (x ^ (x >> 15)) * 0x2C1B3C6D & _MASK31
    x = (x ^ (x >> 12)) * 0x297A2D39 & _MASK31
    return x ^ (x >> 15)


class FakeImages(Dataset):
    """`num_images` images of `num_classes` classes, as uint8 (3, size, size) with integer labels."""

    def __init__(self, num_images: int, num_classes: int, image_size: int, seed: int) -> None:
        self.num_images, self.num_classes, self.image_size, self.seed = num_images, num_classes, image_size, seed
        palette = torch.Generator().manual_seed(1234 + num_classes)
        self.colours = torch.randint(0, 256, (num_classes, 3, 1, 1), generator=palette)
        self.classes = [f"class_{i}" for i in range(num_classes)]
        self._banks: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.batch(torch.tensor([index]))
        return images[0], int(labels[0])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of `indices`, made on their device in a handful of elementwise kernels."""
        keys = _mix(_mix(indices.long() & _MASK31) ^ _mix(torch.full_like(indices, self.seed & _MASK31)))
        labels = keys % self.num_classes
        colours, noise = self._bank(indices.device)
        images = (colours[labels] + noise[(keys // self.num_classes) % NOISE_PATTERNS]) // 2
        return images.to(torch.uint8), labels

    def _bank(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Class colours and noise patterns on `device`, hashed from the seed (the same bytes anywhere), at
        the current image size (progressive resizing changes it between epochs)."""
        size = self.image_size
        if (device, size) not in self._banks:
            salt = self.seed * 0x9E3779B1 & _MASK31
            noise = torch.empty(NOISE_PATTERNS, 3, size, size, dtype=torch.int16, device=device)
            for pattern in range(NOISE_PATTERNS):  # one at a time: the int64 hashing of all would take GBs
                first = pattern * 3 * size * size
                pixels = torch.arange(first, first + 3 * size * size, device=device).view(3, size, size)
                noise[pattern] = _mix(pixels ^ salt) & 255
            self._banks = {key: bank for key, bank in self._banks.items() if key[0] != device}  # one size held
            self._banks[device, size] = (self.colours.to(device, torch.int16), noise)
        return self._banks[device, size]


class DeviceBatches:
    """A loader for data made on the device: the sampler's indices, batched, turned into images there.
    It has what the engine uses of a DataLoader (`sampler`, `batch_size`, `len`, iteration)."""

    def __init__(
        self, dataset: FakeImages, sampler: Sampler, batch_size: int, device: torch.device, drop_last: bool
    ) -> None:
        self.dataset, self.sampler, self.batch_size, self.device = dataset, sampler, batch_size, device
        self.drop_last = drop_last

    def __len__(self) -> int:
        return len(BatchSampler(self.sampler, self.batch_size, self.drop_last))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for keys in BatchSampler(self.sampler, self.batch_size, self.drop_last):
            # A seeded training sampler pairs each index with an augmentation seed: fake data needs none.
            indices = [k[0] if isinstance(k, tuple) else k for k in keys]
            yield self.dataset.batch(torch.tensor(indices, device=self.device))
