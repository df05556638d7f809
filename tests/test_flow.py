"""Temporally dense optical flow (events/flow): networks, data, metrics, contrast maximisation, pictures, CLI."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from events.cli import events as events_cli
from events.flow.contrast_max import ContrastMaxConfig, contrast_max_flow
from events.flow.dataset import (
    FlowDataError,
    FlowSequence,
    SequenceSet,
    load_set,
    sample_batch,
    save_set,
    simulate_sequence,
)
from events.flow.metrics import FlowErrors, endpoint_errors
from events.flow.models import ConvLIF, FlowNet, FlowNetConfig, pad_to_multiple, parameter_count
from events.flow.streaming import FlowGrid, FlowState, flow_step
from events.flow.training import (
    FlowModel,
    FlowModelError,
    FlowTrainConfig,
    check_held_out,
    evaluate,
    network_estimator,
    predict_sequence,
    train,
    zero_flow,
)
from events.flow.visualise import colour_wheel, flow_to_rgb, render_flow_panels
from events.io import EVENT_DTYPE, EventRecording, make_events, write_events_npz
from events.representations import to_count_images
from events.simulator import AffineMotion, ClipConfig, simulate_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(channels=(4, 8), residual_blocks=1)
CLIP = ClipConfig(height=32, width=32, duration_ms=40, max_speed_px_s=300.0)


@pytest.fixture(scope="module")
def tiny_set() -> SequenceSet:
    return SequenceSet(CLIP, tuple(simulate_sequence(dataclasses.replace(CLIP, seed=seed)) for seed in (1, 2)))


# -- networks ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "spiking"])
def test_stepping_equals_the_sequence_forward_and_state_carries_memory(kind):
    torch.manual_seed(0)
    network = FlowNet(FlowNetConfig(kind=kind, **TINY)).eval()
    counts = torch.rand(3, 2, 2, 16, 16) * 3
    with torch.no_grad():
        flows, _ = network(counts)
        state, stepped = None, []
        for frame in counts:
            flow, state = network.step(frame, state)
            stepped.append(flow)
        again, _ = network.step(counts[0], state)
        fresh, _ = network.step(counts[0])
    assert flows.shape == (3, 2, 2, 16, 16)
    torch.testing.assert_close(torch.stack(stepped), flows)
    assert not torch.allclose(again, fresh)  # the same bin after others gives another answer: memory


def test_lif_leak_and_threshold_are_learned():
    layer = ConvLIF(2, 3, 1, FlowNetConfig(init_leak=0.3, init_threshold=0.5))
    assert torch.allclose(torch.sigmoid(layer.leak_logit), torch.tensor(0.3)) and torch.all(layer.threshold == 0.5)
    x = torch.rand(2, 2, 8, 8) * 4
    spikes, state = layer(x, None)
    spikes2, _ = layer(x, state)
    (spikes.sum() + spikes2.sum()).backward()
    assert set(torch.unique(spikes).tolist()) <= {0.0, 1.0}
    assert layer.leak_logit.grad.abs().sum() > 0 and layer.threshold.grad.abs().sum() > 0


def test_reset_variants_and_detached_reset_share_the_forward_pass():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 8, 8) * 4
    layers = {name: ConvLIF(2, 3, 1, FlowNetConfig(init_threshold=0.5, **options)) for name, options in
              {"zero": {"detach_reset": False}, "detached": {"detach_reset": True},
               "subtract": {"reset": "subtract"}}.items()}
    for layer in layers.values():
        layer.load_state_dict(layers["zero"].state_dict())
    first = {name: layer(x, None) for name, layer in layers.items()}
    spikes, state = first["zero"]
    assert spikes.sum() > 0
    torch.testing.assert_close(first["detached"][1].v, state.v)
    torch.testing.assert_close(first["detached"][0], spikes)
    # where a neuron fired, a zero reset empties it and a subtractive one keeps what lay above the threshold
    fired = spikes.bool()
    assert torch.all(state.v[fired] == 0)
    subtract = layers["subtract"]
    with torch.no_grad():
        decayed = torch.sigmoid(subtract.leak_logit) * subtract.norm(subtract.conv(x))  # one step from rest
    threshold = subtract.threshold.expand_as(decayed)
    torch.testing.assert_close(first["subtract"][1].v[fired], (decayed - threshold)[fired])
    torch.testing.assert_close(first["subtract"][1].v[~fired], decayed[~fired])

    def input_gradient(layer):
        inputs = x.clone().requires_grad_()
        out, state = layer(inputs, None)
        out2, _ = layer(inputs, state)
        (out + out2).sum().backward()
        return inputs.grad

    assert not torch.allclose(input_gradient(layers["zero"]), input_gradient(layers["detached"]))


def test_recurrent_encoders_feed_their_last_spikes_back_sideways():
    torch.manual_seed(0)
    network = FlowNet(FlowNetConfig(channels=(4, 8), recurrent_encoders=True)).eval()
    layer = network.encoders[0]
    x = torch.rand(1, 2, 16, 16) * 4
    with torch.no_grad():
        spikes, state = layer(x, None)
        membrane, remembered = state
        assert spikes.sum() > 0 and torch.equal(remembered, spikes)
        again, _ = layer(x, state)
        layer.recurrent.weight.zero_()
        without, _ = layer(x, state)
    assert not torch.equal(again, without)  # the previous bin's spikes changed this bin's
    assert parameter_count(network) - parameter_count(FlowNet(FlowNetConfig(channels=(4, 8)))) == 9 * (4 * 4 + 8 * 8)


def test_surrogate_and_leak_spread_are_configured():
    config = FlowNetConfig(surrogate="tanh", surrogate_alpha=5.0, leak_spread=2.0, channels=(8, 16))
    layer = FlowNet(config).encoders[0]
    leaks = torch.sigmoid(layer.leak_logit).detach().flatten()
    assert leaks[0] == pytest.approx(0.119, abs=1e-3) and leaks[-1] == pytest.approx(0.881, abs=1e-3)
    assert torch.all(leaks.diff() > 0)
    parameters = layer.parameters_lif()
    assert parameters.method == "tanh" and float(parameters.alpha) == 5.0
    for bad in ({"surrogate": "erf"}, {"surrogate_alpha": 0.0}, {"leak_spread": -1.0}, {"reset": "soft"}):
        with pytest.raises(ValueError):
            FlowNetConfig(**bad)


@pytest.mark.parametrize("kind", ["lstm", "spiking"])
def test_coarse_flows_are_fed_forward_and_returned_per_scale(kind):
    torch.manual_seed(0)
    network = FlowNet(FlowNetConfig(kind=kind, channels=(4, 8, 8), coarse_flows=True)).eval()
    plain = FlowNet(FlowNetConfig(kind=kind, channels=(4, 8, 8), coarse_flows=False))
    assert len(network.coarse_heads) == 2
    readout_leaks = 2 * 2 if kind == "spiking" else 0
    assert parameter_count(network) - parameter_count(plain) == 2 * (8 * 2 + 2) + 2 * 9 * (8 + 4) + readout_leaks
    counts = torch.rand(3, 1, 2, 16, 16) * 3
    with torch.no_grad():
        scales, _ = network.forward_scales(counts)
        flows, _ = network(counts)
        stepped, state = [], None
        for frame in counts:
            flow, state = network.step(frame, state)
            stepped.append(flow)
    assert len(scales) == 3 and all(scale.shape == (3, 1, 2, 16, 16) for scale in scales)
    torch.testing.assert_close(scales[-1], flows)
    torch.testing.assert_close(torch.stack(stepped), flows)
    with torch.no_grad():  # the coarse flows reach the output: changing a coarse head changes it
        network.coarse_heads[1].bias.add_(5.0)
        changed, _ = network(counts)
    assert not torch.allclose(changed, flows)


def test_spiking_variant_is_smaller_and_bad_inputs_are_refused():
    lstm, spiking = FlowNet(FlowNetConfig(kind="lstm")), FlowNet(FlowNetConfig(kind="spiking"))
    assert parameter_count(spiking) < 0.4 * parameter_count(lstm)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        spiking.step(torch.zeros(1, 2, 20, 16))
    with pytest.raises(ValueError, match=r"expected counts \(B, 2, H, W\)"):
        spiking.step(torch.zeros(1, 3, 16, 16))
    assert pad_to_multiple(torch.zeros(1, 2, 20, 13), 8).shape == (1, 2, 24, 16)
    with pytest.raises(ValueError, match="unknown flow network kind"):
        FlowNetConfig(kind="gru")
    with pytest.raises(ValueError, match="init_leak"):
        FlowNetConfig(init_leak=1.0)


# -- data ----------------------------------------------------------------------------------------------------------

def test_sequence_bins_events_at_the_flow_interval(tiny_set):
    sequence = tiny_set.sequences[0]
    assert sequence.counts.shape == (4, 2, 32, 32) and sequence.flow.shape == (4, 2, 32, 32)
    assert sequence.counts.sum() == len(sequence.events)
    for k in range(4):
        assert len(sequence.bin_events(k)) == sequence.counts[k].sum()
    mask = sequence.event_mask
    assert mask.any() and not mask.all() and np.all(sequence.counts.sum(1)[mask] > 0)


def test_set_round_trip_and_corruption(tiny_set, tmp_path):
    save_set(tiny_set, tmp_path / "set")
    loaded = load_set(tmp_path / "set")
    assert loaded.seeds == [1, 2] and loaded.clip == CLIP
    for a, b in zip(loaded.sequences, tiny_set.sequences):
        assert np.array_equal(a.events, b.events) and np.array_equal(a.counts, b.counts)
        assert np.array_equal(a.flow, b.flow) and np.array_equal(a.valid, b.valid)
    with (tmp_path / "set" / "sequences.npz").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(FlowDataError, match="checksum"):
        load_set(tmp_path / "set")
    with pytest.raises(FlowDataError, match="needs sequences.json"):
        load_set(tmp_path / "missing")


def test_batches_mirror_the_flow_with_the_image():
    """A known translation (+2, -1) px per bin: every mirrored crop carries the correspondingly flipped flow."""
    flow = np.zeros((3, 2, 16, 16), np.float32)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    counts = np.zeros((3, 2, 16, 16), np.float32)
    counts[:, 1, :, 0] = 1.0  # a marker column at the left edge
    sequence = FlowSequence(0, np.empty(0, EVENT_DTYPE), counts, flow, np.ones((3, 16, 16), bool), 10_000)
    c, f, v = sample_batch((sequence,), batch=64, bins=2, crop=16, rng=np.random.default_rng(0))
    assert c.shape == (2, 64, 2, 16, 16) and v.all()
    left = c[0, :, 1, :, 0].all(axis=1)
    assert np.all(f[:, left, 0] == 2.0) and np.all(f[:, ~left, 0] == -2.0)  # mirrored left-right: dx flips
    assert set(np.unique(f[:, :, 1])) == {-1.0, 1.0}
    with pytest.raises(FlowDataError, match="cannot cut"):
        sample_batch((sequence,), batch=1, bins=4, crop=16, rng=np.random.default_rng(0))


# -- metrics -------------------------------------------------------------------------------------------------------

def test_endpoint_error_and_outliers():
    truth = np.zeros((2, 2, 2))
    estimate = np.zeros((2, 2, 2))
    estimate[:, 0, 0] = (3.0, 4.0)  # 5 px off
    estimate[:, 0, 1] = (1.0, 0.0)
    mask = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(endpoint_errors(estimate, truth, mask), [5.0, 1.0, 0.0])
    errors = FlowErrors()
    errors.add(estimate, truth, mask)
    errors.add(truth, truth, mask)
    summary = errors.summary()
    assert summary["pixels"] == 6 and summary["aee"] == pytest.approx(1.0)
    assert summary["outlier_percent"] == pytest.approx(100 / 6)
    assert np.isnan(FlowErrors().summary()["aee"])
    with pytest.raises(ValueError, match="need estimate and truth"):
        endpoint_errors(estimate, truth, mask[:1])


# -- contrast maximisation -----------------------------------------------------------------------------------------

def test_contrast_maximisation_recovers_a_translation():
    config = dataclasses.replace(CLIP, height=64, width=64, duration_ms=50, seed=3)
    clip = simulate_clip(config, motion=AffineMotion(velocity=(250.0, -120.0), center=(31.5, 31.5)))
    flow = contrast_max_flow(clip.events, 30_000, 10_000, 64, 64)
    np.testing.assert_allclose(flow[:, 32, 32], (2.5, -1.2), atol=0.25)
    errors = FlowErrors()
    errors.add(flow, clip.flow[3], clip.valid[3])
    assert errors.summary()["aee"] < 0.3
    assert np.all(contrast_max_flow(clip.events[:0], 0, 10_000, 64, 64) == 0)  # no events: no motion seen
    with pytest.raises(ValueError, match="window_bins"):
        ContrastMaxConfig(window_bins=0)


# -- pictures ------------------------------------------------------------------------------------------------------

def test_flow_colours_follow_direction_and_speed(tmp_path):
    flow = np.zeros((2, 1, 4))
    flow[:, 0, 0], flow[:, 0, 1], flow[:, 0, 2] = (2.0, 0.0), (1.0, 0.0), (-2.0, 0.0)
    rgb = flow_to_rgb(flow, max_magnitude=2.0, mask=np.array([[True, True, True, False]]))
    assert rgb[0, 0].tolist() == [255, 0, 0]  # rightwards, full speed: red
    assert rgb[0, 1].tolist() == [255, 128, 128]  # half the speed: half the saturation
    assert rgb[0, 2].tolist() == [0, 255, 255]  # leftwards: cyan
    assert rgb[0, 3].tolist() == [0, 0, 0]  # masked out: black
    wheel = colour_wheel(21)
    assert wheel.shape == (21, 21, 3) and wheel[0, 0].tolist() == [0, 0, 0] and wheel[10, 10].tolist() == [255] * 3
    assert wheel[10, 20].tolist() == [255, 0, 0] and wheel[20, 10].tolist()[2] == 0  # right: red; down: no blue
    counts = np.zeros((2, 2, 8, 8), np.float32)
    counts[:, 1, 2:4, 2:4] = 1
    path = render_flow_panels(counts, np.ones((2, 2, 8, 8)), [0.0, 10.0], tmp_path / "f.png", "test")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="expected a flow"):
        flow_to_rgb(np.zeros((3, 2, 2)))


# -- training, checkpoints, evaluation -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "spiking"])
def test_train_save_load_and_evaluate(kind, tiny_set, tmp_path):
    config = FlowTrainConfig(network=FlowNetConfig(kind=kind, **TINY), steps=3, batch=2, bins=2, crop=16)
    model = train(config, tiny_set)
    assert len(model.history["loss"]) == 3 and np.isfinite(model.history["loss"]).all()
    model.save(tmp_path / "model")
    loaded = FlowModel.load(tmp_path / "model")
    assert loaded.train_config == config and loaded.train_seeds == [1, 2]
    counts = tiny_set.sequences[0].counts
    np.testing.assert_array_equal(predict_sequence(loaded.network, counts), predict_sequence(model.network, counts))
    odd = predict_sequence(loaded.network, counts[:, :, :30, :27])  # padded to the network's multiple, cropped back
    assert odd.shape == (4, 2, 30, 27)
    held_out = SequenceSet(CLIP, (simulate_sequence(dataclasses.replace(CLIP, seed=9)),))
    check_held_out(loaded, held_out)
    with pytest.raises(FlowModelError, match="shares 2 generation seeds"):
        check_held_out(loaded, tiny_set)
    results = evaluate({"zero": zero_flow, kind: network_estimator(loaded.network)}, held_out)
    assert results["zero"]["pixels"] == results[kind]["pixels"] == held_out.sequences[0].event_mask.sum()
    assert results["zero"]["aee"] > 0


def test_training_device_is_checked_and_recorded(tiny_set):
    with pytest.raises(FlowModelError, match="device must be auto, cpu, cuda or cuda:N"):
        FlowTrainConfig(network=FlowNetConfig(**TINY), device="gpu")
    model = train(FlowTrainConfig(network=FlowNetConfig(**TINY), steps=1, batch=1, bins=1, crop=16, device="cpu"),
                  tiny_set)
    assert model.history["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(FlowModelError, match="CUDA is not available"):
            train(FlowTrainConfig(network=FlowNetConfig(**TINY), steps=1, batch=1, bins=1, crop=16, device="cuda"),
                  tiny_set)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lstm", "spiking"])
def test_training_on_cuda_gives_a_cpu_model_that_matches_its_loss(kind, tiny_set):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config = FlowTrainConfig(network=FlowNetConfig(kind=kind, **TINY), steps=5, batch=2, bins=2, crop=16, device="cuda")
    model = train(config, tiny_set)
    assert model.history["device"].startswith("cuda") and np.isfinite(model.history["loss"]).all()
    assert all(p.device.type == "cpu" for p in model.network.parameters())
    flows = predict_sequence(model.network, tiny_set.sequences[0].counts)
    assert flows.shape == tiny_set.sequences[0].flow.shape and np.isfinite(flows).all()


def test_warmup_bins_run_without_gradients_and_hand_their_state_to_the_trained_bins(tiny_set, monkeypatch):
    calls = []
    original = FlowNet.forward_scales

    def spy(self, counts, state=None):
        calls.append((len(counts), state is None, torch.is_grad_enabled()))
        return original(self, counts, state)

    monkeypatch.setattr(FlowNet, "forward_scales", spy)
    config = FlowTrainConfig(network=FlowNetConfig(**TINY), steps=2, batch=2, bins=2, crop=16, warmup_bins=1)
    model = train(config, tiny_set)
    assert calls == [(1, True, False), (2, False, True)] * 2 and np.isfinite(model.history["loss"]).all()
    with pytest.raises(FlowModelError, match="warmup_bins"):
        FlowTrainConfig(network=FlowNetConfig(**TINY), warmup_bins=-1)


def test_manifests_from_before_a_setting_existed_load_with_the_values_they_were_built_with(tiny_set, tmp_path):
    legacy = FlowNetConfig(**TINY, coarse_flows=False, detach_reset=False, surrogate="super", surrogate_alpha=1.0)
    model = train(FlowTrainConfig(network=legacy, steps=1, batch=1, bins=1, crop=16), tiny_set)
    model.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "flow_model.json").read_text())
    for section in (manifest["network"], manifest["train"]["network"]):
        for name in ("coarse_flows", "leak_spread", "reset", "detach_reset", "surrogate", "surrogate_alpha",
                     "recurrent_encoders"):
            del section[name]
    (tmp_path / "model" / "flow_model.json").write_text(json.dumps(manifest))
    loaded = FlowModel.load(tmp_path / "model")
    assert loaded.network.config == legacy and loaded.train_config.network == legacy
    assert FlowNetConfig().coarse_flows and FlowNetConfig().surrogate == "tanh"  # new networks get the new recipe


def test_bad_checkpoints_and_configs_are_refused(tiny_set, tmp_path):
    model = train(FlowTrainConfig(network=FlowNetConfig(**TINY), steps=1, batch=1, bins=1, crop=16), tiny_set)
    model.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "flow_model.json").read_text())
    (tmp_path / "model" / "flow_model.json").write_text(json.dumps(manifest | {"format": "other/1"}))
    with pytest.raises(FlowModelError, match="format 'other/1'"):
        FlowModel.load(tmp_path / "model")
    broken = manifest | {"network": manifest["network"] | {"channels": [4, 16]}}
    (tmp_path / "model" / "flow_model.json").write_text(json.dumps(broken))
    with pytest.raises(FlowModelError, match="inconsistent with its manifest"):
        FlowModel.load(tmp_path / "model")
    with pytest.raises(FlowModelError, match="crop must be a positive multiple of 4"):
        FlowTrainConfig(network=FlowNetConfig(**TINY), crop=18)


# -- streaming -------------------------------------------------------------------------------------------------------

def test_flow_grid_downsamples_large_sensors_by_a_whole_factor():
    assert FlowGrid.for_sensor(128, 128) == FlowGrid(128, 128, 1, 8)  # small enough: fed as it is
    grid = FlowGrid.for_sensor(640, 480)
    assert (grid.factor, grid.input_size, grid.shape, grid.cell_px) == (5, (96, 128), (12, 16), 40)
    grid = FlowGrid.for_sensor(1280, 720)
    assert (grid.factor, grid.input_size, grid.shape, grid.cell_px) == (10, (72, 128), (9, 16), 80)
    grid = FlowGrid.for_sensor(346, 260)
    assert (grid.factor, grid.input_size, grid.shape) == (3, (87, 116), (11, 15))


def test_streamed_flow_equals_stepping_the_network_offline_with_empty_bins_as_zeros():
    """A 50x30 sensor downsampled by 4 (13x8, padded to 16x8 for the network) on a 4x4-cell grid with cells cut
    at the edges; bins 1 and 2 follow without a gap, bin 5 after two empty bins, bin 38 after 32, cut to 3."""
    torch.manual_seed(0)
    network = FlowNet(FlowNetConfig(kind="lstm", **TINY)).eval()
    grid = FlowGrid.for_sensor(50, 30, max_side=16, side=4)
    assert (grid.factor, grid.input_size, grid.cell, grid.shape) == (4, (8, 13), 4, (2, 4))
    rng = np.random.default_rng(0)
    bins = [1, 2, 5, 38]
    events = np.concatenate([make_events(np.sort(rng.integers(b * 10_000, (b + 1) * 10_000, 200)),
                                         rng.integers(0, 50, 200), rng.integers(0, 30, 200), rng.integers(0, 2, 200))
                             for b in bins])
    state, streamed = FlowState(), []
    for b in bins:
        flow, state, empty = flow_step(network, grid, state, events[events["t"] // 10_000 == b], b, max_gap_bins=3)
        streamed.append((flow, empty))
    assert [empty for _, empty in streamed] == [0, 0, 2, 3]
    with pytest.raises(ValueError, match="bin 38 does not follow bin 38"):
        flow_step(network, grid, state, events[:0], 38)

    full = to_count_images(events, 30, 50, 10_000, t_start=0, num_bins=39)  # sensor-sized count images
    pooled = np.pad(full, ((0, 0), (0, 0), (0, 2), (0, 2))).reshape(39, 2, 8, 4, 13, 4).sum(axis=(3, 5))
    fed = [1, 2, 3, 4, 5, 35, 36, 37, 38]  # empty bins 3, 4 and the last three before 38
    flows = predict_sequence(network, pooled[fed])[[fed.index(b) for b in bins]]
    inside = np.pad(np.ones((8, 13)), ((0, 0), (0, 3))).reshape(2, 4, 4, 4).sum(axis=(1, 3))
    cells = np.pad(flows, ((0, 0), (0, 0), (0, 0), (0, 3))).reshape(4, 2, 2, 4, 4, 4).sum(axis=(3, 5)) / inside
    for (flow, _), expected in zip(streamed, cells * 4):  # coarse pixels per bin -> sensor pixels per bin
        assert flow.shape == (2, 2, 4) and np.isfinite(flow).all()
        np.testing.assert_allclose(flow, expected, atol=6e-4)
    assert np.abs(cells).max() > 0.01  # not all rounded away


# -- command line ----------------------------------------------------------------------------------------------------

def _invoke(*args: str):
    return CliRunner().invoke(events_cli, list(args))


def test_cli_data_train_eval_show(tmp_path, monkeypatch):
    monkeypatch.delenv("SPIKEBOT_DATA", raising=False)
    size = ["--height", "32", "--width", "32", "--duration-ms", "40"]
    for name, seeds in (("train", "0:2"), ("test", "50,51")):
        result = _invoke("flow-data", "--out", str(tmp_path / name), "--seeds", seeds, *size)
        assert result.exit_code == 0, result.output
    result = _invoke("flow-train", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "spiking"), "--model",
                     "spiking", "--channels", "4,8", "--steps", "2", "--batch", "1", "--bins", "2", "--crop", "16")
    assert result.exit_code == 0, result.output
    result = _invoke("flow-eval", "--data", str(tmp_path / "test"), "--model", str(tmp_path / "spiking"),
                     "--out", str(tmp_path / "eval.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["seeds"] == [50, 51]
    assert set(report["results"]) == {"zero flow", "contrast maximisation", "spiking (spiking)"}
    assert report["results"]["spiking (spiking)"]["parameters"] > 0
    result = _invoke("flow-eval", "--data", str(tmp_path / "train"), "--model", str(tmp_path / "spiking"))
    assert result.exit_code == 1 and "shares 2 generation seeds" in result.output

    clip = simulate_clip(dataclasses.replace(CLIP, seed=4))
    write_events_npz(tmp_path / "clip.npz", EventRecording(clip.events, 32, 32, "npz"))
    for extra in ([], ["--model", str(tmp_path / "spiking")]):
        result = _invoke("flow-show", str(tmp_path / "clip.npz"), "--out", str(tmp_path / "show.png"),
                         "--duration-ms", "30", "--panels", "2", *extra)
        assert result.exit_code == 0, result.output
        assert (tmp_path / "show.png").stat().st_size > 1000


def test_cli_data_workers_simulate_the_same_set(tmp_path, monkeypatch):
    monkeypatch.delenv("SPIKEBOT_DATA", raising=False)
    size = ["--height", "32", "--width", "32", "--duration-ms", "30", "--seeds", "3:6"]
    for workers in ("1", "2"):
        result = _invoke("flow-data", "--out", str(tmp_path / workers), "--workers", workers, *size)
        assert result.exit_code == 0, result.output
    serial, parallel = load_set(tmp_path / "1"), load_set(tmp_path / "2")
    assert serial.seeds == parallel.seeds == [3, 4, 5]
    for one, other in zip(serial.sequences, parallel.sequences):
        np.testing.assert_array_equal(one.events, other.events)
        np.testing.assert_array_equal(one.flow, other.flow)


def test_cli_bad_inputs(tmp_path):
    for network, message in (("{", "not JSON"), ('{"kind": "lstm"}', "without kind"),
                             ('{"bogus": 1}', "unexpected keyword argument 'bogus'"),
                             ('{"surrogate": "erf"}', "surrogate must be one of")):
        result = _invoke("flow-train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m"), "--model",
                         "spiking", "--network", network)
        assert result.exit_code != 0 and message in result.output, result.output
    result = _invoke("flow-data", "--out", str(tmp_path / "x"), "--seeds", "a:b")
    assert result.exit_code == 2 and "START:STOP" in result.output
    result = _invoke("flow-eval", "--data", str(tmp_path / "none"))
    assert result.exit_code == 1 and "needs sequences.json" in result.output
    result = _invoke("flow-eval", "--data", str(tmp_path / "none"), "--no-baselines")
    assert result.exit_code == 2 and "nothing to score" in result.output
    result = _invoke("flow-show", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 1


@pytest.mark.real_data
def test_flow_show_on_a_real_recording(shared_data, tmp_path):
    result = _invoke("flow-show", str(shared_data / "event_samples" / "tonic_sample.aedat4"), "--out",
                     str(tmp_path / "real.png"), "--duration-ms", "30", "--panels", "1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "real.png").stat().st_size > 5000
