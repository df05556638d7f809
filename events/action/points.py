"""Event windows as point clouds: sliding windows, point sampling, farthest-point sampling, kNN grouping and the
rate code of SpikePoint (Ren et al., ICLR 2024).

The preprocessing follows SpikePoint's group: windows of 0.5 s every 0.25 s, 1024 events sampled per window,
each event a point (t, x, y) normalised to [0, 1] (time from the window's start over its length, x and y over
the sensor), polarity dropped. Sampling is uniform with replacement (one vectorised draw for a whole batch of
windows of different lengths); windows hold thousands of events, so repeats are few, and windows with fewer
events than points still give a full cloud.

Grouping is PointNet++'s: ``n_centroids`` centroids by farthest-point sampling (a loop over the centroids, each
step vectorised over the batch and the points), then the ``k`` nearest points of each (one distance matrix and
``topk``). Each grouped point becomes ``FEATURES`` = 9 numbers in [0, 1]:

- its offset from the centroid, per axis, divided by the largest offset along that axis in the window (so
  offsets keep their relative sizes across groups and fill [-1, 1]), then split into a positive and a negative
  part: ``max(d, 0)`` and ``max(-d, 0)``. (Typical offsets are then ~0.25, ~4 spikes in 16 steps. Scaling each
  group to fill [-1, 1] instead, PointNet++'s normalisation, doubles that but throws away how large groups are
  relative to each other: on the default set the ANN fell from 76.7% to 59.7% test window accuracy and
  SpikePoint learnt more slowly, so it was dropped.) A rate code can only carry a probability in [0, 1]; SpikePoint's
  answer to negative relative coordinates is a sign-free code, and splitting keeps the sign in which of the two
  channels fires instead of discarding it;
- the centroid's own (t, x, y), so the global stage knows where each group lies.

:func:`rate_code` turns these into Bernoulli spike trains over T steps (probability = value per step). The ANN
baseline takes the same 9 numbers as real values: both models see the same information.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from events.representations import window_bounds

FEATURES = 9  # 6 sign-split relative coordinates + 3 centroid coordinates


@dataclass(frozen=True)
class PointConfig:
    """Windowing, sampling and grouping; saved with every model, which only understands its own preprocessing."""

    window_ms: float = 500.0
    stride_ms: float = 250.0
    n_points: int = 1024
    n_centroids: int = 32
    k: int = 16
    min_events: int = 64

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.stride_ms <= 0:
            raise ValueError("window_ms and stride_ms must be positive")
        if not 1 <= self.n_centroids <= self.n_points or not 1 <= self.k <= self.n_points:
            raise ValueError(f"need 1 <= n_centroids, k <= n_points ({self.n_points}); got n_centroids "
                             f"{self.n_centroids}, k {self.k}")
        if self.min_events < 1:
            raise ValueError("min_events must be positive")

    @property
    def window_us(self) -> int:
        return round(self.window_ms * 1000)

    @property
    def stride_us(self) -> int:
        return round(self.stride_ms * 1000)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PointConfig:
        unknown = set(values) - {item.name for item in fields(cls)}
        if unknown:
            raise ValueError(f"unknown PointConfig fields: {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class Windows:
    """Windows over clips of concatenated events: window i covers ``events[lo[i]:hi[i]]``, starts at
    ``start_us[i]`` (clip time) and belongs to clip ``clip[i]``."""

    clip: np.ndarray
    start_us: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def __len__(self) -> int:
        return len(self.clip)

    def take(self, index: np.ndarray) -> Windows:
        return Windows(self.clip[index], self.start_us[index], self.lo[index], self.hi[index])


def clip_windows(events: np.ndarray, offsets: np.ndarray, clips: np.ndarray, duration_us: int, config: PointConfig
                 ) -> Windows:
    """The complete windows of ``clips`` (indices into ``offsets``), clip time running from 0 to ``duration_us``;
    windows with fewer than ``min_events`` events (the object left the view) are dropped."""
    parts = []
    for clip in np.asarray(clips, np.int64):  # per clip, not per event: each is one searchsorted
        start, stop = int(offsets[clip]), int(offsets[clip + 1])
        starts, bounds = window_bounds(events["t"][start:stop], config.window_us, config.stride_us, t_start=0,
                                       t_end=duration_us, include_incomplete=False)
        parts.append(np.column_stack([np.full(len(starts), clip), starts, bounds + start]))
    table = np.concatenate(parts) if parts else np.empty((0, 4), np.int64)
    table = table[table[:, 3] - table[:, 2] >= config.min_events]
    return Windows(table[:, 0], table[:, 1], table[:, 2], table[:, 3])


def sample_points(events: np.ndarray, windows: Windows, config: PointConfig, width: int, height: int,
                  rng: np.random.Generator) -> np.ndarray:
    """(B, n_points, 3) float32 points (t, x, y) in [0, 1], drawn uniformly with replacement from each window."""
    if len(windows) and np.any(windows.hi <= windows.lo):
        raise ValueError("every window must hold at least one event to sample points from")
    counts = (windows.hi - windows.lo)[:, None]
    index = windows.lo[:, None] + np.minimum((rng.random((len(windows), config.n_points)) * counts).astype(np.int64),
                                             counts - 1)
    chosen = events[index]
    t = (chosen["t"] - windows.start_us[:, None]) / config.window_us
    x = chosen["x"] / max(width - 1, 1)
    y = chosen["y"] / max(height - 1, 1)
    return np.stack([t, x, y], axis=-1).astype(np.float32)


def farthest_point_sampling(points: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Indices (B, n_samples) of points (B, N, D) chosen greedily farthest from those chosen before, starting
    from point 0 (the points come in random order, so that is a random start)."""
    batch, n, _ = points.shape
    if not 1 <= n_samples <= n:
        raise ValueError(f"cannot choose {n_samples} of {n} points")
    chosen = torch.zeros(batch, n_samples, dtype=torch.long, device=points.device)
    distance = torch.full((batch, n), torch.inf, device=points.device)
    rows = torch.arange(batch, device=points.device)
    latest = torch.zeros(batch, dtype=torch.long, device=points.device)
    for step in range(1, n_samples):
        distance = torch.minimum(distance, (points - points[rows, latest][:, None]).square().sum(-1))
        latest = distance.argmax(dim=1)
        chosen[:, step] = latest
    return chosen


def group_points(points: torch.Tensor, n_centroids: int, k: int) -> torch.Tensor:
    """SpikePoint's input (B, n_centroids, k, FEATURES) in [0, 1] from points (B, N, 3); see the module docstring."""
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"expected points (B, N, 3), got {tuple(points.shape)}")
    if k > points.shape[1]:
        raise ValueError(f"cannot group {k} neighbours from {points.shape[1]} points")
    batch = torch.arange(points.shape[0], device=points.device)[:, None]
    centroids = points[batch, farthest_point_sampling(points, n_centroids)]  # (B, S, 3)
    neighbours = torch.cdist(centroids, points).topk(k, dim=-1, largest=False).indices  # (B, S, K)
    offsets = points[batch[:, :, None], neighbours] - centroids[:, :, None]  # (B, S, K, 3)
    scale = offsets.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    offsets = offsets / scale
    return torch.cat([offsets.clamp(min=0), (-offsets).clamp(min=0),
                      centroids[:, :, None].expand(-1, -1, k, -1)], dim=-1)


def rate_code(values: torch.Tensor, time_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli spike trains (T, ...) float: each step fires with probability ``value`` (values in [0, 1])."""
    if time_steps < 1:
        raise ValueError(f"time_steps must be positive, got {time_steps}")
    noise = torch.rand((time_steps, *values.shape), generator=generator, device=values.device, dtype=values.dtype)
    return (noise < values).to(values.dtype)
