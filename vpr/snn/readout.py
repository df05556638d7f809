"""Query-time readout of a trained modular network: responses, neuronal assignment and place scores.

At query time weights and thresholds are frozen and the query image is rate-encoded, so a presentation has the
closed form of :mod:`vpr.snn.dynamics`, and one matrix product (the drives) and a logarithm replace a simulation
of hundreds of steps. Two readouts:

- ``rate`` (default): each neuron's firing rate without lateral inhibition, ``1 / t*``: the exact limit of
  spike count / presentation time of the simulated neuron. Graded, so places can be ranked beyond the best one.
- ``wta_counts``: Diehl & Cook's test mode: spike counts in one presentation with the lateral inhibition, so
  only each module's winners respond. Few spikes per image make most places tie at zero.

Neurons are assigned to places as in the papers, from the winners' spike counts while each module is shown its
own places, and hyperactivity is measured with the inhibition active too: the number of places of the whole map
for which a neuron wins (fires at all). ``query_thresholds`` chooses whether the rate readout keeps each neuron's
adapted threshold (Diehl & Cook's test mode) or uses the base threshold for all (the adaptation then serves only
learning and labelling); the calibration split decides.
"""

from __future__ import annotations

import torch

from vpr.snn.config import NetworkConfig
from vpr.snn.dynamics import firing_rate_hz, presentation_periods, spike_counts_from_periods


def winner_spike_counts(drive: torch.Tensor, thresholds: torch.Tensor, module: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """Spike counts (queries, neurons) in one presentation with each module's lateral inhibition.

    Neurons may come from any modules; ``module`` (neurons,) says whose, and the winner-take-all acts within each.
    """
    period = presentation_periods(drive, thresholds, config, inhibition=False)
    if len(module):
        n_modules = int(module.max()) + 1 if len(module) else 0
        first = torch.full((period.shape[0], n_modules), torch.inf, dtype=period.dtype, device=period.device)
        first = first.scatter_reduce(1, module.expand(period.shape[0], -1), period, reduce="amin")
        winners = period <= first[:, module] + config.inhibition_latency_ms
        period = torch.where(winners, period, torch.full_like(period, torch.inf))
    return spike_counts_from_periods(period, config)


def boosted_winner_counts(drive: torch.Tensor, thresholds: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """Winners' spike counts per presentation, each presentation repeated with a stronger input while its module
    fires fewer than ``min_spikes`` (Diehl & Cook's labelling). ``drive``: (..., neurons) of one module each."""
    gain = torch.ones(drive.shape[:-1] + (1,), dtype=drive.dtype, device=drive.device)
    for _ in range(config.max_repeats + 1):
        counts = spike_counts_from_periods(presentation_periods(drive * gain, thresholds, config), config)
        weak = counts.sum(dim=-1, keepdim=True) < config.min_spikes
        if not weak.any():
            break
        gain = gain + config.gain_step * weak
    return counts


def query_responses(drive: torch.Tensor, thresholds: torch.Tensor, module: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """The configured readout: firing rates in Hz (``rate``) or winners' spike counts (``wta_counts``)."""
    if config.query_readout == "wta_counts":
        return winner_spike_counts(drive, thresholds, module, config)
    return firing_rate_hz(drive, thresholds, config.tau_mem_ms)


def assign_neurons(responses: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neuronal assignment from each module's responses to its own places.

    ``responses``: (modules, places_per_module, neurons) spike counts; ``regions``: (modules, places_per_module)
    global place indices, -1 for padding. Returns each neuron's place (the one it responds to most; -1 if it
    never fires for its region) and its ambiguity weight ``(best - mean of the others) / best`` over its
    region's places: 1 for a neuron that answers to its place alone, near 0 for one that answers to all alike.
    """
    valid = (regions >= 0).unsqueeze(-1)
    best_response, best_slot = responses.masked_fill(~valid, -1.0).max(dim=1)
    place = torch.where(best_response > 0, regions.gather(1, best_slot), torch.full_like(best_slot, -1))
    n_others = (valid.sum(dim=1) - 1).clamp(min=1)
    mean_others = ((responses * valid).sum(dim=1) - best_response.clamp(min=0)) / n_others
    weight = ((best_response - mean_others) / best_response.clamp(min=1e-12)).clamp(min=0.0)
    return place, weight


def place_scores(counts: torch.Tensor, place: torch.Tensor, weight: torch.Tensor, n_places: int,
                 reduce: str = "mean") -> torch.Tensor:
    """Weighted mean (or, with ``reduce="max"``, the largest weighted) response of the neurons assigned to each
    place: (queries, neurons) -> (queries, places). Places without assigned neurons score 0.
    """
    if reduce == "max":
        scores = torch.zeros(counts.shape[0], n_places, dtype=counts.dtype, device=counts.device)
        return scores.scatter_reduce_(1, place.expand(counts.shape[0], -1), counts * weight, reduce="amax", include_self=False)
    scores = torch.zeros(counts.shape[0], n_places, dtype=counts.dtype, device=counts.device)
    scores.index_add_(1, place, counts * weight)
    total_weight = torch.zeros(n_places, dtype=counts.dtype, device=counts.device).index_add_(0, place, weight.to(counts.dtype))
    return scores / total_weight.clamp(min=1e-12)
