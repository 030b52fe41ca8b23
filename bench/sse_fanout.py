"""Fan-out of one post to N server-sent event streams held by Pushpin, beside a raw Pushpin.

origin
    The run command; N anonymous streams of the firehose (``GET /api/firehose``, ``Accept:
    text/event-stream``), held by Pushpin on the firehose channel; then a writer (an open
    channel) POSTs one post. Measured: from just before the POST until the last stream has the
    post's event.
raw
    A bare Pushpin in front of a tiny origin that holds each stream on one channel (no prev-id,
    no next link); the same event's bytes are published as one ``http-stream`` item.
raw, linked (``raw-linked``)
    The same, but each stream is held as the origin's are, with a ``prev-id`` on its channel
    and a next link all share (the tiny origin answers it with the same hold), and the item
    is published with its ``prev-id``: what Pushpin's own gap detection costs. Measured on
    2026-12-01 (1,000 and 5,000 streams), it is within the runs' spread of the plain raw case.

What the origin adds before Pushpin's fan-out begins, timed inside it (2026-12-01, 5,000
firehose streams held, 5 posts): the POST reached the origin 2.6 to 3.2 ms after it was sent
(Pushpin's proxy hop), its commit was done 1.0 to 1.3 ms later, the publisher's request left
0.6 to 2.6 ms after the commit (the event loop first finishes the POST's answer), and Pushpin
took 6 to 8 ms to accept it. The first stream had the post 31 to 37 ms after the POST was
sent, the last 220 to 310 ms. So the origin's own share is under 10 ms of each run; the rest
is Pushpin's and the clients', on the same 2 cores, and it varies with the machine: on a VM
that had been up for a day (its kernel reclaiming the page cache), the same case at 5,000
took 400 to 600 ms.

Why the firehose and not per-user posts streams: it is the same shape as the raw case (one
channel, one published item for N streams), it needs no login, and every firehose stream
shares one next link. Pushpin calls a held stream's next link about 1 s after a channel gets
its first subscribers, through a limiter of 10 calls a second, each call taking the streams
that share its URL 100 at a time (app/streams.py): N firehose streams take N / 1,000 seconds
to be asked again. Per-user streams share a link per user, so N streams over few users cost
the same, but a post to followers is one item per follower's channel, which is the long-poll
fan-out's case (``bench.fanout``), not the transport's.

Streams are opened ramped (50 every 50 ms; Pushpin answers 502 to bursts, tried again), and
the post is made once every stream is held and the servers idle (``bench.harness.Holds``): the
origin got no request but its /health for 0.5 s, which is after those next-link calls. A
stream that got an event before the post counts as failed. Each stream stays open until the
run ends, so that closing them does not weigh on the deliveries still under way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from app.streams import sse_event
from bench.common import HOST, followers
from bench.harness import (
    REQUEST_TIMEOUT,
    Answer,
    Bench,
    Clients,
    Holds,
    RunResult,
    begin_fanout,
    failed,
    fanout_record,
    origin_run,
    raw_channel,
    raw_run,
    summarize,
    summarize_extra,
    targets,
)
from bench.setups import SQLITE, Setup, deployed
from tests.sse import EventStream

CONNECT_TIMEOUT = 30.0
RAW_LINKED = "raw-linked"  # raw Pushpin, streams held with a prev-id and a next link
# What the raw case publishes if no origin run delivered anything.
FALLBACK_EVENT = sse_event(1, "post", json.dumps({"content": "x" * 250}))


class Streams:
    """Event streams to ``ports`` (the i-th to ``ports[i % len(ports)]``) at ``path``; each
    attempt's answer is its stream's first event (as ``sse_event`` writes it). The streams
    stay open until ``close``."""

    def __init__(self, ports: list[int], path: str) -> None:
        self.ports, self.path = ports, path
        self.open: list[EventStream] = []

    async def attempt(self, i: int) -> Answer:
        url = f"http://{HOST}:{self.ports[i % len(self.ports)]}"
        try:
            status, _, stream = await EventStream.connect(url, self.path, {}, CONNECT_TIMEOUT)
            if stream is None:
                return Answer(status, b"", time.perf_counter(), "not an event stream")
            self.open.append(stream)
            event = await stream.next(REQUEST_TIMEOUT)
        except (OSError, EOFError, ValueError) as exc:  # TimeoutError is an OSError
            return failed(exc)
        at = time.perf_counter()
        return Answer(200, sse_event(int(event.id or 0), event.name, event.data).encode(), at)

    def close(self) -> None:
        for stream in self.open:
            stream.close()
        self.open.clear()


def _data(event: bytes) -> Any:
    """The JSON of an event as ``sse_event`` writes it (its data line is the last)."""
    return json.loads(event.decode().rpartition("\ndata: ")[2])


class FirehoseStreams(Bench):
    async def origin_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> tuple[RunResult, bytes | None]:
        streams = Streams([int(node.env["PORT"]) for node in self.d.nodes], "/api/firehose")

        def check(created: dict[str, Any]) -> Callable[[bytes], bool]:
            return lambda event: bool(_data(event).get("id") == created["id"])

        try:
            return await origin_run(self.d, Holds(streams.attempt), (run, n), clients, check, echo)
        finally:
            streams.close()

    async def raw_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> RunResult:
        return await self._raw(run, n, clients, echo, linked=False)

    def more_runs(
        self, clients: Clients, echo: Callable[[str], None]
    ) -> list[Callable[[int, int], Awaitable[RunResult]]]:
        async def linked(run: int, n: int) -> RunResult:
            return await self._raw(run, n, clients, echo, linked=True)

        return [linked]

    async def _raw(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None], linked: bool
    ) -> RunResult:
        """A raw run: streams held on one channel, or (``linked``) held as the origin's are,
        with a prev-id and a next link they all share, and the item published with its
        prev-id."""
        channel = raw_channel("linked" if linked else "sse", run, n)
        streams = Streams(
            [self.raw.http_port], f"/stream/{channel}" + ("?prev=1" if linked else "")
        )
        event = self.body or FALLBACK_EVENT.encode()
        item: dict[str, Any] = {
            "channel": channel,
            "id": "2" if linked else "1",
            "formats": {"http-stream": {"content": event.decode()}},
        }
        if linked:
            item["prev-id"] = "1"
        try:
            holds = Holds(streams.attempt)
            case = RAW_LINKED if linked else "raw"
            return await raw_run(self.raw, holds, (run, n), clients, item, event, echo, case)
        finally:
            streams.close()


def run(
    sizes: list[int],
    runs: int,
    workdir: Path,
    *,
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fan-out to each number of streams in ``sizes``, ``runs`` times, origin and raw."""
    begin_fanout(sizes, runs, "streams", "SSE streams of the firehose", setup.label, echo)
    with deployed(setup, workdir) as d:
        writer, _ = followers(d.nodes[0], 0)
        bench = FirehoseStreams(d, writer, workdir / "raw-pushpin")
        results = uvloop.run(bench.run(sizes, runs, echo))
    rows = summarize(results, sizes, runs, 0, setup.origins, "SSE streams", echo)
    summarize_extra(
        rows, results, RAW_LINKED, "raw Pushpin, streams with a prev-id and a link", echo
    )
    return fanout_record(rows, targets(rows, "fan-out to {clients:,} SSE streams"), results)
