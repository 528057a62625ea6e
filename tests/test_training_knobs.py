"""The knobs tutorials and timm users reach for: layer-wise LR decay, crop scale and ratio, repeated
augmentation, a plateau schedule, and evaluating a third split."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from imagenet_cli.config import build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.core.errors import UserError
from imagenet_cli.data.loaders import EpochSampler
from imagenet_cli.data.sources import presets_for
from imagenet_cli.train.optim import LR_MULT, build_optimizer
from imagenet_cli.train.schedule import Schedule

from .conftest import json_result, ok, run_cli, write_image_folder


def _lr_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return {name: group_of[id(p)]["lr"] for name, p in model.named_parameters()}


def test_layer_decay_gives_each_vit_block_its_share_of_the_lr_read_back_from_the_optimizer():
    model = torchvision.models.vit_b_16()
    cfg = build_config("train", {"fake": True, "arch": "vit_b_16", "lr": 0.1, "layer_decay": 0.75}).optim
    lr = _lr_of(build_optimizer(model, "vit_b_16", cfg), model)
    assert lr["heads.head.weight"] == pytest.approx(0.1)
    assert lr["encoder.ln.weight"] == pytest.approx(0.1)  # after the last block: with the head
    assert lr["encoder.layers.encoder_layer_11.mlp.0.weight"] == pytest.approx(0.1 * 0.75)
    assert lr["encoder.layers.encoder_layer_0.ln_1.weight"] == pytest.approx(0.1 * 0.75**12)
    assert lr["conv_proj.weight"] == lr["class_token"] == pytest.approx(0.1 * 0.75**13)


def test_layer_decay_numbers_convnext_blocks_and_survives_the_schedule():
    model = torchvision.models.convnext_tiny()
    cfg = build_config("train", {"fake": True, "arch": "convnext_tiny", "lr": 0.2, "layer_decay": 0.9,
                                 "lr_scheduler": "cosine", "epochs": 10}).optim  # fmt: skip
    optimizer = build_optimizer(model, "convnext_tiny", cfg)
    lr = _lr_of(optimizer, model)
    blocks = 3 + 3 + 9 + 3
    assert lr["classifier.2.weight"] == pytest.approx(0.2)
    assert lr["features.7.2.block.0.weight"] == pytest.approx(0.2 * 0.9)  # the last block
    assert lr["features.6.1.weight"] == pytest.approx(0.2 * 0.9 ** (blocks + 1 - 16))  # downsampling: the next block's
    assert lr["features.0.0.weight"] == pytest.approx(0.2 * 0.9 ** (blocks + 1))  # the stem
    Schedule.from_config(cfg).apply(optimizer, 5.0)  # half-way through the cosine
    assert all(g["lr"] == pytest.approx(0.1 * g[LR_MULT]) for g in optimizer.param_groups)


def test_layer_decay_numbers_the_blocks_of_a_timm_vit():
    pytest.importorskip("timm")
    from imagenet_cli.core.models import build_model

    model = build_model("timm/vit_tiny_patch16_224", 10)
    cfg = build_config("train", {"fake": True, "arch": "timm/vit_tiny_patch16_224", "lr": 1.0, "layer_decay": 0.5})
    lr = _lr_of(build_optimizer(model, cfg.model.arch, cfg.optim), model)
    assert lr["head.weight"] == 1.0 and lr["blocks.11.mlp.fc1.weight"] == 0.5
    assert lr["blocks.0.attn.qkv.weight"] == 0.5**12 and lr["cls_token"] == lr["patch_embed.proj.weight"] == 0.5**13


def test_layer_decay_on_a_model_without_repeated_blocks_is_refused_in_one_line():
    cfg = build_config("train", {"fake": True, "arch": "alexnet", "layer_decay": 0.75}).optim
    with pytest.raises(UserError, match="--layer-decay: alexnet has no repeated blocks"):
        build_optimizer(torchvision.models.alexnet(), "alexnet", cfg)


def test_crop_scale_and_hflip_change_the_crop_boxes_drawn():
    def boxes(**options: object) -> list:
        train, _ = presets_for(build_config("train", {"fake": True, "image_size": 32, **options}).data)
        random.seed(0)
        return [train.plan(400, 300) for _ in range(500)]

    default, kept = boxes(), boxes(hflip=0.0, crop_scale=(0.35, 1.0))
    share = [b.height * b.width / (400 * 300) for b in kept]
    assert min(share) >= 0.35 * 0.98 and not any(b.flip for b in kept)  # rounding to whole pixels aside
    assert min(b.height * b.width / (400 * 300) for b in default) < 0.2 and any(b.flip for b in default)
    narrow = boxes(crop_ratio=(1.0, 1.0))
    assert all(abs(b.width - b.height) <= 1 for b in narrow)  # square crops only


def test_crop_scale_and_ratio_are_typed_as_two_numbers_on_the_command_line(tmp_path):
    """Typer reads a pair's two values (a tuple field declared as one number took only the first)."""
    ok(run_cli("train", "--fake-data", "--crop-scale", "0.35", "1", "--crop-ratio", "0.5", "2", "--image-size", "32",
               "--fake-train-images", "8", "--fake-val-images", "4", "-b", "4", "-j", "0", "--epochs", "1",
               "--output-dir", str(tmp_path)))  # fmt: skip
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert (recorded["crop-scale"], recorded["crop-ratio"]) == ([0.35, 1.0], [0.5, 2.0])


@pytest.mark.parametrize("pair", [(0.0, 1.0), (0.5, 0.2), (0.5, 1.5)])
def test_a_crop_scale_outside_its_range_is_refused(pair):
    with pytest.raises(UserError, match="--crop-scale takes 0 < MIN <= MAX <= 1"):
        build_config("train", {"fake": True, "crop_scale": pair})


def _ranks(world: int, reps: int, epoch: int = 0, count: int = 24) -> list[list[tuple[int, int]]]:
    samplers = []
    for rank in range(world):
        sampler = EpochSampler(range(count), DistContext(rank, rank, world, world, torch.device("cpu")), 7, reps=reps)
        sampler.set_position(epoch)
        samplers.append(list(sampler))
    return samplers


@pytest.mark.parametrize("world", [1, 2, 3])
def test_repeated_augmentation_deals_copies_of_one_global_sequence_to_any_number_of_ranks(world):
    reference = _ranks(1, reps=3)[0]
    shares = _ranks(world, reps=3)
    assert all(len(share) == math.ceil(24 / world) for share in shares)  # the epoch keeps its length
    dealt = [shares[p % world][p // world] for p in range(24)]
    assert dealt == reference[:24]
    indices = [i for i, _ in reference]
    assert all(indices[p] == indices[p - p % 3] for p in range(24))  # each image three times in a row ...
    assert len({seed for _, seed in reference}) == 24  # ... each copy augmented with its own seed
    assert _ranks(1, reps=3, epoch=1)[0] != reference


def test_repeated_augmentation_resumes_mid_epoch_at_the_same_sample():
    ctx = DistContext(1, 1, 2, 2, torch.device("cpu"))
    whole, resumed = EpochSampler(range(24), ctx, 7, reps=2), EpochSampler(range(24), ctx, 7, reps=2)
    whole.set_position(3)
    resumed.set_position(3, samples_done=5)
    assert list(resumed) == list(whole)[5:] and len(resumed) == len(whole) - 5


def test_the_plateau_schedule_cuts_the_lr_as_torch_does_and_restores_its_counters():
    cfg = build_config("train", {"fake": True, "lr": 0.4, "lr_scheduler": "plateau", "plateau_patience": 1,
                                 "plateau_cooldown": 1, "plateau_factor": 0.5}).optim  # fmt: skip
    schedule = Schedule.from_config(cfg)
    holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    torch_own = torch.optim.lr_scheduler.ReduceLROnPlateau(holder, factor=0.5, patience=1, cooldown=1)
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.7, 0.8, float("nan")]
    for epoch, loss in enumerate(losses):
        assert schedule.lr_at(epoch + 0.5) == pytest.approx(holder.param_groups[0]["lr"])
        schedule.epoch_done(loss)
        torch_own.step(loss if loss == loss else math.inf)
        if epoch == 5:
            saved = schedule.state_dict(epoch + 1)["plateau"]
    again = Schedule.from_config(cfg)
    again.plateau.load_state_dict(saved)
    for loss in losses[6:]:
        again.epoch_done(loss)
    assert again.lr_at(20.0) == schedule.lr_at(20.0) < 0.4


@pytest.fixture(scope="module")
def trained_run_on_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = write_image_folder(tmp_path_factory.mktemp("three"), {"ants": 8, "bees": 8}, {"ants": 3, "bees": 3})
    write_image_folder(data / "_test", {}, {"ants": 2, "bees": 3})
    shutil.move(data / "_test" / "val", data / "test")
    out = tmp_path_factory.mktemp("run")
    ok(run_cli("train", str(data), "-a", "shufflenet_v2_x0_5", "--image-size", "32", "--epochs", "1", "-b", "4",
               "-j", "0", "--output-dir", str(out)))  # fmt: skip
    return data, out / "checkpoint.pth.tar"


def test_evaluate_reads_a_third_split_from_class_folders_or_a_manifest(trained_run_on_folders, tmp_path):
    data, checkpoint = trained_run_on_folders
    tested = json_result(run_cli("evaluate", str(checkpoint), str(data), "--split", "test", "--json", "-j", "0"))
    assert tested["images"] == 5
    rows = ["path,label", *(f"{p},{p.parent.name}" for p in sorted((data / "test").rglob("*.png"))[:4])]
    (tmp_path / "desc_test.csv").write_text("\n".join(rows) + "\n")
    listed = json_result(run_cli("evaluate", str(checkpoint), "--manifest", str(tmp_path / "desc_test.csv"), "--json"))
    assert listed["images"] == 4
    refused = run_cli("evaluate", str(checkpoint), str(data), "--split", "../train")
    assert refused.returncode == 2 and "--split names a folder of DATA" in refused.stderr
