"""A procedurally generated route: the embedded default that runs with no data at all.

A long panoramic "street" is drawn once from a seeded random generator (sky, skyline of buildings with windows,
trees, textured ground). Each place is a camera crop at a fixed step along it. Traverses revisit the same places
under different conditions: a clean day pass (reference), an overcast pass with small viewpoint shifts and blur,
and a night pass (dark, low contrast, lit windows, sensor noise, blur, shifts). Everything is deterministic in
the seed, so results on it are reproducible to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from vpr.data import Traverse


@dataclass(frozen=True)
class Condition:
    """The appearance of one traverse."""

    gain: float
    gamma: float
    contrast: float
    blur_sigma: float
    noise_sigma: float
    max_shift: int
    window_light: float
    tint: tuple[float, float, float]


CONDITIONS = {
    "day": Condition(gain=1.0, gamma=1.0, contrast=1.0, blur_sigma=0.0, noise_sigma=2.0, max_shift=0,
                     window_light=0.0, tint=(1.0, 1.0, 1.0)),
    "overcast": Condition(gain=0.85, gamma=1.2, contrast=0.7, blur_sigma=0.8, noise_sigma=5.0, max_shift=4,
                          window_light=0.0, tint=(0.95, 1.0, 1.05)),
    "night": Condition(gain=0.45, gamma=1.8, contrast=0.6, blur_sigma=1.2, noise_sigma=9.0, max_shift=5,
                       window_light=0.9, tint=(1.1, 0.95, 0.7)),
}


@dataclass(frozen=True)
class RouteConfig:
    n_places: int = 240
    place_step: int = 12
    view_width: int = 64
    view_height: int = 48
    seed: int = 0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    coarse = rng.standard_normal((height // scale + 2, width // scale + 2))
    return ndimage.zoom(coarse, scale, order=3)[:height, :width]


def draw_world(config: RouteConfig) -> tuple[np.ndarray, np.ndarray]:
    """The panorama (H, W, 3) in [0, 1] and a mask of its windows (lit at night)."""
    rng = np.random.default_rng(config.seed)
    height = config.view_height
    width = config.n_places * config.place_step + config.view_width + 16
    rows = np.arange(height)[:, None]
    world = np.empty((height, width, 3))
    sky = 0.75 - 0.25 * rows / height
    world[:] = np.stack([sky * 0.8, sky * 0.9, sky * 1.05], axis=-1)
    windows = np.zeros((height, width), dtype=bool)
    horizon = int(height * 0.7)

    x = 0
    while x < width:  # skyline: buildings and trees of random size, colour and texture
        span = int(rng.integers(6, 22))
        if rng.random() < 0.7:
            top = int(rng.integers(4, horizon - 6))
            colour = rng.uniform(0.15, 0.85, size=3)
            world[top:horizon, x:x + span] = colour
            for wy in range(top + 2, horizon - 2, 4):
                for wx in range(x + 1, min(x + span - 1, width - 1), 3):
                    if rng.random() < 0.6:
                        world[wy:wy + 2, wx:wx + 1] = colour * 0.4
                        windows[wy:wy + 2, wx:wx + 1] = True
        else:
            top = int(rng.integers(horizon // 3, horizon - 4))
            world[top:horizon, x + span // 2 - 1:x + span // 2 + 1] = (0.3, 0.2, 0.1)
            crown = (rows - top) ** 2 + (np.arange(x, min(x + span, width))[None, :] - x - span / 2) ** 2 < (span / 2) ** 2
            world[:, x:x + span][crown] = rng.uniform([0.05, 0.3, 0.05], [0.2, 0.6, 0.2])
        x += span
    ground = 0.35 + 0.08 * _smooth_noise(rng, height - horizon, width, 3)
    world[horizon:] = ground[..., None] * np.array([0.9, 0.85, 0.8])
    world *= 1.0 + 0.12 * _smooth_noise(rng, height, width, 8)[..., None]
    return np.clip(world, 0.0, 1.0), windows


def render_traverse(config: RouteConfig, condition_name: str) -> np.ndarray:
    """All places of one traverse as an (n_places, H, W, 3) uint8 array."""
    condition = CONDITIONS[condition_name]
    world, windows = draw_world(config)
    rng = np.random.default_rng([config.seed, sorted(CONDITIONS).index(condition_name)])
    lit = world * condition.gain
    lit = condition.contrast * (lit - lit.mean()) + lit.mean()
    lit = np.clip(lit, 0.0, 1.0) ** condition.gamma * np.array(condition.tint)
    lit[windows] = np.maximum(lit[windows], condition.window_light * np.array([1.0, 0.9, 0.5]))
    if condition.blur_sigma:
        lit = ndimage.gaussian_filter(lit, sigma=(condition.blur_sigma, condition.blur_sigma, 0))

    shifts = rng.integers(-condition.max_shift, condition.max_shift + 1, size=(config.n_places, 2))
    starts = 8 + np.arange(config.n_places) * config.place_step + shifts[:, 0]
    rows = np.arange(config.view_height)[None, :, None]
    cols = starts[:, None, None] + np.arange(config.view_width)[None, None, :]
    rows = np.clip(rows + shifts[:, 1, None, None] // 2, 0, config.view_height - 1)
    views = lit[rows, cols]
    views = views + rng.normal(0.0, condition.noise_sigma / 255.0, size=views.shape)
    return np.clip(views * 255.0 + 0.5, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def _rendered(config: RouteConfig, condition_name: str) -> np.ndarray:
    images = render_traverse(config, condition_name)
    images.setflags(write=False)
    return images


def synthetic_traverses(config: RouteConfig = RouteConfig()) -> dict[str, Traverse]:
    """The demo route's traverses, frames named ``<condition>/<index>``."""
    traverses = {}
    for name in CONDITIONS:
        frames = tuple(f"{name}/{i:04d}" for i in range(config.n_places))

        def reader(frame: str, condition: str = name) -> np.ndarray:
            return _rendered(config, condition)[int(frame.rsplit("/", 1)[1])]

        traverses[name] = Traverse(name, frames, reader)
    return traverses
