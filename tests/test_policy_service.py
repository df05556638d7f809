"""Diffusion policies through the service (server/policies.py): listing, acting over HTTP and WebSocket, the same
limits and errors as the map routes, and the closed-loop example against the in-process service. The policies are
tiny transformers with random weights (acting needs no training), saved as checkpoints in a temporary store."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from policy.diffusion import DiffusionConfig, DiffusionPolicy
from policy.models import TransformerConfig, build_network
from policy.normalise import Normaliser
from server.app import create_app
from server.client import LocalisationClient
from server.settings import ServiceSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TASK = "button-press-v3"
DIFFUSION = DiffusionConfig(num_train_timesteps=20, num_inference_steps=4, action_horizon=8)


def tiny_policy(seed: int) -> DiffusionPolicy:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_network(TransformerConfig(embed_dim=32, n_layers=1, n_heads=2))  # 39-D obs, 4-D actions, 2 -> 16
    normaliser = Normaliser.fit(obs=torch.rand(64, 2, 39, generator=generator) * 2 - 1,
                                action=torch.rand(64, 16, 4, generator=generator) * 2 - 1)
    return DiffusionPolicy(network, normaliser, DIFFUSION, device="cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """``button``: a checkpoint; ``run``: a training run folder with two checkpoints (the later one is served);
    ``notes``: neither, skipped."""
    root = tmp_path_factory.mktemp("policies")
    tiny_policy(0).save(root / "button", {"task": TASK, "model": "transformer", "step": 3})
    for step in (2, 5):
        checkpoint = tiny_policy(step).save(root / "run" / "checkpoints" / f"step_{step:07d}", {"task": TASK, "step": step})
        (checkpoint / "train_state.pt").write_bytes(b"")  # what makes a run folder's checkpoint complete
    (root / "notes").mkdir()
    (root / "notes" / "README").write_text("not a policy")
    return root


def make_client(store: Path, **settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(policy_store=store, torch_threads=1, **settings)),
                      raise_server_exceptions=False)


def wait_ready(client: TestClient) -> dict:
    for _ in range(500):
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        assert response.json()["error"]["code"] == "not_ready", response.text
        time.sleep(0.02)
    raise AssertionError("service never became ready")


def history(seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).uniform(-1, 1, (2, 39)).tolist()


def act(client: TestClient, name: str = "button", headers: dict[str, str] | None = None, **body):
    return client.post(f"/v1/policies/{name}/act", json={"observations": history(), **body}, headers=headers)


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error["message"]


def test_policies_are_listed_with_their_dims_and_horizons(store):
    with make_client(store) as client:
        ready = wait_ready(client)
        assert ready["policies"] == ["button", "run"] and ready["maps"] == []  # the store alone: no demo map
        listed = {p["name"]: p for p in client.get("/v1/policies").json()["policies"]}
        spec = client.get("/openapi.json").json()
    assert {"401", "404", "413", "422", "503", "504"} <= set(spec["paths"]["/v1/policies/{name}/act"]["post"]["responses"])
    assert "/v1/policies/{name}/stream" in spec["info"]["description"]  # the WebSocket protocol, which OpenAPI lacks
    assert listed["button"] == {"name": "button", "task": TASK, "model": "transformer", "step": 3, "obs_dim": 39,
                                "action_dim": 4, "obs_horizon": 2, "pred_horizon": 16, "action_horizon": 8,
                                "sampler": "ddim", "inference_steps": 4, "num_train_timesteps": 20}
    assert listed["run"]["step"] == 5  # a run folder serves its latest checkpoint


def test_act_returns_the_policys_chunk_with_timing(store):
    local = DiffusionPolicy.load(store / "button")  # on the service's device (the GPU when there is one)
    expected = local.predict_action(np.asarray(history(), np.float32), steps=4,
                                    generator=torch.Generator(device=local.device).manual_seed(7))
    with make_client(store) as client:
        wait_ready(client)
        response = act(client, seed=7)
        assert response.status_code == 200, response.text
        body = response.json()
        actions = np.asarray(body["actions"])
        assert actions.shape == (8, 4) and np.isfinite(actions).all()
        np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)  # the service adds nothing to the policy
        assert (body["sampler"], body["inference_steps"]) == ("ddim", 4)
        timing = body["server_timing"]
        assert timing["total_ms"] >= timing["inference_ms"] > 0 and timing["queue_ms"] >= 0
        assert act(client, seed=7).json()["actions"] == body["actions"]  # seeded: reproducible
        assert act(client, seed=8).json()["actions"] != body["actions"]
        ddpm = act(client, sampler="ddpm", seed=7).json()
        assert ddpm["inference_steps"] == 20 and np.asarray(ddpm["actions"]).shape == (8, 4)
        assert act(client, inference_steps=20).status_code == 200
        metrics = client.get("/metrics").text
    assert 'spikebot_policy_inference_seconds_count{policy="button"} 5.0' in metrics
    assert 'route="/v1/policies/{name}/act"' in metrics


def test_bad_requests_get_coded_errors_and_the_service_keeps_acting(store):
    with make_client(store) as client:
        wait_ready(client)
        assert "button" in assert_error(act(client, "nope"), 404, "unknown_policy")
        obs = history()
        shapes = {"one observation": obs[:1], "three": obs + obs[:1], "38 numbers": [o[:38] for o in obs], "none": []}
        for what, observations in shapes.items():
            response = client.post("/v1/policies/button/act", json={"observations": observations})
            assert "2 observations of 39 numbers" in assert_error(response, 422, "bad_observations"), what
        for bad in ("NaN", "Infinity", "-Infinity", "1e39"):  # 1e39 is finite in JSON, not in float32
            text = json.dumps({"observations": obs}).replace(str(obs[1][5]), bad, 1)
            response = client.post("/v1/policies/button/act", content=text, headers={"content-type": "application/json"})
            assert "finite" in assert_error(response, 422, "bad_observations"), bad
        assert "at most 20" in assert_error(act(client, inference_steps=21), 422, "invalid_request")
        assert "ddpm" in assert_error(act(client, sampler="ddpm", inference_steps=4), 422, "invalid_request")
        for body in ({"sampler": "euler"}, {"inference_steps": 0}, {"seed": -1}, {"seed": 2**32}, {"inference_step": 4}):
            assert_error(act(client, **body), 422, "invalid_request")
        assert_error(client.post("/v1/policies/button/act", json={"obs": obs}), 422, "invalid_request")
        assert act(client).status_code == 200


def test_api_keys_overload_and_body_limit_are_the_map_routes(store):
    with make_client(store, api_keys=["k1"], max_body_bytes=4096, max_concurrency=1) as client:
        wait_ready(client)
        assert_error(client.get("/v1/policies"), 401, "unauthorized")
        assert_error(act(client), 401, "unauthorized")
        assert_error(act(client, headers={"X-API-Key": "k2"}), 401, "unauthorized")
        keyed = {"X-API-Key": "k1"}
        assert client.get("/v1/policies", headers=keyed).status_code == 200
        assert act(client, headers=keyed).status_code == 200
        big = {"observations": np.zeros((60, 39)).tolist()}  # ~4.7 kB of JSON
        assert_error(client.post("/v1/policies/button/act", json=big, headers=keyed), 413, "body_too_large")
        slots = client.app.state.service.slots  # the localisation routes' admission slots, shared
        slots.acquire()
        try:
            response = act(client, headers=keyed)
            assert_error(response, 503, "overloaded")
            assert response.headers["retry-after"] == "1"
        finally:
            slots.release()
        assert act(client, headers=keyed).status_code == 200


def test_slow_chunk_gets_504_and_its_slot_comes_back(store):
    with make_client(store, request_timeout_seconds=0.2, max_concurrency=1) as client:
        wait_ready(client)
        loaded = client.app.state.policies.policies["button"]
        original = loaded.policy.predict_action

        def slow(*args, **kwargs):
            time.sleep(0.5)
            return original(*args, **kwargs)

        loaded.policy.predict_action = slow
        assert_error(act(client), 504, "timeout")
        loaded.policy.predict_action = original
        for _ in range(50):  # the abandoned chunk finishes, then gives its slot back
            response = act(client)
            if response.status_code == 200:
                break
            assert_error(response, 503, "overloaded")
            time.sleep(0.05)
        assert response.status_code == 200


def nan_weights(policy: DiffusionPolicy) -> DiffusionPolicy:
    with torch.no_grad():
        for parameter in policy.acting_network().parameters():
            parameter.fill_(math.nan)
    return policy


def test_non_finite_actions_are_a_coded_server_error(store):
    with make_client(store) as client:
        wait_ready(client)
        nan_weights(client.app.state.policies.policies["button"].policy)  # this app's copy, not the checkpoint
        assert "non-finite" in assert_error(act(client), 500, "policy_failed")
        assert act(client, "run").status_code == 200


def load_failure(client: TestClient) -> str:
    for _ in range(500):
        response = client.get("/readyz")
        if response.json()["error"]["code"] != "not_ready":
            return assert_error(response, 503, "load_failed")
        time.sleep(0.02)
    raise AssertionError("policies never finished loading")


def test_load_failures_are_reported_by_readyz_and_the_policy_routes(tmp_path):
    nan_weights(tiny_policy(1)).save(tmp_path / "broken" / "nan")  # acts once at load: fails there, not on a robot
    with make_client(tmp_path / "broken") as client:
        assert "non-finite" in load_failure(client)
    (tmp_path / "corrupt" / "bad").mkdir(parents=True)
    (tmp_path / "corrupt" / "bad" / "policy.json").write_text("{not json")
    with make_client(tmp_path / "corrupt") as client:
        assert "policy.json" in load_failure(client)
        assert_error(client.get("/v1/policies"), 503, "load_failed")
        assert_error(act(client, "bad"), 503, "load_failed")
    with make_client(tmp_path / "missing") as client:
        assert "not a folder" in load_failure(client)


def test_websocket_answers_each_message_in_order_and_reports_bad_ones(store):
    with make_client(store, max_body_bytes=4096) as client:
        wait_ready(client)
        over_http = act(client, seed=3).json()["actions"]
        with client.websocket_connect("/v1/policies/button/stream") as ws:
            request = {"observations": history(), "seed": 3}
            ws.send_text(json.dumps(request))
            ws.send_text(json.dumps({**request, "sampler": "ddpm"}))
            first, second = ws.receive_json(), ws.receive_json()
            assert first["actions"] == over_http and first["server_timing"]["inference_ms"] > 0
            assert second["sampler"] == "ddpm" and np.asarray(second["actions"]).shape == (8, 4)
            for message, code in (("{", "invalid_request"), (json.dumps({"observations": history()[:1]}), "bad_observations"),
                                  (json.dumps({**request, "sampler": "euler"}), "invalid_request"),
                                  (json.dumps(request).replace(str(request["observations"][0][0]), "NaN", 1), "bad_observations")):
                ws.send_text(message)
                assert ws.receive_json()["error"]["code"] == code, message
            ws.send_bytes(b"\x00")
            assert ws.receive_json()["error"]["code"] == "unsupported_message"
            ws.send_text(json.dumps(request))  # still open after every per-message error
            assert ws.receive_json()["actions"] == over_http
            ws.send_text(json.dumps({"observations": np.zeros((60, 39)).tolist()}))
            assert ws.receive_json()["error"]["code"] == "body_too_large"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1009
        with client.websocket_connect("/v1/policies/nope/stream") as ws:
            assert ws.receive_json()["error"]["code"] == "unknown_policy"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4404


def test_websocket_needs_the_api_key(store):
    with make_client(store, api_keys=["k1"]) as client:
        wait_ready(client)
        with client.websocket_connect("/v1/policies/button/stream") as ws:
            assert ws.receive_json()["error"]["code"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4401
        for connect in ({"url": "/v1/policies/button/stream?api_key=k1"},
                        {"url": "/v1/policies/button/stream", "headers": {"X-API-Key": "k1"}}):
            with client.websocket_connect(**connect) as ws:
                ws.send_text(json.dumps({"observations": history()}))
                assert np.asarray(ws.receive_json()["actions"]).shape == (8, 4)


def test_client_acts_and_the_example_drives_metaworld_through_the_service(store, monkeypatch, capsys):
    path = Path(__file__).resolve().parents[1] / "examples" / "policy_loop.py"
    spec = importlib.util.spec_from_file_location("policy_loop", path)
    policy_loop = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "policy_loop", policy_loop)  # dataclasses look their module up there
    spec.loader.exec_module(policy_loop)
    with make_client(store) as http:
        wait_ready(http)
        client = LocalisationClient(client=http)
        assert [p.name for p in client.policies().policies] == ["button", "run"]
        chunk = client.act("button", np.asarray(history(), np.float32), seed=7)
        assert chunk.actions == act(http, seed=7).json()["actions"]
        sent = []
        original = LocalisationClient.act

        def recording(self, policy, observations, **kwargs):
            sent.append(np.asarray(observations))
            return original(self, policy, observations, **kwargs)

        monkeypatch.setattr(LocalisationClient, "act", recording)
        monkeypatch.setattr(policy_loop, "LocalisationClient", lambda url, api_key=None: LocalisationClient(client=http))
        code = policy_loop.main(["--policy", "button", "--episodes", "2", "--max-episode-steps", "12",
                                 "--noise-seed", "0"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, out
    assert out[0].startswith("policy 'button' (transformer, step 3) on button-press-v3")
    # 12 steps at 8 actions a chunk: 2 chunks an episode (a random policy does not press the button)
    assert out[1].startswith("seed 1000000: failure after 12 steps, 2 chunks")
    assert out[2].startswith("seed 1000001: failure after 12 steps, 2 chunks")
    assert out[3] == "success 0/2 (0%)"
    assert len(sent) == 4 and all(s.shape == (2, 39) for s in sent)
    assert np.array_equal(sent[0][0], sent[0][1])  # the first observation repeated at the start of an episode
    assert not np.array_equal(sent[1][0], sent[1][1])


def test_serve_with_only_a_policy_store_builds_no_demo_map(store, monkeypatch):
    import uvicorn

    from server.cli import serve

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    result = CliRunner().invoke(serve, ["--policy-store", str(store), "--torch-threads", "1"])
    assert result.exit_code == 0, result.output
    (app,) = served
    assert app.state.service.sources == [] and app.state.policies.store == store
