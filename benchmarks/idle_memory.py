"""How much slower memory is to read after the machine left it idle (a property of the VM, not of spikebot).

    .venv/bin/python benchmarks/idle_memory.py [--mib 27]

Sums a numpy array of ``--mib`` MiB right after the previous sum and after pauses of 0.5 and 2 s, three times
each, and prints the median milliseconds; with ``--map DIR`` (a saved spiking map) it also times one query of a
blank frame the same way. On this project's VM the first read after a pause was many times slower,
which is why benchmarks/service_load.py has ``--warmup``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def timed_after_pauses(work, label: str) -> None:
    work()
    for pause in (0.0, 0.5, 2.0):
        times = []
        for _ in range(3):
            work()  # touched just before the pause
            time.sleep(pause)
            started = time.perf_counter()
            work()
            times.append((time.perf_counter() - started) * 1e3)
        print(f"after {pause:.1f} s idle: {np.median(times):.1f} ms {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=27.0)
    parser.add_argument("--map", help="A saved spiking map (e.g. maps/nordland-all-x1) to query after pauses too.")
    args = parser.parse_args()
    values = np.random.default_rng(0).random(int(args.mib * 2**20 / 8))
    timed_after_pauses(values.sum, f"to sum {args.mib:g} MiB")
    if args.map:
        from vpr.snn.encoding import query_rates
        from vpr.snn.model import SpikingMap

        spiking_map = SpikingMap.load(args.map)
        readout, blank = spiking_map.compile(), [np.zeros((32, 64), dtype=np.uint8)]
        timed_after_pauses(lambda: spiking_map.scores(query_rates(blank, spiking_map.config.network), readout),
                           f"to query {args.map} with one frame")


if __name__ == "__main__":
    main()
