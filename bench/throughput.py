"""Throughput: writers post over many channels while one client per channel long-polls it.

The run command (Pushpin and the origin). One writer account owns C channels (100); C reader
accounts each follow one of them and long-poll ``GET /api/notifications/posts?since=CURSOR``
through Pushpin, asking again with the new cursor after each answer, as any client does.
Writers (keep-alive connections through Pushpin) POST at an offered rate (1,000 posts per
second), post k to channel k mod C, on a fixed schedule: a writer that falls behind sends at
once, so the rate achieved is what the server sustained.

Measured: posts stored per second (201 answers over the writing time), posts delivered per
second (to the reader that follows the channel, over the time from the first POST to the last
delivery), and from each POST's start to its delivery, p50 and p99. Every post must arrive
exactly once: lost and duplicated posts are counted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench.common import BenchError, Conn, cpu_seconds, descendants, median, ms, percentile
from tests.support import PASSWORD, Stack, basic, running

WRITERS = 25  # connections posting at once
DRAIN_SECONDS = 10.0  # after the last POST, how long deliveries may take to arrive
SETTLE_SECONDS = 2.0  # Pushpin re-requests new holds about 1 s after a channel's first one
TARGET_RATE = 1000.0  # posts per second
TARGET_P99_MS = 250.0
WRITER = "writer@bench.example"


def _channel(i: int) -> str:
    return f"c{i}@bench.example"


@dataclass
class Tally:
    sent: dict[int, float] = field(default_factory=dict)  # post number: when its POST started
    stored: dict[int, float] = field(default_factory=dict)  # post number: when the 201 came
    arrived: dict[int, float] = field(default_factory=dict)  # post number: first delivery
    post_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    misrouted: int = 0  # delivered to a reader that does not follow its channel
    post_errors: dict[str, int] = field(default_factory=dict)
    poll_errors: dict[str, int] = field(default_factory=dict)
    polls: int = 0

    def error(self, kind: dict[str, int], what: str) -> None:
        kind[what] = kind.get(what, 0) + 1


class Throughput:
    def __init__(self, stack: Stack, readers: list[str], direct: bool) -> None:
        self.stack, self.readers = stack, readers
        self.port = int(stack.env["PORT"])
        # Writers POST through Pushpin, or (direct) straight to the origin's own port.
        self.post_port = int(stack.env["ORIGIN_PORT" if direct else "PORT"])
        self.tally = Tally()
        self.stopping = False

    async def _reader(self, index: int, since: str) -> None:
        conn = Conn(self.port)
        auth = {"Authorization": basic(self.readers[index])}
        tally = self.tally
        while not self.stopping:
            try:
                status, _, body = await conn.request(
                    "GET", f"/api/notifications/posts?since={since}", auth, timeout=70
                )
            except (OSError, EOFError, ValueError) as exc:
                tally.error(tally.poll_errors, type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            now = time.perf_counter()
            tally.polls += 1
            if status != 200:
                tally.error(tally.poll_errors, f"HTTP {status}")
                await asyncio.sleep(0.05)
                continue
            answer = json.loads(body)
            for item in answer["items"]:
                number = int(item["content"].removeprefix("tp "))
                if number % len(self.readers) != index:
                    tally.misrouted += 1
                elif number in tally.arrived:
                    tally.duplicates += 1
                else:
                    tally.arrived[number] = now
            since = answer["last"]
        conn.close()

    async def _writer(
        self, numbers: itertools.count[int], total: int, start: float, rate: float
    ) -> None:
        conn = Conn(self.post_port)
        headers = {"Authorization": basic(WRITER, PASSWORD), "Content-Type": "application/json"}
        channels = len(self.readers)
        tally = self.tally
        while (number := next(numbers)) < total:
            due = start + number / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            body = json.dumps({"content": f"tp {number}"}).encode()
            path = f"/api/{_channel(number % channels)}/content/posts"
            t0 = time.perf_counter()
            tally.sent[number] = t0
            try:
                status, _, _ = await conn.request("POST", path, headers, body)
            except (OSError, EOFError, ValueError) as exc:
                tally.error(tally.post_errors, type(exc).__name__)
                continue
            t1 = time.perf_counter()
            tally.post_ms.append((t1 - t0) * 1000)
            if status == 201:
                tally.stored[number] = t1
            else:
                tally.error(tally.post_errors, f"HTTP {status}")
        conn.close()

    async def run(
        self, rate: float, seconds: float, pids: list[int], echo: Callable[[str], None]
    ) -> dict[str, Any]:
        cursor = Conn(self.port)
        status, _, body = await cursor.request(
            "GET", "/api/notifications/posts", {"Authorization": basic(self.readers[0])}
        )
        cursor.close()
        if status != 200:
            raise BenchError(f"cannot read the cursor: HTTP {status}")
        since = json.loads(body)["last"]
        readers = []
        for index in range(len(self.readers)):
            readers.append(asyncio.create_task(self._reader(index, since)))
            if index % 20 == 19:
                await asyncio.sleep(0.05)  # Pushpin refuses bursts of new connections
        await asyncio.sleep(SETTLE_SECONDS)
        total = int(rate * seconds)
        echo(f"  throughput: {len(self.readers)} long-polls held; posting {total} posts")
        cpu_before = {pid: _cpu(pid) for pid in pids}
        client_before = time.process_time()
        start = time.perf_counter() + 0.05
        numbers = itertools.count()
        writers = [
            asyncio.create_task(self._writer(numbers, total, start, rate)) for _ in range(WRITERS)
        ]
        await asyncio.gather(*writers)
        written = time.perf_counter()
        deadline = written + DRAIN_SECONDS
        while len(self.tally.arrived) < len(self.tally.stored) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        busy = time.perf_counter() - start
        cpu = {pid: (_cpu(pid) - cpu_before[pid]) / busy for pid in pids}
        cpu[0] = (time.process_time() - client_before) / busy  # this process: the clients
        self.stopping = True
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return self._summary(rate, seconds, start, written, cpu)

    def _summary(
        self, rate: float, seconds: float, start: float, written: float, cpu: dict[int, float]
    ) -> dict[str, Any]:
        t = self.tally
        delays = [(t.arrived[n] - t.sent[n]) * 1000 for n in t.arrived if n in t.sent]
        last_arrival = max(t.arrived.values(), default=start)
        last_stored = max(t.stored.values(), default=start)
        return {
            "channels": len(self.readers),
            "offered_rate": rate,
            "seconds": seconds,
            "posts": len(t.sent),
            "stored": len(t.stored),
            "delivered": len(t.arrived),
            "lost": len(set(t.stored) - set(t.arrived)),
            "duplicates": t.duplicates,
            "misrouted": t.misrouted,
            "stored_per_second": len(t.stored) / max(last_stored - start, 1e-9),
            "delivered_per_second": len(t.arrived) / max(last_arrival - start, 1e-9),
            "delivery_p50_ms": percentile(delays, 50),
            "delivery_p99_ms": percentile(delays, 99),
            "delivery_max_ms": max(delays, default=None),
            "post_p50_ms": median(t.post_ms),
            "post_p99_ms": percentile(t.post_ms, 99),
            "polls": t.polls,
            "post_errors": t.post_errors,
            "poll_errors": t.poll_errors,
            "writing_seconds": written - start,
            "cpu_cores": cpu,
        }


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _setup(stack: Stack, channels: int) -> list[str]:
    """The writer and its channels; one reader per channel, following it."""
    with stack.account(WRITER) as writer:
        for i in range(channels):
            r = writer.post(f"/api/{_channel(i)}", json={})
            if r.status_code != 201:
                raise BenchError(f"cannot create {_channel(i)}: HTTP {r.status_code} {r.text}")

    def reader(i: int) -> str:
        name = f"reader{i}@bench.example"
        with stack.account(name) as client:
            r = client.post("/api/subscribed", json={f"{_channel(i)}/posts": "publisher"})
            if r.status_code != 200:
                raise BenchError(f"{name} cannot follow: HTTP {r.status_code} {r.text}")
        return name

    with ThreadPoolExecutor(4) as pool:  # account creation is a slow password hash each
        return list(pool.map(reader, range(channels)))


def run(
    channels: int,
    rate: float,
    seconds: float,
    workdir: Path,
    *,
    direct: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    echo(
        f"throughput: {rate:.0f} posts/s offered for {seconds:.0f} s over {channels} channels, "
        f"one long-poll per channel"
    )
    with running(workdir / "data") as stack:
        readers = _setup(stack, channels)
        assert stack.process is not None
        origin_pid = stack.process.pid
        pushpin = descendants(origin_pid)
        bench = Throughput(stack, readers, direct)
        summary = uvloop.run(bench.run(rate, seconds, [origin_pid, *pushpin], echo))
    cpu = summary.pop("cpu_cores")
    summary["origin_cpu_cores"] = cpu.get(origin_pid, 0.0)
    summary["client_cpu_cores"] = cpu.pop(0)
    summary["pushpin_cpu_cores"] = sum(v for pid, v in cpu.items() if pid != origin_pid)
    s = summary
    echo(
        f"throughput: {s['stored_per_second']:.0f} posts/s stored, "
        f"{s['delivered_per_second']:.0f}/s delivered ({s['delivered']}/{s['stored']}, "
        f"{s['lost']} lost, {s['duplicates']} duplicated); POST to delivery p50 "
        f"{ms(s['delivery_p50_ms'])}, p99 {ms(s['delivery_p99_ms'])}; CPU: origin "
        f"{s['origin_cpu_cores']:.2f} cores, Pushpin {s['pushpin_cpu_cores']:.2f}, "
        f"clients {s['client_cpu_cores']:.2f}"
    )
    if s["post_errors"] or s["poll_errors"]:
        echo(f"  errors: posts {s['post_errors']}, polls {s['poll_errors']}")
    p99 = s["delivery_p99_ms"]
    rate_met = s["stored_per_second"] >= 0.98 * TARGET_RATE and s["delivered_per_second"] >= (
        0.98 * TARGET_RATE
    )
    exact = not s["lost"] and not s["duplicates"] and not s["misrouted"]
    targets = [
        {
            "target": f"at least {TARGET_RATE:.0f} posts/s stored and delivered",
            "measured": f"{s['stored_per_second']:.0f}/s stored, "
            f"{s['delivered_per_second']:.0f}/s delivered, {s['lost']} lost, "
            f"{s['duplicates']} duplicated",
            "met": rate_met and exact,
        },
        {
            "target": f"p99 POST to delivery under {TARGET_P99_MS:.0f} ms",
            "measured": f"p99 {ms(p99)} (p50 {ms(s['delivery_p50_ms'])})",
            "met": p99 is not None and p99 < TARGET_P99_MS,
        },
    ]
    return {"summary": summary, "targets": targets}
