"""Pieces both noise-prediction networks share: the timestep embedding, the condition mask, initialisation and
configuration checks."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
from torch import nn


def check_sizes(config: Any) -> None:
    for name in ("obs_dim", "action_dim", "obs_horizon", "pred_horizon", "embed_dim", "n_layers", "n_heads", "mlp_ratio"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    if config.embed_dim % config.n_heads:
        raise ValueError(f"embed_dim ({config.embed_dim}) must be a multiple of n_heads ({config.n_heads})")


ADDED_FIELDS: dict[str, Any] = {"direct_obs_conditioning": False}
"""Fields added to the network configurations after checkpoints were first saved, each with the value that
rebuilds the networks saved before it existed: a saved configuration that lacks one describes such a network."""


def added_fields(cls: type) -> dict[str, Any]:
    """The :data:`ADDED_FIELDS` that configuration class ``cls`` has, with their values for older saves."""
    names = {field.name for field in fields(cls)}
    return {name: value for name, value in ADDED_FIELDS.items() if name in names}


def known_fields(cls: type, values: dict[str, Any], *, saved: bool = True) -> dict[str, Any]:
    """``values`` checked against ``cls``'s fields. A ``saved`` configuration (``to_dict``, as a checkpoint holds it)
    that lacks an added field gets the field's old value, so an older checkpoint rebuilds the network its weights
    belong to; with ``saved=False`` the values override today's defaults (a new network)."""
    names = {field.name for field in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return {**added_fields(cls), **values} if saved else dict(values)


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) diffusion timesteps -> (B, dim) sinusoidal embedding (sin half, then cos half), as in Chi's code."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, device=timesteps.device) * (-math.log(10000.0) / (half - 1)))
    angles = timesteps.float()[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def as_timesteps(timestep: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or (B,) timestep as a (B,) tensor on ``device``."""
    timestep = torch.as_tensor(timestep, device=device)
    return timestep.expand(batch) if timestep.dim() == 0 else timestep


def condition_mask(pred_horizon: int, obs_horizon: int) -> torch.Tensor:
    """(pred_horizon, 1 + obs_horizon) bool: action t sees the timestep token and observation tokens s <= t + 1."""
    t = torch.arange(pred_horizon)[:, None]
    s = torch.arange(1 + obs_horizon)[None, :]
    return t >= s - 1


def init_weights(module: nn.Module) -> None:
    """Chi's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(module, name) is not None:
                nn.init.normal_(getattr(module, name), mean=0.0, std=0.02)
        for name in ("in_proj_bias", "bias_k", "bias_v"):
            if getattr(module, name) is not None:
                nn.init.zeros_(getattr(module, name))
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
