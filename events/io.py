"""Event files: one canonical event array and the readers that produce it.

The canonical array (:data:`EVENT_DTYPE`) holds one record per event, sorted by time:

====  =======  ==========================================================
t     int64    microseconds (the file's own time origin, not shifted)
x     uint16   column, 0 at the left
y     uint16   row, 0 at the top
p     uint8    polarity: 1 = ON (brightness increase), 0 = OFF
====  =======  ==========================================================

Records are 16 bytes, little-endian and aligned (``t`` at offset 0, ``x`` 8, ``y`` 10, ``p`` 12, 3 bytes of
padding), so a column is a cheap strided view and a byte buffer of events can be reinterpreted without copying.

:func:`read_events` reads a file into an :class:`EventRecording` (events, sensor width and height, format and
what the file said about itself). Formats and their decoders:

==========  =================================  ===============================================================
format      files                              decoder
==========  =================================  ===============================================================
``aedat4``  ``.aedat4`` (iniVation DV)         faery (Rust); cross-checked against ``aedat`` in the tests
``evt2``    ``.raw`` with ``% evt 2.0``        faery; cross-checked against expelliarmus in the tests
``evt3``    ``.raw`` with ``% evt 3.0``        :func:`decode_evt3` here (numpy, OpenEB semantics; see there)
``dat``     ``.dat`` (Prophesee DAT v1/v2)     :func:`decode_dat` here (numpy); cross-checked against expelliarmus
``es``      ``.es`` (Event Stream 2.x)         faery (its author's reference implementation)
``nmnist``  ``.bin`` (N-MNIST, N-Caltech101)   :func:`decode_nmnist` here (numpy)
``npz``     ``.npz`` written by this package   :func:`write_events_npz` / numpy
==========  =================================  ===============================================================

Every failure a file can cause (missing, truncated, garbage, unknown format, coordinates outside the sensor,
timestamps out of order) raises :class:`EventFileError` naming the file; decoders never loop per event in
Python and never wait on input, so a bad file cannot hang a reader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vpr.errors import SpikebotError

EVENT_DTYPE = np.dtype(
    {"names": ["t", "x", "y", "p"], "formats": ["<i8", "<u2", "<u2", "u1"], "offsets": [0, 8, 10, 12], "itemsize": 16}
)

FORMATS = ("aedat4", "evt2", "evt3", "dat", "es", "nmnist", "npz")
_EXTENSIONS = {".aedat4": "aedat4", ".dat": "dat", ".es": "es", ".bin": "nmnist", ".npz": "npz"}
# Share of backward time steps a file may hold before it is called corrupt (smaller disorder is sorted out).
_MAX_DISORDER = 0.01
_HEADER_LIMIT = 1 << 20  # a Prophesee text header longer than this is not a header


class EventFileError(SpikebotError):
    """An event file is missing, truncated, malformed, of an unknown format or inconsistent with its sensor."""


def make_events(t: Any, x: Any, y: Any, p: Any) -> np.ndarray:
    """A canonical event array from four equally long columns (polarity: nonzero = ON)."""
    t, x, y, p = (np.asarray(column).reshape(-1) for column in (t, x, y, p))
    if not len(t) == len(x) == len(y) == len(p):
        raise ValueError(f"event columns differ in length: t {len(t)}, x {len(x)}, y {len(y)}, p {len(p)}")
    events = np.empty(len(t), EVENT_DTYPE)
    events["t"] = t
    events["x"] = x
    events["y"] = y
    events["p"] = p != 0
    return events


def concatenate_events(parts: list[np.ndarray]) -> np.ndarray:
    """Event arrays joined end to end (plain ``np.concatenate`` would drop the dtype's padding)."""
    return np.concatenate(parts, dtype=EVENT_DTYPE) if parts else np.empty(0, EVENT_DTYPE)


@dataclass(frozen=True)
class EventRecording:
    """Events of one recording with the sensor they came from.

    ``metadata`` holds what the file said about itself (header lines, decoder, how the sensor size was found:
    ``sensor_size_source`` is ``header``, ``plugin``, ``format``, ``argument`` or ``inferred`` from the largest
    coordinate).
    """

    events: np.ndarray
    width: int
    height: int
    format: str
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sensor_size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def duration_us(self) -> int:
        return int(self.events["t"][-1] - self.events["t"][0]) if len(self.events) else 0

    @property
    def event_rate(self) -> float:
        """Mean events per second over the recording (0 when it spans no time)."""
        return len(self.events) / (self.duration_us * 1e-6) if self.duration_us > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        t = self.events["t"]
        return {
            "source": self.source,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "events": int(len(self.events)),
            "t_start_us": int(t[0]) if len(t) else None,
            "t_end_us": int(t[-1]) if len(t) else None,
            "duration_us": self.duration_us,
            "event_rate_hz": self.event_rate,
            "on_fraction": float(self.events["p"].mean()) if len(t) else None,
            "sensor_size_source": self.metadata.get("sensor_size_source"),
        }


# ---------------------------------------------------------------------------------------------------------------
# Pure decoders: bytes in, canonical events out.


def parse_prophesee_header(data: bytes) -> tuple[dict[str, str], int]:
    """The ``% key value`` lines at the start of a Prophesee RAW or DAT file, and the offset of the first data byte.

    A ``% end`` line (written by recent Metavision versions) also ends the header.
    """
    header: dict[str, str] = {}
    offset = 0
    while offset < len(data) and data[offset : offset + 1] == b"%":
        end = data.find(b"\n", offset, offset + _HEADER_LIMIT)
        if end < 0:
            raise ValueError("a '%' header line does not end (no newline): not a Prophesee file, or truncated")
        line = data[offset + 1 : end].decode("latin-1").strip()
        offset = end + 1
        if line == "end":
            break
        key, _, value = line.partition(" ")
        if key:
            header[key] = value.strip()
    return header, offset


# Sensor sizes of Prophesee camera plugins whose RAW headers carry no geometry line (older Metavision versions).
_PLUGIN_SIZES = (("gen41", (1280, 720)), ("imx636", (1280, 720)), ("gen31", (640, 480)), ("gen3", (640, 480)),
                 ("genx320", (320, 320)))


def prophesee_geometry(header: Mapping[str, str]) -> tuple[int, int, str] | None:
    """Sensor (width, height, where it was found) from a Prophesee header, or None when it says nothing."""
    if "geometry" in header:
        numbers = re.findall(r"\d+", header["geometry"])
        if len(numbers) >= 2:
            return int(numbers[0]), int(numbers[1]), "header"
    if "format" in header:
        fields = dict(part.partition("=")[::2] for part in header["format"].split(";"))
        if fields.get("width", "").isdigit() and fields.get("height", "").isdigit():
            return int(fields["width"]), int(fields["height"]), "header"
    if header.get("Width", "").isdigit() and header.get("Height", "").isdigit():
        return int(header["Width"]), int(header["Height"]), "header"
    plugin = header.get("plugin_name", "").lower()
    for key, (width, height) in _PLUGIN_SIZES:
        if key in plugin:
            return width, height, "plugin"
    return None


def _last_written(mask: np.ndarray, written: np.ndarray, at: np.ndarray, initial: Any) -> np.ndarray:
    """At each position in ``at``: the entry of ``written`` (one per True of ``mask``, in order) written last at
    or before it, or ``initial`` where none was."""
    if len(written) == 0:
        return np.full(len(at), initial)
    rank = np.cumsum(mask, dtype=np.int32)[at] - 1
    return np.where(rank >= 0, written[np.maximum(rank, 0)], initial)


# For each 12-bit validity mask: its number of set bits and their positions (lowest first).
_MASKS = np.arange(1 << 12)
_MASK_BITS = ((_MASKS[:, None] >> np.arange(12)) & 1).astype(bool)
_MASK_COUNT = _MASK_BITS.sum(axis=1)
_MASK_POSITIONS = np.argsort(~_MASK_BITS, axis=1, kind="stable").astype(np.int64).reshape(-1)  # flat: mask*12 + k


@dataclass(frozen=True)
class Evt3State:
    """Decoder state carried from one block of EVT3 words to the next."""

    y: int = 0
    cd_row: bool = True
    vector_x: int = 0
    vector_polarity: int = 0
    time_high: int = 0
    time_low: int = 0
    loops: int = 0
    started: bool = False  # an EVT_TIME_HIGH word has been seen


def decode_evt3(words: np.ndarray, state: Evt3State = Evt3State()) -> tuple[np.ndarray, Evt3State]:
    """Decode little-endian 16-bit EVT3 words into canonical events (unfiltered) and the state after them.

    Word types (upper 4 bits; Prophesee "EVT 3.0" format specification) and how they are handled:

    - 0x0 ``EVT_ADDR_Y``: row (11 bits) of the following events; 0x1 (``EVT_ADDR_Y`` of non-CD data) drops
      the events that follow until the next 0x0, as OpenEB does.
    - 0x2 ``EVT_ADDR_X``: one event at column (11 bits) with polarity bit 11, at the current row and time.
    - 0x3 ``VECT_BASE_X``: base column (11 bits) and polarity (bit 11) of the vector words that follow.
    - 0x4 ``VECT_12`` / 0x5 ``VECT_8``: one event per set bit i of the 12 (8) bit mask at base + i; each word
      then moves the base by 12 (8).
    - 0x6 ``EVT_TIME_LOW`` / 0x8 ``EVT_TIME_HIGH``: lower / upper 12 bits of the 24-bit microsecond time.
    - 0x7, 0xA, 0xE, 0xF (continued, external trigger, others): carry no CD events and are skipped.

    Time follows OpenEB's reference decoder (``evt3_decoder.h``): words before the first ``EVT_TIME_HIGH`` are
    dropped; a ``EVT_TIME_HIGH`` whose value differs from the previous one clears the low bits; the 24-bit time
    wraps (adding 2**24 us) when ``EVT_TIME_HIGH`` falls by at least 2048; ``EVT_TIME_LOW`` is taken as written,
    so a low word smaller than the previous one moves time back (faery instead keeps time monotonic there, and
    expelliarmus 1.1.12 treats a falling low word as a carry into the high bits, which runs its clock ahead).
    """
    words = np.asarray(words, dtype=np.uint16)
    if not state.started:
        first = np.flatnonzero((words >> 12) == 0x8)
        if len(first) == 0:
            return np.empty(0, EVENT_DTYPE), state
        words = words[first[0] :]
        state = Evt3State(started=True, time_high=int(words[0] & 0x0FFF))
    n = len(words)
    kind = words >> 12
    value = (words & 0x0FFF).astype(np.int64)
    carrier = np.flatnonzero((kind == 0x2) | (kind == 0x4) | (kind == 0x5))

    # Time at each carrier: the (loops, high, low) written last before it.
    is_high = kind == 0x8
    highs = value[is_high]
    previous_high = np.concatenate([[state.time_high], highs[:-1]])
    loops_at_high = state.loops + np.cumsum(previous_high >= 2048 + highs)
    is_low = kind == 0x6
    low_written = is_low.copy()
    low_written[np.flatnonzero(is_high)[highs != previous_high]] = True  # a new high value clears the low bits
    lows = np.where(is_low, value, 0)[low_written]
    high_rank = np.cumsum(is_high, dtype=np.int32)[carrier] - 1
    has_high = high_rank >= 0
    high = np.where(has_high, highs[np.maximum(high_rank, 0)] if len(highs) else 0, state.time_high)
    loops = np.where(has_high, loops_at_high[np.maximum(high_rank, 0)] if len(highs) else 0, state.loops)
    low = _last_written(low_written, lows, carrier, state.time_low)

    # Row and vector base at each carrier.
    is_row = (kind == 0x0) | (kind == 0x1)
    rows = value[is_row] & 0x07FF
    cd_rows = kind[is_row] == 0x0
    row_rank = np.cumsum(is_row, dtype=np.int32)[carrier] - 1
    has_row = row_rank >= 0
    y = np.where(has_row, rows[np.maximum(row_rank, 0)] if len(rows) else 0, state.y)
    cd_row = np.where(has_row, cd_rows[np.maximum(row_rank, 0)] if len(rows) else False, state.cd_row)
    is_base = kind == 0x3
    step = np.where(kind == 0x4, 12, 0) + np.where(kind == 0x5, 8, 0)
    steps_through = np.cumsum(step, dtype=np.int64)
    steps_before = (steps_through - step)[carrier]
    base_at = np.flatnonzero(is_base)
    base_value = value[base_at]
    base_steps = steps_through[base_at]  # a base word has no step of its own
    base_rank = np.cumsum(is_base, dtype=np.int32)[carrier] - 1
    has_base = base_rank >= 0
    base_rank = np.maximum(base_rank, 0)
    if len(base_at):
        vector_x = np.where(has_base, (base_value[base_rank] & 0x07FF) - base_steps[base_rank],
                            state.vector_x) + steps_before
        vector_polarity = np.where(has_base, base_value[base_rank] >> 11, state.vector_polarity)
    else:
        vector_x = state.vector_x + steps_before
        vector_polarity = np.full(len(carrier), state.vector_polarity)

    # Events: single words in place, vector words expanded bit by bit through lookup tables.
    carrier_kind = kind[carrier]
    carrier_value = value[carrier]
    single = carrier_kind == 0x2
    mask = np.where(single, 1, np.where(carrier_kind == 0x4, carrier_value, carrier_value & 0x00FF))
    mask[~cd_row] = 0
    count = _MASK_COUNT[mask]
    first_slot = np.cumsum(count) - count
    events = np.empty(int(count.sum()), EVENT_DTYPE)
    timestamp = (loops << 24) | (high << 12) | low
    x0 = np.where(single, carrier_value & 0x07FF, vector_x)
    polarity = np.where(single, carrier_value >> 11, vector_polarity)
    alone = np.flatnonzero(single & (count > 0))
    vector = np.flatnonzero(~single & (count > 0))
    vector_count = count[vector]
    row = np.repeat(vector, vector_count)
    nth = np.arange(len(row)) - np.repeat(np.cumsum(vector_count) - vector_count, vector_count)
    for index, offset, slot in ((alone, 0, first_slot[alone]),
                                (row, _MASK_POSITIONS[mask[row] * 12 + nth], first_slot[row] + nth)):
        events["t"][slot] = timestamp[index]
        events["x"][slot] = x0[index] + offset
        events["y"][slot] = y[index]
        events["p"][slot] = polarity[index]

    # State after the last word.
    total_steps = int(steps_through[-1]) if n else 0
    if len(base_at):
        end_x = int(base_value[-1] & 0x07FF) + total_steps - int(base_steps[-1])
        end_polarity = int(base_value[-1] >> 11)
    else:
        end_x, end_polarity = state.vector_x + total_steps, state.vector_polarity
    new_state = Evt3State(
        y=int(rows[-1]) if len(rows) else state.y,
        cd_row=bool(cd_rows[-1]) if len(rows) else state.cd_row,
        vector_x=end_x,
        vector_polarity=end_polarity,
        time_high=int(highs[-1]) if len(highs) else state.time_high,
        time_low=int(lows[-1]) if len(lows) else state.time_low,
        loops=int(loops_at_high[-1]) if len(highs) else state.loops,
        started=True,
    )
    return events, new_state


def decode_dat(data: bytes, version: int = 2) -> np.ndarray:
    """Decode the records of a Prophesee DAT file (after its header and the two type/size bytes).

    Each record is a little-endian uint32 time (us) and a uint32 word: version 2 packs x in bits 0-13, y in
    14-27 and polarity in 28-31; version 1 packs x in bits 0-8, y in 9-16 and polarity in bit 17. The 32-bit time
    wraps after 71.6 minutes; each wrap adds 2**32 us.
    """
    if len(data) % 8:
        raise ValueError(f"{len(data)} data bytes are not a whole number of 8-byte records (truncated?)")
    records = np.frombuffer(data, dtype=[("t", "<u4"), ("w", "<u4")])
    word = records["w"]
    if version >= 2:
        x, y, polarity = word & 0x3FFF, (word >> 14) & 0x3FFF, word >> 28
    else:
        x, y, polarity = word & 0x1FF, (word >> 9) & 0xFF, (word >> 17) & 0x1
    if np.any(polarity > 1):
        raise ValueError(f"polarity values other than 0 and 1 ({int(np.sum(polarity > 1))} records): malformed data")
    t = records["t"].astype(np.int64)
    wraps = np.concatenate([[0], np.cumsum(np.diff(t) < -(1 << 31))])
    return make_events(t + (wraps << 32), x, y, polarity)


def decode_nmnist(data: bytes) -> np.ndarray:
    """Decode an N-MNIST / N-Caltech101 ``.bin`` file: 5-byte records, no header.

    Byte 0 is x, byte 1 y, bit 7 of byte 2 the polarity and the remaining 23 bits (byte 2 low 7 bits, bytes 3
    and 4, big-endian) the time in us. A record with y = 240 marks a wrap of the 23-bit counter and carries no
    event; each adds 2**23 us to the records after it. (Orchard's reference reader, copied by tonic, adds 2**13
    there; recordings shorter than 8.4 s, such as every N-MNIST sample, contain no marker, so the two agree.)
    """
    if len(data) % 5:
        raise ValueError(f"{len(data)} bytes are not a whole number of 5-byte records (truncated?)")
    raw = np.frombuffer(data, np.uint8).reshape(-1, 5).astype(np.int64)
    t = ((raw[:, 2] & 0x7F) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    marker = raw[:, 1] == 240
    t = t + (np.cumsum(marker) << 23)
    keep = ~marker
    return make_events(t[keep], raw[keep, 0], raw[keep, 1], raw[keep, 2] >> 7)


# ---------------------------------------------------------------------------------------------------------------
# Readers: a path in, (events, width or None, height or None, metadata) out.

_Decoded = tuple[np.ndarray, int | None, int | None, dict[str, Any]]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise EventFileError(f"{path}: cannot read ({error.strerror or error})") from error


def _faery_events(path: Path, **options: Any) -> tuple[np.ndarray, tuple[int, int], str]:
    import faery  # imported here: it takes ~0.2 s and only these readers need it

    stream = faery.events_stream_from_file(path, **options)
    chunks = list(stream)
    raw = np.concatenate(chunks) if chunks else np.empty(0, faery.EVENTS_DTYPE)
    events = make_events(raw["t"].astype(np.int64), raw["x"], raw["y"], raw["p"])
    return events, tuple(stream.dimensions()), f"faery {faery_version()}"


def faery_version() -> str:
    from importlib.metadata import version

    return version("faery")


def _read_aedat4(path: Path) -> _Decoded:
    with path.open("rb") as handle:
        magic = handle.read(14)
    if not magic.startswith(b"#!AER-DAT4"):
        raise EventFileError(f"{path}: not an AEDAT4 file (it does not start with '#!AER-DAT4')")
    events, (width, height), decoder = _faery_events(path, file_type="aedat")
    return events, width, height, {"decoder": decoder, "sensor_size_source": "header"}


def _read_es(path: Path) -> _Decoded:
    with path.open("rb") as handle:
        magic = handle.read(12)
    if magic != b"Event Stream":
        raise EventFileError(f"{path}: not an Event Stream file (it does not start with 'Event Stream')")
    events, (width, height), decoder = _faery_events(path, file_type="es")
    return events, width, height, {"decoder": decoder, "sensor_size_source": "header"}


def _read_evt2(path: Path) -> _Decoded:
    with path.open("rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    header, offset = parse_prophesee_header(head)
    data_bytes = path.stat().st_size - offset
    if data_bytes % 4:
        raise EventFileError(
            f"{path}: {data_bytes} data bytes are not a whole number of 32-bit EVT2 words (truncated?)"
        )
    geometry = prophesee_geometry(header)
    # EVT2 coordinates have 11 bits: a 2048 x 2048 fallback lets the largest coordinate show the sensor size.
    fallback = geometry[:2] if geometry else (2048, 2048)
    events, _, decoder = _faery_events(path, file_type="evt", version_fallback="evt2", dimensions_fallback=fallback)
    metadata = {"decoder": decoder, "header": header}
    if geometry:
        metadata["sensor_size_source"] = geometry[2]
        return events, geometry[0], geometry[1], metadata
    return events, None, None, metadata


def _read_evt3(path: Path) -> _Decoded:
    raw = _read_bytes(path)
    header, offset = parse_prophesee_header(raw[:_HEADER_LIMIT])
    if (len(raw) - offset) % 2:
        raise EventFileError(
            f"{path}: {len(raw) - offset} data bytes are not a whole number of 16-bit EVT3 words (truncated?)"
        )
    words = np.frombuffer(raw, "<u2", count=(len(raw) - offset) // 2, offset=offset)
    if len(words) and not np.any((words >> 12) == 0x8):
        raise EventFileError(f"{path}: {len(words)} data words but no EVT_TIME_HIGH word: not EVT3 data")
    state = Evt3State()
    block = 1 << 16  # keeps the temporaries cache-sized: ~10 M events/s here against ~7 M for 1 M-word blocks
    parts = []
    for start in range(0, len(words), block):
        part, state = decode_evt3(words[start : start + block], state)
        parts.append(part)
    events = concatenate_events(parts)
    metadata: dict[str, Any] = {"decoder": "spikebot numpy EVT3 (OpenEB semantics)", "header": header}
    geometry = prophesee_geometry(header)
    if not geometry:
        return events, None, None, metadata
    width, height, source = geometry
    inside = (events["x"] < width) & (events["y"] < height)
    if not np.all(inside):  # OpenEB drops these too (rows beyond the sensor are not CD data)
        metadata["dropped_outside_sensor"] = int(np.sum(~inside))
        events = events[inside]
    metadata["sensor_size_source"] = source
    return events, width, height, metadata


def _read_dat(path: Path) -> _Decoded:
    raw = _read_bytes(path)
    header, offset = parse_prophesee_header(raw[:_HEADER_LIMIT])
    if len(raw) - offset < 2:
        raise EventFileError(f"{path}: the DAT header is not followed by the event type and size bytes (truncated?)")
    event_type, event_size = raw[offset], raw[offset + 1]
    if event_type not in (0x00, 0x0C):
        raise EventFileError(f"{path}: DAT event type 0x{event_type:02x} is not CD or 2D events")
    if event_size != 8:
        raise EventFileError(f"{path}: DAT event size {event_size} (expected 8 bytes)")
    version = int(header.get("Version", "2")) if header.get("Version", "2").isdigit() else 2
    try:
        events = decode_dat(raw[offset + 2 :], version=version)
    except ValueError as error:
        raise EventFileError(f"{path}: {error}") from error
    metadata: dict[str, Any] = {"decoder": "spikebot numpy DAT", "header": header, "dat_version": version}
    geometry = prophesee_geometry(header)
    if geometry:
        metadata["sensor_size_source"] = geometry[2]
        return events, geometry[0], geometry[1], metadata
    return events, None, None, metadata


def _read_nmnist(path: Path) -> _Decoded:
    try:
        events = decode_nmnist(_read_bytes(path))
    except ValueError as error:
        raise EventFileError(f"{path}: {error}") from error
    metadata: dict[str, Any] = {"decoder": "spikebot numpy N-MNIST"}
    if len(events) == 0 or (events["x"].max() < 34 and events["y"].max() < 34):
        metadata["sensor_size_source"] = "format"
        return events, 34, 34, metadata
    return events, None, None, metadata  # N-Caltech101 and other ATIS recordings: size from the data


def _read_npz(path: Path) -> _Decoded:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"events", "width", "height"} - set(archive.files)
            if missing:
                raise EventFileError(f"{path}: not an events archive (missing {', '.join(sorted(missing))})")
            stored = archive["events"]
            width, height = int(archive["width"]), int(archive["height"])
            metadata = json.loads(str(archive["metadata"])) if "metadata" in archive.files else {}
    except (ValueError, OSError, EOFError) as error:  # numpy's errors for corrupt or truncated archives
        raise EventFileError(f"{path}: not a readable .npz archive ({error})") from error
    if stored.dtype.names is None or not {"t", "x", "y", "p"} <= set(stored.dtype.names):
        raise EventFileError(f"{path}: 'events' is not an event array (fields t, x, y, p)")
    metadata.setdefault("sensor_size_source", "header")
    metadata.setdefault("decoder", "numpy .npz")
    return make_events(stored["t"], stored["x"], stored["y"], stored["p"]), width, height, metadata


_READERS: dict[str, Callable[[Path], _Decoded]] = {
    "aedat4": _read_aedat4,
    "evt2": _read_evt2,
    "evt3": _read_evt3,
    "dat": _read_dat,
    "es": _read_es,
    "nmnist": _read_nmnist,
    "npz": _read_npz,
}


def detect_format(path: str | Path) -> str:
    """The format of ``path``: AEDAT4 and Event Stream files by their magic bytes, the rest by extension; a
    ``.raw`` file (or one of unknown extension with a ``%`` header) by its ``% evt`` or ``% format`` line."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    if head.startswith(b"#!AER-DAT4"):
        return "aedat4"
    if head.startswith(b"Event Stream"):
        return "es"
    suffix = path.suffix.lower()
    if suffix == ".raw" or (suffix not in _EXTENSIONS and head.startswith(b"% ")):
        try:
            header, _ = parse_prophesee_header(head)
        except ValueError:
            header = {}
        version = header.get("evt", "") or header.get("format", "").split(";")[0].upper().removeprefix("EVT")
        if version in ("2.0", "2"):
            return "evt2"
        if version in ("3.0", "3"):
            return "evt3"
        if version:
            raise EventFileError(f"{path}: EVT version {version!r} is not supported (evt2 and evt3 are)")
        raise EventFileError(f"{path}: a RAW file without an '% evt' header line; pass format='evt2' or 'evt3'")
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise EventFileError(
        f"{path}: unknown event file type {suffix or '(no extension)'!r}; known: .aedat4, .raw (EVT2/EVT3), .dat, "
        ".es, .bin (N-MNIST), .npz, or pass a format"
    )


def _sorted_in_time(events: np.ndarray, path: Path, metadata: dict[str, Any]) -> np.ndarray:
    if len(events) < 2:
        return events
    backward = np.flatnonzero(np.diff(events["t"]) < 0)
    if len(backward) == 0:
        return events
    if len(backward) > _MAX_DISORDER * len(events):
        raise EventFileError(
            f"{path}: time goes backwards at {len(backward)} of {len(events)} events (first at event "
            f"{backward[0] + 1}): corrupt data or the wrong format"
        )
    metadata["reordered_events"] = int(len(backward))
    return events[np.argsort(events["t"], kind="stable")]


def read_events(
    path: str | Path, format: str | None = None, sensor_size: tuple[int, int] | None = None
) -> EventRecording:
    """Read an event file into an :class:`EventRecording` sorted by time.

    ``format`` (one of :data:`FORMATS`) overrides detection; ``sensor_size`` (width, height) overrides or supplies
    the sensor size (files without one otherwise get the largest coordinate + 1, marked ``inferred``).
    """
    path = Path(path)
    if not path.is_file():
        raise EventFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if format is not None and format not in _READERS:
        raise EventFileError(f"{path}: unknown format {format!r}; known: {', '.join(FORMATS)}")
    try:
        fmt = format or detect_format(path)
    except OSError as error:
        raise EventFileError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        events, width, height, metadata = _READERS[fmt](path)
    except EventFileError:
        raise
    except OSError as error:
        raise EventFileError(f"{path}: cannot read ({error.strerror or error})") from error
    except Exception as error:  # noqa: BLE001 -- decoder libraries raise bare Exception, RuntimeError, ValueError
        raise EventFileError(
            f"{path}: cannot decode as {fmt} (truncated or corrupt?): {type(error).__name__}: {error}"
        ) from error
    if sensor_size is not None:
        width, height = (int(v) for v in sensor_size)
        metadata["sensor_size_source"] = "argument"
    elif width is None or height is None:
        width = int(events["x"].max()) + 1 if len(events) else 0
        height = int(events["y"].max()) + 1 if len(events) else 0
        metadata["sensor_size_source"] = "inferred"
    if len(events) and (events["x"].max() >= width or events["y"].max() >= height):
        raise EventFileError(
            f"{path}: events at x up to {events['x'].max()}, y up to {events['y'].max()} lie outside the "
            f"{width}x{height} sensor: corrupt data or the wrong sensor size"
        )
    events = _sorted_in_time(events, path, metadata)
    return EventRecording(events, int(width), int(height), fmt, str(path), metadata)


def write_events_npz(path: str | Path, recording: EventRecording) -> Path:
    """Save a recording as ``.npz`` (events, width, height, metadata as JSON); :func:`read_events` reads it back."""
    path = Path(path)
    np.savez_compressed(
        path,
        events=np.ascontiguousarray(recording.events, EVENT_DTYPE),
        width=np.int64(recording.width),
        height=np.int64(recording.height),
        metadata=np.array(json.dumps(dict(recording.metadata), default=str)),
    )
    return path
