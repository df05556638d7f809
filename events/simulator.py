"""An ESIM-style event simulator and a generator of clips with known affine motion and dense ground-truth flow.

Sensor model (:func:`esim_step`, after Rebecq et al., "ESIM: an Open Event Camera Simulator", CoRL 2018):

- Each pixel keeps a reference log intensity ``ref`` (the log intensity ``L = log(I + log_eps)`` at its last
  event) and its own ON and OFF contrast thresholds, drawn once per pixel from ``N(C, threshold_sigma)``.
- Between two rendered frames the log intensity is interpolated linearly in time; each crossing of
  ``ref + k * C_on`` (``ref - k * C_off``) emits an ON (OFF) event at the interpolated crossing time, so one
  frame interval can give a pixel several events, timestamped apart.
- Refractory period: a pixel emits no event within ``refractory_us`` of its previous emitted event. A crossing
  that falls inside it is dropped, but the reference still moves past it (the pixel loses that change rather
  than emitting it late).
- Background noise: Poisson events at ``noise_rate_hz`` per pixel, uniform in time, random polarity; they obey
  the refractory period but do not move the reference.

The motion generator (:func:`simulate_clip`) moves a photograph (or a procedural texture) across the sensor by
an affine trajectory with constant velocity, rotation rate and scale rate about the image centre, renders it
with OpenCV's ``warpAffine`` at sub-steps fine enough that no pixel moves more than ``max_px_per_substep``
between them (and at least ``min_substep_hz``), and returns the events with dense ground-truth optical flow at
each ``flow_interval_us`` boundary: for the pixel p at time t_k, the displacement (pixels) of the scene point
seen there until t_k + interval, i.e. pixels per 10 ms at the default 100 Hz, and where it is valid (the scene
point lies on the photograph at both times).

Everything here is a pure function of its inputs (the RNG is an explicit argument or built from the seed);
reading photographs from disk is left to the caller (:func:`load_photograph`, the CLI).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from events.io import EVENT_DTYPE, concatenate_events

_NEVER = np.iinfo(np.int64).min // 2  # "no event yet" for the refractory clock


@dataclass(frozen=True)
class EsimConfig:
    """The pixel model: contrast thresholds (log units), their per-pixel spread, refractory period, noise."""

    threshold_on: float = 0.2
    threshold_off: float = 0.2
    threshold_sigma: float = 0.03
    min_threshold: float = 0.01
    refractory_us: int = 100
    noise_rate_hz: float = 0.0
    log_eps: float = 0.01

    def __post_init__(self) -> None:
        if self.threshold_on <= 0 or self.threshold_off <= 0 or self.min_threshold <= 0:
            raise ValueError("contrast thresholds must be positive")
        if self.threshold_sigma < 0 or self.refractory_us < 0 or self.noise_rate_hz < 0 or self.log_eps <= 0:
            raise ValueError("threshold_sigma, refractory_us and noise_rate_hz must be >= 0 and log_eps > 0")


@dataclass(frozen=True)
class EsimState:
    """Per-pixel state between frames (flattened arrays of H * W)."""

    time_us: int
    log_intensity: np.ndarray
    reference: np.ndarray
    threshold_on: np.ndarray
    threshold_off: np.ndarray
    last_event_us: np.ndarray
    width: int


def log_intensity(frame: np.ndarray, log_eps: float) -> np.ndarray:
    """``log(I + eps)`` of a grey frame with intensities in [0, 1], flattened, float64."""
    return np.log(np.asarray(frame, np.float64).reshape(-1) + log_eps)


def esim_init(frame: np.ndarray, time_us: int, config: EsimConfig, rng: np.random.Generator) -> EsimState:
    """The state at the first frame: references at its log intensity, per-pixel thresholds drawn from ``rng``."""
    frame = np.asarray(frame)
    size = frame.size
    level = log_intensity(frame, config.log_eps)

    def thresholds(mean: float) -> np.ndarray:
        return np.maximum(mean + config.threshold_sigma * rng.standard_normal(size), config.min_threshold)

    return EsimState(int(time_us), level, level.copy(), thresholds(config.threshold_on),
                     thresholds(config.threshold_off), np.full(size, _NEVER, np.int64), frame.shape[1])


def _rank_in_pixel(pixel: np.ndarray) -> np.ndarray:
    """Rank of each entry among the entries of the same pixel (``pixel`` sorted)."""
    starts = np.flatnonzero(np.r_[True, pixel[1:] != pixel[:-1]])
    group_sizes = np.diff(np.r_[starts, len(pixel)])
    return np.arange(len(pixel)) - np.repeat(starts, group_sizes)


def apply_refractory(pixel: np.ndarray, time: np.ndarray, last_event_us: np.ndarray, refractory_us: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Which candidate events a refractory period lets through, and each pixel's last emitted time after them.

    Candidates are taken in time order per pixel; one is kept when at least ``refractory_us`` passed since the
    pixel's last kept event. Loops over the rank of a candidate within its pixel (a handful per frame), never
    over events.
    """
    keep = np.zeros(len(pixel), bool)
    last = last_event_us.copy()
    if len(pixel) == 0:
        return keep, last
    order = np.lexsort((time, pixel))
    sorted_pixel, sorted_time = pixel[order], time[order]
    rank = _rank_in_pixel(sorted_pixel)
    sorted_keep = np.zeros(len(order), bool)
    for level in range(int(rank.max()) + 1):
        at = np.flatnonzero(rank == level)
        ok = sorted_time[at] - last[sorted_pixel[at]] >= refractory_us
        sorted_keep[at[ok]] = True
        last[sorted_pixel[at[ok]]] = sorted_time[at[ok]]
    keep[order] = sorted_keep
    return keep, last


def _crossings(start: np.ndarray, end: np.ndarray, reference: np.ndarray, threshold: np.ndarray, sign: int,
               t0: int, t1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, times and counts of the level crossings ``reference + sign * k * threshold`` (k >= 1) on the
    straight line from ``start`` at ``t0`` to ``end`` at ``t1``."""
    count = np.floor(sign * (end - reference) / threshold).astype(np.int64)
    count = np.maximum(count, 0)
    pixel = np.flatnonzero(count)
    if len(pixel) == 0:
        return pixel, np.empty(0, np.int64), count
    per_pixel = count[pixel]
    pixels = np.repeat(pixel, per_pixel)
    k = np.arange(1, len(pixels) + 1) - np.repeat(np.cumsum(per_pixel) - per_pixel, per_pixel)
    level = reference[pixels] + sign * k * threshold[pixels]
    slope = end[pixels] - start[pixels]
    fraction = np.clip((level - start[pixels]) / np.where(slope == 0, 1.0, slope), 0.0, 1.0)
    times = t0 + np.floor(fraction * (t1 - t0)).astype(np.int64)
    return pixels, times, count


def esim_step(state: EsimState, frame: np.ndarray, time_us: int, config: EsimConfig, rng: np.random.Generator
              ) -> tuple[np.ndarray, EsimState]:
    """Events between the state's frame and ``frame`` at ``time_us`` (sorted by time), and the new state."""
    t0, t1 = state.time_us, int(time_us)
    if t1 < t0:
        raise ValueError(f"frame times must not decrease ({t1} us after {t0} us)")
    end = log_intensity(frame, config.log_eps)
    start, reference = state.log_intensity, state.reference
    on_pixel, on_time, on_count = _crossings(start, end, reference, state.threshold_on, +1, t0, t1)
    off_pixel, off_time, off_count = _crossings(start, end, reference, state.threshold_off, -1, t0, t1)
    new_reference = reference + on_count * state.threshold_on - off_count * state.threshold_off

    noise_count = rng.poisson(config.noise_rate_hz * len(end) * (t1 - t0) * 1e-6) if config.noise_rate_hz else 0
    noise_pixel = rng.integers(0, len(end), noise_count)
    noise_time = t0 + np.floor(rng.random(noise_count) * (t1 - t0)).astype(np.int64)
    noise_polarity = rng.integers(0, 2, noise_count)

    pixel = np.concatenate([on_pixel, off_pixel, noise_pixel])
    time = np.concatenate([on_time, off_time, noise_time])
    polarity = np.concatenate([np.ones(len(on_pixel), np.uint8), np.zeros(len(off_pixel), np.uint8),
                               noise_polarity.astype(np.uint8)])
    keep, last_event = apply_refractory(pixel, time, state.last_event_us, config.refractory_us)
    pixel, time, polarity = pixel[keep], time[keep], polarity[keep]
    order = np.lexsort((pixel, time))
    events = np.empty(len(order), EVENT_DTYPE)
    events["t"] = time[order]
    events["x"] = pixel[order] % state.width
    events["y"] = pixel[order] // state.width
    events["p"] = polarity[order]
    new_state = dataclasses.replace(state, time_us=t1, log_intensity=end, reference=new_reference,
                                    last_event_us=last_event)
    return events, new_state


def simulate_frames(frames: np.ndarray, times_us: np.ndarray, config: EsimConfig = EsimConfig(), seed: int = 0
                    ) -> np.ndarray:
    """Events from a sequence of grey frames (N, H, W) in [0, 1] at increasing times (N,) in microseconds."""
    frames = np.asarray(frames)
    times_us = np.asarray(times_us, np.int64)
    if frames.ndim != 3 or len(frames) != len(times_us) or len(frames) == 0:
        raise ValueError(f"need frames (N, H, W) with N matching {len(times_us)} times; got {frames.shape}")
    rng = np.random.default_rng(seed)
    state = esim_init(frames[0], int(times_us[0]), config, rng)
    parts = []
    for frame, time in zip(frames[1:], times_us[1:]):  # one vectorised step per frame
        events, state = esim_step(state, frame, int(time), config, rng)
        parts.append(events)
    return concatenate_events(parts)


# ---------------------------------------------------------------------------------------------------------------
# Known motion.


@dataclass(frozen=True)
class AffineMotion:
    """Constant-rate affine motion of the scene in sensor pixels, about ``center`` (x, y).

    A scene point seen at q at time 0 is seen at time t (seconds) at
    ``center + exp(scale_rate * t) * R(angular_velocity * t) @ (q - center) + velocity * t``.
    """

    velocity: tuple[float, float] = (0.0, 0.0)  # px/s (x, y)
    angular_velocity: float = 0.0  # rad/s, positive turns +x towards +y (clockwise on screen)
    scale_rate: float = 0.0  # 1/s, d log(scale) / dt
    center: tuple[float, float] = (0.0, 0.0)

    def matrix(self, t_s: float) -> np.ndarray:
        """The 3x3 homogeneous map from positions at time 0 to positions at ``t_s``."""
        scale = math.exp(self.scale_rate * t_s)
        angle = self.angular_velocity * t_s
        rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        center = np.asarray(self.center, np.float64)
        matrix = np.eye(3)
        matrix[:2, :2] = rotation
        matrix[:2, 2] = center - rotation @ center + np.asarray(self.velocity, np.float64) * t_s
        return matrix


def affine_flow(motion: AffineMotion, t_us: int, interval_us: int, height: int, width: int) -> np.ndarray:
    """Flow (2, H, W) float32: displacement (dx, dy) from ``t_us`` to ``t_us + interval_us`` of the scene point
    seen at each pixel centre at ``t_us``."""
    step = motion.matrix((t_us + interval_us) * 1e-6) @ np.linalg.inv(motion.matrix(t_us * 1e-6))
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    moved_x = step[0, 0] * x + step[0, 1] * y + step[0, 2]
    moved_y = step[1, 0] * x + step[1, 1] * y + step[1, 2]
    return np.stack([moved_x - x, moved_y - y]).astype(np.float32)


@dataclass(frozen=True)
class ClipConfig:
    """One simulated clip: sensor, duration, motion ranges (sampled from ``seed``), rendering and pixel model."""

    height: int = 128
    width: int = 128
    duration_ms: float = 500.0
    flow_interval_us: int = 10_000  # ground-truth flow at 100 Hz
    max_speed_px_s: float = 150.0
    max_rotation_deg_s: float = 30.0
    max_scale_rate: float = 0.2  # per second, of log scale
    max_px_per_substep: float = 1.0
    min_substep_hz: float = 1000.0
    source_scale: float = 2.5  # the photograph's shorter side, in units of the sensor's longer side
    seed: int = 0
    esim: EsimConfig = field(default_factory=EsimConfig)

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0 or self.duration_ms <= 0 or self.flow_interval_us <= 0:
            raise ValueError("height, width, duration_ms and flow_interval_us must be positive")
        if self.max_px_per_substep <= 0 or self.min_substep_hz <= 0 or self.source_scale < 1:
            raise ValueError("max_px_per_substep and min_substep_hz must be positive, source_scale >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClipConfig:
        values = dict(values)
        values["esim"] = EsimConfig(**values.get("esim", {}))
        return cls(**values)


@dataclass(frozen=True)
class SimulatedClip:
    """Events of a clip with its ground truth: ``flow`` (K, 2, H, W) float32 pixels per interval starting at
    ``flow_t_us`` (K,), ``valid`` (K, H, W) where the flow is defined, and the motion that made it."""

    events: np.ndarray
    flow: np.ndarray
    flow_t_us: np.ndarray
    valid: np.ndarray
    motion: AffineMotion
    config: ClipConfig
    substeps: int
    source: str


def sample_motion(config: ClipConfig, rng: np.random.Generator) -> AffineMotion:
    """A motion drawn uniformly within the configured ranges (speed, direction, rotation and scale rates)."""
    speed = rng.uniform(0.0, config.max_speed_px_s)
    direction = rng.uniform(0.0, 2 * math.pi)
    return AffineMotion(
        velocity=(speed * math.cos(direction), speed * math.sin(direction)),
        angular_velocity=math.radians(rng.uniform(-config.max_rotation_deg_s, config.max_rotation_deg_s)),
        scale_rate=rng.uniform(-config.max_scale_rate, config.max_scale_rate),
        center=((config.width - 1) / 2, (config.height - 1) / 2),
    )


def procedural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A grey texture in [0.05, 0.95]: multi-scale smooth noise with sharp-edged discs and bars on it."""
    import cv2

    texture = np.zeros((height, width), np.float32)
    for cells, weight in ((4, 1.0), (16, 0.5), (64, 0.25)):
        coarse = rng.random((cells, max(1, cells * width // height))).astype(np.float32)
        texture += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    size = min(height, width)
    for _ in range(40):
        grey = float(rng.uniform(0.0, 1.0))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(texture, center, int(rng.integers(size // 40 + 1, size // 8 + 2)), grey, -1, cv2.LINE_AA)
        else:
            half = np.array([rng.integers(2, size // 6 + 3), rng.integers(2, size // 20 + 3)])
            box = ((float(center[0]), float(center[1])), (float(2 * half[0]), float(2 * half[1])),
                   float(rng.uniform(0, 180)))
            cv2.fillPoly(texture, [cv2.boxPoints(box).astype(np.int32)], grey, cv2.LINE_AA)
    texture = cv2.GaussianBlur(texture, (0, 0), 0.7)
    return np.clip(0.05 + 0.9 * texture, 0.0, 1.0).astype(np.float32)


def load_photograph(path: str | Path) -> np.ndarray:
    """A photograph as a grey float32 image in [0, 1] (read with Pillow)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), np.float32) / 255.0


def _prepare_source(photo: np.ndarray | None, config: ClipConfig, rng: np.random.Generator) -> np.ndarray:
    import cv2

    short_side = int(round(config.source_scale * max(config.height, config.width)))
    if photo is None:
        return procedural_texture(short_side, short_side, rng)
    photo = np.asarray(photo, np.float32)
    if photo.ndim != 2:
        raise ValueError(f"the photograph must be a grey image (H, W), got shape {photo.shape}")
    factor = short_side / min(photo.shape)
    size = (max(1, round(photo.shape[1] * factor)), max(1, round(photo.shape[0] * factor)))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


def _render(source: np.ndarray, warp: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return cv2.warpAffine(source, warp[:2], (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def simulate_clip(config: ClipConfig, photo: np.ndarray | None = None, motion: AffineMotion | None = None,
                  source_name: str = "") -> SimulatedClip:
    """Move ``photo`` (grey, [0, 1]; a procedural texture when None) by ``motion`` (drawn from the config's ranges
    and seed when None) in front of the simulated sensor; events plus ground-truth flow at every interval."""
    source = _prepare_source(photo, config, np.random.default_rng([config.seed, 2]))
    motion = sample_motion(config, np.random.default_rng([config.seed, 0])) if motion is None else motion
    height, width = config.height, config.width
    # Sensor position q at time 0 shows source pixel q + offset: the view starts at the source's centre.
    offset = np.array([(source.shape[1] - width) / 2, (source.shape[0] - height) / 2])
    to_view = np.eye(3)
    to_view[:2, 2] = -offset  # source coordinates -> sensor coordinates at time 0

    def warp_at(t_us: float) -> np.ndarray:
        return motion.matrix(t_us * 1e-6) @ to_view

    interval = config.flow_interval_us
    intervals = max(1, int(round(config.duration_ms * 1000 / interval)))
    flow_t = np.arange(intervals, dtype=np.int64) * interval
    flows = np.stack([affine_flow(motion, int(t), interval, height, width) for t in flow_t])
    valid = np.stack([_valid_mask(warp_at(t), source.shape, height, width) for t in flow_t])

    esim_rng = np.random.default_rng([config.seed, 1])
    state = esim_init(_render(source, warp_at(0), height, width), 0, config.esim, esim_rng)
    parts = []
    substeps_total = 0
    for k, t_start in enumerate(flow_t):
        largest = float(np.hypot(flows[k, 0], flows[k, 1]).max())  # px moved by the fastest pixel
        substeps = max(math.ceil(interval * 1e-6 * config.min_substep_hz - 1e-9),
                       math.ceil(largest / config.max_px_per_substep - 1e-6))
        substeps_total += substeps
        for j in range(1, substeps + 1):  # one vectorised ESIM step per rendered sub-frame
            t = int(t_start) + (interval * j) // substeps
            events, state = esim_step(state, _render(source, warp_at(t), height, width), t, config.esim, esim_rng)
            parts.append(events)
    events = concatenate_events(parts)
    return SimulatedClip(events, flows, flow_t, valid, motion, config, substeps_total, source_name or "procedural")


def _valid_mask(warp: np.ndarray, source_shape: tuple[int, ...], height: int, width: int) -> np.ndarray:
    """Pixels showing a point of the source image itself (not its mirrored border) under ``warp``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    source_points = np.linalg.inv(warp) @ np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
    inside = (source_points[0] >= 0) & (source_points[0] <= source_shape[1] - 1)
    inside &= (source_points[1] >= 0) & (source_points[1] <= source_shape[0] - 1)
    return inside.reshape(height, width)
