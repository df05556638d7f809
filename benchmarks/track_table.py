"""Markdown table of the tracking runs written by benchmarks/track_benchmark.sh (one row per method and matcher)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/track-bench")
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for result in sorted(out.glob("*/results.json")):
        data = json.loads(result.read_text())
        config, metrics = data["config"], data["metrics"]
        agent = config["agent"]
        dataset = config["dataset"]
        key = (f"{dataset['name']} {dataset['reference']} -> {dataset['query']} ({dataset['split']})",
               f"{agent['method']['name']}, {agent['sequence']['mode']}"
               + (f" (contrast window {agent['sequence']['contrast_window']}"
                  + (f", {agent['sequence']['velocity_phases']} phases" if agent['sequence'].get('velocity_phases', 1) > 1 else "")
                  + ")" if agent['sequence']['mode'] == 'seqslam' else "")
               + (f" (odometry noise {config['env_options']['odometry_noise']})" if agent['sequence']['mode'] == 'odometry' else ""))
        rows.setdefault(key, {})[config["speed_profile"]] = metrics
    print("| route (split) | agent, L = 10 | constant | varying | varying - constant | steps | latency p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for (route, agent), by_profile in rows.items():
        constant, varying = (by_profile.get(p, {}).get("accuracy") for p in ("constant", "varying"))
        gap = f"{varying - constant:+.3f}" if constant is not None and varying is not None else ""
        steps = "/".join(str(by_profile[p]["steps"]) for p in ("constant", "varying") if p in by_profile)
        latency = "/".join(f"{by_profile[p]['latency_ms']['p50']:.1f}" for p in ("constant", "varying") if p in by_profile)
        shown = ("-" if value is None else f"{value:.3f}" for value in (constant, varying))
        print(f"| {route} | {agent} | {' | '.join(shown)} | {gap} | {steps} | {latency} |")


if __name__ == "__main__":
    main()
