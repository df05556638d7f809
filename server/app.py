"""The localisation service: ``create_app(settings, maps=...)`` builds a FastAPI app.

Routes: ``/healthz`` (process alive), ``/readyz`` (maps loaded), ``/metrics`` (Prometheus), ``/v1/maps`` (GET
lists; POST builds a map into the map store as a background job, followed at ``/v1/jobs/{id}``), ``DELETE
/v1/maps/{name}``, ``/v1/jobs`` (map management: :mod:`server.jobs`), ``/v1/maps/{name}/localize`` (one
JPEG/PNG image, raw or multipart field ``image``), ``/v1/sessions``, and the WebSocket
``/v1/maps/{name}/stream`` (one JPEG/PNG per binary message, one JSON answer per frame, sequence matched within
the connection; its protocol is :mod:`server.stream`'s docstring, appended to the OpenAPI description since
OpenAPI has no WebSocket routes). Maps load in a worker thread after startup, so ``/readyz``
answers 503 until they are ready. A localisation runs on its map's batcher thread (micro-batching,
:mod:`server.batching`: at most ``max_batch`` images, waiting at most ``max_batch_wait_ms`` for company): decoding,
one call of the method's distances for all the requests waiting, then sequence matching and ranking frame by frame
in submission order; the route awaits the answer on the event loop, holding no thread, and nothing heavy runs on
the event loop. At most ``max_concurrency`` localisations are admitted at once (queued, in a batch or being
finished); further ones get 503 with Retry-After at once rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

import anyio
import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.batching import BatchStats, MicroBatcher, Row
from server.errors import (
    ServiceError,
    error_response,
    install_error_handlers,
    responses,
)
from server.maps import LoadedMap, MapStore
from server.schemas import (
    Localization,
    MapInfo,
    MapList,
    Match,
    ServerTiming,
    SessionCreate,
    SessionInfo,
    Status,
)
from server.sessions import Session, SessionLimitError, SessionStore
from server.settings import ServiceSettings
from vpr.sequence import SequenceConfig

log = logging.getLogger(__name__)

IMAGE_TYPES = {"image/jpeg", "image/png"}
IMAGE_FORMATS = {"JPEG", "PNG"}


class MapSource(Protocol):
    """Anything that loads a map by name: :class:`server.maps.MapSpec`, or a test double."""

    name: str

    def load(self) -> LoadedMap: ...


class Metrics:
    """Prometheus metrics in the app's own registry (apps in one process never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("spikebot_http_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("spikebot_http_request_seconds", "HTTP request latency", ["route", "method"],
                                 registry=self.registry)
        self.stages = Histogram("spikebot_localize_stage_seconds", "Localisation latency by stage", ["stage"],
                                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                registry=self.registry)
        self.sessions = Gauge("spikebot_active_sessions", "Open localisation sessions", registry=self.registry)
        self.rejected = Counter("spikebot_overload_rejections", "Requests refused with 503 by the concurrency limit",
                                registry=self.registry)
        self.streams = Gauge("spikebot_open_streams", "Open WebSocket localisation streams", registry=self.registry)
        self.stream_frames = Counter("spikebot_stream_frames", "WebSocket stream messages by outcome (ok or error code)",
                                     ["outcome"], registry=self.registry)
        self.batch_size = Histogram("spikebot_batch_size", "Images per call of a map's method (micro-batching)", ["map"],
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256), registry=self.registry)
        self.batch_seconds = Histogram("spikebot_batch_seconds", "Duration of one batched call of a map's method",
                                       ["map"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                                                         0.25, 0.5, 1, 2.5, 5, 10), registry=self.registry)
        self.queue_wait = Histogram("spikebot_batch_queue_seconds", "A request's wait from joining its map's queue to "
                                    "the start of its batch", ["map"],
                                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5,
                                             1, 2.5, 5, 10), registry=self.registry)
        self.batch_failures = Counter("spikebot_batch_failures", "Batched calls of a map's method that raised (each "
                                      "request of the batch got the error)", ["map"], registry=self.registry)

    def observe_batch(self, map_name: str, batch: BatchStats) -> None:
        self.batch_size.labels(map_name).observe(batch.size)
        self.batch_seconds.labels(map_name).observe(batch.compute_s)
        queue_wait = self.queue_wait.labels(map_name)
        for seconds in batch.queue_s:
            queue_wait.observe(seconds)
        if batch.failed:
            self.batch_failures.labels(map_name).inc()


class BodyLimitMiddleware:
    """413 ``body_too_large`` for bodies over ``limit`` bytes (``upload_limit`` for ``POST /v1/maps``, which takes
    reference images): by Content-Length at once, or while streaming."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit or limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["method"] == "POST" and scope["path"] == "/v1/maps" else self.limit
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(limit, scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ServiceError(413, "body_too_large", f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body_too_large", f"request body exceeds {limit} bytes",
                                  {"Connection": "close"})
        await response(scope, receive, send)


class MetricsMiddleware:
    """Counts requests and times them per route template (``/v1/maps/{name}/localize``, not the filled path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        start = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route, scope["method"]).observe(time.perf_counter() - start)


class ServiceState:
    """What the app holds: settings, loaded maps, sessions, metrics, the concurrency slots and each map's batcher."""

    def __init__(self, settings: ServiceSettings, sources: Sequence[MapSource]):
        self.settings = settings
        self.sources = list(sources)
        self.maps: dict[str, LoadedMap] = {}
        self.ready = False
        self.load_error: str | None = None
        self.sessions = SessionStore(settings.session_idle_seconds, settings.max_sessions)
        self.metrics = Metrics()
        self.slots = threading.BoundedSemaphore(settings.max_concurrency)
        self._batchers: dict[int, tuple[LoadedMap, MicroBatcher]] = {}  # by id(map): a replaced map keeps its own
        self._batchers_lock = threading.Lock()

    def batcher(self, loaded: LoadedMap) -> MicroBatcher:
        """The batcher of ``loaded`` (made on first use). Requests that looked up a map before it was replaced or
        deleted finish on that map's batcher; its thread exits when idle and :meth:`prune_batchers` forgets it."""
        with self._batchers_lock:
            entry = self._batchers.get(id(loaded))
            if entry is None or entry[0] is not loaded:
                settings = self.settings
                batcher = MicroBatcher(loaded.distance_rows, max_batch=settings.max_batch,
                                       max_wait_s=settings.max_batch_wait_ms / 1e3, name=loaded.name,
                                       observe=lambda batch, name=loaded.name: self.metrics.observe_batch(name, batch))
                entry = self._batchers[id(loaded)] = (loaded, batcher)
            return entry[1]

    def prune_batchers(self) -> None:
        """Forget the batchers of maps no longer served (so that a deleted map's memory can be freed)."""
        served = {id(m) for m in self.maps.values()}
        with self._batchers_lock:
            for key in [k for k in self._batchers if k not in served]:
                del self._batchers[key]  # not closed: requests already queued there still get their rows

    def close_batchers(self) -> None:
        with self._batchers_lock:
            batchers, self._batchers = [b for _, b in self._batchers.values()], {}
        for batcher in batchers:
            batcher.close()

    def load_maps(self) -> None:
        try:
            for source in self.sources:
                started = time.perf_counter()
                loaded = source.load()
                if self.settings.warm_up:
                    self.warm_up(loaded)
                self.maps[loaded.name] = loaded
                log.info("map %s (%s, %d places) loaded in %.1f s", loaded.name, loaded.method.name,
                         loaded.n_places, time.perf_counter() - started)
            # What is loaded now lives as long as the process: take it out of the cyclic garbage collector's
            # sweeps, whose full passes over millions of objects (torch, the maps) stalled requests by 0.3-0.5 s.
            gc.collect()
            gc.freeze()
            self.ready = True
        except Exception as error:  # reported by /readyz; the process stays up for diagnosis
            log.exception("loading maps failed")
            self.load_error = f"{type(error).__name__}: {error}"

    def warm_up(self, loaded: LoadedMap) -> None:
        """Run ``loaded`` before robots do: every batch size once (kernels are built per shape, process-wide), then
        a blank PNG and a blank JPEG through its batcher (the serving thread's first batch and the image decoders'
        first use each cost tens of ms). These batches show in the batch metrics. Only an optimisation: a method
        that fails on a blank frame is logged and served anyway (real frames will tell)."""
        try:
            loaded.warm_up(self.settings.max_batch)
            batcher = self.batcher(loaded)
            decode = functools.partial(decode_image, max_pixels=self.settings.max_image_pixels)
            for image_format in ("PNG", "JPEG"):
                encoded = io.BytesIO()
                Image.new("RGB", (64, 32)).save(encoded, image_format)
                batcher.submit(encoded.getvalue(), prepare=decode).result()  # part of loading, like the map itself
        except Exception:  # noqa: BLE001 (logged; the map is still served)
            log.exception("warming up map %s failed; serving it cold", loaded.name)

    def map(self, name: str) -> LoadedMap:
        if not self.ready:
            raise ServiceError(503, "not_ready", "maps are still loading", {"Retry-After": "1"})
        loaded = self.maps.get(name)  # one lookup: DELETE /v1/maps/{name} may replace self.maps meanwhile
        if loaded is None:
            raise ServiceError(404, "unknown_map", f"no map {name!r}; maps: {', '.join(sorted(self.maps))}")
        return loaded


async def get_state(request: Request) -> ServiceState:
    """Dependencies are ``async def`` when they only look things up: FastAPI runs a plain ``def`` dependency in a
    worker thread, a hop per dependency per request that cost the event loop more than the lookup itself."""
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def api_key_accepted(keys: Sequence[str], given: str | None) -> bool:
    """True when no keys are configured or ``given`` is one of them (compared in constant time)."""
    if not keys:
        return True
    return given is not None and any(secrets.compare_digest(given.encode(), k.encode()) for k in keys)


async def require_api_key(state: StateDep,
                          x_api_key: str | None = Header(None, description="Required when the service has API keys.")) -> None:
    if not api_key_accepted(state.settings.api_keys, x_api_key):
        raise ServiceError(401, "unauthorized", "missing or invalid X-API-Key header")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """A JPEG/PNG decoded fully (truncation caught) into (H, W) or (H, W, 3) uint8; size checked before decoding."""
    if not data:
        raise ServiceError(422, "bad_image", "empty body: send one JPEG or PNG image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                raise ServiceError(422, "bad_image", f"image is {image.format}, expected JPEG or PNG")
            width, height = image.size
            if width * height > max_pixels:
                raise ServiceError(413, "image_too_large", f"image is {width}x{height}; at most {max_pixels} pixels")
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            return np.asarray(image)
    except Image.DecompressionBombError as error:
        raise ServiceError(413, "image_too_large", str(error)) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ServiceError(422, "bad_image", f"cannot decode image: {error}") from error


def confidence(row: np.ndarray, best: int) -> float:
    """(second-best - best) / (mean - best), clipped to [0, 1]; 0 for a one-place map or a flat row."""
    if row.size < 2:
        return 0.0
    second = float(np.partition(row, 1)[1])
    spread = float(row.mean()) - float(row[best])
    if spread <= 0:
        return 0.0
    return float(np.clip((second - float(row[best])) / spread, 0.0, 1.0))


async def read_image_body(request: Request, max_body_bytes: int) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in IMAGE_TYPES:
        return await request.body()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=10, max_part_size=max_body_bytes)
        except ServiceError:
            raise
        except Exception as error:
            raise ServiceError(400, "bad_request", f"malformed multipart body: {error}") from error
        part = form.get("image")
        if not isinstance(part, UploadFile):
            raise ServiceError(422, "invalid_request", "multipart body needs a file field named 'image'")
        part_type = (part.content_type or "").split(";")[0].strip().lower()
        if part_type not in IMAGE_TYPES:
            raise ServiceError(415, "unsupported_media_type", f"image part is {part_type or 'untyped'}; send image/jpeg or image/png")
        return await part.read()
    raise ServiceError(415, "unsupported_media_type",
                       f"Content-Type {content_type or 'missing'}: send image/jpeg, image/png or multipart/form-data")


async def localize_admitted(state: ServiceState, loaded: LoadedMap, data: bytes, top_k: int,
                            session: Session | None) -> Localization:
    """The one localisation that the HTTP route and the WebSocket stream both run, for a frame that holds one of
    the ``max_concurrency`` slots: decode, describe and finish (:func:`answer_row`) in the map's next batch, awaited
    on the event loop without a thread of its own. The slot is given back when the batch has finished the frame,
    also when a timeout abandoned it (its row then still joins the session's sequence, in its turn)."""
    admitted_at = time.perf_counter()
    try:
        future = state.batcher(loaded).submit(
            data, prepare=functools.partial(decode_image, max_pixels=state.settings.max_image_pixels),
            finish=functools.partial(answer_row, state, top_k, session, admitted_at))
    except BaseException:
        state.slots.release()
        raise
    future.add_done_callback(lambda _: state.slots.release())
    try:
        with anyio.fail_after(state.settings.request_timeout_seconds):
            return await asyncio.shield(asyncio.wrap_future(future))
    except TimeoutError as error:
        raise ServiceError(504, "timeout", f"localisation took over {state.settings.request_timeout_seconds} s") from error


def answer_row(state: ServiceState, top_k: int, session: Session | None, admitted_at: float, described: Row) -> Localization:
    """A described frame's answer: sequence-matched within ``session`` (if any), ranked, timed. Runs in the map's
    batcher thread in submission order, which is how a session's frames join its sequence in the order they were
    admitted, whichever batches their rows come from."""
    begun = time.perf_counter()
    row, length = described.row, 1
    if session is not None:
        row, length = session.push(row)
    best = int(np.argmin(row))
    k = min(top_k, row.size)
    ranked = np.argpartition(row, k - 1)[:k] if k < row.size else np.arange(row.size)
    ranked = ranked[np.argsort(row[ranked], kind="stable")]
    ended = time.perf_counter()
    describe_s = described.queue_s + described.compute_s
    timing = ServerTiming(decode_ms=described.prepare_s * 1e3, queue_ms=described.queue_s * 1e3,
                          describe_ms=describe_s * 1e3, match_ms=(ended - begun) * 1e3,
                          total_ms=(ended - admitted_at) * 1e3)
    for stage, seconds in (("decode", described.prepare_s), ("queue", described.queue_s), ("describe", describe_s),
                           ("match", ended - begun)):
        state.metrics.stages.labels(stage).observe(seconds)
    return Localization(
        place=best, score=-float(row[best]), confidence=confidence(row, best),
        top_k=[Match(place=int(i), distance=float(row[i])) for i in ranked], sequence_length=length,
        session_id=session.id if session is not None else None, server_timing=timing)


class Admission:
    """One admitted request's concurrency slot, given back exactly once: by its worker thread when it ends, or by
    the route when the worker never started (cancelled while waiting for a thread)."""

    def __init__(self, state: ServiceState):
        self.state = state
        self._lock = threading.Lock()
        self._phase = "admitted"  # -> "running" -> "released", or straight to "released"

    def start(self) -> bool:
        """Called by the worker first: False if the route already gave the slot back (then do nothing)."""
        with self._lock:
            if self._phase != "admitted":
                return False
            self._phase = "running"
            return True

    def release(self, only_if_not_started: bool = False) -> None:
        with self._lock:
            if self._phase == "released" or (only_if_not_started and self._phase == "running"):
                return
            self._phase = "released"
        self.state.slots.release()


LOCALIZE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One JPEG or PNG image: the raw body, or multipart/form-data with a file field `image`.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "additionalProperties": False,
                                               "properties": {"image": {"type": "string", "format": "binary"}}},
                                    "encoding": {"image": {"contentType": "image/jpeg, image/png"}}},
        },
    }
}


def build_router(settings: ServiceSettings) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @router.get("/maps", response_model=MapList, responses=responses(401, 503))
    def list_maps(state: StateDep) -> MapList:
        if not state.ready:
            raise ServiceError(503, "not_ready", "maps are still loading", {"Retry-After": "1"})
        return MapList(maps=[MapInfo(**m.info()) for _, m in sorted(state.maps.items())])

    @router.post("/maps/{name}/localize", response_model=Localization, openapi_extra=LOCALIZE_BODY,
                 responses=responses(400, 401, 404, 409, 413, 415, 422, 503, 504))
    async def localize(
        request: Request,
        name: str,
        state: StateDep,
        top_k: int = Query(5, ge=1, le=settings.max_top_k, description="How many best places to return (at most the service's max_top_k)."),
        x_session_id: str | None = Header(None, description="Sequence-match within this session (POST /v1/sessions)."),
    ) -> Localization:
        loaded = state.map(name)
        session = None
        if x_session_id is not None:
            session = state.sessions.get(x_session_id)
            if session is None:
                raise ServiceError(404, "unknown_session", f"no session {x_session_id!r} (unknown, deleted or expired)")
            if session.map_name != loaded.name:
                raise ServiceError(409, "session_map_mismatch",
                                   f"session {x_session_id!r} localises in map {session.map_name!r}, not {loaded.name!r}")
        data = await read_image_body(request, settings.max_body_bytes)
        if not state.slots.acquire(blocking=False):
            state.metrics.rejected.inc()
            raise ServiceError(503, "overloaded", f"{settings.max_concurrency} localisations admitted (queued or "
                               "running); retry later", {"Retry-After": str(settings.retry_after_seconds)})
        return await localize_admitted(state, loaded, data, top_k, session)

    @router.post("/sessions", response_model=SessionInfo, status_code=201, responses=responses(400, 401, 404, 422, 503))
    def create_session(body: SessionCreate, state: StateDep) -> SessionInfo:
        settings = state.settings
        name = body.map or settings.default_map or (next(iter(state.maps)) if len(state.maps) == 1 else None)
        if name is None:
            raise ServiceError(422, "invalid_request", "give the session a map: several maps are served")
        state.map(name)
        if body.sequence_length > settings.max_sequence_length:
            raise ServiceError(422, "invalid_request", f"sequence_length must be at most {settings.max_sequence_length}")
        try:
            session = state.sessions.create(name, SequenceConfig(length=body.sequence_length, mode=body.mode))
        except SessionLimitError as error:
            raise ServiceError(503, "too_many_sessions", str(error), {"Retry-After": str(settings.retry_after_seconds)}) from error
        state.metrics.sessions.set(len(state.sessions))
        return SessionInfo(id=session.id, map=name, sequence_length=body.sequence_length, mode=body.mode,
                           idle_timeout_seconds=settings.session_idle_seconds)

    @router.delete("/sessions/{session_id}", status_code=204, responses=responses(401, 404))
    def delete_session(session_id: str, state: StateDep) -> Response:
        if not state.sessions.delete(session_id):
            raise ServiceError(404, "unknown_session", f"no session {session_id!r} (unknown, deleted or expired)")
        state.metrics.sessions.set(len(state.sessions))
        return Response(status_code=204)

    return router


def create_app(settings: ServiceSettings | None = None, maps: Sequence[MapSource] = ()) -> FastAPI:
    """The service for ``settings``, serving ``maps`` plus every map in ``settings.map_store``."""
    settings = settings or ServiceSettings()
    sources: list[Any] = list(maps)
    if settings.map_store is not None:
        store = MapStore(settings.map_store)
        sources += [store.spec(name) for name in store.names()]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"map names must be unique, got {names}")
    state = ServiceState(settings, sources)
    from server import jobs  # here, not at the top: server.jobs imports this module

    builds = jobs.MapBuilds(state, MapStore(settings.map_store) if settings.map_store is not None else None,
                            jobs.JobRunner(settings.map_build_workers, settings.max_queued_builds,
                                           settings.max_finished_jobs))
    from server import policies  # not at the top: server.policies imports this module

    served_policies = policies.PolicyRegistry(settings.policy_store, state.metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # each admitted policy request holds a worker thread while it runs: room for all of them, plus anyio's
        # usual 40 for everything else (other routes, map loading)
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, settings.max_concurrency + 40)
        torch_threads = torch.get_num_threads()  # process-wide: given back at shutdown (tests run many apps)
        torch.set_num_threads(settings.torch_threads)
        loader = asyncio.create_task(anyio.to_thread.run_sync(state.load_maps))
        policy_loader = asyncio.create_task(anyio.to_thread.run_sync(served_policies.load))
        sweeper = asyncio.create_task(_sweep_sessions(state))
        try:
            yield
        finally:
            builds.runner.close()
            state.close_batchers()
            torch.set_num_threads(torch_threads)
            sweeper.cancel()
            for task in (loader, policy_loader):
                if not task.done():
                    task.cancel()

    from server import event_stream, stream  # here, not at the top: they import this module

    app = FastAPI(title="spikebot localisation service", version="1", lifespan=lifespan,
                  description=f"{__doc__}\n## WebSocket stream\n\n{stream.__doc__}\n## Policies\n\n{policies.__doc__}"
                              f"\n## Event stream\n\n{event_stream.__doc__}")
    app.state.service = state
    app.state.policies = served_policies
    app.state.map_builds = builds
    install_error_handlers(app)

    @app.get("/healthz", response_model=Status, tags=["ops"])
    def healthz() -> Status:
        return Status(status="ok")

    @app.get("/readyz", response_model=Status, tags=["ops"], responses=responses(503))
    def readyz() -> Any:
        if state.ready and served_policies.ready:
            return Status(status="ready", maps=sorted(state.maps), policies=list(served_policies.policies))
        if state.load_error or served_policies.load_error:
            return error_response(503, "load_failed", state.load_error or served_policies.load_error)
        return error_response(503, "not_ready", "maps or policies are still loading", {"Retry-After": "1"})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        state.metrics.sessions.set(len(state.sessions))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_router(settings))

    def openapi() -> dict[str, Any]:
        """The generated document plus the service's own limits, which the static request models cannot know."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema["components"]["schemas"]["SessionCreate"]["properties"]["sequence_length"]["maximum"] = \
                settings.max_sequence_length
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(stream.build_stream_router())
    app.include_router(event_stream.build_event_stream_router(settings, state.metrics.registry))
    app.include_router(jobs.build_jobs_router())
    app.include_router(policies.build_policies_router())
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


async def _sweep_sessions(state: ServiceState) -> None:
    interval = min(60.0, max(0.5, state.settings.session_idle_seconds / 2))
    while True:
        await asyncio.sleep(interval)
        state.sessions.sweep()
        state.metrics.sessions.set(len(state.sessions))
        state.prune_batchers()
