"""The baseline: Diffusion Policy's transformer noise-prediction network (Chi et al. 2023, ``TransformerForDiffusion``
with observations as condition), at the same size as the spiking network it is compared with.

The noisy action sequence (pred_horizon tokens) is the decoder's input; the condition is one token for the
diffusion timestep (sinusoidal embedding) and one per observation step, passed through a small MLP (Chi's
``n_cond_layers = 0``) or transformer encoder. Decoder attention is causal over the actions, and action t sees
the timestep token and observations up to t + 1 (Chi's memory mask, ``t >= s - 1``). Pre-norm layers, GELU,
weights initialised N(0, 0.02) as in Chi's code. The network knows nothing of data or schedulers: it maps
(noisy actions, timestep, observation history) to the predicted noise.

Direct observation conditioning (``direct_obs_conditioning``, on for new networks; spikebot's addition, not
Chi's). Through cross-attention alone the observations condition the actions weakly: trained on button-press-v3,
the predicted first x action barely moved with the button's x position, and the policies solved only 55-60%
of episodes. With the option, one linear map of the whole normalised observation history, ``W vec(obs)``, is
added to every action token's embedding before the decoder (a bias, like the FiLM conditioning of Diffusion
Policy's UNet without its scale), so every decoder layer starts from tokens that already carry the observation.
Every action token then sees every conditioning observation, the newest too, which the memory mask keeps from
the past actions (those are not executed). Networks saved without the field were built without the map and
load with it off (:data:`policy.models.common.ADDED_FIELDS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from policy.models.common import (
    as_timesteps,
    check_sizes,
    condition_mask,
    init_weights,
    known_fields,
    sinusoidal_embedding,
)


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the baseline network. Horizons follow Diffusion Policy: 2 observations in, 16 actions out."""

    kind: ClassVar[str] = "transformer"

    obs_dim: int = 39
    action_dim: int = 4
    obs_horizon: int = 2
    pred_horizon: int = 16
    embed_dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    n_cond_layers: int = 0
    dropout: float = 0.0
    causal_attention: bool = True
    direct_obs_conditioning: bool = True

    def __post_init__(self) -> None:
        check_sizes(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, saved: bool = True) -> TransformerConfig:
        """A saved configuration (``to_dict``), or with ``saved=False`` overrides of the defaults (see ``known_fields``)."""
        return cls(**known_fields(cls, values, saved=saved))


class TransformerDenoiser(nn.Module):
    """forward(noisy_actions (B, pred_horizon, A), timestep (B,), obs_cond (B, obs_horizon, obs_dim)) -> noise."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        d, hidden = config.embed_dim, config.embed_dim * config.mlp_ratio
        self.action_embed = nn.Linear(config.action_dim, d)
        self.action_pos = nn.Parameter(torch.zeros(1, config.pred_horizon, d))
        self.obs_embed = nn.Linear(config.obs_dim, d)
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + config.obs_horizon, d))
        self.obs_to_actions = nn.Linear(config.obs_horizon * config.obs_dim, d) if config.direct_obs_conditioning else None
        if config.n_cond_layers > 0:
            layer = nn.TransformerEncoderLayer(d, config.n_heads, hidden, config.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.cond_encoder: nn.Module = nn.TransformerEncoder(layer, config.n_cond_layers, enable_nested_tensor=False)
        else:
            self.cond_encoder = nn.Sequential(nn.Linear(d, hidden), nn.Mish(), nn.Linear(hidden, d))
        layer = nn.TransformerDecoderLayer(d, config.n_heads, hidden, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, config.n_layers)
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.action_dim)
        self.dropout = nn.Dropout(config.dropout)
        causal = torch.ones(config.pred_horizon, config.pred_horizon, dtype=torch.bool)
        if config.causal_attention:
            causal = causal.tril()
        # nn.Transformer masks: True (or -inf) where attention is NOT allowed.
        self.register_buffer("action_mask", _additive_mask(causal), persistent=False)
        self.register_buffer("memory_mask", _additive_mask(condition_mask(config.pred_horizon, config.obs_horizon)), persistent=False)
        self.apply(init_weights)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)

    def forward(self, noisy_actions: torch.Tensor, timestep: torch.Tensor | int, obs_cond: torch.Tensor) -> torch.Tensor:
        batch = noisy_actions.shape[0]
        time_token = sinusoidal_embedding(as_timesteps(timestep, batch, noisy_actions.device), self.config.embed_dim)
        cond = torch.cat([time_token.unsqueeze(1), self.obs_embed(obs_cond)], dim=1) + self.cond_pos
        memory = self.cond_encoder(self.dropout(cond))
        x = self.action_embed(noisy_actions) + self.action_pos
        if self.obs_to_actions is not None:
            x = x + self.obs_to_actions(obs_cond.flatten(1)).unsqueeze(1)
        x = self.decoder(self.dropout(x), memory, tgt_mask=self.action_mask, memory_mask=self.memory_mask)
        return self.head(self.final_norm(x))


def _additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
