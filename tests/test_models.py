"""Models: heads found by inspection, weights loaded strictly, pretrained weights from the cache only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from imagenet_cli.core import models
from imagenet_cli.core.errors import UserError

from .conftest import TINY_ARCH


@pytest.mark.parametrize(
    ("arch", "heads"),
    [
        ("resnet18", {"fc.weight", "fc.bias"}),
        ("squeezenet1_1", {"classifier.1.weight", "classifier.1.bias"}),
        ("vit_b_16", {"heads.head.weight", "heads.head.bias"}),
        ("regnet_x_400mf", {"fc.weight", "fc.bias"}),  # computes its widths with tensor ops
        ("inception_v3", {"fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"}),
    ],
)
def test_heads_are_found_by_looking_at_the_model(arch, heads):
    assert models.head_keys(arch) == heads


def test_head_size_is_read_off_a_state_dict():
    state = models.build_model("resnet18", 7).state_dict()
    assert models.head_num_classes("resnet18", state) == 7


def test_a_new_head_keeps_every_other_weight():
    source = models.build_model(TINY_ARCH, 10)
    target = models.build_model(TINY_ARCH, 3)
    models.load_state(target, source.state_dict(), TINY_ARCH, skip_head=True)
    assert target.fc.out_features == 3
    for key, value in source.state_dict().items():
        if key not in models.head_keys(TINY_ARCH):
            assert torch.equal(target.state_dict()[key], value), key


def test_weights_of_another_architecture_are_refused():
    target = models.build_model(TINY_ARCH, 3)
    with pytest.raises(UserError, match=r"do not fit shufflenet_v2_x0_5.*is --arch right"):
        models.load_state(target, models.build_model("squeezenet1_1", 3).state_dict(), TINY_ARCH, skip_head=False)


def test_pretrained_weights_with_an_empty_cache_say_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected, url = models.pretrained_file("resnet18")
    with pytest.raises(UserError) as info:
        models.pretrained_state_dict("resnet18")
    assert expected in str(info.value) and url in str(info.value)
    assert expected.startswith(str(tmp_path))


def test_pretrained_weights_are_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, _ = models.pretrained_file("resnet18")
    Path(path).parent.mkdir(parents=True)
    torch.save(models.build_model("resnet18", 1000).state_dict(), path)
    assert models.head_num_classes("resnet18", models.pretrained_state_dict("resnet18")) == 1000


def test_unwrap_reaches_the_plain_module_under_wrappers():
    plain = nn.Linear(2, 2)
    assert models.unwrap(nn.DataParallel(plain)) is plain
