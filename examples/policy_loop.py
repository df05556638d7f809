"""Closed-loop control through the service: Metaworld episodes driven by a served diffusion policy.

    spikebot serve --policy-store runs/served &      # runs/served/<name>/: a checkpoint or a training run folder
    python examples/policy_loop.py --url http://localhost:8000 --policy button --episodes 5

Episode i runs in a fresh environment of seed SEED0 + i (``policy.envs.make_env``: Metaworld runs here, on the
client). The loop keeps the last obs_horizon observations (the first one repeated at the start, as training
windows are padded), asks ``POST /v1/policies/NAME/act`` for an action chunk, executes the chunk open loop (each
action clipped to the action space) and asks again: Diffusion Policy's receding horizon, as ``spikebot policy
eval`` runs it in process. The WebSocket ``/v1/policies/NAME/stream`` takes the same JSON requests over one
connection. Prints each episode's success, length and mean latency per chunk (the service's total_ms and the
round trip), then the success rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import gymnasium
import numpy as np

from policy.envs import EVAL_SEED0, TASKS, make_env
from server.client import LocalisationClient, ServiceError
from server.schemas import PolicyInfo


@dataclass(frozen=True)
class Episode:
    seed: int
    success: bool
    length: int
    chunks: int
    server_ms: float
    round_trip_ms: float


def run_episode(client: LocalisationClient, policy: PolicyInfo, env: gymnasium.Env, seed: int, sampler: str,
                inference_steps: int | None, noise_seed: int | None) -> Episode:
    """One episode: ask for a chunk, execute it, until the task is solved or the step limit ends it. Chunk k is
    sampled with noise seed ``noise_seed + k`` (reproducible), or fresh noise when ``noise_seed`` is None."""
    low, high = env.action_space.low, env.action_space.high
    observation, _ = env.reset()
    history = [np.asarray(observation, np.float32)] * policy.obs_horizon
    length, server_ms, round_trip_ms = 0, [], []
    while True:
        started = time.perf_counter()
        chunk = client.act(policy.name, np.stack(history), sampler=sampler, inference_steps=inference_steps,
                           seed=None if noise_seed is None else noise_seed + len(server_ms))
        round_trip_ms.append((time.perf_counter() - started) * 1e3)
        server_ms.append(chunk.server_timing.total_ms)
        for action in chunk.actions:
            observation, _, terminated, truncated, info = env.step(np.clip(np.asarray(action, np.float32), low, high))
            length += 1
            history = history[1:] + [np.asarray(observation, np.float32)]
            if terminated or truncated:
                return Episode(seed, bool(info.get("success", 0.0) >= 1.0), length, len(server_ms),
                               float(np.mean(server_ms)), float(np.mean(round_trip_ms)))


def find_policy(client: LocalisationClient, name: str) -> PolicyInfo:
    served = {info.name: info for info in client.policies().policies}
    if name not in served:
        raise SystemExit(f"the service has no policy {name!r}; it serves: {', '.join(served) or 'none'}")
    return served[name]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8000", help="service base URL")
    parser.add_argument("--policy", required=True, help="policy name (see GET /v1/policies)")
    parser.add_argument("--task", choices=list(TASKS), default=None, help="default: the task the policy was trained on")
    parser.add_argument("--api-key", default=None, help="X-API-Key, when the service requires one")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed0", type=int, default=EVAL_SEED0, help="seed of the first episode's start state")
    parser.add_argument("--max-episode-steps", type=int, default=None, help="default: the task's (500)")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument("--inference-steps", type=int, default=None, help="DDIM steps (default: the policy's)")
    parser.add_argument("--noise-seed", type=int, default=None, help="seed the sampler's noise (reproducible runs)")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.seed0 < 0:
        parser.error("--episodes must be positive and --seed0 non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with LocalisationClient(args.url, api_key=args.api_key) as client:
        try:
            client.wait_ready(timeout=120)
            policy = find_policy(client, args.policy)
            task = args.task or policy.task
            if task is None:
                raise SystemExit(f"policy {policy.name!r} does not say which task it was trained on: pass --task")
            print(f"policy {policy.name!r} ({policy.model}, step {policy.step}) on {task}: {policy.obs_horizon} "
                  f"observations in, {policy.action_horizon} actions out, {args.sampler}")
            successes = 0
            for seed in range(args.seed0, args.seed0 + args.episodes):
                env = make_env(task, seed, max_episode_steps=args.max_episode_steps)
                try:
                    episode = run_episode(client, policy, env, seed, args.sampler, args.inference_steps, args.noise_seed)
                finally:
                    env.close()
                successes += episode.success
                print(f"seed {seed}: {'success' if episode.success else 'failure'} after {episode.length} steps, "
                      f"{episode.chunks} chunks, server {episode.server_ms:.1f} ms, round trip "
                      f"{episode.round_trip_ms:.1f} ms per chunk", flush=True)
            print(f"success {successes}/{args.episodes} ({successes / args.episodes:.0%})")
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except ServiceError as error:
            print(f"service error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
