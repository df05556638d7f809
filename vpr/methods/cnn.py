"""Conventional CNN baselines on an ImageNet MobileNetV2 trunk: NetVLAD (``netvlad``) and GeM (``gem``).

With ``model_dir`` the method uses a model built by ``spikebot vpr train-netvlad`` / ``train-gem`` (off-the-shelf or
fine-tuned, as the artefact records). Without it, the method builds the off-the-shelf model itself from the
reference images it maps: NetVLAD's k-means centres (and PCA whitening, if configured) are fit on those
references, which uses no labels and no query; GeM needs no fitting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vpr.cnn.model import Head, ModelError, PlaceNet, PlaceNetConfig, load_model, save_model
from vpr.index import IndexConfig, ReferenceIndex
from vpr.methods.base import PlaceMethod, register_method
from vpr.methods.descriptor_map import FingerprintedImages, load_descriptor_map, save_descriptor_map


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class CNNMethodConfig:
    """``model`` is used only when ``model_dir`` is None (the artefact carries its own configuration)."""

    model: PlaceNetConfig = field(default_factory=lambda: PlaceNetConfig.default("netvlad"))
    model_dir: str | None = None
    map_dir: str | None = None
    batch_size: int = 64
    index: IndexConfig = field(default_factory=IndexConfig)
    seed: int = 0
    device: str = field(default_factory=default_device)


@dataclass(frozen=True)
class GeMMethodConfig(CNNMethodConfig):
    model: PlaceNetConfig = field(default_factory=lambda: PlaceNetConfig.default("gem"))


class CNNMethod(PlaceMethod):
    """A :class:`PlaceNet` with the head ``head``: references and queries described, ranked by cosine distance."""

    head: ClassVar[Head]

    saves_maps = True

    def build_map(self, reference_images: Iterable[np.ndarray]) -> None:
        config = self.config
        if config.map_dir is not None:
            self.index, describer = load_descriptor_map(config.map_dir, type(self).name, reference_images)
            artefact = load_model(describer, config.device, head=self.head)
            self.model, self.variant, self.training = artefact.model, artefact.variant, artefact.training
            self.name = f"{type(self).name}, {self.variant}"
            return
        reference_images = self._references = FingerprintedImages(reference_images)
        if config.model_dir is not None:
            artefact = load_model(config.model_dir, config.device, head=self.head)
            self.model, self.variant, self.training = artefact.model, artefact.variant, artefact.training
        else:
            if config.model.head != self.head:
                raise ModelError(f"method {self.name} needs a {self.head} model; the configuration has a {config.model.head} head")
            torch.manual_seed(config.seed)
            self.model, self.variant, self.training = PlaceNet(config.model).to(config.device), "off-the-shelf", None
            if self.head == "netvlad" or config.model.whitening_dim:  # fit on the references themselves
                features = self.model.feature_maps(reference_images, config.batch_size)
                self.model.initialise(features, config.seed)
                self.model.fit_whitening(features, config.batch_size)
                self._index_references(self.model.pool_maps(features, config.batch_size).numpy())
                return
        self._index_references(self.model.describe_images(reference_images, config.batch_size))

    def _index_references(self, descriptors: np.ndarray) -> None:
        # Rows tables read: the variant is part of the method's name wherever results are shown.
        self.name = f"{type(self).name}, {self.variant}"
        self.index = ReferenceIndex.build(np.ascontiguousarray(descriptors, dtype=np.float32), self.config.index)

    def distances(self, query_images: Iterable[np.ndarray]) -> np.ndarray:
        queries = self.model.describe_images(query_images, self.config.batch_size)
        return self.index.distance_matrix(np.ascontiguousarray(queries, dtype=np.float32))

    def save_map(self, folder: str | Path) -> Path:
        save_model(Path(folder) / "describer", self.model, self.variant, self.training or {"fitted_on": "the map's reference images"})
        return save_descriptor_map(folder, type(self).name, self.index, self._references.fingerprint, {"variant": self.variant})

    def map_bytes(self) -> int:
        return self.index.memory_bytes

    def describe(self) -> dict[str, Any]:
        model: PlaceNet | None = getattr(self, "model", None)
        config = dataclasses.asdict(self.config)
        if model is not None:
            config["model"] = model.config.to_dict()  # what was used, e.g. the artefact's own configuration
        variant = getattr(self, "variant", "off-the-shelf" if self.config.model_dir is None else None)
        described: dict[str, Any] = {"name": self.name, "variant": variant, "config": config}
        if self.config.model_dir is None:
            fitted = [name for name, used in (("k-means", self.head == "netvlad"), ("PCA", self.config.model.whitening_dim))
                      if used]
            described["fitted_on_mapped_references"] = fitted  # what the off-the-shelf model learnt from the map
        elif getattr(self, "training", None) is not None:
            described["training"] = self.training  # how the artefact was built: split, seed, epochs, losses
        return described


@register_method
class NetVLADMethod(CNNMethod):
    """NetVLAD descriptors (K = 64 on MobileNetV2's 96-channel blocks, 6144-D), ranked by cosine distance."""

    name = "netvlad"
    config_type = CNNMethodConfig
    model_field = "model_dir"
    head: ClassVar[Head] = "netvlad"


@register_method
class GeMMethod(CNNMethod):
    """GeM-pooled (p = 3, learnable when fine-tuned) MobileNetV2 features, ranked by cosine distance."""

    name = "gem"
    config_type = GeMMethodConfig
    head: ClassVar[Head] = "gem"
