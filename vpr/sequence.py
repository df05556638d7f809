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
  ``D[q-k, r - round(v k + phase)]`` is taken. SeqSLAM itself has one phase (0); ``velocity_phases`` > 1 also
  searches phases spread over [-0.5, 0.5), for the reason given under ``odometry``: at a speed that is not a
  whole number of places per frame, which frames repeat or are skipped depends on where between places the
  robot was at the newest frame.
- ``odometry``: the window is spaced by the distance driven instead of by frames, for a robot that reports its
  odometry (places moved since the previous frame). A frame taken ``d`` places behind the current one is scored
  against reference ``r - round(d + phase)``; frames that land on the same offset are averaged, and the score of
  ``r`` is the mean over the offsets ``0 .. length-1`` that have frames. Stops add frames to one offset instead
  of filling the window with it, and reversals revisit offsets already seen, which is what a constant-velocity
  search cannot follow. The ``phase`` search (the best of ``odometry_phases`` offsets in [-0.5, 0.5), per
  reference, as SeqSLAM takes the best velocity) is there because a camera shows the frame of the *nearest*
  place: which places two frames show depends on where between places the robot is, which odometry does not
  say. It assumes reference places one odometry unit apart (the registered datasets' spacing); places driven
  but not seen are skipped, not guessed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

FRAMES_PER_PLACE = 20  # odometry matching keeps up to this many frames per place of the window (stops repeat frames)


@dataclass(frozen=True)
class SequenceConfig:
    length: int = 1
    mode: Literal["diagonal", "seqslam", "odometry"] = "diagonal"
    contrast_window: int = 10
    min_velocity: float = 0.8
    max_velocity: float = 1.2
    velocity_steps: int = 5
    odometry_phases: int = 5
    velocity_phases: int = 1

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"sequence length must be >= 1, got {self.length}")
        if self.contrast_window < 0:
            raise ValueError(f"contrast_window must be >= 0 (0: no contrast enhancement), got {self.contrast_window}")
        if self.mode not in ("diagonal", "seqslam", "odometry"):
            raise ValueError(f"unknown sequence matching mode {self.mode!r}: expected 'diagonal', 'seqslam' or 'odometry'")
        if self.mode == "seqslam" and not (0 < self.min_velocity <= self.max_velocity and self.velocity_steps >= 1):
            raise ValueError("seqslam needs 0 < min_velocity <= max_velocity and velocity_steps >= 1")
        if self.odometry_phases < 1:
            raise ValueError(f"odometry_phases must be >= 1, got {self.odometry_phases}")
        if self.velocity_phases < 1:
            raise ValueError(f"velocity_phases must be >= 1, got {self.velocity_phases}")

    @property
    def velocities(self) -> np.ndarray:
        return np.linspace(self.min_velocity, self.max_velocity, self.velocity_steps)

    @property
    def phases(self) -> np.ndarray:
        """``odometry_phases`` offsets spread evenly over [-0.5, 0.5), 0 among them when the count is odd."""
        return _spread_phases(self.odometry_phases)

    @property
    def paths(self) -> list[tuple[float, float]]:
        """seqslam: every (velocity, phase) searched; phases spread like :attr:`phases`."""
        return [(float(v), float(phase)) for v in self.velocities for phase in _spread_phases(self.velocity_phases)]


def _spread_phases(count: int) -> np.ndarray:
    return (np.arange(count) + 0.5) / count - 0.5


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


def _path_mean(distances: np.ndarray, length: int, velocity: float, phase: float = 0.0) -> np.ndarray:
    """Mean of ``D[q-k, r - round(velocity k + phase)]`` over the path's query frames, for every (q, r)."""
    n_query, n_reference = distances.shape
    row_means = distances.mean(axis=1, keepdims=True)
    total = np.zeros_like(distances, dtype=np.float64)
    count = np.zeros((n_query, 1))
    for k in range(min(length, n_query)):
        shift = min(max(int(round(velocity * k + phase)), 0), n_reference)
        total[k:, shift:] += distances[: n_query - k, : n_reference - shift]
        total[k:, :shift] += row_means[: n_query - k]
        count[k:] += 1.0
    return total / count


def _last_path_mean(rows: np.ndarray, velocity: float, phase: float = 0.0) -> np.ndarray:
    """The last row of :func:`_path_mean` over all of ``rows`` (at most ``length`` of them): what an online
    matcher needs per frame, without the paths of earlier frames."""
    n_rows, n_reference = rows.shape
    total = np.zeros(n_reference)
    for k in range(n_rows):
        row = rows[n_rows - 1 - k]
        shift = min(max(int(round(velocity * k + phase)), 0), n_reference)
        total[shift:] += row[: n_reference - shift]
        total[:shift] += row.mean()
    return total / n_rows


def match_sequences(distances: np.ndarray, config: SequenceConfig, moved: np.ndarray | None = None) -> np.ndarray:
    """Sequence-matched distances, same shape as ``distances``; ``length == 1`` returns them unchanged (not so
    for ``odometry``, which still averages the frames of one place). ``moved``: per query frame, the places driven
    since the previous frame; needed by ``odometry`` only."""
    distances = np.asarray(distances)
    if distances.ndim != 2:
        raise ValueError(f"expected a 2-D distance matrix, got shape {distances.shape}")
    if config.mode == "odometry":
        if moved is None or np.shape(moved) != (distances.shape[0],):
            raise ValueError(f"odometry sequence matching needs one odometry reading per query frame "
                             f"({distances.shape[0]}), got {None if moved is None else np.shape(moved)}")
        matcher = OnlineSequenceMatcher(config)
        return np.stack([matcher.push(row, float(step)) for row, step in zip(distances, moved)])
    if config.mode == "diagonal":
        if config.length == 1:
            return distances
        return _path_mean(distances, config.length, 1.0)
    enhanced = enhance_contrast(distances, config.contrast_window) if config.contrast_window else distances
    return np.min([_path_mean(enhanced, config.length, v, phase) for v, phase in config.paths], axis=0)


class OnlineSequenceMatcher:
    """Sequence matching one query frame at a time: push a distance row, get the sequence-matched row.

    Keeps only the last ``length`` rows (``odometry``: the last ``FRAMES_PER_PLACE x length`` frames with their
    positions); gives exactly the rows :func:`match_sequences` gives offline.
    """

    def __init__(self, config: SequenceConfig):
        self.config = config
        self._rows: deque[np.ndarray] = deque(maxlen=config.length)
        self._enhanced: deque[np.ndarray] = deque(maxlen=config.length)  # seqslam: rows contrast-enhanced once
        self._position = 0.0
        # odometry: (position, row) of recent frames; stops add many frames per place, hence the generous cap
        self._frames: deque[tuple[float, np.ndarray]] = deque(maxlen=FRAMES_PER_PLACE * config.length)

    def reset(self) -> None:
        self._rows.clear()
        self._enhanced.clear()
        self._position = 0.0
        self._frames.clear()

    def push(self, distance_row: np.ndarray, moved: float | None = None) -> np.ndarray:
        """The sequence-matched row for this frame; ``moved`` (places driven since the previous frame) is
        required by ``odometry`` and ignored by the other modes."""
        distance_row = np.asarray(distance_row)
        if distance_row.ndim != 1:
            raise ValueError(f"expected one row of distances, got shape {distance_row.shape}")
        if self._rows and distance_row.shape != self._rows[-1].shape:
            raise ValueError(f"row has {distance_row.size} references, earlier rows had {self._rows[-1].size}")
        if self.config.mode == "odometry":
            if moved is None or not np.isfinite(moved):
                raise ValueError(f"odometry sequence matching needs the places moved with every frame, got {moved!r}")
            self._rows.append(distance_row)
            return self._push_by_place(distance_row.astype(np.float64), float(moved))
        self._rows.append(distance_row)
        if self.config.mode == "diagonal":
            return distance_row if self.config.length == 1 else _last_path_mean(np.stack(self._rows), 1.0)
        window = self.config.contrast_window
        self._enhanced.append(enhance_contrast(distance_row[None], window)[0] if window else distance_row)
        rows = np.stack(self._enhanced)
        return np.min([_last_path_mean(rows, velocity, phase) for velocity, phase in self.config.paths], axis=0)

    def _push_by_place(self, row: np.ndarray, moved: float) -> np.ndarray:
        self._position += moved
        self._frames.append((self._position, row))
        length, n_reference = self.config.length, row.size
        behind = self._position - np.array([position for position, _ in self._frames])
        rows = np.stack([frame_row for _, frame_row in self._frames])
        best = None
        for phase in self.config.phases:
            offsets = np.rint(behind + phase).astype(int)
            inside = (offsets >= 0) & (offsets < length)
            counts = np.bincount(offsets[inside], minlength=length)
            sums = np.zeros((length, n_reference))
            np.add.at(sums, offsets[inside], rows[inside])
            score = np.zeros(n_reference)
            present = np.flatnonzero(counts)
            for offset in present:
                mean_row = sums[offset] / counts[offset]
                shift = min(int(offset), n_reference)
                score[shift:] += mean_row[: n_reference - shift]
                score[:shift] += mean_row.mean()
            score /= present.size
            best = score if best is None else np.minimum(best, score)
        return best
