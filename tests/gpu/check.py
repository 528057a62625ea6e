"""The parts of scripts/gpu-check.sh that are easier in Python: making its JPEG dataset, and its summary.
`python3 -m tests.gpu.check jpegs ROOT [--unique 256] [--train 2048] [--val 256]` and
`python3 -m tests.gpu.check summary WORKDIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

CLASSES = 4
SIZE = (500, 375)  # ImageNet's most common size, at its usual quality (as `benchmark` generates)


def _write_one(path: str, seed: int) -> None:
    import numpy as np

    from imagenet_cli.tools.pictures import photo_like

    photo_like(np.random.default_rng(seed), *SIZE).save(path, quality=90)


def make_jpegs(root: Path, unique: int, train: int, val: int) -> None:
    """`unique` photo-like JPEGs, linked (or copied) into ROOT/train and ROOT/val class folders as
    `train` and `val` files: decoding costs the same, and generating thousands would cost a minute."""
    originals = root / "unique"
    originals.mkdir(parents=True, exist_ok=True)
    paths = [str(originals / f"{i:05d}.jpg") for i in range(unique)]
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_one, paths, range(unique)))
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            folder = root / split / f"class_{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{i:05d}.jpg"
            try:
                os.link(paths[i % unique], target)
            except OSError:
                target.write_bytes(Path(paths[i % unique]).read_bytes())


# -- the summary -------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(work: Path, part: str) -> str | None:
    """None when the part succeeded; otherwise why not."""
    try:
        code = int((work / f"{part}.rc").read_text().strip())
    except (OSError, ValueError):
        return "not run (out of time)"
    if code == 0:
        return None
    return "timed out" if code in (124, 137) else f"failed (exit {code}; see {work / (part + '.log')})"


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _tests_line(work: Path) -> str:
    status = _status(work, "tests")
    log = _text(work / "tests.log")
    counts = [
        line.strip(" =")
        for line in log.splitlines()
        if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)\b|no tests ran", line)
    ]
    result = counts[-1] if counts else "no result"
    verdict = "PASS" if status is None else f"FAIL [{status}]"
    return f"cuda tests ({_text(work / 'tests.runner') or '?'}): {result} -> {verdict}"


def _benchmark_line(work: Path, part: str, label: str) -> str:
    status = _status(work, part)
    report = _read_json(work / f"{part}.json")
    if status is not None or not report or not report.get("results"):
        return f"{label}: {status or 'no result'}"
    row = report["results"][0]
    return (
        f"{label}: ours {row['ours_images_per_second']:,.0f} img/s ({report.get('compute', '?')}) vs the reference's "
        f"fp32 NCHW way {row['baseline_images_per_second']:,.0f} img/s = {row['ratio']:.2f}x  [{row['what']}]"
    )


def _training_line(work: Path, part: str, label: str) -> str:
    status = _status(work, part)
    path = work / part / "metrics.jsonl"
    if status is not None or not path.exists():
        return f"{label}: {status or 'no metrics'}"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [m for m in lines if m.get("type") == "train"]
    steady = steps[1:] or steps  # the first interval pays for cuDNN's autotuning and the workers' start
    if not steady:
        return f"{label}: no training steps recorded"
    rate = statistics.median(m["images_per_second"] for m in steady)
    wait = statistics.median(m["data_wait"] for m in steady)
    peak = max(m["memory_mb"] for m in lines if "memory_mb" in m)
    return f"{label}: {rate:,.0f} img/s (waiting for data {100 * wait:.0f}% of the time), peak {peak / 1024:.1f} GiB"


def summary(work: Path) -> int:
    machine = _text(work / "machine.txt") or "?"
    e2e = _read_json(work / "bench_e2e.json")
    workers = re.search(r"(\d+) workers", e2e["results"][0]["part"]).group(1) if e2e and e2e.get("results") else "?"
    elapsed = _text(work / "elapsed") or "?"
    print(f"\n==== gpu-check summary: {machine} ====")
    print(_tests_line(work))
    print(_benchmark_line(work, "bench_train", "benchmark train, synthetic data"))
    print(_benchmark_line(work, "bench_e2e", "benchmark e2e, from JPEG files"))
    print("train from those JPEGs, 1 epoch (median img/s after the first interval; peak: the most GPU memory "
          "torch allocated):")  # fmt: skip
    print(_training_line(work, "train_workers", f"  decoded by {workers} loader workers"))
    print(_training_line(work, "train_device", "  decoded by nvJPEG on the GPU (--decode-on-device)"))
    print(f"total {elapsed}")
    parts = ("tests", "bench_train", "jpegs", "bench_e2e", "train_workers", "train_device")
    return 0 if all(_status(work, part) is None for part in parts) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.gpu.check")
    commands = parser.add_subparsers(dest="command", required=True)
    jpegs = commands.add_parser("jpegs", help="make the JPEG dataset")
    jpegs.add_argument("root", type=Path)
    jpegs.add_argument("--unique", type=int, default=256)
    jpegs.add_argument("--train", type=int, default=2048)
    jpegs.add_argument("--val", type=int, default=256)
    report = commands.add_parser("summary", help="print the summary of a gpu-check work directory")
    report.add_argument("work", type=Path)
    args = parser.parse_args()
    if args.command == "jpegs":
        make_jpegs(args.root, args.unique, args.train, args.val)
        return 0
    return summary(args.work)


if __name__ == "__main__":
    sys.exit(main())
