"""Files are data, never orders: nothing read from a picture, recipe, manifest, shard or checkpoint may
exhaust memory, leave debris behind, or reach the terminal as anything but text.

Every hostile file here is tiny and made in tmp_path; the bounds are lowered where a test needs a large
input, so no test allocates more than a few megabytes even when the bound it checks were missing.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_cli.checkpoint import make_checkpoint
from imagenet_cli.cli.recipes import read_options
from imagenet_cli.config import build_config
from imagenet_cli.core import models
from imagenet_cli.core.errors import UserError
from imagenet_cli.data import decoders, presets, shards, sources

from .conftest import TINY_ARCH, cli_env, ok, run_cli, write_image_folder, write_manifests

RED, GREEN, BLUE = (220, 30, 30), (30, 220, 30), (30, 30, 220)


def _gif(frames: list[tuple[int, int, int]], size: tuple[int, int]) -> bytes:
    """An animated GIF of solid frames (PIL writes every frame: consecutive ones differ)."""
    pictures = [Image.new("RGB", size, colour) for colour in frames]
    out = io.BytesIO()
    pictures[0].save(out, format="GIF", save_all=True, append_images=pictures[1:], duration=40, loop=0)
    return out.getvalue()


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# -- 5. inputs that would exhaust memory ------------------------------------------------------------------------


def test_an_animated_gif_is_read_as_its_first_frame():
    """torchvision decodes every frame of an animated GIF (a 4-D tensor the presets could not use)."""
    encoded = _tensor(_gif([RED, GREEN, BLUE], (40, 40)))
    pixels = presets.decode_rgb(*presets.open_sample(encoded))
    assert pixels.shape == (3, 40, 40) and pixels[:, 0, 0].tolist() == list(RED)
    for preset in (presets.TrainPreset(32), presets.ValPreset(36, 32)):
        image = preset(encoded)
        assert image.shape == (3, 32, 32) and (image.float().mean(dim=(1, 2)) - torch.tensor(RED)).abs().max() < 2


def test_a_gif_of_many_frames_decodes_only_one_of_them(monkeypatch):
    """One frame fits under the pixel limit, the sixty together would not: only the first is decoded,
    and a GIF whose one frame is past the limit is refused by name. The process's decoder is made to
    claim GIF too: an animated picture must still go to PIL, which decodes its first frame only."""
    frame = (300, 200)
    monkeypatch.setattr(presets, "MAX_DECODED_PIXELS", 2 * frame[0] * frame[1])
    decoded: list[int] = []
    real = decoders.chosen()

    def counting(encoded: torch.Tensor, fmt: str) -> torch.Tensor:
        result = real.decode(encoded, fmt) if real.decode else torch.empty(0)
        decoded.append(result.numel())
        return result

    claims_gif = decoders.Decoder("counting", real.formats | {"GIF"}, counting)
    monkeypatch.setattr(decoders, "chosen", lambda: claims_gif)
    encoded = _tensor(_gif([RED, GREEN] * 30, frame))
    assert presets.ValPreset(64, 64)(encoded).shape == (3, 64, 64)
    assert sum(decoded) <= 3 * frame[0] * frame[1]  # at most one frame's pixels, whichever decoder ran
    monkeypatch.setattr(presets, "MAX_DECODED_PIXELS", frame[0] * frame[1] - 1)
    with pytest.raises(ValueError, match="300x200 pixels, more than the 59,999 this tool decodes"):
        presets.ValPreset(64, 64)(encoded)


def test_decode_on_device_keeps_the_pixel_limit(monkeypatch):
    """A JPEG past the pixel limit (a 65535x65535 one is a few KB) is decoded reduced by the worker, as
    without --decode-on-device, never deferred to the device's decoder that would decode it whole."""
    monkeypatch.setattr(presets, "MAX_DECODED_PIXELS", 100 * 100)
    out = io.BytesIO()
    Image.new("RGB", (200, 200), RED).save(out, format="JPEG")
    encoded = _tensor(out.getvalue())
    decoded: list[tuple[int, ...]] = []
    real = decoders.chosen()

    def counting(pixels: torch.Tensor, fmt: str) -> torch.Tensor:
        decoded.append(tuple(pixels.shape))
        return real.decode(pixels, fmt) if real.decode else torch.empty(0)

    monkeypatch.setattr(decoders, "chosen", lambda: decoders.Decoder("counting", real.formats, counting))
    item = presets.DeviceDecoded(presets.ValPreset(36, 32))(encoded)
    batch = presets.DeferredBatch([item]).decode(torch.device("cpu"))
    assert not isinstance(item, presets.Deferred) and batch.shape == (1, 3, 32, 32) and decoded == []


def test_check_data_reads_an_animated_gif_that_a_manifest_lists(tmp_path):
    folders = write_image_folder(tmp_path / "folders", {"ants": 2}, {"ants": 1}, size=32)
    (folders / "train" / "ants" / "moving.gif").write_bytes(_gif([RED, GREEN, BLUE], (40, 40)))
    manifests = write_manifests(folders, tmp_path / "csv")
    with (manifests / "train.csv").open("a") as f:
        f.write("../folders/train/ants/moving.gif,ants\n")
    report = json.loads(ok(run_cli("check-data", str(manifests), "--json", "-j", "1")).stdout)
    assert report["unreadable"] == [] and report["formats"].get("GIF") == 1


def _aliases(levels: int, width: int = 9) -> str:
    """A YAML "billion laughs": each level a list of `width` aliases of the one before it."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join([*lines, f"lr: *l{levels - 1}"]) + "\n"


def test_a_yaml_recipe_of_nested_aliases_is_refused_before_it_expands(tmp_path):
    """Five levels (59,049 strings, a repr of 400 KB: small enough to survive the bug this guards
    against); the real bomb has nine and expands to gigabytes."""
    pytest.importorskip("yaml")
    for levels in (5, 9):
        recipe = tmp_path / f"laughs{levels}.yaml"
        recipe.write_text(_aliases(levels))
        with pytest.raises(UserError) as refused:
            read_options(str(recipe), "train", {})
        message = str(refused.value)
        assert "line 2: YAML aliases (*name) are not accepted in recipes" in message and len(message) < 300


def test_values_a_recipe_echoes_in_errors_are_cut_short(tmp_path):
    long = "x" * 100_000
    for content in ({"lr": long}, {long: 1}, {"command": long}):
        recipe = tmp_path / "recipe.json"
        recipe.write_text(json.dumps(content))
        with pytest.raises(UserError) as refused:
            read_options(str(recipe), "train", {})
        assert "…" in str(refused.value) and len(str(refused.value)) < 400


def _manifest(tmp_path: Path, body: bytes | str) -> Path:
    folders = write_image_folder(tmp_path / "folders", {"ants": 1}, {"ants": 1}, size=32)
    path = folders / "train" / "train.csv"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def test_a_huge_integer_label_in_a_manifest_is_refused_by_row(tmp_path):
    """Integer labels number the classes 0..K-1: one label of 10^11 would make 10^11 classes."""
    path = _manifest(tmp_path, "path,label\nants/ants_000.png,3\nants/ants_000.png,99999999999\n")
    with pytest.raises(UserError, match=r"line 3: label 99999999999 is past 999,999, the largest class number"):
        sources.read_manifest(str(path))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"path,label\nants/ants_000.png,ants\nants/\xff\xfe.png,ants\n", "line 3 is not UTF-8 text"),
        ("path,label\nants/ants_000.png,-²\n", None),  # not a number: a class name, not a crash
        ("path,label\nants/ants_000.png,ants\n" + "y" * 1_000_000 + ",ants\n", "line 3: not a CSV row"),
        ("path,label\n" + "z" * 100_000 + ",ants\n", "line 2: no such file zzz"),
    ],
)
def test_a_malformed_manifest_row_is_named_in_one_short_line(tmp_path, body, message):
    """(Missing and extra fields and empty labels were already named by line: test_sources.py.)"""
    path = _manifest(tmp_path, body)
    if message is None:
        assert [row.label for row in sources.read_manifest(str(path))] == ["-²"]
        return
    with pytest.raises(UserError) as refused:
        sources.read_manifest(str(path))
    text = str(refused.value)
    assert text.startswith(f"{path}: ") and message in text and len(text) < len(str(path)) + 300


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("label", [b"5000000", b"-1", b"1e9"])
def test_a_shard_label_that_is_not_a_class_number_is_named_with_its_shard_and_member(tmp_path, label):
    """Without shards.json the labels make the class list: 5,000,000 would make five million classes
    (10^11 would exhaust memory); a negative one would reach the loss."""
    _tar(tmp_path / "train-0.tar", [("00000000.png", _png()), ("00000000.cls", b"0")])
    _tar(tmp_path / "val-0.tar", [("00000007.png", _png()), ("00000007.cls", label)])
    with pytest.raises(UserError) as refused:
        shards.read_index(str(tmp_path))
    assert f"shard {tmp_path / 'val-0.tar'}, sample 00000007: its .cls label" in str(refused.value)


def test_check_data_refuses_negative_shard_labels(tmp_path):
    _tar(tmp_path / "train-000000.tar", [("00000000.png", _png()), ("00000000.cls", b"0")])
    _tar(tmp_path / "val-000000.tar", [("00000001.png", _png()), ("00000001.cls", b"-1")])
    index = {"format": shards.INDEX_FORMAT, "classes": ["ants"],
             "splits": {"train": [{"file": "train-000000.tar", "samples": 1}],
                        "val": [{"file": "val-000000.tar", "samples": 1}]}}  # fmt: skip
    (tmp_path / "shards.json").write_text(json.dumps(index))
    result = run_cli("check-data", str(tmp_path), "--json", "-j", "1")
    assert result.returncode == 1, result.stderr
    [row] = json.loads(result.stdout)["unreadable"]
    assert row["file"].endswith("val-000000.tar:00000001") and "label -1 is not a class number" in row["problem"]


def _claiming(size: int) -> bytes:
    """A tar header for `00000000.jpg` that claims `size` bytes (GNU base-256), followed by none."""
    info = tarfile.TarInfo("00000000.jpg")
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024


def test_a_tar_member_claiming_a_terabyte_is_named_not_read(tmp_path):
    (tmp_path / "val-0.tar").write_bytes(_claiming(10**12))
    with pytest.raises(UserError) as refused:
        shards.read_index(str(tmp_path))
    assert str(refused.value) == (
        f"shard {tmp_path / 'val-0.tar'}: member 00000000.jpg claims 1,000,000,000,000 bytes but the file ends "
        "1,024 bytes later; the shard is truncated or damaged"
    )


def _index(root: Path, classes: list[str], counts: dict[str, int]) -> None:
    splits = {split: [{"file": f"{split}-000000.tar", "samples": n}] for split, n in counts.items()}
    (root / "shards.json").write_text(json.dumps({"format": shards.INDEX_FORMAT, "classes": classes, "splits": splits}))


def test_a_damaged_shard_read_by_loader_workers_is_named_in_one_line(tmp_path):
    """The good sample before the damage is still read (check-data counts it); the damage is reported like
    an unreadable picture, by the training process, not as a worker's traceback."""
    train = [m for i in range(8) for m in ((f"{i:08d}.png", _png()), (f"{i:08d}.cls", str(i % 2).encode()))]
    _tar(tmp_path / "train-000000.tar", train)
    good = _tar(tmp_path / "good.tar", [("00000100.png", _png()), ("00000100.cls", b"0")]).read_bytes()
    (tmp_path / "val-000000.tar").write_bytes(good[: 4 * 512] + _claiming(10**12))  # two members, then the lie
    _index(tmp_path, ["a", "b"], {"train": 8, "val": 2})
    claim = "member 00000000.jpg claims 1,000,000,000,000 bytes"
    result = run_cli("train", str(tmp_path), "-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--epochs", "1",
                     "-j", "2", "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot read sample ") and claim in result.stderr
    report = json.loads(run_cli("check-data", str(tmp_path), "--json", "-j", "1").stdout)
    assert report["per_split"] == {"train": 8, "val": 2} and claim in report["unreadable"][0]["problem"]


def test_skipping_through_shards_where_nothing_is_readable_stops_instead_of_spinning(tmp_path):
    """--skip-bad-images passes over unreadable samples; when every one is, the worker must not cycle
    through its shards forever looking for a readable one."""
    train = [m for i in range(8) for m in ((f"{i:08d}.png", b"not a picture"), (f"{i:08d}.cls", b"0"))]
    _tar(tmp_path / "train-000000.tar", train)
    _tar(tmp_path / "val-000000.tar", [("00000100.png", _png()), ("00000100.cls", b"0")])
    _index(tmp_path, ["a"], {"train": 8, "val": 1})
    result = run_cli("train", str(tmp_path), "-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--epochs", "1",
                     "-j", "0", "--skip-bad-images", "--max-bad-images", "1000", timeout=120)  # fmt: skip
    assert result.returncode == 1 and "images in a row could not be read on rank 0" in result.stderr, result.stderr


def test_files_and_members_larger_than_any_picture_are_refused_before_they_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "MAX_ENCODED_BYTES", 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 5000)
    with pytest.raises(ValueError, match="the file has 5,000 bytes, more than the 1,000 this tool reads"):
        presets.read_bytes(str(big))
    _tar(tmp_path / "val-0.tar", [("00000000.png", b"\0" * 5000), ("00000000.cls", b"0")])
    with pytest.raises(UserError, match=r"val-0.tar: member 00000000.png: the member has 5,000 bytes"):
        shards.read_index(str(tmp_path))


def test_check_data_lists_a_file_larger_than_any_picture_as_unreadable(tmp_path):
    """A sparse file one byte over the limit: it takes no disk space and is refused before it is read."""
    data = write_image_folder(tmp_path / "data", {"ants": 1}, {"ants": 1}, size=32)
    huge = data / "train" / "ants" / "huge.png"
    with huge.open("wb") as f:
        f.truncate(presets.MAX_ENCODED_BYTES + 1)
    result = run_cli("check-data", str(data), "--json", "-j", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [row] = json.loads(result.stdout)["unreadable"]
    assert row["file"] == str(huge) and f"the file has {presets.MAX_ENCODED_BYTES + 1:,} bytes" in row["problem"]


def test_a_shard_index_without_a_val_split_says_so_in_one_line(tmp_path):
    _tar(tmp_path / "train-000000.tar", [("00000000.png", _png()), ("00000000.cls", b"0")])
    _index(tmp_path, ["ants"], {"train": 1})
    result = run_cli("train", str(tmp_path), "-a", TINY_ARCH, "--image-size", "32", "-j", "0", "-b", "1",
                     "--epochs", "1", "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{tmp_path / 'shards.json'} has no val split" in result.stderr


# -- 6c. make-shards out of space ---------------------------------------------------------------------------------


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail, EFBIG

    return apply


def test_make_shards_that_runs_out_of_space_leaves_no_temporary_file(tmp_path):
    """A real write failure (the file-size limit: writes past it fail as on a full disk) mid-shard;
    then a run that succeeds removes what a killed one would have left, and only that."""
    folders = write_image_folder(tmp_path / "folders", {"ants": 12, "bees": 12}, {"ants": 2}, size=40)
    out = tmp_path / "shards"
    out.mkdir()
    command = [sys.executable, "-m", "imagenet_cli", "make-shards", str(folders), str(out), "--shard-size", "1MB"]
    env = {**cli_env(), "PYTHONDONTWRITEBYTECODE": "1"}
    failed = subprocess.run(
        command, capture_output=True, text=True, env=env, preexec_fn=_file_size_limit(20_000), timeout=240
    )
    assert os.listdir(out) == [] and failed.returncode != 0 and "Traceback" not in failed.stderr
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {out / 'train-000000.tar'}: File too large"), line
    (out / "val-000003.tar.tmp").write_bytes(b"half a shard")
    (out / "notes.tmp").write_text("not ours")
    ok(run_cli("make-shards", str(folders), str(out), "--shard-size", "1MB"))
    assert sorted(os.listdir(out)) == ["notes.tmp", "shards.json", "train-000000.tar", "val-000000.tar"]


# -- 7a. names from files are shown, never obeyed -----------------------------------------------------------------

FOLDERS = ["[bold]loud", "[red]x", "e\x1b[31mvil", "t\x1b]0;title\x07x"]  # markup and escape sequences
HOSTILE = ["[/]", *FOLDERS]  # a stray closing tag is an error in rich; no folder can be named so, a class can


def _shown(name: str) -> str:
    return name.replace("\x1b", "\\x1b").replace("\x07", "\\x07")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, checkpoint): class folders and a checkpoint's class names with rich markup and escape sequences."""
    root = tmp_path_factory.mktemp("hostile")
    data = write_image_folder(root / "data", dict.fromkeys(FOLDERS, 1), dict.fromkeys(FOLDERS, 1), size=32)
    torch.manual_seed(0)
    state = models.build_model(TINY_ARCH, len(HOSTILE)).state_dict()
    config = build_config("train", {"path": str(data), "arch": TINY_ARCH, "image_size": 32}).to_dict()
    checkpoint = make_checkpoint(model_state=state, arch=TINY_ARCH, epoch=1, best_acc1=0.0, optimizer={},
                                 scheduler={}, config=config, class_names=sorted(HOSTILE))  # fmt: skip
    torch.save(checkpoint, root / "hostile.pth.tar")
    return data, root / "hostile.pth.tar"


def _literal(result: subprocess.CompletedProcess[str], names: list[str]) -> None:
    ok(result)
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\x1b" not in result.stderr
    for name in names:
        assert _shown(name) in result.stdout, (name, result.stdout)


def test_inspect_prints_class_names_literally(hostile):
    _data, checkpoint = hostile
    _literal(run_cli("inspect", str(checkpoint)), HOSTILE)


def test_predict_prints_class_names_and_paths_literally(hostile, tmp_path):
    data, checkpoint = hostile
    (tmp_path / "p\x1b[2Jq[").mkdir()
    picture = tmp_path / "p\x1b[2Jq[/].png"  # `].png` in a folder named `p<ESC>[2Jq[`
    picture.write_bytes((data / "val" / FOLDERS[0] / f"{FOLDERS[0]}_000.png").read_bytes())
    result = run_cli("predict", str(checkpoint), str(picture), "-k", "5", "-j", "0", "--no-accel")
    _literal(result, [*HOSTILE, str(picture)])


def test_evaluate_tables_show_class_names_literally(hostile):
    data, checkpoint = hostile
    result = run_cli("evaluate", str(checkpoint), str(data), "--image-size", "32", "-b", "4", "-j", "0")
    _literal(result, FOLDERS)


def test_check_data_reports_files_named_with_markup_literally(tmp_path):
    data = write_image_folder(tmp_path / "data", dict.fromkeys(FOLDERS[:2], 1), dict.fromkeys(FOLDERS[:2], 1))
    (data / "train" / FOLDERS[0] / "x[").mkdir()
    for name in ("x[/]y.png", "e\x1b[31mvil.png"):  # the first in a folder named `x[`
        (data / "train" / FOLDERS[0] / name).write_bytes(np.random.default_rng(0).bytes(300))
    result = run_cli("check-data", str(data), "-j", "1")
    assert result.returncode == 1 and "error" not in result.stderr, result.stderr
    assert "\x1b" not in result.stdout and "x[/]y.png" in result.stdout and "e\\x1b[31mvil.png" in result.stdout


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"samples": 10**12}, "more than its size can"),
        ({"file": "../outside.tar"}, "is not a file name beside the index"),
    ],
    ids=["count", "path"],
)
def test_a_shard_index_is_believed_only_as_far_as_its_files_bear_it_out(tmp_path, entry, message):
    """An index claiming 10^12 samples made an epoch that never ends; one naming ../ read another folder."""
    data = write_image_folder(tmp_path / "imgs", {"ants": 4, "bees": 4}, {"ants": 2, "bees": 2}, size=32)
    ok(run_cli("make-shards", str(data), str(tmp_path / "sh")))
    index = json.loads((tmp_path / "sh" / "shards.json").read_text())
    index["splits"]["train"][0].update(entry)
    (tmp_path / "sh" / "shards.json").write_text(json.dumps(index))
    result = run_cli("train", str(tmp_path / "sh"), "-a", TINY_ARCH, "--image-size", "32", "-j", "0", "-b", "4",
                     "--epochs", "1", "--output-dir", str(tmp_path / "out"), timeout=120)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
