"""The spiking methods through the command line: train, save, reload, refuse, calibrate, ablate."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from spikebot.cli import main
from vpr.snn.config import EnsembleConfig, NetworkConfig

SMALL = EnsembleConfig(network=replace(NetworkConfig(), n_neurons=30, places_per_module=20, epochs=2), seeds=(0, 1, 2))


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"ensemble": SMALL.to_dict()}))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_eval_trains_and_reports_the_ensemble(tmp_path, config_file):
    result = invoke("vpr", "eval", "--method", "snn-ensemble", "--config", config_file, "--query", "overcast", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["method"] == "snn-ensemble" and summary["n_reference"] == 240
    stats = summary["config"]["method"]["map_statistics"]
    assert stats["members"] == 3 and stats["modules_per_member"] == [12, 12, 12] and stats["synapses"] == 3 * 12 * 784 * 30
    assert summary["recall"]["10"] > 10 / 240  # better than chance on the easy demo pair


def test_build_map_then_eval_from_the_map(tmp_path, config_file):
    assert invoke("vpr", "build-map", "--method", "snn-ensemble", "--config", config_file, "--out", tmp_path / "map").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == ["arrays.npz", "map.json"]  # checkpoints cleaned up
    trained = invoke("vpr", "eval", "--method", "snn-ensemble", "--config", config_file, "--out", tmp_path / "a")
    assert trained.exit_code == 0, trained.output
    loaded = invoke("vpr", "eval", "--method", "snn-ensemble", "--map", tmp_path / "map", "--out", tmp_path / "b")
    assert loaded.exit_code == 0, loaded.output
    first, second = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert first["recall"] == second["recall"] and first["auc_pr"] == second["auc_pr"]


def test_a_map_of_other_places_or_a_corrupt_map_is_refused(tmp_path, config_file):
    invoke("vpr", "build-map", "--method", "snn-modular", "--config", config_file, "--out", tmp_path / "map")
    other = invoke("vpr", "eval", "--method", "snn-modular", "--map", tmp_path / "map", "--reference", "night", "--query", "day")
    assert other.exit_code != 0 and "other reference images" in other.output
    (tmp_path / "map" / "arrays.npz").write_bytes(b"truncated")
    corrupt = invoke("vpr", "eval", "--method", "snn-modular", "--map", tmp_path / "map")
    assert corrupt.exit_code != 0 and "corrupt map" in corrupt.output and "Traceback" not in corrupt.output


def test_sad_takes_no_map():
    result = invoke("vpr", "eval", "--method", "sad", "--map", "somewhere")
    assert result.exit_code != 0 and "--map applies to" in result.output


def test_calibrate_uses_only_the_calibration_split(tmp_path, config_file):
    result = invoke("vpr", "calibrate", "--dataset", "demo", "--config", config_file, "--out", tmp_path / "cal.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "cal.json").read_text())
    assert record["calibration"]["split"] == "calibration" and record["calibration"]["data"]["split"] == "calibration"
    rows = record["calibration"]["rows"]
    assert {row["epochs"] for row in rows} == {5, 10, 20}
    best = max(rows, key=lambda row: row["recall_at_1"])
    assert record["ensemble"]["network"]["epochs"] == best["epochs"]
    assert record["ensemble"]["network"]["hyperactive_threshold"] == best["hyperactive_threshold"]
    combinations = [row for row in record["calibration"]["combination_rows"] if "combination" in row]
    members = [row for row in record["calibration"]["combination_rows"] if "member" in row]
    assert [row["member"] for row in members] == [0, 1, 2] and all(0 < row["covered_places"] <= 1 for row in members)
    assert record["ensemble"]["combination"] == max(combinations, key=lambda row: row["recall_at_1"])["combination"]


def test_calibrate_chooses_among_candidate_inputs(tmp_path, config_file):
    result = invoke("vpr", "calibrate", "--dataset", "demo", "--config", config_file,
                    "--input", "12x12:5", "--input", "20x10:5", "--out", tmp_path / "cal.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "cal.json").read_text())
    rows = record["calibration"]["rows"]
    assert {row["input"] for row in rows} == {"12x12 pixel 5", "20x10 pixel 5"}
    best = max(rows, key=lambda row: row["recall_at_1"])
    chosen = record["ensemble"]["network"]["preprocess"]
    assert f"{chosen['width']}x{chosen['height']} pixel {chosen['patch_size']}" == best["input"]


def test_calibrate_refuses_a_malformed_input():
    result = invoke("vpr", "calibrate", "--dataset", "demo", "--input", "32by32", "--out", "unused.json")
    assert result.exit_code != 0 and "expected WxH:PATCH" in result.output


def test_benchmark_ablation_rows_come_from_one_training(tmp_path, config_file):
    result = invoke("vpr", "benchmark", "--protocol", "demo:day:overcast:test", "--method", "snn-ensemble",
                    "--config", config_file, "--ablation", "--seq-len", "1", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "benchmark.json").read_text())
    names = [row["method"] for row in rows]
    assert names[:3] == ["snn-modular, no regularisation", "snn-modular", "snn-ensemble x3"]
    assert {"snn-ensemble x3, normalised sum", "snn-ensemble x3, covered mean"} <= set(names)
    assert len({row["timings"]["build_map_seconds"] for row in rows[:2]}) == 1
