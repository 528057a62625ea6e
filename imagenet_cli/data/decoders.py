"""The image decoder a process uses, chosen once, the first of a chain that loads and decodes here:

1. TorchCodec (`pip install "imagenet-cli[decode]"`): the decoders torchvision's are superseded by, with
   their own libjpeg-turbo, libpng and libwebp (no FFmpeg needed for pictures), and nvJPEG for batches on
   a CUDA device;
2. PIL, which decodes every format this tool reads, always there (about 20% slower per core on
   ImageNet-sized JPEGs). torchvision.io is not in the chain: its decoders are deprecated since torchvision
   0.29, and calling them would only mean hiding their warning.

RGB and greyscale JPEGs on the CPU have a chain of their own, chosen with it: simplejpeg (also in the
`decode` extra, with its own libjpeg-turbo). It decodes straight to channels-last pixels at any DCT
reduction, where the first link hands planar pixels to be laid out again and PIL alone reduces: per core,
224 px training crops of 500x375 JPEGs come 1.06-1.10x faster, of 1600x1200 ones 1.05-1.15x, with the same
pixels (scripts/crop_decode.py). A file it cannot read (CMYK, 12-bit, damaged) goes on to the decoder above.

A candidate counts as available when it imports and decodes a small JPEG: a wheel that installs but
cannot load its libraries on this platform is passed over, never met mid-run. What PIL still decodes
after the choice: see `presets.decode_rgb`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# (encoded bytes, PIL's name of the format) -> (3, H, W), uint8, or uint16 for a 16-bit PNG
Decode = Callable[[torch.Tensor, str], torch.Tensor]
# encoded JPEGs -> their (3, H, W) uint8 pixels on the CUDA device, in one batched call
DecodeJpegs = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]
# (an encoded JPEG, a DCT reduction: 1, 2, 4 or 8) -> its (H, W, 3) uint8 pixels at that reduction, channels-last;
# ValueError for a file it does not read cleanly
DecodeJpegReduced = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Decoder:
    """What a library decodes for the presets: `formats` (PIL's names) through `decode`; the rest is PIL's."""

    name: str
    formats: frozenset[str] = frozenset()
    decode: Decode | None = None
    decode_jpegs: DecodeJpegs | None = None  # on a CUDA device (nvJPEG); None: it has no GPU decoder
    jpeg_reduced: DecodeJpegReduced | None = None  # RGB and grey JPEGs on the CPU (simplejpeg); None: as the rest


PIL_ONLY = Decoder("PIL")


def _torchcodec() -> Decoder:
    import torchcodec
    from torchcodec.decoders import decode_jpeg, decode_png, decode_webp

    by_format = {"JPEG": decode_jpeg, "MPO": decode_jpeg, "PNG": decode_png, "WEBP": decode_webp}

    def decode(encoded: torch.Tensor, fmt: str) -> torch.Tensor:
        return by_format[fmt](encoded, mode="RGB")

    def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg(encoded, mode="RGB", device=device)

    version = getattr(torchcodec, "__version__", "").split("+")[0]
    return Decoder(f"torchcodec {version}".strip(), frozenset(by_format), decode, decode_jpegs)


def _simplejpeg() -> tuple[str, DecodeJpegReduced]:
    import simplejpeg

    def decode(encoded: np.ndarray, reduce: int) -> np.ndarray:
        if reduce == 1:
            return simplejpeg.decode_jpeg(encoded, "RGB")
        # it picks the smallest of libjpeg-turbo's scales that is at least min_factor and keeps the minimum sides
        height, width = simplejpeg.decode_jpeg_header(encoded)[:2]
        return simplejpeg.decode_jpeg(
            encoded, "RGB", min_height=-(-height // reduce), min_width=-(-width // reduce), min_factor=reduce
        )

    return f"simplejpeg {simplejpeg.__version__}", decode


# The chains, best first. Each loader raises when its library is absent or cannot load on this platform.
CANDIDATES: dict[str, Callable[[], Decoder]] = {"torchcodec": _torchcodec, "PIL": lambda: PIL_ONLY}
JPEG_CANDIDATES: dict[str, Callable[[], tuple[str, DecodeJpegReduced]]] = {"simplejpeg": _simplejpeg}
_ABSENT = (ImportError, OSError, RuntimeError, AttributeError, TypeError, ValueError)


def _small_jpeg() -> tuple[bytes, torch.Tensor]:
    """A 16x8 JPEG and its first pixel as PIL decodes it."""
    out = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 40, 90)).save(out, format="JPEG", quality=95)
    with Image.open(out) as picture:
        return out.getvalue(), torch.tensor(picture.convert("RGB").getpixel((0, 0)), dtype=torch.int16)


def _close(pixel: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((pixel.to(torch.int16) - expected).abs().max() <= 2)


def _works(decoder: Decoder) -> bool:
    """Does it decode a small JPEG as PIL does?"""
    if decoder.decode is None:
        return True
    encoded, expected = _small_jpeg()
    pixels = decoder.decode(torch.frombuffer(bytearray(encoded), dtype=torch.uint8), "JPEG")
    return pixels.shape == (3, 8, 16) and _close(pixels[:, 0, 0], expected)


def _works_reduced(decode: DecodeJpegReduced) -> bool:
    """Does it decode a small JPEG as PIL does, whole and at half size?"""
    encoded, expected = _small_jpeg()
    array = np.frombuffer(encoded, dtype=np.uint8)
    whole, half = decode(array, 1), decode(array, 2)
    return whole.shape == (8, 16, 3) and half.shape == (4, 8, 3) and _close(torch.from_numpy(whole[0, 0]), expected)


def select(candidates: dict[str, Callable[[], Decoder]] | None = None) -> Decoder:
    """The first candidate that loads and decodes here (PIL when none does)."""
    for load in (CANDIDATES if candidates is None else candidates).values():
        try:
            decoder = load()
            if _works(decoder):
                return decoder
        except _ABSENT:
            continue  # absent, or built for another platform or torch: the next one
    return PIL_ONLY


def select_jpeg(
    candidates: dict[str, Callable[[], tuple[str, DecodeJpegReduced]]] | None = None,
) -> tuple[str, DecodeJpegReduced] | None:
    """The first JPEG decoder of its chain that loads and decodes here (its name and function), or None."""
    for load in (JPEG_CANDIDATES if candidates is None else candidates).values():
        try:
            name, decode = load()
            if _works_reduced(decode):
                return name, decode
        except _ABSENT:
            continue
    return None


def with_jpeg(decoder: Decoder, jpeg: tuple[str, DecodeJpegReduced] | None) -> Decoder:
    """`decoder`, with RGB and grey JPEGs on the CPU left to `jpeg` when there is one."""
    if jpeg is None:
        return decoder
    return dataclasses.replace(decoder, name=f"{decoder.name} + {jpeg[0]}", jpeg_reduced=jpeg[1])


@functools.cache
def chosen() -> Decoder:
    """This process's decoder, chosen on first use (loader workers forked later inherit it)."""
    return with_jpeg(select(), select_jpeg())
