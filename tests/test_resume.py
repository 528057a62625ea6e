"""Stop anywhere, resume, get the same model: at epoch ends, mid-epoch on a signal, after a hard kill.

Every comparison is bit for bit against a run that was never interrupted. SqueezeNet is used because its
dropout draws from each rank's generator, so a resume that lost the random states would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from imagenet_cli.checkpoint import CHECKPOINT_NAME
from imagenet_cli.core.errors import EXIT_PREEMPTED

from .conftest import TWO_RANKS, load, ok, run_cli, start_cli

ARCH = "squeezenet1_1"
# 256 images in batches of 8: 32 steps an epoch, so a signal lands well inside one.
RUN = ("--fake-data", "--image-size", "32", "--fake-train-images", "256", "--fake-val-images", "16", "-a", ARCH,
       "-b", "8", "--lr", "0.01", "--seed", "5", "-p", "1")  # fmt: skip
EPOCHS = "3"


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load(a)["state_dict"], load(b)["state_dict"]
    differing = [k for k in left if not torch.equal(left[k], right[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Path]:
    """The references, made once per layout on first use: three epochs, never interrupted."""

    class Runs(dict):
        def __missing__(self, layout: tuple[str, ...]) -> Path:
            out = tmp_path_factory.mktemp("straight")
            ok(run_cli("train", *RUN, *layout, "-j", "1", "--epochs", EPOCHS, "--output-dir", str(out)))
            self[layout] = out / CHECKPOINT_NAME
            return self[layout]

    return Runs()


@pytest.fixture()
def straight_run(layout: tuple[str, ...], straight_runs: dict[tuple[str, ...], Path]) -> Path:
    return straight_runs[layout]


@pytest.fixture(params=[(), TWO_RANKS], ids=["1-rank", "2-ranks"])
def layout(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return request.param


def test_resuming_at_an_epoch_boundary_is_bit_identical(layout, straight_run, tmp_path):
    ok(run_cli("train", *RUN, *layout, "-j", "1", "--epochs", "1", "--output-dir", str(tmp_path)))
    assert load(tmp_path / CHECKPOINT_NAME)["epoch"] == 1
    ok(run_cli("resume", str(tmp_path / CHECKPOINT_NAME), "--epochs", EPOCHS))
    assert_same_weights(tmp_path / CHECKPOINT_NAME, straight_run)


# SIGUSR1 (SLURM's warning before a preemption) takes SIGTERM's path through the same handler: test_control.py
# shows it asks for the stop; SIGINT has a branch of its own (a second Ctrl-C stops at once).
@pytest.mark.parametrize(
    ("layout", "sig"),
    [((), signal.SIGTERM), ((), signal.SIGINT), (TWO_RANKS, signal.SIGTERM)],
    ids=["1-rank-SIGTERM", "1-rank-SIGINT", "2-ranks-SIGTERM"],
    indirect=["layout"],
)
def test_a_signal_mid_epoch_saves_and_the_resumed_run_is_bit_identical(layout, sig, straight_run, tmp_path):
    with start_cli("train", *RUN, *layout, "-j", "1", "--epochs", EPOCHS, "--output-dir", str(tmp_path)) as run:
        run.wait_for("Epoch: [1][ 3/32]")  # it prints a line per step with -p 1
        run.send_signal(sig)  # to the launching process; it passes the signal on to its workers
        stopped = run.finish(timeout=120)
    stderr = stopped.stderr
    assert stopped.returncode == EXIT_PREEMPTED, stderr
    assert f"stopped by {sig.name} at epoch 1, step" in stderr and "imagenet-cli resume" in stderr
    saved = load(tmp_path / CHECKPOINT_NAME)
    assert saved["epoch"] == 1 and 3 <= saved["step"] < 32  # inside the epoch: every rank finished its step
    assert len(saved["rng_states"]) == (2 if layout else 1)
    result = ok(run_cli("resume", str(tmp_path / CHECKPOINT_NAME), "--epochs", EPOCHS))
    assert f"at epoch 1, step {saved['step']}" in result.stdout
    assert_same_weights(tmp_path / CHECKPOINT_NAME, straight_run)


def test_after_a_hard_kill_the_last_periodic_checkpoint_resumes_exactly(layout, straight_run, tmp_path):
    """SIGKILL gives no chance to save: `--save-every-steps` is what is left, whole, and enough."""
    with start_cli("train", *RUN, *layout, "-j", "1", "--epochs", EPOCHS, "--save-every-steps", "4",
                   "--output-dir", str(tmp_path)) as run:  # fmt: skip
        run.wait_for("Epoch: [1][ 6/32]")
        for pid in [run.pid, *_descendants(run.pid)]:
            os.kill(pid, signal.SIGKILL)
        run.finish(timeout=60)
    saved = load(tmp_path / CHECKPOINT_NAME)
    assert (saved["epoch"], saved["step"]) in {(1, 4), (1, 8)}
    ok(run_cli("resume", str(tmp_path / CHECKPOINT_NAME), "--epochs", EPOCHS))
    assert_same_weights(tmp_path / CHECKPOINT_NAME, straight_run)


def _descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for child in found for p in [int(child), *_descendants(int(child))]]


def test_keep_epochs_keeps_the_last_k_epoch_copies(tmp_path):
    ok(run_cli("train", *RUN, "-j", "0", "--epochs", "3", "--keep-epochs", "2", "--fake-train-images", "16",
               "--output-dir", str(tmp_path)))  # fmt: skip
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_epoch_*.pth.tar"))
    assert kept == ["checkpoint_epoch_001.pth.tar", "checkpoint_epoch_002.pth.tar"]
    assert load(tmp_path / kept[0])["epoch"] == 2
