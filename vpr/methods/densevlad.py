"""DenseVLAD (Torii et al., "24/7 place recognition by view synthesis", CVPR 2015): dense RootSIFT aggregated into
VLAD over a k-means vocabulary, optionally PCA-whitened, ranked by cosine distance in the shared reference index.

By default the vocabulary (and the whitening, if configured) is learned on the map's own reference images: that
uses no labels and never a query. ``vocabulary_dir`` instead names a vocabulary trained elsewhere with
:func:`train_vocabulary`, e.g. on the Nordland calibration split, and saved with :meth:`Vocabulary.save`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikebot.artefacts import file_sha256
from spikebot.progress import progress
from spikebot.provenance import __version__
from vpr.errors import SpikebotError
from vpr.index import IndexConfig, ReferenceIndex
from vpr.methods.base import PlaceMethod, register_method
from vpr.methods.descriptor_map import FingerprintedImages, load_descriptor_map, save_descriptor_map
from vpr.vlad import (
    SIFT_DIM,
    DenseSIFTConfig,
    Whitening,
    apply_whitening,
    dense_rootsift,
    fit_whitening,
    kmeans_vocabulary,
    prepare_image,
    vlad,
)

VOCABULARY_FORMAT = "spikebot-densevlad-vocabulary/1"
# Settings that change what a descriptor is; an artefact must agree with the method on each of them.
_DESCRIPTOR_SETTINGS = ("sift", "vocabulary_size", "pca_dim")


class VocabularyError(SpikebotError):
    """A DenseVLAD vocabulary artefact is missing, corrupt, of another format, or learned for other settings."""


@dataclass(frozen=True)
class DenseVLADConfig:
    """``train_descriptors``: how many dense descriptors, drawn evenly from the training images, k-means sees.
    ``pca_dim``: PCA-whiten the ``vocabulary_size * 128``-d VLAD to this many dimensions (at most the number of
    training images minus one), or None to keep it. With ``vocabulary_dir`` the training settings (subsample,
    iterations, seed) are the artefact's own; the descriptor settings (``sift``, ``vocabulary_size``,
    ``pca_dim``) must match it."""

    sift: DenseSIFTConfig = field(default_factory=DenseSIFTConfig)
    vocabulary_size: int = 128
    train_descriptors: int = 100_000
    kmeans_iterations: int = 20
    pca_dim: int | None = None
    seed: int = 0
    vocabulary_dir: str | None = None
    map_dir: str | None = None
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if self.vocabulary_size < 1:
            raise ValueError(f"vocabulary_size must be >= 1, got {self.vocabulary_size}")
        if self.train_descriptors < self.vocabulary_size:
            raise ValueError(
                f"train_descriptors ({self.train_descriptors}) must be >= vocabulary_size ({self.vocabulary_size})"
            )
        if self.kmeans_iterations < 1:
            raise ValueError(f"kmeans_iterations must be >= 1, got {self.kmeans_iterations}")
        if self.pca_dim is not None and not 1 <= self.pca_dim <= self.vlad_dim:
            raise ValueError(f"pca_dim must be None or in 1..{self.vlad_dim}, got {self.pca_dim}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in 0..2**31-1, got {self.seed}")

    @property
    def vlad_dim(self) -> int:
        return self.vocabulary_size * SIFT_DIM

    @property
    def descriptor_dim(self) -> int:
        return self.pca_dim if self.pca_dim is not None else self.vlad_dim

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseVLADConfig:
        data = dict(data)
        sift = dict(data.pop("sift", {}))
        if "bin_sizes" in sift:
            sift["bin_sizes"] = tuple(sift["bin_sizes"])  # JSON has lists
        return cls(sift=DenseSIFTConfig(**sift), index=IndexConfig.from_dict(data.pop("index", {})), **data)


@dataclass(frozen=True)
class Vocabulary:
    """What DenseVLAD learns: the visual words, the optional whitening, the settings and data they were learned
    with (``training``), and so everything needed to describe an image."""

    config: DenseVLADConfig
    centroids: np.ndarray  # (vocabulary_size, 128)
    whitening: Whitening | None
    training: dict[str, Any]
    checksum: str | None = None  # of the saved arrays, once loaded: ties a result to the exact artefact

    def vlads(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """``(n, vocabulary_size * 128)`` unwhitened VLAD vectors, one image at a time."""
        rows = [vlad(dense_rootsift(image, self.config.sift), self.centroids) for image in images]
        if not rows:
            raise ValueError("no images to describe")
        return np.stack(rows)

    def project(self, vlads: np.ndarray) -> np.ndarray:
        """The last step of describing: whitening, when the vocabulary has one."""
        return vlads if self.whitening is None else apply_whitening(vlads, self.whitening)

    def describe_images(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """``(n, descriptor_dim)`` float32 L2-normalised DenseVLAD descriptors."""
        return self.project(self.vlads(images))

    def save(self, folder: str | Path) -> Path:
        """Write ``vocabulary.npz`` and its manifest ``vocabulary.json`` (the latter last, so a manifest means done)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays_path = folder / "vocabulary.npz"
        arrays = {"centroids": self.centroids}
        if self.whitening is not None:
            arrays |= {"whitening_mean": self.whitening.mean, "whitening_projection": self.whitening.projection}
        with arrays_path.open("wb") as handle:
            np.savez(handle, **arrays)
        config = dataclasses.asdict(dataclasses.replace(self.config, vocabulary_dir=None))
        config.pop("index")  # how a map is searched is not part of the vocabulary
        manifest = {
            "format": VOCABULARY_FORMAT,
            "spikebot_version": __version__,
            "config": config,
            "training": self.training,
            "arrays_sha256": file_sha256(arrays_path),
        }
        (folder / "vocabulary.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Vocabulary:
        """Read a saved vocabulary; refuses a missing, corrupt, other-format or internally inconsistent folder."""
        folder = Path(folder)
        manifest_path, arrays_path = folder / "vocabulary.json", folder / "vocabulary.npz"
        for path in (manifest_path, arrays_path):
            if not path.is_file():
                raise VocabularyError(f"not a DenseVLAD vocabulary: {path} is missing")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise VocabularyError(f"corrupt vocabulary manifest {manifest_path}: {error}") from error
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found != VOCABULARY_FORMAT:
            raise VocabularyError(
                f"{manifest_path} describes format {found!r}; this spikebot reads {VOCABULARY_FORMAT!r}"
            )
        if file_sha256(arrays_path) != manifest.get("arrays_sha256"):
            raise VocabularyError(f"corrupt vocabulary: {arrays_path} does not match the checksum in {manifest_path}")
        try:
            config = DenseVLADConfig.from_dict(manifest["config"])
            with np.load(arrays_path, allow_pickle=False) as arrays:
                centroids = arrays["centroids"]
                whitening = (
                    Whitening(arrays["whitening_mean"], arrays["whitening_projection"])
                    if config.pca_dim is not None
                    else None
                )
            training = manifest["training"]
        except (KeyError, TypeError, ValueError, OSError) as error:
            raise VocabularyError(f"vocabulary {folder} is inconsistent with its manifest: {error!r}") from error
        shapes_fit = centroids.shape == (config.vocabulary_size, SIFT_DIM) and (
            whitening is None
            or (whitening.mean.shape, whitening.projection.shape)
            == ((config.vlad_dim,), (config.vlad_dim, config.pca_dim))
        )
        if not shapes_fit:
            raise VocabularyError(f"vocabulary {folder}: array shapes do not fit the configuration in {manifest_path}")
        return cls(config, centroids.astype(np.float32), whitening, training, manifest["arrays_sha256"])


def train_vocabulary(images: Iterable[np.ndarray], config: DenseVLADConfig, *, source: str) -> Vocabulary:
    """Learn a vocabulary (and the whitening, if ``config.pca_dim``) on a traverse, e.g. a training split.

    ``source`` says what the images are (e.g. "nordland_trimmed summer, calibration split"); it is recorded in
    the artefact. Images are reduced to small grey arrays as they arrive, then described twice: once for the
    k-means subsample, once (only with PCA) for the VLADs the whitening is fit on.
    """
    return _learn([prepare_image(image, config.sift) for image in images], config, source)[0]


def _learn(prepared: list[np.ndarray], config: DenseVLADConfig, source: str) -> tuple[Vocabulary, np.ndarray | None]:
    """The vocabulary, and, when PCA needed them, the training images' final descriptors (so that a map learned
    on its references need not describe them a third time)."""
    if not prepared:
        raise ValueError("no images to learn a DenseVLAD vocabulary from")
    rng = np.random.default_rng(config.seed)
    per_image = math.ceil(config.train_descriptors / len(prepared))
    sample = []
    for image in progress(prepared, desc="densevlad vocabulary sample", total=len(prepared)):
        descriptors = dense_rootsift(image, config.sift)
        sample.append(descriptors[rng.choice(len(descriptors), min(per_image, len(descriptors)), replace=False)])
    sample_array = np.concatenate(sample)
    training = {
        "source": source,
        "n_images": len(prepared),
        "n_descriptors": len(sample_array),
        "sampled_per_image": len(sample[0]),
    }
    centroids = kmeans_vocabulary(sample_array, config.vocabulary_size, config.seed, config.kmeans_iterations)
    vocabulary = Vocabulary(config, centroids, None, training)
    if config.pca_dim is None:
        return vocabulary, None
    vlads = vocabulary.vlads(progress(prepared, desc="densevlad whitening fit", total=len(prepared)))
    vocabulary = dataclasses.replace(vocabulary, whitening=fit_whitening(vlads, config.pca_dim))
    return vocabulary, vocabulary.project(vlads)


@register_method
class DenseVLADMethod(PlaceMethod):
    """DenseVLAD: RootSIFT on a dense multi-scale grid, VLAD over a k-means vocabulary (K = 128 by default),
    optional PCA whitening; cosine distance through the shared faiss reference index.

    The vocabulary is learned on the map's own reference images unless ``vocabulary_dir`` names one trained
    elsewhere; it is never learned on queries.
    """

    name = "densevlad"
    model_field = "vocabulary_dir"
    saves_maps = True
    config_type = DenseVLADConfig

    def build_map(self, reference_images: Iterable[np.ndarray]) -> None:
        config = self.config
        if config.map_dir is not None:
            self.index, describer = load_descriptor_map(config.map_dir, self.name, reference_images)
            self.vocabulary = _check_matches(Vocabulary.load(describer), config)
            return
        reference_images = self._references = FingerprintedImages(reference_images)
        if config.vocabulary_dir is not None:
            self.vocabulary = _check_matches(Vocabulary.load(config.vocabulary_dir), config)
            references = self.vocabulary.describe_images(reference_images)
        else:
            prepared = [prepare_image(image, config.sift) for image in reference_images]
            self.vocabulary, references = _learn(prepared, config, "the map's reference images")
            if references is None:
                references = self.vocabulary.describe_images(
                    progress(prepared, desc="densevlad references", total=len(prepared))
                )
        self.index = ReferenceIndex.build(references, config.index)

    def distances(self, query_images: Iterable[np.ndarray]) -> np.ndarray:
        return self.index.distance_matrix(self.vocabulary.describe_images(query_images))

    def save_map(self, folder: str | Path) -> Path:
        self.vocabulary.save(Path(folder) / "describer")
        return save_descriptor_map(folder, self.name, self.index, self._references.fingerprint, {"vocabulary": self.vocabulary.training})

    def map_bytes(self) -> int:
        return self.index.memory_bytes

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        vocabulary: Vocabulary | None = getattr(self, "vocabulary", None)
        if vocabulary is not None:
            described["vocabulary"] = {**vocabulary.training, "arrays_sha256": vocabulary.checksum}
        return described


def _check_matches(vocabulary: Vocabulary, config: DenseVLADConfig) -> Vocabulary:
    differing = [
        f"{name}: artefact {getattr(vocabulary.config, name)!r}, method {getattr(config, name)!r}"
        for name in _DESCRIPTOR_SETTINGS
        if getattr(vocabulary.config, name) != getattr(config, name)
    ]
    if differing:
        raise VocabularyError(
            f"vocabulary {config.vocabulary_dir} was learned for other descriptor settings ({'; '.join(differing)}): "
            "configure the method as the artefact or train a vocabulary for these settings"
        )
    return vocabulary


