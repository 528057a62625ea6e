"""Photograph-like pictures for benchmarks and tests: smooth colours, texture and grain, so JPEG files
decode like real photos (a flat or noise-only picture compresses and decodes nothing like one)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageFilter

IMAGENET_LIKE = (500, 375)  # ImageNet's most common size; its JPEGs are about quality 90


def write_imagenet_like(root: str, count: int, classes: int = 4, seed: int = 0, split: str = "train") -> str:
    """`count` JPEGs of ImageNet's usual size and quality under `root/SPLIT/CLASS/`; returns SPLIT/."""
    rng = np.random.default_rng(seed)
    folders = os.path.join(root, split)
    for i in range(count):
        folder = os.path.join(folders, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        photo_like(rng, *IMAGENET_LIKE).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return folders


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields, texture and grain: compresses and decodes like a photograph, not like noise."""
    base = _upsampled(rng.integers(0, 256, (6, 8, 3)), width, height)
    texture = _upsampled(rng.normal(128, 40, (max(1, height // 4), max(1, width // 4), 3)), width, height) - 128
    grain = rng.normal(0, 6, (height, width, 1))
    pixels = np.clip(base + texture + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.6))


def _upsampled(values: np.ndarray, width: int, height: int) -> np.ndarray:
    small = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    return np.asarray(small.resize((width, height), Image.BICUBIC)).astype(np.float32)
