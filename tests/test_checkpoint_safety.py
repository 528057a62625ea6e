"""Checkpoints as an adversary and bad luck see them: a process killed at every instant of a save, a full
disk, damaged files and checksums, files that would run code, and stored settings that name addresses
and folders. Nothing is lost, nothing is obeyed, and each problem is one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
    find_resumable,
    read_checkpoint,
    save_checkpoint,
    verify_checksum,
)
from imagenet_cli.core.errors import UserError

from .conftest import FAST_FAKE, TINY_ARCH, cli_env, json_result, load, ok, run_cli, write_image_folder

RUN = ("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "16", "--seed", "0", "--fake-train-images", "32")


def _train(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*RUN, "--epochs", "2", "--output-dir", str(out), *extra, env=env)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of RUN's two epochs, never interrupted, each epoch's copy kept: tests read it, or
    damage and continue a copy of their own (`_copy`)."""
    out = tmp_path_factory.mktemp("two_epochs")
    ok(_train(out, "--keep-epochs", "2"))
    return out


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of RUN's first epoch, for tests to copy likewise."""
    out = tmp_path_factory.mktemp("one_epoch")
    ok(run_cli(*RUN, "--epochs", "1", "--output-dir", str(out)))
    return out


def _copy(run: Path, where: Path) -> None:
    shutil.copytree(run, where, dirs_exist_ok=True)  # modification times too: --resume auto sees the same files


@pytest.fixture(scope="module")
def straight(two_epochs: Path) -> dict[str, torch.Tensor]:
    """The weights of the same run, never interrupted."""
    return load(two_epochs / CHECKPOINT_NAME)["state_dict"]


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
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]  # no epoch's record lost, none twice
    if (epoch, file, point) == (2, CHECKPOINT_NAME, "renamed"):
        # The hole an audit found: a whole new checkpoint beside the previous save's checksum was refused, and
        # `--resume auto` went back to model_best, retraining an epoch (to the same weights: hence these lines).
        assert f"continuing from {tmp_path / CHECKPOINT_NAME}" in result.stderr
        assert "belongs to an earlier save" in result.stderr and "resuming" in result.stdout
        assert "at epoch 2" in result.stdout and "nothing to train" in result.stdout


def test_a_cut_off_save_of_the_last_epoch_is_finished_by_resume_auto(one_epoch, tmp_path):
    """Killed after the last epoch's best copy was whole but before its `checkpoint.pth.tar` was: nothing is
    left to train, and the resume makes the cut-off copy, so the run ends as an uninterrupted one does."""
    fault = cli_env(IMAGENET_CLI_FAULT=f"crash:epoch=1,file={CHECKPOINT_NAME},point=written")
    crashed = run_cli(*RUN, "--epochs", "1", "--output-dir", str(tmp_path), env=fault)
    assert crashed.returncode == -signal.SIGKILL and not (tmp_path / CHECKPOINT_NAME).exists()
    result = ok(run_cli(*RUN, "--epochs", "1", "--output-dir", str(tmp_path), "--resume", "auto"))
    assert f"{CHECKPOINT_NAME} was missing: copied again from {BEST_NAME}" in result.stderr
    assert "nothing to train" in result.stdout
    assert _same(load(tmp_path / CHECKPOINT_NAME)["state_dict"], load(one_epoch / CHECKPOINT_NAME)["state_dict"])
    assert verify_checksum(str(tmp_path / CHECKPOINT_NAME)) is None
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_epoch_copy_a_cut_off_save_never_wrote_is_made_by_the_resume(two_epochs, tmp_path):
    """--keep-epochs writes the epoch's copy after `checkpoint.pth.tar`: killed between them, the resumed
    run makes the copy from the file it continues, with its checksum, and keeps the run's own count; a run
    rewound to an older file makes nothing (the later copies show nothing is missing)."""
    keep = ("--keep-epochs", "1")
    fault = cli_env(IMAGENET_CLI_FAULT="crash:epoch=2,file=checkpoint_epoch_001.pth.tar,point=written")
    crashed = _train(tmp_path, *keep, env=fault)
    assert crashed.returncode == -signal.SIGKILL and not (tmp_path / "checkpoint_epoch_001.pth.tar").exists()
    assert load(tmp_path / CHECKPOINT_NAME)["epoch"] == 2  # the last epoch, whole
    result = ok(_train(tmp_path, *keep, "--resume", "auto"))
    assert f"checkpoint_epoch_001.pth.tar was missing (a save was cut off): copied again from {CHECKPOINT_NAME}" in (
        result.stdout + result.stderr
    )
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_001.pth.tar", "checkpoint_epoch_001.pth.tar.sha256"
    ]  # fmt: skip
    assert verify_checksum(str(tmp_path / "checkpoint_epoch_001.pth.tar")) is None
    assert _same(
        load(tmp_path / "checkpoint_epoch_001.pth.tar")["state_dict"], load(two_epochs / CHECKPOINT_NAME)["state_dict"]
    )

    rewound = tmp_path / "rewound"
    _copy(two_epochs, rewound)  # epochs 0 and 1 kept; epoch 0's renamed, as if its copy had been pruned
    (rewound / "checkpoint_epoch_000.pth.tar").rename(rewound / "older.pth.tar")
    (rewound / CHECKPOINT_NAME).unlink()  # else the tool refuses to continue an older state over it
    result = ok(_train(rewound, "--keep-epochs", "2", "--epochs", "1", "--resume", str(rewound / "older.pth.tar")))
    assert "was missing" not in result.stdout + result.stderr
    assert not (rewound / "checkpoint_epoch_000.pth.tar").exists()


@pytest.mark.parametrize("written", ["before", "after"])
def test_resume_auto_remakes_checkpoint_pth_tar_only_when_it_predates_the_newer_state(
    written, two_epochs, one_epoch, tmp_path
):
    """A `checkpoint.pth.tar` one epoch behind the run's epoch copy: written before that copy, it is what a
    cut-off save or a damaged file left, and is made again from the copy; written after it, a run rewound to
    an earlier file in this directory wrote it, and it is kept as it is."""
    _copy(two_epochs, tmp_path)
    for name in (CHECKPOINT_NAME, CHECKPOINT_NAME + CHECKSUM_SUFFIX):
        shutil.copy(one_epoch / name, tmp_path / name)  # epoch 1 of the same run
    newest = tmp_path / "checkpoint_epoch_001.pth.tar"
    older, newer = newest.stat().st_mtime - 60, newest.stat().st_mtime + 60
    os.utime(tmp_path / CHECKPOINT_NAME, (older, older) if written == "before" else (newer, newer))
    latest, notes = find_resumable(str(tmp_path))
    assert latest == str(newest)  # the newest state by epoch, either way
    kept = load(tmp_path / CHECKPOINT_NAME)
    assert (
        kept["epoch"] == (2 if written == "before" else 1) and verify_checksum(str(tmp_path / CHECKPOINT_NAME)) is None
    )
    assert any("copied again from checkpoint_epoch_001.pth.tar" in note for note in notes) == (written == "before")


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


def test_a_damaged_checkpoint_is_refused_by_name_and_kept_while_resume_auto_takes_the_newest_whole_one(
    two_epochs, tmp_path
):
    _copy(two_epochs, tmp_path)
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


def test_an_unreadable_only_checkpoint_stops_resume_auto_instead_of_being_replaced(one_epoch, tmp_path):
    _copy(one_epoch, tmp_path)
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


def test_a_really_full_file_system_is_named_and_the_previous_checkpoint_stays(two_epochs, tmp_path):
    """A tmpfs with room for one save (the checkpoint and its best copy) but not for the next one."""
    size = (two_epochs / CHECKPOINT_NAME).stat().st_size  # every save of RUN is this size
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, f"{size * 5 // 2 // 1024}k"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the nospace fault test covers the message")
    try:
        result = _train(disk)
        assert result.returncode != 0
        assert f"no space left on {disk} writing {disk}" in result.stderr and "previous file is intact" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert read_checkpoint(str(disk / CHECKPOINT_NAME)).epoch == 1 and not list(disk.glob(".*.tmp"))
    finally:  # lazily: a checkpoint read above may still be mapped into this process until collected
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


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


# ---- Stored settings are data: what an audit made files do, and may no longer -----------------------------


@pytest.fixture()
def planted(trained_run: Path, tmp_path: Path):
    """Write a copy of a real checkpoint with some of its stored configuration changed, as an attacker
    would; returns the new file's path."""

    def plant(config: dict | None = None, **fields: object) -> Path:
        checkpoint = load(trained_run / CHECKPOINT_NAME)
        for section, values in (config or {}).items():
            if isinstance(values, dict) and isinstance(checkpoint["config"].get(section), dict):
                checkpoint["config"][section].update(values)
            else:
                checkpoint["config"][section] = values
        checkpoint.update(fields)
        folder = tmp_path / "planted"
        folder.mkdir(exist_ok=True)
        torch.save(checkpoint, folder / CHECKPOINT_NAME)
        return folder / CHECKPOINT_NAME

    return plant


def test_a_stored_configuration_cannot_turn_a_resume_into_something_else(planted, tmp_path):
    """`command`, evaluate-only, a plot to draw, the file to evaluate, --json: one command line's choices,
    never a file's."""
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    path = planted({"command": "evaluate", "evaluate_only": True, "json": True, "confusion_plot": str(precious),
                    "checkpoint": "/elsewhere/model_best.pth.tar"})  # fmt: skip
    result = ok(run_cli("resume", str(path), "--epochs", "2", "-j", "0"))
    assert precious.read_text() == "precious" and "Evaluation of" not in result.stdout
    assert load(path)["epoch"] == 2 and load(path)["config"]["command"] == "train"
    again = ok(run_cli(*RUN, "--epochs", "3", "--output-dir", str(path.parent), "--resume", "auto"))
    assert load(path)["epoch"] == 3 and precious.read_text() == "precious" and "{" not in again.stdout


def test_neither_a_checkpoint_nor_a_recipe_can_start_a_download(planted, tmp_path):
    chosen = tmp_path / "chosen_by_file" / "deep"
    path = planted({"data": {"fake": False, "dataset": "cifar10", "path": str(chosen), "download": True,
                             "data_format": "torchvision", "image_size": 32, "val_crop_size": 32,
                             "val_resize_size": 32, "num_classes": None}})  # fmt: skip
    result = run_cli("resume", str(path), "-j", "0")
    assert result.returncode == 2 and "download failed" not in result.stderr and not chosen.exists()
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'dataset = "cifar10"\ndata = "{chosen}"\ndownload = true\n')
    refused = run_cli("train", "--config", str(recipe), "--output-dir", str(tmp_path / "out"))
    assert refused.returncode == 2 and "a choice of one command line" in refused.stderr and not chosen.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"data": {"num_classes": 10**7}}, "--num-classes must be from 2 to 100,000"),
        ({"data": {"image_size": 30000, "val_crop_size": 30000, "val_resize_size": 30000}}, "--image-size must be"),
        ({"data": {"fake_val_images": 10**15}}, "--fake-val-images must be from 1 to"),
        ({"optim": {"lr": "0.1"}}, "lr must be a number"),
        ({"optim": [1, 2]}, "its optim section is not a table"),
    ],
    ids=["classes", "image-size", "fake-images", "type", "section"],
)
def test_sizes_and_types_from_a_stored_configuration_are_checked_and_blamed_on_the_file(
    planted, image_folder, config, message
):
    path = planted(config)
    picture = next((image_folder / "val").rglob("*.png"))
    for command in (("resume", str(path)), ("evaluate", str(path)), ("predict", str(path), str(picture))):
        result = run_cli(*command, "-j", "0")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert f"{path}: its stored configuration" in lines[0] and message in lines[0]


def test_stored_worker_and_process_counts_are_bounded_by_this_machine(planted, tmp_path):
    """A file may carry the counts of a bigger machine: they are kept only where this one has the cores."""
    from imagenet_cli.config import from_stored

    path = planted({"data": {"workers": 200}, "dist": {"multiprocessing_distributed": True, "nproc_per_node": 10**4}})
    stored = from_stored(load(path)["config"], str(path)).as_recipe()
    assert stored.dist.nproc_per_node is None and (stored.data.workers is None or (os.cpu_count() or 1) >= 200)
    result = ok(run_cli("resume", str(path), "--epochs", "2", "--no-accel", "-j", "0"))
    assert "1 process" in result.stdout  # the stored 10,000 processes were not started
    recipe = tmp_path / "r.json"
    recipe.write_text('{"multiprocessing-distributed": true, "nproc-per-node": 10000, "no-accel": true}')
    refused = run_cli(*RUN, "--config", str(recipe), "--output-dir", str(tmp_path / "out"))
    assert refused.returncode == 2 and "more than 4 processes per CPU core" in refused.stderr


def test_a_tiny_file_declaring_a_huge_head_is_refused_before_anything_is_built(planted):
    checkpoint_path = planted()
    checkpoint = load(checkpoint_path)
    checkpoint["state_dict"]["fc.weight"] = torch.zeros(1, 1).expand(2_000_000, 1024)
    checkpoint["state_dict"]["fc.bias"] = torch.zeros(1).expand(2_000_000)
    torch.save(checkpoint, checkpoint_path)
    result = run_cli("evaluate", str(checkpoint_path), "--fake-data", "-j", "0")
    assert result.returncode == 2 and "declares 7.6 GiB of weights" in result.stderr


@pytest.mark.parametrize("name", ["../../outside", "/", ".."])
def test_class_names_from_a_file_never_lead_outside_the_data(planted, image_folder, tmp_path, name):
    """A checkpoint's class list is matched against DATA's folders, never joined to its path: a class
    named '../../outside' read images from another folder, '/' walked the whole file system."""
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    outside = write_image_folder(tmp_path / "elsewhere", {}, {"outside": 3})
    (data / "val" / ".." / ".." / "outside").mkdir(exist_ok=True)  # what '../../outside' would reach
    for picture in (outside / "val" / "outside").iterdir():
        shutil.copy(picture, data / "val" / ".." / ".." / "outside")
    path = planted(class_names=["ants", "bees", "wasps", name])
    checkpoint = load(path)
    head = checkpoint["state_dict"]
    head["fc.weight"], head["fc.bias"] = (
        torch.cat([head["fc.weight"], head["fc.weight"][:1]]),
        torch.cat([head["fc.bias"], head["fc.bias"][:1]]),
    )
    torch.save(checkpoint, path)
    result = json_result(run_cli("evaluate", str(path), str(data), "--json", "-j", "0", timeout=60))
    assert result["images"] == 13 and [row["images"] for row in result["per_class"]] == [5, 4, 4, 0]
    with pytest.raises(UserError, match="class names that are not names"):
        torch.save({**checkpoint, "class_names": ["a", ""]}, path)
        read_checkpoint(str(path))


def test_what_a_file_stores_is_shown_never_executed_by_the_terminal(planted):
    path = planted({"dist": {"dist_url": "tcp://\x1b[31mRED\x1b]0;PWNED\x07:1", "world_size": 4, "rank": 1}})
    result = ok(run_cli("resume", str(path), "--epochs", "2", "-j", "0"))
    assert "\x1b" not in result.stderr and "\\x1b]0;PWNED\\x07" in result.stderr


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"epoch": torch.zeros(3)}, "stores epoch"),
        ({"epoch": -2}, "stores epoch '-2'"),
        ({"step": 10**18}, "stores step"),
        ({"optimizer": {"state": {}}}, "its optimizer state cannot be restored"),
        ({"rng_states": ["a"]}, "its random generator states cannot be restored"),
    ],
    ids=["epoch-tensor", "negative-epoch", "huge-step", "optimizer", "random-states"],
)
def test_odd_values_in_a_checkpoint_are_one_line_naming_the_file(planted, fields, message):
    path = planted(**fields)
    result = run_cli("resume", str(path), "--epochs", "2", "-j", "0")
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error.startswith(f"error: {path}") and message in error


def test_a_file_whose_damage_torch_reports_oddly_is_passed_over_by_resume_auto(one_epoch, tmp_path):
    """A bit flip in a file without a checksum can fail inside torch's reader with any exception."""
    _copy(one_epoch, tmp_path)
    (tmp_path / (CHECKPOINT_NAME + CHECKSUM_SUFFIX)).unlink()
    data = bytearray((tmp_path / CHECKPOINT_NAME).read_bytes())
    data[0] ^= 1  # the zip's first signature byte: torch's reader fails with an IndexError
    (tmp_path / CHECKPOINT_NAME).write_bytes(bytes(data))
    result = ok(run_cli(*RUN, "--epochs", "2", "--output-dir", str(tmp_path), "--resume", "auto"))
    assert (
        "is not a readable checkpoint" in result.stderr and f"continuing from {tmp_path / BEST_NAME}" in result.stderr
    )


def test_resuming_an_older_file_where_a_newer_one_lies_is_refused(two_epochs, tmp_path):
    _copy(two_epochs, tmp_path)
    older = tmp_path / "checkpoint_epoch_000.pth.tar"
    result = run_cli("resume", str(older), "--epochs", "3")
    assert result.returncode == 2 and "is further on (epoch 2, step 0)" in result.stderr
    assert load(tmp_path / CHECKPOINT_NAME)["epoch"] == 2


def test_a_usage_mistake_is_one_line_too():
    result = run_cli("resume", "x.pth.tar", "--image-size", "3")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: No such option: --image-size (Possible options: --batch-size) (see `imagenet-cli resume --help`)"
    ]
