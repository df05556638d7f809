"""Drawing one localisation step as an RGB image: pure numpy, no display needed."""

from __future__ import annotations

import numpy as np

GAP = 4
STRIP_HEIGHT = 12
BACKGROUND = np.array([32, 32, 32], dtype=np.uint8)
TOLERANCE_BAND = np.array([40, 110, 40], dtype=np.uint8)
TRUE_PLACE = np.array([80, 255, 80], dtype=np.uint8)
CORRECT_ESTIMATE = np.array([70, 140, 255], dtype=np.uint8)
WRONG_ESTIMATE = np.array([255, 60, 60], dtype=np.uint8)
NO_ESTIMATE = np.array([90, 90, 90], dtype=np.uint8)


def _column(place: int, n_places: int, width: int) -> int:
    return 0 if n_places < 2 else int(round(place * (width - 1) / (n_places - 1)))


def compose_frame(camera: np.ndarray, estimate_image: np.ndarray | None, n_places: int, correct_places: np.ndarray,
                  true_place: int, estimate: int | None) -> np.ndarray:
    """``camera`` beside the reference image of the estimate (grey when there is none: before the first answer, or
    "unsure"), above a map strip of the ``n_places`` references: the tolerance band in dark green, the true place
    in green, the estimate in blue when correct and red when wrong. ``true_place`` -1 means the frame has no
    matching reference. Both images are (H, W, 3) uint8 of one size."""
    height, width = camera.shape[:2]
    total_width = 2 * width + GAP
    canvas = np.empty((height + GAP + STRIP_HEIGHT, total_width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    canvas[:height, :width] = camera
    canvas[:height, width + GAP :] = NO_ESTIMATE if estimate_image is None else estimate_image
    strip = canvas[height + GAP :]
    for place in np.asarray(correct_places, dtype=np.int64):
        strip[:, _column(int(place), n_places, total_width)] = TOLERANCE_BAND
    if true_place >= 0:
        column = _column(true_place, n_places, total_width)
        strip[:, max(column - 1, 0) : column + 1] = TRUE_PLACE
    if estimate is not None:
        column = _column(estimate, n_places, total_width)
        colour = CORRECT_ESTIMATE if estimate in set(np.asarray(correct_places).tolist()) else WRONG_ESTIMATE
        strip[: STRIP_HEIGHT // 2, max(column - 1, 0) : column + 2] = colour
    return canvas
