"""The benchmark suite: every case in one run, each writing its raw results as JSON, then the
results table in docs/performance.md made from that JSON.

    python -m bench                    # everything, full size, on every setup (about an hour)
    python -m bench --only latency     # some cases
    python -m bench --database postgresql --origins 2   # on one setup only
    python -m bench --only fanout10k   # fan-out to 10,000, ten runs in a row (not in the suite)
    python -m bench --quick            # a small version of each (CI's smoke test)
    python -m bench report             # only remake docs/performance.md from the JSON

A setup (``bench.setups``) is where a case runs: SQLite, PostgreSQL, or two nodes on one
PostgreSQL database; each case runs on the setups it has a meaning on, and each (case, setup)
writes its own file (``fanout.json``, ``fanout.postgresql.json``, ``fanout.postgresql.2.json``).
``--quick`` runs each case on SQLite, and one small PostgreSQL smoke (a big post on two nodes).

The cases run one after another, never side by side: they share the machine with the servers
they measure. On a machine shared with other work, ``--wait-load 1.5`` waits before each case
until the 1-minute load average is that low (up to 20 minutes, then runs anyway); each record
keeps the load average it started under.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    bigpost,
    fanout,
    holdcost,
    latency,
    report,
    sse_fanout,
    sse_throughput,
    throughput,
    writes,
    ws_fanout,
)
from bench.common import machine
from bench.setups import DATABASES, POSTGRESQL, SETUPS, SQLITE, TWO_NODES, Setup, database_facts
from tests.support import ROOT

RESULTS = ROOT / "bench" / "results"
WAIT_MAX, WAIT_STEP = 1200.0, 15.0  # --wait-load: seconds at most, and between looks


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    full: dict[str, Any]
    quick: dict[str, Any]
    run: Callable[..., dict[str, Any]]
    in_suite: bool = True  # run without --only
    setups: tuple[Setup, ...] = SETUPS  # where it runs without --database and --origins
    quick_setups: tuple[Setup, ...] = (SQLITE,)
    allowed: tuple[Setup, ...] = SETUPS  # where it may run when asked


CASES = [
    Case(
        "fanout",
        "Fan-out of one post to N held long-polls (and memory while they are held)",
        {"sizes": [1000, 5000, 10000], "runs": 3},
        {"sizes": [50], "runs": 1},
        fanout.run,
    ),
    Case(
        "fanout10k",
        "Fan-out to 10,000 held long-polls, ten runs in a row",
        {"sizes": [10000], "runs": 10},
        {"sizes": [50], "runs": 2},
        fanout.run_repeated,
        in_suite=False,  # about 12 minutes: run it alone, with --only
        setups=(SQLITE,),
    ),
    Case(
        "ssefanout",
        "Fan-out of one post to N SSE streams (the firehose; memory while they are held)",
        {"sizes": [1000, 5000, 10000], "runs": 5},
        {"sizes": [50], "runs": 1},
        sse_fanout.run,
    ),
    Case(
        "wsfanout",
        "Fan-out of one post to N WebSockets, one user each",
        {"sizes": [1000], "runs": 3},
        {"sizes": [20], "runs": 1},
        ws_fanout.run,
    ),
    Case(
        "holdcost",
        "Origin CPU per request that ends in a hold, by nodes followed",
        {"requests": 3000},
        {"requests": 200, "nodes": 100},
        holdcost.run,
        setups=(SQLITE, POSTGRESQL),  # one origin's cost
        allowed=(SQLITE, POSTGRESQL),
    ),
    Case(
        "throughput",
        "Posts per second over 100 channels, one long-poll per channel",
        {"channels": 100, "rate": 1000.0, "seconds": 10.0, "sweep": [250.0, 500.0, 750.0]},
        {"channels": 10, "rate": 100.0, "seconds": 2.0},
        throughput.run,
    ),
    Case(
        "ssethroughput",
        "Posts per second over 100 channels, one SSE stream per channel",
        {"channels": 100, "rate": 1000.0, "seconds": 10.0},
        {"channels": 10, "rate": 100.0, "seconds": 2.0},
        sse_throughput.run,
    ),
    Case(
        "latency",
        "One client: from the POST to its delivery",
        {"samples": 200},
        {"samples": 20},
        latency.run,
    ),
    Case(
        "bigpost",
        "A post to a node with many followers: commit, and every item published",
        {"sizes": [10000, 100000], "runs": 3, "held": 1000},
        {"sizes": [200], "runs": 1, "held": 20},
        bigpost.run,
        quick_setups=(SQLITE, TWO_NODES),  # the smoke test's PostgreSQL
    ),
    Case(
        "writes",
        "Posts a second through the store's one write lock, by followers per post",
        {"followers": [0, 100, 1000, 10000], "seconds": 5.0},
        {"followers": [0, 10], "seconds": 0.5},
        writes.run,
    ),
]
NAMES = [case.name for case in CASES]


def selected(
    names: list[str], quick: bool, database: str | None = None, origins: int | None = None
) -> list[tuple[Case, Setup]]:
    """The (case, setup) pairs to run, in the suite's order: each named case on its default
    setups (quick ones with ``quick``), or on those of its allowed setups that match
    ``database`` and ``origins`` where either is given."""
    chosen = []
    for case in CASES:
        if case.name not in names:
            continue
        if database is None and origins is None:
            setups = case.quick_setups if quick else case.setups
        else:
            setups = tuple(
                s
                for s in case.allowed
                if database in (None, s.database) and origins in (None, s.origins)
            )
        chosen += [(case, setup) for setup in setups]
    return chosen


def run_case(
    case: Case,
    quick: bool,
    out: Path,
    echo: Callable[[str], None] = print,
    setup: Setup = SQLITE,
) -> dict[str, Any]:
    """Run one case on ``setup``; write and return its record (params, summary, targets, raw
    results)."""
    params = case.quick if quick else case.full
    record: dict[str, Any] = {
        "case": case.name,
        "key": case.name + setup.key,
        "setup": setup.as_dict(),
        "title": case.title,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "quick": quick,
        "machine": machine(),  # before the run: the load average is the machine's, not ours
        "database": database_facts(setup),
        "params": params,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-{case.name}-") as tmp:
        record |= case.run(**params, workdir=Path(tmp), setup=setup, echo=echo)
    record["seconds"] = round(time.monotonic() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{record['key']}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def failures(record: dict[str, Any]) -> int:
    """Deliveries that went wrong in a case (lost, duplicated, failed): never acceptable."""
    summary = record["summary"]
    if record["case"] in ("fanout", "fanout10k", "ssefanout", "wsfanout"):
        return sum(int(row["origin_failures"] + row["raw_failures"]) for row in summary["sizes"])
    if record["case"] in ("throughput", "ssethroughput"):
        # A POST refused under overload (Pushpin's 502) is in the table, not a failed delivery.
        return sum(
            int(row["lost"] + row["duplicates"] + row["misrouted"])
            for row in summary["cases"] + summary.get("sweep", [])
        )
    if record["case"] == "latency":
        return int(summary["failures"])
    if record["case"] == "bigpost":
        return sum(int(row["origin_failures"] + row["raw_failures"]) for row in summary["sizes"])
    return 0


def wait_for_load(limit: float, echo: Callable[[str], None] = print) -> float:
    """Wait until the 1-minute load average is at most ``limit``, or WAIT_MAX; seconds waited."""
    started = time.monotonic()
    while (load := os.getloadavg()[0]) > limit:
        waited = time.monotonic() - started
        if waited >= WAIT_MAX:
            echo(f"   load {load:.2f} after {waited:.0f} s of waiting: running anyway")
            break
        echo(f"   load {load:.2f} > {limit}: waiting")
        time.sleep(WAIT_STEP)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmark suite against the origin and a raw Pushpin; write each "
        "case's raw results as JSON and the results table (docs/performance.md). Exits with 1 "
        "if a delivery failed (a target missed is reported, not an error).",
    )
    parser.add_argument("what", nargs="?", choices=["run", "report"], default="run")
    parser.add_argument(
        "--only",
        help=f"comma-separated cases: {','.join(NAMES)} (without it, all but "
        f"{','.join(c.name for c in CASES if not c.in_suite)})",
    )
    parser.add_argument("--quick", action="store_true", help="a small version of each case")
    parser.add_argument(
        "--database",
        choices=DATABASES,
        help="run on this database only (without it and --origins: each case's own setups)",
    )
    parser.add_argument(
        "--wait-load",
        type=float,
        metavar="L",
        help="before each case, wait until the 1-minute load average is at most L "
        f"(at most {WAIT_MAX / 60:.0f} minutes)",
    )
    parser.add_argument(
        "--origins",
        type=int,
        choices=[1, 2],
        help="run with this many origins (nodes) only; 2 means PostgreSQL",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"folder for the JSON ({RESULTS.relative_to(ROOT)}; --quick: a temporary one)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        help="the results table to write (docs/performance.md when the JSON goes to "
        f"{RESULTS.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    out = args.out or RESULTS
    docs = args.docs or (report.DOCS if out.resolve() == RESULTS else None)
    if args.what == "report":
        report.write(out, docs or report.DOCS)
        print(f"wrote {docs or report.DOCS}")
        return 0
    chosen = args.only.split(",") if args.only else [c.name for c in CASES if c.in_suite]
    if unknown := set(chosen) - set(NAMES):
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if args.database == "sqlite" and args.origins == 2:
        parser.error("two origins need PostgreSQL")
    runs = selected(chosen, args.quick, args.database, args.origins)
    if not runs:
        parser.error("no chosen case runs on that setup")
    if args.quick and not args.out:
        out = Path(tempfile.mkdtemp(prefix="bench-quick-"))
    failed = 0
    for case, setup in runs:
        print(f"== {case.name} on {setup.label}: {case.title}", flush=True)
        if args.wait_load is not None:
            wait_for_load(args.wait_load)
        record = run_case(case, args.quick, out, setup=setup)
        failed += failures(record)
        for target in record["targets"]:
            verdict = "met" if target["met"] else "MISSED"
            print(f"   target {verdict}: {target['target']}: {target['measured']}")
    if docs and not args.quick:
        report.write(out, docs)
        print(f"wrote {out} and {docs}")
    else:
        print(f"wrote {out}")
    return 1 if failed else 0
