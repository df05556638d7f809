"""The spiking core: closed forms against norse's step-by-step simulation, learning, readout, artefacts."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from vpr.errors import SpikebotError
from vpr.snn.config import EnsembleConfig, NetworkConfig
from vpr.snn.dynamics import first_spike_time, presentation_periods, simulate_presentation
from vpr.snn.learning import normalise_weights_, weight_change_closed_form, weight_change_from_spike_trains
from vpr.snn.model import CompiledReadout, MapError, ModularNetwork, SpikingMap
from vpr.snn.readout import assign_neurons, place_scores, query_responses, winner_spike_counts
from vpr.snn.training import module_regions

FINE = NetworkConfig(dt_ms=0.02, presentation_ms=120.0)


def random_drive(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return 1.0 + 3.0 * torch.rand(shape, generator=generator)


def test_first_spike_time_by_hand():
    # tau ln(I / (I - theta)): I = 2, theta = 1, tau = 100 ms -> 100 ln 2.
    assert first_spike_time(torch.tensor([2.0]), torch.tensor([1.0]), 100.0).item() == pytest.approx(100 * np.log(2))
    assert torch.isinf(first_spike_time(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 1.0]), 100.0)).all()


def test_closed_form_counts_match_norse_simulation_without_inhibition():
    drive = random_drive((2, 1, 50))
    thresholds = 1.0 + torch.rand(2, 50, generator=torch.Generator().manual_seed(1))
    simulated = simulate_presentation(drive, thresholds, FINE, inhibition=False).sum(dim=1)
    closed = torch.floor(FINE.presentation_ms / presentation_periods(drive[:, 0], thresholds, FINE, inhibition=False))
    # Euler steps of 0.02 ms delay each spike by less than a step; counts agree except right at a boundary.
    assert (simulated == closed).float().mean() > 0.9
    assert (simulated - closed).abs().max() <= 1


def test_winner_take_all_matches_norse_simulation():
    drive = random_drive((4, 1, 40), seed=2)
    thresholds = torch.ones(4, 40)
    config = replace(FINE, inhibition_latency_ms=0.5)
    simulated = simulate_presentation(drive, thresholds, config, inhibition=True).sum(dim=1)
    periods = presentation_periods(drive[:, 0], thresholds, config, inhibition=True)
    closed = torch.floor(config.presentation_ms / periods)
    # The same winners in every module, except a neuron whose first spike falls within a few Euler steps of
    # the inhibition's arrival, where discretisation decides.
    first = first_spike_time(drive[:, 0], thresholds, config.tau_mem_ms)
    boundary = first.amin(dim=1, keepdim=True) + config.inhibition_latency_ms
    clear = (first - boundary).abs() > 5 * config.dt_ms
    assert torch.equal((simulated > 0)[clear], (closed > 0)[clear])
    assert clear.float().mean() > 0.9
    assert (simulated - closed)[clear].abs().max() <= 1
    assert ((closed > 0).sum(dim=1) < 40).all()  # inhibition silenced most neurons


def test_rate_readout_is_the_long_run_firing_rate():
    config = replace(FINE, presentation_ms=1000.0, dt_ms=0.1)
    drive, thresholds = random_drive((1, 1, 20), seed=3), torch.ones(1, 20)
    simulated_hz = simulate_presentation(drive, thresholds, config, inhibition=False).sum(dim=1) / 1.0
    rate = query_responses(drive[:, 0], thresholds, torch.zeros(20, dtype=torch.long), config)
    np.testing.assert_allclose(simulated_hz.numpy(), rate.numpy(), atol=1.5)


def test_closed_form_stdp_equals_the_sum_over_spike_trains():
    config = replace(NetworkConfig(), dt_ms=0.05, presentation_ms=200.0, n_neurons=3)
    rates = torch.tensor([[0.2, 1.0, 0.6, 0.0]])
    period = torch.tensor([[30.0, 45.5, torch.inf]])
    steps = config.n_steps
    spikes = torch.zeros(1, steps, 3)
    for neuron in range(2):
        times = np.arange(1, int(config.presentation_ms // period[0, neuron].item()) + 1) * period[0, neuron].item()
        spikes[0, np.round(times / config.dt_ms).astype(int) - 1, neuron] = 1.0
    expected_inputs = (rates * config.max_rate_per_ms * config.dt_ms).unsqueeze(1).expand(1, steps, 4)
    stepped = weight_change_from_spike_trains(expected_inputs, spikes, config)
    closed = weight_change_closed_form(rates, period, config).dense()
    np.testing.assert_allclose(closed.numpy(), stepped.numpy(), rtol=0.02, atol=1e-7)
    assert (closed[..., 2] == 0).all() and (closed[0, :3, :2] > 0).all() and (closed[0, 3] == 0).all()


def test_weight_normalisation():
    config = NetworkConfig()
    weights = normalise_weights_(torch.rand(2, 784, 5) * 3 - 1, config)
    assert weights.min() >= 0
    np.testing.assert_allclose(weights.sum(dim=1).numpy(), 78.4, rtol=1e-5)


def test_assignment_by_hand():
    regions = torch.tensor([[7, 8, -1]])
    responses = torch.tensor([[[5.0, 0.0, 2.0], [1.0, 0.0, 2.0], [9.0, 9.0, 9.0]]])  # last row is padding
    place, weight = assign_neurons(responses, regions)
    assert place.tolist() == [[7, -1, 7]]  # ties go to the first place
    # Neuron 0: best 5, other 1 -> (5 - 1) / 5; neuron 2 answers to both alike -> 0.
    np.testing.assert_allclose(weight[0, [0, 2]].numpy(), [0.8, 0.0], atol=1e-6)


def test_place_scores_are_weighted_means():
    counts = torch.tensor([[2.0, 4.0, 6.0]])
    scores = place_scores(counts, torch.tensor([0, 0, 2]), torch.tensor([1.0, 3.0, 1.0]), n_places=3)
    np.testing.assert_allclose(scores.numpy(), [[(2 + 12) / 4, 0.0, 6.0]])


def test_place_scores_max_takes_each_places_best_weighted_neuron():
    counts = torch.tensor([[2.0, 4.0, 6.0], [5.0, 1.0, 0.5]])
    scores = place_scores(counts, torch.tensor([0, 0, 2]), torch.tensor([1.0, 3.0, 1.0]), n_places=3, reduce="max")
    np.testing.assert_allclose(scores.numpy(), [[12.0, 0.0, 6.0], [5.0, 0.0, 0.5]])


def test_query_views_drive_each_neuron_by_its_best_view():
    generator = torch.Generator().manual_seed(3)
    weights = torch.rand(7, 16, generator=generator)
    views = torch.rand(2, 5, 16, generator=generator)
    for precision in (torch.float32, torch.bfloat16):
        readout = CompiledReadout(NetworkConfig(), weights.to(precision), torch.ones(7), torch.zeros(7, dtype=torch.long),
                                  torch.arange(7), torch.ones(7), n_members=1, n_places=7)
        one_by_one = torch.stack([readout.drives(views[:, v]) for v in range(5)]).amax(dim=0)
        torch.testing.assert_close(readout.drives(views), one_by_one)
        torch.testing.assert_close(readout.drives(views[:1]), one_by_one[:1])


def test_query_shift_recovers_a_shifted_view_of_a_learned_place():
    """Places learned from images; queries are the same images moved by 2 pixels. Presenting each query at
    offsets up to 2 pixels finds them; presenting them as they are does not (2x2 blocks shifted by 2 no longer
    overlap their own pattern)."""
    from vpr.preprocess import shifted_views
    from vpr.snn.encoding import image_rates

    generator = np.random.default_rng(0)
    smooth = np.array([np.kron(generator.random((14, 14)), np.ones((2, 2))) for _ in range(20)])  # 28x28, 2x2 blocks
    reference = image_rates(2 * smooth - 1)
    queries = shifted_views(smooth, 2)[:, -1]  # the (2, 2) offset
    network = ModularNetwork.train(reference, SMALL)
    plain = network.compile(None, "standard").scores(image_rates(2 * queries - 1))
    network.config = replace(SMALL, query_shift_px=2)
    shifted = network.compile(None, "standard").scores(image_rates(2 * shifted_views(queries, 2) - 1))
    plain_hits = int((plain.argmax(dim=1) == torch.arange(20)).sum())
    shifted_hits = int((shifted.argmax(dim=1) == torch.arange(20)).sum())
    assert shifted_hits >= 19 and plain_hits <= 5


def test_winner_counts_apply_inhibition_per_module():
    drive = torch.tensor([[3.0, 2.0, 3.0, 2.9]])
    counts = winner_spike_counts(drive, torch.ones(4), torch.tensor([0, 0, 1, 1]), NetworkConfig())
    assert counts[0, 0] > 0 and counts[0, 1] == 0 and counts[0, 2] > 0 and counts[0, 3] == 0


def test_module_regions():
    config = replace(NetworkConfig(), places_per_module=4)
    regions = module_regions(10, config, torch.Generator().manual_seed(0))
    assert regions.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1]]
    shuffled = module_regions(10, replace(config, region_split="shuffled"), torch.Generator().manual_seed(0))
    assert sorted(shuffled[shuffled >= 0].tolist()) == list(range(10)) and shuffled.tolist() != regions.tolist()


SMALL = replace(NetworkConfig(), n_neurons=40, places_per_module=10, epochs=6)


def place_images(n_places=20, seed=0):
    """Distinct random binary patterns: a task on which learning must reach near-perfect self-recall."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n_places, 784, generator=generator) > 0.5).float()


def test_training_learns_each_module_its_places():
    rates = place_images()
    network = ModularNetwork.train(rates, SMALL)
    assert network.thresholds.shape == (2, 40) and network.assigned_weights.shape[0] == 784
    scores = network.compile(None, "standard").scores(rates)
    assert (scores.argmax(dim=1) == torch.arange(20)).float().mean() >= 0.9
    noisy = (rates + 0.3 * torch.rand(rates.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    assert (network.compile(None, "standard").scores(noisy).argmax(dim=1) == torch.arange(20)).float().mean() >= 0.8


def test_bfloat16_readout_reads_half_the_bytes_and_scores_alike():
    rates = place_images()
    network = ModularNetwork.train(rates, SMALL)
    exact = network.compile(None, "standard")
    network.config = replace(SMALL, readout_precision="bfloat16")
    halved = network.compile(None, "standard")
    assert halved.scaled_weights.dtype == torch.bfloat16 and halved.scaled_weights.nbytes * 2 == exact.scaled_weights.nbytes
    noisy = (rates + 0.3 * torch.rand(rates.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    exact_scores, halved_scores = exact.scores(noisy), halved.scores(noisy)
    assert halved_scores.dtype == torch.float32
    assert torch.allclose(halved_scores, exact_scores, rtol=0.02, atol=0.02 * float(exact_scores.abs().max()))
    assert (halved_scores.argmax(dim=1) == exact_scores.argmax(dim=1)).float().mean() >= 0.9


def test_training_is_deterministic_in_its_seed():
    rates = place_images()
    first, second = ModularNetwork.train(rates, SMALL), ModularNetwork.train(rates, SMALL)
    assert torch.equal(first.assigned_weights, second.assigned_weights) and torch.equal(first.thresholds, second.thresholds)
    assert not torch.equal(first.thresholds, ModularNetwork.train(rates, replace(SMALL, seed=1)).thresholds)


def test_hyperactive_neurons_are_counted_over_the_whole_map():
    network = ModularNetwork.train(place_images(), SMALL)
    assert network.places_fired.shape == (2, 40)
    assert network.places_fired.max() <= 20
    threshold = int(network.places_fired.float().quantile(0.9).item()) + 1
    kept = network.readout_neurons(threshold)
    assert (network.places_fired.reshape(-1)[kept] < threshold).all()


def test_poisson_encoding_trains_with_the_step_simulation():
    config = replace(SMALL, encoding="poisson", epochs=2, dt_ms=2.0)
    network = ModularNetwork.train(place_images(), config)
    assert torch.isfinite(network.assigned_weights).all() and (network.thresholds >= 1).all()


def test_map_round_trip_and_refusals(tmp_path):
    rates = place_images()
    config = EnsembleConfig(network=replace(SMALL, epochs=2), seeds=(0, 1))
    trained = SpikingMap.train(rates, config, fingerprint="abc")
    trained.save(tmp_path / "map")
    loaded = SpikingMap.load(tmp_path / "map")
    assert torch.equal(trained.scores(rates), loaded.scores(rates))
    assert loaded.config == config and loaded.reference_fingerprint == "abc"

    manifest = json.loads((tmp_path / "map" / "map.json").read_text())
    (tmp_path / "map" / "map.json").write_text(json.dumps({**manifest, "format": "spikebot-snn-map/0"}))
    with pytest.raises(MapError, match="format"):
        SpikingMap.load(tmp_path / "map")
    (tmp_path / "map" / "map.json").write_text(json.dumps(manifest))
    with (tmp_path / "map" / "arrays.npz").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"garbage")
    with pytest.raises(MapError, match="corrupt"):
        SpikingMap.load(tmp_path / "map")
    with pytest.raises(SpikebotError, match="not a spikebot map"):
        SpikingMap.load(tmp_path / "nowhere")


@pytest.mark.parametrize("kwargs", [{"encoding": "spikes"}, {"n_neurons": 0}, {"max_rate_per_ms": 2.0}, {"query_readout": "x"},
                                    {"readout_precision": "float16"}, {"place_readout": "median"}, {"query_shift_px": -1}])
def test_invalid_network_configs(kwargs):
    with pytest.raises(ValueError):
        NetworkConfig(**kwargs)


def test_places_without_neurons_score_the_query_mean():
    config = NetworkConfig(query_thresholds="base")
    readout = CompiledReadout(config, torch.tensor([[2.0], [4.0]]), torch.ones(2), torch.zeros(2, dtype=torch.long),
                              torch.tensor([0, 2]), torch.ones(2), n_members=1, n_places=3)
    spiking_map = SpikingMap(EnsembleConfig(network=config, seeds=(0,)), [], "x")
    scores = spiking_map.scores(torch.tensor([[1.0]]), readout)
    assert scores[0, 1] == pytest.approx((scores[0, 0] + scores[0, 2]) / 2)
    assert scores[0, 2] > scores[0, 0] > 0


def test_interrupted_training_resumes_from_finished_members(tmp_path):
    rates = place_images()
    config = EnsembleConfig(network=replace(SMALL, epochs=2), seeds=(0, 1, 2))
    calls = []

    def interrupt_in_member_two(description):
        calls.append(description)
        if description.startswith("member 2"):
            raise KeyboardInterrupt
        return lambda *_: None

    def record(description):
        calls.append(description)
        return lambda *_: None

    with pytest.raises(KeyboardInterrupt):
        SpikingMap.train(rates, config, "abc", progress=interrupt_in_member_two, checkpoint_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["member-0.pt"]
    calls.clear()
    resumed = SpikingMap.train(rates, config, "abc", progress=record, checkpoint_dir=tmp_path)
    assert calls == ["member 2/3", "member 3/3"]  # member 1 came from its checkpoint
    fresh = SpikingMap.train(rates, config, "abc")
    assert torch.equal(resumed.scores(rates), fresh.scores(rates))
    calls.clear()  # a checkpoint of other reference images is never resumed from
    SpikingMap.train(rates, config, "other", progress=record, checkpoint_dir=tmp_path)
    assert calls == ["member 1/3", "member 2/3", "member 3/3"]


def test_calibration_ties_on_recall_at_1_go_to_recall_at_5_then_10_then_the_earlier_row():
    from vpr.snn.calibration import best_row

    rows = [
        {"name": "first", "recall_at_1": 0.7, "recall_at_5": 0.80, "recall_at_10": 0.90},
        {"name": "better R@5", "recall_at_1": 0.7, "recall_at_5": 0.84, "recall_at_10": 0.86},
        {"name": "better R@10", "recall_at_1": 0.7, "recall_at_5": 0.84, "recall_at_10": 0.88},
        {"name": "same again", "recall_at_1": 0.7, "recall_at_5": 0.84, "recall_at_10": 0.88},
        {"name": "worse R@1", "recall_at_1": 0.68, "recall_at_5": 1.0, "recall_at_10": 1.0},
    ]
    assert best_row(rows)["name"] == "better R@10"
    assert best_row(rows[:2])["name"] == "better R@5"
    assert best_row([rows[0], rows[4]])["name"] == "first"
