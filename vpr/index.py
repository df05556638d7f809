"""A faiss reference index shared by the descriptor methods (NetVLAD, GeM, DenseVLAD).

References and queries are L2-normalised float32 descriptors, so inner product is cosine similarity and the
distance handed to evaluation and sequence matching is ``1 - cosine`` in [0, 2].

- ``exact``: brute-force inner product (``IndexFlatIP``); the reference for the other two.
- ``ivfpq``: inverted lists over PQ codes, trained on the references themselves. Training needs at least
  ``max(nlist, 2**pq_bits)`` places; smaller maps are refused rather than silently switched to ``exact``, so a
  recorded config always names the index that produced the result (at that size exact search is cheap anyway).
- ``hnsw``: a navigable small-world graph over the uncompressed vectors; no training.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from spikebot.artefacts import file_sha256
from vpr.errors import SpikebotError

INDEX_FORMAT = "spikebot-index/1"
MAX_DISTANCE = 2.0  # 1 - cosine of opposite unit vectors
DEFAULT_APPROXIMATE_K = 100
_INDEX_TYPES = {"exact": faiss.IndexFlatIP, "ivfpq": faiss.IndexIVFPQ, "hnsw": faiss.IndexHNSWFlat}


class ReferenceIndexError(SpikebotError):
    """A reference index cannot be built for these references, or a saved one is missing, corrupt or foreign."""


@dataclass(frozen=True)
class IndexConfig:
    """Which index to build and its parameters; ``nlist=None`` picks about ``4 sqrt(n)`` lists.

    ``seed`` seeds the IVF-PQ k-means and the HNSW level draw, so a single-threaded build is reproducible.
    """

    kind: Literal["exact", "ivfpq", "hnsw"] = "exact"
    nlist: int | None = None
    pq_subquantizers: int = 16
    pq_bits: int = 8
    nprobe: int = 16
    hnsw_neighbours: int = 32
    ef_search: int = 64
    ef_construction: int = 80
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _INDEX_TYPES:
            raise ValueError(f"unknown index kind {self.kind!r}: expected one of {', '.join(_INDEX_TYPES)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be >= 1 or None (automatic), got {self.nlist}")
        if self.pq_subquantizers < 1:
            raise ValueError(f"pq_subquantizers must be >= 1, got {self.pq_subquantizers}")
        if not 1 <= self.pq_bits <= 16:
            raise ValueError(f"pq_bits must be in 1..16, got {self.pq_bits}")
        if self.nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {self.nprobe}")
        if self.hnsw_neighbours < 2:
            raise ValueError(f"hnsw_neighbours must be >= 2, got {self.hnsw_neighbours}")
        if self.ef_search < 1 or self.ef_construction < 1:
            raise ValueError(f"ef_search and ef_construction must be >= 1, got {self.ef_search}/{self.ef_construction}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in 0..2**31-1, got {self.seed}")

    def lists_for(self, n: int) -> int:
        """IVF lists for ``n`` places: ``4 sqrt(n)``, capped so each list trains on >= 39 points (faiss's floor)."""
        if self.nlist is not None:
            return self.nlist
        return max(1, min(round(4 * math.sqrt(n)), n // 39))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown index settings: {', '.join(sorted(unknown))}")
        return cls(**data)


class ReferenceIndex:
    """Reference descriptors in a faiss index, searched by cosine similarity."""

    def __init__(self, index: faiss.Index, config: IndexConfig):
        self._index = index
        self.config = config
        self._apply_search_parameters()

    @classmethod
    def build(cls, descriptors: np.ndarray, config: IndexConfig = IndexConfig()) -> ReferenceIndex:
        """Index ``(n, d)`` L2-normalised float32 reference descriptors; IVF-PQ trains on them."""
        descriptors = _check_descriptors(descriptors, None, "reference descriptors")
        dim = descriptors.shape[1]
        if config.kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif config.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
            index.hnsw.rng = faiss.RandomGenerator(config.seed)
        else:
            index = _train_ivfpq(descriptors, config)
        index.add(descriptors)
        return cls(index, config)

    @property
    def n_places(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def memory_bytes(self) -> int:
        """Size of the serialised index (what a map costs on disk and, within a few percent, in memory); copies it."""
        return int(faiss.serialize_index(self._index).size)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``min(k, n_places)`` cosine similarities ``(nq, k)`` float32, best first, and their int64 ids.

        Approximate kinds may find fewer than k candidates (IVF-PQ with a small ``nprobe``); those slots hold
        id -1 and similarity -3.4e38, as faiss reports them.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = _check_descriptors(queries, self.dim, "queries")
        return self._index.search(queries, min(k, self.n_places))

    def distance_matrix(self, queries: np.ndarray, k: int | None = None) -> np.ndarray:
        """``(nq, n_places)`` float32 distances ``1 - cosine``, clipped to [0, 2].

        ``exact`` fills every entry and ignores ``k``. Approximate kinds fill only their top ``k`` (default 100,
        capped at ``n_places``) and set every other entry to 2.0, the largest possible distance: sequence matching
        and the evaluation need a full matrix, and a place the index did not retrieve should count as the worst
        match rather than be scored with a cost the index never computed.
        """
        queries = _check_descriptors(queries, self.dim, "queries")
        if self.config.kind == "exact":
            references = faiss.rev_swig_ptr(self._index.get_xb(), self.n_places * self.dim)
            similarities = queries @ references.reshape(self.n_places, self.dim).T
            return np.clip(1.0 - similarities, 0.0, MAX_DISTANCE)
        similarities, ids = self.search(queries, DEFAULT_APPROXIMATE_K if k is None else k)
        distances = np.full((len(queries), self.n_places), MAX_DISTANCE, dtype=np.float32)
        found = ids >= 0
        distances[np.nonzero(found)[0], ids[found]] = np.clip(1.0 - similarities[found], 0.0, MAX_DISTANCE)
        return distances

    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss`` and its manifest ``index.json`` (format, config, shape, checksum)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index_path = folder / "index.faiss"
        faiss.write_index(self._index, str(index_path))
        manifest = {
            "format": INDEX_FORMAT,
            "config": self.config.to_dict(),
            "dim": self.dim,
            "n": self.n_places,
            "index_sha256": file_sha256(index_path),
        }
        (folder / "index.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ReferenceIndex:
        folder = Path(folder)
        manifest_path, index_path = folder / "index.json", folder / "index.faiss"
        for path in (manifest_path, index_path):
            if not path.is_file():
                raise ReferenceIndexError(f"not a spikebot reference index: {path} is missing")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise ReferenceIndexError(f"corrupt index manifest {manifest_path}: {error}") from error
        if manifest.get("format") != INDEX_FORMAT:
            raise ReferenceIndexError(
                f"{manifest_path} describes an index of format {manifest.get('format')!r}; "
                f"this spikebot reads {INDEX_FORMAT!r}"
            )
        if file_sha256(index_path) != manifest.get("index_sha256"):
            raise ReferenceIndexError(f"corrupt index: {index_path} does not match the checksum in {manifest_path}")
        try:
            config = IndexConfig.from_dict(manifest["config"])
            index = faiss.read_index(str(index_path))
            consistent = (
                isinstance(index, _INDEX_TYPES[config.kind])
                and index.metric_type == faiss.METRIC_INNER_PRODUCT
                and (index.d, index.ntotal) == (manifest["dim"], manifest["n"])
            )
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise ReferenceIndexError(f"index {index_path} is inconsistent with {manifest_path}: {error}") from error
        if not consistent:
            raise ReferenceIndexError(f"index {index_path} is not the {config.kind} index {manifest_path} describes")
        return cls(index, config)

    def _apply_search_parameters(self) -> None:
        if self.config.kind == "ivfpq":
            self._index.nprobe = min(self.config.nprobe, self._index.nlist)
        elif self.config.kind == "hnsw":
            self._index.hnsw.efSearch = self.config.ef_search


def recall_against_exact(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Share of queries whose exact top-1 is among the approximate top-``k`` (the usual ANN recall@k)."""
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.ndim != 2 or not 1 <= k <= approx_ids.shape[1]:
        raise ValueError(f"approx_ids must be (nq, >= k) with k >= 1, got shape {approx_ids.shape} and k={k}")
    exact_top1 = exact_ids.reshape(len(exact_ids), -1)[:, 0]
    if len(exact_top1) != len(approx_ids):
        raise ValueError(f"exact_ids has {len(exact_top1)} queries, approx_ids {len(approx_ids)}")
    return float(np.mean(np.any(approx_ids[:, :k] == exact_top1[:, None], axis=1)))


def _train_ivfpq(descriptors: np.ndarray, config: IndexConfig) -> faiss.IndexIVFPQ:
    n, dim = descriptors.shape
    if dim % config.pq_subquantizers:
        raise ReferenceIndexError(
            f"IVF-PQ needs the descriptor dimension ({dim}) divisible by pq_subquantizers ({config.pq_subquantizers})"
        )
    nlist = config.lists_for(n)
    needed = max(nlist, 2**config.pq_bits)
    if n < needed:
        raise ReferenceIndexError(
            f"IVF-PQ with nlist={nlist} and pq_bits={config.pq_bits} needs at least {needed} reference places to "
            f"train, got {n}: use kind='exact' (cheap at this size) or fewer lists/bits"
        )
    index = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim), dim, nlist, config.pq_subquantizers, config.pq_bits, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.seed = config.seed
    index.pq.cp.seed = config.seed
    index.train(descriptors)
    return index


def _check_descriptors(array: np.ndarray, dim: int | None, name: str) -> np.ndarray:
    """C-contiguous view of a finite, L2-normalised (n, dim) float32 array, or a ValueError naming the shape."""
    expected = f"(n, {dim if dim is not None else 'd'}) float32 array of L2-normalised rows"
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
        shape = getattr(array, "shape", None)
        got = f"{type(array).__name__} {getattr(array, 'dtype', '')} {shape}"
        raise ValueError(f"{name} must be an {expected}, got {got}")
    if len(array) == 0 or (dim is not None and array.shape[1] != dim) or array.shape[1] == 0:
        raise ValueError(f"{name} must be an {expected}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be a finite {expected}: found NaN or infinite values")
    norms = np.linalg.norm(array, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        worst = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"{name} must be an {expected}: row {worst} has norm {norms[worst]:.4g}")
    return np.ascontiguousarray(array)


