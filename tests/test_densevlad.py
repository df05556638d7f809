"""DenseVLAD: dense RootSIFT, VLAD aggregation, whitening, the vocabulary artefact and the registered method."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from vpr.datasets import load_registered
from vpr.errors import SpikebotError
from vpr.methods import create_method
from vpr.methods.descriptor_map import DescriptorMapError, load_descriptor_map
from vpr.methods.densevlad import DenseVLADConfig, Vocabulary, VocabularyError, train_vocabulary
from vpr.vlad import (
    DenseSIFTConfig,
    apply_whitening,
    dense_rootsift,
    fit_whitening,
    grid_positions,
    kmeans_vocabulary,
    prepare_image,
    vlad,
)

SIFT = DenseSIFTConfig(width=64, height=48, bin_sizes=(4, 6), stride=4)
# 8 words need 39 * 8 training descriptors for faiss not to warn; 400 keeps k-means fast.
SMALL = DenseVLADConfig(sift=SIFT, vocabulary_size=8, train_descriptors=400, kmeans_iterations=10)


def scene(seed: int, height: int = 56, width: int = 72) -> np.ndarray:
    """A textured grey scene (smoothed noise, uint8) larger than one view, so views can be shifted inside it."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((height, width)), 1.5)
    return np.clip(128 + 60 * noise / noise.std(), 0, 255).astype(np.uint8)


def view(image: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
    return image[dy : dy + 48, dx : dx + 64]


def test_dense_sift_grid_and_rootsift_rows():
    expected = sum(((64 - 4 * b) // 4 + 1) * ((48 - 4 * b) // 4 + 1) for b in (4, 6))  # windows of 4 bins fit
    positions = grid_positions(SIFT)
    assert positions.shape == (expected, 3)
    half = 2 * positions[:, 2]
    assert (positions[:, 0] >= half).all() and (positions[:, 0] + half <= 64).all()
    assert (positions[:, 1] >= half).all() and (positions[:, 1] + half <= 48).all()

    rgb = np.repeat(scene(0)[..., None], 3, axis=2)  # any size and colour: resized to the grid's image size
    descriptors = dense_rootsift(rgb, SIFT)
    assert descriptors.shape == (expected, 128) and descriptors.dtype == np.float32
    assert (descriptors >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)  # RootSIFT of textured patches


def test_vlad_is_unit_norm_with_k_times_128_dims_or_the_pca_dim():
    descriptors = [dense_rootsift(view(scene(seed)), SIFT) for seed in range(6)]
    centroids = kmeans_vocabulary(np.concatenate(descriptors), 8, seed=0, iterations=10)
    vlads = np.stack([vlad(d, centroids) for d in descriptors])
    assert vlads.shape == (6, 8 * 128) and vlads.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vlads, axis=1), 1.0, atol=1e-5)

    whitened = apply_whitening(vlads, fit_whitening(vlads, 4))
    assert whitened.shape == (6, 4)
    np.testing.assert_allclose(np.linalg.norm(whitened, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="at least 7 training images"):
        fit_whitening(vlads, 6)


def test_an_image_matches_its_shifted_brightened_copy_before_other_places():
    scenes = [scene(seed) for seed in range(4)]
    method = create_method("densevlad", SMALL)
    method.build_map([view(s) for s in scenes])
    queries = [view(scenes[0]), view(scenes[1], dx=2, dy=1), 0.7 * view(scenes[2]) + 20.0, view(scenes[3], dx=1) * 1.2]
    distances = method.distances(queries)
    assert distances.shape == (4, 4) and distances.dtype == np.float32
    assert distances[0, 0] == pytest.approx(0.0, abs=1e-5)
    assert (np.argmin(distances, axis=1) == np.arange(4)).all()
    assert method.describe()["vocabulary"]["source"] == "the map's reference images"


def test_a_saved_map_loads_without_describing_the_references_again(tmp_path):
    from dataclasses import replace

    references = [view(scene(seed)) for seed in range(4)]
    queries = [view(scene(1), dx=2, dy=1), view(scene(3), dx=1)]
    built = create_method("densevlad", SMALL)
    built.build_map(iter(references))
    built.save_map(tmp_path / "map")
    loaded = create_method("densevlad", replace(SMALL, map_dir=str(tmp_path / "map")))
    loaded.build_map(iter(references))
    np.testing.assert_array_equal(loaded.distances(queries), built.distances(queries))
    with pytest.raises(DescriptorMapError, match="other reference images"):
        create_method("densevlad", replace(SMALL, map_dir=str(tmp_path / "map"))).build_map(references[::-1])
    with pytest.raises(DescriptorMapError, match="built by method 'densevlad', not 'netvlad'"):
        load_descriptor_map(tmp_path / "map", "netvlad", references)
    index_file = tmp_path / "map" / "index" / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(SpikebotError):
        create_method("densevlad", replace(SMALL, map_dir=str(tmp_path / "map"))).build_map(references)


def test_vocabulary_artefact_round_trips_and_bad_ones_are_refused(tmp_path):
    config = DenseVLADConfig(sift=SIFT, vocabulary_size=8, train_descriptors=400, kmeans_iterations=10, pca_dim=3)
    training_images = [view(scene(seed)) for seed in range(10, 15)]
    vocabulary = train_vocabulary(training_images, config, source="five synthetic scenes")
    folder = vocabulary.save(tmp_path / "vocabulary")
    loaded = Vocabulary.load(folder)
    np.testing.assert_array_equal(loaded.centroids, vocabulary.centroids)
    np.testing.assert_array_equal(loaded.whitening.projection, vocabulary.whitening.projection)
    assert loaded.training["source"] == "five synthetic scenes"

    references = [view(scene(seed)) for seed in range(3)]
    method = create_method("densevlad", dataclasses.replace(config, vocabulary_dir=str(folder)))
    method.build_map(references)
    described = vocabulary.describe_images(references)
    np.testing.assert_allclose(method.distances(references), 1.0 - described @ described.T, atol=1e-5)
    assert method.describe()["vocabulary"]["arrays_sha256"] == loaded.checksum

    mismatched = create_method("densevlad", DenseVLADConfig(sift=SIFT, vocabulary_size=8, vocabulary_dir=str(folder)))
    with pytest.raises(VocabularyError, match="pca_dim: artefact 3, method None"):
        mismatched.build_map(references)

    arrays = folder / "vocabulary.npz"
    arrays.write_bytes(arrays.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(VocabularyError, match="checksum"):
        Vocabulary.load(folder)
    manifest = json.loads((folder / "vocabulary.json").read_text())
    (folder / "vocabulary.json").write_text(json.dumps({**manifest, "format": "something-else/9"}))
    with pytest.raises(VocabularyError, match="format"):
        Vocabulary.load(folder)
    with pytest.raises(VocabularyError, match="missing"):
        Vocabulary.load(tmp_path / "nowhere")


@pytest.mark.parametrize("shape", [(48, 64, 2), (48,), (0, 64), (48, 64, 3, 1)])
def test_malformed_images_raise_value_error(shape):
    with pytest.raises(ValueError, match="image"):
        prepare_image(np.zeros(shape, dtype=np.uint8), SIFT)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="largest SIFT window"):
        DenseSIFTConfig(width=32, height=32, bin_sizes=(4, 10))
    with pytest.raises(ValueError, match="pca_dim"):
        DenseVLADConfig(vocabulary_size=2, pca_dim=257)


@pytest.mark.real_data
def test_gardens_point_day_left_to_day_right_top1(shared_data):
    dataset = load_registered("gardens_point", "day_right", "day_left", data_root=shared_data)
    frames = np.arange(0, 200, 25)  # 8 places far apart, so only an exact match counts
    method = create_method("densevlad", DenseVLADConfig(vocabulary_size=16, train_descriptors=2000))
    method.build_map(dataset.reference.subset(frames))
    distances = method.distances(dataset.query.subset(frames))
    assert (np.argmin(distances, axis=1) == np.arange(len(frames))).mean() >= 0.75
