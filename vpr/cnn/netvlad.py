"""NetVLAD (Arandjelovic et al., CVPR 2016): soft-assigned residuals to K cluster centres, intra- and L2-normalised.

Local descriptors are L2-normalised first. Soft assignment is a 1x1 convolution and a softmax over clusters; it is
initialised from k-means centres c_k as in the paper, w_k = 2 alpha c_k and b_k = -alpha |c_k|^2, which makes it
softmax(-alpha |x - c_k|^2). The centres of the residuals are a separate parameter (the paper's decoupling), so
fine-tuning can move assignment and residual centres independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetVLADConfig:
    """``clusters`` = K; k-means runs ``kmeans_iterations`` on at most ``kmeans_samples`` local descriptors, from
    ``kmeans_restarts`` random starts (the lowest-error run is kept: one start can merge two true clusters);
    ``assignment_ratio`` sets alpha so that, on average over those descriptors, the nearest centre gets this many
    times the weight of the second nearest (the pytorch-NetVLAD heuristic, 100)."""

    clusters: int = 64
    intra_normalise: bool = True
    kmeans_iterations: int = 25
    kmeans_samples: int = 100_000
    kmeans_restarts: int = 3
    assignment_ratio: float = 100.0

    def __post_init__(self) -> None:
        if self.clusters < 2:
            raise ValueError(f"NetVLAD needs at least 2 clusters, got {self.clusters}")
        if self.assignment_ratio <= 1:
            raise ValueError(f"assignment_ratio must exceed 1, got {self.assignment_ratio}")


class NetVLAD(nn.Module):
    """(B, D, H, W) feature maps -> (B, K * D) unit-norm VLAD vectors."""

    def __init__(self, dim: int, clusters: int, intra_normalise: bool = True):
        super().__init__()
        self.intra_normalise = intra_normalise
        self.assign = nn.Conv2d(dim, clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.randn(clusters, dim) / math.sqrt(dim))

    def soft_assign(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, H*W) assignment of each normalised local descriptor to the clusters; sums to 1 over K."""
        return F.softmax(self.assign(F.normalize(features, dim=1)).flatten(2), dim=1)

    def residuals(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, D) sums of soft-assigned residuals, before any normalisation."""
        assignment = self.soft_assign(features)
        local = F.normalize(features, dim=1).flatten(2)  # (B, D, N)
        return assignment @ local.transpose(1, 2) - assignment.sum(dim=2, keepdim=True) * self.centroids

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        vlad = self.residuals(features)
        if self.intra_normalise:
            vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.flatten(1), dim=1)

    @torch.no_grad()
    def initialise(self, centroids: torch.Tensor, alpha: float) -> None:
        """Assignment and residual centres from k-means centres (the paper's initialisation)."""
        centroids = centroids.to(self.centroids)
        self.centroids.copy_(centroids)
        self.assign.weight.copy_((2 * alpha * centroids)[..., None, None])
        self.assign.bias.copy_(-alpha * centroids.square().sum(dim=1))


def local_descriptors(features: torch.Tensor, max_samples: int, seed: int) -> np.ndarray:
    """L2-normalised local descriptors of (B, D, H, W) maps as (N, D) float32, a seeded sample of at most max_samples."""
    local = F.normalize(features.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    if len(local) > max_samples:
        local = local[np.sort(np.random.default_rng(seed).choice(len(local), max_samples, replace=False))]
    return np.ascontiguousarray(local.cpu().numpy(), dtype=np.float32)


def kmeans_centroids(local: np.ndarray, config: NetVLADConfig, seed: int) -> tuple[torch.Tensor, float]:
    """faiss k-means centres of local descriptors, and the alpha that gives ``assignment_ratio`` on them."""
    if len(local) < config.clusters:
        raise ValueError(f"k-means needs at least {config.clusters} local descriptors, got {len(local)}")
    kmeans = faiss.Kmeans(local.shape[1], config.clusters, niter=config.kmeans_iterations, seed=seed,
                          nredo=config.kmeans_restarts, max_points_per_centroid=max(256, len(local) // config.clusters + 1), verbose=False)
    kmeans.train(local)
    squared, _ = kmeans.index.search(local, 2)  # nearest and second-nearest centre, squared L2
    gap = float(np.mean(squared[:, 1] - squared[:, 0]))
    alpha = math.log(config.assignment_ratio) / max(gap, 1e-12)
    return torch.from_numpy(kmeans.centroids.copy()), alpha
