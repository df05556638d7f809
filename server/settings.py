"""Service settings: typed, read from ``SPIKEBOT_*`` environment variables or given by the ``serve`` command."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``0.0.0.0`` and ``::`` do not)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class ServiceSettings(BaseSettings):
    """Everything the localisation service is configured by; each field is also ``SPIKEBOT_<FIELD>``.

    ``api_keys`` (``SPIKEBOT_API_KEYS='["k1","k2"]'``) is required whenever ``host`` is not a loopback address:
    the service refuses to start exposed without authentication.
    """

    model_config = SettingsConfigDict(env_prefix="SPIKEBOT_", frozen=True, extra="forbid")

    map_store: Path | None = Field(None, description="Folder of maps (<store>/<name>/service.json) served at startup.")
    default_map: str | None = Field(None, description="Map used by sessions created without a map name.")
    policy_store: Path | None = Field(
        None, description="Folder of trained diffusion policies served at startup: <store>/<name>/ is a checkpoint "
        "(policy.json) or a training run folder (its latest checkpoint).")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list, description="Accepted X-API-Key values; empty = no auth.")
    max_body_bytes: int = Field(8 * 2**20, gt=0, description="Larger request bodies get 413 body_too_large.")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="Larger images get 413 image_too_large.")
    max_batch: int = Field(
        16, ge=1, description="Most images one call of a map's method describes (micro-batching, server/batching.py). "
        "A map's cost is reading it once per call (the Nordland spiking map: 8 ms for 1 image, 32 ms for 16, 58 ms "
        "for 32 on 2 cores): 16 already gives 2 ms an image, and a larger batch mainly lengthens each batch.")
    warm_up: bool = Field(
        True, description="Before a map is served, describe a blank frame in batches of every size up to max_batch, "
        "so that the first robots do not pay for building the method's kernels (the Nordland spiking map: under a "
        "second; a CNN map: a few seconds). Off in tests that count the method's calls.")
    max_batch_wait_ms: float = Field(
        2.0, ge=0, description="How long a request that finds its map idle waits for others to share its batch. Under "
        "load batches fill while the previous one runs, without waiting; the wait only pairs up near-simultaneous "
        "requests on an idle map, and costs a lone request at most this much. 0: never wait.")
    max_concurrency: int = Field(
        default_factory=lambda data: 2 * data.get("max_batch", 16), ge=1,
        description="Localisations admitted at once (decoding, queued for their map's batch, in it, or sequence "
        "matching); more get 503 + Retry-After at once. Defaults to 2 x max_batch: one full batch running and one "
        "filling. Without batching every request was a separate CPU-bound call and this followed the core count; "
        "with it, admitted requests share calls, and a request admitted beyond two full batches would wait longer "
        "than two batch times, when a prompt 503 serves a robot better than a late answer.")
    torch_threads: int = Field(
        default_factory=lambda: available_cores(), ge=1,
        description="torch's intra-op threads (torch.set_num_threads at startup); each map's batcher is the only "
        "thread that runs its method. Defaults to the usable cores: requests wait on the event loop without threads "
        "of their own, and at 20 robots x 10 Hz on 2 cores two threads halved the Nordland spiking map's batch time "
        "and lowered p50 (docs/benchmarks.md).")
    retry_after_seconds: int = Field(1, ge=0)
    max_top_k: int = Field(50, ge=1)
    max_sessions: int = Field(1000, ge=1)
    max_sequence_length: int = Field(100, ge=1)
    session_idle_seconds: float = Field(300.0, gt=0, description="Sessions unused this long are forgotten.")
    request_timeout_seconds: float = Field(10.0, gt=0, description="Longer localisations get 504 timeout.")
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="uvicorn's timeout_graceful_shutdown.")
    map_build_workers: int = Field(
        1, ge=1, description="Map builds (POST /v1/maps) run at once; later ones wait in a queue. Builds are "
        "CPU-heavy: keep this low so that localisation keeps its cores.")
    max_queued_builds: int = Field(4, ge=0, description="Builds waiting for a worker; more get 503 too_many_jobs.")
    max_upload_images: int = Field(5000, ge=1, description="Reference images one POST /v1/maps may upload.")
    max_upload_bytes: int = Field(
        512 * 2**20, gt=0, description="Body limit of POST /v1/maps (uploaded reference images; spooled to disk); "
        "other requests keep max_body_bytes.")
    max_finished_jobs: int = Field(100, ge=1, description="Finished jobs remembered (in memory: forgotten on restart).")
    event_flow_model: Path | None = Field(
        None, description="A saved flow model folder (spikebot events flow-train): /v1/events/stream's 'flow' "
        "processor. Loaded at startup; a missing or corrupt folder stops the service.")
    event_action_model: Path | None = Field(
        None, description="A saved action model folder (spikebot events action-train): /v1/events/stream's "
        "'action' processor. Loaded at startup; a missing or corrupt folder stops the service.")
    event_processors: list[str] = Field(
        default_factory=lambda data: ["stats"] + ["flow"] * (data.get("event_flow_model") is not None)
        + ["action"] * (data.get("event_action_model") is not None),
        description="What /v1/events/stream runs on each 10 ms bin of event time, by name "
        "(server.event_stream.PROCESSORS): 'stats' is always there, 'flow' and 'action' when event_flow_model and "
        "event_action_model name their models. Defaults to all of them. An unknown or unavailable name stops the "
        "service at startup, not a client later.")
    max_event_chunk_bytes: int = Field(
        4 * 2**20, gt=0, description="Event-stream messages over this get body_too_large and close 1009.")
    max_event_chunk_events: int = Field(
        1_000_000, gt=0, description="Event chunks declaring more events get too_many_events and close 1009. It "
        "also bounds what a zstd chunk may inflate to (at most 14 bytes an event) before it is inflated, and the "
        "events one 10 ms bin may gather (10**8 events/s by default), so a stream's memory is bounded.")
    event_queue_chunks: int = Field(
        8, ge=1, description="Chunks an event stream holds waiting for processing. A chunk that finds them all "
        "taken is refused (overloaded, naming its sequence number): the client resends it or lets it go.")
    max_event_streams: int = Field(16, ge=1, description="Event streams open at once; more get too_many_streams "
                                   "and close 1013 (try again later).")

    @model_validator(mode="after")
    def _keys_when_exposed(self) -> ServiceSettings:
        if not is_loopback(self.host) and not self.api_keys:
            raise ValueError(
                f"host {self.host!r} is not a loopback address: set at least one API key "
                "(--api-key or SPIKEBOT_API_KEYS) before exposing the service"
            )
        if any(not key for key in self.api_keys):
            raise ValueError("API keys must not be empty strings")
        return self
