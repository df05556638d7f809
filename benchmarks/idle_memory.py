"""How much slower memory is to read after the machine left it idle (a property of the VM, not of spikebot).

    .venv/bin/python benchmarks/idle_memory.py [--mib 27]

Sums a numpy array of ``--mib`` MiB right after the previous sum and after pauses of 0.5 and 2 s, three times
each, and prints the median milliseconds. On this project's VM the first read after a pause was many times slower,
which is why benchmarks/service_load.py has ``--warmup``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=27.0)
    args = parser.parse_args()
    values = np.random.default_rng(0).random(int(args.mib * 2**20 / 8))
    values.sum()
    for pause in (0.0, 0.5, 2.0):
        times = []
        for _ in range(3):
            values.sum()  # touched just before the pause
            time.sleep(pause)
            started = time.perf_counter()
            values.sum()
            times.append((time.perf_counter() - started) * 1e3)
        print(f"after {pause:.1f} s idle: {np.median(times):.1f} ms to sum {args.mib:g} MiB")


if __name__ == "__main__":
    main()
