"""Small soaks with real faults: readers looping on since=last see every committed post of what
they follow, once, in order. On one node through a Pushpin kill and a whole-tree kill and
restart; on two nodes (one PostgreSQL database) through a whole-tree kill of the node that
publishes, and through a graceful rolling restart of the origins (in full: python -m bench.soak)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.soak import run

COUNTS = ("lost", "duplicated", "out_of_order", "foreign", "unknown")


def assert_nothing_lost(summary: dict[str, Any], posts: int) -> None:
    assert summary["committed"] == posts, summary
    assert {k: summary[k] for k in COUNTS} == dict.fromkeys(COUNTS, 0), summary
    # Every post answered 201 is still in the store, and none was written twice.
    assert summary["lost_writes"] == summary["duplicate_writes"] == 0, summary
    assert all(r["received"] > 0 for r in summary["per_reader"]), summary["per_reader"]
    assert summary["reader_errors"] == [], summary["reader_errors"]
    assert summary["exit_code"] == 0, summary


def test_readers_see_every_post_once_in_order_through_kills(tmp_path: Path) -> None:
    # 20 readers (not the 5 the issue asks at least): at 5, one channel per node lost posts
    # too rarely to be caught; at 20 it lost some in 3 runs of 3.
    summary = run(clients=20, writers=5, posts=100, data_dir=tmp_path / "data")
    assert [f["kind"] for f in summary["faults"]] == [
        "pushpin SIGKILL",
        "whole tree SIGKILL and restart",
    ], summary
    # Both faults came while the writers were still writing.
    assert all(0 < f["written"] < 100 for f in summary["faults"]), summary["faults"]
    assert_nothing_lost(summary, 100)


def test_readers_see_every_post_once_in_order_across_two_nodes_when_the_publisher_dies(
    tmp_path: Path, postgres_url: str
) -> None:
    """Readers and writers spread over two nodes; midway the node holding the publisher's
    leases is killed whole (SIGKILL) and started again: its clients move to the other node
    with their cursors."""
    summary = run(
        clients=20,
        writers=5,
        posts=100,
        data_dir=tmp_path / "data",
        nodes=2,
        database_url=postgres_url,
    )
    assert [(f["kind"], f["node"]) for f in summary["faults"]] == [
        ("whole tree SIGKILL and restart", 0)  # the first node started took the leases
    ], summary
    assert 0 < summary["faults"][0]["written"] < 100, summary["faults"]
    # The killed node's clients (half of them) moved to the other node.
    assert summary["reader_moves"] >= 10, summary
    assert_nothing_lost(summary, 100)


def test_a_graceful_rolling_restart_of_the_origins_loses_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two nodes, each an origin run alone behind its own Pushpin, which lists both origins:
    each origin in turn gets SIGTERM and is started again, while clients keep polling through
    both Pushpins and writers keep posting. A Pushpin sends requests to the other origin
    meanwhile: no client needs to move, and none sees any failure but a 502 it retries once."""
    summary = run(
        clients=20,
        writers=5,
        posts=100,
        data_dir=tmp_path / "data",
        nodes=2,
        database_url=postgres_url,
        faults="rolling-origins",
        # 10 s of writing (not 5): both restarts (2-5 s each here) come while writers write.
        rate=10,
    )
    assert [(f["kind"], f["node"], f["exit_code"]) for f in summary["faults"]] == [
        ("origin SIGTERM and restart", 0, 0),
        ("origin SIGTERM and restart", 1, 0),
    ], summary
    assert all(0 < f["written"] < 100 for f in summary["faults"]), summary["faults"]
    assert_nothing_lost(summary, 100)
    retried = {**summary["reader_retries"], **summary["writer_retries"]}
    assert set(retried) <= {"HTTP 502"}, retried
    assert summary["failed_not_502"] == 0, summary
    assert summary["most_failed_in_a_row"] <= 1, summary
    assert summary["reader_moves"] == summary["writer_moves"] == 0, summary
