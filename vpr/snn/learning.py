"""Unsupervised STDP on the input weights, with Diehl & Cook's weight normalisation.

Traces are additive and decay exponentially (pre 20 ms, post1 20 ms, post2 40 ms). A presynaptic spike lowers
the weight by ``learning_rate_pre * post1``; a postsynaptic spike raises it by ``learning_rate_post * pre *
post2`` with post2 read before the spike's own increment, so an isolated spike does not potentiate (Diehl &
Cook's triplet form). Changes are summed over a presentation and applied at its end.

With rate input the pre trace of input ``i`` is ``f_i tau_pre (1 - exp(-t / tau_pre))`` and a winner fires
periodically, so the summed change is ``f_i`` times one number per neuron, given by geometric series
(:func:`weight_change_closed_form`). :func:`weight_change_from_spike_trains` sums the same rule over simulated
spike trains (Poisson input), as two batched matrix products.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vpr.snn.config import NetworkConfig


def decay_kernel(n_steps: int, decay_steps: float, *, include_current: bool) -> torch.Tensor:
    """K[t, s] = exp(-(t - s) / decay_steps) for s < t (and s == t when ``include_current``).

    ``K @ x`` gives at each step the decaying sum of earlier events: a whole trace as one matrix product.
    """
    steps = torch.arange(n_steps, dtype=torch.float32)
    lag = steps[:, None] - steps[None, :]
    mask = lag >= 0 if include_current else lag > 0
    return torch.where(mask, torch.exp(-lag.clamp(min=0) / decay_steps), torch.zeros(()))


def weight_change_from_spike_trains(inputs: torch.Tensor, spikes: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """Summed STDP change for input spike trains (modules, steps, inputs) and output spikes (modules, steps, neurons)."""
    n_steps, dt = inputs.shape[1], config.dt_ms
    pre = torch.einsum("ts,msi->mti", decay_kernel(n_steps, config.tau_pre_ms / dt, include_current=True).to(inputs), inputs)
    post1 = torch.einsum("ts,msn->mtn", decay_kernel(n_steps, config.tau_post1_ms / dt, include_current=False).to(spikes), spikes)
    post2 = torch.einsum("ts,msn->mtn", decay_kernel(n_steps, config.tau_post2_ms / dt, include_current=False).to(spikes), spikes)
    potentiation = torch.bmm(pre.transpose(1, 2), spikes * post2)
    depression = torch.bmm(inputs.transpose(1, 2), post1)
    return config.learning_rate_post * potentiation - config.learning_rate_pre * depression


def weight_change_closed_form(rates: torch.Tensor, period: torch.Tensor, config: NetworkConfig) -> RankOneChange:
    """Summed STDP change for constant input rates (modules, inputs) in [0, 1] and periodic winners.

    ``period``: (modules, neurons) inter-spike period in ms (inf for silent neurons); neuron ``j`` fires at
    ``k * period_j`` for k = 1..K_j within the presentation. Returned as its two factors.
    """
    period = period.to(torch.float64)
    duration = config.presentation_ms
    count = torch.floor(duration / period)
    fires = count > 0
    s = torch.where(fires, period, torch.ones_like(period))
    k = torch.where(fires, count, torch.zeros_like(count))
    a = torch.exp(-s / config.tau_post2_ms)  # post2 decay over one period
    b = torch.exp(-s / config.tau_pre_ms)  # pre-trace build-up term
    # post2 just before the k-th spike: a (1 - a^(k-1)) / (1 - a).
    sum_post2 = a / (1 - a) * (k - (1 - a**k) / (1 - a))
    sum_b_post2 = a / (1 - a) * (b * (1 - b**k) / (1 - b) - b * (1 - (a * b) ** k) / (1 - a * b))
    potentiation = config.tau_pre_ms * (sum_post2 - sum_b_post2)
    # Integral of post1 from each spike to the end of the presentation.
    c = torch.exp(s / config.tau_post1_ms)
    sum_tail = c * (c**k - 1) / (c - 1) * torch.exp(torch.tensor(-duration / config.tau_post1_ms, dtype=torch.float64))
    depression = config.tau_post1_ms * (k - sum_tail)
    per_neuron = config.learning_rate_post * potentiation - config.learning_rate_pre * depression
    per_neuron = torch.where(fires, per_neuron, torch.zeros_like(per_neuron)).to(rates.dtype)
    return RankOneChange(rates * config.max_rate_per_ms, per_neuron)


class RankOneChange(NamedTuple):
    """A weight change ``per_input[m, i] * per_neuron[m, j]``, kept factored so it is applied in one pass."""

    per_input: torch.Tensor  # (modules, inputs)
    per_neuron: torch.Tensor  # (modules, neurons)

    def dense(self) -> torch.Tensor:
        return self.per_input.unsqueeze(-1) * self.per_neuron.unsqueeze(1)


def apply_weight_change(weights: torch.Tensor, change: torch.Tensor | RankOneChange, config: NetworkConfig) -> None:
    """Add ``change`` to ``weights`` in place, clip to [0, weight_max] and renormalise each neuron's inputs to
    sum to ``weight_sum_per_input * n_inputs`` (Diehl & Cook). In place because the weights of a whole network
    are large (modules x 784 x 400 floats) and this runs after every presentation."""
    if isinstance(change, RankOneChange):
        weights.baddbmm_(change.per_input.unsqueeze(-1), change.per_neuron.unsqueeze(1))
    else:
        weights.add_(change)
    normalise_weights_(weights, config)


def normalise_weights_(weights: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    weights.clamp_(0.0, config.weight_max)
    target = config.weight_sum_per_input * weights.shape[-2]
    return weights.mul_(target / weights.sum(dim=-2, keepdim=True).clamp_(min=1e-12))
