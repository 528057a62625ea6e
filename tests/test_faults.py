"""Faults and bad data: each one found early or named fast, nothing left running, the last good state kept.

Real processes throughout: the CLI, spawned Gloo ranks, a rank made to fail (`IMAGENET_CLI_FAULT`) or
killed with SIGKILL, a rendezvous nobody else joins, a port someone else holds, damaged files on disk.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_cli.checkpoint import BEST_NAME, CHECKPOINT_NAME
from imagenet_cli.config import build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.faults import InjectedFault
from imagenet_cli.data import presets
from imagenet_cli.data.fakedata import FakeImages
from imagenet_cli.data.loaders import Normalizer, train_loader
from imagenet_cli.report.live import Reporter
from imagenet_cli.run import distributed, worker
from imagenet_cli.run.launch import _root_cause
from imagenet_cli.train.engine import TrainParts, train_one_epoch

from .conftest import (
    FAST_FAKE,
    TINY_ARCH,
    TWO_RANKS,
    RunningCli,
    cli_env,
    load,
    ok,
    run_cli,
    start_cli,
    write_image_folder,
    write_photo,
)

TINY = ("-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--epochs", "1", "-j", "0")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _timed(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = run_cli(*args, env=env)
    return result, time.monotonic() - start


def _one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, f"exit {result.returncode}: {result.stderr[-2000:]}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# -- 1. the dataset pre-flight -------------------------------------------------------------------------------


@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", {"ants": 4, "bees": 4}, {"ants": 2, "bees": 2})


def test_an_empty_class_folder_is_named_before_training(folders, tmp_path):
    (folders / "train" / "wasps").mkdir()
    (folders / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class, not a problem
    _one_line_error(run_cli("train", str(folders), *TINY), 2, "class folders without images: wasps")


def test_a_class_only_val_has_is_an_error_and_one_only_train_has_a_note(folders, tmp_path):
    (folders / "val" / "moths").mkdir()
    Image.new("RGB", (8, 8)).save(folders / "val" / "moths" / "m.png")
    _one_line_error(run_cli("train", str(folders), *TINY), 2, "val/ has classes train/ lacks: moths")
    (folders / "val" / "moths" / "m.png").unlink()
    (folders / "val" / "moths").rmdir()
    for f in (folders / "val" / "bees").iterdir():
        f.unlink()
    (folders / "val" / "bees").rmdir()
    result = ok(run_cli("train", str(folders), *TINY, "--output-dir", str(tmp_path / "out")))
    assert "note: val/ has no folder for 1 class(es): bees" in result.stderr


def test_pictures_imagefolder_would_skip_are_counted_and_broken_links_named(folders, tmp_path):
    for name in ("a.jfif", "b.jfif", "c.heic"):
        (folders / "train" / "ants" / name).write_bytes(b"not read")
    result = ok(run_cli("train", str(folders), *TINY, "--output-dir", str(tmp_path / "out")))
    assert "train/ has 3 picture file(s) ImageFolder does not read (.jfif: 2, .heic: 1)" in result.stderr
    os.symlink(tmp_path / "nowhere.jpg", folders / "train" / "bees" / "gone.jpg")
    _one_line_error(run_cli("train", str(folders), *TINY), 2, "train/ has 1 broken symlink(s): ")


# -- 2. bad images during training ------------------------------------------------------------------------------


@pytest.fixture()
def damaged(folders: Path) -> Path:
    """A truncated JPEG, garbage with a .jpg name and an empty file among good pictures."""
    photo = write_photo(folders / "train" / "ants" / "truncated.jpg", 64, 48, quality=90)
    photo.write_bytes(photo.read_bytes()[:600])
    (folders / "train" / "bees" / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (folders / "train" / "bees" / "empty.jpg").write_bytes(b"")
    return folders


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_unreadable_image_stops_the_run_naming_the_file(damaged, tmp_path, workers):
    result, seconds = _timed("train", str(damaged), *TINY, "--seed", "0", "-j", workers)
    _one_line_error(result, 2, "cannot read ")
    assert re.search(r"cannot read \S+(truncated|garbage|empty)\.jpg: ", result.stderr)
    assert seconds < 60


def test_skipping_bad_images_warns_once_per_file_and_stops_past_the_limit(damaged, tmp_path):
    """11 training files, a batch of 11: an epoch meets every one (twice, over two epochs)."""
    result = ok(run_cli("train", str(damaged), *TINY, "-b", "11", "--epochs", "2", "--skip-bad-images",
                        "--output-dir", str(tmp_path / "out")))  # fmt: skip
    warned = re.findall(r"^warning: rank 0: skipped \S+/([^/:]+): ", result.stderr, flags=re.MULTILINE)
    assert sorted(warned) == ["empty.jpg", "garbage.jpg", "truncated.jpg"]
    limited = run_cli("train", str(damaged), *TINY, "-b", "11", "--skip-bad-images", "--max-bad-images", "1")
    _one_line_error(limited, 1, "more than --max-bad-images 1 unreadable images")


def test_check_data_decodes_everything_and_reports_each_bad_file(damaged, tmp_path):
    write_photo(damaged / "val" / "ants" / "cmyk.jpg", 40, 30, mode="CMYK")
    write_photo(damaged / "val" / "bees" / "alpha.png", 40, 30, mode="RGBA")
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(damaged / "val" / "bees" / "deep.png")
    result = run_cli("check-data", str(damaged), "--json", "-j", "2")
    assert result.returncode == 1
    import json

    report = json.loads(result.stdout)
    assert sorted(Path(row["file"]).name for row in report["unreadable"]) == [
        "empty.jpg",
        "garbage.jpg",
        "truncated.jpg",
    ]
    assert {"RGB", "CMYK", "RGBA", "I;16"} <= set(report["modes"]) and report["files"] == 3 + 8 + 4 + 3
    assert run_cli("check-data", str(damaged / "missing")).returncode == 2


def test_pictures_past_the_pixel_limit_are_refused_or_read_smaller(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "MAX_DECODED_PIXELS", 300 * 200)
    jpeg = presets.read_bytes(str(write_photo(tmp_path / "big.jpg", 800, 600, quality=90)))
    png = presets.read_bytes(str(write_photo(tmp_path / "big.png", 800, 600)))
    assert presets.within_limit(presets.open_sample(jpeg)[1], 1) == 4  # 200x150 fits
    assert presets.ValPreset(64, 64)(jpeg).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="800x600 pixels, more than the 60,000 this tool decodes"):
        presets.ValPreset(64, 64)(png)


# -- 3. a loss that is not finite ---------------------------------------------------------------------------------


def test_a_nan_on_one_rank_stops_every_rank_before_the_step_and_keeps_the_checkpoints(one_epoch):
    out, saved = one_epoch
    env = cli_env(IMAGENET_CLI_FAULT="nan:rank=1,epoch=1,step=3")
    result, seconds = _timed("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "8", "--epochs", "2", "--resume", "auto",
                             *TWO_RANKS, "--output-dir", str(out), env=env)  # fmt: skip
    _one_line_error(result, 1, "the loss became NaN or infinite at epoch 1, step 3 on rank 1")
    assert "--grad-clip 1.0" in result.stderr and seconds < 90
    _untouched(out, saved)  # neither file was touched


def test_grad_clip_bounds_the_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    before = [p.detach().clone() for p in model.parameters()]
    cpu = DistContext(0, 0, 1, 1, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = train_loader(FakeImages(8, 4, 8, seed=0), cpu, batch_size=8, workers=0, seed=0)
    parts = TrainParts(model, torch.nn.CrossEntropyLoss(), optimizer, Normalizer(cpu.device), cpu, Reporter(), 10, 4,
                       grad_clip=1e-3)  # fmt: skip
    train_one_epoch(parts, loader, epoch=0)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert 0 < moved <= 1e-3 * 1.0001
    assert build_config("train", {"fake": True, "grad_clip": 1.0}).optim.grad_clip == 1.0


# -- 4. distributed faults ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished first epoch, trained once: each test below continues a copy of it."""
    out = tmp_path_factory.mktemp("first_epoch")
    ok(run_cli("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "8", "--epochs", "1", "--output-dir", str(out)))
    return out


@pytest.fixture()
def one_epoch(first_epoch: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of that first epoch's run directory (the last good state) and the fingerprints of its files."""
    out = tmp_path / "run"
    shutil.copytree(first_epoch, out)
    return out, {name: _sha(out / name) for name in (CHECKPOINT_NAME, BEST_NAME)}


def _untouched(out: Path, saved: dict[str, str]) -> None:
    assert {name: _sha(out / name) for name in saved} == saved
    assert load(out / CHECKPOINT_NAME)["epoch"] == 1


def test_one_rank_raising_stops_every_rank_and_names_it(one_epoch):
    out, saved = one_epoch
    env = cli_env(IMAGENET_CLI_FAULT="raise:rank=1,epoch=1,step=2")
    result, seconds = _timed("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "8", "--epochs", "2", "--resume", "auto",
                             *TWO_RANKS, "--output-dir", str(out), env=env)  # fmt: skip
    _one_line_error(result, 1, "rank 1 failed: InjectedFault: injected failure at epoch 1, step 2")
    assert seconds < 60
    _untouched(out, saved)


def test_a_rank_that_reported_its_failure_is_named_for_it_even_if_it_then_died_leaving():
    """Gloo can abort a failing rank while it leaves (SIGABRT): its report, not the signal, is the cause."""
    two = distributed.Topology("spawn", world_size=2, nproc_per_node=2)
    nan = "the loss became NaN or infinite at epoch 1, step 3 on rank 1"
    reports = [(1, 1, nan), (0, 1, nan)]
    assert str(_root_cause([1, -signal.SIGABRT], 1, reports, two)) == f"rank 1 failed: {nan}"
    silent = _root_cause([1, -signal.SIGKILL], 1, [(0, 1, "RuntimeError: connection closed by peer")], two)
    assert str(silent) == "rank 1 was killed by SIGKILL; every other rank was stopped"


def test_a_failed_run_lets_go_of_its_model_while_the_process_is_still_whole(tmp_path, monkeypatch):
    """The failure's traceback would keep the model (and under DDP its process group) alive until the
    interpreter shuts down, where Gloo's threads abort the process: the worker frees them first."""
    from torchvision.models import ShuffleNetV2

    monkeypatch.setenv("IMAGENET_CLI_FAULT", "raise:step=2")
    cfg = build_config("train", {"fake": True, "arch": TINY_ARCH, "image_size": 32, "fake_train_images": 32,
                                 "fake_val_images": 8, "workers": 0, "batch_size": 8, "quiet": True,
                                 "output_dir": str(tmp_path)})  # fmt: skip

    def models_alive() -> int:
        """Reachable models only: an earlier test's model left in a reference cycle would otherwise be
        counted before and collected during the run (the full suite failed so, once)."""
        gc.collect()
        return sum(type(o) is ShuffleNetV2 for o in gc.get_objects())

    before = models_alive()
    with pytest.raises(InjectedFault, match="injected failure at epoch 0, step 2") as failure:
        worker.run(0, cfg, distributed.plan(cfg.dist, env={}))
    assert failure.value.__traceback__ is not None  # held, as a launcher holds it while it reports
    assert models_alive() == before


def _long_run(out: Path) -> RunningCli:
    return start_cli("train", "--fake-data", "--image-size", "32", "-a", TINY_ARCH, "--fake-train-images", "100000",
                     "--fake-val-images", "32", "-b", "8", "-j", "0", "-p", "1", "--epochs", "2", "--resume", "auto",
                     *TWO_RANKS, "--output-dir", str(out))  # fmt: skip


def _training_ranks(launcher: RunningCli) -> list[int]:
    """Wait for a 2-rank run's third step of epoch 1; returns its two rank processes."""
    launcher.wait_for(re.compile(r"^Epoch: \[1\]\[\s*3/"))
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    ranks = [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(ranks) == 2
    return ranks


def _gone(pids: list[int]) -> bool:
    """No process left running (a zombie awaiting its parent's wait counts as gone)."""
    return not any(
        os.path.exists(f"/proc/{pid}") and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text() for pid in pids
    )


def test_a_rank_killed_outright_ends_the_run_quickly_with_nothing_left_behind(one_epoch):
    out, saved = one_epoch
    with _long_run(out) as launcher:
        ranks = _training_ranks(launcher)
        os.kill(ranks[1], signal.SIGKILL)
        start = time.monotonic()
        ended = launcher.finish(timeout=60)
    stderr = ended.stderr
    assert ended.returncode == 1 and time.monotonic() - start < 20
    assert re.search(r"error: rank \d was killed by SIGKILL; every other rank was stopped", stderr), stderr
    assert _gone(ranks)
    _untouched(out, saved)


def test_sigterm_to_the_launcher_saves_stops_every_rank_and_leaves_none(one_epoch):
    out, _ = one_epoch
    with _long_run(out) as launcher:
        ranks = _training_ranks(launcher)
        launcher.send_signal(signal.SIGTERM)
        start = time.monotonic()
        ended = launcher.finish(timeout=120)
    stderr = ended.stderr
    assert ended.returncode == 75 and time.monotonic() - start < 30, stderr
    assert "stopped by SIGTERM at epoch 1, step" in stderr and _gone(ranks)
    saved = load(out / CHECKPOINT_NAME)
    assert saved["epoch"] == 1 and saved["step"] >= 3


def test_a_peer_that_never_joins_times_out_saying_how_many_joined(tmp_path):
    url = f"tcp://127.0.0.1:{distributed.free_port()}"
    result, seconds = _timed("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "8", "--epochs", "1", "--world-size", "2",
                             "--rank", "0", "--dist-url", url, "--dist-timeout", "5", "--output-dir", str(tmp_path))  # fmt: skip
    _one_line_error(result, 1, "only 1 of 2 processes joined within --dist-timeout 5s")
    assert seconds < 45


def test_an_occupied_port_is_replaced_locally_and_named_for_a_multi_node_run(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        url = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        local = ok(run_cli("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "8", "--epochs", "1", *TWO_RANKS,
                           "--dist-url", url, "--output-dir", str(tmp_path)))  # fmt: skip
        assert f"--dist-url {url}: port" in local.stderr and "is in use; this single-machine run uses" in local.stderr
        for written in (url, f"{url}/"):  # torch takes both spellings
            nodes = run_cli(
                "train", *FAST_FAKE, "-a", TINY_ARCH, "--world-size", "2", "--rank", "0", "--dist-url", written
            )
            _one_line_error(nodes, 2, "is already in use on this machine")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--world-size", "2", "--rank", "2", "--dist-url", "tcp://127.0.0.1:1"), "--rank 2 is out of range"),
        (("--dist-backend", "nccl", *TWO_RANKS), "--dist-backend nccl needs CUDA GPUs"),
        (("--gpu", "0", *TWO_RANKS), "--gpu pins the one process"),
        (("--dist-timeout", "0",), "--dist-timeout must be positive"),
    ],
)  # fmt: skip
def test_inconsistent_flags_are_refused_before_any_process_starts(flags, message):
    result, seconds = _timed("train", *FAST_FAKE, "-a", TINY_ARCH, *flags)
    _one_line_error(result, 2, message)
    assert seconds < 20


# -- 5 and 6. restarts and integrity ---------------------------------------------------------------------------------


def test_resume_auto_starts_fresh_then_passes_over_a_corrupted_newest_checkpoint(tmp_path):
    common = (*FAST_FAKE, "-a", TINY_ARCH, "-b", "16", "--keep-epochs", "3", "--output-dir", str(tmp_path))
    first = ok(run_cli("train", *common, "--epochs", "2", "--resume", "auto"))
    assert "--resume auto: no checkpoint in" in first.stderr and "starting fresh" in first.stderr
    assert (tmp_path / (CHECKPOINT_NAME + ".sha256")).read_text().endswith(f"  {CHECKPOINT_NAME}\n")
    assert subprocess.run(["sha256sum", "-c", CHECKPOINT_NAME + ".sha256"], cwd=tmp_path).returncode == 0
    for name in (CHECKPOINT_NAME, BEST_NAME):
        damaged = bytearray((tmp_path / name).read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte: still a loadable zip, silently wrong weights
        (tmp_path / name).write_bytes(bytes(damaged))
    bad = run_cli("evaluate", str(tmp_path / CHECKPOINT_NAME))
    _one_line_error(bad, 2, "does not match its checksum in checkpoint.pth.tar.sha256: the file is damaged")
    again = ok(run_cli("train", *common, "--epochs", "3", "--resume", "auto"))
    assert f"--resume auto: continuing from {tmp_path / 'checkpoint_epoch_001.pth.tar'}" in again.stderr
    assert "passing over" in again.stderr and load(tmp_path / CHECKPOINT_NAME)["epoch"] == 3
