"""Multi-step LIF neurons for spiking transformers: a functional core, a thin module, and activity recording.

Shared by the spiking diffusion policy (:mod:`policy.models.stmdp`) and SpikePoint (:mod:`events.action.models`).

The neuron is norse's current-free ("box") LIF, :func:`norse.torch.functional.lif_box.lif_box_feed_forward_step`,
with normalised potentials: rest and reset 0, threshold 1. Spiking transformers (Spikformer, Spike-driven
Transformer) use a LIF with tau = 2 simulation steps, ``v <- v + (x - v) / 2``; norse's box LIF gives exactly that
with ``tau_mem_inv = 500`` and ``dt = 1e-3`` (norse's defaults, ``tau_mem_inv = 100``, decay only a tenth per
step and barely fire in T = 4 steps). The parameters are set explicitly in :class:`NeuronConfig`.

Tensors carry the simulation time first: ``(T, batch, ...)``. Stateless layers (linear maps, normalisation)
act on all T steps at once (time folded into the batch, Spikformer's multi-step mode); only the neuron loops
over T. :func:`lif_multistep` runs that loop on whole tensors and computes its gradient in one hand-written
backward pass (:class:`_FusedLIF`) instead of recording a dozen autograd nodes per step, with the same spikes
and gradients as stepping norse's function (same surrogate; like norse, the reset is differentiated). On this
project's CPU the neuron's forward and backward passes take half the time of norse's steps, inference
(no gradients) a fifth. :func:`lif_multistep_norse` steps norse's function itself: the reference the fused
loop is tested against.

Activity: while :func:`record_activity` is active every :class:`MultiStepLIF` adds up its spikes per
(token, feature), from which :class:`ActivityReport` gives firing rates per layer and synaptic operations
(spikes x fan-out, the number of synapses a spike drives downstream, which the owning network sets).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

import spikebot.norse_quiet  # noqa: F401  (before norse: silences its import-time deprecation warning)
from norse.torch.functional.lif_box import (
    LIFBoxFeedForwardState,
    LIFBoxParameters,
    lif_box_feed_forward_step,
)
from torch import nn

SURROGATES = ("super", "triangle", "tanh")


@dataclass(frozen=True)
class NeuronConfig:
    """Parameters of the box LIF neuron, in norse's units (``tau_mem_inv`` in 1/s, ``dt`` in s).

    The defaults are the tau = 2 LIF of Spikformer / Spike-driven Transformer: with dt * tau_mem_inv = 0.5 the
    membrane moves halfway to its input every step, fires at ``v_th`` = 1 and is reset to 0.
    ``method`` is norse's surrogate spike function: ``super`` (SuperSpike, gradient 1 / (|v - v_th| + 1)^2; norse
    1.1 ignores ``alpha`` for it), ``triangle`` (alpha * max(0, 1 - |v - v_th|)) or ``tanh``
    (1 - tanh(alpha (v - v_th))^2).
    """

    tau_mem_inv: float = 500.0
    v_th: float = 1.0
    v_reset: float = 0.0
    dt: float = 1e-3
    method: str = "super"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.dt * self.tau_mem_inv <= 1.0:
            raise ValueError(f"dt * tau_mem_inv must be in (0, 1], got {self.dt * self.tau_mem_inv}")
        if self.v_th <= self.v_reset:
            raise ValueError(f"v_th ({self.v_th}) must be above v_reset ({self.v_reset})")
        if self.method not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.method!r}: expected one of {SURROGATES}")

    @property
    def decay(self) -> float:
        """The fraction of the distance to its input the membrane covers per step (1 / tau in steps)."""
        return self.dt * self.tau_mem_inv

    def norse_parameters(self) -> LIFBoxParameters:
        return LIFBoxParameters(
            tau_mem_inv=torch.as_tensor(self.tau_mem_inv), v_leak=torch.as_tensor(0.0), v_th=torch.as_tensor(self.v_th),
            v_reset=torch.as_tensor(self.v_reset), method=self.method, alpha=torch.as_tensor(self.alpha),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lif_multistep_norse(inputs: torch.Tensor, neuron: NeuronConfig) -> torch.Tensor:
    """Spikes (T, ...) of box LIF neurons driven by ``inputs`` (T, ...), stepping norse's function (reference)."""
    parameters = neuron.norse_parameters()
    state = LIFBoxFeedForwardState(v=torch.zeros_like(inputs[0]))
    spikes = []
    for step in inputs:
        z, state = lif_box_feed_forward_step(step, state, parameters, dt=neuron.dt)
        spikes.append(z)
    return torch.stack(spikes)


def surrogate_derivative(x: torch.Tensor, method: str, alpha: float) -> torch.Tensor:
    """The derivative norse's surrogate spike functions use in their backward pass, at ``x = v - v_th``."""
    if method == "super":
        return 1.0 / (x.abs() + 1.0).square()
    if method == "triangle":
        return alpha * torch.relu(1.0 - x.abs())
    if method == "tanh":
        return 1.0 - torch.tanh(alpha * x).square()
    raise ValueError(f"unknown surrogate {method!r}")


def lif_forward(inputs: torch.Tensor, decay: float, v_th: float, v_reset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-reset potentials h and spikes z (T, ...) of box LIF neurons starting at rest:
    h = v + c (x - v); z = H(h - v_th); v = (1 - z) h + z v_reset, with c = dt tau_mem_inv (norse's step).

    Three tensor operations per step, written in place: comparing straight into a float tensor, and not
    stacking, are each several times faster on CPU than the obvious code (which torch.compile prefers)."""
    potentials = torch.empty_like(inputs)
    spikes = torch.empty_like(inputs)
    v = torch.zeros_like(inputs[0])
    for t in range(inputs.shape[0]):
        h = torch.lerp(v, inputs[t], decay, out=potentials[t])
        z = torch.gt(h, v_th, out=spikes[t])
        v = torch.addcmul(h, h, z, value=-1.0) if v_reset == 0.0 else torch.addcmul(h, z, v_reset - h)
    return potentials, spikes


def _lif_forward_functional(inputs: torch.Tensor, decay: float, v_th: float, v_reset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lif_forward` without in-place writes, for torch.compile."""
    v = torch.zeros_like(inputs[0])
    potentials, spikes = [], []
    for t in range(inputs.shape[0]):
        h = v + decay * (inputs[t] - v)
        z = (h > v_th).to(inputs.dtype)
        v = h + z * (v_reset - h)
        potentials.append(h)
        spikes.append(z)
    return torch.stack(potentials), torch.stack(spikes)


def lif_backward(grad_spikes: torch.Tensor, potentials: torch.Tensor, spikes: torch.Tensor, decay: float, v_th: float,
                 v_reset: float, method: str, alpha: float) -> torch.Tensor:
    """dL/dinputs (T, ...) through the T-step loop, given dL/dspikes: the gradient of norse's graph, the reset
    included. With g_v the gradient reaching a step's post-reset potential from the next step:
    dL/dz = g_z + g_v (v_reset - h); dL/dh = dL/dz s'(h - v_th) + g_v (1 - z); dL/dx = c dL/dh; and the previous
    step's g_v = (1 - c) dL/dh. Everything but the recursion is computed for all T steps at once, in place:
    on CPU these loops are bound by memory traffic and fresh allocations, not by arithmetic."""
    slope = _surrogate_(potentials - v_th, method, alpha)
    carried = torch.sub(v_reset, potentials).mul_(slope).add_(1.0).sub_(spikes).mul_(1.0 - decay)
    grads = slope.mul_(grad_spikes)  # the direct term, then dL/dh step by step backwards
    for t in range(potentials.shape[0] - 2, -1, -1):
        grads[t].addcmul_(grads[t + 1], carried[t])
    return grads.mul_(decay)


def _lif_backward_functional(grad_spikes: torch.Tensor, potentials: torch.Tensor, spikes: torch.Tensor, decay: float,
                             v_th: float, v_reset: float, method: str, alpha: float) -> torch.Tensor:
    """:func:`lif_backward` without in-place writes, for torch.compile."""
    slope = surrogate_derivative(potentials - v_th, method, alpha)
    direct = grad_spikes * slope
    carried = (1.0 - decay) * ((v_reset - potentials) * slope + 1.0 - spikes)
    grads = [direct[-1]]
    for t in range(potentials.shape[0] - 2, -1, -1):
        grads.append(direct[t] + grads[-1] * carried[t])
    return decay * torch.stack(grads[::-1])


def _surrogate_(x: torch.Tensor, method: str, alpha: float) -> torch.Tensor:
    """:func:`surrogate_derivative`, overwriting ``x``."""
    if method == "super":
        return x.abs_().add_(1.0).square_().reciprocal_()
    if method == "triangle":
        return x.abs_().neg_().add_(1.0).clamp_(min=0.0).mul_(alpha)
    if method == "tanh":
        return x.mul_(alpha).tanh_().square_().neg_().add_(1.0)
    raise ValueError(f"unknown surrogate {method!r}")


_KERNELS: dict[str, Any] = {"forward": lif_forward, "backward": lif_backward}


def compile_lif(enabled: bool = True) -> None:
    """Run the LIF loops of training through torch.compile (process-wide; off by default).

    The first training step then compiles (about 20 s; 7-12 s when inductor's on-disk cache has the kernels).
    Measured on this project's 2-core CPU: the neuron's forward and backward passes alone run 5-10x faster, but
    a whole default STMDP training step only ~10% faster (the fused eager loop already does little besides
    reading and writing memory; the matrix products dominate). It may matter more on a GPU, where it fuses the
    loop's small kernels. Inference without gradients always runs the eager loop."""
    if enabled:
        _KERNELS["forward"] = torch.compile(_lif_forward_functional, dynamic=True)
        _KERNELS["backward"] = torch.compile(_lif_backward_functional, dynamic=True)
    else:
        _KERNELS.update(forward=lif_forward, backward=lif_backward)


class _FusedLIF(torch.autograd.Function):
    """The T-step box LIF loop as one autograd node, its backward pass written by hand (:func:`lif_backward`):
    only the potentials and spikes are kept, not a dozen intermediate tensors per step."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, decay: float, v_th: float, v_reset: float, method: str, alpha: float) -> torch.Tensor:
        potentials, spikes = _KERNELS["forward"](inputs, decay, v_th, v_reset)
        ctx.save_for_backward(potentials, spikes)
        ctx.constants = (decay, v_th, v_reset, method, alpha)
        return spikes

    @staticmethod
    def backward(ctx: Any, grad_spikes: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        potentials, spikes = ctx.saved_tensors
        return _KERNELS["backward"](grad_spikes.contiguous(), potentials, spikes, *ctx.constants), None, None, None, None, None


def lif_multistep(inputs: torch.Tensor, neuron: NeuronConfig) -> torch.Tensor:
    """Spikes (T, ...) of box LIF neurons starting at rest, driven by ``inputs`` (T, ...) (T steps first)."""
    if torch.is_grad_enabled() and inputs.requires_grad:
        return _FusedLIF.apply(inputs, neuron.decay, neuron.v_th, neuron.v_reset, neuron.method, neuron.alpha)
    with torch.no_grad():
        return _lif_spikes(inputs, neuron.decay, neuron.v_th, neuron.v_reset)


def _lif_spikes(inputs: torch.Tensor, decay: float, v_th: float, v_reset: float) -> torch.Tensor:
    """:func:`lif_forward`'s spikes alone (inference: the potentials are not kept)."""
    spikes = torch.empty_like(inputs)
    v = torch.zeros_like(inputs[0])
    for t in range(inputs.shape[0]):
        h = torch.lerp(v, inputs[t], decay)
        z = torch.gt(h, v_th, out=spikes[t])
        v = torch.addcmul(h, h, z, value=-1.0) if v_reset == 0.0 else torch.addcmul(h, z, v_reset - h)
    return spikes


class MultiStepLIF(nn.Module):
    """A layer of box LIF neurons over T steps: (T, batch, ..., features) currents -> spikes of the same shape.

    ``fan_out`` is the number of synaptic operations one spike of this layer causes downstream: a number, or a
    tensor broadcastable to (tokens, features) when it differs per token or feature (attention). The owning
    network sets it; it is only read by the activity report.
    """

    def __init__(self, neuron: NeuronConfig, fan_out: float | torch.Tensor = 0.0) -> None:
        super().__init__()
        self.neuron = neuron
        self.fan_out = fan_out
        self.recording = False
        self.reset_activity()

    def reset_activity(self) -> None:
        self.spike_counts: torch.Tensor | None = None  # summed over T and batch: (tokens, features) or (features,)
        self.neuron_steps = 0  # neurons x T steps x samples seen
        self.samples = 0

    def forward(self, currents: torch.Tensor) -> torch.Tensor:
        spikes = lif_multistep(currents, self.neuron)
        if self.recording:
            with torch.no_grad():
                counts = spikes.detach().sum(dim=(0, 1)).cpu()
                self.spike_counts = counts if self.spike_counts is None else self.spike_counts + counts
                self.neuron_steps += spikes.numel()
                self.samples += spikes.shape[1]
        return spikes

    def extra_repr(self) -> str:
        return f"tau_mem_inv={self.neuron.tau_mem_inv}, dt={self.neuron.dt}, v_th={self.neuron.v_th}, method={self.neuron.method!r}"


@dataclass(frozen=True)
class LayerActivity:
    name: str
    neurons: int  # per sample (tokens x features)
    time_steps: int
    spikes_per_pass: float  # per sample and forward pass, summed over the T steps
    firing_rate: float  # spikes per neuron and step
    sops_per_pass: float  # spikes x fan-out, per sample and forward pass


@dataclass(frozen=True)
class ActivityReport:
    layers: list[LayerActivity]

    @property
    def spikes_per_pass(self) -> float:
        return sum(layer.spikes_per_pass for layer in self.layers)

    @property
    def sops_per_pass(self) -> float:
        return sum(layer.sops_per_pass for layer in self.layers)

    @property
    def mean_firing_rate(self) -> float:
        neuron_steps = sum(layer.neurons * layer.time_steps for layer in self.layers)
        return self.spikes_per_pass / neuron_steps if neuron_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "spikes_per_pass": self.spikes_per_pass, "sops_per_pass": self.sops_per_pass,
            "mean_firing_rate": self.mean_firing_rate, "layers": [asdict(layer) for layer in self.layers],
        }


@contextmanager
def record_activity(network: nn.Module) -> Iterator[list[ActivityReport]]:
    """Count the spikes of every :class:`MultiStepLIF` in ``network`` inside the block; on leaving, the yielded
    list holds one :class:`ActivityReport` (per sample and forward pass: a DDIM-10 action chunk is 10 passes)."""
    layers = {name: module for name, module in network.named_modules() if isinstance(module, MultiStepLIF)}
    result: list[ActivityReport] = []
    for module in layers.values():
        module.reset_activity()
        module.recording = True
    try:
        yield result
    finally:
        for module in layers.values():
            module.recording = False
    report = []
    for name, module in layers.items():
        if module.spike_counts is None:
            continue
        samples = max(module.samples, 1)
        counts = module.spike_counts
        fan_out = torch.as_tensor(module.fan_out, dtype=counts.dtype)
        report.append(LayerActivity(
            name=name,
            neurons=counts.numel(),
            time_steps=module.neuron_steps // (samples * counts.numel()),
            spikes_per_pass=float(counts.sum()) / samples,
            firing_rate=float(counts.sum()) / max(module.neuron_steps, 1),
            sops_per_pass=float((counts * fan_out).sum()) / samples,
        ))
    result.append(ActivityReport(report))
