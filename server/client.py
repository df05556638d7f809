"""Python clients for the localisation service: :class:`LocalisationClient` (sync) and
:class:`AsyncLocalisationClient` (asyncio), with the same methods.

    with LocalisationClient("http://robot-server:8000", api_key="...") as client:
        with client.session("campus", sequence_length=5) as session_id:
            answer = client.localize("campus", frame, session_id=session_id)   # frame: (H, W[, 3]) uint8 RGB
            print(answer.place, answer.confidence, answer.server_timing.total_ms)
        chunk = client.act("button", history)   # history: (obs_horizon, obs_dim) observations, oldest first

Answers are the service's own pydantic models (:mod:`server.schemas`). Responses 429 and 503 (``overloaded``,
``not_ready``, ``too_many_sessions``) and connection failures are retried ``retries`` times with exponential
backoff (``backoff * 2**attempt`` seconds, or the response's Retry-After, both capped at ``max_backoff``); every
other error, and the last one when retries run out, raises :class:`ServiceError` with the service's error code.
A connection failure that outlasts the retries re-raises the ``httpx`` exception.

Only a failure to *connect* is retried for POSTs (the request never reached the service, so a session frame is
never pushed twice); GET and DELETE are retried on any transport error. This module needs httpx, numpy, Pillow
and pydantic, not FastAPI.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
import numpy as np
from PIL import Image

from server.schemas import (
    ActionChunk,
    ActRequest,
    Localization,
    MapList,
    PolicyList,
    SessionCreate,
    SessionInfo,
    Status,
)

__all__ = ["AsyncLocalisationClient", "LocalisationClient", "ServiceError", "encode_image"]

RETRY_STATUSES = frozenset({429, 503})
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


class ServiceError(Exception):
    """An error answer from the service: HTTP ``status``, its stable ``code`` (``unknown_map``, ``bad_image``, ...)
    and ``message``; ``retry_after`` in seconds when the service sent one."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ServiceError:
        code, message = "http_error", response.text.strip() or response.reason_phrase
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            pass
        return cls(response.status_code, code, message, retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def encode_image(image: np.ndarray | bytes | bytearray, fmt: Literal["png", "jpeg"] = "png",
                 jpeg_quality: int = 90) -> tuple[bytes, str]:
    """``(body, content_type)`` for an image: an (H, W) or (H, W, 3) uint8 array (RGB channel order, as Pillow
    reads; flip OpenCV's BGR first) encoded in memory, or bytes already encoded as JPEG or PNG (sniffed)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return data, "image/png"
        if data.startswith(b"\xff\xd8"):
            return data, "image/jpeg"
        raise ValueError("image bytes are neither PNG nor JPEG")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 array, got {array.shape} {array.dtype}")
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(array).save(buffer, "PNG", compress_level=1)
        return buffer.getvalue(), "image/png"
    if fmt == "jpeg":
        Image.fromarray(array).save(buffer, "JPEG", quality=jpeg_quality)
        return buffer.getvalue(), "image/jpeg"
    raise ValueError(f"fmt must be 'png' or 'jpeg', not {fmt!r}")


@dataclass(frozen=True)
class _Call:
    """One request, independent of sync or async I/O: what to send and how to read a success."""

    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    retry: bool = True
    ok_statuses: frozenset[int] = frozenset({200})


class _Base:
    """Request building, retry policy and response parsing shared by both clients."""

    def __init__(self, base_url: str | None, api_key: str | None, retries: int, backoff: float, max_backoff: float,
                 image_format: Literal["png", "jpeg"]):
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must be non-negative")
        self.base_url = (base_url or "").rstrip("/")
        self.api_key, self.retries, self.backoff, self.max_backoff = api_key, retries, backoff, max_backoff
        self.image_format = image_format

    def _url(self, path: str) -> str:
        return self.base_url + path if self._prefix_urls else path

    _prefix_urls = False

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"X-API-Key": self.api_key} if self.api_key is not None else {}
        return {**headers, **(extra or {})}

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        hinted = retry_after(response) if response is not None else None
        wanted = hinted if hinted is not None else self.backoff * 2 ** attempt
        return min(wanted, self.max_backoff)

    def _retryable_error(self, call: _Call, error: httpx.TransportError) -> bool:
        return isinstance(error, _CONNECT_ERRORS) or call.method in ("GET", "DELETE")

    def _finish(self, call: _Call, response: httpx.Response) -> Any:
        if response.status_code in call.ok_statuses:
            return call.parse(response)
        raise ServiceError.from_response(response)

    # the calls --------------------------------------------------------------------------------------------------

    def _health_call(self) -> _Call:
        return _Call("GET", "/healthz", lambda r: Status.model_validate(r.json()))

    def _ready_call(self) -> _Call:
        def parse(response: httpx.Response) -> Status:
            if response.status_code == 200:
                return Status.model_validate(response.json())
            error = ServiceError.from_response(response)
            return Status(status=error.code, detail=error.message)

        return _Call("GET", "/readyz", parse, retry=False, ok_statuses=frozenset({200, 503}))

    def _maps_call(self) -> _Call:
        return _Call("GET", "/v1/maps", lambda r: MapList.model_validate(r.json()))

    def _localize_call(self, map_name: str, image: np.ndarray | bytes, top_k: int, session_id: str | None) -> _Call:
        data, content_type = encode_image(image, self.image_format)
        headers = {"content-type": content_type}
        if session_id is not None:
            headers["X-Session-Id"] = session_id
        return _Call("POST", f"/v1/maps/{quote(map_name, safe='')}/localize",
                     lambda r: Localization.model_validate(r.json()),
                     {"content": data, "headers": headers, "params": {"top_k": top_k}})

    def _open_session_call(self, map_name: str | None, sequence_length: int, mode: str) -> _Call:
        body = SessionCreate(map=map_name, sequence_length=sequence_length, mode=mode)  # type: ignore[arg-type]
        return _Call("POST", "/v1/sessions", lambda r: SessionInfo.model_validate(r.json()),
                     {"json": body.model_dump(mode="json")}, ok_statuses=frozenset({201}))

    def _close_session_call(self, session_id: str) -> _Call:
        return _Call("DELETE", f"/v1/sessions/{quote(session_id, safe='')}", lambda r: None,
                     ok_statuses=frozenset({204}))

    def _policies_call(self) -> _Call:
        return _Call("GET", "/v1/policies", lambda r: PolicyList.model_validate(r.json()))

    def _act_call(self, policy: str, observations: np.ndarray, sampler: Literal["ddim", "ddpm"],
                  inference_steps: int | None, seed: int | None) -> _Call:
        body = ActRequest(observations=np.asarray(observations, dtype=np.float64).tolist(), sampler=sampler,
                          inference_steps=inference_steps, seed=seed)
        return _Call("POST", f"/v1/policies/{quote(policy, safe='')}/act",
                     lambda r: ActionChunk.model_validate(r.json()), {"json": body.model_dump(mode="json")})


class LocalisationClient(_Base):
    """Blocking client. ``transport=`` replaces the network (``httpx.MockTransport``, ...); ``client=`` uses a
    ready ``httpx.Client`` instead (FastAPI's ``TestClient`` is one), which this client then never closes."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.2, max_backoff: float = 5.0,
                 transport: httpx.BaseTransport | None = None, client: httpx.Client | None = None,
                 image_format: Literal["png", "jpeg"] = "png", sleep: Callable[[float], None] = time.sleep):
        super().__init__(base_url, api_key, retries, backoff, max_backoff, image_format)
        if client is None and not base_url:
            raise ValueError("give base_url, or an httpx.Client as client=")
        self._owns = client is None
        self._prefix_urls = client is not None and bool(base_url)
        self._http = client if client is not None else httpx.Client(base_url=self.base_url, timeout=timeout,
                                                                     transport=transport)
        self._sleep = sleep

    def _run(self, call: _Call) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, self._url(call.path),
                                              **{**call.kwargs, "headers": self._headers(call.kwargs.get("headers"))})
            except httpx.TransportError as error:
                if not (call.retry and attempt < self.retries and self._retryable_error(call, error)):
                    raise
                self._sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if call.retry and response.status_code in RETRY_STATUSES and attempt < self.retries:
                self._sleep(self._delay(attempt, response))
                attempt += 1
                continue
            return self._finish(call, response)

    def health(self) -> Status:
        """``/healthz``: the process is up."""
        return self._run(self._health_call())

    def ready(self) -> Status:
        """``/readyz`` once, without retrying: ``status`` is ``ready`` (with ``maps``), or the 503's code
        (``not_ready``, ``load_failed``) with its message in ``detail``."""
        return self._run(self._ready_call())

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.2) -> Status:
        """Polls ``ready()`` until the maps are loaded; TimeoutError after ``timeout`` seconds, ServiceError at once
        if loading failed."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.ready()
            if status.status == "ready":
                return status
            if status.status == "load_failed":
                raise ServiceError(503, status.status, status.detail or "")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"service not ready after {timeout} s: {status.detail}")
            self._sleep(interval)

    def maps(self) -> MapList:
        return self._run(self._maps_call())

    def localize(self, map_name: str, image: np.ndarray | bytes, top_k: int = 5,
                 session_id: str | None = None) -> Localization:
        """Localise one image (uint8 RGB/grey array, or JPEG/PNG bytes) in ``map_name``; within a session the answer
        is sequence-matched over the session's last frames."""
        return self._run(self._localize_call(map_name, image, top_k, session_id))

    def open_session(self, map_name: str | None, sequence_length: int = 5,
                     mode: Literal["diagonal", "seqslam"] = "diagonal") -> str:
        """Opens a sequence-matching session and returns its id (``map_name=None``: the service's default map)."""
        return self._run(self._open_session_call(map_name, sequence_length, mode)).id

    def close_session(self, session_id: str) -> None:
        """Deletes a session; ServiceError ``unknown_session`` if it is unknown or already expired."""
        self._run(self._close_session_call(session_id))

    def policies(self) -> PolicyList:
        """The served diffusion policies, with their dims and horizons."""
        return self._run(self._policies_call())

    def act(self, policy: str, observations: np.ndarray, sampler: Literal["ddim", "ddpm"] = "ddim",
            inference_steps: int | None = None, seed: int | None = None) -> ActionChunk:
        """The next action chunk of ``policy`` for its last obs_horizon observations, (obs_horizon, obs_dim),
        oldest first."""
        return self._run(self._act_call(policy, observations, sampler, inference_steps, seed))

    @contextmanager
    def session(self, map_name: str | None, sequence_length: int = 5,
                mode: Literal["diagonal", "seqslam"] = "diagonal") -> Iterator[str]:
        """``with client.session(...) as session_id:`` opens a session and closes it on the way out, quietly if it
        has already expired."""
        session_id = self.open_session(map_name, sequence_length, mode)
        try:
            yield session_id
        finally:
            try:
                self.close_session(session_id)
            except ServiceError as error:
                if error.code != "unknown_session":
                    raise

    def close(self) -> None:
        if self._owns:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLocalisationClient(_Base):
    """The asyncio client: :class:`LocalisationClient`'s methods as coroutines. ``transport=`` takes e.g.
    ``httpx.ASGITransport(app=app)`` (which does not run the app's lifespan: load its maps first); ``client=``
    a ready ``httpx.AsyncClient``, which this client then never closes."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.2, max_backoff: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None, client: httpx.AsyncClient | None = None,
                 image_format: Literal["png", "jpeg"] = "png"):
        super().__init__(base_url, api_key, retries, backoff, max_backoff, image_format)
        if client is None and not base_url:
            raise ValueError("give base_url, or an httpx.AsyncClient as client=")
        self._owns = client is None
        self._prefix_urls = client is not None and bool(base_url)
        self._http = client if client is not None else httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                                                          transport=transport)

    async def _run(self, call: _Call) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, self._url(call.path),
                    **{**call.kwargs, "headers": self._headers(call.kwargs.get("headers"))})
            except httpx.TransportError as error:
                if not (call.retry and attempt < self.retries and self._retryable_error(call, error)):
                    raise
                await asyncio.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if call.retry and response.status_code in RETRY_STATUSES and attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, response))
                attempt += 1
                continue
            return self._finish(call, response)

    async def health(self) -> Status:
        return await self._run(self._health_call())

    async def ready(self) -> Status:
        return await self._run(self._ready_call())

    async def wait_ready(self, timeout: float = 30.0, interval: float = 0.2) -> Status:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.ready()
            if status.status == "ready":
                return status
            if status.status == "load_failed":
                raise ServiceError(503, status.status, status.detail or "")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"service not ready after {timeout} s: {status.detail}")
            await asyncio.sleep(interval)

    async def maps(self) -> MapList:
        return await self._run(self._maps_call())

    async def localize(self, map_name: str, image: np.ndarray | bytes, top_k: int = 5,
                       session_id: str | None = None) -> Localization:
        return await self._run(self._localize_call(map_name, image, top_k, session_id))

    async def open_session(self, map_name: str | None, sequence_length: int = 5,
                           mode: Literal["diagonal", "seqslam"] = "diagonal") -> str:
        return (await self._run(self._open_session_call(map_name, sequence_length, mode))).id

    async def close_session(self, session_id: str) -> None:
        await self._run(self._close_session_call(session_id))

    async def policies(self) -> PolicyList:
        return await self._run(self._policies_call())

    async def act(self, policy: str, observations: np.ndarray, sampler: Literal["ddim", "ddpm"] = "ddim",
                  inference_steps: int | None = None, seed: int | None = None) -> ActionChunk:
        return await self._run(self._act_call(policy, observations, sampler, inference_steps, seed))

    @asynccontextmanager
    async def session(self, map_name: str | None, sequence_length: int = 5,
                      mode: Literal["diagonal", "seqslam"] = "diagonal") -> AsyncIterator[str]:
        session_id = await self.open_session(map_name, sequence_length, mode)
        try:
            yield session_id
        finally:
            try:
                await self.close_session(session_id)
            except ServiceError as error:
                if error.code != "unknown_session":
                    raise

    async def aclose(self) -> None:
        if self._owns:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
