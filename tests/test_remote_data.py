"""Shards read from a URL: a real HTTP server and a real S3 API (moto's server) on loopback, the tool's own
fsspec readers talking to them. Transient failures are retried from the byte where they happened, so a run
sees the very samples, in the very order, that local files give; permanent ones are one line naming the URL."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import aiohttp
import multidict
import pytest
import torch
import yarl
from PIL import Image

from imagenet_cli.core.errors import UserError
from imagenet_cli.data import remote, shards

from .conftest import CLASSES, TINY_ARCH, cli_env, json_result, load, ok, run_cli, write_image_folder, write_photo
from .stores import http_store, s3_store

TRAIN = ("-a", TINY_ARCH, "--image-size", "32", "-b", "4", "--seed", "0", "-j", "2", "--epochs", "1")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders and their shards (small ones: 12 training shards), under one root an HTTP server serves."""
    root = tmp_path_factory.mktemp("served")
    write_image_folder(root / "folders", {c: 8 for c in CLASSES}, {"ants": 3, "bees": 2, "wasps": 2}, size=32)
    ok(run_cli("make-shards", str(root / "folders"), str(root / "shards"), "--shard-size", "6KB"))
    return root


@pytest.fixture(scope="module")
def local_run(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local")
    ok(run_cli("train", str(served / "shards"), *TRAIN, "--output-dir", str(out)))
    return out / "checkpoint.pth.tar"


def same_weights(a: Path, b: Path) -> bool:
    left, right = load(a)["state_dict"], load(b)["state_dict"]
    return all(torch.equal(left[k], right[k]) for k in left)


# -- HTTP -------------------------------------------------------------------------------------------------------


def test_training_over_http_through_a_dropped_connection_and_a_503_learns_exactly_what_local_files_teach(
    served, local_run, tmp_path
):
    """Two loader workers stream the shards; one shard's first answer is a 503, another's is cut off half-way.
    The weights are bit-identical to the run from local files: every sample once, in the same order."""
    with http_store(served) as store:
        store.faults.status["train-000003.tar"] = 503
        store.faults.drop.add("train-000007.tar")
        ok(run_cli("train", f"{store.url}/shards/", *TRAIN, "--output-dir", str(tmp_path)))
        assert store.faults.seen == {"503 train-000003.tar": 1, "drop train-000007.tar": 1}
    assert same_weights(tmp_path / "checkpoint.pth.tar", local_run)
    assert load(tmp_path / "checkpoint.pth.tar")["config"]["data"]["path"] == f"{store.url}/shards/"


def test_a_shard_read_in_small_chunks_with_failures_gives_the_local_members(served, monkeypatch):
    """Chunk boundaries, the chunk fetched ahead, a retry in the middle of a member after a cut connection
    and after a server that fell silent: the same bytes as the file."""
    monkeypatch.setattr(remote, "CHUNK", 1000)
    monkeypatch.setattr(remote, "FIRST_PAUSE", 0.01)
    monkeypatch.setattr(remote, "READ_TIMEOUT", 0.5)
    local = served / "shards" / "train-000000.tar"
    with http_store(served) as store:
        store.faults.drop.add(local.name)
        store.faults.stall[local.name] = 3.0
        fetched = list(shards._members(f"{store.url}/shards/{local.name}"))
        assert store.faults.seen == {f"drop {local.name}": 1, f"stall {local.name}": 1}
        assert store.requests[local.name] > 5
    assert fetched == list(shards._members(str(local)))


def test_check_data_and_evaluate_read_a_url(served, local_run):
    with http_store(served) as store:
        checked = json.loads(ok(run_cli("check-data", f"{store.url}/shards", "--json")).stdout)
        evaluated = json_result(run_cli("evaluate", str(local_run), f"{store.url}/shards", "--json"))
    assert checked["files"] == 31 and checked["unreadable"] == []
    assert evaluated["acc1"] == pytest.approx(load(local_run)["best_acc1"])


def test_permanent_failures_are_one_line_naming_the_url(served, tmp_path):
    """A missing index, a refusal: no retries, no traceback."""
    with http_store(served) as store:
        missing = run_cli("train", f"{store.url}/nowhere/", *TRAIN, "--output-dir", str(tmp_path))
        store.faults.status["shards.json"] = 403
        refused = run_cli("check-data", f"{store.url}/shards/")
    for result in (missing, refused):
        assert result.returncode != 0 and "Traceback" not in result.stderr
    assert missing.stderr.strip() == (
        f"error: {store.url}/nowhere/shards.json not found: shards at a URL are read through the index "
        "`make-shards` writes"
    )
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: {store.url}/shards/shards.json: HTTP 403 Forbidden") and "tried" not in line


@pytest.mark.parametrize("url", ["http://user:hunter2@127.0.0.1:9/shards/", "https://host/shards/?token=hunter2"])
def test_a_url_with_credentials_is_refused_before_they_reach_a_file(url, tmp_path):
    """config.json and every checkpoint record DATA: a password or token in it would be written out."""
    result = run_cli("train", url, *TRAIN, "--output-dir", str(tmp_path))
    assert result.returncode != 0 and "hunter2" not in result.stdout + result.stderr
    assert "give credentials through the store's environment" in result.stderr and list(tmp_path.iterdir()) == []


def test_transient_failures_are_retried_with_growing_pauses_then_named():
    url = yarl.URL("https://host/x")
    request = aiohttp.RequestInfo(url, "GET", multidict.CIMultiDictProxy(multidict.CIMultiDict()), url)
    unavailable = aiohttp.ClientResponseError(request, (), status=503, message="Service Unavailable")
    pauses: list[float] = []
    answers = iter([ConnectionResetError("reset by peer"), TimeoutError(), b"data"])

    def call() -> bytes:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert remote.retried("https://host/x", call, sleep=pauses.append) == b"data" and pauses == [0.25, 0.5]

    def always() -> None:
        raise unavailable

    with pytest.raises(UserError, match=r"^https://host/x: HTTP 503 Service Unavailable \(tried 7 times\)$"):
        remote.retried("https://host/x", always, sleep=pauses.append)
    assert remote.transient(unavailable) and not remote.transient(FileNotFoundError())
    assert not remote.transient(ValueError("a bug, or bad data: retrying would only delay the message"))


def test_a_store_without_its_package_names_the_extra_to_install(tmp_path):
    """gcsfs is not installed here: the URL is refused before any process starts."""
    result = run_cli("train", "gs://bucket/imagenet/", *TRAIN, "--output-dir", str(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == "error: gs://bucket/imagenet/shards.json: reading gs:// URLs needs pip install 'imagenet-cli[gcs]'"
    )


def test_make_shards_cannot_write_to_a_web_server(served):
    result = run_cli("make-shards", str(served / "folders"), "https://example.org/shards/")
    assert result.returncode != 0 and "cannot write to https:// URLs" in result.stderr


# -- S3 ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(served: Path) -> dict[str, str]:
    """moto's S3 server, with a bucket that `make-shards s3://...` fills."""
    import boto3

    with s3_store() as env:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], **_credentials(env)).create_bucket(Bucket="data")
        made = ok(run_cli("make-shards", str(served / "folders"), "s3://data/imagenet/", "--shard-size", "6KB",
                          env=cli_env(**env)))  # fmt: skip
        assert "train: 24 samples in 12 shard(s)" in made.stdout
        yield env


def _credentials(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def test_s3_training_resumed_mid_epoch_is_bit_identical_to_local_files(bucket, local_run, tmp_path):
    """Killed outright just after its step-2 checkpoint was saved, then resumed from the same bucket; then
    checked and evaluated there."""
    env = cli_env(**bucket)
    crashing = cli_env(**bucket, IMAGENET_CLI_FAULT="crash:epoch=0,file=checkpoint.pth.tar,point=renamed")
    killed = run_cli("train", "s3://data/imagenet/", *TRAIN, "--save-every-steps", "2", "--output-dir", str(tmp_path),
                     env=crashing)  # fmt: skip
    assert killed.returncode != 0 and load(tmp_path / "checkpoint.pth.tar")["step"] == 2
    refused = run_cli("resume", str(tmp_path / "checkpoint.pth.tar"), env=env)
    assert "give that URL again as DATA" in refused.stderr and refused.returncode != 0
    resumed = ok(run_cli("resume", str(tmp_path / "checkpoint.pth.tar"), "s3://data/imagenet/", env=env))
    assert "at epoch 0, step 2" in resumed.stdout
    assert same_weights(tmp_path / "checkpoint.pth.tar", local_run)
    checked = json.loads(ok(run_cli("check-data", "s3://data/imagenet", "--json", env=env)).stdout)
    assert checked["files"] == 31 and checked["unreadable"] == []
    evaluated = json_result(run_cli("evaluate", str(tmp_path / "checkpoint.pth.tar"), "s3://data/imagenet/", "--json",
                                    env=env))  # fmt: skip
    assert evaluated["images"] == 7 and evaluated["acc1"] == pytest.approx(load(local_run)["best_acc1"])
    output = killed.stdout + killed.stderr + resumed.stdout + resumed.stderr
    assert bucket["AWS_SECRET_ACCESS_KEY"] not in output


# -- re-encoded shards ------------------------------------------------------------------------------------------


def test_make_shards_max_side_shrinks_large_pictures_once_and_keeps_small_ones(tmp_path):
    for split in ("train", "val"):
        for name in ("ants", "bees"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
        write_photo(tmp_path / "data" / split / "ants" / "wide.jpg", 500, 375, seed=1)
        write_photo(tmp_path / "data" / split / "ants" / "tall.png", 90, 1200, seed=2)
        write_photo(tmp_path / "data" / split / "bees" / "small.jpg", 90, 60, seed=3)
    ok(run_cli("make-shards", str(tmp_path / "data"), str(tmp_path / "shards"), "--max-side", "100", "--quality", "85"))
    index = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert index["reencoded"] == {"max_side": 100, "quality": 85}
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    pictures = {name: Image.open(io.BytesIO(data)) for name, data in members.items() if "cls" not in name}
    sizes = {name: (p.format, p.size) for name, p in pictures.items()}
    assert sizes == {"00000000.jpg": ("JPEG", (8, 100)), "00000001.jpg": ("JPEG", (100, 75)),
                     "00000002.jpg": ("JPEG", (90, 60))}  # fmt: skip
    assert members["00000002.jpg"] == (tmp_path / "data" / "train" / "bees" / "small.jpg").read_bytes()
    train = ("-a", TINY_ARCH, "--image-size", "32", "-b", "3", "--epochs", "1", "-j", "0")
    trained = ok(run_cli("train", str(tmp_path / "shards"), *train, "--output-dir", str(tmp_path)))
    checked = ok(run_cli("check-data", str(tmp_path / "shards")))  # at 224 px: larger than the pictures now are
    assert "shrunk" not in trained.stdout + trained.stderr
    assert "shards hold pictures shrunk to 100 px on their longer side" in checked.stdout + checked.stderr
    refused = run_cli("make-shards", str(tmp_path / "data"), str(tmp_path / "s2"), "--max-side", "8")
    assert refused.stderr.strip() == "error: --max-side must be from 16 to 65535 pixels, got 8"
