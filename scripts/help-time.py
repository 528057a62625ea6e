"""How long `imagenet-cli --help` takes, the whole command as a user times it, beside the interpreter's own
start-up measured in the same run. The target: under 0.3 s. Usage: .venv/bin/python scripts/help-time.py [RUNS]"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    cli = os.path.join(os.path.dirname(sys.executable), "imagenet-cli")
    bare = median_seconds([sys.executable, "-c", "pass"], runs)
    for args in (["--help"], ["train", "--help"]):
        took = median_seconds([cli, *args], runs)
        print(f"imagenet-cli {' '.join(args)}: {took:.3f} s median of {runs} (python alone {bare:.3f} s)")


if __name__ == "__main__":
    main()
