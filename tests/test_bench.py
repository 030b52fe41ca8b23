"""The benchmark suite, small (``python -m bench --quick``): every case runs, delivers every
post exactly once, and its results make the table. In full: ``python -m bench``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report, suite


@pytest.mark.parametrize("case", suite.CASES, ids=suite.NAMES)
def test_bench_case_smoke(case: suite.Case, tmp_path: Path) -> None:
    record = suite.run_case(case, quick=True, out=tmp_path)
    assert suite.failures(record) == 0, record["summary"]
    assert record["targets"], "each case judges at least one target"
    assert (tmp_path / f"{case.name}.json").exists()
    table = report.render({case.name: record})
    assert case.title in table
    for target in record["targets"]:
        assert target["target"] in table
