"""How the model runs: fast settings chosen per device, and the same predictions as the plain fp32 path."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from imagenet_cli.checkpoint import read_checkpoint
from imagenet_cli.config import ComputeConfig, build_config
from imagenet_cli.core import models
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.errors import UserError
from imagenet_cli.data.fakedata import FakeImages
from imagenet_cli.data.loaders import Normalizer
from imagenet_cli.train import compute
from imagenet_cli.train.training import wrap

from .conftest import FAST_FAKE, TINY_ARCH, load, ok, run_cli

CPU = torch.device("cpu")


@pytest.mark.parametrize("amx", [False, True])
def test_the_cpu_default_is_bf16_only_with_amx_and_channels_last_for_convolutional_networks(amx, monkeypatch):
    """bf16 without matrix hardware is many times slower on CPUs, with AMX faster; channels-last is faster
    either way (see compute.py). Both kinds of CPU are asked for, whichever this one is."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    settings = compute.resolve(ComputeConfig(), CPU, models.build_model("resnet18", 10))
    assert settings.amp_dtype == (torch.bfloat16 if amx else None)
    assert settings.channels_last and not settings.compile
    assert settings.describe() == ("bf16 autocast" if amx else "fp32") + ", channels-last"
    assert not compute.resolve(ComputeConfig(), CPU, nn.Linear(2, 2)).channels_last
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # oneDNN told to leave AMX alone
    assert compute.default_amp(CPU) == "none"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")
    assert compute.default_amp(CPU) == ("bf16" if amx else "none")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert compute.default_amp(CPU) == "none"  # a torch without the probe


@pytest.mark.parametrize(("arch", "convolutional"), [("resnet50", True), ("convnext_tiny", True),
                         ("mobilenet_v3_small", True), ("vit_b_16", False), ("swin_t", False)])  # fmt: skip
def test_channels_last_is_for_convolutional_networks(arch, convolutional):
    with torch.device("meta"):
        model = models.build_model(arch, 10)
    assert compute.is_convolutional(model) is convolutional


def test_explicit_choices_override_the_defaults():
    settings = compute.resolve(ComputeConfig(amp="bf16", channels_last=True), CPU, nn.Linear(2, 2))
    assert settings.amp_dtype == torch.bfloat16 and settings.memory_format == torch.channels_last
    assert settings.describe() == "bf16 autocast, channels-last"
    assert compute.resolve(ComputeConfig(amp="fp16"), CPU, nn.Linear(2, 2)).grad_scaler().is_enabled()
    assert compute.resolve(ComputeConfig(amp="bf16"), CPU, nn.Linear(2, 2)).grad_scaler().get_scale() == 1.0
    with pytest.raises(UserError, match="--amp must be one of auto, none, bf16, fp16"):
        ComputeConfig(amp="fp8")


def _trained_model(run_dir) -> nn.Module:
    loaded = read_checkpoint(str(run_dir / "checkpoint.pth.tar"))
    model = models.build_model(TINY_ARCH, 10)
    models.load_state(model, loaded.state_dict, TINY_ARCH, skip_head=False)
    return model.eval()


def _logits(model: nn.Module, images: torch.Tensor, **choices: object) -> torch.Tensor:
    settings = compute.resolve(ComputeConfig(**choices), CPU, model)  # type: ignore[arg-type]
    placed = compute.place(model, settings)
    with torch.no_grad(), settings.autocast():
        return placed(Normalizer(CPU, settings.memory_format)(images)).float()


def test_channels_last_and_bf16_give_the_predictions_of_the_plain_path(trained_run):
    images, _ = FakeImages(32, 10, 32, seed=1).batch(torch.arange(32))
    model = _trained_model(trained_run)
    plain = _logits(model, images, amp="none", channels_last=False)
    assert torch.allclose(_logits(model, images, amp="none", channels_last=True), plain, atol=1e-4, rtol=1e-4)
    bf16 = _logits(model, images, amp="bf16", channels_last=True)
    assert (bf16.argmax(1) == plain.argmax(1)).float().mean() >= 0.95
    assert (bf16.softmax(1) - plain.softmax(1)).abs().max() < 0.05


def test_a_checkpoint_records_its_precision_and_a_resume_in_another_one_says_so(trained_run, tmp_path):
    """`--amp auto` resolves on the machine at hand: a run resumed elsewhere may change precision."""
    shutil.copytree(trained_run, tmp_path, dirs_exist_ok=True)
    checkpoint = tmp_path / "checkpoint.pth.tar"
    assert load(checkpoint)["precision"] == "fp32"  # trained with --amp none
    changed = ok(run_cli("resume", str(checkpoint), "--epochs", "2", "--amp", "bf16"))
    assert (
        "the checkpoint trained in fp32, this run continues in bf16 (--amp none continues as it was)" in changed.stdout
    )
    assert load(checkpoint)["precision"] == "bf16"
    same = ok(run_cli("resume", str(checkpoint), "--epochs", "3", "--amp", "bf16"))
    assert "continues in" not in same.stdout


def test_fp16_training_scales_its_loss_and_the_scaler_survives_a_resume(tmp_path):
    common = (*FAST_FAKE, "-a", TINY_ARCH, "-b", "16", "--seed", "0", "--output-dir", str(tmp_path))
    first = ok(run_cli("train", *common, "--epochs", "1", "--amp", "fp16"))
    assert "compute: fp16 autocast, channels-last" in first.stdout
    saved = load(tmp_path / "checkpoint.pth.tar")
    assert saved["scaler"]["scale"] > 0 and saved["config"]["compute"]["amp"] == "fp16"
    resumed = ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar"), "--epochs", "2", "-j", "0"))
    assert "compute: fp16 autocast, channels-last" in resumed.stdout
    assert load(tmp_path / "checkpoint.pth.tar")["epoch"] == 2


def test_compiling_keeps_the_plain_parameter_names_and_the_outputs():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    images = torch.randn(2, 3, 8, 8)
    eager = plain(images).detach()
    cfg = build_config("train", {"fake": True, "compile": True})
    settings = compute.resolve(cfg.compute, CPU, plain)
    model = wrap(plain, DistContext(0, 0, 1, 1, CPU), cfg, settings)
    assert torch.allclose(model(images), eager, atol=1e-5)
    assert list(model.state_dict()) == list(plain.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias",
        "1.running_mean", "1.running_var", "1.num_batches_tracked", "4.weight", "4.bias"]  # fmt: skip


def test_a_loss_scale_is_continued_only_by_the_same_kind_of_scaling():
    """`--amp auto` is bf16 on one GPU and fp16 on another: fp16's scale must not leak into bf16's fixed
    1 (nor the reverse, which would leave fp16 unscaled)."""
    fp16, fixed = compute.Compute(CPU, torch.float16, False, False), compute.Compute(CPU, None, False, False)
    scaled = fp16.grad_scaler()
    scaled.load_state_dict({**scaled.state_dict(), "scale": 1024.0})
    into_fixed = fixed.grad_scaler()
    assert not fixed.restore_scaler(into_fixed, scaled.state_dict()) and into_fixed.get_scale() == 1.0
    into_fp16 = fp16.grad_scaler()
    assert not fp16.restore_scaler(into_fp16, fixed.grad_scaler().state_dict())
    assert fp16.restore_scaler(into_fp16, scaled.state_dict()) and into_fp16.get_scale() == 1024.0


def test_a_resumed_optimizer_has_this_runs_settings_before_its_state_is_placed():
    """torch places each state tensor by its group's settings when loading (a fused kernel wants its step
    counts on the parameters' device): the settings of this run must be there first, not after."""
    model = nn.Linear(4, 2)
    before = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    model(torch.randn(3, 4)).sum().backward()
    before.step()
    fused = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5, fused=True)
    from imagenet_cli.train.optim import restore

    restore(fused, before.state_dict())
    group = fused.param_groups[0]
    assert group["fused"] and group["weight_decay"] == 0.5  # the configuration's, not the file's
    assert all(torch.equal(fused.state[p]["exp_avg"], before.state[p]["exp_avg"]) for p in model.parameters())
    fused.step()  # the fused kernel accepts the restored state


def test_random_states_of_files_holding_every_gpus_state_restore_anywhere():
    """Earlier files kept every visible GPU's generator; a machine showing fewer (or none) still resumes."""
    from imagenet_cli.core import randomness

    state = randomness.capture()
    randomness.restore({**state, "cuda": [torch.get_rng_state()] * 8})
    assert "cuda" not in state or isinstance(state["cuda"], torch.Tensor)  # now: this process's own GPU only


def test_each_dataparallel_replica_computes_in_the_runs_autocast_dtype():
    """DataParallel runs replicas in threads of their own, where autocast's dtype would be lost."""
    import threading

    replica = compute.AutocastInEachReplica(nn.Linear(4, 2), torch.bfloat16)
    out: list[torch.Tensor] = []
    worker = threading.Thread(target=lambda: out.append(replica(torch.randn(3, 4))))
    worker.start()
    worker.join()
    assert out[0].dtype == torch.bfloat16 and models.unwrap(nn.DataParallel(replica)) is replica.module
