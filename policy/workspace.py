"""The training workspace: a typed :class:`TrainConfig`, demonstrations, the training loop, periodic evaluation and
resumable checkpoints in one run folder.

A run folder holds:

- ``config.json``: the :class:`TrainConfig` (format ``spikebot-policy-train/1``);
- ``demos.npz`` / ``demos.json``: the demonstrations, when the run recorded them (else ``config.demos`` names them);
- ``checkpoints/step_NNNNNNN/``: a :class:`~policy.diffusion.DiffusionPolicy` folder (``policy.json`` with the
  train config, step and demonstration checksum in its metadata, ``weights.pt`` with trained and EMA weights)
  plus ``train_state.pt`` (optimiser state, step, training seconds, RNG states, the metrics so far). A checkpoint
  is written under a temporary name and renamed, so a folder named ``step_*`` is complete; the last
  ``keep_checkpoints`` are kept;
- ``metrics.json``: the loss of every step, the learning rate, and every evaluation (success rate, mean episode
  length, latency), rewritten at each checkpoint.

Training is Diffusion Policy's: AdamW (betas 0.95/0.999), a linear warm-up then cosine decay of the learning rate,
the EMA of the weights updated after each step (what evaluation and checkpoints act with). Every random draw of
step k (the batch, the noise and the diffusion timesteps) comes from generators seeded by (seed, k), so a run that
resumes from a checkpoint takes the same steps as one that was never interrupted; on the CPU the weights come out
bit for bit equal (``tests/test_policy_training.py`` checks it).

Resuming is automatic: :func:`train` on a folder with checkpoints continues from the latest one, provided the
config differs only in :data:`RESUMABLE_FIELDS` (steps may grow: that extends a run).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy.dataset import DemoWindows, WindowSpec, sample_histories, stream_seed
from policy.demos import (
    DemoError,
    DemoSet,
    demo_paths,
    load_demos,
    record_demos,
    save_demos,
)
from policy.diffusion import SAMPLERS, DiffusionConfig, DiffusionPolicy
from policy.envs import EVAL_SEED0, task_spec
from policy.models import NETWORKS, build_network, network_config, parameter_count
from policy.models.common import added_fields
from policy.normalise import Normaliser
from spikebot.artefacts import file_sha256
from spikebot.devices import check_device_name, resolve_device
from vpr.errors import SpikebotError

CONFIG_FORMAT = "spikebot-policy-train/1"
RESUMABLE_FIELDS = frozenset({"steps", "device", "torch_threads", "eval_every", "eval_episodes", "eval_batch",
                              "eval_max_episode_steps", "checkpoint_every", "keep_checkpoints"})
"""Fields a resumed run may change. Only ``steps`` changes what later steps compute (the cosine schedule decays
to 0 at ``steps``): an extended run is not the run it would have been with the larger budget from the start."""


class TrainError(SpikebotError):
    """A run cannot start or resume: bad configuration, missing demonstrations, a conflicting run folder."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the run folder and with every checkpoint.

    ``demos`` names a ``spikebot-demos/1`` file; when None, ``demo_episodes`` expert episodes from seed
    ``demo_seed`` are recorded into the run folder. ``network`` overrides the network's defaults (for example
    ``{"embed_dim": 32, "n_layers": 1}``); the fields added to the networks since runs were first saved
    (:data:`policy.models.common.ADDED_FIELDS`, such as ``direct_obs_conditioning``) are written into it, so that
    a saved run whose ``network`` lacks one predates it and resumes with the network its checkpoints hold.
    ``obs_min_span`` is the smallest range an observation dimension is scaled as (see :mod:`policy.normalise`:
    nearly constant dimensions are not stretched onto [-1, 1]). ``device`` is ``auto`` (CUDA when available,
    else CPU), ``cpu``, ``cuda`` or ``cuda:N``; ``torch_threads`` None keeps torch's default. ``eval_every`` 0 or
    ``eval_episodes`` 0 turns periodic evaluation off (a final one is still run when ``eval_episodes`` > 0).
    """

    task: str
    model: str
    demos: str | None = None
    demo_episodes: int = 50
    demo_seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-4  # chosen over 1e-4 by training loss at 1000 steps on push-v3, both models (docs/benchmarks.md)
    weight_decay: float = 1e-3
    lr_warmup_steps: int = 100
    obs_min_span: float = 0.1
    ema: bool = True
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    network: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 500
    eval_episodes: int = 10
    eval_batch: int = 10
    eval_sampler: str = "ddim"
    eval_inference_steps: int = 10
    eval_max_episode_steps: int | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        try:
            task_spec(self.task)
        except ValueError as error:
            raise TrainError(str(error)) from None
        if self.model not in NETWORKS:
            raise TrainError(f"unknown model {self.model!r}: expected one of {sorted(NETWORKS)}")
        if not isinstance(self.network, dict):
            raise TrainError(f"network must be a dict of network fields, got {self.network!r}")
        current = NETWORKS[self.model][0]()
        object.__setattr__(self, "network", {**{name: getattr(current, name) for name in added_fields(type(current))},
                                             **self.network})
        positive = ("demo_episodes", "steps", "batch_size", "obs_horizon", "pred_horizon", "action_horizon",
                    "eval_batch", "eval_inference_steps", "checkpoint_every", "keep_checkpoints")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("demo_seed", "lr_warmup_steps", "eval_every", "eval_episodes", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise TrainError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not (isinstance(self.obs_min_span, (int, float)) and self.obs_min_span >= 0):
            raise TrainError(f"obs_min_span must be >= 0, got {self.obs_min_span!r}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise TrainError(f"lr must be positive and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.eval_sampler not in SAMPLERS:
            raise TrainError(f"unknown eval_sampler {self.eval_sampler!r}: expected one of {SAMPLERS}")
        if self.eval_max_episode_steps is not None and not 1 <= self.eval_max_episode_steps <= 500:
            raise TrainError(f"eval_max_episode_steps must be in 1..500, got {self.eval_max_episode_steps}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise TrainError(f"torch_threads must be positive, got {self.torch_threads}")
        if problem := check_device_name(self.device):
            raise TrainError(problem)
        clash = {"obs_horizon", "pred_horizon"} & set(self.network)
        if clash:
            raise TrainError(f"set {sorted(clash)} on the TrainConfig, not in network")
        try:
            self.network_config()
            self.diffusion_config()
            WindowSpec(self.obs_horizon, self.pred_horizon, self.action_horizon)
        except ValueError as error:
            raise TrainError(f"invalid configuration: {error}") from None

    def network_config(self):
        return network_config(self.model, {**self.network, "obs_horizon": self.obs_horizon, "pred_horizon": self.pred_horizon},
                              saved=False)

    def diffusion_config(self) -> DiffusionConfig:
        return DiffusionConfig(sampler=self.eval_sampler, num_inference_steps=self.eval_inference_steps,
                               action_horizon=self.action_horizon, ema=self.ema)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A saved config; its ``network`` lacks the fields added since it was saved: they take their old values."""
        unknown = set(values) - {item.name for item in fields(cls)}
        if unknown:
            raise TrainError(f"unknown TrainConfig fields: {sorted(unknown)}")
        values = dict(values)
        if values.get("model") in NETWORKS and isinstance(values.get("network"), dict):
            values["network"] = {**added_fields(NETWORKS[values["model"]][0]), **values["network"]}
        return cls(**values)

    def save(self, path: Path) -> None:
        _write_json(path, {"format": CONFIG_FORMAT, "config": self.to_dict()})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            document = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TrainError(f"cannot read the training config {path}: {error}") from error
        if not isinstance(document, dict) or document.get("format") != CONFIG_FORMAT:
            raise TrainError(f"{path} is not a {CONFIG_FORMAT} file")
        return cls.from_dict(document["config"])

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device, TrainError)


@dataclass
class TrainResult:
    """What :func:`train` did: the run folder, the final checkpoint, the step reached (and where it started)."""

    run_dir: Path
    checkpoint: Path
    step: int
    start_step: int
    train_seconds: float
    metrics: dict[str, Any]


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over ``lr_warmup_steps``, then cosine decay to 0 at ``steps`` (diffusers' ``cosine``)."""
    if step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    progress = (step - config.lr_warmup_steps) / max(1, config.steps - config.lr_warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run folder, (step, folder), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in folder.glob("step_*") if folder.is_dir() else []:
        suffix = path.name[len("step_"):]
        if suffix.isdigit() and (path / "train_state.pt").is_file() and (path / "policy.json").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A policy folder (``policy.json``) as given, or the latest checkpoint of a run folder."""
    path = Path(path)
    if (path / "policy.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise TrainError(f"{path} is neither a policy checkpoint (policy.json) nor a run folder with checkpoints")
    return latest


def checkpoint_metadata(folder: Path) -> dict[str, Any]:
    """The ``metadata`` a checkpoint was saved with (task, model, step, training configuration, demonstrations)."""
    return json.loads((folder / "policy.json").read_text()).get("metadata", {})


def demonstration_histories(folder: Path, policy: DiffusionPolicy, count: int, seed: int = 0,
                            demos: str | Path | None = None) -> tuple[torch.Tensor, Path]:
    """``count`` observation histories (seeded) from ``demos``, by default the demonstrations the checkpoint in
    ``folder`` trained on, cut to ``policy``'s horizons; and the file they came from."""
    source = demos or checkpoint_metadata(folder).get("demos", {}).get("path")
    if source is None:
        raise TrainError(f"{folder} does not say which demonstrations it trained on: give the demonstrations")
    config = policy.network_config
    spec = WindowSpec(config.obs_horizon, config.pred_horizon, policy.config.action_horizon)
    return sample_histories(load_demos(source), count, seed, spec), Path(source)


def load_training_demos(config: TrainConfig, run_dir: Path, *, record: bool) -> tuple[DemoSet, Path]:
    """The run's demonstrations (all episodes) and their ``.npz``: ``config.demos``, else the run folder's copy,
    recorded first when ``record``."""
    if config.demos is not None:
        path = demo_paths(config.demos)[0]
        try:
            demos = load_demos(path)
        except DemoError as error:
            raise TrainError(f"cannot load the demonstrations: {error}") from error
    else:
        path = run_dir / "demos.npz"
        if path.is_file() or not record:
            try:
                demos = load_demos(path)
            except DemoError as error:
                raise TrainError(f"cannot load the run's demonstrations: {error}") from error
        else:
            demos = record_demos(config.task, config.demo_episodes, config.demo_seed)
            path = save_demos(demos, path)[0]
    if demos.task != config.task:
        raise TrainError(f"the demonstrations at {path} are of {demos.task}, the run trains {config.task}")
    if not demos.success.any():
        raise TrainError(f"the demonstrations at {path} have no successful episode to learn from")
    return demos, path


def _check_resumable(saved: TrainConfig, config: TrainConfig, run_dir: Path) -> None:
    differ = sorted(name for name in (item.name for item in fields(TrainConfig))
                    if getattr(saved, name) != getattr(config, name) and name not in RESUMABLE_FIELDS)
    if differ:
        detail = ", ".join(f"{name}: {getattr(saved, name)!r} -> {getattr(config, name)!r}" for name in differ)
        raise TrainError(f"{run_dir} holds a run with another configuration ({detail}); resume it with the same "
                         f"settings or train into another run folder")


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool | None = None,
          progress: bool | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) the run ``config`` in ``run_dir``; see the module docstring.

    ``resume`` None resumes when the folder has a checkpoint and starts fresh otherwise; True requires a
    checkpoint; False refuses a folder that has one. ``progress`` None shows a bar on a terminal only.
    """
    run_dir = Path(run_dir)
    log = log or (lambda message: None)
    latest = latest_checkpoint(run_dir)
    if latest is None and resume:
        raise TrainError(f"nothing to resume: {run_dir} has no checkpoint")
    if latest is not None and resume is False:
        raise TrainError(f"{run_dir} already holds a run (checkpoint {latest.name}); resume it or choose another run folder")
    if latest is not None:
        _check_resumable(TrainConfig.load(run_dir / "config.json"), config, run_dir)
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    device = config.resolved_device()
    demos, demo_path = load_training_demos(config, run_dir, record=latest is None)
    successful = demos.successful()
    windows = DemoWindows(successful, WindowSpec(config.obs_horizon, config.pred_horizon, config.action_horizon))
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")

    if latest is not None:
        policy = DiffusionPolicy.load(latest, device=device)
        state = torch.load(latest / "train_state.pt", map_location="cpu", weights_only=True)
        if policy.network_config != config.network_config():
            raise TrainError(f"the checkpoint {latest} holds another network than the config describes")
        step = int(state["step"])
        metrics = json.loads(state["metrics"])
        if metrics["demos"]["sha256"] != file_sha256(demo_path):
            raise TrainError(f"the demonstrations at {demo_path} are not those the run in {run_dir} was trained on "
                             "(their checksum differs)")
        train_seconds = float(state["train_seconds"])
        log(f"resuming {run_dir} from step {step}")
    else:
        normaliser = Normaliser.fit(obs=successful.observations, action=successful.actions,
                                    min_span={"obs": config.obs_min_span})
        with torch.random.fork_rng(devices=[]):  # the initial weights, a function of the seed; the caller's RNG untouched
            torch.manual_seed(config.seed)
            network = build_network(config.network_config())
        policy = DiffusionPolicy(network, normaliser, config.diffusion_config(), device=device)
        state, step, train_seconds = None, 0, 0.0
        metrics = {"task": config.task, "model": config.model, "parameters": parameter_count(policy.network),
                   "demos": {"path": str(demo_path), "sha256": file_sha256(demo_path), "episodes": demos.n_episodes,
                             "successful_episodes": successful.n_episodes, "windows": len(windows)},
                   "loss": [], "lr": [], "eval": []}
    optimiser = torch.optim.AdamW(policy.network.parameters(), lr=config.lr, betas=(0.95, 0.999),
                                  weight_decay=config.weight_decay)
    if state is not None:
        optimiser.load_state_dict(state["optimiser"])
        _restore_rng(state["rng"])
    metrics["device"] = str(device)

    from tqdm.auto import tqdm

    start_step = step
    bar = tqdm(total=config.steps, initial=step, desc=f"train {config.model} {config.task}",
               disable=None if progress is None else not progress)
    checkpoint: Path = latest  # type: ignore[assignment]  # None only until the first save
    try:
        while step < config.steps:
            began = time.perf_counter()
            lr = learning_rate(config, step)
            for group in optimiser.param_groups:
                group["lr"] = lr
            batch = windows.batch(step, config.batch_size, config.seed, device)
            generator = torch.Generator(device=device).manual_seed(stream_seed(config.seed, 1, step))
            loss = policy.compute_loss(batch, generator=generator)
            if not torch.isfinite(loss):
                raise TrainError(f"the loss is {loss.item()} at step {step}: training diverged (lower lr?)")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            policy.update_ema()
            step += 1
            train_seconds += time.perf_counter() - began
            metrics["loss"].append(float(loss.item()))
            metrics["lr"].append(lr)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss'][-1]:.4f}", refresh=False)
            final = step == config.steps
            due = bool(config.eval_every and step % config.eval_every == 0) or final
            if config.eval_episodes and due and not any(row["step"] == step for row in metrics["eval"]):
                row = _evaluate(policy, config, step, train_seconds)
                metrics["eval"].append(row)
                log(f"step {step}: loss {np.mean(metrics['loss'][-50:]):.4f}, success {row['success_rate']:.0%} "
                    f"over {row['episodes']} episodes, mean length {row['mean_length']:.0f}")
            if step % config.checkpoint_every == 0 or final:
                metrics["train_seconds"] = train_seconds
                metrics["steps"] = step
                checkpoint = _save_checkpoint(policy, optimiser, config, run_dir, step, train_seconds, metrics, demo_path)
    finally:
        bar.close()
    return TrainResult(run_dir, checkpoint, step, start_step, train_seconds, metrics)


def _evaluate(policy: DiffusionPolicy, config: TrainConfig, step: int, train_seconds: float) -> dict[str, Any]:
    from policy.runner import evaluate

    result = evaluate(policy, config.task, config.eval_episodes, seed0=EVAL_SEED0, sampler=config.eval_sampler,
                      inference_steps=config.eval_inference_steps, batch=config.eval_batch,
                      max_episode_steps=config.eval_max_episode_steps, noise_seed=config.seed, progress=False)
    row = {"step": step, "train_seconds": round(train_seconds, 3)}
    row.update({key: value for key, value in result.to_dict().items() if key not in ("seeds", "success", "lengths")})
    row["success"] = result.success
    row["lengths"] = result.lengths
    return row


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(float, numpy_state[2:])],
            "python": json.dumps(random.getstate())}


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached)))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))


def _save_checkpoint(policy: DiffusionPolicy, optimiser: torch.optim.Optimizer, config: TrainConfig, run_dir: Path,
                     step: int, train_seconds: float, metrics: dict[str, Any], demo_path: Path) -> Path:
    folder = run_dir / "checkpoints"
    target = folder / f"step_{step:07d}"
    partial = folder / f".step_{step:07d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    metadata = {"task": config.task, "model": config.model, "step": step, "train_config": config.to_dict(),
                "demos": metrics["demos"], "train_seconds": round(train_seconds, 3)}
    policy.save(partial, metadata)
    torch.save({"step": step, "train_seconds": train_seconds, "optimiser": optimiser.state_dict(),
                "rng": _rng_state(), "metrics": json.dumps(metrics)}, partial / "train_state.pt")
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    for _, old in checkpoints(run_dir)[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    _write_json(run_dir / "metrics.json", metrics)
    return target


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(path)


__all__ = ["RESUMABLE_FIELDS", "TrainConfig", "TrainError", "TrainResult", "checkpoints", "latest_checkpoint",
           "learning_rate", "load_training_demos", "resolve_checkpoint", "train"]
