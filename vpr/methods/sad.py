"""Sum of absolute differences (SAD) between small patch-normalised images: the classic VPR baseline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import cdist

from spikebot.progress import progress
from vpr.methods.base import PlaceMethod, register_method
from vpr.preprocess import PreprocessConfig, preprocess


@dataclass(frozen=True)
class SADConfig:
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(64, 32, "block", 8))
    query_chunk: int = 256


@register_method
class SADMethod(PlaceMethod):
    """Mean absolute difference between grey, resized (64x32) and 8x8-patch-normalised images."""

    name = "sad"
    config_type = SADConfig

    def build_map(self, reference_images: Iterable[np.ndarray]) -> None:
        self.reference = preprocess(reference_images, self.config.preprocess).reshape(-1, self._n_pixels)

    def map_bytes(self) -> int:
        return self.reference.nbytes

    @property
    def _n_pixels(self) -> int:
        return self.config.preprocess.width * self.config.preprocess.height

    def distances(self, query_images: Iterable[np.ndarray]) -> np.ndarray:
        queries = preprocess(query_images, self.config.preprocess).reshape(-1, self._n_pixels)
        chunks = range(0, len(queries), self.config.query_chunk)
        return np.concatenate(
            [
                cdist(queries[start : start + self.config.query_chunk], self.reference, metric="cityblock")
                for start in progress(chunks, desc="sad distances", total=len(chunks))
            ]
        ).astype(np.float32) / self._n_pixels
