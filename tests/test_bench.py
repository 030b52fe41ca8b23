"""A small run of the fan-out benchmark, to keep it working (in full: python -m bench)."""

from __future__ import annotations

from bench.fanout import run


def test_fanout_bench_smoke() -> None:
    summary = run(clients=50, runs=1)
    assert summary["failures"] == 0, summary
