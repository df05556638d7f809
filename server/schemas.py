"""Request and response bodies: the OpenAPI document is the API reference."""

from __future__ import annotations

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
    describe_ms: float = Field(description="The method's distance computation (describe + compare to the map).")
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
