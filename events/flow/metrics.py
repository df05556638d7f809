"""Flow errors: average endpoint error (AEE) and outlier rate, over the pixels a mask selects.

The endpoint error of a pixel is the Euclidean distance between the estimated and the true flow vector, in pixels
per bin. The outlier rate is the share of masked pixels whose endpoint error exceeds ``outlier_px`` (3 px, KITTI's
and MVSEC's convention, without KITTI's additional 5% relative criterion). Over several bins and sequences both are
pooled per pixel: every masked pixel of every bin weighs the same (bins with many events weigh more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def endpoint_errors(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Endpoint errors at the masked pixels: ``estimate``, ``truth`` (..., 2, H, W), ``mask`` (..., H, W)."""
    estimate, truth, mask = np.asarray(estimate), np.asarray(truth), np.asarray(mask, bool)
    if estimate.shape != truth.shape or estimate.shape[-3] != 2 or mask.shape != truth.shape[:-3] + truth.shape[-2:]:
        raise ValueError(f"need estimate and truth (..., 2, H, W) and a mask (..., H, W); got {estimate.shape}, "
                         f"{truth.shape}, {mask.shape}")
    difference = estimate.astype(np.float64) - truth
    return np.hypot(difference[..., 0, :, :], difference[..., 1, :, :])[mask]


@dataclass
class FlowErrors:
    """Running sums of endpoint errors over any number of :meth:`add` calls."""

    outlier_px: float = 3.0
    pixels: int = 0
    error_sum: float = 0.0
    outliers: int = 0

    def add(self, estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> None:
        errors = endpoint_errors(estimate, truth, mask)
        self.pixels += errors.size
        self.error_sum += float(errors.sum())
        self.outliers += int((errors > self.outlier_px).sum())

    def summary(self) -> dict[str, float | int]:
        """``aee`` (px), ``outlier_percent`` and the number of ``pixels`` they pool (NaN when there were none)."""
        if self.pixels == 0:
            return {"aee": float("nan"), "outlier_percent": float("nan"), "pixels": 0}
        return {"aee": self.error_sum / self.pixels, "outlier_percent": 100.0 * self.outliers / self.pixels,
                "pixels": self.pixels}
