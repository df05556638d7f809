"""Simulated flow sequences: events, per-bin OFF/ON count images and ground-truth flow, saved as one checked set.

A sequence is :func:`events.simulator.simulate_clip` of one generation seed, cut into the simulator's flow
intervals (10 ms by default): bin k holds the events of ``[k * interval, (k + 1) * interval)`` as a (2, H, W) count
image and the ground-truth flow of that interval (pixels per bin, (dx, dy)). Flow is only observable where
something moved an edge past a pixel, so the evaluation mask (:attr:`FlowSequence.event_mask`) keeps the pixels
that are valid and had at least one event in the bin, as EV-FlowNet and its successors evaluate.

Training and test sets are told apart by their generation seeds: a set records its seeds, and evaluation refuses a
model trained on any of them (:func:`events.flow.training.check_held_out`).

A set on disk is a folder with ``sequences.json`` (format, clip configuration, seeds, photograph per seed,
checksum of the arrays) and ``sequences.npz`` (counts as uint16, flow, valid masks, and every sequence's events
with offsets, kept for the contrast-maximisation baseline, which works on events, not counts).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from events.io import EVENT_DTYPE, concatenate_events
from events.representations import to_count_images
from events.simulator import ClipConfig, simulate_clip
from spikebot.artefacts import file_sha256, read_checked_manifest
from vpr.errors import SpikebotError

SET_FORMAT = "spikebot-flow-sequences/1"


class FlowDataError(SpikebotError):
    """A sequence set is missing, corrupt, of another format, or asked for in an impossible shape."""


@dataclass(frozen=True)
class FlowSequence:
    """One simulated sequence: ``events`` (canonical array), ``counts`` (K, 2, H, W) float32 OFF/ON per bin,
    ``flow`` (K, 2, H, W) float32 pixels per bin, ``valid`` (K, H, W) where the flow is defined."""

    seed: int
    events: np.ndarray
    counts: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    interval_us: int
    source: str = "procedural"

    @property
    def event_mask(self) -> np.ndarray:
        """(K, H, W): valid pixels with at least one event in the bin, where errors are measured."""
        return self.valid & (self.counts.sum(axis=1) > 0)

    def bin_events(self, k: int) -> np.ndarray:
        """The events of bin ``k`` (a view)."""
        first, last = np.searchsorted(self.events["t"], [k * self.interval_us, (k + 1) * self.interval_us])
        return self.events[first:last]


def simulate_sequence(clip: ClipConfig, photo: np.ndarray | None = None, source: str = "procedural") -> FlowSequence:
    """Simulate one clip (seed ``clip.seed``) and bin its events at the ground truth's interval."""
    simulated = simulate_clip(clip, photo, source_name=source)
    bins = len(simulated.flow)
    counts = to_count_images(simulated.events, clip.height, clip.width, clip.flow_interval_us, t_start=0,
                             num_bins=bins)
    return FlowSequence(clip.seed, simulated.events, counts, simulated.flow, simulated.valid, clip.flow_interval_us,
                        simulated.source)


@dataclass(frozen=True)
class SequenceSet:
    """Sequences simulated with one clip configuration (its ``seed`` replaced by each sequence's seed)."""

    clip: ClipConfig
    sequences: tuple[FlowSequence, ...]

    @property
    def seeds(self) -> list[int]:
        return [sequence.seed for sequence in self.sequences]


def save_set(sequence_set: SequenceSet, directory: str | Path) -> Path:
    """Write ``sequences.npz`` and ``sequences.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sequences = sequence_set.sequences
    if not sequences:
        raise FlowDataError("a sequence set needs at least one sequence")
    counts = np.stack([s.counts for s in sequences])
    if counts.max(initial=0) > np.iinfo(np.uint16).max:
        raise FlowDataError("a pixel holds more events in one bin than uint16 can count")
    offsets = np.cumsum([0] + [len(s.events) for s in sequences])
    payload = directory / "sequences.npz"
    partial = directory / "sequences.partial.npz"
    np.savez_compressed(partial, counts=counts.astype(np.uint16), flow=np.stack([s.flow for s in sequences]),
                        valid=np.stack([s.valid for s in sequences]),
                        events=concatenate_events([s.events for s in sequences]).view(np.uint8),
                        event_offsets=offsets)
    partial.replace(payload)
    manifest = {
        "format": SET_FORMAT,
        "clip": dataclasses.asdict(sequence_set.clip),
        "seeds": sequence_set.seeds,
        "sources": [s.source for s in sequences],
        "bins_per_sequence": int(counts.shape[1]),
        "events": int(offsets[-1]),
        "sequences_sha256": file_sha256(payload),
    }
    (directory / "sequences.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def load_set(directory: str | Path) -> SequenceSet:
    """A set written by :func:`save_set`; refuses missing, corrupt or foreign folders."""
    manifest = read_checked_manifest(directory, "sequences.json", "sequences.npz", SET_FORMAT, "flow sequence set",
                                     FlowDataError)
    try:
        clip = ClipConfig.from_dict(manifest["clip"])
        with np.load(Path(directory) / "sequences.npz") as arrays:
            counts, flow, valid = arrays["counts"], arrays["flow"], arrays["valid"]
            events = arrays["events"].view(EVENT_DTYPE)
            offsets = arrays["event_offsets"]
        seeds, sources = manifest["seeds"], manifest["sources"]
        if not len(seeds) == len(sources) == len(counts) == len(flow) == len(valid) == len(offsets) - 1:
            raise ValueError("the manifest's seeds and the arrays disagree in length")
    except (KeyError, ValueError, TypeError) as error:
        raise FlowDataError(f"flow sequence set {directory} is inconsistent with its manifest: {error}") from error
    sequences = tuple(
        FlowSequence(int(seed), events[offsets[i]:offsets[i + 1]], counts[i].astype(np.float32), flow[i], valid[i],
                     clip.flow_interval_us, source)
        for i, (seed, source) in enumerate(zip(seeds, sources))
    )
    return SequenceSet(clip, sequences)


def sample_batch(sequences: tuple[FlowSequence, ...], batch: int, bins: int, crop: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A training batch: ``batch`` windows of ``bins`` consecutive bins, each cropped to ``crop`` x ``crop`` at a
    random place and randomly mirrored (left-right, up-down: the flow's sign follows), so that a few sequences
    give many distinct motions. Returns counts (T, B, 2, c, c), flow (T, B, 2, c, c), valid (T, B, c, c)."""
    total_bins, _, height, width = sequences[0].counts.shape
    if bins > total_bins or crop > min(height, width):
        raise FlowDataError(f"cannot cut {bins} bins of {crop}x{crop} from sequences of {total_bins} bins of "
                            f"{height}x{width}")
    counts = np.empty((bins, batch, 2, crop, crop), np.float32)
    flow = np.empty((bins, batch, 2, crop, crop), np.float32)
    valid = np.empty((bins, batch, crop, crop), bool)
    for b in range(batch):
        sequence = sequences[rng.integers(len(sequences))]
        k, y, x = rng.integers(total_bins - bins + 1), rng.integers(height - crop + 1), rng.integers(width - crop + 1)
        window = np.s_[k:k + bins, ..., y:y + crop, x:x + crop]
        c, f, v = sequence.counts[window], sequence.flow[window].copy(), sequence.valid[window]
        if rng.random() < 0.5:  # mirror left-right: x flips and so does dx
            c, f, v = c[..., ::-1], f[..., ::-1], v[..., ::-1]
            f[:, 0] *= -1
        if rng.random() < 0.5:  # mirror up-down
            c, f, v = c[..., ::-1, :], f[..., ::-1, :], v[..., ::-1, :]
            f[:, 1] *= -1
        counts[:, b], flow[:, b], valid[:, b] = c, f, v
    return counts, flow, valid
