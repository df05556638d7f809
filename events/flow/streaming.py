"""Streaming flow: a trained :class:`~events.flow.models.FlowNet` stepped on one 10 ms bin after another of a live
stream, its answer downsampled to a coarse grid. Pure functions of a small immutable state; no HTTP.

Input size. The network is fully convolutional, but a step costs about 5 ms at 128x96 and 50 ms at 640x480 on
one CPU core (the 8-16-32 spiking network), and it was trained on 128x128 simulated sensors, so flows of a few
pixels per bin. A larger sensor is therefore downsampled by the smallest whole factor ``factor`` that brings its
long side to at most ``max_side`` (128) pixels: an event at (x, y) counts at (x // factor, y // factor), as
tonic's ``Downsample`` does, so a coarse pixel holds its block's events (counts are summed, not averaged). The
count image is :func:`events.representations.to_count_images` of those events, the function the training set was
binned with, padded to the network's multiple (:func:`~events.flow.models.pad_to_multiple`). The flow, in coarse
pixels per bin, is multiplied by ``factor``: the answer is in sensor pixels per 10 ms. Summed blocks are denser
than the simulated 128x128 sensors the networks were trained on (a real sensor's noise adds up too); how much that
costs in accuracy on real recordings is not measured yet.

Answer. The mean flow (u right, v down) over cells of ``cell`` coarse pixels (``cell_px = cell * factor`` sensor
pixels, at most ``side`` = 16 cells a side, as the stream's ``stats``), padding left out, rounded to 0.001 pixel.

Bins without events. The stream skips them; the network was trained on every 10 ms step, so the bins skipped
between two with events are stepped with zero counts, at most ``max_gap_bins`` (20) of them. A longer pause is cut
to that: the trained spiking networks' membranes keep about half of their distance to where zero input drives them
per bin (learned leaks 0.45-0.52 in runs/flow/spiking_bn_1800, 0.46-0.64 in spiking_c31_tanh5_coarse_3600), so
after 20 empty bins less than 1e-5 of what came before the pause is left, and stepping on would only cost time
(5 ms a bin). An LSTM's forget gates are learned without such a bound; the cut is the same. The first bin of a
stream starts from the zero state, as training and evaluation do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from events.flow.models import FlowNet, pad_to_multiple
from events.representations import to_count_images

BIN_US = 10_000
MAX_SIDE = 128
MAX_GAP_BINS = 20


@dataclass(frozen=True)
class FlowGrid:
    """How a ``width`` x ``height`` sensor maps to the network's input (``factor``) and to the answer's grid."""

    width: int
    height: int
    factor: int
    cell: int

    @classmethod
    def for_sensor(cls, width: int, height: int, max_side: int = MAX_SIDE, side: int = 16) -> FlowGrid:
        factor = -(-max(width, height) // max_side)
        input_long = -(-max(width, height) // factor)
        return cls(width, height, factor, -(-input_long // side))

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the count image before padding."""
        return -(-self.height // self.factor), -(-self.width // self.factor)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the answer's grid."""
        height, width = self.input_size
        return -(-height // self.cell), -(-width // self.cell)

    @property
    def cell_px(self) -> int:
        return self.cell * self.factor


@dataclass(frozen=True)
class FlowState:
    """A stream's memory: the network's state after bin ``last_bin`` (None before the first bin)."""

    network: list | None = None
    last_bin: int | None = None


def count_image(grid: FlowGrid, events: np.ndarray, bin_index: int) -> np.ndarray:
    """The (2, H, W) OFF/ON count image of bin ``bin_index`` at the network's input size (unpadded)."""
    coarse = events.copy()
    coarse["x"] //= grid.factor
    coarse["y"] //= grid.factor
    height, width = grid.input_size
    return to_count_images(coarse, height, width, BIN_US, t_start=bin_index * BIN_US, num_bins=1)[0]


def coarse_flow(grid: FlowGrid, flow: np.ndarray) -> np.ndarray:
    """Flow (2, H, W) in input pixels per bin -> mean flow (2, rows, cols) in sensor pixels per bin."""
    rows, cols = grid.shape
    height, width = flow.shape[-2:]
    padded = np.zeros((2, rows * grid.cell, cols * grid.cell), np.float64)
    padded[:, :height, :width] = flow
    inside = np.zeros((rows * grid.cell, cols * grid.cell))
    inside[:height, :width] = 1
    sums = padded.reshape(2, rows, grid.cell, cols, grid.cell).sum(axis=(2, 4))
    pixels = inside.reshape(rows, grid.cell, cols, grid.cell).sum(axis=(1, 3))
    return np.round(sums / pixels * grid.factor, 3)


@torch.inference_mode()
def step_network(network: FlowNet, state: list | None, counts: np.ndarray) -> tuple[np.ndarray, list]:
    """One bin: flow (2, H, W) in input pixels per bin for counts (2, H, W), and the next state."""
    height, width = counts.shape[-2:]
    frame = pad_to_multiple(torch.from_numpy(np.ascontiguousarray(counts))[None], network.config.multiple)
    flow, state = network.step(frame, state)
    return flow[0, :, :height, :width].numpy(), state


def flow_step(network: FlowNet, grid: FlowGrid, state: FlowState, events: np.ndarray, bin_index: int,
              max_gap_bins: int = MAX_GAP_BINS) -> tuple[np.ndarray, FlowState, int]:
    """The coarse flow (2, rows, cols) of bin ``bin_index`` (its ``events``, after the stream's earlier bins), the
    state after it, and how many empty bins were stepped before it (at most ``max_gap_bins``)."""
    if state.last_bin is not None and bin_index <= state.last_bin:
        raise ValueError(f"bin {bin_index} does not follow bin {state.last_bin}")
    memory = state.network
    empty = 0 if state.last_bin is None else min(bin_index - state.last_bin - 1, max_gap_bins)
    if empty:
        zeros = np.zeros((2, *grid.input_size), np.float32)
        for _ in range(empty):
            _, memory = step_network(network, memory, zeros)
    flow, memory = step_network(network, memory, count_image(grid, events, bin_index))
    return coarse_flow(grid, flow), FlowState(memory, bin_index), empty
