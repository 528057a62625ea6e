"""The image decoder is chosen once, from a chain (TorchCodec, then PIL; never torchvision.io's deprecated decoders): each
link gives the pixels the pipeline always had, large JPEGs still decode reduced in the DCT, a link that
cannot load is passed over, and none of them warns. The JPEG decoder beside it (simplejpeg, when installed)
gives today's crops, and whatever it cannot read goes on to the chain. `--decode-on-device` without a GPU
decoder is refused before anything starts."""

from __future__ import annotations

import dataclasses
import io
import random
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_cli.config import build_config
from imagenet_cli.core.errors import UserError
from imagenet_cli.data import decoders, presets
from imagenet_cli.data.presets import TrainPreset, ValPreset
from imagenet_cli.run import distributed, launch

from .conftest import run_cli, write_image_folder, write_photo


def _absent() -> decoders.Decoder:
    raise ImportError("No module named 'torchcodec'")


def _chain_from(name: str) -> dict[str, Callable[[], decoders.Decoder]]:
    """The chain with every link before `name` absent, as on an installation without them."""
    names = list(decoders.CANDIDATES)
    return {n: (_absent if names.index(n) < names.index(name) else load) for n, load in decoders.CANDIDATES.items()}


def _available() -> list[str]:
    return [name for name in decoders.CANDIDATES if decoders.select(_chain_from(name)).name.startswith(name)]


def _pil_pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as picture:
        return torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)


def test_the_decoder_is_chosen_once_and_is_the_first_link_that_works():
    assert decoders.chosen() is decoders.chosen()
    assert decoders.chosen().name.startswith(decoders.select().name)
    assert "PIL" in _available()


def test_an_absent_or_broken_link_is_passed_over():
    def broken() -> decoders.Decoder:  # installs, loads, but cannot decode on this platform
        def decode(encoded: torch.Tensor, fmt: str) -> torch.Tensor:
            raise RuntimeError("libjpeg.so: cannot open shared object file")

        return decoders.Decoder("broken", frozenset({"JPEG"}), decode)

    chain = {"torchcodec": _absent, "broken": broken, "PIL": lambda: decoders.PIL_ONLY}
    assert decoders.select(chain) is decoders.PIL_ONLY
    assert decoders.select({"torchcodec": _absent}) is decoders.PIL_ONLY  # PIL even when the chain forgot it
    assert "torchvision.io" not in decoders.CANDIDATES  # deprecated: never called, so never warns


@pytest.mark.parametrize("link", list(decoders.CANDIDATES))
@pytest.mark.parametrize(
    ("mode", "suffix", "tolerance"),
    [("RGB", "jpg", 2), ("L", "jpg", 2), ("CMYK", "jpg", 2), ("RGB", "png", 0), ("RGBA", "png", 0), ("P", "png", 0),
     ("RGB", "webp", 0)],
)  # fmt: skip
def test_every_link_decodes_the_pixels_pil_decodes_without_a_warning(
    tmp_path, monkeypatch, link, mode, suffix, tolerance
):
    """The same pixels whichever link decodes (two grey levels for JPEG: libjpeg-turbo builds may round
    their IDCT differently), channels-last, and no DeprecationWarning from any of them."""
    if link not in _available():
        pytest.skip(f"{link} is not installed or does not load here")
    decoder = decoders.select(_chain_from(link))
    monkeypatch.setattr(decoders, "chosen", lambda: decoder)
    path = write_photo(tmp_path / f"picture.{suffix}", 90, 60, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = presets.decode_rgb(*presets.open_sample(presets.read_bytes(str(path))))
        for preset in (TrainPreset(32), ValPreset(37, 32)):
            assert preset(presets.read_bytes(str(path))).shape == (3, 32, 32)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 60, 90)
    assert pixels.permute(1, 2, 0).is_contiguous()  # torch's vectorised uint8 resize wants this layout
    assert (pixels.int() - _pil_pixels(path).int()).abs().max() <= tolerance


@pytest.mark.parametrize("link", [*decoders.CANDIDATES, "torchcodec + simplejpeg"])
@pytest.mark.parametrize("fmt", ["JPEG", "MPO", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6])  # upside down; a quarter turn (the stored sides swap)
def test_a_picture_tagged_to_be_shown_turned_is_decoded_as_stored_by_every_link(monkeypatch, link, fmt, orientation):
    """A camera's EXIF orientation tag is not obeyed, as PIL (the reference script's reader) does not obey
    it: the crop is planned on the stored size. TorchCodec's decoders obey it, so they leave such pictures
    to the JPEG decoder or to PIL."""
    chain, _, jpeg = link.partition(" + ")
    if chain not in _available() or (jpeg and decoders.select_jpeg() is None):
        pytest.skip(f"{link} is not installed or does not load here")
    decoder = decoders.select(_chain_from(chain))
    decoder = decoders.with_jpeg(decoder, decoders.select_jpeg()) if jpeg else decoder
    monkeypatch.setattr(decoders, "chosen", lambda: decoder)
    exif = Image.Exif()
    exif[presets.EXIF_ORIENTATION] = orientation
    encoded = _noise_with_exif(fmt, exif)
    header = presets.open_sample(encoded)[1]
    assert header.format == fmt and presets.turned_by_exif(header)
    pixels = presets.decode_rgb(encoded, header)
    assert pixels.shape == (3, 60, 90) and (pixels.int() - _as_pil_reads_it(header).int()).abs().max() <= 2
    assert not isinstance(presets.DeviceDecoded(TrainPreset(32))(encoded), presets.Deferred)  # nvJPEG would turn it


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("tags", [b"Exif\x00\x00not a tag block", b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"])
def test_a_damaged_exif_block_leaves_the_picture_readable_as_stored_and_decoding_warns_of_nothing(fmt, tags):
    encoded = _noise_with_exif(fmt, tags)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Corrupt EXIF data")  # PIL's own, reading a JPEG's header for its DPI
        header = presets.open_sample(encoded)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = presets.decode_rgb(encoded, header)
    assert pixels.shape == (3, 60, 90) and (pixels.int() - _as_pil_reads_it(header).int()).abs().max() <= 2


def _noise_with_exif(fmt: str, exif: Image.Exif | bytes) -> torch.Tensor:
    """The encoded bytes of a 90x60 noise picture carrying the EXIF block `exif` (an MPO of two frames; a
    lossless WebP, so that every decoder gives the same pixels)."""
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    options = {"MPO": {"save_all": True, "append_images": [stored]}, "WEBP": {"lossless": True}}.get(fmt, {})
    file = io.BytesIO()
    stored.save(file, fmt, exif=exif, **options)
    return torch.frombuffer(bytearray(file.getvalue()), dtype=torch.uint8)


def _as_pil_reads_it(header: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(header.convert("RGB"))).permute(2, 0, 1)


def test_large_jpegs_are_still_reduced_in_the_dct_by_pil(tmp_path, monkeypatch):
    """The chosen decoder decodes at full size only; a large JPEG whose crop allows it is PIL's, at 1/4."""
    path = write_photo(tmp_path / "big.jpg", 1600, 1200, quality=90)
    calls: list[str] = []
    real = decoders.chosen()

    def counting(encoded: torch.Tensor, fmt: str) -> torch.Tensor:
        calls.append(fmt)
        return real.decode(encoded, fmt) if real.decode else torch.empty(0)

    monkeypatch.setattr(decoders, "chosen", lambda: decoders.Decoder("counting", frozenset({"JPEG"}), counting))
    decoded: list[tuple[int, ...]] = []
    decode_rgb = presets.decode_rgb

    def recording(*args: object) -> torch.Tensor:
        pixels = decode_rgb(*args)
        decoded.append(tuple(pixels.shape))
        return pixels

    monkeypatch.setattr(presets, "decode_rgb", recording)
    assert ValPreset(256, 224)(presets.read_bytes(str(path))).shape == (3, 224, 224)
    assert calls == [] and decoded == [(3, 300, 400)]  # decoded at 1/4 of 1600x1200
    small = write_photo(tmp_path / "small.jpg", 500, 375, quality=90)
    ValPreset(256, 224)(presets.read_bytes(str(small)))
    assert calls == ["JPEG"]  # below a megapixel the chosen decoder decodes it whole


def _jpeg_or_skip() -> tuple[str, decoders.DecodeJpegReduced]:
    jpeg = decoders.select_jpeg()
    if jpeg is None:
        pytest.skip("simplejpeg is not installed or does not load here")
    return jpeg


def _recording(decoder: decoders.Decoder, reductions: list[int]) -> decoders.Decoder:
    """`decoder` with its JPEG decoder's calls recorded (the reduction of each)."""
    decode = decoder.jpeg_reduced
    assert decode is not None

    def recorded(encoded: np.ndarray, reduce: int) -> np.ndarray:
        reductions.append(reduce)
        return decode(encoded, reduce)

    return dataclasses.replace(decoder, jpeg_reduced=recorded)


def _crops(preset: object, data: torch.Tensor, decoder: decoders.Decoder, seeds: int = 6) -> list[torch.Tensor]:
    """The preset's output for the same random draws (one seed each), decoded by `decoder`."""
    crops = []
    for seed in range(seeds):
        random.seed(seed)
        crops.append(preset(data, decoder))  # type: ignore[operator]
    return crops


def test_the_jpeg_decoder_is_chosen_once_beside_the_chain_and_passed_over_when_absent_or_broken():
    def broken() -> tuple[str, decoders.DecodeJpegReduced]:  # loads, but its pixels are not the picture's
        return "broken", lambda encoded, reduce: np.zeros((8, 16, 3), np.uint8)

    assert decoders.select_jpeg({"simplejpeg": _absent}) is None  # type: ignore[dict-item]
    assert decoders.select_jpeg({"broken": broken}) is None
    assert decoders.with_jpeg(decoders.PIL_ONLY, None) is decoders.PIL_ONLY
    jpeg = decoders.select_jpeg()
    chosen = decoders.chosen()
    assert (chosen.jpeg_reduced is None) == (jpeg is None)
    assert chosen.name == decoders.select().name + ("" if jpeg is None else f" + {jpeg[0]}")


def test_a_jpeg_the_jpeg_decoder_cannot_read_goes_on_to_the_chain(tmp_path):
    """Whatever it refuses (ValueError) the chain decodes as it always did, and it never sees CMYK."""
    seen: list[int] = []

    def refusing(encoded: np.ndarray, reduce: int) -> np.ndarray:
        seen.append(reduce)
        raise ValueError("Unsupported JPEG process")

    chain = decoders.select()
    refused = dataclasses.replace(chain, jpeg_reduced=refusing)
    for mode in ("RGB", "CMYK"):
        data = presets.read_bytes(str(write_photo(tmp_path / f"{mode}.jpg", 90, 60, mode=mode, quality=90)))
        pixels = presets.decode_rgb(*presets.open_sample(data), 1, refused)
        assert torch.equal(pixels, presets.decode_rgb(*presets.open_sample(data), 1, chain))
        assert pixels.permute(1, 2, 0).is_contiguous()
    assert seen == [1]  # the RGB one only


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(("width", "height"), [(500, 375), (1600, 1200)])
def test_the_jpeg_decoder_gives_todays_crops(tmp_path, mode, width, height):
    """The same boxes and shapes as the chain alone, the pixels within its rounding (in practice the same);
    the JPEG decoder itself decodes them, the large ones reduced in the DCT as PIL did."""
    jpeg = _jpeg_or_skip()
    chain, reductions = decoders.select(), []
    decoder = _recording(decoders.with_jpeg(chain, jpeg), reductions)
    path = write_photo(tmp_path / "photo.jpg", width, height, mode=mode, quality=90)
    data = presets.read_bytes(str(path))
    for preset in (TrainPreset(224), ValPreset(256, 224)):
        ours, todays = _crops(preset, data, decoder), _crops(preset, data, chain)
        for a, b in zip(ours, todays, strict=True):
            assert a.shape == b.shape == (3, 224, 224)
            assert (a.float() - b.float()).abs().mean() < 2
    assert len(reductions) == 12 and (max(reductions) > 1) == (width * height >= presets.REDUCE_FROM_PIXELS)
    whole = presets.decode_rgb(*presets.open_sample(data), 1, decoder)
    assert whole.permute(1, 2, 0).is_contiguous()
    assert (whole.int() - _pil_pixels(path).int()).abs().max() <= 2


def test_a_reduced_jpeg_has_its_planned_size_whichever_decodes_it(tmp_path):
    """1/2, 1/4 and 1/8 of a picture whose sides they do not divide: the sizes rounded up, by PIL (asked for
    the rounded-up size, its draft used to take the next smaller reduction, or none) and by the JPEG decoder,
    their pixels within libjpeg-turbo's rounding."""
    data = presets.read_bytes(str(write_photo(tmp_path / "odd.jpg", 1001, 757, quality=90)))
    jpeg = decoders.select_jpeg()
    for reduce in (2, 4, 8):
        pil = presets.decode_rgb(*presets.open_sample(data), reduce, decoders.PIL_ONLY)
        assert pil.shape == (3, -(-757 // reduce), -(-1001 // reduce))
        if jpeg is not None:
            ours = presets.decode_rgb(*presets.open_sample(data), reduce, decoders.with_jpeg(decoders.PIL_ONLY, jpeg))
            assert ours.shape == pil.shape and (ours.float() - pil.float()).abs().mean() < 1


def test_a_damaged_jpeg_fares_as_it_did_without_the_jpeg_decoder(tmp_path):
    """simplejpeg refuses a cut-off file; the chain then decides, as it would have alone."""
    decoder = decoders.with_jpeg(decoders.select(), _jpeg_or_skip())
    whole = presets.read_bytes(str(write_photo(tmp_path / "photo.jpg", 120, 90, quality=90)))
    cut = whole[: len(whole) * 2 // 3].clone()

    def outcome(chosen: decoders.Decoder) -> torch.Tensor | type[BaseException]:
        try:
            return presets.decode_rgb(*presets.open_sample(cut), 1, chosen)
        except Exception as error:  # the same kind of failure either way
            return type(error)

    ours, todays = outcome(decoder), outcome(decoders.select())
    assert ours is todays if isinstance(todays, type) else torch.equal(ours, todays)  # type: ignore[arg-type]


def test_decode_on_device_is_refused_at_start_in_one_line_without_a_gpu(tmp_path):
    """Not a TypeError in the first batch: exit 2, one line, no traceback, nothing written."""
    data = write_image_folder(tmp_path / "data", {"ants": 2, "bees": 2}, {"ants": 1, "bees": 1}, size=32)
    out = tmp_path / "out"
    result = run_cli("train", str(data), "-a", "resnet18", "--decode-on-device", "--no-accel", "--output-dir", str(out))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --decode-on-device decodes JPEGs on a CUDA GPU; this run has none (leave the flag out)"
    ]
    assert not out.exists() or not any(out.iterdir())


def test_decode_on_device_is_refused_when_the_decoder_has_no_gpu_path(monkeypatch):
    """A GPU, but only PIL (or a decoder without nvJPEG): refused before any process starts, naming it."""
    monkeypatch.setattr(distributed, "accelerator_count", lambda cfg: 1)
    monkeypatch.setattr(decoders, "chosen", lambda: decoders.PIL_ONLY)
    cfg = build_config("train", {"path": "data", "decode_on_device": True})
    with pytest.raises(UserError, match=r"--decode-on-device needs a GPU JPEG decoder, and PIL has none here"):
        launch.preflight(cfg, distributed.plan(cfg.dist, env={}))
