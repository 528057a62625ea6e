"""NCCL: a process group of one on one GPU, in this process (DDP, SyncBatchNorm, the training loop's
collectives, the stop/save vote, gathering the random states a checkpoint keeps), and, where two GPUs
exist, real two-process runs of the command line."""

from __future__ import annotations

import math
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from imagenet_cli.config import ComputeConfig, OptimConfig
from imagenet_cli.core import context, models, randomness
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.errors import RunFailed
from imagenet_cli.data import loaders as data
from imagenet_cli.data.fakedata import DeviceBatches, FakeImages
from imagenet_cli.report.live import Reporter
from imagenet_cli.run import distributed
from imagenet_cli.train import compute, engine, optim
from imagenet_cli.train.stops import StepControl

from .helpers import CHECKPOINT, differing, load, need_gpus, ok, run_cli

ARCH = "resnet18"


class _GroupOfOne(DistContext):
    """A rank of a real process group that happens to have one member. The tool itself never makes
    one (a run of one process needs no group), so this is how one GPU exercises its NCCL code."""

    @property
    def distributed(self) -> bool:
        return True


def test_nccl_group_of_one_trains_a_sync_bn_ddp_model_and_runs_every_collective():
    assert dist.is_nccl_available()
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    url = f"tcp://127.0.0.1:{distributed.free_port()}"
    dist.init_process_group("nccl", init_method=url, world_size=1, rank=0, timeout=timedelta(seconds=120))
    try:
        ctx = _GroupOfOne(0, 0, 1, 1, device, "nccl")
        plain = models.build_model(ARCH, 10)
        settings = compute.resolve(ComputeConfig(), device, plain)
        plain = nn.SyncBatchNorm.convert_sync_batchnorm(compute.place(plain, settings))
        assert any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
        model = compute.wrap_model(plain, ctx, data_parallel=False)
        assert isinstance(model, nn.parallel.DistributedDataParallel) and model.device_ids == [0]

        train_set, val_set = FakeImages(64, 10, 32, seed=0), FakeImages(20, 10, 32, seed=1)
        parts = engine.TrainParts(
            model, optim.build_criterion(), optim.build_optimizer(plain, ARCH, OptimConfig(lr=0.01), fused=True),
            data.Normalizer(device, settings.memory_format), ctx, Reporter(), print_freq=2, num_classes=10,
            autocast=settings.autocast, scaler=settings.grad_scaler(),
        )  # fmt: skip
        before = [p.detach().clone() for p in plain.parameters()]
        loader = DeviceBatches(train_set, data.EpochSampler(train_set, ctx, seed=0), 16, device, drop_last=True)
        trained = engine.train_one_epoch(parts, loader, epoch=0)
        assert trained.images == 64 and math.isfinite(trained.loss)
        assert any(not torch.equal(a, b) for a, b in zip(before, plain.parameters(), strict=True))
        val_loader = DeviceBatches(val_set, data.ShardSampler(20, 0, 1), 8, device, drop_last=False)
        val = engine.evaluate(model, val_loader, parts.normalize, ctx, Reporter(), 0, 10, 10, settings.autocast)
        assert val.images == 20 and sum(n for _, n in val.per_class) == 20

        ones = torch.ones(3, dtype=torch.float64, device=device)
        assert context.all_reduce_sum(ones, ctx).tolist() == [1.0, 1.0, 1.0]
        assert int(context.all_reduce_min(torch.tensor(7, device=device), ctx)) == 7
        [states] = context.gather_to_main(randomness.capture(), ctx)  # what every checkpoint keeps
        assert "cuda" in states
        context.barrier(ctx)
        guard = engine.FiniteGuard()
        guard.observe(torch.tensor(1.0, device=device), ctx, 0, 1)
        guard.check(ctx)
        guard.observe(torch.tensor(float("nan"), device=device), ctx, 0, 2)
        try:
            guard.check(ctx)
        except RunFailed as exc:
            assert "epoch 0, step 2" in str(exc)
        else:
            raise AssertionError("a NaN loss went unnoticed")
        with StepControl(ctx, save_every_steps=2) as control:  # its vote goes over a Gloo group beside NCCL
            first, second = control.after_step(1), control.after_step(2)
            assert not first.stop and not first.save and second.save and not second.stop
            assert not control.at_epoch_end()
    finally:
        dist.destroy_process_group()


# Two GPUs: real runs of the command line, one spawned process per GPU.
TWO = ("--fake-data", "--image-size", "32", "--fake-train-images", "128", "--fake-val-images", "16", "-a", ARCH,
       "-b", "16", "--lr", "0.01", "--seed", "0", "-p", "2", "--multiprocessing-distributed", "--nproc-per-node", "2",
       "--sync-bn")  # fmt: skip


def test_two_gpus_nccl_sync_bn_run_resumed_at_an_epoch_boundary_is_bit_identical(tmp_path):
    """NCCL's reductions repeat exactly for the same GPUs, ranks and message sizes, so the resumed
    two-rank run must end bit-identical to the uninterrupted one (as it does with Gloo on CPUs)."""
    need_gpus(2)
    straight = ok(run_cli("train", *TWO, "--epochs", "2", "--output-dir", tmp_path / "straight"))
    assert "2 processes" in straight.stdout and "nccl" in straight.stdout, straight.stdout[:500]
    ok(run_cli("train", *TWO, "--epochs", "1", "--output-dir", tmp_path / "split"))
    saved = load(tmp_path / "split" / CHECKPOINT)
    assert len(saved["rng_states"]) == 2 and all("cuda" in s for s in saved["rng_states"])
    ok(run_cli("resume", tmp_path / "split" / CHECKPOINT, "--epochs", "2"))
    diff = differing(tmp_path / "split" / CHECKPOINT, tmp_path / "straight" / CHECKPOINT)
    assert not diff, f"{len(diff)} tensors differ from the uninterrupted run, e.g. {diff[:3]}"
