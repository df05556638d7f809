"""The WebSocket ``/v1/events/stream``: event-camera chunks in, answers every 10 ms of event time out.

Protocol::

    connect  ws://HOST/v1/events/stream?width=640&height=480&processors=stats
             header X-API-Key, or query parameter api_key (as /v1/maps/{name}/stream)
    client   binary message: one event chunk (format: events.packing's docstring; delta-t, x, y, packed
             polarity, optionally zstd), sequence numbers increasing
    client   text message {"type": "end"}: no more chunks; the server answers what is left and closes (1000)
    server   text messages, JSON objects told apart by "type":
             "gap"      {"seq": 17, "expected": 15, "missing": 2}: chunks 15 and 16 never reached the queue
             <name>     one answer of processor <name> per completed bin or window: "t_start_us", "t_end_us",
                        "seq_first", "seq_last" (the chunks its events came from) and the processor's fields
             "ack"      {"seq": 17, "events": n, "queued": q}: chunk 17 is processed (its answers came first)
             "error"    {"seq": 17 or null, "error": {"code": ..., "message": ...}}
             "summary"  after "end": chunks, events, refused, gaps, missing, bins; then close 1000

Query parameters: ``width`` and ``height`` (both or neither) declare the sensor; without them the first chunk's
header does. Every chunk must then name the same sensor. ``processors`` (comma separated) picks some of the
service's ``event_processors`` (default: all of them).

Bins: event time is cut into 10 ms bins at multiples of 10,000 us; a bin is complete, and answered, when an
event at or after its end arrives (or at "end"). Bins without events are skipped, so a pause in the stream
costs nothing: an answer's ``t_start_us`` says which bin it is. Processors (:class:`BinProcessor`) see the
completed bins in order. ``stats`` answers every bin with its event count, ON and OFF counts and a count image
downsampled to at most 16 cells a side (``cell_px`` pixels square). Two more run trained models, loaded at
startup from the settings ``event_flow_model`` and ``event_action_model`` (without one, asking for its processor
says which setting to set):

- ``flow`` answers every bin with events with the flow a :mod:`events.flow` network estimates, stepped bin by bin
  with its memory: ``u`` and ``v`` (right and down, sensor pixels per 10 ms), each a grid of at most 16 cells a side
  (``cell_px`` pixels square, the cell's mean), ``empty_bins`` (the bins without events stepped before this one,
  at most 20) and ``compute_ms``. Sensors over 128 pixels a side are downsampled for the network by a whole
  factor (``events.flow.streaming``'s docstring: why, and what a pause does to its memory).
- ``action`` answers every window of the model's (0.5 s every 0.25 s by default, from the stream's first 10 ms
  bin; ``t_start_us``/``t_end_us`` are the window's) with at least the model's ``min_events`` events: ``label``,
  ``probabilities`` (class name to probability, summing to 1), ``events`` and ``compute_ms``; a window is answered
  once a bin at or after its end is complete (``events.action.streaming``).

Sequence numbers and back-pressure: a chunk whose sequence number is not above the last queued one is refused
(``sequence_not_increasing``). Chunks wait in a queue of ``event_queue_chunks``; one arriving when the queue is
full is refused with ``overloaded``, naming its sequence number: the newest chunk is dropped, never a queued
one, and a refused chunk's sequence number is not used up, so the client may resend it. A client that goes on
instead sees the hole reported as a "gap" when its next chunk is queued. A queued chunk found malformed
(``bad_chunk``: corrupt body, coordinates outside the sensor, time before the previous chunk's last event, more
than ``max_event_chunk_events`` in one bin) is discarded without closing the stream; its number is used up.
Refusals are counted by code (``spikebot_event_chunks_total``) and per stream (the summary's ``refused``). A
client that keeps at most ``event_queue_chunks`` + 1 chunks unacknowledged, sending the next when an "ack"
arrives, is never refused; ``benchmarks/event_stream_load.py`` streams that way.

Errors that end the stream send the error, then close: ``unauthorized`` 4401, ``invalid_request`` 4422 (bad
query), ``too_many_streams`` 1013 (``max_event_streams`` open: try again later), ``body_too_large`` 1009 (a
message over ``max_event_chunk_bytes``), ``too_many_events`` 1009 (a chunk declaring more than
``max_event_chunk_events``), ``internal`` 1011. Others leave it open: ``bad_chunk``, ``sequence_not_increasing``,
``overloaded``, ``unsupported_message`` (text other than "end"). A message over uvicorn's ``ws_max_size``
(16 MiB by default) is closed with 1009 by uvicorn before it reaches the app, without a message. Decoding, bins
and processors run in a worker thread, never on the event loop: one call per stream at a time, which takes all
the chunks waiting then (so one stream holds at most twice ``event_queue_chunks``: one batch being processed,
one queue filling), and answers them in order.

Chunks are compressed already: per-message deflate would spend CPU for nothing. Clients should not offer it
(``websockets``: ``compression=None``), and a server can refuse it (uvicorn ``ws_per_message_deflate=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio
import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from prometheus_client import CollectorRegistry, Counter, Gauge

from events.action.streaming import ActionState, action_step, for_sensor
from events.action.training import ActionModel
from events.flow.models import FlowNet
from events.flow.streaming import FlowGrid, FlowState, flow_step
from events.flow.training import FlowModel
from events.io import EVENT_DTYPE
from events.packing import ChunkError, ChunkHeader, ChunkTooLargeError, decode_chunk, read_header
from server.app import api_key_accepted
from server.errors import ServiceError
from server.settings import ServiceSettings
from vpr.errors import SpikebotError

log = logging.getLogger(__name__)

BIN_US = 10_000
CLOSE_CODES = {"too_many_streams": 1013, "body_too_large": 1009, "too_many_events": 1009, "internal": 1011}


# ---------------------------------------------------------------------------------------------------------------
# Bins and processors: the pure core, testable with tiny arrays.


@dataclass(frozen=True)
class Bins:
    """Completed 10 ms bins, in time order: bin k holds ``events[bounds[k]:bounds[k + 1]]``, all with
    ``t // BIN_US == index[k]``, which came in chunks ``seq_first[k]`` .. ``seq_last[k]``."""

    events: np.ndarray
    index: np.ndarray
    bounds: np.ndarray
    seq_first: np.ndarray
    seq_last: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def header(self, k: int, bins: int = 1) -> dict[str, Any]:
        """The fields every answer starts with, for bins ``k`` .. ``k + bins - 1``."""
        return {"t_start_us": int(self.index[k]) * BIN_US, "t_end_us": (int(self.index[k + bins - 1]) + 1) * BIN_US,
                "seq_first": int(self.seq_first[k]), "seq_last": int(self.seq_last[k + bins - 1])}


@dataclass(frozen=True)
class Pending:
    """The newest bin, still open: its events and the chunks they came from."""

    events: np.ndarray = field(default_factory=lambda: np.empty(0, EVENT_DTYPE))
    seq_first: int = 0
    seq_last: int = 0


def join_events(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``first`` then ``second`` in one array, copied as pairs of int64: ``np.concatenate`` on the structured
    dtype (``events.io.concatenate_events``) is about 45 times slower, 2 ms for 120,000 events."""
    if not len(first):
        return second
    pairs = [np.ascontiguousarray(part).view(np.int64) for part in (first, second)]
    return np.concatenate(pairs).view(EVENT_DTYPE)


def bin_bounds(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numbers of the non-empty bins of sorted times ``t`` and their offsets (K + 1) into ``t``.

    Few bins (at most one per event): each bin's first event by binary search, without touching every event.
    Otherwise (a jump in time): where ``t // BIN_US`` changes, so a jump of years costs no more than the events.
    """
    if not len(t):
        return np.empty(0, np.int64), np.zeros(1, np.int64)
    first, last = int(t[0]) // BIN_US, int(t[-1]) // BIN_US
    if last - first < len(t):
        index = np.arange(first, last + 1, dtype=np.int64)
        starts = np.searchsorted(t, index * BIN_US)
        sizes = np.diff(starts, append=len(t))
        keep = sizes > 0
        return index[keep], np.append(starts[keep], len(t))
    numbers = t // BIN_US
    starts = np.concatenate([[0], np.flatnonzero(np.diff(numbers)) + 1])
    return numbers[starts], np.append(starts, len(t))


def split_bins(pending: Pending, events: np.ndarray, sequence: int, final: bool = False) -> tuple[Bins, Pending]:
    """The bins that chunk ``sequence`` (``events``, sorted, none before ``pending``'s) completes, and the bin left
    open; ``final`` completes that one too."""
    joined = join_events(pending.events, events)
    index, bounds = bin_bounds(joined["t"])
    complete = len(index) if final else max(len(index) - 1, 0)
    seq_first = np.full(complete, sequence, np.int64)
    seq_last = np.full(complete, sequence, np.int64)
    if len(pending.events) and complete:  # the old open bin is the first one; it may have no new events
        seq_first[0] = pending.seq_first
        if bounds[1] <= len(pending.events):
            seq_last[0] = pending.seq_last
    bins = Bins(joined[: bounds[complete]], index[:complete], bounds[: complete + 1], seq_first, seq_last)
    rest = joined[bounds[complete] :]
    if not len(rest):
        return bins, Pending()
    carried = len(pending.events) and not complete  # the open bin stays the same bin
    first = pending.seq_first if carried else sequence
    last = sequence if len(events) else pending.seq_last
    return bins, Pending(rest, first, last)


class BinProcessor(Protocol):
    """Something run on every completed bin of a stream: the stats, the flow network, the action model below.

    ``push`` gets the bins one chunk completed (possibly none; ``Bins`` of several) and returns its answers, each
    a JSON-ready dict that starts with ``Bins.header`` (time span and chunk sequence numbers) for the bins it
    covers. A processor that answers per window of several bins keeps the bins it still needs. ``push`` runs in
    a worker thread, one call at a time per stream; it is made per stream, so it may keep state.
    """

    name: str

    def push(self, bins: Bins) -> list[dict[str, Any]]: ...


ProcessorFactory = Callable[[int, int], BinProcessor]
"""Makes a stream's processor for its sensor's (width, height)."""


class EventStats:
    """Per bin: event count, ON and OFF counts, and counts on a grid of at most ``side`` cells a side."""

    name = "stats"

    def __init__(self, width: int, height: int, side: int = 16):
        self.cell = -(-max(width, height) // side)
        self.rows, self.cols = -(-height // self.cell), -(-width // self.cell)
        # each coordinate's share of the flat cell number, looked up rather than divided per event
        self.x_part = (np.arange(width) // self.cell).astype(np.int32)
        self.y_part = (np.arange(height) // self.cell * self.cols).astype(np.int32)

    def push(self, bins: Bins) -> list[dict[str, Any]]:
        if not len(bins):
            return []
        events, sizes, cells = bins.events, np.diff(bins.bounds), self.rows * self.cols
        on = np.add.reduceat(events["p"], bins.bounds[:-1], dtype=np.int64)
        flat = np.repeat(np.arange(0, len(bins) * cells, cells, dtype=np.int32), sizes)
        flat += np.take(self.y_part, events["y"])  # np.take: about twice as fast as indexing here
        flat += np.take(self.x_part, events["x"])
        grid = np.bincount(flat, minlength=len(bins) * cells).reshape(len(bins), self.rows, self.cols)
        return [{"type": self.name, **bins.header(k), "events": int(sizes[k]), "on": int(on[k]),
                 "off": int(sizes[k] - on[k]), "cell_px": self.cell, "grid": grid[k].tolist()}
                for k in range(len(bins))]


class FlowProcessor:
    """``flow``: a trained flow network stepped on every bin, its state kept per stream (events.flow.streaming)."""

    name = "flow"

    def __init__(self, network: FlowNet, width: int, height: int):
        self.network, self.grid, self.state = network, FlowGrid.for_sensor(width, height), FlowState()

    def push(self, bins: Bins) -> list[dict[str, Any]]:
        answers = []
        for k in range(len(bins)):
            started = time.perf_counter()
            flow, self.state, empty = flow_step(self.network, self.grid, self.state,
                                                bins.events[bins.bounds[k] : bins.bounds[k + 1]], int(bins.index[k]))
            answers.append({"type": self.name, **bins.header(k), "cell_px": self.grid.cell_px, "u": flow[0].tolist(),
                            "v": flow[1].tolist(), "empty_bins": empty,
                            "compute_ms": round((time.perf_counter() - started) * 1e3, 3)})
        return answers


class ActionProcessor:
    """``action``: a trained action model on every complete window (events.action.streaming). Keeps the chunk
    numbers of the bins its unclassified windows cover, for the answers' ``seq_first`` and ``seq_last``."""

    name = "action"

    def __init__(self, model: ActionModel, width: int, height: int):
        self.model, self.state = for_sensor(model, width, height), ActionState()
        self.seqs = np.empty((3, 0), np.int64)  # bin number, first and last chunk, per bin

    def push(self, bins: Bins) -> list[dict[str, Any]]:
        if not len(bins):
            return []
        windows, self.state = action_step(self.model, self.state, bins.events, (int(bins.index[-1]) + 1) * BIN_US)
        seqs = np.concatenate([self.seqs, [bins.index, bins.seq_first, bins.seq_last]], axis=1)
        answers = []
        for window in windows:
            covered = seqs[:, ((seqs[0] + 1) * BIN_US > window.start_us) & (seqs[0] * BIN_US < window.end_us)]
            answers.append({"type": self.name, "t_start_us": window.start_us, "t_end_us": window.end_us,
                            "seq_first": int(covered[1, 0]), "seq_last": int(covered[2, -1]), "label": window.label,
                            "probabilities": dict(zip(self.model.classes, window.probabilities.tolist())),
                            "events": window.events, "compute_ms": round(window.compute_ms, 3)})
        self.seqs = seqs[:, (seqs[0] + 1) * BIN_US > self.state.next_start]
        return answers


PROCESSORS: dict[str, ProcessorFactory] = {"stats": EventStats}
"""Processors that need no model, by name; the service runs those its ``event_processors`` setting names."""

UNAVAILABLE = {
    "flow": "set event_flow_model (SPIKEBOT_EVENT_FLOW_MODEL, spikebot serve --flow-model) to a saved flow model "
            "folder (spikebot events flow-train)",
    "action": "set event_action_model (SPIKEBOT_EVENT_ACTION_MODEL, spikebot serve --action-model) to a saved "
              "action model folder (spikebot events action-train)",
}
"""Processors that need a model: what to set to have one."""


def model_processors(settings: ServiceSettings) -> dict[str, ProcessorFactory]:
    """The ``flow`` and ``action`` processors of the models the settings name, loaded now (once, shared by every
    stream: each stream keeps only its state); ValueError naming the setting when a model is missing or corrupt."""
    def load(setting: str, loader: Callable[[Any], Any]) -> Any:
        try:
            return loader(getattr(settings, setting))
        except SpikebotError as error:
            raise ValueError(f"{setting}: {error}") from error

    factories: dict[str, ProcessorFactory] = {}
    if settings.event_flow_model is not None:
        factories["flow"] = partial(FlowProcessor, load("event_flow_model", FlowModel.load).network)
    if settings.event_action_model is not None:
        factories["action"] = partial(ActionProcessor, load("event_action_model", ActionModel.load)[0])
    return factories


def processor_factories(names: Sequence[str], models: dict[str, ProcessorFactory] | None = None
                        ) -> dict[str, ProcessorFactory]:
    """The factories for ``names`` among :data:`PROCESSORS` and ``models`` (:func:`model_processors`), or
    ValueError saying which name is unknown or unavailable, and why."""
    available = PROCESSORS | (models or {})
    if not names:
        raise ValueError("no event processors: name at least one (e.g. 'stats')")
    for name in names:
        if name in UNAVAILABLE and name not in available:
            raise ValueError(f"event processor {name!r} is unavailable: {UNAVAILABLE[name]}")
        if name not in available:
            raise ValueError(f"unknown event processor {name!r}; known: {sorted(available)}")
    return {name: available[name] for name in dict.fromkeys(names)}


# ---------------------------------------------------------------------------------------------------------------
# One connection's stream: decoding, time checks and processors, run in a worker thread.


class EventStream:
    """A connection's state after its chunks passed the arrival checks (size, header, sequence, queue room)."""

    def __init__(self, factories: dict[str, ProcessorFactory], max_events: int):
        self.factories, self.max_events = factories, max_events
        self.processors: list[BinProcessor] = []
        self.pending = Pending()
        self.last_t: int | None = None
        self.events = self.bins = 0

    def process(self, header: ChunkHeader, data: bytes) -> list[str]:
        """The JSON answers chunk ``data`` completes; ChunkError (and nothing changes) when it is malformed, or
        when the open bin would hold more than ``max_events`` (a chunk's limit: over 10**8 events/s by default),
        which bounds a stream's memory."""
        _, events = decode_chunk(data, self.max_events)
        if len(events) and self.last_t is not None and events["t"][0] < self.last_t:
            raise ChunkError(f"non-monotonic time: chunk {header.sequence} starts at {int(events['t'][0])} us, "
                             f"before the previous chunk's last event at {self.last_t} us")
        bins, pending = split_bins(self.pending, events, header.sequence)
        if len(pending.events) > self.max_events:
            raise ChunkError(f"chunk {header.sequence} would leave {len(pending.events)} events in the open 10 ms "
                             f"bin, more than the {self.max_events} a bin may hold")
        if not self.processors:
            self.processors = [factory(header.width, header.height) for factory in self.factories.values()]
        if len(events):
            self.last_t = int(events["t"][-1])
        self.events += len(events)
        return self._answer(bins, pending)

    def process_all(self, chunks: list[tuple[ChunkHeader, bytes]]) -> list[list[str] | ChunkError]:
        """:meth:`process` for each chunk in turn: its answers, or the ChunkError that discarded it. The worker
        hands over every chunk waiting, so that under load one thread hop serves several chunks."""
        results: list[list[str] | ChunkError] = []
        for header, data in chunks:
            try:
                results.append(self.process(header, data))
            except ChunkError as error:
                results.append(error)
        return results

    def finish(self) -> list[str]:
        """The answers of the bin still open (the client said "end")."""
        return self._answer(*split_bins(self.pending, np.empty(0, EVENT_DTYPE), self.pending.seq_last, final=True))

    def _answer(self, bins: Bins, pending: Pending) -> list[str]:
        self.pending = pending
        self.bins += len(bins)
        return [json.dumps(answer) for processor in self.processors for answer in processor.push(bins)]


# ---------------------------------------------------------------------------------------------------------------
# The WebSocket shell.


@dataclass
class Connection:
    """What the receiving side of one connection knows: sensor, last queued sequence number, counts."""

    stream: EventStream
    sensor: tuple[int, int] | None
    last_seq: int | None = None
    chunks: int = 0
    refused: int = 0
    gaps: int = 0
    missing: int = 0
    ended: bool = False  # the client sent "end"


def error_message(code: str, message: str, seq: int | None = None) -> str:
    return json.dumps({"type": "error", "seq": seq, "error": {"code": code, "message": message}})


def is_end(text: str | None) -> bool:
    try:
        return json.loads(text or "") == {"type": "end"}
    except ValueError:
        return False


def parse_query(query: dict[str, str], enabled: dict[str, ProcessorFactory]) -> tuple[tuple[int, int] | None,
                                                                                     dict[str, ProcessorFactory]]:
    """The declared sensor (or None) and the processors asked for; ServiceError 422 on a bad query."""
    width, height = query.get("width"), query.get("height")
    if (width is None) != (height is None):
        raise ServiceError(422, "invalid_request", "give both width and height, or neither")
    sensor = None
    if width is not None:
        if not (width.isdigit() and height.isdigit() and 1 <= int(width) <= 0xFFFF and 1 <= int(height) <= 0xFFFF):
            raise ServiceError(422, "invalid_request", f"width and height must be 1..65535, got {width}x{height}")
        sensor = int(width), int(height)
    names = [name for name in query.get("processors", "").split(",") if name] or list(enabled)
    missing = [name for name in names if name not in enabled]
    if missing:
        raise ServiceError(422, "invalid_request", f"processors {missing} are not served here; this service "
                           f"runs {list(enabled)}")
    return sensor, {name: enabled[name] for name in dict.fromkeys(names)}


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.chunks = Counter("spikebot_event_chunks", "Event-stream chunks by outcome (ok, or the error code: "
                              "overloaded counts back-pressure refusals)", ["outcome"], registry=registry)
        self.events = Counter("spikebot_stream_events", "Events decoded from event-stream chunks", registry=registry)
        self.open = Gauge("spikebot_open_event_streams", "Open event streams", registry=registry)


def build_event_stream_router(settings: ServiceSettings, registry: CollectorRegistry) -> APIRouter:
    """The ``/v1/events/stream`` router; ValueError at once when ``settings.event_processors`` names a processor
    that is unknown or not available, or a model setting a missing or corrupt model, so a misconfigured service
    does not start."""
    enabled = processor_factories(settings.event_processors, model_processors(settings))
    metrics = StreamMetrics(registry)
    router = APIRouter(prefix="/v1")
    end = object()
    open_streams = 0

    async def receive_chunks(websocket: WebSocket, conn: Connection, queue: asyncio.Queue, send) -> bool:
        """Check and queue chunks until "end" (True) or the stream must close (False, the close already sent)."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return False
            data = message.get("bytes")
            if data is None:
                if is_end(message.get("text")):
                    conn.ended = True
                    await queue.put(end)
                    return True
                metrics.chunks.labels("unsupported_message").inc()
                await send(error_message("unsupported_message", 'send chunks as binary messages; the only text '
                                         'message is {"type": "end"}'))
                continue
            try:
                if len(data) > settings.max_event_chunk_bytes:
                    raise ServiceError(413, "body_too_large", f"message of {len(data)} bytes exceeds "
                                       f"{settings.max_event_chunk_bytes} bytes")
                header = read_header(data, settings.max_event_chunk_events)
            except (ServiceError, ChunkTooLargeError) as error:
                code = error.code if isinstance(error, ServiceError) else "too_many_events"
                metrics.chunks.labels(code).inc()
                await send(error_message(code, str(error)))
                await websocket.close(CLOSE_CODES[code], code)
                return False
            except ChunkError as error:
                metrics.chunks.labels("bad_chunk").inc()
                await send(error_message("bad_chunk", str(error)))
                continue
            seq = header.sequence
            refusal = None
            if conn.sensor is not None and conn.sensor != (header.width, header.height):
                refusal = "bad_chunk", (f"chunk {seq} is for a {header.width}x{header.height} sensor; this stream's "
                                        f"is {conn.sensor[0]}x{conn.sensor[1]}")
            elif conn.last_seq is not None and seq <= conn.last_seq:
                refusal = "sequence_not_increasing", f"chunk {seq} does not follow chunk {conn.last_seq}; refused"
            elif queue.full():
                conn.refused += 1
                refusal = "overloaded", (f"chunk {seq} refused: {queue.maxsize} chunks already wait to be processed; "
                                         "resend it later or send slower")
            if refusal is not None:
                metrics.chunks.labels(refusal[0]).inc()
                await send(error_message(*refusal, seq=seq))
                continue
            if conn.last_seq is not None and seq > conn.last_seq + 1:
                conn.gaps += 1
                conn.missing += seq - conn.last_seq - 1
                await send(json.dumps({"type": "gap", "seq": seq, "expected": conn.last_seq + 1,
                                       "missing": seq - conn.last_seq - 1}))
            conn.sensor = conn.sensor or (header.width, header.height)
            conn.last_seq = seq
            conn.chunks += 1
            queue.put_nowait((header, data))

    async def process_chunks(websocket: WebSocket, conn: Connection, queue: asyncio.Queue, send) -> None:
        """Process queued chunks in order, off the event loop, all those waiting in one go; after "end", answer the
        rest, summarise, close."""
        stream = conn.stream
        while True:
            batch = [await queue.get()]
            while batch[-1] is not end and not queue.empty():
                batch.append(queue.get_nowait())
            chunks = [item for item in batch if item is not end]
            results = await anyio.to_thread.run_sync(stream.process_all, chunks) if chunks else []
            for k, ((header, _), result) in enumerate(zip(chunks, results)):
                if isinstance(result, ChunkError):
                    metrics.chunks.labels("bad_chunk").inc()
                    await send(error_message("bad_chunk", str(result), seq=header.sequence))
                    continue
                metrics.chunks.labels("ok").inc()
                metrics.events.inc(header.count)
                for answer in result:
                    await send(answer)
                end_waits = conn.ended and batch[-1] is not end  # "end" is in the queue, not a chunk
                waiting = queue.qsize() - end_waits + len(chunks) - k - 1
                await send(json.dumps({"type": "ack", "seq": header.sequence, "events": header.count,
                                       "queued": waiting}))
            if batch[-1] is end:
                for answer in await anyio.to_thread.run_sync(stream.finish):
                    await send(answer)
                await send(json.dumps({"type": "summary", "chunks": conn.chunks, "events": stream.events,
                                       "refused": conn.refused, "gaps": conn.gaps, "missing": conn.missing,
                                       "bins": stream.bins}))
                await websocket.close(1000)
                return

    @router.websocket("/events/stream")
    async def event_stream(websocket: WebSocket) -> None:
        nonlocal open_streams
        await websocket.accept()
        lock = asyncio.Lock()

        async def send(text: str) -> None:  # the receiving and the processing side both answer
            async with lock:
                await websocket.send_text(text)

        query = dict(websocket.query_params)
        try:
            key = websocket.headers.get("x-api-key")
            if not api_key_accepted(settings.api_keys, key if key is not None else query.get("api_key")):
                raise ServiceError(401, "unauthorized", "missing or invalid X-API-Key header (or api_key query "
                                   "parameter)")
            sensor, factories = parse_query(query, enabled)
            if open_streams >= settings.max_event_streams:
                raise ServiceError(503, "too_many_streams", f"{settings.max_event_streams} event streams are open; "
                                   "try again later")
        except ServiceError as error:
            with contextlib.suppress(WebSocketDisconnect):
                await send(error_message(error.code, error.message))
                await websocket.close(CLOSE_CODES.get(error.code, 4000 + error.status), error.code)
            return
        conn = Connection(EventStream(factories, settings.max_event_chunk_events), sensor)
        queue: asyncio.Queue = asyncio.Queue(settings.event_queue_chunks)
        open_streams += 1
        metrics.open.inc()
        receiver = asyncio.create_task(receive_chunks(websocket, conn, queue, send))
        worker = asyncio.create_task(process_chunks(websocket, conn, queue, send))
        try:
            await asyncio.wait((receiver, worker), return_when=asyncio.FIRST_COMPLETED)
            if worker.done():
                worker.result()  # raises what broke it: it only returns after "end"
            elif receiver.result():  # "end": the worker answers the rest, summarises and closes
                await worker
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("event stream failed")
            metrics.chunks.labels("internal").inc()
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client may be gone already
                await send(error_message("internal", "internal server error"))
                await websocket.close(1011, "internal")
        finally:
            receiver.cancel()
            worker.cancel()
            open_streams -= 1
            metrics.open.dec()

    return router
