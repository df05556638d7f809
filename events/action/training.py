"""Training and evaluating event-action classifiers, and the saved model that acts alone.

An :class:`ActionModel` joins a network, the point preprocessing it was trained with (:class:`PointConfig`),
the class names and the sensor size, so ``predict`` takes raw event windows. Saved, it is a folder with
``model.json`` (format ``spikebot-action-model/1``: kind and configuration of the network, the preprocessing,
the training configuration, the data set's configuration and checksum, parameters, training metrics, the
weights' checksum) and ``weights.pt``; :meth:`ActionModel.load` refuses folders whose files are missing,
corrupt, of another format or inconsistent with each other.

Training (:func:`train`): AdamW with a cosine learning rate over ``epochs`` epochs of the training windows;
each batch samples fresh points from its windows (new draws every epoch: the augmentation), and SpikePoint
draws fresh rate codes. Every random draw of epoch e comes from generators seeded by (seed, e), and the initial
weights from ``seed``: a run is reproducible on the CPU.

Evaluation (:func:`evaluate`) classifies every complete window of the held-out clips (fixed sampling and rate-
code seeds), reports window accuracy, clip accuracy (logits summed over a clip's windows), the confusion
matrix, per-window latency at batch size 1 (grouping included) and, for SpikePoint, its mean firing rate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from events.action.dataset import CLASSES, ActionSet
from events.action.models import (
    MODELS,
    ModelConfig,
    build_model,
    model_config,
    parameter_count,
)
from events.action.points import (
    PointConfig,
    Windows,
    clip_windows,
    group_points,
    sample_points,
)
from spikebot.spiking import record_activity
from spikebot.artefacts import file_sha256, read_checked_manifest
from spikebot.devices import check_device_name, resolve_device
from spikebot.progress import progress
from spikebot.provenance import __version__, git_commit
from vpr.errors import SpikebotError

MODEL_FORMAT = "spikebot-action-model/1"


class ActionModelError(SpikebotError):
    """An action model cannot be trained, saved or loaded: bad configuration, missing or corrupt files."""


@dataclass(frozen=True)
class ActionTrainConfig:
    """A training run: the model (``network`` overrides its default sizes), the preprocessing and optimisation.
    ``torch_threads`` None keeps torch's default; ``device`` is where training runs (:mod:`spikebot.devices`; the
    one used is saved in the metrics)."""

    model: str
    network: dict[str, Any] = field(default_factory=dict)
    points: PointConfig = field(default_factory=PointConfig)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    seed: int = 0
    torch_threads: int | None = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        if problem := check_device_name(self.device):
            raise ActionModelError(problem)
        if self.model not in MODELS:
            raise ActionModelError(f"unknown model {self.model!r}: expected one of {sorted(MODELS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.seed < 0:
            raise ActionModelError("epochs and batch_size must be positive, seed >= 0")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.label_smoothing < 1):
            raise ActionModelError("lr must be positive, weight_decay >= 0, label_smoothing in [0, 1)")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ActionModelError(f"torch_threads must be positive, got {self.torch_threads}")
        if "n_classes" in self.network:
            raise ActionModelError("n_classes comes from the data set, not from network")
        try:
            self.network_config()
        except (TypeError, ValueError) as error:
            raise ActionModelError(f"invalid network configuration: {error}") from None

    def network_config(self) -> ModelConfig:
        return model_config(self.model, {**self.network, "n_classes": len(CLASSES)})

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["points"] = self.points.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ActionTrainConfig:
        unknown = set(values) - {item.name for item in fields(cls)}
        if unknown:
            raise ActionModelError(f"unknown ActionTrainConfig fields: {sorted(unknown)}")
        values = dict(values)
        values["points"] = PointConfig.from_dict(values.get("points", {}))
        return cls(**values)


class ActionModel:
    """A network with its preprocessing: ``predict(events, windows)`` -> logits, from raw events."""

    def __init__(self, network: nn.Module, points: PointConfig, width: int, height: int,
                 classes: tuple[str, ...] = CLASSES) -> None:
        self.network = network
        self.points = points
        self.width, self.height = int(width), int(height)
        self.classes = tuple(classes)

    @property
    def kind(self) -> str:
        return self.network.config.kind

    def group(self, events: np.ndarray, windows: Windows, rng: np.random.Generator,
              device: torch.device | None = None) -> torch.Tensor:
        """Grouped points (B, S, K, FEATURES) of ``windows`` (points drawn from ``rng``), grouped on ``device``."""
        points = sample_points(events, windows, self.points, self.width, self.height, rng)
        return group_points(torch.from_numpy(points).to(device), self.points.n_centroids, self.points.k)

    @torch.inference_mode()
    def predict(self, events: np.ndarray, windows: Windows, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """Logits (len(windows), classes), in eval mode, points and rate codes drawn from ``seed``."""
        rng = np.random.default_rng([seed, 0])
        generator = torch.Generator().manual_seed(seed)
        self.network.eval()
        logits = [self.network(self.group(events, windows.take(np.arange(start, min(start + batch_size, len(windows)))),
                                          rng), generator)
                  for start in range(0, len(windows), batch_size)]
        return torch.cat(logits) if logits else torch.empty(0, len(self.classes))

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``weights.pt`` then ``model.json`` (with the weights' checksum) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / "weights.pt"
        partial = weights.with_suffix(".partial")
        torch.save({name: tensor.detach().cpu().clone() for name, tensor in self.network.state_dict().items()}, partial)
        partial.replace(weights)
        manifest = {
            "format": MODEL_FORMAT,
            "versions": _versions(),
            "git_commit": git_commit(),
            "network": {"kind": self.kind, "config": self.network.config.to_dict(),
                        "parameters": parameter_count(self.network)},
            "points": self.points.to_dict(),
            "sensor": {"width": self.width, "height": self.height},
            "classes": list(self.classes),
            "weights_sha256": file_sha256(weights),
            "metadata": metadata or {},
        }
        (directory / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> tuple[ActionModel, dict[str, Any]]:
        """The model saved in ``directory`` and its manifest."""
        directory = Path(directory)
        manifest = read_checked_manifest(directory, "model.json", "weights.pt", MODEL_FORMAT, "action model",
                                         ActionModelError)
        try:
            network = build_model(model_config(manifest["network"]["kind"], manifest["network"]["config"]))
            network.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
            model = cls(network, PointConfig.from_dict(manifest["points"]), manifest["sensor"]["width"],
                        manifest["sensor"]["height"], tuple(manifest["classes"]))
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise ActionModelError(f"action model {directory} is inconsistent with its manifest: {error}") from error
        return model, manifest


def split_windows(action_set: ActionSet, split: str, points: PointConfig) -> Windows:
    """The complete windows of the clips of ``split`` that hold at least ``points.min_events`` events."""
    duration_us = round(action_set.config.duration_ms * 1000)
    return clip_windows(action_set.events, action_set.offsets, action_set.subset(split), duration_us, points)


def learning_rate(config: ActionTrainConfig, step: int, total_steps: int) -> float:
    """Cosine decay from ``lr`` to 0 over the run, after a warm-up of 5% of it."""
    warmup = max(1, total_steps // 20)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


@dataclass
class TrainResult:
    model: ActionModel
    checkpoint: Path
    train_seconds: float
    metrics: dict[str, Any]


def train(action_set: ActionSet, config: ActionTrainConfig, out_dir: str | Path, dataset_sha256: str | None = None,
          log: Callable[[str], None] = lambda message: None, show_progress: bool | None = None) -> TrainResult:
    """Train ``config`` on the training split of ``action_set`` and save the model in ``out_dir``."""
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    windows = split_windows(action_set, "train", config.points)
    if len(windows) == 0:
        raise ActionModelError("the training split has no window with enough events")
    device = resolve_device(config.device, ActionModelError)
    with torch.random.fork_rng(devices=[]):  # the weights and dropout draws: functions of the seed
        torch.manual_seed(config.seed)
        network = build_model(config.network_config())
        model = ActionModel(network.to(device), config.points, action_set.config.width, action_set.config.height)
        metrics = _fit(model, action_set, windows, config, device, log, show_progress)
    network.cpu().eval()
    checkpoint = model.save(out_dir, {"train_config": config.to_dict(), "dataset": {
        "config": action_set.config.to_dict(), "sha256": dataset_sha256, "sources": action_set.sources},
        "metrics": metrics})
    return TrainResult(model, checkpoint, metrics["train_seconds"], metrics)


def _fit(model: ActionModel, action_set: ActionSet, windows: Windows, config: ActionTrainConfig,
         device: torch.device, log: Callable[[str], None], show_progress: bool | None) -> dict[str, Any]:
    """The training loop on ``device``; the metrics of every epoch."""
    network = model.network
    labels = torch.from_numpy(action_set.labels[windows.clip]).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_function = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    batches = math.ceil(len(windows) / config.batch_size)
    total = config.epochs * batches
    metrics: dict[str, Any] = {"model": config.model, "parameters": parameter_count(network),
                               "train_windows": len(windows), "device": str(device), "epochs": []}
    started = time.perf_counter()
    step = 0
    network.train()
    epochs = range(config.epochs)
    for epoch in progress(epochs, desc=f"train {config.model}") if show_progress is not False else epochs:
        rng = np.random.default_rng([config.seed, epoch])
        generator = torch.Generator(device).manual_seed(int(rng.integers(2**63)))
        order = rng.permutation(len(windows))
        losses, correct = [], 0
        for batch in range(batches):
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            grouped = model.group(action_set.events, windows.take(index), rng, device)
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(config, step, total)
            logits = network(grouped, generator)
            loss = loss_function(logits, labels[index])
            if not torch.isfinite(loss):
                raise ActionModelError(f"the loss is {loss.item()} in epoch {epoch}: training diverged (lower lr?)")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            losses.append(loss.item())
            correct += int((logits.argmax(1) == labels[index]).sum())
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "train_accuracy": correct / len(windows),
               "seconds": round(time.perf_counter() - started, 2)}
        metrics["epochs"].append(row)
        log(f"epoch {row['epoch']}/{config.epochs}: loss {row['loss']:.3f}, train accuracy "
            f"{row['train_accuracy']:.1%} ({row['seconds']:.0f} s)")
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    return metrics


def evaluate(model: ActionModel, action_set: ActionSet, split: str = "test", seed: int = 0,
             latency_windows: int = 20) -> dict[str, Any]:
    """Window and clip accuracy on ``split``, the confusion matrix, latency and (spiking) firing rate."""
    if action_set.config.width != model.width or action_set.config.height != model.height:
        raise ActionModelError(f"the model was trained on a {model.width}x{model.height} sensor, the data set is "
                               f"{action_set.config.width}x{action_set.config.height}")
    windows = split_windows(action_set, split, model.points)
    if len(windows) == 0:
        raise ActionModelError(f"the {split} split has no window with enough events")
    is_spiking = model.kind == "spikepoint"
    with record_activity(model.network) as activity:
        logits = model.predict(action_set.events, windows, seed)
    truth = action_set.labels[windows.clip]
    predicted = logits.argmax(1).numpy()
    n = len(model.classes)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    clips, clip_index = np.unique(windows.clip, return_inverse=True)
    clip_logits = np.zeros((len(clips), n))
    np.add.at(clip_logits, clip_index, logits.numpy())
    clip_accuracy = float(np.mean(clip_logits.argmax(1) == action_set.labels[clips]))
    result = {
        "split": split, "model": model.kind, "parameters": parameter_count(model.network),
        "windows": len(windows), "clips": len(clips),
        "clips_without_windows": int(len(action_set.subset(split)) - len(clips)),
        "window_accuracy": float(np.mean(predicted == truth)), "clip_accuracy": clip_accuracy,
        "per_class_accuracy": {name: float(confusion[i, i] / max(confusion[i].sum(), 1))
                               for i, name in enumerate(model.classes)},
        "confusion": confusion.tolist(),
        "latency_ms_per_window": _latency(model, action_set.events, windows, latency_windows),
        "torch_threads": torch.get_num_threads(),
    }
    if is_spiking and activity:
        result["mean_firing_rate"] = activity[0].mean_firing_rate
    return result


def _latency(model: ActionModel, events: np.ndarray, windows: Windows, count: int) -> float:
    """Median milliseconds to classify one window at batch size 1, point sampling and grouping included."""
    times = []
    for index in range(min(count, len(windows)) + 1):
        started = time.perf_counter()
        model.predict(events, windows.take(np.array([index % len(windows)])), seed=index)
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]) * 1e3)  # the first call warms caches up


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"spikebot": __version__, "torch": torch.__version__}
    for package in ("norse", "numpy", "opencv-python-headless"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
