"""Dense SIFT and VLAD, the pure core of the DenseVLAD baseline (Torii et al., CVPR 2015): arrays in, arrays out.

An image is greyed and resized to a fixed size (tiny images such as Nordland's 64x32 are upsampled, so that the
SIFT windows fit and every image gives the same grid), described by upright SIFT on a regular grid at several
scales, converted to RootSIFT, hard-assigned to the nearest visual word of a k-means vocabulary and aggregated
into a VLAD vector: per-word residual sums, intra-normalisation, signed square root, L2. PCA whitening, fit on
training VLADs, optionally compresses the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import faiss
import numpy as np

from vpr.preprocess import resize, to_grayscale

SIFT_DIM = 128
# OpenCV's SIFT spatial bin is 1.5 keypoint sizes wide (SIFT_DESCR_SCL_FCTR * size / 2).
_BIN_PER_KEYPOINT_SIZE = 1.5
_EPS = 1e-12


@dataclass(frozen=True)
class DenseSIFTConfig:
    """Where and at which scales SIFT is computed.

    Images are resized to ``width`` x ``height`` (aspect not kept, so every image gives the same grid).
    ``bin_sizes`` are SIFT spatial bin widths in pixels, VLFeat's convention: a descriptor spans 4 x 4 bins, so a
    4-pixel bin is a 16-pixel window. Centres lie every ``stride`` pixels wherever the whole window fits.
    """

    width: int = 160
    height: int = 80
    bin_sizes: tuple[int, ...] = (4, 6, 8, 10)
    stride: int = 3

    def __post_init__(self) -> None:
        if not self.bin_sizes or min(self.bin_sizes) < 1:
            raise ValueError(f"bin_sizes must be a non-empty tuple of positive pixel widths, got {self.bin_sizes}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1 pixel, got {self.stride}")
        window = 4 * max(self.bin_sizes)
        if self.width < window or self.height < window:
            raise ValueError(
                f"image size {self.width}x{self.height} is smaller than the largest SIFT window ({window} px for "
                f"{max(self.bin_sizes)} px bins): enlarge it or use smaller bins"
            )


@dataclass(frozen=True)
class Whitening:
    """PCA whitening: ``(vlad - mean) @ projection`` gives decorrelated unit-variance components, largest first."""

    mean: np.ndarray  # (D,)
    projection: np.ndarray  # (D, dim)


def prepare_image(image: np.ndarray, config: DenseSIFTConfig) -> np.ndarray:
    """Grey uint8 image at the configured size; idempotent, so prepared images can be kept and described later."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    grey = resize(to_grayscale(image), config.width, config.height)
    if not np.isfinite(grey).all():
        raise ValueError("image has NaN or infinite pixels")
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)  # OpenCV's SIFT reads 8-bit images only


def grid_positions(config: DenseSIFTConfig) -> np.ndarray:
    """``(n, 3)`` float32 rows ``(x, y, bin_size)`` of every dense SIFT centre, scale by scale, row-major."""
    rows = []
    for bin_size in config.bin_sizes:
        half = 2 * bin_size
        xs = np.arange(half, config.width - half + 1, config.stride)
        ys = np.arange(half, config.height - half + 1, config.stride)
        y, x = np.meshgrid(ys, xs, indexing="ij")
        rows.append(np.stack([x.ravel(), y.ravel(), np.full(x.size, bin_size)], axis=1))
    return np.concatenate(rows).astype(np.float32)


@lru_cache(maxsize=8)
def _keypoints(config: DenseSIFTConfig) -> tuple[cv2.KeyPoint, ...]:
    return tuple(
        cv2.KeyPoint(float(x), float(y), float(bin_size / _BIN_PER_KEYPOINT_SIZE), 0.0)  # angle 0: upright
        for x, y, bin_size in grid_positions(config)
    )


@lru_cache(maxsize=1)
def _sift() -> cv2.SIFT:
    return cv2.SIFT_create()


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, then square root, so that Euclidean distance
    between rows is the Hellinger kernel on the histograms. Rows have unit L2 norm; flat (all-zero) rows stay 0."""
    descriptors = np.asarray(descriptors, dtype=np.float32)
    return np.sqrt(descriptors / np.maximum(descriptors.sum(axis=1, keepdims=True), _EPS))


def dense_rootsift(image: np.ndarray, config: DenseSIFTConfig) -> np.ndarray:
    """``(len(grid_positions(config)), 128)`` float32 RootSIFT descriptors of one image, in grid order."""
    _, descriptors = _sift().compute(prepare_image(image, config), _keypoints(config))
    return root_sift(descriptors)


def kmeans_vocabulary(descriptors: np.ndarray, size: int, seed: int, iterations: int = 20) -> np.ndarray:
    """``(size, d)`` float32 k-means centres (faiss, seeded) of the given descriptors, all of them used."""
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or len(descriptors) < size:
        raise ValueError(f"k-means with {size} words needs at least {size} descriptors, got shape {descriptors.shape}")
    kmeans = faiss.Kmeans(
        descriptors.shape[1], size, niter=iterations, seed=seed, max_points_per_centroid=len(descriptors), verbose=False
    )
    kmeans.train(descriptors)
    return kmeans.centroids.copy()


def assign_words(descriptors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) for each descriptor: argmax of ``x.c - |c|^2 / 2``."""
    scores = descriptors @ centroids.T - 0.5 * np.einsum("kd,kd->k", centroids, centroids)
    return np.argmax(scores, axis=1)


def vlad(descriptors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(K * d,)`` float32 unit-norm VLAD vector of one image's ``(n, d)`` local descriptors.

    Residuals to the nearest word are summed per word; each word's sum is L2-normalised (intra-normalisation,
    so a few bursty words cannot dominate), then signed-square-rooted (damps what burstiness remains) and the
    whole vector is L2-normalised. Words with no descriptor contribute zeros.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    if descriptors.ndim != 2 or centroids.ndim != 2 or descriptors.shape[1] != centroids.shape[1]:
        raise ValueError(f"descriptors {descriptors.shape} and centroids {centroids.shape} must be (n, d) and (K, d)")
    words = assign_words(descriptors, centroids)
    sums = np.zeros_like(centroids)
    np.add.at(sums, words, descriptors)
    residuals = sums - np.bincount(words, minlength=len(centroids))[:, None].astype(np.float32) * centroids
    residuals /= np.maximum(np.linalg.norm(residuals, axis=1, keepdims=True), _EPS)
    flat = (np.sign(residuals) * np.sqrt(np.abs(residuals))).ravel()
    return flat / max(float(np.linalg.norm(flat)), _EPS)


def fit_whitening(vlads: np.ndarray, dim: int) -> Whitening:
    """PCA whitening to ``dim`` components fit on ``(n, D)`` training VLADs (through the ``n x n`` Gram matrix,
    since n << D); ``dim`` can be at most ``n - 1``, the rank of the centred data."""
    vlads = np.asarray(vlads, dtype=np.float64)
    n, total = vlads.shape
    if not 1 <= dim <= min(n - 1, total):
        raise ValueError(
            f"PCA to {dim} dimensions needs at least {dim + 1} training images, got {n} (max {total} dims)"
        )
    mean = vlads.mean(axis=0)
    centred = vlads - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred @ centred.T)
    eigenvalues, eigenvectors = eigenvalues[::-1][:dim], eigenvectors[:, ::-1][:, :dim]
    if eigenvalues[-1] <= 1e-9 * eigenvalues[0]:
        raise ValueError(f"the training VLADs span fewer than {dim} dimensions: lower the PCA dimension")
    # Principal axes are centred.T @ v / sqrt(eigenvalue); whitening divides by the std sqrt(eigenvalue / (n - 1)).
    projection = centred.T @ (eigenvectors * (np.sqrt(n - 1) / eigenvalues))
    return Whitening(mean.astype(np.float32), projection.astype(np.float32))


def apply_whitening(vlads: np.ndarray, whitening: Whitening) -> np.ndarray:
    """``(n, dim)`` float32 whitened and L2-normalised descriptors."""
    whitened = (np.asarray(vlads, dtype=np.float32) - whitening.mean) @ whitening.projection
    return whitened / np.maximum(np.linalg.norm(whitened, axis=1, keepdims=True), _EPS)
