"""Speed profiles and the paths they drive along a route: the pure core of episode generation.

A route is a query traverse of ``n_places`` frames; a position is a real number of places along it (frame ``i``
at position ``i``). A speed profile is one speed per step, in places per step; the path integrates it from a
start position, held inside the route, until the route's last frame is reached. The camera shows the nearest
frame, so slow driving repeats frames, fast driving skips them, a stop repeats one frame and a reversal drives
back over frames already seen.

Kinds (``nominal`` is :attr:`ProfileConfig.speed`):

- ``constant``: ``nominal`` at every step (the protocol of offline evaluation when ``nominal`` is 1).
- ``varying``: piecewise linear between knots ``segment`` steps apart (uniformly 10 to 40), each knot drawn
  uniformly in ``[min_factor, max_factor] * nominal``.
- ``stops``: ``nominal``, with stops (speed 0) of 3 to 10 steps; the gaps between stops are exponential with mean
  ``mean_gap`` steps.
- ``reversals``: ``nominal``, with reversals of 2 to 6 steps at ``reverse_factor * nominal`` (a negative speed);
  gaps as for stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROFILE_KINDS = ("constant", "varying", "stops", "reversals")


@dataclass(frozen=True)
class ProfileConfig:
    speed: float = 1.0
    min_factor: float = 0.4
    max_factor: float = 1.6
    mean_gap: float = 40.0
    reverse_factor: float = -0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"speed must be a finite number of places per step > 0, not {self.speed!r}")
        if not 0 <= self.min_factor <= self.max_factor:
            raise ValueError(f"speed factors need 0 <= min_factor <= max_factor, not {self.min_factor}, {self.max_factor}")
        if not self.mean_gap > 0:
            raise ValueError(f"mean_gap must be > 0 steps, not {self.mean_gap}")
        if not -1 <= self.reverse_factor < 0:
            raise ValueError(f"reverse_factor must be in [-1, 0), not {self.reverse_factor}")


def _events(kind_speed: float, n_steps: int, rng: np.random.Generator, config: ProfileConfig, low: int, high: int) -> np.ndarray:
    """``config.speed`` everywhere except events of ``low..high`` steps at ``kind_speed``, exponential gaps apart."""
    speeds = np.full(n_steps, config.speed)
    t = int(rng.exponential(config.mean_gap))
    while t < n_steps:
        length = int(rng.integers(low, high + 1))
        speeds[t : t + length] = kind_speed
        t += length + 1 + int(rng.exponential(config.mean_gap))
    return speeds


def draw_speeds(kind: str, n_steps: int, rng: np.random.Generator, config: ProfileConfig = ProfileConfig()) -> np.ndarray:
    """(n_steps,) speeds in places per step of the profile ``kind`` (see the module docstring)."""
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, not {n_steps}")
    if kind == "constant":
        return np.full(n_steps, config.speed)
    if kind == "varying":
        knots = [0]
        while knots[-1] < n_steps:
            knots.append(knots[-1] + int(rng.integers(10, 41)))
        values = rng.uniform(config.min_factor, config.max_factor, size=len(knots)) * config.speed
        return np.interp(np.arange(n_steps), knots, values)
    if kind == "stops":
        return _events(0.0, n_steps, rng, config, 3, 10)
    if kind == "reversals":
        return _events(config.reverse_factor * config.speed, n_steps, rng, config, 2, 6)
    raise ValueError(f"unknown speed profile {kind!r}; expected one of {', '.join(PROFILE_KINDS)}")


def drive(start: float, speeds: np.ndarray, n_places: int) -> tuple[np.ndarray, bool]:
    """Positions along a route of ``n_places`` frames: ``start``, then one per speed, clipped to the route, cut at
    the first that reaches the last frame. Returns (positions, whether the last frame was reached)."""
    if n_places < 1:
        raise ValueError(f"a route needs at least one place, not {n_places}")
    if not 0 <= start <= n_places - 1:
        raise ValueError(f"start {start} is outside the route (0..{n_places - 1})")
    end = n_places - 1
    positions = np.empty(len(speeds) + 1)
    positions[0] = start
    for t, speed in enumerate(speeds):  # clipping at the route's start makes this a recurrence, not a cumsum
        if positions[t] >= end:
            return positions[: t + 1], True
        positions[t + 1] = min(max(positions[t] + speed, 0.0), end)
    return positions, bool(positions[-1] >= end)


def frame_indices(positions: np.ndarray) -> np.ndarray:
    """The frame the camera shows at each position: the nearest (halves round up, so a path at 0.5 shows 1)."""
    return np.floor(np.asarray(positions) + 0.5).astype(np.int64)


def plan_path(kind: str, start: float, n_places: int, rng: np.random.Generator,
              config: ProfileConfig = ProfileConfig()) -> tuple[np.ndarray, np.ndarray, bool]:
    """One episode's path: (positions, frame indices, whether the route's end is reached).

    Speeds are drawn for a horizon of ``4 * remaining / speed + 100`` steps, which every kind covers with room to
    spare (the slowest, ``varying`` with every knot at ``min_factor`` 0.4, needs 2.5 times the constant-speed
    steps); a path that still falls short ends there without reaching the last frame.
    """
    horizon = int(math.ceil(4 * (n_places - 1 - start) / config.speed)) + 100
    positions, reached = drive(start, draw_speeds(kind, horizon, rng, config), n_places)
    return positions, frame_indices(positions), reached
