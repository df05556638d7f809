"""Request and response bodies: the OpenAPI document is the API reference."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class Status(BaseModel):
    status: str
    maps: list[str] = []
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
