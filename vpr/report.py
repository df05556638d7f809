"""Writing results: the table people read, the JSON machines read, and the plots people look at."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vpr.evaluate import EvaluationResult  # noqa: E402
from vpr.metrics import Metrics  # noqa: E402

TABLE_COLUMNS = ("dataset", "reference -> query", "split", "tol", "method", "seq L", "R@1", "R@5", "R@10", "PR AUC", "R@100P", "ms/query", "map MiB")


def table_row(result: dict[str, Any]) -> list[str]:
    dataset = result["config"]["dataset"]
    recall = result["recall"]
    qps = result["timings"]["queries_per_second"]
    map_bytes = result.get("map_bytes")
    return [
        result["dataset"],
        f"{dataset.get('reference', dataset.get('reference_dir', '?'))} -> {dataset.get('query', dataset.get('query_dir', '?'))}",
        str(dataset.get("split", "all")),
        str(dataset.get("tolerance", "file")),
        result["method"],
        str(result["config"]["sequence"]["length"]) + ("" if result["config"]["sequence"]["mode"] == "diagonal" else " (seqslam)"),
        *(f"{recall.get(n, float('nan')):.3f}" for n in ("1", "5", "10")),
        f"{result['auc_pr']:.3f}",
        f"{result['recall_at_100p']:.3f}",
        f"{1000 / qps:.2f}" if qps else "-",
        f"{map_bytes / 2**20:.1f}" if map_bytes else "-",
    ]


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(result)) + " |" for result in results]
    return "\n".join(lines) + "\n"


def text_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [list(TABLE_COLUMNS)] + [table_row(result) for result in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


def plot_pr_curve(result: EvaluationResult, path: Path) -> None:
    curve = result.metrics.curve
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(curve.recall, curve.precision, where="post")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{result.run.method.name}, L={result.sequence.length}: AUC {result.metrics.auc_pr:.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pr_curves(curves: Sequence[tuple[str, Metrics]], title: str, path: Path) -> None:
    """Several methods' precision-recall curves (label, metrics) on one protocol, in one figure."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, metrics in curves:
        ax.step(metrics.curve.recall, metrics.curve.precision, where="post", label=f"{label} (AUC {metrics.auc_pr:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_distance_matrix(result: EvaluationResult, path: Path) -> None:
    matrix = result.matched_distances
    truth = result.run.dataset.ground_truth.matrix.tocoo()
    best = np.argmin(matrix, axis=1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.scatter(truth.col, truth.row, s=0.3, c="white", alpha=0.4, label="ground truth")
    ax.scatter(best, np.arange(len(best)), s=0.8, c="red", label="best match")
    ax.set(xlabel="reference index", ylabel="query index", title=f"{result.run.method.name} distances, L={result.sequence.length}")
    ax.legend(loc="upper right", fontsize=7, markerscale=8)
    fig.colorbar(image, ax=ax, label="distance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_result(result: EvaluationResult, out_dir: str | Path) -> dict[str, Any]:
    """Write results.json, results.md, pr_curve.png and distance_matrix.png into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.to_json()
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_table([summary]))
    plot_pr_curve(result, out_dir / "pr_curve.png")
    plot_distance_matrix(result, out_dir / "distance_matrix.png")
    return summary
