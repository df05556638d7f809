"""Generalised-mean (GeM) pooling (Radenovic et al., TPAMI 2018): between average (p = 1) and max (p -> inf)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GeMConfig:
    """``p = 3`` is the paper's starting point; ``learn_p`` lets fine-tuning move it."""

    p: float = 3.0
    learn_p: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.p < 1:
            raise ValueError(f"GeM needs p >= 1, got {self.p}")


def gem_pool(features: torch.Tensor, p: torch.Tensor | float, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): the p-th root of the mean of each channel's activations (clamped to eps) to the p."""
    return features.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling then L2 normalisation: (B, C, H, W) -> (B, C) unit vectors."""

    def __init__(self, config: GeMConfig):
        super().__init__()
        self.eps = config.eps
        self.p = nn.Parameter(torch.tensor(float(config.p)), requires_grad=config.learn_p)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(gem_pool(features, self.p, self.eps), dim=1)
