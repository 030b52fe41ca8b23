"""The benchmark suite, small (``python -m bench --quick``): every case runs, delivers every
post exactly once, and its results make the table; one small case runs on PostgreSQL, two nodes.
In full: ``python -m bench``. The SSE and WebSocket cases (``ssefanout``, ``wsfanout``,
``ssethroughput``) are among them; ``bench.next_link``'s stream mode has a smoke test of its
own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import next_link, report, suite
from bench.setups import Setup

QUICK = suite.selected(suite.NAMES, quick=True)


@pytest.mark.parametrize(
    ("case", "setup"), QUICK, ids=[case.name + setup.key for case, setup in QUICK]
)
def test_bench_case_smoke(case: suite.Case, setup: Setup, tmp_path: Path) -> None:
    record = suite.run_case(case, quick=True, out=tmp_path, setup=setup)
    assert suite.failures(record) == 0, record["summary"]
    assert record["targets"], "each case judges at least one target"
    assert (tmp_path / f"{case.name}{setup.key}.json").exists()
    table = report.render({record["key"]: record})
    assert case.title in table
    for target in record["targets"]:
        assert target["target"] in table


def test_quick_runs_postgresql_once() -> None:
    """CI's smoke stays small: every case on SQLite, and one on PostgreSQL."""
    assert {case.name for case, setup in QUICK if setup.database == "sqlite"} == set(suite.NAMES)
    assert len([setup for _, setup in QUICK if setup.database == "postgresql"]) == 1


def test_next_link_stream_mode_smoke() -> None:
    """bench.next_link's stream mode: streams sharing a next link all get the publish, and
    each distinct link is called on its own (``python -m bench.next_link --mode stream``)."""
    shared = asyncio.run(next_link.trial("shared", 20, "stream", wait=10))
    assert (shared.got, shared.refused, shared.links) == (20, 0, 1), shared
    distinct = asyncio.run(next_link.trial("distinct", 20, "stream", wait=10))
    assert distinct.refused == 0 and distinct.links == distinct.calls > 1, distinct
