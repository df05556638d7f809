"""The event stream ``/v1/events/stream`` (server/event_stream.py): binning and the stats processor on tiny arrays,
then the endpoint through TestClient (answers, sequence numbers, back-pressure, each error and close code) and once
through uvicorn with a real WebSocket client."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from events.action.models import build_model, model_config
from events.action.points import PointConfig, Windows
from events.action.streaming import for_sensor
from events.action.training import ActionModel
from events.flow.models import FlowNet, FlowNetConfig
from events.flow.training import FlowModel, FlowTrainConfig, predict_sequence
from events.io import EVENT_DTYPE, make_events
from events.packing import HEADER_SIZE, encode_chunk, pack_header, read_header
from events.representations import to_count_images, window_bounds
from server import event_stream
from server.app import create_app
from server.event_stream import (
    BIN_US,
    Bins,
    EventStats,
    Pending,
    bin_bounds,
    join_events,
    processor_factories,
    split_bins,
)
from server.settings import ServiceSettings
from tests.test_event_packing import random_events

URL = "/v1/events/stream"
WIDTH, HEIGHT = 640, 480


def started(**settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(**settings)))


def chunks_of(events: np.ndarray, size: int, first_seq: int = 0, **options) -> list[bytes]:
    return [encode_chunk(events[start : start + size], WIDTH, HEIGHT, first_seq + k, **options)
            for k, start in enumerate(range(0, len(events), size))]


def until_closed(ws) -> tuple[list[dict], int]:
    """Every message left on the connection, and its close code."""
    messages = []
    while True:
        try:
            messages.append(ws.receive_json())
        except WebSocketDisconnect as closed:
            return messages, closed.code


def until_ack(ws, seq: int) -> list[dict]:
    """Messages up to and including the ack of chunk ``seq``."""
    messages = [ws.receive_json()]
    while not (messages[-1]["type"] == "ack" and messages[-1]["seq"] == seq):
        messages.append(ws.receive_json())
    return messages


def renumbered(chunk: bytes, seq: int) -> bytes:
    return pack_header(dataclasses.replace(read_header(chunk), sequence=seq)) + chunk[HEADER_SIZE:]


def of_type(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


def assert_error(message: dict, code: str, seq: int | None = None) -> None:
    assert message["type"] == "error" and message["error"]["code"] == code and message["error"]["message"], message
    assert message["seq"] == seq


# ---------------------------------------------------------------------------------------------------------------
# Pure core


def events_at(*t: int) -> np.ndarray:
    return make_events(np.array(t, np.int64), np.arange(len(t)) % 7, np.zeros(len(t)), np.arange(len(t)) % 2)


def spans(bins: Bins) -> list[tuple[int, int, int, int]]:
    """(bin number, events, first seq, last seq) of each completed bin."""
    return [(int(i), int(n), int(a), int(b)) for i, n, a, b in
            zip(bins.index, np.diff(bins.bounds), bins.seq_first, bins.seq_last)]


def test_split_bins_completes_bins_when_later_events_arrive_and_tracks_their_chunks():
    bins, pending = split_bins(Pending(), events_at(5, 15_000, 15_001), 1)
    assert spans(bins) == [(0, 1, 1, 1)] and (len(pending.events), pending.seq_first, pending.seq_last) == (2, 1, 1)
    bins, pending = split_bins(pending, events_at(16_000), 2)  # same open bin: nothing completes
    assert spans(bins) == [] and (len(pending.events), pending.seq_first, pending.seq_last) == (3, 1, 2)
    bins, pending = split_bins(pending, events_at(), 3)  # an empty chunk changes nothing
    assert spans(bins) == [] and (len(pending.events), pending.seq_first, pending.seq_last) == (3, 1, 2)
    bins, pending = split_bins(pending, events_at(20_000, 45_000, 45_500), 4)  # bin 3 is empty: skipped
    assert spans(bins) == [(1, 3, 1, 2), (2, 1, 4, 4)]
    assert np.array_equal(bins.events["t"], [15_000, 15_001, 16_000, 20_000])
    assert bins.header(0, 2) == {"t_start_us": 10_000, "t_end_us": 30_000, "seq_first": 1, "seq_last": 4}
    bins, pending = split_bins(pending, events_at(49_999, 50_000), 5)  # the open bin gets new events, then closes
    assert spans(bins) == [(4, 3, 4, 5)] and (pending.seq_first, pending.seq_last) == (5, 5)
    bins, pending = split_bins(pending, events_at(), 5, final=True)
    assert spans(bins) == [(5, 1, 5, 5)] and len(pending.events) == 0
    bins, _ = split_bins(Pending(), events_at(), 0, final=True)
    assert len(bins) == 0 and len(bins.bounds) == 1


def test_bins_are_found_the_same_way_across_a_jump_in_time():
    dense = random_events(5000, 64, 64, max_step=20)  # more events than bins: binary search per bin
    jump = join_events(dense, events_at(10**15, 10**15 + 1, 10**15 + BIN_US))  # years later: one pass over events
    assert np.array_equal(join_events(dense[:10], dense[10:]), dense)
    for events in (dense, jump):
        index, bounds = bin_bounds(events["t"])
        numbers = events["t"] // BIN_US
        assert np.array_equal(index, np.unique(numbers))
        assert np.array_equal(np.diff(bounds), [np.sum(numbers == i) for i in index])
    assert bin_bounds(jump["t"])[0][-2:].tolist() == [10**11, 10**11 + 1]


def test_event_stats_count_each_bin_on_a_coarse_grid():
    events = random_events(3000, WIDTH, HEIGHT, max_step=20)
    bins, _ = split_bins(Pending(), events, 7, final=True)
    stats = EventStats(WIDTH, HEIGHT)
    answers = stats.push(bins)
    assert stats.cell == 40 and (stats.rows, stats.cols) == (12, 16)
    t0 = int(bins.index[0]) * BIN_US
    span = int(bins.index[-1] - bins.index[0]) + 1
    images = to_count_images(events, HEIGHT, WIDTH, BIN_US, t_start=t0, num_bins=span)
    images = images[bins.index - bins.index[0]]  # the bins that hold events
    assert len(answers) == len(bins) == len(images)
    for answer, image in zip(answers, images):
        assert answer["type"] == "stats" and answer["seq_first"] == answer["seq_last"] == 7
        assert answer["t_end_us"] - answer["t_start_us"] == BIN_US
        assert (answer["off"], answer["on"]) == tuple(image.sum(axis=(1, 2)).astype(int))
        assert answer["events"] == answer["on"] + answer["off"]
        np.testing.assert_array_equal(answer["grid"], image.sum(0).reshape(12, 40, 16, 40).sum(axis=(1, 3)))
    assert stats.push(split_bins(Pending(), events[:0], 0)[0]) == []
    assert np.array(EventStats(1280, 720).push(bins)[0]["grid"]).shape == (9, 16)


def test_processor_names_are_checked_with_a_reason():
    assert list(processor_factories(["stats", "stats"])) == ["stats"]
    with pytest.raises(ValueError, match="'flow' is unavailable: set event_flow_model"):
        processor_factories(["stats", "flow"])
    with pytest.raises(ValueError, match="'action' is unavailable: set event_action_model"):
        processor_factories(["action"])
    with pytest.raises(ValueError, match="unknown event processor 'vibes'; known: \\['stats'\\]"):
        processor_factories(["vibes"])
    assert list(processor_factories(["flow", "stats"], {"flow": EventStats})) == ["flow", "stats"]
    with pytest.raises(ValueError, match="no event processors"):
        processor_factories([])
    with pytest.raises(ValueError, match="'flow' is unavailable"):  # the service does not start half-configured
        create_app(ServiceSettings(event_processors=["stats", "flow"]))


# ---------------------------------------------------------------------------------------------------------------
# The trained models: tiny untrained ones saved as training saves them


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A flow model (LSTM, 4-8 channels) and a SpikePoint action model (24x24 sensor, 150 ms windows every 75 ms,
    8 events at least), untrained, saved."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    flow_config = FlowNetConfig(kind="lstm", channels=(4, 8))
    FlowModel(FlowNet(flow_config).eval(), FlowTrainConfig(network=flow_config, crop=16), [1]).save(root / "flow")
    network = build_model(model_config("spikepoint", {"local_dim": 8, "global_dim": 16, "time_steps": 4})).eval()
    points = PointConfig(window_ms=150.0, stride_ms=75.0, n_points=64, n_centroids=8, k=8, min_events=8)
    ActionModel(network, points, 24, 24).save(root / "action")
    return {"flow": root / "flow", "action": root / "action"}


def test_a_model_setting_serves_its_processor_and_a_bad_model_stops_the_service(models, tmp_path, monkeypatch):
    settings = ServiceSettings(event_flow_model=models["flow"], event_action_model=models["action"])
    assert settings.event_processors == ["stats", "flow", "action"]  # given a model, its processor runs
    assert ServiceSettings(event_action_model=models["action"]).event_processors == ["stats", "action"]
    monkeypatch.setenv("SPIKEBOT_EVENT_FLOW_MODEL", str(models["flow"]))
    assert ServiceSettings().event_processors == ["stats", "flow"]
    monkeypatch.delenv("SPIKEBOT_EVENT_FLOW_MODEL")
    with pytest.raises(ValueError, match="event_flow_model: not a spikebot flow model .needs flow_model.json"):
        create_app(ServiceSettings(event_flow_model=tmp_path / "missing"))
    corrupt = tmp_path / "action"
    shutil.copytree(models["action"], corrupt)
    (corrupt / "weights.pt").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="event_action_model: corrupt action model: .* does not match the checksum"):
        create_app(ServiceSettings(event_action_model=corrupt))
    with pytest.raises(ValueError, match="event_action_model: not a spikebot action model"):  # the other kind
        create_app(ServiceSettings(event_action_model=models["flow"]))
    with pytest.raises(ValueError, match="'flow' is unavailable: set event_flow_model"):
        create_app(ServiceSettings(event_processors=["stats", "flow"], event_action_model=models["action"]))


def test_serve_options_name_the_models(models, tmp_path, monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from server.cli import serve

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    result = CliRunner().invoke(serve, ["--flow-model", str(models["flow"]), "--action-model", str(models["action"]),
                                        "--torch-threads", "1"])
    assert result.exit_code == 0, result.output
    assert served[0].state.service.settings.event_processors == ["stats", "flow", "action"]
    result = CliRunner().invoke(serve, ["--flow-model", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    result = CliRunner().invoke(serve, ["--flow-model", str(not_a_model), "--torch-threads", "1"])
    assert result.exit_code == 2 and "event_flow_model" in result.output and "Traceback" not in result.output


def test_flow_and_action_answer_as_the_models_do_offline(models):
    """640x480 events for 0.31 s with a pause of 5 bins: flow for every bin with events (the empty bins stepped as
    zeros), action for each complete 150 ms window, from the stream's first bin (1.23 s)."""
    parts = [random_events(9000, WIDTH, HEIGHT, seed=1, t0=1_234_000, max_step=30),  # to bin 136
             random_events(4000, WIDTH, HEIGHT, seed=2, t0=1_420_000, max_step=60)]  # bins 142-153
    events = join_events(*parts)
    with started(event_flow_model=models["flow"], event_action_model=models["action"]) as client, \
            client.websocket_connect(f"{URL}?processors=flow,action") as ws:
        messages = []
        for chunk in chunks_of(events, 1500, compress=True):
            ws.send_bytes(chunk)
            messages += until_ack(ws, read_header(chunk).sequence)
        ws.send_text('{"type": "end"}')
        rest, code = until_closed(ws)
    assert code == 1000
    flows, actions = of_type(messages + rest, "flow"), of_type(messages + rest, "action")

    bin_of = events["t"] // BIN_US
    first = int(bin_of[0])
    assert [f["t_start_us"] // BIN_US for f in flows] == np.unique(bin_of).tolist()  # every bin with events
    network = FlowModel.load(models["flow"]).network
    span = int(bin_of[-1]) - first + 1  # the pause is shorter than 20 bins: every bin is stepped
    counts = to_count_images(events, HEIGHT, WIDTH, BIN_US, t_start=first * BIN_US, num_bins=span)
    pooled = counts.reshape(span, 2, 96, 5, 128, 5).sum(axis=(3, 5))  # 640x480 -> 128x96: 5x5 pixels each
    offline = predict_sequence(network, pooled)[np.unique(bin_of) - first]
    cells = offline.reshape(len(offline), 2, 12, 8, 16, 8).mean(axis=(3, 5)) * 5  # 40-pixel cells, sensor pixels
    for answer, expected in zip(flows, cells):
        assert answer["cell_px"] == 40 and answer["compute_ms"] > 0
        u, v = np.array(answer["u"]), np.array(answer["v"])
        assert u.shape == v.shape == (12, 16) and np.isfinite(u).all() and np.isfinite(v).all()
        np.testing.assert_allclose(np.stack([u, v]), expected, atol=6e-4)
    assert [f["empty_bins"] for f in flows if f["empty_bins"]] == [5]  # the pause: bins 137-141
    assert np.abs(cells).max() > 0.01

    model = for_sensor(ActionModel.load(models["action"])[0], WIDTH, HEIGHT)
    starts, bounds = window_bounds(events["t"], 150_000, 75_000, t_start=first * BIN_US,
                                   t_end=(int(bin_of[-1]) + 1) * BIN_US, include_incomplete=False)
    assert [a["t_start_us"] for a in actions] == starts.tolist() == [1_230_000, 1_305_000, 1_380_000]
    chunk_of = np.arange(len(events)) // 1500
    for answer, start, (lo, hi) in zip(actions, starts, bounds):
        window = Windows(np.zeros(1, np.int64), np.array([start]), np.array([lo]), np.array([hi]))
        expected = torch.softmax(model.predict(events, window, seed=int(start)), 1)[0].numpy()
        probabilities = np.array(list(answer["probabilities"].values()))
        assert list(answer["probabilities"]) == list(model.classes) and answer["events"] == hi - lo
        assert answer["label"] == model.classes[expected.argmax()] and answer["t_end_us"] == start + 150_000
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
        assert probabilities.sum() == pytest.approx(1, abs=1e-5)
        assert (answer["seq_first"], answer["seq_last"]) == (chunk_of[lo], chunk_of[hi - 1])


# ---------------------------------------------------------------------------------------------------------------
# The endpoint


@pytest.mark.parametrize("compress", [False, True])
def test_stream_answers_every_bin_with_the_chunks_it_covers(compress):
    events = random_events(20_000, WIDTH, HEIGHT, seed=1, t0=123_456, max_step=6)  # about 50 ms, 5..6 bins
    size = 700
    with started(event_queue_chunks=64) as client:  # all chunks are sent ahead: room for them
        with client.websocket_connect(f"{URL}?width={WIDTH}&height={HEIGHT}") as ws:
            for chunk in chunks_of(events, size, first_seq=100, compress=compress):
                ws.send_bytes(chunk)
            ws.send_text(json.dumps({"type": "end"}))
            messages, code = until_closed(ws)
        assert code == 1000
        acks, stats = of_type(messages, "ack"), of_type(messages, "stats")
        n_chunks = -(-len(events) // size)
        assert [a["seq"] for a in acks] == list(range(100, 100 + n_chunks))
        assert sum(a["events"] for a in acks) == len(events) and all(a["queued"] >= 0 for a in acks)
        bin_of = events["t"] // BIN_US
        chunk_of = 100 + np.arange(len(events)) // size
        expected = [{"t_start_us": int(b) * BIN_US, "t_end_us": int(b + 1) * BIN_US, "events": int((bin_of == b).sum()),
                     "on": int(events["p"][bin_of == b].sum()), "seq_first": int(chunk_of[bin_of == b][0]),
                     "seq_last": int(chunk_of[bin_of == b][-1])} for b in np.unique(bin_of)]
        assert [{k: s[k] for k in expected[0]} for s in stats] == expected
        assert all(sum(map(sum, s["grid"])) == s["events"] for s in stats)
        # answers come before the ack of the chunk that completed them
        order = [m["type"] if m["type"] != "ack" else m["seq"] for m in messages]
        for answer in stats[:-1]:
            assert order.index(answer["seq_last"] + 1) > order.index("stats")
        assert messages[-1] == {"type": "summary", "chunks": n_chunks, "events": len(events), "refused": 0,
                                "gaps": 0, "missing": 0, "bins": len(expected)}
        metrics = client.get("/metrics").text
        assert f'spikebot_event_chunks_total{{outcome="ok"}} {float(n_chunks)}' in metrics
        assert f"spikebot_stream_events_total {float(len(events))}" in metrics
        assert "spikebot_open_event_streams 0.0" in metrics


def test_sensor_from_the_first_chunk_and_chunks_for_another_sensor_are_refused():
    events = random_events(300, 100, 100)
    with started() as client, client.websocket_connect(URL) as ws:
        ws.send_bytes(encode_chunk(events[:100], 100, 100, 0))
        assert ws.receive_json() == {"type": "ack", "seq": 0, "events": 100, "queued": 0}
        ws.send_bytes(encode_chunk(events[100:200], 120, 100, 1))
        assert_error(ws.receive_json(), "bad_chunk", 1)
        ws.send_bytes(encode_chunk(events[100:200], 100, 100, 1))  # the refused number is still free
        assert ws.receive_json()["seq"] == 1
    with started() as client, client.websocket_connect(f"{URL}?width=640&height=480") as ws:
        ws.send_bytes(encode_chunk(events, 100, 100, 0))
        answer = ws.receive_json()
        assert_error(answer, "bad_chunk", 0)
        assert "is for a 100x100 sensor; this stream's is 640x480" in answer["error"]["message"]


def test_sequence_numbers_must_increase_and_gaps_are_reported():
    events = random_events(600, WIDTH, HEIGHT, max_step=2)  # all in one bin: acks only, no answers in between
    chunks = chunks_of(events, 100)
    with started() as client, client.websocket_connect(URL) as ws:
        ws.send_bytes(chunks[0])
        assert ws.receive_json()["type"] == "ack"
        ws.send_bytes(chunks[3])  # 1 and 2 never come
        assert ws.receive_json() == {"type": "gap", "seq": 3, "expected": 1, "missing": 2}
        assert ws.receive_json() == {"type": "ack", "seq": 3, "events": 100, "queued": 0}
        ws.send_bytes(chunks[2])  # late, or a replay: refused
        assert_error(ws.receive_json(), "sequence_not_increasing", 2)
        ws.send_bytes(chunks[3])
        assert_error(ws.receive_json(), "sequence_not_increasing", 3)
        ws.send_bytes(chunks[4])
        assert ws.receive_json()["seq"] == 4
        ws.send_text('{"type": "end"}')
        messages, _ = until_closed(ws)
        assert {k: messages[-1][k] for k in ("chunks", "events", "refused", "gaps", "missing")} == \
            {"chunks": 3, "events": 300, "refused": 0, "gaps": 1, "missing": 2}
    assert 'spikebot_event_chunks_total{outcome="sequence_not_increasing"} 2.0' in client.get("/metrics").text


def test_bad_chunks_and_messages_get_errors_and_the_stream_goes_on():
    events = random_events(400, WIDTH, HEIGHT, max_step=2)
    good = chunks_of(events, 100)
    with started() as client, client.websocket_connect(URL) as ws:
        ws.send_bytes(good[1])
        assert ws.receive_json()["seq"] == 1
        for data, seq, message in ((b"JUNK" + good[2][4:], None, "bad magic"),
                                   (good[2][:30], None, "shorter than the 36-byte header"),
                                   (good[0][:-1], None, "truncated"),
                                   (renumbered(good[0], 2), 2, "non-monotonic time")):  # before chunk 1's events
            ws.send_bytes(data)
            answer = ws.receive_json()
            assert_error(answer, "bad_chunk", seq)
            assert message in answer["error"]["message"]
        ws.send_text("hello")
        assert_error(ws.receive_json(), "unsupported_message")
        ws.send_bytes(good[3])  # chunk 2 was queued (and discarded as malformed): 3 follows without a gap
        assert ws.receive_json() == {"type": "ack", "seq": 3, "events": 100, "queued": 0}


def test_api_key_by_header_or_query_parameter():
    with started(api_keys=["secret"]) as client:
        for target, headers in ((URL, {}), (f"{URL}?api_key=wrong", {}), (URL, {"X-API-Key": "wrong"}),
                                (f"{URL}?api_key=secret", {"X-API-Key": "wrong"})):
            with client.websocket_connect(target, headers=headers) as ws:
                messages, code = until_closed(ws)
                assert code == 4401 and len(messages) == 1
                assert_error(messages[0], "unauthorized")
        for target, headers in ((URL, {"X-API-Key": "secret"}), (f"{URL}?api_key=secret", {})):
            with client.websocket_connect(target, headers=headers) as ws:
                ws.send_bytes(encode_chunk(random_events(10, 64, 64), 64, 64, 0))
                assert ws.receive_json()["type"] == "ack"


@pytest.mark.parametrize("query, says", [
    ("width=640", "both width and height"),
    ("width=0&height=480", "1..65535"),
    ("width=640&height=big", "1..65535"),
    ("processors=flow", "not served here"),
    ("processors=stats,vibes", "not served here"),
])
def test_bad_queries_are_refused_with_4422(query, says):
    with started() as client, client.websocket_connect(f"{URL}?{query}") as ws:
        messages, code = until_closed(ws)
        assert code == 4422 and says in messages[0]["error"]["message"]
        assert_error(messages[0], "invalid_request")


def test_oversized_chunks_close_with_1009_and_the_service_stays_healthy():
    events = random_events(2000, WIDTH, HEIGHT, max_step=2)
    with started(max_event_chunk_bytes=5000, max_event_chunk_events=1000) as client:
        with client.websocket_connect(URL) as ws:
            ws.send_bytes(encode_chunk(events[:500], WIDTH, HEIGHT, 0))
            assert ws.receive_json()["type"] == "ack"
            ws.send_bytes(encode_chunk(events[500:1500], WIDTH, HEIGHT, 1))  # 1000 events: allowed, but > 5000 bytes
            messages, code = until_closed(ws)
            assert code == 1009 and "exceeds 5000 bytes" in messages[0]["error"]["message"]
            assert_error(messages[0], "body_too_large")
        with client.websocket_connect(URL) as ws:
            ws.send_bytes(encode_chunk(events[:1001], WIDTH, HEIGHT, 0, compress=True))  # small, but too many events
            messages, code = until_closed(ws)
            assert code == 1009 and "1001 events, more than the 1000" in messages[0]["error"]["message"]
            assert_error(messages[0], "too_many_events")
        assert client.get("/healthz").status_code == 200
        assert "spikebot_open_event_streams 0.0" in client.get("/metrics").text


def test_a_bin_holds_at_most_a_chunks_worth_of_events_and_leaving_midway_is_fine():
    events = random_events(300, WIDTH, HEIGHT, max_step=2)  # one bin
    with started(max_event_chunk_events=100) as client:
        with client.websocket_connect(URL) as ws:
            chunks = chunks_of(events, 100)
            ws.send_bytes(chunks[0])
            assert ws.receive_json()["type"] == "ack"
            ws.send_bytes(chunks[1])
            answer = ws.receive_json()
            assert_error(answer, "bad_chunk", 1)
            assert "would leave 200 events in the open 10 ms bin, more than the 100" in answer["error"]["message"]
            ws.send_bytes(chunks[2])  # the stream goes on; the client leaves without "end"
        for _ in range(100):
            if "spikebot_open_event_streams 0.0" in client.get("/metrics").text:
                break
            time.sleep(0.01)
        assert "spikebot_open_event_streams 0.0" in client.get("/metrics").text


class Gate:
    """A processor factory whose processors block in ``push`` until released: a deliberately slow processor."""

    def __init__(self):
        self.busy, self.release = threading.Event(), threading.Event()

    def __call__(self, width: int, height: int):
        gate = self

        class Slow:
            name = "slow"

            def push(self, bins):
                gate.busy.set()
                assert gate.release.wait(10)
                return []

        return Slow()


def test_a_client_faster_than_the_server_gets_its_newest_chunks_refused(monkeypatch):
    gate = Gate()
    monkeypatch.setitem(event_stream.PROCESSORS, "slow", gate)
    chunks = chunks_of(random_events(700, WIDTH, HEIGHT), 100)
    with started(event_processors=["stats", "slow"], event_queue_chunks=2) as client, \
            client.websocket_connect(URL) as ws:
        ws.send_bytes(chunks[0])
        assert gate.busy.wait(10)  # chunk 0 is being processed; the queue is empty
        for chunk in chunks[1:5]:
            ws.send_bytes(chunk)
        for seq in (3, 4):  # 1 and 2 fill the queue; the newest chunks are the ones refused
            answer = ws.receive_json()
            assert_error(answer, "overloaded", seq)
            assert f"chunk {seq} refused: 2 chunks already wait" in answer["error"]["message"]
        gate.release.set()
        early = until_ack(ws, 2)
        assert [m["seq"] for m in of_type(early, "ack")] == [0, 1, 2]
        ws.send_bytes(chunks[3])  # resent: its number was not used up
        ws.send_bytes(chunks[5])  # 4 given up: a gap
        ws.send_text('{"type": "end"}')
        messages, code = until_closed(ws)
        assert code == 1000
        assert [m["seq"] for m in of_type(messages, "ack")] == [3, 5]
        assert of_type(messages, "gap") == [{"type": "gap", "seq": 5, "expected": 4, "missing": 1}]
        assert {k: messages[-1][k] for k in ("chunks", "events", "refused", "gaps", "missing")} == \
            {"chunks": 5, "events": 500, "refused": 2, "gaps": 1, "missing": 1}
        assert sum(s["events"] for s in of_type(early + messages, "stats")) == 500  # all accepted chunks
    assert 'spikebot_event_chunks_total{outcome="overloaded"} 2.0' in client.get("/metrics").text


def test_chunks_waiting_together_are_answered_in_order_each_on_its_own(monkeypatch):
    gate = Gate()
    monkeypatch.setitem(event_stream.PROCESSORS, "slow", gate)
    chunks = chunks_of(random_events(400, WIDTH, HEIGHT, max_step=2), 100)
    with started(event_processors=["slow"]) as client, client.websocket_connect(URL) as ws:
        ws.send_bytes(chunks[0])
        assert gate.busy.wait(10)
        for data in (chunks[1], renumbered(chunks[0], 2), chunks[3]):  # chunk 2 goes back in time
            ws.send_bytes(data)
        ws.send_text("are you there?")  # answered once the three are queued behind chunk 0
        assert_error(ws.receive_json(), "unsupported_message")
        gate.release.set()
        messages = [ws.receive_json() for _ in range(4)]
        assert [(m["type"], m["seq"]) for m in messages] == [("ack", 0), ("ack", 1), ("error", 2), ("ack", 3)]
        assert [m["queued"] for m in messages if m["type"] == "ack"] == [3, 2, 0]  # 1, 2 and 3 went as one batch
        assert "non-monotonic time" in messages[2]["error"]["message"]


def test_too_many_streams_and_a_failing_processor(monkeypatch):
    def broken(width: int, height: int):
        class Broken:
            name = "broken"

            def push(self, bins):
                raise RuntimeError("model failed")

        return Broken()

    monkeypatch.setitem(event_stream.PROCESSORS, "broken", broken)
    with started(max_event_streams=1, event_processors=["stats", "broken"]) as client:
        with client.websocket_connect(f"{URL}?processors=stats") as first:
            with client.websocket_connect(URL) as second:
                messages, code = until_closed(second)
                assert code == 1013 and messages[0]["error"]["code"] == "too_many_streams"
            first.send_bytes(encode_chunk(random_events(10, 64, 64), 64, 64, 0))  # stats only: fine
            assert first.receive_json()["type"] == "ack"
        with client.websocket_connect(f"{URL}?processors=broken") as ws:
            ws.send_bytes(encode_chunk(random_events(10, 64, 64), 64, 64, 0))
            messages, code = until_closed(ws)
            assert code == 1011 and messages[0]["error"]["code"] == "internal"
        assert "spikebot_open_event_streams 0.0" in client.get("/metrics").text


def test_protocol_is_in_the_openapi_description():
    with started() as client:
        description = client.get("/openapi.json").json()["info"]["description"]
        assert "/v1/events/stream" in description and "overloaded" in description


def test_event_stream_through_uvicorn_and_a_real_websocket_client():
    """The TestClient skips the WebSocket protocol layer: this runs uvicorn and the websockets client, which is
    told not to offer per-message deflate (chunks are compressed already)."""
    import uvicorn
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    app = create_app(ServiceSettings(api_keys=["secret"], max_event_chunk_bytes=100_000))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           ws_per_message_deflate=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.025)
        port = server.servers[0].sockets[0].getsockname()[1]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        events = random_events(5000, WIDTH, HEIGHT, max_step=10)
        target = f"ws://127.0.0.1:{port}{URL}?width={WIDTH}&height={HEIGHT}"
        with connect(target, additional_headers={"X-API-Key": "secret"}, compression=None) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            for chunk in chunks_of(events, 1000, compress=True):  # sent ahead: answered in order
                ws.send(chunk)
            ws.send(json.dumps({"type": "end"}))
            messages = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    messages.append(json.loads(ws.recv()))
            assert closed.value.rcvd.code == 1000
            assert [m["seq"] for m in of_type(messages, "ack")] == [0, 1, 2, 3, 4]
            assert sum(m["events"] for m in of_type(messages, "stats")) == 5000
            assert messages[-1]["type"] == "summary" and messages[-1]["events"] == 5000
        with connect(target, compression=None) as ws:
            assert json.loads(ws.recv())["error"]["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 4401
    finally:
        server.should_exit = True
        thread.join(10)


def test_empty_stream_ends_cleanly():
    with started() as client, client.websocket_connect(URL) as ws:
        ws.send_bytes(encode_chunk(np.empty(0, EVENT_DTYPE), 64, 64, 0))
        assert ws.receive_json() == {"type": "ack", "seq": 0, "events": 0, "queued": 0}
        ws.send_text('{"type":"end"}')
        messages, code = until_closed(ws)
        assert code == 1000 and messages == [{"type": "summary", "chunks": 1, "events": 0, "refused": 0, "gaps": 0,
                                               "missing": 0, "bins": 0}]
