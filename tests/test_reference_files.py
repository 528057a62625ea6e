"""Files written by the two reference programs, made by their own code paths (see conftest): pytorch/examples'
`imagenet/main.py` (always a 1000-output head, whatever the data) and torchvision's classification
reference (`epoch` is the last finished index, `args` holds the recipe, `model_ema` an AveragedModel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision import models as tv_models

from .conftest import (
    TINY_ARCH,
    json_result,
    load,
    ok,
    reference_script_checkpoint,
    reference_script_predictions,
    run_cli,
    torchvision_reference_run,
    write_image_folder,
)

TEN = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "ants", "bees", "wasps")
SMALL = ("--image-size", "64", "--val-crop-size", "64", "--val-resize-size", "72", "-j", "0")


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class ImageFolder at 64 px: a user's own data, far from ImageNet's 1000 classes."""
    return write_image_folder(tmp_path_factory.mktemp("ten"), {c: 4 for c in TEN}, {c: 2 for c in TEN}, size=64)


@pytest.fixture(scope="module")
def reference_checkpoint(ten_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 trained by the reference script's code path for one epoch on the 10 classes."""
    return reference_script_checkpoint(ten_classes, tmp_path_factory.mktemp("ref"), arch="resnet18", epochs=1)


def _reference_model(checkpoint: Path) -> torch.nn.Module:
    """The file loaded back as the reference script loads it: its own 1000-output model."""
    model = tv_models.__dict__["resnet18"]()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    return model


def test_the_reference_file_really_has_a_1000_output_head(reference_checkpoint):
    saved = load(reference_checkpoint)
    assert saved["state_dict"]["fc.weight"].shape == (1000, 512) and saved["epoch"] == 1
    assert isinstance(saved["best_acc1"], torch.Tensor)


def test_evaluate_scores_a_reference_checkpoint_image_for_image_as_the_reference_does(
    reference_checkpoint, ten_classes
):
    targets, top5 = reference_script_predictions(_reference_model(reference_checkpoint), ten_classes)
    hits = top5.eq(targets.unsqueeze(1))
    result = run_cli("evaluate", str(reference_checkpoint), str(ten_classes), "--json", "-j", "0")
    ours = json_result(result)
    images = len(targets)
    assert ours["images"] == images
    assert round(ours["acc1"] * images / 100) == int(hits[:, 0].sum())
    assert round(ours["acc5"] * images / 100) == int(hits.any(dim=1).sum())
    correct = [row["correct"] for row in ours["per_class"]]
    expected = [int(hits[targets == c, 0].sum()) for c in range(len(TEN))]
    assert correct == expected  # the same images right, class by class
    assert f"the model has 1000 outputs; the 10 classes of {ten_classes} are outputs 0–9" in result.stderr


def test_train_resume_and_resume_continue_a_reference_checkpoint_with_its_1000_outputs(
    reference_checkpoint, ten_classes, tmp_path
):
    first, second = tmp_path / "first", tmp_path / "second"
    trained = ok(run_cli("train", str(ten_classes), "--resume", str(reference_checkpoint), "--epochs", "2",
                         "-b", "20", *SMALL, "--output-dir", str(first)))  # fmt: skip
    assert "resuming" in trained.stdout and "at epoch 1" in trained.stdout
    assert "the model has 1000 outputs" in trained.stdout + trained.stderr
    saved = load(first / "checkpoint.pth.tar")
    assert saved["epoch"] == 2 and saved["state_dict"]["fc.weight"].shape == (1000, 512)
    assert saved["class_names"] == sorted(TEN)
    resumed = ok(run_cli("resume", str(reference_checkpoint), str(ten_classes), "--arch", "resnet18",
                         "--epochs", "2", "-b", "10", *SMALL[-2:], "--output-dir", str(second)))  # fmt: skip
    assert "resuming" in resumed.stdout
    assert load(second / "checkpoint.pth.tar")["epoch"] == 2


def test_resume_takes_a_smaller_batch_and_says_the_run_is_no_longer_bit_exact(trained_run, tmp_path):
    """A machine with less memory needs a smaller batch: allowed, as a changed world size is."""
    result = ok(run_cli("resume", str(trained_run / "checkpoint.pth.tar"), "--epochs", "2", "-b", "8",
                        "--output-dir", str(tmp_path)))  # fmt: skip
    assert "used batch 16, this run 8" in result.stdout and "not bit-identically" in result.stdout
    assert load(tmp_path / "checkpoint.pth.tar")["config"]["optim"]["batch_size"] == 8


def test_predict_names_a_reference_models_outputs_by_the_data_classes(reference_checkpoint, ten_classes):
    images = ten_classes / "val" / "red"
    result = run_cli("predict", str(reference_checkpoint), str(images), "--data", str(ten_classes), "--json",
                     "--top-k", "1000")  # fmt: skip
    names = {entry["index"]: entry["class"] for entry in json_result(result)["predictions"][0]["top"]}
    assert [names[i] for i in range(10)] == sorted(TEN) and names[10] == "output 10"
    assert "note: the model has 1000 outputs; the 10 classes of" in result.stderr and "outputs 0–9" in result.stderr


def test_export_of_a_reference_checkpoint_keeps_its_outputs_and_names_the_data_classes(
    reference_checkpoint, ten_classes, tmp_path
):
    target = tmp_path / "ref.pth"
    ok(run_cli("export", str(reference_checkpoint), "--format", "state_dict", "-o", str(target),
               "--data", str(ten_classes)))  # fmt: skip
    metadata = json.loads((tmp_path / "ref.pth.json").read_text())
    assert metadata["num_classes"] == 1000 and metadata["class_names"][:10] == sorted(TEN)
    assert load(target)["fc.weight"].shape == (1000, 512)


def test_num_classes_gives_a_model_on_real_data_the_reference_s_wider_head(image_folder, tmp_path):
    ok(run_cli("train", str(image_folder), "-a", TINY_ARCH, "--num-classes", "1000", "--epochs", "1", "-b", "16",
               "--image-size", "32", "-j", "0", "--output-dir", str(tmp_path)))  # fmt: skip
    saved = load(tmp_path / "checkpoint.pth.tar")
    assert saved["state_dict"]["fc.weight"].shape[0] == 1000 and len(saved["class_names"]) == 3
    too_few = run_cli("train", str(image_folder), "-a", TINY_ARCH, "--num-classes", "2", "--epochs", "1",
                      "--output-dir", str(tmp_path / "few"))  # fmt: skip
    assert too_few.returncode == 2 and "--num-classes 2 is fewer than the 3 classes" in too_few.stderr


# ---- torchvision's classification reference --------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_plain(ten_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tv")
    return out, torchvision_reference_run(ten_classes, out, epochs=2)


@pytest.fixture(scope="module")
def torchvision_ema(ten_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tv-ema")
    return out, torchvision_reference_run(ten_classes, out, epochs=2, ema=True, ema_steps=4, ema_decay=0.999)


def test_a_torchvision_file_is_written_as_its_reference_writes_it(torchvision_ema):
    out, _ = torchvision_ema
    saved = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["args"].model == TINY_ARCH  # the last finished epoch's index
    assert "n_averaged" in saved["model_ema"] and all(
        k.startswith("module.") for k in saved["model_ema"] if k != "n_averaged"
    )
    assert {"_last_lr", "step_size"} <= saved["lr_scheduler"].keys()


def test_resuming_a_2_epoch_torchvision_file_with_3_epochs_trains_exactly_one(torchvision_plain, ten_classes, tmp_path):
    out, _ = torchvision_plain
    result = ok(run_cli("train", str(ten_classes), "--resume", str(out / "checkpoint.pth"), "--epochs", "3",
                        "-j", "0", "--output-dir", str(tmp_path)))  # fmt: skip
    assert "at epoch 2" in result.stdout
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "epoch"]  # fmt: skip
    assert epochs == [2] and load(tmp_path / "checkpoint.pth.tar")["epoch"] == 3
    taken = next(line for line in result.stderr.splitlines() if "torchvision's recipe taken" in line)
    for name in ("model", "batch_size", "lr", "lr_scheduler", "val_crop_size"):
        assert name in taken
    assert "no equivalent here: " in result.stderr and "ra_reps" in result.stderr
    assert "never taken from a file" in result.stderr and "data_path" in result.stderr
    config = load(tmp_path / "checkpoint.pth.tar")["config"]
    assert config["model"]["arch"] == TINY_ARCH and config["optim"]["batch_size"] == 8  # from args, no -a or -b
    assert config["data"]["val_crop_size"] == 64 and config["data"]["image_size"] == 64
    assert "scheduler would continue" not in result.stdout  # its stored LR is the one this run continues at


def test_a_changed_lr_on_resume_is_set_against_the_stored_scheduler(torchvision_plain, ten_classes, tmp_path):
    out, _ = torchvision_plain
    result = ok(run_cli("train", str(ten_classes), "--resume", str(out / "checkpoint.pth"), "--epochs", "3",
                        "--lr", "0.05", "-j", "0", "--output-dir", str(tmp_path)))  # fmt: skip
    assert "checkpoint.pth's scheduler would continue at LR 0.1; this run's schedule gives 0.05" in result.stdout


def test_evaluate_gives_the_torchvision_reference_s_own_figures_for_the_model_and_its_average(
    torchvision_ema, ten_classes
):
    out, printed = torchvision_ema
    plain = json_result(run_cli("evaluate", str(out / "checkpoint.pth"), str(ten_classes), "--json", "-j", "0"))
    ema = json_result(run_cli("evaluate", str(out / "checkpoint.pth"), str(ten_classes), "--ema", "--json", "-j", "0"))
    for ours, (top1, top5, images) in ((plain, printed["acc"]), (ema, printed["ema_acc"])):
        assert ours["images"] == images
        assert round(ours["acc1"] * images / 100) == top1 and round(ours["acc5"] * images / 100) == top5
    assert ema["weights"] == "ema" and plain["weights"] == "model"


def test_a_resume_continues_the_stored_weight_average(torchvision_ema, ten_classes, tmp_path):
    """With no EMA update in the resumed epoch, the average saved after it is the stored one, bit for bit."""
    out, _ = torchvision_ema
    result = ok(run_cli("train", str(ten_classes), "--resume", str(out / "checkpoint.pth"), "--epochs", "3",
                        "--model-ema", "--model-ema-steps", "1000", "-j", "0", "--output-dir", str(tmp_path)))  # fmt: skip
    assert "no weight average" not in result.stdout + result.stderr
    stored = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["model_ema"]
    continued = load(tmp_path / "checkpoint.pth.tar")["state_dict_ema"]
    assert set(continued) == {k.removeprefix("module.") for k in stored if k != "n_averaged"}
    assert all(torch.equal(continued[k.removeprefix("module.")], v) for k, v in stored.items() if k != "n_averaged")


def test_a_resume_takes_the_ema_recipe_of_the_file(torchvision_ema, ten_classes, tmp_path):
    """--model-ema, its steps and its decay (scaled as torchvision scales it) come from the stored args."""
    out, _ = torchvision_ema
    ok(run_cli("train", str(ten_classes), "--resume", str(out / "checkpoint.pth"), "--epochs", "3", "-j", "0",
               "--output-dir", str(tmp_path)))  # fmt: skip
    optim = load(tmp_path / "checkpoint.pth.tar")["config"]["optim"]
    assert optim["model_ema"] is True and optim["model_ema_steps"] == 4
    assert optim["model_ema_decay"] == pytest.approx(1 - 0.001 * 8 * 4 / 2)


def test_inspect_shows_the_next_epoch_the_recipe_and_the_average_of_a_torchvision_file(torchvision_ema):
    out, _ = torchvision_ema
    summary = json_result(run_cli("inspect", str(out / "checkpoint.pth"), "--json"))
    assert summary["epoch"] == 1 and summary["next_epoch"] == 2 and summary["arch"] == TINY_ARCH
    assert summary["recipe"]["batch_size"] == 8 and summary["recipe"]["model_ema"] is True
    assert "AveragedModel, not from DDP" in summary["weight_average"]
    assert {"data_path", "output_dir"} <= summary["never_taken_from_file"].keys()
    shown = ok(run_cli("inspect", str(out / "checkpoint.pth"))).stdout
    assert "next epoch" in shown and "AveragedModel" in shown


def test_export_ema_of_a_torchvision_file(torchvision_ema, tmp_path):
    out, _ = torchvision_ema
    ok(run_cli("export", str(out / "checkpoint.pth"), "--format", "state_dict", "--ema", "-o", str(tmp_path / "e.pth")))
    stored = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["model_ema"]
    exported = load(tmp_path / "e.pth")
    assert all(torch.equal(exported[k.removeprefix("module.")], v) for k, v in stored.items() if k != "n_averaged")
