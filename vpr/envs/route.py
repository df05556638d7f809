"""``spikebot/RouteLocalization-v0``: drive along a query traverse and say, at every frame, which reference place
the camera sees."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from PIL import Image

from vpr.data import PlaceDataset
from vpr.envs.profiles import PROFILE_KINDS, ProfileConfig, plan_path
from vpr.envs.render import compose_frame

SPEED_PROFILES = (*PROFILE_KINDS, "random")
RESET_OPTIONS = ("speed_profile", "start")
MAX_OBS_SIDE = 4096
_FRAME_CACHE = 32
_OFFSCREEN_BACKENDS = ("agg", "pdf", "svg", "ps", "cairo", "pgf", "template")


def display_available() -> bool:
    """Whether a window can be opened: always on macOS and Windows, elsewhere when X11 or Wayland is set."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _check_speed_profile(kind: Any) -> str:
    if kind not in SPEED_PROFILES:
        raise ValueError(f"unknown speed_profile {kind!r}; expected one of {', '.join(SPEED_PROFILES)}")
    return kind


def _check_start(start: Any, route_length: int) -> int | str:
    if start == "random":
        return start
    if _is_int(start) and 0 <= start < route_length:
        return int(start)
    raise ValueError(f"start must be a query frame index in 0..{route_length - 1} or 'random', not {start!r}")


def _check_obs_size(obs_size: Any) -> tuple[int, int] | None:
    if obs_size is None:
        return None
    try:
        height, width = obs_size
    except (TypeError, ValueError):
        raise ValueError(f"obs_size must be (height, width), not {obs_size!r}") from None
    if not all(_is_int(v) and 1 <= v <= MAX_OBS_SIDE for v in (height, width)):
        raise ValueError(f"obs_size must be two ints in 1..{MAX_OBS_SIDE} (height, width), not {obs_size!r}")
    return int(height), int(width)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_number(name: str, value: Any, low: float) -> float:
    number = _is_int(value) or isinstance(value, (float, np.floating))
    if not number or not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low}, not {value!r}")
    return float(value)


def camera_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W) or (H, W, 3|4) uint8 frame as an RGB (height, width, 3) uint8 image, resized bilinearly if needed."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3]
    else:
        raise ValueError(f"expected an (H, W) or (H, W, 3) frame, got shape {image.shape}")
    if image.shape[:2] != size:
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size[::-1], Image.Resampling.BILINEAR))
    return np.ascontiguousarray(image)


def true_places(dataset: PlaceDataset) -> np.ndarray:
    """Per query frame, the reference that is its place: itself where the query's own index matches (frame-aligned
    datasets), else the middle of its matching references, -1 where it has none."""
    matrix = dataset.ground_truth.matrix
    places = np.full(len(dataset.query), -1, dtype=np.int64)
    for query in range(len(dataset.query)):
        matches = matrix.indices[matrix.indptr[query] : matrix.indptr[query + 1]]
        if len(matches):
            places[query] = query if query in matches else int(np.sort(matches)[len(matches) // 2])
    return places


class RouteLocalizationEnv(gymnasium.Env):
    """Closed-loop place recognition: a robot drives along the query traverse of a place dataset, at a speed that
    changes from episode to episode, and at every step names the reference place its camera sees.

    The environment only serves frames and scores answers; the method and any sequence matching live in the agent
    (:class:`vpr.agents.PlaceAgent`). Built with ``gymnasium.make("spikebot/RouteLocalization-v0", **arguments)``
    (registered when :mod:`vpr` is imported).

    - **Observation**: the camera image, ``Box(0, 255, (H, W, 3), uint8)``: the query frame nearest the robot's
      position, RGB (grey datasets repeated to three channels), resized bilinearly to ``obs_size`` (default: the
      size of the first query frame, so the demo route's 48x64 frames are served unchanged). With
      ``odometry_noise`` set, a ``Dict`` of ``"image"`` (that Box) and ``"odometry"``, ``Box(-L, L, (1,),
      float32)`` with ``L`` the route's number of query frames: the distance driven since the previous observation,
      in places (negative when reversing), plus Gaussian noise of standard deviation ``odometry_noise`` places,
      clipped to the box (0 at reset).
    - **Action**: ``Discrete(n_places + 1)``: the index of the reference place the current frame shows, or
      ``n_places`` for "unsure" (:attr:`unsure_action`).
    - **Reward**: +1 when the answer is one of the frame's matching references (the dataset's ground truth: within
      its tolerance), ``-wrong_penalty`` for any other place, 0 for "unsure".
    - **Start state**: the robot at query frame ``start`` (0: the start of the route; ``"random"``: uniform over
      the first three quarters of the route), with a speed profile (``constant``, ``varying``, ``stops``,
      ``reversals``; ``"random"`` draws one per episode) drawn from ``self.np_random``: see
      :mod:`vpr.envs.profiles`. ``reset(options=...)`` may override ``speed_profile`` and ``start`` for one
      episode; other option keys are refused.
    - **Episode end**: ``terminated`` once the frame at the route's last query frame has been answered;
      ``truncated`` if a profile's speed-draw horizon ran out first (see :func:`vpr.envs.profiles.plan_path`;
      practically never) or, with ``gymnasium.make(..., max_episode_steps=N)``, after ``N`` steps.
    - **Info**: after every step, about the frame just answered: ``query_index``, ``true_place`` (its reference
      place, -1 if it has none), ``correct_places`` (its matching references), ``correct``, ``unsure``,
      ``position`` (places along the route) and ``speed_profile``; at reset ``speed_profile`` and ``start``.
    - **Rendering**: ``rgb_array`` returns the camera image beside the reference image of the last estimate, above a
      strip of the whole map with the true place, its tolerance band and the estimate (blue when right, red when
      wrong); after a step it shows the frame just answered. ``human`` shows the same in a matplotlib window at
      every step and needs a display.
    - **Arguments**: ``dataset`` (a registered dataset name, default ``"demo"``, the embedded synthetic route; or a
      :class:`vpr.data.PlaceDataset`), ``reference``, ``query``, ``split``, ``tolerance``, ``data_root`` (for a
      registered name, as in :func:`vpr.datasets.load_registered`), ``obs_size`` ((height, width)),
      ``speed_profile``, ``speed`` (nominal places per step, default 1), ``start``, ``odometry_noise`` (None: no
      odometry), ``wrong_penalty`` (default 1: answer only when more likely right than wrong), ``render_mode``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "human"], "render_fps": 10}

    def __init__(
        self,
        dataset: str | PlaceDataset = "demo",
        *,
        reference: str | None = None,
        query: str | None = None,
        split: str = "all",
        tolerance: int | None = None,
        data_root: str | Path | None = None,
        obs_size: tuple[int, int] | None = None,
        speed_profile: str = "random",
        speed: float = 1.0,
        start: int | str = 0,
        odometry_noise: float | None = None,
        wrong_penalty: float = 1.0,
        render_mode: str | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; expected one of {', '.join(self.metadata['render_modes'])}")
        if render_mode == "human" and not display_available():
            raise ValueError("render_mode='human' needs a display (neither DISPLAY nor WAYLAND_DISPLAY is set); "
                             "use render_mode='rgb_array'")
        self.speed_profile = _check_speed_profile(speed_profile)
        self.profile_config = ProfileConfig(speed=_check_number("speed", speed, 0.0))
        if self.profile_config.speed == 0:
            raise ValueError("speed must be > 0 places per step")
        self.wrong_penalty = _check_number("wrong_penalty", wrong_penalty, 0.0)
        self.odometry_noise = None if odometry_noise is None else _check_number("odometry_noise", odometry_noise, 0.0)
        obs_size = _check_obs_size(obs_size)
        if isinstance(dataset, PlaceDataset):
            if any(v is not None for v in (reference, query, tolerance, data_root)) or split != "all":
                raise ValueError("reference, query, split, tolerance and data_root apply to a registered dataset name, "
                                 "not to a PlaceDataset")
            self.dataset = dataset
        elif isinstance(dataset, str):
            from vpr.datasets import load_registered

            self.dataset = load_registered(dataset, reference, query, data_root=data_root, split=split,  # type: ignore[arg-type]
                                           tolerance=tolerance)
        else:
            raise ValueError(f"dataset must be a registered dataset name or a PlaceDataset, not a {type(dataset).__name__}")
        self.n_places = len(self.dataset.reference)
        self.route_length = len(self.dataset.query)
        self.start = _check_start(start, self.route_length)
        self.obs_size = obs_size or tuple(np.asarray(self.dataset.query[0]).shape[:2])
        self._true_places = true_places(self.dataset)
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()

        image_space = spaces.Box(0, 255, (*self.obs_size, 3), np.uint8)
        if self.odometry_noise is None:
            self.observation_space: spaces.Space = image_space
        else:
            self.observation_space = spaces.Dict(
                {"image": image_space, "odometry": spaces.Box(-self.route_length, self.route_length, (1,), np.float32)})
        self.action_space = spaces.Discrete(self.n_places + 1)
        self.render_mode = render_mode
        self._positions: np.ndarray | None = None
        self._figure: Any = None

    @property
    def unsure_action(self) -> int:
        return self.n_places

    # -- frames ------------------------------------------------------------------------------------------------
    def _query_frame(self, index: int) -> np.ndarray:
        if index not in self._frames:
            self._frames[index] = camera_image(self.dataset.query[index], self.obs_size)
            if len(self._frames) > _FRAME_CACHE:
                self._frames.popitem(last=False)
        self._frames.move_to_end(index)
        return self._frames[index]

    def reference_frames(self) -> Iterator[np.ndarray]:
        """The reference traverse as the camera would see it (RGB, ``obs_size``): what an agent builds its map from."""
        return (camera_image(image, self.obs_size) for image in self.dataset.reference)

    def _observation(self, query_index: int, moved: float | None) -> Any:
        """The frame ``query_index``; with odometry, ``moved`` places plus noise (None: 0, no noise)."""
        image = self._query_frame(query_index).copy()
        if self.odometry_noise is None:
            return image
        odometry = 0.0 if moved is None else moved + self.np_random.normal(0.0, self.odometry_noise)
        bound = self.route_length
        return {"image": image, "odometry": np.array([min(max(odometry, -bound), bound)], dtype=np.float32)}

    def correct_places(self, query_index: int) -> np.ndarray:
        """The references that match query frame ``query_index``."""
        matrix = self.dataset.ground_truth.matrix
        return np.array(matrix.indices[matrix.indptr[query_index] : matrix.indptr[query_index + 1]], dtype=np.int64)

    # -- the Gymnasium API -------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = {} if options is None else options
        if not isinstance(options, dict) or set(options) - set(RESET_OPTIONS):
            unknown = sorted(map(str, set(options) - set(RESET_OPTIONS))) if isinstance(options, dict) else options
            raise ValueError(f"unknown reset options {unknown}; RouteLocalization-v0 takes {', '.join(RESET_OPTIONS)}")
        kind = _check_speed_profile(options.get("speed_profile", self.speed_profile))
        start = _check_start(options.get("start", self.start), self.route_length)
        if kind == "random":
            kind = PROFILE_KINDS[int(self.np_random.integers(len(PROFILE_KINDS)))]
        if start == "random":
            start = int(self.np_random.integers(0, int(0.75 * (self.route_length - 1)) + 1))
        self._kind = kind
        self._positions, self._indices, self._reached_end = plan_path(
            kind, float(start), self.route_length, self.np_random, self.profile_config)
        self._t = 0
        self._last: tuple[int, int | None] = (int(self._indices[0]), None)
        observation = self._observation(int(self._indices[0]), None)
        if self.render_mode == "human":
            self._render_human()
        return observation, {"speed_profile": kind, "start": int(start)}

    def step(self, action):
        if self._positions is None or self._t >= len(self._indices):
            raise RuntimeError("the episode is over (or has not begun): call reset()")
        if not self.action_space.contains(np.int64(action) if isinstance(action, (int, np.integer)) else action):
            raise ValueError(f"action must be a reference place in 0..{self.n_places - 1} or {self.n_places} (unsure), "
                             f"not {action!r}")
        action = int(action)
        query_index = int(self._indices[self._t])
        correct_places = self.correct_places(query_index)
        unsure = action == self.unsure_action
        correct = bool(not unsure and np.any(correct_places == action))
        reward = 0.0 if unsure else (1.0 if correct else -self.wrong_penalty)
        info = {"query_index": query_index, "true_place": int(self._true_places[query_index]),
                "correct_places": correct_places, "correct": correct, "unsure": unsure,
                "position": float(self._positions[self._t]), "speed_profile": self._kind}
        self._last = (query_index, None if unsure else action)
        self._t += 1
        terminated = self._t >= len(self._indices) and self._reached_end
        truncated = self._t >= len(self._indices) and not self._reached_end
        if terminated or truncated:  # no next frame: the final observation repeats the last one, having not moved
            observation = self._observation(query_index, None)
        else:
            observation = self._observation(int(self._indices[self._t]),
                                            float(self._positions[self._t] - self._positions[self._t - 1]))
        if self.render_mode == "human":
            self._render_human()
        return observation, reward, terminated, truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self._frame()
        if self.render_mode == "human":
            self._render_human()
        return None

    def _frame(self) -> np.ndarray:
        if self._positions is None:
            raise RuntimeError("call reset() before render()")
        query_index, estimate = self._last
        return compose_frame(
            self._query_frame(query_index),
            None if estimate is None else camera_image(self.dataset.reference[estimate], self.obs_size),
            self.n_places, self.correct_places(query_index), int(self._true_places[query_index]), estimate)

    def _render_human(self) -> None:
        import matplotlib
        import matplotlib.pyplot as plt

        frame = self._frame()
        if self._figure is None:
            self._figure, axes = plt.subplots(num="spikebot/RouteLocalization-v0")
            axes.set_axis_off()
            self._artist = axes.imshow(frame, interpolation="nearest")
            if matplotlib.get_backend().lower() in _OFFSCREEN_BACKENDS:
                warnings.warn(f"matplotlib's backend {matplotlib.get_backend()} cannot open windows (something selected "
                              "it, e.g. vpr.report); human rendering draws off-screen", stacklevel=3)
        else:
            self._artist.set_data(frame)
        self._figure.canvas.draw_idle()
        self._figure.canvas.flush_events()
        if matplotlib.get_backend().lower() not in _OFFSCREEN_BACKENDS:
            plt.pause(1 / self.metadata["render_fps"])

    def close(self) -> None:
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None
