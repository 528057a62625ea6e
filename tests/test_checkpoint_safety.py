"""Checkpoints as an adversary and bad luck see them: a process killed at every instant of a save, a full
disk, damaged files and checksums, files that would run code, and stored settings that name addresses
and folders. Nothing is lost, nothing is obeyed, and each problem is one line."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from imagenet_cli.checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    CHECKSUM_SUFFIX,
    read_checkpoint,
    save_checkpoint,
    verify_checksum,
)
from imagenet_cli.errors import UserError

from .conftest import FAST_FAKE, TINY_ARCH, cli_env, json_result, load, ok, run_cli

RUN = ("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "16", "--seed", "0", "--fake-train-images", "32")


def _train(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*RUN, "--epochs", "2", "--output-dir", str(out), *extra, env=env)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The weights of the same run, never interrupted."""
    out = tmp_path_factory.mktemp("straight")
    ok(_train(out))
    return load(out / CHECKPOINT_NAME)["state_dict"]


def _same(weights: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> bool:
    return weights.keys() == other.keys() and all(torch.equal(weights[k], other[k]) for k in weights)


# The instants of a save, in order: the best copy first when the epoch is the best so far (always, for the
# first), each file's temporary complete ("written"), then renamed into place, then its checksum likewise.
CRASH_POINTS = [
    (1, BEST_NAME, "written"),
    (1, BEST_NAME, "renamed"),
    (1, BEST_NAME + CHECKSUM_SUFFIX, "renamed"),
    (1, CHECKPOINT_NAME, "renamed"),
    (2, CHECKPOINT_NAME, "written"),
    (2, CHECKPOINT_NAME, "renamed"),  # a new, whole file beside the previous save's checksum
    (2, CHECKPOINT_NAME + CHECKSUM_SUFFIX, "written"),
]


@pytest.mark.parametrize(("epoch", "file", "point"), CRASH_POINTS, ids=[f"{e}-{f}-{p}" for e, f, p in CRASH_POINTS])
def test_a_save_killed_at_any_instant_leaves_a_run_that_resume_auto_finishes_exactly(
    epoch, file, point, straight, tmp_path
):
    crashed = _train(tmp_path, env=cli_env(IMAGENET_CLI_FAULT=f"crash:epoch={epoch},file={file},point={point}"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr  # killed by the fault, mid-save
    result = ok(_train(tmp_path, "--resume", "auto"))
    nothing_whole_yet = (epoch, file, point) == (1, BEST_NAME, "written")
    assert ("starting fresh" in result.stderr) == nothing_whole_yet and "damaged" not in result.stderr
    assert _same(load(tmp_path / CHECKPOINT_NAME)["state_dict"], straight)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".damaged"))]
    assert not leftovers  # the cut-off save's temporary files were removed at the restart
    for name in (CHECKPOINT_NAME, BEST_NAME):
        assert verify_checksum(str(tmp_path / name)) is None  # and every checksum is true again


def test_a_checkpoint_renamed_before_its_checksum_is_continued_not_thrown_away(tmp_path):
    """The hole an audit found: a whole new checkpoint beside the previous save's checksum was refused,
    and `--resume auto` went back to model_best, losing an epoch."""
    crashed = _train(tmp_path, env=cli_env(IMAGENET_CLI_FAULT=f"crash:epoch=2,file={CHECKPOINT_NAME},point=renamed"))
    assert crashed.returncode == -signal.SIGKILL
    assert load(tmp_path / CHECKPOINT_NAME)["epoch"] == 2
    result = ok(run_cli(*RUN, "--epochs", "3", "--output-dir", str(tmp_path), "--resume", "auto"))
    assert f"continuing from {tmp_path / CHECKPOINT_NAME}" in result.stderr
    assert "belongs to an earlier save" in result.stderr and "resuming" in result.stdout
    assert "at epoch 2" in result.stdout


@pytest.mark.parametrize("sidecar", [b"", b"   \n", b"\xff\xfe not text", b"x" * 100_000], ids=lambda s: repr(s[:6]))
def test_a_malformed_checksum_file_does_not_cost_a_whole_checkpoint(sidecar, tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    Path(str(path) + CHECKSUM_SUFFIX).write_bytes(sidecar)
    loaded = read_checkpoint(str(path))
    assert torch.equal(loaded.state_dict["w"], torch.ones(3))
    assert loaded.notes and "cannot be read" in loaded.notes[0] and "is whole" in loaded.notes[0]


def _damage(path: Path) -> None:
    """Flip bytes in the middle of the tensor data, as a bad disk would; the checksum stays as it was."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_name_and_kept_while_resume_auto_takes_the_newest_whole_one(tmp_path):
    ok(run_cli(*RUN, "--epochs", "2", "--keep-epochs", "2", "--output-dir", str(tmp_path)))
    before = hashlib.sha256((tmp_path / CHECKPOINT_NAME).read_bytes()).hexdigest()
    _damage(tmp_path / CHECKPOINT_NAME)
    refused = run_cli("evaluate", str(tmp_path / CHECKPOINT_NAME), "--fake-data", "-j", "0")
    assert refused.returncode == 2 and "is damaged" in refused.stderr and len(refused.stderr.splitlines()) == 1
    damaged = (tmp_path / CHECKPOINT_NAME).read_bytes()
    result = ok(run_cli(*RUN, "--epochs", "2", "--output-dir", str(tmp_path), "--resume", "auto"))
    kept = tmp_path / (CHECKPOINT_NAME + ".damaged")
    assert f"kept as {kept}" in result.stderr
    assert kept.read_bytes() == damaged  # never overwritten: there for whoever investigates
    assert hashlib.sha256(kept.read_bytes()).hexdigest() != before
    assert "continuing from" in result.stderr and "nothing to train" in result.stdout  # epoch 2's own copy


def test_an_unreadable_only_checkpoint_stops_resume_auto_instead_of_being_replaced(tmp_path):
    ok(run_cli(*RUN, "--epochs", "1", "--output-dir", str(tmp_path)))
    for name in (BEST_NAME, BEST_NAME + CHECKSUM_SUFFIX, CHECKPOINT_NAME + CHECKSUM_SUFFIX):
        (tmp_path / name).unlink()
    cut = (tmp_path / CHECKPOINT_NAME).read_bytes()[:5000]
    (tmp_path / CHECKPOINT_NAME).write_bytes(cut)  # truncated, with no checksum to say so
    result = run_cli(*RUN, "--epochs", "2", "--output-dir", str(tmp_path), "--resume", "auto")
    assert result.returncode == 2 and "no whole checkpoint is left" in result.stderr
    assert (tmp_path / (CHECKPOINT_NAME + ".damaged")).read_bytes() == cut
    assert not (tmp_path / CHECKPOINT_NAME).exists()  # nothing started afresh over it


def test_a_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_stays(tmp_path):
    """The writer fails as a full disk makes it (ENOSPC from write(2), seen by torch's C++ writer)."""
    result = _train(tmp_path, env=cli_env(IMAGENET_CLI_FAULT="nospace:epoch=2"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no space left on /") and "the previous file is intact" in lines[0]
    assert "enforce fail" not in result.stderr and "inline_container" not in result.stderr
    assert read_checkpoint(str(tmp_path / CHECKPOINT_NAME)).epoch == 1 and not list(tmp_path.glob(".*.tmp"))


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0  # fmt: skip


def test_a_really_full_file_system_is_named_and_the_previous_checkpoint_stays(tmp_path):
    """A tmpfs with room for one save (the checkpoint and its best copy) but not for the next one."""
    probe = tmp_path / "probe"
    ok(run_cli(*RUN, "--epochs", "1", "--output-dir", str(probe)))
    size = (probe / CHECKPOINT_NAME).stat().st_size
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, f"{size * 5 // 2 // 1024}k"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the nospace fault test covers the message")
    try:
        result = _train(disk)
        assert result.returncode != 0
        assert f"no space left on {disk} writing {disk}" in result.stderr and "previous file is intact" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert read_checkpoint(str(disk / CHECKPOINT_NAME)).epoch == 1 and not list(disk.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_checkpoint_that_would_run_code_is_refused_without_suggesting_to_trust_it(booby_trapped_checkpoint):
    path, marker = booby_trapped_checkpoint
    result = run_cli("inspect", str(path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "names posix.system, which could run code" in result.stderr
    assert "weights_only" not in result.stderr and not marker.exists()


def test_a_plain_pickle_is_one_line_without_torchs_warning(tmp_path):
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"state_dict": {"w": [1, 2, 3]}}, protocol=4))
    result = run_cli("inspect", str(path))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {path} is not a readable checkpoint (a plain Python pickle, not a PyTorch file); refused"
    ]


class _Listener:
    """A TCP port that records whether anything connected to it."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self.socket.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.socket.close()


def test_resume_never_obeys_addresses_ranks_or_folders_stored_in_a_checkpoint(trained_run, tmp_path):
    """A file whose configuration names a rendezvous address, a rank and world size, and folders to write
    to: the resume runs here, as one process, writing only beside the checkpoint."""
    listener = _Listener()
    checkpoint = load(trained_run / CHECKPOINT_NAME)
    elsewhere = tmp_path / "elsewhere"
    checkpoint["config"]["dist"].update(dist_url=f"tcp://127.0.0.1:{listener.port}", world_size=2, rank=1, gpu=3)
    checkpoint["config"].update(log_dir=str(elsewhere / "logs"), output_dir=str(elsewhere / "out"))
    run = tmp_path / "run"
    run.mkdir()
    torch.save(checkpoint, run / CHECKPOINT_NAME)
    try:
        result = ok(run_cli("resume", str(run / CHECKPOINT_NAME), "--epochs", "2", "-j", "0", timeout=120))
    finally:
        listener.close()
    assert listener.connections == 0 and not elsewhere.exists()
    assert load(run / CHECKPOINT_NAME)["epoch"] == 2 and "1 process" in result.stdout
    assert "--dist-url" in result.stderr and "never taken from a file" in result.stderr
    shown = json_result(run_cli("inspect", str(run / CHECKPOINT_NAME), "--json"))["never_taken_from_file"]
    assert shown == {"output_dir": str(run)}  # the new file records where it really ran, and nothing else


def test_inspect_lists_the_stored_settings_a_resume_ignores(trained_run, tmp_path):
    checkpoint = load(trained_run / CHECKPOINT_NAME)
    checkpoint["config"]["dist"].update(dist_url="tcp://10.0.0.1:29500", world_size=4, rank=2)
    checkpoint["config"]["output_dir"] = "/somewhere/else"
    torch.save(checkpoint, tmp_path / "c.pth.tar")
    shown = json_result(run_cli("inspect", str(tmp_path / "c.pth.tar"), "--json"))["never_taken_from_file"]
    assert shown == {"dist_url": "tcp://10.0.0.1:29500", "output_dir": "/somewhere/else", "rank": 2, "world_size": 4}


def test_the_best_copy_is_written_first_and_is_a_copy_of_its_own(tmp_path):
    """A crash between the two files leaves model_best the newest whole one; damage to one file (a copy,
    not a second name of the same bytes) leaves the other whole."""
    checkpoint = {"epoch": 1, "step": 0, "state_dict": {"w": torch.ones(4)}}
    save_checkpoint(checkpoint, str(tmp_path), is_best=True)
    best, latest = tmp_path / BEST_NAME, tmp_path / CHECKPOINT_NAME
    assert not os.path.samefile(best, latest) and best.stat().st_mtime_ns <= latest.stat().st_mtime_ns
    save_checkpoint({**checkpoint, "epoch": 2}, str(tmp_path), is_best=False)
    assert load(best)["epoch"] == 1 and load(latest)["epoch"] == 2


def test_a_checkpoint_damaged_in_its_tensors_is_refused_even_beside_a_stale_checksum(tmp_path):
    """The CRC-32 fallback vouches only for files that are whole: damage is still damage."""
    path = tmp_path / "c.pth.tar"
    torch.save({"state_dict": {"w": torch.arange(100_000, dtype=torch.float32)}}, path)
    Path(str(path) + CHECKSUM_SUFFIX).write_text("0" * 64 + "  c.pth.tar\n")  # stale, as after a cut-off save
    _damage(path)
    with pytest.raises(UserError, match="is damaged"):
        read_checkpoint(str(path))


@pytest.mark.parametrize("line", ['output-dir = "/tmp/elsewhere"', 'dist-url = "tcp://10.0.0.1:23456"', "rank = 1"])
def test_a_recipe_file_cannot_choose_where_a_run_happens(line, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"{line}\nepochs = 1\n")
    result = run_cli(*RUN, "--config", str(recipe), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "is never taken from a file; give it on the command line" in result.stderr
    assert not (tmp_path / "out").exists() and not os.path.exists("/tmp/elsewhere")
