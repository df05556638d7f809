"""Training one modular network: every module learns only its own region's places, all modules at once."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vpr.snn.config import NetworkConfig
from vpr.snn.dynamics import presentation_periods, simulate_presentation
from vpr.snn.encoding import drive_scale, poisson_count_rates, poisson_spike_trains, spike_train_drive
from vpr.snn.learning import RankOneChange, apply_weight_change, normalise_weights_, weight_change_closed_form, weight_change_from_spike_trains


def module_regions(n_places: int, config: NetworkConfig, generator: torch.Generator) -> torch.Tensor:
    """(modules, places_per_module) global place indices, -1 where the last module has fewer places.

    Contiguous stretches of the route by default; ``shuffled`` deals places to modules at random (seeded).
    """
    order = torch.arange(n_places)
    if config.region_split == "shuffled":
        order = torch.randperm(n_places, generator=generator)
    n_modules = -(-n_places // config.places_per_module)
    padded = torch.full((n_modules * config.places_per_module,), -1, dtype=torch.long)
    padded[:n_places] = order
    return padded.view(n_modules, config.places_per_module)


def _presentation_order(regions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fresh random order of each module's places, padding last."""
    keys = torch.rand(regions.shape, generator=generator)
    return torch.argsort(keys.masked_fill(regions < 0, 2.0), dim=1)


class _Presenter:
    """One presentation per module, repeated with a stronger input while a module fires fewer than
    ``min_spikes`` spikes (Diehl & Cook's rule, which keeps learning going as thresholds rise)."""

    def __init__(self, config: NetworkConfig, generator: torch.Generator):
        self.config, self.generator = config, generator

    def __call__(self, rates, weights, thresholds, active) -> torch.Tensor:
        """Summed weight change and spike counts for one presentation of ``rates`` (modules, inputs)."""
        config = self.config
        gain = torch.ones(len(rates), 1, device=rates.device)
        change, counts = self._present(rates, weights, thresholds)
        for _ in range(config.max_repeats):
            retry = active & (counts.sum(dim=1) < config.min_spikes)
            if not retry.any():
                break
            gain = gain + config.gain_step * retry.unsqueeze(1)
            trial_change, trial_counts = self._present(rates * gain, weights, thresholds)
            change = _select(retry, trial_change, change)
            counts = torch.where(retry.view(-1, 1), trial_counts, counts)
        return change, counts

    def _present(self, rates, weights, thresholds):
        config = self.config
        if config.encoding in ("rate", "poisson_counts"):
            if config.encoding == "poisson_counts":
                rates = poisson_count_rates(rates, config, self.generator)
            drive = torch.bmm(rates.unsqueeze(1), weights).squeeze(1) * drive_scale(config)
            period = presentation_periods(drive, thresholds, config)
            counts = torch.floor(config.presentation_ms / period).to(rates.dtype)
            return weight_change_closed_form(rates, period, config), counts
        spikes_in = poisson_spike_trains(rates.cpu(), config, self.generator).to(rates.device)
        spikes = simulate_presentation(spike_train_drive(spikes_in, weights, config), thresholds, config)
        return weight_change_from_spike_trains(spikes_in, spikes, config), spikes.sum(dim=1)


def _select(mask: torch.Tensor, new, old):
    """Per module, ``new`` where ``mask`` else ``old`` (dense or factored changes)."""
    if isinstance(new, RankOneChange):
        return RankOneChange(*(torch.where(mask.view(-1, 1), n, o) for n, o in zip(new, old)))
    return torch.where(mask.view(-1, 1, 1), new, old)


def _masked(change, active: torch.Tensor):
    if isinstance(change, RankOneChange):
        return RankOneChange(change.per_input * active.unsqueeze(-1), change.per_neuron)
    return change * active.view(-1, 1, 1)


def train_modules(
    rates: torch.Tensor,
    config: NetworkConfig,
    *,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Learn input weights and adaptive thresholds for all modules of one network.

    ``rates``: (n_places, n_inputs) reference images as rates in [0, 1]. Returns ``(weights, thresholds,
    regions)``: (modules, n_inputs, neurons), (modules, neurons) and (modules, places_per_module).
    ``on_epoch(epoch, weights, thresholds)`` is called after each epoch (progress, snapshots for calibration).
    """
    generator = torch.Generator().manual_seed(config.seed)
    regions = module_regions(len(rates), config, generator)
    weights = torch.rand(len(regions), rates.shape[1], config.n_neurons, generator=generator) * config.initial_weight_max
    weights = normalise_weights_(weights, config).to(device)
    thresholds = torch.ones(len(regions), config.n_neurons, device=device)
    rates = rates.to(device)
    present = _Presenter(config, generator)
    for epoch in range(config.epochs):
        order = _presentation_order(regions, generator)
        for slot in range(regions.shape[1]):
            places = regions.gather(1, order[:, slot : slot + 1]).squeeze(1).to(device)
            active = places >= 0
            change, counts = present(rates[places.clamp(min=0)] * active.unsqueeze(-1), weights, thresholds, active)
            apply_weight_change(weights, _masked(change, active), config)
            thresholds += config.theta_plus * counts * active.unsqueeze(-1)
        if on_epoch is not None:
            on_epoch(epoch, weights, thresholds)
    return weights.cpu(), thresholds.cpu(), regions
