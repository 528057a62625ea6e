"""Distributed runs with real processes and real Gloo process groups on loopback: no mocks.

Covers every launch mode (spawned workers, torchrun, two "nodes"), gradient synchronisation on the CPU
backend, exact distributed evaluation, and checkpoints moving between DDP and plain models.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from imagenet_cli.checkpoint import BEST_NAME, CHECKPOINT_NAME
from imagenet_cli.config import DistConfig
from imagenet_cli.core import models
from imagenet_cli.core.errors import UserError
from imagenet_cli.data.loaders import FakeImages, Normalizer, train_loader
from imagenet_cli.report.live import Reporter
from imagenet_cli.run import distributed
from imagenet_cli.run.distributed import Topology, first_slurm_host, plan, slurm_hostnames
from imagenet_cli.train import compute
from imagenet_cli.train.engine import TrainParts, train_one_epoch

from .conftest import FAST_FAKE, TINY_ARCH, TWO_RANKS, cli_env, json_result, load, ok, run_cli, run_module, start_cli

# --- where each process sits: read from the launcher's environment, else from the flags ---------------


def test_torchrun_environment_decides_the_layout():
    env = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}
    topology = plan(DistConfig(multiprocessing_distributed=True), env)
    assert (topology.launcher, topology.source, topology.init_method) == ("external", "torchrun", "env://")
    assert (topology.global_rank(0), topology.local_rank(0), topology.world_size) == (5, 1, 16)


def test_slurm_tasks_find_node_zero_without_talking():
    env = {
        "SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_JOB_ID": "4242",
    }  # fmt: skip
    topology = plan(DistConfig(), env)
    assert (topology.source, topology.world_size, topology.nproc_per_node) == ("slurm", 8, 4)
    assert (topology.global_rank(0), topology.local_rank(0)) == (3, 3)
    assert topology.init_method == f"tcp://gpu017:{20000 + 4242}"


def test_a_single_task_slurm_allocation_is_a_plain_run():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"}
    assert plan(DistConfig(), env).launcher == "single"


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("node7", "node7"), ("gpu[003-005,010],cpu1", "gpu003"), ("a-b[1,2]", "a-b1"), ("x1,x2", "x1")],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_slurm_host(nodelist) == host


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("n01", ["n01"]),
        ("n[01-03]", ["n01", "n02", "n03"]),
        ("n[1,3,5-6]", ["n1", "n3", "n5", "n6"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[01-02]-ib", ["n01-ib", "n02-ib"]),
        ("rack1-n[001-004]-eth0", ["rack1-n001-eth0", "rack1-n002-eth0", "rack1-n003-eth0", "rack1-n004-eth0"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        ("r[1-2]n[1-2]-ib", ["r1n1-ib", "r1n2-ib", "r2n1-ib", "r2n2-ib"]),
        # three brackets: SLURM's hostlist.c loops over the prefix's last bracket outermost
        ("a[1-2]b[3-4]c[5-6]", ["a1b3c5", "a1b3c6", "a2b3c5", "a2b3c6", "a1b4c5", "a1b4c6", "a2b4c5", "a2b4c6"]),
        ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
        ("gpu[003-005,010],cpu1", ["gpu003", "gpu004", "gpu005", "gpu010", "cpu1"]),
    ],
)
def test_slurm_node_lists_expand_as_slurm_expands_them(nodelist, hosts):
    assert slurm_hostnames(nodelist) == hosts
    assert first_slurm_host(nodelist) == hosts[0]  # node 0: MASTER_ADDR


def test_a_suffixed_node_list_gives_node_zeros_full_name_as_the_rendezvous_host():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_NODELIST": "rack1-n[001-002]-ib", "SLURM_JOB_ID": "7"}  # fmt: skip
    assert plan(DistConfig(), env).init_method == "tcp://rack1-n001-ib:20007"


def test_scontrol_decides_the_node_list_when_it_is_installed(tmp_path, monkeypatch):
    """SLURM's own expansion wins over the parser: a site may name its nodes in ways only it knows."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "%s\\n" "head-$3" second\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert first_slurm_host("n[01-02]-ib") == "head-n[01-02]-ib"


@pytest.mark.parametrize("nodelist", ["n[01-02", "n[3-1]", "n[a-b]"])
def test_a_node_list_that_cannot_be_read_asks_for_master_addr(nodelist):
    with pytest.raises(UserError, match="set MASTER_ADDR"):
        first_slurm_host(nodelist)


def test_local_multiprocessing_needs_no_url_and_counts_nodes():
    local = plan(DistConfig(multiprocessing_distributed=True, nproc_per_node=2), env={})
    assert local.launcher == "spawn" and local.world_size == 2 and local.init_method.startswith("tcp://127.0.0.1:")
    nodes = plan(
        DistConfig(multiprocessing_distributed=True, nproc_per_node=4, world_size=3, rank=2, dist_url="tcp://h:1"), {}
    )
    assert (nodes.world_size, nodes.global_rank(1)) == (12, 9)


@pytest.mark.parametrize(
    "cfg",
    [
        DistConfig(multiprocessing_distributed=True, world_size=2, nproc_per_node=1),
        DistConfig(world_size=2, rank=1),
    ],
)
def test_several_nodes_need_a_rendezvous_url(cfg):
    with pytest.raises(UserError, match="--dist-url"):
        plan(cfg, env={})


# --- gradients are synchronised on the CPU backend too -----------------------------------------------


def _train_two_replicas(index: int, port: int, out: str) -> None:
    topology = Topology("spawn", 2, 2, init_method=f"tcp://127.0.0.1:{port}", source="spawned")
    ctx = distributed.setup(DistConfig(multiprocessing_distributed=True, nproc_per_node=2), topology, index)
    try:
        results = {}
        for use_ddp in (True, False):
            torch.manual_seed(100 + ctx.rank)  # different starting weights per rank: DDP must make them agree
            model = models.build_model(TINY_ARCH, 4)
            model = compute.wrap_model(model, ctx, False) if use_ddp else model
            loader = train_loader(FakeImages(32, 4, 32, seed=0), ctx, batch_size=8, workers=0, seed=0)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            parts = TrainParts(
                model, torch.nn.CrossEntropyLoss(), optimizer, Normalizer(ctx.device), ctx, Reporter(), 10, 4
            )
            train_one_epoch(parts, loader, epoch=0)
            params = torch.cat([p.detach().flatten() for p in models.unwrap(model).parameters()])
            gathered = [torch.empty_like(params) for _ in range(ctx.world_size)]
            dist.all_gather(gathered, params)
            results[use_ddp] = torch.equal(gathered[0], gathered[1])
        seen = torch.tensor([index for index, _seed in loader.sampler])
        all_seen = [torch.empty_like(seen) for _ in range(ctx.world_size)]
        dist.all_gather(all_seen, seen)
        if ctx.is_main:
            torch.save({"ddp_equal": results[True], "plain_equal": results[False], "shards": all_seen}, out)
    finally:
        distributed.teardown()


def test_ddp_keeps_replicas_identical_on_gloo(tmp_path):
    """Two real processes forked from the suite's server, which has imported torch once (see run_cli)."""
    out = tmp_path / "result.pt"
    torch.multiprocessing.start_processes(
        _train_two_replicas, args=(distributed.free_port(), str(out)), nprocs=2, start_method="forkserver"
    )
    result = torch.load(out, weights_only=True)
    assert not set(result["shards"][0].tolist()) & set(result["shards"][1].tolist())  # different data per rank
    assert result["ddp_equal"]
    assert not result["plain_equal"]  # the control: without DDP the ranks drift apart


# --- every launch mode through the real command line -------------------------------------------------

TRAIN_TINY = ("train", *FAST_FAKE, "-a", TINY_ARCH, "--epochs", "1", "-b", "16", "--lr", "0.01")
# `torchrun --standalone --nproc-per-node 2`: torch's launcher, forked as run_cli forks a command; the ranks it
# starts are fresh interpreters, as under a real torchrun.
TORCHRUN = ("torch.distributed.run", "--standalone", "--nproc-per-node", "2")


def test_torchrun_starts_every_rank(tmp_path):
    result = ok(run_module(*TORCHRUN, "-m", "imagenet_cli", *TRAIN_TINY, "--output-dir", str(tmp_path)))
    assert "2 processes (torchrun, gloo" in result.stdout
    assert (tmp_path / CHECKPOINT_NAME).exists() and (tmp_path / BEST_NAME).exists()


def test_a_failing_torchrun_rank_names_its_error_in_torchruns_summary(tmp_path):
    """The failing rank writes TorchElastic's error file, so torchrun's "Root Cause" shows its error and
    traceback, not `error_file: <N/A>`; the rank whose collective broke when it exited waits before
    recording its own failure, so it never takes the root cause's place (torchrun orders failures by
    whole seconds, the lowest rank first on a tie)."""
    env = cli_env(IMAGENET_CLI_FAULT="raise:rank=1,step=2")
    result = run_module(*TORCHRUN, "-m", "imagenet_cli", *TRAIN_TINY, "--output-dir", str(tmp_path), env=env)
    assert result.returncode != 0
    root_cause = result.stderr[result.stderr.index("Root Cause") :]
    assert "<N/A>" not in root_cause, root_cause
    assert "imagenet_cli.core.faults.InjectedFault: injected failure at epoch 0, step 2" in root_cause, root_cause
    assert re.search(r"rank\s+: 1 \(local_rank: 1\)", root_cause), root_cause


def test_two_nodes_of_two_workers_train_together_on_loopback(tmp_path):
    """Each "node" is a launcher process of its own, started at the same time, spawning its two workers."""
    url = f"tcp://127.0.0.1:{distributed.free_port()}"
    node_args = [*TRAIN_TINY, "--multiprocessing-distributed", "--nproc-per-node", "2", "--world-size", "2"]
    node_args += ["--dist-url", url]

    def node(rank: int) -> subprocess.CompletedProcess[str]:
        return run_cli(*node_args, "--rank", str(rank), "--output-dir", str(tmp_path / f"node{rank}"))

    with ThreadPoolExecutor(2) as launchers:
        outputs = list(launchers.map(node, (0, 1)))
    assert [output.returncode for output in outputs] == [0, 0], outputs
    assert "4 processes (spawned, gloo, 2 node(s)), batch 16 (4 per process)" in outputs[0].stdout
    assert (tmp_path / "node0" / CHECKPOINT_NAME).exists()
    assert not (tmp_path / "node1" / CHECKPOINT_NAME).exists()  # only global rank 0 writes


def test_a_local_run_listens_on_loopback_only(tmp_path):
    """A run confined to this machine must not be reachable from the network: its rendezvous store and
    Gloo's own listeners sit on loopback (torch's TCPStore would listen on every interface)."""
    with start_cli("train", "--fake-data", "--image-size", "32", "-a", TINY_ARCH, "--fake-train-images", "100000",
                   "--fake-val-images", "32", "-b", "8", "-j", "0", "-p", "1", "--epochs", "1", *TWO_RANKS,
                   "--output-dir", str(tmp_path)) as launcher:  # fmt: skip
        launcher.wait_for(re.compile(r"Epoch: \[0\]\[\s*3/"))
        addresses = _listening_addresses([launcher.pid, *_descendants(launcher.pid)])
        launcher.send_signal(signal.SIGTERM)
        launcher.finish(timeout=120)
    assert addresses, "the run's processes listen on nothing: no rendezvous found"
    assert all(_is_loopback(address) for address, _port in addresses), addresses


def _descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for child in found for p in [int(child), *_descendants(int(child))]]


def _listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket these processes listen on, from the kernel's own tables:
    the sockets' inodes in /proc/PID/fd, matched with /proc/net/tcp and tcp6 rows in state LISTEN (0A)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)  # each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(family, words), int(port, 16)))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@pytest.fixture(scope="module")
def folder_checkpoint(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("folder_run")
    ok(run_cli("train", str(image_folder), "-a", TINY_ARCH, "--epochs", "2", "-b", "8", "--lr", "0.01",
               "--image-size", "32", "-j", "0", "--seed", "0", "--output-dir", str(out)))  # fmt: skip
    return out / CHECKPOINT_NAME


def test_distributed_evaluation_counts_every_image_once(folder_checkpoint, image_folder):
    """13 validation images over 2 ranks: uneven shards (7 and 6), the same figures as one process. (Three
    ranks, 11, 11 and 10 images: test_process_counts.py, evaluate on three ranks.)"""
    common = ("evaluate", str(folder_checkpoint), str(image_folder), "--json", "-b", "6", "-j", "0")
    single = json_result(run_cli(*common))
    assert single["images"] == 13
    spread = json_result(run_cli(*common, "--multiprocessing-distributed", "--nproc-per-node", "2"))
    assert spread["world_size"] == 2 and spread["images"] == 13
    assert (spread["acc1"], spread["acc5"]) == (single["acc1"], single["acc5"])
    assert spread["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_a_single_process_checkpoint_resumes_under_ddp(trained_run, tmp_path):
    result = ok(
        run_cli("resume", str(trained_run / CHECKPOINT_NAME), "--epochs", "2", "--multiprocessing-distributed",
                "--nproc-per-node", "2", "--output-dir", str(tmp_path))
    )  # fmt: skip
    assert "2 processes" in result.stdout and "at epoch 1" in result.stdout
    assert load(tmp_path / CHECKPOINT_NAME)["epoch"] == 2


def test_spawned_gloo_workers_train_and_seeded_runs_repeat_exactly(image_folder, tmp_path):
    """--multiprocessing-distributed spawns Gloo workers; only the main rank talks, and the checkpoint holds
    plain weights. Each worker and loader worker is seeded (the reference seeded only the parent): random
    crops and flips repeat exactly, so two seeded runs give the same weights, and another seed does not."""

    def run(seed: str, name: str) -> tuple[dict, str]:
        result = ok(run_cli("train", str(image_folder), "-a", TINY_ARCH, "--epochs", "1", "-b", "8", "--lr", "0.01",
                            "--image-size", "32", "-j", "1", "--seed", seed, "--multiprocessing-distributed",
                            "--nproc-per-node", "2", "--output-dir", str(tmp_path / name)))  # fmt: skip
        return load(tmp_path / name / CHECKPOINT_NAME)["state_dict"], result.stdout

    (first, shown), (again, _), (other, _) = run("3", "a"), run("3", "b"), run("4", "c")
    assert "2 processes (spawned, gloo, 1 node(s)), batch 8 (4 per process)" in shown
    assert shown.count("train shufflenet") == 1  # only the main rank talks
    assert not any(k.startswith("module.") for k in first)
    models.build_model(TINY_ARCH, 3).load_state_dict(first)  # a DDP run's weights, plain model
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
