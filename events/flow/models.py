"""Slim EV-FlowNet-style encoder-decoders that estimate optical flow one 10 ms event bin at a time.

Both variants share one layout and differ only in what carries memory from one bin to the next:

- ``lstm``: every encoder level is a ConvLSTM cell (the input is strided by the input-to-gates convolution); the
  bottleneck residual blocks and the decoder are stateless convolutions with ReLU.
- ``spiking``: every layer is a convolution and batch normalisation followed by LIF neurons (norse's current-free "box" LIF,
  :func:`norse.torch.functional.lif_box.lif_box_feed_forward_step`) whose leak and threshold are learned per
  channel; the membrane potentials are the only memory (with ``recurrent_encoders``, also the encoders' spikes of
  the previous bin). The leak is stored as a logit so that the fraction of
  the way to its input a membrane moves per bin stays in (0, 1) whatever the optimiser does. The flow is read
  from non-spiking leaky integrators with a learned leak (norse's
  :func:`~norse.torch.functional.leaky_integrator_box.li_box_feed_forward_step`) driven by the head: a linear map
  of 72 binary inputs takes few distinct values, and integrating it over bins smooths that quantisation (the
  usual readout of spiking regressors).

Layout for ``channels = (c0, c1, c2)`` on a (2, H, W) OFF/ON count image (EV-FlowNet's, slimmed down so that a
step costs milliseconds on a CPU): encoder levels at H/2, H/4, H/8 with c0, c1, c2 channels (3x3, stride 2);
``residual_blocks`` blocks of two 3x3 convolutions at H/8; a decoder that upsamples (nearest) by two, concatenates
the encoder output of that scale (skip connection) and convolves, back to H/2; a linear 3x3 head gives the flow at
H/2 (through the leaky readout in the spiking variant), upsampled bilinearly to H. With ``coarse_flows`` (EV-FlowNet's
and the flow paper's multi-scale prediction) a 1x1 head also reads the input of every decoder level, its flow is
upsampled into that level's input, and training supervises every scale: the deep layers get an error signal of
their own instead of only what reaches them through the spiking decoder. A flow head is linear in the spikes it
reads (integrated by a leaky readout in the spiking variant), so a decoder fed a coarse flow still computes a
linear map of spikes into its neurons. The flow is in pixels per bin,
(dx, dy). H and W must be multiples of 2 ** len(channels); :func:`pad_to_multiple` pads a frame.

:meth:`FlowNet.step` is the streaming interface (one bin, state in and out); :meth:`FlowNet.forward` runs a
(T, B, 2, H, W) sequence for training by backpropagation through time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

import spikebot.norse_quiet  # noqa: F401  (before norse: silences its import-time deprecation warning)
from norse.torch.functional.leaky_integrator_box import LIBoxParameters, LIBoxState, li_box_feed_forward_step
from norse.torch.functional.lif_box import LIFBoxFeedForwardState, LIFBoxParameters, lif_box_feed_forward_step
from norse.torch.functional.reset import reset_subtract, reset_value
from torch import nn

from spikebot.spiking import SURROGATES

KINDS = ("lstm", "spiking")
RESETS = {"zero": reset_value, "subtract": reset_subtract}


def _detached(reset: Callable) -> Callable:
    """``reset`` with the spike's gradient cut out of it (Zenke and Vogels 2021: the reset then only shapes the
    forward pass, and the surrogate gradient is not fed back through every spike)."""
    def reset_detached(z: torch.Tensor, v: torch.Tensor, v_reset: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
        return reset(z.detach(), v, v_reset, v_th)
    return reset_detached


LEGACY_SETTINGS: dict[str, Any] = {"coarse_flows": False, "leak_spread": 0.0, "reset": "zero", "detach_reset": False,
                                   "surrogate": "super", "surrogate_alpha": 1.0, "recurrent_encoders": False}
"""What the networks saved before each of these settings existed were built and trained with."""

_DT = 1e-3  # norse's integration step; only dt * tau_mem_inv (the leak per bin) matters


@dataclass(frozen=True)
class FlowNetConfig:
    """Sizes of a :class:`FlowNet`. ``init_leak`` is the fraction of the way to its input a spiking membrane moves
    per bin before training (0.5: a time constant of two bins), ``init_threshold`` its firing threshold before
    training, against normalised input currents (0.5: 5-20% of the neurons fire per bin). ``coarse_flows`` adds
    the multi-scale flow heads of the module docstring. ``leak_spread`` spreads the initial leaks of a layer's
    channels evenly over logit(init_leak) +- leak_spread (2: from 0.12 to 0.88 per bin), so that channels start
    with different time constants (tried for telling the direction of motion from inputs of different ages; it
    trained worse). ``reset`` is what a spike does to its membrane: ``zero`` sets it to zero, ``subtract`` takes
    the threshold off and keeps the rest; ``detach_reset`` keeps the reset out of the gradient (Zenke and Vogels
    2021). ``surrogate`` and ``surrogate_alpha`` choose norse's surrogate gradient of a spike
    (:class:`spikebot.spiking.NeuronConfig` lists them). The defaults are the recipe chosen on a validation set
    (docs/benchmarks.md, issue 7): norse's ``super``, which the first networks used, ignores alpha, and its
    gradient, 1 / (|v - v_th| + 1)^2, reaches far from the threshold; through seven layers and six bins that
    trained slowly, and ``tanh`` with alpha 5 learnt several times faster. Manifests written before a setting
    existed are read with :data:`LEGACY_SETTINGS`, the values those networks were built with.
    ``recurrent_encoders`` makes the encoder levels :class:`RecurrentConvLIF` layers."""

    kind: str = "spiking"
    channels: tuple[int, ...] = (8, 16, 32)
    residual_blocks: int = 1
    init_leak: float = 0.5
    leak_spread: float = 0.0
    init_threshold: float = 0.5
    coarse_flows: bool = True
    reset: str = "zero"
    detach_reset: bool = True
    surrogate: str = "tanh"
    surrogate_alpha: float = 5.0
    recurrent_encoders: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown flow network kind {self.kind!r}: expected one of {KINDS}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"channels needs at least two positive sizes, got {self.channels}")
        if self.residual_blocks < 0:
            raise ValueError(f"residual_blocks must be >= 0, got {self.residual_blocks}")
        if not 0.0 < self.init_leak < 1.0 or self.init_threshold <= 0:
            raise ValueError("init_leak must be in (0, 1) and init_threshold positive")
        if self.leak_spread < 0:
            raise ValueError(f"leak_spread must be >= 0, got {self.leak_spread}")
        if self.reset not in RESETS:
            raise ValueError(f"unknown reset {self.reset!r}: expected one of {tuple(RESETS)}")
        if self.surrogate not in SURROGATES or self.surrogate_alpha <= 0:
            raise ValueError(f"surrogate must be one of {SURROGATES} with a positive alpha, got {self.surrogate!r} "
                             f"and {self.surrogate_alpha}")

    @property
    def multiple(self) -> int:
        """Frame sides must be multiples of this (one halving per encoder level)."""
        return 2 ** len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlowNetConfig:
        return cls(**(LEGACY_SETTINGS | values))


class ConvLSTMCell(nn.Module):
    """A ConvLSTM cell (Shi et al. 2015): gates = conv(x) + conv(h); ``stride`` applies to the input."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.channels = channels
        self.input_gates = nn.Conv2d(in_channels, 4 * channels, 3, stride, 1)
        self.hidden_gates = nn.Conv2d(channels, 4 * channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        gates = self.input_gates(x)
        if state is None:
            hidden = cell = torch.zeros_like(gates[:, : self.channels])
        else:
            hidden, cell = state
            gates = gates + self.hidden_gates(hidden)
        i, f, o, g = gates.chunk(4, dim=1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        return hidden, (hidden, cell)


class ConvReLU(nn.Module):
    """A stateless 3x3 convolution and ReLU (the LSTM variant's non-recurrent layers); the state passes as None."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, stride, 1)

    def forward(self, x: torch.Tensor, state: None):
        return torch.relu(self.conv(x)), None


class ConvLIF(nn.Module):
    """A 3x3 convolution and batch normalisation driving LIF neurons with a learned leak and threshold per channel
    (norse's box LIF). The normalisation keeps every layer's input current at a scale its threshold can be set
    against: without it, training silenced layer after layer (firing rates from 10-30% to under 1%) and the
    network fell back on predicting zero flow. At inference it is a fixed affine map per channel."""

    def __init__(self, in_channels: int, channels: int, stride: int, config: FlowNetConfig):
        super().__init__()
        leak, threshold = config.init_leak, config.init_threshold
        self.reset = _detached(RESETS[config.reset]) if config.detach_reset else RESETS[config.reset]
        self.surrogate, self.surrogate_alpha = config.surrogate, config.surrogate_alpha
        self.conv = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        spread = torch.linspace(-config.leak_spread, config.leak_spread, channels).reshape(channels, 1, 1)
        self.leak_logit = nn.Parameter(torch.logit(torch.tensor(leak)) + spread)
        self.threshold = nn.Parameter(torch.full((channels, 1, 1), float(threshold)))

    def parameters_lif(self) -> LIFBoxParameters:
        """norse's parameters from the learned ones: the leak per bin as ``dt * tau_mem_inv``, the threshold kept
        above a small floor so that a neuron cannot come to fire on any input."""
        return LIFBoxParameters(tau_mem_inv=torch.sigmoid(self.leak_logit) / _DT, v_leak=torch.tensor(0.0),
                                v_th=self.threshold.clamp(min=0.01), v_reset=torch.tensor(0.0), method=self.surrogate,
                                alpha=torch.tensor(self.surrogate_alpha), reset_method=self.reset)

    def forward(self, x: torch.Tensor, state: LIFBoxFeedForwardState | None):
        current = self.norm(self.conv(x))
        if state is None:
            state = LIFBoxFeedForwardState(v=torch.zeros_like(current))
        return lif_box_feed_forward_step(current, state, self.parameters_lif(), dt=_DT)


class RecurrentConvLIF(ConvLIF):
    """A :class:`ConvLIF` whose current also gets a 3x3 convolution of its own spikes of the previous bin: memory
    that spreads sideways, as the ConvLSTM's hidden-to-hidden convolution does (a membrane alone remembers only
    its own pixel). The state is the membrane and those spikes."""

    def __init__(self, in_channels: int, channels: int, stride: int, config: FlowNetConfig):
        super().__init__(in_channels, channels, stride, config)
        self.recurrent = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor, state: tuple[LIFBoxFeedForwardState, torch.Tensor] | None):
        current = self.norm(self.conv(x))
        if state is None:
            membrane = LIFBoxFeedForwardState(v=torch.zeros_like(current))
        else:
            membrane, spikes = state
            current = current + self.recurrent(spikes)
        spikes, membrane = lif_box_feed_forward_step(current, membrane, self.parameters_lif(), dt=_DT)
        return spikes, (membrane, spikes)


class LeakyReadout(nn.Module):
    """Non-spiking leaky integrators, one per channel, with a learned leak (norse's box leaky integrator)."""

    def __init__(self, channels: int, leak: float = 0.5):
        super().__init__()
        self.leak_logit = nn.Parameter(torch.full((channels, 1, 1), float(torch.logit(torch.tensor(leak)))))

    def forward(self, x: torch.Tensor, state: LIBoxState | None):
        if state is None:
            state = LIBoxState(v=torch.zeros_like(x))
        parameters = LIBoxParameters(tau_mem_inv=torch.sigmoid(self.leak_logit) / _DT, v_leak=torch.tensor(0.0))
        return li_box_feed_forward_step(x, state, parameters, dt=_DT)


class FlowNet(nn.Module):
    """The encoder-decoder of the module docstring; state is a list with one entry per stateful layer."""

    def __init__(self, config: FlowNetConfig):
        super().__init__()
        self.config = config
        channels = config.channels
        if config.kind == "lstm":
            def encoder(cin, cout): return ConvLSTMCell(cin, cout, stride=2)
            def layer(cin, cout): return ConvReLU(cin, cout)
        else:
            encoder_class = RecurrentConvLIF if config.recurrent_encoders else ConvLIF
            def encoder(cin, cout): return encoder_class(cin, cout, 2, config)
            def layer(cin, cout): return ConvLIF(cin, cout, 1, config)
        self.encoders = nn.ModuleList(encoder(cin, cout) for cin, cout in zip((2,) + channels[:-1], channels))
        deepest = channels[-1]
        self.residual = nn.ModuleList(nn.ModuleList([layer(deepest, deepest), layer(deepest, deepest)])
                                      for _ in range(config.residual_blocks))
        extra = 2 if config.coarse_flows else 0
        self.decoders = nn.ModuleList(layer(channels[i + 1] + channels[i] + extra, channels[i])
                                      for i in reversed(range(len(channels) - 1)))
        self.head = nn.Conv2d(channels[0], 2, 3, 1, 1)
        spiking = config.kind == "spiking"
        self.readout = LeakyReadout(2, config.init_leak) if spiking else None
        coarse = [channels[i + 1] for i in reversed(range(len(channels) - 1))] if config.coarse_flows else []
        self.coarse_heads = nn.ModuleList(nn.Conv2d(c, 2, 1) for c in coarse)
        self.coarse_readouts = nn.ModuleList(LeakyReadout(2, config.init_leak) for _ in coarse) if spiking else None

    def step(self, counts: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        """Flow (B, 2, H, W) for one bin of OFF/ON counts (B, 2, H, W), and the state for the next bin."""
        flows, state = self._predict(counts, state)
        return _upsample(flows[-1], counts), state

    def step_scales(self, counts: torch.Tensor, state: list | None = None) -> tuple[list[torch.Tensor], list]:
        """Every flow the network predicts for one bin, coarsest first, each upsampled to (B, 2, H, W) (only the
        last, the output, unless ``coarse_flows``), and the state for the next bin."""
        flows, state = self._predict(counts, state)
        return [_upsample(flow, counts) for flow in flows], state

    def _predict(self, counts: torch.Tensor, state: list | None) -> tuple[list[torch.Tensor], list]:
        """The flows of :meth:`step_scales` at the resolutions they are predicted at."""
        if counts.dim() != 4 or counts.shape[1] != 2:
            raise ValueError(f"expected counts (B, 2, H, W), got {tuple(counts.shape)}")
        height, width = counts.shape[-2:]
        if height % self.config.multiple or width % self.config.multiple:
            raise ValueError(f"frame {height}x{width} is not a multiple of {self.config.multiple}: pad it "
                             "(events.flow.models.pad_to_multiple)")
        old = iter(state) if state is not None else None
        new: list = []

        def run(layer, x):
            y, s = layer(x, next(old) if old is not None else None)
            new.append(s)
            return y

        def predict(head, readout, x):
            flow = head(x)
            return run(readout, flow) if readout is not None else flow

        skips, x = [], counts
        for encoder in self.encoders:
            x = run(encoder, x)
            skips.append(x)
        for first, second in self.residual:
            x = x + run(second, run(first, x))
        flows = []
        for level, (decoder, skip) in enumerate(zip(self.decoders, reversed(skips[:-1]))):
            inputs = [F.interpolate(x, scale_factor=2.0, mode="nearest"), skip]
            if self.config.coarse_flows:
                readout = self.coarse_readouts[level] if self.coarse_readouts is not None else None
                flows.append(predict(self.coarse_heads[level], readout, x))
                inputs.append(F.interpolate(flows[-1], scale_factor=2.0, mode="bilinear", align_corners=False))
            x = run(decoder, torch.cat(inputs, dim=1))
        flows.append(predict(self.head, self.readout, x))
        return flows, new

    def forward(self, counts: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        """Flows (T, B, 2, H, W) for a sequence of bins (T, B, 2, H, W), stepping through time."""
        flows, state = self.forward_scales(counts, state)
        return flows[-1], state

    def forward_scales(self, counts: torch.Tensor, state: list | None = None) -> tuple[list[torch.Tensor], list]:
        """:meth:`step_scales` over a sequence: one (T, B, 2, H, W) tensor per predicted scale, coarsest first."""
        steps = []
        for bin_counts in counts:
            flows, state = self.step_scales(bin_counts, state)
            steps.append(flows)
        return [torch.stack(scale) for scale in zip(*steps)], state


def _upsample(flow: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``flow`` resized bilinearly to the frame of ``counts`` (flow values are already in the frame's pixels)."""
    return F.interpolate(flow, size=counts.shape[-2:], mode="bilinear", align_corners=False)


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def pad_to_multiple(frame: torch.Tensor, multiple: int) -> torch.Tensor:
    """``frame`` (..., H, W) padded with zeros at the bottom and right to sides that are multiples of ``multiple``
    (no events there: the network sees empty pixels)."""
    height, width = frame.shape[-2:]
    return F.pad(frame, (0, -width % multiple, 0, -height % multiple))
