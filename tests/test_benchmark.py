"""`imagenet-cli benchmark`: every figure beside its baseline, measured in the same run."""

from __future__ import annotations

import pytest

from .conftest import TINY_ARCH, json_result, ok, run_cli


def test_benchmark_measures_train_pipeline_and_eval_each_against_the_reference_way(image_folder):
    result = json_result(
        run_cli("benchmark", str(image_folder), "-a", TINY_ARCH, "-b", "4", "--image-size", "32", "--steps", "1",
                "--warmup", "1", "--images", "12", "-j", "1", "--json")
    )  # fmt: skip
    assert result["machine"]["device"] == "cpu" and result["compute"] == "fp32, channels-last"
    parts = [row["part"] for row in result["results"]]
    assert parts == [
        "train", "eval", "pipeline, per core", "pipeline, 1 workers", "shards vs files, 1 workers",
        "e2e: train from files, 1 workers",
    ]  # fmt: skip
    for row in result["results"]:
        ours, baseline = row["ours_images_per_second"], row["baseline_images_per_second"]
        assert ours > 0 and baseline > 0 and row["ratio"] == pytest.approx(ours / baseline)


def test_benchmark_generates_imagenet_like_jpegs_when_given_no_data():
    shown = ok(
        run_cli("benchmark", "--only", "pipeline", "--image-size", "32", "--images", "4", "-j", "1")
    ).stdout  # fmt: skip
    assert "4 generated 500x375 JPEGs, quality 90" in shown and "ours / baseline" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--only", "everything"), "--only takes train, eval, pipeline or e2e"), (("--steps", "0"), "must be positive"),
     (("/nonexistent",), "has no train/ folder"), (("-a", "resnet19"), "unknown architecture 'resnet19'")],
)  # fmt: skip
def test_benchmark_refuses_bad_input_in_one_line(args, message):
    result = run_cli("benchmark", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
