"""Checkpoints users bring from elsewhere, through the real `evaluate` and `inspect` commands.

Each file is written here the way its program writes it; each must evaluate to the top-1 the original
model has, computed in this process. Files that cannot be used must say why, in one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from imagenet_cli.checkpoint import make_checkpoint
from imagenet_cli.config import build_config
from imagenet_cli.core import models
from imagenet_cli.core.context import DistContext
from imagenet_cli.data.loaders import Normalizer, build_splits, val_loader
from imagenet_cli.report.live import Reporter
from imagenet_cli.train.engine import evaluate

from .conftest import CLASSES, TINY_ARCH, json_result, ok, run_cli

CPU = DistContext(rank=0, local_rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def original(image_folder: Path) -> tuple[torch.nn.Module, float]:
    """A model with non-trivial weights and BatchNorm statistics, and its top-1 computed in-process."""
    torch.manual_seed(0)
    model = models.build_model(TINY_ARCH, len(CLASSES))
    model.train()
    with torch.no_grad():  # move the running statistics away from their initial values
        model(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    cfg = build_config("evaluate", {"path": str(image_folder), "checkpoint": "x", "image_size": 32}).data
    loader = val_loader(build_splits(cfg, with_train=False).val, CPU, batch_size=4, workers=0)
    metrics = evaluate(model, loader, Normalizer(CPU.device), CPU, Reporter(), 0, 10, len(CLASSES))
    return model, metrics.acc1


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _files(model: torch.nn.Module) -> dict[str, object]:
    state = model.state_dict()
    noise = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}  # a different model
    return {
        "imagenet-cli": make_checkpoint(
            model_state=state,
            arch=TINY_ARCH,
            epoch=1,
            best_acc1=0.0,
            optimizer={},
            scheduler={},
            config=build_config("train", {"fake": True, "arch": TINY_ARCH}).to_dict(),
            class_names=list(CLASSES),
        ),
        "reference-script": {
            "epoch": 4,
            "arch": TINY_ARCH,
            "state_dict": _prefixed(state, "module."),
            "best_acc1": torch.tensor(51.3),
            "optimizer": {"state": {}, "param_groups": []},
        },
        "dataparallel-state-dict": _prefixed(state, "module."),
        "compiled-state-dict": _prefixed(state, "_orig_mod."),
        "ddp-of-compiled": _prefixed(state, "module._orig_mod."),
        "torchvision-references": {
            "model": state,
            "model_ema": {**_prefixed(noise, "module."), "n_averaged": torch.tensor(3)},
            "epoch": 7,
            "args": argparse.Namespace(model=TINY_ARCH, lr=0.5),
        },
        "torchvision-references-ema-only": {
            "model_ema": {**_prefixed(state, "module."), "n_averaged": torch.tensor(3)}
        },
        "plain-state-dict": state,
    }


@pytest.mark.parametrize(
    "name",
    [
        "imagenet-cli", "reference-script", "dataparallel-state-dict", "compiled-state-dict", "ddp-of-compiled",
        "torchvision-references", "torchvision-references-ema-only", "plain-state-dict",
    ],
)  # fmt: skip
def test_every_format_evaluates_to_the_original_top1(name, original, image_folder, tmp_path):
    model, acc1 = original
    path = tmp_path / f"{name}.pth"
    torch.save(_files(model)[name], path)
    result = json_result(
        run_cli(
            "evaluate",
            str(path),
            str(image_folder),
            "--arch",
            TINY_ARCH,
            "--image-size",
            "32",
            "-b",
            "4",
            "--json",
            "-j",
            "0",
        )
    )
    assert result["images"] == 13
    assert result["acc1"] == acc1


def test_the_arch_recorded_in_a_checkpoint_is_used_and_a_missing_one_is_asked_for(original, image_folder, tmp_path):
    model, acc1 = original
    files = _files(model)
    torch.save(files["reference-script"], tmp_path / "ref.pth")
    torch.save(files["plain-state-dict"], tmp_path / "plain.pth")
    common = (str(image_folder), "--image-size", "32", "-b", "4", "--json", "-j", "0")
    assert json_result(run_cli("evaluate", str(tmp_path / "ref.pth"), *common))["acc1"] == acc1
    result = run_cli("evaluate", str(tmp_path / "plain.pth"), *common)
    assert result.returncode == 2 and "does not record its architecture; pass --arch" in result.stderr


def test_inspect_summarises_any_checkpoint(original, tmp_path):
    model, _ = original
    torch.save(_files(model)["torchvision-references"], tmp_path / "tv.pth")
    summary = json_result(run_cli("inspect", str(tmp_path / "tv.pth"), "--json"))
    assert summary["format"] == "torchvision references checkpoint (model)" and summary["epoch"] == 7
    assert summary["next_epoch"] == 8  # torchvision stores the last finished epoch's index
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    shown = ok(run_cli("inspect", str(tmp_path / "tv.pth"))).stdout
    assert "torchvision references" in shown and "parameters" in shown


def test_inspect_shows_this_tools_run_details(trained_run):
    summary = json_result(run_cli("inspect", str(trained_run / "checkpoint.pth.tar"), "--json"))
    assert summary["format"] == "imagenet-cli checkpoint" and summary["resumable"] is True
    assert summary["arch"] == TINY_ARCH and summary["num_classes"] == 10 and summary["ranks_with_random_state"] == 1
    assert set(summary["versions"]) == {"imagenet_cli", "torch", "torchvision"}


# --- files that cannot be used: one clear line, exit code 2 ---------------------------------------------


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_truncated_checkpoint_is_named_as_damaged(trained_run, tmp_path):
    whole = (trained_run / "checkpoint.pth.tar").read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(whole[: len(whole) // 2])
    assert "not a readable checkpoint" in _one_line_error(run_cli("evaluate", str(tmp_path / "cut.pth.tar")))


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a readable checkpoint"), ([1, 2, 3], "holds a list, not a checkpoint")],
    ids=["an-image", "a-list"],
)
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, content, words):
    path = tmp_path / "thing.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert words in _one_line_error(run_cli("evaluate", str(path), "--arch", TINY_ARCH, "--fake-data"))


def test_an_architecture_mismatch_names_the_layers_that_disagree(trained_run):
    line = _one_line_error(run_cli("evaluate", str(trained_run / "checkpoint.pth.tar"), "--arch", "resnet18"))
    assert "do not fit resnet18" in line and "missing: conv1.weight" in line and "unexpected:" in line


def test_a_class_mismatch_points_to_finetune(trained_run, image_folder, tmp_path):
    named = _one_line_error(run_cli("evaluate", str(trained_run / "checkpoint.pth.tar"), str(image_folder)))
    assert "classes the model does not know: ants, bees, wasps" in named and "imagenet-cli finetune --weights" in named
    torch.save(models.build_model(TINY_ARCH, 2).state_dict(), tmp_path / "two.pth")  # no class names inside
    counted = _one_line_error(run_cli("evaluate", str(tmp_path / "two.pth"), str(image_folder), "--arch", TINY_ARCH))
    assert "has a classifier of 2 outputs (fc.weight (2, 1024)) but the data has 3 classes" in counted
    assert "imagenet-cli finetune --weights" in counted


def test_a_checkpoint_that_would_run_code_is_refused_by_the_cli(booby_trapped_checkpoint):
    path, marker = booby_trapped_checkpoint
    assert "could run code" in _one_line_error(run_cli("evaluate", str(path), "--arch", TINY_ARCH, "--fake-data"))
    assert not marker.exists()


def test_train_resume_of_a_reference_checkpoint_takes_its_arch(original, tmp_path):
    model, _ = original
    reference = {
        "epoch": 1,
        "arch": TINY_ARCH,
        "state_dict": _prefixed(model.state_dict(), "module."),
        "best_acc1": 1.0,
    }
    torch.save(reference, tmp_path / "ref.pth.tar")
    result = ok(
        run_cli(
            "train",
            "--resume",
            str(tmp_path / "ref.pth.tar"),
            "--fake-data",
            "--num-classes",
            "3",
            "--image-size",
            "32",
            "--fake-train-images",
            "32",
            "--fake-val-images",
            "8",
            "-b",
            "8",
            "-j",
            "0",
            "--epochs",
            "2",
            "--output-dir",
            str(tmp_path / "out"),
        )
    )
    assert f"train {TINY_ARCH}" in result.stdout and "resuming" in result.stdout


# --- .safetensors: timm's and Hugging Face's layouts, and headers that lie ---------------------------------


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("layout", "prefix"),
    [("timm", ""), ("lightning", "model."), ("hf-timm-wrapper", "timm_model."), ("peft", "base_model.model."),
     ("dataparallel", "module.")],
)  # fmt: skip
def test_safetensors_layouts_evaluate_to_the_original_top1(original, image_folder, tmp_path, layout, prefix):
    pytest.importorskip("safetensors")
    model, acc1 = original
    # as timm and the Hugging Face hub write them: {"format": "pt"} and nothing about the model
    path = _save_safetensors(
        _prefixed(model.state_dict(), prefix), tmp_path / f"{layout}.safetensors", {"format": "pt"}
    )
    common = (str(image_folder), "--image-size", "32", "-b", "4", "--json", "-j", "0")
    assert json_result(run_cli("evaluate", str(path), "--arch", TINY_ARCH, *common))["acc1"] == acc1
    assert "does not record its architecture; pass --arch" in _one_line_error(run_cli("evaluate", str(path), *common))


def test_safetensors_is_recognised_by_content_under_any_name(original, tmp_path):
    pytest.importorskip("safetensors")
    model, _ = original
    path = _save_safetensors(model.state_dict(), tmp_path / "weights.bin", {"arch": TINY_ARCH})
    summary = json_result(run_cli("inspect", str(path), "--json"))
    assert summary["format"] == "safetensors weights" and summary["arch"] == TINY_ARCH


def test_a_safetensors_layout_of_another_model_names_the_keys(original, tmp_path):
    """Hugging Face transformers' own classes rename every layer: not the arch's weights, said in one line."""
    pytest.importorskip("safetensors")
    model, _ = original
    state = {f"shufflenet.encoder.{k}": v for k, v in model.state_dict().items()}
    path = _save_safetensors(state, tmp_path / "hf.safetensors", {"format": "pt"})
    line = _one_line_error(run_cli("evaluate", str(path), "--arch", TINY_ARCH, "--fake-data"))
    assert "do not fit shufflenet_v2_x0_5" in line and "missing: conv1.0.weight" in line
    assert "unexpected: shufflenet.encoder." in line


def _header_file(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_bytes((1 << 60).to_bytes(8, "little") + b"{}"), "-byte safetensors header in a"),
        (lambda p: _header_file(p, b'{"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40000000000]}}',
                                b"\0" * 16), "outside or beyond its 16 bytes of data; refused"),
        (lambda p: _header_file(p, b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4]}}', b"\0" * 16),
         "outside or beyond"),
        (lambda p: _header_file(p, b"{not json"), "its header is not JSON"),
        (lambda p: _header_file(p, b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                   b'"__metadata__": {"preprocessing": "{\\"resize\\": 1e9}"}}', b"\0" * 4),
         "stores a preprocessing that is not sizes"),
        (lambda p: _header_file(p, b"[" * 100_000), "its header is not JSON"),
        (lambda p: _header_file(p, b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                   b'"__metadata__": {"class_names": "' + b"[" * 100_000 + b'"}}', b"\0" * 4),
         "stores class_names that are not JSON"),
    ],
    ids=["huge-header", "huge-tensor", "wrong-range", "not-json", "bad-preprocessing", "deep-header", "deep-names"],
)  # fmt: skip
def test_a_safetensors_header_that_lies_is_refused_in_one_line(tmp_path, make, words):
    path = tmp_path / "bad.safetensors"
    make(path)
    line = _one_line_error(run_cli("inspect", str(path)))
    assert words in line and str(path) in line
