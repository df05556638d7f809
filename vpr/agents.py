"""Agents for the place-recognition environments: any place method, an online sequence matcher and a confidence
threshold, acting one camera frame at a time.

An agent is the environment's counterpart in the split of :mod:`vpr.envs`: the environment serves frames and scores
answers; the agent holds the map (a :class:`vpr.methods.PlaceMethod` built from the reference traverse), matches
sequences of distance rows online (:class:`vpr.sequence.OnlineSequenceMatcher`, ``diagonal``, ``seqslam``
velocity search, or ``odometry``-spaced windows when observations carry odometry) and says "unsure" when its confidence is below its threshold.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr.methods import PlaceMethod
from vpr.sequence import OnlineSequenceMatcher, SequenceConfig


def confidence(row: np.ndarray, best: int | None = None) -> float:
    """How clearly the best place of a distance row beats the rest: (second best - best) / (mean - best), clipped to
    [0, 1]; 0 for a one-place row or a flat one. ``best`` defaults to the row's minimum.

    The localisation service's definition (``server.app.confidence``), here so that every caller shares it. It is
    unchanged by adding a constant to the row or scaling it, so raw distances and SeqSLAM's contrast-enhanced
    scores are read alike.
    """
    row = np.asarray(row, dtype=np.float64)
    if row.ndim != 1:
        raise ValueError(f"expected one row of distances, got shape {row.shape}")
    if row.size < 2:
        return 0.0
    best = int(np.argmin(row)) if best is None else int(best)
    second = float(np.partition(row, 1)[1])
    spread = float(row.mean()) - float(row[best])
    if not spread > 0:
        return 0.0
    return float(np.clip((second - float(row[best])) / spread, 0.0, 1.0))


@dataclass(frozen=True)
class Estimate:
    """One step's answer: the best place, its confidence, the action taken (the place, or the unsure action when
    ``confidence < threshold``), and the seconds spent (method distances, sequence matching, confidence)."""

    place: int
    confidence: float
    action: int
    seconds: float

    @property
    def unsure(self) -> bool:
        return self.action != self.place


def observation_image(observation: Any) -> np.ndarray:
    """The camera image of an observation: the observation itself, or its ``"image"`` entry."""
    if isinstance(observation, dict):
        if "image" not in observation:
            raise ValueError(f"a dict observation needs an 'image' entry, got keys {sorted(observation)}")
        return np.asarray(observation["image"])
    return np.asarray(observation)


def observation_odometry(observation: Any) -> float:
    """The places driven since the previous observation: the ``"odometry"`` entry of a dict observation."""
    if not isinstance(observation, dict) or "odometry" not in observation:
        raise ValueError("odometry sequence matching needs observations with an 'odometry' entry: make the "
                         "environment with odometry_noise set (e.g. --env-option odometry_noise=0.1)")
    return float(np.asarray(observation["odometry"]).reshape(-1)[0])


class PlaceAgent:
    """A place method with an online sequence matcher: ``act(observation) -> action`` once per frame, ``reset()``
    between episodes.

    The action is the index of the best reference place after sequence matching, or ``n_places`` ("unsure", the
    environment's last action) when :func:`confidence` of the matched row is below ``confidence_threshold``
    (0, the default, always answers). The agent needs a built map: call :meth:`build_map` with the reference
    images (``env.unwrapped.reference_frames()``), or pass a method whose map is already built.
    """

    def __init__(self, method: PlaceMethod, sequence: SequenceConfig = SequenceConfig(), confidence_threshold: float = 0.0):
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], not {confidence_threshold}")
        self.method = method
        self.sequence = sequence
        self.confidence_threshold = float(confidence_threshold)
        self.matcher = OnlineSequenceMatcher(sequence)
        self.last: Estimate | None = None

    @property
    def name(self) -> str:
        matcher = "" if self.sequence.length == 1 else f", {self.sequence.mode} L={self.sequence.length}"
        return f"{self.method.name}{matcher}"

    def build_map(self, reference_images: Iterable[np.ndarray]) -> PlaceAgent:
        self.method.build_map(reference_images)
        self.reset()
        return self

    def reset(self) -> None:
        """Forget the frames seen: call at the start of every episode."""
        self.matcher.reset()
        self.last = None

    def estimate(self, observation: Any) -> Estimate:
        """The answer to one observation, with its confidence and cost (also kept as :attr:`last`)."""
        start = time.perf_counter()
        row = np.asarray(self.method.distances([observation_image(observation)]), dtype=np.float64)
        if row.ndim != 2 or row.shape[0] != 1:
            raise RuntimeError(f"{self.method.name} gave distances of shape {row.shape} for one image")
        moved = observation_odometry(observation) if self.sequence.mode == "odometry" else None
        matched = self.matcher.push(row[0], moved)
        place = int(np.argmin(matched))
        sure = confidence(matched, place)
        action = place if sure >= self.confidence_threshold else matched.size
        self.last = Estimate(place, sure, action, time.perf_counter() - start)
        return self.last

    def act(self, observation: Any) -> int:
        return self.estimate(observation).action

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method.describe(),
                "sequence": {k: getattr(self.sequence, k) for k in self.sequence.__dataclass_fields__},
                "confidence_threshold": self.confidence_threshold}
