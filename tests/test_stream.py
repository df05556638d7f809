"""The WebSocket stream ``/v1/maps/{name}/stream`` on the demo route's SAD map, through TestClient and once through
uvicorn: answers and sequence matching per connection, and each bad input's documented error and close code."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server.app import create_app
from server.maps import LoadedMap
from server.settings import ServiceSettings
from tests.test_server import Ready, encode, load_map_once, png_claiming, post_image, wait_ready
from vpr.datasets import load_registered
from vpr.sequence import OnlineSequenceMatcher, SequenceConfig

N_PLACES = 240


@pytest.fixture(scope="module")
def demo_map() -> LoadedMap:
    return load_map_once()


@pytest.fixture(scope="module")
def queries() -> list[np.ndarray]:
    return [load_registered("demo").query[i] for i in range(0, 40, 4)]


def started(demo_map, gate: threading.Event | None = None, **settings) -> TestClient:
    settings.setdefault("max_top_k", N_PLACES)
    return TestClient(create_app(ServiceSettings(**settings), maps=[Ready(demo_map, gate)]))


def url(name: str = "demo", **params) -> str:
    return f"/v1/maps/{name}/stream" + (f"?{urlencode(params)}" if params else "")


def full_row(answer: dict) -> np.ndarray:
    """The answer's distances to every place (it was asked for top_k = all places)."""
    row = np.full(N_PLACES, np.nan)
    for match in answer["top_k"]:
        row[match["place"]] = match["distance"]
    return row


def assert_error(message: dict, code: str) -> None:
    assert set(message) == {"error"}, message
    assert message["error"]["code"] == code and message["error"]["message"]


def assert_closed(ws, code: int) -> None:
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    assert closed.value.code == code


def assert_matches(answer: dict, matcher: OnlineSequenceMatcher, demo_map: LoadedMap, image: np.ndarray,
                   length: int) -> None:
    expected = matcher.push(demo_map.distance_row(image))
    np.testing.assert_allclose(full_row(answer), expected, rtol=1e-5)
    assert answer["place"] == int(np.argmin(expected)) and answer["sequence_length"] == length


def test_stream_answers_each_frame_sequence_matched_like_the_matcher(demo_map, queries):
    with started(demo_map) as client:
        wait_ready(client)
        for mode, length in (("diagonal", 3), ("seqslam", 4)):
            matcher = OnlineSequenceMatcher(SequenceConfig(length=length, mode=mode))
            with client.websocket_connect(url(sequence_length=length, mode=mode, top_k=N_PLACES)) as ws:
                for step, image in enumerate(queries[:6]):
                    ws.send_bytes(encode(image))
                    answer = ws.receive_json()
                    assert_matches(answer, matcher, demo_map, image, min(step + 1, length))
                    assert answer["session_id"].startswith("stream-")
                    assert answer["server_timing"]["total_ms"] >= answer["server_timing"]["describe_ms"] > 0
                    assert 0 <= answer["confidence"] <= 1
                    assert answer["score"] == pytest.approx(-answer["top_k"][0]["distance"])
                assert 'spikebot_open_streams 1.0' in client.get("/metrics").text
        with client.websocket_connect(url()) as ws:  # defaults: sequence_length 5, top_k 5; JPEG frames too
            for step in range(6):
                ws.send_bytes(encode(queries[step], "JPEG"))
                answer = ws.receive_json()
                assert answer["sequence_length"] == min(step + 1, 5) and len(answer["top_k"]) == 5
        metrics = client.get("/metrics").text
        assert 'spikebot_stream_frames_total{outcome="ok"} 18.0' in metrics
        assert 'spikebot_localize_stage_seconds_count{stage="describe"} 18.0' in metrics
        assert 'spikebot_open_streams 0.0' in metrics


def test_bad_frames_get_coded_errors_and_the_stream_goes_on(demo_map, queries):
    good = encode(queries[0], "JPEG")
    gif = encode(queries[0], "GIF")
    with started(demo_map, max_body_bytes=200_000, max_image_pixels=100_000) as client:
        wait_ready(client)
        matcher = OnlineSequenceMatcher(SequenceConfig(length=3))
        with client.websocket_connect(url(sequence_length=3, top_k=N_PLACES)) as ws:
            bad = [(good[: len(good) // 2], "bad_image"),  # truncated JPEG
                   (b"\xff\xd8\xff\xe0 not really a JPEG", "bad_image"),  # corrupt
                   (b"", "bad_image"),  # zero-byte message
                   (gif, "bad_image"),  # decodable, but neither JPEG nor PNG
                   (encode(np.zeros((400, 400), dtype=np.uint8)), "image_too_large"),
                   (png_claiming(100_000, 100_000), "image_too_large")]  # huge dimensions, tiny message
            for step, image in enumerate(queries[:3]):
                for data, code in bad:
                    ws.send_bytes(data)
                    assert_error(ws.receive_json(), code)
                ws.send_text("a frame, honestly")
                assert_error(ws.receive_json(), "unsupported_message")
                ws.send_bytes(encode(image))  # rejected frames never joined the sequence
                assert_matches(ws.receive_json(), matcher, demo_map, image, step + 1)
        metrics = client.get("/metrics").text
        assert 'spikebot_stream_frames_total{outcome="bad_image"} 12.0' in metrics
        assert 'spikebot_stream_frames_total{outcome="image_too_large"} 6.0' in metrics
        assert 'spikebot_stream_frames_total{outcome="unsupported_message"} 3.0' in metrics
        assert post_image(client, encode(queries[1])).status_code == 200


def test_oversized_message_closes_with_1009_and_the_service_stays_healthy(demo_map, queries):
    with started(demo_map, max_body_bytes=200_000) as client:
        wait_ready(client)
        with client.websocket_connect(url()) as ws:
            ws.send_bytes(encode(queries[0]))
            assert ws.receive_json()["sequence_length"] == 1
            ws.send_bytes(b"\xff\xd8" + b"x" * 200_000)
            assert_error(ws.receive_json(), "body_too_large")
            assert_closed(ws, 1009)
        assert client.get("/healthz").status_code == 200
        with client.websocket_connect(url()) as ws:
            ws.send_bytes(encode(queries[0]))
            assert ws.receive_json()["sequence_length"] == 1
        assert post_image(client, encode(queries[0])).status_code == 200
        assert 'spikebot_open_streams 0.0' in client.get("/metrics").text


def test_overloaded_timeout_and_internal_errors(demo_map, queries, monkeypatch):
    app = create_app(ServiceSettings(max_concurrency=2, request_timeout_seconds=0.5), maps=[Ready(demo_map)])
    with TestClient(app) as client:
        wait_ready(client)
        slots = app.state.service.slots
        with client.websocket_connect(url()) as ws:
            assert slots.acquire(blocking=False) and slots.acquire(blocking=False)  # both slots busy
            try:
                ws.send_bytes(encode(queries[0]))
                assert_error(ws.receive_json(), "overloaded")
            finally:
                slots.release()
                slots.release()
            ws.send_bytes(encode(queries[0]))
            assert ws.receive_json()["sequence_length"] == 1

            original, calls = demo_map.distance_row, []

            def slow_once(image):
                calls.append(image)
                if len(calls) == 1:
                    time.sleep(0.75)  # over the 0.5 s timeout; the next frame waits out the rest in the map's batcher
                return original(image)

            monkeypatch.setattr(demo_map, "distance_row", slow_once)
            ws.send_bytes(encode(queries[1]))
            assert_error(ws.receive_json(), "timeout")
            ws.send_bytes(encode(queries[2]))  # the connection is still open; the abandoned frame holds one slot
            assert ws.receive_json()["place"] >= 0

            def broken(image):
                raise RuntimeError("method failed")

            monkeypatch.setattr(demo_map, "distance_row", broken)
            ws.send_bytes(encode(queries[3]))
            assert_error(ws.receive_json(), "internal")
            assert_closed(ws, 1011)
        monkeypatch.undo()
        assert "spikebot_overload_rejections_total 1.0" in client.get("/metrics").text
        assert post_image(client, encode(queries[0])).status_code == 200


@pytest.mark.parametrize("name, params, code, close", [
    ("elsewhere", {}, "unknown_map", 4404),
    ("demo", {"top_k": 0}, "invalid_request", 4422),
    ("demo", {"top_k": N_PLACES + 1}, "invalid_request", 4422),
    ("demo", {"sequence_length": 101}, "invalid_request", 4422),
    ("demo", {"sequence_length": "many"}, "invalid_request", 4422),
    ("demo", {"mode": "sideways"}, "invalid_request", 4422),
])
def test_refused_streams_say_why_and_close(demo_map, queries, name, params, code, close):
    with started(demo_map) as client:
        wait_ready(client)
        with client.websocket_connect(url(name, **params)) as ws:
            assert_error(ws.receive_json(), code)
            assert_closed(ws, close)
        assert client.get("/healthz").status_code == 200


def test_stream_before_maps_load_is_told_to_retry(demo_map, queries):
    gate = threading.Event()
    with started(demo_map, gate) as client:
        with client.websocket_connect(url()) as ws:
            assert_error(ws.receive_json(), "not_ready")
            assert_closed(ws, 1013)
        gate.set()
        wait_ready(client)
        with client.websocket_connect(url()) as ws:
            ws.send_bytes(encode(queries[0]))
            assert ws.receive_json()["sequence_length"] == 1


def test_api_key_by_header_or_query_parameter(demo_map, queries):
    with started(demo_map, api_keys=["secret"]) as client:
        wait_ready(client)
        for target, headers in ((url(), {}), (url(api_key="wrong"), {}), (url(), {"X-API-Key": "wrong"}),
                                (url(api_key="secret"), {"X-API-Key": "wrong"}), (url("elsewhere"), {})):
            with client.websocket_connect(target, headers=headers) as ws:
                assert_error(ws.receive_json(), "unauthorized")  # before the map name is even looked at
                assert_closed(ws, 4401)
        for target, headers in ((url(), {"X-API-Key": "secret"}), (url(api_key="secret"), {})):
            with client.websocket_connect(target, headers=headers) as ws:
                ws.send_bytes(encode(queries[0]))
                assert ws.receive_json()["sequence_length"] == 1


def test_concurrent_streams_keep_separate_state(demo_map, queries):
    with started(demo_map, max_concurrency=4) as client:
        wait_ready(client)
        lengths, streams = (3, 4), (queries, queries[::-1])
        matchers = [OnlineSequenceMatcher(SequenceConfig(length=n)) for n in lengths]
        with client.websocket_connect(url(sequence_length=3, top_k=N_PLACES)) as first, \
                client.websocket_connect(url(sequence_length=4, top_k=N_PLACES)) as second:
            sockets, ids = (first, second), [set(), set()]
            for step in range(len(queries)):
                for which in (0, 1):
                    image = streams[which][step]
                    sockets[which].send_bytes(encode(image))
                    answer = sockets[which].receive_json()
                    assert_matches(answer, matchers[which], demo_map, image, min(step + 1, lengths[which]))
                    ids[which].add(answer["session_id"])
            assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]

        failures: list[Exception] = []

        def run(frames: list[np.ndarray], length: int) -> None:  # truly concurrent: one thread per stream
            try:
                matcher = OnlineSequenceMatcher(SequenceConfig(length=length))
                with client.websocket_connect(url(sequence_length=length, top_k=N_PLACES)) as ws:
                    for step, image in enumerate(frames):
                        ws.send_bytes(encode(image))
                        assert_matches(ws.receive_json(), matcher, demo_map, image, min(step + 1, length))
            except Exception as error:  # noqa: BLE001  (reported by the main thread)
                failures.append(error)

        plans = ((queries, 2), (queries[::-1], 5), (queries[1::2], 3))
        threads = [threading.Thread(target=run, args=plan) for plan in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failures, failures
        assert 'spikebot_open_streams 0.0' in client.get("/metrics").text


def test_protocol_is_in_the_openapi_description(demo_map):
    with started(demo_map) as client:
        description = client.get("/openapi.json").json()["info"]["description"]
        assert "/v1/maps/{name}/stream" in description and "1009" in description and "4401" in description


def test_stream_through_uvicorn_and_a_real_websocket_client(demo_map, queries):
    """The TestClient skips the WebSocket protocol layer: this runs uvicorn with its websockets implementation."""
    pytest.importorskip("websockets", reason="uvicorn serves WebSockets only with the websockets package")
    import uvicorn
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    app = create_app(ServiceSettings(max_body_bytes=200_000, api_keys=["secret"]), maps=[Ready(demo_map)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.025)
        port = server.servers[0].sockets[0].getsockname()[1]
        for _ in range(200):  # maps load after startup
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                break
            time.sleep(0.025)
        target = f"ws://127.0.0.1:{port}{url(sequence_length=2)}"
        with connect(target, additional_headers={"X-API-Key": "secret"}) as ws:
            for image in queries[:3]:  # sent ahead: answered in order
                ws.send(encode(image))
            assert [json.loads(ws.recv())["sequence_length"] for _ in range(3)] == [1, 2, 2]
            ws.send(b"x" * 300_000)
            assert json.loads(ws.recv())["error"]["code"] == "body_too_large"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 1009
        with connect(target) as ws:
            assert json.loads(ws.recv())["error"]["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 4401
    finally:
        server.should_exit = True
        thread.join(10)


def test_stream_ends_when_its_map_goes(demo_map, queries):
    app = create_app(ServiceSettings(), maps=[Ready(demo_map)])
    with TestClient(app) as client:
        wait_ready(client)
        with client.websocket_connect(url()) as ws:
            ws.send_bytes(encode(queries[0]))
            assert ws.receive_json()["sequence_length"] == 1
            del app.state.service.maps["demo"]  # what deleting (or replacing) the map does to the served maps
            ws.send_bytes(encode(queries[1]))
            assert_error(ws.receive_json(), "unknown_map")
            assert_closed(ws, 4404)
        assert client.get("/healthz").status_code == 200


def test_a_frame_whose_client_went_away_is_finished_and_gives_its_slot_back(demo_map, queries):
    """A client that goes away while its frame waits must not keep a concurrency slot: the frame is still finished
    (it joins the sequence in its turn, as after a timeout), and then its slot is free again."""
    import anyio

    from server.sessions import Session
    from server.stream import localize_message

    app = create_app(ServiceSettings(max_concurrency=2), maps=[Ready(demo_map)])
    with TestClient(app) as client:
        wait_ready(client)
        state = app.state.service
        session = Session("cancelled", "demo", OnlineSequenceMatcher(SequenceConfig()), time.monotonic())

        async def cancelled_frame() -> None:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await localize_message(state, state.maps["demo"], encode(queries[0]), 3, session)

        for _ in range(3):  # more cancelled frames than slots: a leak would leave none
            anyio.run(cancelled_frame)
            deadline = time.monotonic() + 5
            while state.slots._value < 2:
                assert time.monotonic() < deadline, "the slot was not given back"
                time.sleep(0.005)
        assert session.frames == 3
        assert state.slots.acquire(blocking=False) and state.slots.acquire(blocking=False)
        state.slots.release()
        state.slots.release()
