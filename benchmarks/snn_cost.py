"""Cost of a spiking map on this machine: training time and peak memory, map size, query latency.

    SPIKEBOT_DATA=../shared/datasets .venv/bin/python benchmarks/snn_cost.py \
        --protocol nordland_trimmed:summer:winter:test --config configs/snn_nordland.json

With ``--precision float32 --precision bfloat16`` the same trained map is read out at each readout precision,
with its query latency and the Recall@1 it gives on the protocol's queries (run it on the calibration split to
choose; quote the test split). Prints one JSON object; docs/benchmarks.md quotes it with the date and machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vpr.datasets import load_registered
from vpr.metrics import recall_at_n
from vpr.methods.snn import SNNMethodConfig
from vpr.preprocess import preprocess
from vpr.snn.encoding import image_rates
from vpr.snn.model import SpikingMap, fingerprint_rates


def latency_ms(function, repeats: int, device: str) -> float:
    def timed_call() -> float:
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed_call()  # warm-up
    return 1000 * statistics.median(timed_call() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="nordland_trimmed:summer:winter:test")
    parser.add_argument("--config", default="configs/snn_nordland.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", "--precisions", dest="precisions", action="append", choices=("float32", "bfloat16"),
                        help="readout precisions to measure (default: the configuration's)")
    args = parser.parse_args()
    name, reference, query, split = args.protocol.split(":")
    data = load_registered(name, reference, query, split=split)
    config = SNNMethodConfig.from_file(args.config).ensemble
    reference_rates = image_rates(preprocess(data.reference, config.network.preprocess))
    query_rates = image_rates(preprocess(data.query, config.network.preprocess))

    start = time.perf_counter()
    spiking_map = SpikingMap.train(reference_rates, config, fingerprint_rates(reference_rates), device=args.device)
    training_seconds = time.perf_counter() - start
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with tempfile.TemporaryDirectory() as scratch:
        spiking_map.save(scratch)
        size_mib = sum(p.stat().st_size for p in Path(scratch).iterdir()) / 2**20
        start = time.perf_counter()
        SpikingMap.load(scratch)
        load_seconds = time.perf_counter() - start

    query_rates = query_rates.to(args.device)
    readouts = {}
    for precision in args.precisions or [config.network.readout_precision]:
        read_out = spiking_map.subset(len(spiking_map.members), readout_precision=precision)
        readout = read_out.compile().to(args.device)
        with torch.inference_mode():
            single = latency_ms(lambda: read_out.scores(query_rates[:1], readout), 50, args.device)
            batch = query_rates[:256]
            batched = latency_ms(lambda: read_out.scores(batch, readout), 5, args.device) / len(batch)
            recall = recall_at_n((-read_out.scores(query_rates, readout)).cpu().numpy(), data.ground_truth, (1,))[1]
        readouts[precision] = {"single_query_ms": round(single, 2), "batched_query_ms_per_image": round(batched, 3),
                               "readout_mib": round(readout.scaled_weights.nbytes / 2**20, 1), "recall_at_1": round(recall, 4)}
    print(json.dumps({
        "protocol": args.protocol, "config": args.config, "device": args.device,
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "places": len(reference_rates), "members": len(config.seeds),
        "modules_per_member": [m.n_modules for m in spiking_map.members],
        "neurons_read_out": readout.weight.numel(),
        "training_seconds": round(training_seconds, 1), "member_seconds": [round(s, 1) for s in spiking_map.member_seconds],
        "peak_rss_mib": round(peak_rss_mib), "map_size_mib": round(size_mib, 1), "map_load_seconds": round(load_seconds, 2),
        "readouts": readouts,
    }, indent=2))


if __name__ == "__main__":
    main()
