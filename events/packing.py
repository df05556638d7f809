"""Compact binary event chunks: the wire format of the event stream (``/v1/events/stream``).

A chunk carries consecutive events of one sensor. JSON (``[t, x, y, p]`` per event) spends about 200 bits on an
event; this format spends 41 (delta-t as varints, uncompressed) or 17.5 (zstd level 1) on a real 640x480 EVT2
recording (``faery_evt2.raw``, 65,536 events a chunk), and decodes with a handful of vectorised numpy passes, no
Python loop per event (30 to 100 million events/s on one core, ``benchmarks/event_stream_load.py``).

Format, version 1 (all integers little-endian)::

    offset  size  field
    0       4     magic b"SBEV"
    4       1     version: 1
    5       1     flags: bit 0 = body is one zstd frame (with its content size); other bits 0
    6       1     time coding: 0 = LEB128 varints, or 1, 2, 4, 8 = fixed-width unsigned of that many bytes
    7       1     reserved: 0
    8       8     sequence number, uint64 (chosen by the sender; the stream wants it to increase)
    16      4     event count n, uint32
    20      4     body length in bytes as sent (compressed length when zstd), uint32
    24      8     base timestamp, int64 microseconds
    32      2     sensor width, uint16 (1..65535)
    34      2     sensor height, uint16 (1..65535)
    36            body

The body (after zstd decompression when flag 0 is set) holds four column blocks, back to back:

1. delta-t, n values: ``t[0] - base``, then ``t[i] - t[i-1]``; never negative, so time never goes back within a
   chunk. Varints are unsigned LEB128 (7 bits a byte, low first, high bit set on all but the last byte, at most
   9 bytes), so a run of events within 127 us costs a byte each; fixed-width values are unsigned integers of
   the coded width, whose decoding is a plain reinterpretation of the bytes.
2. x, n values: uint8 when the sensor is at most 256 pixels wide, else uint16.
3. y, n values: uint8 when the sensor is at most 256 pixels high, else uint16.
4. polarity, ceil(n / 8) bytes: event i is bit i % 8 (least significant first) of byte i // 8, 1 = ON; the
   bits after the last event are 0.

The header stays uncompressed, so a receiver reads the sequence number, count and sizes without decompressing,
and a sender can re-stamp sequence number and base timestamp of an encoded chunk (:func:`pack_header`).
:func:`encode_chunk` chooses varints for uncompressed chunks (smallest) and the narrowest fixed width for
compressed ones (zstd squeezes both to the same size, and fixed width encodes twice as fast).

:func:`decode_chunk` raises :class:`ChunkError` on every malformed input (truncated or trailing bytes, bad
magic, unknown version or flags, a broken zstd frame or varint, coordinates outside the declared sensor, time
beyond int64, set padding bits) and :class:`ChunkTooLargeError` when the count exceeds the caller's limit, which
it checks before decompressing anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from events.io import EVENT_DTYPE
from vpr.errors import SpikebotError

MAGIC = b"SBEV"
VERSION = 1
FLAG_ZSTD = 0x01
VARINT = 0
FIXED_WIDTHS = (1, 2, 4, 8)
HEADER = struct.Struct("<4sBBBBQIIqHH")
HEADER_SIZE = HEADER.size  # 36
MAX_VARINT_BYTES = 9  # 63 bits: every non-negative int64
_INT64_MAX = 2**63 - 1


class ChunkError(SpikebotError):
    """A chunk is malformed, or events cannot be encoded as one (unsorted, outside the sensor)."""


class ChunkTooLargeError(ChunkError):
    """A chunk declares more events than the receiver accepts."""


@dataclass(frozen=True)
class ChunkHeader:
    """The fixed 36 bytes in front of every chunk (see the module docstring)."""

    sequence: int
    count: int
    base_us: int
    width: int
    height: int
    compressed: bool
    time_width: int  # 0 = varints, else bytes per fixed-width delta
    body_bytes: int


def pack_header(header: ChunkHeader) -> bytes:
    return HEADER.pack(MAGIC, VERSION, FLAG_ZSTD if header.compressed else 0, header.time_width, 0, header.sequence,
                       header.count, header.body_bytes, header.base_us, header.width, header.height)


def read_header(data: bytes, max_events: int | None = None) -> ChunkHeader:
    """The header of ``data``, checked against the chunk's length; raises before any body byte is looked at."""
    if len(data) < HEADER_SIZE:
        raise ChunkError(f"truncated chunk: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, flags, time_width, reserved, sequence, count, body_bytes, base_us, width, height = \
        HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ChunkError(f"bad magic {magic!r}: not an event chunk (expected {MAGIC!r})")
    if version != VERSION:
        raise ChunkError(f"chunk format version {version} is not supported (this reader knows {VERSION})")
    if flags & ~FLAG_ZSTD or reserved:
        raise ChunkError(f"unknown flags 0x{flags:02x} / reserved byte {reserved} (version {VERSION} defines flag "
                         "bit 0 only)")
    if time_width != VARINT and time_width not in FIXED_WIDTHS:
        raise ChunkError(f"time coding {time_width} is neither 0 (varint) nor a width of {FIXED_WIDTHS} bytes")
    if width == 0 or height == 0:
        raise ChunkError(f"sensor size {width}x{height} is empty")
    if len(data) - HEADER_SIZE != body_bytes:
        problem = "truncated chunk" if len(data) - HEADER_SIZE < body_bytes else "trailing bytes after the chunk"
        raise ChunkError(f"{problem}: header declares a {body_bytes}-byte body, {len(data) - HEADER_SIZE} bytes follow")
    if max_events is not None and count > max_events:
        raise ChunkTooLargeError(f"chunk holds {count} events, more than the {max_events} accepted")
    return ChunkHeader(sequence, count, base_us, width, height, bool(flags & FLAG_ZSTD), time_width, body_bytes)


def _coordinate_type(extent: int) -> np.dtype:
    return np.dtype(np.uint8) if extent <= 256 else np.dtype("<u2")


def _column_bytes(count: int, width: int, height: int) -> int:
    """Bytes of the x, y and polarity blocks."""
    return count * (_coordinate_type(width).itemsize + _coordinate_type(height).itemsize) + (count + 7) // 8


# ---------------------------------------------------------------------------------------------------------------
# Varints


def encode_varints(values: np.ndarray) -> np.ndarray:
    """Unsigned LEB128 bytes of non-negative int64 ``values``: one pass per byte position, not per value."""
    values = values.astype(np.uint64)
    lengths = np.ones(len(values), np.int64)
    for k in range(1, MAX_VARINT_BYTES):
        lengths += values >= np.uint64(1 << (7 * k))
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), np.uint8)
    for k in range(int(lengths.max(initial=0))):
        has = lengths > k
        byte = (values[has] >> np.uint64(7 * k)).astype(np.uint8) & 0x7F
        out[starts[has] + k] = byte | np.where(lengths[has] > k + 1, 0x80, 0).astype(np.uint8)
    return out


def decode_varints(data: np.ndarray, count: int) -> np.ndarray:
    """``count`` int64 values from exactly the LEB128 bytes ``data`` (uint8), or ChunkError."""
    if len(data) == count:  # every value one byte: the common case within 127 us
        if count and data.max() >= 0x80:
            raise ChunkError("delta-t block: malformed varints (a value continues past the block)")
        return data.astype(np.int64)
    ends = np.flatnonzero(data < 0x80)
    if len(ends) != count or (count and ends[-1] != len(data) - 1):
        raise ChunkError(f"delta-t block: {len(data)} bytes do not hold exactly {count} varints")
    starts = np.empty(count, np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if count and lengths.max() > MAX_VARINT_BYTES:
        raise ChunkError(f"delta-t block: a varint longer than {MAX_VARINT_BYTES} bytes")
    position = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
    parts = (data & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.add.reduceat(parts, starts).astype(np.int64) if count else np.empty(0, np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Chunks


def encode_chunk(events: np.ndarray, width: int, height: int, sequence: int, *, compress: bool = False,
                 level: int = 1, time_coding: str = "auto", base_us: int | None = None) -> bytes:
    """One chunk holding ``events`` (canonical array, sorted by time) of a ``width`` x ``height`` sensor.

    ``time_coding``: ``"varint"``, ``"fixed"`` (narrowest width that holds the largest delta) or ``"auto"``
    (fixed when compressing, varint otherwise). ``base_us`` defaults to the first event's time (0 when empty).
    """
    if events.dtype != EVENT_DTYPE:
        raise ChunkError(f"events must have the canonical EVENT_DTYPE (events.io), got {events.dtype}")
    if not (1 <= width <= 0xFFFF and 1 <= height <= 0xFFFF):
        raise ChunkError(f"sensor size {width}x{height} must be 1..65535 on each side")
    if not 0 <= sequence < 2**64:
        raise ChunkError(f"sequence number {sequence} is not a uint64")
    if len(events) >= 2**32:
        raise ChunkError(f"{len(events)} events do not fit one chunk (at most 2**32 - 1)")
    if time_coding not in ("auto", "varint", "fixed"):
        raise ChunkError(f"time_coding must be 'auto', 'varint' or 'fixed', got {time_coding!r}")
    t = events["t"]
    base_us = (int(t[0]) if len(t) else 0) if base_us is None else int(base_us)
    if len(t) and t[0] < base_us:
        raise ChunkError(f"first event at {int(t[0])} us is before the base timestamp {base_us} us")
    delta = np.diff(t, prepend=np.int64(base_us))
    if len(delta) and delta.min() < 0:
        at = int(np.argmax(delta < 0))
        raise ChunkError(f"non-monotonic time: event {at} at {int(t[at])} us follows one at {int(t[at - 1])} us")
    x, y = events["x"], events["y"]
    if len(events) and (int(x.max()) >= width or int(y.max()) >= height):
        raise ChunkError(f"events reach x={int(x.max())}, y={int(y.max())}, outside the {width}x{height} sensor")
    if time_coding == "varint" or (time_coding == "auto" and not compress):
        time_width, time_block = VARINT, encode_varints(delta)
    else:
        largest = int(delta.max(initial=0))
        time_width = next(w for w in FIXED_WIDTHS if largest < 2 ** (8 * w))
        time_block = delta.astype(f"<u{time_width}")
    body = b"".join((time_block.tobytes(), x.astype(_coordinate_type(width)).tobytes(),
                     y.astype(_coordinate_type(height)).tobytes(),
                     np.packbits(events["p"] != 0, bitorder="little").tobytes()))
    if compress:
        import zstandard

        body = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)
    header = ChunkHeader(sequence, len(events), base_us, width, height, compress, time_width, len(body))
    return pack_header(header) + body


def _decompress(data: memoryview, header: ChunkHeader) -> bytes:
    """The zstd body, bounded by what ``header.count`` events can take before anything is inflated."""
    import zstandard

    columns = _column_bytes(header.count, header.width, header.height)
    if header.time_width == VARINT:
        smallest, largest = header.count + columns, header.count * MAX_VARINT_BYTES + columns
    else:
        smallest = largest = header.count * header.time_width + columns
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise ChunkError(f"compressed body is not a zstd frame: {error}") from error
    if size < 0:
        raise ChunkError("compressed body is a zstd frame without its content size (write_content_size)")
    if not smallest <= size <= largest:
        raise ChunkError(f"compressed body inflates to {size} bytes; {header.count} events take "
                         f"{smallest}..{largest}")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        body = decompressor.decompress(data)
    except zstandard.ZstdError as error:
        raise ChunkError(f"corrupt zstd body: {error}") from error
    if not decompressor.eof or decompressor.unused_data or len(body) != size:
        raise ChunkError("zstd body is truncated or followed by extra bytes")
    return body


def _exact_sum(values: np.ndarray) -> int:
    """The sum of non-negative int64 ``values`` as a Python int, without the wrap-around a plain numpy sum risks."""
    if int(values.max(initial=0)) * len(values) < 2**64:
        return int(values.sum(dtype=np.uint64))
    values = values.astype(np.uint64)  # rare: huge deltas; halves of 32 bits each sum without wrapping
    return (int((values >> np.uint64(32)).sum()) << 32) + int((values & np.uint64(0xFFFFFFFF)).sum())


def decode_chunk(data: bytes, max_events: int | None = None) -> tuple[ChunkHeader, np.ndarray]:
    """The header and canonical events of one chunk; :class:`ChunkError` on any malformed input."""
    header = read_header(data, max_events)
    n = header.count
    body = memoryview(data)[HEADER_SIZE:]
    if header.compressed:
        body = _decompress(body, header)
    raw = np.frombuffer(body, np.uint8)
    columns = _column_bytes(n, header.width, header.height)
    time_bytes = len(raw) - columns
    fewest, most = (n, n * MAX_VARINT_BYTES) if header.time_width == VARINT else (n * header.time_width,) * 2
    if not fewest <= time_bytes <= most:
        raise ChunkError(f"body of {len(raw)} bytes does not fit {n} events: {time_bytes} bytes are left for delta-t, "
                         f"which takes {fewest}..{most}")
    if header.time_width == VARINT:
        delta = decode_varints(raw[:time_bytes], n)
    else:
        delta = raw[:time_bytes].view(f"<u{header.time_width}")
        if header.time_width == 8 and n and delta.max() > _INT64_MAX:
            raise ChunkError("delta-t beyond int64")
    x_type, y_type = _coordinate_type(header.width), _coordinate_type(header.height)
    x = raw[time_bytes : time_bytes + n * x_type.itemsize].view(x_type)
    y_start = time_bytes + n * x_type.itemsize
    y = raw[y_start : y_start + n * y_type.itemsize].view(y_type)
    packed = raw[y_start + n * y_type.itemsize :]
    if n % 8 and packed[-1] >> (n % 8):
        raise ChunkError("polarity block: padding bits after the last event are set")
    if n and (int(x.max()) >= header.width or int(y.max()) >= header.height):
        raise ChunkError(f"events reach x={int(x.max())}, y={int(y.max())}, outside the declared "
                         f"{header.width}x{header.height} sensor")
    total = _exact_sum(delta)
    if header.base_us + total > _INT64_MAX:
        raise ChunkError(f"timestamps run past int64 (base {header.base_us} us plus deltas summing to {total})")
    events = np.empty(n, EVENT_DTYPE)
    # the running sum may wrap when base is negative; harmless: the true times lie in int64 (checked above) and
    # numpy's integer arithmetic is modular
    np.cumsum(delta, dtype=np.int64, out=events["t"])
    events["t"] += header.base_us
    events["x"] = x
    events["y"] = y
    events["p"] = np.unpackbits(packed, count=n, bitorder="little")
    return header, events
