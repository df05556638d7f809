import json
import zipfile

import pytest
from click.testing import CliRunner

from conftest import write_images
from spikebot.cli import main
from vpr.datasets import DatasetSpec, FetchRecipe
from vpr.errors import FetchError
from vpr.fetch import fetch_dataset
from vpr.synthetic import RouteConfig, render_traverse


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and "spikebot" in result.output


def test_eval_demo_writes_everything(tmp_path):
    result = run("vpr", "eval", "--dataset", "demo", "--seq-len", "5", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "results.json").read_text())
    assert set(summary["recall"]) == {"1", "5", "10"}
    assert 0 <= summary["recall"]["1"] <= summary["recall"]["5"] <= summary["recall"]["10"] <= 1
    for key in ("auc_pr", "recall_at_100p", "n_reference", "n_query", "method", "config", "timings", "spikebot_version", "git_commit"):
        assert key in summary
    assert summary["config"]["sequence"]["length"] == 5
    assert summary["config"]["method"]["config"]["preprocess"] == {"width": 64, "height": 32, "patch_mode": "block", "patch_size": 8}
    assert summary["timings"]["queries_per_second"] > 0
    for name in ("results.md", "pr_curve.png", "distance_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "R@1" in result.output


def test_sequence_matching_helps_on_the_demo_route(tmp_path):
    recalls = {}
    for length in (1, 10):
        assert run("vpr", "eval", "--seq-len", str(length), "--out", str(tmp_path / str(length))).exit_code == 0
        recalls[length] = json.loads((tmp_path / str(length) / "results.json").read_text())["recall"]["1"]
    assert recalls[10] > recalls[1]


def test_eval_on_a_folder_dataset_with_csv_ground_truth(tmp_path):
    config = RouteConfig(n_places=20)
    write_images(tmp_path / "data" / "ref", render_traverse(config, "day"))
    write_images(tmp_path / "data" / "qry", render_traverse(config, "overcast")[:10])
    (tmp_path / "gt.csv").write_text("\n".join(f"{i},{i}" for i in range(10)))
    result = run("vpr", "eval", "--dataset", str(tmp_path / "data"), "--reference", "ref", "--query", "qry",
                 "--ground-truth", str(tmp_path / "gt.csv"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (summary["n_reference"], summary["n_query"]) == (20, 10)
    assert summary["recall"]["1"] > 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "atlantis"], "neither a registered dataset"),
        (["--dataset", "demo", "--query", "noon"], "no traverse 'noon'"),
        (["--dataset", "gardens_point", "--split", "test", "--data-root", "/nonexistent"], "not found"),
    ],
)
def test_eval_errors_are_one_clear_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["vpr", "eval", *args, "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_folder_dataset_needs_traverses(tmp_path):
    result = CliRunner().invoke(main, ["vpr", "eval", "--dataset", str(tmp_path)])
    assert result.exit_code != 0 and "--reference and --query" in result.output


def test_benchmark_computes_each_distance_matrix_once(tmp_path):
    result = run("vpr", "benchmark", "--protocol", "demo:day:night:test", "--seq-len", "1", "--seq-len", "5",
                 "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "benchmark.json").read_text())
    assert [row["config"]["sequence"]["length"] for row in rows] == [1, 5]
    assert rows[0]["n_query"] == 160 and rows[0]["config"]["dataset"]["split"] == "test"
    assert "| demo |" in (tmp_path / "benchmark.md").read_text()


def test_model_and_variant_options_refuse_methods_without_a_model(tmp_path):
    result = CliRunner().invoke(main, ["vpr", "eval", "--method", "sad", "--model", str(tmp_path)])
    assert result.exit_code != 0 and "--model applies to" in result.output and "densevlad" in result.output
    result = CliRunner().invoke(main, ["vpr", "benchmark", "--variant", "nosuch=somewhere"])
    assert result.exit_code != 0 and "expected METHOD=DIR" in result.output


def test_datasets_lists_the_registry():
    result = run("vpr", "datasets")
    assert "nordland_trimmed" in result.output and "CC BY 3.0" in result.output


def _spec(url):
    return DatasetSpec(name="toy", description="", source="test", traverses={"a": "a", "b": "b"},
                       ground_truth="frame_aligned", default_tolerance=0, licence="", default_reference="a",
                       default_query="b", fetch=FetchRecipe(url=url))


def test_fetch_unpacks_an_archive_and_finds_the_traverses(tmp_path):
    images = render_traverse(RouteConfig(n_places=3), "day")
    write_images(tmp_path / "src" / "deep" / "toy" / "a", images)
    write_images(tmp_path / "src" / "deep" / "toy" / "b", images)
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in (tmp_path / "src").rglob("*.png"):
            bundle.write(path, path.relative_to(tmp_path / "src"))
    target = fetch_dataset(_spec(archive.as_uri()), tmp_path / "root")
    assert target == (tmp_path / "root" / "toy").resolve()
    assert len(list((target / "a").glob("*.png"))) == 3 and len(list((target / "b").glob("*.png"))) == 3


def test_fetch_offline_fails_clearly_and_leaves_nothing(tmp_path):
    with pytest.raises(FetchError, match="could not download http://127.0.0.1:9/toy.zip.*offline"):
        fetch_dataset(_spec("http://127.0.0.1:9/toy.zip"), tmp_path, timeout=5)
    assert not (tmp_path / "toy").exists()


def test_fetch_cli_reports_manual_datasets():
    result = CliRunner().invoke(main, ["vpr", "fetch", "oxford_robotcar"])
    assert result.exit_code != 0 and "registered account" in result.output
    assert CliRunner().invoke(main, ["vpr", "fetch", "demo"]).exit_code != 0
