"""The checkpoint format: reference-compatible keys, safe loading, atomic writes, every format users bring."""

from __future__ import annotations

import os

import pytest
import torch

from imagenet_cli.checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    make_checkpoint,
    read_checkpoint,
    reading,
    save_checkpoint,
)
from imagenet_cli.config import build_config
from imagenet_cli.core import models
from imagenet_cli.core.atomicfile import atomic_write
from imagenet_cli.core.errors import UserError

from .conftest import TINY_ARCH, load


def _tool_checkpoint(model: torch.nn.Module) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}  # as a DDP model names them
    return make_checkpoint(
        model_state=wrapped, arch=TINY_ARCH, epoch=3, best_acc1=41.5, optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(), config=build_config("train", {"fake": True}).to_dict(),
        class_names=["a", "b", "c"],
    )  # fmt: skip


def test_files_keep_the_reference_keys_as_plain_numbers_and_unwrapped_weights(tmp_path):
    model = models.build_model(TINY_ARCH, 3)
    save_checkpoint(_tool_checkpoint(model), str(tmp_path), is_best=True)
    raw = load(tmp_path / CHECKPOINT_NAME)
    assert {"epoch", "arch", "state_dict", "best_acc1", "optimizer", "scheduler", "config", "class_names"} <= set(raw)
    assert type(raw["epoch"]) is int and type(raw["best_acc1"]) is float
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    assert load(tmp_path / BEST_NAME)["epoch"] == 3
    fresh = models.build_model(TINY_ARCH, 3)
    fresh.load_state_dict(raw["state_dict"])  # loads into a plain model, strictly


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
@pytest.mark.parametrize("layout", ["plain", "reference", "model_key"])
def test_every_format_users_bring_gives_the_same_weights(make_checkpoint_file, prefix, layout):
    model = models.build_model(TINY_ARCH, 3)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    payload = {
        "plain": state,
        # the reference script: a DataParallel state dict, best_acc1 as a tensor, no scheduler in older files
        "reference": {
            "epoch": 5,
            "arch": TINY_ARCH,
            "state_dict": state,
            "best_acc1": torch.tensor(12.5),
            "optimizer": {},
        },
        "model_key": {"model": state, "epoch": 1},  # torchvision's references
    }[layout]
    loaded = read_checkpoint(str(make_checkpoint_file("ckpt.pth", payload)))
    assert loaded.state_dict.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in model.state_dict().items())
    if layout == "reference":
        assert (loaded.epoch, loaded.best_acc1, loaded.arch, loaded.scheduler) == (5, 12.5, TINY_ARCH, None)


def test_a_checkpoint_that_would_run_code_is_refused_and_its_code_never_runs(booby_trapped_checkpoint):
    path, marker = booby_trapped_checkpoint
    with pytest.raises(UserError, match="cannot be loaded safely"):
        read_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"", "not a readable checkpoint"), (b"garbage" * 10, "not a readable checkpoint")],
)
def test_unreadable_files_are_one_clear_error(tmp_path, content, words):
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(content)
    with pytest.raises(UserError, match=words):
        read_checkpoint(str(path))


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "nope.pth.tar"))


def test_a_file_is_read_once_until_replaced_and_each_reader_gets_its_own_optimizer_state(tmp_path, monkeypatch):
    """The cli, the launcher and the worker each read a resume's file: torch parses it once. An optimizer
    restored on the CPU trains the very tensors it was given, so those are never shared between readers."""
    loads = []
    real_load = reading._load
    monkeypatch.setattr(reading, "_load", lambda path: loads.append(path) or real_load(path))
    momentum = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"params": [0]}]}
    checkpoint = {**_tool_checkpoint(models.build_model(TINY_ARCH, 3)), "optimizer": momentum}
    save_checkpoint(checkpoint, str(tmp_path), is_best=False)
    path = str(tmp_path / CHECKPOINT_NAME)

    first = read_checkpoint(path)
    first.optimizer["state"][0]["momentum_buffer"].add_(1.0)  # as SGD's step does in place
    second = read_checkpoint(path)
    assert len(loads) == 1 and second.state_dict is first.state_dict
    assert torch.equal(second.optimizer["state"][0]["momentum_buffer"], torch.zeros(3))

    save_checkpoint({**checkpoint, "epoch": 4}, str(tmp_path), is_best=False)  # a new file in its place
    assert read_checkpoint(path).stored_epoch == 4 and len(loads) == 2


def test_a_write_that_fails_midway_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"epoch": 1}, path)

    def half_then_crash(f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    with pytest.raises(
        UserError, match=r"^no space left on /\S* writing \S+checkpoint.pth.tar; the previous file is intact$"
    ):
        atomic_write(str(path), half_then_crash)
    assert load(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # no temporary file left behind
