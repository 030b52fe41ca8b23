"""The benchmark suite, small (``python -m bench --quick``): every case runs, delivers every
post exactly once, and its results make the table; one small case runs on PostgreSQL, two nodes.
In full: ``python -m bench``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report, suite
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
