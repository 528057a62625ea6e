"""Finetuning: a new head for every torchvision family, freezing, slower backbones, and the payoff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from imagenet_cli.config import build_config
from imagenet_cli.core import models
from imagenet_cli.core.context import DistContext
from imagenet_cli.data.loaders import FakeImages, Normalizer, train_loader
from imagenet_cli.report.live import Reporter
from imagenet_cli.train import finetune, optim
from imagenet_cli.train.engine import TrainParts, split_outputs, train_one_epoch

from .conftest import CLASSES, TINY_ARCH, json_result, load, ok, run_cli, write_image_folder

CPU = DistContext(rank=0, local_rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"))

# One model of every family (every model class of torchvision's: ResNeXt and Wide ResNet are its ResNet with
# other widths, EfficientNetV2 its EfficientNet with other blocks, each with the same head), at the smallest
# input it accepts in training mode.
FAMILIES = [
    ("resnet18", 32), ("regnet_x_400mf", 32), ("shufflenet_v2_x0_5", 32), ("googlenet", 32), ("inception_v3", 299),
    ("vgg11_bn", 32), ("alexnet", 64), ("densenet121", 32), ("mobilenet_v2", 32), ("mobilenet_v3_small", 32),
    ("mnasnet0_5", 32), ("efficientnet_b0", 32), ("convnext_tiny", 32), ("squeezenet1_1", 32), ("vit_b_32", 224),
    ("swin_t", 32), ("maxvit_t", 224),
]  # fmt: skip


@pytest.mark.parametrize(("arch", "size"), FAMILIES, ids=[a for a, _ in FAMILIES])
def test_every_family_gets_a_new_head_of_the_dataset_size_and_trains(arch, size):
    source = models.build_model(arch, 1000).state_dict()
    model = models.build_model(arch, 5)
    models.load_state(model, source, arch, skip_head=True)
    heads = models.head_keys(arch)
    assert heads and all(model.state_dict()[k].shape[0] == 5 for k in heads if k.endswith("weight"))
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if k not in heads)
    model.train()
    logits, aux = split_outputs(model(torch.randn(2, 3, size, size)))
    assert logits.shape == (2, 5) and all(a.shape == (2, 5) for a in aux)
    (logits.sum() + sum(a.sum() for a in aux)).backward()
    assert all(model.get_parameter(k).grad is not None for k in heads)


def _one_epoch(model: torch.nn.Module, frozen_norms: tuple, cfg_given: dict) -> None:
    cfg = build_config("finetune", {"fake": True, "weights": "w", "arch": "resnet18", **cfg_given}).optim
    optimizer = optim.build_optimizer(model, "resnet18", cfg)
    loader = train_loader(FakeImages(16, 4, 32, seed=0), CPU, batch_size=8, workers=0, seed=0)
    parts = TrainParts(
        model, torch.nn.CrossEntropyLoss(), optimizer, Normalizer(CPU.device), CPU, Reporter(), 10, 4, frozen_norms
    )
    train_one_epoch(parts, loader, epoch=0)


def test_a_frozen_backbone_keeps_its_weights_and_batchnorm_statistics():
    model = models.build_model("resnet18", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = finetune.freeze_backbone(model, "resnet18", frozen=True)
    assert len(norms) == 20  # every BatchNorm of ResNet-18 is in the backbone
    _one_epoch(model, norms, {"freeze_backbone": True})
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}  # running_mean/var and num_batches_tracked did not move


def test_without_freezing_the_backbone_and_its_statistics_move():
    """The control for the test above."""
    model = models.build_model("resnet18", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_epoch(model, (), {})
    assert not torch.equal(model.conv1.weight, before["conv1.weight"])
    assert not torch.equal(model.bn1.running_mean, before["bn1.running_mean"])


def test_backbone_lr_mult_makes_two_groups_with_the_right_rates():
    model = models.build_model("resnet18", 4)
    cfg = build_config("finetune", {"fake": True, "weights": "w", "lr": 0.02, "backbone_lr_mult": 0.1}).optim
    groups = optim.build_optimizer(model, "resnet18", cfg).param_groups
    assert sorted(g["lr"] for g in groups) == [pytest.approx(0.002), 0.02]
    head = next(g for g in groups if g["lr"] == 0.02)
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}


def test_norm_and_bias_weight_decay_get_groups_of_their_own():
    model = models.build_model("resnet18", 4)
    cfg = build_config(
        "finetune", {"fake": True, "weights": "w", "norm_weight_decay": 0.0, "bias_weight_decay": 0.0}
    ).optim
    groups = optim.build_optimizer(model, "resnet18", cfg).param_groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(model.bn1.weight) in no_decay and id(model.fc.bias) in no_decay
    assert id(model.conv1.weight) not in no_decay and id(model.fc.weight) not in no_decay


def test_backbone_lr_mult_zero_means_frozen():
    cfg = build_config("finetune", {"fake": True, "weights": "w", "backbone_lr_mult": 0.0}).optim
    assert finetune.backbone_frozen_at(5, cfg)
    cfg = build_config("finetune", {"fake": True, "weights": "w", "unfreeze_at_epoch": 2}).optim
    assert [finetune.backbone_frozen_at(e, cfg) for e in range(4)] == [True, True, False, False]


def test_unfreezing_at_an_epoch_trains_the_head_first_then_everything_on_two_ranks(trained_run, image_folder, tmp_path):
    source = load(trained_run / "checkpoint.pth.tar")["state_dict"]
    result = ok(
        run_cli(
            "finetune", str(image_folder), "--weights", str(trained_run / "checkpoint.pth.tar"), "--epochs", "2",
            "--unfreeze-at-epoch", "1", "--keep-epochs", "2", "-b", "8", "-j", "0", "--seed", "0",
            "--multiprocessing-distributed", "--nproc-per-node", "2", "--output-dir", str(tmp_path),
        )
    )  # fmt: skip
    assert "epoch 1: unfreezing the backbone" in result.stdout
    first, second = (load(tmp_path / f"checkpoint_epoch_{e:03d}.pth.tar")["state_dict"] for e in (0, 1))
    heads = models.head_keys(TINY_ARCH)
    backbone = [k for k in source if k not in heads]
    assert all(torch.equal(first[k], source[k]) for k in backbone)  # weights and BatchNorm statistics
    assert not torch.equal(first["fc.weight"], second["fc.weight"])
    assert not all(torch.equal(second[k], source[k]) for k in backbone)


@pytest.fixture(scope="module")
def tuned(trained_run: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared run's weights finetuned for an epoch on the three classes, no size given: the run directory."""
    out = tmp_path_factory.mktemp("tuned")
    ok(run_cli("finetune", str(image_folder), "--weights", str(trained_run / "checkpoint.pth.tar"), "--epochs", "1",
               "-b", "8", "-j", "0", "--output-dir", str(out)))  # fmt: skip
    return out


def test_finetune_follows_the_input_size_its_weights_were_trained_at(tuned):
    assert load(tuned / "checkpoint.pth.tar")["config"]["data"]["image_size"] == 32  # the weights' size, not 224


def test_finetune_defaults_are_shown_in_help():
    shown = ok(run_cli("finetune", "--help")).stdout
    for default in ("10", "0.01", "32"):
        assert default in shown


def test_evaluate_reports_accuracy_per_class_by_name_and_the_confusion_matrix(tuned, tmp_path):
    result = json_result(run_cli("evaluate", str(tuned / "checkpoint.pth.tar"), "--json", "-j", "0"))
    per_class = result["per_class"]
    assert [row["class"] for row in per_class] == list(CLASSES)
    assert sum(row["images"] for row in per_class) == result["images"] == 13
    assert 100 * sum(row["correct"] for row in per_class) / 13 == pytest.approx(result["acc1"])
    confusion = result["confusion"]  # [true][predicted]
    assert [sum(row) for row in confusion] == [row["images"] for row in per_class]
    assert [confusion[i][i] for i in range(3)] == [row["correct"] for row in per_class]
    for pair in result["most_confused"]:
        true, predicted = CLASSES.index(pair["true"]), CLASSES.index(pair["predicted"])
        assert true != predicted and pair["count"] == confusion[true][predicted] > 0
    picture = tmp_path / "confusion.png"
    shown = ok(run_cli("evaluate", str(tuned / "checkpoint.pth.tar"), "-j", "0", "--plot", str(picture))).stdout
    assert "Per-class top-1" in shown and "wasps" in shown and "Confusion matrix" in shown
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finetuning_trained_weights_beats_training_from_scratch(tmp_path):
    """Pretrain on six colours, then learn two of them from 16 images in 4 steps: the pretrained features
    with a new head (the backbone frozen, as transfer learning on tiny data does) against every layer
    trained from scratch, with the same steps, batch and LR."""
    colours = ("red", "green", "blue", "yellow", "cyan", "magenta")
    pretrain = write_image_folder(tmp_path / "colours", dict.fromkeys(colours, 40), dict.fromkeys(colours, 8), size=32)
    target = write_image_folder(tmp_path / "pair", {"red": 8, "yellow": 8}, {"red": 20, "yellow": 20}, size=32)
    common = ("-b", "8", "--epochs", "2", "--lr", "0.01", "-j", "0", "--seed", "0", "--image-size", "32")
    ok(run_cli("train", str(pretrain), "-a", "resnet18", "-b", "16", "--lr", "0.01", "--epochs", "4",
               "--image-size", "32", "-j", "0", "--seed", "0", "--output-dir", str(tmp_path / "pre")))  # fmt: skip
    ok(run_cli("finetune", str(target), "--weights", str(tmp_path / "pre" / "checkpoint.pth.tar"), *common,
               "--freeze-backbone", "--output-dir", str(tmp_path / "tuned")))  # fmt: skip
    ok(run_cli("train", str(target), "-a", "resnet18", *common, "--output-dir", str(tmp_path / "scratch")))
    tuned, scratch = (
        json_result(run_cli("evaluate", str(tmp_path / name / "checkpoint.pth.tar"), "--json", "-j", "0"))
        for name in ("tuned", "scratch")
    )
    assert tuned["loss"] < scratch["loss"] and tuned["acc1"] > scratch["acc1"]
    assert tuned["acc1"] > 90.0


def test_finetune_from_torchvisions_weights_in_the_local_cache(image_folder, tmp_path, monkeypatch):
    from .conftest import cli_env

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached, _url = models.pretrained_file("resnet18")
    os.makedirs(os.path.dirname(cached))
    torch.save(models.build_model("resnet18", 1000).state_dict(), cached)  # stands in for the download
    result = ok(
        run_cli("finetune", str(image_folder), "--pretrained", "-a", "resnet18", "--epochs", "1", "-b", "8",
                "--image-size", "32", "-j", "0", "--output-dir", str(tmp_path / "out"), env=cli_env(TORCH_HOME=str(tmp_path)))
    )  # fmt: skip
    assert "loaded weights from torchvision's pretrained resnet18 with a new head for 3 classes" in result.stdout


def test_the_input_size_of_torchvisions_weights_is_known_per_arch():
    assert models.expected_input("inception_v3") == {"image_size": 299, "val_crop_size": 299, "val_resize_size": 342}
    assert models.expected_input("resnet18")["image_size"] == 224
