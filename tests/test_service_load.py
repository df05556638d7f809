"""benchmarks/service_load.py: the in-process floor and the small helpers (the load run itself needs a server)."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("service_load", Path(__file__).parents[1] / "benchmarks" / "service_load.py")
service_load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(service_load)


def test_floor_paces_requests_and_reports_percentiles():
    result = service_load.floor(n_places=200, dim=16, rate=200.0, duration=0.1)
    assert result["n"] == 20 and result["n_places"] == 200
    assert 0 <= result["p50"] <= result["p95"] <= result["p99"] <= result["max"]
    assert result["wall_s"] >= 0.09


def test_helpers():
    assert service_load.percentile([], 50) is None
    assert service_load.percentile([1, 2, 3], 50) == 2.0
    assert service_load.fmt(None) == "-" and service_load.fmt(1.234, 2) == "1.23"
    assert service_load.rss_mb(__import__("os").getpid()) > 0
