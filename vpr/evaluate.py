"""One evaluation run: dataset -> method (map, distances) -> sequence matching -> metrics, with timings."""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spikebot.progress import progress
from spikebot.provenance import __version__, git_commit
from vpr.data import PlaceDataset
from vpr.methods import PlaceMethod
from vpr.metrics import Metrics, evaluate
from vpr.sequence import SequenceConfig, match_sequences

RECALL_NS = (1, 5, 10)


@dataclass
class MapRun:
    """A method's raw distance matrix on a dataset, and what it cost to produce."""

    dataset: PlaceDataset
    method: PlaceMethod
    distances: np.ndarray
    build_seconds: float
    query_seconds: float


@dataclass
class EvaluationResult:
    run: MapRun
    sequence: SequenceConfig
    matched_distances: np.ndarray
    metrics: Metrics
    sequence_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        dataset, run = self.run.dataset, self.run
        n_query = len(dataset.query)
        return {
            "method": run.method.name,
            "dataset": dataset.name,
            **self.metrics.summary(),
            "n_reference": len(dataset.reference),
            "map_bytes": run.method.map_bytes(),
            "n_query": n_query,
            "config": {
                "method": run.method.describe(),
                "sequence": dataclasses.asdict(self.sequence),
                "dataset": dataset.info,
                "recall_ns": list(self.metrics.recall),
            },
            "timings": {
                "build_map_seconds": run.build_seconds,
                "query_seconds": run.query_seconds,
                "queries_per_second": n_query / run.query_seconds if run.query_seconds > 0 else None,
                "sequence_matching_seconds": self.sequence_seconds,
            },
            "spikebot_version": __version__,
            "git_commit": git_commit(),
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.machine()},
            **self.extra,
        }


def compute_distances(dataset: PlaceDataset, method: PlaceMethod) -> MapRun:
    """Build the method's map from the reference traverse and score every query against it."""
    start = time.perf_counter()
    method.build_map(progress(dataset.reference, desc="reference images", total=len(dataset.reference)))
    return query_distances(dataset, method, build_seconds=time.perf_counter() - start)


def query_distances(dataset: PlaceDataset, method: PlaceMethod, build_seconds: float) -> MapRun:
    """Score every query against a map the method has already built."""
    start = time.perf_counter()
    distances = method.distances(progress(dataset.query, desc="query images", total=len(dataset.query)))
    elapsed = time.perf_counter() - start
    expected = (len(dataset.query), len(dataset.reference))
    if distances.shape != expected:
        raise RuntimeError(f"method {method.name} returned distances of shape {distances.shape}, expected {expected}")
    return MapRun(dataset, method, distances, build_seconds, elapsed)


def score_run(run: MapRun, sequence: SequenceConfig, ns: tuple[int, ...] = RECALL_NS) -> EvaluationResult:
    """Sequence-match a run's distances and measure them against the dataset's ground truth."""
    start = time.perf_counter()
    matched = match_sequences(run.distances, sequence)
    elapsed = time.perf_counter() - start
    return EvaluationResult(run, sequence, matched, evaluate(matched, run.dataset.ground_truth, ns), elapsed)
