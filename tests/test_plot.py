"""`imagenet-cli plot` and the plotting library: curves from metrics.jsonl, confusion matrices.

The runs are written here line by line in the metrics.jsonl format training writes, with the awkward
parts real runs have: a resumed epoch recorded twice, a record type from a newer version, a last line
cut off by a crash.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from PIL import Image

from imagenet_cli.core.errors import UserError
from imagenet_cli.report.plots import (
    confusion_matrix_png,
    most_confused,
    placing_for,
    read_metrics,
    run_labels,
    training_curves,
)

from .conftest import ok, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(
    run: Path, epochs: int = 4, steps: int = 20, lr: float = 0.1, speed: float = 1.0, seconds: float = 12.0
) -> Path:
    """A believable run: loss falling, accuracy rising, LR divided by 10 after half the epochs, a train
    record every 5 steps, epoch 1 recorded twice (resumed from an older checkpoint), a future record type."""
    run.mkdir(parents=True, exist_ok=True)
    lines: list[dict] = [{"type": "config", "arch": "resnet18"}]
    for epoch in range(epochs):
        rate = lr * (0.1 if epoch >= epochs // 2 else 1.0)
        for step in range(5, steps + 1, 5):
            progress = (epoch + step / steps) * speed
            lines.append(
                {"type": "train", "epoch": epoch, "step": step, "steps": steps, "loss": 2.3 / (1 + progress),
                 "acc1": min(99.0, 20 * progress), "acc5": min(100.0, 40 * progress), "lr": rate,
                 "images_per_second": 800.0, "data_wait": 0.1, "memory_mb": 512.0, "time": 1764070000.0 + step}
            )  # fmt: skip
        done = (epoch + 1) * speed
        lines.append(
            {"type": "epoch", "epoch": epoch, "train_loss": 2.3 / (1 + done), "train_acc1": min(99.0, 20 * done),
             "train_acc5": min(100.0, 40 * done), "val_loss": 2.4 / (1 + done), "val_acc1": min(99.0, 18 * done),
             "val_acc5": min(100.0, 38 * done), "lr": rate, "best_acc1": 18 * done, "is_best": True,
             "saved": str(run / "checkpoint.pth.tar"), "seconds": seconds, "images_per_second": 800.0,
             "time": 1764070100.0 + epoch, "a_key_from_the_future": [1, 2]}
        )  # fmt: skip
        if epoch == 1:  # a resume from the end of epoch 0 redoes epoch 1: the stale record comes first
            lines.insert(len(lines) - 1, {**lines[-1], "val_acc1": 1.0, "saved": "stale"})
    lines.append({"type": "gpu_health", "epoch": "n/a", "temperature": 70})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def assert_png(path: Path, min_width: int = 400, min_height: int = 300) -> tuple[int, int]:
    """`path` is a whole PNG that PIL decodes, of a sensible size; returns that size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    assert min_width <= width <= 5000 and min_height <= height <= 5000, image.size
    return width, height


def test_plot_one_run_writes_curves_beside_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r18")
    result = ok(run_cli("plot", str(run)))
    assert result.stdout.strip() == f"wrote {run / 'curves.png'}"
    assert result.stderr == ""
    width, height = assert_png(run / "curves.png")
    assert width > height  # three panels side by side
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_plot_two_runs_to_one_file(tmp_path: Path) -> None:
    first, second = write_run(tmp_path / "r18"), write_run(tmp_path / "r50", epochs=6, lr=0.2, speed=1.5)
    ok(run_cli("plot", str(first)))
    output = tmp_path / "out" / "compare.png"
    result = ok(run_cli("plot", str(first), str(second), "--output", str(output)))
    assert f"wrote {output}" in result.stdout
    assert_png(output)
    assert output.read_bytes() != (first / "curves.png").read_bytes()
    assert not (second / "curves.png").exists()


def test_plot_several_runs_default_to_runs_png_in_cwd(tmp_path: Path) -> None:
    first, second = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    ok(run_cli("plot", str(first), str(second), cwd=tmp_path))
    assert_png(tmp_path / "runs.png")


def test_truncated_last_line_is_skipped_with_a_note(tmp_path: Path) -> None:
    run = write_run(tmp_path / "crashed")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "epoch": 4, "step": 5, "ste')
    result = ok(run_cli("plot", str(run)))
    assert "skipped 1 malformed line" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_png(run / "curves.png")


def test_run_without_metrics_is_a_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("plot", str(empty))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {empty} has no metrics.jsonl (is it a run's --output-dir?)"]
    assert not (empty / "curves.png").exists()


def test_run_without_epochs_is_skipped_beside_others(tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text(json.dumps({"type": "train", "epoch": 0, "step": 5, "steps": 20}) + "\n")
    with pytest.raises(UserError, match="no epoch records"):
        training_curves([started], tmp_path / "alone.png")
    notes = training_curves([write_run(tmp_path / "done"), started], tmp_path / "both.png")
    assert len(notes) == 1 and "started" in notes[0] and "no epoch records" in notes[0]
    assert_png(tmp_path / "both.png")


def test_read_metrics_keeps_the_last_record_of_an_epoch(tmp_path: Path) -> None:
    metrics = read_metrics(write_run(tmp_path / "run", epochs=3, steps=20))
    assert list(metrics.epochs) == [0, 1, 2]
    assert metrics.epochs[1]["saved"] != "stale" and metrics.epochs[1]["val_acc1"] == pytest.approx(36.0)
    assert metrics.malformed == []
    assert metrics.lr_steps[0] == (0.25, 0.1) and metrics.lr_steps[-1] == (3.0, pytest.approx(0.01))


def test_train_records_after_a_restart_replace_the_old_ones(tmp_path: Path) -> None:
    run = tmp_path / "restarted"
    run.mkdir()
    records = [(0, 10, 0.1), (0, 20, 0.1), (1, 10, 0.1), (0, 10, 0.5), (0, 20, 0.5)]
    lines = [{"type": "train", "epoch": e, "step": s, "steps": 20, "lr": lr} for e, s, lr in records]
    lines.append({"type": "epoch", "epoch": 0, "train_loss": 1.0, "lr": 0.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_metrics(run).lr_steps == [(0.5, 0.5), (1.0, 0.5)]


def test_by_time_each_epoch_sits_where_its_training_and_validation_time_ends(tmp_path: Path) -> None:
    """Two recipes whose epochs cost 12 s and 30 s: along time, the cheap one's third epoch (36 s) comes
    before the costly one's second (60 s); a train record halfway through an epoch sits halfway through
    its time, and one of an epoch not yet recorded is left out."""
    cheap, costly = write_run(tmp_path / "cheap", epochs=3), write_run(tmp_path / "costly", epochs=3, seconds=30.0)
    runs = [(run, read_metrics(run)) for run in (cheap, costly)]
    by_time = placing_for(runs, "time")
    assert [by_time.epoch_end(0, epoch) for epoch in range(3)] == [12.0, 24.0, 36.0]
    assert [by_time.epoch_end(1, epoch) for epoch in range(3)] == [30.0, 60.0, 90.0]
    assert (by_time.at(1, 1.5), by_time.at(1, 2.0), by_time.epoch_start(1, 2)) == (45.0, 60.0, 60.0)
    assert math.isnan(by_time.at(0, 3.25))
    assert by_time.label.startswith("training + validation time (s;")
    by_epoch = placing_for(runs, "epoch")
    assert (by_epoch.epoch_end(1, 2), by_epoch.at(1, 1.5)) == (3.0, 1.5)
    long = write_run(tmp_path / "long", seconds=3600.0)  # four hours: the axis counts hours
    assert placing_for([(long, read_metrics(long))], "time").label.startswith("training + validation time (h;")

    output = tmp_path / "by-time.png"
    ok(run_cli("plot", str(cheap), str(costly), "--x-axis", "time", "-o", str(output)))
    ok(run_cli("plot", str(cheap), str(costly), "-o", str(tmp_path / "by-epoch.png")))
    assert_png(output)
    assert output.read_bytes() != (tmp_path / "by-epoch.png").read_bytes()


def test_by_time_a_run_without_epoch_times_is_a_one_line_error(tmp_path: Path) -> None:
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"type": "epoch", "epoch": 0, "val_acc1": 50.0}) + "\n")
    result = run_cli("plot", str(run), "--x-axis", "time")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: {run} records no time for epoch 0 in metrics.jsonl: plot it with --x-axis epoch"
    ]
    ok(run_cli("plot", str(run)))
    notes = training_curves([run, write_run(tmp_path / "new")], tmp_path / "both.png", "time")
    assert len(notes) == 1 and "skipped a run" in notes[0] and "records no time" in notes[0]
    also_without = write_run(tmp_path / "negative", seconds=-1.0)
    with pytest.raises(UserError, match=r"none of the runs can be drawn: .* records no time"):
        training_curves([run, also_without], tmp_path / "neither.png", "time")


@pytest.mark.parametrize("seconds", ["12", -1.0, float("nan"), True, None, 10**400, 1e308])
def test_by_time_a_time_no_clock_gives_is_refused(tmp_path: Path, seconds: object) -> None:
    """A text, a negative or missing time, or times whose sum no float holds (1e308 twice): each file is
    data to refuse, not a reason for a traceback or a point silently dropped."""
    run = tmp_path / "odd"
    run.mkdir()
    lines = [{"type": "epoch", "epoch": epoch, "val_acc1": 50.0, "seconds": seconds} for epoch in range(2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(UserError, match="records no time for epoch"):
        training_curves([run], tmp_path / "odd.png", "time")


def test_equal_directory_names_get_their_parents() -> None:
    labels = run_labels([Path("/x/sweep1/run"), Path("/x/sweep2/run"), Path("/x/other")])
    assert labels == ["sweep1/run", "sweep2/run", "other"]


@pytest.mark.parametrize("classes", [3, 120])
def test_confusion_matrix_png(tmp_path: Path, classes: int) -> None:
    names = [f"class_{i}" for i in range(classes)]
    matrix = [[(10 if i == j else (i * 7 + j) % 3) for j in range(classes)] for i in range(classes)]
    matrix[0] = [0] * classes  # a class without validation images must not divide by zero
    output = tmp_path / "confusion.png"
    confusion_matrix_png(matrix, names, output, f"{classes} classes")
    width, height = assert_png(output)
    assert width >= height * 0.8


def test_most_confused_pairs() -> None:
    names = ["cat", "dog", "fox"]
    matrix = [
        [8, 2, 0],  # 10 cats: 2 taken for dogs
        [3, 5, 2],  # 10 dogs: 3 for cats, 2 for foxes
        [1, 3, 16],  # 20 foxes: 1 for a cat, 3 for dogs
    ]
    assert most_confused(matrix, names) == [
        {"true": "dog", "predicted": "cat", "count": 3, "share": 0.3},
        {"true": "fox", "predicted": "dog", "count": 3, "share": 0.15},
        {"true": "cat", "predicted": "dog", "count": 2, "share": 0.2},
        {"true": "dog", "predicted": "fox", "count": 2, "share": 0.2},
        {"true": "fox", "predicted": "cat", "count": 1, "share": 0.05},
    ]
    assert [pair["count"] for pair in most_confused(matrix, names, n=2)] == [3, 3]
    assert most_confused([[4, 0], [0, 4]], ["a", "b"]) == []


def test_without_matplotlib_the_error_is_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = write_run(tmp_path / "run")
    with pytest.raises(UserError) as raised:
        training_curves([run], tmp_path / "curves.png")
    assert str(raised.value) == 'plotting needs matplotlib: pip install "imagenet-cli[plot]"'
    with pytest.raises(UserError, match="plotting needs matplotlib"):
        confusion_matrix_png([[1]], ["a"], tmp_path / "cm.png", "one class")
    assert not list(tmp_path.glob("*.png"))
