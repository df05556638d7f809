"""From patch-normalised images to input rates and spike trains."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from vpr.preprocess import preprocess, preprocess_views
from vpr.snn.config import NetworkConfig


def image_rates(normalised: np.ndarray) -> torch.Tensor:
    """Map (..., H, W) images in [-1, 1] to (..., H*W) relative rates in [0, 1] (VPRSNN: 0 to 63.75 Hz)."""
    normalised = np.asarray(normalised, dtype=np.float32)
    flat = normalised.reshape(*normalised.shape[:-2], -1)
    return torch.from_numpy((flat + 1.0) / 2.0)


def query_rates(images: Iterable[np.ndarray], config: NetworkConfig) -> torch.Tensor:
    """What a query presents: (queries, inputs) rates, or (queries, views, inputs) with ``query_shift_px`` > 0."""
    if config.query_shift_px == 0:
        return image_rates(preprocess(images, config.preprocess))
    return image_rates(preprocess_views(images, config.preprocess, config.query_shift_px))


def drive_scale(config: NetworkConfig) -> float:
    """From ``rates @ weights`` to input current: ``input_gain`` times the weight-averaged input rate."""
    return config.input_gain / (config.weight_sum_per_input * config.n_inputs)


def poisson_spike_trains(rates: torch.Tensor, config: NetworkConfig, generator: torch.Generator) -> torch.Tensor:
    """Discrete-time Poisson spike trains: (..., inputs) rates to (..., steps, inputs) spikes."""
    probability = (rates * config.max_rate_per_ms * config.dt_ms).unsqueeze(-2)
    return torch.bernoulli(probability.expand(*rates.shape[:-1], config.n_steps, rates.shape[-1]).contiguous(), generator=generator)


def poisson_count_rates(rates: torch.Tensor, config: NetworkConfig, generator: torch.Generator) -> torch.Tensor:
    """Rates as realised by Poisson inputs over one presentation: each input's spike count is drawn from
    Poisson(rate x duration) and spread evenly. Keeps the trial-to-trial variability of Poisson coding (which
    makes differently seeded networks differ) while the presentation keeps its closed form."""
    expected = rates * config.max_rate_per_ms * config.presentation_ms
    return torch.poisson(expected, generator=generator) / (config.max_rate_per_ms * config.presentation_ms)


def spike_train_drive(spikes: torch.Tensor, weights: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """Input current per step from input spikes, scaled so its mean equals the rate-encoded drive."""
    return torch.bmm(spikes, weights) * (drive_scale(config) / (config.max_rate_per_ms * config.dt_ms))
