"""Nothing the tool calls is deprecated: train, evaluate, predict and export run with every
DeprecationWarning turned into an error, in fresh processes as a user starts them (a warning filter set
in the test process would not reach them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY_ARCH, cli_env, write_photo

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "imagenet_cli"]


def strict(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = cli_env(PYTHONWARNINGS="error::DeprecationWarning")
    result = subprocess.run([*CLI, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stderr[-3000:]}"
    assert "DeprecationWarning" not in result.stderr
    return result


def test_train_evaluate_predict_and_export_call_nothing_deprecated(tmp_path):
    data = tmp_path / "data"
    for split, count in (("train", 8), ("val", 3)):
        for label, name in enumerate(("cats", "dogs")):
            (data / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):  # JPEGs and PNGs: both decoders' paths
                suffix = ".jpg" if i % 2 else ".png"
                write_photo(data / split / name / f"{i}{suffix}", 48, 40, seed=10 * label + i)
    run = tmp_path / "run"
    strict("train", data, "-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--epochs", "1", "-j", "0",
           "--output-dir", run, "-q", cwd=tmp_path)  # fmt: skip
    checkpoint = run / "checkpoint.pth.tar"
    strict("evaluate", checkpoint, data, "-b", "4", "-j", "0", "--json", cwd=tmp_path)
    strict("predict", checkpoint, data / "val", "-k", "1", cwd=tmp_path)
    exported = tmp_path / "model.pt2"
    strict("export", checkpoint, "--format", "pt2", "-o", exported, cwd=tmp_path)
    assert exported.is_file() and os.path.getsize(exported) > 0
