"""Point-cloud action classifiers: SpikePoint (spiking) and a PointNet++-style ANN baseline of the same family.

Both take grouped points (B, S centroids, K neighbours, FEATURES) from :func:`events.action.points.group_points`
and return class logits (B, classes), and both are two PointNet stages: a *local* shared MLP applied to every
grouped point, max-pooled over each group's K points, then a *global* shared MLP over the S group features,
max-pooled over the groups, then a classifier. They differ in what flows between layers and in size.

:class:`SpikePoint` (Ren et al., "SpikePoint: An Efficient Point-based Spiking Neural Network for Event Cameras
Action Recognition", ICLR 2024; no public code, built from the paper's description):

- the 9 features are rate-coded into spike trains over ``time_steps`` (16) steps;
- every layer is a linear map and batch normalisation producing currents for LIF neurons (norse's box LIF,
  via :mod:`spikebot.spiking`: tau = 2 steps, threshold 1, hard reset, SuperSpike surrogate);
- residual blocks are identity mappings on the currents (pre-activation: LIF -> linear -> BN, twice, added to
  the block's input currents), so every linear map reads binary spikes (the multiply-free accumulate that makes
  an SNN cheap) and the identity path carries no neuron that could block the gradient;
- max pooling over binary spikes is an OR; the classifier reads the global spikes and its logits are averaged
  over the time steps. (The last OR, over 32 groups, is on for ~90% of (step, feature) pairs at initialisation;
  replacing it by the mean over groups was tried and learnt more slowly: 45.6% against 54.2% training accuracy
  after 13 epochs on the default set.)
It stays tiny: 66 k parameters at the defaults (local 48, global 160, chosen on a validation split over local 32,
global 96, which has 25 k; docs/benchmarks.md, issue 7), under 5% of the ANN's.

:class:`PointNetClassifier`: the same two stages with ReLU MLPs of PointNet++'s widths (64-64-128 local,
256-512-1024 global, 512-256 head with dropout), on the 9 features as real numbers: ~1.4 M parameters.

Networks know nothing of data; they are chosen by name and rebuilt from a saved ``(kind, config dict)`` pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from events.action.points import FEATURES, rate_code
from spikebot.spiking import MultiStepLIF, NeuronConfig


class _ConfigMixin:
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)  # type: ignore[call-overload]
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = set(values) - {item.name for item in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
        return cls(**values)


@dataclass(frozen=True)
class SpikePointConfig(_ConfigMixin):
    """Widths, residual blocks per stage, time steps and the LIF neuron (norse units: 1/s and s; ``surrogate``
    and ``surrogate_alpha`` are :class:`spikebot.spiking.NeuronConfig`'s ``method`` and ``alpha``)."""

    kind: ClassVar[str] = "spikepoint"
    n_classes: int = 8
    in_features: int = FEATURES
    local_dim: int = 48
    local_blocks: int = 1
    global_dim: int = 160
    global_blocks: int = 1
    time_steps: int = 16
    tau_mem_inv: float = 500.0
    v_th: float = 1.0
    surrogate: str = "super"
    surrogate_alpha: float = 1.0

    def __post_init__(self) -> None:
        if min(self.n_classes, self.in_features, self.local_dim, self.global_dim, self.time_steps) < 1:
            raise ValueError("n_classes, in_features, local_dim, global_dim and time_steps must be positive")
        if self.local_blocks < 0 or self.global_blocks < 0:
            raise ValueError("local_blocks and global_blocks must be >= 0")
        self.neuron()  # validates the neuron

    def neuron(self) -> NeuronConfig:
        return NeuronConfig(tau_mem_inv=self.tau_mem_inv, v_th=self.v_th, method=self.surrogate,
                            alpha=self.surrogate_alpha)


@dataclass(frozen=True)
class PointNetConfig(_ConfigMixin):
    """Widths of the local, global and head MLPs (PointNet++ SSG's by default) and the head's dropout."""

    kind: ClassVar[str] = "pointnet"
    n_classes: int = 8
    in_features: int = FEATURES
    local_dims: tuple[int, ...] = (64, 64, 128)
    global_dims: tuple[int, ...] = (256, 512, 1024)
    head_dims: tuple[int, ...] = (512, 256)
    dropout: float = 0.4

    def __post_init__(self) -> None:
        if self.n_classes < 1 or self.in_features < 1 or not self.local_dims or not self.global_dims:
            raise ValueError("n_classes and in_features must be positive, local_dims and global_dims non-empty")
        if min(self.local_dims + self.global_dims + self.head_dims) < 1 or not 0 <= self.dropout < 1:
            raise ValueError("every width must be positive and dropout in [0, 1)")


class FeatureNorm(nn.BatchNorm1d):
    """Batch normalisation of the last dimension of a tensor of any shape (time, batch and points folded)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs.reshape(-1, inputs.shape[-1])).reshape(inputs.shape)


class SpikingResidualBlock(nn.Module):
    """currents -> currents + BN(W2 LIF(BN(W1 LIF(currents)))): an identity mapping around two spiking layers."""

    def __init__(self, dim: int, neuron: NeuronConfig) -> None:
        super().__init__()
        self.lif1, self.lif2 = MultiStepLIF(neuron), MultiStepLIF(neuron)
        self.linear1, self.linear2 = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.norm1, self.norm2 = FeatureNorm(dim), FeatureNorm(dim)

    def forward(self, currents: torch.Tensor) -> torch.Tensor:
        hidden = self.norm1(self.linear1(self.lif1(currents)))
        return currents + self.norm2(self.linear2(self.lif2(hidden)))


class SpikePoint(nn.Module):
    """Grouped points (B, S, K, F) in [0, 1] -> logits (B, classes), through spikes over ``time_steps`` steps."""

    def __init__(self, config: SpikePointConfig) -> None:
        super().__init__()
        self.config = config
        neuron = config.neuron()
        self.local_embed = nn.Sequential(nn.Linear(config.in_features, config.local_dim, bias=False),
                                         FeatureNorm(config.local_dim))
        self.local_blocks = nn.ModuleList(SpikingResidualBlock(config.local_dim, neuron)
                                          for _ in range(config.local_blocks))
        self.local_lif = MultiStepLIF(neuron)
        self.global_embed = nn.Sequential(nn.Linear(config.local_dim, config.global_dim, bias=False),
                                          FeatureNorm(config.global_dim))
        self.global_blocks = nn.ModuleList(SpikingResidualBlock(config.global_dim, neuron)
                                           for _ in range(config.global_blocks))
        self.global_lif = MultiStepLIF(neuron)
        self.head = nn.Linear(config.global_dim, config.n_classes)

    def forward(self, grouped: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_input(grouped, self.config.in_features)
        spikes = rate_code(grouped, self.config.time_steps, generator)  # (T, B, S, K, F)
        currents = self.local_embed(spikes)
        for block in self.local_blocks:
            currents = block(currents)
        group_spikes = self.local_lif(currents).amax(dim=3)  # (T, B, S, C): OR over each group's points
        currents = self.global_embed(group_spikes)
        for block in self.global_blocks:
            currents = block(currents)
        window_spikes = self.global_lif(currents).amax(dim=2)  # (T, B, C)
        return self.head(window_spikes).mean(dim=0)


def _mlp(widths: tuple[int, ...], start: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(start, width, bias=False), FeatureNorm(width), nn.ReLU()]
        start = width
    return nn.Sequential(*layers)


class PointNetClassifier(nn.Module):
    """Grouped points (B, S, K, F) -> logits (B, classes): PointNet++-style set abstraction with ReLU MLPs."""

    def __init__(self, config: PointNetConfig) -> None:
        super().__init__()
        self.config = config
        self.local_mlp = _mlp(config.local_dims, config.in_features)
        self.global_mlp = _mlp(config.global_dims, config.local_dims[-1])
        head: list[nn.Module] = []
        start = config.global_dims[-1]
        for width in config.head_dims:
            head += [nn.Linear(start, width, bias=False), FeatureNorm(width), nn.ReLU(), nn.Dropout(config.dropout)]
            start = width
        self.head = nn.Sequential(*head, nn.Linear(start, config.n_classes))

    def forward(self, grouped: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_input(grouped, self.config.in_features)
        groups = self.local_mlp(grouped).amax(dim=2)  # (B, S, C)
        return self.head(self.global_mlp(groups).amax(dim=1))


def _check_input(grouped: torch.Tensor, features: int) -> None:
    if grouped.dim() != 4 or grouped.shape[-1] != features:
        raise ValueError(f"expected grouped points (B, S, K, {features}), got {tuple(grouped.shape)}")


MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    SpikePointConfig.kind: (SpikePointConfig, SpikePoint),
    PointNetConfig.kind: (PointNetConfig, PointNetClassifier),
}
ModelConfig = SpikePointConfig | PointNetConfig


def model_config(kind: str, values: dict[str, Any] | None = None) -> ModelConfig:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}: expected one of {sorted(MODELS)}")
    return MODELS[kind][0].from_dict(values or {})


def build_model(config: ModelConfig) -> nn.Module:
    return MODELS[config.kind][1](config)


def parameter_count(network: nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())
