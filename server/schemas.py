"""Request and response bodies: the OpenAPI document is the API reference."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Status(BaseModel):
    status: str
    maps: list[str] = []
    policies: list[str] = []
    detail: str | None = None


class MapInfo(BaseModel):
    name: str
    method: str
    n_places: int


class MapList(BaseModel):
    maps: list[MapInfo]


class Match(BaseModel):
    place: int
    distance: float


class ServerTiming(BaseModel):
    decode_ms: float
    queue_ms: float = Field(0.0, description="Waiting for the map's next batch to start (part of describe_ms).")
    describe_ms: float = Field(description="The method's distance computation (describe + compare to the map), "
                               "from joining the map's batch queue to the row: includes queue_ms and the whole batch.")
    match_ms: float = Field(description="Sequence matching and ranking.")
    total_ms: float


class Localization(BaseModel):
    place: int = Field(description="Index of the best reference place.")
    score: float = Field(description="Negated (sequence-matched) distance of the best place: higher is better.")
    confidence: float = Field(
        description="(second-best - best distance) / (mean - best distance) of the row, clipped to [0, 1]: "
        "0 = a tie, 1 = the best place stands out by the row's whole spread. Scale- and shift-free."
    )
    top_k: list[Match]
    sequence_length: int = Field(description="Query frames the answer spans (1 without a session).")
    session_id: str | None = None
    server_timing: ServerTiming


class SessionCreate(BaseModel):
    map: str | None = Field(None, description="Map name; the service's default map when omitted.")
    sequence_length: int = Field(5, ge=1)
    mode: Literal["diagonal", "seqslam"] = "diagonal"


class SessionInfo(BaseModel):
    id: str
    map: str
    sequence_length: int
    mode: str
    idle_timeout_seconds: float


class MapSourceBody(BaseModel):
    """A registered dataset's traverse to build a map of (``spikebot vpr datasets`` lists them)."""

    dataset: str = Field(description="Registered dataset name (``demo`` needs no data).")
    reference: str | None = Field(None, description="Traverse of the dataset; its default reference when omitted.")
    split: Literal["all", "calibration", "test"] = "all"


class MapBuildOptions(BaseModel):
    name: str = Field(description="Name of the new map: letters, digits, '_', '-', '.', at most 64, not starting "
                      "with '_', '-' or '.'.", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    method: str = Field("sad", description="A place-recognition method: sad, snn-ensemble, snn-modular, netvlad, "
                        "gem, densevlad (sad builds in about a second; spiking methods train for minutes).")
    config: dict | None = Field(None, description="Spiking methods only: an ensemble configuration (the JSON "
                                "`spikebot vpr calibrate` writes); the method's defaults when omitted.")


class MapCreate(MapBuildOptions):
    """Build a map of a registered dataset's traverse (JSON). Uploaded images: multipart/form-data instead."""

    source: MapSourceBody


class Job(BaseModel):
    """A background job. Jobs live in the service's memory: they are forgotten on restart (maps are not)."""

    id: str
    kind: Literal["build_map"]
    map: str = Field(description="The map the job builds.")
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0, le=1, description="Fraction done, 0..1 (1 when succeeded).")
    message: str = Field(description="What the job is doing, or why it failed.")
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None


class JobList(BaseModel):
    jobs: list[Job]


class PolicyInfo(BaseModel):
    """A served diffusion policy: what an act request must carry and what it gets back."""

    name: str
    task: str | None = Field(description="The task it was trained on (its checkpoint's metadata), if recorded.")
    model: str = Field(description="Noise-prediction network: stmdp (spiking) or transformer.")
    step: int | None = Field(description="Training step of the checkpoint, if recorded.")
    obs_dim: int
    action_dim: int
    obs_horizon: int = Field(description="Observations an act request sends (the last ones, oldest first).")
    pred_horizon: int = Field(description="Actions the network predicts per chunk.")
    action_horizon: int = Field(description="Actions an answer holds (executed before asking again).")
    sampler: Literal["ddim", "ddpm"] = Field(description="Sampler the policy was configured with (the request's "
                                             "default is ddim).")
    inference_steps: int = Field(description="DDIM steps used when a request gives none.")
    num_train_timesteps: int = Field(description="Most DDIM steps a request may ask for; DDPM always runs all.")


class PolicyList(BaseModel):
    policies: list[PolicyInfo]


class ActRequest(BaseModel):
    """One action chunk's request (``POST /v1/policies/{name}/act``, or one WebSocket message)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option must not silently fall back to its default

    observations: list[list[float]] = Field(
        description="The last obs_horizon observations, oldest first, each obs_dim finite numbers (GET "
        "/v1/policies). At the start of an episode repeat the first observation, as training windows are padded.")
    sampler: Literal["ddim", "ddpm"] = Field("ddim", description="ddim: inference_steps deterministic steps; ddpm: "
                                             "every training step (slower, stochastic).")
    inference_steps: int | None = Field(None, ge=1, description="DDIM steps, at most the policy's "
                                        "num_train_timesteps; the policy's own when omitted. Not for ddpm.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1,
                             description="Seeds the sampler's noise (0 .. 2^32 - 1): the same request gives the same "
                             "actions on the same device. Omitted: fresh noise every time.")


class PolicyTiming(BaseModel):
    queue_ms: float = Field(description="Waiting for the policy, which acts for one request at a time.")
    inference_ms: float = Field(description="Denoising the chunk (DiffusionPolicy.predict_action).")
    total_ms: float = Field(description="From admission to the answer: queue, inference and the worker thread.")


class ActionChunk(BaseModel):
    actions: list[list[float]] = Field(
        description="action_horizon actions of action_dim numbers, to execute in order from the present step on, "
        "then ask again. The policy's raw output: clip it to the action space before executing.")
    sampler: Literal["ddim", "ddpm"]
    inference_steps: int = Field(description="Denoising steps run.")
    server_timing: PolicyTiming
