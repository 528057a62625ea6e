"""Modern recipe options each change what they should: optimizers, LR schedules with warmup (set every
step), label smoothing, mixup and cutmix, weight EMA, gradient accumulation; resuming mid-schedule with
EMA is still bit-exact."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from imagenet_cli.cli.recipes import read_options
from imagenet_cli.config import build_config
from imagenet_cli.core.context import DistContext
from imagenet_cli.report.live import Reporter
from imagenet_cli.train import engine, optim
from imagenet_cli.train.ema import ModelEma
from imagenet_cli.train.mixing import BatchMixer
from imagenet_cli.train.schedule import Schedule

from .conftest import FAST_FAKE, TINY_ARCH, cli_env, load, ok, run_cli


def _schedule(**options: object) -> Schedule:
    return Schedule.from_config(build_config("train", {"fake": True, **options}).optim)


# -- schedules ---------------------------------------------------------------------------------------------------


def test_the_default_schedule_is_the_reference_step_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    ours = _schedule()
    for epoch in range(90):
        for within in (0.0, 0.5, 0.999):
            assert ours.lr_at(epoch + within) == pytest.approx(reference.get_last_lr()[0])
        optimizer.step()
        reference.step()


def test_linear_warmup_rises_every_step_then_hands_over_to_the_schedule():
    schedule = _schedule(lr=0.4, lr_warmup_epochs=2, lr_warmup_decay=0.01, lr_scheduler="cosine", epochs=12)
    steps = [schedule.lr_at(i / 10) for i in range(20)]  # 10 steps an epoch
    assert steps[0] == pytest.approx(0.004)
    assert all(b - a == pytest.approx(0.4 * 0.99 / 20) for a, b in itertools.pairwise(steps))
    assert schedule.lr_at(2.0) == pytest.approx(0.4)  # cosine starts at the peak when warmup ends
    assert schedule.lr_at(7.0) == pytest.approx(0.2)  # half-way through the remaining 10 epochs
    assert schedule.lr_at(12.0) == pytest.approx(0.0)
    constant = _schedule(lr=0.4, lr_warmup_epochs=1, lr_warmup_method="constant", lr_warmup_decay=0.1)
    assert [constant.lr_at(t) for t in (0.0, 0.5, 1.0)] == pytest.approx([0.04, 0.04, 0.4])


def test_cosine_linear_multistep_exponential_and_constant_shapes():
    cosine = _schedule(lr=1.0, lr_scheduler="cosine", lr_min=0.1, epochs=10)
    assert [cosine.lr_at(t) for t in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])
    multistep = _schedule(lr=1.0, lr_scheduler="multistep", lr_milestones="3,5", lr_gamma=0.5)
    assert [multistep.lr_at(t) for t in (2.9, 3.0, 4.9, 5.0, 9.0)] == pytest.approx([1, 0.5, 0.5, 0.25, 0.25])
    linear = _schedule(lr=1.0, lr_scheduler="linear", lr_warmup_epochs=2, epochs=10)
    assert [linear.lr_at(t) for t in (2, 6, 10)] == pytest.approx([1.0, 0.5, 0.0])
    exponential = _schedule(lr=1.0, lr_scheduler="exponential", lr_gamma=0.5)
    assert [exponential.lr_at(t) for t in (0, 1, 2.5)] == pytest.approx([1, 0.5, 2**-2.5])
    assert _schedule(lr=0.3, lr_scheduler="constant").lr_at(77.7) == 0.3


def test_the_warmup_shows_in_the_lr_of_every_logged_step(tmp_path):
    ok(run_cli("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "16", "--epochs", "2", "-p", "1", "--lr", "0.2",
               "--lr-warmup-epochs", "1", "--lr-scheduler", "constant", "--output-dir", str(tmp_path)))  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [line["lr"] for line in lines if line["type"] == "train"]
    expected = [0.2 * (0.01 + 0.99 * step / 4) for step in range(4)] + [0.2] * 4  # 4 steps an epoch
    assert logged == pytest.approx(expected)


# -- optimizers and the loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "setting"),
    [("sgd", torch.optim.SGD, ("nesterov", False)), ("nesterov", torch.optim.SGD, ("nesterov", True)),
     ("adamw", torch.optim.AdamW, ("betas", (0.9, 0.999))), ("rmsprop", torch.optim.RMSprop, ("eps", 0.0316))],
)  # fmt: skip
def test_each_optimizer_is_built_with_its_settings(name, kind, setting):
    cfg = build_config("train", {"fake": True, "arch": "resnet18", "opt": name, "weight_decay": 0.05}).optim
    optimizer = optim.build_optimizer(nn.Sequential(nn.Linear(2, 2)), "resnet18", cfg)
    assert type(optimizer) is kind
    assert optimizer.param_groups[0][setting[0]] == setting[1] and optimizer.param_groups[0]["weight_decay"] == 0.05


def test_label_smoothing_keeps_a_loss_on_a_perfect_prediction():
    logits, targets = torch.tensor([[20.0, -20.0, -20.0]]), torch.tensor([0])
    assert optim.build_criterion()(logits, targets) < 1e-6
    smoothed = optim.build_criterion(0.1)(logits, targets)
    assert smoothed == pytest.approx(0.1 * 2 / 3 * 40, rel=1e-3)  # the mass put on the two wrong classes


# -- mixup and cutmix ----------------------------------------------------------------------------------------------


def test_mixup_blends_neighbours_and_makes_soft_targets_that_sum_to_one():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    targets = torch.tensor([0, 1, 2, 3])
    mixed, soft = BatchMixer(5, mixup_alpha=0.4, seed=0)(images, targets, rank=0, epoch=0, step=1)
    assert soft.sum(dim=1) == pytest.approx(torch.ones(4))
    lam = float(soft[1, 1])  # image 1 keeps lam of itself and takes 1 - lam of image 0
    assert 0 < lam < 1 and float(soft[1, 0]) == pytest.approx(1 - lam, abs=1e-6)
    assert torch.allclose(mixed[1], torch.full((3, 8, 8), lam * 1 + (1 - lam) * 0), atol=1e-6)
    again, _ = BatchMixer(5, mixup_alpha=0.4, seed=0)(images, targets, rank=0, epoch=0, step=1)
    assert torch.equal(mixed, again)  # keyed by (seed, epoch, step, rank): a resume mixes the same


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area():
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    mixed, soft = BatchMixer(2, cutmix_alpha=1.0, seed=3)(images, torch.tensor([0, 1]), rank=0, epoch=0, step=2)
    pasted = float((mixed[1] == 0).float().mean())  # image 1 is all ones; zeros came from image 0
    assert 0 < pasted < 1
    assert float(soft[1, 0]) == pytest.approx(pasted) and float(soft[1, 1]) == pytest.approx(1 - pasted)
    assert soft.sum(dim=1) == pytest.approx(torch.ones(2))


# -- EMA -----------------------------------------------------------------------------------------------------------


def test_ema_weights_follow_the_analytic_average():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.5, every=2)
    expected = 1.0
    for step, weight in enumerate([3.0, 5.0, 7.0, 9.0], start=1):
        with torch.no_grad():
            model.weight.fill_(weight)
        ema.update(step, warming_up=False)
        if step % 2 == 0:  # every 2 optimizer steps
            expected = 0.5 * expected + 0.5 * weight
    assert float(ema.module.weight) == pytest.approx(expected) == 0.5 * (0.5 * 1 + 0.5 * 5) + 0.5 * 9
    ema.update(6, warming_up=True)
    assert float(ema.module.weight) == 9.0  # warming up: a copy


# -- gradient accumulation -------------------------------------------------------------------------------------------


def _one_epoch(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], accumulate: int) -> None:
    parts = engine.TrainParts(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5), lambda images: images,
        DistContext(0, 0, 1, 1, torch.device("cpu")), Reporter(), print_freq=100, num_classes=3, grad_accum_steps=accumulate,
    )  # fmt: skip
    engine.train_one_epoch(parts, batches, epoch=0)  # type: ignore[arg-type]


def test_accumulating_k_batches_of_b_equals_one_batch_of_k_times_b():
    torch.manual_seed(0)
    images, targets = torch.randn(8, 5), torch.randint(0, 3, (8,))
    whole, accumulated = nn.Linear(5, 3), nn.Linear(5, 3)
    accumulated.load_state_dict(whole.state_dict())
    _one_epoch(whole, [(images, targets)], accumulate=1)
    _one_epoch(accumulated, [(images[i : i + 2], targets[i : i + 2]) for i in range(0, 8, 2)], accumulate=4)
    for a, b in zip(whole.parameters(), accumulated.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


# -- through the command line ----------------------------------------------------------------------------------------


MODERN = ("--opt", "adamw", "--lr", "0.002", "--weight-decay", "0.05", "--lr-scheduler", "cosine",
          "--lr-warmup-epochs", "0.5", "--label-smoothing", "0.1", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0",
          "--model-ema", "--model-ema-steps", "1", "--model-ema-decay", "0.9", "--grad-accum-steps", "2",
          "--best-by", "ema")  # fmt: skip
BASE = ("train", *FAST_FAKE, "-a", TINY_ARCH, "-b", "8", "--seed", "0", "--epochs", "2", "-p", "2", *MODERN)


def test_a_modern_recipe_resumed_mid_schedule_ends_bit_identical(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    ok(run_cli(*BASE, "--output-dir", str(straight)))
    failed = run_cli(*BASE, "--save-every-steps", "2", "--output-dir", str(stopped),
                     env=cli_env(IMAGENET_CLI_FAULT="raise:epoch=1,step=5"))  # fmt: skip
    assert failed.returncode == 1
    assert (load(stopped / "checkpoint.pth.tar")["epoch"], load(stopped / "checkpoint.pth.tar")["step"]) == (1, 4)
    ok(run_cli("resume", str(stopped / "checkpoint.pth.tar")))
    a, b = load(straight / "checkpoint.pth.tar"), load(stopped / "checkpoint.pth.tar")
    for key in ("state_dict", "state_dict_ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert not all(torch.equal(a["state_dict"][k], a["state_dict_ema"][k]) for k in a["state_dict"])
    epochs = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all("ema_val_acc1" in line for line in epochs if line["type"] == "epoch")
    assert a["best_acc1"] == max(line["ema_val_acc1"] for line in epochs if line["type"] == "epoch")


def test_a_recipe_file_round_trips_through_config_json(tmp_path):
    """config.json is written before training starts: no epoch needs to run for it."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'arch = "{TINY_ARCH}"\nfake-data = true\nimage-size = 32\nepochs = 0\nfake-train-images = 16\n'
        'fake-val-images = 8\nworkers = 0\nbatch-size = 8\nopt = "adamw"\nlr = 0.001\nlr-scheduler = "cosine"\n'
        "lr-warmup-epochs = 0.5\nlabel-smoothing = 0.1\nmixup-alpha = 0.2\nmodel-ema = true\n"
    )
    ok(run_cli("train", "--config", str(recipe), "--output-dir", str(tmp_path / "a")))
    first = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (first["opt"], first["lr-scheduler"], first["label-smoothing"], first["model-ema"]) == (
        "adamw", "cosine", 0.1, True,
    )  # fmt: skip
    ok(run_cli("train", "--config", str(tmp_path / "a" / "config.json"), "--output-dir", str(tmp_path / "b")))
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == first


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--lr-scheduler", "multistep"), "--lr-scheduler multistep needs --lr-milestones"),
        (("--lr-scheduler", "multistep", "--lr-milestones", "5,3"), "--lr-milestones must be increasing"),
        (("--best-by", "ema"), "--best-by ema needs --model-ema"),
        (("--opt", "lamb"), "Invalid value for '--opt': 'lamb' is not one of 'sgd', 'nesterov', 'adamw', 'rmsprop'"),
        (("--lr-scheduler", "poly"), "'poly' is not one of 'step', 'multistep', 'cosine', 'linear'"),
        (("--sync-bn",), "--sync-bn needs CUDA GPUs"),
        (("--grad-accum-steps", "0"), "--grad-accum-steps must be at least 1"),
    ],
)
def test_inconsistent_recipe_flags_are_one_clear_line(flags, message, tmp_path):
    result = run_cli("train", *FAST_FAKE, "--no-accel", *flags, "--output-dir", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('opt = "lamb"', "--opt must be one of sgd, nesterov, adamw, rmsprop, got 'lamb'"),
        ('lr-scheduler = "poly"', "--lr-scheduler must be one of step, multistep, cosine, linear"),
        ('amp = "fp8"', "--amp must be one of auto, none, bf16, fp16, got 'fp8'"),
    ],
)
def test_a_choice_from_a_recipe_file_is_still_checked(line, message, tmp_path):
    """The command line refuses other values before the configuration sees them; a file's values reach the
    configuration's own check, one line too."""
    (tmp_path / "recipe.toml").write_text(line + "\n")
    result = run_cli("train", *FAST_FAKE, "--config", str(tmp_path / "recipe.toml"), "--output-dir", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_choice_from_a_recipe_file_is_taken_in_any_case_as_on_the_command_line(tmp_path):
    """`--amp BF16` is `--amp bf16` on the command line; a recipe's `amp = "BF16"` is the same choice."""
    (tmp_path / "recipe.toml").write_text('amp = "NONE"\nopt = "SGD"\ninterpolation = "Bicubic"\n')
    options = read_options(str(tmp_path / "recipe.toml"), "train", {})
    assert (options["amp"], options["opt"], options["interpolation"]) == ("none", "sgd", "bicubic")


RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))


def test_the_recipes_are_shipped():
    shipped = {"reference-resnet50", "torchvision-resnet50-v2", "fast-resnet18", "fast-resnet50"}
    assert {p.stem for p in RECIPES} >= shipped


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_shipped_recipe_is_a_valid_configuration(recipe):
    from imagenet_cli.cli.declared import recipe_aliases

    given = read_options(str(recipe), "train", recipe_aliases("train"))
    cfg = build_config("train", {**given, "path": "/data/imagenet"})
    assert cfg.model.arch == given["arch"] and cfg.optim.epochs == given["epochs"]
    assert "published" in recipe.read_text().lower() or "reached" in recipe.read_text()  # says what it got, where
