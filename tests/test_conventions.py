"""Every package the code imports is declared in pyproject.toml (a dependency, or the extra that brings it),
and TOML recipes read on every Python the project supports."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml"}  # import name -> distribution, where they differ
PROVIDED = {"tomllib"}  # the standard library's from 3.11; tomli before (checked below)

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in requirements}


def _imported_packages() -> set[str]:
    """Top-level names of every module the package imports, lazy imports included."""
    names: set[str] = set()
    for path in (ROOT / "imagenet_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"imagenet_cli"} - PROVIDED


def test_every_imported_package_is_declared():
    declared = _names(PROJECT["dependencies"])
    extras = {name: _names(reqs) for name, reqs in PROJECT["optional-dependencies"].items() if name != "dev"}
    everything = declared.union(*extras.values())
    missing = sorted(p for p in _imported_packages() if DISTRIBUTIONS.get(p, p).lower() not in everything)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert {"pillow", "torch", "torchvision", "typer", "rich", "numpy"} <= declared


def test_tomli_is_declared_where_tomllib_is_missing():
    assert "tomli>=2; python_version < '3.11'" in PROJECT["dependencies"]


def test_the_package_version_is_the_projects():
    import imagenet_cli

    assert imagenet_cli.__version__ == PROJECT["version"]
