"""Evaluation of a policy in its environment: seeded episodes, action chunks, success, episode length, latency.

Episode i runs on seed ``seed0 + i`` (from :data:`policy.envs.EVAL_SEED0` by default, apart from demonstration
seeds) in a fresh ``make_env(task, seed)``. The policy sees the last ``obs_horizon`` observations (the first one
repeated at the start of an episode, as the training windows are padded) and returns ``action_horizon`` actions,
which are executed open loop before it is asked again (Diffusion Policy's receding horizon, 8 of 16). An episode
ends on success (``terminated``) or at the step limit.

``batch`` episodes run in lockstep, their observation histories stacked into one ``predict_action`` call: faster
evaluation, but then the latency of a call is that of a batch. With ``batch=1`` (the command line's default) the
latency is that of one action chunk for one robot. The first call is a warm-up and is not timed.

Robustness: actions are clipped to the environment's action space before they are executed (the fraction of
clipped components is reported); a policy that raises, returns the wrong shape, or returns non-finite actions
stops the evaluation with :class:`RunnerError` naming the task, seed and step, rather than being scored as a
failure.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from policy.dataset import stream_seed
from policy.envs import EVAL_SEED0, make_env, task_spec
from vpr.errors import SpikebotError


class RunnerError(SpikebotError):
    """The policy failed while acting (raised, or returned malformed actions)."""


class Acting(Protocol):
    """What the runner needs of a policy (a :class:`policy.diffusion.DiffusionPolicy` is one)."""

    network_config: Any  # with .obs_horizon and .action_dim

    def predict_action(self, obs_history: np.ndarray, *, sampler: str | None = None, steps: int | None = None,
                       generator: torch.Generator | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class EvalResult:
    """Outcome of an evaluation; ``to_dict()`` is what ``spikebot policy eval`` writes."""

    task: str
    episodes: int
    seed0: int
    sampler: str
    inference_steps: int | None
    batch: int
    success_rate: float
    mean_length: float
    mean_length_success: float | None
    latency_ms_mean: float
    latency_ms_median: float
    latency_ms_p95: float
    chunks: int
    clipped_fraction: float
    seconds: float
    seeds: list[int] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(policy: Acting, task: str, episodes: int, *, seed0: int = EVAL_SEED0, sampler: str = "ddim",
             inference_steps: int | None = 10, batch: int = 1, max_episode_steps: int | None = None,
             noise_seed: int = 0, progress: bool | None = None) -> EvalResult:
    """Run ``episodes`` seeded episodes of ``policy`` on ``task`` (see the module docstring)."""
    spec = task_spec(task)
    if episodes < 1 or batch < 1:
        raise ValueError(f"episodes and batch must be positive, got {episodes} and {batch}")
    if seed0 < 0:
        raise ValueError(f"seed0 must be >= 0, got {seed0}")
    obs_horizon = int(policy.network_config.obs_horizon)
    generator = torch.Generator(device=getattr(policy, "device", "cpu")).manual_seed(stream_seed(noise_seed, 2, seed0))
    seeds = list(range(seed0, seed0 + episodes))
    success: list[bool] = []
    lengths: list[int] = []
    latencies: list[float] = []
    clipped = [0, 0]
    started = time.perf_counter()
    warm = False
    from tqdm.auto import tqdm

    bar = tqdm(total=episodes, desc=f"eval {spec.name}", disable=None if progress is None else not progress, leave=False)
    try:
        for first in range(0, episodes, batch):
            group = seeds[first : first + batch]
            if not warm:  # one untimed call: lazy scheduler set-up, allocator, kernels
                _act(policy, np.zeros((1, obs_horizon, policy.network_config.obs_dim), np.float32), sampler,
                     inference_steps, torch.Generator(device=generator.device).manual_seed(0), task, group[0], -1)
                warm = True
            outcome = _run_group(policy, spec.name, group, obs_horizon, sampler, inference_steps, generator,
                                 max_episode_steps, latencies, clipped)
            for solved, length in outcome:
                success.append(solved)
                lengths.append(length)
            bar.update(len(group))
    finally:
        bar.close()
    latency = np.asarray(latencies) * 1000.0
    solved_lengths = [length for length, solved in zip(lengths, success) if solved]
    return EvalResult(
        task=spec.name, episodes=episodes, seed0=seed0, sampler=sampler,
        inference_steps=None if sampler == "ddpm" else inference_steps, batch=batch,
        success_rate=float(np.mean(success)), mean_length=float(np.mean(lengths)),
        mean_length_success=float(np.mean(solved_lengths)) if solved_lengths else None,
        latency_ms_mean=float(latency.mean()), latency_ms_median=float(np.median(latency)),
        latency_ms_p95=float(np.percentile(latency, 95)), chunks=len(latencies),
        clipped_fraction=clipped[0] / max(clipped[1], 1), seconds=time.perf_counter() - started,
        seeds=seeds, success=success, lengths=lengths,
    )


def _act(policy: Acting, histories: np.ndarray, sampler: str, steps: int | None, generator: torch.Generator,
         task: str, seed: int, step: int) -> np.ndarray:
    """The policy's actions for stacked histories (B, T_obs, obs_dim), checked: (B, action_horizon, A), finite."""
    try:
        actions = policy.predict_action(histories, sampler=sampler, steps=steps, generator=generator)
    except Exception as error:
        raise RunnerError(f"the policy failed on {task} (seed {seed}, step {step}): {type(error).__name__}: {error}") from error
    actions = np.asarray(actions)
    action_dim = int(policy.network_config.action_dim)
    if actions.ndim != 3 or actions.shape[0] != len(histories) or actions.shape[2] != action_dim or actions.shape[1] < 1:
        raise RunnerError(f"the policy returned actions of shape {actions.shape} for {len(histories)} histories on {task} "
                          f"(seed {seed}, step {step}); expected ({len(histories)}, action_horizon, {action_dim})")
    if not np.isfinite(actions).all():
        raise RunnerError(f"the policy returned non-finite actions on {task} (seed {seed}, step {step})")
    return actions


def _run_group(policy: Acting, task: str, seeds: list[int], obs_horizon: int, sampler: str, steps: int | None,
               generator: torch.Generator, max_episode_steps: int | None, latencies: list[float],
               clipped: list[int]) -> list[tuple[bool, int]]:
    """Episodes on ``seeds`` in lockstep; (success, length) per seed."""
    envs = [make_env(task, seed, max_episode_steps=max_episode_steps) for seed in seeds]
    try:
        low, high = envs[0].action_space.low, envs[0].action_space.high
        histories = []
        for env in envs:
            observation, _ = env.reset()
            histories.append([np.asarray(observation, np.float32)] * obs_horizon)
        done = [False] * len(envs)
        solved = [False] * len(envs)
        length = [0] * len(envs)
        while not all(done):
            active = [i for i in range(len(envs)) if not done[i]]
            stacked = np.stack([np.stack(histories[i][-obs_horizon:]) for i in active])
            start = time.perf_counter()
            chunk = _act(policy, stacked, sampler, steps, generator, task, seeds[active[0]], length[active[0]])
            latencies.append(time.perf_counter() - start)
            for row, i in enumerate(active):
                for action in chunk[row]:
                    clipped[0] += int(((action < low) | (action > high)).sum())
                    clipped[1] += action.size
                    observation, _, terminated, truncated, info = envs[i].step(np.clip(action, low, high).astype(np.float32))
                    length[i] += 1
                    histories[i].append(np.asarray(observation, np.float32))
                    del histories[i][:-obs_horizon]
                    if terminated or truncated:
                        done[i] = True
                        solved[i] = bool(info.get("success", 0.0) >= 1.0)
                        break
        return list(zip(solved, length))
    finally:
        for env in envs:
            env.close()
