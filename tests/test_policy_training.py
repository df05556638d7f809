"""Training a diffusion policy: windows and padding, a tiny run through the CLI, exact resumption, evaluation
metrics, a runner that fails loudly, and clear refusals of malformed inputs."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from policy.cli import MODELS, policy
from policy.dataset import DemoWindows, WindowSpec, window_indices
from policy.demos import DemoSet, load_demos, record_demos, save_demos
from policy.diffusion import DiffusionPolicy
from policy.models import NETWORKS
from policy.runner import RunnerError, evaluate
from policy.workspace import TrainConfig, TrainError, checkpoints, learning_rate, train

TASK = "button-press-v3"
TINY = {"embed_dim": 32, "n_layers": 1, "n_heads": 2}
TINY_STMDP = {**TINY, "code_dim": 16, "n_cond_layers": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py; the CLI's --threads 1 is undone too


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    """Two short expert episodes (40-step limit: the expert presses the button in ~60, so both are failures
    unless kept; the windows need only steps), saved as spikebot-demos/1."""
    demos = record_demos(TASK, 2, 0, max_episode_steps=40)
    demos = DemoSet(demos.task, demos.observations, demos.actions, demos.episode_lengths,
                    np.ones(2, dtype=bool), demos.seeds, demos.max_episode_steps)  # train on them as successes
    path = tmp_path_factory.mktemp("demos") / "button.npz"
    save_demos(demos, path)
    return path


def toy_demos(lengths):
    """Episode e, step t: observation [100 e + t, ...] and action [-(100 e + t), ...]."""
    values = np.concatenate([100 * e + np.arange(n) for e, n in enumerate(lengths)]).astype(np.float32)
    observations = np.repeat(values[:, None], 39, axis=1)
    actions = np.repeat(-values[:, None], 4, axis=1)
    n = len(lengths)
    return DemoSet(TASK, observations, actions, np.asarray(lengths, dtype=np.int64), np.ones(n, dtype=bool),
                   np.arange(n, dtype=np.int64))


def test_windows_pad_with_the_first_observation_and_the_last_action_and_never_cross_episodes():
    spec = WindowSpec(obs_horizon=2, pred_horizon=4, action_horizon=2)
    # starts -1 (pad before: obs_horizon - 1) .. L - H + action_horizon - 1 = 2 (pad after: action_horizon - 1)
    assert window_indices(5, spec).tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4]]
    windows = DemoWindows(toy_demos([5, 3]), spec)
    # episode 1 (L = 3): starts -1 .. 0
    assert len(windows) == 4 + 2
    assert windows.obs[:, :, 0].tolist() == [[0, 0], [0, 1], [1, 2], [2, 3], [100, 100], [100, 101]]
    assert (-windows.action[:, :, 0]).tolist() == [
        [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4], [100, 100, 101, 102], [100, 101, 102, 102]]
    # Diffusion Policy's horizons: an episode of L steps gives L - 16 + 8 + 1 windows
    assert len(DemoWindows(toy_demos([60]))) == 60 - 16 + 8 + 1
    with pytest.raises(ValueError, match="no training windows"):
        DemoWindows(toy_demos([3]))


def test_batches_are_epochs_without_replacement_and_a_function_of_seed_and_step():
    windows = DemoWindows(toy_demos([5, 3]), WindowSpec(2, 4, 2))  # 6 windows
    stream = torch.cat([windows.batch_indices(step, 4, seed=7) for step in range(3)])  # 12 = two epochs
    assert sorted(stream[:6].tolist()) == list(range(6)) and sorted(stream[6:].tolist()) == list(range(6))
    assert torch.equal(DemoWindows(toy_demos([5, 3]), WindowSpec(2, 4, 2)).batch_indices(2, 4, seed=7), stream[8:])
    assert not torch.equal(windows.batch_indices(0, 6, seed=8), windows.batch_indices(0, 6, seed=7))


def test_learning_rate_warms_up_then_decays_to_zero():
    config = TrainConfig(task=TASK, model="transformer", steps=100, lr=1e-3, lr_warmup_steps=10)
    assert learning_rate(config, 0) == pytest.approx(1e-4)
    assert learning_rate(config, 9) == pytest.approx(1e-3)
    assert learning_rate(config, 55) == pytest.approx(5e-4)
    assert learning_rate(config, 100) == pytest.approx(0.0)


def train_args(demo_file, run_dir, model, steps, *extra):
    network = TINY_STMDP if model == "stmdp" else TINY
    return ["train", "--task", TASK, "--model", model, "--demos", str(demo_file), "--steps", str(steps),
            "--batch-size", "8", "--warmup-steps", "2", "--lr", "1e-3", "--eval-every", "4", "--eval-episodes", "2",
            "--eval-max-episode-steps", "16", "--checkpoint-every", "2", "--network", json.dumps(network),
            "--device", "cpu", "--threads", "1", "--run-dir", str(run_dir), *extra]


@pytest.mark.parametrize("model", ["transformer", "stmdp"])
def test_cli_trains_checkpoints_and_resumes_exactly(tmp_path, demo_file, model):
    cli = CliRunner()
    whole = cli.invoke(policy, train_args(demo_file, tmp_path / "whole", model, 6))
    assert whole.exit_code == 0, whole.output
    assert "checkpoint" in whole.output
    run = tmp_path / "whole"
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == "spikebot-policy-train/1" and config["config"]["model"] == model
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["loss"]) == 6 and all(np.isfinite(metrics["loss"]))
    assert [row["step"] for row in metrics["eval"]] == [4, 6]
    assert [step for step, _ in checkpoints(run)] == [4, 6]  # keep_checkpoints = 2
    manifest = json.loads((run / "checkpoints/step_0000006/policy.json").read_text())
    assert manifest["metadata"]["step"] == 6 and manifest["metadata"]["train_config"]["steps"] == 6

    # interrupted after 3 steps (the checkpoint of step 2 is the last one), then run again: resumes from step 2
    part = tmp_path / "part"
    first = cli.invoke(policy, train_args(demo_file, part, model, 3))
    assert first.exit_code == 0, first.output
    shutil.rmtree(part / "checkpoints/step_0000003")  # as if killed between the checkpoints of steps 2 and 4
    # (steps 0 and 1 are in the 2-step warm-up, so their learning rates do not depend on --steps 3 or 6)
    resumed = cli.invoke(policy, train_args(demo_file, part, model, 6))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "from 2" in resumed.output
    resumed_metrics = json.loads((part / "metrics.json").read_text())
    assert resumed_metrics["loss"] == metrics["loss"]  # the same six losses, bit for bit
    a = torch.load(run / "checkpoints/step_0000006/weights.pt", weights_only=True)
    b = torch.load(part / "checkpoints/step_0000006/weights.pt", weights_only=True)
    for kind in ("network", "ema"):
        assert all(torch.equal(a[kind][name], b[kind][name]) for name in a[kind]), kind
    sa = torch.load(run / "checkpoints/step_0000006/train_state.pt", weights_only=True)
    sb = torch.load(part / "checkpoints/step_0000006/train_state.pt", weights_only=True)
    assert all(torch.equal(sa["optimiser"]["state"][k]["exp_avg"], sb["optimiser"]["state"][k]["exp_avg"])
               for k in sa["optimiser"]["state"])
    assert [row["success"] for row in resumed_metrics["eval"]] == [row["success"] for row in metrics["eval"]]

    # a finished run run again does nothing more; a changed configuration is refused
    again = cli.invoke(policy, train_args(demo_file, part, model, 6))
    assert again.exit_code == 0 and "from 6" in again.output
    other = cli.invoke(policy, train_args(demo_file, part, model, 6, "--seed", "1"))
    assert other.exit_code != 0 and "another configuration" in other.output and "seed" in other.output
    refused = cli.invoke(policy, train_args(demo_file, part, model, 8, "--no-resume"))
    assert refused.exit_code != 0 and "already holds a run" in refused.output


def test_resuming_on_other_demonstrations_under_the_same_name_is_refused(tmp_path, demo_file):
    demos = tmp_path / "demos.npz"
    for suffix in (".npz", ".json"):
        shutil.copy(demo_file.with_suffix(suffix), demos.with_suffix(suffix))
    config = TrainConfig(task=TASK, model="transformer", demos=str(demos), steps=1, batch_size=4, network=TINY,
                         eval_episodes=0, device="cpu")
    train(config, tmp_path / "run", progress=False)
    save_demos(record_demos(TASK, 1, 5, max_episode_steps=150), demos)
    with pytest.raises(TrainError, match="checksum differs"):
        train(TrainConfig(**{**config.to_dict(), "steps": 2}), tmp_path / "run", progress=False)


def test_runs_saved_before_direct_obs_conditioning_resume_with_the_network_they_trained(tmp_path, demo_file):
    config = TrainConfig(task=TASK, model="transformer", demos=str(demo_file), steps=1, batch_size=4, network=TINY,
                         eval_episodes=0, device="cpu")
    assert config.network == {"direct_obs_conditioning": True, **TINY}  # written out, so a saved run says which
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # A run of that time: trained without the map, config.json and the checkpoint written without the field.
    old = TrainConfig(**{**config.to_dict(), "network": {**TINY, "direct_obs_conditioning": False}})
    run = tmp_path / "run"
    result = train(old, run, progress=False)
    document = json.loads((run / "config.json").read_text())
    del document["config"]["network"]["direct_obs_conditioning"]
    (run / "config.json").write_text(json.dumps(document))
    manifest = json.loads((result.checkpoint / "policy.json").read_text())
    del manifest["network"]["config"]["direct_obs_conditioning"]
    del manifest["metadata"]["train_config"]["network"]["direct_obs_conditioning"]
    (result.checkpoint / "policy.json").write_text(json.dumps(manifest))
    assert TrainConfig.load(run / "config.json") == old

    longer = {**config.to_dict(), "steps": 2}
    with pytest.raises(TrainError, match="another configuration.*direct_obs_conditioning"):
        train(TrainConfig(**longer), run, progress=False)  # today's default network is not the one it trained
    resumed = train(TrainConfig(**{**longer, "network": old.network}), run, progress=False)
    assert (resumed.start_step, resumed.step) == (1, 2)
    assert DiffusionPolicy.load(resumed.checkpoint, device="cpu").network.obs_to_actions is None


def test_eval_cli_reports_well_formed_metrics(tmp_path, demo_file):
    cli = CliRunner()
    assert cli.invoke(policy, train_args(demo_file, tmp_path / "run", "transformer", 2)).exit_code == 0
    out = tmp_path / "eval.json"
    result = cli.invoke(policy, ["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2",
                                 "--max-episode-steps", "20", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "success" in result.output and "ms per chunk" in result.output
    document = json.loads(out.read_text())
    assert document["task"] == TASK and document["model"] == "transformer" and document["step"] == 2
    assert document["seeds"] == [1_000_000, 1_000_001] and len(document["success"]) == 2
    assert all(1 <= length <= 20 for length in document["lengths"])
    assert document["mean_length"] == pytest.approx(np.mean(document["lengths"]))
    assert 0.0 <= document["success_rate"] <= 1.0 and 0.0 <= document["clipped_fraction"] <= 1.0
    # 20 steps in chunks of 8: 3 chunks per unsolved episode
    assert document["chunks"] >= 2 and document["latency_ms_mean"] > 0
    assert document["latency_ms_median"] <= document["latency_ms_p95"]
    plotted = cli.invoke(policy, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "success.png")])
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cost_cli_counts_spikes_on_demonstration_states_and_compares_with_the_baseline(tmp_path, demo_file):
    cli = CliRunner()
    for model in MODELS:
        args = train_args(demo_file, tmp_path / model, model, 2)
        args[args.index("--eval-episodes") + 1] = "0"
        assert cli.invoke(policy, args).exit_code == 0
    out = tmp_path / "cost.json"
    result = cli.invoke(policy, ["cost", "--checkpoint", str(tmp_path / "stmdp"), "--checkpoint",
                                 str(tmp_path / "transformer"), "--samples", "5", "--inference-steps", "3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    spiking, dense = json.loads(out.read_text())
    assert spiking["model"] == "stmdp" and dense["model"] == "transformer"
    assert spiking["samples"] == dense["samples"] == 5 and spiking["passes"] == 3
    layers = spiking["activity"]["layers"]
    assert layers and all(0.0 <= layer["firing_rate"] <= 1.0 for layer in layers)
    assert spiking["activity"]["spikes_per_pass"] == pytest.approx(sum(layer["spikes_per_pass"] for layer in layers))
    assert spiking["sops_per_pass"] > 0 and spiking["macs_per_pass"] < spiking["dense_macs_per_pass"]
    assert dense["activity"] is None and dense["sops_per_pass"] == 0
    assert dense["macs_per_pass"] == dense["dense_macs_per_pass"] > 0
    assert "firing rate" in result.output and layers[0]["name"] in result.output
    missing = cli.invoke(policy, ["cost", "--checkpoint", str(tmp_path / "stmdp"), "--demos", str(tmp_path / "no.npz")])
    assert missing.exit_code != 0 and "no.npz" in missing.output


class ScriptedPolicy:
    """A stand-in policy for the runner: returns ``make(obs)`` as its chunk."""

    class network_config:
        obs_horizon, obs_dim, action_dim = 2, 39, 4

    def __init__(self, make):
        self.make = make
        self.seen = []

    def predict_action(self, obs, *, sampler=None, steps=None, generator=None):
        self.seen.append(obs.copy())
        return self.make(obs)


def test_runner_clips_actions_and_pads_the_history_with_the_first_observation():
    scripted = ScriptedPolicy(lambda obs: np.full((len(obs), 8, 4), 5.0, dtype=np.float32))
    result = evaluate(scripted, TASK, 1, max_episode_steps=10)
    assert result.lengths == [10] and result.chunks == 2  # 8 + 2 steps; the warm-up call is not counted
    assert result.clipped_fraction == 1.0  # every component was 5, outside [-1, 1]
    first = scripted.seen[1][0]
    assert np.array_equal(first[0], first[1])  # the first observation, repeated
    assert not np.array_equal(scripted.seen[2][0][0], scripted.seen[2][0][1])


@pytest.mark.parametrize("make, message", [
    (lambda obs: np.full((len(obs), 8, 4), np.nan, dtype=np.float32), "non-finite"),
    (lambda obs: np.zeros((len(obs), 8, 3), dtype=np.float32), "shape"),
    (lambda obs: 1 / 0, "ZeroDivisionError"),
])
def test_a_failing_policy_stops_the_evaluation_loudly(make, message):
    with pytest.raises(RunnerError, match=message):
        evaluate(ScriptedPolicy(make), TASK, 2, max_episode_steps=10)


def test_malformed_inputs_are_refused_clearly(tmp_path, demo_file):
    cli = CliRunner()
    missing = cli.invoke(policy, ["train", "--task", TASK, "--model", "transformer", "--demos", str(tmp_path / "none.npz"),
                                  "--steps", "1", "--run-dir", str(tmp_path / "run")])
    assert missing.exit_code != 0 and "no demonstrations at" in missing.output
    unknown_task = cli.invoke(policy, ["train", "--task", "fly-v3", "--model", "transformer"])
    assert unknown_task.exit_code == 2 and "fly-v3" in unknown_task.output
    unknown_model = cli.invoke(policy, ["train", "--task", TASK, "--model", "lstm"])
    assert unknown_model.exit_code == 2 and "lstm" in unknown_model.output
    bad_network = cli.invoke(policy, train_args(demo_file, tmp_path / "r2", "transformer", 1)[:-2] + [
        "--run-dir", str(tmp_path / "r2"), "--network", '{"embed_dim": 30}'])
    assert bad_network.exit_code != 0 and "embed_dim" in bad_network.output
    not_a_checkpoint = cli.invoke(policy, ["eval", "--checkpoint", str(tmp_path)])
    assert not_a_checkpoint.exit_code != 0 and "neither a policy checkpoint" in not_a_checkpoint.output
    with pytest.raises(TrainError, match="unknown task"):
        TrainConfig(task="fly-v3", model="stmdp")
    with pytest.raises(TrainError, match="unknown model"):
        TrainConfig(task=TASK, model="lstm")
    with pytest.raises(TrainError, match="nothing to resume"):
        train(TrainConfig(task=TASK, model="transformer", demos=str(demo_file)), tmp_path / "empty", resume=True)
    other_task = tmp_path / "other"
    save_demos(record_demos("drawer-open-v3", 1, 0, max_episode_steps=20), other_task)
    with pytest.raises(TrainError, match="are of drawer-open-v3"):
        train(TrainConfig(task=TASK, model="transformer", demos=str(other_task) + ".npz", steps=1), tmp_path / "r3")
    assert set(MODELS) == set(NETWORKS)


def test_a_checkpoint_alone_can_act(tmp_path, demo_file):
    config = TrainConfig(task=TASK, model="transformer", demos=str(demo_file), steps=2, batch_size=4,
                         network=TINY, eval_episodes=0, device="cpu")
    result = train(config, tmp_path / "run", progress=False)
    loaded = DiffusionPolicy.load(result.checkpoint, device="cpu")
    actions = loaded.predict_action(np.zeros((2, 39), np.float32), generator=torch.Generator().manual_seed(0))
    assert actions.shape == (8, 4) and np.isfinite(actions).all()


def test_training_fits_observations_with_a_minimum_span(tmp_path, demo_file):
    # Regression: the gripper opening (obs 3 and its previous-frame copy, 21) barely varies in button-press demos;
    # it must not be scaled onto [-1, 1], and the gripper effort (action 3, always 0) must be executed as 0.
    config = TrainConfig(task=TASK, model="transformer", demos=str(demo_file), steps=1, batch_size=4,
                         network=TINY, eval_episodes=0, device="cpu")
    assert config.obs_min_span == 0.1
    result = train(config, tmp_path / "run", progress=False)
    loaded = DiffusionPolicy.load(result.checkpoint, device="cpu")
    obs = loaded.normaliser["obs"]
    assert obs.min_span == 0.1 and float(obs.high[3] - obs.low[3]) < 0.05
    drifted = torch.as_tensor(np.asarray(load_demos(demo_file).observations[:1]))
    drifted[0, [3, 21]] -= 0.2  # the fingers drift 0.2 closed
    assert loaded.normaliser.normalise("obs", drifted)[0, [3, 21]].abs().max() < 5
    actions = loaded.predict_action(np.zeros((2, 39), np.float32), generator=torch.Generator().manual_seed(0), full=True)
    assert (actions[:, 3] == 0).all()
    with pytest.raises(TrainError):
        TrainConfig(task=TASK, model="transformer", obs_min_span=-0.1)
