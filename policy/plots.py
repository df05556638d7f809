"""Success rate over training, per task, one line per model, from the ``metrics.json`` of run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policy.envs import TASKS


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.json in {run_dir}: not a training run folder, or no checkpoint yet")
    return json.loads(path.read_text())


def plot_success(run_dirs: list[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    """One panel per task (easiest first), the evaluation success rate of each run against its training step;
    the legend gives the model and its final success rate. Writes a PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_metrics(run_dir) for run_dir in run_dirs]
    if not runs:
        raise ValueError("no runs to plot")
    order = list(TASKS)
    tasks = sorted({run["task"] for run in runs}, key=lambda task: order.index(task) if task in order else len(order))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for run in (run for run in runs if run["task"] == task):
            rows = run.get("eval", [])
            steps = [row["step"] for row in rows]
            success = [row["success_rate"] for row in rows]
            final = f", final {success[-1]:.0%} ({rows[-1]['episodes']} ep.)" if rows else ", not evaluated"
            axis.plot(steps, success, marker="o", label=f"{run['model']}{final}")
        axis.set_title(task)
        axis.set_xlabel("training step")
        axis.set_ylim(-0.03, 1.03)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("success rate (seeded eval episodes)")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
