"""The WebSocket ``/v1/maps/{name}/stream``: ``POST /v1/maps/{name}/localize`` within a session, for a stream.

Protocol (one encoding, no framing of our own)::

    connect  ws://HOST/v1/maps/{name}/stream?sequence_length=5&mode=diagonal&top_k=5
             header X-API-Key, or query parameter api_key where the client cannot set headers (browsers);
             prefer the header: access logs record the query string
    client   binary message: one whole JPEG or PNG file (the bytes an HTTP localize body would carry)
    server   text message: one JSON object per client message, in order: a Localization (the HTTP answer's
             schema) or {"error": {"code": ..., "message": ...}} with the HTTP endpoint's codes

Query parameters: ``sequence_length`` (default 5, as for sessions; at most ``max_sequence_length``), ``mode``
(``diagonal`` or ``seqslam``), ``top_k`` (default 5, at most ``max_top_k``), ``api_key``; others are ignored.

The handshake is always accepted, so that a refused client still learns why: an error message, then a close
with code 4000 + the HTTP status the same error gets (``unauthorized`` 4401, ``invalid_request`` 4422,
``unknown_map`` 4404), except ``not_ready`` 1013 (try again later). Per-frame errors keep the connection open and
the frame does not join the sequence: ``bad_image`` (empty, truncated, corrupt, not JPEG/PNG),
``image_too_large`` (over ``max_image_pixels``), ``unsupported_message`` (a text message), ``overloaded`` (all
``max_concurrency`` slots busy: retry the frame later), ``timeout`` (over ``request_timeout_seconds``; as over
HTTP, the abandoned frame still joins the sequence if it finishes). A message over ``max_body_bytes`` gets
``body_too_large`` and close 1009 (message too big); one over uvicorn's ``ws_max_size`` (16 MiB by default) is
closed with 1009 by uvicorn before it reaches the app, without the message. A frame that arrives after the
map was deleted or replaced gets ``unknown_map`` and close 4404 (reconnect to use the new map); an unexpected
failure ``internal`` and close 1011. Frames are answered one at a time in arrival order; a client may send ahead.

Each connection owns its sequence state: a :class:`server.sessions.Session` made for the connection and kept out
of the shared :class:`SessionStore`. Its lifetime is the connection's, so it never idles out mid-stream, cannot
be reached (or pushed to) through ``X-Session-Id`` by anyone else, takes no ``max_sessions`` place, and is gone
when the connection closes with nothing to clean up. Answers carry its id (``stream-...``) as ``session_id`` for
logs; the HTTP endpoint does not know it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError

from server.app import ServiceState, api_key_accepted, localize_admitted
from server.errors import ErrorBody, ErrorResponse, ServiceError
from server.maps import LoadedMap
from server.schemas import Localization
from server.sessions import Session
from vpr.sequence import OnlineSequenceMatcher, SequenceConfig

Message = dict[str, Any]  # an ASGI WebSocket receive event: "type", and "text" or "bytes"
log = logging.getLogger(__name__)

CLOSE_CODES = {"not_ready": 1013, "body_too_large": 1009, "internal": 1011}
ENDS_STREAM = {"body_too_large", "unknown_map"}  # frame errors after which the stream closes; others leave it open


def close_code(error: ServiceError) -> int:
    """The WebSocket close code for an error that ends a stream: 4000 + its HTTP status unless a standard code fits."""
    return CLOSE_CODES.get(error.code, 4000 + error.status)


class StreamParams(BaseModel):
    """The connection's query parameters (``api_key`` is read separately, before these are validated)."""

    sequence_length: int = Field(5, ge=1)
    mode: Literal["diagonal", "seqslam"] = "diagonal"
    top_k: int = Field(5, ge=1)


def open_stream(state: ServiceState, name: str, query: dict[str, str],
                header_key: str | None) -> tuple[LoadedMap, Session, int]:
    """The map, the connection's own session and its top_k; or the ServiceError that refuses the stream."""
    settings = state.settings
    if not api_key_accepted(settings.api_keys, header_key if header_key is not None else query.get("api_key")):
        raise ServiceError(401, "unauthorized", "missing or invalid X-API-Key header (or api_key query parameter)")
    try:
        params = StreamParams.model_validate(query)
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ServiceError(422, "invalid_request", details) from error
    if params.top_k > settings.max_top_k:
        raise ServiceError(422, "invalid_request", f"top_k must be at most {settings.max_top_k}")
    if params.sequence_length > settings.max_sequence_length:
        raise ServiceError(422, "invalid_request", f"sequence_length must be at most {settings.max_sequence_length}")
    loaded = state.map(name)
    matcher = OnlineSequenceMatcher(SequenceConfig(length=params.sequence_length, mode=params.mode))
    session = Session(f"stream-{secrets.token_urlsafe(8)}", loaded.name, matcher, time.monotonic())
    return loaded, session, params.top_k


async def localize_message(state: ServiceState, loaded: LoadedMap, data: bytes | None, top_k: int,
                           session: Session) -> Localization:
    """One client message's answer; raises the ServiceError the HTTP endpoint would give for the same body."""
    settings = state.settings
    if data is None:
        raise ServiceError(415, "unsupported_message", "send each frame as a binary message holding one JPEG or PNG")
    if len(data) > settings.max_body_bytes:
        raise ServiceError(413, "body_too_large",
                           f"message of {len(data)} bytes exceeds {settings.max_body_bytes} bytes")
    if state.maps.get(loaded.name) is not loaded:
        raise ServiceError(404, "unknown_map", f"map {loaded.name!r} was deleted or replaced; reconnect")
    if not state.slots.acquire(blocking=False):
        state.metrics.rejected.inc()
        raise ServiceError(503, "overloaded",
                           f"{settings.max_concurrency} localisations in flight; retry the frame later")
    return await localize_admitted(state, loaded, data, top_k, session)


async def send_error(websocket: WebSocket, error: ServiceError, close: bool) -> None:
    """The error message; then, when the error ends the stream, the close with its code."""
    await websocket.send_text(ErrorResponse(error=ErrorBody(code=error.code, message=error.message)).model_dump_json())
    if close:
        await websocket.close(close_code(error), error.code)


async def answer_each_message(websocket: WebSocket, answer: Callable[[Message], Awaitable[BaseModel]],
                              outcomes: Counter, ends_stream: set[str], what: str) -> None:
    """Answer every message in order until the client leaves or an error ends the stream: one JSON answer, or
    ``{"error": ...}``, per message. Errors whose code is in ``ends_stream`` and unexpected ones close the stream;
    the others leave it open. Shared by the map and policy streams."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            reply = await answer(message)
        except ServiceError as error:
            outcomes.labels(error.code).inc()
            ends = error.code in ends_stream
            await send_error(websocket, error, close=ends)
            if ends:
                return
            continue
        except Exception:
            log.exception("%s failed", what)
            outcomes.labels("internal").inc()
            await send_error(websocket, ServiceError(500, "internal", "internal server error"), close=True)
            return
        outcomes.labels("ok").inc()
        await websocket.send_text(reply.model_dump_json())


async def serve_frames(websocket: WebSocket, state: ServiceState, loaded: LoadedMap, session: Session,
                       top_k: int) -> None:
    """Answer every frame in order until the client leaves or an error ends the stream."""
    await answer_each_message(
        websocket, lambda message: localize_message(state, loaded, message.get("bytes"), top_k, session),
        state.metrics.stream_frames, ENDS_STREAM, f"stream {session.id} on map {loaded.name}")


def build_stream_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.websocket("/maps/{name}/stream")
    async def stream(websocket: WebSocket, name: str) -> None:
        state: ServiceState = websocket.app.state.service
        await websocket.accept()
        try:
            try:
                loaded, session, top_k = open_stream(state, name, dict(websocket.query_params),
                                                     websocket.headers.get("x-api-key"))
            except ServiceError as error:
                await send_error(websocket, error, close=True)
                return
            state.metrics.streams.inc()
            try:
                await serve_frames(websocket, state, loaded, session, top_k)
            finally:
                state.metrics.streams.dec()
        except WebSocketDisconnect:
            pass

    return router
