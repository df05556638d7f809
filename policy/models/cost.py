"""What one forward pass costs: the baseline's multiply-accumulates against the spiking network's synaptic operations.

A weight matrix that reads real values costs one multiply-accumulate (MAC) per weight per token; one that reads
spikes costs one accumulate per spike per synapse it drives (a synaptic operation, SOP = spikes x fan-out),
counted by :func:`spikebot.spiking.record_activity` from the spikes of an actual run. MACs of real-valued
layers are counted by torch's ``FlopCounterMode`` (matrix products only); the spiking network's other
real-valued products (the SMD's gains and gates) are added from its shapes. Normalisation, activation
functions, softmax and neuron updates are left out for both networks, as in the Spikformer / Spike-driven
Transformer energy estimates, whose per-operation energies (45 nm, 32-bit float: 4.6 pJ per MAC, 0.9 pJ per
accumulate; Horowitz 2014) :attr:`InferenceCost.energy_uj` uses. These are estimates for neuromorphic
hardware; on a CPU or GPU the spiking network runs densely (``dense_macs``, T times the work of one step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spikebot.spiking import ActivityReport, MultiStepLIF, record_activity

ENERGY_PJ_PER_MAC = 4.6
ENERGY_PJ_PER_AC = 0.9


@dataclass(frozen=True)
class InferenceCost:
    """Per sample: ``passes`` forward passes (denoising steps) of one network."""

    network: str
    passes: int
    macs_per_pass: float  # real-valued multiply-accumulates
    sops_per_pass: float  # spike-driven accumulates (0 for a non-spiking network)
    dense_macs_per_pass: float  # every matrix product counted as MACs, spikes or not
    activity: ActivityReport | None = None

    @property
    def energy_uj(self) -> float:
        """Estimated energy of all passes in microjoules (45 nm figures, see the module docstring)."""
        return self.passes * (self.macs_per_pass * ENERGY_PJ_PER_MAC + self.sops_per_pass * ENERGY_PJ_PER_AC) * 1e-6

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["activity"] = self.activity.to_dict() if self.activity is not None else None
        values["energy_uj"] = self.energy_uj
        return values


def is_spiking(network: nn.Module) -> bool:
    return any(isinstance(module, MultiStepLIF) for module in network.modules())


def example_inputs(network: nn.Module, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (noisy actions, timesteps, observations) of the network's shapes, on its device."""
    config = network.config
    device = next(network.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.randn(batch, config.pred_horizon, config.action_dim, generator=generator)
    timesteps = torch.randint(0, 100, (batch,), generator=generator)
    obs = torch.rand(batch, config.obs_horizon, config.obs_dim, generator=generator) * 2 - 1
    return noisy.to(device), timesteps.to(device), obs.to(device)


@torch.no_grad()
def count_macs(network: nn.Module, inputs: tuple[torch.Tensor, ...] | None = None) -> tuple[float, dict[str, float]]:
    """Multiply-accumulates per sample of one forward pass: the total and per submodule name (relative to the
    network, e.g. ``"head"``)."""
    inputs = inputs or example_inputs(network)
    with FlopCounterMode(display=False) as counter:
        network(*inputs)
    batch = len(inputs[0])
    root = type(network).__name__
    per_module = {}
    for name, counts in counter.get_flop_counts().items():
        if name.startswith(root + "."):
            per_module[name[len(root) + 1 :]] = sum(counts.values()) / 2 / batch
    return counter.get_total_flops() / 2 / batch, per_module


@torch.no_grad()
def forward_cost(network: nn.Module, inputs: tuple[torch.Tensor, ...] | None = None, passes: int = 1) -> InferenceCost:
    """Cost of one forward pass on ``inputs`` (random by default), scaled to ``passes`` passes."""
    inputs = inputs or example_inputs(network)
    dense, per_module = count_macs(network, inputs)
    if not is_spiking(network):
        return InferenceCost(type(network).__name__, passes, dense, 0.0, dense)
    with record_activity(network) as report:
        network(*inputs)
    return spiking_cost(network, report[0], per_module, dense, passes)


def spiking_cost(network: nn.Module, activity: ActivityReport, per_module_macs: dict[str, float], dense_macs: float,
                 passes: int) -> InferenceCost:
    real = sum(per_module_macs.get(name, 0.0) for name in getattr(network, "real_valued_layers", ()))
    real += network.elementwise_macs() if hasattr(network, "elementwise_macs") else 0.0
    return InferenceCost(type(network).__name__, passes, real, activity.sops_per_pass, dense_macs, activity)
