"""Manipulation tasks and expert demonstrations: the env contract, the experts, the demo format and its refusals."""

import json
import warnings

import gymnasium
import numpy as np
import pytest
from click.testing import CliRunner

from policy.demos import DEMO_FORMAT, DemoError, DemoSet, demo_paths, load_demos, record_demos, save_demos
from policy.envs import ACTION_DIM, OBSERVATION_DIM, TASKS, ExpertPolicy, expert_policy, make_env, register_envs
from spikebot.cli import main
from vpr.errors import SpikebotError

EASIEST = sorted(TASKS, key=lambda name: TASKS[name].difficulty)[:2]


def run_expert(task, seed):
    env = make_env(task, seed)
    policy = expert_policy(task)
    observation, _ = env.reset()
    for step in range(1, TASKS[task].max_episode_steps + 1):
        observation, _, terminated, truncated, info = env.step(policy(observation))
        if terminated or truncated:
            return bool(terminated and info["success"]), step
    raise AssertionError("the time limit did not end the episode")


def test_four_graded_tasks_with_metaworld_names():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert list(TASKS) == ["button-press-v3", "drawer-open-v3", "push-v3", "pick-place-v3"]
    assert sorted(spec.difficulty for spec in TASKS.values()) == [1, 2, 3, 4]
    assert all(name in ALL_V3_ENVIRONMENTS for name in TASKS)


@pytest.mark.parametrize("task", EASIEST)
def test_the_expert_solves_the_easiest_tasks(task):
    outcomes = [run_expert(task, seed) for seed in range(5)]
    assert sum(success for success, _ in outcomes) >= 4, outcomes
    assert all(steps < TASKS[task].max_episode_steps for success, steps in outcomes if success)


def test_the_env_contract():
    env = make_env("push-v3", 3)
    assert env.observation_space.shape == (OBSERVATION_DIM,) and env.action_space.shape == (ACTION_DIM,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    observation, _ = env.reset()
    assert env.observation_space.contains(observation)  # Metaworld's own space has goal bounds 0..0
    assert np.any(observation[36:39] != 0)  # the goal is observed
    again, _ = env.reset(seed=3)  # the construction seed: the same start
    assert np.array_equal(again, observation)
    other, _ = env.reset(seed=4)  # another seed: that seed's episode, not a replay of seed 3
    assert np.array_equal(other, make_env("push-v3", 4).reset()[0]) and not np.array_equal(other, observation)
    with pytest.raises(ValueError, match="seed"):
        make_env("push-v3", -1)
    with pytest.raises(ValueError, match="known tasks"):
        make_env("reach-v3", 0)


def test_gymnasium_make_and_the_step_limit():
    register_envs()
    register_envs()  # again: no warning, no error
    env = gymnasium.make("spikebot/button-press-v3", seed=0, max_episode_steps=5)
    env.reset()
    ends = [env.step(np.zeros(ACTION_DIM, dtype=np.float32))[2:4] for _ in range(5)]
    assert ends == [(False, False)] * 4 + [(False, True)]  # truncated at the limit, not terminated


def test_same_seed_same_episode_other_seed_other_start():
    def observations(seed, steps=20):
        env, policy = make_env("push-v3", seed), expert_policy("push-v3")
        observation, _ = env.reset()
        seen = [observation]
        for _ in range(steps):
            observation = env.step(policy(observation))[0]
            seen.append(observation)
        return np.array(seen)

    first = observations(7)
    assert np.array_equal(first, observations(7))
    assert not np.array_equal(first[0], observations(8)[0])


def test_expert_actions_are_clipped_to_the_action_space():
    env, expert = make_env("push-v3", 0), ExpertPolicy("push-v3")
    observation, _ = env.reset()
    raw_extremes = []
    for _ in range(60):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = expert.script.get_action(observation)
        action = expert(observation)
        assert action.dtype == np.float32 and np.array_equal(action, np.clip(raw, -1, 1).astype(np.float32))
        raw_extremes.append(np.abs(raw).max())
        observation, _, terminated, _, _ = env.step(action)
        if terminated:
            break
    assert max(raw_extremes) > 1  # the script alone would leave the action space


@pytest.fixture(scope="module")
def recorded() -> DemoSet:
    return record_demos("button-press-v3", 3, seed0=10)


@pytest.fixture
def saved(recorded, tmp_path):
    array_path, manifest_path = save_demos(recorded, tmp_path / "demos" / "button")
    return array_path, manifest_path


def test_record_save_load_round_trip(recorded, saved):
    array_path, manifest_path = saved
    assert recorded.n_episodes == 3 and list(recorded.seeds) == [10, 11, 12] and recorded.success.all()
    assert recorded.observations.shape == (recorded.n_steps, OBSERVATION_DIM) and recorded.actions.dtype == np.float32
    assert (array_path.name, manifest_path.name) == ("button.npz", "button.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == DEMO_FORMAT and manifest["task"] == "button-press-v3"
    assert manifest["episodes"] == 3 and manifest["steps"] == recorded.n_steps and manifest["seeds"] == [10, 11, 12]
    assert manifest["packages"]["metaworld"] and manifest["packages"]["mujoco"] and "git_commit" in manifest
    for path in (array_path, manifest_path, array_path.with_suffix("")):
        loaded = load_demos(path)
        for name in ("observations", "actions", "episode_lengths", "success", "seeds"):
            assert np.array_equal(getattr(loaded, name), getattr(recorded, name)), name
        assert loaded.task == recorded.task and loaded.max_episode_steps == 500
    assert not list(array_path.parent.glob(".*partial"))  # no temporary file left behind


def test_episodes_and_the_successful_subset(recorded):
    observations, actions = recorded.episode(1)
    start = recorded.episode_lengths[0]
    assert np.array_equal(observations, recorded.observations[start : start + recorded.episode_lengths[1]])
    assert len(actions) == recorded.episode_lengths[1]
    mixed = DemoSet(recorded.task, recorded.observations, recorded.actions, recorded.episode_lengths,
                    np.array([True, False, True]), recorded.seeds)
    kept = mixed.successful()
    assert list(kept.seeds) == [10, 12] and kept.n_steps == recorded.n_steps - recorded.episode_lengths[1]
    assert np.array_equal(kept.episode(1)[0], recorded.episode(2)[0])


def test_inconsistent_arrays_are_refused(recorded):
    with pytest.raises(DemoError, match="episode lengths sum"):
        DemoSet(recorded.task, recorded.observations, recorded.actions, recorded.episode_lengths + 1,
                recorded.success, recorded.seeds)
    with pytest.raises(DemoError, match="float32"):
        DemoSet(recorded.task, recorded.observations.astype(np.float64), recorded.actions, recorded.episode_lengths,
                recorded.success, recorded.seeds)


def test_missing_manifest_is_a_partial_save(saved):
    array_path, manifest_path = saved
    manifest_path.unlink()
    with pytest.raises(DemoError, match="has no manifest .*partial"):
        load_demos(array_path)


def test_nothing_there(tmp_path):
    with pytest.raises(DemoError, match="no demonstrations at"):
        load_demos(tmp_path / "absent.npz")


def test_truncated_arrays_fail_the_checksum(saved):
    array_path, _ = saved
    data = array_path.read_bytes()
    array_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DemoError, match="corrupt demonstrations: .* does not match the checksum"):
        load_demos(array_path)


def test_corrupt_archive_with_a_matching_checksum(saved):
    from spikebot.artefacts import file_sha256

    array_path, manifest_path = saved
    array_path.write_bytes(b"PK\x03\x04 not a zip archive")
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "npz_sha256": file_sha256(array_path)}))
    with pytest.raises(DemoError, match="unreadable demonstration archive"):
        load_demos(array_path)


def test_another_format_version_is_refused(saved):
    array_path, manifest_path = saved
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format": "spikebot-demos/2"}))
    with pytest.raises(DemoError, match="format 'spikebot-demos/2'; this spikebot reads 'spikebot-demos/1'"):
        load_demos(array_path)


def test_corrupt_manifest_and_a_manifest_of_other_arrays(saved, tmp_path):
    array_path, manifest_path = saved
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "steps": manifest["steps"] + 1}))
    with pytest.raises(DemoError, match="inconsistent with .*steps"):
        load_demos(array_path)
    manifest_path.write_text('{"format": "spikebot-demos/1", ')
    with pytest.raises(DemoError, match="corrupt demonstration manifest"):
        load_demos(array_path)


def test_a_save_over_an_existing_set_replaces_it(recorded, saved):
    array_path, _ = saved
    shorter = DemoSet(recorded.task, *(a[: recorded.episode_lengths[0]] for a in (recorded.observations, recorded.actions)),
                      recorded.episode_lengths[:1], recorded.success[:1], recorded.seeds[:1])
    save_demos(shorter, array_path)
    assert load_demos(array_path).n_episodes == 1


def test_demo_paths():
    assert demo_paths("a/push-v3.npz") == demo_paths("a/push-v3.json") == demo_paths("a/push-v3")
    assert demo_paths("a/push-v3")[0].name == "push-v3.npz"


def test_cli_records_two_episodes(tmp_path):
    out = tmp_path / "demos" / "button.npz"
    result = CliRunner().invoke(main, ["policy", "demos", "--task", "button-press-v3", "--episodes", "2", "--seed", "5",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "button-press-v3: 2/2 episodes successful (100.0%)" in result.output and "steps/s" in result.output
    demos = load_demos(out)
    assert list(demos.seeds) == [5, 6] and demos.success.all()


def test_cli_refuses_an_unknown_task(tmp_path):
    result = CliRunner().invoke(main, ["policy", "demos", "--task", "reach-v3", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "reach-v3" in result.output
    assert not (tmp_path / "x.npz").exists()


def test_demo_error_is_a_user_error():
    assert issubclass(DemoError, SpikebotError)


def test_observation_history_and_action_chunks_through_gymnasium_make():
    """The wrappers a diffusion policy needs: the last 2 observations in, 8 actions executed per step; the same
    episode as stepping the plain environment action by action."""
    register_envs()
    chunked = gymnasium.make("spikebot/push-v3", seed=5, obs_horizon=2, action_horizon=8)
    plain = make_env("push-v3", 5)
    assert chunked.observation_space.shape == (2, OBSERVATION_DIM) and chunked.action_space.shape == (8, ACTION_DIM)
    history, _ = chunked.reset()
    first, _ = plain.reset()
    assert np.array_equal(history[0], first) and np.array_equal(history[1], first)  # the reset frame repeated
    expert = expert_policy("push-v3")
    chunk = np.stack([expert(first)] * 8)
    history, reward, terminated, truncated, info = chunked.step(chunk)
    seen, rewards = [first], []
    for action in chunk:
        observation, step_reward, *_ = plain.step(action)
        seen.append(observation)
        rewards.append(step_reward)
    assert np.allclose(history, np.stack(seen[-2:])) and reward == pytest.approx(sum(rewards))
    assert info["executed"] == 8 and not (terminated or truncated)
    with pytest.raises(ValueError, match="chunk of shape"):
        chunked.step(np.zeros((4, ACTION_DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="action_horizon must be an int >= 1"):
        gymnasium.make("spikebot/push-v3", seed=5, action_horizon=0)


def test_a_chunk_stops_at_the_episode_end():
    register_envs()
    env = gymnasium.make("spikebot/button-press-v3", seed=0, action_horizon=4, max_episode_steps=3)
    env.reset()
    zeros = np.zeros((4, ACTION_DIM), dtype=np.float32)
    assert [env.step(zeros)[3] for _ in range(3)] == [False, False, True]  # max_episode_steps counts chunks
    env = gymnasium.make("spikebot/button-press-v3", seed=0, action_horizon=8)
    env.reset()
    zeros = np.zeros((8, ACTION_DIM), dtype=np.float32)
    outcomes = [env.step(zeros) for _ in range(63)]  # Metaworld's 500 steps end inside the 63rd chunk
    assert not any(truncated for *_, truncated, _ in outcomes[:62])
    assert outcomes[-1][3] and outcomes[-1][4]["executed"] == 500 - 62 * 8


@pytest.mark.parametrize("wrappers", [{}, {"obs_horizon": 2, "action_horizon": 8}])
def test_check_env_passes(wrappers):
    from gymnasium.utils.env_checker import check_env

    register_envs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Metaworld's unbounded observation space, no render mode
        check_env(gymnasium.make("spikebot/drawer-open-v3", seed=0, **wrappers), skip_render_check=True)
