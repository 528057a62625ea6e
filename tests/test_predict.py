"""`predict`: a model trained for real names the classes of the pictures it learned, as `evaluate` would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from imagenet_cli.checkpoint import LoadedCheckpoint
from imagenet_cli.core import models
from imagenet_cli.tools.predict import DEFAULT_SIZES, find_images, input_sizes

from .conftest import CLASSES, json_result, load, ok, run_cli, write_image_folder

ARCH = "resnet18"  # learns the colours in a few steps; its BatchNorm statistics settle once the LR drops


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, best checkpoint): 16 pictures per colour-coded class, 4 epochs, the last at a tenth of the LR."""
    root = tmp_path_factory.mktemp("predict")
    data = write_image_folder(root / "data", dict.fromkeys(CLASSES, 16), dict.fromkeys(CLASSES, 2), size=32)
    ok(
        run_cli(
            "train", str(data), "-a", ARCH, "--epochs", "4", "-b", "8", "--lr", "0.01", "--lr-step-size", "3",
            "-j", "0", "--image-size", "32", "--seed", "0", "--output-dir", str(root / "out"),
        )
    )  # fmt: skip
    return data, root / "out" / "model_best.pth.tar"


def test_the_trained_model_names_the_classes_of_its_training_pictures(trained):
    data, checkpoint = trained
    result = json_result(run_cli("predict", str(checkpoint), str(data / "train"), "--json", "-k", "3", "-j", "0"))
    assert result["checkpoint"] == str(checkpoint) and not result["errors"]
    rows = result["predictions"]
    assert [row["path"] for row in rows] == sorted(str(p) for p in (data / "train").rglob("*.png"))  # walked, sorted
    right = sum(row["top"][0]["class"] == Path(row["path"]).parent.name for row in rows)
    assert len(rows) == 48 and right >= 0.95 * len(rows)
    for row in rows:
        probabilities = [top["probability"] for top in row["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-5
        assert all(CLASSES[top["index"]] == top["class"] for top in row["top"])


def test_predictions_agree_with_evaluate(trained):
    data, checkpoint = trained
    evaluated = json_result(run_cli("evaluate", str(checkpoint), str(data), "--json", "-j", "0"))
    predicted = json_result(run_cli("predict", str(checkpoint), str(data / "val"), "--json", "-k", "1"))
    correct = {name: 0 for name in CLASSES}
    for row in predicted["predictions"]:
        correct[Path(row["path"]).parent.name] += row["top"][0]["class"] == Path(row["path"]).parent.name
    assert correct == {row["class"]: row["correct"] for row in evaluated["per_class"]}


def test_amp_chooses_the_precision_predictions_are_made_in(trained):
    """`--amp none` is fp32 on any machine (the default is bf16 on GPUs and on CPUs with AMX)."""
    data, checkpoint = trained

    def probabilities(amp: str) -> list[float]:
        result = json_result(
            run_cli("predict", str(checkpoint), str(data / "val"), "--json", "-k", "3", "-j", "0", "--amp", amp)
        )
        return [top["probability"] for row in result["predictions"] for top in row["top"]]

    fp32, bf16 = probabilities("none"), probabilities("bf16")
    assert fp32 != bf16 and max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < 0.05


def test_human_output_is_one_plain_line_per_image_with_top_k_classes(trained):
    data, checkpoint = trained
    files = [data / "train" / "bees" / "bees_000.png", data / "train" / "wasps" / "wasps_003.png"]
    shown = ok(run_cli("predict", str(checkpoint), *map(str, files), "--top-k", "2", "--no-accel")).stdout
    lines = shown.splitlines()
    assert "\x1b" not in shown and len(lines) == 2
    for line, file in zip(lines, files, strict=True):
        path, classes = line.split(": ")
        assert path == str(file) and len(classes.split(", ")) == 2
        name, probability = classes.split(", ")[0].split(" ")
        assert name in CLASSES and 0 < float(probability) <= 1


def test_top_k_beyond_the_class_count_shows_every_class(trained):
    data, checkpoint = trained
    result = json_result(run_cli("predict", str(checkpoint), str(data / "val" / "ants"), "--json", "-k", "10"))
    assert all(sorted(top["class"] for top in row["top"]) == sorted(CLASSES) for row in result["predictions"])
    assert all(
        sum(top["probability"] for top in row["top"]) == pytest.approx(1, abs=1e-4) for row in result["predictions"]
    )


def test_an_unreadable_image_is_named_and_the_others_still_predicted(trained, tmp_path):
    data, checkpoint = trained
    shutil.copy(data / "val" / "bees" / "bees_000.png", tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    result = run_cli("predict", str(checkpoint), str(tmp_path), "--json", "-j", "1")  # read in a worker
    assert result.returncode == 1
    assert f"error: cannot read {tmp_path / 'broken.png'}: " in result.stderr
    shown = json.loads(result.stdout)
    assert [row["path"] for row in shown["predictions"]] == [str(tmp_path / "good.png")]
    assert [error["path"] for error in shown["errors"]] == [str(tmp_path / "broken.png")]


def test_missing_inputs_are_refused_in_one_line_before_any_model_is_loaded(tmp_path):
    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "nope.jpg", "no such file or directory"), (tmp_path / "empty", "no image")):
        result = run_cli("predict", str(tmp_path / "no-checkpoint.pth"), str(target))
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "checkpoint not found" not in result.stderr


def test_a_plain_state_dict_needs_arch_and_shows_class_numbers(trained, tmp_path):
    data, checkpoint = trained
    weights = tmp_path / "weights.pth"
    torch.save(load(checkpoint)["state_dict"], weights)
    image = str(data / "val" / "wasps" / "wasps_000.png")
    refused = run_cli("predict", str(weights), image)
    assert refused.returncode == 2 and "does not record its architecture; pass --arch" in refused.stderr
    result = run_cli("predict", str(weights), image, "--arch", ARCH, "--json")
    shown = json_result(result)
    assert [top["class"] for top in shown["predictions"][0]["top"]] == [
        f"class {top['index']}" for top in shown["predictions"][0]["top"]
    ]
    assert result.stderr.count("stores no class names") == 1


def test_input_sizes_follow_the_stored_run_then_torchvision_then_the_reference(monkeypatch):
    state: dict[str, torch.Tensor] = {}
    stored = LoadedCheckpoint("x", state, config={"data": {"fake": True, "image_size": 40}})
    assert input_sizes(stored, ARCH) == (46, 40)  # 40 / 0.875, as validation resized
    assert input_sizes(LoadedCheckpoint("x", state), "inception_v3") == (342, 299)
    monkeypatch.setattr(models, "expected_input", lambda arch: {})  # an arch without published weights
    assert input_sizes(LoadedCheckpoint("x", state), ARCH) == DEFAULT_SIZES == (256, 224)


def test_directories_are_walked_for_image_files_only(tmp_path):
    data = write_image_folder(tmp_path, {"ants": 2}, {"bees": 1}, size=8)
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    found = find_images([str(tmp_path), str(data / "val" / "bees" / "bees_000.png")])
    assert found == sorted(str(p) for p in tmp_path.rglob("*.png"))  # the file named again is not repeated
