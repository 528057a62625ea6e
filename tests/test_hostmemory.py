"""CPU runs keep freed host memory for the next step instead of faulting it in from the kernel again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import cli_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")

# A training step in miniature: a 64 MiB buffer written in full, freed, and asked for again. Prints the
# page faults each later round takes (the first round's pages come from the kernel either way).
PROBE = """
import ctypes, resource, sys
{setup}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(4):
    before = faults()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    counts.append(faults() - before)
print(max(counts[1:]))
"""
PAGES = (64 << 20) // 4096


def later_round_faults(setup: str = "", **env: str) -> int:
    probe = PROBE.format(setup=setup)
    result = subprocess.run([sys.executable, "-c", probe], env=cli_env(**env), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


KEEP = "from imagenet_cli.run import hostmemory; assert hostmemory.keep_freed_memory()"


def test_glibc_hands_a_large_block_back_and_faults_it_in_again_every_time():
    assert later_round_faults() >= PAGES * 0.9


def test_a_cpu_process_reuses_the_pages_of_a_freed_block():
    assert later_round_faults(KEEP) < PAGES * 0.01


def test_a_cpu_run_sets_the_allocator_up_before_training():
    setup = (
        "import torch; from imagenet_cli.run import worker; from imagenet_cli.config import build_config;"
        "from imagenet_cli.core.context import DistContext;"
        "worker.configure_process(build_config('train', {'fake': True}), DistContext(0, 0, 1, 1, torch.device('cpu')))"
    )
    assert later_round_faults(setup) < PAGES * 0.01


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}])
def test_an_allocator_the_user_configured_is_left_alone(env):
    setup = "from imagenet_cli.run import hostmemory; assert not hostmemory.keep_freed_memory()"
    if "LD_PRELOAD" in env:  # only the name matters here; nothing is really preloaded
        setup = "import os; os.environ['LD_PRELOAD'] = " + repr(env.pop("LD_PRELOAD")) + "; " + setup
    assert later_round_faults(setup, **env) >= PAGES * 0.9
