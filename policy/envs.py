"""Manipulation tasks: four Metaworld v3 tasks of graded difficulty, their seeded environments and scripted experts.

Every environment is built through Gymnasium as ``gymnasium.make("spikebot/<task>", seed=SEED)`` (see
:func:`register_envs`; :func:`make_env` registers on first use). The environment contract, common to the four tasks:

- **Observation**: ``Box(39,)`` float64, Metaworld's goal-observable state (no rendering):
  ``[0:3]`` end-effector position, ``[3]`` gripper opening, ``[4:11]`` first object position and quaternion,
  ``[11:18]`` second object (zeros when the task has one), ``[18:36]`` the same 18 values one step earlier,
  ``[36:39]`` goal position.
- **Action**: ``Box(-1, 1, (4,))`` float32: end-effector displacement (x, y, z; scaled by 1/100 m) and gripper
  effort (-1 open, +1 closed).
- **Reward**: Metaworld's v2 shaped reward in [0, 10]; the policies here never use it.
- **Start state**: the object and goal positions are drawn from the task's random reset space by the seed given
  at construction, and every ``reset()`` returns to the same start. One seed is one episode's initial
  condition. ``reset(seed=...)`` with another seed builds that seed's environment (Metaworld itself would ignore
  the seed and replay the old start), so Gymnasium's checker and vector environments reseed as they expect.
- **Episode end**: ``terminated`` when ``info["success"]`` becomes 1.0 (the task is solved), ``truncated`` after
  ``max_episode_steps`` steps (500, Metaworld's horizon for these tasks).
- **Arguments**: ``seed`` (int >= 0, required), ``max_episode_steps`` (through ``gymnasium.make``), and the two
  wrappers diffusion policies need: ``obs_horizon`` (default 1: the observation becomes ``Box(obs_horizon,
  39)``, the last observations oldest first, the reset observation repeated at the start; Gymnasium's
  ``FrameStackObservation``) and ``action_horizon`` (default 1: the action becomes ``Box(-1, 1,
  (action_horizon, 4))``, a chunk executed in order, stopping early at the episode's end, with the rewards summed;
  :class:`ActionChunking`). With chunks, ``max_episode_steps`` counts chunks; Metaworld's own 500-step horizon
  still ends the episode.

Metaworld itself is imported only when an environment or expert is built: importing it costs half a second and
registers its own environments, which the ``spikebot`` command line does not need to start.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

OBSERVATION_DIM = 39
ACTION_DIM = 4
ACTION_LOW, ACTION_HIGH = -1.0, 1.0
ENV_NAMESPACE = "spikebot"
EVAL_SEED0 = 1_000_000
"""Evaluation seeds start here, so they never overlap demonstration seeds (which start at 0 by default)."""


@dataclass(frozen=True)
class TaskSpec:
    """One manipulation task: its Metaworld v3 name, its rank in difficulty (1 easiest) and its episode limit."""

    name: str
    difficulty: int
    description: str
    max_episode_steps: int = 500

    @property
    def env_id(self) -> str:
        """The Gymnasium id, ``spikebot/<name>``."""
        return f"{ENV_NAMESPACE}/{self.name}"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("button-press-v3", 1, "press a button on the wall in front of the arm; reaching only, gripper open"),
        TaskSpec("drawer-open-v3", 2, "hook the drawer handle and pull the drawer open; contact, no grasp"),
        TaskSpec("push-v3", 3, "push a puck across the table to a goal; sustained contact with a free object"),
        TaskSpec("pick-place-v3", 4, "grasp a puck, lift it and place it at a goal in the air; grasp and transport"),
    )
}


def task_spec(task: str) -> TaskSpec:
    """The task named ``task``, or a ValueError that lists the known tasks."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None


class RebuildOnNewSeed(gymnasium.Wrapper):
    """``reset(seed=...)`` with a seed other than the current one builds Metaworld's environment for that seed.

    Metaworld fixes the start state at construction and ignores the seed passed to ``reset``: Gymnasium code that
    reseeds through ``reset`` would silently replay the old episode. Rebuilding makes a seed mean one episode
    whichever way it is given.
    """

    def __init__(self, task: str, seed: int):
        super().__init__(_metaworld_core(task, seed))
        self.task, self.seed = task, int(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None and seed != self.seed:
            rebuilt = _metaworld_core(self.task, seed)
            self.env.close()
            self.env, self.seed = rebuilt, int(seed)
        return self.env.reset(seed=seed, options=options)


class ActionChunking(gymnasium.Wrapper):
    """One step executes a chunk of actions in order, as diffusion policies act (Chi et al.'s executed horizon):
    the observation after the last executed action, the rewards summed, and the chunk cut short when the
    episode ends inside it (``info["executed"]`` says how many actions ran)."""

    def __init__(self, env: gymnasium.Env, action_horizon: int):
        super().__init__(env)
        single = env.action_space
        shape = (action_horizon, *single.shape)
        self.action_space = gymnasium.spaces.Box(np.broadcast_to(single.low, shape), np.broadcast_to(single.high, shape),
                                                 dtype=single.dtype)

    def step(self, chunk):
        chunk = np.asarray(chunk)
        if chunk.shape != self.action_space.shape:
            raise ValueError(f"expected a chunk of shape {self.action_space.shape}, got {chunk.shape}")
        total = 0.0
        for executed, action in enumerate(chunk, start=1):
            observation, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return observation, total, terminated, truncated, {**info, "executed": executed}


def _metaworld_core(task: str, seed: int) -> gymnasium.Env:
    """Metaworld's goal-observable env for ``seed``, terminating on success (the same construction as
    ``gymnasium.make("Meta-World/goal_observable", ...)``, without its checker)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0 (it fixes the start state), not {seed!r}")
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    from metaworld.wrappers import AutoTerminateOnSuccessWrapper

    task_spec(task)
    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"](seed=int(seed))
    # Metaworld 3.1 keeps the goal-hidden observation space (goal bounds 0..0) on goal-observable envs; the space
    # it clips observations to is the right one.
    env.observation_space = env.sawyer_observation_space
    return AutoTerminateOnSuccessWrapper(env)


def _metaworld_env(task: str, seed: int, obs_horizon: int = 1, action_horizon: int = 1) -> gymnasium.Env:
    """Gymnasium entry point of ``spikebot/<task>`` (see the module docstring)."""
    for name, horizon in (("obs_horizon", obs_horizon), ("action_horizon", action_horizon)):
        if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"{name} must be an int >= 1, not {horizon!r}")
    wrapped: gymnasium.Env = RebuildOnNewSeed(task, seed)
    if obs_horizon > 1:
        wrapped = gymnasium.wrappers.FrameStackObservation(wrapped, int(obs_horizon))
    if action_horizon > 1:
        wrapped = ActionChunking(wrapped, int(action_horizon))
    return wrapped


def register_envs() -> None:
    """Register ``spikebot/<task>`` for every task with Gymnasium (again is a no-op)."""
    for spec in TASKS.values():
        if spec.env_id not in gymnasium.registry:
            gymnasium.register(
                id=spec.env_id, entry_point=f"{__name__}:_metaworld_env", kwargs={"task": spec.name},
                max_episode_steps=spec.max_episode_steps,
            )


def make_env(task: str, seed: int, *, max_episode_steps: int | None = None) -> gymnasium.Env:
    """The environment of ``task`` whose start state is drawn by ``seed`` (see the module docstring for its
    contract); ``max_episode_steps`` at most Metaworld's 500, the task's limit when None."""
    spec = task_spec(task)
    steps = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
    if not 1 <= steps <= 500:
        raise ValueError(f"max_episode_steps must be in 1..500 (Metaworld's horizon), not {steps}")
    register_envs()
    return gymnasium.make(spec.env_id, seed=seed, max_episode_steps=steps)


class ExpertPolicy:
    """Metaworld's scripted policy for one task, as a function from a 39-D observation to a float32 action
    clipped to the action space (the scripts' proportional controllers exceed [-1, 1] far from their targets).
    Stateless: one instance can act in any number of episodes."""

    def __init__(self, task: str):
        from metaworld.policies import ENV_POLICY_MAP

        self.task = task_spec(task).name
        self.script = ENV_POLICY_MAP[self.task]()

    @property
    def name(self) -> str:
        return f"metaworld.policies.{type(self.script).__name__}"

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the clipping below is the answer
            warnings.simplefilter("ignore", UserWarning)
            action = self.script.get_action(np.asarray(observation, dtype=np.float64))
        return np.clip(action, ACTION_LOW, ACTION_HIGH).astype(np.float32)


def expert_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """The scripted expert of ``task``: observation -> clipped float32 action."""
    return ExpertPolicy(task)
