"""Place-recognition environments (issue 8): the speed-profile core, the Gymnasium contract, agents, tracking runs."""

import json
import warnings

import gymnasium
import numpy as np
import pytest
from click.testing import CliRunner
from gymnasium.utils.env_checker import check_env

import vpr  # noqa: F401  (registers the environments)
from spikebot.cli import main
from vpr.agents import PlaceAgent, confidence
from vpr.data import GroundTruth, PlaceDataset
from vpr.datasets import load_registered
from vpr.envs import ROUTE_LOCALIZATION, register_envs
from vpr.envs import route as route_module
from vpr.envs.profiles import PROFILE_KINDS, ProfileConfig, draw_speeds, drive, frame_indices, plan_path
from vpr.envs.route import RouteLocalizationEnv
from vpr.errors import DatasetError
from vpr.methods import create_method
from vpr.sequence import SequenceConfig, match_sequences
from vpr.track import EpisodeRecord, accuracy_over_time, summarise

N_DEMO = 240


def make(**kwargs):
    return gymnasium.make(ROUTE_LOCALIZATION, **kwargs)


@pytest.fixture(scope="module")
def sad_agent_factory():
    """SAD maps of the demo route's day traverse, built once (as the environment's reference_frames give it)."""
    env = make()
    references = list(env.unwrapped.reference_frames())

    def factory(sequence=SequenceConfig(), threshold=0.0):
        return PlaceAgent(create_method("sad"), sequence, threshold).build_map(references)

    return factory


# -- the pure core: speed profiles and paths --------------------------------------------------------------------
def test_constant_speed_one_visits_every_frame_once():
    positions, indices, reached = plan_path("constant", 0.0, 10, np.random.default_rng(0))
    assert reached and indices.tolist() == list(range(10)) and positions[-1] == 9


def test_drive_clips_to_the_route_and_stops_at_its_end():
    positions, reached = drive(1.0, np.array([-3.0, 2.0, 10.0, 1.0]), 6)
    assert positions.tolist() == [1.0, 0.0, 2.0, 5.0] and reached
    positions, reached = drive(0.0, np.array([1.0, 1.0]), 10)
    assert positions.tolist() == [0.0, 1.0, 2.0] and not reached
    assert frame_indices(np.array([0.49, 0.5, 1.5, 2.51])).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", PROFILE_KINDS)
def test_profiles_are_seeded_and_shaped_as_documented(kind):
    speeds = draw_speeds(kind, 2000, np.random.default_rng(5))
    assert np.array_equal(speeds, draw_speeds(kind, 2000, np.random.default_rng(5)))
    config = ProfileConfig()
    if kind == "constant":
        assert np.all(speeds == 1.0)
    elif kind == "varying":
        assert speeds.min() >= config.min_factor and speeds.max() <= config.max_factor and speeds.std() > 0.15
        assert 0.85 < speeds.mean() < 1.15
    elif kind == "stops":
        assert set(np.unique(speeds)) == {0.0, 1.0} and 0.05 < np.mean(speeds == 0) < 0.3
    else:
        assert set(np.unique(speeds)) == {config.reverse_factor, 1.0} and 0.03 < np.mean(speeds < 0) < 0.2


def test_stops_repeat_frames_and_reversals_go_back():
    _, stops, _ = plan_path("stops", 0.0, 200, np.random.default_rng(1))
    _, reversals, _ = plan_path("reversals", 0.0, 200, np.random.default_rng(1))
    assert np.any(np.diff(stops) == 0) and np.all(np.diff(stops) >= 0)
    assert np.any(np.diff(reversals) < 0)
    for indices in (stops, reversals):
        assert indices[0] == 0 and indices[-1] == 199


@pytest.mark.parametrize("kwargs", [{"speed": 0.0}, {"speed": float("nan")}, {"min_factor": 2.0}, {"reverse_factor": 0.5}, {"mean_gap": 0}])
def test_profile_config_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        ProfileConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown speed profile"):
        draw_speeds("zigzag", 10, np.random.default_rng(0))


# -- the Gymnasium contract ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"odometry_noise": 0.1, "speed_profile": "reversals"}, {"obs_size": (24, 32), "start": "random"}])
def test_check_env_passes_without_warnings(kwargs, monkeypatch):
    monkeypatch.setattr(route_module, "display_available", lambda: True)  # so check_env can try render_mode="human"
    env = make(render_mode="rgb_array", **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    complaints = [str(w.message) for w in caught if "cannot open windows" not in str(w.message)]
    assert complaints == []


def test_spaces_and_registration():
    register_envs()  # again: a no-op
    env = make()
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (48, 64, 3), np.uint8)
    assert env.action_space == gymnasium.spaces.Discrete(N_DEMO + 1) and env.unwrapped.unsure_action == N_DEMO
    odometry = make(odometry_noise=0.0).observation_space
    assert set(odometry.spaces) == {"image", "odometry"}


def test_manipulation_tasks_share_the_namespace():
    from policy.envs import TASKS
    from policy.envs import register_envs as register_policy_envs

    register_policy_envs()
    register_envs()
    spikebot_ids = {env_id for env_id in gymnasium.registry if env_id.startswith("spikebot/")}
    assert {ROUTE_LOCALIZATION, *(spec.env_id for spec in TASKS.values())} <= spikebot_ids


def run_actions(env, actions, seed=None, options=None):
    observation, info = env.reset(seed=seed, options=options)
    seen, infos, rewards = [observation], [info], []
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        seen.append(observation)
        infos.append(info)
        rewards.append(reward)
        if terminated or truncated:
            break
    return seen, infos, rewards


def test_same_seed_same_episode_other_seed_other_episode():
    actions = [7] * 300
    first = run_actions(make(), actions, seed=3)
    again = run_actions(make(), actions, seed=3)
    other = run_actions(make(), actions, seed=4)
    assert len(first[0]) == len(again[0]) and all(np.array_equal(a, b) for a, b in zip(first[0], again[0]))
    assert [i.get("query_index") for i in first[1]] == [i.get("query_index") for i in again[1]]
    assert [i.get("query_index") for i in first[1]] != [i.get("query_index") for i in other[1]]
    env = make(odometry_noise=0.2)  # the odometry noise comes from the same seeded generator
    odometry = [[o["odometry"][0] for o in run_actions(env, actions[:20], seed=9)[0]] for _ in range(2)]
    assert odometry[0] == odometry[1]


def test_reward_termination_and_info_at_constant_speed():
    env = make(speed_profile="constant", wrong_penalty=0.5)
    observation, info = env.reset(seed=0)
    assert info == {"speed_profile": "constant", "start": 0}
    reference = load_registered("demo").query
    rewards = []
    for step in range(N_DEMO):  # at speed 1 from the start, step t shows query frame t
        assert np.array_equal(observation, reference[step])
        action = [step, N_DEMO, (step + 100) % N_DEMO][step % 3]
        observation, reward, terminated, truncated, info = env.step(action)
        assert info["query_index"] == step == info["true_place"] and step in info["correct_places"]
        rewards.append(reward)
        assert terminated == (step == N_DEMO - 1) and not truncated
    assert rewards[:3] == [1.0, 0.0, -0.5] and sum(rewards) == pytest.approx(80 - 0.5 * 80)
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(0)


def test_tolerance_counts_neighbours_and_the_step_limit_truncates():
    env = make(speed_profile="constant", tolerance=2, max_episode_steps=5)
    env.reset(seed=0)
    outcomes = [env.step(2)[1:4] for _ in range(5)]
    assert [reward for reward, *_ in outcomes] == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert outcomes[-1][1:] == (False, True)


def test_odometry_reports_the_distance_driven():
    env = make(speed_profile="constant", speed=1.5, odometry_noise=0.0)
    observation, _ = env.reset(seed=0)
    assert observation["odometry"].tolist() == [0.0]
    observation, *_ = env.step(0)
    assert observation["odometry"].tolist() == [1.5]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_environments(mode):
    envs = gymnasium.make_vec(ROUTE_LOCALIZATION, num_envs=2, vectorization_mode=mode, speed_profile="stops")
    observations, infos = envs.reset(seed=[1, 2])
    assert observations.shape == (2, 48, 64, 3) and observations.dtype == np.uint8
    for _ in range(5):
        observations, rewards, _, _, infos = envs.step(np.array([0, N_DEMO]))
    assert rewards.shape == (2,) and rewards[1] == 0.0 and list(infos["query_index"]) == list(infos["true_place"])
    envs.close()


@pytest.mark.parametrize("kwargs, match", [
    ({"speed_profile": "zigzag"}, "unknown speed_profile"),
    ({"speed": -1}, "speed"),
    ({"speed": 0}, "speed"),
    ({"obs_size": (48,)}, "obs_size"),
    ({"obs_size": (0, 64)}, "obs_size"),
    ({"start": 240}, "start"),
    ({"start": "middle"}, "start"),
    ({"wrong_penalty": -1}, "wrong_penalty"),
    ({"odometry_noise": "high"}, "odometry_noise"),
])
def test_malformed_arguments_are_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)
    with pytest.raises(ValueError, match="render_mode"):
        RouteLocalizationEnv(render_mode="ansi")  # (through make, Gymnasium warns first)


def test_malformed_datasets_options_and_actions_are_refused_clearly(monkeypatch):
    with pytest.raises(DatasetError, match="unknown dataset"):
        make(dataset="atlantis")
    with pytest.raises(DatasetError, match="no traverse"):
        make(query="dusk")
    with pytest.raises(TypeError, match="unexpected keyword argument 'speeed'"):
        make(speeed=2)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(route_module.sys, "platform", "linux")
    with pytest.raises(ValueError, match="needs a display"):
        make(render_mode="human")
    env = make()
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"speed": 2})
    with pytest.raises(ValueError, match="unknown speed_profile"):
        env.reset(options={"speed_profile": "fast"})
    env.reset(seed=0)
    for action in (-1, N_DEMO + 1, 2.5):
        with pytest.raises(ValueError, match="action must be"):
            env.unwrapped.step(action)


def test_a_place_dataset_object_works_and_refuses_registry_arguments():
    demo = load_registered("demo")
    truth = GroundTruth.from_pairs(np.array([[0, 5], [2, 6], [2, 7]]), 4, 8)  # query 1 and 3 have no match
    data = PlaceDataset("tiny", demo.reference.subset(range(8)), demo.query.subset(range(4)), truth)
    env = RouteLocalizationEnv(data, speed_profile="constant")
    env.reset(seed=0)
    infos = [env.step(env.unsure_action)[4] for _ in range(4)]
    assert [i["true_place"] for i in infos] == [5, -1, 7, -1] and env.action_space.n == 9
    with pytest.raises(ValueError, match="registered dataset name"):
        RouteLocalizationEnv(data, split="test")


def test_rgb_array_render_shows_camera_estimate_and_map():
    env = make(render_mode="rgb_array", speed_profile="constant")
    observation, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48 + 4 + 12, 2 * 64 + 4, 3) and np.array_equal(frame[:48, :64], observation)
    env.step(100)  # wrong: the reference image of place 100 and a red estimate
    frame = env.render()
    assert np.array_equal(frame[:48, 68:], load_registered("demo").reference[100])
    strip = frame[52:]
    assert (strip == [255, 60, 60]).all(axis=-1).any() and (strip == [80, 255, 80]).all(axis=-1).any()


# -- agents ---------------------------------------------------------------------------------------------------
def test_confidence_matches_the_service_definition():
    assert confidence(np.array([1.0, 2.0, 3.0, 6.0])) == pytest.approx((2 - 1) / (3 - 1))
    assert confidence(np.array([5.0, 5.0])) == 0.0 and confidence(np.array([1.0])) == 0.0
    assert confidence(np.array([0.0, 10.0, 10.0]), best=0) == 1.0
    row = np.random.default_rng(0).random(20)
    assert confidence(3 * row - 7) == pytest.approx(confidence(row))  # unchanged by scale and offset


def test_agent_online_equals_offline_matching(sad_agent_factory):
    sequence = SequenceConfig(length=5)
    agent = sad_agent_factory(sequence)
    env = make(speed_profile="constant", max_episode_steps=40)
    observation, _ = env.reset(seed=0)
    agent.reset()
    online = []
    for _ in range(40):
        online.append(agent.act(observation))
        observation, *_ = env.step(online[-1])
    distances = agent.method.distances(load_registered("demo").query.subset(range(40)))
    assert online == np.argmin(match_sequences(distances, sequence), axis=1).tolist()


def test_agent_threshold_and_dict_observations(sad_agent_factory):
    always, never = sad_agent_factory(threshold=0.0), sad_agent_factory(threshold=1.0)
    env = make(odometry_noise=0.1, speed_profile="constant")
    observation, _ = env.reset(seed=0)
    estimate = always.estimate(observation)
    assert estimate.action == estimate.place and not estimate.unsure and estimate.seconds > 0
    assert never.act(observation) in (N_DEMO, never.last.place)  # unsure unless the confidence is exactly 1
    with pytest.raises(ValueError, match="confidence_threshold"):
        PlaceAgent(create_method("sad"), confidence_threshold=1.5)


def tracking_accuracy(agent, kind, seeds, **env_arguments):
    env = make(speed_profile=kind, **env_arguments)
    correct = []
    for seed in seeds:
        observation, _ = env.reset(seed=seed)
        agent.reset()
        while True:
            place = agent.estimate(observation).place
            observation, _, terminated, truncated, info = env.step(place)
            correct.append(place in info["correct_places"])
            if terminated or truncated:
                break
    return float(np.mean(correct))


def test_velocity_search_earns_its_place_under_varying_speed(sad_agent_factory):
    """On the demo route at varying speed, SeqSLAM's velocity search tracks far better than the fixed diagonal."""
    diagonal = tracking_accuracy(sad_agent_factory(SequenceConfig(10)), "varying", [0, 1])
    search = SequenceConfig(10, "seqslam", min_velocity=0.4, max_velocity=1.6, velocity_steps=13)
    velocity = tracking_accuracy(sad_agent_factory(search), "varying", [0, 1])
    assert velocity > diagonal + 0.15, (diagonal, velocity)


def test_odometry_windows_follow_speed_changes_stops_and_reversals(sad_agent_factory):
    """With the distance driven (5% noise per nominal step), the window spans places, not frames: over four
    100-step episodes of the demo route it tracks at varying speed, through stops and reversals, better than the
    frame-spaced diagonal (0.77 against 0.30 at varying speed, 0.84 against 0.67 with stops, 0.85 against 0.74
    with reversals)."""
    accuracies = {}
    for profile, margin in (("varying", 0.3), ("stops", 0.1), ("reversals", 0.07)):
        by_place, by_frame = (tracking_accuracy(sad_agent_factory(sequence), profile, [0, 1, 2, 3], odometry_noise=0.05,
                                                max_episode_steps=100)
                              for sequence in (SequenceConfig(10, "odometry"), SequenceConfig(10)))
        accuracies[profile] = (by_frame, by_place)
        assert by_place > by_frame + margin, accuracies


def test_odometry_agent_refuses_observations_without_odometry(sad_agent_factory):
    agent = sad_agent_factory(SequenceConfig(5, "odometry"))
    observation, _ = make(speed_profile="constant").reset(seed=0)
    with pytest.raises(ValueError, match="odometry_noise"):
        agent.act(observation)


# -- tracking runs --------------------------------------------------------------------------------------------
def record(correct, answered, speed_profile="constant"):
    n = len(correct)
    return EpisodeRecord(seed=0, speed_profile=speed_profile, start=0, query_index=np.arange(n), true_place=np.arange(n),
                         estimate=np.arange(n), confidence=np.ones(n), answered=np.array(answered, dtype=bool),
                         correct=np.array(correct, dtype=bool), reward=np.zeros(n), seconds=np.full(n, 0.002), n_places=n)


def test_summary_by_hand():
    records = [record([1, 1, 0, 0], [1, 0, 1, 0]), record([1, 0], [0, 0], "stops")]
    summary = summarise(records, window=2)
    assert summary["steps"] == 6 and summary["accuracy"] == pytest.approx(3 / 6)
    assert summary["coverage"] == pytest.approx(2 / 6) and summary["precision"] == pytest.approx(1 / 2)
    assert summary["accuracy_over_time"]["accuracy"] == [pytest.approx(3 / 4), 0.0]
    assert summary["accuracy_over_time"]["steps"] == [4, 2]
    assert summary["by_speed_profile"]["stops"]["precision"] is None
    assert summary["latency_ms"]["p50"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        accuracy_over_time(records, window=0)


def run_cli(*args):
    return CliRunner().invoke(main, ["vpr", "track", *args], catch_exceptions=False)


def test_track_command_writes_results_and_plot(tmp_path):
    result = run_cli("--episodes", "2", "--max-steps", "30", "--seq-mode", "seqslam", "--velocities", "0.5:1.5:5",
                     "--velocity-phases", "3", "--threshold", "0.2", "--speed-profile", "stops", "--env-option", "wrong_penalty=2",
                     "--env-option", "obs_size=[24,32]", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    sequence = saved["config"]["agent"]["sequence"]
    assert sequence["velocity_steps"] == 5 and sequence["velocity_phases"] == 3 and saved["config"]["obs_size"] == [24, 32]
    assert saved["config"]["env_options"] == {"wrong_penalty": 2, "obs_size": [24, 32]}
    metrics = saved["metrics"]
    assert metrics["steps"] == 60 and [e["ended"] for e in metrics["per_episode"]] == ["truncated"] * 2
    assert 0 <= metrics["accuracy"] <= 1 and metrics["latency_ms"]["p95"] > 0 and "stops" in metrics["by_speed_profile"]
    assert (tmp_path / "track.png").stat().st_size > 0
    assert "precision" in result.output and "latency" in result.output


@pytest.mark.parametrize("args, message", [
    (["--env-option", "colour=red"], "KEY=VALUE"),
    (["--env-option", "speed"], "KEY=VALUE"),
    (["--env-option", "speed=-2"], "speed"),
    (["--velocities", "1:2"], "MIN:MAX:STEPS"),
    (["--seq-mode", "diagonal", "--velocities", "0.5:1.5:3"], "seqslam"),
    (["--seq-mode", "odometry", "--velocity-phases", "3"], "seqslam"),
    (["--dataset", "demo", "--query", "dusk"], "no traverse"),
    (["--seq-mode", "odometry"], "odometry_noise"),
])
def test_track_command_refuses_malformed_options(args, message, tmp_path):
    result = run_cli(*args, "--episodes", "1", "--max-steps", "3", "--out", str(tmp_path))
    assert result.exit_code != 0 and message in result.output
