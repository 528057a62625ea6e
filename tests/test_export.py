"""`export`: deployable files that compute what the checkpoint's own model computes, and say how to feed it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

from imagenet_cli.checkpoint import save_checkpoint
from tests.conftest import TINY_ARCH, load, ok, run_cli

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
    assert result.stdout.strip() == f"wrote {target}"
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
    assert result.stdout.split() == ["wrote", str(target), "wrote", str(sidecar)]
    meta = json.loads(sidecar.read_text())
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


def test_onnx_export_is_a_valid_model_with_a_free_batch_axis(trained_run: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    target = tmp_path / "model.onnx"
    ok(run_cli("export", str(trained_run / "checkpoint.pth.tar"), "--format", "onnx", "-o", str(target)))
    proto = onnx.load(str(target))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not a fixed batch
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert json.loads(Path(f"{target}.json").read_text())["input"] == "images"
