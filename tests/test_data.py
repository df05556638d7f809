import numpy as np
import pytest
from PIL import Image

from conftest import write_images
from vpr.data import GroundTruth, Traverse, read_image
from vpr.datasets import (
    get_spec,
    list_images,
    load_folder_dataset,
    load_registered,
    load_registry,
    read_ground_truth_file,
    resolve_data_root,
    split_places,
)
from vpr.errors import DatasetError

RNG = np.random.default_rng(0)


def random_images(n, height=20, width=30):
    return RNG.integers(0, 255, (n, height, width, 3), dtype=np.uint8)


def test_tolerance_ground_truth_matches_brute_force_on_unsorted_positions():
    query_positions, reference_positions = np.array([5, 0, 9]), np.array([9, 3, 5, 4, 0, 7])
    truth = GroundTruth.from_positions(query_positions, reference_positions, tolerance=1)
    expected = np.abs(query_positions[:, None] - reference_positions[None, :]) <= 1
    np.testing.assert_array_equal(truth.to_dense(), expected)
    with pytest.raises(ValueError):
        GroundTruth.from_positions(query_positions, reference_positions, tolerance=-1)


def test_pairs_outside_the_dataset_are_refused():
    with pytest.raises(DatasetError, match=r"gt.csv: pair \(0, 7\)"):
        GroundTruth.from_pairs(np.array([[0, 1], [0, 7]]), 2, 5, source="gt.csv")


def test_vprbench_npy_ground_truth(tmp_path):
    rows = np.empty((3, 2), dtype=object)
    rows[0] = [0, [0, 1]]
    rows[1] = [1, [2]]
    rows[2] = [2, []]
    np.save(tmp_path / "gt.npy", rows, allow_pickle=True)
    truth = read_ground_truth_file(tmp_path / "gt.npy", n_query=3, n_reference=4)
    assert truth.to_dense().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert truth.has_match().tolist() == [True, True, False]


def test_csv_ground_truth_with_header_and_bad_line(tmp_path):
    (tmp_path / "gt.csv").write_text("query_index,reference_index\n0,1\n1,0\n")
    assert read_ground_truth_file(tmp_path / "gt.csv", 2, 2).to_dense().tolist() == [[0, 1], [1, 0]]
    (tmp_path / "bad.csv").write_text("0,1\n1,x\n")
    with pytest.raises(DatasetError, match="bad.csv, line 2"):
        read_ground_truth_file(tmp_path / "bad.csv", 2, 2)
    with pytest.raises(DatasetError, match="not found"):
        read_ground_truth_file(tmp_path / "missing.csv", 2, 2)
    (tmp_path / "gt.mat").write_text("")
    with pytest.raises(DatasetError, match="unsupported"):
        read_ground_truth_file(tmp_path / "gt.mat", 2, 2)


def test_corrupt_npy_ground_truth_is_refused(tmp_path):
    (tmp_path / "gt.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DatasetError, match="gt.npy"):
        read_ground_truth_file(tmp_path / "gt.npy", 2, 2)


def test_folder_images_sort_naturally_and_ignore_other_files(tmp_path):
    for name in ("img10.png", "img2.png", "img1.png"):
        Image.fromarray(random_images(1)[0]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(tmp_path)] == ["img1.png", "img2.png", "img10.png"]


def test_folder_dataset_frame_aligned(tmp_path):
    write_images(tmp_path / "ref", random_images(6))
    write_images(tmp_path / "qry", random_images(6))
    dataset = load_folder_dataset(tmp_path / "ref", tmp_path / "qry", tolerance=1)
    assert len(dataset.reference) == 6 and dataset.ground_truth.to_dense().sum() == 6 + 2 * 5
    assert dataset.reference[0].shape == (20, 30, 3)


def test_folder_dataset_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found: .*nowhere"):
        load_folder_dataset(tmp_path / "nowhere", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images.*empty"):
        load_folder_dataset(tmp_path / "empty", tmp_path / "empty")
    write_images(tmp_path / "ref", random_images(5))
    write_images(tmp_path / "qry", random_images(4))
    with pytest.raises(DatasetError, match="5 images and .*qry has 4"):
        load_folder_dataset(tmp_path / "ref", tmp_path / "qry")
    (tmp_path / "gt.csv").write_text("0,0\n3,4\n")
    dataset = load_folder_dataset(tmp_path / "ref", tmp_path / "qry", ground_truth_file=tmp_path / "gt.csv")
    assert dataset.ground_truth.shape == (4, 5)


def test_truncated_and_malformed_images_name_the_file(tmp_path):
    path = write_images(tmp_path, random_images(1, 64, 64), suffix=".jpg")[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cannot read image .*frame000.jpg"):
        read_image(path)
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a png")
    with pytest.raises(DatasetError, match="cannot read image .*fake.png"):
        read_image(fake)
    with pytest.raises(DatasetError, match="not found"):
        read_image(tmp_path / "gone.png")


def test_traverse_subset_keeps_reader():
    traverse = Traverse("t", ("a", "b", "c"), reader=lambda frame: np.full((2, 2), ord(frame), np.uint8))
    assert [int(image[0, 0]) for image in traverse.subset([2, 0])] == [ord("c"), ord("a")]


def test_registry_has_the_required_datasets():
    registry = load_registry()
    for name in ("demo", "gardens_point", "nordland_trimmed", "nordland", "oxford_robotcar", "st_lucia", "spedtest", "corridor"):
        spec = registry[name]
        assert spec.licence and spec.description and spec.traverses
        assert spec.is_synthetic or spec.fetch.url or spec.fetch.instructions
    assert set(registry["gardens_point"].traverses) == {"day_left", "day_right", "night_right"}
    with pytest.raises(DatasetError, match="unknown dataset 'atlantis'"):
        get_spec("atlantis")


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKEBOT_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag") == (tmp_path / "flag").resolve()
    assert resolve_data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("SPIKEBOT_DATA")
    assert resolve_data_root().name == "datasets"


def test_registered_dataset_missing_folder_says_how_to_fetch(tmp_path):
    with pytest.raises(DatasetError, match="not found.*spikebot vpr fetch gardens_point"):
        load_registered("gardens_point", data_root=tmp_path)
    with pytest.raises(DatasetError, match="no traverse 'noon'"):
        load_registered("gardens_point", "noon", data_root=tmp_path)


def test_splits():
    assert split_places(10, 4, "calibration", "x").tolist() == [0, 1, 2, 3]
    assert split_places(10, 4, "test", "x").tolist() == [4, 5, 6, 7, 8, 9]
    assert len(split_places(10, None, "all", "x")) == 10
    with pytest.raises(DatasetError, match="no calibration/test split"):
        split_places(10, None, "test", "gardens_point")


def test_demo_dataset_splits_are_disjoint_and_aligned():
    calibration = load_registered("demo", split="calibration")
    test = load_registered("demo", split="test")
    assert len(calibration.query) == 80 and len(test.query) == 160
    assert not set(calibration.query.frames) & set(test.query.frames)
    assert test.ground_truth.shape == (160, 160)
    assert test.info["split"] == "test" and test.info["tolerance"] == 1
