"""Which data formats the tool reads, how each is recognised on disk, and the torchvision datasets.

Plain data and `os` only, no torch: the configuration consults it while `--help` must stay fast.
torchvision's constructors differ (`train=True` here, `split="test"` there), so each catalogue entry says
how to ask for its training and validation splits, and what a user must put under ROOT without network.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

FORMATS = ("auto", "imagefolder", "csv", "torchvision", "webdataset")
MANIFESTS = {"train": "train.csv", "val": "val.csv"}
SHARD_INDEX = "shards.json"
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


def url_scheme(path: str | None) -> str | None:
    """`s3`, `https`, `gs`... when DATA is a URL (read through fsspec), else None: a local path."""
    match = _SCHEME.match(path or "")
    return match.group(1).lower() if match else None


def shown(url: str) -> str:
    """A URL as messages print it: without `user:password@` or a query string, where credentials and
    signatures of presigned URLs live."""
    scheme = url_scheme(url)
    if scheme is None:
        return url
    rest = url[len(scheme) + 3 :]
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path.partition('?')[0]}"


@dataclass(frozen=True)
class CatalogEntry:
    cls: str  # the class in torchvision.datasets
    native_size: int | None  # pictures' side in pixels when all share it (None: they vary)
    train: dict[str, Any] = field(default_factory=dict)
    val: dict[str, Any] = field(default_factory=dict)
    expected: str = ""  # what to put under ROOT, for the message when it is missing


_CIFAR = "ROOT/{folder}/ (extract {url} into ROOT)"
_MNIST = "ROOT/{name}/raw/ with the four *-ubyte files (gunzip them from {url})"

DATASETS: dict[str, CatalogEntry] = {
    "cifar10": CatalogEntry(
        "CIFAR10", 32, {"train": True}, {"train": False},
        _CIFAR.format(folder="cifar-10-batches-py", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ),
    "cifar100": CatalogEntry(
        "CIFAR100", 32, {"train": True}, {"train": False},
        _CIFAR.format(folder="cifar-100-python", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ),
    "mnist": CatalogEntry(
        "MNIST", 28, {"train": True}, {"train": False},
        _MNIST.format(name="MNIST", url="https://ossci-datasets.s3.amazonaws.com/mnist/"),
    ),
    "fashion-mnist": CatalogEntry(
        "FashionMNIST", 28, {"train": True}, {"train": False},
        _MNIST.format(name="FashionMNIST", url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    ),
    "kmnist": CatalogEntry(
        "KMNIST", 28, {"train": True}, {"train": False},
        _MNIST.format(name="KMNIST", url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    ),
    "svhn": CatalogEntry(
        "SVHN", 32, {"split": "train"}, {"split": "test"},
        "ROOT/train_32x32.mat and ROOT/test_32x32.mat (from http://ufldl.stanford.edu/housenumbers/)",
    ),
    "stl10": CatalogEntry(
        "STL10", 96, {"split": "train"}, {"split": "test"},
        "ROOT/stl10_binary/ (extract http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz into ROOT)",
    ),
    "imagenette": CatalogEntry(
        "Imagenette", None, {"split": "train"}, {"split": "val"},
        "ROOT/imagenette2/ (extract https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz into ROOT)",
    ),
}  # fmt: skip


def lookup(name: str) -> CatalogEntry:
    entry = DATASETS.get(name.lower())
    if entry is None:
        raise UserError(f"unknown --dataset {name!r}; the tool reads {', '.join(DATASETS)}")
    return entry


def detect(path: str | None, manifests: bool = False) -> str:
    """The format of a data directory, when its layout says so unambiguously."""
    if manifests:
        return "csv"
    if url_scheme(path):  # a URL can only be listed through its index: shards are what it may hold
        return "webdataset"
    if not path or not os.path.isdir(path):
        raise UserError(f"data directory not found: {path}")
    present = {
        "imagefolder": any(os.path.isdir(os.path.join(path, split)) for split in MANIFESTS),
        "csv": any(os.path.isfile(os.path.join(path, f)) for f in MANIFESTS.values()),
        "webdataset": os.path.isfile(os.path.join(path, SHARD_INDEX)) or bool(glob.glob(f"{path}/*.tar")),
    }
    found = [name for name, there in present.items() if there]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(
            f"{path} holds no dataset this tool recognises: expected train/ and val/ class folders "
            "(ImageNet layout), train.csv and val.csv manifests, or *.tar shards (see `imagenet-cli make-shards`)"
        )
    raise UserError(f"{path} holds several datasets ({', '.join(found)}); choose one with --data-format")
