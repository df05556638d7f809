"""server/ray_serve.py: what each replica serves (no Ray needed), and the Serve deployment on a local Ray (slow,
skipped without the ``ray`` extra)."""

from __future__ import annotations

import importlib.util
import socket
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_server import Ready, assert_error, best_place, encode, load_map_once, wait_ready

from server.ray_serve import build_replica_app, replica_settings
from server.settings import ServiceSettings
from vpr.datasets import load_registered
from vpr.sequence import OnlineSequenceMatcher, SequenceConfig


@pytest.fixture(scope="module")
def queries() -> list[np.ndarray]:
    return [load_registered("demo").query[i] for i in range(0, 40, 4)]


def localize(client, image, session: str | None = None, **params):
    headers = {"content-type": "image/png", **({"X-Session-Id": session} if session else {})}
    return client.post("/v1/maps/demo/localize", content=encode(image), headers=headers, params=params)


def test_replica_app_names_sessions_after_the_client(queries):
    app = build_replica_app(ServiceSettings(), maps=[Ready(load_map_once())], replica="r1")
    with TestClient(app) as client:
        wait_ready(client)
        created = client.post("/v1/sessions", json={"sequence_length": 3}, headers={"X-Session-Id": "robot-7"})
        assert created.status_code == 201 and created.json()["id"] == "robot-7"
        assert created.headers["x-serve-replica"] == "r1"
        lengths = [localize(client, image, "robot-7").json()["sequence_length"] for image in queries[:4]]
        assert lengths == [1, 2, 3, 3]
        # creating it again (after it moved to this replica, or to start afresh) empties its sequence buffer
        again = client.post("/v1/sessions", json={"sequence_length": 3}, headers={"X-Session-Id": "robot-7"})
        assert again.status_code == 201
        assert localize(client, queries[0], "robot-7").json()["sequence_length"] == 1
        assert client.get("/metrics").text.count("spikebot_active_sessions 1.0") == 1
        # without the header the service issues the id, as plain `spikebot serve` does
        issued = client.post("/v1/sessions", json={"sequence_length": 2}).json()["id"]
        assert issued != "robot-7" and localize(client, queries[0], issued).status_code == 200
        for bad in ("no spaces", "x" * 129):
            assert_error(client.post("/v1/sessions", json={}, headers={"X-Session-Id": bad}), 422, "invalid_request")
        assert_error(localize(client, queries[0], "never-created"), 404, "unknown_session")
        answer = localize(client, queries[1])
        assert answer.json()["place"] == best_place(queries[1]) and answer.headers["x-serve-replica"] == "r1"
        assert client.delete("/v1/sessions/robot-7").status_code == 204


def test_replica_torch_threads_follow_its_cpus():
    assert replica_settings(ServiceSettings(), 1.0).torch_threads == 1
    assert replica_settings(ServiceSettings(), 0.5).torch_threads == 1
    assert replica_settings(ServiceSettings(), 3.0).torch_threads == 3
    assert replica_settings(ServiceSettings(torch_threads=5), 1.0).torch_threads == 5
    assert replica_settings(ServiceSettings(), 1.0).max_concurrency == ServiceSettings().max_concurrency


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_latencies(app, image, n: int = 20) -> list[float]:
    """Seconds per localisation of ``image`` over HTTP from ``app`` under uvicorn on a free loopback port."""
    import threading

    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=30) as client:
            for _ in range(200):
                if server.started and client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.05)
            seconds = []
            for _ in range(n):
                t0 = time.perf_counter()
                assert localize(client, image).status_code == 200
                seconds.append(time.perf_counter() - t0)
        return seconds
    finally:
        server.should_exit = True
        thread.join(10)


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray Serve is optional: pip install -e '.[ray]'")


@pytest.fixture(scope="module")
def serve_url():
    """Two Localizer replicas of the demo map on a local Ray (2 CPUs); yields (url, seconds until both answered)."""
    import httpx
    import ray
    from ray import serve

    from server.maps import demo_spec
    from server.ray_serve import build_application

    port = free_port()
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(ServiceSettings(), [demo_spec()], replicas=2, cpus_per_replica=1.0),
                  name="spikebot", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as client:
            assert len(live_replicas(client)) == 2
        yield url, time.perf_counter() - started
    finally:
        serve.shutdown()
        ray.shutdown()


def live_replicas(client, want: int = 2, exclude: frozenset = frozenset(), seconds: float = 60,
                  failures: list | None = None) -> set[str]:
    """Replica ids answering requests without a session (spread over all replicas), once ``want`` are seen;
    the statuses of the requests that failed meanwhile are added to ``failures``."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while len(seen - exclude) < want and time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            seen.add(response.headers["x-serve-replica"])
        elif failures is not None:
            failures.append(response.status_code)
        time.sleep(0.02)
    return seen - exclude


@pytest.mark.slow
@needs_ray
def test_serve_pins_sessions_to_replicas(serve_url, queries):
    import httpx

    url, ready_s = serve_url
    demo = load_map_once()
    with httpx.Client(base_url=url, timeout=30) as client:
        replicas = live_replicas(client)
        answer = localize(client, queries[0])
        assert answer.status_code == 200 and answer.json()["place"] == best_place(queries[0])

        ids = [f"robot-{i}" for i in range(16)]
        owners = {}
        for sid in ids:
            created = client.post("/v1/sessions", json={"sequence_length": 3}, headers={"X-Session-Id": sid})
            assert created.status_code == 201 and created.json()["id"] == sid, created.text
            owners[sid] = created.headers["x-serve-replica"]
        assert set(owners.values()) == replicas, "16 sessions should spread over both replicas"

        matchers = {sid: OnlineSequenceMatcher(SequenceConfig(length=3)) for sid in ids}
        for step, image in enumerate(queries[:4]):
            row = demo.distance_row(image)
            for sid in ids:
                response = localize(client, image, sid, top_k=1)
                assert response.status_code == 200, response.text
                assert response.headers["x-serve-replica"] == owners[sid]  # the same replica every time
                body = response.json()
                assert body["sequence_length"] == min(step + 1, 3)  # so its sequence state stayed with it
                assert body["place"] == int(np.argmin(matchers[sid].push(row)))
        assert_error(localize(client, queries[0], "never-created"), 404, "unknown_session")

        through_serve = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert localize(client, queries[1]).status_code == 200
            through_serve.append(time.perf_counter() - t0)
    direct = http_latencies(build_replica_app(ServiceSettings(), maps=[Ready(demo)]), queries[1])
    print(f"\nray serve: both replicas answered {ready_s:.1f} s after ray.init; localize p50 "
          f"{np.median(through_serve) * 1e3:.1f} ms through Serve (2 replicas) vs {np.median(direct) * 1e3:.1f} ms "
          "from uvicorn alone (HTTP on loopback both)")


@pytest.mark.slow
@needs_ray
def test_sessions_of_a_lost_replica_are_created_again(serve_url, queries):
    """Runs last: kills a replica. Its sessions (and some of the survivor's, as the ring changes) answer 404
    unknown_session once Serve has replaced it; creating them again under the same id works at once."""
    import httpx
    import ray

    url, _ = serve_url
    with httpx.Client(base_url=url, timeout=30) as client:
        owners = {}
        for sid in (f"rover-{i}" for i in range(16)):
            created = client.post("/v1/sessions", json={"sequence_length": 3}, headers={"X-Session-Id": sid})
            assert created.status_code == 201
            owners[sid] = created.headers["x-serve-replica"]
            assert localize(client, queries[0], sid).status_code == 200
        victim = min(owners.values())
        [actor] = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#{victim}")]
        killed = time.perf_counter()
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        failures: list[int] = []
        assert len(live_replicas(client, exclude=frozenset({victim}), seconds=120, failures=failures)) == 2, \
            "no replacement replica"
        replaced_s = time.perf_counter() - killed
        lost = []
        for sid, owner in owners.items():
            response = localize(client, queries[1], sid)
            if owner == victim or response.status_code != 200:
                assert_error(response, 404, "unknown_session")
                lost.append(sid)
            else:
                assert response.json()["sequence_length"] == 2
        for sid in lost:
            created = client.post("/v1/sessions", json={"sequence_length": 3}, headers={"X-Session-Id": sid})
            assert created.status_code == 201
            response = localize(client, queries[1], sid)
            assert response.status_code == 200 and response.json()["sequence_length"] == 1
    print(f"\nray serve: a killed replica was replaced within {replaced_s:.1f} s ({len(failures)} of the requests "
          f"without a session sent meanwhile failed: {sorted(set(failures))}); {len(lost)} of 16 sessions "
          f"({sum(o == victim for o in owners.values())} on the killed replica) had to be created again")
