"""Contrast maximisation (Gallego et al., CVPR 2018): the flow that makes the image of warped events sharpest.

No learning. For the events of a short window ending with the bin and a candidate flow u (pixels per bin),
each event at (x, y) and time t is moved to the bin's start t0, ``(x, y) - u * (t - t0) / interval``, and voted
bilinearly into an image of warped events (IWE); the right flow stacks the events of an edge onto the edge's
position at t0, so the IWE's variance peaks there. One 10 ms bin is often too little: at 100 px/s an edge moves
one pixel in it, and a few hundred events hardly constrain the flow, so by default the window also takes the
``window_bins - 1`` bins before (the flow is assumed constant over it, which holds for the simulator's constant
rates and roughly for a camera over 30 ms).

The flow is taken constant over square patches (rotation and zoom make it vary across the frame): every patch
searches a coarse grid of candidates, then ``refine_steps`` finer 5 x 5 grids, each at half the previous spacing,
around its best so far. Patches with fewer than ``min_events`` events take the median flow of the others (zero
when none has enough); the dense field is the patch flows interpolated bilinearly between patch centres.

The IWE is smoothed by ``blur_passes`` rounds of a [1, 2, 1] / 4 kernel before its variance is taken: events sit
on integer pixels, so without smoothing a zero displacement along an axis (every vote on a pixel centre) scores
an artificially high variance, and patches with weak texture along that axis snapped to zero flow (one pass
lowered the AEE on simulated 128x128 clips from 0.46 to 0.43 px).

All patches and a chunk of candidates are scored in one ``np.bincount`` (no loop over events or patches).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ContrastMaxConfig:
    """Patch side (px), bins per window, search range per axis and coarse grid step (px per bin), refinement
    rounds, and the fewest events a patch needs to estimate its own flow."""

    patch: int = 32
    window_bins: int = 3
    max_flow: float = 6.0
    coarse_step: float = 1.5
    refine_steps: int = 4
    min_events: int = 30
    blur_passes: int = 1

    def __post_init__(self) -> None:
        if self.patch < 4 or self.window_bins < 1 or self.max_flow <= 0 or self.coarse_step <= 0:
            raise ValueError("patch must be >= 4, window_bins >= 1, max_flow and coarse_step positive")
        if self.refine_steps < 0 or self.min_events < 1 or self.blur_passes < 0:
            raise ValueError("refine_steps and blur_passes must be >= 0, min_events >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CHUNK = 4_000_000  # bilinear votes and IWE pixels per bincount: bounds memory at ~100 MB


def _binomial_blur(images: np.ndarray, passes: int) -> np.ndarray:
    """``passes`` rounds of the [1, 2, 1] / 4 kernel along both image axes (the last two; zero outside)."""
    for _ in range(passes):
        for axis in (-1, -2):
            blurred = 0.5 * images
            ahead, behind = [slice(None)] * images.ndim, [slice(None)] * images.ndim
            ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
            blurred[tuple(ahead)] += 0.25 * images[tuple(behind)]
            blurred[tuple(behind)] += 0.25 * images[tuple(ahead)]
            images = blurred
    return images


def _patch_variances(x: np.ndarray, y: np.ndarray, tau: np.ndarray, patch_id: np.ndarray, origins: np.ndarray,
                     candidates: np.ndarray, patch: int, margin: int, passes: int) -> np.ndarray:
    """IWE variance (P, N) of every patch under each of its N candidate flows ``candidates`` (P, N, 2)."""
    patches, count = candidates.shape[:2]
    side = patch + 2 * margin
    variances = np.empty((patches, count))
    chunk = max(1, _CHUNK // max(4 * len(x), patches * side * side, 1))
    local_x = (x - origins[patch_id, 0] + margin).astype(np.float32)[:, None]
    local_y = (y - origins[patch_id, 1] + margin).astype(np.float32)[:, None]
    tau = tau.astype(np.float32)[:, None]
    for start in range(0, count, chunk):
        flow = candidates[patch_id, start:start + chunk].astype(np.float32)  # (E, n, 2)
        n = flow.shape[1]
        # Clipped into the window so that all four bilinear neighbours exist: the margin is wide enough for the
        # search range, and a candidate that pushes events past it is wrong anyway.
        wx = np.clip(local_x - flow[..., 0] * tau, 0, side - 1.001)
        wy = np.clip(local_y - flow[..., 1] * tau, 0, side - 1.001)
        x0, y0 = wx.astype(np.int64), wy.astype(np.int64)
        fx, fy = wx - x0, wy - y0
        base = (patch_id[:, None] * n + np.arange(n)[None, :]) * side * side + y0 * side + x0
        index = np.concatenate([base, base + 1, base + side, base + side + 1])
        weight = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
        images = np.bincount(index.ravel(), weight.ravel(), minlength=patches * n * side * side)
        images = _binomial_blur(images.reshape(patches, n, side, side), passes)
        variances[:, start:start + n] = images.reshape(patches, n, side * side).var(axis=2)
    return variances


def contrast_max_flow(events: np.ndarray, t0_us: int, interval_us: int, height: int, width: int,
                      config: ContrastMaxConfig = ContrastMaxConfig()) -> np.ndarray:
    """Dense flow (2, H, W) float32, pixels per ``interval_us``, of the bin starting at ``t0_us``, from the
    ``events`` of ``[t0 - (window_bins - 1) * interval, t0 + interval)`` (others are ignored)."""
    if interval_us <= 0 or height <= 0 or width <= 0:
        raise ValueError("interval_us, height and width must be positive")
    t = events["t"]
    events = events[(t >= t0_us - (config.window_bins - 1) * interval_us) & (t < t0_us + interval_us)]
    grid_y, grid_x = math.ceil(height / config.patch), math.ceil(width / config.patch)
    patch_flow = np.zeros((grid_y * grid_x, 2))
    x, y = events["x"].astype(np.float64), events["y"].astype(np.float64)
    tau = (events["t"] - t0_us) / interval_us
    patch_id = (events["y"].astype(np.int64) // config.patch) * grid_x + events["x"] // config.patch
    per_patch = np.bincount(patch_id, minlength=grid_y * grid_x)
    good = np.flatnonzero(per_patch >= config.min_events)
    if len(good):
        keep = np.isin(patch_id, good)
        x, y, tau = x[keep], y[keep], tau[keep]
        patch_id = np.searchsorted(good, patch_id[keep])  # renumber 0..len(good)-1
        origins = np.stack([good % grid_x, good // grid_x], axis=1) * config.patch
        margin = int(math.ceil((config.max_flow + config.coarse_step) * max(config.window_bins - 1, 1))) + 1
        axis = np.arange(-config.max_flow, config.max_flow + 1e-9, config.coarse_step)
        grid = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1).reshape(-1, 2)
        candidates = np.broadcast_to(grid, (len(good),) + grid.shape)
        best = candidates[:, 0]
        step = config.coarse_step
        for round_ in range(config.refine_steps + 1):
            if round_:
                step /= 2
                offsets = np.stack(np.meshgrid(*(np.arange(-2, 3) * step,) * 2, indexing="xy"), -1).reshape(-1, 2)
                candidates = best[:, None, :] + offsets[None]
            variances = _patch_variances(x, y, tau, patch_id, origins, candidates, config.patch, margin,
                                         config.blur_passes)
            best = candidates[np.arange(len(good)), variances.argmax(axis=1)]
        patch_flow[:] = np.median(best, axis=0)
        patch_flow[good] = best
    return _interpolate_patches(patch_flow.reshape(grid_y, grid_x, 2), config.patch, height, width)


def _interpolate_patches(patch_flow: np.ndarray, patch: int, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation of per-patch values (gy, gx, 2) placed at patch centres, clamped at the borders."""
    centres_y = (np.arange(patch_flow.shape[0]) + 0.5) * patch - 0.5
    centres_x = (np.arange(patch_flow.shape[1]) + 0.5) * patch - 0.5

    def weights(pixels: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip(np.interp(pixels, centres, np.arange(len(centres))), 0, len(centres) - 1)
        low = np.minimum(np.floor(position).astype(int), max(len(centres) - 2, 0))
        return low, np.minimum(low + 1, len(centres) - 1), position - low

    y0, y1, fy = weights(np.arange(height), centres_y)
    x0, x1, fx = weights(np.arange(width), centres_x)
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = patch_flow[y0][:, x0] * (1 - fx) + patch_flow[y0][:, x1] * fx
    bottom = patch_flow[y1][:, x0] * (1 - fx) + patch_flow[y1][:, x1] * fx
    return np.moveaxis(top * (1 - fy) + bottom * fy, -1, 0).astype(np.float32)
