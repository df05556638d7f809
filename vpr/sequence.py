"""Sequence matching on a query x reference distance matrix (lower = more similar).

Both forms score the sequence of the ``length`` most recent query frames ending at query ``q`` against a path
through the references ending at reference ``r``. Windows are causal, so the offline form (whole matrix at once)
and the online form (one query row at a time, as a robot streams frames) give identical answers. A path that
would run off the start of the map takes, for each missing reference, the mean of that query row: missing
evidence counts as an average place, so paths near the map's start are neither favoured (fewer noisy terms) nor
excluded. At the start of the stream, where fewer than ``length`` query frames exist, every path uses the
frames there are.

- ``diagonal``: the SNN VPR papers' form, the mean of ``D[q-k, r-k]`` for ``k < length`` (an identity kernel).
- ``seqslam``: SeqSLAM's form: each query row is contrast-enhanced over a local window of references
  (``contrast_window``; 0 keeps the raw distances), then the best of several constant-velocity paths
  ``D[q-k, r - round(v k)]`` is taken.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class SequenceConfig:
    length: int = 1
    mode: Literal["diagonal", "seqslam"] = "diagonal"
    contrast_window: int = 10
    min_velocity: float = 0.8
    max_velocity: float = 1.2
    velocity_steps: int = 5

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"sequence length must be >= 1, got {self.length}")
        if self.contrast_window < 0:
            raise ValueError(f"contrast_window must be >= 0 (0: no contrast enhancement), got {self.contrast_window}")
        if self.mode not in ("diagonal", "seqslam"):
            raise ValueError(f"unknown sequence matching mode {self.mode!r}: expected 'diagonal' or 'seqslam'")
        if self.mode == "seqslam" and not (0 < self.min_velocity <= self.max_velocity and self.velocity_steps >= 1):
            raise ValueError("seqslam needs 0 < min_velocity <= max_velocity and velocity_steps >= 1")

    @property
    def velocities(self) -> np.ndarray:
        return np.linspace(self.min_velocity, self.max_velocity, self.velocity_steps)


def enhance_contrast(distances: np.ndarray, window: int) -> np.ndarray:
    """SeqSLAM's local contrast enhancement: each entry minus the mean, over the std, of its row's local window."""
    distances = np.asarray(distances, dtype=np.float64)
    n_reference = distances.shape[1]
    half = window // 2
    padded = np.pad(distances, ((0, 0), (1, 0)))
    sums = np.cumsum(padded, axis=1)
    squares = np.cumsum(padded**2, axis=1)
    low = np.clip(np.arange(n_reference) - half, 0, n_reference)
    high = np.clip(np.arange(n_reference) + half + 1, 0, n_reference)
    count = high - low
    mean = (sums[:, high] - sums[:, low]) / count
    variance = np.maximum((squares[:, high] - squares[:, low]) / count - mean**2, 0.0)
    return (distances - mean) / (np.sqrt(variance) + 1e-12)


def _path_mean(distances: np.ndarray, length: int, velocity: float) -> np.ndarray:
    """Mean of ``D[q-k, r - round(velocity k)]`` over the path's query frames, for every (q, r)."""
    n_query, n_reference = distances.shape
    row_means = distances.mean(axis=1, keepdims=True)
    total = np.zeros_like(distances, dtype=np.float64)
    count = np.zeros((n_query, 1))
    for k in range(min(length, n_query)):
        shift = min(int(round(velocity * k)), n_reference)
        total[k:, shift:] += distances[: n_query - k, : n_reference - shift]
        total[k:, :shift] += row_means[: n_query - k]
        count[k:] += 1.0
    return total / count


def match_sequences(distances: np.ndarray, config: SequenceConfig) -> np.ndarray:
    """Sequence-matched distances, same shape as ``distances``; ``length == 1`` returns them unchanged."""
    distances = np.asarray(distances)
    if distances.ndim != 2:
        raise ValueError(f"expected a 2-D distance matrix, got shape {distances.shape}")
    if config.mode == "diagonal":
        if config.length == 1:
            return distances
        return _path_mean(distances, config.length, 1.0)
    enhanced = enhance_contrast(distances, config.contrast_window) if config.contrast_window else distances
    return np.min([_path_mean(enhanced, config.length, v) for v in config.velocities], axis=0)


class OnlineSequenceMatcher:
    """Sequence matching one query frame at a time: push a distance row, get the sequence-matched row.

    Keeps only the last ``length`` rows; gives exactly the rows :func:`match_sequences` gives offline.
    """

    def __init__(self, config: SequenceConfig):
        self.config = config
        self._rows: deque[np.ndarray] = deque(maxlen=config.length)

    def reset(self) -> None:
        self._rows.clear()

    def push(self, distance_row: np.ndarray) -> np.ndarray:
        distance_row = np.asarray(distance_row)
        if distance_row.ndim != 1:
            raise ValueError(f"expected one row of distances, got shape {distance_row.shape}")
        if self._rows and distance_row.shape != self._rows[-1].shape:
            raise ValueError(f"row has {distance_row.size} references, earlier rows had {self._rows[-1].size}")
        self._rows.append(distance_row)
        return match_sequences(np.stack(self._rows), self.config)[-1]
