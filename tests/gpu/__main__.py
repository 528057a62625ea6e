"""`python3 -m tests.gpu [-k TEXT] [-x]`: the GPU tests without pytest, for machines that have torch and
nothing else. Calls every `test_*` function of `tests/gpu/test_*.py` in file order, giving a fresh
directory to a `tmp_path` parameter; `unittest.SkipTest` skips. The last line sums up like pytest's."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import tempfile
import time
import traceback
import unittest
from pathlib import Path

import torch

from .helpers import NO_CUDA, session_dir

HERE = Path(__file__).parent


def collect(keyword: str | None) -> list[tuple[str, object]]:
    tests = []
    for path in sorted(HERE.glob("test_*.py")):
        module = importlib.import_module(f"{__package__}.{path.stem}")
        functions = [
            f for name, f in vars(module).items()
            if name.startswith("test_") and inspect.isfunction(f) and f.__module__ == module.__name__
        ]  # fmt: skip
        for function in sorted(functions, key=lambda f: f.__code__.co_firstlineno):
            name = f"tests/gpu/{path.name}::{function.__name__}"
            if keyword is None or keyword in name:
                tests.append((name, function))
    return tests


def call(function: object) -> None:
    """The one fixture the tests use: `tmp_path`, a new empty directory."""
    parameters = inspect.signature(function).parameters  # type: ignore[arg-type]
    unknown = set(parameters) - {"tmp_path"}
    if unknown:
        raise TypeError(f"this runner provides only tmp_path, not {', '.join(sorted(unknown))}")
    kwargs = {"tmp_path": Path(tempfile.mkdtemp(dir=session_dir()))} if "tmp_path" in parameters else {}
    function(**kwargs)  # type: ignore[operator]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.gpu", description=__doc__)
    parser.add_argument("-k", dest="keyword", help="run only the tests whose name contains this text")
    parser.add_argument("-x", dest="exitfirst", action="store_true", help="stop at the first failure")
    args = parser.parse_args()
    tests = collect(args.keyword)
    start = time.perf_counter()
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    interrupted = False
    if not torch.cuda.is_available():
        counts["skipped"] = len(tests)
        print(f"SKIPPED [{len(tests)}] {NO_CUDA}")
    else:
        interrupted = run(tests, counts, args.exitfirst)
    summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "no tests ran"
    print(f"{summary} in {time.perf_counter() - start:.2f}s{' (interrupted)' if interrupted else ''}")
    return 2 if interrupted else 1 if counts["failed"] else 0


def run(tests: list[tuple[str, object]], counts: dict[str, int], exitfirst: bool) -> bool:
    """Run and count; returns whether Ctrl-C (or gpu-check's time limit) stopped the run early."""
    for name, function in tests:
        began = time.perf_counter()
        try:
            call(function)
        except unittest.SkipTest as exc:
            counts["skipped"] += 1
            print(f"SKIPPED {name}: {exc}", flush=True)
        except KeyboardInterrupt:
            print(f"INTERRUPTED {name}", flush=True)
            return True
        except Exception:
            counts["failed"] += 1
            print(f"FAILED {name} ({time.perf_counter() - began:.1f}s)\n{traceback.format_exc()}", flush=True)
            if exitfirst:
                break
        else:
            counts["passed"] += 1
            print(f"PASSED {name} ({time.perf_counter() - began:.1f}s)", flush=True)
    return False


if __name__ == "__main__":
    sys.exit(main())
