"""How the model runs on its device: autocast precision, memory layout, compilation, optimizer kernels.

The defaults are the settings behind the published fast ResNet figures (bf16 autocast, channels-last,
fused optimizer kernels) wherever they are safe. A CPU gets bf16 only where it multiplies bf16 matrices in
hardware (AMX: ResNet-18 training steps at 224 px 2.3x faster than fp32 on a 2-core Xeon); other CPUs keep
fp32, since without such hardware bf16 runs many times slower (ResNet-18 training: 14x slower on an AVX2
CPU). Channels-last helps CPUs too: their convolutions need fewer layout conversions and temporary buffers.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ComputeConfig
from ..core.context import DistContext
from ..core.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_NAMES = {dtype: name for name, dtype in AMP_DTYPES.items()}


@dataclass(frozen=True)
class Compute:
    """The resolved settings of one process."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling. bf16 and fp32 need none, but get a scaler fixed
        at 1 all the same: it skips, on the device, any update whose gradients are not finite (with fused
        optimizers, without a host sync), so a NaN never reaches the weights."""
        if self.amp_dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return torch.amp.GradScaler(self.device.type, init_scale=1.0, growth_interval=2**30)

    def restore_scaler(self, scaler: torch.amp.GradScaler, stored: dict | None) -> bool:
        """Continue a stored loss scale only when it was made for the same kind of scaling: `--amp auto`
        means bf16 on one GPU and fp16 on another, and fp16's scale must not leak into bf16's fixed 1, nor
        the reverse (fp16 would then run unscaled). The kind shows in the growth interval."""
        own = scaler.state_dict()
        if not stored or not own or stored.get("growth_interval") != own.get("growth_interval"):
            return False
        scaler.load_state_dict(stored)
        return True

    @property
    def precision(self) -> str:
        return AMP_NAMES[self.amp_dtype] if self.amp_dtype else "fp32"

    def describe(self) -> str:
        precision = f"{self.precision} autocast" if self.amp_dtype else "fp32"
        layout = "channels-last" if self.channels_last else "NCHW"
        return ", ".join([precision, layout, *(["compiled"] if self.compile else [])])


def resolve(cfg: ComputeConfig, device: torch.device, model: nn.Module) -> Compute:
    amp = default_amp(device) if cfg.amp == "auto" else cfg.amp
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use --amp fp16")
    channels_last = cfg.channels_last
    if channels_last is None:
        channels_last = device.type in ("cuda", "cpu") and is_convolutional(model)
    return Compute(device, AMP_DTYPES.get(amp), channels_last, cfg.compile)


def default_amp(device: torch.device) -> str:
    if device.type == "cpu":
        return "bf16" if cpu_multiplies_bf16() else "none"
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon from its 4th generation), which oneDNN's bf16
    convolutions and matrix products run on, and oneDNN may use them: `ONEDNN_MAX_CPU_ISA` (or its old
    name) set below AMX makes bf16 10x slower than fp32. CPUs with AVX-512's bf16 instructions alone keep
    fp32: none was at hand to measure. torch's probe is private; a torch without it keeps fp32."""
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if capped and "AMX" not in capped.upper():
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def is_convolutional(model: nn.Module) -> bool:
    """CNNs have many convolutions; patch-embedding transformers (ViT, Swin) have one: no gain from channels-last."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def place(model: nn.Module, compute: Compute) -> nn.Module:
    """On its device, in its memory layout (parameters keep their layout through DDP and checkpoints:
    state dicts hold the same values either way)."""
    return model.to(compute.device, memory_format=compute.memory_format)


class AutocastInEachReplica(nn.Module):
    """`nn.DataParallel` runs each replica in a thread of its own and enters autocast there again without
    its dtype, so bf16 silently becomes fp16 (with bf16's loss scale of 1: gradients may underflow). Each
    replica enters autocast with the run's dtype itself. `models.unwrap` sees through it."""

    is_thin_wrapper = True

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=self.dtype):
            return self.module(images)


def wrap_model(
    model: nn.Module, ctx: DistContext, data_parallel: bool, autocast_dtype: torch.dtype | None = None
) -> nn.Module:
    """DDP on every backend (the reference skipped it on CPU, so its ranks trained apart). DataParallel's
    replicas each enter the run's autocast themselves (see compute.AutocastInEachReplica)."""
    model = model.to(ctx.device)
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if data_parallel:
        if ctx.device.type != "cuda":
            raise UserError("--data-parallel needs CUDA GPUs")
        return nn.DataParallel(AutocastInEachReplica(model, autocast_dtype) if autocast_dtype else model)
    return model
