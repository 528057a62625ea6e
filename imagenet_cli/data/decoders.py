"""The image decoder a process uses, chosen once, the first of a chain that loads and decodes here:

1. TorchCodec (`pip install "imagenet-cli[decode]"`): the decoders torchvision's are superseded by, with
   their own libjpeg-turbo, libpng and libwebp (no FFmpeg needed for pictures), and nvJPEG for batches on
   a CUDA device;
2. PIL, which decodes every format this tool reads, always there (about 20% slower per core on
   ImageNet-sized JPEGs). torchvision.io is not in the chain: its decoders are deprecated since torchvision
   0.29, and calling them would only mean hiding their warning.

A candidate counts as available when it imports and decodes a small JPEG: a wheel that installs but
cannot load its libraries on this platform is passed over, never met mid-run. What PIL still decodes
after the choice: see `presets.decode_rgb`.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

# (encoded bytes, PIL's name of the format) -> (3, H, W), uint8, or uint16 for a 16-bit PNG
Decode = Callable[[torch.Tensor, str], torch.Tensor]
# encoded JPEGs -> their (3, H, W) uint8 pixels on the CUDA device, in one batched call
DecodeJpegs = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@dataclass(frozen=True)
class Decoder:
    """What a library decodes for the presets: `formats` (PIL's names) through `decode`; the rest is PIL's."""

    name: str
    formats: frozenset[str] = frozenset()
    decode: Decode | None = None
    decode_jpegs: DecodeJpegs | None = None  # on a CUDA device (nvJPEG); None: it has no GPU decoder


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


# The chain, best first. Each loader raises when its library is absent or cannot load on this platform.
CANDIDATES: dict[str, Callable[[], Decoder]] = {"torchcodec": _torchcodec, "PIL": lambda: PIL_ONLY}


def _works(decoder: Decoder) -> bool:
    """Does it decode a small JPEG as PIL does?"""
    if decoder.decode is None:
        return True
    out = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 40, 90)).save(out, format="JPEG", quality=95)
    with Image.open(out) as picture:
        expected = torch.tensor(picture.convert("RGB").getpixel((0, 0)), dtype=torch.int16)
    pixels = decoder.decode(torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8), "JPEG")
    return pixels.shape == (3, 8, 16) and bool((pixels[:, 0, 0].to(torch.int16) - expected).abs().max() <= 2)


def select(candidates: dict[str, Callable[[], Decoder]] | None = None) -> Decoder:
    """The first candidate that loads and decodes here (PIL when none does)."""
    for load in (CANDIDATES if candidates is None else candidates).values():
        try:
            decoder = load()
            if _works(decoder):
                return decoder
        except (ImportError, OSError, RuntimeError, AttributeError, TypeError, ValueError):
            continue  # absent, or built for another platform or torch: the next one
    return PIL_ONLY


@functools.cache
def chosen() -> Decoder:
    """This process's decoder, chosen on first use (loader workers forked later inherit it)."""
    return select()
