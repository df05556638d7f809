"""The binary event chunk (events/packing.py): round trips in every coding, and each malformed input's error."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from events.io import EVENT_DTYPE, make_events, read_events
from events.packing import (
    HEADER_SIZE,
    ChunkError,
    ChunkTooLargeError,
    decode_chunk,
    decode_varints,
    encode_chunk,
    encode_varints,
    pack_header,
    read_header,
)


def random_events(n: int, width: int, height: int, seed: int = 0, t0: int = 1_000_000,
                  max_step: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = t0 + np.cumsum(rng.integers(0, max_step, n))
    return make_events(t, rng.integers(0, width, n), rng.integers(0, height, n), rng.integers(0, 2, n))


def patched(chunk: bytes, offset: int, fmt: str, value) -> bytes:
    """``chunk`` with one header field overwritten."""
    data = bytearray(chunk)
    struct.pack_into("<" + fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("time_coding", ["auto", "varint", "fixed"])
@pytest.mark.parametrize("width, height, n, max_step", [
    (34, 34, 1001, 50),           # uint8 coordinates, one-byte deltas, a partial polarity byte
    (640, 480, 4096, 300),        # uint16 coordinates, two-byte deltas
    (1280, 200, 77, 5_000_000),   # mixed coordinate widths, deltas of up to four bytes
])
def test_round_trip(compress, time_coding, width, height, n, max_step):
    events = random_events(n, width, height, max_step=max_step)
    chunk = encode_chunk(events, width, height, sequence=2**40 + 3, compress=compress, time_coding=time_coding)
    header, decoded = decode_chunk(chunk)
    assert decoded.dtype == EVENT_DTYPE and np.array_equal(decoded, events)
    assert (header.sequence, header.count, header.base_us, header.width, header.height, header.compressed) == \
        (2**40 + 3, n, int(events["t"][0]), width, height, compress)
    largest = int(np.diff(events["t"]).max())
    fixed = time_coding == "fixed" or (time_coding == "auto" and compress)
    assert header.time_width == (next(w for w in (1, 2, 4, 8) if largest < 256**w) if fixed else 0)


def test_empty_chunk_and_explicit_base():
    for compress in (False, True):
        header, decoded = decode_chunk(encode_chunk(np.empty(0, EVENT_DTYPE), 640, 480, 7, compress=compress))
        assert len(decoded) == 0 and header.count == 0 and header.sequence == 7
    events = random_events(10, 64, 64, t0=5000)
    header, decoded = decode_chunk(encode_chunk(events, 64, 64, 0, base_us=4000))
    assert header.base_us == 4000 and np.array_equal(decoded, events)


def test_huge_deltas_and_extreme_times_round_trip():
    t = np.array([-2**62, -2**62, 0, 2**62, 2**63 - 1], np.int64)  # deltas needing 8 bytes / 9 varint bytes
    events = make_events(t, [0, 1, 2, 3, 4], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1])
    for coding in ("varint", "fixed"):
        header, decoded = decode_chunk(encode_chunk(events, 5, 1, 0, time_coding=coding))
        assert np.array_equal(decoded, events) and header.time_width == (0 if coding == "varint" else 8)


def test_varints_match_leb128():
    values = np.array([0, 1, 127, 128, 300, 2**14, 2**63 - 1], np.int64)
    data = encode_varints(values)
    assert data[:6].tolist() == [0, 1, 127, 0x80, 1, 0xAC] and data[6] == 0x02
    assert np.array_equal(decode_varints(data, len(values)), values)


def test_restamped_header_keeps_the_body():
    events = random_events(100, 64, 64)
    chunk = encode_chunk(events, 64, 64, 1, compress=True)
    header = read_header(chunk)
    moved = pack_header(dataclasses.replace(header, sequence=9, base_us=header.base_us + 10**6)) + chunk[HEADER_SIZE:]
    new_header, decoded = decode_chunk(moved)
    assert new_header.sequence == 9 and np.array_equal(decoded["t"], events["t"] + 10**6)


def test_real_recording_round_trip_and_size(shared_data):
    recording = read_events(shared_data / "event_samples" / "faery_evt2.raw")
    events = recording.events[:65536]
    plain = encode_chunk(events, recording.width, recording.height, 0)
    packed = encode_chunk(events, recording.width, recording.height, 0, compress=True)
    for chunk in (plain, packed):
        assert np.array_equal(decode_chunk(chunk)[1], events)
    assert len(plain) * 8 / len(events) < 45 and len(packed) * 8 / len(events) < 20  # measured: 41 and 17.3


GOOD = encode_chunk(random_events(100, 640, 480), 640, 480, 5)
ZSTD = encode_chunk(random_events(100, 640, 480), 640, 480, 5, compress=True)


@pytest.mark.parametrize("data, message", [
    (GOOD[:20], "shorter than the 36-byte header"),
    (GOOD[:-1], "truncated chunk"),
    (GOOD + b"\0", "trailing bytes"),
    (b"JUNK" + GOOD[4:], "bad magic"),
    (patched(GOOD, 4, "B", 2), "version 2 is not supported"),
    (patched(GOOD, 5, "B", 0x02), "unknown flags"),
    (patched(GOOD, 7, "B", 1), "reserved"),
    (patched(GOOD, 6, "B", 3), "time coding 3"),
    (patched(GOOD, 32, "H", 0), "sensor size 0x480 is empty"),
    (patched(GOOD, 32, "H", 300), "outside the declared 300x480 sensor"),  # x still uint16, now out of range
    (patched(GOOD, 16, "I", 99), "do not hold exactly 99 varints"),
    (patched(GOOD, 16, "I", 101), "does not fit 101 events"),
    (patched(GOOD, 24, "q", 2**63 - 10), "timestamps run past int64"),
    (patched(ZSTD, 16, "I", 90), "inflates to"),
    (ZSTD[:44] + b"\xff" * 12 + ZSTD[56:], "corrupt zstd body"),
    (patched(ZSTD[:-5], 20, "I", len(ZSTD) - HEADER_SIZE - 5), "zstd body is truncated"),
    (patched(ZSTD, 36, "I", 0), "not a zstd frame"),
])
def test_malformed_chunks_raise_clear_errors(data, message):
    with pytest.raises(ChunkError, match=message):
        decode_chunk(data)


def test_malformed_bodies_raise_clear_errors():
    import zstandard

    def chunk(body: bytes, count: int, width: int = 8, time_width: int = 0, compressed: bool = False) -> bytes:
        return struct.pack("<4sBBBBQIIqHH", b"SBEV", 1, int(compressed), time_width, 0, 0, count, len(body), 0,
                           width, 1) + body

    columns = b"\0" * 2 + b"\x03"  # x of two events, y of two events (uint8), polarity byte with both ON
    assert decode_chunk(chunk(b"\x01\x02" + b"\0\0" + columns, 2))[1]["t"].tolist() == [1, 3]
    with pytest.raises(ChunkError, match="malformed varints"):
        decode_chunk(chunk(b"\x81\x82" + b"\0\0" + columns, 2))  # both continue: no value ends
    with pytest.raises(ChunkError, match="do not hold exactly 2 varints"):
        decode_chunk(chunk(b"\x01\x82\x83" + b"\0\0" + columns, 2))  # the second never ends
    with pytest.raises(ChunkError, match="longer than 9 bytes"):
        decode_chunk(chunk(b"\x80" * 10 + b"\x01" + b"\x01" + b"\0\0" + columns, 2))
    with pytest.raises(ChunkError, match="padding bits"):
        decode_chunk(chunk(b"\x01\x02" + b"\0\0" + b"\0\0" + b"\x07", 2))
    with pytest.raises(ChunkError, match="outside the declared"):
        decode_chunk(chunk(b"\x01\x02" + b"\x00\x09" + b"\0\0" + b"\x03", 2))
    with pytest.raises(ChunkError, match="beyond int64"):
        decode_chunk(chunk(b"\xff" * 8 + b"\0\0" + b"\x01", 1, time_width=8))
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x01\x02\0\0" + columns)
    with pytest.raises(ChunkError, match="without its content size"):
        decode_chunk(chunk(no_size, 2, compressed=True))
    frame = zstandard.ZstdCompressor().compress(b"\x01\x02\0\0" + columns)
    assert decode_chunk(chunk(frame, 2, compressed=True))[1]["t"].tolist() == [1, 3]
    with pytest.raises(ChunkError, match="followed by extra bytes"):
        decode_chunk(chunk(frame + frame, 2, compressed=True))


def test_too_many_events_is_refused_before_decompressing():
    with pytest.raises(ChunkTooLargeError, match="100 events, more than the 99 accepted"):
        read_header(ZSTD, max_events=99)
    with pytest.raises(ChunkTooLargeError):
        decode_chunk(patched(ZSTD, 36, "I", 0), max_events=10)  # the count is checked before the broken body
    assert decode_chunk(ZSTD, max_events=100)[0].count == 100


def test_encode_refuses_what_the_format_cannot_say():
    events = random_events(20, 64, 64)
    backwards = events.copy()
    backwards["t"][10] = backwards["t"][9] - 1
    with pytest.raises(ChunkError, match="non-monotonic time: event 10"):
        encode_chunk(backwards, 64, 64, 0)
    wide = events.copy()
    wide["x"][3] = 40
    with pytest.raises(ChunkError, match="outside the 32x64 sensor"):
        encode_chunk(wide, 32, 64, 0)
    with pytest.raises(ChunkError, match="before the base timestamp"):
        encode_chunk(events, 64, 64, 0, base_us=int(events["t"][0]) + 1)
    with pytest.raises(ChunkError, match="EVENT_DTYPE"):
        encode_chunk(np.zeros(3, [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")]), 64, 64, 0)
    with pytest.raises(ChunkError, match="1..65535"):
        encode_chunk(events, 0, 64, 0)
    with pytest.raises(ChunkError, match="uint64"):
        encode_chunk(events, 64, 64, -1)
    with pytest.raises(ChunkError, match="time_coding"):
        encode_chunk(events, 64, 64, 0, time_coding="delta")
