"""The ESIM-style simulator and the known-motion clip generator (events/simulator.py)."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from events.io import EVENT_DTYPE, read_events
from events.simulator import (
    AffineMotion,
    ClipConfig,
    EsimConfig,
    affine_flow,
    apply_refractory,
    load_photograph,
    simulate_clip,
    simulate_frames,
)
from spikebot.cli import main

EXACT = EsimConfig(threshold_on=0.2, threshold_off=0.2, threshold_sigma=0.0, refractory_us=0, noise_rate_hz=0.0)


def _log_ramp(start: float, end: float, steps: int, duration_us: int, eps: float, size=(4, 5)):
    """Uniform frames whose log intensity log(I + eps) goes linearly from ``start`` to ``end``."""
    levels = np.linspace(start, end, steps)
    frames = (np.exp(levels) - eps)[:, None, None] * np.ones(size)
    return frames, np.linspace(0, duration_us, steps).astype(np.int64)


def test_brightening_gives_only_on_events_at_the_expected_count_and_times():
    start, end = math.log(0.11), math.log(0.71)  # a change of 1.865 log units: 9 crossings of C = 0.2
    frames, times = _log_ramp(start, end, steps=11, duration_us=10_000, eps=EXACT.log_eps)
    events = simulate_frames(frames, times, EXACT)
    assert events.dtype == EVENT_DTYPE and np.all(events["p"] == 1)
    per_pixel = np.bincount(events["y"].astype(int) * 5 + events["x"], minlength=20)
    assert np.all(per_pixel == math.floor((end - start) / 0.2)) and per_pixel[0] == 9
    expected = np.floor(10_000 * 0.2 * np.arange(1, 10) / (end - start))  # log linear in time: evenly spaced
    pixel0 = np.sort(events["t"][(events["x"] == 0) & (events["y"] == 0)])
    assert np.all(np.abs(pixel0 - expected) <= 1)
    assert np.all(np.diff(events["t"]) >= 0)


def test_dimming_gives_only_off_events():
    frames, times = _log_ramp(math.log(0.8), math.log(0.2), steps=5, duration_us=4_000, eps=EXACT.log_eps)
    events = simulate_frames(frames, times, EXACT)
    assert len(events) == 20 * math.floor(math.log(0.8 / 0.2) / 0.2) and np.all(events["p"] == 0)


def test_threshold_spread_varies_counts_around_the_mean():
    frames, times = _log_ramp(math.log(0.05), math.log(0.95), steps=30, duration_us=30_000, eps=0.01,
                              size=(20, 20))
    spread = EsimConfig(threshold_sigma=0.03, refractory_us=0)
    events = simulate_frames(frames, times, spread, seed=4)
    counts = np.bincount(events["y"].astype(int) * 20 + events["x"], minlength=400)
    assert counts.std() > 0.5 and abs(counts.mean() - (math.log(0.95 / 0.05) / 0.2 - 0.5)) < 1.0


def test_refractory_period_is_respected():
    frames, times = _log_ramp(math.log(0.05), math.log(0.95), steps=3, duration_us=2_000, eps=0.01)
    free = simulate_frames(frames, times, EXACT)
    config = EsimConfig(threshold_sigma=0.0, refractory_us=500, noise_rate_hz=20_000.0)
    held = simulate_frames(frames, times, config, seed=1)
    assert len(held) < len(free)
    for pixel in range(20):
        mine = held["t"][(held["y"].astype(int) * 5 + held["x"]) == pixel]
        assert len(mine) >= 2 and np.all(np.diff(np.sort(mine)) >= 500)


def test_apply_refractory_keeps_candidates_greedily_in_time():
    pixel = np.array([0, 0, 0, 0, 1])
    time = np.array([40, 0, 20, 70, 5])
    keep, last = apply_refractory(pixel, time, np.array([-10**9, 3]), refractory_us=30)
    assert keep.tolist() == [True, True, False, True, False]  # pixel 0 keeps 0, 40, 70; pixel 1 fired at 3
    assert last.tolist() == [70, 3]


def test_affine_flow_of_rotation_and_translation():
    rotation = AffineMotion(angular_velocity=math.pi / 2, center=(0.0, 0.0))
    flow = affine_flow(rotation, t_us=0, interval_us=10_000, height=1, width=11)
    angle = math.pi / 2 * 0.01
    np.testing.assert_allclose(flow[:, 0, 10], [10 * math.cos(angle) - 10, 10 * math.sin(angle)], atol=1e-5)
    assert np.allclose(flow[:, 0, 0], 0)
    later = affine_flow(rotation, t_us=250_000, interval_us=10_000, height=1, width=11)
    np.testing.assert_allclose(later, flow, atol=1e-5)  # constant rates: the field does not change with time
    moving = affine_flow(AffineMotion(velocity=(200.0, -50.0)), 0, 10_000, 3, 4)
    assert np.allclose(moving[0], 2.0) and np.allclose(moving[1], -0.5)


def _image_of_warped_events(events, flow, flow_t_us, interval_us, height, width, use_flow=True):
    """Events moved back to t = 0 along the flow at their pixel and interval, counted per (rounded) pixel."""
    t = events["t"].astype(np.float64)
    x, y = events["x"].astype(np.float64), events["y"].astype(np.float64)
    if use_flow:
        k = np.clip(np.searchsorted(flow_t_us, events["t"], side="right") - 1, 0, len(flow) - 1)
        velocity = flow[k, :, events["y"], events["x"]] / interval_us  # pixels per microsecond
        x, y = x - velocity[:, 0] * t, y - velocity[:, 1] * t
    margin = 40
    col, row = np.round(x).astype(int) + margin, np.round(y).astype(int) + margin
    inside = (col >= 0) & (col < width + 2 * margin) & (row >= 0) & (row < height + 2 * margin)
    image = np.zeros((height + 2 * margin, width + 2 * margin))
    np.add.at(image, (row[inside], col[inside]), 1.0)
    return image


def test_translation_events_agree_with_the_ground_truth_flow():
    """Contrast maximisation: warping events by the true flow sharpens their image compared with no warp."""
    config = ClipConfig(height=64, width=64, duration_ms=60, seed=5,
                        esim=EsimConfig(threshold_sigma=0.02, refractory_us=50))
    motion = AffineMotion(velocity=(250.0, -150.0), center=(31.5, 31.5))
    clip = simulate_clip(config, motion=motion)
    assert len(clip.flow) == 6 and clip.valid.all()
    np.testing.assert_allclose(clip.flow[:, 0], 2.5, atol=1e-4)  # px per 10 ms
    np.testing.assert_allclose(clip.flow[:, 1], -1.5, atol=1e-4)
    events = clip.events
    assert len(events) > 5000 and np.all(np.diff(events["t"]) >= 0)
    args = (clip.flow_t_us, config.flow_interval_us, 64, 64)
    sharp = _image_of_warped_events(events, clip.flow, *args).var()
    blurred = _image_of_warped_events(events, clip.flow, *args, use_flow=False).var()
    wrong = _image_of_warped_events(events, -clip.flow, *args).var()
    assert sharp > 2 * blurred and sharp > 2 * wrong
    for factor in (0.8, 1.2):  # the magnitude is right too, not only the direction
        assert sharp > 1.15 * _image_of_warped_events(events, factor * clip.flow, *args).var()


def test_clips_are_deterministic_by_seed():
    config = ClipConfig(height=32, width=32, duration_ms=40, seed=11, esim=EsimConfig(noise_rate_hz=5.0))
    first, again = simulate_clip(config), simulate_clip(config)
    assert len(first.events) > 100 and np.array_equal(first.events, again.events)
    assert np.array_equal(first.flow, again.flow) and first.motion == again.motion
    other = simulate_clip(ClipConfig(height=32, width=32, duration_ms=40, seed=12, esim=EsimConfig(noise_rate_hz=5.0)))
    assert other.motion != first.motion and not np.array_equal(other.events[:100], first.events[:100])


def test_substeps_follow_the_fastest_pixel():
    config = ClipConfig(height=16, width=16, duration_ms=20)
    slow = simulate_clip(config, motion=AffineMotion(velocity=(10.0, 0.0)))
    fast = simulate_clip(config, motion=AffineMotion(velocity=(1200.0, 1600.0)))
    assert slow.substeps == 2 * 10  # the 1 kHz floor
    assert fast.substeps == 2 * 20  # 20 px per 10 ms at <= 1 px per sub-step


def test_valid_mask_marks_where_the_view_leaves_the_photograph():
    config = ClipConfig(height=16, width=16, duration_ms=300, source_scale=1.5)
    clip = simulate_clip(config, motion=AffineMotion(velocity=(100.0, 0.0)))
    assert clip.valid[0].all() and not clip.valid[-1].all()


@pytest.mark.real_data
def test_a_real_photograph(shared_data):
    photo = load_photograph(shared_data / "gardens_point" / "day_left" / "Image010.jpg")
    clip = simulate_clip(ClipConfig(height=64, width=64, duration_ms=30, seed=2), photo, source_name="Image010.jpg")
    assert len(clip.events) > 500 and 0.2 < clip.events["p"].mean() < 0.8


def test_cli_simulate(tmp_path):
    out = tmp_path / "clip"
    result = CliRunner().invoke(main, ["events", "simulate", "--out", str(out), "--seed", "3", "--duration-ms", "30",
                                       "--height", "32", "--width", "48", "--image", "procedural"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 3 and manifest["config"]["esim"]["threshold_on"] == 0.2
    assert ClipConfig.from_dict(manifest["config"]) == ClipConfig(height=32, width=48, duration_ms=30.0, seed=3)
    recording = read_events(out / "events.npz")
    assert recording.sensor_size == (48, 32) and len(recording.events) == manifest["events"] > 0
    with np.load(out / "flow.npz") as flow:
        assert flow["flow"].shape == (3, 2, 32, 48) and flow["t_us"].tolist() == [0, 10_000, 20_000]
        assert flow["valid"].shape == (3, 32, 48) and int(flow["interval_us"]) == 10_000


def test_bad_inputs():
    with pytest.raises(ValueError, match="frames"):
        simulate_frames(np.zeros((3, 4, 4)), np.arange(2))
    with pytest.raises(ValueError, match="must not decrease"):
        simulate_frames(np.zeros((2, 4, 4)), np.array([10, 5]))
    with pytest.raises(ValueError, match="thresholds must be positive"):
        EsimConfig(threshold_on=0)
