import json

import faiss
import numpy as np
import pytest

from vpr.errors import SpikebotError
from vpr.index import IndexConfig, ReferenceIndex, ReferenceIndexError, recall_against_exact

APPROXIMATE = {
    "ivfpq": IndexConfig(kind="ivfpq", pq_bits=6),  # 6-bit codebooks train 4x faster than the default 8
    "hnsw": IndexConfig(kind="hnsw"),
}


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int, clusters: int = 50, spread: float = 1.0) -> np.ndarray:
    """Unit vectors drawn around a few random directions, as real place descriptors cluster."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.standard_normal((clusters, dim)))
    return normalise(centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim))


def perturbed(references: np.ndarray, ids: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = references.shape[1]
    return normalise(references[ids] + noise * rng.standard_normal((len(ids), dim)) / np.sqrt(dim))


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """The test machine's cores are shared: OpenMP spinning on busy cores is slower than one thread."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture(scope="module")
def references() -> np.ndarray:
    return clustered(5000, 64, seed=0)


@pytest.fixture(scope="module")
def queries(references) -> np.ndarray:
    """Noisy enough (the exact top-1 is the source place for only ~80%) that approximate search can miss it."""
    return perturbed(references, np.random.default_rng(1).choice(len(references), 200, replace=False), 1.5, seed=2)


@pytest.fixture(scope="module")
def built(references) -> dict[str, ReferenceIndex]:
    return {"exact": ReferenceIndex.build(references)} | {
        kind: ReferenceIndex.build(references, config) for kind, config in APPROXIMATE.items()
    }


def test_exact_distance_matrix_is_one_minus_cosine():
    references, queries = clustered(300, 32, seed=3), clustered(40, 32, seed=4)
    index = ReferenceIndex.build(references)
    distances = index.distance_matrix(queries)
    assert distances.shape == (40, 300) and distances.dtype == np.float32
    np.testing.assert_allclose(distances, 1.0 - queries @ references.T, atol=1e-5)
    assert (index.n_places, index.dim) == (300, 32)


def test_exact_search_finds_the_perturbed_reference(references):
    ids = np.arange(0, 5000, 25)
    index = ReferenceIndex.build(references)
    similarities, found = index.search(perturbed(references, ids, 0.1, seed=5), k=3)
    assert found.dtype == np.int64 and similarities.dtype == np.float32 and found.shape == (200, 3)
    np.testing.assert_array_equal(found[:, 0], ids)
    assert np.all(np.diff(similarities, axis=1) <= 0)


def test_search_caps_k_at_the_number_of_places():
    references = clustered(7, 16, seed=6)
    _, ids = ReferenceIndex.build(references).search(references[:2], k=50)
    assert ids.shape == (2, 7)
    assert sorted(ids[0]) == list(range(7))


@pytest.mark.parametrize(("kind", "bound"), [("ivfpq", 0.93), ("hnsw", 0.97)])
def test_approximate_recall_at_10_against_exact(built, queries, kind, bound):
    _, exact_ids = built["exact"].search(queries, k=1)
    _, approx_ids = built[kind].search(queries, k=10)
    assert recall_against_exact(approx_ids, exact_ids, k=10) >= bound


@pytest.mark.parametrize("kind", list(APPROXIMATE))
def test_approximate_distance_matrix_fills_only_the_top_k(built, queries, kind):
    index = built[kind]
    distances = index.distance_matrix(queries, k=5)
    similarities, ids = index.search(queries, k=5)
    assert distances.shape == (len(queries), index.n_places)
    assert np.all((distances < 2.0).sum(axis=1) == 5)
    retrieved = np.take_along_axis(distances, ids, axis=1)
    np.testing.assert_allclose(retrieved, np.clip(1.0 - similarities, 0.0, 2.0), atol=1e-6)
    mask = np.ones_like(distances, dtype=bool)
    np.put_along_axis(mask, ids, False, axis=1)
    assert np.all(distances[mask] == 2.0)
    assert (index.distance_matrix(queries[:3]) < 2.0).sum(axis=1).tolist() == [100, 100, 100]


@pytest.mark.parametrize("kind", ["exact", *APPROXIMATE])
def test_save_load_round_trip_gives_identical_results(built, queries, kind, tmp_path):
    index = built[kind]
    loaded = ReferenceIndex.load(index.save(tmp_path / kind))
    assert loaded.config == index.config and (loaded.n_places, loaded.dim) == (index.n_places, index.dim)
    for expected, actual in zip(index.search(queries, k=10), loaded.search(queries, k=10)):
        np.testing.assert_array_equal(actual, expected)
    assert 0 < index.memory_bytes == loaded.memory_bytes


def test_ivfpq_is_smaller_than_exact(built):
    assert built["ivfpq"].memory_bytes < built["exact"].memory_bytes / 4


def test_load_refuses_a_corrupt_index_file(built, tmp_path):
    folder = built["exact"].save(tmp_path / "map")
    path = folder / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(ReferenceIndexError, match="index.faiss"):
        ReferenceIndex.load(folder)


def test_load_refuses_another_format_version_and_missing_files(built, tmp_path):
    folder = built["exact"].save(tmp_path / "map")
    manifest = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps(manifest | {"format": "spikebot-index/2"}))
    with pytest.raises(ReferenceIndexError, match=r"index\.json.*spikebot-index/2"):
        ReferenceIndex.load(folder)
    (folder / "index.faiss").unlink()
    with pytest.raises(ReferenceIndexError, match="index.faiss is missing"):
        ReferenceIndex.load(folder)
    assert issubclass(ReferenceIndexError, SpikebotError)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 63), np.float32),
        np.ones((3, 64), np.float64) / 8,
        np.ones(64, np.float32) / 8,
        np.full((3, 64), np.nan, np.float32),
        np.ones((3, 64), np.float32),
    ],
    ids=["dimension", "dtype", "ndim", "nan", "not-normalised"],
)
def test_bad_queries_name_the_expected_shape(built, bad):
    with pytest.raises(ValueError, match=r"\(n, 64\) float32"):
        built["exact"].search(bad, k=1)


def test_ivfpq_refuses_too_few_places_to_train():
    with pytest.raises(ReferenceIndexError, match="needs at least 256 reference places"):
        ReferenceIndex.build(clustered(200, 32, seed=7), IndexConfig(kind="ivfpq", pq_subquantizers=8))
    with pytest.raises(ReferenceIndexError, match="divisible"):
        ReferenceIndex.build(clustered(300, 30, seed=7), IndexConfig(kind="ivfpq", pq_subquantizers=8))


def test_automatic_nlist_is_about_four_root_n_with_enough_points_per_list():
    assert IndexConfig().lists_for(100_000) == 1265
    assert IndexConfig().lists_for(5000) == 128
    assert IndexConfig().lists_for(10) == 1
    assert IndexConfig(nlist=7).lists_for(100_000) == 7


@pytest.mark.parametrize(
    "settings", [{"kind": "lsh"}, {"nlist": 0}, {"pq_bits": 0}, {"nprobe": 0}, {"hnsw_neighbours": 1}, {"seed": -1}]
)
def test_config_rejects_invalid_settings(settings):
    with pytest.raises(ValueError):
        IndexConfig(**settings)


def test_recall_against_exact_counts_top1_hits_within_k():
    approx = np.array([[1, 2], [3, 4], [5, 6]])
    exact = np.array([[2], [9], [5]])
    assert recall_against_exact(approx, exact, k=1) == pytest.approx(1 / 3)
    assert recall_against_exact(approx, exact, k=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        recall_against_exact(approx, exact, k=3)
