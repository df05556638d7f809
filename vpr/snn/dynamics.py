"""One image presentation to many modules at once.

Each module is 400 excitatory LIF neurons with adaptive thresholds; each drives an inhibitory partner that
inhibits every other excitatory neuron of the module. Inhibition is strong: the neurons that fire within
``inhibition_latency_ms`` of the module's first spike (before the inhibition arrives) form the winning set and
fire on; every other neuron is silenced for the rest of the presentation (a soft winner-take-all: several
winners are possible, and a stronger image recruits more).

Under a constant drive ``I`` (rate encoding: the expected input current) a LIF neuron from rest,
``tau dv/dt = I - v``, first reaches threshold ``theta`` at ``t* = tau ln(I / (I - theta))`` and, reset to 0,
repeats every ``t*``. So a presentation has a closed form: first-spike times, the winning set, and
``floor(T / t*)`` spikes per winner. :func:`presentation_periods` computes it for all modules in a few tensor
operations. :func:`simulate_presentation` runs the same network step by step with norse's LIF neurons (explicit
inhibitory population included); it serves Poisson input, which has no closed form, and checks the closed form
(``tests/test_snn.py``).
"""

from __future__ import annotations

import torch

import spikebot.norse_quiet  # noqa: F401  (before norse: silences its import-time deprecation warning)
from norse.torch.functional.lif import LIFFeedForwardState, LIFParameters, lif_feed_forward_step

from vpr.snn.config import NetworkConfig

INHIBITORY_TAU_MS = 10.0
_SILENCING_CURRENT = -1e4


def first_spike_time(drive: torch.Tensor, thresholds: torch.Tensor, tau_mem_ms: float) -> torch.Tensor:
    """Time (ms) at which a LIF neuron under constant ``drive`` first reaches its threshold; inf if never."""
    drive = drive.to(torch.float64)
    thresholds = thresholds.to(torch.float64)
    fires = drive > thresholds
    ratio = torch.where(fires, drive / (drive - thresholds).clamp(min=1e-300), torch.ones_like(drive))
    return torch.where(fires, tau_mem_ms * torch.log(ratio), torch.full_like(drive, torch.inf))


def firing_rate_hz(drive: torch.Tensor, thresholds: torch.Tensor, tau_mem_ms: float) -> torch.Tensor:
    """Long-run firing rate (Hz) of a LIF neuron under constant ``drive``, ``1000 / first_spike_time``; 0 if silent.

    Written with ``log1p(theta / (I - theta))`` so float32 keeps full relative precision where ``I / (I - theta)`` is
    close to 1 (strong drive): the query readout then runs in float32, about 5x cheaper than float64 on CPU. In
    place on one buffer, because this runs over every read-out neuron of every query of a served batch.
    """
    drive = drive.to(torch.float32)
    thresholds = thresholds.to(torch.float32)
    silent = drive <= thresholds
    rate = drive - thresholds
    torch.div(thresholds, rate, out=rate)  # silent neurons get nonsense here, zeroed below
    rate.log1p_().mul_(tau_mem_ms / 1000.0).reciprocal_()
    return rate.masked_fill_(silent, 0.0)


def presentation_periods(
    drive: torch.Tensor, thresholds: torch.Tensor, config: NetworkConfig, *, inhibition: bool = True
) -> torch.Tensor:
    """Inter-spike period (ms) of every neuron during a presentation, inf for silent ones: (..., neurons)."""
    period = first_spike_time(drive, thresholds, config.tau_mem_ms)
    period = torch.where(period <= config.presentation_ms, period, torch.full_like(period, torch.inf))
    if inhibition:
        first = period.amin(dim=-1, keepdim=True)
        period = torch.where(period <= first + config.inhibition_latency_ms, period, torch.full_like(period, torch.inf))
    return period


def spike_counts_from_periods(period: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    return torch.floor(config.presentation_ms / period).to(torch.float32)


def _lif(tau_ms: float, threshold: torch.Tensor | float, dt: float) -> LIFParameters:
    return LIFParameters(
        tau_syn_inv=torch.tensor(1.0 / dt),  # the input current of a step acts in that step only
        tau_mem_inv=torch.tensor(1.0 / tau_ms),
        v_leak=torch.tensor(0.0),
        v_th=torch.as_tensor(threshold),
        v_reset=torch.tensor(0.0),
        method="heaviside",
        alpha=torch.tensor(0.0),
    )


def simulate_presentation(
    drive: torch.Tensor, thresholds: torch.Tensor, config: NetworkConfig, *, inhibition: bool = True
) -> torch.Tensor:
    """Step-by-step simulation with norse: ``drive`` (modules, steps or 1, neurons) -> spikes (modules, steps, neurons).

    The inhibitory partner of a neuron fires the step after it; its inhibition reaches the other neurons of the
    module ``inhibition_latency_ms`` after the first excitatory spike and silences those that have not fired.
    """
    dt = config.dt_ms
    n_modules, _, n_neurons = drive.shape
    zeros = torch.zeros(n_modules, n_neurons, dtype=drive.dtype, device=drive.device)
    excitatory, inhibitory = _lif(config.tau_mem_ms, thresholds, dt), _lif(INHIBITORY_TAU_MS, 1.0, dt)
    state_e = LIFFeedForwardState(v=zeros, i=zeros)
    state_i = LIFFeedForwardState(v=zeros, i=zeros)
    has_fired = torch.zeros_like(zeros, dtype=torch.bool)
    inhibition_arrives = torch.full((n_modules, 1), torch.inf, dtype=torch.float64, device=drive.device)
    spikes = []
    for step in range(config.n_steps):
        now = (step + 1) * dt
        current = drive[:, min(step, drive.shape[1] - 1)]
        if inhibition:
            silenced = (now >= inhibition_arrives) & ~has_fired
            current = torch.where(silenced, torch.full_like(current, _SILENCING_CURRENT), current)
        spikes_e, state_e = lif_feed_forward_step(current, state_e, excitatory, dt=dt)
        # Strong enough that an inhibitory partner fires in the step after its excitatory neuron.
        spikes_i, state_i = lif_feed_forward_step(2.0 * INHIBITORY_TAU_MS / dt * spikes_e, state_i, inhibitory, dt=dt)
        has_fired |= spikes_e.bool()
        first_inhibitory = spikes_i.bool().any(dim=-1, keepdim=True) & torch.isinf(inhibition_arrives)
        # The partner fires one step after its excitatory neuron; the rest of the latency is the synaptic delay.
        inhibition_arrives = torch.where(first_inhibitory, torch.tensor(now - dt + config.inhibition_latency_ms, dtype=torch.float64), inhibition_arrives)
        spikes.append(spikes_e)
    return torch.stack(spikes, dim=1)
