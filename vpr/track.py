"""Closed-loop tracking runs: an agent drives episodes of a place-recognition environment; what it answered, how
often it was right, over time and at its confidence threshold, what each step cost, and a plot of the route.

Metrics (per step, over every step of every episode):

- ``accuracy``: the agent's best place is one of the frame's matching references, whether or not it answered
  (the tracking accuracy, independent of the threshold);
- ``coverage``: the share of steps the agent answered (was not "unsure");
- ``precision``: of the answered steps, the share answered correctly (None when it never answered);
- ``mean_reward``: the environment's reward per step (+1 right, -penalty wrong, 0 unsure);
- ``accuracy_over_time``: accuracy in windows of ``window`` steps from the start of each episode (the sequence
  matcher's warm-up shows in the first windows);
- ``latency_ms``: the agent's time per step (method distances, sequence matching, confidence): mean, p50, p95, max.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from tqdm.auto import tqdm

from spikebot.provenance import __version__, git_commit
from vpr.agents import PlaceAgent


@dataclass
class EpisodeRecord:
    """Per step of one episode: the frame, its true place, the agent's best place, confidence and action, whether
    the best place was right, the reward and the agent's seconds."""

    seed: int | None
    speed_profile: str
    start: int
    query_index: np.ndarray
    true_place: np.ndarray
    estimate: np.ndarray
    confidence: np.ndarray
    answered: np.ndarray
    correct: np.ndarray
    reward: np.ndarray
    seconds: np.ndarray
    n_places: int = 0
    ended: str = "terminated"

    def __len__(self) -> int:
        return len(self.query_index)


def run_episode(env: gymnasium.Env, agent: PlaceAgent, *, seed: int | None = None,
                options: dict[str, Any] | None = None) -> EpisodeRecord:
    """One episode of ``agent`` in ``env`` (reset with ``seed`` and ``options``), recorded step by step."""
    observation, reset_info = env.reset(seed=seed, options=options)
    agent.reset()
    columns: dict[str, list] = {key: [] for key in ("query_index", "true_place", "estimate", "confidence", "answered",
                                                     "correct", "reward", "seconds")}
    while True:
        estimate = agent.estimate(observation)
        observation, reward, terminated, truncated, info = env.step(estimate.action)
        row = {"query_index": info["query_index"], "true_place": info["true_place"], "estimate": estimate.place,
               "confidence": estimate.confidence, "answered": not info["unsure"],
               "correct": bool(np.any(np.asarray(info["correct_places"]) == estimate.place)), "reward": reward,
               "seconds": estimate.seconds}
        for key, value in row.items():
            columns[key].append(value)
        if terminated or truncated:
            break
    return EpisodeRecord(seed=seed, speed_profile=str(reset_info.get("speed_profile", "?")),
                         start=int(reset_info.get("start", 0)), n_places=int(env.action_space.n) - 1,
                         ended="terminated" if terminated else "truncated",
                         **{key: np.asarray(values) for key, values in columns.items()})


def run_episodes(env: gymnasium.Env, agent: PlaceAgent, episodes: int, seed: int = 0,
                 options: dict[str, Any] | None = None) -> list[EpisodeRecord]:
    """``episodes`` episodes, episode ``i`` reset with seed ``seed + i`` (each reproducible on its own)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, not {episodes}")
    records = []
    with tqdm(total=episodes, desc=f"tracking ({agent.name})", unit="episode", disable=None, leave=False) as bar:
        for index in range(episodes):
            records.append(run_episode(env, agent, seed=seed + index, options=options))
            bar.set_postfix(accuracy=f"{np.mean(records[-1].correct):.3f}")
            bar.update(1)
    return records


def _share(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def accuracy_over_time(records: Sequence[EpisodeRecord], window: int = 20) -> dict[str, Any]:
    """Accuracy in windows of ``window`` steps counted from each episode's start, pooled over episodes."""
    if window < 1:
        raise ValueError(f"window must be >= 1, not {window}")
    longest = max(len(record) for record in records)
    starts = list(range(0, longest, window))
    accuracy, steps = [], []
    for start in starts:
        pooled = np.concatenate([record.correct[start : start + window] for record in records])
        accuracy.append(_share(pooled))
        steps.append(len(pooled))
    return {"window": window, "first_step": starts, "accuracy": accuracy, "steps": steps}


def summarise(records: Sequence[EpisodeRecord], window: int = 20) -> dict[str, Any]:
    """The metrics of the module docstring over ``records``, overall, per speed profile and per episode."""
    if not records:
        raise ValueError("no episodes to summarise")

    def pooled(rows: Sequence[EpisodeRecord]) -> dict[str, Any]:
        correct = np.concatenate([r.correct for r in rows]).astype(bool)
        answered = np.concatenate([r.answered for r in rows]).astype(bool)
        return {"episodes": len(rows), "steps": len(correct), "accuracy": _share(correct),
                "coverage": _share(answered), "precision": _share(correct[answered]),
                "mean_reward": _share(np.concatenate([r.reward for r in rows]))}

    seconds = np.concatenate([r.seconds for r in records]) * 1e3
    profiles = sorted({r.speed_profile for r in records})
    return {
        **pooled(records),
        "latency_ms": {"mean": float(seconds.mean()), "p50": float(np.percentile(seconds, 50)),
                       "p95": float(np.percentile(seconds, 95)), "max": float(seconds.max())},
        "accuracy_over_time": accuracy_over_time(records, window),
        "by_speed_profile": {kind: pooled([r for r in records if r.speed_profile == kind]) for kind in profiles},
        "per_episode": [{"seed": r.seed, "speed_profile": r.speed_profile, "start": r.start, "ended": r.ended,
                         **{k: v for k, v in pooled([r]).items() if k != "episodes"}} for r in records],
    }


def plot_track(records: Sequence[EpisodeRecord], title: str, path: str | Path, max_episodes: int = 4) -> Path:
    """True and estimated place along the route against the step, one panel per episode (the first
    ``max_episodes``): the true place as a line, estimates as dots (blue right, red wrong, hollow when the agent
    said "unsure")."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no window

    shown = list(records[:max_episodes])
    figure = Figure(figsize=(8, 2.4 * len(shown) + 0.6))
    axes = figure.subplots(len(shown), 1, squeeze=False)[:, 0]
    for ax, record in zip(axes, shown):
        steps = np.arange(len(record))
        true_place = np.where(record.true_place >= 0, record.true_place, np.nan)
        ax.plot(steps, true_place, color="green", lw=1.2, label="true place")
        correct, answered = record.correct.astype(bool), record.answered.astype(bool)
        for mask, colour, label in ((correct, "tab:blue", "estimate, right"), (~correct, "tab:red", "estimate, wrong")):
            sure, unsure = mask & answered, mask & ~answered
            ax.scatter(steps[sure], record.estimate[sure], s=6, color=colour, label=label)
            if unsure.any():
                ax.scatter(steps[unsure], record.estimate[unsure], s=10, facecolors="none", edgecolors=colour, lw=0.6,
                           label=f"{label}, unsure")
        ax.set(ylabel="place", ylim=(-1, max(record.n_places, int(record.true_place.max()) + 1)),
               title=f"seed {record.seed}, {record.speed_profile}: accuracy {np.mean(record.correct):.3f}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[0].legend(fontsize=7, loc="upper left", markerscale=2)
    more = f" (first {len(shown)} of {len(records)} episodes)" if len(records) > len(shown) else ""
    figure.suptitle(title + more, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def write_track(records: Sequence[EpisodeRecord], config: dict[str, Any], out_dir: str | Path, title: str,
                window: int = 20) -> dict[str, Any]:
    """Write ``results.json`` (configuration, metrics, provenance) and ``track.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"config": config, "metrics": summarise(records, window), "spikebot_version": __version__,
              "git_commit": git_commit(),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "processor": platform.machine()}}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_track(records, title, out_dir / "track.png")
    return result
