"""What docs/performance.md's throughput tables share (long-polls in ``bench.report``, SSE in
``bench.report_transports``): the cases in the tables' order, and the columns every one has."""

from __future__ import annotations

from typing import Any

from bench.common import number as _n
from bench.throughput import LABELS

# The columns every throughput table starts with; the last names what the readers hold.
HEAD = (
    "| case | offered | stored | delivered | lost, duplicated | post to delivery p50, p99 "
    "| POST answered p50 | refused: POSTs; "
)


def cases(r: dict[str, Any]) -> list[dict[str, Any]]:
    """A throughput record's cases as its table lists them: through the origin, the sweep of
    lower rates, then raw Pushpin."""
    measured: list[dict[str, Any]] = r["summary"]["cases"]
    swept: list[dict[str, Any]] = r["summary"].get("sweep", [])
    raw = [s for s in measured if s["case"] == "raw"]
    return [s for s in measured if s not in raw] + swept + raw


def cells(s: dict[str, Any]) -> str:
    """A case's row through its refusals (the columns of ``HEAD``); a table's own columns
    follow."""
    return (
        f"| {LABELS[s['case']]} | {s['offered_rate']:,.0f}/s | {s['stored_per_second']:,.0f}/s "
        f"| {s['delivered_per_second']:,.0f}/s | {s['lost']}, {s['duplicates']} "
        f"| {_n(s['delivery_p50_ms'])}, {_n(s['delivery_p99_ms'])} ms "
        f"| {_n(s['post_p50_ms'], 1, ' ms')} "
        f"| {_errors(s['post_errors'])}; {_errors(s['poll_errors'])} "
    )


def _errors(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{n} ({what})" for what, n in by_reason.items()) or "0"
