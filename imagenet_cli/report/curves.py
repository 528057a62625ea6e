"""curves.png at the end of a run, drawn by a process of its own beside the run's last steps.

Importing matplotlib and drawing cost a second or two of CPU: nothing beside a long run, a tenth of a
short one (a CI job, a smoke test), and the run's own process would spend them after its last step,
when nothing else is left to do. So the main rank starts a drawer when its last validation begins: the
drawer imports matplotlib meanwhile, draws once told the last epoch's record is written (as the
checkpoint is being saved and the loader workers stop), and the run waits for it before it ends, so
curves.png is there when the command returns, as before. A run stopped before its last record tells
the drawer nothing, and it ends without drawing; a drawer outlives no run (`plots.main`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from .plots import CURVES_NAME, METRICS_NAME

DRAW = b"draw\n"  # what the drawer waits for on its standard input
WAIT_SECONDS = 60.0  # for a drawer told to draw; then the run draws the picture itself


class Drawer:
    """`python -m imagenet_cli.report.plots --when-told RUN_DIR PID`, with this copy of the package first
    on its path. Its output goes nowhere: should it fail, the run draws the picture itself and reports why."""

    def __init__(self, output_dir: str) -> None:
        package_parent = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
        self.told = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagenet_cli.report.plots", "--when-told", os.path.abspath(output_dir),
             str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip

    def draw(self) -> None:
        """The last record is written: draw it."""
        self.told = True
        self._say(DRAW)

    def finish(self) -> None:
        """Wait for the picture; a drawer that takes too long is stopped (the run then draws it)."""
        try:
            self.process.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cancel(self) -> None:
        """The run ends without having waited for the picture (stopped, failed): the drawer ends without
        drawing, or stops drawing (SIGTERM: it removes what it had begun to write)."""
        if self.told:
            self.process.terminate()
        else:
            self._say(b"")

    def _say(self, word: bytes) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):  # a drawer that failed at its start has closed its end
            self.process.stdin.write(word)
            self.process.stdin.close()


def is_fresh(output_dir: str) -> bool:
    """Whether OUTPUT_DIR/curves.png was drawn from the run's metrics as they stand (not older than them)."""
    curves, metrics = Path(output_dir) / CURVES_NAME, Path(output_dir) / METRICS_NAME
    try:
        return curves.stat().st_mtime_ns >= metrics.stat().st_mtime_ns
    except FileNotFoundError:
        return False
