"""Every test in this folder is marked `cuda`, and skipped with one reason where CUDA is absent, so the
normal suite stays green on CPU-only machines. Without CUDA the test modules are not even imported
(that would load torchvision and the tool for nothing): their test functions are read from the source,
and each is reported as skipped."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from .helpers import NO_CUDA

HERE = Path(__file__).parent


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if HERE not in module_path.parents or torch.cuda.is_available():
        return None  # the ordinary module: imported, its tests run
    return _NotImported.from_parent(parent, path=module_path)


@pytest.hookimpl(tryfirst=True)  # before `-m cuda` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cuda)


class _NotImported(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        for node in ast.parse(self.path.read_text(), str(self.path)).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield _Skipped.from_parent(self, name=node.name)


class _Skipped(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(NO_CUDA)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name
