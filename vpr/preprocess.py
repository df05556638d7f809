"""Image preprocessing shared by every place-recognition method: a pure, vectorised core.

Every function takes arrays and returns arrays; the parameters live in :class:`PreprocessConfig`, which is
recorded in every result so that a number can be traced to exactly how its images were prepared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

PatchMode = Literal["none", "pixel", "block"]

# ITU-R BT.601 luma weights, the ones PIL and OpenCV use for RGB -> grey.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become the arrays a method compares.

    ``patch_mode``: ``"pixel"`` is VPRSNN's per-pixel normalisation over a ``patch_size``-square neighbourhood,
    clipped to [-1, 1]; ``"block"`` is SeqSLAM's normalisation of non-overlapping ``patch_size`` blocks to zero
    mean and unit variance; ``"none"`` keeps grey levels scaled to [0, 1].
    """

    width: int = 64
    height: int = 32
    patch_mode: PatchMode = "block"
    patch_size: int = 8

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.patch_mode not in ("none", "pixel", "block"):
            raise ValueError(f"unknown patch_mode {self.patch_mode!r}: expected 'none', 'pixel' or 'block'")
        if self.patch_mode != "none" and self.patch_size < 2:
            raise ValueError(f"patch_size must be at least 2, got {self.patch_size}")
        if self.patch_mode == "block" and (self.width % self.patch_size or self.height % self.patch_size):
            raise ValueError(
                f"block patch normalisation needs the image size ({self.width}x{self.height}) "
                f"to be a multiple of patch_size ({self.patch_size})"
            )


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Grey levels in [0, 255] as float32, from an (H, W) or (H, W, 3|4) uint8 or float image."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32, copy=False)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].astype(np.float32, copy=False) @ _LUMA
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased bilinear resize of one grey image (PIL widens the filter when shrinking)."""
    if gray.shape == (height, width):
        return gray.astype(np.float32, copy=False)
    resized = Image.fromarray(gray.astype(np.float32, copy=False), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def patch_normalise_pixel(images: np.ndarray, patch_size: int) -> np.ndarray:
    """VPRSNN's per-pixel normalisation: each pixel minus the mean of its neighbourhood, over its population std.

    Neighbourhoods are ``patch_size`` square, centred (for even sizes the extra row/column is below/right), and
    truncated at the borders (as VPRSNN's NaN padding does). Flat neighbourhoods give 0. Output in [-1, 1].
    Neighbourhood sums come from summed-area tables in float64 (one pass, instead of a copy of every window), so a
    frame costs about 0.06 ms at 32x32; values agree with NaN-padded window statistics to about 1e-5.
    """
    images = np.asarray(images, dtype=np.float64)
    before = (patch_size - 1) // 2
    after = patch_size - 1 - before
    pad = ((before, after), (before, after))
    inside = np.pad(np.ones(images.shape[-2:]), pad)
    count = _window_sums(inside, patch_size)
    padded = np.pad(images, ((0, 0), *pad))
    mean = _window_sums(padded, patch_size) / count
    variance = np.maximum(_window_sums(padded * padded, patch_size) / count - mean * mean, 0.0)
    std = np.sqrt(variance)
    # Relative floor: a flat neighbourhood's variance is rounding noise of the sums, not contrast.
    flat = std <= 1e-6 * np.maximum(np.abs(mean), 1.0)
    normalised = (images - mean) / np.where(flat, 1.0, std)
    return np.clip(np.where(flat, 0.0, normalised), -1.0, 1.0).astype(np.float32)


def _window_sums(padded: np.ndarray, size: int) -> np.ndarray:
    """Sums over every ``size`` x ``size`` window of the last two axes (valid windows only)."""
    table = np.pad(padded.cumsum(-1).cumsum(-2), [(0, 0)] * (padded.ndim - 2) + [(1, 0), (1, 0)])
    return table[..., size:, size:] - table[..., :-size, size:] - table[..., size:, :-size] + table[..., :-size, :-size]


def patch_normalise_block(images: np.ndarray, patch_size: int) -> np.ndarray:
    """SeqSLAM's patch normalisation: each non-overlapping block to zero mean and unit population std."""
    images = np.asarray(images, dtype=np.float32)
    n, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {width}x{height} is not a multiple of patch_size {patch_size}")
    blocks = images.reshape(n, height // patch_size, patch_size, width // patch_size, patch_size)
    mean = blocks.mean(axis=(2, 4), keepdims=True)
    std = blocks.std(axis=(2, 4), keepdims=True)
    normalised = np.divide(blocks - mean, std, out=np.zeros_like(blocks), where=std > 0)
    return normalised.reshape(n, height, width)


def normalise(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Apply the configured patch normalisation to a stack of grey images (N, H, W) in [0, 255]."""
    if config.patch_mode == "pixel":
        return patch_normalise_pixel(images, config.patch_size)
    if config.patch_mode == "block":
        return patch_normalise_block(images, config.patch_size)
    return (np.asarray(images, dtype=np.float32) / 255.0).astype(np.float32)


def preprocess(images: Iterable[np.ndarray], config: PreprocessConfig) -> np.ndarray:
    """Grey, resize and patch-normalise images into an (N, height, width) float32 stack.

    Images are reduced one at a time as they arrive, so full-resolution frames are never all held in memory.
    """
    return preprocess_views(images, config, max_shift=0)[:, 0]


def shift_offsets(max_shift: int) -> list[tuple[int, int]]:
    """Every (dx, dy) with both in [-max_shift, max_shift], the unshifted view first."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    span = range(-max_shift, max_shift + 1)
    return sorted(((dx, dy) for dy in span for dx in span), key=lambda offset: offset != (0, 0))


def shifted_views(images: np.ndarray, max_shift: int) -> np.ndarray:
    """(N, H, W) -> (N, views, H, W): each image moved by every offset of :func:`shift_offsets`, edges repeated.

    Views of a reference image stand for the small changes of viewpoint between traverses (a robot a little to
    the side of where the map was recorded), which a learner shown them can tolerate.
    """
    images = np.asarray(images)
    _, height, width = images.shape
    views = []
    for dx, dy in shift_offsets(max_shift):
        rows = np.clip(np.arange(height) - dy, 0, height - 1)
        columns = np.clip(np.arange(width) - dx, 0, width - 1)
        views.append(images[:, rows][:, :, columns])
    # C order: the patch statistics' float sums depend on memory layout, and maps are fingerprinted by them.
    return np.ascontiguousarray(np.stack(views, axis=1))


def preprocess_views(images: Iterable[np.ndarray], config: PreprocessConfig, max_shift: int) -> np.ndarray:
    """Like :func:`preprocess`, with every image also shifted by up to ``max_shift`` pixels at the output size
    (before patch normalisation): (N, views, height, width), view 0 unshifted."""
    small = [resize(to_grayscale(image), config.width, config.height) for image in images]
    if not small:
        raise ValueError("no images to preprocess")
    views = shifted_views(np.stack(small), max_shift)
    return normalise(views.reshape(-1, config.height, config.width), config).reshape(views.shape)
