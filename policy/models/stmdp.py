"""STMDP, the spiking transformer diffusion policy's noise-prediction network (spikebot's own design).

Interface and horizons are the baseline's (:mod:`policy.models.transformer`): noisy actions (B, 16, A), timestep
(B,) and observation history (B, 2, obs_dim) in, predicted noise (B, 16, A) out. Inside, every tensor carries T
simulation steps first, (T, B, tokens, features); stateless layers act on all steps at once, LIF neurons
(:mod:`spikebot.spiking`, tau = 2 steps, threshold 1) loop over T.

Firing. Each LIF layer is fed by a LayerNorm, whose gain starts at ``lif_input_gain`` = 1.5: with unit gain a
tau = 2 neuron needs an input above ~1.07 to fire within T = 4 steps and layers fire ~3% of the time at
initialisation; at 1.5 they fire 8-16% (mean ~10%, Spikformer-like), at 2, 14-25%.

Spiking blocks. The residual stream u is a real-valued membrane current (the Spike-driven Transformer's
membrane shortcut), and every weight matrix inside a block reads spikes only, so its cost is synaptic
accumulates, not multiplications. A block is ``u += Attention(LIF(LN(u)))`` then ``u += MLP(LIF(LN(u)))``, the
MLP being ``W2 LIF(LN(W1 s))``. LayerNorm replaces Spikformer's BatchNorm: a batch mixes every diffusion noise
level, so batch statistics do not describe any one of them.

Spiking attention (Spikformer's SSA, spike-form Q, K and V, no softmax): ``Q = LIF(LN(Wq s))``, and K, V alike from
the key tokens; per head ``A = ((Q K^T) * M) V``, where the binary mask M is the baseline's (causal over actions;
action t sees the timestep token and observations up to t + 1). Q K^T counts coincident spikes, so A is a sum of
integers; ``LIF(LN(A))`` turns it back into spikes before the output projection Wo (LN makes a per-token scale,
such as Spikformer's fixed 0.125, unnecessary).

Spiking condition encoder. The condition tokens (sinusoidal timestep embedding, one linear embedding per
observation, positions) are presented unchanged at every step (direct coding) to ``n_cond_layers`` spiking
blocks with unmasked attention; a final ``LIF(LN(.))`` gives the condition spikes C (T, B, 1 + obs_horizon, d).

Spiking Modulate Decoder (SMD), in place of the transformer decoder. Decoder blocks run over the action tokens;
the condition reaches them two ways, each switchable for ablation:

* ``attend_condition``: the keys and values of each block's attention are [C; action spikes], so actions attend
  to the condition spikes (the decoder's cross-attention and self-attention in one spiking attention).
* ``modulation``: a spiking condition code m = LIF(LN(Wc vec(C))) (T, B, code_dim) sets, per block and step, a
  gain, a bias and an output gate for each sublayer, through one linear map of the code spikes (accumulates):
  ``(g1, b1, a1, g2, b2, a2) = Wm_l m``; then ``s = LIF(LN(u) (1 + g) + b)`` and ``u += (1 + a) Sublayer(s)``.
  The condition thus changes how excitable the decoder's neurons are and how much each sublayer writes into the
  membrane stream, FiLM / DiT's adaLN in spiking form: the gains and biases move with the condition's spikes
  from one step to the next, so their effect on each LIF is integrated over T like any other input. With
  ``modulation = False`` the gains and biases are 0 and gates 1 (the code and Wm do not exist).

Direct observation conditioning (``direct_obs_conditioning``, on for new networks), as in the baseline: one
linear map of the whole normalised observation history, ``W vec(obs)``, is added to every action token's
embedding, which is the input current of the decoder's membrane stream u before its first LIF layer. The
condition then drives the decoder's first spikes directly instead of only through attention to the condition
spikes or through the modulation (trained on button-press-v3 without it, the predicted first x action barely
moved with the button's x position). Like the other embeddings it reads real values (multiply-accumulates).
Networks saved without the field were built without the map and load with it off
(:data:`policy.models.common.ADDED_FIELDS`).

The output is read from the membrane stream, not from spikes: noise = Head(LN(mean over T of u)) (a non-spiking
readout, as regression SNNs use), so the prediction is not quantised to T + 1 rate levels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
from spikebot.spiking import MultiStepLIF, NeuronConfig


@dataclass(frozen=True)
class STMDPConfig:
    """Sizes of the spiking network; defaults give about the baseline's parameter count (``TransformerConfig()``)."""

    kind: ClassVar[str] = "stmdp"

    obs_dim: int = 39
    action_dim: int = 4
    obs_horizon: int = 2
    pred_horizon: int = 16
    embed_dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    n_cond_layers: int = 1
    time_steps: int = 4
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    modulation: bool = True
    attend_condition: bool = True
    code_dim: int = 64
    causal_attention: bool = True
    lif_input_gain: float = 1.5
    direct_obs_conditioning: bool = True

    def __post_init__(self) -> None:
        check_sizes(self)
        if self.time_steps < 1 or self.code_dim < 1 or self.n_cond_layers < 0 or self.lif_input_gain <= 0:
            raise ValueError("time_steps, code_dim and lif_input_gain must be positive, n_cond_layers >= 0")
        if not (self.modulation or self.attend_condition):
            raise ValueError("the decoder needs the condition: set modulation or attend_condition (or both)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, saved: bool = True) -> STMDPConfig:
        """A saved configuration (``to_dict``), or with ``saved=False`` overrides of the defaults (see ``known_fields``)."""
        values = known_fields(cls, values, saved=saved)
        if isinstance(values.get("neuron"), dict):
            values["neuron"] = NeuronConfig(**values["neuron"])
        return cls(**values)


class SpikingAttention(nn.Module):
    """Spike-form Q (from the queries) and K, V (from [memory; queries]), masked, no softmax; -> Wo LIF(LN(A))."""

    def __init__(self, dim: int, heads: int, neuron: NeuronConfig, mask: torch.Tensor) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.q_norm, self.k_norm, self.v_norm, self.attn_norm = (nn.LayerNorm(dim) for _ in range(4))
        self.register_buffer("mask", mask.float(), persistent=False)  # (queries, keys) 1 where allowed
        # Synaptic operations per spike: a Q spike of query i is added against the K of every key it sees (Q K^T),
        # a V spike of key j is accumulated into every query that sees it (A V); K is the other operand of Q K^T.
        self.q_lif = MultiStepLIF(neuron, fan_out=mask.float().sum(dim=1, keepdim=True))
        self.k_lif = MultiStepLIF(neuron, fan_out=0.0)
        self.v_lif = MultiStepLIF(neuron, fan_out=mask.float().sum(dim=0).unsqueeze(1))
        self.attn_lif = MultiStepLIF(neuron, fan_out=dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, spikes: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        keys = spikes if memory is None else torch.cat([memory, spikes], dim=2)
        q = self._heads(self.q_lif(self.q_norm(self.q(spikes))))
        k = self._heads(self.k_lif(self.k_norm(self.k(keys))))
        v = self._heads(self.v_lif(self.v_norm(self.v(keys))))
        attention = (q @ k.transpose(-1, -2)) * self.mask  # (T, B, heads, queries, keys): coincidence counts
        mixed = (attention @ v).transpose(2, 3).flatten(-2)  # (T, B, queries, dim)
        return self.out(self.attn_lif(self.attn_norm(mixed)))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(2, 3)


class SpikingBlock(nn.Module):
    """Membrane-shortcut spiking transformer block; with ``code_dim`` its sublayers are modulated (SMD)."""

    def __init__(self, config: STMDPConfig, mask: torch.Tensor, code_dim: int | None = None) -> None:
        super().__init__()
        d, hidden, neuron = config.embed_dim, config.embed_dim * config.mlp_ratio, config.neuron
        self.attn_norm = nn.LayerNorm(d)
        self.attn_in_lif = MultiStepLIF(neuron, fan_out=3 * d)  # into Wq, Wk, Wv
        self.attention = SpikingAttention(d, config.n_heads, neuron, mask)
        self.mlp_norm = nn.LayerNorm(d)
        self.mlp_in_lif = MultiStepLIF(neuron, fan_out=hidden)
        self.fc1 = nn.Linear(d, hidden)
        self.hidden_norm = nn.LayerNorm(hidden)
        self.hidden_lif = MultiStepLIF(neuron, fan_out=d)
        self.fc2 = nn.Linear(hidden, d)
        self.modulation = nn.Linear(code_dim, 6 * d) if code_dim else None

    def forward(self, u: torch.Tensor, memory: torch.Tensor | None = None, code: torch.Tensor | None = None) -> torch.Tensor:
        if self.modulation is None or code is None:
            u = u + self.attention(self.attn_in_lif(self.attn_norm(u)), memory)
            return u + self.fc2(self.hidden_lif(self.hidden_norm(self.fc1(self.mlp_in_lif(self.mlp_norm(u))))))
        gain1, bias1, gate1, gain2, bias2, gate2 = self.modulation(code).unsqueeze(2).chunk(6, dim=-1)  # (T, B, 1, d)
        s = self.attn_in_lif(torch.addcmul(bias1, self.attn_norm(u), 1.0 + gain1))
        u = torch.addcmul(u, self.attention(s, memory), 1.0 + gate1)
        s = self.mlp_in_lif(torch.addcmul(bias2, self.mlp_norm(u), 1.0 + gain2))
        return torch.addcmul(u, self.fc2(self.hidden_lif(self.hidden_norm(self.fc1(s)))), 1.0 + gate2)


class SpikingTransformerDenoiser(nn.Module):
    """forward(noisy_actions (B, pred_horizon, A), timestep (B,), obs_cond (B, obs_horizon, obs_dim)) -> noise."""

    #: Linear maps that read real values, not spikes: their cost is multiply-accumulates (see policy.models.cost).
    real_valued_layers: ClassVar[tuple[str, ...]] = ("action_embed", "obs_embed", "obs_to_actions", "head")

    def __init__(self, config: STMDPConfig) -> None:
        super().__init__()
        self.config = config
        d, n_cond = config.embed_dim, 1 + config.obs_horizon
        self.action_embed = nn.Linear(config.action_dim, d)
        self.action_pos = nn.Parameter(torch.zeros(1, config.pred_horizon, d))
        self.obs_embed = nn.Linear(config.obs_dim, d)
        self.cond_pos = nn.Parameter(torch.zeros(1, n_cond, d))
        self.obs_to_actions = nn.Linear(config.obs_horizon * config.obs_dim, d) if config.direct_obs_conditioning else None
        self.encoder = nn.ModuleList(
            SpikingBlock(config, torch.ones(n_cond, n_cond, dtype=torch.bool)) for _ in range(config.n_cond_layers))
        self.cond_norm = nn.LayerNorm(d)
        fan_out = (2 * d * config.n_layers if config.attend_condition else 0) + (config.code_dim if config.modulation else 0)
        self.cond_lif = MultiStepLIF(config.neuron, fan_out=fan_out)
        if config.modulation:
            self.code = nn.Linear(n_cond * d, config.code_dim)
            self.code_norm = nn.LayerNorm(config.code_dim)
            self.code_lif = MultiStepLIF(config.neuron, fan_out=6 * d * config.n_layers)
        actions = torch.ones(config.pred_horizon, config.pred_horizon, dtype=torch.bool)
        if config.causal_attention:
            actions = actions.tril()
        mask = torch.cat([condition_mask(config.pred_horizon, config.obs_horizon), actions], dim=1) if config.attend_condition else actions
        code_dim = config.code_dim if config.modulation else None
        self.decoder = nn.ModuleList(SpikingBlock(config, mask, code_dim) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.action_dim)
        self.apply(init_weights)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.LayerNorm) and name != "final_norm":  # every other norm feeds LIF neurons
                nn.init.constant_(module.weight, config.lif_input_gain)

    def elementwise_macs(self) -> float:
        """Real-valued multiplications per sample and pass outside matrix products: the SMD's gains and gates
        (two of each per block, over every action token, feature and step)."""
        config = self.config
        if not config.modulation:
            return 0.0
        return 4.0 * config.n_layers * config.time_steps * config.pred_horizon * config.embed_dim

    def encode_condition(self, timestep: torch.Tensor, obs_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Condition spikes (T, B, 1 + obs_horizon, d) and the modulation code spikes (T, B, code_dim) or None."""
        time_token = sinusoidal_embedding(timestep, self.config.embed_dim).unsqueeze(1)
        cond = torch.cat([time_token, self.obs_embed(obs_cond)], dim=1) + self.cond_pos
        u = cond.unsqueeze(0).expand(self.config.time_steps, *cond.shape)
        for block in self.encoder:
            u = block(u)
        spikes = self.cond_lif(self.cond_norm(u))
        if not self.config.modulation:
            return spikes, None
        return spikes, self.code_lif(self.code_norm(self.code(spikes.flatten(-2))))

    def forward(self, noisy_actions: torch.Tensor, timestep: torch.Tensor | int, obs_cond: torch.Tensor) -> torch.Tensor:
        timestep = as_timesteps(timestep, noisy_actions.shape[0], noisy_actions.device)
        memory, code = self.encode_condition(timestep, obs_cond)
        x = self.action_embed(noisy_actions) + self.action_pos
        if self.obs_to_actions is not None:
            x = x + self.obs_to_actions(obs_cond.flatten(1)).unsqueeze(1)
        u = x.unsqueeze(0).expand(self.config.time_steps, *x.shape)
        for block in self.decoder:
            u = block(u, memory if self.config.attend_condition else None, code)
        return self.head(self.final_norm(u.mean(dim=0)))
