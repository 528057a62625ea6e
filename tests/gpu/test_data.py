"""`--decode-on-device`: loader workers only read JPEG files and choose crops; nvJPEG decodes each batch
on the GPU in one call and the crops are cut there. The pixels differ a little from the CPU decoder's
(nvJPEG and libjpeg-turbo round their IDCT and chroma upsampling differently, and the GPU resizes in
float), so the checks here are close, not bit for bit."""

from __future__ import annotations

import json
import math
import random

import torch

from imagenet_cli.data.presets import Deferred, DeferredBatch, DeviceDecoded, TrainPreset, ValPreset, read_bytes
from imagenet_cli.report.records import METRICS_NAME

from .helpers import ok, run_cli, start_cli, write_jpeg_folder


def test_nvjpeg_decodes_and_crops_a_batch_like_the_cpu_pipeline(tmp_path):
    files = sorted((write_jpeg_folder(tmp_path, train=4, val=0) / "train").rglob("*.jpg"))
    device = torch.device("cuda", 0)
    for preset in (TrainPreset(64), ValPreset(73, 64)):
        deferred, on_cpu = [], []
        for i, path in enumerate(files):
            encoded = read_bytes(str(path))
            random.seed(i)  # the same random crop and flip both ways
            deferred.append(DeviceDecoded(preset)(encoded))
            random.seed(i)
            on_cpu.append(preset(encoded))
        assert all(isinstance(item, Deferred) for item in deferred)
        decoded, expected = DeferredBatch(deferred).decode(device), torch.stack(on_cpu)
        assert decoded.device == device and decoded.dtype == torch.uint8
        assert decoded.shape == expected.shape == (len(files), 3, 64, 64)
        error = (decoded.cpu().int() - expected.int()).abs().float().mean().item()
        assert error < 3.0, f"{type(preset).__name__}: nvJPEG's pixels differ from the CPU's by {error:.2f} on average"


def test_decode_on_device_trains_from_jpeg_files_like_decoding_in_the_workers(tmp_path):
    root = write_jpeg_folder(tmp_path / "data", train=24, val=8)
    args = ("train", root, "-a", "resnet18", "--image-size", "64", "-b", "16", "--lr", "0.01", "--epochs", "1",
            "--seed", "0", "-j", "2", "-p", "1")  # fmt: skip
    on_device = start_cli(*args, "--decode-on-device", "--output-dir", tmp_path / "device")
    ok(run_cli(*args, "--output-dir", tmp_path / "workers"))
    ok(on_device.result())
    [device], [workers] = (
        [m for m in map(json.loads, (tmp_path / name / METRICS_NAME).read_text().splitlines()) if m["type"] == "epoch"]
        for name in ("device", "workers")
    )
    for key in ("train_loss", "val_loss"):  # the same crops of almost the same pixels
        assert math.isfinite(device[key]) and abs(device[key] - workers[key]) < 0.1, (key, device, workers)
