"""What the tool's users already have keeps working: a checkpoint and a config.json written by an earlier
version (tests/data/format_v1, written before the one-place-per-option redesign), and every flag of every
command (tests/data/cli_flags.json; a flag added on purpose is added there)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import typer

from .conftest import json_result, load, ok, run_cli

DATA = Path(__file__).parent / "data"
V1 = DATA / "format_v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())


def _weights_sha256(path: Path) -> str:
    state = load(path)["state_dict"]
    sha = hashlib.sha256()
    for key in sorted(state):
        sha.update(key.encode())
        sha.update(state[key].contiguous().numpy().tobytes())
    return sha.hexdigest()


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")


# The earlier version ran `--amp auto` as fp32 on every CPU; it is bf16 on CPUs with AMX now, so these
# tests ask for the precision the file was made with (README: "exact resume").
FP32 = ("--amp", "none")


def test_a_checkpoint_of_the_earlier_version_evaluates_as_it_did():
    result = json_result(run_cli("evaluate", str(V1 / "checkpoint.pth.tar"), "--fake-data", "--json", "-j", "0", *FP32))
    expected = EXPECTED["evaluate"]
    assert (result["images"], result["acc1"], result["acc5"]) == (
        expected["images"],
        expected["acc1"],
        expected["acc5"],
    )
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_a_checkpoint_of_the_earlier_version_resumes_bit_identically(tmp_path):
    """Resumed to epoch 2 it reaches the weights the earlier version reached (bit for bit on the kind of CPU
    that wrote the file; other CPUs' kernels may round differently, so there only the run itself is checked)."""
    for name in ("checkpoint.pth.tar", "checkpoint.pth.tar.sha256"):
        shutil.copy(V1 / name, tmp_path / name)
    ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar"), "--epochs", "2", "-j", "0", *FP32))
    assert load(tmp_path / "checkpoint.pth.tar")["epoch"] == 2
    if _cpu() != EXPECTED["written_on_cpu"]:
        pytest.skip(f"bit-identity is checked on {EXPECTED['written_on_cpu']!r} CPUs, this is {_cpu()!r}")
    assert _weights_sha256(tmp_path / "checkpoint.pth.tar") == EXPECTED["resumed_to_epoch_2_weights_sha256"]


def test_a_config_json_of_the_earlier_version_is_still_a_recipe(tmp_path):
    ok(run_cli("train", "--config", str(V1 / "config.json"), "--output-dir", str(tmp_path)))
    saved = load(tmp_path / "checkpoint.pth.tar")
    assert saved["arch"] == "shufflenet_v2_x0_5" and saved["config"]["optim"]["momentum"] == 0.0
    assert saved["config"]["data"]["image_size"] == 32 and saved["config"]["seed"] == 0 and saved["epoch"] == 1


def test_every_command_keeps_every_flag():
    from imagenet_cli.cli import app

    group = typer.main.get_command(app)
    now = {
        name: sorted({flag for param in command.params for flag in (*param.opts, *param.secondary_opts)})
        for name, command in group.commands.items()
    }
    before = json.loads((DATA / "cli_flags.json").read_text())
    assert sorted(now) == sorted(before)
    for name, flags in before.items():
        assert set(flags) <= set(now[name]), f"{name} lost {sorted(set(flags) - set(now[name]))}"
        assert set(now[name]) <= set(flags), f"{name} gained {sorted(set(now[name]) - set(flags))}: add it here"
