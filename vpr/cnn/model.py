"""A place descriptor network (trunk + NetVLAD or GeM head + optional PCA whitening) and its artefact folder.

An artefact is ``model.json`` (format version, the full typed configuration, the variant, how it was trained) and
``weights.pt`` (the whole state dict, trunk included), so a folder alone rebuilds the network without ImageNet
weights or the training data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spikebot.artefacts import file_sha256, read_checked_manifest
from spikebot.progress import progress
from spikebot.provenance import __version__
from vpr.cnn.gem import GeM, GeMConfig
from vpr.cnn.netvlad import NetVLAD, NetVLADConfig, kmeans_centroids, local_descriptors
from vpr.cnn.trunk import TrunkConfig, batches, build_trunk, prepare_images
from vpr.errors import SpikebotError

ARTEFACT_FORMAT = "spikebot-cnn-model/1"
Head = Literal["netvlad", "gem"]
Variant = Literal["off-the-shelf", "fine-tuned"]


class ModelError(SpikebotError):
    """A model artefact is missing, corrupt, of another format, or not the model a method asked for."""


@dataclass(frozen=True)
class PlaceNetConfig:
    """``whitening_dim``: PCA-whiten the pooled descriptor to this many dimensions (fit on training descriptors,
    so at most their number minus one), or None to keep it."""

    head: Head = "netvlad"
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    netvlad: NetVLADConfig = field(default_factory=NetVLADConfig)
    gem: GeMConfig = field(default_factory=GeMConfig)
    whitening_dim: int | None = None

    def __post_init__(self) -> None:
        if self.head not in ("netvlad", "gem"):
            raise ValueError(f"unknown head {self.head!r}: expected 'netvlad' or 'gem'")
        if self.whitening_dim is not None and not 1 <= self.whitening_dim <= self.pooled_dim:
            raise ValueError(f"whitening_dim must be in 1..{self.pooled_dim}, got {self.whitening_dim}")

    @classmethod
    def default(cls, head: Head) -> PlaceNetConfig:
        """NetVLAD pools the 96-channel blocks (see :class:`TrunkConfig`); GeM the 1280-channel ReLU6 layer, the
        standard choice (GeM clamps negative activations away, and the narrower blocks end in linear bottlenecks)."""
        return cls(head=head, trunk=TrunkConfig(cut=14 if head == "netvlad" else 19))

    @property
    def pooled_dim(self) -> int:
        channels = self.trunk.channels
        return channels * self.netvlad.clusters if self.head == "netvlad" else channels

    @property
    def descriptor_dim(self) -> int:
        return self.whitening_dim or self.pooled_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlaceNetConfig:
        return cls(head=data["head"], trunk=TrunkConfig(**data["trunk"]), netvlad=NetVLADConfig(**data["netvlad"]),
                   gem=GeMConfig(**data["gem"]), whitening_dim=data["whitening_dim"])


class Whitening(nn.Module):
    """PCA whitening then L2: (B, D) -> (B, dim_out); mean and projection are buffers saved with the model."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim_in))
        self.register_buffer("projection", torch.eye(dim_out, dim_in))

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return F.normalize((descriptors - self.mean) @ self.projection.T, dim=1)

    @torch.no_grad()
    def fit(self, descriptors: torch.Tensor) -> None:
        """Principal directions of ``descriptors`` scaled by 1 / their standard deviation."""
        dim_out, n = self.projection.shape[0], len(descriptors)
        if n <= dim_out:
            raise ValueError(f"PCA whitening to {dim_out} dimensions needs more than {dim_out} training descriptors, got {n}")
        mean = descriptors.mean(dim=0)
        _, singular, directions = torch.linalg.svd(descriptors - mean, full_matrices=False)
        scale = singular[:dim_out] / np.sqrt(n - 1)
        self.mean.copy_(mean)
        self.projection.copy_(directions[:dim_out] / (scale[:, None] + 1e-8 * scale[0]))


class PlaceNet(nn.Module):
    """Images -> unit-norm place descriptors; ``trunk`` is an ``nn.Sequential`` so training can split it."""

    def __init__(self, config: PlaceNetConfig, load_weights: bool = True):
        super().__init__()
        self.config = config
        self.trunk = build_trunk(config.trunk, load_weights)
        channels = config.trunk.channels
        self.head: nn.Module = (NetVLAD(channels, config.netvlad.clusters, config.netvlad.intra_normalise)
                                if config.head == "netvlad" else GeM(config.gem))
        self.whitening = Whitening(config.pooled_dim, config.whitening_dim) if config.whitening_dim else None

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk feature maps -> descriptors."""
        pooled = self.head(features)
        return self.whitening(pooled) if self.whitening is not None else pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(images))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def feature_maps(self, images: Iterable[np.ndarray], batch_size: int, upto: int | None = None,
                     total: int | None = None) -> torch.Tensor:
        """Output of ``trunk[:upto]`` (default: the whole trunk) for every image, stacked on the CPU."""
        self.eval()
        n_batches = None if total is None else -(-total // batch_size)
        return torch.cat([
            self.trunk[:upto](prepare_images(batch, self.config.trunk).to(self.device)).cpu()
            for batch in progress(batches(images, batch_size), desc="feature maps", total=n_batches)
        ])

    @torch.inference_mode()
    def continue_maps(self, features: torch.Tensor, start: int, batch_size: int) -> torch.Tensor:
        """Stored maps of ``trunk[:start]`` carried on through ``trunk[start:]``, on the CPU."""
        self.eval()
        return torch.cat([self.trunk[start:](chunk.to(self.device)).cpu() for chunk in features.split(batch_size)])

    @torch.inference_mode()
    def pool_maps(self, features: torch.Tensor, batch_size: int, whiten: bool = True) -> torch.Tensor:
        """Descriptors of stored full-trunk maps, on the CPU; ``whiten=False`` stops before the whitening."""
        self.eval()
        pool = self.pool if whiten else self.head
        return torch.cat([pool(chunk.to(self.device)).cpu() for chunk in features.split(batch_size)])

    def describe_images(self, images: Iterable[np.ndarray], batch_size: int, total: int | None = None) -> np.ndarray:
        """(N, descriptor_dim) float32 unit-norm descriptors, computed batch by batch."""
        descriptors = []
        with torch.inference_mode():
            self.eval()
            n_batches = None if total is None else -(-total // batch_size)
            for batch in progress(batches(images, batch_size), desc=f"{self.config.head} descriptors", total=n_batches):
                descriptors.append(self(prepare_images(batch, self.config.trunk).to(self.device)).cpu())
        return torch.cat(descriptors).numpy().astype(np.float32, copy=False)

    def initialise(self, features: torch.Tensor, seed: int) -> None:
        """NetVLAD centres by k-means on the local descriptors of full-trunk maps of training images."""
        if isinstance(self.head, NetVLAD):
            netvlad = self.config.netvlad
            centroids, alpha = kmeans_centroids(local_descriptors(features, netvlad.kmeans_samples, seed), netvlad, seed)
            self.head.initialise(centroids.to(self.device), alpha)

    def fit_whitening(self, features: torch.Tensor, batch_size: int) -> None:
        """PCA whitening (when configured) from the pooled descriptors of full-trunk maps of training images."""
        if self.whitening is not None:
            self.whitening.fit(self.pool_maps(features, batch_size, whiten=False).to(self.device))


@dataclass
class Artefact:
    """A loaded model folder: the network, its variant and the training record saved with it."""

    model: PlaceNet
    variant: Variant
    training: dict[str, Any]
    directory: Path


def save_model(directory: str | Path, model: PlaceNet, variant: Variant, training: dict[str, Any]) -> Path:
    """Write ``weights.pt`` and ``model.json`` (the latter last, so a folder with a manifest is complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / "weights.pt"
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, weights_path)
    manifest = {
        "format": ARTEFACT_FORMAT,
        "spikebot_version": __version__,
        "variant": variant,
        "config": model.config.to_dict(),
        "training": training,
        "weights_sha256": file_sha256(weights_path),
    }
    (directory / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def load_model(directory: str | Path, device: str = "cpu", head: Head | None = None) -> Artefact:
    """Rebuild a saved network; refuses a missing, corrupt or other-format folder, or one with another ``head``."""
    directory = Path(directory)
    manifest = read_checked_manifest(directory, "model.json", "weights.pt", ARTEFACT_FORMAT, "model", ModelError)
    weights_path = directory / "weights.pt"
    try:
        config = PlaceNetConfig.from_dict(manifest["config"])
        variant, training = manifest["variant"], manifest["training"]
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"corrupt model {directory}: bad configuration in model.json ({error!r})") from error
    if head is not None and config.head != head:
        raise ModelError(f"{directory} holds a {config.head} model, not a {head} one")
    model = PlaceNet(config, load_weights=False)
    try:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as error:
        raise ModelError(f"corrupt model {directory}: weights.pt does not fit its configuration ({error})") from error
    return Artefact(model.to(device).eval(), variant, training, directory)
