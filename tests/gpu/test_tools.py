"""`env` lists the GPUs and plans a run on one; `benchmark` measures training on CUDA beside the
reference script's way."""

from __future__ import annotations

import json

import torch

from .helpers import ok, run_cli


def test_env_lists_every_gpu_and_plans_a_run_on_cuda():
    report = json.loads(ok(run_cli("env", "--json")).stdout)
    count = torch.cuda.device_count()
    assert sorted(d["index"] for d in report["cuda"]) == list(range(count))
    for device in report["cuda"]:
        assert "error" not in device, device
        assert device["name"] == torch.cuda.get_device_name(device["index"])
        assert device["total_bytes"] > 0 and 0 <= device["free_bytes"] <= device["total_bytes"]
    assert report["plan"]["device"] == "cuda:0"
    assert report["distributed_backends"]["nccl"] is True
    assert report["versions"]["torch_cuda"] == torch.version.cuda


def test_benchmark_measures_training_on_cuda_against_the_reference_way():
    result = ok(run_cli("benchmark", "--arch", "resnet18", "-b", "32", "--image-size", "64", "--steps", "3",
                        "--warmup", "1", "--only", "train", "--json", timeout=400))  # fmt: skip
    report = json.loads(result.stdout)
    assert report["machine"]["device"] == "cuda"
    assert report["machine"]["device_name"] == torch.cuda.get_device_name(0)
    if torch.cuda.is_bf16_supported():
        assert "bf16 autocast" in report["compute"]
    [row] = report["results"]
    assert row["part"] == "train"
    assert row["ours_images_per_second"] > 0 and row["baseline_images_per_second"] > 0 and row["ratio"] > 0
