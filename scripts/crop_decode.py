"""Decoding only what the training crop needs: images/s of the training preset per CPU core, each way against
today's in the same run, in turns (medians of the rounds), on photograph-like JPEGs of ImageNet's usual
500x375 and of 1600x1200, at quality 90:

- today: the chain's decoder (TorchCodec, else PIL) at full size, PIL's DCT reduction above a megapixel;
- simplejpeg: the `decode` extra's JPEG decoder, straight to channels-last at the same reductions (what the
  tool uses when it is installed; skipped without it);
- region: libjpeg-turbo 3's own region decoding (tj3SetCroppingRegion: the IDCT and colour conversion of
  the crop's rows and iMCU columns only) at the same reductions, through a ctypes prototype below. No
  maintained Python binding exposes it and Debian 12 and 13 ship libjpeg-turbo 2.1, so it runs only with
  a libturbojpeg 3 found on the system or named with --libturbojpeg; the tool does not use it;
- reference: PIL decoding, RandomResizedCrop, flip, ToTensor and Normalize (the reference script's), for scale.

Every way draws the same crop boxes (the same seed per pass); each line gives the mean absolute difference
of its crops to today's (on 0-255) and whether every crop has today's shape. The pictures are held in
memory, so the figures are decoding, cropping and resizing, without the file reads. Run from the checkout:

    .venv/bin/python scripts/crop_decode.py [--images 64] [--rounds 5] [--size 224] [--libturbojpeg PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import io
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagenet_cli.data import decoders
from imagenet_cli.data.presets import TrainPreset, open_sample, within_limit
from imagenet_cli.tools.benchmark import reference_train_transform
from imagenet_cli.tools.pictures import photo_like

SIZES = ((500, 375), (1600, 1200))
Way = Callable[[torch.Tensor], torch.Tensor]


class _Scaling(ctypes.Structure):
    _fields_ = [("num", ctypes.c_int), ("denom", ctypes.c_int)]


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class RegionDecoder:
    """The training preset with libjpeg-turbo 3 decoding only the crop's region: rows outside it are skipped
    after entropy decoding, columns outside the iMCUs it touches are never transformed. A measuring prototype."""

    DECOMPRESS, SUBSAMP, RGB = 1, 4, 0  # TJINIT_DECOMPRESS, TJPARAM_SUBSAMP, TJPF_RGB
    MCU_WIDTH = (8, 16, 16, 8, 8, 32, 8)  # tjMCUWidth, by subsampling

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.tj3Init.restype, lib.tj3Init.argtypes = ctypes.c_void_p, [ctypes.c_int]
        lib.tj3DecompressHeader.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.tj3Get.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.tj3SetScalingFactor.argtypes = [ctypes.c_void_p, _Scaling]
        lib.tj3SetCroppingRegion.argtypes = [ctypes.c_void_p, _Region]
        lib.tj3Decompress8.argtypes = [ctypes.c_void_p] * 2 + [
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.tj3GetErrorStr.restype, lib.tj3GetErrorStr.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        self.lib, self.handle = lib, lib.tj3Init(self.DECOMPRESS)

    def _check(self, status: int) -> None:
        if status != 0:
            raise ValueError(self.lib.tj3GetErrorStr(self.handle).decode())

    def __call__(self, preset: TrainPreset, encoded: torch.Tensor) -> torch.Tensor:
        _, header = open_sample(encoded)
        plan = preset.plan(*header.size)
        reduce = within_limit(header, plan.reduction(header))
        source = encoded.numpy()
        self._check(self.lib.tj3DecompressHeader(self.handle, source.ctypes.data, source.size))
        subsampling = self.lib.tj3Get(self.handle, self.SUBSAMP)
        if not 0 <= subsampling < len(self.MCU_WIDTH):
            raise ValueError("unknown chroma subsampling")
        self._check(self.lib.tj3SetScalingFactor(self.handle, _Scaling(1, reduce)))
        scale = -(-header.width // reduce) / header.width  # as the preset scales a reduced decode's box
        top, left = int(plan.top * scale), int(plan.left * scale)
        height, width = max(1, int(plan.height * scale)), max(1, int(plan.width * scale))
        x = left - left % -(-self.MCU_WIDTH[subsampling] // reduce)  # the region starts on an iMCU column
        self._check(self.lib.tj3SetCroppingRegion(self.handle, _Region(x, top, left + width - x, height)))
        pixels = np.empty((height, left + width - x, 3), dtype=np.uint8)
        self._check(
            self.lib.tj3Decompress8(
                self.handle, source.ctypes.data, source.size, pixels.ctypes.data, pixels.shape[1] * 3, self.RGB
            )
        )
        chw = torch.from_numpy(pixels).permute(2, 0, 1)
        image = F.resized_crop(chw, 0, left - x, height, width, [plan.size] * 2, plan.interpolation, antialias=True)
        return image.flip(-1) if plan.flip else image


def libturbojpeg(path: str | None) -> str | None:
    """The named library, else the system's libturbojpeg when it has TurboJPEG 3's region decoding."""
    found = path or ctypes.util.find_library("turbojpeg")
    if found is None or not hasattr(ctypes.CDLL(found), "tj3SetCroppingRegion"):
        return None
    return found


def pictures(width: int, height: int, count: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        out = io.BytesIO()
        photo_like(rng, width, height).save(out, format="JPEG", quality=90)
        encoded.append(torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8))
    return encoded


def ways(size: int, region_library: str | None) -> dict[str, Way]:
    preset, today, chosen = TrainPreset(size), decoders.select(), decoders.chosen()
    reference = reference_train_transform(size)
    found: dict[str, Way] = {"today": lambda encoded: preset(encoded, today)}
    if chosen.jpeg_reduced is not None:
        found["simplejpeg"] = lambda encoded: preset(encoded, chosen)
    if region_library is not None:
        region = RegionDecoder(region_library)
        found["region"] = lambda encoded: region(preset, encoded)
    found["reference"] = lambda encoded: reference(Image.open(io.BytesIO(encoded.numpy())).convert("RGB"))
    return found


def one_pass(way: Way, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
    random.seed(0)  # every way draws the same boxes
    torch.manual_seed(0)
    return [way(picture) for picture in encoded]


def measure(found: dict[str, Way], encoded: list[torch.Tensor], rounds: int) -> dict[str, float]:
    """Images per CPU second of each way: the median of `rounds` passes, taken in turns. CPU time, not wall
    time: on a machine shared with other work, what a pass waits for the CPU is not what it costs."""
    rates: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(rounds):
        for name, way in found.items():
            start = time.process_time()
            one_pass(way, encoded)
            rates[name].append(len(encoded) / (time.process_time() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def fidelity(found: dict[str, Way], encoded: list[torch.Tensor]) -> dict[str, tuple[float, bool]]:
    """Each way's mean absolute difference to today's crops, and whether every shape is today's."""
    today = one_pass(found["today"], encoded)
    result = {}
    for name, way in found.items():
        if name != "reference":
            crops = one_pass(way, encoded)
            diff = statistics.mean(
                (a.float() - b.float()).abs().mean().item() for a, b in zip(crops, today, strict=True)
            )
            result[name] = (diff, all(a.shape == b.shape for a, b in zip(crops, today, strict=True)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="500x375 JPEGs; a quarter as many of 1600x1200")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="the training crop's side")
    parser.add_argument("--libturbojpeg", help="a libturbojpeg 3 shared library for the region prototype")
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core: what one loader worker does
    region_library = libturbojpeg(args.libturbojpeg)
    print(f"decoders: today {decoders.select().name}; chosen {decoders.chosen().name}")
    print(f"region: {region_library or 'no libturbojpeg 3 here (--libturbojpeg PATH)'}")
    found = ways(args.size, region_library)
    for width, height in SIZES:
        encoded = pictures(width, height, args.images if width * height < 1_000_000 else max(4, args.images // 4))
        quality, rates = fidelity(found, encoded), measure(found, encoded, args.rounds)
        print(f"\n{width}x{height}, {len(encoded)} JPEGs, {args.size} px crops, {args.rounds} rounds, one thread")
        for name, rate in rates.items():
            diff, shapes = quality.get(name, (float("nan"), True))
            same = f"  mean |diff| to today {diff:.2f}, shapes {'same' if shapes else 'DIFFER'}"
            print(
                f"  {name:<10} {rate:7.1f} images/s of CPU  {rate / rates['today']:.2f}x today"
                + same * (name in quality)
            )


if __name__ == "__main__":
    main()
