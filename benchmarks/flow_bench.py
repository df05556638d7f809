"""Cost of the temporally dense flow estimators: parameters and latency of one 10 ms step at 128x128.

    python benchmarks/flow_bench.py                                   # default-sized untrained networks
    python benchmarks/flow_bench.py --model runs/flow/lstm --model runs/flow/spiking --threads 1 2

Each network steps through the bins of one simulated 128x128 sequence with its state carried from bin to bin,
batch 1, under ``torch.inference_mode``, as a streaming estimator would; the latency is the median over
``--steps`` steps after ``--warmup`` (the mean and 90th percentile are printed too). Contrast maximisation (numpy,
one thread whatever ``--threads`` says) is timed per bin on the same sequence. Results go to ``--out`` as JSON
with the CPU model, library versions and the load average before and after (other work on the cores inflates
latencies, two-thread ones most).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from events.flow.contrast_max import ContrastMaxConfig, contrast_max_flow
from events.flow.dataset import simulate_sequence
from events.flow.models import KINDS, FlowNet, FlowNetConfig, parameter_count
from events.flow.training import FlowModel
from events.simulator import ClipConfig
from spikebot.provenance import cpu_model, git_commit


def time_steps(step, inputs: list, warmup: int, steps: int) -> np.ndarray:
    """Seconds per call of ``step(input)`` over ``steps`` calls after ``warmup``, cycling through ``inputs``."""
    for k in range(warmup):
        step(inputs[k % len(inputs)])
    seconds = np.empty(steps)
    for k in range(steps):
        started = time.perf_counter()
        step(inputs[(warmup + k) % len(inputs)])
        seconds[k] = time.perf_counter() - started
    return seconds


def stats(seconds: np.ndarray) -> dict[str, float]:
    return {"median_ms": float(np.median(seconds) * 1e3), "mean_ms": float(seconds.mean() * 1e3),
            "p90_ms": float(np.percentile(seconds, 90) * 1e3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="trained model folders (default: both kinds, "
                                                                      "default sizes, untrained)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--cm-bins", type=int, default=10, help="bins timed for contrast maximisation (0: skip)")
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("runs/flow/bench.json"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    sequence = simulate_sequence(ClipConfig(height=args.size, width=args.size, duration_ms=300, seed=args.seed,
                                            max_speed_px_s=400.0))
    networks = {}
    if args.model:
        for folder in args.model:
            network = FlowModel.load(folder).network
            networks[f"{network.config.kind} ({Path(folder).name})"] = network
    else:
        networks = {kind: FlowNet(FlowNetConfig(kind=kind)).eval() for kind in KINDS}
    frames = [torch.from_numpy(counts)[None] for counts in sequence.counts]

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, network in networks.items():
            state: list = [None]

            def step(frame, network=network, state=state):
                with torch.inference_mode():
                    _, state[0] = network.step(frame, state[0])

            row = {"method": name, "threads": threads, "parameters": parameter_count(network)}
            rows.append(row | stats(time_steps(step, frames, args.warmup, args.steps)))
    if args.cm_bins:
        config = ContrastMaxConfig()
        bins = range(config.window_bins - 1, min(len(sequence.counts), config.window_bins - 1 + args.cm_bins))
        seconds = np.array([time_steps(lambda k: contrast_max_flow(sequence.events, k * sequence.interval_us,
                                                                   sequence.interval_us, args.size, args.size,
                                                                   config), [k], 0, 1)[0] for k in bins])
        rows.append({"method": "contrast maximisation", "threads": 1, "parameters": 0} | stats(seconds))

    load = {"before": load_before, "after": os.getloadavg()}
    print(f"{args.size}x{args.size}, one 10 ms bin per step, batch 1; {cpu_model()}, {os.cpu_count()} cores, "
          f"1-min load {load['before'][0]:.2f} before, {load['after'][0]:.2f} after")
    print("| method | threads | parameters | median ms/step | mean | p90 |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['threads']} | {row['parameters']:,} | {row['median_ms']:.2f} | "
              f"{row['mean_ms']:.2f} | {row['p90_ms']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "cpu": cpu_model(), "python": platform.python_version(),
                                    "torch": torch.__version__, "git_commit": git_commit(), "cores": os.cpu_count(),
                                    "load_average": load, "rows": rows},
                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
