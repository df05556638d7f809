import numpy as np
import pytest

from vpr.preprocess import (
    PreprocessConfig,
    patch_normalise_block,
    patch_normalise_pixel,
    preprocess,
    preprocess_views,
    resize,
    shift_offsets,
    shifted_views,
    to_grayscale,
)


def test_grayscale_uses_bt601_weights():
    image = np.zeros((1, 3, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)
    image[0, 1] = (0, 255, 0)
    image[0, 2] = (0, 0, 255)
    np.testing.assert_allclose(to_grayscale(image)[0], [0.299 * 255, 0.587 * 255, 0.114 * 255], rtol=1e-5)


def test_grayscale_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        to_grayscale(np.zeros((2, 3, 5)))


def test_resize_keeps_mean_of_constant_image():
    out = resize(np.full((540, 960), 77.0), 64, 32)
    assert out.shape == (32, 64)
    np.testing.assert_allclose(out, 77.0, rtol=1e-5)


def test_pixel_normalisation_by_hand():
    # 3x3 image, 3x3 neighbourhood: the centre sees all nine pixels 0..8 (mean 4, population std sqrt(60/9)).
    image = np.arange(9, dtype=np.float32).reshape(1, 3, 3)
    out = patch_normalise_pixel(image, 3)
    assert out[0, 1, 1] == pytest.approx(0.0)
    # Corner (0, 0) sees only {0, 1, 3, 4} (NaN padding truncates): mean 2, std sqrt(2.5).
    assert out[0, 0, 0] == pytest.approx(max(-1.0, (0 - 2) / np.sqrt(2.5)))
    # Pixel (1, 2) = 5 sees {1, 2, 4, 5, 7, 8}: mean 4.5, std sqrt(35.5/6 - ... ) computed directly.
    values = np.array([1, 2, 4, 5, 7, 8], dtype=float)
    assert out[0, 1, 2] == pytest.approx((5 - values.mean()) / values.std(), abs=1e-6)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_pixel_normalisation_flat_image_is_zero():
    assert not patch_normalise_pixel(np.full((2, 5, 5), 9.0), 3).any()


def test_block_normalisation_gives_zero_mean_unit_std_blocks():
    rng = np.random.default_rng(0)
    out = patch_normalise_block(rng.uniform(0, 255, (2, 16, 24)), 8)
    blocks = out.reshape(2, 2, 8, 3, 8)
    np.testing.assert_allclose(blocks.mean(axis=(2, 4)), 0.0, atol=1e-5)
    np.testing.assert_allclose(blocks.std(axis=(2, 4)), 1.0, atol=1e-5)


def test_block_normalisation_flat_block_is_zero():
    images = np.zeros((1, 8, 16))
    images[0, :, 8:] = np.arange(64).reshape(8, 8)
    out = patch_normalise_block(images, 8)
    assert not out[0, :, :8].any()
    assert out[0, :, 8:].std() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 0}, "positive"),
        ({"patch_mode": "fancy"}, "patch_mode"),
        ({"width": 60, "patch_size": 8}, "multiple"),
        ({"patch_size": 1}, "at least 2"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**kwargs)


def test_preprocess_mixed_sizes_and_modes():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (540, 960, 3), dtype=np.uint8), rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)]
    for mode in ("none", "pixel", "block"):
        out = preprocess(images, PreprocessConfig(28 if mode == "pixel" else 64, 28 if mode == "pixel" else 32, mode, 7 if mode == "pixel" else 8))
        assert out.dtype == np.float32 and out.shape[0] == 2
    with pytest.raises(ValueError, match="no images"):
        preprocess([], PreprocessConfig())


def test_shifted_views_move_the_image_and_repeat_its_edges():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    views = shifted_views(image, 1)
    offsets = shift_offsets(1)
    assert views.shape == (1, 9, 3, 4) and offsets[0] == (0, 0) and len(set(offsets)) == 9
    np.testing.assert_array_equal(views[0, 0], image[0])
    right_down = views[0, offsets.index((1, 1))]  # content moves right and down; the top row and left column repeat
    np.testing.assert_array_equal(right_down, [[0, 0, 1, 2], [0, 0, 1, 2], [4, 4, 5, 6]])
    with pytest.raises(ValueError):
        shift_offsets(-1)


def test_preprocess_is_the_unshifted_view():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    config = PreprocessConfig(16, 12, "pixel", 5)
    views = preprocess_views(images, config, max_shift=2)
    assert views.shape == (3, 25, 12, 16)
    np.testing.assert_array_equal(views[:, 0], preprocess(images, config))
    # bit for bit the plain composition, so that maps fingerprinted before views existed still match
    direct = patch_normalise_pixel(np.stack([resize(to_grayscale(image), 16, 12) for image in images]), 5)
    np.testing.assert_array_equal(preprocess(images, config), direct)
