"""The data model: traverses of images, ground truth, and place datasets that join them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import sparse

from vpr.errors import DatasetError


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file fully (so truncation is caught here) into an (H, W) or (H, W, 3) uint8 array."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            return np.asarray(image)
    except FileNotFoundError as error:
        raise DatasetError(f"image not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


@dataclass(frozen=True)
class Traverse:
    """One ordered pass along a route: frame ``i`` is the ``i``-th image, read on demand by ``reader``."""

    name: str
    frames: tuple[str, ...]
    reader: Callable[[str], np.ndarray] = field(default=read_image, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.reader(self.frames[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.reader(frame) for frame in self.frames)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Traverse:
        return Traverse(self.name, tuple(self.frames[i] for i in np.asarray(indices, dtype=int)), self.reader)


class GroundTruth:
    """Which references match each query, as a sparse boolean (n_query, n_reference) matrix."""

    def __init__(self, matrix: sparse.csr_array | sparse.csr_matrix):
        self.matrix = sparse.csr_array(matrix, dtype=bool)
        self.matrix.sum_duplicates()

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[return-value]

    @classmethod
    def from_positions(
        cls, query_positions: np.ndarray, reference_positions: np.ndarray, tolerance: int
    ) -> GroundTruth:
        """Frame-aligned truth: query ``i`` matches reference ``j`` when their route positions differ by <= tolerance."""
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        query_positions = np.asarray(query_positions, dtype=np.int64)
        reference_positions = np.asarray(reference_positions, dtype=np.int64)
        order = np.argsort(reference_positions, kind="stable")
        sorted_positions = reference_positions[order]
        low = np.searchsorted(sorted_positions, query_positions - tolerance, side="left")
        high = np.searchsorted(sorted_positions, query_positions + tolerance, side="right")
        counts = high - low
        indptr = np.concatenate([[0], np.cumsum(counts)])
        offsets = np.arange(indptr[-1]) - np.repeat(indptr[:-1] - low, counts)
        matrix = sparse.csr_array(
            (np.ones(indptr[-1], dtype=bool), order[offsets], indptr),
            shape=(len(query_positions), len(reference_positions)),
        )
        matrix.sort_indices()
        return cls(matrix)

    @classmethod
    def from_pairs(cls, pairs: np.ndarray, n_query: int, n_reference: int, source: str = "pairs") -> GroundTruth:
        """Truth from (query_index, reference_index) rows; ``source`` names the file in error messages."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        bad_query = (pairs[:, 0] < 0) | (pairs[:, 0] >= n_query)
        bad_reference = (pairs[:, 1] < 0) | (pairs[:, 1] >= n_reference)
        if bad_query.any() or bad_reference.any():
            row = int(np.flatnonzero(bad_query | bad_reference)[0])
            raise DatasetError(
                f"{source}: pair {tuple(int(v) for v in pairs[row])} is outside the dataset "
                f"({n_query} queries, {n_reference} references)"
            )
        matrix = sparse.coo_array(
            (np.ones(len(pairs), dtype=bool), (pairs[:, 0], pairs[:, 1])), shape=(n_query, n_reference)
        )
        return cls(matrix.tocsr())

    def has_match(self) -> np.ndarray:
        """Per query: does it have at least one matching reference?"""
        return np.diff(self.matrix.indptr) > 0

    def contains(self, query_indices: np.ndarray, reference_indices: np.ndarray) -> np.ndarray:
        """Vectorised lookup: is ``reference_indices[k]`` a match of ``query_indices[k]``? (broadcasts)"""
        query_indices, reference_indices = np.broadcast_arrays(query_indices, reference_indices)
        flat = self.matrix[query_indices.ravel(), reference_indices.ravel()]
        return np.asarray(flat, dtype=bool).reshape(query_indices.shape)

    def subset(self, query_indices: np.ndarray, reference_indices: np.ndarray) -> GroundTruth:
        return GroundTruth(self.matrix[np.asarray(query_indices)][:, np.asarray(reference_indices)])

    def to_dense(self) -> np.ndarray:
        return self.matrix.toarray()


@dataclass(frozen=True)
class PlaceDataset:
    """A reference traverse, a query traverse and their ground truth, plus how they were selected.

    ``info`` records everything that shaped the data (source, filtering, split, tolerance) so it can be written
    next to every result.
    """

    name: str
    reference: Traverse
    query: Traverse
    ground_truth: GroundTruth
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = (len(self.query), len(self.reference))
        if self.ground_truth.shape != expected:
            raise DatasetError(
                f"{self.name}: ground truth has shape {self.ground_truth.shape} but the dataset has "
                f"{expected[0]} queries and {expected[1]} references"
            )
        if not len(self.reference) or not len(self.query):
            raise DatasetError(f"{self.name}: reference or query traverse is empty")
