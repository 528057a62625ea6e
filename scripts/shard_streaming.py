"""Figures for shards at cluster scale, each against its baseline in the same run, measured in turns:

1. streaming: the training input pipeline (224 px crops, DataLoader with --workers) reading the same shards
   from a loopback HTTP server vs from local files: the cost of the network path itself.
2. --max-side: shards re-encoded by `make-shards --max-side 320` vs the original files, for JPEGs of 500x375
   (ImageNet's usual size) and of 1600x1200: pipeline images/s on one core, and short training runs from
   each (images/s and best top-1; the same seeds on both, so only the shards differ, and two seeds show
   how far top-1 moves by chance alone).

The pictures are Fashion-MNIST's (Debian's dataset-fashion-mnist, or --fashion-mnist DIR), upscaled into
photograph-like JPEGs of the given sizes, so that decoding costs what it costs for photos and a short run
learns something. Run from the checkout (it borrows the tests' loopback HTTP server):

    .venv/bin/python scripts/shard_streaming.py [--per-class 100] [--epochs 6] [--seeds 0 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagenet_cli.core.context import DistContext
from imagenet_cli.data import shards
from imagenet_cli.data.presets import TrainPreset
from imagenet_cli.tools.pictures import photo_like
from tests.stores import http_store

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SIZES = {"500x375": (500, 375), "1600x1200": (1600, 1200)}


def fashion_mnist(source: Path) -> tuple[np.ndarray, np.ndarray]:
    def idx(name: str, header: int) -> np.ndarray:
        return np.frombuffer(gzip.decompress((source / name).read_bytes())[header:], dtype=np.uint8)

    return idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), idx("train-labels-idx1-ubyte.gz", 8)


def write_photos(
    images: np.ndarray, labels: np.ndarray, root: Path, size: tuple[int, int], per_class: int, dim: int = 1
) -> Path:
    """Class folders of JPEGs (quality 90): each garment upscaled onto a photograph-like background, its
    brightness divided by `dim` (at full brightness, short runs stayed at chance: measured twice); half as
    many validation pictures as training ones, so that a top-1 difference of a few points is not noise."""
    rng = np.random.default_rng(0)
    width, height = size
    for label in range(10):
        chosen = np.flatnonzero(labels == label)[: per_class + per_class // 2]
        for n, i in enumerate(chosen):
            picture = photo_like(rng, width, height).point(lambda v: v // dim)
            garment = Image.fromarray(images[i]).resize((height, height), Image.BICUBIC)
            picture.paste(Image.merge("RGB", [garment] * 3), ((width - height) // 2, 0), garment)
            folder = root / ("train" if n < per_class else "val") / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            picture.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "imagenet_cli", *args], check=True, capture_output=True, text=True)
    return done.stdout


def stream(root: str, workers: int, batch: int = 32) -> DataLoader:
    """The training split as the tool streams it, decoded to 224 px crops, in `workers` persistent workers."""
    dataset = shards.ShardStream(shards.read_index(root).splits["train"], TrainPreset(224), shuffle_buffer=0)
    dataset.place(DistContext(0, 0, 1, 1, torch.device("cpu")), batch, seed=0, shuffle=False, skip_bad=False)
    return DataLoader(dataset, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                      collate_fn=lambda samples: samples)  # fmt: skip


def rate(loader: DataLoader) -> float:
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += len(batch)
    return images / (time.perf_counter() - start)


def in_turns(loaders: dict[str, DataLoader], rounds: int) -> dict[str, float]:
    """Median images/s of each, passes alternated (after one warm-up pass each)."""
    for loader in loaders.values():
        rate(loader)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, loader in loaders.items():
            rates[name].append(rate(loader))
    return {name: statistics.median(values) for name, values in rates.items()}


def short_run(data: str, out: Path, epochs: int, workers: int, seed: int) -> dict[str, float]:
    cli("train", data, "-a", "resnet18", "--epochs", str(epochs), "-b", "32", "--image-size", "64", "--seed", str(seed),
        "--crop-scale", "0.35", "1", "-j", str(workers), "--lr", "0.1", "--lr-warmup-epochs", "1",
        "--lr-scheduler", "cosine", "-q", "--output-dir", str(out))  # fmt: skip
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs_ = [line for line in lines if line["type"] == "epoch"]
    return {"best_top1": max(e["val_acc1"] for e in epochs_), "train_img_s": statistics.median(
        e["images_per_second"] for e in epochs_)}  # fmt: skip


def short_runs(data: str, out: Path, args: argparse.Namespace) -> dict[str, object]:
    """A short run on each seed: best top-1 of each and their mean (the spread between seeds is the noise a
    difference between two kinds of shards must exceed), and the median training images/s."""
    runs = [short_run(data, out / f"seed-{seed}", args.epochs, args.workers, seed) for seed in args.seeds]
    return {"best_top1": [run["best_top1"] for run in runs],
            "mean_best_top1": statistics.mean(run["best_top1"] for run in runs),
            "train_img_s": statistics.median(run["train_img_s"] for run in runs)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion-mnist", type=Path, default=FASHION_MNIST)
    parser.add_argument(
        "--per-class", type=int, default=100, help="training pictures per class (half as many more for val)"
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="a short run on each kind per seed")
    parser.add_argument("--dim", type=int, default=3, help="divide the background's brightness by this")
    args = parser.parse_args()
    images, labels = fashion_mnist(args.fashion_mnist)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name, size in SIZES.items():
            write_photos(images, labels, root / name / "folders", size, args.per_class, args.dim)
            cli("make-shards", str(root / name / "folders"), str(root / name / "original"), "--shard-size", "4MB")
            cli("make-shards", str(root / name / "folders"), str(root / name / "max320"), "--shard-size", "4MB",
                "--max-side", "320", "--quality", "90")  # fmt: skip
        report: dict[str, object] = {"torch_threads": torch.get_num_threads(), "workers": args.workers}
        with http_store(root) as store:
            local, remote = str(root / "500x375" / "original"), f"{store.url}/500x375/original/"
            streamed = in_turns(
                {"local": stream(local, args.workers), "http": stream(remote, args.workers)}, args.rounds
            )
        report["streaming_500x375"] = {**streamed, "http/local": streamed["http"] / streamed["local"]}
        torch.set_num_threads(1)
        for name in SIZES:
            per_core = in_turns(
                {kind: stream(str(root / name / kind), 0) for kind in ("original", "max320")}, args.rounds
            )
            runs = {kind: short_runs(str(root / name / kind), root / name / f"run-{kind}", args)
                    for kind in ("original", "max320")}  # fmt: skip
            report[f"max_side_{name}"] = {
                "per_core_img_s": per_core, "per_core_ratio": per_core["max320"] / per_core["original"],
                "runs": runs, "train_img_s_ratio": runs["max320"]["train_img_s"] / runs["original"]["train_img_s"],
                "shard_bytes": {kind: sum(p.stat().st_size for p in (root / name / kind).glob("*.tar"))
                                for kind in ("original", "max320")},
            }  # fmt: skip
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
