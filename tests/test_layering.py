"""The package's folders are layers (ARCHITECTURE.md): each imports only the layers below it, and no
modules import each other in a circle. Read from the source, so a lazy import inside a function counts."""

from __future__ import annotations

import ast
from pathlib import Path

import imagenet_cli

ROOT = Path(imagenet_cli.__file__).parent
# Lowest first; packages on one line are side by side and do not import each other.
LAYERS = [{"core"}, {"config"}, {"checkpoint", "data", "report"}, {"train"}, {"run"}, {"tools"}, {"cli"}]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The imagenet_cli modules `path` imports (a `from package import name` counts as the package)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            submodules = {f"{target}.{alias.name}" for alias in node.names} & MODULES
            found.update(submodules or {target})
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("imagenet_cli.")}


MODULES = {module_name(path) for path in ROOT.rglob("*.py")}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LEVEL else None


def test_the_import_graph_is_read_whole():
    training = imports(ROOT / "train" / "training.py", top_level_only=True)
    assert {"imagenet_cli.train.engine", "imagenet_cli.checkpoint", "imagenet_cli.core.models"} <= training


def test_every_package_is_in_a_layer():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages == set(LEVEL)


def test_no_import_runs_up_the_flow_or_sideways():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        source = package_of(module_name(path))
        if source is None:
            continue
        for target in sorted(imports(path, top_level_only=False)):
            other = package_of(target)
            if other is not None and other != source and LEVEL[other] >= LEVEL[source]:
                wrong.append(f"{module_name(path)} imports {target}")
    assert wrong == []


def test_no_modules_import_each_other_in_a_circle():
    graph = {module_name(p): imports(p, top_level_only=True) for p in ROOT.rglob("*.py")}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(module) :], module]))
        if module in done or module not in graph:
            return
        for target in sorted(graph[module]):
            if target != module and not module.startswith(target + "."):  # a package's own __init__
                visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
