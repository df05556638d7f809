"""A diffusion policy: a noise-prediction network, the normaliser of its data and diffusers' noise schedulers.

Training (:meth:`DiffusionPolicy.compute_loss`) is DDPM's epsilon prediction: normalise a batch, noise its
action sequences at random timesteps (``DDPMScheduler.add_noise``) and regress the noise. Acting
(:meth:`DiffusionPolicy.predict_action`) denoises Gaussian noise into an action sequence conditioned on the last
``obs_horizon`` observations, with DDIM (few steps, deterministic) or DDPM (every training step), and returns the
``action_horizon`` actions to execute, from the current step on (Diffusion Policy's receding horizon). An
exponential moving average of the weights (diffusers' ``EMAModel``, warm-up power 0.75 as Chi et al.) is kept
during training and is what the policy acts and is saved with.

Schedulers are built from arguments, never ``from_pretrained``: nothing is downloaded. A saved policy is a
folder with ``policy.json`` (format, versions, network kind and configuration, diffusion configuration,
normaliser bounds, weights checksum) and ``weights.pt`` (trained and EMA weights); :meth:`DiffusionPolicy.load`
refuses a folder whose files are missing, corrupt, of another format or inconsistent with each other.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from policy.models import (
    NETWORKS,
    NetworkConfig,
    build_network,
    network_config,
    parameter_count,
)
from policy.models.cost import InferenceCost, count_macs, is_spiking, spiking_cost
from policy.normalise import Normaliser
from spikebot.artefacts import file_sha256, read_checked_manifest
from spikebot.provenance import __version__, git_commit
from spikebot.spiking import record_activity
from vpr.errors import SpikebotError

if TYPE_CHECKING:  # diffusers takes ~2 s to import: only policies that are built load it
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.training_utils import EMAModel

CHECKPOINT_FORMAT = "spikebot-diffusion-policy/1"
SAMPLERS = ("ddim", "ddpm")


class PolicyError(SpikebotError):
    """A policy checkpoint is missing, corrupt, of another format, or inconsistent with itself."""


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule, sampler and receding horizon (Diffusion Policy's defaults: 100 training steps, squared
    cosine schedule, predicted samples clipped to the normalised range, 8 of 16 actions executed)."""

    num_train_timesteps: int = 100
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    clip_sample: bool = True
    sampler: Literal["ddim", "ddpm"] = "ddim"
    num_inference_steps: int = 10
    action_horizon: int = 8
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: expected one of {SAMPLERS}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {self.num_inference_steps}")
        if self.action_horizon < 1:
            raise ValueError("action_horizon must be positive")
        if not 0.0 <= self.ema_max_decay < 1.0:
            raise ValueError("ema_max_decay must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DiffusionConfig:
        unknown = set(values) - {field.name for field in fields(cls)}
        if unknown:
            raise ValueError(f"unknown DiffusionConfig fields: {sorted(unknown)}")
        return cls(**values)

    def scheduler_arguments(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "clip_sample": self.clip_sample, "prediction_type": "epsilon"}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DiffusionPolicy:
    """``network`` + ``normaliser`` + schedulers; ``predict_action(observations)`` gives the actions to execute.

    Train ``policy.network`` with ``policy.compute_loss(batch)`` and call ``policy.update_ema()`` after every
    optimiser step. ``batch`` holds raw (unnormalised) ``action`` (B, pred_horizon, action_dim) and ``obs``
    (B, >= obs_horizon, obs_dim), whose first obs_horizon steps are the condition: observation i was seen at the
    step of action i (Diffusion Policy's windows), so the last conditioning observation is the present and the
    actions from there on are the ones executed.
    """

    def __init__(self, network: nn.Module, normaliser: Normaliser, config: DiffusionConfig = DiffusionConfig(),
                 device: str | torch.device | None = None) -> None:
        net_config: NetworkConfig = network.config
        if config.action_horizon > net_config.pred_horizon - net_config.obs_horizon + 1:
            raise ValueError(f"action_horizon {config.action_horizon} does not fit in pred_horizon {net_config.pred_horizon} "
                             f"after the {net_config.obs_horizon - 1} past steps")
        for name, dim in (("obs", net_config.obs_dim), ("action", net_config.action_dim)):
            if normaliser[name].dim != dim:
                raise ValueError(f"the normaliser's {name} has {normaliser[name].dim} dimensions, the network {dim}")
        from diffusers import DDPMScheduler

        self.config = config
        self.normaliser = normaliser
        self.device = torch.device(device) if device is not None else default_device()
        self.network = network.to(self.device)
        self.noise_scheduler = DDPMScheduler(**config.scheduler_arguments())
        self._samplers: dict[tuple[str, int], DDPMScheduler | DDIMScheduler] = {}
        self.ema: EMAModel | None = None
        self.ema_network: nn.Module | None = None
        if config.ema:
            self.ema = _ema_model(self.network, config)
            self.ema_network = copy.deepcopy(self.network).eval().requires_grad_(False)
        self._ema_stale = False

    @property
    def network_config(self) -> NetworkConfig:
        return self.network.config

    # -- training ---------------------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """DDPM epsilon-prediction loss (mean squared error of the predicted noise) on a raw batch."""
        config = self.network_config
        obs, action = batch["obs"], batch["action"]
        if obs.dim() != 3 or obs.shape[1] < config.obs_horizon or action.shape[1:] != (config.pred_horizon, config.action_dim):
            raise ValueError(f"expected obs (B, >= {config.obs_horizon}, {config.obs_dim}) and action (B, {config.pred_horizon}, "
                             f"{config.action_dim}), got {tuple(obs.shape)} and {tuple(action.shape)}")
        obs = self.normaliser.normalise("obs", obs[:, : config.obs_horizon].to(self.device, torch.float32))
        action = self.normaliser.normalise("action", action.to(self.device, torch.float32))
        noise = torch.randn(action.shape, generator=generator, device=generator.device if generator else self.device).to(self.device)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (len(action),), generator=generator,
                                  device=generator.device if generator else self.device).to(self.device)
        noisy = self.noise_scheduler.add_noise(action, noise, timesteps)
        return nn.functional.mse_loss(self.network(noisy, timesteps, obs), noise)

    def update_ema(self) -> None:
        """Fold the network's current weights into the moving average (after each optimiser step)."""
        if self.ema is not None:
            self.ema.step(self.network.parameters())
            self._ema_stale = True

    def acting_network(self) -> nn.Module:
        """The network ``predict_action`` uses: the EMA weights when kept, else the trained ones."""
        if self.ema is None or self.ema_network is None:
            return self.network
        if self._ema_stale:
            self.ema.copy_to(self.ema_network.parameters())
            self._ema_stale = False
        return self.ema_network

    # -- acting -----------------------------------------------------------------------------------------------

    def sampler(self, name: str | None = None, steps: int | None = None) -> DDPMScheduler | DDIMScheduler:
        """The (cached) scheduler for sampling: DDIM with ``steps`` steps, or DDPM over every training step."""
        name = name or self.config.sampler
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}: expected one of {SAMPLERS}")
        steps = self.config.num_train_timesteps if name == "ddpm" else (steps or self.config.num_inference_steps)
        key = (name, steps)
        if key not in self._samplers:
            from diffusers import DDIMScheduler, DDPMScheduler

            scheduler = DDIMScheduler(**self.config.scheduler_arguments()) if name == "ddim" else DDPMScheduler(**self.config.scheduler_arguments())
            scheduler.set_timesteps(steps)
            self._samplers[key] = scheduler
        return self._samplers[key]

    @torch.inference_mode()
    def sample(self, obs: torch.Tensor, sampler: str | None = None, steps: int | None = None,
               generator: torch.Generator | None = None, network: nn.Module | None = None) -> torch.Tensor:
        """Normalised action sequences (B, pred_horizon, A) denoised from noise, given normalised ``obs`` (made in
        inference mode: clone before using them where autograd records)."""
        network = network or self.acting_network()
        scheduler = self.sampler(sampler, steps)
        config = self.network_config
        shape = (len(obs), config.pred_horizon, config.action_dim)
        sample = torch.randn(shape, generator=generator, device=generator.device if generator else self.device).to(self.device)
        training = network.training
        network.eval()
        try:
            for t in scheduler.timesteps:
                noise = network(sample, t.to(self.device), obs)
                sample = scheduler.step(noise, t, sample, generator=generator).prev_sample
        finally:
            network.train(training)
        return sample

    def _condition(self, obs_history: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The normalised last ``obs_horizon`` observations (B, obs_horizon, obs_dim) of one history or a batch."""
        obs = torch.as_tensor(obs_history, dtype=torch.float32, device=self.device)
        obs = obs.unsqueeze(0) if obs.dim() == 2 else obs
        config = self.network_config
        if obs.dim() != 3 or not len(obs) or obs.shape[1] < config.obs_horizon or obs.shape[2] != config.obs_dim:
            raise ValueError(f"expected observations (B, >= {config.obs_horizon}, {config.obs_dim}), got {tuple(obs.shape)}")
        return self.normaliser.normalise("obs", obs[:, -config.obs_horizon:])

    def predict_action(self, obs_history: np.ndarray | torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                       generator: torch.Generator | None = None, full: bool = False) -> np.ndarray | torch.Tensor:
        """Actions to execute, (action_horizon, A) for one observation history (T_obs, obs_dim) or
        (B, action_horizon, A) for a batch (B, T_obs, obs_dim); the last ``obs_horizon`` observations are used.
        ``full`` returns the whole predicted sequence (pred_horizon steps, the first obs_horizon - 1 of them in
        the past). A numpy input gives a numpy result (float32), a tensor a tensor on the policy's device."""
        as_numpy = isinstance(obs_history, np.ndarray)
        single = np.ndim(obs_history) == 2
        obs = self._condition(obs_history)
        config = self.network_config
        actions = self.normaliser.unnormalise("action", self.sample(obs, sampler, steps, generator))
        if not full:
            start = config.obs_horizon - 1
            actions = actions[:, start : start + self.config.action_horizon]
        if single:
            actions = actions[0]
        return actions.cpu().numpy() if as_numpy else actions

    def inference_cost(self, obs_history: np.ndarray | torch.Tensor, sampler: str | None = None, steps: int | None = None,
                       generator: torch.Generator | None = None) -> InferenceCost:
        """Operations of one action chunk, per observation history: MACs, and for a spiking network the spikes and
        synaptic operations recorded over every denoising pass (their rates change with the noise level), averaged
        over the histories given (one (obs_horizon, obs_dim) array or a batch of them)."""
        network = self.acting_network()
        config = self.network_config
        obs = self._condition(obs_history)
        passes = len(self.sampler(sampler, steps).timesteps)
        example = (torch.zeros(1, config.pred_horizon, config.action_dim, device=self.device),
                   torch.zeros(1, dtype=torch.long, device=self.device), obs[:1])
        dense, per_module = count_macs(network, example)
        if not is_spiking(network):
            return InferenceCost(type(network).__name__, passes, dense, 0.0, dense)
        with record_activity(network) as report:
            self.sample(obs, sampler, steps, generator, network=network)
        return spiking_cost(network, report[0], per_module, dense, passes)

    def to(self, device: str | torch.device) -> DiffusionPolicy:
        self.device = torch.device(device)
        self.network.to(self.device)
        if self.ema is not None and self.ema_network is not None:
            self.ema.to(self.device)
            self.ema_network.to(self.device)
        return self

    # -- checkpoints ------------------------------------------------------------------------------------------

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``policy.json`` and ``weights.pt`` into ``directory``; ``metadata`` (JSON) is kept as given."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {"network": _cpu_state(self.network)}
        if self.ema is not None:
            weights["ema"] = _cpu_state(self.acting_network())
        weights_path = directory / "weights.pt"
        partial = weights_path.with_suffix(".partial")
        torch.save(weights, partial)
        partial.replace(weights_path)
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "versions": _versions(),
            "git_commit": git_commit(),
            "network": {"kind": self.network_config.kind, "config": self.network_config.to_dict(),
                        "parameters": parameter_count(self.network)},
            "diffusion": self.config.to_dict(),
            "normaliser": self.normaliser.to_dict(),
            "ema_step": self.ema.optimization_step if self.ema is not None else None,
            "weights_sha256": file_sha256(weights_path),
            "metadata": metadata or {},
        }
        (directory / "policy.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None) -> DiffusionPolicy:
        directory = Path(directory)
        manifest = read_checked_manifest(directory, "policy.json", "weights.pt", CHECKPOINT_FORMAT, "policy", PolicyError)
        weights_path = directory / "weights.pt"
        try:
            kind = manifest["network"]["kind"]
            if kind not in NETWORKS:
                raise ValueError(f"unknown network kind {kind!r}")
            network = build_network(network_config(kind, manifest["network"]["config"]))
            policy = cls(network, Normaliser.from_dict(manifest["normaliser"]), DiffusionConfig.from_dict(manifest["diffusion"]),
                         device="cpu")
            weights = torch.load(weights_path, map_location="cpu", weights_only=True)
            policy.network.load_state_dict(weights["network"])
            if policy.ema is not None and policy.ema_network is not None:
                policy.ema_network.load_state_dict(weights["ema"])
                policy.ema = _ema_model(policy.ema_network, policy.config)
                policy.ema.optimization_step = int(manifest.get("ema_step") or 0)
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise PolicyError(f"policy {directory} is inconsistent with its manifest: {error}") from error
        return policy.to(device if device is not None else default_device())


def _ema_model(network: nn.Module, config: DiffusionConfig) -> EMAModel:
    """Diffusion Policy's EMA: decay 1 - (1 + step)^-power, at most ``ema_max_decay``."""
    from diffusers.training_utils import EMAModel

    return EMAModel(network.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, power=config.ema_power, foreach=True)


def _cpu_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in network.state_dict().items()}


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"spikebot": __version__, "torch": torch.__version__}
    for package in ("diffusers", "norse", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
