"""Event ingestion over the WebSocket ``/v1/events/stream`` on loopback: events per second sustained, bits per event.

    SPIKEBOT_DATA=../shared/datasets .venv/bin/python benchmarks/event_stream_load.py --duration 10

Starts the service as a subprocess under uvicorn (``uvicorn --factory server.app:create_app`` on a free loopback
port, per-message deflate off unless ``--deflate``; or uses ``--url`` of a running one), reads a real recording
(``--recording``, default ``$SPIKEBOT_DATA/event_samples/faery_evt2.raw``, a 640x480 Prophesee EVT2 file; a
simulated clip when there is none), cuts it into chunks of ``--chunk-events`` and encodes them once per coding
(plain: varint delta-t; zstd: fixed-width delta-t, level ``--level``). Each coding then streams for
``--duration`` s over its own connection, the recording repeated with its time shifted and sequence numbers
running on, *closed loop*: at most ``--window`` chunks are unacknowledged, and a chunk goes out as soon as an ack
frees a place, so the rate is what the server sustains, not what the client offers. ``--deflate`` negotiates
per-message deflate at both ends instead, to show what it costs on chunks that are compressed already.

Reports per coding: bits per event on the wire, events/s (acknowledged events over the time after
``--warmup`` s), megabytes/s, the server's CPU seconds per second of wall (all its threads, ``/proc``), chunks
refused and answers received; and, without network, the client's encode rate and the server's per-chunk work in
process (decode, 10 ms bins, stats) on one thread. ``--processors flow,action`` with ``--flow-model`` and
``--action-model`` (saved models, handed to the service it starts) runs the learned processors in the stream
instead: the rate is then bounded by the networks, and the table adds the real-time factor (seconds of event time
processed per second of wall time: above 1, the stream keeps up with the camera) and the networks' own median
milliseconds per answer. The client runs on the same machine as the server: on a
small, shared machine its CPU use is part of what is measured. ``--json PATH`` keeps the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service_load import (  # the same server plumbing as the HTTP load test
    cpu_seconds,
    free_port,
    wait_ready,
)

from events.io import read_events
from events.packing import (
    HEADER_SIZE,
    decode_chunk,
    encode_chunk,
    pack_header,
    read_header,
)
from server.event_stream import BIN_US, EventStream, processor_factories
from spikebot.provenance import cpu_model

CODINGS = {"plain": {"compress": False}, "zstd": {"compress": True}}


def load_events(args) -> tuple[np.ndarray, int, int, str]:
    """(events, width, height, where they came from): the recording, or a simulated clip when there is none."""
    path = Path(args.recording) if args.recording else None
    if path is None and os.environ.get("SPIKEBOT_DATA"):
        path = Path(os.environ["SPIKEBOT_DATA"]) / "event_samples" / "faery_evt2.raw"
    if path is not None and path.is_file():
        recording = read_events(path)
        return recording.events, recording.width, recording.height, str(path)
    from events.simulator import ClipConfig, simulate_clip

    clip = simulate_clip(ClipConfig(width=346, height=260, duration_ms=300.0, seed=0))
    missing = f"no file {path}" if path is not None else "SPIKEBOT_DATA is not set"
    return clip.events, 346, 260, f"simulated clip 346x260, 300 ms ({missing})"


def start_server(port: int, log_path: Path, deflate: bool, models: dict[str, str]) -> subprocess.Popen:
    """uvicorn with the service on ``port``; ``models`` are settings (environment variables) naming saved models."""
    command = [sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--ws-per-message-deflate", str(deflate).lower()]
    print(f"# server: {shlex.join(command)} {models} (log {log_path})", file=sys.stderr)
    log = open(log_path, "w")  # noqa: SIM115 (the server process writes it until it ends)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ | models)


# ---------------------------------------------------------------------------------------------------- offline

def encode_all(events: np.ndarray, width: int, height: int, size: int, options: dict, level: int
               ) -> tuple[list[bytes], float]:
    """The recording's chunks in one coding, and the seconds encoding took."""
    start = time.perf_counter()
    chunks = [encode_chunk(events[i : i + size], width, height, k, level=level, **options)
              for k, i in enumerate(range(0, len(events), size))]
    return chunks, time.perf_counter() - start


def server_work(chunks: list[bytes], repeats: int = 3) -> dict:
    """In-process rates on one thread, after a pass to warm up: decoding alone, and what the server does per chunk
    (decode, bins, stats)."""
    n = sum(read_header(c).count for c in chunks)
    factories = processor_factories(["stats"])

    def decode() -> None:
        for chunk in chunks:
            decode_chunk(chunk)

    def process() -> None:
        stream = EventStream(factories, max_events=2**32)
        for chunk in chunks:
            stream.process(read_header(chunk), chunk)

    rates = {}
    for name, work in (("decode_events_per_s", decode), ("process_events_per_s", process)):
        work()
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        rates[name] = n * repeats / (time.perf_counter() - start)
    return rates


# ---------------------------------------------------------------------------------------------------- stream

def restamped(chunks: list[bytes], span_us: int):
    """The chunks forever: the recording (``span_us`` from first to last event) repeated, each pass shifted by whole
    bins past the one before, sequence numbers running on."""
    headers = [read_header(c) for c in chunks]
    bodies = [c[HEADER_SIZE:] for c in chunks]
    shift = (span_us // BIN_US + 2) * BIN_US
    seq, repeat = 0, 0
    while True:
        for header, body in zip(headers, bodies):
            yield pack_header(dataclasses.replace(header, sequence=seq, base_us=header.base_us + repeat * shift)) + body
            seq += 1
        repeat += 1


async def stream(url: str, chunks: list[bytes], span_us: int, width: int, height: int, duration: float,
                 warmup: float, window: int, api_key: str | None, deflate: bool, processors: str) -> dict:
    from websockets.asyncio.client import connect

    target = url.replace("http", "ws", 1) + f"/v1/events/stream?width={width}&height={height}&processors={processors}"
    headers = {"X-API-Key": api_key} if api_key else {}
    counts = {"acked_events": 0, "acked_chunks": 0, "answers": 0, "answers_by_type": {}, "errors": {},
              "sent_bytes": 0, "summary": None}
    compute_ms: dict[str, list[float]] = {}
    marks: list[tuple[float, int, int]] = []  # (time, acknowledged events, acknowledged bytes) at each ack
    sizes: dict[int, int] = {}
    async with connect(target, compression="deflate" if deflate else None, max_size=None,
                       additional_headers=headers) as ws:
        room = asyncio.Semaphore(window)

        async def receive() -> None:
            async for message in ws:
                answer = json.loads(message)
                kind = answer["type"]
                if kind == "ack":
                    counts["acked_events"] += answer["events"]
                    counts["acked_chunks"] += 1
                    marks.append((time.perf_counter(), counts["acked_events"], sizes.pop(answer["seq"])))
                    room.release()
                elif kind == "error":
                    code = answer["error"]["code"]
                    counts["errors"][code] = counts["errors"].get(code, 0) + 1
                    if answer.get("seq") is not None:
                        sizes.pop(answer["seq"], None)
                        room.release()
                elif kind == "summary":
                    counts["summary"] = answer
                else:
                    counts["answers"] += 1
                    counts["answers_by_type"][kind] = counts["answers_by_type"].get(kind, 0) + 1
                    if "compute_ms" in answer:
                        compute_ms.setdefault(kind, []).append(answer["compute_ms"])

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for chunk in restamped(chunks, span_us):
            if time.perf_counter() - start >= duration:
                break
            await room.acquire()
            sizes[read_header(chunk).sequence] = len(chunk)
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "end"}))
        await receiver
    times = np.array([m[0] for m in marks]) - start
    acked = np.array([m[1] for m in marks])
    wire = np.cumsum([m[2] for m in marks])
    steady = times >= warmup
    if steady.sum() < 2:
        raise SystemExit(f"fewer than 2 acks after the {warmup} s warm-up: run longer")
    first, last = np.flatnonzero(steady)[[0, -1]]
    seconds = times[last] - times[first]
    return {**counts, "seconds": seconds, "events_per_s": (acked[last] - acked[first]) / seconds,
            "megabytes_per_s": (wire[last] - wire[first]) / seconds / 1e6, "wall_s": time.perf_counter() - start,
            "median_compute_ms": {kind: float(np.median(values)) for kind, values in compute_ms.items()}}


# ---------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="A running service (default: start one on a free loopback port).")
    parser.add_argument("--api-key", help="X-API-Key for --url.")
    parser.add_argument("--recording", help="Event file (default $SPIKEBOT_DATA/event_samples/faery_evt2.raw).")
    parser.add_argument("--chunk-events", type=int, default=65536)
    parser.add_argument("--window", type=int, default=4, help="Chunks in flight (sent, not yet acknowledged).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of streaming per coding.")
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds at the start of each run not counted.")
    parser.add_argument("--level", type=int, default=1, help="zstd level.")
    parser.add_argument("--codings", default="plain,zstd", help=f"Comma separated, of {list(CODINGS)}.")
    parser.add_argument("--deflate", action="store_true", help="Negotiate per-message deflate (both ends), to "
                        "see what it costs on chunks that are compressed already; off by default.")
    parser.add_argument("--processors", default="stats", help="The stream's processors: stats, flow, action.")
    parser.add_argument("--flow-model", help="A saved flow model for the service's 'flow' processor.")
    parser.add_argument("--action-model", help="A saved action model for the service's 'action' processor.")
    parser.add_argument("--json", help="Write the numbers here too.")
    args = parser.parse_args(argv)
    codings = args.codings.split(",")
    if unknown := set(codings) - set(CODINGS):
        parser.error(f"unknown codings {sorted(unknown)}")
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv)

    events, width, height, source = load_events(args)
    span_us = int(events["t"][-1]) - int(events["t"][0])
    sample = events[:10_000]
    json_bits = len(json.dumps(np.stack([sample[k].astype(np.int64) for k in "txyp"], 1).tolist())) * 8 / len(sample)
    offline = {}
    for name in codings:
        chunks, encode_s = encode_all(events, width, height, args.chunk_events, CODINGS[name], args.level)
        offline[name] = {"chunks": chunks, "bits_per_event": sum(map(len, chunks)) * 8 / len(events),
                         "encode_events_per_s": len(events) / encode_s, **server_work(chunks)}

    process = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        models = {name: str(Path(path).resolve()) for name, path in (
            ("SPIKEBOT_EVENT_FLOW_MODEL", args.flow_model), ("SPIKEBOT_EVENT_ACTION_MODEL", args.action_model)) if path}
        process = start_server(port, Path(os.environ.get("TMPDIR", "/tmp")) / f"spikebot-events-{port}.log",
                               args.deflate, models)
    results = {}
    try:
        wait_ready(url, process, 120)
        for name in codings:
            cpu_before = cpu_seconds(process.pid) if process else None
            client_before = cpu_seconds(os.getpid())
            load_before = os.getloadavg()[0]
            run = asyncio.run(stream(url, offline[name]["chunks"], span_us, width, height, args.duration,
                                     args.warmup, args.window, args.api_key, args.deflate, args.processors))
            cpu_after = cpu_seconds(process.pid) if process else None
            run["server_cpu_per_s"] = (cpu_after - cpu_before) / run["wall_s"] if cpu_before is not None else None
            run["client_cpu_per_s"] = (cpu_seconds(os.getpid()) - client_before) / run["wall_s"]
            run["load_before"], run["load_after"] = load_before, os.getloadavg()[0]
            results[name] = {**{k: v for k, v in offline[name].items() if k != "chunks"}, **run}
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)

    print(f"# event stream ingestion, {time.strftime('%Y-%m-%d %H:%M %Z')}, {cpu_model()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# {command}")
    print(f"# events: {source}: {len(events)} events, {width}x{height}, {span_us / 1e3:.1f} ms "
          f"({len(events) / max(span_us, 1) :.2f} Mev/s of event time); chunks of {args.chunk_events} "
          f"events, window {args.window}, {args.duration} s per coding ({args.warmup} s warm-up not counted), "
          f"per-message deflate {'on' if args.deflate else 'off'}")
    print(f"# JSON ([t, x, y, p] per event) would take {json_bits:.0f} bits/event")
    print()
    event_rate = len(events) / max(span_us, 1) * 1e6  # events per second of event time
    print(f"# processors: {args.processors}" + "".join(f"; {name} {path}" for name, path in (
        ("flow model", args.flow_model), ("action model", args.action_model)) if path))
    print()
    print("| coding | bits/event | events/s sustained | x real time | MB/s | server CPU s/s | client CPU s/s "
          "| chunks acked | refused | answers | network ms per answer (median) | encode ev/s (client) "
          "| decode ev/s (1 thread) | decode+bins+stats ev/s (1 thread) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cpu = "-" if r["server_cpu_per_s"] is None else f"{r['server_cpu_per_s']:.2f}"
        answers = ", ".join(f"{kind} {n}" for kind, n in r["answers_by_type"].items()) or "0"
        network_ms = ", ".join(f"{kind} {ms:.1f}" for kind, ms in r["median_compute_ms"].items()) or "-"
        print(f"| {name} | {r['bits_per_event']:.1f} | {r['events_per_s'] / 1e6:.2f} M "
              f"| {r['events_per_s'] / event_rate:.2f} | {r['megabytes_per_s']:.1f} "
              f"| {cpu} | {r['client_cpu_per_s']:.2f} | {r['acked_chunks']} | {r['errors'].get('overloaded', 0)} "
              f"| {answers} | {network_ms} "
              f"| {r['encode_events_per_s'] / 1e6:.1f} M | {r['decode_events_per_s'] / 1e6:.1f} M "
              f"| {r['process_events_per_s'] / 1e6:.1f} M | {r['load_before']:.1f} -> {r['load_after']:.1f} |")
    other = {name: r["errors"] for name, r in results.items() if set(r["errors"]) - {"overloaded"}}
    if other:
        print(f"\nerrors: {other}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "source": source, "events": len(events),
                                               "width": width, "height": height, "json_bits_per_event": json_bits,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
