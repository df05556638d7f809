"""Training a :class:`~events.flow.models.FlowNet` on simulated sequences, saving it, and scoring flow estimators.

Training is the paper's supervised recipe, slimmed for a CPU: windows of ``bins`` consecutive 10 ms bins cropped
to ``crop`` x ``crop`` (:func:`events.flow.dataset.sample_batch`), the network stepped through them from a zero
state (backpropagation through time) or, with ``warmup_bins``, from the state that many earlier bins left, run
without gradients (the flow paper's released training does this: the trained bins then start from a network that
has seen motion, as every bin after the first does at inference), and the mean squared error against the
ground-truth flow of every bin over the pixels where it is defined (dense supervision: the simulator knows the
flow everywhere, events or not), averaged over the predicted scales when the network has coarse flow heads (the
loss curve saved is the output's). Adam with a cosine decay of the learning rate, gradients clipped by norm
(recurrent nets and LIF surrogates occasionally spike). Every random draw comes from ``seed``.

A model is a folder with ``flow_model.json`` (format, versions, network configuration, training configuration,
the training set's seeds, a history with the loss curve and, from the CLI, the set's folder and checksum) and
``weights.pt``; :meth:`FlowModel.load` refuses a folder
whose files are missing, corrupt, of another format or inconsistent with each other.

Scoring (:func:`evaluate`) runs each estimator over whole held-out sequences, bin by bin in time order (the
recurrent ones from a zero state at the first bin), and pools AEE and outliers over the event mask
(:attr:`events.flow.dataset.FlowSequence.event_mask`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from events.flow.contrast_max import ContrastMaxConfig, contrast_max_flow
from events.flow.dataset import FlowSequence, SequenceSet, sample_batch
from events.flow.metrics import FlowErrors
from events.flow.models import FlowNet, FlowNetConfig, pad_to_multiple, parameter_count
from spikebot.artefacts import file_sha256, read_checked_manifest
from spikebot.devices import check_device_name, resolve_device
from spikebot.progress import progress
from spikebot.provenance import __version__, git_commit
from vpr.errors import SpikebotError

MODEL_FORMAT = "spikebot-flow-model/1"


class FlowModelError(SpikebotError):
    """A flow model cannot be trained, saved or loaded, or would be scored on its own training sequences."""


@dataclass(frozen=True)
class FlowTrainConfig:
    """Everything a training run depends on; saved with the model. ``torch_threads`` None keeps torch's default;
    ``device`` is where training runs (:mod:`spikebot.devices`; the one used is saved in the history)."""

    network: FlowNetConfig = field(default_factory=FlowNetConfig)
    steps: int = 500
    batch: int = 8
    bins: int = 8
    crop: int = 64
    learning_rate: float = 2e-3
    grad_clip: float = 1.0
    seed: int = 0
    torch_threads: int | None = 1
    device: str = "auto"
    warmup_bins: int = 0

    def __post_init__(self) -> None:
        if problem := check_device_name(self.device):
            raise FlowModelError(problem)
        if min(self.steps, self.batch, self.bins) < 1 or self.learning_rate <= 0 or self.grad_clip <= 0:
            raise FlowModelError("steps, batch and bins must be >= 1, learning_rate and grad_clip positive")
        if self.warmup_bins < 0:
            raise FlowModelError(f"warmup_bins must be >= 0, got {self.warmup_bins}")
        if self.crop < 1 or self.crop % self.network.multiple:
            raise FlowModelError(f"crop must be a positive multiple of {self.network.multiple} (one halving per "
                                 f"level), got {self.crop}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise FlowModelError(f"torch_threads must be positive, got {self.torch_threads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"network": self.network.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlowTrainConfig:
        values = dict(values)
        values["network"] = FlowNetConfig.from_dict(values["network"])
        return cls(**values)


@dataclass
class FlowModel:
    """A trained network with how it was trained: the configuration, the training seeds and the loss curve."""

    network: FlowNet
    train_config: FlowTrainConfig
    train_seeds: list[int]
    history: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / "weights.pt"
        partial = weights.with_suffix(".partial")
        torch.save({name: value.detach().cpu() for name, value in self.network.state_dict().items()}, partial)
        partial.replace(weights)
        manifest = {
            "format": MODEL_FORMAT,
            "versions": {"spikebot": __version__, "torch": torch.__version__, "norse": metadata.version("norse")},
            "git_commit": git_commit(),
            "network": self.network.config.to_dict(),
            "parameters": parameter_count(self.network),
            "train": self.train_config.to_dict(),
            "train_seeds": self.train_seeds,
            "history": self.history,
            "weights_sha256": file_sha256(weights),
        }
        (directory / "flow_model.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FlowModel:
        manifest = read_checked_manifest(directory, "flow_model.json", "weights.pt", MODEL_FORMAT, "flow model",
                                         FlowModelError)
        try:
            network = FlowNet(FlowNetConfig.from_dict(manifest["network"]))
            network.load_state_dict(torch.load(Path(directory) / "weights.pt", map_location="cpu", weights_only=True))
            train_config = FlowTrainConfig.from_dict(manifest["train"])
            model = cls(network.eval(), train_config, [int(s) for s in manifest["train_seeds"]],
                        manifest.get("history", {}))
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise FlowModelError(f"flow model {directory} is inconsistent with its manifest: {error}") from error
        return model


def masked_mse(estimate: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the flow components (..., 2, H, W) over the pixels where ``valid`` (..., H, W)."""
    squared = (estimate - truth).square().sum(dim=-3)
    return (squared * valid).sum() / (2 * valid.sum().clamp(min=1))


def train(config: FlowTrainConfig, train_set: SequenceSet,
          on_step: Callable[[int, float], None] | None = None) -> FlowModel:
    """Train a fresh network on ``train_set``; ``on_step(step, loss)`` is called after every step."""
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    device = resolve_device(config.device, FlowModelError)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network = FlowNet(config.network).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps)))
    losses = []
    started = time.perf_counter()
    network.train()
    for step in progress(range(config.steps), desc=f"flow {config.network.kind}"):
        counts, flow, valid = (torch.from_numpy(a).to(device) for a in sample_batch(
            train_set.sequences, config.batch, config.warmup_bins + config.bins, config.crop, rng))
        state = None
        if config.warmup_bins:
            with torch.no_grad():
                _, state = network.forward_scales(counts[:config.warmup_bins])
        trained = slice(config.warmup_bins, None)
        scales, _ = network.forward_scales(counts[trained], state)
        scale_losses = [masked_mse(estimate, flow[trained], valid[trained]) for estimate in scales]
        loss = torch.stack(scale_losses).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
        optimiser.step()
        schedule.step()
        losses.append(scale_losses[-1].item())
        if on_step is not None:
            on_step(step, losses[-1])
    history = {"loss": losses, "train_seconds": time.perf_counter() - started, "device": str(device)}
    return FlowModel(network.cpu().eval(), config, train_set.seeds, history)


def check_held_out(model: FlowModel, test_set: SequenceSet) -> None:
    """Refuse to score a model on sequences generated with seeds it was trained on."""
    shared = sorted(set(model.train_seeds) & set(test_set.seeds))
    if shared:
        raise FlowModelError(f"the test set shares {len(shared)} generation seeds with the model's training set "
                             f"(first: {shared[:5]}): simulate the test set from other seeds")


@torch.no_grad()
def predict_sequence(network: FlowNet, counts: np.ndarray) -> np.ndarray:
    """Flow (K, 2, H, W) for counts (K, 2, H, W), one bin at a time from a zero state (frames padded as needed)."""
    height, width = counts.shape[-2:]
    state = None
    flows = np.empty((len(counts), 2, height, width), np.float32)
    for k, bin_counts in enumerate(counts):
        frame = pad_to_multiple(torch.from_numpy(np.ascontiguousarray(bin_counts))[None], network.config.multiple)
        flow, state = network.step(frame, state)
        flows[k] = flow[0, :, :height, :width].numpy()
    return flows


Estimator = Callable[[FlowSequence], np.ndarray]
"""A flow estimator for evaluation: a whole sequence in, flow (K, 2, H, W) out."""


def zero_flow(sequence: FlowSequence) -> np.ndarray:
    return np.zeros_like(sequence.flow)


def contrast_max_estimator(config: ContrastMaxConfig = ContrastMaxConfig()) -> Estimator:
    def estimate(sequence: FlowSequence) -> np.ndarray:
        height, width = sequence.counts.shape[-2:]
        return np.stack([contrast_max_flow(sequence.events, k * sequence.interval_us, sequence.interval_us, height,
                                           width, config) for k in range(len(sequence.counts))])
    return estimate


def network_estimator(network: FlowNet) -> Estimator:
    return lambda sequence: predict_sequence(network, sequence.counts)


def evaluate(estimators: dict[str, Estimator], test_set: SequenceSet, outlier_px: float = 3.0
             ) -> dict[str, dict[str, float | int]]:
    """AEE, outlier percentage and pooled pixel count per estimator, plus the seconds it took per bin."""
    results = {}
    for name, estimate in estimators.items():
        errors = FlowErrors(outlier_px)
        started = time.perf_counter()
        bins = 0
        for sequence in progress(test_set.sequences, desc=name):
            errors.add(estimate(sequence), sequence.flow, sequence.event_mask)
            bins += len(sequence.counts)
        results[name] = errors.summary() | {"seconds_per_bin": (time.perf_counter() - started) / max(bins, 1)}
    return results
