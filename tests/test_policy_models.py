"""Diffusion policy networks: LIF neurons against norse, spiking attention, the SMD switch, normalisation, a toy
training run per network, and checkpoints."""

import json
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch

from policy.diffusion import (
    CHECKPOINT_FORMAT,
    DiffusionConfig,
    DiffusionPolicy,
    PolicyError,
)
from policy.models import (
    STMDPConfig,
    TransformerConfig,
    build_network,
    network_config,
    parameter_count,
)
from policy.models.cost import example_inputs, forward_cost
from spikebot.spiking import (
    NeuronConfig,
    lif_multistep,
    lif_multistep_norse,
    record_activity,
)
from policy.normalise import MinMax, Normaliser

TINY = {"embed_dim": 32, "n_layers": 1, "n_heads": 2}
TINY_CONFIGS = {"transformer": TransformerConfig(**TINY), "stmdp": STMDPConfig(**TINY, n_cond_layers=0, code_dim=16)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_demonstrations(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two modes picked by observation 0 (+-1) and a goal in [-1, 1] (observation 1): each action sequence is a
    function of the observations, so a trained policy should reproduce it."""
    generator = torch.Generator().manual_seed(seed)
    mode = torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1
    goal = torch.rand(n, 1, generator=generator) * 2 - 1
    obs = torch.zeros(n, 2, 39)  # the other 36 dimensions stay constant, like Metaworld's unused slots
    obs[:, :, 0], obs[:, :, 1] = mode, goal
    obs[:, 0, 2], obs[:, 1, 2] = -1.0, 1.0
    k = torch.linspace(0, 1, 16)
    actions = torch.stack([goal * k, mode * torch.cos(torch.pi * k), 0.5 * mode.expand(n, 16), 0.5 * goal.expand(n, 16)], dim=-1)
    return obs, actions


def tiny_policy(kind: str, seed: int = 0, **diffusion: object) -> tuple[DiffusionPolicy, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    obs, actions = toy_demonstrations(512, seed=0)
    network = build_network(TINY_CONFIGS[kind])
    return DiffusionPolicy(network, Normaliser.fit(obs=obs, action=actions), DiffusionConfig(**diffusion), device="cpu"), obs, actions


def train(policy: DiffusionPolicy, obs: torch.Tensor, actions: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    optimiser = torch.optim.AdamW(policy.network.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        index = torch.randint(0, len(obs), (64,), generator=generator)
        loss = policy.compute_loss({"obs": obs[index], "action": actions[index]}, generator=generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        policy.update_ema()
        losses.append(loss.item())
    return losses


# -- neurons -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["super", "triangle", "tanh"])
def test_fused_lif_matches_norse_spikes_and_surrogate_gradients(method):
    neuron = NeuronConfig(method=method, alpha=2.0)
    currents = (1.2 * torch.randn(4, 3, 5, 16, generator=torch.Generator().manual_seed(0))).requires_grad_()
    weights = torch.randn(4, 3, 5, 16, generator=torch.Generator().manual_seed(1))
    fused = lif_multistep(currents, neuron)
    (fused_grad,) = torch.autograd.grad((fused * weights).sum(), currents)
    reference = lif_multistep_norse(currents, neuron)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), currents)
    assert torch.equal(fused, reference)
    assert 0.05 < fused.mean() < 0.5
    torch.testing.assert_close(fused_grad, reference_grad)
    with torch.no_grad():
        assert torch.equal(lif_multistep(currents, neuron), reference)


def test_default_neuron_is_the_tau_2_lif_of_spiking_transformers():
    # v <- v + (x - v) / 2, fire above 1, reset to 0: a constant 1.5 gives v = 0.75, 1.125 (spike), 0.75, 1.125 (spike).
    spikes = lif_multistep(torch.full((4, 1), 1.5), NeuronConfig())
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    # norse's default membrane constant (tau_mem_inv = 100) integrates a tenth per step: silent in 4 steps.
    assert lif_multistep(torch.full((4, 1), 1.5), NeuronConfig(tau_mem_inv=100.0)).sum() == 0
    with pytest.raises(ValueError):
        NeuronConfig(method="atan")


# -- networks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TransformerConfig(), STMDPConfig()], ids=["transformer", "stmdp"])
def test_networks_predict_noise_of_the_action_shape(config):
    network = build_network(config)
    noisy, timesteps, obs = example_inputs(network, batch=3)
    assert network(noisy, timesteps, obs).shape == (3, 16, 4)
    assert network(noisy, 7, obs).shape == (3, 16, 4)


def test_networks_are_the_same_size():
    baseline, spiking = parameter_count(build_network(TransformerConfig())), parameter_count(build_network(STMDPConfig()))
    assert 0.5e6 < baseline < 2e6
    assert abs(spiking - baseline) / baseline < 0.1


def test_stmdp_fires_at_a_healthy_rate_and_the_surrogate_reaches_the_first_layer():
    network = build_network(STMDPConfig())
    noisy, timesteps, obs = example_inputs(network, batch=8)
    with record_activity(network) as report:
        output = network(noisy, timesteps, obs)
    rates = {layer.name: layer.firing_rate for layer in report[0].layers}
    assert len(rates) == 1 + 1 + 7 * (1 + 4)  # condition + code neurons, 7 LIF layers per block
    assert all(0.03 < rate < 0.5 for rate in rates.values()), rates
    assert 0.05 < report[0].mean_firing_rate < 0.3
    output.square().mean().backward()
    for parameter in (network.obs_embed.weight, network.action_embed.weight, network.encoder[0].attention.q.weight):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


def test_spiking_attention_has_binary_q_k_v_and_no_softmax(monkeypatch):
    network = build_network(STMDPConfig(**TINY))
    seen = []
    for name, module in network.named_modules():
        if name.endswith(("attention.q_lif", "attention.k_lif", "attention.v_lif")):
            module.register_forward_hook(lambda module, inputs, output: seen.append(output))

    def forbidden(*args, **kwargs):
        raise AssertionError("softmax called")

    monkeypatch.setattr(torch, "softmax", forbidden)
    monkeypatch.setattr(torch.nn.functional, "softmax", forbidden)
    monkeypatch.setattr(torch.Tensor, "softmax", forbidden)
    network(*example_inputs(network, batch=2))
    assert len(seen) == 3 * 2  # one encoder and one decoder block
    for spikes in seen:
        assert set(spikes.unique().tolist()) == {0.0, 1.0}


def test_modulation_switch_removes_the_smd_and_changes_the_output():
    modulated = build_network(STMDPConfig(**TINY))
    plain = build_network(STMDPConfig(**TINY, modulation=False))
    missing, unexpected = plain.load_state_dict(modulated.state_dict(), strict=False)
    assert not missing and unexpected and all("modulation" in key or key.startswith("code") for key in unexpected)
    inputs = example_inputs(modulated, batch=4)
    assert not torch.allclose(modulated(*inputs), plain(*inputs))
    with pytest.raises(ValueError):
        STMDPConfig(modulation=False, attend_condition=False)
    assert build_network(STMDPConfig(**TINY, attend_condition=False))(*inputs).shape == (4, 16, 4)


@pytest.mark.parametrize("kind", ["transformer", "stmdp"])
def test_direct_obs_conditioning_maps_the_observation_history_onto_the_action_tokens(kind):
    direct = TINY_CONFIGS[kind]
    assert direct.direct_obs_conditioning  # on for new networks
    torch.manual_seed(0)
    network = build_network(direct)
    plain = build_network(replace(direct, direct_obs_conditioning=False))
    assert network.obs_to_actions.weight.shape == (32, 2 * 39) and plain.obs_to_actions is None
    assert parameter_count(network) - parameter_count(plain) == 2 * 39 * 32 + 32
    missing, unexpected = plain.load_state_dict(network.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["obs_to_actions.bias", "obs_to_actions.weight"]
    # Cut the cross-attention path: with obs_embed zeroed the condition memory (and STMDP's modulation code) is
    # the same for every observation, so only the direct map can carry the observation to the output.
    for model in (network, plain):
        torch.nn.init.zeros_(model.obs_embed.weight)
        torch.nn.init.zeros_(model.obs_embed.bias)
    noisy, timesteps, obs = example_inputs(network, batch=4)
    other_obs = obs.roll(1, dims=0)
    assert torch.equal(plain(noisy, timesteps, obs), plain(noisy, timesteps, other_obs))
    assert not torch.allclose(network(noisy, timesteps, obs), network(noisy, timesteps, other_obs))
    network(noisy, timesteps, obs).square().mean().backward()
    assert network.obs_to_actions.weight.grad.abs().sum() > 0


def test_configs_saved_before_direct_obs_conditioning_rebuild_their_network_without_it(tmp_path):
    for config in TINY_CONFIGS.values():
        saved = config.to_dict()
        del saved["direct_obs_conditioning"]  # as written before the field existed
        assert network_config(config.kind, saved) == replace(config, direct_obs_conditioning=False)
        assert network_config(config.kind, saved, saved=False) == config  # overrides of today's defaults
    # A whole checkpoint of that time: its config lacks the field and its weights lack the map.
    policy, obs, actions = tiny_policy("stmdp")
    policy = DiffusionPolicy(build_network(replace(policy.network_config, direct_obs_conditioning=False)), policy.normaliser,
                             policy.config, device="cpu")
    train(policy, obs, actions, steps=2)
    folder = policy.save(tmp_path / "old")
    manifest = json.loads((folder / "policy.json").read_text())
    del manifest["network"]["config"]["direct_obs_conditioning"]
    (folder / "policy.json").write_text(json.dumps(manifest))
    loaded = DiffusionPolicy.load(folder, device="cpu")
    assert not loaded.network_config.direct_obs_conditioning and loaded.network.obs_to_actions is None
    first = policy.predict_action(obs[:2], generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, loaded.predict_action(obs[:2], generator=torch.Generator().manual_seed(3)))


def test_configs_round_trip_and_reject_unknown_fields():
    for config in (TransformerConfig(n_layers=2), TransformerConfig(direct_obs_conditioning=False),
                   STMDPConfig(neuron=NeuronConfig(method="triangle"), modulation=False),
                   STMDPConfig(direct_obs_conditioning=False)):
        assert network_config(config.kind, json.loads(json.dumps(config.to_dict()))) == config
        assert type(config).from_dict(config.to_dict(), saved=False) == config
    with pytest.raises(ValueError):
        network_config("stmdp", {"embed": 3})
    with pytest.raises(ValueError):
        network_config("mlp")


def test_costs_count_spikes_for_stmdp_and_macs_for_the_baseline():
    baseline = forward_cost(build_network(TransformerConfig()))
    spiking = forward_cost(build_network(STMDPConfig()))
    assert baseline.sops_per_pass == 0 and baseline.macs_per_pass == baseline.dense_macs_per_pass > 1e7
    assert spiking.sops_per_pass > 0 and spiking.macs_per_pass < 0.01 * spiking.dense_macs_per_pass
    assert spiking.activity is not None and spiking.activity.spikes_per_pass > 0


# -- normalisation -------------------------------------------------------------------------------------------


def test_normaliser_maps_to_unit_range_and_back():
    data = torch.rand(200, 3, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 0.0]) - 2.0
    field = MinMax.fit(data)
    normalised = field.normalise(data)
    flat = normalised.reshape(-1, 5)
    torch.testing.assert_close(flat[:, :4].amin(dim=0), -torch.ones(4))
    torch.testing.assert_close(flat[:, :4].amax(dim=0), torch.ones(4))
    assert (flat[:, 4] == 0).all()  # a constant dimension is shifted, not scaled
    torch.testing.assert_close(field.unnormalise(normalised), data)
    normaliser = Normaliser.fit(obs=data.numpy(), action=data[:, 0])
    restored = Normaliser.from_dict(json.loads(json.dumps(normaliser.to_dict())))
    assert torch.equal(restored["obs"].low, normaliser["obs"].low) and torch.equal(restored["action"].high, normaliser["action"].high)
    with pytest.raises(ValueError):
        field.normalise(torch.zeros(2, 4))


def test_nearly_constant_dimensions_are_not_stretched_and_constant_actions_are_pinned():
    # Regression: Metaworld's gripper opening varies by only ~0.02 in button-press demonstrations (effort 0);
    # min-max scaling stretched it 100-fold, so a 0.1 drift at test time became an input of -10 and beyond.
    data = torch.stack([torch.linspace(-0.1, 0.1, 50), torch.linspace(0.98, 1.0, 50), torch.zeros(50)], dim=1)
    plain, floored = MinMax.fit(data), MinMax.fit(data, min_span=0.1)
    drifted = torch.tensor([[0.0, 0.9, 0.0]])
    assert plain.normalise(drifted)[0, 1] < -9  # the old behaviour
    torch.testing.assert_close(floored.normalise(drifted)[0], torch.tensor([0.0, -1.8, 0.0]))
    torch.testing.assert_close(floored.normalise(data)[:, 0], plain.normalise(data)[:, 0])  # wide ranges unchanged
    torch.testing.assert_close(floored.normalise(data)[:, 1].abs().amax(), torch.tensor(0.2))
    torch.testing.assert_close(floored.unnormalise(floored.normalise(data)), data)
    # A dimension constant in training unnormalises to its training value, whatever the network outputs there
    # (the sampler's residual noise would otherwise be executed as gripper effort).
    noisy = torch.tensor([[0.5, 0.3, 0.7], [-0.5, -0.3, -0.04]])
    assert (floored.unnormalise(noisy)[:, 2] == 0).all()
    assert floored.unnormalise(noisy)[:, :2].abs().min() > 0
    restored = Normaliser.from_dict(json.loads(json.dumps(Normaliser.fit(min_span={"obs": 0.1}, obs=data).to_dict())))
    assert restored["obs"].min_span == 0.1
    assert MinMax.from_dict({"low": [0.0], "high": [1.0]}).min_span == 0.0  # checkpoints saved before keep their scaling
    with pytest.raises(ValueError):
        Normaliser.fit(min_span={"action": 0.1}, obs=data)
    with pytest.raises(ValueError):
        MinMax.fit(data, min_span=-1.0)


# -- policies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "steps"), [("transformer", 600), ("stmdp", 400)])
def test_tiny_training_learns_the_toy_demonstrations(kind, steps):
    # Errors over seeds 0-2: transformer 0.03-0.05 after 600 steps (0.06-0.23 after 400), STMDP 0.08-0.10 after 400.
    policy, obs, actions = tiny_policy(kind)
    losses = train(policy, obs, actions, steps=steps)
    assert np.mean(losses[-50:]) < 0.4 * np.mean(losses[:20])
    test_obs, test_actions = toy_demonstrations(64, seed=5)
    predicted = policy.predict_action(test_obs, generator=torch.Generator().manual_seed(0), full=True)
    error = (predicted - test_actions).abs().mean().item()
    baseline_error = (test_actions - actions.mean(dim=0)).abs().mean().item()  # the mean demonstration: ~0.41
    assert error < 0.15 < 0.5 * baseline_error, error
    executed = policy.predict_action(test_obs[0].numpy())
    assert isinstance(executed, np.ndarray) and executed.shape == (8, 4)


def test_checkpoint_round_trip_predicts_identically(tmp_path):
    policy, obs, actions = tiny_policy("stmdp")
    train(policy, obs, actions, steps=3)
    policy.save(tmp_path / "policy", metadata={"task": "toy"})
    loaded = DiffusionPolicy.load(tmp_path / "policy", device="cpu")
    manifest = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert manifest["format"] == CHECKPOINT_FORMAT and manifest["metadata"] == {"task": "toy"}
    assert manifest["versions"]["diffusers"] and loaded.network_config == policy.network_config
    assert loaded.ema is not None and loaded.ema.optimization_step == 3
    for sampler in ("ddim", "ddpm"):
        first = policy.predict_action(obs[:2], sampler=sampler, generator=torch.Generator().manual_seed(3))
        second = loaded.predict_action(obs[:2], sampler=sampler, generator=torch.Generator().manual_seed(3))
        assert torch.equal(first, second)
    # The EMA weights act; the trained weights are kept too (to continue training).
    assert not torch.equal(loaded.acting_network().head.weight, loaded.network.head.weight)
    torch.testing.assert_close(loaded.network.head.weight, policy.network.head.weight)


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path):
    policy, _, _ = tiny_policy("transformer")
    folder = policy.save(tmp_path / "policy")
    weights, manifest_path = folder / "weights.pt", folder / "policy.json"
    manifest = json.loads(manifest_path.read_text())

    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PolicyError, match="checksum"):
        DiffusionPolicy.load(folder)
    policy.save(folder)

    manifest_path.write_text("{not json")
    with pytest.raises(PolicyError, match="corrupt"):
        DiffusionPolicy.load(folder)
    manifest_path.write_text(json.dumps({**manifest, "format": "spikebot-diffusion-policy/0"}))
    with pytest.raises(PolicyError, match="format"):
        DiffusionPolicy.load(folder)
    wrong_size = {**manifest, "network": {**manifest["network"], "config": {**manifest["network"]["config"], "embed_dim": 64}}}
    manifest_path.write_text(json.dumps(wrong_size))
    with pytest.raises(PolicyError, match="inconsistent"):
        DiffusionPolicy.load(folder)
    wrong_kind = {**manifest, "network": {**manifest["network"], "kind": "stmdp"}}
    manifest_path.write_text(json.dumps(wrong_kind))
    with pytest.raises(PolicyError, match="inconsistent"):
        DiffusionPolicy.load(folder)
    weights.unlink()
    with pytest.raises(PolicyError, match="needs policy.json and weights.pt"):
        DiffusionPolicy.load(folder)


def test_policy_checks_its_parts_and_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    policy, obs, actions = tiny_policy("stmdp", num_inference_steps=4)
    longer_window = torch.cat([obs[:4], obs[:4, -1:]], dim=1)  # the first obs_horizon steps condition
    assert torch.isfinite(policy.compute_loss({"obs": longer_window, "action": actions[:4]}))
    with pytest.raises(ValueError, match="expected obs"):
        policy.compute_loss({"obs": obs[:4], "action": actions[:4, :8]})
    assert policy.predict_action(obs[:1], sampler="ddpm").shape == (1, 8, 4)
    assert len(policy.sampler().timesteps) == 4
    cost = policy.inference_cost(obs[0])
    assert cost.passes == 4 and cost.sops_per_pass > 0
    batch_cost = policy.inference_cost(obs[:3])
    assert batch_cost.passes == 4 and batch_cost.activity.layers[0].neurons == cost.activity.layers[0].neurons
    with pytest.raises(ValueError, match="expected observations"):
        policy.inference_cost(obs[:2, :, :10])
    with pytest.raises(ValueError, match="action_horizon"):
        DiffusionPolicy(build_network(TINY_CONFIGS["stmdp"]), policy.normaliser, DiffusionConfig(action_horizon=16))
    with pytest.raises(ValueError, match="dimensions"):
        DiffusionPolicy(build_network(replace(TINY_CONFIGS["transformer"], obs_dim=10)), policy.normaliser)
    with pytest.raises(ValueError, match="observations"):
        policy.predict_action(obs[:1, :1])
