"""Encoding and time step against accuracy and training cost, on the CALIBRATION split only.

Rate encoding is trained with the closed-form presentation (no time steps at all), and so are Poisson spike
counts spread over the presentation; Poisson spike trains need the step-by-step norse simulation, so their cost
grows with presentation_ms / dt_ms.

    SPIKEBOT_DATA=../shared/datasets .venv/bin/python benchmarks/snn_encoding_tradeoff.py --epochs 5
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from vpr.datasets import load_registered
from vpr.methods.snn import SNNMethodConfig
from vpr.metrics import recall_at_n
from vpr.preprocess import preprocess
from vpr.snn.encoding import image_rates
from vpr.snn.model import ModularNetwork

VARIANTS = (
    ("rate, closed form", {"encoding": "rate"}),
    ("poisson counts, closed form", {"encoding": "poisson_counts"}),
    ("poisson, dt 5 ms (70 steps)", {"encoding": "poisson", "dt_ms": 5.0}),
    ("poisson, dt 2 ms (175 steps)", {"encoding": "poisson", "dt_ms": 2.0}),
    ("poisson, dt 1 ms (350 steps)", {"encoding": "poisson", "dt_ms": 1.0}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="nordland_trimmed:summer:winter")
    parser.add_argument("--config", default="configs/snn_nordland.json")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    name, reference, query = args.protocol.split(":")
    data = load_registered(name, reference, query, split="calibration")
    network = SNNMethodConfig.from_file(args.config).ensemble.network
    reference_rates, query_rates = (image_rates(preprocess(t, network.preprocess)) for t in (data.reference, data.query))
    print(f"| encoding | epochs | calibration R@1 | training s | {len(reference_rates)} places, {name} {reference} -> {query} |")
    print("|---|---|---|---|---|")
    for label, changes in VARIANTS:
        config = dataclasses.replace(network, epochs=args.epochs, **changes)
        start = time.perf_counter()
        trained = ModularNetwork.train(reference_rates, config)
        seconds = time.perf_counter() - start
        scores = trained.compile(config.hyperactive_threshold, config.assignment).scores(query_rates)
        recall = recall_at_n((-scores).numpy(), data.ground_truth, (1,))[1]
        print(f"| {label} | {args.epochs} | {recall:.3f} | {seconds:.1f} | |", flush=True)


if __name__ == "__main__":
    main()
