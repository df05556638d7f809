"""Map management over HTTP (server/jobs.py): building maps as jobs, listing jobs, deleting maps, atomic writes.
Every build is SAD on the demo route (about a second)."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.jobs import JobQueueFull, JobRunner
from server.maps import LoadedMap, MapStore, demo_spec, load_map
from server.settings import ServiceSettings
from vpr.datasets import load_registered
from vpr.methods.sad import SADMethod
from vpr.methods.snn import _epoch_bar

DEMO_BUILD = {"name": "route", "method": "sad", "source": {"dataset": "demo"}}


@pytest.fixture(scope="module")
def demo_map() -> LoadedMap:
    return load_map(demo_spec())


@pytest.fixture(scope="module")
def demo_images() -> dict[str, list[np.ndarray]]:
    data = load_registered("demo")
    return {"reference": [data.reference[i] for i in range(0, 240, 30)], "query": [data.query[i] for i in (0, 60, 120)]}


class Ready:
    def __init__(self, loaded: LoadedMap):
        self.name, self.loaded = loaded.name, loaded

    def load(self) -> LoadedMap:
        return self.loaded


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def client_for(tmp_path, maps=(), **settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(map_store=tmp_path / "maps", **settings), maps=list(maps)))


def wait_ready(client: TestClient) -> None:
    for _ in range(250):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service never became ready")


def wait_job(client: TestClient, job_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert 0 <= job["progress"] <= 1
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def localize(client, name: str, image: np.ndarray, **headers):
    return client.post(f"/v1/maps/{name}/localize", content=encode(image), headers={"content-type": "image/png", **headers})


def upload(client, name: str, images: list[bytes], method: str = "sad", **fields):
    files = [("images", (f"{i}.png", data, "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"))
             for i, data in enumerate(images)]
    return client.post("/v1/maps", data={"name": name, "method": method, **fields}, files=files)


def store_entries(tmp_path) -> list[str]:
    root = tmp_path / "maps"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_build_localise_list_restart_delete(tmp_path, demo_map, demo_images):
    with client_for(tmp_path) as client:
        wait_ready(client)
        response = client.post("/v1/maps", json=DEMO_BUILD)
        assert response.status_code == 202, response.text
        queued = response.json()
        assert response.headers["location"] == f"/v1/jobs/{queued['id']}"
        assert queued["kind"] == "build_map" and queued["map"] == "route" and queued["state"] in ("queued", "running")
        job = wait_job(client, queued["id"])
        assert job["state"] == "succeeded" and job["progress"] == 1 and job["finished"] >= job["created"], job
        assert client.get("/v1/jobs").json()["jobs"] == [job]
        assert client.get("/v1/maps").json() == {"maps": [{"name": "route", "method": "sad", "n_places": 240}]}
        assert client.get("/readyz").json()["maps"] == ["route"]
        query = demo_images["query"][1]
        answer = localize(client, "route", query)
        assert answer.status_code == 200 and answer.json()["place"] == int(np.argmin(demo_map.distance_row(query)))
        session = client.post("/v1/sessions", json={"map": "route", "sequence_length": 3}).json()["id"]
        assert localize(client, "route", query, **{"x-session-id": session}).status_code == 200
    assert MapStore(tmp_path / "maps").names() == ["route"]

    with client_for(tmp_path) as client:  # a restart serves the stored map; the job is forgotten
        wait_ready(client)
        assert client.get("/v1/maps").json()["maps"][0]["name"] == "route"
        assert_error(client.get(f"/v1/jobs/{job['id']}"), 404, "unknown_job")
        session = client.post("/v1/sessions", json={"map": "route"}).json()["id"]
        assert client.delete("/v1/maps/route").status_code == 204
        assert store_entries(tmp_path) == [] and MapStore(tmp_path / "maps").names() == []
        assert client.get("/v1/maps").json() == {"maps": []}
        assert_error(localize(client, "route", query), 404, "unknown_map")
        assert_error(client.delete(f"/v1/sessions/{session}"), 404, "unknown_session")  # ended with its map
        assert_error(client.delete("/v1/maps/route"), 404, "unknown_map")
        assert client.get("/healthz").status_code == 200


def test_build_from_uploaded_images(tmp_path, demo_images):
    reference = demo_images["reference"]
    parts = [encode(image, "JPEG" if i % 2 else "PNG") for i, image in enumerate(reference)]
    with client_for(tmp_path) as client:
        wait_ready(client)
        response = upload(client, "uploaded", parts)
        assert response.status_code == 202, response.text
        assert wait_job(client, response.json()["id"])["state"] == "succeeded"
        assert client.get("/v1/maps").json()["maps"] == [{"name": "uploaded", "method": "sad", "n_places": 8}]
        for place in (2, 5):
            sent = np.asarray(Image.open(io.BytesIO(parts[place])))
            answer = localize(client, "uploaded", sent)
            assert answer.status_code == 200 and answer.json()["place"] == place
    folder = tmp_path / "maps" / "uploaded"
    assert sorted(p.name for p in (folder / "reference").iterdir())[:3] == ["000000.png", "000001.jpg", "000002.png"]
    assert [(folder / "reference" / f"00000{i}.{'jpg' if i % 2 else 'png'}").read_bytes() for i in range(8)] == parts
    store = MapStore(tmp_path / "maps")
    assert store.manifest("uploaded")["source"]["folder"] == "reference"  # relative: the store can move
    assert store.load("uploaded").n_places == 8


def test_bad_input_is_refused_and_leaves_nothing(tmp_path, demo_images):
    good = encode(demo_images["reference"][0])
    with client_for(tmp_path, max_upload_images=3) as client:
        wait_ready(client)
        assert_error(upload(client, "m", [good, good[:200]]), 422, "bad_image")
        assert_error(upload(client, "m", [good, b"GIF89a not an image"]), 422, "bad_image")
        not_image = client.post("/v1/maps", data={"name": "m"}, files=[("images", ("a.txt", b"hello", "text/plain"))])
        assert_error(not_image, 415, "unsupported_media_type")
        assert_error(upload(client, "m", [good] * 4), 413, "too_many_images")
        no_images = client.post("/v1/maps", files={"name": (None, "m"), "method": (None, "sad")})
        assert_error(no_images, 422, "invalid_request")
        assert_error(client.post("/v1/maps", data={"name": "m"}), 415, "unsupported_media_type")  # url-encoded
        assert_error(upload(client, "m", [good], extra="x"), 422, "invalid_request")
        assert_error(upload(client, "../etc", [good]), 422, "invalid_request")
        assert_error(upload(client, "m", [good], method="nope"), 422, "invalid_request")
        assert_error(upload(client, "m", [good], config="{not json"), 422, "invalid_config")
        assert_error(upload(client, "m", [good], config="{}"), 422, "invalid_request")  # sad takes no config
        assert_error(upload(client, "m", [good], method="snn-modular", config='{"network": {"bogus": 1}}'),
                     422, "invalid_config")
        assert_error(client.post("/v1/maps", json={**DEMO_BUILD, "name": ".hidden"}), 422, "invalid_request")
        assert_error(client.post("/v1/maps", json={"name": "m"}), 422, "invalid_request")  # no source
        assert_error(client.post("/v1/maps", json={**DEMO_BUILD, "source": {"dataset": "nope"}}), 422, "unknown_dataset")
        assert_error(client.post("/v1/maps", json={**DEMO_BUILD, "source": {"dataset": "demo", "reference": "dusk"}}),
                     422, "unknown_dataset")
        assert_error(client.post("/v1/maps", content=b"{", headers={"content-type": "application/json"}),
                     422, "invalid_request")
        assert_error(client.post("/v1/maps", content=good, headers={"content-type": "image/png"}),
                     415, "unsupported_media_type")
        assert client.get("/v1/jobs").json() == {"jobs": []}
    assert store_entries(tmp_path) == []
    with client_for(tmp_path, max_upload_bytes=1000, max_body_bytes=100) as client:
        wait_ready(client)
        assert_error(upload(client, "m", [good]), 413, "body_too_large")
        padded = {**DEMO_BUILD, "source": {"dataset": "demo", "reference": "x" * 200}}
        assert_error(client.post("/v1/maps", json=padded), 413, "body_too_large")  # JSON keeps max_body_bytes
    assert store_entries(tmp_path) == []


def test_failed_and_interrupted_builds_leave_no_map(tmp_path, monkeypatch):
    with client_for(tmp_path) as client:
        wait_ready(client)
        monkeypatch.setenv("SPIKEBOT_DATA", str(tmp_path / "no-data"))  # registered, not fetched
        response = client.post("/v1/maps", json={**DEMO_BUILD, "source": {"dataset": "gardens_point"}})
        assert response.status_code == 202, response.text
        job = wait_job(client, response.json()["id"])
        assert job["state"] == "failed" and "gardens_point" in job["message"], job
        assert store_entries(tmp_path) == []

        def crash(self, images):  # reads part of the reference, then dies
            next(iter(images))
            raise RuntimeError("power cut")

        monkeypatch.setattr(SADMethod, "build_map", crash)
        job = wait_job(client, client.post("/v1/maps", json=DEMO_BUILD).json()["id"])
        assert job["state"] == "failed" and job["message"] == "RuntimeError: power cut"
        assert store_entries(tmp_path) == []
        monkeypatch.undo()

        def crash_on_rename(self, staging, name):  # everything written but not yet renamed into place
            raise OSError("disk gone")

        monkeypatch.setattr(MapStore, "commit", crash_on_rename)
        job = wait_job(client, client.post("/v1/maps", json=DEMO_BUILD).json()["id"])
        assert job["state"] == "failed" and "disk gone" in job["message"]
        assert store_entries(tmp_path) == [] and client.get("/v1/maps").json() == {"maps": []}
        monkeypatch.undo()

        job = wait_job(client, client.post("/v1/maps", json=DEMO_BUILD).json()["id"])  # the name is free again
        assert job["state"] == "succeeded"

    store = MapStore(tmp_path / "maps")  # a process killed mid-build leaves only a hidden staging folder
    staging = store.begin("killed")
    (staging / "map").mkdir()
    assert store.names() == ["route"]
    with client_for(tmp_path) as client:
        wait_ready(client)
        assert [m["name"] for m in client.get("/v1/maps").json()["maps"]] == ["route"]
        rebuilt = client.post("/v1/maps", json={**DEMO_BUILD, "name": "killed"})
        assert rebuilt.status_code == 202 and wait_job(client, rebuilt.json()["id"])["state"] == "succeeded"


def test_conflicts_queue_and_undeletable_maps(tmp_path, monkeypatch, demo_map):
    gate = threading.Event()
    build = SADMethod.build_map

    def gated(self, images):
        assert gate.wait(20)
        build(self, images)

    monkeypatch.setattr(SADMethod, "build_map", gated)
    with client_for(tmp_path, maps=[Ready(demo_map)], max_queued_builds=0) as client:
        wait_ready(client)
        first = client.post("/v1/maps", json=DEMO_BUILD).json()
        for _ in range(100):
            if client.get(f"/v1/jobs/{first['id']}").json()["state"] == "running":
                break
            time.sleep(0.02)
        assert_error(client.post("/v1/maps", json=DEMO_BUILD), 409, "map_exists")
        assert_error(client.delete("/v1/maps/route"), 409, "map_building")
        busy = client.post("/v1/maps", json={**DEMO_BUILD, "name": "second"})
        assert_error(busy, 503, "too_many_jobs")
        assert busy.headers["retry-after"]
        assert [p for p in store_entries(tmp_path) if "second" in p] == []
        assert_error(client.post("/v1/maps", json={**DEMO_BUILD, "name": "demo"}), 409, "map_exists")
        gate.set()
        assert wait_job(client, first["id"])["state"] == "succeeded"
        assert_error(client.post("/v1/maps", json=DEMO_BUILD), 409, "map_exists")
        assert_error(client.delete("/v1/maps/demo"), 409, "map_not_deletable")
        assert [m["name"] for m in client.get("/v1/maps").json()["maps"]] == ["demo", "route"]
        assert localize(client, "demo", np.zeros((32, 64), np.uint8)).status_code == 200


def test_without_a_map_store_and_openapi(demo_map):
    with TestClient(create_app(ServiceSettings(), maps=[Ready(demo_map)])) as client:
        wait_ready(client)
        assert_error(client.post("/v1/maps", json=DEMO_BUILD), 409, "no_map_store")
        assert_error(client.delete("/v1/maps/demo"), 409, "map_not_deletable")
        assert_error(client.get("/v1/jobs/nope"), 404, "unknown_job")
        assert client.get("/v1/jobs").json() == {"jobs": []}
        paths = client.get("/openapi.json").json()["paths"]
    create = paths["/v1/maps"]["post"]
    assert {"202", "400", "401", "409", "413", "415", "422", "503"} <= set(create["responses"])
    assert "Location" in create["responses"]["202"]["headers"]
    assert {"application/json", "multipart/form-data"} <= set(create["requestBody"]["content"])
    assert "$ref" not in str(create["requestBody"])
    assert {"204", "401", "404", "409", "503"} <= set(paths["/v1/maps/{name}"]["delete"]["responses"])
    assert {"200", "401", "404"} <= set(paths["/v1/jobs/{job_id}"]["get"]["responses"])
    assert "get" in paths["/v1/jobs"]


def test_api_key_guards_map_management(tmp_path):
    with client_for(tmp_path, api_keys=["k"]) as client:
        wait_ready(client)
        assert_error(client.post("/v1/maps", json=DEMO_BUILD), 401, "unauthorized")
        assert_error(client.delete("/v1/maps/route"), 401, "unauthorized")
        assert_error(client.get("/v1/jobs"), 401, "unauthorized")
        assert client.get("/v1/jobs", headers={"x-api-key": "k"}).status_code == 200
    assert store_entries(tmp_path) == []


def test_job_runner_progress_failure_pruning_and_close():
    runner = JobRunner(workers=1, max_queued=1, keep_finished=2)
    seen = []

    def work(report):
        for fraction in (0.5, 0.2, 7.0):  # kept monotonic and clipped
            report(fraction, f"at {fraction}")
            seen.append(runner.get(job.id).progress)
        return "done"

    job = runner.submit("build_map", "a", work)
    done = runner.wait(job.id, 10)
    assert done.state == "succeeded" and done.message == "done" and done.progress == 1 and seen == [0.5, 0.5, 1.0]
    failed = runner.wait(runner.submit("build_map", "b", lambda report: 1 / 0).id, 10)
    assert failed.state == "failed" and failed.message.startswith("ZeroDivisionError")
    runner.wait(runner.submit("build_map", "c", lambda report: "ok").id, 10)
    assert [j.map for j in runner.list()] == ["b", "c"]  # the oldest finished job was forgotten

    gate, cancelled = threading.Event(), []
    running = runner.submit("build_map", "d", lambda report: str(gate.wait(10)))
    while runner.get(running.id).state != "running":
        time.sleep(0.01)
    queued = runner.submit("build_map", "e", lambda report: "never", cancel=lambda: cancelled.append("e"))
    with pytest.raises(JobQueueFull):
        runner.submit("build_map", "f", lambda report: "never")
    runner.close(timeout=0)
    assert runner.get(queued.id).state == "failed" and cancelled == ["e"]
    gate.set()
    runner.close(timeout=10)
    assert runner.get(running.id).state == "succeeded"
    with pytest.raises(JobQueueFull):
        runner.submit("build_map", "g", lambda report: "never")


def test_spiking_training_reports_progress_over_all_members():
    reports = []
    factory = _epoch_bar(2, members=2, report=lambda fraction, message: reports.append((fraction, message)))
    for member in range(2):
        on_epoch = factory(f"member {member + 1}/2")
        on_epoch(0, None, None)
        on_epoch(1, None, None)
    assert [f for f, _ in reports] == [0.25, 0.5, 0.75, 1.0]
    assert reports[-1][1] == "training member 2/2, epoch 2/2"


def test_spiking_map_with_config_is_stored_and_reloads(tmp_path, demo_images):
    config = {"network": {"n_neurons": 30, "places_per_module": 20, "epochs": 2}, "seeds": [0]}
    parts = [encode(image) for image in demo_images["reference"]]
    with client_for(tmp_path) as client:
        wait_ready(client)
        response = upload(client, "spiking", parts, method="snn-modular", config=json.dumps(config))
        assert response.status_code == 202, response.text
        job = wait_job(client, response.json()["id"], timeout=60)
        assert job["state"] == "succeeded", job
        assert client.get("/v1/maps").json()["maps"] == [{"name": "spiking", "method": "snn-modular", "n_places": 8}]
        assert localize(client, "spiking", demo_images["reference"][3]).status_code == 200
    folder = tmp_path / "maps" / "spiking"
    assert json.loads((folder / "config.json").read_text()) == config
    store = MapStore(tmp_path / "maps")
    assert store.manifest("spiking")["config_file"] == "config.json"
    spec = store.spec("spiking")
    assert spec.map_dir == str(folder / "map") and spec.config_file == str(folder / "config.json")
    assert store.load("spiking").n_places == 8  # the saved map, its fingerprint checked against the stored images
