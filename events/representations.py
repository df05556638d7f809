"""Slicing canonical event arrays and turning them into dense tensors.

All functions are pure and vectorised (``np.searchsorted`` for slicing, ``np.bincount`` for accumulation) and
expect events sorted by time, as :func:`events.io.read_events` and the simulator return them.

- :func:`slice_by_time` / :func:`slice_by_count`: windows as views into the array (no copies).
- :func:`to_count_images`: per time bin, the number of OFF and ON events at each pixel, ``(bins, 2, H, W)``
  float32, channel 0 = OFF, 1 = ON. With ``bin_us=10_000`` and ``t_start`` on a 10 ms boundary, bin k holds
  the events of the k-th 10 ms interval, the input a temporally dense flow network takes one bin at a time.
- :func:`to_voxel_grid`: signed polarity (ON +1, OFF -1) spread over ``num_bins`` time bins with bilinear
  (triangular) weights in time, as in EV-FlowNet and E-RAFT; :func:`normalize_voxel_grid` applies E-RAFT's
  normalisation of the nonzero cells.
"""

from __future__ import annotations

import numpy as np


def _times(events: np.ndarray) -> np.ndarray:
    return events["t"]


def window_bounds(
    t: np.ndarray,
    window_us: int,
    stride_us: int | None = None,
    t_start: int | None = None,
    t_end: int | None = None,
    include_incomplete: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Start times (K,) and event index ranges (K, 2) of the windows ``[start, start + window_us)``.

    Windows start at ``t_start`` (default: the first event) every ``stride_us`` (default: ``window_us``) while
    they start before ``t_end`` (default: one past the last event); with ``include_incomplete=False`` only
    windows ending by ``t_end`` are kept.
    """
    if window_us <= 0:
        raise ValueError(f"window_us must be positive, got {window_us}")
    stride_us = window_us if stride_us is None else stride_us
    if stride_us <= 0:
        raise ValueError(f"stride_us must be positive, got {stride_us}")
    if len(t) == 0 and (t_start is None or t_end is None):
        return np.empty(0, np.int64), np.empty((0, 2), np.int64)
    t_start = int(t[0]) if t_start is None else int(t_start)
    t_end = int(t[-1]) + 1 if t_end is None else int(t_end)
    last_start = t_end - (window_us if not include_incomplete else 1)
    count = max(0, (last_start - t_start) // stride_us + 1)
    starts = t_start + stride_us * np.arange(count, dtype=np.int64)
    bounds = np.stack([np.searchsorted(t, starts, "left"), np.searchsorted(t, starts + window_us, "left")], axis=1)
    return starts, bounds.astype(np.int64)


def slice_by_time(
    events: np.ndarray,
    window_us: int,
    stride_us: int | None = None,
    t_start: int | None = None,
    t_end: int | None = None,
    include_incomplete: bool = True,
) -> list[np.ndarray]:
    """The events of each time window (see :func:`window_bounds`), as views; empty windows are kept."""
    _, bounds = window_bounds(_times(events), window_us, stride_us, t_start, t_end, include_incomplete)
    return [events[start:stop] for start, stop in bounds]


def slice_by_count(
    events: np.ndarray, count: int, stride: int | None = None, include_incomplete: bool = True
) -> list[np.ndarray]:
    """Windows of ``count`` consecutive events every ``stride`` events (default ``count``), as views.

    The last window may be shorter unless ``include_incomplete=False``.
    """
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    stride = count if stride is None else stride
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    n = len(events)
    last_start = n - (count if not include_incomplete else 1)
    starts = range(0, max(0, last_start + 1), stride)
    return [events[start : start + count] for start in starts]


def _check_coordinates(events: np.ndarray, height: int, width: int) -> None:
    if len(events) and (int(events["x"].max()) >= width or int(events["y"].max()) >= height):
        raise ValueError(
            f"events reach x={int(events['x'].max())}, y={int(events['y'].max())}, outside {width}x{height}"
        )


def to_count_images(
    events: np.ndarray,
    height: int,
    width: int,
    bin_us: int,
    t_start: int | None = None,
    num_bins: int | None = None,
) -> np.ndarray:
    """Per-bin OFF/ON event counts, ``(num_bins, 2, height, width)`` float32 (channel 0 OFF, 1 ON).

    Bin k covers ``[t_start + k * bin_us, t_start + (k + 1) * bin_us)``; ``t_start`` defaults to the first
    event, ``num_bins`` to as many bins as reach the last event. Events outside the bins are left out.
    """
    if bin_us <= 0:
        raise ValueError(f"bin_us must be positive, got {bin_us}")
    _check_coordinates(events, height, width)
    t = _times(events)
    if t_start is None:
        t_start = int(t[0]) if len(t) else 0
    if num_bins is None:
        num_bins = int((int(t[-1]) - t_start) // bin_us + 1) if len(t) and t[-1] >= t_start else 0
    if len(t) == 0 or num_bins == 0:
        return np.zeros((num_bins, 2, height, width), np.float32)
    first, last = np.searchsorted(t, [t_start, t_start + num_bins * bin_us], "left")
    window = events[first:last]
    bins = (window["t"] - t_start) // bin_us
    flat = ((bins * 2 + window["p"]) * height + window["y"]) * width + window["x"]
    counts = np.bincount(flat, minlength=num_bins * 2 * height * width)
    return counts.astype(np.float32).reshape(num_bins, 2, height, width)


def to_voxel_grid(
    events: np.ndarray,
    height: int,
    width: int,
    num_bins: int,
    t_start: int | None = None,
    t_end: int | None = None,
) -> np.ndarray:
    """Voxel grid ``(num_bins, height, width)`` float32 with bilinear weights in time (EV-FlowNet, E-RAFT).

    Each event's time is mapped to ``tau = (num_bins - 1) * (t - t_start) / (t_end - t_start)`` and its signed
    polarity (ON +1, OFF -1) split between bins ``floor(tau)`` and ``floor(tau) + 1`` with weights
    ``1 - |tau - bin|``. ``t_start`` and ``t_end`` default to the first and last event (E-RAFT's choice); pass
    the window's bounds to keep bins aligned across windows. Events outside ``[t_start, t_end]`` are left out.
    """
    if num_bins <= 0:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    _check_coordinates(events, height, width)
    grid = np.zeros(num_bins * height * width, np.float64)
    t = _times(events)
    if len(t) == 0:
        return grid.astype(np.float32).reshape(num_bins, height, width)
    t_start = int(t[0]) if t_start is None else int(t_start)
    t_end = int(t[-1]) if t_end is None else int(t_end)
    first, last = np.searchsorted(t, t_start, side="left"), np.searchsorted(t, t_end, side="right")
    window = events[first:last]
    span = max(t_end - t_start, 1)
    tau = (num_bins - 1) * (window["t"] - t_start).astype(np.float64) / span
    lower = np.floor(tau).astype(np.int64)
    polarity = window["p"].astype(np.float64) * 2.0 - 1.0
    pixel = window["y"].astype(np.int64) * width + window["x"]
    for bin_index in (lower, lower + 1):
        weight = polarity * np.maximum(0.0, 1.0 - np.abs(tau - bin_index))
        inside = (bin_index >= 0) & (bin_index < num_bins)
        grid += np.bincount(
            bin_index[inside] * (height * width) + pixel[inside], weights=weight[inside], minlength=grid.size
        )
    return grid.astype(np.float32).reshape(num_bins, height, width)


def normalize_voxel_grid(grid: np.ndarray) -> np.ndarray:
    """E-RAFT's normalisation: the nonzero cells shifted to zero mean and scaled to unit standard deviation."""
    grid = np.asarray(grid, np.float32).copy()
    nonzero = grid != 0
    if not nonzero.any():
        return grid
    values = grid[nonzero]
    std = values.std()
    grid[nonzero] = (values - values.mean()) / (std if std > 0 else 1.0)
    return grid
