"""The optimizer state of torchvision's classification reference, resumed here parameter for parameter.

torchvision's train.py groups its parameters by weight decay with `utils.set_weight_decay` ("other", "norm",
then custom keys such as "bias"), this tool by (LR multiplier, weight decay): with `--norm-weight-decay` or
`--bias-weight-decay` the groups differ in number and order, and an optimizer's state is indexed by position.
The files here are made by torchvision's own code path (its grouping written out below, as train.py calls it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from imagenet_cli.checkpoint import read_checkpoint
from imagenet_cli.checkpoint.torchvision import translate
from imagenet_cli.config import build_config
from imagenet_cli.train import optim
from imagenet_cli.train import torchvision_optimizer as torchvision_args

from .conftest import CLASSES, TINY_ARCH, load, ok, run_cli, write_image_folder

# train.py's `args`, as conftest.torchvision_reference_run writes them, at 32 px and batch 4.
ARGS = dict(
    data_path="/data", model=TINY_ARCH, device="cpu", batch_size=4, epochs=2, workers=0, opt="sgd",
    lr=0.1, momentum=0.9, weight_decay=1e-4, norm_weight_decay=None, bias_weight_decay=None,
    transformer_embedding_decay=None, label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
    lr_scheduler="steplr", lr_warmup_epochs=0, lr_warmup_method="constant", lr_warmup_decay=0.01,
    lr_step_size=30, lr_gamma=0.1, lr_min=0.0, print_freq=10, output_dir="/out", resume="", start_epoch=0,
    cache_dataset=False, sync_bn=False, test_only=False, auto_augment=None, ra_magnitude=9, augmix_severity=3,
    random_erase=0.0, amp=False, world_size=1, dist_url="env://", model_ema=False, model_ema_steps=32,
    model_ema_decay=0.99998, use_deterministic_algorithms=False, interpolation="bilinear",
    val_resize_size=36, val_crop_size=32, train_crop_size=32, clip_grad_norm=None, ra_sampler=False,
    ra_reps=3, weights=None, backend="pil", use_v2=False, distributed=False,
)  # fmt: skip
RECIPES = {
    "default": {},
    "norm0": {"norm_weight_decay": 0.0},
    "norm0-bias0": {"norm_weight_decay": 0.0, "bias_weight_decay": 0.0},
    "wd0-norm0": {"weight_decay": 0.0, "norm_weight_decay": 0.0},
}
# Two groups there, one here (equal decays merge); "norm0" alone happens to group alike in both programs.
MORE_RECIPES = {**RECIPES, "norm-as-wd": {"norm_weight_decay": 1e-4}}
OPTIMIZERS = ("sgd", "adamw")
_ABSENT = object()  # an argument an older train.py did not have


def set_weight_decay(
    model: nn.Module,
    weight_decay: float,
    norm_weight_decay: float | None = None,
    custom_keys_weight_decay: list[tuple[str, float]] | None = None,
) -> list[dict]:
    """torchvision's `references/classification/utils.set_weight_decay`, step by step as it runs there."""
    norm_classes = (
        nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
        nn.LocalResponseNorm,
    )  # fmt: skip
    params: dict[str, list] = {"other": [], "norm": []}
    decays = {"other": weight_decay, "norm": norm_weight_decay}
    custom_keys = []
    for key, decay in custom_keys_weight_decay or []:
        params[key], decays[key] = [], decay
        custom_keys.append(key)

    def add(module: nn.Module, prefix: str = "") -> None:
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            for key in custom_keys:
                if key == (f"{prefix}.{name}" if prefix != "" and "." in key else name):
                    params[key].append(p)
                    break
            else:
                in_norm = norm_weight_decay is not None and isinstance(module, norm_classes)
                params["norm" if in_norm else "other"].append(p)
        for child_name, child in module.named_children():
            add(child, f"{prefix}.{child_name}" if prefix != "" else child_name)

    add(model)
    return [{"params": params[key], "weight_decay": decays[key]} for key in params if params[key]]


def torchvision_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """train.py's optimizer: custom keys from --bias-weight-decay and --transformer-embedding-decay, then
    set_weight_decay; a file of torchvision 0.12 (no `bias_weight_decay` in its args) split the norms first."""
    if not hasattr(args, "bias_weight_decay"):
        if args.norm_weight_decay is None:
            parameters: object = model.parameters()
        else:
            split = torchvision.ops._utils.split_normalization_params(model)
            decays = [args.norm_weight_decay, args.weight_decay]
            parameters = [{"params": p, "weight_decay": w} for p, w in zip(split, decays, strict=True) if p]
    else:
        custom = [("bias", args.bias_weight_decay)] if args.bias_weight_decay is not None else []
        if args.transformer_embedding_decay is not None:
            for key in ("class_token", "position_embedding", "relative_position_bias_table"):
                custom.append((key, args.transformer_embedding_decay))
        parameters = set_weight_decay(model, args.weight_decay, args.norm_weight_decay, custom or None)
    if args.opt.startswith("sgd"):
        return torch.optim.SGD(
            parameters, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
            nesterov="nesterov" in args.opt,
        )  # fmt: skip
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)


def torchvision_file(
    out: Path, recipe: dict, opt: str, net: nn.Module | None = None, **changes: object
) -> tuple[Path, nn.Module, torch.optim.Optimizer]:
    """A few of train.py's steps (random 32 px batches) and its checkpoint after epoch 0, as it saves it;
    `net` instead of the model `args.model` names."""
    args = argparse.Namespace(**{**ARGS, **recipe, "opt": opt, **changes})
    for name in [k for k, v in vars(args).items() if v is _ABSENT]:
        delattr(args, name)
    torch.manual_seed(0)
    model = net or torchvision.models.get_model(args.model, weights=None, num_classes=len(CLASSES))
    optimizer = torchvision_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    model.train()
    for _ in range(3):
        images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, len(CLASSES), (4,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()
    scheduler.step()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model_0.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 0, "args": args}, path)  # fmt: skip
    return path, model, optimizer


def assert_same_buffers(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer, model: nn.Module) -> None:
    """Every parameter's state here is the one torchvision's optimizer held for it, bit for bit."""
    for name, p in model.named_parameters():
        mine, held = ours.state[p], theirs.state[p]
        assert mine.keys() == held.keys() and held, name
        for key, value in held.items():
            assert mine[key].dtype == value.dtype and torch.equal(mine[key], value), f"{name} {key}"


def restored_like_a_resume(path: Path, model: nn.Module) -> torch.optim.Optimizer:
    """This tool's optimizer for `model`, configured by the file's recipe and restored as a resume does."""
    resumed = read_checkpoint(str(path))
    cfg = build_config("train", {"path": "/data", **translate(resumed.recipe or {}).options})
    ours = optim.build_optimizer(model, cfg.model.arch, cfg.optim)
    optim.restore(ours, torchvision_args.resumed_optimizer_state(resumed, ours, cfg))
    return ours


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("recipe", MORE_RECIPES, ids=str)
def test_each_parameter_gets_the_buffers_torchvision_held_for_it(recipe, opt, tmp_path):
    path, model, theirs = torchvision_file(tmp_path, MORE_RECIPES[recipe], opt)
    assert_same_buffers(restored_like_a_resume(path, model), theirs, model)


def test_a_file_grouped_as_this_tool_groups_is_restored_as_it_is(tmp_path):
    path, model, _ = torchvision_file(tmp_path, {}, "sgd")
    resumed = read_checkpoint(str(path))
    cfg = build_config("train", {"path": "/data", **translate(resumed.recipe or {}).options})
    ours = optim.build_optimizer(model, cfg.model.arch, cfg.optim)
    assert torchvision_args.resumed_optimizer_state(resumed, ours, cfg) is resumed.optimizer


def test_a_torchvision_0_12_file_put_its_norm_group_first(tmp_path):
    """resnet18: that version's `split_normalization_params` counts ShuffleNet's parameters twice (an empty
    `branch1` Sequential is false), so no such file of ShuffleNet exists."""
    legacy = {"bias_weight_decay": _ABSENT, "transformer_embedding_decay": _ABSENT}
    path, model, theirs = torchvision_file(tmp_path, {"norm_weight_decay": 0.0}, "sgd", model="resnet18", **legacy)
    assert theirs.param_groups[0]["weight_decay"] == 0.0  # the norms first, as that version grouped them
    assert_same_buffers(restored_like_a_resume(path, model), theirs, model)


def test_transformer_embedding_decay_groups_the_class_token_by_its_own_name(tmp_path):
    """A ViT small enough for CPU (vit_b_16's structure): its class token is a group of its own there, and
    its `pos_embedding` is not named as train.py's key "position_embedding"."""
    vit = torchvision.models.vision_transformer.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
    )
    recipe = {"norm_weight_decay": 0.0, "bias_weight_decay": 0.0, "transformer_embedding_decay": 0.0}
    path, model, theirs = torchvision_file(tmp_path, recipe, "adamw", net=vit, model="vit_b_16")
    assert [len(g["params"]) for g in theirs.param_groups][-1] == 1  # class_token alone
    resumed = read_checkpoint(str(path))
    cfg = build_config("train", {"path": "/data", "arch": "vit_b_16", "opt": "adamw", "norm_weight_decay": 0.0,
                                 "bias_weight_decay": 0.0})  # fmt: skip
    ours = optim.build_optimizer(model, "vit_b_16", cfg.optim)
    groups = [g["params"] for g in ours.param_groups]
    optim.restore(ours, torchvision_args.regroup_optimizer_state(resumed.optimizer, resumed.recipe, model, groups, "f"))
    assert_same_buffers(ours, theirs, model)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), {c: 4 for c in CLASSES}, {c: 2 for c in CLASSES})


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_resume_of_a_torchvision_file_finishes_the_next_epoch(recipe, folder, tmp_path):
    opt = OPTIMIZERS[list(RECIPES).index(recipe) % 2]  # both optimizers, over the recipes
    path, _, _ = torchvision_file(tmp_path / "tv", RECIPES[recipe], opt)
    out = tmp_path / "out"
    result = ok(run_cli("train", str(folder), "--resume", str(path), "-j", "0", "--output-dir", str(out)))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines if line["type"] == "epoch"] == [1], result.stdout
    saved = load(out / "checkpoint.pth.tar")
    assert saved["epoch"] == 2 and saved["config"]["optim"]["opt"] == opt


def test_an_optimizer_state_of_other_shapes_is_one_line_naming_the_file(folder, tmp_path):
    path, _, _ = torchvision_file(tmp_path, {}, "sgd")
    raw = torch.load(path, weights_only=False)
    raw["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(7)
    torch.save(raw, path)
    result = run_cli("train", str(folder), "--resume", str(path), "-j", "0", "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert str(path) in message and "momentum_buffer for conv1.0.weight has shape (7,)" in message
