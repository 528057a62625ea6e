"""What a run leaves in its directory and shows while it runs: config.json, metrics.jsonl, per-rank logs,
TensorBoard events, plain log output, and recipe files given with --config."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest
import torch

from .conftest import FAST_FAKE, TINY_ARCH, TWO_RANKS, cli_env, load, ok, run_cli

RUN = ("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "16", "--seed", "0", "-p", "2")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 2-epoch run (4 steps an epoch, a line every 2) and what it printed to a pipe."""
    out = tmp_path_factory.mktemp("two-epochs")
    result = ok(run_cli(*RUN, "--epochs", "2", "--lr-step-size", "1", "--output-dir", str(out)))
    return out, result.stdout + result.stderr


def test_metrics_jsonl_has_a_line_per_print_interval_and_per_epoch(two_epochs):
    out, _ = two_epochs
    lines = _lines(out / "metrics.jsonl")
    train = [line for line in lines if line["type"] == "train"]
    assert [(line["epoch"], line["step"]) for line in train] == [(0, 2), (0, 4), (1, 2), (1, 4)]
    assert {line["steps"] for line in train} == {4}
    assert [line["lr"] for line in train] == pytest.approx([0.1, 0.1, 0.01, 0.01])  # --lr-step-size 1
    for line in train:
        assert line["loss"] > 0 and 0 <= line["acc1"] <= line["acc5"] <= 100
        assert line["images_per_second"] > 0 and 0 <= line["data_wait"] <= 1 and line["memory_mb"] > 0
    epochs = [line for line in lines if line["type"] == "epoch"]
    assert [line["epoch"] for line in epochs] == [0, 1]
    saved = load(out / "checkpoint.pth.tar")
    assert epochs[-1]["best_acc1"] == pytest.approx(saved["best_acc1"])
    assert epochs[-1]["saved"] == str(out / "checkpoint.pth.tar")
    assert max(e["val_acc1"] for e in epochs) == pytest.approx(saved["best_acc1"])
    assert all(lines[i]["time"] <= lines[i + 1]["time"] for i in range(len(lines) - 1))


def test_config_json_names_every_option_by_its_flag(two_epochs):
    out, _ = two_epochs
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "train" and config["arch"] == TINY_ARCH and config["fake-data"] is True
    assert config["lr-step-size"] == 1 and config["seed"] == 0 and config["image-size"] == 32
    assert "output-dir" not in config and "resume" not in config  # where and how: not what


def test_config_json_trains_the_same_run_again(two_epochs, tmp_path):
    out, _ = two_epochs
    again = tmp_path / "again"
    ok(run_cli("train", "--config", str(out / "config.json"), "--output-dir", str(again)))
    first, second = load(out / "checkpoint.pth.tar"), load(again / "checkpoint.pth.tar")
    assert first["state_dict"].keys() == second["state_dict"].keys()
    assert all(torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])
    assert json.loads((again / "config.json").read_text()) == json.loads((out / "config.json").read_text())


def test_output_to_a_pipe_is_plain_lines_at_the_print_interval(two_epochs):
    _, printed = two_epochs
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", printed)  # no escapes, no carriage returns
    assert re.search(r"^Epoch: \[0\]\[2/4\]  loss \d", printed, re.M)
    assert re.search(r"^epoch 1: train loss .* val loss .* top-1 .*best", printed, re.M)


def test_a_resumed_run_drops_the_lines_after_its_checkpoint(tmp_path):
    ok(run_cli(*RUN, "--epochs", "1", "--output-dir", str(tmp_path)))
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as f:  # what a run killed during epoch 1 had written, torn last line included
        f.write(json.dumps({"type": "train", "epoch": 1, "step": 2, "steps": 4, "loss": 9.9}) + "\n")
        f.write('{"type": "train", "epo')
    ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar"), "--epochs", "2"))
    lines = _lines(metrics)
    assert [(line["type"], line["epoch"], line.get("step")) for line in lines] == [
        ("train", 0, 2), ("train", 0, 4), ("epoch", 0, None), ("train", 1, 2), ("train", 1, 4), ("epoch", 1, None),
    ]  # fmt: skip
    assert all(line["loss"] != 9.9 for line in lines if line["type"] == "train")


def test_every_rank_writes_its_own_log(tmp_path):
    logs = tmp_path / "logs"
    ok(run_cli(*RUN, "--epochs", "1", *TWO_RANKS,
               "--output-dir", str(tmp_path / "out"), "--log-dir", str(logs)))  # fmt: skip
    assert sorted(p.name for p in logs.iterdir()) == ["workerlog.0", "workerlog.1"]
    for rank in (0, 1):
        text = (logs / f"workerlog.{rank}").read_text()
        assert re.search(r"^Epoch: \[0\]\[4/4\]  loss", text, re.M), text  # each rank's own figures
        assert re.search(r"^epoch 0: train loss", text, re.M)


def test_a_failing_rank_leaves_its_traceback_in_its_log(tmp_path):
    logs = tmp_path / "logs"
    result = run_cli(*RUN, "--epochs", "1", *TWO_RANKS,
                     "--output-dir", str(tmp_path), "--log-dir", str(logs),
                     env=cli_env(IMAGENET_CLI_FAULT="raise:rank=1,epoch=0,step=1"))  # fmt: skip
    assert result.returncode == 1 and "rank 1 failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Traceback (most recent call last)" in (logs / "workerlog.1").read_text()


def test_verbose_shows_the_resolved_configuration_and_tensorboard_writes_event_files(tmp_path):
    """One run for both: neither changes what the other shows."""
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    board = ("--tensorboard",) if tensorboard else ()
    result = ok(run_cli(*RUN, "--epochs", "1", "--verbose", *board, "--output-dir", str(tmp_path)))
    assert re.search(r"^  lr-step-size: 30$", result.stdout, re.M)
    assert re.search(r"data wait \d+%", result.stdout)
    if not tensorboard:
        pytest.skip("tensorboard is not installed: its event files are not checked")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "epoch/val_top1", "epoch/train_loss"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]


def test_quiet_and_verbose_together_are_refused(tmp_path):
    result = run_cli(*RUN, "--quiet", "--verbose", "--output-dir", str(tmp_path))
    assert result.returncode == 2 and "--quiet and --verbose" in result.stderr


# -- recipe files ------------------------------------------------------------------------------------------------


def test_a_toml_recipe_sets_options_and_the_command_line_overrides_it(tmp_path):
    recipe = tmp_path / "recipe.toml"
    # No epoch to train: what the recipe set is read back from config.json, written before training.
    recipe.write_text(f'arch = "{TINY_ARCH}"\nfake-data = true\ntrain-crop-size = 32\nepochs = 0\n'
                      "fake_train_images = 32\nfake-val-images = 16\nworkers = 0\nbatch-size = 8\nlr = 0.05\n"
                      "wd = 0.001\n")  # fmt: skip
    ok(run_cli("train", "--config", str(recipe), "--lr", "0.02", "--output-dir", str(tmp_path)))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["lr"] == 0.02 and config["batch-size"] == 8 and config["epochs"] == 0
    assert config["image-size"] == 32 and config["weight-decay"] == 0.001  # any name the flag has


def test_a_yaml_recipe_reads_like_the_flags(tmp_path):
    pytest.importorskip("yaml")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"arch: {TINY_ARCH}\nfake-data: true\nimage-size: 32\nepochs: 0\nfake-train-images: 32\n"
                      "fake-val-images: 16\nworkers: 0\nbatch-size: 8\nlr-step-size: 5\n")  # fmt: skip
    ok(run_cli("train", "--config", str(recipe), "--output-dir", str(tmp_path)))
    assert json.loads((tmp_path / "config.json").read_text())["lr-step-size"] == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('lr = "0.1"', "lr must be a number, got '0.1'"),
        ("learning-speed = 0.1", "unknown option 'learning-speed'"),
        ("lr_step = 3", "did you mean lr-step-size"),
        ("lr = [", "is not valid TOML"),
        ('command = "finetune"', "is a finetune recipe; run it with `imagenet-cli finetune --config`"),
    ],
)
def test_a_bad_recipe_is_one_clear_line(tmp_path, text, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text + "\n")
    result = run_cli("train", "--config", str(recipe), "--fake-data")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- a run never writes through links or over another run ---------------------------------------------------------


def test_log_dir_refuses_a_planted_symlink_before_any_rank_starts(tmp_path):
    logs, notes = tmp_path / "logs", tmp_path / "notes.txt"
    logs.mkdir()
    notes.write_text("precious\n")
    (logs / "workerlog.1").symlink_to(notes)  # rank 1's log, so every local rank is checked, not only 0
    result = run_cli(*RUN, "--epochs", "1", *TWO_RANKS,
                     "--output-dir", str(tmp_path / "out"), "--log-dir", str(logs))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --log-dir: {logs / 'workerlog.1'} is a symbolic link (a log is never written through one); "
        "remove it or choose another --log-dir"
    ]
    assert notes.read_text() == "precious\n"
    assert not (tmp_path / "out" / "config.json").exists()  # refused before any process started


@pytest.mark.parametrize("kind", ["link-to-a-file", "dangling-link", "directory", "hard-link"])
def test_a_rank_opens_its_log_without_following_links_or_emptying_other_files(tmp_path, kind):
    """The rank's own open checks the file it opened (no window between a check and the open)."""
    from imagenet_cli.core.errors import UserError
    from imagenet_cli.report.records import rank_log

    notes, log = tmp_path / "notes.txt", tmp_path / "workerlog.0"
    notes.write_text("precious\n")
    if kind == "link-to-a-file":
        log.symlink_to(notes)
    elif kind == "dangling-link":
        log.symlink_to(tmp_path / "created-through-the-link")
    elif kind == "directory":
        log.mkdir()
    else:
        log.hardlink_to(notes)
    refused = r"^--log-dir: .*workerlog\.0 (is a symbolic link|is not a regular file|is a hard link)"
    with pytest.raises(UserError, match=refused), rank_log(str(tmp_path), 0, redirect=False):
        pass
    assert notes.read_text() == "precious\n" and not (tmp_path / "created-through-the-link").exists()


def test_a_different_run_in_a_used_directory_is_refused_before_it_starts(tmp_path):
    """Without --output-dir a run writes into the current directory: a second run there must not
    silently overwrite the first one's records and checkpoints."""
    ok(run_cli(*RUN, "--epochs", "1", cwd=tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    started = time.monotonic()
    for again in ((*RUN, "--epochs", "1", "--lr", "0.05", *TWO_RANKS), (*RUN, "--epochs", "1")):
        result = run_cli(*again, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: {tmp_path} already holds another run (config.json, metrics.jsonl, checkpoint.pth.tar, "
            f"model_best.pth.tar); choose a new --output-dir or continue it with "
            f"`imagenet-cli resume {tmp_path / 'checkpoint.pth.tar'}`"
        ]
    assert time.monotonic() - started < 40  # refused before any process was spawned
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    resumed = ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar"), "--epochs", "2"))  # its own run goes on
    assert "at epoch 1" in resumed.stdout


def test_a_run_killed_before_its_first_save_may_restart_but_no_other_run_takes_its_directory(tmp_path):
    """`--resume auto` after a crash before any checkpoint starts the same run afresh; another run is refused."""
    command = (*RUN, "--epochs", "1", "--resume", "auto", "--output-dir", str(tmp_path))
    killed = run_cli(*command, env=cli_env(IMAGENET_CLI_FAULT="raise:epoch=0,step=3"))
    assert killed.returncode == 1 and (tmp_path / "config.json").exists()
    assert not (tmp_path / "checkpoint.pth.tar").exists()
    other = run_cli(*RUN, "--epochs", "1", "--lr", "0.05", "--output-dir", str(tmp_path))
    assert other.returncode == 2 and "already holds another run (config.json, metrics.jsonl)" in other.stderr
    assert "it saved no checkpoint" in other.stderr
    restarted = ok(run_cli(*command))
    assert "no checkpoint in" in restarted.stderr and "starting fresh" in restarted.stderr
    assert [(line["epoch"], line.get("step")) for line in _lines(tmp_path / "metrics.jsonl")] == [
        (0, 2), (0, 4), (0, None),
    ]  # fmt: skip


def test_tensorboard_after_a_resume_draws_every_step_once(tmp_path):
    """The resumed run trains the steps after its checkpoint again: TensorBoard must drop the first
    run's events for them, as metrics.jsonl drops its lines."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = (*RUN, "--epochs", "2", "-p", "1", "--tensorboard", "--save-every-steps", "2")
    stopped = run_cli(*common, "--output-dir", str(tmp_path), env=cli_env(IMAGENET_CLI_FAULT="raise:epoch=1,step=4"))
    assert stopped.returncode == 1  # steps 1-3 of epoch 1 (global 5-7) were drawn; the checkpoint is at step 2
    assert (load(tmp_path / "checkpoint.pth.tar")["epoch"], load(tmp_path / "checkpoint.pth.tar")["step"]) == (1, 2)
    ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar")))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "epoch/val_top1"} <= set(tags)
    for tag in tags:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: {steps}"
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [4, 8]
