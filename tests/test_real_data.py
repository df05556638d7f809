"""Checks on the real datasets under $SPIKEBOT_DATA (skipped with the reason when it is absent)."""

import json

import pytest
from click.testing import CliRunner

from spikebot.cli import main
from vpr.datasets import load_registered
from vpr.preprocess import to_grayscale

pytestmark = pytest.mark.real_data


def test_gardens_point_layout(shared_data):
    dataset = load_registered("gardens_point", "day_right", "night_right", data_root=shared_data)
    assert len(dataset.reference) == len(dataset.query) == 200
    assert dataset.reference[0].shape == (540, 960, 3) and dataset.query[0].shape == (360, 640, 3)
    assert dataset.ground_truth.to_dense().sum(axis=1).tolist()[:3] == [3, 4, 5]  # tolerance 2 at the start


def test_sad_on_gardens_point_day_right_to_night_right(shared_data, tmp_path):
    result = CliRunner().invoke(
        main,
        ["vpr", "eval", "--dataset", "gardens_point", "--reference", "day_right", "--query", "night_right",
         "--method", "sad", "--data-root", str(shared_data), "--out", str(tmp_path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["n_query"] == summary["n_reference"] == 200
    chance = 5 / 200  # five references lie within the +-2 frame tolerance
    assert summary["recall"]["1"] > 5 * chance


def test_nordland_dark_frames_and_splits(shared_data):
    calibration = load_registered("nordland_trimmed", split="calibration", data_root=shared_data)
    test = load_registered("nordland_trimmed", split="test", data_root=shared_data)
    removed = calibration.info["dark_frame_filter"]["removed"]
    assert 150 <= removed <= 250
    assert len(calibration.reference) == 600
    assert len(test.reference) == len(test.query) == 3576 - removed - 600
    assert not set(calibration.reference.frames) & set(test.reference.frames)
    # Summer and winter frames of one place share a file name: the split keeps them aligned.
    assert [f.rsplit("/", 1)[1] for f in test.reference.frames] == [f.rsplit("/", 1)[1] for f in test.query.frames]
    assert calibration.info["dark_frame_filter"]["removed_frames"][0].startswith("images-")
    for traverse in (test.reference, test.query):
        assert min(to_grayscale(image).mean() for image in traverse) >= 10.0
