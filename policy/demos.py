"""Expert demonstrations: record them with the scripted experts, save them, and load them back checked.

On-disk format ``spikebot-demos/1``: two files side by side, ``NAME.npz`` (the arrays) and ``NAME.json`` (the
manifest). The arrays, for E episodes of N steps in all, episodes concatenated in recording order:

- ``observations``: (N, 39) float32, the observation each action was chosen from (the final one is not kept);
- ``actions``: (N, 4) float32, the expert's action, clipped to [-1, 1];
- ``episode_lengths``: (E,) int64, steps per episode (each >= 1, summing to N; each episode starts where the
  previous one ends);
- ``success``: (E,) bool, whether the episode reached ``info["success"]`` within its step limit;
- ``seeds``: (E,) int64, the environment seed of each episode (``policy.envs.make_env(task, seed)``).

The manifest (JSON) names the format, the task and its environment (Gymnasium id, step limit, observation and
action sizes), the expert, the package versions that produced the data (metaworld, mujoco, gymnasium, numpy),
the counts (episodes, steps, successful episodes, success rate), the seeds, the recording time and CPU, the
spikebot version and git commit, and the SHA-256 of the ``.npz``. Each file is written to a temporary name and
renamed, the arrays first and the manifest last: an interrupted save leaves the previous pair, a lone ``.npz``
(refused as partial) or an old manifest whose checksum refuses the new arrays, never a half-written file.
:func:`load_demos` raises :class:`DemoError` on a missing manifest, another format, a checksum mismatch, an
unreadable archive or arrays that disagree with the manifest.

Failed episodes are kept: the file is a faithful record of what the expert did on those seeds, and the success
rate in the manifest is the expert's. Training takes :meth:`DemoSet.successful` (diffusion policies learn from
successful demonstrations only).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from policy.envs import ACTION_DIM, OBSERVATION_DIM, ExpertPolicy, make_env, task_spec
from spikebot.artefacts import file_sha256
from spikebot.progress import progress
from spikebot.provenance import __version__, cpu_model, git_commit
from vpr.errors import SpikebotError

DEMO_FORMAT = "spikebot-demos/1"
_ARRAYS = ("observations", "actions", "episode_lengths", "success", "seeds")
_PACKAGES = ("metaworld", "mujoco", "gymnasium", "numpy")


class DemoError(SpikebotError):
    """A demonstration file is missing, partial, corrupt, of another format, or inconsistent with its manifest."""


@dataclass(frozen=True, eq=False)
class DemoSet:
    """Demonstrations of one task: per step an observation and the action taken, per episode its length, success
    and seed (see the module docstring for shapes); the step limit the episodes ran under, and the wall time the
    recording took."""

    task: str
    observations: np.ndarray
    actions: np.ndarray
    episode_lengths: np.ndarray
    success: np.ndarray
    seeds: np.ndarray
    max_episode_steps: int = 500
    seconds: float = 0.0

    def __post_init__(self) -> None:
        problem = _inconsistency(self.observations, self.actions, self.episode_lengths, self.success, self.seeds)
        if problem:
            raise DemoError(f"inconsistent demonstrations of {self.task}: {problem}")

    @property
    def n_episodes(self) -> int:
        return len(self.episode_lengths)

    @property
    def n_steps(self) -> int:
        return len(self.actions)

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]]).astype(np.int64)

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if self.n_episodes else 0.0

    def episode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Observations and actions of episode ``index``."""
        start = int(self.episode_starts[index])
        stop = start + int(self.episode_lengths[index])
        return self.observations[start:stop], self.actions[start:stop]

    def successful(self) -> DemoSet:
        """Only the successful episodes, in recording order."""
        keep = np.repeat(self.success, self.episode_lengths)
        return DemoSet(self.task, self.observations[keep], self.actions[keep], self.episode_lengths[self.success],
                       self.success[self.success], self.seeds[self.success], self.max_episode_steps, self.seconds)


def _inconsistency(observations, actions, episode_lengths, success, seeds) -> str | None:
    """What is wrong with these arrays as a demonstration set, or None."""
    expected = {
        "observations": (observations, np.float32, 2), "actions": (actions, np.float32, 2),
        "episode_lengths": (episode_lengths, np.int64, 1), "success": (success, np.bool_, 1), "seeds": (seeds, np.int64, 1),
    }
    for name, (array, dtype, ndim) in expected.items():
        if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != ndim:
            found = f"{array.dtype} of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
            return f"{name} must be a {ndim}-D {np.dtype(dtype).name} array, not {found}"
    if observations.shape[1] != OBSERVATION_DIM or actions.shape[1] != ACTION_DIM:
        return (f"observations are {observations.shape[1:]} and actions {actions.shape[1:]}, "
                f"expected ({OBSERVATION_DIM},) and ({ACTION_DIM},)")
    if len(observations) != len(actions):
        return f"{len(observations)} observations for {len(actions)} actions"
    if not len(episode_lengths) == len(success) == len(seeds):
        return f"{len(episode_lengths)} episode lengths, {len(success)} success flags and {len(seeds)} seeds"
    if len(episode_lengths) and episode_lengths.min() < 1:
        return "an episode has no steps"
    if int(episode_lengths.sum()) != len(actions):
        return f"episode lengths sum to {int(episode_lengths.sum())}, but there are {len(actions)} steps"
    if not (np.isfinite(observations).all() and np.isfinite(actions).all()):
        return "observations or actions are not finite"
    return None


def rollout(env, policy) -> tuple[np.ndarray, np.ndarray, bool]:
    """One episode of ``policy`` in a freshly reset ``env``: observations and actions per step, and success."""
    observation, _ = env.reset()
    observations, actions = [], []
    terminated = truncated = False
    info: dict[str, Any] = {}
    while not (terminated or truncated):
        action = policy(observation)
        observations.append(observation)
        actions.append(action)
        observation, _, terminated, truncated, info = env.step(action)
    success = bool(info.get("success", 0.0) >= 1.0)
    return np.asarray(observations, dtype=np.float32), np.asarray(actions, dtype=np.float32), success


def record_demos(task: str, episodes: int, seed0: int = 0, *, max_episode_steps: int | None = None) -> DemoSet:
    """``episodes`` episodes of ``task``'s scripted expert, episode i on seed ``seed0 + i``; each runs until the
    task is solved or the step limit."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, not {episodes}")
    if seed0 < 0:
        raise ValueError(f"seed0 must be >= 0, not {seed0}")
    spec = task_spec(task)
    steps = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
    expert = ExpertPolicy(spec.name)
    seeds = np.arange(seed0, seed0 + episodes, dtype=np.int64)
    observations, actions, lengths, success = [], [], [], []
    start = time.perf_counter()
    for seed in progress(seeds, desc=f"{spec.name} demos", total=episodes):
        env = make_env(spec.name, int(seed), max_episode_steps=steps)
        try:
            episode_observations, episode_actions, solved = rollout(env, expert)
        finally:
            env.close()
        observations.append(episode_observations)
        actions.append(episode_actions)
        lengths.append(len(episode_actions))
        success.append(solved)
    return DemoSet(spec.name, np.concatenate(observations), np.concatenate(actions), np.asarray(lengths, dtype=np.int64),
                   np.asarray(success, dtype=bool), seeds, steps, time.perf_counter() - start)


def demo_paths(path: str | Path) -> tuple[Path, Path]:
    """The ``.npz`` and ``.json`` of a demonstration set named by either file, or by their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _atomic_write(target: Path, write) -> None:
    """``write(temporary_path)``, then rename it onto ``target``: ``target`` is either old or complete."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_demos(demos: DemoSet, path: str | Path) -> tuple[Path, Path]:
    """Write ``demos`` as ``NAME.npz`` and ``NAME.json`` (format ``spikebot-demos/1``); returns both paths."""
    array_path, manifest_path = demo_paths(path)
    array_path.parent.mkdir(parents=True, exist_ok=True)

    def write_arrays(temporary: Path) -> None:
        with temporary.open("wb") as handle:  # a file object: np.savez would append .npz to a name
            np.savez_compressed(handle, **{name: getattr(demos, name) for name in _ARRAYS})

    _atomic_write(array_path, write_arrays)
    spec = task_spec(demos.task)
    manifest = {
        "format": DEMO_FORMAT,
        "task": spec.name,
        "env": {"id": spec.env_id, "metaworld_env": f"{spec.name}-goal-observable",
                "max_episode_steps": demos.max_episode_steps,
                "observation_dim": OBSERVATION_DIM, "action_dim": ACTION_DIM, "terminate_on_success": True},
        "expert": f"{ExpertPolicy(spec.name).name}, actions clipped to [-1, 1]",
        "packages": _package_versions(),
        "episodes": demos.n_episodes,
        "steps": demos.n_steps,
        "successful_episodes": int(demos.success.sum()),
        "success_rate": demos.success_rate,
        "seeds": [int(seed) for seed in demos.seeds],
        "recording_seconds": round(demos.seconds, 3),
        "cpu": cpu_model(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spikebot_version": __version__,
        "git_commit": git_commit(),
        "npz_file": array_path.name,
        "npz_sha256": file_sha256(array_path),
    }
    _atomic_write(manifest_path, lambda temporary: temporary.write_text(json.dumps(manifest, indent=2) + "\n"))
    return array_path, manifest_path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a demonstration set, checked for its format (not yet against the arrays)."""
    array_path, manifest_path = demo_paths(path)
    if not manifest_path.is_file():
        if array_path.is_file():
            raise DemoError(f"{array_path} has no manifest {manifest_path.name}: a partial or interrupted save? Record it again")
        raise DemoError(f"no demonstrations at {path} (expected {array_path} and {manifest_path})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DemoError(f"corrupt demonstration manifest {manifest_path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != DEMO_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DemoError(f"{manifest_path} is of format {found!r}; this spikebot reads {DEMO_FORMAT!r}")
    return manifest


def load_demos(path: str | Path) -> DemoSet:
    """The demonstration set saved at ``path`` (``NAME.npz``, ``NAME.json`` or ``NAME``), checked against its
    manifest: format, checksum, and array shapes, counts, seeds and task."""
    array_path, manifest_path = demo_paths(path)
    manifest = read_manifest(path)
    if not array_path.is_file():
        raise DemoError(f"{manifest_path} describes {array_path.name}, which is missing")
    if file_sha256(array_path) != manifest.get("npz_sha256"):
        raise DemoError(f"corrupt demonstrations: {array_path} does not match the checksum in {manifest_path} "
                        "(truncated, modified, or from another recording)")
    try:
        with array_path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in _ARRAYS}
    except Exception as error:  # zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, ...
        raise DemoError(f"unreadable demonstration archive {array_path}: {type(error).__name__}: {error}") from error
    problem = _inconsistency(*(arrays[name] for name in _ARRAYS))
    if problem is None:
        if manifest.get("episodes") != len(arrays["episode_lengths"]):
            problem = f"{len(arrays['episode_lengths'])} episodes, the manifest says {manifest.get('episodes')}"
        elif manifest.get("steps") != len(arrays["actions"]):
            problem = f"{len(arrays['actions'])} steps, the manifest says {manifest.get('steps')}"
        elif manifest.get("seeds") != arrays["seeds"].tolist():
            problem = "the seeds differ from the manifest's"
    if problem:
        raise DemoError(f"demonstrations {array_path} are inconsistent with {manifest_path}: {problem}")
    try:
        task = task_spec(manifest.get("task")).name
    except ValueError as error:
        raise DemoError(f"{manifest_path}: {error}") from error
    try:
        limit = int(manifest["env"]["max_episode_steps"])
    except (KeyError, TypeError, ValueError) as error:
        raise DemoError(f"{manifest_path} lacks env.max_episode_steps") from error
    return DemoSet(task, **arrays, max_episode_steps=limit, seconds=float(manifest.get("recording_seconds", 0.0)))
