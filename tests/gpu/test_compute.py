"""In this process, on the GPU: what `compute` resolves to and does to a model (bf16/fp16 autocast, the
gradient scaler, channels-last), fused optimizer kernels, cuDNN's settings, and which GPU `--gpu`,
torchrun's LOCAL_RANK and SLURM's SLURM_LOCALID give a process."""

from __future__ import annotations

import math

import torch
from torch import nn

from imagenet_cli.config import ComputeConfig, DataConfig, DistConfig, OptimConfig, RunConfig
from imagenet_cli.core import models
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.errors import UserError
from imagenet_cli.data import loaders as data
from imagenet_cli.run import distributed, worker
from imagenet_cli.run.distributed import Topology
from imagenet_cli.train import compute, optim

from .helpers import need_bf16, need_gpus

ARCH = "resnet18"


def _cuda0() -> torch.device:
    return torch.device("cuda", 0)


def _ctx() -> DistContext:
    return DistContext(0, 0, 1, 1, _cuda0())


def _batch(settings: compute.Compute, size: int = 64, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised batch made the way a run makes it (uint8 on the host, normalised on the device)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 10, (n,), generator=generator)
    return data.Normalizer(settings.device, settings.memory_format)(images), targets.to(settings.device)


def _placed(amp: str = "auto", channels_last: bool | None = None) -> tuple[nn.Module, compute.Compute]:
    model = models.build_model(ARCH, 10)
    settings = compute.resolve(ComputeConfig(amp=amp, channels_last=channels_last), _cuda0(), model)
    return compute.place(model, settings), settings


def _step(model: nn.Module, settings: compute.Compute, optimizer: torch.optim.Optimizer, scaler, poison=False) -> None:
    images, targets = _batch(settings)
    with settings.autocast():
        loss = nn.functional.cross_entropy(model(images), targets)
    if poison:
        loss = loss * float("inf")
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_the_default_on_a_bf16_gpu_is_bf16_autocast_channels_last_and_a_scaler_fixed_at_one():
    need_bf16()
    model, settings = _placed()
    assert (settings.amp_dtype, settings.channels_last, settings.compile) == (torch.bfloat16, True, False)
    assert settings.describe() == "bf16 autocast, channels-last"
    images, _ = _batch(settings)
    with settings.autocast():
        assert model(images).dtype == torch.bfloat16
    scaler = settings.grad_scaler()
    assert scaler.is_enabled() and scaler.get_scale() == 1.0


def test_fp16_scales_the_loss_and_skips_on_the_device_a_step_whose_gradients_overflow():
    model, settings = _placed(amp="fp16")
    assert settings.describe() == "fp16 autocast, channels-last"
    scaler = settings.grad_scaler()
    assert scaler.get_scale() == 2.0**16
    optimizer = optim.build_optimizer(model, ARCH, OptimConfig(lr=0.01), fused=True)
    for _ in range(8):  # 2**16 may overflow at first: the scaler halves it and skips until it fits
        before = _parameters(model)
        _step(model, settings, optimizer, scaler)
        after = _parameters(model)
        if any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)):
            break
    else:
        raise AssertionError(f"eight fp16 steps changed nothing (scale now {scaler.get_scale()})")
    assert all(torch.isfinite(p).all() for p in after)
    scale = scaler.get_scale()
    _step(model, settings, optimizer, scaler, poison=True)
    skipped = _parameters(model)
    assert all(torch.equal(a, b) for a, b in zip(after, skipped, strict=True)), "a non-finite step reached the weights"
    assert scaler.get_scale() == scale / 2  # backed off
    state = scaler.state_dict()
    assert {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(state)
    assert isinstance(state["scale"], float) and math.isfinite(state["scale"])


def test_channels_last_on_cuda_reaches_the_weights_the_batches_and_the_activations():
    model, settings = _placed()
    assert settings.channels_last and settings.memory_format == torch.channels_last
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert weights and all(w.is_cuda and w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    images, _ = _batch(settings)
    assert images.is_cuda and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    with settings.autocast():
        features = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(images)))))
    assert features.is_contiguous(memory_format=torch.channels_last)
    plain, off = _placed(channels_last=False)
    assert off.memory_format == torch.contiguous_format
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_sgd_nesterov_and_adamw_use_fused_kernels_on_cuda_through_the_scaler():
    for name in ("sgd", "nesterov", "adamw"):
        model, settings = _placed()
        optimizer = optim.build_optimizer(model, ARCH, OptimConfig(opt=name, lr=0.01), fused=True)
        assert all(group["fused"] is True for group in optimizer.param_groups), name
        before = _parameters(model)
        _step(model, settings, optimizer, settings.grad_scaler())
        after = _parameters(model)
        assert all(torch.isfinite(p).all() for p in after), name
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), name
        if name == "adamw":  # fused AdamW keeps its step counts on the device
            steps = [s["step"] for s in optimizer.state.values()]
            assert steps and all(s.is_cuda and float(s) == 1.0 for s in steps)
        else:
            buffers = [s["momentum_buffer"] for s in optimizer.state.values()]
            assert buffers and all(b.is_cuda for b in buffers)
    model, settings = _placed()  # RMSprop has no fused kernel: it takes the ordinary one
    optimizer = optim.build_optimizer(model, ARCH, OptimConfig(opt="rmsprop", lr=0.001), fused=True)
    _step(model, settings, optimizer, settings.grad_scaler())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_seed_makes_cudnn_deterministic_and_no_seed_lets_it_autotune():
    assert torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        worker.configure_process(RunConfig(data=DataConfig(fake=True), seed=0), _ctx())
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        torch.backends.cudnn.deterministic = False
        worker.configure_process(RunConfig(data=DataConfig(fake=True)), _ctx())
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_gpu_flag_and_the_launchers_local_rank_choose_the_device():
    count = torch.cuda.device_count()
    single = Topology("single", 1, 1)
    assert distributed.select_device(DistConfig(), 0, single) == torch.device("cuda", 0)
    assert distributed.select_device(DistConfig(gpu=count - 1), 0, single) == torch.device("cuda", count - 1)
    assert distributed.select_device(DistConfig(no_accel=True), 0, single) == torch.device("cpu")
    try:
        distributed.select_device(DistConfig(gpu=count), 0, single)
    except UserError as exc:
        assert f"cuda:{count}" in str(exc), exc
    else:
        raise AssertionError(f"--gpu {count} was accepted on a machine with {count} GPU(s)")
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "1",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip
    # With several GPUs a process takes its local rank's; with one visible GPU (a scheduler's
    # --gpus-per-task=1) it takes that one, whatever its local rank.
    expected = torch.device("cuda", 1 if count > 1 else 0)
    for source, env in (("torchrun", torchrun), ("slurm", slurm)):
        topology = distributed.plan(DistConfig(), env)
        assert (topology.source, topology.world_size, topology.local_rank(0)) == (source, 2, 1)
        assert distributed.select_device(DistConfig(), topology.local_rank(0), topology) == expected, source


def test_data_parallel_replicas_compute_in_the_autocast_dtype_asked_for():
    """nn.DataParallel runs each replica in a thread of its own; autocast's dtype must reach them."""
    need_gpus(2)
    need_bf16()
    seen: list[torch.dtype] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.seen = nn.Conv2d(3, 4, 3), seen

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            self.seen.append(y.dtype)
            return y.float().mean(dim=(1, 2, 3))

    wrapped = compute.wrap_model(Probe().to(_cuda0()), _ctx(), data_parallel=True)
    assert isinstance(wrapped, nn.DataParallel) and len(wrapped.device_ids) == torch.cuda.device_count()
    settings = compute.Compute(_cuda0(), torch.bfloat16, channels_last=False, compile=False)
    with settings.autocast():
        wrapped(torch.randn(2 * torch.cuda.device_count(), 3, 8, 8, device=_cuda0()))
    assert len(seen) == torch.cuda.device_count()
    assert set(seen) == {torch.bfloat16}, f"replicas computed in {seen} under bf16 autocast"
