"""The configuration: defaults in one place, checked once, stored and rebuilt without loss."""

from __future__ import annotations

import pytest

from imagenet_cli.config import RunConfig, build_config, changed_values
from imagenet_cli.core.errors import UserError


def test_defaults_follow_the_reference_recipe():
    cfg = build_config("train", {"path": "/data"})
    assert (cfg.model.arch, cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr) == ("resnet18", 90, 256, 0.1)
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.lr_step_size, cfg.optim.lr_gamma) == (
        0.9,
        1e-4,
        30,
        0.1,
    )
    assert (cfg.data.image_size, cfg.data.val_resize_size, cfg.data.val_crop_size) == (224, 256, 224)


def test_fake_data_defaults_are_small_enough_for_a_cpu():
    cfg = build_config("train", {"fake": True})
    assert cfg.data.image_size == 64 and cfg.data.num_classes == 10
    assert cfg.data.path is None


def test_finetune_has_its_own_shorter_schedule():
    cfg = build_config("finetune", {"path": "/data", "weights": "w.pth"})
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.batch_size) == (10, 0.01, 32)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"batch_size": 0}, "--batch-size must be positive"),
        ({"batch_size": -8}, "--batch-size must be positive"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"lr": -0.1}, "--lr must be positive"),
        ({"arch": "resnet181"}, "did you mean resnet18"),
        ({"arch": "not_a_model_at_all"}, "unknown architecture"),
        ({"world_size": 2, "rank": 2}, "--rank 2 is out of range"),
        ({"dist_backend": "carrier-pigeon"}, "--dist-backend must be one of"),
        ({"val_resize_size": 100, "val_crop_size": 200}, "must not be smaller"),
        ({"fake": False, "path": None}, "DATA is required"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(given, words):
    with pytest.raises(UserError, match=words):
        build_config("train", {"path": "/data", **given})


def test_finetune_needs_a_starting_point():
    with pytest.raises(UserError, match="--weights PATH or --pretrained"):
        build_config("finetune", {"path": "/data"})


def test_a_stored_config_comes_back_equal():
    cfg = build_config("train", {"fake": True, "lr": 0.3, "seed": 7, "multiprocessing_distributed": True})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_keys_from_other_versions_are_ignored_on_load():
    raw = build_config("train", {"fake": True}).to_dict()
    raw["optim"]["some_future_option"] = 3
    raw["a_retired_option"] = True
    assert RunConfig.from_dict(raw).optim.lr == 0.1


def test_given_flags_override_a_base_and_are_reported():
    base = build_config("train", {"path": "/data", "lr": 0.1, "epochs": 90})
    cfg = build_config("train", {"lr": 0.01, "epochs": 90}, base)
    assert cfg.optim.lr == 0.01
    assert changed_values(base, cfg) == {"lr": (0.1, 0.01)}


def test_a_new_image_size_re_derives_validation_sizes_but_keeps_given_ones():
    base = build_config("train", {"path": "/data"})
    assert build_config("train", {"image_size": 128}, base).data.val_resize_size == 146
    assert build_config("train", {"image_size": 128, "val_resize_size": 160}, base).data.val_resize_size == 160
    assert build_config("train", {"image_size": 224}, base).data == base.data
