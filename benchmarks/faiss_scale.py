"""Reference-index cost at scale: build time, memory, query latency and recall of approximate search vs exact.

    .venv/bin/python benchmarks/faiss_scale.py --sizes 100000 1000000 --dim 256 --out runs/faiss_scale.json

Descriptors are synthetic but clustered like real ones (a Gaussian mixture projected onto the unit sphere); the
queries are references plus noise, re-normalised, so the exact top-1 is the source place for only about 75% of
queries (at 10^5 places), as for a learned descriptor on a hard traverse: crowded neighbourhoods are where
approximate search loses recall.
Recall is the share of queries whose exact top-1 is among the approximate top-k. Prints a markdown table for
docs/benchmarks.md; 10^6 places at 256 dimensions peaks at about 4 GiB of memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from spikebot.provenance import cpu_model
from vpr.index import IndexConfig, ReferenceIndex, recall_against_exact

COLUMNS = ("places", "dim", "index", "build s", "memory MiB", "single query ms", "batched ms/query",
           "recall@1 vs exact", "recall@10 vs exact")


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_descriptors(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors scattered around ``clusters`` random directions; built in chunks to bound temporaries."""
    centres = normalise(rng.standard_normal((clusters, dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * (spread / dim**0.5)
        out[start:stop] = normalise(centres[rng.integers(clusters, size=stop - start)] + noise)
    return out


def noisy_queries(
    references: np.ndarray, count: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Queries near ``count`` distinct references, and the ids of those source references."""
    sources = rng.choice(len(references), size=count, replace=False)
    jitter = rng.standard_normal((count, references.shape[1]), dtype=np.float32) * (noise / references.shape[1] ** 0.5)
    return normalise(references[sources] + jitter), sources


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(kind: str, references: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, config: IndexConfig,
            single_queries: int) -> dict:
    start = time.perf_counter()
    index = ReferenceIndex.build(references, replace(config, kind=kind))
    build_seconds = time.perf_counter() - start
    index.search(queries[:1], 10)  # warm-up
    single = iter(queries[:single_queries])
    single_ms = median_ms(lambda: index.search(next(single)[None], 10), single_queries)
    start = time.perf_counter()
    _, ids = index.search(queries, 10)
    batched_ms = 1000 * (time.perf_counter() - start) / len(queries)
    return {
        "places": len(references), "dim": references.shape[1], "index": kind,
        "build_s": round(build_seconds, 2), "memory_mib": round(index.memory_bytes / 2**20, 1),
        "single_query_ms": round(single_ms, 3), "batched_ms_per_query": round(batched_ms, 4),
        "recall@1": recall_against_exact(ids, exact_ids, 1), "recall@10": recall_against_exact(ids, exact_ids, 10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", choices=["exact", "ivfpq", "hnsw"], default=["exact", "ivfpq", "hnsw"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single-queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="within-cluster noise norm, relative to unit centres")
    parser.add_argument("--noise", type=float, default=3.0,
                        help="query noise norm relative to unit references; 3 makes the exact top-1 the source ~75%%")
    parser.add_argument("--nprobe", type=int, default=IndexConfig.nprobe)
    parser.add_argument("--ef-search", type=int, default=IndexConfig.ef_search)
    parser.add_argument("--threads", type=int, default=faiss.omp_get_max_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the rows and machine details as JSON")
    args = parser.parse_args()
    if not 1 <= args.single_queries <= args.queries:
        parser.error("--single-queries must be in 1..--queries")
    faiss.omp_set_num_threads(args.threads)
    config = IndexConfig(nprobe=args.nprobe, ef_search=args.ef_search, seed=args.seed)
    machine = {"faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "cpu": cpu_model()}
    print(f"faiss {machine['faiss']}, {machine['faiss_threads']} threads, {machine['cpu']}; "
          f"nprobe={config.nprobe}, ef_search={config.ef_search}, {args.clusters} clusters, query noise {args.noise}")

    rows, sources_found = [], {}
    for size in args.sizes:
        rng = np.random.default_rng(args.seed)
        references = clustered_descriptors(size, args.dim, args.clusters, args.spread, rng)
        queries, sources = noisy_queries(references, args.queries, args.noise, rng)
        _, exact_ids = ReferenceIndex.build(references).search(queries, 1)
        sources_found[size] = float(np.mean(exact_ids[:, 0] == sources))
        rows += [measure(kind, references, queries, exact_ids, config, args.single_queries) for kind in args.kinds]
        del references  # free this size's descriptors before drawing the next, larger set
    print(", ".join(f"exact top-1 is the source place for {share:.1%} of queries at {size} places"
                    for size, share in sources_found.items()))
    print()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print(f"| {row['places']} | {row['dim']} | {row['index']} | {row['build_s']:.2f} | {row['memory_mib']:.1f} | "
              f"{row['single_query_ms']:.3f} | {row['batched_ms_per_query']:.4f} | {row['recall@1']:.3f} | "
              f"{row['recall@10']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "arguments": vars(args) | {"out": str(args.out)},
                                        "exact_top1_is_source": sources_found, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
