"""Flow pictures: the usual colour coding (hue = direction, brightness = speed) and a PNG panel for a recording.

:func:`flow_to_rgb` maps a flow field to colours the way optical-flow papers do (after Baker et al.'s Middlebury
wheel, through HSV): the direction sets the hue, the magnitude relative to ``max_magnitude`` the saturation, so
still pixels are white and one scale can be shared by several panels and compared. Pixels outside ``mask`` (no
events: no flow estimate worth showing) are black, so that sparse event pixels stand out, still or not. :func:`colour_wheel` is the legend. :func:`render_flow_panels` draws, per chosen bin,
the events and the masked flow, and writes a PNG with matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 colours of a flow (2, H, W); ``max_magnitude`` (default: the largest shown) is full
    saturation."""
    from matplotlib.colors import hsv_to_rgb

    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"expected a flow (2, H, W), got shape {flow.shape}")
    mask = np.ones(flow.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    magnitude = np.hypot(flow[0], flow[1])
    if max_magnitude is None:
        max_magnitude = float(magnitude[mask].max()) if mask.any() else 1.0
    hue = (np.arctan2(flow[1], flow[0]) / (2 * np.pi)) % 1.0
    saturation = np.clip(magnitude / max(max_magnitude, 1e-9), 0.0, 1.0)
    rgb = hsv_to_rgb(np.stack([hue, saturation, np.ones_like(hue)], axis=-1))
    rgb[~mask] = 0.0
    return (rgb * 255).round().astype(np.uint8)


def colour_wheel(size: int = 101) -> np.ndarray:
    """The legend: (size, size, 3) uint8, each pixel coloured by its offset from the centre (unit radius = full
    saturation), black outside the disc."""
    coordinates = np.linspace(-1.0, 1.0, size)
    x, y = np.meshgrid(coordinates, coordinates)
    return flow_to_rgb(np.stack([x, y]), 1.0, np.hypot(x, y) <= 1.0)


def render_flow_panels(counts: np.ndarray, flows: np.ndarray, times_ms: list[float], path: str | Path,
                       title: str, max_magnitude: float | None = None) -> Path:
    """A PNG with, per bin, its events (ON red, OFF blue) above its flow (shown where the bin had events, black
    elsewhere) and the colour wheel; ``counts`` (N, 2, H, W), ``flows`` (N, 2, H, W), ``times_ms`` (N,) the bins' start times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, flows = np.asarray(counts), np.asarray(flows)
    if counts.shape != flows.shape or counts.ndim != 4 or counts.shape[1] != 2 or len(times_ms) != len(counts):
        raise ValueError(f"need counts and flows (N, 2, H, W) and N times; got {counts.shape}, {flows.shape}, "
                         f"{len(times_ms)} times")
    masks = counts.sum(axis=1) > 0
    if max_magnitude is None:
        shown = [np.hypot(*flow)[mask] for flow, mask in zip(flows, masks) if mask.any()]
        max_magnitude = float(np.percentile(np.concatenate(shown), 99)) if shown else 1.0
    panels, height, width = len(counts), counts.shape[2], counts.shape[3]
    inches = max(2.6, width / 100)  # at 110 dpi, about one screen pixel per sensor pixel or more
    figure, axes = plt.subplots(2, panels + 1, figsize=(inches * (panels + 1), 2 * inches * height / width + 0.8),
                                squeeze=False)
    for column, (count, flow, mask, t) in enumerate(zip(counts, flows, masks, times_ms)):
        events = np.ones(count.shape[1:] + (3,))
        events[count[1] > 0] = (0.85, 0.1, 0.1)
        events[count[0] > count[1]] = (0.1, 0.2, 0.85)
        axes[0, column].imshow(events, interpolation="nearest")
        axes[0, column].set_title(f"events {t:.0f}-{t + 10:.0f} ms", fontsize=9)
        axes[1, column].imshow(flow_to_rgb(flow, max_magnitude, mask), interpolation="nearest")
        axes[1, column].set_title("flow", fontsize=9)
    axes[0, panels].imshow(colour_wheel())
    axes[0, panels].set_title(f"wheel: radius {max_magnitude:.2g} px/bin", fontsize=9)
    axes[1, panels].set_visible(False)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
