"""The real command line on the GPU: seeded bf16 and fp16 runs that stop and resume bit for bit,
`--compile`, `--gpu N`, `--data-parallel`, torchrun's LOCAL_RANK, `--sync-bn`, and checkpoints that
cross between GPU machines and CPU-only ones.

Exactness: with `--seed` the tool makes cuDNN deterministic, and every kernel these runs use is then
deterministic on one GPU (convolutions, batch norm, max pooling, the (1, 1) average pool, which is a
mean, fused SGD), so the comparisons are bit for bit. `--compile` gets a looser check: inductor picks
its own kernels and no exactness is claimed for it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import select
import signal
import struct
import subprocess
import termios
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import torch

from imagenet_cli.core import models
from imagenet_cli.core.errors import EXIT_PREEMPTED
from imagenet_cli.report.records import METRICS_NAME

from .helpers import (
    CHECKPOINT,
    cli_env,
    command,
    devices_of,
    differing,
    load,
    need_bf16,
    ok,
    run_cli,
    session_dir,
    start_cli,
)

FAKE = ("--fake-data", "--image-size", "32", "--fake-val-images", "16", "-j", "0")
# SqueezeNet's dropout draws from the CUDA generator, so a resume that lost its state would show.
# 256 images in batches of 8: 32 steps an epoch, a progress line each.
EXACT = (*FAKE, "--fake-train-images", "256", "-a", "squeezenet1_1", "-b", "8", "--lr", "0.01", "--seed", "0",
         "-p", "1")  # fmt: skip
SMALL = (*FAKE, "--fake-train-images", "64", "-a", "resnet18", "-b", "16", "--lr", "0.01", "-p", "2")
STEPS = 32  # per epoch, in EXACT
EPOCHS = 2  # of the uninterrupted reference runs


class Run(NamedTuple):
    checkpoint: Path
    stdout: str


@functools.cache
def _started(name: str, *args: object) -> tuple[Path, Future]:
    out = session_dir() / name
    return out, start_cli("train", *args, "--output-dir", out)


def straight(amp: str, epochs: int = EPOCHS) -> Run:
    """The reference: a seeded run never interrupted (made once per session, started on first mention)."""
    out, running = _started(f"straight-{amp}-{epochs}", *EXACT, "--amp", amp, "--epochs", epochs)
    return Run(out / CHECKPOINT, ok(running.result()).stdout)


def default_run() -> Run:
    """One seeded epoch of ResNet-18 with every speed setting left at its default."""
    out, running = _started("defaults", *SMALL, "--seed", "0", "--epochs", "1")
    return Run(out / CHECKPOINT, ok(running.result()).stdout)


def start_shared_runs() -> None:
    """Start the runs several tests compare against, side by side, before waiting for any."""
    _started(f"straight-bf16-{EPOCHS}", *EXACT, "--amp", "bf16", "--epochs", EPOCHS)
    _started(f"straight-fp16-{EPOCHS}", *EXACT, "--amp", "fp16", "--epochs", EPOCHS)
    _started("defaults", *SMALL, "--seed", "0", "--epochs", "1")


def metrics(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / METRICS_NAME).read_text().splitlines() if line.strip()]


def assert_same_training_state(resumed: Path, reference: Path) -> None:
    diff = differing(resumed, reference)
    assert not diff, f"{len(diff)} tensors differ from the uninterrupted run, e.g. {diff[:3]}"


def test_a_default_run_on_cuda_is_bf16_channels_last_with_fused_sgd_and_keeps_cuda_rng_states():
    need_bf16()
    start_shared_runs()
    run = default_run()
    assert " on cuda" in run.stdout and "bf16 autocast, channels-last" in run.stdout, run.stdout[:500]
    saved = load(run.checkpoint, on_saved_devices=True)
    assert devices_of(saved["state_dict"]) == {"cuda:0"}
    assert all(group["fused"] is True for group in saved["optimizer"]["param_groups"])
    assert saved["scaler"]["scale"] == 1.0
    [states] = saved["rng_states"]
    assert states["cuda"] and all(s.dtype == torch.uint8 for s in states["cuda"])


def test_a_seeded_bf16_run_resumed_at_an_epoch_boundary_is_bit_identical(tmp_path):
    need_bf16()
    start_shared_runs()
    ok(run_cli("train", *EXACT, "--amp", "bf16", "--epochs", "1", "--output-dir", tmp_path))
    saved = load(tmp_path / CHECKPOINT)
    assert (saved["epoch"], saved["step"]) == (1, 0) and "cuda" in saved["rng_states"][0]
    ok(run_cli("resume", tmp_path / CHECKPOINT, "--epochs", EPOCHS))
    assert_same_training_state(tmp_path / CHECKPOINT, straight("bf16").checkpoint)


def _pending(fd: int) -> int:
    """Bytes written to a pipe and not yet read."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _start_with_room(args: list[object], room: int, stderr: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start a command whose stdout is a pipe with only `room` bytes free (the rest is filler this test
    wrote first). A run printing a line per step stops inside the print that no longer fits: at a
    step known in advance, however fast the GPU, until someone reads. Returns the process, the pipe's
    reading end and the filler's size."""
    read, write = os.pipe()
    capacity = fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, max(4096, room))
    filler = capacity - room
    os.write(write, b"#" * filler)
    with open(stderr, "wb") as err:
        process = subprocess.Popen(command(*args), env=cli_env(), cwd=session_dir(), stdout=write, stderr=err)
    os.close(write)
    return process, read, filler


def _wait_until_blocked(process: subprocess.Popen[bytes], read: int, filled_at: int, timeout: float = 240) -> None:
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before its output filled the pipe"
        pending = _pending(read)
        if pending != last:
            last, since = pending, time.monotonic()
        elif pending >= filled_at and time.monotonic() - since > 2:
            return  # the pipe is all but full and no line came for a while: it waits in a print
        time.sleep(0.05)
    raise AssertionError(f"the run did not fill its output pipe within {timeout:.0f}s")


def _drain(process: subprocess.Popen[bytes], read: int, timeout: float = 240) -> bytes:
    """Read the pipe to its end (the process's exit), then reap the process; kill it after `timeout`."""
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while select.select([read], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(read, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    finally:
        os.close(read)
    return b"".join(chunks)


def test_a_seeded_bf16_run_preempted_mid_epoch_resumes_bit_identically(tmp_path):
    """SIGTERM inside the last epoch (the tool's preemption path): it saves at that step, every generator's
    state included, and the resumed run ends where the uninterrupted one did."""
    need_bf16()
    reference = straight("bf16")
    lines = reference.stdout.encode().splitlines(keepends=True)
    epoch_1 = [i for i, line in enumerate(lines) if line.startswith(b"Epoch: [1]")]
    assert len(epoch_1) == STEPS, f"expected a progress line per step in: {reference.stdout[:800]}"
    halfway = epoch_1[STEPS // 2 - 1]
    room = sum(len(line) for line in lines[: halfway + 1])  # up to step 16 of epoch 1: the next line waits
    out = tmp_path / "run"
    process, read, filler = _start_with_room(
        ["train", *EXACT, "--amp", "bf16", "--epochs", EPOCHS, "--output-dir", out], room, tmp_path / "stderr"
    )
    try:
        _wait_until_blocked(process, read, filled_at=filler + room - 200)  # 200: more than a progress line
    except BaseException:
        process.kill()
        _drain(process, read)
        raise
    process.send_signal(signal.SIGTERM)
    _drain(process, read)
    stderr = (tmp_path / "stderr").read_text()
    assert process.returncode == EXIT_PREEMPTED, stderr[-3000:]
    saved = load(out / CHECKPOINT)
    assert saved["epoch"] == 1 and 0 < saved["step"] < STEPS, f"stopped at epoch {saved['epoch']}, step {saved['step']}"
    result = ok(run_cli("resume", out / CHECKPOINT, "--epochs", EPOCHS))
    assert f"step {saved['step']}" in result.stdout + result.stderr
    assert_same_training_state(out / CHECKPOINT, reference.checkpoint)


def test_fp16_keeps_its_grad_scaler_in_the_checkpoint_and_resumes_bit_identically(tmp_path):
    """The scale is part of the state: resumed with a fresh one, fp16 would skip other steps than the
    uninterrupted run did."""
    start_shared_runs()
    ok(run_cli("train", *EXACT, "--amp", "fp16", "--epochs", "1", "--output-dir", tmp_path))
    scaler = load(tmp_path / CHECKPOINT)["scaler"]
    assert {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(scaler)
    assert 0 < scaler["scale"] <= 2.0**16 and scaler["growth_interval"] == 2000
    ok(run_cli("resume", tmp_path / CHECKPOINT, "--epochs", EPOCHS))
    reference = straight("fp16")
    assert "fp16 autocast" in reference.stdout
    assert_same_training_state(tmp_path / CHECKPOINT, reference.checkpoint)
    assert load(tmp_path / CHECKPOINT)["scaler"] == load(reference.checkpoint)["scaler"]


def test_compile_trains_evaluates_and_saves_plain_parameter_names(tmp_path):
    """Looser than the eager tests: inductor chooses its own kernels, so only sanity is checked. SqueezeNet
    (no batch norm) keeps the compilation short; 16 validation images in one batch, so no second shape."""
    args = (*FAKE, "--fake-train-images", "64", "-a", "squeezenet1_1", "-b", "16", "--lr", "0.01", "-p", "2")
    result = ok(run_cli("train", *args, "--compile", "--epochs", "1", "--output-dir", tmp_path, timeout=600))
    assert "compiled" in result.stdout
    state = load(tmp_path / CHECKPOINT)["state_dict"]
    assert not [k for k in state if k.startswith(("_orig_mod.", "module."))]
    models.build_model("squeezenet1_1", 10).load_state_dict(state)  # an eager model takes them as they are
    [epoch] = [m for m in metrics(tmp_path) if m["type"] == "epoch"]
    assert math.isfinite(epoch["train_loss"]) and math.isfinite(epoch["val_loss"])


def test_gpu_n_trains_on_that_gpu_and_a_missing_one_is_named(tmp_path):
    last = torch.cuda.device_count() - 1
    missing = start_cli("train", *SMALL, "--gpu", last + 1, "--epochs", "1", "--output-dir", tmp_path / "missing")
    ok(run_cli("train", *SMALL, "--gpu", last, "--epochs", "1", "--output-dir", tmp_path / "ok"))
    assert devices_of(load(tmp_path / "ok" / CHECKPOINT, on_saved_devices=True)["state_dict"]) == {f"cuda:{last}"}
    missing = missing.result()
    assert missing.returncode != 0 and f"cuda:{last + 1}" in missing.stderr, missing.stderr[-2000:]


def test_data_parallel_trains_in_one_process_and_saves_plain_names(tmp_path):
    result = ok(run_cli("train", *SMALL, "--data-parallel", "--epochs", "1", "--output-dir", tmp_path))
    assert " on cuda: 1 process" in result.stdout
    state = load(tmp_path / CHECKPOINT, on_saved_devices=True)["state_dict"]
    assert not [k for k in state if k.startswith("module.")] and devices_of(state) == {"cuda:0"}


def test_under_torchrun_local_rank_picks_the_gpu(tmp_path):
    """LOCAL_RANK=1: cuda:1 where there are several GPUs; where one is visible (a scheduler's
    --gpus-per-task=1), that one. A world of 1, so no process group is needed."""
    expected = "cuda:1" if torch.cuda.device_count() > 1 else "cuda:0"
    env = cli_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="1", LOCAL_WORLD_SIZE="1")
    ok(run_cli("train", *SMALL, "--epochs", "1", "--output-dir", tmp_path, env=env))
    assert devices_of(load(tmp_path / CHECKPOINT, on_saved_devices=True)["state_dict"]) == {expected}


def test_sync_bn_in_a_spawned_single_gpu_run_trains(tmp_path):
    """One spawned process: nothing to synchronise, but the flag and the spawn path must work on CUDA."""
    result = ok(run_cli("train", *SMALL, "--sync-bn", "--multiprocessing-distributed", "--nproc-per-node", "1",
                        "--epochs", "1", "--output-dir", tmp_path))  # fmt: skip
    assert " on cuda" in result.stdout
    assert set(load(tmp_path / CHECKPOINT)["state_dict"]) == set(load(default_run().checkpoint)["state_dict"])


def test_a_gpu_checkpoint_evaluates_on_a_machine_without_cuda():
    run = default_run()
    args = ("evaluate", run.checkpoint, "--fake-data", "--image-size", "32", "--fake-val-images", "16", "-b", "16",
            "-j", "0", "--json")  # fmt: skip
    hiding = start_cli(*args, env=cli_env(hide_gpus=True))
    no_accel = json.loads(ok(run_cli(*args, "--no-accel")).stdout)
    hidden = json.loads(ok(hiding.result()).stdout)
    assert hidden["images"] == no_accel["images"] == 16
    assert math.isclose(hidden["loss"], no_accel["loss"], rel_tol=1e-4) and hidden["acc1"] == no_accel["acc1"]
    # The same images, validated on the GPU in bf16 at the end of training: close, not equal.
    [epoch] = [m for m in metrics(run.checkpoint.parent) if m["type"] == "epoch"]
    assert abs(hidden["loss"] - epoch["val_loss"]) < 0.05 * max(1.0, epoch["val_loss"]), (hidden, epoch)


def test_a_gpu_checkpoint_resumes_on_a_machine_without_cuda(tmp_path):
    result = ok(run_cli("resume", default_run().checkpoint, "--epochs", "2", "--output-dir", tmp_path,
                        env=cli_env(hide_gpus=True)))  # fmt: skip
    assert " on cpu" in result.stdout
    saved = load(tmp_path / CHECKPOINT, on_saved_devices=True)
    assert saved["epoch"] == 2 and devices_of(saved["state_dict"]) == {"cpu"}


def test_a_checkpoint_from_a_machine_with_more_gpus_resumes_here(tmp_path):
    """A one-process run where more GPUs were visible (an 8-GPU node) saved a CUDA generator state for
    each of them; resuming it where fewer are visible must still work."""
    saved = load(default_run().checkpoint)
    states = saved["rng_states"][0]["cuda"]
    saved["rng_states"][0]["cuda"] = [*states, *(s.clone() for s in states)]  # twice the GPUs
    torch.save(saved, tmp_path / "from-a-bigger-node.pth.tar")
    ok(run_cli("resume", tmp_path / "from-a-bigger-node.pth.tar", "--epochs", "2", "--output-dir", tmp_path / "out"))
    assert load(tmp_path / "out" / CHECKPOINT)["epoch"] == 2


def test_a_cpu_checkpoint_resumes_on_the_gpu_with_fused_adamw(tmp_path):
    """Written by unfused AdamW on a CPU (its step counts on the host), continued by fused AdamW on the
    GPU (which wants them on the device)."""
    ok(run_cli("train", *SMALL, "--opt", "adamw", "--epochs", "1", "--output-dir", tmp_path,
               env=cli_env(hide_gpus=True)))  # fmt: skip
    assert not any(group.get("fused") for group in load(tmp_path / CHECKPOINT)["optimizer"]["param_groups"])
    result = ok(run_cli("resume", tmp_path / CHECKPOINT, "--epochs", "2"))
    assert " on cuda" in result.stdout
    saved = load(tmp_path / CHECKPOINT, on_saved_devices=True)
    assert saved["epoch"] == 2 and all(group["fused"] for group in saved["optimizer"]["param_groups"])
    steps = [state["step"] for state in saved["optimizer"]["state"].values()]
    assert steps and all(float(s) == 8 for s in steps), sorted({float(s) for s in steps})  # 4 steps an epoch
