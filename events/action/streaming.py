"""Streaming action recognition: a saved :class:`~events.action.training.ActionModel` run on the sliding windows of a
live stream. Pure functions of a small immutable state; no HTTP.

Windows are the model's own (:class:`~events.action.points.PointConfig`: 0.5 s every 0.25 s by default), cut by
:func:`events.representations.window_bounds` as training cut its clips, starting at the 10 ms boundary before the
stream's first event (a clip's time 0) and every stride after it. A window is classified once all its events are
known (the stream has completed a bin that reaches its end); windows with fewer than ``min_events`` events are
skipped, as training dropped them, and a pause skips its empty windows without visiting them. Each window goes
through :meth:`ActionModel.predict` (point sampling, grouping and, for SpikePoint, rate codes), its draws seeded by
the window's start time: a window gets the same answer however the stream was cut into chunks, and offline. Points
are normalised over the stream's sensor (:func:`for_sensor`): the model sees x and y in [0, 1] as in training,
whatever sensor it was trained on.

Memory: the state keeps the events from the next window's start on, less than one window's worth: bounded by time,
not by count. A 10 Mev/s sensor fills a 0.5 s window with 5 M events (80 MB); the stream's cap on a 10 ms bin
(``max_event_chunk_events``) is the only count bound. The model samples ``n_points`` (1024) of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from events.action.points import Windows
from events.action.training import ActionModel
from events.io import concatenate_events
from events.representations import window_bounds

BIN_US = 10_000


@dataclass(frozen=True)
class ActionState:
    """The events of windows not yet classified, from ``next_start`` (us; None before the first event) on, as the
    parts they came in: joined only when a window completes, not on every chunk."""

    parts: tuple[np.ndarray, ...] = ()
    next_start: int | None = None


@dataclass(frozen=True)
class WindowAnswer:
    """One classified window ``[start_us, end_us)`` of ``events`` events: its class probabilities, in the order of
    the model's ``classes``, the most probable one, and the milliseconds classifying it took."""

    start_us: int
    end_us: int
    events: int
    label: str
    probabilities: np.ndarray
    compute_ms: float


def for_sensor(model: ActionModel, width: int, height: int) -> ActionModel:
    """``model`` (the same network, shared) normalising points over a ``width`` x ``height`` sensor."""
    return ActionModel(model.network, model.points, width, height, model.classes)


def classify(model: ActionModel, events: np.ndarray, start_us: int) -> np.ndarray:
    """Class probabilities of the window starting at ``start_us`` that holds ``events`` (sorted, all in it)."""
    window = Windows(np.zeros(1, np.int64), np.array([start_us]), np.zeros(1, np.int64), np.array([len(events)]))
    return torch.softmax(model.predict(events, window, seed=start_us), dim=1)[0].numpy()


def action_step(model: ActionModel, state: ActionState, events: np.ndarray, known_until_us: int
                ) -> tuple[list[WindowAnswer], ActionState]:
    """The windows that ``events`` (sorted, after the state's) and the knowledge that no event before
    ``known_until_us`` is still to come complete, and the state after them."""
    window_us, stride_us = model.points.window_us, model.points.stride_us
    parts = state.parts + ((events,) if len(events) else ())
    start = state.next_start
    if start is None:
        if not parts:
            return [], state
        start = int(parts[0]["t"][0]) // BIN_US * BIN_US
    if start + window_us > known_until_us:  # no window completes
        return [], ActionState(parts, start)
    buffered = concatenate_events(list(parts))
    first = int(buffered["t"][0]) if len(buffered) else known_until_us
    start += max(0, -(-(first - window_us + 1 - start) // stride_us)) * stride_us  # skip windows before ``first``
    starts, bounds = window_bounds(buffered["t"], window_us, stride_us, t_start=start, t_end=known_until_us,
                                   include_incomplete=False)
    answers = []
    for window_start, (lo, hi) in zip(starts.tolist(), bounds.tolist()):
        if hi - lo >= model.points.min_events:
            started = time.perf_counter()
            probabilities = classify(model, buffered[lo:hi], window_start)
            answers.append(WindowAnswer(window_start, window_start + window_us, hi - lo,
                                        model.classes[int(probabilities.argmax())], probabilities,
                                        (time.perf_counter() - started) * 1e3))
    start += len(starts) * stride_us
    rest = buffered[np.searchsorted(buffered["t"], start):]
    return answers, ActionState((rest,) if len(rest) else (), start)
