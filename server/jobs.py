"""Map management over HTTP: building maps as background jobs, listing jobs, deleting maps.

``POST /v1/maps`` builds a map into the service's map store (``map_store``) from a registered dataset's traverse
(JSON body) or from uploaded reference images (multipart/form-data), as a job that ``GET /v1/jobs/{id}`` follows;
once it succeeds the map is served at once and loaded again at every start. ``DELETE /v1/maps/{name}`` removes a
map of the store. The pieces:

* :class:`JobRunner` runs jobs on ``map_build_workers`` worker threads (default one: builds are CPU-heavy and must
  not starve localisation) with at most ``max_queued_builds`` waiting. Jobs live in memory: a restart forgets them
  (maps are not forgotten), and only the last ``max_finished_jobs`` finished ones are kept.
* :class:`MapBuilds` reserves map names while they build, builds into a staging folder of the store
  (:meth:`MapStore.begin`) and renames it into place when complete, so a failed or interrupted build never leaves
  a map that loads half-written; it also deletes maps, and the sessions on them.
* :func:`build_jobs_router`, the routes; ``create_app`` includes it.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from server.app import IMAGE_TYPES, StateDep, decode_image, require_api_key
from server.errors import ErrorResponse, ServiceError, responses
from server.maps import (
    SPIKING_METHODS,
    LoadedMap,
    MapStore,
    ReferenceSource,
    make_method,
)
from server.schemas import Job, JobList, MapBuildOptions, MapCreate, MapSourceBody
from vpr.errors import SpikebotError
from vpr.methods import METHODS

log = logging.getLogger(__name__)

Report = Callable[[float, str], None]
"""``report(fraction done in 0..1, message)``: a job's progress."""
Work = Callable[[Report], str]
"""A job's body: runs in a worker thread, reports progress, returns the success message or raises."""

REFERENCE_FOLDER = "reference"
CONFIG_FILE = "config.json"
UPLOAD_FIELDS = {"name", "method", "config", "images"}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def describe_error(error: BaseException) -> str:
    """A failed job's message: spikebot's own errors are written for people; others get their type too."""
    return str(error) if isinstance(error, SpikebotError) else f"{type(error).__name__}: {error}"


class JobQueueFull(Exception):
    pass


class JobRunner:
    """Jobs on ``workers`` daemon threads, started on first use; at most ``workers + max_queued`` unfinished.

    ``close()`` (at service shutdown) fails the jobs still queued, calling their ``cancel``; a running job is left
    to finish or to die with the process (a map build then leaves only a hidden staging folder).
    """

    def __init__(self, workers: int = 1, max_queued: int = 4, keep_finished: int = 100):
        self.workers, self.max_queued, self.keep_finished = workers, max_queued, keep_finished
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue[tuple[str, Work, Callable[[], None] | None] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _unfinished(self) -> int:
        return sum(job.state in ("queued", "running") for job in self._jobs.values())

    def has_room(self) -> bool:
        with self._lock:
            return not self._closed and self._unfinished() < self.workers + self.max_queued

    def submit(self, kind: str, map_name: str, work: Work, cancel: Callable[[], None] | None = None) -> Job:
        """Queue ``work``; raises :class:`JobQueueFull` (nothing queued, ``cancel`` not called) when full or closed."""
        with self._lock:
            if self._closed or self._unfinished() >= self.workers + self.max_queued:
                raise JobQueueFull(f"{self._unfinished()} jobs are queued or running; retry later")
            job = Job(id=secrets.token_urlsafe(9), kind=kind, map=map_name, state="queued", progress=0.0,
                      message="waiting for a worker", created=_now())
            self._jobs[job.id] = job
            while len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"spikebot-jobs-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._queue.put((job.id, work, cancel))
            return job.model_copy()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy() if job is not None else None

    def list(self) -> list[Job]:
        """All remembered jobs, oldest first."""
        with self._lock:
            return [job.model_copy() for job in self._jobs.values()]

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """The job once finished, or as it is after ``timeout`` seconds (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or job.state in ("succeeded", "failed") or time.monotonic() > deadline:
                return job
            time.sleep(0.02)

    def close(self, timeout: float | None = 0) -> None:
        """Fail the queued jobs (calling their ``cancel``) and stop the workers after their current job; waits up
        to ``timeout`` seconds for them (None: until they stop)."""
        with self._lock:
            self._closed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._cancel(*item)
        for _ in self._threads:
            self._queue.put(None)
        if timeout != 0:
            for thread in self._threads:
                thread.join(timeout)

    def _cancel(self, job_id: str, work: Work, cancel: Callable[[], None] | None) -> None:
        self._finish(job_id, "failed", "the service shut down before the job started")
        if cancel is not None:
            try:
                cancel()
            except Exception:
                log.exception("cleaning up cancelled job %s failed", job_id)

    def _report(self, job_id: str, fraction: float, message: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state == "running":
                job.progress = max(job.progress, min(1.0, max(0.0, float(fraction))))
                job.message = message

    def _finish(self, job_id: str, state: str, message: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.state, job.message, job.finished = state, message, _now()  # type: ignore[assignment]
            if state == "succeeded":
                job.progress = 1.0
            finished = [j.id for j in self._jobs.values() if j.state in ("succeeded", "failed")]
            for old in finished[: max(0, len(finished) - self.keep_finished)]:
                del self._jobs[old]

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job_id, work, cancel = item
            if self._closed:
                self._cancel(job_id, work, cancel)
                continue
            with self._lock:
                job = self._jobs[job_id]
                job.state, job.started, job.message = "running", _now(), "started"
            try:
                message = work(functools.partial(self._report, job_id))
            except Exception as error:
                log.warning("job %s failed: %s", job_id, describe_error(error),
                            exc_info=not isinstance(error, SpikebotError))
                self._finish(job_id, "failed", describe_error(error))
            else:
                self._finish(job_id, "succeeded", message)


def build_into_store(store: MapStore, staging: Path, name: str, method_name: str, config: dict[str, Any] | None,
                     source: ReferenceSource | None, report: Report) -> LoadedMap:
    """Build map ``name`` in ``staging`` and rename it into the store; the built map, ready for queries.

    ``source`` None: the reference images are already in ``staging/reference`` (uploaded). On any error the
    caller removes ``staging``; once renamed, the map is complete.
    """
    config_file = None
    if config is not None:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        config_file = CONFIG_FILE
    recorded = source or ReferenceSource(dataset=None, folder=REFERENCE_FOLDER)  # relative: inside the map folder
    report(0.0, "reading the reference traverse")
    reference = (source or ReferenceSource(dataset=None, folder=str(staging / REFERENCE_FOLDER))).load()
    method = make_method(method_name, str(staging / config_file) if config_file else None)
    method.report_progress = lambda fraction, message: report(0.05 + 0.85 * fraction, message)
    report(0.05, f"building the {method_name} map of {len(reference)} places")
    method.build_map(reference)
    method.report_progress = None
    report(0.9, "saving the map")
    store.write(staging, method, recorded, len(reference), config_file)
    store.commit(staging, name)
    try:
        return LoadedMap(name, method, len(reference), store.spec(name))
    except BaseException:
        store.delete(name)
        raise


class MapBuilds:
    """Builds maps into the store as jobs of ``runner``, and deletes maps; ``state`` is the app's ServiceState.

    A name is reserved from the request that builds it until its map is served (or the build failed), so two
    builds never race for one name and a map being built cannot be deleted.
    """

    def __init__(self, state: Any, store: MapStore | None, runner: JobRunner):
        self.state, self.store, self.runner = state, store, runner
        self._building: set[str] = set()
        self._lock = threading.Lock()

    def require_store(self) -> MapStore:
        if self.store is None:
            raise ServiceError(409, "no_map_store", "this service has no map store (settings map_store, "
                               "SPIKEBOT_MAP_STORE or serve --map-store): it cannot build or delete maps")
        return self.store

    def reserve(self, name: str) -> Path:
        """Reserve ``name`` and give its staging folder; 409 ``map_exists`` when served, stored or being built,
        503 ``too_many_jobs`` when the build queue is full (checked again, atomically, by :meth:`submit`)."""
        store = self.require_store()
        with self._lock:
            if name in self._building:
                raise ServiceError(409, "map_exists", f"map {name!r} is being built")
            if name in self.state.maps or (store.root / name).exists():
                raise ServiceError(409, "map_exists", f"map {name!r} already exists; delete it first")
            if not self.runner.has_room():
                raise busy(self.state, "the build queue is full; retry later")
            self._building.add(name)
        try:
            return store.begin(name)
        except BaseException:
            self.release(name)
            raise

    def release(self, name: str) -> None:
        with self._lock:
            self._building.discard(name)

    def discard(self, name: str, staging: Path) -> None:
        """Undo :meth:`reserve`: the staging folder removed, the name free again."""
        self.require_store().abort(staging)
        self.release(name)

    def submit(self, name: str, staging: Path, method: str, config: dict[str, Any] | None,
               source: ReferenceSource | None) -> Job:
        """Queue the build of a reserved name; on success the map is served at once. 503 when the queue is full."""
        store = self.require_store()

        def work(report: Report) -> str:
            try:
                loaded = build_into_store(store, staging, name, method, config, source, report)
            except BaseException:
                self.discard(name, staging)
                raise
            if self.state.settings.warm_up:
                self.state.warm_up(loaded)
            with self._lock:
                self.state.maps = {**self.state.maps, name: loaded}
                self._building.discard(name)
            return f"map {name!r} built: {loaded.n_places} places, method {method}"

        try:
            return self.runner.submit("build_map", name, work, cancel=lambda: self.discard(name, staging))
        except JobQueueFull as error:
            self.discard(name, staging)
            raise busy(self.state, str(error)) from error

    def delete(self, name: str) -> None:
        """Stop serving map ``name`` of the store, delete its folder and the sessions on it."""
        with self._lock:
            if name in self._building:
                raise ServiceError(409, "map_building", f"map {name!r} is being built; wait for its job to finish")
            loaded = self.state.maps.get(name)
            if loaded is None:
                raise ServiceError(404, "unknown_map", f"no map {name!r}; maps: {', '.join(sorted(self.state.maps))}")
            store = self.store
            if store is None or name not in store.names() or loaded.spec != store.spec(name):
                raise ServiceError(409, "map_not_deletable",
                                   f"map {name!r} is not in the map store (given at startup); it cannot be deleted")
            store.delete(name)
            self.state.maps = {k: v for k, v in self.state.maps.items() if k != name}
        self.state.sessions.delete_map(name)
        self.state.metrics.sessions.set(len(self.state.sessions))


def busy(state: Any, message: str) -> ServiceError:
    return ServiceError(503, "too_many_jobs", message, {"Retry-After": str(max(1, state.settings.retry_after_seconds))})


async def get_builds(request: Request) -> MapBuilds:
    return request.app.state.map_builds


BuildsDep = Annotated[MapBuilds, Depends(get_builds)]


def check_options(options: MapBuildOptions) -> None:
    """422 for an unknown method or a config the method cannot take (checked before anything is written)."""
    if options.method not in METHODS:
        raise ServiceError(422, "invalid_request",
                           f"unknown method {options.method!r}; available: {', '.join(sorted(METHODS))}")
    if options.config is None:
        return
    if options.method not in SPIKING_METHODS:
        raise ServiceError(422, "invalid_request",
                           f"config applies to {' and '.join(SPIKING_METHODS)}, not {options.method}")
    from vpr.snn.config import EnsembleConfig

    try:
        EnsembleConfig.from_dict(options.config.get("ensemble", options.config))
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ServiceError(422, "invalid_config", f"invalid {options.method} config: {error}") from error


def check_source(body: MapSourceBody) -> ReferenceSource:
    """422 ``unknown_dataset`` for a dataset or traverse the registry does not have."""
    from vpr.datasets import DatasetError, get_spec

    try:
        spec = get_spec(body.dataset)
    except DatasetError as error:
        raise ServiceError(422, "unknown_dataset", str(error)) from error
    reference = body.reference or spec.default_reference
    if reference not in spec.traverses:
        raise ServiceError(422, "unknown_dataset",
                           f"dataset {body.dataset!r} has no traverse {reference!r}; traverses: {', '.join(spec.traverses)}")
    return ReferenceSource(dataset=body.dataset, reference=body.reference, split=body.split)


def validation_error(error: ValidationError) -> ServiceError:
    details = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}"
                        for e in error.errors())
    return ServiceError(422, "invalid_request", details or "invalid request")


def store_uploads(parts: list[UploadFile], folder: Path, max_pixels: int) -> int:
    """Check every uploaded image (type, format, size, a full decode) and write it, unchanged, into ``folder``
    as ``000000.png``/``.jpg``...; runs in a worker thread. Raises ServiceError at the first bad one."""
    folder.mkdir()
    for index, part in enumerate(parts):
        label = f"image {index} ({part.filename or 'unnamed'})"
        part_type = (part.content_type or "").split(";")[0].strip().lower()
        if part_type not in IMAGE_TYPES:
            raise ServiceError(415, "unsupported_media_type",
                               f"{label} is {part_type or 'untyped'}; send image/jpeg or image/png parts")
        part.file.seek(0)
        data = part.file.read()
        try:
            decode_image(data, max_pixels)
        except ServiceError as error:
            raise ServiceError(error.status, error.code, f"{label}: {error.message}") from error
        suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
        (folder / f"{index:06d}{suffix}").write_bytes(data)
    return len(parts)


async def read_upload_form(request: Request, max_images: int) -> Any:
    try:
        return await request.form(max_files=max_images, max_fields=len(UPLOAD_FIELDS) + 4)
    except ServiceError:
        raise
    except Exception as error:
        detail = str(getattr(error, "detail", error))
        if "Too many files" in detail:
            raise ServiceError(413, "too_many_images", f"at most {max_images} images per map") from error
        raise ServiceError(400, "bad_request", f"malformed multipart body: {detail}") from error


async def create_from_upload(request: Request, state: Any, builds: MapBuilds) -> Job:
    settings = state.settings
    form = await read_upload_form(request, settings.max_upload_images)
    try:
        unknown = set(form.keys()) - UPLOAD_FIELDS
        if unknown:
            raise ServiceError(422, "invalid_request", f"unknown form fields: {', '.join(sorted(unknown))}; "
                               f"expected {', '.join(sorted(UPLOAD_FIELDS))}")
        fields: dict[str, Any] = {}
        for key in ("name", "method", "config"):
            value = form.get(key)
            if isinstance(value, UploadFile):
                raise ServiceError(422, "invalid_request", f"form field {key!r} must be text, not a file")
            if value is not None:
                fields[key] = value
        if "config" in fields:
            try:
                fields["config"] = json.loads(fields["config"])
            except json.JSONDecodeError as error:
                raise ServiceError(422, "invalid_config", f"config is not JSON: {error}") from error
        try:
            options = MapBuildOptions.model_validate(fields)
        except ValidationError as error:
            raise validation_error(error) from error
        check_options(options)
        images = form.getlist("images")
        if not images or not all(isinstance(part, UploadFile) for part in images):
            raise ServiceError(422, "invalid_request", "multipart body needs one or more file fields named 'images'")
        staging = builds.reserve(options.name)
        try:
            await anyio.to_thread.run_sync(store_uploads, images, staging / REFERENCE_FOLDER,
                                           settings.max_image_pixels)
        except BaseException:
            builds.discard(options.name, staging)
            raise
        return builds.submit(options.name, staging, options.method, options.config, None)
    finally:
        await form.close()


async def create_from_dataset(request: Request, state: Any, builds: MapBuilds) -> Job:
    limit = state.settings.max_body_bytes  # max_upload_bytes is for images, not JSON
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ServiceError(413, "body_too_large", f"JSON body exceeds {limit} bytes")
    try:
        create = MapCreate.model_validate_json(body)
    except ValidationError as error:
        raise validation_error(error) from error
    check_options(create)
    source = check_source(create.source)
    staging = builds.reserve(create.name)
    return builds.submit(create.name, staging, create.method, create.config, source)


def ready_to_build(state: Any, builds: MapBuilds) -> None:
    builds.require_store()
    if not state.ready:
        raise ServiceError(503, "not_ready", "maps are still loading", {"Retry-After": "1"})


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` substituted in place (for an inline OpenAPI request body)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)


def _documented(schema: dict[str, Any]) -> dict[str, Any]:
    """An inlined request schema with the methods and registered datasets this service knows as enums."""
    from vpr.datasets import load_registry

    schema = _inline(schema)
    schema["properties"]["method"]["enum"] = sorted(METHODS)
    if "source" in schema["properties"]:
        schema["properties"]["source"]["properties"]["dataset"]["enum"] = sorted(load_registry())
    return schema


def _upload_schema() -> dict[str, Any]:
    options = _documented(MapBuildOptions.model_json_schema())
    properties = {key: value for key, value in options["properties"].items() if key != "config"}
    properties["config"] = {"type": "string", "description": "JSON text: " + options["properties"]["config"]["description"]}
    properties["images"] = {"type": "array", "items": {"type": "string", "format": "binary"},
                            "description": "The reference traverse in order, one JPEG or PNG part (image/jpeg or "
                            "image/png) per place; at most the service's max_upload_images."}
    return {"type": "object", "required": ["name", "images"], "properties": properties}


def create_body() -> dict[str, Any]:
    """``openapi_extra`` of ``POST /v1/maps``: its two request bodies."""
    return {
        "requestBody": {
            "required": True,
            "description": "JSON (MapCreate): build from a registered dataset's traverse. multipart/form-data: build "
            "from uploaded reference images (kept in the map folder).",
            "content": {
                "application/json": {"schema": _documented(MapCreate.model_json_schema())},
                "multipart/form-data": {"schema": _upload_schema()},
            },
        }
    }


def _responses(**described: str) -> dict[int | str, dict]:
    """:func:`server.errors.responses` with route-specific descriptions (keys ``s409`` for status 409)."""
    statuses = {int(key.removeprefix("s")): text for key, text in described.items()}
    entries = responses(*statuses)
    for status, text in statuses.items():
        if text:
            entries[status] = {"model": ErrorResponse, "description": text}
    return entries


def build_jobs_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @router.post(
        "/maps", status_code=202, response_model=Job, openapi_extra=create_body(),
        responses={
            202: {"description": "Build queued: follow the job at the Location header (GET /v1/jobs/{id}).",
                  "headers": {"Location": {"description": "/v1/jobs/{id}", "schema": {"type": "string"}}}},
            **_responses(
                s400="Malformed multipart body (bad_request)", s401="",
                s409="A map of that name is served, stored or being built (map_exists), or the service has no "
                "map store (no_map_store)",
                s413="Body over max_upload_bytes (body_too_large), more than max_upload_images images "
                "(too_many_images) or an image over max_image_pixels (image_too_large)",
                s415="Body is neither application/json nor multipart/form-data, or an image part is not image/jpeg "
                "or image/png (unsupported_media_type)",
                s422="Invalid name, method or fields (invalid_request), config (invalid_config), unknown dataset "
                "or traverse (unknown_dataset) or an undecodable image (bad_image)",
                s503="Maps still loading (not_ready) or the build queue is full (too_many_jobs); Retry-After set"),
        })
    async def create_map(request: Request, response: Response, state: StateDep, builds: BuildsDep) -> Job:
        """Build a map as a background job: from a registered dataset's traverse (JSON) or uploaded images
        (multipart/form-data). On success the map is served at once and stored for the next start; a failed
        build leaves nothing behind."""
        ready_to_build(state, builds)  # before reading the body: a service without a store reads no uploads
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            job = await create_from_dataset(request, state, builds)
        elif content_type == "multipart/form-data":
            job = await create_from_upload(request, state, builds)
        else:
            raise ServiceError(415, "unsupported_media_type",
                               f"Content-Type {content_type or 'missing'}: send application/json or multipart/form-data")
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return job

    @router.delete("/maps/{name}", status_code=204, response_class=Response,
                   responses=_responses(s401="", s404="No such map (unknown_map)",
                                        s409="The map is being built (map_building), is not in the map store "
                                        "(map_not_deletable), or there is no store (no_map_store)",
                                        s503="Maps still loading (not_ready)"))
    def delete_map(name: str, state: StateDep, builds: BuildsDep) -> Response:
        """Stop serving a map of the map store and delete it; sessions on it end (later use: 404)."""
        if not state.ready:
            raise ServiceError(503, "not_ready", "maps are still loading", {"Retry-After": "1"})
        builds.delete(name)
        return Response(status_code=204)

    @router.get("/jobs", response_model=JobList, responses=_responses(s401=""))
    def list_jobs(builds: BuildsDep) -> JobList:
        """Remembered jobs, oldest first (in memory: a restart forgets them)."""
        return JobList(jobs=builds.runner.list())

    @router.get("/jobs/{job_id}", response_model=Job, responses=_responses(s401="", s404="No such job (unknown_job)"))
    def get_job(job_id: str, builds: BuildsDep) -> Job:
        job = builds.runner.get(job_id)
        if job is None:
            raise ServiceError(404, "unknown_job", f"no job {job_id!r} (unknown, forgotten after a restart, or pruned)")
        return job

    return router
