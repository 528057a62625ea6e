"""`export`: deployable files that compute what the checkpoint's own model computes, and say how to feed it."""

from __future__ import annotations

import copy
import importlib.util
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

from imagenet_cli.checkpoint import save_checkpoint
from tests.conftest import TINY_ARCH, json_result, load, ok, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # deployments use it


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These 32 px batches gain nothing from threads, and on a busy machine with a CPU quota OpenMP's waiting
    turns each forward pass into seconds. The suite's setting comes back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rebuilt(checkpoint: Path, state_key: str = "state_dict") -> torch.nn.Module:
    """The checkpoint's model (or its EMA twin) rebuilt here, in eval mode."""
    state = load(checkpoint)[state_key]
    model = torchvision.models.get_model(TINY_ARCH, num_classes=state["fc.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval()


def _batch(size: int = 32) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_torchscript_matches_the_checkpoint_and_carries_names_and_preprocessing(
    trained_run: Path, tmp_path: Path
) -> None:
    checkpoint, target = trained_run / "checkpoint.pth.tar", tmp_path / "model.ts"
    result = ok(run_cli("export", str(checkpoint), "--format", "torchscript", "-o", str(target)))
    wrote, checked = result.stdout.strip().splitlines()
    assert wrote == f"wrote {target}" and checked.startswith(f"checked {target} with torch.jit.load on 4 photo-like")
    assert "TorchScript is deprecated by torch" in result.stderr and "legacy" in result.stderr  # explained, once
    assert "FutureWarning" not in result.stderr
    extra = {"class_names.json": "", "preprocessing.json": ""}
    scripted = torch.jit.load(str(target), _extra_files=extra).eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(scripted(batch), _rebuilt(checkpoint)(batch), atol=1e-5, rtol=1e-5)
    assert json.loads(extra["class_names.json"]) == load(checkpoint)["class_names"]
    prep = json.loads(extra["preprocessing.json"])
    stored = load(checkpoint)["config"]["data"]
    assert prep["crop"] == 32 and prep["resize"] > 0 and stored["image_size"] == 32
    assert len(prep["mean"]) == len(prep["std"]) == 3 and prep["interpolation"] == "bilinear"


def test_state_dict_loads_safely_into_a_plain_torchvision_model(trained_run: Path, tmp_path: Path) -> None:
    checkpoint, target = trained_run / "checkpoint.pth.tar", tmp_path / "weights.pth"
    result = ok(run_cli("export", str(checkpoint), "--format", "state_dict", "-o", str(target)))
    sidecar = Path(f"{target}.json")
    assert result.stdout.splitlines()[:2] == [f"wrote {target}", f"wrote {sidecar}"]
    meta = json.loads(sidecar.read_text())
    assert meta["check"]["max_abs_diff"] == 0.0 and meta["check"]["runner"] == "torch.load"
    assert meta["arch"] == TINY_ARCH and meta["class_names"] == load(checkpoint)["class_names"]
    state = torch.load(target, map_location="cpu", weights_only=True)
    assert not any(key.startswith("module.") for key in state)
    model = torchvision.models.get_model(meta["arch"], num_classes=meta["num_classes"])
    model.load_state_dict(state)
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(model.eval()(batch), _rebuilt(checkpoint)(batch), atol=1e-6)


def test_ema_exports_the_averaged_weights(trained_run: Path, tmp_path: Path) -> None:
    stored = load(trained_run / "checkpoint.pth.tar")
    generator = torch.Generator().manual_seed(2)
    stored["state_dict_ema"] = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
        for k, v in stored["state_dict"].items()
    }
    checkpoint = Path(save_checkpoint(stored, str(tmp_path), is_best=False))  # with its sha256 sidecar
    ok(run_cli("export", str(checkpoint), "--format", "torchscript", "--ema"))
    exported = torch.jit.load(str(tmp_path / "checkpoint-ema.ts")).eval()
    batch = _batch()
    with torch.no_grad():
        logits = exported(batch)
        assert torch.allclose(logits, _rebuilt(checkpoint, "state_dict_ema")(batch), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(logits, _rebuilt(checkpoint)(batch), atol=1e-3)


def test_ema_without_averaged_weights_is_a_one_line_error(trained_run: Path, tmp_path: Path) -> None:
    result = run_cli("export", str(trained_run / "checkpoint.pth.tar"), "--format", "state_dict", "--ema",
                     "-o", str(tmp_path / "w.pth"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--model-ema" in result.stderr
    assert not list(tmp_path.iterdir())


def test_weights_without_an_arch_need_one(tmp_path: Path) -> None:
    model = torchvision.models.get_model(TINY_ARCH, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    result = run_cli("export", str(tmp_path / "plain.pt"), "--format", "state_dict")
    assert result.returncode == 2 and "pass --arch" in result.stderr and result.stderr.count("\n") == 1
    ok(run_cli("export", str(tmp_path / "plain.pt"), "--format", "state_dict", "--arch", TINY_ARCH))
    meta = json.loads((tmp_path / "plain.pth.json").read_text())
    assert meta["preprocessing"]["crop"] == 224 and meta["num_classes"] == 3  # torchvision's size for the arch
    assert meta["class_names"] == ["class 0", "class 1", "class 2"]


# --- pt2, ONNX (dynamo) and safetensors: each file loaded back the way a deployment loads it ----------------


def test_pt2_loads_with_torch_export_and_matches_the_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    checkpoint, target = trained_run / "checkpoint.pth.tar", tmp_path / "model.pt2"
    result = ok(run_cli("export", str(checkpoint), "--format", "pt2", "-o", str(target)))
    assert result.stdout.splitlines()[0] == f"wrote {target}"
    assert _checked_difference(result.stdout, "torch.export.load") <= 1e-5
    extra = {"class_names.json": "", "preprocessing.json": "", "metadata.json": ""}
    program = torch.export.load(str(target), extra_files=extra)
    batch = _batch()  # 3 images: neither the capture's example batch (2) nor the check's (4)
    with torch.no_grad():
        assert torch.allclose(program.module()(batch), _rebuilt(checkpoint)(batch), atol=1e-5, rtol=1e-5)
    assert json.loads(extra["class_names.json"]) == load(checkpoint)["class_names"]
    assert json.loads(extra["preprocessing.json"])["crop"] == 32
    assert json.loads(extra["metadata.json"])["arch"] == TINY_ARCH


def test_onnx_comes_from_the_dynamo_exporter_is_checked_by_onnxruntime_and_calls_nothing_deprecated(
    trained_run: Path, tmp_path: Path
) -> None:
    """Exported in this process with every DeprecationWarning an error (what `export` prints is the outcome's
    own check line, shown for the other formats through the command line)."""
    onnx, onnxruntime = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from imagenet_cli.tools.export import Request, export

    checkpoint, target = trained_run / "checkpoint.pth.tar", tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        outcome = export(Request(str(checkpoint), "onnx", str(target)))
    assert outcome.written == [str(target), f"{target}.json"] and outcome.check is not None
    figure = _checked_difference(outcome.check.line(str(target)), "onnxruntime")
    proto = onnx.load(str(target))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not a fixed batch
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18  # dynamo's opset
    meta = json.loads(Path(f"{target}.json").read_text())
    assert meta["input"] == "images" and meta["check"]["runner"] == "onnxruntime"
    assert meta["check"]["max_abs_diff"] == pytest.approx(figure, rel=0.01, abs=1e-12) and figure < 1e-4
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    batch = _batch()
    got = torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, _rebuilt(checkpoint)(batch), atol=1e-4)


def test_safetensors_export_is_read_back_by_every_command(
    trained_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    safetensors = pytest.importorskip("safetensors")
    checkpoint, target = trained_run / "checkpoint.pth.tar", tmp_path / "model.safetensors"
    result = ok(run_cli("export", str(checkpoint), "--format", "safetensors", "-o", str(target)))
    assert _checked_difference(result.stdout, "safetensors") == 0.0
    with safetensors.safe_open(str(target), framework="pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor("fc.weight"), load(checkpoint)["state_dict"]["fc.weight"])
    assert meta["arch"] == TINY_ARCH and json.loads(meta["class_names"]) == load(checkpoint)["class_names"]
    assert json.loads(meta["preprocessing"])["crop"] == 32 and meta["source"] == str(checkpoint)

    summary = json_result(run_cli("inspect", str(target), "--json"))
    assert summary["format"] == "safetensors weights" and summary["arch"] == TINY_ARCH
    assert summary["class_names"] == load(checkpoint)["class_names"] and summary["preprocessing"]["crop"] == 32
    fake = ("--fake-data", "--fake-val-images", "24", "-b", "8", "--json", "-j", "0")
    # the file's preprocessing gives the 32 px view the run was validated at: the same figures
    assert (
        json_result(run_cli("evaluate", str(target), *fake))["acc1"]
        == json_result(run_cli("evaluate", str(checkpoint), *fake))["acc1"]
    )
    predicted = [
        json_result(run_cli("predict", str(f), str(image_folder / "val"), "--json")) for f in (target, checkpoint)
    ]
    assert predicted[0]["predictions"] == predicted[1]["predictions"]
    again = tmp_path / "again.pth"
    ok(run_cli("export", str(target), "--format", "state_dict", "-o", str(again)))
    weights = load(checkpoint)["state_dict"]
    assert all(torch.equal(v, weights[k]) for k, v in load(again).items())
    tuned = tmp_path / "tuned"
    ok(run_cli("finetune", "--weights", str(target), str(image_folder), "--epochs", "1", "-b", "8", "-j", "0",
               "--output-dir", str(tuned), "-q"))  # fmt: skip
    assert load(tuned / "checkpoint.pth.tar")["config"]["data"]["image_size"] == 32  # the file's own size


def test_the_check_uses_the_validation_images_of_data(trained_run: Path, image_folder: Path, tmp_path: Path) -> None:
    result = ok(run_cli("export", str(trained_run / "checkpoint.pth.tar"), "--format", "state_dict",
                        "--data", str(image_folder), "-o", str(tmp_path / "w.pth")))  # fmt: skip
    assert f"on 4 validation images of {image_folder}" in result.stdout
    assert json.loads((tmp_path / "w.pth.json").read_text())["check"]["inputs"].startswith("4 validation images")


@pytest.mark.parametrize("fmt", ["safetensors", "pt2"])
def test_an_export_that_computes_something_else_is_refused_and_never_written(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Our own export step made to write other weights: the round trip catches it, in one line, no file left."""
    from imagenet_cli.core.errors import UserError
    from imagenet_cli.tools import exporters
    from imagenet_cli.tools.export import Request, export

    def perturbed(deployable: exporters.Deployable) -> torch.nn.Module:
        broken = copy.deepcopy(deployable.model)
        with torch.no_grad():
            broken.fc.bias.add_(0.5)
        return broken

    monkeypatch.setattr(exporters, "exportable", perturbed)
    with pytest.raises(UserError) as refused:
        export(Request(str(trained_run / "checkpoint.pth.tar"), fmt, str(tmp_path / f"model.{fmt}")))
    message = str(refused.value)
    assert "\n" not in message and "does not compute what the model computes" in message
    assert "max abs difference of logits 0.5" in message and "nothing was written" in message
    assert not list(tmp_path.iterdir())  # neither the file nor its temporary


def test_safetensors_export_raises_no_deprecation_warning(trained_run: Path, tmp_path: Path) -> None:
    """The other modern formats: pt2 in test_warnings.py (a fresh interpreter), ONNX in its test above."""
    pytest.importorskip("safetensors")
    from imagenet_cli.tools.export import Request, export

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        outcome = export(
            Request(str(trained_run / "checkpoint.pth.tar"), "safetensors", str(tmp_path / "model.safetensors"))
        )
    assert outcome.check is not None and outcome.check.max_abs_diff is not None
    assert outcome.check.max_abs_diff <= outcome.check.limit


def test_a_format_without_its_package_says_how_to_install_it(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagenet_cli.core.errors import UserError
    from imagenet_cli.tools import export as export_module

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(UserError, match=r'needs onnxscript: pip install "imagenet-cli\[onnx\]"'):
        export_module.export(export_module.Request(str(trained_run / "checkpoint.pth.tar"), "onnx"))
    assert not list(tmp_path.iterdir())


def _checked_difference(stdout: str, runner: str) -> float:
    """The figure of the line `checked PATH with RUNNER on ...: max abs difference of logits X (limit Y)`; the
    limit is 1e-3 of the largest logit's magnitude, at least 1e-3."""
    line = next(line for line in stdout.splitlines() if line.startswith("checked "))
    assert f" with {runner} on " in line, line
    figure, limit = line.split("max abs difference of logits ")[1].split(" (limit ")
    assert float(limit.rstrip(")")) >= 1e-3
    return float(figure)


def test_the_command_line_offers_exactly_the_formats_export_writes_and_checks():
    """The choices are spelled apart from the writers only so that --help need not import torch."""
    from imagenet_cli.cli.tools import EXPORT_FORMATS
    from imagenet_cli.tools.export_check import RUNNERS
    from imagenet_cli.tools.exporters import WRITERS

    assert sorted(EXPORT_FORMATS) == sorted(WRITERS) == sorted(RUNNERS)
