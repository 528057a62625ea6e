"""What keeps a short run short without changing what it leaves behind: the process's quick end, imports
without collection, curves.png drawn by a process of its own beside the run's end, and a checkpoint
hashed while it is written."""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from imagenet_cli.checkpoint.integrity import copy_with_checksum, write_with_checksum
from imagenet_cli.cli.process import preloaded
from imagenet_cli.core.faults import SaveFault
from imagenet_cli.report.curves import Drawer, is_fresh
from imagenet_cli.report.plots import read_metrics
from imagenet_cli.report.records import draw_curves

from .conftest import FAST_FAKE, TINY_ARCH, cli_env, ok, run_cli
from .test_plot import assert_png, write_run

ROOT = Path(__file__).resolve().parent.parent


def test_leave_ends_at_once_yet_keeps_what_the_interpreter_would_have_done(tmp_path):
    """Buffered output reaches the pipe, a running non-daemon thread finishes, exit handlers run, and the
    exit code is the command's."""
    script = textwrap.dedent(
        f"""
        import atexit, sys, threading, time
        import torch
        from imagenet_cli.cli.process import leave
        atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").write("ran"))
        def late():
            time.sleep(0.5)
            open({str(tmp_path / "thread")!r}, "w").write("done")
        threading.Thread(target=late).start()
        sys.stdout.write("buffered, no newline")
        leave(3)
        print("never printed")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=cli_env(PYTHONUNBUFFERED="", PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 3 and done.stdout == "buffered, no newline", (done.stdout, done.stderr)
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"


def test_leave_without_torch_exits_as_python_does():
    script = "from imagenet_cli.cli.process import leave\ntry:\n    leave(4)\nexcept SystemExit as e:\n    print('raised', e.code)"
    done = subprocess.run([sys.executable, "-c", script], env=cli_env(PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.stdout.strip() == "raised 4" and done.returncode == 0


def test_run_commands_start_with_the_run_imported_its_objects_frozen_and_collection_on():
    seen = {}

    def body(given, extras):
        seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count(), given=given, extras=extras)

    gc.unfreeze()
    preloaded(body)({"arch": "x"}, {"config": None})
    assert seen == {"enabled": True, "frozen": seen["frozen"], "given": {"arch": "x"}, "extras": {"config": None}}
    assert seen["frozen"] > 100_000  # torch's and torchvision's objects, left out of every later collection
    gc.unfreeze()


def test_the_drawer_imports_first_and_draws_when_told(tmp_path):
    run = write_run(tmp_path / "run")
    drawer = Drawer(str(run))
    time.sleep(0.5)
    assert drawer.process.poll() is None and not (run / "curves.png").exists()  # waiting to be told
    drawer.draw()
    drawer.finish()
    assert drawer.process.returncode == 0 and is_fresh(str(run))
    assert_png(run / "curves.png")
    assert draw_curves(str(run)) == f"curves in {run / 'curves.png'}"  # nothing left to draw


def test_a_drawer_never_told_ends_without_drawing(tmp_path):
    run = write_run(tmp_path / "run")
    drawer = Drawer(str(run))
    drawer.cancel()
    assert drawer.process.wait(60) == 0 and not (run / "curves.png").exists()


def test_a_drawer_ends_with_a_run_killed_outright_and_leaves_nothing_behind(tmp_path):
    """SIGKILL mid-run (a fault test's crash, the OOM killer): the drawer is stopped too, its half-written
    picture removed, so nothing of the dead run lands in the directory a resumed run continues in."""
    run = write_run(tmp_path / "run")
    script = (
        "import os, signal\nfrom imagenet_cli.report.curves import Drawer\n"
        f"drawer = Drawer({str(run)!r})\ndrawer.draw()\nprint(drawer.process.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=cli_env(PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == -9
    drawer = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while _alive(drawer) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(drawer)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def _alive(pid: int) -> bool:
    """Running, not a zombie its new parent has yet to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_run_draws_its_curves_itself_when_they_are_older_than_its_metrics(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "curves.png").write_bytes(b"a picture of an earlier run")
    os.utime(run / "curves.png", ns=(0, 0))
    assert not is_fresh(str(run))
    assert draw_curves(str(run)) == f"curves in {run / 'curves.png'}"
    assert_png(run / "curves.png")


def test_a_short_train_run_ends_with_its_checkpoints_whole_and_its_curves_drawn(tmp_path):
    out = tmp_path / "run"
    shown = ok(run_cli("train", *FAST_FAKE, "-a", TINY_ARCH, "--epochs", "2", "-b", "16", "--output-dir", str(out)))
    assert shown.stdout.strip().endswith(f"curves in {out / 'curves.png'}")
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        digest = (out / f"{name}.sha256").read_text().split()[0]
        assert digest == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert is_fresh(str(out))  # drawn from the finished run's metrics, there when the command returned
    assert_png(out / "curves.png")
    assert read_metrics(out).epochs.keys() == {0, 1}


def test_hashing_beside_the_writer_sees_every_byte_even_from_a_reused_buffer(tmp_path):
    """A writer that refills one buffer between writes (as a serialiser may): the checksum is still the file's."""
    path = tmp_path / "file.bin"

    def write(f) -> None:
        buffer = bytearray(1 << 20)
        for fill in range(40):
            buffer[:] = bytes([fill]) * len(buffer)
            f.write(memoryview(buffer))
        f.write(b"tail")

    digest = write_with_checksum(str(path), write, SaveFault())
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "file.bin.sha256").read_text() == f"{digest}  file.bin\n"
    copy_with_checksum(str(path), str(tmp_path / "copy.bin"), digest, SaveFault())
    assert (tmp_path / "copy.bin").read_bytes() == path.read_bytes()
    assert (tmp_path / "copy.bin.sha256").read_text() == f"{digest}  copy.bin\n"


def test_a_failed_write_ends_its_hashing_thread(tmp_path):
    def write(f) -> None:
        f.write(b"x" * 1000)
        raise RuntimeError("the serialiser broke")

    with pytest.raises(RuntimeError, match="serialiser broke"):
        write_with_checksum(str(tmp_path / "file.bin"), write, SaveFault())
    assert not (tmp_path / "file.bin").exists()
    assert not [t for t in threading.enumerate() if t.name == "checkpoint-sha256"]
