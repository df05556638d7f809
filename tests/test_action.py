"""Event-action recognition (events/action): the synthetic set, windows and point groups, SpikePoint and the ANN
baseline, checked saving and loading, and the two commands."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from events.action.dataset import (
    CLASSES,
    ActionSetConfig,
    ActionSetError,
    clip_motion,
    generate_action_set,
    generate_clip,
    load_action_set,
    load_or_generate,
    save_action_set,
)
from events.action.models import (
    PointNetClassifier,
    PointNetConfig,
    SpikePoint,
    SpikePointConfig,
    build_model,
    model_config,
    parameter_count,
)
from events.action.points import (
    FEATURES,
    PointConfig,
    Windows,
    clip_windows,
    farthest_point_sampling,
    group_points,
    rate_code,
    sample_points,
)
from events.action.streaming import ActionState, action_step, for_sensor
from events.action.training import (
    ActionModel,
    ActionModelError,
    ActionTrainConfig,
    evaluate,
    train,
)
from events.cli import events as events_cli
from events.io import make_events
from events.representations import window_bounds

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ActionSetConfig(height=24, width=24, duration_ms=300.0, train_seeds=2, test_seeds=1, test_seed0=50,
                       speed_px_s=(20.0, 30.0), noise_rate_hz=(0.0, 1.0))
TINY_POINTS = PointConfig(window_ms=150.0, stride_ms=75.0, n_points=64, n_centroids=8, k=8, min_events=8)


@pytest.fixture(scope="module")
def tiny_set():
    return generate_action_set(TINY, show_progress=False)


def _centroid(events):
    return np.array([events["x"].mean(), events["y"].mean()])


def test_translation_classes_move_the_events_their_way():
    config = ActionSetConfig(height=48, width=48, duration_ms=400.0, position_jitter=0.0, noise_rate_hz=(0.0, 0.0))
    for name, axis, sign in (("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)):
        events, parameters = generate_clip(config, CLASSES.index(name), seed=7)
        early, late = events[events["t"] < 100_000], events[events["t"] >= 300_000]
        shift = _centroid(late) - _centroid(early)
        assert sign * shift[axis] > 5 and abs(shift[1 - axis]) < abs(shift[axis]), (name, shift)
        assert parameters["class"] == name and parameters["events"] == len(events)


def test_rotation_and_zoom_classes_have_the_right_signs():
    config = ActionSetConfig()
    rng = lambda: np.random.default_rng(0)
    assert clip_motion(config, CLASSES.index("rotate_cw"), rng())["angular_velocity"] > 0
    assert clip_motion(config, CLASSES.index("rotate_ccw"), rng())["angular_velocity"] < 0
    zoom_in, zoom_out = (clip_motion(config, CLASSES.index(name), rng()) for name in ("zoom_in", "zoom_out"))
    assert zoom_in["zoom_rate"] >= 0.6 and zoom_out["zoom_rate"] <= -0.6
    assert abs(np.hypot(*zoom_in["velocity"])) < config.speed_px_s[0]  # drift only
    # A zoom is centred in time: the object has its drawn middle size half-way through.
    assert zoom_in["size"] < zoom_out["size"]


def test_clips_are_deterministic_and_seeds_differ():
    first, _ = generate_clip(TINY, 4, seed=1)
    again, _ = generate_clip(TINY, 4, seed=1)
    other, _ = generate_clip(TINY, 4, seed=2)
    assert len(first) > 50 and np.array_equal(first, again)
    assert not np.array_equal(first[:50], other[:50])


def test_photographs_are_used_when_given():
    photos = [np.tile(np.linspace(0.1, 0.9, 100, dtype=np.float32), (80, 1))]
    events, parameters = generate_clip(TINY, 0, seed=0, photos=photos)
    assert parameters["background_source"] == 0 and parameters["object_source"] == 0 and len(events) > 0


def test_split_by_generation_seed(tiny_set):
    assert len(tiny_set) == (2 + 1) * len(CLASSES)
    train_seeds = set(tiny_set.seeds[tiny_set.subset("train")])
    test_seeds = set(tiny_set.seeds[tiny_set.subset("test")])
    assert train_seeds == {0, 1} and test_seeds == {50}
    for index in range(len(tiny_set)):
        clip = tiny_set.clip_events(index)
        assert len(clip) > 0 and clip["t"].max() < 300_000 and np.all(np.diff(clip["t"]) >= 0)


def test_action_set_config_rejects_bad_values():
    with pytest.raises(ValueError, match="must not share generation seeds"):
        ActionSetConfig(train_seeds=10, test_seed0=5)
    with pytest.raises(ValueError, match="speed_px_s"):
        ActionSetConfig(speed_px_s=(5.0, 1.0))
    with pytest.raises(ValueError, match="unknown ActionSetConfig fields"):
        ActionSetConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="label"):
        generate_clip(TINY, len(CLASSES), seed=0)


def test_saved_sets_are_checked_and_cached(tiny_set, tmp_path):
    folder = save_action_set(tiny_set, tmp_path / "set")
    loaded = load_action_set(folder)
    assert loaded.config == TINY and np.array_equal(loaded.events, tiny_set.events)
    assert np.array_equal(loaded.offsets, tiny_set.offsets) and np.array_equal(loaded.split, tiny_set.split)
    assert load_or_generate(TINY, folder).config == TINY  # reused, not regenerated
    with pytest.raises(ActionSetError, match="another configuration"):
        load_or_generate(ActionSetConfig(height=24, width=24, train_seeds=3, test_seed0=50), folder)
    archive = folder / "actions.npz"
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(ActionSetError, match="checksum"):
        load_action_set(folder)
    with pytest.raises(ActionSetError, match="needs actions.json"):
        load_action_set(tmp_path / "nothing")


def test_windows_slide_and_drop_sparse_ones():
    t = np.array([0, 10, 20, 120, 130, 210, 220, 230, 290], np.int64) * 1000
    events = make_events(t, np.zeros(9), np.zeros(9), np.zeros(9))
    offsets = np.array([0, 9])
    config = PointConfig(window_ms=100.0, stride_ms=50.0, n_points=4, n_centroids=2, k=2, min_events=2)
    windows = clip_windows(events, offsets, np.array([0]), duration_us=300_000, config=config)
    # Complete windows start at 0, 50, ..., 200 ms (a window starting at 250 would end past the clip).
    assert windows.start_us.tolist() == [0, 50_000, 100_000, 150_000, 200_000]
    assert (windows.hi - windows.lo).tolist() == [3, 2, 2, 3, 4]
    strict = clip_windows(events, offsets, np.array([0]), 300_000, PointConfig(
        window_ms=100.0, stride_ms=50.0, n_points=4, n_centroids=2, k=2, min_events=3))
    assert strict.start_us.tolist() == [0, 150_000, 200_000]


def test_sampled_points_are_normalised_and_come_from_their_window():
    t = np.arange(100, dtype=np.int64) * 1000
    events = make_events(t, np.arange(100) % 10, np.arange(100) // 10, np.zeros(100))
    config = PointConfig(window_ms=50.0, stride_ms=50.0, n_points=256, n_centroids=4, k=4, min_events=8)
    windows = clip_windows(events, np.array([0, 100]), np.array([0]), 100_000, config)
    points = sample_points(events, windows, config, 10, 10, np.random.default_rng(0))
    assert points.shape == (2, 256, 3) and points.dtype == np.float32
    assert points.min() >= 0 and points.max() <= 1
    assert np.all(points[0, :, 2] < 0.6) and np.all(points[1, :, 2] > 0.5)  # rows 0-4, then 5-9
    assert len(np.unique(points[0], axis=0)) > 40  # all 50 events of a window get drawn, not a few


def test_farthest_point_sampling_spreads_out():
    corners = torch.tensor([[0.0, 0, 0], [1, 1, 1], [0.01, 0, 0], [1, 0, 0], [0.99, 1, 1], [0, 1, 0]])
    chosen = farthest_point_sampling(corners[None], 4)[0].tolist()
    assert chosen[:2] == [0, 1] and set(chosen) == {0, 1, 3, 5}
    with pytest.raises(ValueError, match="cannot choose"):
        farthest_point_sampling(corners[None], 7)


def test_groups_hold_sign_split_offsets_and_the_centroid():
    points = torch.rand(3, 128, 3, generator=torch.Generator().manual_seed(0))
    grouped = group_points(points, n_centroids=8, k=5)
    assert grouped.shape == (3, 8, 5, FEATURES) and grouped.min() >= 0 and grouped.max() <= 1
    positive, negative, centroid = grouped[..., :3], grouped[..., 3:6], grouped[..., 6:]
    assert torch.all((positive == 0) | (negative == 0))  # one of the pair carries each offset
    assert torch.all(positive[:, :, 0] == 0) and torch.all(negative[:, :, 0] == 0)  # nearest is the centroid
    assert torch.allclose(centroid, centroid[:, :, :1].expand_as(centroid))
    assert torch.isclose(torch.maximum(positive, negative).amax(dim=(1, 2)), torch.ones(3, 3)).all()
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        group_points(torch.rand(2, 10), 2, 2)


def test_rate_code_fires_at_the_value():
    values = torch.tensor([0.0, 0.25, 1.0])
    spikes = rate_code(values.expand(4000, 3), 16, torch.Generator().manual_seed(1))
    assert spikes.shape == (16, 4000, 3) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(spikes.mean(dim=(0, 1)), values, atol=0.01)
    with pytest.raises(ValueError, match="time_steps"):
        rate_code(values, 0)


def test_spikepoint_surrogate_reaches_its_neurons():
    network = SpikePoint(SpikePointConfig(surrogate="tanh", surrogate_alpha=5.0))
    assert network.local_lif.neuron.method == "tanh" and network.global_lif.neuron.alpha == 5.0
    with pytest.raises(ValueError, match="unknown surrogate"):
        SpikePointConfig(surrogate="erf")


def test_spikepoint_is_tiny_and_spiking_the_baseline_large():
    spiking, dense = SpikePoint(SpikePointConfig()), PointNetClassifier(PointNetConfig())
    assert parameter_count(spiking) < 0.05 * parameter_count(dense) and parameter_count(dense) > 1_000_000
    grouped = group_points(torch.rand(2, 64, 3), 4, 8)
    for network in (spiking, dense):
        network.eval()
        assert network(grouped).shape == (2, len(CLASSES))
        with pytest.raises(ValueError, match="grouped points"):
            network(grouped[..., :5])
    # Every linear map of SpikePoint after the input reads spikes: probe the inputs of its linears.
    seen = []
    hooks = [module.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
             for module in spiking.modules() if isinstance(module, torch.nn.Linear)]
    spiking(grouped, torch.Generator().manual_seed(0))
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2 + 2 * 2 + 1 and all(set(x.unique().tolist()) <= {0.0, 1.0} for x in seen)


def test_residual_blocks_are_identity_mappings():
    config = SpikePointConfig(local_dim=8, global_dim=8)
    block = SpikePoint(config).local_blocks[0]
    torch.nn.init.zeros_(block.norm2.weight)  # the block's branch off: it passes its input through
    currents = torch.randn(16, 2, 4, 8)
    block.eval()
    assert torch.equal(block(currents), currents + block.norm2.bias)


def test_model_configs_round_trip_and_reject_unknown_fields():
    config = model_config("pointnet", {"local_dims": [8, 16], "global_dims": [32]})
    assert config.local_dims == (8, 16) and model_config("pointnet", config.to_dict()) == config
    assert isinstance(build_model(model_config("spikepoint")), SpikePoint)
    with pytest.raises(ValueError, match="unknown model"):
        model_config("resnet")
    with pytest.raises(ValueError, match="unknown SpikePointConfig fields"):
        model_config("spikepoint", {"width": 3})
    with pytest.raises(ActionModelError, match="invalid network"):
        ActionTrainConfig(model="spikepoint", network={"time_steps": 0})
    with pytest.raises(ActionModelError, match="n_classes"):
        ActionTrainConfig(model="spikepoint", network={"n_classes": 3})


SMALL_NETWORKS = {"spikepoint": {"local_dim": 8, "global_dim": 16, "time_steps": 4},
                  "pointnet": {"local_dims": [8], "global_dims": [16], "head_dims": [8]}}


@pytest.mark.parametrize("kind", ["spikepoint", "pointnet"])
def test_train_save_load_evaluate(tiny_set, tmp_path, kind):
    config = ActionTrainConfig(model=kind, network=SMALL_NETWORKS[kind], points=TINY_POINTS, epochs=2,
                               batch_size=8, torch_threads=None)
    result = train(tiny_set, config, tmp_path / kind, "abc", show_progress=False)
    assert len(result.metrics["epochs"]) == 2 and np.isfinite(result.metrics["epochs"][-1]["loss"])
    model, manifest = ActionModel.load(result.checkpoint)
    assert manifest["network"]["kind"] == kind and manifest["metadata"]["dataset"]["sha256"] == "abc"
    assert ActionTrainConfig.from_dict(manifest["metadata"]["train_config"]) == config
    report = evaluate(model, tiny_set, "test", latency_windows=2)
    again = evaluate(result.model, tiny_set, "test", latency_windows=2)
    assert report["window_accuracy"] == again["window_accuracy"]  # the loaded model is the trained one
    assert report["windows"] > 0 and 0 <= report["clip_accuracy"] <= 1
    assert np.sum(report["confusion"]) == report["windows"] and report["latency_ms_per_window"] > 0
    assert ("mean_firing_rate" in report) == (kind == "spikepoint")
    retrained = train(tiny_set, config, tmp_path / f"{kind}-again", show_progress=False)
    for name, tensor in result.model.network.state_dict().items():  # seeded: the same weights again
        assert torch.equal(tensor, retrained.model.network.state_dict()[name]), name


def test_training_device_is_checked_and_recorded(tiny_set, tmp_path):
    with pytest.raises(ActionModelError, match="device must be auto, cpu, cuda or cuda:N"):
        ActionTrainConfig(model="spikepoint", device="cuda:x")
    config = ActionTrainConfig(model="pointnet", network=SMALL_NETWORKS["pointnet"], points=TINY_POINTS, epochs=1,
                               batch_size=8, device="cpu")
    assert train(tiny_set, config, tmp_path / "cpu", show_progress=False).metrics["device"] == "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["spikepoint", "pointnet"])
def test_training_on_cuda_saves_a_cpu_model(tiny_set, tmp_path, kind):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config = ActionTrainConfig(model=kind, network=SMALL_NETWORKS[kind], points=TINY_POINTS, epochs=2, batch_size=8,
                               device="cuda")
    result = train(tiny_set, config, tmp_path / kind, show_progress=False)
    assert result.metrics["device"].startswith("cuda") and np.isfinite(result.metrics["epochs"][-1]["loss"])
    model, _ = ActionModel.load(result.checkpoint)
    assert 0 <= evaluate(model, tiny_set, "test", latency_windows=1)["window_accuracy"] <= 1


def test_corrupt_models_are_refused(tiny_set, tmp_path):
    config = ActionTrainConfig(model="pointnet", network=SMALL_NETWORKS["pointnet"], points=TINY_POINTS, epochs=1,
                               torch_threads=None)
    folder = train(tiny_set, config, tmp_path / "model", show_progress=False).checkpoint
    manifest = json.loads((folder / "model.json").read_text())
    manifest["network"]["config"]["local_dims"] = [4]
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ActionModelError, match="inconsistent"):
        ActionModel.load(folder)
    (folder / "weights.pt").write_bytes(b"not weights")
    with pytest.raises(ActionModelError, match="checksum"):
        ActionModel.load(folder)
    manifest["format"] = "spikebot-action-model/0"
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ActionModelError, match="format"):
        ActionModel.load(folder)


def tiny_action_model(kind: str = "spikepoint") -> ActionModel:
    """An untrained model with the tiny preprocessing (150 ms windows every 75 ms, 8 events at least)."""
    torch.manual_seed(0)
    network = build_model(model_config(kind, SMALL_NETWORKS[kind] | {"n_classes": len(CLASSES)})).eval()
    return ActionModel(network, TINY_POINTS, TINY.width, TINY.height)


def offline_windows(model: ActionModel, events: np.ndarray, t_start: int, t_end: int) -> list[tuple]:
    """(start, events, label, probabilities) of every complete window with enough events, each classified alone."""
    starts, bounds = window_bounds(events["t"], model.points.window_us, model.points.stride_us, t_start=t_start,
                                   t_end=t_end, include_incomplete=False)
    answers = []
    for start, (lo, hi) in zip(starts, bounds):
        if hi - lo >= model.points.min_events:
            window = Windows(np.zeros(1, np.int64), np.array([start]), np.array([lo]), np.array([hi]))
            probabilities = torch.softmax(model.predict(events, window, seed=int(start)), 1)[0].numpy()
            answers.append((int(start), hi - lo, model.classes[probabilities.argmax()], probabilities))
    return answers


@pytest.mark.parametrize("kind", ["spikepoint", "pointnet"])
def test_streamed_windows_equal_offline_classification_however_the_stream_is_cut(kind):
    """Events from 1.234 s: windows from 1.23 s every 75 ms; a 2 s pause, whose windows are skipped, then 0.2 s of
    events, and 0.4 s later 5 events, too few for a window: the windows that hold them are skipped."""
    model = tiny_action_model(kind)
    rng = np.random.default_rng(0)
    t = np.concatenate([1_234_000 + np.sort(rng.integers(0, 400_000, 600)), 3_700_000 + np.arange(0, 200_000, 400),
                        [4_300_000 + 1000 * k for k in range(5)]])
    events = make_events(t, rng.integers(0, 24, len(t)), rng.integers(0, 24, len(t)), rng.integers(0, 2, len(t)))
    end = 4_500_000
    expected = offline_windows(model, events, 1_230_000, end)
    assert len(expected) > 8 and expected[-1][0] < 3_900_000
    for cuts in ([len(t)], [1, 250, 251, 900, len(t)], list(range(0, len(t) + 1, 37)) + [len(t)]):
        state, answers, held = ActionState(), [], 0
        for lo, hi in zip([0] + cuts[:-1], cuts):
            chunk = events[lo:hi]
            known = end if hi == len(t) else int(events["t"][hi])  # nothing before the next chunk's first event
            step_answers, state = action_step(model, state, chunk, known)
            answers += step_answers
            held = max(held, sum(len(part) for part in state.parts))
        assert [(a.start_us, a.events, a.label) for a in answers] == [e[:3] for e in expected]
        for answer, (_, _, _, probabilities) in zip(answers, expected):
            assert answer.end_us - answer.start_us == 150_000 and answer.compute_ms > 0
            np.testing.assert_allclose(answer.probabilities, probabilities, atol=1e-6)
            assert answer.probabilities.sum() == pytest.approx(1, abs=1e-5)
        assert held <= 500 + len(chunk)  # at most one window's events (the densest: 150 ms at 2.5 per ms) + a chunk


def test_streamed_points_are_normalised_over_the_streams_sensor():
    model = tiny_action_model()
    wide = for_sensor(model, 640, 480)
    assert (wide.width, wide.height, wide.network, wide.points) == (640, 480, model.network, model.points)
    events = make_events(np.arange(0, 150_000, 1000), np.full(150, 600), np.full(150, 400), np.zeros(150))
    answers, _ = action_step(wide, ActionState(), events, 160_000)
    assert len(answers) == 1 and answers[0].events == 150


def test_cli_data_train_eval(tmp_path):
    runner = CliRunner()
    data, model = tmp_path / "data", tmp_path / "model"
    result = runner.invoke(events_cli, ["action-data", "--out", str(data), "--images", "procedural",
                                        "--train-seeds", "1", "--test-seeds", "1", "--test-seed0", "9", "--size", "24",
                                        "--duration-ms", "300"])
    assert result.exit_code == 0, result.output
    assert "16 clips (8 train, 8 test)" in result.output
    manifest = json.loads((data / "actions.json").read_text())
    assert manifest["config"]["train_seeds"] == 1 and manifest["sources"] == ["procedural"]
    result = runner.invoke(events_cli, ["action-train", "--model", "spikepoint", "--out", str(model), "--data",
                                        str(data), "--epochs", "1", "--window-ms", "150", "--stride-ms", "75", "--points",
                                        "64", "--centroids", "8", "--k", "8",
                                        "--network", json.dumps(SMALL_NETWORKS["spikepoint"])])
    assert result.exit_code == 0, result.output
    assert "spikepoint on test: window accuracy" in result.output
    saved = json.loads((model / "eval.json").read_text())
    assert saved["split"] == "test" and saved["clips"] + saved["clips_without_windows"] == 8
    result = runner.invoke(events_cli, ["action-eval", str(model), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["window_accuracy"] == saved["window_accuracy"] and report["same_data_config_as_training"]
    result = runner.invoke(events_cli, ["action-train", "--model", "pointnet", "--out", str(tmp_path / "m2"),
                                        "--data", str(data), "--epochs", "1"])
    # The default 500 ms windows do not fit the 300 ms clips: a clear error, not a crash.
    assert result.exit_code == 1 and "no window" in result.output, result.output


def test_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(events_cli, ["action-train", "--model", "spikepoint", "--out", str(tmp_path / "m"),
                                        "--data", str(tmp_path / "data"), "--network", "[1]", "--images", "procedural"])
    assert result.exit_code != 0 and "JSON object" in result.output
    result = runner.invoke(events_cli, ["action-train", "--model", "spikepoint", "--out", str(tmp_path / "m"),
                                        "--data", str(tmp_path / "data"), "--images", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "not a folder" in result.output
    result = runner.invoke(events_cli, ["action-eval", str(tmp_path / "none"), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "not a spikebot action model" in result.output
