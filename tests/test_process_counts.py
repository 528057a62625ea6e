"""Runs on process counts that do not divide the batch (3, 5, 6, 7, 12 GPUs are common allocations).

A batch nobody typed is rounded down to split evenly, and the run records the batch it really used; a
typed -b that does not divide is refused, naming the nearest that do; evaluation takes any batch on any
process count, with the figures of one process. Real spawned Gloo ranks, kept tiny for two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagenet_cli.checkpoint import CHECKPOINT_NAME
from imagenet_cli.config import RunConfig, build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.errors import UserError
from imagenet_cli.data.loaders import fit_batch, per_process_batch

from .conftest import TINY_ARCH, json_result, load, ok, run_cli

THREE_RANKS = ("--multiprocessing-distributed", "--nproc-per-node", "3", "--no-accel")
# 255 training images: 85 per rank, one step of the rounded default batch (3 × 85).
TINY_DEFAULT_BATCH = ("train", "--fake-data", "--image-size", "32", "--fake-train-images", "255",
                      "--fake-val-images", "12", "-a", TINY_ARCH, "--epochs", "1", "--lr", "0.01", "-j", "0",
                      "--seed", "0")  # fmt: skip


@pytest.fixture(scope="module")
def default_batch_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One epoch on 3 Gloo ranks without -b: (output dir, stdout, stderr)."""
    out = tmp_path_factory.mktemp("three_ranks")
    result = ok(run_cli(*TINY_DEFAULT_BATCH, *THREE_RANKS, "--output-dir", str(out)))
    return out, result.stdout, result.stderr


def test_the_default_batch_on_three_ranks_is_rounded_down_and_recorded(default_batch_run):
    out, stdout, stderr = default_batch_run
    assert "note: the default batch 256 (no -b given) does not split evenly over 3 processes: " in stderr
    assert "this run uses 255 = 3 × 85; give -b to choose another (a multiple of 3)" in stderr
    assert "3 processes (spawned, gloo, 1 node(s)), batch 255 (85 per process)" in stdout
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["batch-size"] == 255 and "batch-size-given" not in recorded
    stored = load(out / CHECKPOINT_NAME)["config"]["optim"]
    assert (stored["batch_size"], stored["batch_size_given"]) == (255, False)


def test_a_resumed_default_batch_keeps_its_batch_where_it_divides(default_batch_run):
    """What `resume` of that run would use: the same 255 on 3 ranks (an exact continuation) or on 1 and 5;
    on 2 ranks, 254, the nearest below that splits evenly (the run never asked for a batch)."""
    out, _, _ = default_batch_run
    base = RunConfig.from_dict(load(out / CHECKPOINT_NAME)["config"])
    resumed = build_config("train", {"resume": str(out / CHECKPOINT_NAME)}, base)
    for processes in (3, 1, 5):
        assert fit_batch(resumed, processes) == (resumed, None)
    fitted, note = fit_batch(resumed, 2)
    assert fitted.optim.batch_size == 254
    assert note is not None and note.startswith("the resumed run's batch 255 (no -b given)")


def test_resuming_it_on_two_ranks_rounds_its_batch_again(default_batch_run, tmp_path):
    """`resume` has no -b: a run that never chose its batch goes on with the nearest that splits."""
    out, _, _ = default_batch_run
    result = ok(run_cli("resume", str(out / CHECKPOINT_NAME), "--epochs", "2", "--multiprocessing-distributed",
                        "--nproc-per-node", "2", "--output-dir", str(tmp_path)))  # fmt: skip
    assert "note: the resumed run's batch 255 (no -b given) does not split evenly over 2 processes" in result.stderr
    assert "batch 254 (127 per process)" in result.stdout
    assert load(tmp_path / CHECKPOINT_NAME)["config"]["optim"]["batch_size"] == 254


def test_a_typed_batch_that_does_not_divide_is_refused_with_the_nearest_that_do():
    result = run_cli("train", "--fake-data", "-a", TINY_ARCH, "-b", "256", *THREE_RANKS)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0] == (
        "error: --batch-size 256 is the total over 3 processes and must divide evenly "
        "(each process would get 85.3333); the nearest that do are 255 and 258"
    )


def test_evaluate_on_three_ranks_with_the_default_batch_equals_one_process(trained_run):
    """32 validation images over 3 ranks (11, 11, 10), the default batch 256 split 86/85/85: each image
    counted once, the same figures as one process."""
    common = ("evaluate", str(trained_run / CHECKPOINT_NAME), "--json", "-j", "0", "--no-accel")
    single = json_result(run_cli(*common))
    spread = json_result(run_cli(*common, *THREE_RANKS))
    assert (single["images"], spread["images"], spread["world_size"]) == (32, 32, 3)
    for key in ("acc1", "acc5", "per_class", "confusion"):
        assert spread[key] == single[key], key
    assert spread["loss"] == pytest.approx(single["loss"], rel=1e-5)


# --- the split itself, without processes -----------------------------------------------------------------------


def _config(command: str = "train", **given: object) -> RunConfig:
    return build_config(command, {"fake": True, "arch": TINY_ARCH, **given})


def _rank(rank: int, world_size: int) -> DistContext:
    return DistContext(rank, rank, world_size, world_size, torch.device("cpu"))


def test_an_evaluation_batch_is_split_as_evenly_as_it_goes():
    assert [per_process_batch(256, _rank(r, 3), False) for r in range(3)] == [86, 85, 85]
    assert [per_process_batch(2, _rank(r, 3), False) for r in range(3)] == [1, 1, 1]  # a loader needs one
    for cfg in (_config("evaluate", batch_size=256), _config(batch_size=256, evaluate_only=True)):
        assert fit_batch(cfg, 3) == (cfg, None)  # typed, yet nothing to refuse: no figure depends on it


@pytest.mark.parametrize(
    ("command", "processes", "given", "used", "words"),
    [
        ("train", 12, {}, 252, "this run uses 252 = 12 × 21;"),
        ("train", 3, {"grad_accum_steps": 2}, 255, "255 = 3 × 85; 510 per optimizer step with --grad-accum-steps 2"),
        ("finetune", 64, {"weights": "w.pth"}, 64, "the default batch 32 (no -b given) does not split evenly over 64"),
    ],
)
def test_a_default_batch_is_rounded_to_the_process_count(command, processes, given, used, words):
    fitted, note = fit_batch(_config(command, **given), processes)
    assert fitted.optim.batch_size == used and words in (note or "")
    assert fit_batch(_config(command, **given), 4 if command == "train" else 1)[1] is None  # 256 and 32 divide


def test_a_batch_typed_on_resume_is_the_users_choice(default_batch_run):
    out, _, _ = default_batch_run
    base = RunConfig.from_dict(load(out / CHECKPOINT_NAME)["config"])
    typed = build_config("train", {"resume": str(out / CHECKPOINT_NAME), "batch_size": 255}, base)
    with pytest.raises(UserError, match="the nearest that do are 254 and 256"):
        fit_batch(typed, 2)


def test_data_parallel_under_several_processes_is_refused():
    """One process drives every GPU with --data-parallel; under torchrun or srun each process would take
    the whole batch while DDP used one GPU each: the batch of the run would silently grow N times."""
    cfg = _config(data_parallel=True)
    assert fit_batch(cfg, 1) == (cfg, None)  # the one process takes the whole batch
    with pytest.raises(UserError, match="--data-parallel drives every local GPU from one process"):
        fit_batch(cfg, 2)
