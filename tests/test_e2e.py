"""The tool as a user drives it: real processes through `python -m imagenet_cli`, real files on disk."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imagenet_cli.checkpoint import BEST_NAME, CHECKPOINT_NAME
from imagenet_cli.train import compute

from .conftest import FAST_FAKE, TINY_ARCH, cli_env, json_result, load, ok, run_cli


def test_help_lists_every_command_quickly():
    result = ok(run_cli("--help"))
    for command in ("train", "evaluate", "resume", "finetune", "inspect", "benchmark"):
        assert command in result.stdout


def test_help_does_not_import_torch():
    """What makes `--help` answer in a fraction of a second: torch alone takes seconds to import."""
    probe = (
        "import sys\nfrom imagenet_cli.cli import main\nsys.argv = ['imagenet-cli', 'train', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch imported' if 'torch' in sys.modules else 'no torch')"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env())
    assert result.stdout.strip().endswith("no torch")


def test_train_evaluate_resume_finetune_round_trip(trained_run, image_folder, tmp_path):
    checkpoint = trained_run / CHECKPOINT_NAME
    first = load(checkpoint)
    assert first["epoch"] == 1 and first["arch"] == TINY_ARCH and (trained_run / BEST_NAME).exists()
    assert first["class_names"] == [f"class_{i}" for i in range(10)]

    shown = run_cli("evaluate", str(checkpoint), "--json", "-j", "0")
    evaluated = json_result(shown)
    assert evaluated["images"] == 32 and evaluated["acc1"] == pytest.approx(first["best_acc1"])
    precision = "bf16 autocast" if compute.cpu_multiplies_bf16() else "fp32"  # --amp auto: this CPU's default
    assert f"compute: {precision}, channels-last" in shown.stderr  # what the top-1 was measured in

    resumed_dir = tmp_path / "resumed"
    result = ok(run_cli("resume", str(checkpoint), "--epochs", "2", "--output-dir", str(resumed_dir)))
    assert "resuming" in result.stdout and "at epoch 1" in result.stdout
    second = load(resumed_dir / CHECKPOINT_NAME)
    assert second["epoch"] == 2 and second["config"]["optim"]["epochs"] == 2

    tuned_dir = tmp_path / "tuned"
    result = ok(
        run_cli(
            "finetune", str(image_folder), "--weights", str(resumed_dir / CHECKPOINT_NAME), "--epochs", "1",
            "-b", "8", "--image-size", "32", "-j", "0", "--output-dir", str(tuned_dir),
        )
    )  # fmt: skip
    assert "new head for 3 classes" in result.stdout
    tuned = load(tuned_dir / CHECKPOINT_NAME)
    assert tuned["arch"] == TINY_ARCH  # taken from the weights file
    assert tuned["class_names"] == ["ants", "bees", "wasps"] and tuned["state_dict"]["fc.weight"].shape[0] == 3
    backbone = "conv1.0.weight"
    assert not tuned["state_dict"][backbone].equal(second["state_dict"][backbone])  # it trained from there
    evaluated = json_result(run_cli("evaluate", str(tuned_dir / CHECKPOINT_NAME), "--json", "-j", "0"))
    assert evaluated["images"] == 13


def test_fake_data_is_learnable_so_a_short_cpu_run_beats_chance(tmp_path):
    """The README's first command, shortened: accuracy rising well above chance shows the pipeline works
    (about 50% after one epoch of 320 images, 67% after two)."""
    result = ok(
        run_cli(
            "train", "--fake-data", "--fake-train-images", "320", "-a", "resnet18", "--epochs", "2",
            "--image-size", "32", "-b", "32", "--lr", "0.01", "-j", "0", "--seed", "0", "--output-dir", str(tmp_path),
        )
    )  # fmt: skip
    best = load(tmp_path / CHECKPOINT_NAME)["best_acc1"]
    assert best > 30.0, result.stdout  # chance is 10% with 10 classes
    assert "\x1b" not in result.stdout and "\r" not in result.stdout  # plain lines when not on a terminal


def test_a_given_lr_overrides_the_stored_one_on_resume_and_is_reported(trained_run, tmp_path):
    result = ok(
        run_cli(
            "resume", str(trained_run / CHECKPOINT_NAME), "--epochs", "2", "--lr", "0.02", "--output-dir", str(tmp_path)
        )
    )
    assert "overriding the checkpoint's configuration" in result.stderr and "lr 0.1 -> 0.02" in result.stderr
    saved = load(tmp_path / CHECKPOINT_NAME)
    assert saved["config"]["optim"]["lr"] == 0.02
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.02)


def test_train_resume_flag_continues_like_the_reference(trained_run, tmp_path):
    result = ok(
        run_cli("train", "--resume", str(trained_run / CHECKPOINT_NAME), "--epochs", "2", "--output-dir", str(tmp_path))
    )
    assert "at epoch 1" in result.stdout
    assert load(tmp_path / CHECKPOINT_NAME)["epoch"] == 2


def test_evaluate_flag_only_validates(trained_run):
    result = ok(run_cli("train", "-e", "--resume", str(trained_run / CHECKPOINT_NAME), *FAST_FAKE, "-a", TINY_ARCH))
    assert "Evaluation of" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "/no/such/dir"), "data directory not found: /no/such/dir"),
        (("train",), "DATA is required"),
        (("train", "--fake-data", "--arch", "resnet19"), "unknown architecture 'resnet19'; did you mean"),
        (("train", "--fake-data", "-b", "0"), "--batch-size must be positive"),
        (("train", "--fake-data", "--lr", "-0.1"), "--lr must be positive"),
        (("evaluate", "/no/such/checkpoint.pth.tar"), "checkpoint not found"),
        (("resume", "/no/such/checkpoint.pth.tar"), "checkpoint not found"),
        (("train", "--fake-data", "--resume", "/no/such.pth.tar"), "checkpoint not found"),
        (("finetune", "--fake-data", "--arch", "resnet18"), "--weights PATH or --pretrained"),
        (
            ("train", "--fake-data", "-b", "3", "--multiprocessing-distributed", "--nproc-per-node", "2"),
            "must divide evenly",
        ),
        (("train", "--fake-data", "--data-parallel", "--no-accel"), "--data-parallel needs CUDA GPUs"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_data_directory_without_train_and_val_is_explained(tmp_path):
    (tmp_path / "cats").mkdir()
    result = run_cli("train", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds no dataset this tool recognises: expected train/ and val/ class folders" in result.stderr


def test_finetune_from_torchvision_weights_with_an_empty_cache_is_clear(tmp_path, image_folder):
    from .conftest import cli_env

    result = run_cli(
        "finetune",
        str(image_folder),
        "--pretrained",
        "-a",
        "resnet18",
        "-j",
        "0",
        env=cli_env(TORCH_HOME=str(tmp_path)),
    )
    assert result.returncode == 2
    assert "not in the local cache: expected" in result.stderr and str(tmp_path) in result.stderr
