"""Noise-prediction networks for diffusion policies: the spiking STMDP and its same-size transformer baseline.

Every network maps (noisy actions (B, pred_horizon, A), timestep (B,), observation history (B, obs_horizon,
obs_dim)) to predicted noise and knows nothing of data, normalisation or schedulers (:mod:`policy.diffusion`
joins those). Networks are chosen by name, ``build_network("stmdp", config)``, and rebuilt from a saved
``(kind, config dict)`` pair.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from policy.models.stmdp import SpikingTransformerDenoiser, STMDPConfig
from policy.models.transformer import TransformerConfig, TransformerDenoiser

NETWORKS: dict[str, tuple[type, type[nn.Module]]] = {
    TransformerConfig.kind: (TransformerConfig, TransformerDenoiser),
    STMDPConfig.kind: (STMDPConfig, SpikingTransformerDenoiser),
}

NetworkConfig = TransformerConfig | STMDPConfig


def network_config(kind: str, values: dict[str, Any] | None = None, *, saved: bool = True) -> NetworkConfig:
    """The configuration of network ``kind`` from a saved dict (``to_dict``, as in a checkpoint: fields added since
    it was saved take the values that rebuild the saved network), or with ``saved=False`` from overrides of
    today's defaults (a new network)."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network {kind!r}: expected one of {sorted(NETWORKS)}")
    return NETWORKS[kind][0].from_dict(values or {}, saved=saved)


def build_network(config: NetworkConfig) -> nn.Module:
    return NETWORKS[config.kind][1](config)


def parameter_count(network: nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())


__all__ = [
    "NETWORKS", "NetworkConfig", "STMDPConfig", "SpikingTransformerDenoiser", "TransformerConfig", "TransformerDenoiser",
    "build_network", "network_config", "parameter_count",
]
