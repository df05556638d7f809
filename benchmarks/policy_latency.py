"""Inference latency of one action chunk (one observation history in, 8 actions out) per checkpoint, sampler and
CPU thread count: the figure the issue's 50 ms target is about, measured apart from the simulator.

    python benchmarks/policy_latency.py --checkpoint runs/policy/cond-push/push-v3-stmdp \
        --checkpoint runs/policy/cond-push/push-v3-transformer --threads 1 2 --ddim-steps 10 --ddpm

Histories are a seeded draw from the demonstrations each checkpoint trained on (``--demos`` overrides); each
configuration gets ``--warmup`` untimed chunks, then ``--chunks`` timed ones, one at a time. Prints a markdown
table (median, p95 and mean milliseconds) and writes it with the raw timings to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from policy.diffusion import DiffusionPolicy
from policy.workspace import (
    checkpoint_metadata,
    demonstration_histories,
    resolve_checkpoint,
)


def time_chunks(policy: DiffusionPolicy, histories: torch.Tensor, sampler: str, steps: int | None, chunks: int,
                warmup: int) -> np.ndarray:
    """Seconds of ``chunks`` single-history ``predict_action`` calls, cycling through ``histories``."""
    generator = torch.Generator(device=policy.device).manual_seed(0)
    seconds = []
    for index in range(warmup + chunks):
        history = histories[index % len(histories)].numpy()
        started = time.perf_counter()
        policy.predict_action(history, sampler=sampler, steps=steps, generator=generator)
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    return np.asarray(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="checkpoint or run folder (repeat)")
    parser.add_argument("--demos", default=None, help="[default: the demonstrations each checkpoint trained on]")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[10])
    parser.add_argument("--ddpm", action="store_true", help="also time DDPM over every training step (slow)")
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--ddpm-chunks", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/policy/latency.json"))
    args = parser.parse_args(argv)

    rows = []
    for checkpoint in args.checkpoint:
        folder = resolve_checkpoint(checkpoint)
        policy = DiffusionPolicy.load(folder, device=args.device)
        metadata = checkpoint_metadata(folder)
        histories, _ = demonstration_histories(folder, policy, 32, 0, args.demos)
        samplers = [("ddim", steps) for steps in args.ddim_steps] + ([("ddpm", None)] if args.ddpm else [])
        for threads in args.threads:
            torch.set_num_threads(threads)
            for sampler, steps in samplers:
                chunks = args.ddpm_chunks if sampler == "ddpm" else args.chunks
                ms = 1000 * time_chunks(policy, histories, sampler, steps, chunks, args.warmup)
                rows.append({"checkpoint": str(folder), "model": metadata.get("model"), "task": metadata.get("task"),
                             "sampler": sampler, "passes": len(policy.sampler(sampler, steps).timesteps),
                             "threads": threads, "device": str(policy.device), "chunks": chunks,
                             "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
                             "mean_ms": float(ms.mean()), "ms": ms.tolist()})
                print(f"{metadata.get('model')} {sampler}-{rows[-1]['passes']} {threads} thr: "
                      f"median {rows[-1]['median_ms']:.1f} ms", flush=True)

    lines = ["| model | task | sampler | threads | chunks | median ms | p95 ms | mean ms |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['task']} | {row['sampler'].upper()}-{row['passes']} | {row['threads']} | "
                     f"{row['chunks']} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | {row['mean_ms']:.1f} |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                    "rows": rows, "table": table}, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
