"""Diffusion policies served next to the maps: ``GET /v1/policies``, ``POST /v1/policies/{name}/act`` (an observation
history in, an action chunk out) and the WebSocket ``/v1/policies/{name}/stream`` for closed-loop control.

The policy store (``policy_store``, ``spikebot serve --policy-store DIR``) is a folder with one sub-folder per
policy, named as the policy answers to::

    <store>/<name>/policy.json                 a checkpoint (DiffusionPolicy.save), or
    <store>/<name>/checkpoints/step_*/         a training run folder (policy.workspace): its latest checkpoint

Other sub-folders are skipped (with a log line). Policies load in a worker thread after startup, as maps do, and
each acts once on zeros there, so that the first robot does not pay for the sampler's set-up; ``/readyz`` answers
503 until maps and policies are loaded. A policy loads on the GPU when there is one.

An act request carries the last ``obs_horizon`` observations (``GET /v1/policies`` gives each policy's dims and
horizons), the sampler (``ddim``, the default, or ``ddpm``), DDIM's step count and an optional noise seed; the
answer is the ``action_horizon`` actions to execute from the present step on, then ask again (Diffusion Policy's
receding horizon, as ``policy.runner`` evaluates in process), with ``server_timing``. This module only checks the
request against the policy (shape 422 ``bad_observations``, finite float32 values, sampler options
``invalid_request``) and hands it to :meth:`policy.diffusion.DiffusionPolicy.predict_action` in a worker thread,
never on the event loop. Requests share the localisation routes' limits: the ``max_concurrency`` admission slots
(503 ``overloaded`` with Retry-After beyond them), ``request_timeout_seconds`` (504 ``timeout``),
``max_body_bytes`` (413 ``body_too_large``) and the API keys (401 ``unauthorized``). One policy acts for one
request at a time: its cached schedulers and networks are shared state, and on the CPU one chunk already uses
every torch thread (``torch_threads``), so concurrent chunks would only slow each other; ``queue_ms`` is the wait.

WebSocket protocol::

    connect  ws://HOST/v1/policies/{name}/stream
             header X-API-Key, or query parameter api_key where the client cannot set headers
    client   text message: one JSON act request (the body of POST /v1/policies/{name}/act)
    server   text message: one JSON object per client message, in order: an ActionChunk (the HTTP answer's
             schema) or {"error": {"code": ..., "message": ...}} with the HTTP endpoint's codes

As for the map stream (:mod:`server.stream`), the handshake is always accepted, so that a refused client learns
why: an error message, then a close with code 4000 + the HTTP status (``unauthorized`` 4401, ``unknown_policy``
4404, ``load_failed`` 4503), or 1013 for ``not_ready`` (try again later). Per-message errors keep the connection
open: ``invalid_request`` (not JSON, or not an act request), ``bad_observations``, ``unsupported_message`` (a
binary message), ``overloaded``, ``timeout``, ``policy_failed`` (the policy gave non-finite actions). A message
over ``max_body_bytes`` gets ``body_too_large`` and close 1009; an unexpected failure ``internal`` and close 1011.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import numpy as np
import torch
from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from server.app import (
    Admission,
    ServiceState,
    StateDep,
    api_key_accepted,
    require_api_key,
)
from server.errors import ErrorResponse, ServiceError, responses
from server.maps import MapStoreError, check_name
from server.schemas import ActionChunk, ActRequest, PolicyInfo, PolicyList, PolicyTiming
from server.stream import answer_each_message, send_error
from vpr.errors import SpikebotError

if TYPE_CHECKING:  # policy.* imports norse and diffusers: only a service with a policy store pays for them
    from policy.diffusion import DiffusionPolicy

log = logging.getLogger(__name__)

POLICY_FILE = "policy.json"
ENDS_STREAM = {"body_too_large"}  # message errors after which the stream closes; others leave it open


class PolicyStoreError(SpikebotError):
    """The policy store is not a folder."""


class LoadedPolicy:
    """A policy ready to act, with its description. :meth:`act` serialises calls (see the module docstring)."""

    def __init__(self, name: str, policy: DiffusionPolicy, checkpoint: Path, metadata: dict[str, Any]):
        self.name, self.policy, self.checkpoint = name, policy, checkpoint
        net, diffusion = policy.network_config, policy.config
        step = metadata.get("step")
        self.info = PolicyInfo(
            name=name, task=metadata.get("task"), model=net.kind, step=int(step) if step is not None else None,
            obs_dim=net.obs_dim, action_dim=net.action_dim, obs_horizon=net.obs_horizon,
            pred_horizon=net.pred_horizon, action_horizon=diffusion.action_horizon, sampler=diffusion.sampler,
            inference_steps=diffusion.num_inference_steps, num_train_timesteps=diffusion.num_train_timesteps)
        self._lock = threading.Lock()

    def act(self, observations: np.ndarray, sampler: str, steps: int | None,
            seed: int | None) -> tuple[np.ndarray, float, float]:
        """(action_horizon, action_dim) float32 actions for (obs_horizon, obs_dim) observations, the seconds spent
        waiting for the policy and the seconds spent denoising. Blocks: call it from a worker thread."""
        queued = time.perf_counter()
        with self._lock:
            started = time.perf_counter()
            generator = None if seed is None else torch.Generator(device=self.policy.device).manual_seed(seed)
            actions = self.policy.predict_action(observations, sampler=sampler, steps=steps, generator=generator)
            finished = time.perf_counter()
        if not np.isfinite(actions).all():
            log.error("policy %s (%s) gave non-finite actions", self.name, self.checkpoint)
            raise ServiceError(500, "policy_failed", f"policy {self.name!r} gave non-finite actions")
        return actions, started - queued, finished - started


def policy_folders(store: Path) -> dict[str, Path]:
    """name -> checkpoint folder of every policy in ``store`` (the layout of the module docstring)."""
    from policy.workspace import latest_checkpoint

    found = {}
    for folder in sorted(store.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            check_name(folder.name)
        except MapStoreError:
            log.warning("policy store: %s is not a valid name (letters, digits, '_', '-', '.'); skipped", folder)
            continue
        checkpoint = folder if (folder / POLICY_FILE).is_file() else latest_checkpoint(folder)
        if checkpoint is None:
            log.warning("policy store: %s holds no %s and no run checkpoints; skipped", folder, POLICY_FILE)
            continue
        found[folder.name] = checkpoint
    return found


def load_policy(name: str, checkpoint: Path) -> LoadedPolicy:
    """The checkpoint's policy (on the GPU when there is one), warmed up by one chunk on zero observations."""
    from policy.diffusion import DiffusionPolicy

    policy = DiffusionPolicy.load(checkpoint)
    metadata = json.loads((checkpoint / POLICY_FILE).read_text()).get("metadata") or {}
    loaded = LoadedPolicy(name, policy, checkpoint, metadata)
    info = loaded.info
    loaded.act(np.zeros((info.obs_horizon, info.obs_dim), np.float32), "ddim", None, 0)
    return loaded


class PolicyRegistry:
    """The policies of the store, loaded once (:meth:`load`, in a worker thread after startup), and their metrics
    in the app's Prometheus registry."""

    def __init__(self, store: Path | None, metrics: CollectorRegistry):
        self.store = store
        self.policies: dict[str, LoadedPolicy] = {}
        self.ready = store is None
        self.load_error: str | None = None
        self.inference = Histogram("spikebot_policy_inference_seconds", "Denoising one action chunk", ["policy"],
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                   registry=metrics)
        self.stream_messages = Counter("spikebot_policy_stream_messages", "WebSocket policy stream messages by "
                                       "outcome (ok or error code)", ["outcome"], registry=metrics)

    def load(self) -> None:
        if self.store is None:
            return
        try:
            if not self.store.is_dir():
                raise PolicyStoreError(f"the policy store {self.store} is not a folder")
            policies = {}
            for name, checkpoint in policy_folders(self.store).items():
                started = time.perf_counter()
                policies[name] = loaded = load_policy(name, checkpoint)
                log.info("policy %s (%s, %s) loaded from %s in %.1f s", name, loaded.info.model, loaded.info.task,
                         checkpoint, time.perf_counter() - started)
            self.policies = policies
            self.ready = True
        except Exception as error:  # reported by /readyz and every policy route; the process stays up for diagnosis
            log.exception("loading policies failed")
            self.load_error = f"{type(error).__name__}: {error}"

    def check_ready(self) -> None:
        if self.load_error is not None:
            raise ServiceError(503, "load_failed", self.load_error)
        if not self.ready:
            raise ServiceError(503, "not_ready", "policies are still loading", {"Retry-After": "1"})

    def get(self, name: str) -> LoadedPolicy:
        self.check_ready()
        loaded = self.policies.get(name)
        if loaded is None:
            raise ServiceError(404, "unknown_policy", f"no policy {name!r}; policies: {', '.join(self.policies) or 'none'}")
        return loaded


def observations_of(loaded: LoadedPolicy, body: ActRequest) -> np.ndarray:
    """The request's observations as (obs_horizon, obs_dim) float32, or 422 ``bad_observations``."""
    info, rows = loaded.info, body.observations
    if len(rows) != info.obs_horizon or any(len(row) != info.obs_dim for row in rows):
        widths = ", ".join(str(width) for width in sorted({len(row) for row in rows})) or "none"
        raise ServiceError(422, "bad_observations", f"policy {info.name!r} takes {info.obs_horizon} observations of "
                           f"{info.obs_dim} numbers (oldest first); got {len(rows)} of {widths}")
    with np.errstate(over="ignore"):  # magnitudes beyond float32 become inf, refused below
        observations = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(observations).all():
        raise ServiceError(422, "bad_observations", "observations must be finite float32 numbers (no NaN, Infinity "
                           "or magnitude over 3.4e38)")
    return observations


def denoising_steps(loaded: LoadedPolicy, body: ActRequest) -> int | None:
    """DDIM's step count (the policy's own when not given; None for DDPM, which runs every training step)."""
    info = loaded.info
    if body.sampler == "ddpm":
        if body.inference_steps is not None:
            raise ServiceError(422, "invalid_request", f"inference_steps applies to ddim; ddpm runs every training "
                               f"step ({info.num_train_timesteps})")
        return None
    steps = body.inference_steps or info.inference_steps
    if steps > info.num_train_timesteps:
        raise ServiceError(422, "invalid_request", f"inference_steps must be at most {info.num_train_timesteps} "
                           f"(policy {info.name!r} was trained on {info.num_train_timesteps} diffusion steps)")
    return steps


def act_admitted(loaded: LoadedPolicy, admission: Admission, observations: np.ndarray, sampler: str,
                 steps: int | None, seed: int | None) -> tuple[np.ndarray, float, float] | None:
    """Runs in a worker thread: :meth:`LoadedPolicy.act`, then gives the admission back (None, doing nothing, when
    the request was abandoned before the thread started)."""
    if not admission.start():
        return None
    try:
        return loaded.act(observations, sampler, steps, seed)
    finally:
        admission.release()


async def act(state: ServiceState, policies: PolicyRegistry, loaded: LoadedPolicy, body: ActRequest) -> ActionChunk:
    """One act request's answer, for the HTTP route and the WebSocket alike; raises the ServiceError it gets."""
    settings = state.settings
    observations = observations_of(loaded, body)
    steps = denoising_steps(loaded, body)
    started = time.perf_counter()
    if not state.slots.acquire(blocking=False):
        state.metrics.rejected.inc()
        raise ServiceError(503, "overloaded", f"{settings.max_concurrency} requests admitted (queued or running); "
                           "retry later", {"Retry-After": str(settings.retry_after_seconds)})
    admission = Admission(state)
    # the worker gives the slot back when it finishes, even after a timeout abandons it
    try:
        with anyio.fail_after(settings.request_timeout_seconds):
            outcome = await anyio.to_thread.run_sync(act_admitted, loaded, admission, observations, body.sampler,
                                                     steps, body.seed, abandon_on_cancel=True)
    except TimeoutError as error:
        raise ServiceError(504, "timeout", f"acting took over {settings.request_timeout_seconds} s") from error
    finally:
        admission.release(only_if_not_started=True)
    actions, queue_s, inference_s = outcome  # None only for a worker started after this await was abandoned
    policies.inference.labels(loaded.name).observe(inference_s)
    return ActionChunk(actions=actions.tolist(), sampler=body.sampler,
                       inference_steps=steps if steps is not None else loaded.info.num_train_timesteps,
                       server_timing=PolicyTiming(queue_ms=queue_s * 1e3, inference_ms=inference_s * 1e3,
                                                  total_ms=(time.perf_counter() - started) * 1e3))


def validation_details(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()) or "invalid request"


async def act_on_message(state: ServiceState, policies: PolicyRegistry, loaded: LoadedPolicy,
                         text: str | None) -> ActionChunk:
    """One WebSocket message's answer; raises the ServiceError the HTTP route would give for the same body."""
    if text is None:
        raise ServiceError(415, "unsupported_message", "send each act request as a text message holding JSON")
    size = len(text.encode())
    if size > state.settings.max_body_bytes:
        raise ServiceError(413, "body_too_large", f"message of {size} bytes exceeds {state.settings.max_body_bytes} bytes")
    try:  # json.loads, as the HTTP route parses bodies: NaN and Infinity get the same bad_observations
        body = ActRequest.model_validate(json.loads(text))
    except json.JSONDecodeError as error:
        raise ServiceError(422, "invalid_request", f"message is not JSON: {error}") from error
    except ValidationError as error:
        raise ServiceError(422, "invalid_request", validation_details(error)) from error
    return await act(state, policies, loaded, body)


async def serve_messages(websocket: WebSocket, state: ServiceState, policies: PolicyRegistry,
                         loaded: LoadedPolicy) -> None:
    """Answer every message in order until the client leaves or an error ends the stream."""
    await answer_each_message(
        websocket, lambda message: act_on_message(state, policies, loaded, message.get("text")),
        policies.stream_messages, ENDS_STREAM, f"policy stream on {loaded.name}")


async def get_policies(request: Request) -> PolicyRegistry:
    return request.app.state.policies


PoliciesDep = Annotated[PolicyRegistry, Depends(get_policies)]

DESCRIBED = {404: "Unknown policy (unknown_policy)", 413: "Body over max_body_bytes (body_too_large)",
             422: "Observations of the wrong shape or not finite (bad_observations), or invalid parameters "
                  "(invalid_request)",
             500: "The policy gave non-finite actions (policy_failed)",
             503: "Not ready (not_ready), loading failed (load_failed) or busy (overloaded, Retry-After set)",
             504: "Acting took longer than request_timeout_seconds (timeout)"}


def _responses(*statuses: int) -> dict[int | str, dict]:
    return {**responses(*statuses),
            **{s: {"model": ErrorResponse, "description": DESCRIBED[s]} for s in statuses if s in DESCRIBED}}


def build_policies_router() -> APIRouter:
    router = APIRouter(prefix="/v1")
    keyed = [Depends(require_api_key)]  # on the HTTP routes: the WebSocket route checks keys itself

    @router.get("/policies", response_model=PolicyList, dependencies=keyed, responses=_responses(401, 503))
    def list_policies(policies: PoliciesDep) -> PolicyList:
        policies.check_ready()
        return PolicyList(policies=[loaded.info for loaded in policies.policies.values()])

    @router.post("/policies/{name}/act", response_model=ActionChunk, dependencies=keyed,
                 responses=_responses(400, 401, 404, 413, 422, 500, 503, 504))
    async def act_route(name: str, body: ActRequest, state: StateDep, policies: PoliciesDep) -> ActionChunk:
        """The next action_horizon actions of policy ``name`` for its last obs_horizon observations."""
        return await act(state, policies, policies.get(name), body)

    @router.websocket("/policies/{name}/stream")
    async def stream(websocket: WebSocket, name: str) -> None:
        state: ServiceState = websocket.app.state.service
        policies: PolicyRegistry = websocket.app.state.policies
        await websocket.accept()
        try:
            try:
                header_key = websocket.headers.get("x-api-key")
                given = header_key if header_key is not None else websocket.query_params.get("api_key")
                if not api_key_accepted(state.settings.api_keys, given):
                    raise ServiceError(401, "unauthorized",
                                       "missing or invalid X-API-Key header (or api_key query parameter)")
                loaded = policies.get(name)
            except ServiceError as error:
                await send_error(websocket, error, close=True)
                return
            await serve_messages(websocket, state, policies, loaded)
        except WebSocketDisconnect:
            pass

    return router
