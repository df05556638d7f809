"""Where a served spiking map's batch goes: each stage of ``distances`` by batch size, from a saved map.

    .venv/bin/python benchmarks/map_batch_cost.py --map maps/nordland-all --threads 2

For batches of 1, 4, 8 and 16 blank 64x32 frames, the median milliseconds of: preprocessing and rate coding, the
drive product (the bfloat16 readout, read once per batch), the rate readout, the place scores, and the whole
ensemble score. Also how dense the readout weights are, and the same product in int8 (``torch._int_mm``, random
int8 operands of the same shapes) to see whether an 8-bit readout would be cheaper on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from vpr.snn.encoding import query_rates
from vpr.snn.model import SpikingMap
from vpr.snn.readout import place_scores, query_responses


def median_ms(work, repeats: int = 9) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def stage_times(spiking_map: SpikingMap, readout, int8_weights: torch.Tensor, batch: int) -> list[float]:
    """Median ms of each stage for ``batch`` blank frames (the table's columns after the batch size)."""
    network = spiking_map.config.network
    frames = [np.zeros((32, 64), dtype=np.uint8)] * batch
    rates = query_rates(frames, network)
    drives = readout.drives(rates)
    responses = query_responses(drives, readout.thresholds, readout.module, network)
    int8_rates = torch.randint(0, 127, (max(batch, 17), rates.shape[-1]), dtype=torch.int8)  # _int_mm needs > 16 rows
    return [
        median_ms(lambda: query_rates(frames, network)),
        median_ms(lambda: readout.drives(rates)),
        median_ms(lambda: query_responses(drives, readout.thresholds, readout.module, network)),
        median_ms(lambda: place_scores(responses, readout.slot, readout.weight, readout.n_members * readout.n_places,
                                       reduce=network.place_readout)),
        median_ms(lambda: spiking_map.scores(query_rates(frames, network), readout)),
        median_ms(lambda: torch._int_mm(int8_rates, int8_weights)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", required=True, help="A saved spiking map (spikebot vpr build-map).")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spiking_map = SpikingMap.load(args.map)
    readout = spiking_map.compile()
    weights = readout.scaled_weights.float().abs()
    print(f"{args.map}: {tuple(readout.scaled_weights.shape)} readout weights ({readout.scaled_weights.dtype}), "
          f"{(weights <= 1e-3 * weights.max()).float().mean().item():.1%} of them below 0.1% of the largest; "
          f"{args.threads} torch threads")
    int8_weights = torch.randint(-127, 127, tuple(reversed(readout.scaled_weights.shape)), dtype=torch.int8)
    print("| batch | preprocess + rates | drive product | rate readout | place scores | whole score | int8 product |")
    print("|---|---|---|---|---|---|---|")
    for batch in (1, 4, 8, 16):
        cells = stage_times(spiking_map, readout, int8_weights, batch)
        print(f"| {batch} | " + " | ".join(f"{ms:.1f}" for ms in cells) + " |")

if __name__ == "__main__":
    main()
