"""Any model: your own `nn.Module` (a .py file, or package.module:factory) and timm's, through every command.

User code runs only when the command line names it: a checkpoint records where its code was and the file's
sha256, and a later command imports it only when `--arch` names it again or `--trust-checkpoint-code` is
given (and the file is unchanged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagenet_cli.checkpoint import CHECKPOINT_NAME

from .conftest import (
    CLASSES,
    FAST_FAKE,
    SIZE_32,
    cli_env,
    json_result,
    load,
    ok,
    run_cli,
    write_manifests,
    write_model_package,
    write_tutorial_net,
)

FAKE_VAL = ("--fake-data", "--image-size", "32", "--fake-val-images", "16", "-j", "0")
# The tutorials' recipe: SGD, ReduceLROnPlateau on the validation loss (patience 0, so it acts in 3 epochs).
PLATEAU = ("-b", "8", "-j", "0", "--seed", "0", "--lr", "0.05", "--lr-scheduler", "plateau",
           "--plateau-patience", "0", "--plateau-factor", "0.5")  # fmt: skip


def _evaluation_matches_the_last_epoch(checkpoint: Path, data: Path, arch: str, run: Path, cwd: Path) -> None:
    """`evaluate` of the checkpoint on DATA (13 validation images) scores what RUN's last epoch recorded."""
    evaluated = json_result(run_cli("evaluate", str(checkpoint), str(data), "--arch", arch, "--json", cwd=cwd))
    last_epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert evaluated["images"] == 13 and evaluated["acc1"] == pytest.approx(last_epoch["val_acc1"])


def _weights_a_frozen_backbone_finetune_changes(
    checkpoint: Path, arch: str, image_folder: Path, tmp_path: Path, cwd: Path
) -> set[str]:
    """The `*weight` entries that one epoch of `finetune --freeze-backbone` from the checkpoint changed."""
    tuned = tmp_path / "tuned"
    ok(run_cli("finetune", "--weights", str(checkpoint), "--arch", arch, str(image_folder), *SIZE_32,
               "--freeze-backbone", "--epochs", "1", "-b", "8", "-j", "0", "--output-dir", str(tuned), cwd=cwd))  # fmt: skip
    before, after = load(checkpoint)["state_dict"], load(tuned / CHECKPOINT_NAME)["state_dict"]
    return {k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])}


def test_your_own_model_trains_resumes_exactly_evaluates_finetunes_predicts_and_exports(image_folder, tmp_path):
    """The tutorial's Net in a file, through every command (a factory in a package: the test below)."""
    arch, cwd = str(write_tutorial_net(tmp_path / "code")) + ":Net", tmp_path
    data = write_manifests(image_folder, tmp_path / "manifests")  # train.csv and val.csv, with a header
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    common = ("--arch", arch, str(data), *SIZE_32, *PLATEAU)
    ok(run_cli("train", *common, "--epochs", "3", "--output-dir", str(straight), cwd=cwd))
    ok(run_cli("train", *common, "--epochs", "1", "--output-dir", str(cut), cwd=cwd))
    ok(run_cli("resume", str(cut / CHECKPOINT_NAME), "--epochs", "3", "--arch", arch, cwd=cwd))

    done, reference = load(cut / CHECKPOINT_NAME), load(straight / CHECKPOINT_NAME)
    assert all(torch.equal(done["state_dict"][k], v) for k, v in reference["state_dict"].items())
    assert done["scheduler"]["plateau"] == reference["scheduler"]["plateau"]
    assert done["model_source"]["callable"] == arch.rpartition(":")[2]
    _assert_lr_follows_the_plateau(straight / "metrics.jsonl", lr=0.05, factor=0.5)

    _evaluation_matches_the_last_epoch(cut / CHECKPOINT_NAME, data, arch, straight, cwd)
    changed = _weights_a_frozen_backbone_finetune_changes(cut / CHECKPOINT_NAME, arch, image_folder, tmp_path, cwd)
    assert len(changed) == 1, f"only the head trains with a frozen backbone, not {sorted(changed)}"

    picture = next((image_folder / "val" / "bees").iterdir())
    predicted = json_result(run_cli("predict", str(cut / CHECKPOINT_NAME), str(picture), "--arch", arch, "--json",
                                    cwd=cwd))  # fmt: skip
    assert predicted["predictions"][0]["top"][0]["class"] in CLASSES
    exported = tmp_path / "weights.pth"
    ok(run_cli("export", str(cut / CHECKPOINT_NAME), "--arch", arch, "--format", "state_dict", "-o", str(exported),
               cwd=cwd))  # fmt: skip
    plain = load(exported)
    assert all(torch.equal(plain[k], v) for k, v in done["state_dict"].items())  # a plain state dict


def test_a_factory_in_a_package_trains_resumes_evaluates_finetunes_and_predicts(image_folder, tmp_path):
    """`package.module:factory` where it differs from a file: each command imports it by module name from
    the directory it runs in (a resume, an evaluation and a prediction each confirm it through --arch), its
    factory needs `num_classes`, and its head is the last layer of an nn.Sequential. What does not depend on
    where the code lives (a bit-identical resume, the plateau schedule, export's own reading of --arch as
    predict's) is proven with the file above."""
    arch, cwd = write_model_package(tmp_path), tmp_path
    run = tmp_path / "run"
    ok(run_cli("train", "--arch", arch, str(image_folder), *SIZE_32, *PLATEAU, "--epochs", "1", "--output-dir",
               str(run), cwd=cwd))  # fmt: skip
    ok(run_cli("resume", str(run / CHECKPOINT_NAME), "--epochs", "2", "--arch", arch, cwd=cwd))
    done = load(run / CHECKPOINT_NAME)
    assert done["epoch"] == 2 and done["model_source"]["callable"] == "small_cnn"
    _evaluation_matches_the_last_epoch(run / CHECKPOINT_NAME, image_folder, arch, run, cwd)
    changed = _weights_a_frozen_backbone_finetune_changes(run / CHECKPOINT_NAME, arch, image_folder, tmp_path, cwd)
    assert changed == {"9.weight"}, f"only the head (the Sequential's last layer) trains, not {sorted(changed)}"

    picture = next((image_folder / "val" / "bees").iterdir())
    predicted = json_result(run_cli("predict", str(run / CHECKPOINT_NAME), str(picture), "--arch", arch, "--json",
                                    cwd=cwd))  # fmt: skip
    assert predicted["predictions"][0]["top"][0]["class"] in CLASSES


def _assert_lr_follows_the_plateau(metrics: Path, lr: float, factor: float) -> None:
    """Each epoch's LR is what torch's ReduceLROnPlateau gives, stepped with the validation losses before it."""
    epochs = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["type"] == "epoch"]
    holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(holder, factor=factor, patience=0)
    for record in epochs:
        assert record["lr"] == pytest.approx(holder.param_groups[0]["lr"])
        scheduler.step(record["val_loss"])


def test_code_a_checkpoint_names_runs_only_when_the_command_line_names_it(tmp_path):
    marker = tmp_path / "imported"
    net = write_tutorial_net(tmp_path / "code", extra=f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    ok(run_cli("train", "--arch", f"{net}:Net", *FAST_FAKE, "--epochs", "1", "-b", "16", "--output-dir", str(tmp_path)))
    checkpoint = str(tmp_path / CHECKPOINT_NAME)
    marker.unlink()

    for command in (("evaluate", checkpoint, *FAKE_VAL), ("resume", checkpoint, "--epochs", "2"),
                    ("predict", checkpoint, str(net)), ("export", checkpoint, "--format", "state_dict")):  # fmt: skip
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert f"pass --arch {net}:Net (or --trust-checkpoint-code)" in result.stderr
        assert "Traceback" not in result.stderr and not marker.exists()
    assert "Net" in ok(run_cli("inspect", checkpoint)).stdout and not marker.exists()

    ok(run_cli("evaluate", checkpoint, *FAKE_VAL, "--trust-checkpoint-code"))
    assert marker.exists()
    net.write_text(net.read_text() + "\n# edited\n")
    refused = run_cli("evaluate", checkpoint, *FAKE_VAL, "--trust-checkpoint-code")
    assert refused.returncode == 2 and "changed since checkpoint.pth.tar was written" in refused.stderr
    named = ok(run_cli("evaluate", checkpoint, *FAKE_VAL, "--arch", f"{net}:Net"))
    assert "changed since" in named.stderr  # the user's order, with a note
    moved = net.rename(tmp_path / "elsewhere.py")
    gone = run_cli("evaluate", checkpoint, *FAKE_VAL, "--trust-checkpoint-code")
    assert gone.returncode == 2 and "which is not there any more: pass --arch FILE.py:CALLABLE" in gone.stderr
    ok(run_cli("evaluate", checkpoint, *FAKE_VAL, "--arch", f"{moved}:Net"))  # --arch points somewhere else

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'arch = "{net}:Net"\n')
    refused = run_cli("train", "--config", str(recipe), *FAST_FAKE)
    assert refused.returncode == 2 and "a recipe never names code to run" in refused.stderr


def test_a_model_of_fixed_width_or_input_size_is_checked_by_a_dry_forward_pass(image_folder, tmp_path):
    fixed = tmp_path / "fixed.py"
    fixed.write_text(write_tutorial_net(tmp_path / "code").read_text().replace("num_classes: int = 10", "") .replace(
        "nn.Linear(84, num_classes)", "nn.Linear(84, 10)"))  # fmt: skip
    wrong_width = run_cli("train", "--arch", f"{fixed}:Net", str(image_folder), *SIZE_32, "--epochs", "1")
    assert wrong_width.returncode == 2
    assert "outputs of shape (2, 10) for 2 images, but the data has 3 classes" in wrong_width.stderr
    wrong_size = run_cli("train", "--arch", f"{tmp_path / 'code' / 'net.py'}:Net", str(image_folder), "--epochs", "1")
    assert wrong_size.returncode == 2 and "a dry forward pass on 2×3×224×224 images failed" in wrong_size.stderr
    missing = run_cli("train", "--arch", f"{tmp_path / 'nowhere.py'}:Net", "--fake-data")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    no_callable = run_cli("train", "--arch", f"{fixed}:Missing", *FAST_FAKE)
    assert no_callable.returncode == 2 and "has no callable 'Missing'; it defines Net" in no_callable.stderr


def test_a_timm_model_trains_and_finetunes_with_a_frozen_backbone(image_folder, tmp_path):
    pytest.importorskip("timm")
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    ok(run_cli("train", "--arch", "timm/resnet10t", *FAST_FAKE, "--epochs", "1", "-b", "16", "--output-dir", str(base)))
    ok(run_cli("finetune", "--weights", str(base / CHECKPOINT_NAME), str(image_folder), *SIZE_32, "--freeze-backbone",
               "--epochs", "1", "-b", "8", "-j", "0", "--output-dir", str(tuned)))  # fmt: skip
    before, after = load(base / CHECKPOINT_NAME), load(tuned / CHECKPOINT_NAME)
    assert after["arch"] == "timm/resnet10t" and after["state_dict"]["fc.weight"].shape[0] == len(CLASSES)
    backbone = [k for k in before["state_dict"] if not k.startswith("fc.")]
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in backbone)


def test_without_timm_a_timm_arch_says_how_to_install_it(tmp_path):
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("raise ImportError('No module named timm')\n")
    pythonpath = os.pathsep.join([str(tmp_path), *sys.path])  # a fresh interpreter: the stand-in comes first
    result = subprocess.run([sys.executable, "-m", "imagenet_cli", "train", "--arch", "timm/resnet10t", *FAST_FAKE],
                            env=cli_env(PYTHONPATH=pythonpath), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1] == "error: --arch timm/NAME needs timm: pip install 'imagenet-cli[timm]'"
    )


def test_timm_pretrained_weights_come_from_the_local_cache_only(tmp_path):
    pytest.importorskip("timm")
    result = run_cli(
        "train", "--arch", "timm/resnet10t", "--pretrained", *FAST_FAKE, env=cli_env(HF_HOME=str(tmp_path))
    )
    assert result.returncode == 2
    assert "pretrained weights for timm/resnet10t are not in the local cache" in result.stderr
    assert "or pass the file with --weights" in result.stderr


def test_models_lists_timm_architectures_by_their_arch_name():
    pytest.importorskip("timm")
    rows = json_result(run_cli("models", "--source", "timm", "resnet10t", "--json"))["models"]
    assert [row["name"] for row in rows] == ["timm/resnet10t"] and rows[0]["parameters"] > 1_000_000


def _hugging_face_cache(home: Path, repo: str, weights: dict[str, torch.Tensor]) -> None:
    """The layout `huggingface_hub` leaves after a download: a snapshot named by the ref `main`."""
    from safetensors.torch import save_file

    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(weights, str(folder / "snapshots" / ("0" * 40) / "model.safetensors"))


def test_timm_pretrained_weights_are_read_from_the_local_hugging_face_cache(tmp_path):
    timm = pytest.importorskip("timm")
    published = timm.create_model("resnet10t").state_dict()  # stand-ins for the published weights
    _hugging_face_cache(tmp_path / "hf", "timm/resnet10t.c3_in1k", {k: v.contiguous() for k, v in published.items()})
    out = tmp_path / "run"
    result = ok(run_cli("train", "--arch", "timm/resnet10t", "--pretrained", *FAST_FAKE, "--epochs", "0",
                        "--output-dir", str(out), env=cli_env(HF_HOME=str(tmp_path / "hf"))))  # fmt: skip
    assert "loaded weights from timm's pretrained timm/resnet10t" in result.stdout + result.stderr


def test_timm_models_are_normalised_with_their_own_mean_and_std():
    pytest.importorskip("timm")
    from imagenet_cli.data.loaders import Normalizer

    grey = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    vit = Normalizer(torch.device("cpu"), arch="timm/vit_tiny_patch16_224")(grey)  # mean and std 0.5
    resnet = Normalizer(torch.device("cpu"), arch="resnet18")(grey)  # ImageNet's
    assert torch.allclose(vit, torch.full_like(vit, (128 / 255 - 0.5) / 0.5))
    assert torch.allclose(resnet[0, 0], torch.full((2, 2), (128 / 255 - 0.485) / 0.229))
