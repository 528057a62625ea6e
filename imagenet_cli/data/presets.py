"""Training and validation image presets: file to uint8 tensor, as little CPU work as the result allows.

What the reference pipeline spends its CPU time on, per image, and what these presets do instead:
- PIL decoding plus a PIL crop and resize: a libjpeg-turbo decoder (simplejpeg's or TorchCodec's, see `decoders`), then
  one antialiased resize in torch's vectorised uint8 kernel (it wants channels-last pixels, so the crop is laid out so);
- decoding a large JPEG at full size only to shrink it: libjpeg's reduced-size decoding (1/2, 1/4, 1/8,
  in the DCT) whenever the crop still has at least the output's pixels at that scale;
- `ToTensor` and `Normalize` in float32 per image: nothing; uint8 batches are normalised on the device.
Random choices use Python's generator, which a seeded run sets per sample and loader workers seed apart.
"""

from __future__ import annotations

import io
import math
import os
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from . import decoders

CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop's area range, as in the reference and torchvision's recipes
CROP_RATIO = (3 / 4, 4 / 3)
DCT_SCALES = (8, 4, 2)  # the reductions libjpeg decodes directly
REDUCE_FROM_PIXELS = 1_000_000
BILINEAR = InterpolationMode.BILINEAR  # the reference's resize, and the default of every preset
# ImageNet's channel statistics: the device normalises uint8 batches with them (data.Normalizer), and an
# erased rectangle is filled with the mean, which normalisation turns into the 0 torchvision's recipe erases to.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL's own guard against decompression bombs warns above 89 MP and refuses above 179 MP, at open time,
# before we could decode a huge JPEG at 1/8 of its size. This module keeps one limit, applied to what is
# actually decoded: a huge JPEG is read reduced, anything else that large is refused by name.
MAX_DECODED_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = None
# The most bytes one encoded picture may have: that limit's pixels stored uncompressed (a BMP or PPM of
# three bytes a pixel), plus room for headers. A file or a shard member claiming more is not a picture
# this tool could decode, so it is refused before it is read.
MAX_ENCODED_BYTES = 3 * MAX_DECODED_PIXELS + (1 << 20)
# The EXIF tag by which a camera asks viewers to turn or mirror the stored picture. PIL, simplejpeg and the
# reference script leave pictures as stored; TorchCodec's decoders (nvJPEG too) turn them.
EXIF_ORIENTATION = 0x0112


# What a dataset hands a preset: a file's encoded bytes (uint8, 1-D), or a picture already in memory.
Sample = torch.Tensor | Image.Image
Transform = Callable[[Any], torch.Tensor]  # a preset, maybe augmented


@dataclass(frozen=True)
class CropPlan:
    """A training crop chosen from the picture's size before any pixel is decoded, so the decode can be
    reduced, or left to the GPU (nvJPEG)."""

    top: int
    left: int
    height: int
    width: int
    size: int
    flip: bool
    interpolation: InterpolationMode = BILINEAR

    def reduction(self, header: Image.Image) -> int:
        return dct_reduction(header, min(self.width, self.height), self.size)

    def __call__(self, pixels: torch.Tensor, scale: float = 1) -> torch.Tensor:
        """The crop on pixels decoded at `scale` of the picture's size (< 1 when the DCT reduced it)."""
        top, left, height, width = self.top, self.left, self.height, self.width
        if scale != 1:
            top, left = int(top * scale), int(left * scale)
            height, width = max(1, int(height * scale)), max(1, int(width * scale))
        size, mode = [self.size, self.size], self.interpolation
        image = F.resized_crop(pixels, top, left, height, width, size, mode, antialias=True)
        return image.flip(-1) if self.flip else image


@dataclass(frozen=True)
class CentrePlan:
    """Resize the shorter side, then crop the centre: the evaluation view."""

    resize: int
    crop: int
    interpolation: InterpolationMode = BILINEAR

    def reduction(self, header: Image.Image) -> int:
        return dct_reduction(header, min(header.size), self.resize)

    def __call__(self, pixels: torch.Tensor, scale: float = 1) -> torch.Tensor:  # output sizes: unaffected by scale
        return F.center_crop(F.resize(pixels, [self.resize], self.interpolation, antialias=True), [self.crop])


@dataclass(frozen=True)
class PadCropPlan:
    """Pad, crop back to size at an offset, maybe flip: for pictures already at training size."""

    size: int
    padding: int
    top: int
    left: int
    flip: bool
    interpolation: InterpolationMode = BILINEAR

    def reduction(self, header: Image.Image) -> int:
        return 1

    def __call__(self, pixels: torch.Tensor, scale: float = 1) -> torch.Tensor:  # output pixels: unaffected by scale
        if pixels.shape[-2:] != (self.size, self.size):
            pixels = F.resize(pixels, [self.size, self.size], self.interpolation, antialias=True)
        image = F.crop(F.pad(pixels, [self.padding]), self.top, self.left, self.size, self.size)
        return image.flip(-1) if self.flip else image


Plan = CropPlan | CentrePlan | PadCropPlan


class Preset:
    """Sample to uint8 (3, H, W) tensor, planned from the header so the decode is reduced when the plan allows."""

    def plan(self, width: int, height: int) -> Plan:
        raise NotImplementedError

    def __call__(self, sample: Sample, decoder: decoders.Decoder | None = None) -> torch.Tensor:
        """`decoder`: the process's (`decoders.chosen`) unless named, as a benchmark names the one it compares."""
        encoded, header = open_sample(sample)
        full_width, plan = header.width, self.plan(*header.size)
        pixels = decode_rgb(encoded, header, within_limit(header, plan.reduction(header)), decoder)
        return plan(pixels, pixels.shape[-1] / full_width)


class TrainPreset(Preset):
    """Random resized crop and horizontal flip."""

    def __init__(
        self,
        size: int,
        interpolation: InterpolationMode = BILINEAR,
        hflip: float = 0.5,
        scale: tuple[float, float] = CROP_SCALE,
        ratio: tuple[float, float] = CROP_RATIO,
    ) -> None:
        self.size, self.interpolation, self.hflip, self.scale, self.ratio = size, interpolation, hflip, scale, ratio

    def resize(self, size: int) -> None:
        """Progressive resizing: crops of another size from the next epoch (`loaders.set_train_size`)."""
        self.size = size

    def plan(self, width: int, height: int) -> CropPlan:
        box = random_crop_box(
            width, height, self.scale, self.ratio
        )  # before the flip: the order seeded runs have always drawn in
        return CropPlan(*box, size=self.size, flip=random.random() < self.hflip, interpolation=self.interpolation)


class ValPreset(Preset):
    """Resize the shorter side to `resize_size`, centre crop `crop_size`."""

    def __init__(self, resize_size: int, crop_size: int, interpolation: InterpolationMode = BILINEAR) -> None:
        self.resize_size, self.crop_size, self.interpolation = resize_size, crop_size, interpolation

    def plan(self, width: int, height: int) -> CentrePlan:
        return CentrePlan(self.resize_size, self.crop_size, self.interpolation)


class PadCropPreset(Preset):
    """For pictures already at training size (CIFAR's 32 px, MNIST's 28): pad, random crop back, flip;
    the classic small-image augmentation, instead of blowing 32 px up to 224."""

    def __init__(
        self, size: int, padding: int, interpolation: InterpolationMode = BILINEAR, hflip: float = 0.5
    ) -> None:
        self.size, self.padding, self.interpolation, self.hflip = size, padding, interpolation, hflip

    def resize(self, size: int) -> None:
        """Progressive resizing: pictures resized to `size` from the next epoch, padded by an eighth of it."""
        self.size, self.padding = size, size // 8

    def plan(self, width: int, height: int) -> PadCropPlan:
        offsets = random.randint(0, 2 * self.padding), random.randint(0, 2 * self.padding)
        flip = random.random() < self.hflip  # drawn even at 0 or 1: the generators' stream stays the same
        return PadCropPlan(self.size, self.padding, *offsets, flip=flip, interpolation=self.interpolation)


def crop_of(transform: object) -> TrainPreset | PadCropPreset | None:
    """The preset that sets a training transform's output size, inside the wrappers this package puts
    around it (`--decode-on-device`, the augmentations' `Compose`); None when there is none."""
    if isinstance(transform, DeviceDecoded):
        transform = transform.preset
    elif isinstance(transform, v2.Compose):
        transform = transform.transforms[0]
    return transform if isinstance(transform, (TrainPreset, PadCropPreset)) else None


# -- decoding on the training device ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deferred:
    """A JPEG whose decoding waits for the training device: the bytes and the plan made in the worker."""

    encoded: torch.Tensor
    plan: Plan


@dataclass(frozen=True)
class DeviceDecoded:
    """A preset whose JPEGs are decoded on the device (nvJPEG on CUDA, batched) instead of in the loader
    workers: the workers only read files and make the random choices. Other formats decode as usual."""

    preset: Preset

    def __call__(self, sample: Sample) -> torch.Tensor | Deferred:
        encoded, header = open_sample(sample)
        if encoded is None or header.format != "JPEG" or within_limit(header, 1) > 1 or turned_by_exif(header):
            return self.preset(sample)  # past the pixel limit: reduced in the DCT here, never decoded whole there
        return Deferred(encoded, self.preset.plan(*header.size))


@dataclass
class DeferredBatch:
    """A batch of deferred JPEGs (and pictures the workers decoded), made whole on the device."""

    items: list[torch.Tensor | Deferred]

    def decode(self, device: torch.device) -> torch.Tensor:
        """One batched decode of every JPEG (nvJPEG on CUDA), then each one's crop plan, on `device`. On the
        CPU (tests; the command line refuses `--decode-on-device` without a GPU decoder) each JPEG is
        decoded as the workers would."""
        deferred = [item for item in self.items if isinstance(item, Deferred)]
        encoded = [item.encoded for item in deferred]
        decoder = decoders.chosen()
        if device.type == "cuda" and decoder.decode_jpegs is not None:
            decoded = decoder.decode_jpegs(encoded, device)
        else:
            decoded = [decode_rgb(pixels, open_sample(pixels)[1]).to(device) for pixels in encoded]
        planned = iter([item.plan(pixels) for item, pixels in zip(deferred, decoded, strict=True)])
        return torch.stack([next(planned) if isinstance(item, Deferred) else item.to(device) for item in self.items])


def random_crop_box(
    width: int, height: int, scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO
) -> tuple[int, int, int, int]:
    """(top, left, height, width) as RandomResizedCrop chooses it, with its fallback when ten tries fail."""
    box = sample_box(width, height, scale, ratio, whole=True)
    if box is not None:
        return box
    w = min(width, round(height * ratio[1]))  # the whole picture, its ratio clamped into `ratio`
    h = min(height, round(w / ratio[0]))
    return (height - h) // 2, (width - w) // 2, h, w


def sample_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], whole: bool
) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) covering `scale` of the area at a log-uniform aspect ratio, or None when
    ten tries find none (`whole`: may it span the whole side). Python's generator: torch's costs more per
    call than the rest of the arithmetic."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width - (not whole) and 0 < h <= height - (not whole):
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    return None


def read_bytes(path: str) -> torch.Tensor:
    """A file's bytes, read once whichever decoder runs; a file larger than any picture this tool decodes is
    refused before a byte of it is read."""
    with open(path, "rb") as f:
        check_encoded_size(os.fstat(f.fileno()).st_size)
        return torch.from_numpy(np.fromfile(f, dtype=np.uint8))


def check_encoded_size(size: int, what: str = "the file") -> None:
    if size > MAX_ENCODED_BYTES:
        raise ValueError(
            f"{what} has {size:,} bytes, more than the {MAX_ENCODED_BYTES:,} this tool reads as one picture"
        )


def open_sample(sample: Sample) -> tuple[torch.Tensor | None, Image.Image]:
    """The encoded bytes (None for a picture already in memory) and PIL's lazy view, which has parsed the
    header and decoded nothing yet."""
    if isinstance(sample, Image.Image):
        return None, sample
    if sample.numel() == 0:
        raise ValueError("the file is empty")
    return sample, Image.open(io.BytesIO(sample.numpy()))


def within_limit(header: Image.Image, reduce: int) -> int:
    """The reduction to decode with: at least enough to keep a JPEG under MAX_DECODED_PIXELS."""
    while header.width * header.height / reduce**2 > MAX_DECODED_PIXELS:
        if header.format != "JPEG" or reduce >= DCT_SCALES[0]:
            raise ValueError(
                f"the picture has {header.width}x{header.height} pixels, more than the {MAX_DECODED_PIXELS:,} "
                "this tool decodes; shrink it"
            )
        reduce *= 2
    return reduce


def dct_reduction(header: Image.Image, source_side: int, target_side: int) -> int:
    """The largest DCT reduction that keeps at least `target_side` pixels where the crop has
    `source_side`: decoding then skips work that the resize would throw away. Only for large JPEGs:
    below a megapixel PIL's decoder loses more than the reduction saves (measured, 500x375: 10% slower;
    1000x750: 10% faster; 2000x1500 at 1/4: 1.7x faster)."""
    if header.format != "JPEG" or header.width * header.height < REDUCE_FROM_PIXELS:
        return 1
    return next((s for s in DCT_SCALES if source_side // s >= target_side), 1)


def decode_rgb(
    encoded: torch.Tensor | None, header: Image.Image, reduce: int = 1, decoder: decoders.Decoder | None = None
) -> torch.Tensor:
    """Pixels as uint8 (3, H, W) whatever the file's colour mode, laid out channels-last in memory:
    torch's vectorised uint8 resize needs that layout, and crops of it stay views. The process's decoder
    (`decoders.chosen`) decodes the formats it reads: its JPEG decoder (simplejpeg) first, at any
    reduction, then the chain's at full size; PIL decodes the rest, reduced ones when there is no JPEG
    decoder, an animated picture, of which it decodes the first frame only (the others would decode
    every frame: a small file of many large frames asks for gigabytes), and a picture tagged to be shown
    turned, which the chain's decoder would turn (`turned_by_exif`)."""
    decoder = decoders.chosen() if decoder is None else decoder
    animated = getattr(header, "is_animated", False)
    if encoded is not None and not animated:
        pixels = _jpeg_reduced(decoder, encoded, header, reduce)
        if pixels is None and reduce == 1 and header.format in decoder.formats and not turned_by_exif(header):
            pixels = _decoded(decoder, encoded, header)
        if pixels is not None:
            return pixels
    if reduce > 1:  # PIL takes the largest reduction that keeps the size asked: asked the rounded-up size of a
        # side `reduce` does not divide, it took the next smaller one (or none), past the pixel limit too
        header.draft("RGB", (max(1, header.width // reduce), max(1, header.height // reduce)))
    return torch.from_numpy(np.array(header.convert("RGB"))).permute(2, 0, 1)


def _jpeg_reduced(
    decoder: decoders.Decoder, encoded: torch.Tensor, header: Image.Image, reduce: int
) -> torch.Tensor | None:
    """An RGB or grey JPEG by the decoder's JPEG decoder, already channels-last; None when there is none, or
    for a file it does not read cleanly (CMYK, 12-bit, damaged), which the decoders after it then judge."""
    if decoder.jpeg_reduced is None or header.format != "JPEG" or header.mode not in ("RGB", "L"):
        return None
    try:
        return torch.from_numpy(decoder.jpeg_reduced(encoded.numpy(), reduce)).permute(2, 0, 1)
    except ValueError:
        return None


def turned_by_exif(header: Image.Image) -> bool:
    """Does the file ask to be shown turned or mirrored (EXIF orientation 2 to 8)? Such a picture is decoded
    as stored, as PIL and the reference script read it, and as the crop was planned from its header."""
    if "exif" not in header.info:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's "Corrupt EXIF data": it only picks the decoder
            return header.getexif().get(EXIF_ORIENTATION, 1) != 1
    except Exception:  # PIL raises what its parser meets (SyntaxError, struct.error, ...) on hostile bytes
        return True  # unread: PIL decodes it as stored, whatever a decoder reading the tag would make of it


def _decoded(decoder: decoders.Decoder, encoded: torch.Tensor, header: Image.Image) -> torch.Tensor | None:
    """The chain's decoder at full size; None for a variant or colour mode it does not read (PIL does)."""
    try:
        chw = decoder.decode(encoded, header.format)  # type: ignore[misc]
    except RuntimeError:
        return None
    # 16-bit PNGs may come as uint16: scale them (PIL would clip everything above 255 to white)
    chw = F.to_dtype(chw, torch.uint8, scale=True) if chw.dtype != torch.uint8 else chw
    return chw.permute(1, 2, 0).contiguous().permute(2, 0, 1)
