"""server.client against the in-process service (demo map) and against httpx.MockTransport for the retry policy."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.client import (
    AsyncLocalisationClient,
    LocalisationClient,
    ServiceError,
    encode_image,
)
from server.maps import LoadedMap, demo_spec, load_map
from server.schemas import Localization
from server.settings import ServiceSettings
from vpr.datasets import load_registered

_DEMO: list[LoadedMap] = []


@pytest.fixture(scope="module")
def demo_map() -> LoadedMap:
    if not _DEMO:
        _DEMO.append(load_map(demo_spec()))
    return _DEMO[0]


@pytest.fixture(scope="module")
def queries() -> list[np.ndarray]:
    return [load_registered("demo").query[i] for i in range(0, 40, 8)]


class Ready:
    def __init__(self, loaded: LoadedMap):
        self.name, self.loaded = loaded.name, loaded

    def load(self) -> LoadedMap:
        return self.loaded


def app_for(demo_map, **settings):
    return create_app(ServiceSettings(**settings), maps=[Ready(demo_map)])


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_localize_matches_a_direct_request(demo_map, queries):
    with TestClient(app_for(demo_map)) as http:
        client = LocalisationClient(client=http)
        assert client.wait_ready(timeout=5).maps == ["demo"]
        assert client.health().status == "ok"
        assert [(m.name, m.n_places) for m in client.maps().maps] == [("demo", 240)]
        for query in queries[:3]:
            direct = http.post("/v1/maps/demo/localize", content=png(query), headers={"content-type": "image/png"},
                               params={"top_k": 3}).json()
            answer = client.localize("demo", query, top_k=3)
            assert isinstance(answer, Localization)
            assert answer.place == direct["place"] == int(np.argmin(demo_map.distance_row(query)))
            assert [m.place for m in answer.top_k] == [m["place"] for m in direct["top_k"]]
            assert answer.server_timing.total_ms > 0 and answer.sequence_length == 1
        sent = Image.open(io.BytesIO(encode_image(queries[0], "jpeg")[0]))  # bytes pass through untouched
        answer = client.localize("demo", encode_image(queries[0], "jpeg")[0])
        assert answer.place == int(np.argmin(demo_map.distance_row(np.asarray(sent))))


def test_sessions_and_errors_through_the_client(demo_map, queries):
    with TestClient(app_for(demo_map, api_keys=["secret"])) as http:
        with pytest.raises(ServiceError) as caught:
            LocalisationClient(client=http).maps()
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        client = LocalisationClient(client=http, api_key="secret")
        client.wait_ready(timeout=5)
        with pytest.raises(ServiceError) as caught:
            client.localize("elsewhere", queries[0])
        assert (caught.value.status, caught.value.code) == (404, "unknown_map") and "elsewhere" in caught.value.message
        with pytest.raises(ServiceError) as caught:
            client.open_session("elsewhere", 3)
        assert caught.value.code == "unknown_map"
        session_id = client.open_session("demo", sequence_length=2)
        lengths = [client.localize("demo", q, session_id=session_id).sequence_length for q in queries[:3]]
        assert lengths == [1, 2, 2]
        client.close_session(session_id)
        with pytest.raises(ServiceError) as caught:
            client.localize("demo", queries[0], session_id=session_id)
        assert caught.value.code == "unknown_session"
        with client.session("demo", 3) as other:
            assert client.localize("demo", queries[0], session_id=other).session_id == other
        with pytest.raises(ServiceError) as caught:
            client.close_session(other)  # the context manager closed it
        assert caught.value.code == "unknown_session"
        with pytest.raises(ValueError):
            client.localize("demo", b"GIF89a...")


def flaky(failures: int, status: int = 503, retry_after: str | None = "0"):
    """A MockTransport answering ``status`` ``failures`` times, then 200 with a health body; counts requests."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= failures:
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            return httpx.Response(status, headers=headers,
                                  json={"error": {"code": "overloaded", "message": "busy"}})
        return httpx.Response(200, json={"status": "ok"})

    return httpx.MockTransport(handle), seen


def test_retries_503_then_succeeds_and_gives_up_after_retries():
    transport, seen = flaky(1)
    slept: list[float] = []
    with LocalisationClient("http://robot", transport=transport, sleep=slept.append) as client:
        assert client.health().status == "ok"
    assert len(seen) == 2 and slept == [0.0]

    transport, seen = flaky(10)
    client = LocalisationClient("http://robot", transport=transport, retries=2, sleep=slept.append)
    with pytest.raises(ServiceError) as caught:
        client.health()
    assert (caught.value.status, caught.value.code, caught.value.message) == (503, "overloaded", "busy")
    assert len(seen) == 3

    transport, seen = flaky(2, status=429, retry_after=None)  # no Retry-After: exponential backoff
    slept.clear()
    LocalisationClient("http://robot", transport=transport, backoff=0.1, sleep=slept.append).health()
    assert slept == pytest.approx([0.1, 0.2])

    transport, seen = flaky(1, retry_after="3600")  # capped
    slept.clear()
    LocalisationClient("http://robot", transport=transport, max_backoff=1.5, sleep=slept.append).health()
    assert slept == [1.5]


def test_connection_errors_retry_and_other_errors_do_not():
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/v1/maps":
            return httpx.Response(500, text="boom")
        return httpx.Response(201, json={"id": "s1", "map": "demo", "sequence_length": 2, "mode": "diagonal",
                                         "idle_timeout_seconds": 60})

    client = LocalisationClient("http://robot", transport=httpx.MockTransport(handle), sleep=lambda s: None)
    assert client.open_session("demo", 2) == "s1"
    assert calls == ["/v1/sessions", "/v1/sessions"]
    with pytest.raises(ServiceError) as caught:
        client.maps()
    assert (caught.value.status, caught.value.code, caught.value.message) == (500, "http_error", "boom")
    assert calls.count("/v1/maps") == 1


def test_async_client_works_the_same(demo_map, queries):
    app = app_for(demo_map)
    app.state.service.load_maps()  # ASGITransport runs no lifespan

    async def scenario():
        async with AsyncLocalisationClient("http://testserver", transport=httpx.ASGITransport(app=app)) as client:
            ready = await client.wait_ready(timeout=5)
            answer = await client.localize("demo", queries[1], top_k=2)
            async with client.session("demo", 2) as session_id:
                lengths = [(await client.localize("demo", q, session_id=session_id)).sequence_length
                           for q in queries[:3]]
            with pytest.raises(ServiceError) as caught:
                await client.localize("elsewhere", queries[0])
            return ready, answer, lengths, caught.value

    ready, answer, lengths, error = asyncio.run(scenario())
    assert ready.maps == ["demo"]
    assert answer.place == int(np.argmin(demo_map.distance_row(queries[1]))) and len(answer.top_k) == 2
    assert lengths == [1, 2, 2]
    assert (error.status, error.code) == (404, "unknown_map")

    transport, seen = flaky(1)

    async def retried():
        async with AsyncLocalisationClient("http://robot", transport=transport) as client:
            return await client.health()

    assert asyncio.run(retried()).status == "ok" and len(seen) == 2


def test_robot_loop_example_runs_a_session_over_a_folder(demo_map, queries, tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "robot_loop.py"
    spec = importlib.util.spec_from_file_location("robot_loop", path)
    robot_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(robot_loop)
    for index, query in enumerate(queries[:3]):
        (tmp_path / f"f{index}.png").write_bytes(png(query))
    (tmp_path / "notes.txt").write_text("ignored")
    with TestClient(app_for(demo_map)) as http:
        monkeypatch.setattr(robot_loop, "LocalisationClient",
                            lambda url, api_key=None, image_format="png": LocalisationClient(client=http))
        code = robot_loop.main(["--map", "demo", "--folder", str(tmp_path), "--rate-hz", "1000",
                                "--sequence-length", "2"])
        assert len(http.app.state.service.sessions) == 0  # closed at the end
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0].startswith("session ")
    assert [line.split(":")[0] for line in out[1:]] == ["f0.png", "f1.png", "f2.png"]
    assert f"place {int(np.argmin(demo_map.distance_row(queries[0]))):5d}" in out[1]
    assert "(over 2 frames)" in out[3]
