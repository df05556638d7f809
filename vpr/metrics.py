"""The field's place-recognition metrics, computed from a distance matrix and ground truth.

Conventions (stated here because papers differ):
- Ranking sorts each query's distances ascending; ties go to the lower reference index (stable sort).
- Recall@N is per query: the share of queries *that have at least one true match* whose N best references
  include one. Queries without a match cannot be recalled and are left out of Recall@N.
- The precision-recall curve thresholds each query's best-match distance. At a threshold the accepted queries
  are those whose best distance is <= it; precision = correct accepted / accepted, recall = correct accepted /
  queries with a match. Queries without a match still count when accepted (as false positives). Queries with
  equal best distances enter together. The curve starts at (recall 0, precision 1).
- PR AUC is the step-wise area (average precision: sum of recall increments times precision), which does not
  interpolate optimistically between points.
- Recall at 100% precision is the largest recall reached while every accepted query is correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr.data import GroundTruth


def rank_references(distances: np.ndarray, n: int) -> np.ndarray:
    """The indices of each query's ``n`` nearest references, nearest first, ties to the lower index."""
    return np.argsort(distances, axis=1, kind="stable")[:, :n]


def recall_at_n(distances: np.ndarray, truth: GroundTruth, ns: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    has_match = truth.has_match()
    if not has_match.any():
        raise ValueError("no query has a ground-truth match, so recall is undefined")
    depth = min(max(ns), distances.shape[1])
    ranked = rank_references(distances, depth)
    hits = truth.contains(np.arange(len(ranked))[:, None], ranked)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), depth)[has_match]
    return {n: float(np.mean(first_hit < n)) for n in ns}


@dataclass(frozen=True)
class PRCurve:
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray

    @property
    def auc(self) -> float:
        return float(np.sum(np.diff(self.recall) * self.precision[1:]))

    @property
    def recall_at_100_precision(self) -> float:
        perfect = self.precision >= 1.0
        return float(self.recall[perfect].max())


def precision_recall_curve(distances: np.ndarray, truth: GroundTruth) -> PRCurve:
    has_match = truth.has_match()
    n_positive = int(has_match.sum())
    if n_positive == 0:
        raise ValueError("no query has a ground-truth match, so the precision-recall curve is undefined")
    best = rank_references(distances, 1)[:, 0]
    best_distance = distances[np.arange(len(best)), best]
    correct = truth.contains(np.arange(len(best)), best)
    order = np.argsort(best_distance, kind="stable")
    sorted_distance = best_distance[order]
    true_positives = np.cumsum(correct[order])
    # The last query of each run of equal distances closes a threshold step.
    step_ends = np.flatnonzero(np.r_[sorted_distance[1:] != sorted_distance[:-1], True])
    accepted = step_ends + 1
    precision = np.r_[1.0, true_positives[step_ends] / accepted]
    recall = np.r_[0.0, true_positives[step_ends] / n_positive]
    return PRCurve(precision, recall, sorted_distance[step_ends])


@dataclass(frozen=True)
class Metrics:
    recall: dict[int, float]
    auc_pr: float
    recall_at_100p: float
    n_query_with_match: int
    curve: PRCurve

    def summary(self) -> dict[str, object]:
        return {
            "recall": {str(n): value for n, value in self.recall.items()},
            "auc_pr": self.auc_pr,
            "recall_at_100p": self.recall_at_100p,
            "n_query_with_match": self.n_query_with_match,
        }


def evaluate(distances: np.ndarray, truth: GroundTruth, ns: tuple[int, ...] = (1, 5, 10)) -> Metrics:
    distances = np.asarray(distances)
    if distances.shape != truth.shape:
        raise ValueError(f"distance matrix shape {distances.shape} does not match ground truth {truth.shape}")
    curve = precision_recall_curve(distances, truth)
    return Metrics(
        recall=recall_at_n(distances, truth, ns),
        auc_pr=curve.auc,
        recall_at_100p=curve.recall_at_100_precision,
        n_query_with_match=int(truth.has_match().sum()),
        curve=curve,
    )
