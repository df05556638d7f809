"""Load benchmark of the localisation service on loopback: N simulated robots at R Hz each, one session per robot.

    SPIKEBOT_DATA=/work/shared/datasets .venv/bin/python benchmarks/service_load.py --method sad \\
        --dataset nordland_trimmed --reference summer --query winter --split all --robots 20 --rate-hz 10 \\
        --duration 30 --floor

Starts ``spikebot serve`` as a subprocess (or uses ``--url`` of a running one), opens one sequence-matching
session per robot, then each robot sends a query frame (the ``--query`` traverse's files, sent as they are on
disk) every 1/R s *open loop*: a send never waits for earlier replies. A send that starts more than
``--late-ms`` after its slot is *late*; when a robot's loop wakes a whole period or more behind, the frames it
slept through are *missed* (not sent), as a camera would drop them. Latency is client-side (send to parsed reply).
``--warmup S`` runs the same load for S seconds first and counts only what follows, without a pause in between
(on this project's VM, memory left idle for half a second is several times slower to read the first time, so
the first frames after a pause pay for it).

Reports p50/p95/p99/max latency, throughput (ok replies per second of the run), errors by status/code, the
server's RSS (``/proc/<pid>/status`` VmRSS of the server it started: before the load and the peak during it) and
the server's own stage timings (``server_timing`` of the replies), and the sizes of the batches the server's
method was called with (its ``spikebot_batch_size`` metric, read before and after the load; ``--max-batch``,
``--max-batch-wait-ms`` and ``--torch-threads`` set the started server's batching). ``--floor`` also measures, in-process, a bare
exact inner-product search (``faiss.IndexFlatIP``) over random unit descriptors of the same number of places
(``--floor-dim``, default 4096 like NetVLAD) paced at the same total request rate, so the report says how far
the served method is from the floor. Prints a markdown header and table; ``--json PATH`` keeps the numbers.

The client shares the machine with the server: on a small machine its own CPU use is part of the latency seen.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spikebot.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``), all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------------- server

def start_server(args, port: int, log_path: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("spikebot")), "serve", "--port", str(port), "--log-level", "warning",
               "--name", args.map_name, "--split", args.split]
    if args.max_concurrency is not None:
        command += ["--max-concurrency", str(args.max_concurrency)]
    if args.map:
        command += ["--map", args.map]
    command += ["--method", args.method, "--dataset", args.dataset]
    if args.reference:
        command += ["--reference", args.reference]
    if args.config:
        command += ["--config", args.config]
    if args.data_root:
        command += ["--data-root", args.data_root]
    env = dict(os.environ)
    for option, variable in (("max_batch", "SPIKEBOT_MAX_BATCH"), ("max_batch_wait_ms", "SPIKEBOT_MAX_BATCH_WAIT_MS"),
                             ("torch_threads", "SPIKEBOT_TORCH_THREADS")):
        if getattr(args, option) is not None:
            env[variable] = str(getattr(args, option))
    settings = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("SPIKEBOT_") and k != "SPIKEBOT_DATA")
    print(f"# server: {settings + ' ' if settings else ''}{shlex.join(command)}  (log {log_path})", file=sys.stderr)
    log = open(log_path, "w")  # noqa: SIM115 (the server process writes it until it ends)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def batch_histogram(url: str, map_name: str) -> dict:
    import httpx

    return parse_batch_histogram(httpx.get(url + "/metrics", timeout=5).text, map_name)


def parse_batch_histogram(text: str, map_name: str) -> dict:
    """The ``spikebot_batch_size`` histogram of ``map_name`` in a /metrics text: cumulative count by upper bound
    (``inf`` included) and ``"sum"``; empty if the server has no such metric."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict = {}
    for family in text_string_to_metric_families(text):
        if family.name != "spikebot_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("map") != map_name:
                continue
            if sample.name.endswith("_bucket"):
                counts[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                counts["sum"] = sample.value
    return counts


def batch_summary(before: dict, after: dict) -> dict | None:
    """Batches during the load: how many, mean size, and the bucket bounds holding the median and the 95th
    percentile of batch sizes (from the histogram's buckets, so upper bounds)."""
    if not after or float("inf") not in after:
        return None
    cumulative = {k: after[k] - before.get(k, 0.0) for k in after if k != "sum"}
    n = cumulative[float("inf")]
    if n <= 0:
        return {"batches": 0, "mean": None, "p50_at_most": None, "p95_at_most": None, "max_at_most": None}

    def bound(q: float) -> float:
        return next(le for le in sorted(cumulative) if cumulative[le] >= q * n)

    return {"batches": int(n), "mean": (after["sum"] - before.get("sum", 0.0)) / n,
            "p50_at_most": bound(0.5), "p95_at_most": bound(0.95), "max_at_most": bound(1.0)}


def wait_ready(url: str, process: subprocess.Popen | None, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready (see its log)")
        try:
            response = httpx.get(url + "/readyz", timeout=2)
            if response.status_code == 200:
                return
            if response.status_code == 503 and "load_failed" in response.text:
                raise SystemExit(f"server failed to load its map: {response.text}")
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout} s")


# ---------------------------------------------------------------------------------------------------- load

def query_frames(args) -> list[bytes]:
    from vpr.datasets import load_registered

    dataset = load_registered(args.dataset, args.reference, args.query, data_root=args.data_root, split=args.split)
    return [Path(path).read_bytes() for path in dataset.query.frames]


class Stats:
    def __init__(self):
        self.latencies: list[float] = []
        self.errors: collections.Counter = collections.Counter()
        self.timing: dict[str, list[float]] = collections.defaultdict(list)
        self.sent = self.late = self.missed = 0
        self.sessions: list[str] = []
        self.raw_clients: list = []
        self.first_ok = self.last_ok = None
        self.outcomes: list[tuple[float, float | None]] = []
        """(send time, latency ms; None for an error) of every request: when in the run the tail happened."""


class RawClient:
    """A minimal HTTP/1.1 client for the localize requests: keep-alive connections on loopback, one request at a
    time per connection, Content-Length bodies only (what the service sends). About a tenth of httpx's CPU per
    request, which matters when the client shares two cores with the server it measures; ``--client httpx``
    measures with httpx instead."""

    IDLE_S = 2.0
    """Idle connections older than this are closed, not reused: the server closes idle keep-alive connections
    (uvicorn after 5 s), and a request written into one that is closing would fail."""

    def __init__(self, url: str, timeout: float):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.IDLE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """(status, content type, body); raises TimeoutError or OSError (the connection is then dropped)."""
        reader, writer = await self._connection()
        try:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
            status, content_type, payload, keep = await asyncio.wait_for(self._response(reader), self.timeout)
        except BaseException:
            writer.close()
            raise
        if keep:
            self.idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        return status, content_type, payload

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        payload = await reader.readexactly(int(fields.get("content-length", "0")))
        return status, fields.get("content-type", ""), payload, fields.get("connection", "").lower() != "close"

    async def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


def record_reply(stats: Stats, status: int, content_type: str, body: bytes, elapsed: float, sent_at: float) -> None:
    payload = None
    if content_type.startswith("application/json"):
        try:
            payload = json.loads(body)
        except ValueError:
            pass
    ok = status == 200 and payload is not None
    stats.outcomes.append((sent_at, elapsed * 1e3 if ok else None))
    if ok:
        stats.latencies.append(elapsed * 1e3)
        for key, value in payload.get("server_timing", {}).items():
            stats.timing[key].append(value)
        now = time.perf_counter()
        stats.first_ok = stats.first_ok or now
        stats.last_ok = now
    else:
        code = "?"
        try:
            code = payload["error"]["code"]
        except (TypeError, KeyError):
            pass
        stats.errors[f"{status} {code}"] += 1


async def one_request(http, url: str, body: bytes, content_type: str, session_id: str, stats: Stats) -> None:
    import httpx

    headers = {"content-type": content_type, "X-Session-Id": session_id}
    t0 = time.perf_counter()
    try:
        if isinstance(http, RawClient):
            status, reply_type, reply = await http.post(url, body, headers)
        else:
            response = await http.post(url, content=body, headers=headers)
            status, reply_type, reply = response.status_code, response.headers.get("content-type", ""), response.content
    except (httpx.TimeoutException, TimeoutError):
        stats.errors["timeout (client)"] += 1
        stats.outcomes.append((t0, None))
        return
    except (httpx.TransportError, OSError, asyncio.IncompleteReadError, ValueError) as error:
        stats.errors[f"transport {type(error).__name__}"] += 1
        stats.outcomes.append((t0, None))
        return
    record_reply(stats, status, reply_type, reply, time.perf_counter() - t0, t0)


async def robot(index: int, http, args, frames: list[bytes], start: float, stats: Stats, tasks: set, url: str) -> None:
    period = 1.0 / args.rate_hz
    warmup_ticks = round(args.warmup * args.rate_hz)
    n_ticks = warmup_ticks + round(args.duration * args.rate_hz)
    unmeasured = Stats()  # the warm-up's frames are sent like the others and forgotten
    offset = (index * len(frames)) // args.robots
    path = f"/v1/maps/{args.map_name}/localize"
    localizer = RawClient(url, args.timeout) if args.client == "raw" else http
    response = await http.post("/v1/sessions", json={"map": args.map_name, "sequence_length": args.sequence_length})
    if response.status_code != 201:
        stats.errors[f"session {response.status_code}"] += 1
        return
    session_id = response.json()["id"]
    # robots start spread over one period, so their frames do not all arrive at once
    t_start = start + period * index / args.robots
    tick = 0
    while tick < n_ticks:
        slot = t_start + tick * period
        delay = slot - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        behind = time.perf_counter() - slot
        if behind >= period:  # slept through whole periods: those frames are dropped
            skipped = min(int(behind // period), n_ticks - tick)
            stats.missed += max(0, min(tick + skipped, n_ticks) - max(tick, warmup_ticks))
            tick += skipped
            if tick >= n_ticks:
                break
            slot = t_start + tick * period
            behind = time.perf_counter() - slot
        counted = stats if tick >= warmup_ticks else unmeasured
        if behind * 1e3 > args.late_ms:
            counted.late += 1
        body = frames[(offset + tick) % len(frames)]
        content_type = "image/png" if body.startswith(b"\x89PNG") else "image/jpeg"
        task = asyncio.create_task(one_request(localizer, path, body, content_type, session_id, counted))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        counted.sent += 1
        tick += 1
    stats.sessions.append(session_id)
    if isinstance(localizer, RawClient):
        stats.raw_clients.append(localizer)


async def run_load(args, url: str, frames: list[bytes], measuring: Callable[[], None]) -> tuple[Stats, float]:
    """The load; ``measuring`` is called (in a thread) when the measured part begins, after ``--warmup``."""
    import httpx

    stats = Stats()
    tasks: set = set()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=args.robots * 4)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        start = time.perf_counter() + 1.0

        async def mark() -> None:
            await asyncio.sleep(max(0.0, start + args.warmup - time.perf_counter()))
            await asyncio.to_thread(measuring)

        marker = asyncio.create_task(mark())
        await asyncio.gather(*(robot(i, http, args, frames, start, stats, tasks, url) for i in range(args.robots)))
        await marker
        if tasks:
            await asyncio.wait(set(tasks), timeout=args.timeout + 1)
        wall = time.perf_counter() - start - args.warmup
        for client in stats.raw_clients:
            await client.close()
        for session_id in stats.sessions:
            try:
                await http.delete(f"/v1/sessions/{session_id}")
            except httpx.TransportError:
                pass
    return stats, wall


def timeline(outcomes: list[tuple[float, float | None]], budget_ms: float) -> list[dict]:
    """Per second of the load (by send time): requests, errors, replies over ``budget_ms``, worst latency."""
    if not outcomes:
        return []
    start = min(sent for sent, _ in outcomes)
    seconds: dict[int, dict] = {}
    for sent, latency in outcomes:
        second = seconds.setdefault(int(sent - start), {"sent": 0, "errors": 0, "over_budget": 0, "max_ms": 0.0})
        second["sent"] += 1
        if latency is None:
            second["errors"] += 1
        else:
            second["over_budget"] += latency > budget_ms
            second["max_ms"] = max(second["max_ms"], latency)
    return [{"second": k, **v} for k, v in sorted(seconds.items())]


# ---------------------------------------------------------------------------------------------------- floor

def floor(n_places: int, dim: int, rate: float, duration: float, seed: int = 0) -> dict:
    """Bare exact inner-product search (faiss.IndexFlatIP, one query per request), paced open-loop at ``rate``;
    latency counts from each request's slot, so falling behind shows as queueing."""
    import faiss

    rng = np.random.default_rng(seed)
    refs = rng.standard_normal((n_places, dim), dtype=np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(refs)
    queries = rng.standard_normal((256, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    n = round(duration * rate)
    latencies, service = [], []
    start = time.perf_counter()
    for k in range(n):
        slot = start + k / rate
        delay = slot - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        index.search(queries[k % len(queries)][None], 5)
        t1 = time.perf_counter()
        service.append((t1 - t0) * 1e3)
        latencies.append((t1 - slot) * 1e3)
    wall = time.perf_counter() - start
    return {"n_places": n_places, "dim": dim, "rate": rate, "n": n, "wall_s": wall, "throughput": n / wall,
            "p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None, "search_p50": percentile(service, 50),
            "faiss_threads": faiss.omp_get_max_threads()}


# ---------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="A running service (default: start `spikebot serve` on a free loopback port).")
    parser.add_argument("--robots", type=int, default=20)
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds of load.")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="Seconds of the same load before the measured --duration, sent and not counted: the same "
                             "robots, sessions and connections, without a pause in between (0: measure from the first frame).")
    parser.add_argument("--method", default="sad", help="sad | snn-ensemble | netvlad | ... (as `spikebot serve`).")
    parser.add_argument("--config", help="Ensemble config JSON (spiking methods).")
    parser.add_argument("--map", help="A `spikebot vpr build-map` output (default: the server builds the map).")
    parser.add_argument("--map-name", default="map", help="Name the map is served under.")
    parser.add_argument("--dataset", default="nordland_trimmed")
    parser.add_argument("--reference", default="summer")
    parser.add_argument("--query", default="winter")
    parser.add_argument("--split", default="all", choices=["all", "calibration", "test"])
    parser.add_argument("--data-root", help="Where registered datasets live (default SPIKEBOT_DATA).")
    parser.add_argument("--sequence-length", type=int, default=5, help="Each robot's session sequence length.")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="The started server's --max-concurrency (default: the server's own default).")
    parser.add_argument("--max-batch", type=int, default=None, help="The started server's max_batch.")
    parser.add_argument("--max-batch-wait-ms", type=float, default=None, help="The started server's max_batch_wait_ms.")
    parser.add_argument("--torch-threads", type=int, default=None, help="The started server's torch_threads.")
    parser.add_argument("--timeout", type=float, default=10.0, help="Client timeout per request (s).")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="HTTP client of the localize requests: a minimal keep-alive HTTP/1.1 client (raw, about a "
                        "tenth of httpx's CPU) or httpx (what earlier measurements used).")
    parser.add_argument("--late-ms", type=float, default=5.0, help="A send this late after its slot counts late.")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="Seconds to wait for the server's map.")
    parser.add_argument("--floor", action="store_true", help="Also measure the faiss IndexFlatIP floor.")
    parser.add_argument("--floor-dim", type=int, default=4096)
    parser.add_argument("--floor-duration", type=float, default=None, help="Default: --duration.")
    parser.add_argument("--p99-budget-ms", type=float, default=50.0, help="Flag runs whose p99 exceeds this.")
    parser.add_argument("--json", help="Write the numbers here too.")
    args = parser.parse_args(argv)
    if args.robots < 1 or args.rate_hz <= 0 or args.duration <= 0:
        parser.error("--robots, --rate-hz and --duration must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv)
    frames = query_frames(args)

    process = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"spikebot-serve-{port}.log"
        process = start_server(args, port, log_path)
    try:
        t0 = time.perf_counter()
        wait_ready(url, process, args.ready_timeout)
        ready_s = time.perf_counter() - t0
        import httpx

        maps = httpx.get(url + "/v1/maps", timeout=5).json()["maps"]
        info = next((m for m in maps if m["name"] == args.map_name), None)
        if info is None:
            raise SystemExit(f"map {args.map_name!r} not served (maps: {[m['name'] for m in maps]})")
        rss_before = rss_mb(process.pid) if process else None
        before: dict = {}

        def measuring() -> None:
            """What the measured part is compared against: read when it begins (after any --warmup)."""
            before.update(batches=batch_histogram(url, args.map_name), load=os.getloadavg()[0],
                          server_cpu=cpu_seconds(process.pid) if process else None, client_cpu=cpu_seconds(os.getpid()))

        peak = [rss_before or 0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                value = rss_mb(process.pid)
                if value is not None:
                    peak[0] = max(peak[0], value)

        sampler = threading.Thread(target=sample, daemon=True) if process else None
        if sampler:
            sampler.start()
        stats, wall = asyncio.run(run_load(args, url, frames, measuring))
        batches_before, load_before = before["batches"], before["load"]
        server_cpu_before, client_cpu_before = before["server_cpu"], before["client_cpu"]
        stop.set()
        rss_after = rss_mb(process.pid) if process else None
        server_cpu = cpu_seconds(process.pid) if process else None
        client_cpu = cpu_seconds(os.getpid())
        batches = batch_summary(batches_before, batch_histogram(url, args.map_name))
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    planned = round(args.duration * args.rate_hz) * args.robots
    ok = len(stats.latencies)
    active = (stats.last_ok - stats.first_ok) if ok > 1 else None
    result = {
        "method": info["method"], "n_places": info["n_places"], "robots": args.robots, "rate_hz": args.rate_hz,
        "duration_s": args.duration, "warmup_s": args.warmup, "planned": planned, "sent": stats.sent, "ok": ok,
        "errors": dict(stats.errors), "late": stats.late, "missed": stats.missed, "wall_s": wall,
        "throughput": ok / args.duration, "throughput_active": (ok - 1) / active if active else None,
        "p50": percentile(stats.latencies, 50), "p95": percentile(stats.latencies, 95),
        "p99": percentile(stats.latencies, 99), "max": max(stats.latencies) if ok else None,
        "server_timing": {k: {"p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99)}
                          for k, v in stats.timing.items()},
        "rss_mb_ready": rss_before, "rss_mb_peak": peak[0] if process else None, "rss_mb_after": rss_after,
        "ready_s": ready_s, "max_concurrency": args.max_concurrency if process else None,
        "max_batch": args.max_batch, "max_batch_wait_ms": args.max_batch_wait_ms, "torch_threads": args.torch_threads,
        "batches": batches, "client": args.client, "load_average_before": load_before,
        "server_cpu_s": server_cpu - server_cpu_before if server_cpu is not None and server_cpu_before is not None else None,
        "client_cpu_s": client_cpu - client_cpu_before if client_cpu is not None and client_cpu_before is not None else None,
        "sequence_length": args.sequence_length,
        "timeline": timeline(stats.outcomes, args.p99_budget_ms),
    }
    floor_result = None
    if args.floor:
        floor_result = floor(info["n_places"], args.floor_dim, args.robots * args.rate_hz,
                             args.floor_duration or args.duration)
        result["floor"] = floor_result

    st = result["server_timing"]
    print(f"## Service load: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")
    print(f"- command: `{command}`")
    given = {"max_concurrency": args.max_concurrency, "max_batch": args.max_batch,
             "max_batch_wait_ms": args.max_batch_wait_ms, "torch_threads": args.torch_threads}
    given = ", ".join(f"{k} {v:g}" for k, v in given.items() if v is not None) or "its defaults"
    print(f"- server: {'started here with ' + given if process else url}; "
          f"map ready after {ready_s:.1f} s; sessions of {args.sequence_length} frames; {args.client} client, "
          + (f"after {args.warmup:g} s of the same load not counted, " if args.warmup else "")
          + f"sharing the machine with the server (1-min load average before the load {result['load_average_before']:.2f}, "
          "other users of the machine included)")
    print()
    print("| method | places | robots x Hz | s | sent / planned | ok | errors | late | missed | ok req/s "
          "| p50 ms | p95 ms | p99 ms | max ms | server total p50/p95 ms | describe p50/p95 | of which queue p50/p95 "
          "| match p50/p95 | decode p50 | batches: n, mean size (p50/p95 at most) | RSS MB ready / peak |")
    print("|" + "---|" * 21)

    def stage(name: str) -> str:
        s = st.get(name)
        return f"{fmt(s['p50'], 2)} / {fmt(s['p95'], 2)}" if s else "-"

    def batch_cell() -> str:
        if not batches:
            return "-"
        if not batches["batches"]:
            return "0"
        return (f"{batches['batches']}, {batches['mean']:.1f} ({batches['p50_at_most']:g}/"
                f"{batches['p95_at_most']:g})")

    errors = sum(stats.errors.values())
    print(f"| {result['method']} | {result['n_places']} | {args.robots} x {args.rate_hz:g} | {args.duration:g} "
          f"| {stats.sent} / {planned} | {ok} | {errors} | {stats.late} | {stats.missed} "
          f"| {result['throughput']:.1f} | {fmt(result['p50'])} | {fmt(result['p95'])} | {fmt(result['p99'])} "
          f"| {fmt(result['max'])} | {stage('total_ms')} | {stage('describe_ms')} | {stage('queue_ms')} "
          f"| {stage('match_ms')} | {fmt(st.get('decode_ms', {}).get('p50'), 2)} | {batch_cell()} "
          f"| {fmt(rss_before, 0)} / {fmt(result['rss_mb_peak'], 0)} |")
    if floor_result:
        f = floor_result
        print(f"| floor: faiss IndexFlatIP, {f['dim']}-d random unit, in-process | {f['n_places']} "
              f"| {f['rate']:g} req/s total | {args.floor_duration or args.duration:g} | {f['n']} / {f['n']} "
              f"| {f['n']} | 0 | - | - | {f['throughput']:.1f} | {fmt(f['p50'], 2)} | {fmt(f['p95'], 2)} "
              f"| {fmt(f['p99'], 2)} | {fmt(f['max'], 2)} | search p50 {fmt(f['search_p50'], 2)} | - | - | - | - | - "
              "| - |")
    print()
    print(f"- CPU during the load ({wall:.1f} s, {os.cpu_count()} cores): server {fmt(result['server_cpu_s'])} s, "
          f"load client {fmt(result['client_cpu_s'])} s")
    if stats.errors:
        print("- errors by status/code: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.errors.items())))
    else:
        print("- errors: none")
    verdict = result["p99"] is not None and result["p99"] <= args.p99_budget_ms and not errors and not stats.missed
    print(f"- p99 budget {args.p99_budget_ms:g} ms: {'met' if verdict else 'NOT met'}"
          + ("" if verdict else f" (p99 {fmt(result['p99'])} ms, {errors} errors, {stats.missed} missed)"))
    bad = [s for s in result["timeline"] if s["errors"] or s["over_budget"]]
    if bad:
        print(f"- seconds of the load with errors or replies over {args.p99_budget_ms:g} ms: "
              + ", ".join(f"{s['second']} ({s['errors']} errors, {s['over_budget']} slow, max {s['max_ms']:.0f} ms)"
                          for s in bad[:12]) + (f", and {len(bad) - 12} more" if len(bad) > 12 else ""))
    if st:
        slowest = max((k for k in st if k != "total_ms"), key=lambda k: st[k]["p50"] or 0)
        queue = (result["p50"] or 0) - (st["total_ms"]["p50"] or 0)
        print(f"- slowest server stage (p50): {slowest}; client p50 minus server total p50 = {queue:.1f} ms "
              "(HTTP, waiting for a worker thread, client CPU)")
    if floor_result and result["p50"] and floor_result["p50"]:
        print(f"- served p50 / floor p50 = {result['p50'] / floor_result['p50']:.0f}x; "
              f"served p99 / floor p99 = {result['p99'] / floor_result['p99']:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
