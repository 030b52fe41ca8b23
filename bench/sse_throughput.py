"""Throughput with server-sent events: posts over 100 channels while each channel's reader holds
one SSE stream of its posts feed, beside raw Pushpin streams at the same rate.

The same cases as ``bench.throughput`` (the long-poll version), with the same writers, posts
and accounts; only the readers differ:

origin, origin POSTs direct
    Reader i follows channel i and holds ``GET /api/notifications/posts?since=CURSOR`` with
    ``Accept: text/event-stream`` through Pushpin: one stream for the whole run, where a
    long-poll asks again after each answer. A stream that ends is opened again from its last
    event's id.
raw
    Reader i holds a stream on channel i of a raw Pushpin (no prev-id, no next link); the
    benchmark publishes each post as an ``http-stream`` item, batched every 5 ms.

The posts are made once every stream is held and the origin idle: each reader's stream has a
next link of its own (it is the reader's feed), and Pushpin calls held streams' links through
a limiter (about 1 s after a channel's first subscriber; app/streams.py), so settling waits
until the origin gets no request for a second (at most SETTLE_TIMEOUT).

Reported as in the long-poll case, with the CPU of the origin and of Pushpin per post
delivered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import HOST, ms, number
from bench.setups import SQLITE, Setup
from bench.throughput import (
    SETTLE_SECONDS,
    TARGET_P99_MS,
    OriginRun,
    RawRun,
    Run,
    cases,
    origin_health,
)
from tests.sse import EventStream

CONNECT_TIMEOUT = 30.0
SETTLE_TIMEOUT = 60.0
QUIET_SECONDS = 1.0  # idle: no request to the origin for this long
EVENT_TIMEOUT = 3600.0  # a stream is read until the run ends


class StreamReading(Run):
    """Readers that hold one event stream each (``poll``: its path and headers, from a
    cursor), opened again from the last event's id if it ends."""

    readers_noun = "SSE streams"

    async def _reader(self, index: int, since: str) -> None:
        url = f"http://{HOST}:{self.poll_ports[index % len(self.poll_ports)]}"
        tally = self.tally
        while not self.stopping:
            path, headers = self.poll(index, since)
            try:
                status, _, stream = await EventStream.connect(url, path, headers, CONNECT_TIMEOUT)
            except (OSError, EOFError, ValueError) as exc:  # TimeoutError is an OSError
                tally.error(tally.poll_errors, type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            tally.polls += 1
            if stream is None:
                tally.error(tally.poll_errors, f"HTTP {status}")
                await asyncio.sleep(0.05)
                continue
            try:
                while True:
                    event = await stream.next(EVENT_TIMEOUT)
                    if event.name == "post":
                        content = json.loads(event.data)["content"]
                        tally.record(content, index, self.channels, time.perf_counter())
                    since = event.id or since
            except (OSError, EOFError, ValueError) as exc:
                tally.error(tally.poll_errors, f"stream ended ({type(exc).__name__})")
            finally:
                stream.close()


class OriginStreams(StreamReading, OriginRun):
    async def settle(self) -> float:
        """Until no origin got a request but our look at its /health for QUIET_SECONDS."""
        start = time.monotonic()
        await asyncio.sleep(SETTLE_SECONDS)
        before = await origin_health(self.origin_ports)
        while time.monotonic() - start < SETTLE_TIMEOUT:
            await asyncio.sleep(QUIET_SECONDS)
            after = await origin_health(self.origin_ports)
            # Each look at /health is a request: the last one is the only one between.
            if all(a["requests"] - b["requests"] == 1 for a, b in zip(after, before, strict=True)):
                break
            before = after
        return time.monotonic() - start


class RawStreams(StreamReading, RawRun):
    def poll(self, index: int, since: str) -> tuple[str, dict[str, str]]:
        return f"/stream/raw{index}", {}

    def item(self, n: int, channel: str) -> dict[str, Any]:
        event = f"id: {n + 1}\nevent: post\ndata: {json.dumps({'content': f'tp {n}'})}\n\n"
        return {
            "channel": channel,
            "id": str(n + 1),
            "formats": {"http-stream": {"content": event}},
        }

    def published(self, items: list[dict[str, Any]]) -> None:
        """Nothing to remember: a stream is not read again from a cursor."""


def run(
    channels: int,
    rate: float,
    seconds: float,
    workdir: Path,
    *,
    sweep: Sequence[float] = (),
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The three cases at ``rate`` with SSE readers; then POSTs direct at each rate of
    ``sweep``."""
    kinds = (OriginStreams, RawStreams)
    summary = cases(channels, rate, seconds, workdir, kinds, "SSE stream", sweep, setup, echo)
    return {"summary": summary, "targets": _targets(summary["cases"])}


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POSTs direct: the offered rate stored and delivered, each post once, p99 under target.
    Through Pushpin: measured and reported beside it, no target."""
    by_case = {s["case"]: s for s in rows}
    direct, raw = by_case["direct"], by_case["raw"]
    offered = direct["offered_rate"]
    p99 = direct["delivery_p99_ms"]
    rate = min(direct["stored_per_second"], direct["delivered_per_second"])
    exact = not direct["lost"] and not direct["duplicates"] and not direct["misrouted"]
    return [
        {
            "target": f"SSE, POSTs direct: {offered:,.0f} posts/s offered, all delivered once, "
            f"p99 under {TARGET_P99_MS:.0f} ms",
            "measured": f"{direct['stored_per_second']:,.0f}/s stored, "
            f"{direct['delivered_per_second']:,.0f}/s delivered, {direct['lost']} lost, "
            f"{direct['duplicates']} duplicated; p99 {ms(p99)}, p50 "
            f"{ms(direct['delivery_p50_ms'])}; CPU per post: origin "
            f"{number(direct.get('origin_cpu_ms_per_post'), 2)} ms, Pushpin "
            f"{number(direct.get('pushpin_cpu_ms_per_post'), 2)} ms (raw Pushpin: p99 "
            f"{ms(raw['delivery_p99_ms'])}, {number(raw.get('pushpin_cpu_ms_per_post'), 2)} ms)",
            "met": rate >= 0.98 * offered and exact and p99 is not None and p99 < TARGET_P99_MS,
        }
    ]
