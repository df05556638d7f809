"""Markdown table of trained event-action models: SpikePoint against the ANN baseline (one row per model folder).

Usage: ``python benchmarks/action_table.py runs/events/action/spikepoint runs/events/action/pointnet`` after
``spikebot events action-train`` wrote ``model.json`` and ``eval.json`` in each folder. The parameter ratio
column is against the largest model in the table (the ANN baseline when both are given).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    folders = [Path(argument) for argument in sys.argv[1:]] or sorted(Path("runs/events/action").glob("*/eval.json"))
    rows = []
    for folder in folders:
        folder = folder.parent if folder.name == "eval.json" else folder
        report = json.loads((folder / "eval.json").read_text())
        manifest = json.loads((folder / "model.json").read_text())
        metrics = manifest["metadata"]["metrics"]
        rows.append((folder, report, metrics))
    largest = max((report["parameters"] for _, report, _ in rows), default=1)
    print("| model | parameters | share of largest | test window accuracy | test clip accuracy | epochs | "
          "training s | inference ms / window | firing rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder, report, metrics in rows:
        rate = f"{report['mean_firing_rate']:.3f}" if "mean_firing_rate" in report else "-"
        print(f"| {report['model']} ({folder.name}) | {report['parameters']:,} | {report['parameters'] / largest:.1%} | "
              f"{report['window_accuracy']:.1%} ({report['windows']}) | {report['clip_accuracy']:.1%} "
              f"({report['clips']}) | {len(metrics['epochs'])} | {metrics['train_seconds']:.0f} | "
              f"{report['latency_ms_per_window']:.1f} | {rate} |")


if __name__ == "__main__":
    main()
