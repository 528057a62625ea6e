"""`models` and `env`: what torchvision and this machine offer; and the help and shell completion every
command gets. Expected figures are read from torchvision's own metadata, never typed in here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torchvision

from imagenet_cli.tools import catalogue, environment

from .conftest import LAUNCHER_VARS, cli_env, json_result, ok, run_cli


def _rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json_result(result)["models"]}


def _table_line(stdout: str, arch: str) -> str:
    """The table row of `arch` (its name is the first cell)."""
    return next(line for line in stdout.splitlines() if line.strip("│┃| ").split(" ")[0] == arch)


def test_models_lists_every_torchvision_classifier() -> None:
    rows = _rows(run_cli("models", "--json"))
    assert sorted(rows) == sorted(torchvision.models.list_models(module=torchvision.models))
    for row in rows.values():
        assert set(row) == {"name", "parameters", "crop_size", "resize_size", "imagenet_acc1"}
        assert row["parameters"] > 0


def test_models_table_is_plain_and_counts_the_architectures() -> None:
    out = ok(run_cli("models")).stdout
    assert "\x1b" not in out  # not a terminal: no colours or cursor moves
    assert (
        out.strip().splitlines()[-1]
        == f"{len(torchvision.models.list_models(module=torchvision.models))} architectures"
    )


def test_models_filter_is_a_case_insensitive_substring() -> None:
    rows = _rows(run_cli("models", "ResNet50", "--json"))
    expected = [n for n in torchvision.models.list_models(module=torchvision.models) if "resnet50" in n]
    assert sorted(rows) == sorted(expected)
    assert "resnet50" in rows and "resnet18" not in rows


def test_models_reports_torchvision_weights_metadata() -> None:
    weights = torchvision.models.get_model_weights("resnet50").DEFAULT
    preset = weights.transforms()
    row = _rows(run_cli("models", "resnet50", "--json"))["resnet50"]
    assert row["parameters"] == weights.meta["num_params"]
    assert round(row["parameters"] / 1e6, 1) == 25.6
    assert row["crop_size"] == preset.crop_size[0] == 224
    assert row["resize_size"] == preset.resize_size[0] and row["resize_size"] in (232, 256)
    assert row["imagenet_acc1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    line = _table_line(ok(run_cli("models", "resnet50")).stdout, "resnet50")
    assert f"{weights.meta['num_params'] / 1e6:.1f}M" in line and f"{preset.resize_size[0]}" in line


def test_models_shows_inception_at_its_own_resolution() -> None:
    preset = torchvision.models.get_model_weights("inception_v3").DEFAULT.transforms()
    row = _rows(run_cli("models", "inception", "--json"))["inception_v3"]
    assert row["crop_size"] == preset.crop_size[0] == 299
    assert row["resize_size"] == preset.resize_size[0]
    assert " 299 " in _table_line(ok(run_cli("models", "inception")).stdout, "inception_v3")


def test_models_filter_matching_nothing_is_a_one_line_error() -> None:
    result = run_cli("models", "no-such-net")
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no architecture matches 'no-such-net'"), result.stderr


@pytest.mark.parametrize("arch", ["resnet18", "regnet_y_400mf", "inception_v3"])
def test_parameters_counted_on_meta_match_the_published_weights(arch: str) -> None:
    """The fallback for architectures without weights counts what the weights' metadata says."""
    assert catalogue.parameter_count(arch) == torchvision.models.get_model_weights(arch).DEFAULT.meta["num_params"]


def test_an_architecture_without_weights_is_still_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "_default_weights", lambda name: None)
    row = catalogue.describe_model("resnet18")
    expected = torchvision.models.get_model_weights("resnet18").DEFAULT.meta["num_params"]
    assert row == {
        "name": "resnet18",
        "parameters": expected,
        "crop_size": None,
        "resize_size": None,
        "imagenet_acc1": None,
    }


def test_env_json_reports_versions_backends_cpus() -> None:
    report = json_result(run_cli("env", "--json"))
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["torchvision"] == torchvision.__version__
    assert report["distributed_backends"]["gloo"] is True
    assert report["cpu"]["count"] == os.cpu_count()
    assert report["cuda"] == [] or report["cuda"][0]["free_bytes"] is not None
    assert not [k for k in report["launcher_env"] if k in LAUNCHER_VARS or k.startswith("SLURM_")]  # cli_env drops them
    assert report["plan"]["launcher"] == "none" and report["plan"]["summary"].startswith("a plain run uses ")


def test_env_sees_the_launcher_variables() -> None:
    env = cli_env(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", SLURM_JOB_ID="42", NCCL_DEBUG="WARN")
    report = json_result(run_cli("env", "--json", env=env))
    assert {k: report["launcher_env"][k] for k in ("RANK", "WORLD_SIZE", "SLURM_JOB_ID", "NCCL_DEBUG")} == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "SLURM_JOB_ID": "42",
        "NCCL_DEBUG": "WARN",
    }
    assert report["plan"]["launcher"] == "torchrun"
    assert (report["plan"]["rank"], report["plan"]["world_size"], report["plan"]["local_rank"]) == (3, 4, 1)
    out = ok(run_cli("env", env=env)).stdout
    assert "\x1b" not in out
    assert "SLURM_JOB_ID" in out and out.strip().splitlines()[-1].startswith("plan: torchrun detected: rank 3 of 4")


def test_env_explains_a_stray_rank_variable() -> None:
    report = json_result(run_cli("env", "--json", env=cli_env(RANK="3", SLURM_JOB_ID="42")))
    assert report["launcher_env"]["RANK"] == "3" and report["launcher_env"]["SLURM_JOB_ID"] == "42"
    assert report["plan"]["launcher"] == "none"
    assert "not a torchrun process" in report["plan"]["summary"] and "SLURM job 42" in report["plan"]["summary"]


def test_cuda_devices_come_freest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a shared machine the device with the most free memory is the one to pick, so it is listed first."""
    gib = 2**30
    free = {0: 2 * gib, 1: 70 * gib, 2: 30 * gib}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: SimpleNamespace(name=f"GPU {i}", major=9, minor=0, total_memory=80 * gib),
    )
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 * gib))
    devices = environment.cuda_devices()
    assert [d["index"] for d in devices] == [1, 2, 0]
    assert devices[0]["used_bytes"] == 10 * gib and devices[0]["free_bytes"] == 70 * gib


def test_a_cuda_device_that_cannot_report_its_memory_is_listed_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="GPU", major=8, minor=0, total_memory=40)
    )

    def busy(_index: int) -> None:
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy\nor unavailable")

    monkeypatch.setattr(torch.cuda, "mem_get_info", busy)
    assert environment.cuda_devices() == [
        {"index": 0, "name": "GPU", "capability": "8.0", "total_bytes": 40, "used_bytes": None, "free_bytes": None,
         "error": "CUDA error: all CUDA-capable devices are busy or unavailable"}
    ]  # fmt: skip


def _params(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every parameter of a click command and of its subcommands, named by where it appears."""
    for param in command.params:
        yield f"{path} {param.name}", param
    for name, sub in getattr(command, "commands", {}).items():
        yield from _params(sub, f"{path} {name}")


def test_every_option_and_argument_has_help() -> None:
    import typer.main

    from imagenet_cli.cli import app

    group = typer.main.get_command(app)
    assert "models" in group.commands and "env" in group.commands
    exempt = {"help", "install_completion", "show_completion"}  # the frameworks' own
    missing = [
        where
        for where, param in _params(group, "imagenet-cli")
        if param.name not in exempt and not (getattr(param, "help", None) or "").strip()
    ]
    assert not missing, f"parameters without help text: {', '.join(missing)}"


def _cli_with_env(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command line with extra environment variables (the shell's completion protocol, a terminal width)."""
    return run_cli(*args, env=cli_env(**env), timeout=60)


def test_help_offers_shell_completion() -> None:
    assert "--install-completion" in ok(_cli_with_env("--help", COLUMNS="200")).stdout


def test_shell_completion_completes_command_names() -> None:
    """Bash's completion function calls the program with these variables (the name comes from prog_name)."""
    result = ok(_cli_with_env(_IMAGENET_CLI_COMPLETE="complete_bash", COMP_WORDS="imagenet-cli tr", COMP_CWORD="1"))
    assert result.stdout.split() == ["train"]


def test_version_names_the_package_torch_and_torchvision() -> None:
    import imagenet_cli

    out = ok(_cli_with_env("--version")).stdout.strip()
    assert out.startswith(f"imagenet-cli {imagenet_cli.__version__} (torch ")
    assert torch.__version__.split("+")[0] in out and torchvision.__version__.split("+")[0] in out


def test_version_and_help_import_no_torch() -> None:
    """Both answer at once: the versions come from the installed packages' metadata."""
    probe = "import sys; from imagenet_cli.cli.app import version_line; version_line(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def _completions(*words: str) -> list[str]:
    line = " ".join(("imagenet-cli", *words))
    result = _cli_with_env(_IMAGENET_CLI_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(len(words)))
    return ok(result).stdout.split()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("train", "--opt", ""), ["sgd", "nesterov", "adamw", "rmsprop"]),
        (("train", "--lr-scheduler", "c"), ["cosine", "constant"]),
        (("evaluate", "--amp", ""), ["auto", "none", "bf16", "fp16"]),
        (("check-data", "--data-format", "w"), ["webdataset"]),
        (("export", "--format", ""), ["pt2", "onnx", "safetensors", "torchscript", "state_dict"]),
        (("benchmark", "--only", "e"), ["eval", "e2e", "e2e-command"]),
    ],
)
def test_shell_completion_offers_an_options_choices(words: tuple[str, ...], expected: list[str]) -> None:
    assert _completions(*words) == expected


def test_help_lists_every_declared_choice() -> None:
    from imagenet_cli.config import OPTIONS

    shown = " ".join(ok(_cli_with_env("train", "--help", COLUMNS="400")).stdout.split())
    chosen = {name: found for name, found in OPTIONS.items() if found.choices and "train" in found.commands}
    assert {"opt", "lr_scheduler", "amp", "data_format", "interpolation", "auto_augment", "best_by"} <= set(chosen)
    for found in chosen.values():
        assert f"{found.flags[-1]} <{'|'.join(found.choices)}>" in shown, found.flags


def test_a_choice_not_offered_is_one_line_before_anything_runs() -> None:
    result = _cli_with_env("train", "--fake-data", "--amp", "fp8")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "error: Invalid value for '--amp': 'fp8' is not one of 'auto', 'none', 'bf16', 'fp16'. "
        "(see `imagenet-cli train --help`)"
    )


def test_a_first_models_answers_from_the_shipped_catalogue_without_torch(tmp_path: Path) -> None:
    """With an empty cache, the catalogue shipped for the installed torchvision answers: no torch import."""
    env = cli_env(XDG_CACHE_HOME=str(tmp_path))
    probe = "import sys; from imagenet_cli.tools.catalogue import list_models as l; print(len(l('resnet')), 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    listed = _rows(ok(run_cli("models", "resnet", "--json", env=env)))
    assert result.stdout.split() == [str(len(listed)), "False"], result.stderr


def test_the_shipped_catalogue_is_what_torchvision_lists() -> None:
    """`python -m imagenet_cli.tools.catalogue` wrote it; a torchvision it was not listed from is never answered by it."""
    shipped = catalogue._read_cache(catalogue.SHIPPED)
    assert shipped is not None
    if catalogue._read_cache(catalogue.SHIPPED, torchvision=torchvision.__version__.split("+")[0]) is None:
        assert catalogue._shipped() is None
        pytest.skip("the shipped catalogue lists another torchvision")
    assert shipped == [catalogue.describe_model(name) for name in catalogue._classifier_names()]


def test_models_caches_a_catalogue_it_had_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """For a torchvision the package was not shipped with, the list is built once and cached under the versions."""
    monkeypatch.setattr(catalogue, "SHIPPED", str(tmp_path / "none.json"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rows = catalogue.catalogue()
    path = catalogue.cache_path()
    assert path is not None and os.path.isfile(path) and catalogue._read_cache(path) == rows


@pytest.mark.parametrize(
    "stored",
    ["not json", '{"format": 1, "models": []}', '{"format": 1, "models": [{"name": "resnet18", "parameters": -1}]}',
     '{"format": 0, "models": [{"name": "x", "parameters": 1, "crop_size": 1, "resize_size": 1, "imagenet_acc1": 1.0}]}'],
)  # fmt: skip
def test_a_cache_that_is_not_a_catalogue_is_rebuilt(tmp_path: Path, stored: str) -> None:
    cache = tmp_path / "models.json"
    cache.write_text(stored)
    rows = catalogue.catalogue(str(cache))
    assert [row["name"] for row in rows] == list(torchvision.models.list_models(module=torchvision.models))
    assert catalogue.catalogue(str(cache)) == rows  # now read back as written


_ROW = '{"parameters": 1, "crop_size": 1, "resize_size": 1, "imagenet_acc1": %s}'


@pytest.mark.parametrize(
    "stored",
    ["[" * 100_000,  # JSON nested past Python's recursion limit
     '{"format": 1, "models": [{"name": "evil\\u001b]0;title\\u0007[bold]x", ' + _ROW[1:] % "1.0" + "]}",
     '{"format": 1, "models": [{"name": "resnet18", ' + _ROW[1:] % "NaN" + "]}"],
)  # fmt: skip
def test_a_hostile_cache_is_rebuilt_not_shown(tmp_path: Path, stored: str) -> None:
    """A cache nested too deep, or naming an architecture in terminal escapes and rich markup, is not a catalogue."""
    cache = tmp_path / "models.json"
    cache.write_text(stored)
    rows = catalogue.catalogue(str(cache))
    assert [row["name"] for row in rows] == list(torchvision.models.list_models(module=torchvision.models))


def test_a_fifo_under_the_caches_name_does_not_hang_models(tmp_path: Path) -> None:
    """Opening a FIFO with no writer blocks forever: the cache is read only when it is a regular file."""
    env = cli_env(XDG_CACHE_HOME=str(tmp_path))
    cache = Path(catalogue.cache_path(env))
    cache.parent.mkdir(parents=True)
    os.mkfifo(cache)
    result = ok(run_cli("models", "resnet18", "--json", env=env, timeout=90))
    assert list(_rows(result)) == ["resnet18"]  # the cache is read first: the FIFO was opened, not waited on


def test_env_lists_the_optional_extras() -> None:
    extras = json_result(run_cli("env", "--json"))["extras"]
    assert {"plot", "tensorboard", "yaml", "onnx"} <= set(extras) and "dev" not in extras
    assert extras["plot"]["packages"]["matplotlib"] is not None and extras["plot"]["installed"] is True
    assert "Optional extras" in ok(run_cli("env")).stdout


def test_env_says_how_to_install_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    requires = ["torch>=2.5", 'matplotlib>=3.5; extra == "plot"', 'pyyaml>=6; extra == "yaml"', 'ruff; extra == "dev"']
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requires)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "6.0" if name == "pyyaml" else _missing(name))
    assert environment.optional_extras() == {
        "plot": {"packages": {"matplotlib": None}, "installed": False, "hint": 'pip install "imagenet-cli[plot]"'},
        "yaml": {"packages": {"pyyaml": "6.0"}, "installed": True, "hint": None},
    }


def _missing(name: str) -> str:
    import importlib.metadata

    raise importlib.metadata.PackageNotFoundError(name)


def test_models_table_shows_a_name_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever a row holds is shown, never acted on: no rich markup, no escape reaching the terminal."""
    from imagenet_cli.cli.printing import print_models

    row = {
        "name": "[bold]x\x1b]0;t\x07",
        "parameters": 10**6,
        "crop_size": 224,
        "resize_size": 256,
        "imagenet_acc1": 1.0,
    }
    print_models([row], as_json=False)
    out = capsys.readouterr().out
    assert "[bold]x\\x1b]0;t\\x07" in out and "\x1b" not in out
