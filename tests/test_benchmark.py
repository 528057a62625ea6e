"""`imagenet-cli benchmark`: every figure beside its baseline, measured in the same run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from imagenet_cli.train import compute

from .conftest import TINY_ARCH, cli_env, json_result, ok, run_cli


def test_benchmark_measures_train_pipeline_and_eval_each_against_the_reference_way(image_folder):
    result = json_result(
        run_cli("benchmark", str(image_folder), "-a", TINY_ARCH, "-b", "4", "--image-size", "32", "--steps", "1",
                "--warmup", "1", "--images", "12", "-j", "1", "--json")
    )  # fmt: skip
    precision = "bf16 autocast" if compute.cpu_multiplies_bf16() else "fp32"  # the CPU's default
    assert result["machine"]["device"] == "cpu" and result["compute"] == f"{precision}, channels-last"
    parts = [row["part"] for row in result["results"]]
    assert parts == [
        "train", "eval", "pipeline, per core", "pipeline, per core, --seed", "pipeline, 1 workers",
        "shards vs files, 1 workers",
        "e2e: train from files, 1 workers",
    ]  # fmt: skip
    for row in result["results"]:
        ours, baseline = row["ours_images_per_second"], row["baseline_images_per_second"]
        assert ours > 0 and baseline > 0 and row["ratio"] == pytest.approx(ours / baseline)


def test_benchmark_generates_imagenet_like_jpegs_and_with_no_workers_loads_in_its_own_process():
    """Without DATA it generates its JPEGs. -j 0 means what it means everywhere else: no loader worker
    processes, not the default count (each part names the workers it measured with)."""
    shown = ok(
        run_cli("benchmark", "--only", "pipeline", "--image-size", "32", "--images", "4", "-j", "0")
    ).stdout  # fmt: skip
    assert "4 generated 500x375 JPEGs, quality 90" in shown and "ours / baseline" in shown
    parts = [line.split("│")[1].strip() for line in shown.splitlines() if line.startswith("│")]
    assert parts == [
        "pipeline, per core", "pipeline, per core, --seed", "pipeline, 0 workers", "shards vs files, 0 workers"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--only", "everything"), "'everything' is not one of 'train', 'eval', 'pipeline', 'e2e', 'e2e-command'"),
     (("--steps", "0"), "must be positive"), (("--rounds", "0"), "must be positive"),
     (("-j", "-1"), "--workers must be from 0 to 256, got -1"),
     (("/nonexistent",), "has no train/ folder"), (("-a", "resnet19"), "unknown architecture 'resnet19'")],
)  # fmt: skip
def test_benchmark_refuses_bad_input_in_one_line(args, message):
    result = run_cli("benchmark", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_e2e_command_times_the_reference_script_and_ours_as_whole_commands(image_folder):
    """Both commands really ran one epoch each (every step's line was read) and the phases add up."""
    result = json_result(
        run_cli("benchmark", str(image_folder), "--only", "e2e-command", "-a", TINY_ARCH, "-b", "4",
                "--image-size", "32", "-j", "1", "--rounds", "1", "--json")
    )  # fmt: skip
    assert result["results"] == [] and "compute" not in result
    commands = result["commands"]
    assert f"{TINY_ARCH} b4 32px -j 1" in commands["what"]
    (only_round,) = commands["rounds"]
    for side in ("reference", "ours"):
        timed = only_round[side]
        assert (timed["train_steps"], timed["val_steps"]) == (12, 4)  # 48 images in batches of 4; 13 -> 4 batches
        parts = [timed[phase] for phase in ("start_to_first_step", "steps", "last_step_to_exit")]
        assert all(0 < part < 200 for part in parts) and timed["total"] == pytest.approx(sum(parts))
        assert timed["start_to_first_step"] > 0.5  # at least an interpreter and torch's import
        assert commands["median"][side] == {phase: timed[phase] for phase in commands["median"][side]}
    for phase, ratio in commands["ratio"].items():
        assert ratio == pytest.approx(only_round["reference"][phase] / only_round["ours"][phase])


def test_e2e_command_generates_train_and_val_images_and_prints_its_table():
    shown = ok(
        run_cli("benchmark", "--only", "e2e-command", "-a", TINY_ARCH, "-b", "4", "--image-size", "32",
                "--images", "8", "-j", "0", "--rounds", "1")
    ).stdout  # fmt: skip
    assert "one epoch of 8 train + 3 val generated JPEGs" in shown
    for label in ("start -> first step", "steps", "last step -> exit", "total", "reference / ours"):
        assert label in shown


def test_e2e_command_needs_a_val_folder(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    result = run_cli("benchmark", str(tmp_path), "--only", "e2e-command")
    assert result.returncode == 2 and "has no val/ folder" in result.stderr and "Traceback" not in result.stderr


def test_reference_script_trains_an_epoch_and_saves_as_the_reference_does(image_folder, tmp_path):
    """The baseline is the reference's way for real: its checkpoint and best copy, with its keys."""
    done = subprocess.run(
        [sys.executable, "-m", "imagenet_cli.tools.reference_main", str(image_folder), "-a", TINY_ARCH, "-b", "8",
         "-j", "0", "--epochs", "1", "--image-size", "32", "--print-freq", "2"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines() if line.startswith("Epoch")] == [
        "Epoch: [0][1/6]", "Epoch: [0][3/6]", "Epoch: [0][5/6]",
    ]  # fmt: skip
    assert "* Acc@1" in done.stdout
    saved = torch.load(tmp_path / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert set(saved) == {"epoch", "arch", "state_dict", "best_acc1", "optimizer", "scheduler"}
    assert saved["epoch"] == 1 and saved["arch"] == TINY_ARCH and saved["state_dict"]["fc.weight"].shape[0] == 1000
    assert (tmp_path / "model_best.pth.tar").read_bytes() == (tmp_path / "checkpoint.pth.tar").read_bytes()


def test_ctrl_c_stops_the_benchmark_and_its_baseline_process_at_once():
    """Ctrl-C reaches the whole foreground process group, as a terminal sends it: one line, exit 130, and
    no process of the group (the baseline's included) left behind."""
    command = [sys.executable, "-m", "imagenet_cli", "benchmark", "-a", TINY_ARCH, "-b", "4", "--image-size", "32",
               "--steps", "100000", "--only", "train"]  # fmt: skip
    bench = subprocess.Popen(
        command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_terminal_ctrl_c,
    )  # fmt: skip
    try:
        assert bench.stdout is not None and "train:" in bench.stdout.readline()  # measuring from here on
        time.sleep(3)
        os.killpg(bench.pid, signal.SIGINT)
        _, stderr = bench.communicate(timeout=30)
        assert bench.returncode == 130 and stderr.strip().endswith("interrupted") and "Traceback" not in stderr
        assert _group_ends(bench.pid, within=10)
    finally:  # a failure must not leave a benchmark of 100,000 steps running on the machine
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bench.pid, signal.SIGKILL)


def _terminal_ctrl_c() -> None:
    """Ctrl-C as a terminal's foreground job gets it: a suite started in the background (`cmd &` in a script)
    hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _group_ends(group: int, within: float) -> bool:
    """Whether every process of `group` is gone within `within` seconds (multiprocessing's resource
    tracker takes a moment to notice its parent has left)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
