"""The localisation service through FastAPI's TestClient, on the demo route's SAD map (builds in about a second)."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.maps import LoadedMap, MapStore, ReferenceSource, demo_spec, load_map
from server.settings import ServiceSettings
from vpr.datasets import load_registered
from vpr.sequence import OnlineSequenceMatcher, SequenceConfig

_DEMO: list[LoadedMap] = []


def load_map_once() -> LoadedMap:
    if not _DEMO:
        _DEMO.append(load_map(demo_spec()))
    return _DEMO[0]


@pytest.fixture(scope="module")
def demo_map() -> LoadedMap:
    return load_map_once()


@pytest.fixture(scope="module")
def queries() -> list[np.ndarray]:
    return [load_registered("demo").query[i] for i in range(0, 40, 4)]


class Ready:
    """A map source that hands over an already-loaded map, optionally after ``gate`` is set."""

    def __init__(self, loaded: LoadedMap, gate: threading.Event | None = None):
        self.name, self.loaded, self.gate = loaded.name, loaded, gate

    def load(self) -> LoadedMap:
        if self.gate is not None:
            assert self.gate.wait(10)
        return self.loaded


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def wait_ready(client: TestClient) -> None:
    for _ in range(100):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service never became ready")


def make_client(demo_map, **settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(**settings), maps=[Ready(demo_map)]))


def post_image(client, data, content_type="image/png", **kwargs):
    return client.post("/v1/maps/demo/localize", content=data, headers={"content-type": content_type, **kwargs.pop("headers", {})}, **kwargs)


def best_place(image: np.ndarray) -> int:
    return int(np.argmin(load_map_once().distance_row(image)))


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def assert_healthy(client, queries) -> None:
    assert client.get("/healthz").status_code == 200
    response = post_image(client, encode(queries[0]))
    assert response.status_code == 200 and response.json()["place"] == best_place(queries[0])


def test_localize_finds_the_place_and_reports_timing(demo_map, queries):
    with make_client(demo_map) as client:
        wait_ready(client)
        for index, fmt, content_type in ((1, "PNG", "image/png"), (2, "JPEG", "image/jpeg")):
            response = post_image(client, encode(queries[index], fmt), content_type, params={"top_k": 3})
            assert response.status_code == 200, response.text
            body = response.json()
            sent = np.asarray(Image.open(io.BytesIO(encode(queries[index], fmt))))  # JPEG is lossy: what was sent
            assert body["place"] == int(np.argmin(demo_map.distance_row(sent)))
            assert len(body["top_k"]) == 3 and body["top_k"][0]["place"] == body["place"]
            assert [m["distance"] for m in body["top_k"]] == sorted(m["distance"] for m in body["top_k"])
            assert body["score"] == pytest.approx(-body["top_k"][0]["distance"])
            assert 0 <= body["confidence"] <= 1 and body["sequence_length"] == 1
            timing = body["server_timing"]
            assert timing["total_ms"] >= timing["describe_ms"] > 0
        multipart = client.post("/v1/maps/demo/localize", files={"image": ("q.png", encode(queries[3]), "image/png")})
        assert multipart.status_code == 200 and multipart.json()["place"] == int(np.argmin(demo_map.distance_row(queries[3])))
        assert_error(post_image(client, encode(queries[0]), params={"top_k": 51}), 422, "invalid_request")
        assert_error(post_image(client, encode(queries[0]), params={"top_k": 0}), 422, "invalid_request")


def test_maps_health_and_openapi(demo_map):
    with make_client(demo_map) as client:
        wait_ready(client)
        assert client.get("/v1/maps").json() == {"maps": [{"name": "demo", "method": "sad", "n_places": 240}]}
        assert client.get("/readyz").json()["maps"] == ["demo"]
        spec = client.get("/openapi.json").json()
        localize = spec["paths"]["/v1/maps/{name}/localize"]["post"]
        assert {"404", "413", "415", "422", "503"} <= set(localize["responses"])
        assert {"image/jpeg", "image/png", "multipart/form-data"} <= set(localize["requestBody"]["content"])
        assert_error(client.get("/nowhere"), 404, "not_found")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (CRC fixed), with a tiny image's data after it."""
    data = bytearray(encode(np.zeros((4, 4), dtype=np.uint8)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_bad_inputs_get_coded_errors_and_the_service_stays_healthy(demo_map, queries):
    good = encode(queries[0], "JPEG")
    with make_client(demo_map, max_body_bytes=200_000, max_image_pixels=100_000) as client:
        wait_ready(client)
        assert_error(post_image(client, good[: len(good) // 2], "image/jpeg"), 422, "bad_image")  # truncated
        assert_error(post_image(client, b"not an image at all", "image/jpeg"), 422, "bad_image")  # corrupt
        assert_error(post_image(client, b""), 422, "bad_image")  # zero bytes
        assert_error(post_image(client, encode(np.zeros((400, 400), dtype=np.uint8))), 413, "image_too_large")
        assert_error(post_image(client, png_claiming(100_000, 100_000)), 413, "image_too_large")  # decompression bomb
        assert_error(post_image(client, good, "text/plain"), 415, "unsupported_media_type")
        assert_error(post_image(client, b"x" * 300_000), 413, "body_too_large")
        assert_error(client.post("/v1/maps/demo/localize", files={"image": ("q.txt", good, "text/plain")}), 415,
                     "unsupported_media_type")
        assert_error(client.post("/v1/maps/demo/localize", files={"other": ("q.png", good, "image/png")}), 422,
                     "invalid_request")
        assert_error(client.post("/v1/maps/elsewhere/localize", content=good, headers={"content-type": "image/jpeg"}),
                     404, "unknown_map")
        assert_error(post_image(client, good, headers={"X-Session-Id": "nope"}), 404, "unknown_session")
        assert_error(client.post("/v1/sessions", json={"sequence_length": "many"}), 422, "invalid_request")
        assert_healthy(client, queries)


def test_interleaved_sessions_match_separate_matchers(demo_map, queries):
    with make_client(demo_map, max_top_k=240) as client:
        wait_ready(client)
        ids = [client.post("/v1/sessions", json={"map": "demo", "sequence_length": n}).json()["id"] for n in (3, 4)]
        assert ids[0] != ids[1]
        matchers = [OnlineSequenceMatcher(SequenceConfig(length=n)) for n in (3, 4)]
        streams = [queries, queries[::-1]]
        for step in range(len(queries)):
            for which in (0, 1):
                image = streams[which][step]
                body = post_image(client, encode(image), headers={"X-Session-Id": ids[which]}, params={"top_k": 240}).json()
                expected = matchers[which].push(demo_map.distance_row(image))
                got = np.full(240, np.nan)
                for match in body["top_k"]:
                    got[match["place"]] = match["distance"]
                np.testing.assert_allclose(got, expected, rtol=1e-5)
                assert body["sequence_length"] == min(step + 1, (3, 4)[which])
                assert body["session_id"] == ids[which]
        assert client.delete(f"/v1/sessions/{ids[0]}").status_code == 204
        assert_error(post_image(client, encode(queries[0]), headers={"X-Session-Id": ids[0]}), 404, "unknown_session")
        assert_error(client.delete(f"/v1/sessions/{ids[0]}"), 404, "unknown_session")
        assert post_image(client, encode(queries[0]), headers={"X-Session-Id": ids[1]}).status_code == 200
        assert 'spikebot_active_sessions 1.0' in client.get("/metrics").text


def test_sessions_expire_when_idle(demo_map, queries):
    with make_client(demo_map, session_idle_seconds=0.3) as client:
        wait_ready(client)
        session = client.post("/v1/sessions", json={"sequence_length": 2}).json()
        assert session["map"] == "demo"
        assert post_image(client, encode(queries[0]), headers={"X-Session-Id": session["id"]}).status_code == 200
        time.sleep(0.45)
        assert_error(post_image(client, encode(queries[0]), headers={"X-Session-Id": session["id"]}), 404,
                     "unknown_session")
        assert_error(client.post("/v1/sessions", json={"map": "elsewhere"}), 404, "unknown_map")


def test_api_key_enforced(demo_map, queries):
    with make_client(demo_map, api_keys=["secret"]) as client:
        wait_ready(client)
        assert_error(client.get("/v1/maps"), 401, "unauthorized")
        assert_error(client.get("/v1/maps", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
        assert_error(post_image(client, encode(queries[0])), 401, "unauthorized")
        assert client.get("/v1/maps", headers={"X-API-Key": "secret"}).status_code == 200
        assert post_image(client, encode(queries[0]), headers={"X-API-Key": "secret"}).json()["place"] == best_place(queries[0])
        assert client.get("/healthz").status_code == 200  # probes need no key


def test_exposed_host_needs_api_keys(monkeypatch):
    with pytest.raises(ValueError, match="API key"):
        ServiceSettings(host="0.0.0.0")
    assert ServiceSettings(host="0.0.0.0", api_keys=["k"]).api_keys == ["k"]
    assert ServiceSettings(host="::1").host == "::1"
    monkeypatch.setenv("SPIKEBOT_MAX_CONCURRENCY", "7")
    assert ServiceSettings().max_concurrency == 7
    from spikebot.cli import main

    result = CliRunner().invoke(main, ["serve", "--host", "192.168.1.5"])
    assert result.exit_code == 2 and "API key" in result.output


def test_readyz_waits_for_maps_then_serves(demo_map, queries):
    gate = threading.Event()
    with TestClient(create_app(ServiceSettings(), maps=[Ready(demo_map, gate)])) as client:
        assert_error(client.get("/readyz"), 503, "not_ready")
        assert client.get("/healthz").status_code == 200
        assert_error(post_image(client, encode(queries[0])), 503, "not_ready")
        gate.set()
        wait_ready(client)
        assert post_image(client, encode(queries[0])).status_code == 200


def test_load_failure_is_reported_by_readyz():
    class Broken:
        name = "broken"

        def load(self):
            raise RuntimeError("no such map folder")

    with TestClient(create_app(ServiceSettings(), maps=[Broken()])) as client:
        for _ in range(100):
            response = client.get("/readyz")
            if response.json()["error"]["code"] != "not_ready":
                break
            time.sleep(0.02)
        assert_error(response, 503, "load_failed")
        assert "no such map folder" in response.json()["error"]["message"]


def test_overload_gets_503_with_retry_after(demo_map, queries):
    app = create_app(ServiceSettings(max_concurrency=1), maps=[Ready(demo_map)])
    with TestClient(app) as client:
        wait_ready(client)
        slots = app.state.service.slots
        assert slots.acquire(blocking=False)  # a localisation in flight
        try:
            response = post_image(client, encode(queries[0]))
            assert_error(response, 503, "overloaded")
            assert response.headers["retry-after"] == "1"
        finally:
            slots.release()
        assert post_image(client, encode(queries[0])).status_code == 200
        assert "spikebot_overload_rejections_total 1.0" in client.get("/metrics").text


def test_metrics_count_requests_and_stages(demo_map, queries):
    with make_client(demo_map) as client:
        wait_ready(client)
        post_image(client, encode(queries[0]))
        post_image(client, b"", "image/png")
        text = client.get("/metrics").text
        assert 'spikebot_http_requests_total{method="POST",route="/v1/maps/{name}/localize",status="200"} 1.0' in text
        assert 'spikebot_http_requests_total{method="POST",route="/v1/maps/{name}/localize",status="422"} 1.0' in text
        assert 'spikebot_localize_stage_seconds_count{stage="describe"} 1.0' in text
        assert 'spikebot_http_request_seconds_count{method="POST",route="/v1/maps/{name}/localize"}' in text


def test_map_store_round_trip(tmp_path, demo_map, queries):
    store = MapStore(tmp_path / "maps")
    store.save("route", demo_map.method, ReferenceSource(dataset="demo"), demo_map.n_places)
    assert [m["name"] for m in store.list()] == ["route"] and store.list()[0]["n_places"] == 240
    assert not [p for p in (tmp_path / "maps").iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(Exception, match="already exists"):
        store.save("route", demo_map.method, ReferenceSource(dataset="demo"), demo_map.n_places)
    with TestClient(create_app(ServiceSettings(map_store=tmp_path / "maps"))) as client:
        wait_ready(client)
        assert client.get("/v1/maps").json()["maps"] == [{"name": "route", "method": "sad", "n_places": 240}]
        response = client.post("/v1/maps/route/localize", content=encode(queries[2]), headers={"content-type": "image/png"})
        assert response.json()["place"] == int(np.argmin(demo_map.distance_row(queries[2])))


class SlowMap:
    """The demo map behind ``distance_rows`` (what the service's batcher calls) that first sleeps ``delay`` seconds;
    ``finished`` counts the rows done."""

    def __init__(self, loaded: LoadedMap, delay: float):
        self.loaded, self.delay, self.finished = loaded, delay, 0

    def __getattr__(self, attribute):
        return getattr(self.loaded, attribute)

    def distance_rows(self, images) -> np.ndarray:
        time.sleep(self.delay)
        rows = self.loaded.distance_rows(images)
        self.finished += len(rows)
        return rows


def test_slow_localisation_gets_504_and_its_slot_comes_back(demo_map, queries):
    slow = SlowMap(demo_map, delay=1.0)
    settings = ServiceSettings(request_timeout_seconds=0.2, max_concurrency=1)
    with TestClient(create_app(settings, maps=[Ready(slow)])) as client:
        wait_ready(client)
        started = time.perf_counter()
        assert_error(post_image(client, encode(queries[0])), 504, "timeout")
        assert time.perf_counter() - started < 0.9  # answered at the deadline, not when the work ended
        assert client.get("/healthz").status_code == 200
        # the abandoned worker still holds the only slot until its row is done: refused at once, not queued
        assert_error(post_image(client, encode(queries[0])), 503, "overloaded")
        deadline = time.monotonic() + 5
        while slow.finished < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert slow.finished == 1, "the abandoned localisation never finished"
        slow.delay = 0.0
        for _ in range(50):  # the slot is released just after the row; allow the worker a moment to get there
            response = post_image(client, encode(queries[0]))
            if response.status_code != 503:
                break
            time.sleep(0.02)
        assert response.status_code == 200 and response.json()["place"] == best_place(queries[0])
        assert_healthy(client, queries)


def test_oversized_multipart_uploads_get_413(demo_map, queries):
    with make_client(demo_map, max_body_bytes=200_000, max_image_pixels=100_000) as client:
        wait_ready(client)
        big = {"image": ("q.png", b"\x89PNG" + b"x" * 300_000, "image/png")}
        assert_error(client.post("/v1/maps/demo/localize", files=big), 413, "body_too_large")  # by Content-Length
        request = client.build_request("POST", "/v1/maps/demo/localize", files=big)
        body, content_type = request.read(), request.headers["content-type"]

        def chunks():  # no Content-Length: the limit must hold while the body streams in
            for start in range(0, len(body), 65536):
                yield body[start:start + 65536]

        streamed = client.post("/v1/maps/demo/localize", content=chunks(), headers={"content-type": content_type})
        assert "content-length" not in streamed.request.headers
        assert_error(streamed, 413, "body_too_large")
        bomb = {"image": ("q.png", png_claiming(100_000, 100_000), "image/png")}
        assert_error(client.post("/v1/maps/demo/localize", files=bomb), 413, "image_too_large")
        too_many_pixels = {"image": ("q.png", encode(np.zeros((400, 400), dtype=np.uint8)), "image/png")}
        assert_error(client.post("/v1/maps/demo/localize", files=too_many_pixels), 413, "image_too_large")
        assert_healthy(client, queries)


def test_admission_follows_the_batch_and_torch_threads_the_usable_cores(monkeypatch):
    import os

    for name in ("SPIKEBOT_MAX_CONCURRENCY", "SPIKEBOT_MAX_BATCH", "SPIKEBOT_TORCH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert ServiceSettings().max_batch == 16 and ServiceSettings().max_concurrency == 32  # two full batches
    assert ServiceSettings(max_batch=4).max_concurrency == 8
    monkeypatch.setenv("SPIKEBOT_MAX_BATCH", "8")
    assert ServiceSettings().max_concurrency == 16 and ServiceSettings(max_concurrency=3).max_concurrency == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert ServiceSettings().torch_threads == 3  # the usable cores, not the machine's
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert ServiceSettings().torch_threads == 1


def test_serve_options_reach_the_settings_and_admission_follows_the_batch():
    from server.cli import build_settings

    settings = build_settings(max_batch=4, max_batch_wait_ms=0.5, torch_threads=1, max_concurrency=None)
    assert (settings.max_batch, settings.max_batch_wait_ms, settings.torch_threads) == (4, 0.5, 1)
    assert settings.max_concurrency == 8
    assert build_settings(max_batch=4, max_concurrency=3).max_concurrency == 3


def test_session_store_creates_under_a_chosen_id_replacing_within_the_limit():
    from server.sessions import SessionLimitError, SessionStore

    store = SessionStore(idle_seconds=60, max_sessions=2)
    issued = store.create("demo", SequenceConfig(length=2))
    chosen = store.create("demo", SequenceConfig(length=3), session_id="robot-7")
    assert chosen.id == "robot-7" and issued.id != "robot-7" and len(store) == 2
    replaced = store.create("other", SequenceConfig(length=4), session_id="robot-7")  # at the limit, but replacing
    assert store.get("robot-7") is replaced and replaced.map_name == "other" and len(store) == 2
    with pytest.raises(SessionLimitError):
        store.create("demo", SequenceConfig(), session_id="robot-8")
