"""Micro-batching (server/batching.py): the batcher alone, on the demo SAD map and a tiny spiking map, then through
the app: fewer method calls for concurrent requests, errors, overload, and sessions' frame order."""

from __future__ import annotations

import importlib.util
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.batching import BatcherClosed, MicroBatcher
from server.maps import LoadedMap
from server.settings import ServiceSettings
from tests.test_server import (
    Ready,
    assert_error,
    encode,
    load_map_once,
    post_image,
    wait_ready,
)
from vpr.datasets import load_registered
from vpr.methods.snn import SNNEnsembleMethod, SNNMethodConfig
from vpr.sequence import OnlineSequenceMatcher, SequenceConfig
from vpr.snn.config import EnsembleConfig, NetworkConfig

_spec = importlib.util.spec_from_file_location("service_load", Path(__file__).parents[1] / "benchmarks" / "service_load.py")
service_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(service_load)


@pytest.fixture(scope="module")
def demo_map() -> LoadedMap:
    return load_map_once()


@pytest.fixture(scope="module")
def queries() -> list[np.ndarray]:
    return [load_registered("demo").query[i] for i in range(0, 48, 4)]


class Recorder:
    """``compute`` for a batcher: records each call's batch size; optionally waits for ``gate`` or raises."""

    def __init__(self, compute=None, gate: threading.Event | None = None):
        self.compute, self.gate, self.sizes, self.fail = compute, gate, [], None
        self.entered = threading.Event()

    def __call__(self, images):
        self.sizes.append(len(images))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        if self.compute is not None:
            return self.compute(images)
        return np.stack([np.full(3, float(np.asarray(image).ravel()[0])) for image in images])


def rows(futures: list[Future]) -> np.ndarray:
    return np.stack([f.result(timeout=10).row for f in futures])


def test_batched_rows_equal_one_by_one_on_the_demo_sad_map(demo_map, queries):
    recorder = Recorder(demo_map.distance_rows)
    batcher = MicroBatcher(recorder, max_batch=5, max_wait_s=0.5)
    try:
        futures = [batcher.submit(image) for image in queries]  # 12 waiting at once: batches of 5, 5, 2
        batched = rows(futures)
    finally:
        batcher.close()
    np.testing.assert_allclose(batched, np.stack([demo_map.distance_row(image) for image in queries]), rtol=1e-6)
    assert recorder.sizes == [5, 5, 2]
    assert [f.result().batch_size for f in futures] == [5] * 10 + [2] * 2
    assert all(f.result().queue_s >= 0 and f.result().compute_s > 0 for f in futures)


def test_batched_rows_equal_one_by_one_on_a_tiny_spiking_map(queries):
    demo = load_registered("demo")
    network = replace(NetworkConfig(), n_neurons=30, places_per_module=20, epochs=2)
    for precision in ("float32", "bfloat16"):
        config = SNNMethodConfig(ensemble=EnsembleConfig(network=replace(network, readout_precision=precision),
                                                         seeds=(0, 1)), device="cpu")
        method = SNNEnsembleMethod(config)
        method.build_map([demo.reference[i] for i in range(40)])
        loaded = LoadedMap("tiny", method, 40)
        batcher = MicroBatcher(loaded.distance_rows, max_batch=16, max_wait_s=0.5)
        try:
            batched = rows([batcher.submit(image) for image in queries])
        finally:
            batcher.close()
        single = np.stack([loaded.distance_row(image) for image in queries])
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5 * float(np.abs(single).max()))


def test_waiting_requests_share_a_call_and_an_idle_map_answers_at_once():
    gate = threading.Event()
    recorder = Recorder(gate=gate)
    batcher = MicroBatcher(recorder, max_batch=16, max_wait_s=0.0)
    try:
        first = batcher.submit(np.array([1.0]))  # alone on an idle map: no wait, a batch of one
        assert recorder.entered.wait(5)
        waiting = [batcher.submit(np.array([float(i)])) for i in range(2, 9)]  # queue while the first batch runs
        gate.set()
        assert first.result(timeout=5).batch_size == 1
        assert [f.result(timeout=5).row[0] for f in waiting] == list(range(2, 9))
        assert recorder.sizes == [1, 7]  # no waiting needed: they filled the queue while the first batch ran
        assert all(f.result().queue_s > 0 for f in waiting)
    finally:
        batcher.close()


def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_goes_on():
    gate = threading.Event()
    recorder = Recorder(gate=gate)
    seen = []
    batcher = MicroBatcher(recorder, max_batch=4, max_wait_s=0.5, observe=seen.append)
    try:
        recorder.fail = RuntimeError("method failed")
        futures = [batcher.submit(np.array([float(i)])) for i in range(3)]
        gate.set()
        for future in futures:
            with pytest.raises(RuntimeError, match="method failed"):
                future.result(timeout=5)
        recorder.fail = None
        assert batcher.submit(np.array([7.0])).result(timeout=5).row[0] == 7.0
        assert [(s.size, s.failed) for s in seen] == [(3, True), (1, False)]
    finally:
        batcher.close()


def test_wrong_shapes_fail_the_batch_and_cancelled_requests_are_left_out():
    gate = threading.Event()
    recorder = Recorder(gate=gate)
    batcher = MicroBatcher(recorder, max_batch=8, max_wait_s=0.0)
    try:
        blocker = batcher.submit(np.array([0.0]))
        assert recorder.entered.wait(5)
        kept, dropped = batcher.submit(np.array([1.0])), batcher.submit(np.array([2.0]))
        assert dropped.cancel()
        gate.set()
        blocker.result(timeout=5)
        assert kept.result(timeout=5).row[0] == 1.0 and recorder.sizes == [1, 1]
        recorder.compute = lambda images: np.zeros((len(images) + 1, 3))
        with pytest.raises(RuntimeError, match="shape"):
            batcher.submit(np.array([3.0])).result(timeout=5)
    finally:
        batcher.close()


def test_the_worker_exits_when_idle_restarts_on_submit_and_close_fails_the_waiting():
    gate = threading.Event()
    batcher = MicroBatcher(Recorder(gate=gate), max_batch=1, max_wait_s=0.0, idle_exit_s=0.05)
    gate.set()
    assert batcher.submit(np.array([1.0])).result(timeout=5).row[0] == 1.0
    deadline = time.monotonic() + 5
    while batcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batcher.running
    assert batcher.submit(np.array([2.0])).result(timeout=5).row[0] == 2.0
    gate.clear()
    running, waiting = batcher.submit(np.array([3.0])), batcher.submit(np.array([4.0]))
    batcher.close(timeout=0.05)  # the worker is stuck in its batch: what still waits fails
    with pytest.raises(BatcherClosed):
        waiting.result(timeout=5)
    with pytest.raises(BatcherClosed):
        batcher.submit(np.array([5.0]))
    gate.set()  # the running batch still completes, and the worker stops after it
    assert running.result(timeout=5).row[0] == 3.0
    deadline = time.monotonic() + 5
    while batcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batcher.running


def test_close_lets_submitted_images_finish():
    batcher = MicroBatcher(Recorder(), max_batch=1, max_wait_s=0.0)
    futures = [batcher.submit(np.array([float(i)])) for i in range(4)]
    batcher.close()
    assert [f.result(timeout=5).row[0] for f in futures] == [0.0, 1.0, 2.0, 3.0] and not batcher.running


def test_prepare_and_finish_run_per_item_and_finish_in_submission_order():
    gate = threading.Event()
    recorder = Recorder(gate=gate)
    batcher = MicroBatcher(recorder, max_batch=8, max_wait_s=0.0)
    finished = []

    def prepare(text):
        if text == "corrupt":
            raise ValueError("cannot decode")
        return np.array([float(text)])

    def finish(row):
        finished.append(row.row[0])
        if row.row[0] == 3.0:
            raise KeyError("unknown session")
        return f"answer {row.row[0]:g} of a batch of {row.batch_size}"

    first = batcher.submit("0", prepare=prepare, finish=finish)  # holds the worker while the others queue
    assert recorder.entered.wait(5)
    queued = [batcher.submit(text, prepare=prepare, finish=finish) for text in ("1", "corrupt", "2", "3", "4")]
    gate.set()
    assert first.result(timeout=5) == "answer 0 of a batch of 1"
    assert [queued[i].result(timeout=5) for i in (0, 2, 4)] == [f"answer {v} of a batch of 4" for v in (1, 2, 4)]
    with pytest.raises(ValueError, match="decode"):
        queued[1].result(timeout=5)  # its prepare failed: left out of the batch, the others go on
    with pytest.raises(KeyError):
        queued[3].result(timeout=5)  # its finish failed: its own future only
    assert recorder.sizes == [1, 4] and finished == [0.0, 1.0, 2.0, 3.0, 4.0]
    timed = batcher.submit("5", prepare=prepare).result(timeout=5)
    assert timed.prepare_s > 0 and timed.compute_s >= timed.prepare_s
    batcher.close()


# ---------------------------------------------------------------------------------------------- through the app

class GatedMap:
    """The demo map behind a ``distance_rows`` that records batch sizes and waits for ``gate`` (set: no wait)."""

    def __init__(self, loaded: LoadedMap):
        self.loaded, self.sizes, self.fail = loaded, [], None
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def __getattr__(self, attribute):
        return getattr(self.loaded, attribute)

    def distance_rows(self, images) -> np.ndarray:
        self.sizes.append(len(images))
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        return self.loaded.distance_rows(images)


def app_with(gated: GatedMap, **settings):
    app = create_app(ServiceSettings(**settings), maps=[Ready(gated)])
    return app, TestClient(app, raise_server_exceptions=False)  # 500s are answers here, not test errors


def admitted(app) -> int:
    return admitted_in(app.state.service)


def admitted_in(state) -> int:
    return state.settings.max_concurrency - state.slots._value


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_concurrent_requests_share_calls_and_get_their_own_rows(demo_map, queries):
    gated = GatedMap(demo_map)
    app, client = app_with(gated, max_top_k=240)
    with client:
        wait_ready(client)
        gated.gate.clear()
        blocker = ThreadPoolExecutor(1).submit(post_image, client, encode(queries[0]))
        assert gated.entered.wait(5)
        with ThreadPoolExecutor(len(queries)) as pool:  # all queue while the first batch is held
            futures = [pool.submit(post_image, client, encode(image), params={"top_k": 240}) for image in queries]
            wait_until(lambda: admitted(app) == len(queries) + 1)
            gated.gate.set()
            answers = [future.result(timeout=10) for future in futures]
        assert blocker.result(timeout=10).status_code == 200
        for image, answer in zip(queries, answers):
            assert answer.status_code == 200, answer.text
            got = {m["place"]: m["distance"] for m in answer.json()["top_k"]}
            np.testing.assert_allclose([got[i] for i in range(240)], demo_map.distance_row(image), rtol=1e-5)
        assert sum(gated.sizes) == len(queries) + 1 and len(gated.sizes) < len(queries)
        timing = answers[0].json()["server_timing"]
        assert timing["describe_ms"] >= timing["queue_ms"] >= 0
        metrics = client.get("/metrics").text
        assert f'spikebot_batch_size_count{{map="demo"}} {float(len(gated.sizes))}' in metrics
        assert f'spikebot_batch_size_sum{{map="demo"}} {float(len(queries) + 1)}' in metrics
        assert f'spikebot_batch_queue_seconds_count{{map="demo"}} {float(len(queries) + 1)}' in metrics
        assert 'spikebot_localize_stage_seconds_count{stage="queue"}' in metrics
        summary = service_load.batch_summary({}, service_load.parse_batch_histogram(metrics, "demo"))
        assert summary["batches"] == len(gated.sizes) and summary["mean"] == pytest.approx(np.mean(gated.sizes))
        assert summary["max_at_most"] >= max(gated.sizes) and summary["p50_at_most"] >= 1
        assert service_load.batch_summary(service_load.parse_batch_histogram(metrics, "demo"),
                                          service_load.parse_batch_histogram(metrics, "demo"))["batches"] == 0
        assert service_load.parse_batch_histogram(metrics, "other") == {}


def test_batched_requests_that_fail_all_get_500_and_the_service_recovers(demo_map, queries):
    gated = GatedMap(demo_map)
    app, client = app_with(gated)
    with client:
        wait_ready(client)
        gated.fail, gated.gate = RuntimeError("method failed"), threading.Event()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post_image, client, encode(image)) for image in queries[:4]]
            wait_until(lambda: admitted(app) == 4)
            gated.gate.set()
            for future in futures:
                assert_error(future.result(timeout=10), 500, "internal")
        gated.fail = None
        assert post_image(client, encode(queries[0])).status_code == 200
        assert 'spikebot_batch_failures_total{map="demo"}' in client.get("/metrics").text


def test_a_full_queue_gets_503_with_retry_after_and_timeouts_504(demo_map, queries):
    gated = GatedMap(demo_map)
    app, client = app_with(gated, max_concurrency=3, request_timeout_seconds=0.3, retry_after_seconds=2)
    with client:
        wait_ready(client)
        gated.gate.clear()
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(post_image, client, encode(image)) for image in queries[:3]]  # one runs, two queue
            wait_until(lambda: admitted(app) == 3)
            refused = post_image(client, encode(queries[3]))
            assert_error(refused, 503, "overloaded")
            assert refused.headers["retry-after"] == "2"
            for future in held:  # the batch is held past their deadline
                assert_error(future.result(timeout=10), 504, "timeout")
        assert_error(post_image(client, encode(queries[3])), 503, "overloaded")  # abandoned, still admitted
        gated.gate.set()  # the abandoned requests' batches complete and give their slots back
        wait_until(lambda: admitted(app) == 0)
        assert post_image(client, encode(queries[3])).status_code == 200
        assert "spikebot_overload_rejections_total 2.0" in client.get("/metrics").text


def test_a_sessions_frames_join_its_sequence_in_admission_order(demo_map, queries):
    gated = GatedMap(demo_map)
    app, client = app_with(gated, max_top_k=240)
    state = app.state.service
    with client:
        wait_ready(client)
        session = client.post("/v1/sessions", json={"sequence_length": len(queries)}).json()["id"]
        headers, params = {"X-Session-Id": session}, {"top_k": 240}
        gated.gate.clear()
        with ThreadPoolExecutor(len(queries)) as pool:
            futures = []
            for admitted, image in enumerate(queries, start=1):  # pipelined: each sent once the previous is admitted
                futures.append(pool.submit(post_image, client, encode(image), headers=headers, params=params))
                wait_until(lambda n=admitted: admitted_in(state) == n)
            gated.gate.set()  # the first frame's batch, then all the others in one batch: rows come back together
            answers = [future.result(timeout=10).json() for future in futures]
        assert len(gated.sizes) < len(queries)
        matcher = OnlineSequenceMatcher(SequenceConfig(length=len(queries)))
        for step, (image, answer) in enumerate(zip(queries, answers), start=1):
            assert answer["sequence_length"] == step and answer["session_id"] == session
            expected = matcher.push(demo_map.distance_row(image))
            got = {m["place"]: m["distance"] for m in answer["top_k"]}
            np.testing.assert_allclose([got[i] for i in range(240)], expected, rtol=1e-5)
        wait_until(lambda: admitted_in(state) == 0)


def test_a_stream_frame_abandoned_at_its_timeout_still_joins_the_sequence_before_the_next(demo_map, queries):
    gated = GatedMap(demo_map)
    _, client = app_with(gated, max_top_k=240, request_timeout_seconds=0.5)
    with client:
        wait_ready(client)
        gated.gate.clear()
        blocker = ThreadPoolExecutor(1).submit(post_image, client, encode(queries[0]))  # holds the map's batcher
        assert gated.entered.wait(5)
        with client.websocket_connect("/v1/maps/demo/stream?sequence_length=5&top_k=240") as ws:
            ws.send_bytes(encode(queries[1]))
            assert ws.receive_json()["error"]["code"] == "timeout"  # abandoned, still queued
            ws.send_bytes(encode(queries[2]))  # queued behind it: both rows come back from one batch
            time.sleep(0.1)
            gated.gate.set()
            answer = ws.receive_json()
        assert_error(blocker.result(timeout=10), 504, "timeout")
        assert gated.sizes[-1] == 2 and answer["sequence_length"] == 2
        matcher = OnlineSequenceMatcher(SequenceConfig(length=5))
        matcher.push(demo_map.distance_row(queries[1]))
        got = {m["place"]: m["distance"] for m in answer["top_k"]}
        np.testing.assert_allclose([got[i] for i in range(240)], matcher.push(demo_map.distance_row(queries[2])),
                                   rtol=1e-5)


class CountingMethod:
    """A method stub that records the batch sizes it is called with."""

    name = "counting"

    def __init__(self):
        self.sizes = []

    def distances(self, images):
        self.sizes.append(len(images))
        return np.zeros((len(images), 3))


@pytest.mark.parametrize("warm_up", [True, False])
def test_maps_are_warmed_up_with_every_batch_size_before_they_are_served(warm_up):
    method = CountingMethod()
    app = create_app(ServiceSettings(max_batch=4, warm_up=warm_up), maps=[Ready(LoadedMap("counted", method, 3))])
    with TestClient(app) as client:
        wait_ready(client)
        # every size once, then a blank PNG and a blank JPEG through the batcher (each a batch of one)
        assert method.sizes == ([1, 2, 3, 4, 1, 1] if warm_up else [])
        batches = 'spikebot_batch_size_count{map="counted"} 2.0' if warm_up else 'spikebot_batch_size_count{map="counted"}'
        assert (batches in client.get("/metrics").text) == warm_up


class FailingMethod(CountingMethod):
    def distances(self, images):
        raise RuntimeError("this method cannot describe a blank frame")


def test_a_map_that_fails_its_warm_up_is_still_served():
    app = create_app(ServiceSettings(warm_up=True), maps=[Ready(LoadedMap("fragile", FailingMethod(), 3))])
    with TestClient(app) as client:
        wait_ready(client)
        assert [m["name"] for m in client.get("/v1/maps").json()["maps"]] == ["fragile"]
