"""Nothing the tool calls is deprecated: train, evaluate, predict and export run with every
DeprecationWarning turned into an error, in a fresh interpreter started as a user starts one (a warning
filter set in the test process would not reach it, nor a process forked from one that has imported torch).
The four commands run one after another in that one interpreter, each through `cli.run`, the console
script's entry less its fast exit (which would end the interpreter after the first): every module any of
them imports is imported there under the filter, and every call they make is made under it, as in four
interpreters, without paying torch's import four times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY_ARCH, cli_env, write_photo

pytestmark = pytest.mark.slow

# Each command as `imagenet-cli ARGS` runs it; a failing one ends the interpreter naming itself.
COMMANDS = """
import sys
from imagenet_cli.cli import run

for argv in {commands!r}:
    sys.argv = ["imagenet-cli", *argv]
    try:
        code = run(argv)
    except SystemExit as exc:
        code = exc.code
    if code not in (0, None):
        sys.exit(f"{{argv[0]}} failed with exit code {{code}}")
    print(f"{{argv[0]}} done", flush=True)
"""


def strict(*commands: tuple[str | Path, ...], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = cli_env(PYTHONWARNINGS="error::DeprecationWarning")
    program = COMMANDS.format(commands=[[str(arg) for arg in command] for command in commands])
    result = subprocess.run([sys.executable, "-c", program], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, f"failed:\n{result.stderr[-3000:]}"
    assert "DeprecationWarning" not in result.stderr
    assert [line for line in result.stdout.splitlines() if line.endswith(" done")] == [
        f"{command[0]} done" for command in commands
    ]
    return result


def test_train_evaluate_predict_and_export_call_nothing_deprecated(tmp_path):
    data = tmp_path / "data"
    for split, count in (("train", 8), ("val", 3)):
        for label, name in enumerate(("cats", "dogs")):
            (data / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):  # JPEGs and PNGs: both decoders' paths
                suffix = ".jpg" if i % 2 else ".png"
                write_photo(data / split / name / f"{i}{suffix}", 48, 40, seed=10 * label + i)
    run, exported = tmp_path / "run", tmp_path / "model.pt2"
    checkpoint = run / "checkpoint.pth.tar"
    strict(
        ("train", data, "-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--epochs", "1", "-j", "0",
         "--output-dir", run, "-q"),
        ("evaluate", checkpoint, data, "-b", "4", "-j", "0", "--json"),
        ("predict", checkpoint, data / "val", "-k", "1"),
        ("export", checkpoint, "--format", "pt2", "-o", exported),
        cwd=tmp_path,
    )  # fmt: skip
    assert exported.is_file() and os.path.getsize(exported) > 0
