"""`imagenet-cli benchmark`: every figure beside its baseline, measured in the same run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import TINY_ARCH, cli_env, json_result, ok, run_cli


def test_benchmark_measures_train_pipeline_and_eval_each_against_the_reference_way(image_folder):
    result = json_result(
        run_cli("benchmark", str(image_folder), "-a", TINY_ARCH, "-b", "4", "--image-size", "32", "--steps", "1",
                "--warmup", "1", "--images", "12", "-j", "1", "--json")
    )  # fmt: skip
    assert result["machine"]["device"] == "cpu" and result["compute"] == "fp32, channels-last"
    parts = [row["part"] for row in result["results"]]
    assert parts == [
        "train", "eval", "pipeline, per core", "pipeline, 1 workers", "shards vs files, 1 workers",
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
    assert parts == ["pipeline, per core", "pipeline, 0 workers", "shards vs files, 0 workers"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--only", "everything"), "'everything' is not one of 'train', 'eval', 'pipeline', 'e2e'"), (("--steps", "0"), "must be positive"),
     (("/nonexistent",), "has no train/ folder"), (("-a", "resnet19"), "unknown architecture 'resnet19'")],
)  # fmt: skip
def test_benchmark_refuses_bad_input_in_one_line(args, message):
    result = run_cli("benchmark", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


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
