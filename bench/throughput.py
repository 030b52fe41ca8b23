"""Throughput: posts over many channels while one client per channel long-polls it.

Readers: C reader accounts (100) each follow one of C channels and long-poll ``GET
/api/notifications/posts?since=CURSOR`` through Pushpin, asking again with the new cursor after
each answer, as any client does. Posts come at an offered rate (1,000 a second), post k to
channel k mod C by that channel's owner, on a fixed schedule: what falls behind goes out at
once, so the rate achieved is what the server sustained. Each channel has an owner of its own:
one account posting 1,000 a second would measure the count of its own posts against its rate
limit (each post reads every slot of that account's last minute: 3 ms at 10,000 on SQLite),
not what the origin does for many users. Every login is checked (a slow hash) and cached on
every node before anything is timed. Three cases, one after another:

origin
    The run command (Pushpin and the origin). Writers (keep-alive connections) POST through
    Pushpin, as a client of the shipped setup does.
origin, POSTs direct
    The same, but the writers POST straight to the origin's port (as a backend next to the
    origin may): Pushpin then only carries the long-polls.
raw
    A bare Pushpin in front of an origin that keeps each channel's items in memory and answers
    the same long-polls from there or holds them; the benchmark itself adds the items and
    publishes them straight to Pushpin, batched every few ms. No HTTP request per post, no
    store: what Pushpin alone sustains with these long-polls on this machine, the floor.

With two nodes (``--origins 2``), readers and writers are spread over both nodes (reader i and
writer i on node i mod 2), and the origins' CPU is their sum, Pushpin's the sum of both
Pushpins'.

Measured: posts stored per second (201 answers, or items added, over the posting time), posts
delivered per second (to the reader of the post's channel, from the first post to the last
delivery), and from each post's start to its delivery, p50 and p99; CPU of the origin, of
Pushpin's processes and of this process (the clients). Every post must arrive exactly once:
lost, duplicated and misrouted posts are counted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench.common import (
    BenchError,
    Conn,
    RawPushpin,
    cpu_seconds,
    median,
    ms,
    percentile,
)
from bench.setups import SQLITE, Deployment, Setup, deployed
from tests.support import PASSWORD, Stack, basic

WRITERS = 25  # connections posting at once
RAW_TICK = 0.005  # the raw case publishes what is due every 5 ms, in one request
DRAIN_SECONDS = 10.0  # after the last post, how long deliveries may take to arrive
SETTLE_SECONDS = 2.0  # Pushpin re-requests new holds about 1 s after a channel's first one
TARGET_RATE = 1000.0  # posts per second
TARGET_P99_MS = 250.0
CASES = ("origin", "direct", "raw")
LABELS = {"origin": "origin", "direct": "origin, POSTs direct", "raw": "raw Pushpin"}


def _channel(i: int) -> str:
    return f"c{i}@bench.example"


def _owner(i: int) -> str:
    return f"owner{i}@bench.example"


@dataclass
class Tally:
    sent: dict[int, float] = field(default_factory=dict)  # post number: when it was sent
    stored: dict[int, float] = field(default_factory=dict)  # post number: when it was stored
    arrived: dict[int, float] = field(default_factory=dict)  # post number: first delivery
    post_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    misrouted: int = 0  # delivered to a reader that does not follow its channel
    post_errors: dict[str, int] = field(default_factory=dict)
    poll_errors: dict[str, int] = field(default_factory=dict)
    polls: int = 0

    @staticmethod
    def error(kind: dict[str, int], what: str) -> None:
        kind[what] = kind.get(what, 0) + 1

    def record(self, content: str, reader: int, channels: int, now: float) -> None:
        """Post ``content`` ("tp NUMBER") arrived at ``reader`` (the reader of channel
        ``reader``) at ``now``."""
        number = int(content.removeprefix("tp "))
        if number % channels != reader:
            self.misrouted += 1
        elif number in self.arrived:
            self.duplicates += 1
        else:
            self.arrived[number] = now


class Run:
    """One case: readers long-polling ``poll_port``, posts made by ``post_all``."""

    readers_noun = "long-polls"

    def __init__(self, case: str, channels: int, poll_ports: list[int]) -> None:
        self.case, self.channels, self.poll_ports = case, channels, poll_ports
        self.tally = Tally()
        self.stopping = False

    def poll(self, index: int, since: str) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    async def first_cursor(self) -> str:
        return "0"

    async def post_all(self, total: int, start: float, rate: float) -> None:
        raise NotImplementedError

    async def _reader(self, index: int, since: str) -> None:
        conn = Conn(self.poll_ports[index % len(self.poll_ports)])
        tally = self.tally
        while not self.stopping:
            path, headers = self.poll(index, since)
            try:
                status, _, body = await conn.request("GET", path, headers, timeout=70)
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
                tally.record(item["content"], index, self.channels, now)
            since = answer["last"]
        conn.close()

    async def run(
        self, rate: float, seconds: float, pids: list[int], echo: Callable[[str], None]
    ) -> dict[str, Any]:
        since = await self.first_cursor()
        readers = []
        for index in range(self.channels):
            readers.append(asyncio.create_task(self._reader(index, since)))
            if index % 20 == 19:
                await asyncio.sleep(0.05)  # Pushpin refuses bursts of new connections
        settled = await self.settle()
        total = int(rate * seconds)
        echo(
            f"  {LABELS[self.case]}: {self.channels} {self.readers_noun} held "
            f"(settled in {settled:.1f} s); {total} posts"
        )
        requests_before = await self.feed_requests()
        cpu_before = {pid: _cpu(pid) for pid in pids}
        client_before = time.process_time()
        start = time.perf_counter() + 0.05
        await self.post_all(total, start, rate)
        written = time.perf_counter()
        deadline = written + DRAIN_SECONDS
        while len(self.tally.arrived) < len(self.tally.stored) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        busy = time.perf_counter() - start
        cpu = {pid: (_cpu(pid) - cpu_before[pid]) / busy for pid in pids}
        client_cpu = (time.process_time() - client_before) / busy
        requests = await self.feed_requests()
        if requests is not None and requests_before is not None:
            requests.subtract(requests_before)
        self.stopping = True
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return self._summary(rate, seconds, start, written) | {
            "cpu": cpu,
            "client_cpu_cores": client_cpu,
            "busy_seconds": busy,
            "settle_seconds": settled,
            "origin_requests": None if requests is None else dict(+requests),
        }

    async def feed_requests(self) -> Counter[str] | None:
        """The origins' realtime requests so far, by kind (None: no origin in this case)."""
        return None

    async def settle(self) -> float:
        """Wait until the readers are held (Pushpin re-requests new holds about 1 s after a
        channel's first one); how long that took."""
        await asyncio.sleep(SETTLE_SECONDS)
        return SETTLE_SECONDS

    def _summary(self, rate: float, seconds: float, start: float, written: float) -> dict[str, Any]:
        t = self.tally
        delays = [(t.arrived[n] - t.sent[n]) * 1000 for n in t.arrived if n in t.sent]
        last_arrival = max(t.arrived.values(), default=start)
        last_stored = max(t.stored.values(), default=start)
        return {
            "case": self.case,
            "channels": self.channels,
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
        }


class OriginRun(Run):
    def __init__(self, d: Deployment, readers: list[str], direct: bool) -> None:
        ports = [int(node.env["PORT"]) for node in d.nodes]
        super().__init__("direct" if direct else "origin", len(readers), ports)
        self.readers = readers
        self.auth = [{"Authorization": basic(reader)} for reader in readers]
        # Writers POST through Pushpin, or (direct) straight to the origin's own port.
        self.post_ports = [int(node.env["ORIGIN_PORT" if direct else "PORT"]) for node in d.nodes]
        self.origin_ports = [int(node.env["ORIGIN_PORT"]) for node in d.nodes]

    async def feed_requests(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for health in await origin_health(self.origin_ports):
            total.update(health["feed_requests"])
        return total

    def poll(self, index: int, since: str) -> tuple[str, dict[str, str]]:
        return f"/api/notifications/posts?since={since}", self.auth[index]

    async def first_cursor(self) -> str:
        conn = Conn(self.poll_ports[0])
        status, _, body = await conn.request("GET", "/api/notifications/posts", self.auth[0])
        conn.close()
        if status != 200:
            raise BenchError(f"cannot read the cursor: HTTP {status}")
        return str(json.loads(body)["last"])

    async def post_all(self, total: int, start: float, rate: float) -> None:
        numbers = itertools.count()
        await asyncio.gather(
            *(self._writer(i, numbers, total, start, rate) for i in range(WRITERS))
        )

    async def _writer(
        self, index: int, numbers: itertools.count[int], total: int, start: float, rate: float
    ) -> None:
        conn = Conn(self.post_ports[index % len(self.post_ports)])
        owners = [
            {"Authorization": basic(_owner(i), PASSWORD), "Content-Type": "application/json"}
            for i in range(self.channels)
        ]
        tally = self.tally
        while (number := next(numbers)) < total:
            due = start + number / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            body = json.dumps({"content": f"tp {number}"}).encode()
            path = f"/api/{_channel(number % self.channels)}/content/posts"
            t0 = time.perf_counter()
            tally.sent[number] = t0
            try:
                status, _, _ = await conn.request(
                    "POST", path, owners[number % self.channels], body
                )
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


class RawRun(Run):
    def __init__(self, raw: RawPushpin, channels: int) -> None:
        super().__init__("raw", channels, [raw.http_port])
        self.raw = raw

    def poll(self, index: int, since: str) -> tuple[str, dict[str, str]]:
        return f"/feed/raw{index}?since={since}", {}

    async def post_all(self, total: int, start: float, rate: float) -> None:
        """Add what is due to the raw origin's memory, then publish it in one request."""
        conn = Conn(self.raw.publish_port)
        tally = self.tally
        number = 0
        while number < total:
            now = time.perf_counter()
            due = min(total, max(number, int((now - start) * rate) + 1))
            items: list[dict[str, Any]] = []
            for n in range(number, due):
                tally.sent[n] = tally.stored[n] = now
                items.append(self.item(n, f"raw{n % self.channels}"))
            if items:
                status, _, answer_body = await conn.request(
                    "POST",
                    "/publish/",
                    {"Content-Type": "application/json"},
                    json.dumps({"items": items}).encode(),
                )
                if status != 200:
                    raise BenchError(f"the publish failed: HTTP {status} {answer_body[:200]!r}")
                self.published(items)
                number = due
            await asyncio.sleep(RAW_TICK)
        conn.close()

    def item(self, n: int, channel: str) -> dict[str, Any]:
        """Post ``n`` as the item published on ``channel``, added to the raw origin's feed
        (where the readers' next long-polls find it)."""
        body = json.dumps({"content": f"tp {n}"})
        prev = self.raw.tiny.append(channel, n + 1, body)
        answer = f'{{"last":"{n + 1}","items":[{body}]}}'
        return {
            "channel": channel,
            "id": str(n + 1),
            "prev-id": str(prev),
            "formats": {"http-response": {"body": answer}},
        }

    def published(self, items: list[dict[str, Any]]) -> None:
        """Pushpin has taken ``items``: the raw origin may answer long-polls after them."""
        for item in items:
            self.raw.tiny.mark_published(item["channel"], int(item["id"]))


async def origin_health(ports: list[int]) -> list[dict[str, Any]]:
    """Each origin's /health (straight to its port)."""
    answers = []
    for port in ports:
        conn = Conn(port)
        try:
            status, _, body = await conn.request("GET", "/health")
        finally:
            conn.close()
        if status not in (200, 503):
            raise BenchError(f"the origin's /health answered HTTP {status}")
        answers.append(json.loads(body))
    return answers


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _setup(d: Deployment, channels: int) -> list[str]:
    """The channels, each made by its owner; one reader per channel, following it. Every
    login is checked and cached on every node."""
    stack = d.nodes[0]

    def owner(i: int) -> str:
        with stack.account(_owner(i)) as client:
            r = client.post(f"/api/{_channel(i)}", json={})
            if r.status_code != 201:
                raise BenchError(f"cannot create {_channel(i)}: HTTP {r.status_code} {r.text}")
        return _owner(i)

    def reader(i: int) -> str:
        name = f"reader{i}@bench.example"
        with stack.account(name) as client:
            r = client.post("/api/subscribed", json={f"{_channel(i)}/posts": "publisher"})
            if r.status_code != 200:
                raise BenchError(f"{name} cannot follow: HTTP {r.status_code} {r.text}")
        return name

    # Account creation is a slow password hash each; an address may run 4 at once.
    with ThreadPoolExecutor(4) as pool:
        owners = list(pool.map(owner, range(channels)))
        readers = list(pool.map(reader, range(channels)))
        for node in d.nodes[1:]:  # the first node cached them as they were made
            users = owners + readers
            list(pool.map(_login, [node] * len(users), users))
    return readers


def _login(node: Stack, user: str) -> None:
    with node.client(user, origin=True) as client:
        r = client.get("/api/subscribed")
        if r.status_code != 200:
            raise BenchError(f"{user} cannot log in: HTTP {r.status_code} {r.text}")


def _line(s: dict[str, Any]) -> str:
    line = (
        f"{LABELS[s['case']]}: {s['stored_per_second']:.0f} posts/s stored, "
        f"{s['delivered_per_second']:.0f}/s delivered ({s['delivered']}/{s['stored']}, "
        f"{s['lost']} lost, {s['duplicates']} duplicated); post to delivery p50 "
        f"{ms(s['delivery_p50_ms'])}, p99 {ms(s['delivery_p99_ms'])}; CPU: "
    )
    if s["case"] != "raw":
        line += f"origin {s['origin_cpu_cores']:.2f} cores, "
    line += f"Pushpin {s['pushpin_cpu_cores']:.2f}, clients {s['client_cpu_cores']:.2f}"
    if s.get("origin_requests"):
        line += f"; origin requests {s['origin_requests']}"
    if s["post_errors"] or s["poll_errors"]:
        line += f"; errors: posts {s['post_errors']}, polls {s['poll_errors']}"
    return line


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
    """The three cases at ``rate``; then POSTs direct at each lower rate of ``sweep``, to find
    what the origin sustains within the p99 target."""
    kinds = (OriginRun, RawRun)
    summary = cases(channels, rate, seconds, workdir, kinds, "long-poll", sweep, setup, echo)
    return {"summary": summary, "targets": _targets(summary["cases"])}


def cases(
    channels: int,
    rate: float,
    seconds: float,
    workdir: Path,
    kinds: tuple[Callable[[Deployment, list[str], bool], Run], Callable[[RawPushpin, int], Run]],
    reader: str,
    sweep: Sequence[float],
    setup: Setup,
    echo: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    """Origin (POSTs through Pushpin), origin (POSTs direct) and raw at ``rate``, then POSTs
    direct at each rate of ``sweep``; ``kinds``: how the origin cases (given the deployment,
    the readers and whether POSTs go direct) and the raw case (given the raw Pushpin and the
    channels) read, ``reader``: what each channel's reader holds, said once at the start.
    Returns the summary: the rows of the three (``cases``), and those of the sweep."""
    echo(
        f"throughput: {rate:.0f} posts/s offered for {seconds:.0f} s over {channels} channels, "
        f"one {reader} per channel, on {setup.label}"
    )
    origin_kind, raw_kind = kinds
    with deployed(setup, workdir) as d:
        readers = _setup(d, channels)
        origin_pids = d.origin_pids()
        pids = origin_pids + d.pushpin_pids()

        def origin_case(direct: bool, offered: float) -> dict[str, Any]:
            row = uvloop.run(origin_kind(d, readers, direct).run(offered, seconds, pids, echo))
            cpu = row.pop("cpu")
            row["origin_cpu_cores"] = sum(cpu.pop(pid) for pid in origin_pids)
            row["pushpin_cpu_cores"] = sum(cpu.values())
            _per_post(row)
            echo(f"{_line(row)} (offered {offered:,.0f}/s)")
            return row

        rows = [origin_case(direct, rate) for direct in (False, True)]
        swept = [origin_case(True, offered) for offered in sweep]

    async def raw_case() -> dict[str, Any]:
        async with RawPushpin(workdir / "raw-pushpin") as raw:
            row = await raw_kind(raw, channels).run(rate, seconds, raw.pids(), echo)
        row["pushpin_cpu_cores"] = sum(row.pop("cpu").values())
        _per_post(row)
        return row

    rows.append(uvloop.run(raw_case()))
    echo(_line(rows[-1]))
    return {"cases": rows, "sweep": swept}


def _per_post(row: dict[str, Any]) -> None:
    """CPU milliseconds per post delivered, of the origin (where it ran) and of Pushpin."""
    for who in ("origin", "pushpin"):
        cores = row.get(f"{who}_cpu_cores")
        if cores is not None:
            row[f"{who}_cpu_ms_per_post"] = (
                cores * row["busy_seconds"] * 1000 / row["delivered"] if row["delivered"] else None
            )


def within_target(s: dict[str, Any]) -> bool:
    """Did a case sustain its offered rate, every post delivered once, p99 under target?"""
    p99 = s["delivery_p99_ms"]
    return (
        min(s["stored_per_second"], s["delivered_per_second"]) >= 0.98 * s["offered_rate"]
        and _exact(s)
        and p99 is not None
        and p99 < TARGET_P99_MS
    )


def _exact(s: dict[str, Any]) -> bool:
    """Every post delivered once, to its reader."""
    return not s["lost"] and not s["duplicates"] and not s["misrouted"]


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    raw = next(r for r in rows if r["case"] == "raw")
    targets = []
    for s in rows:
        if s["case"] == "raw":
            continue
        label = LABELS[s["case"]]
        exact = _exact(s)
        rate_met = min(s["stored_per_second"], s["delivered_per_second"]) >= 0.98 * TARGET_RATE
        p99 = s["delivery_p99_ms"]
        targets += [
            {
                "target": f"{label}: at least {TARGET_RATE:,.0f} posts/s stored and delivered",
                "measured": f"{s['stored_per_second']:,.0f}/s stored, "
                f"{s['delivered_per_second']:,.0f}/s delivered, {s['lost']} lost, "
                f"{s['duplicates']} duplicated; CPU: origin {s['origin_cpu_cores']:.2f}, "
                f"Pushpin {s['pushpin_cpu_cores']:.2f}, clients {s['client_cpu_cores']:.2f} "
                f"cores of {os.cpu_count()} (raw Pushpin: "
                f"{raw['delivered_per_second']:,.0f}/s delivered with Pushpin at "
                f"{raw['pushpin_cpu_cores']:.2f} cores)",
                "met": rate_met and exact,
            },
            {
                "target": f"{label}: p99 post to delivery under {TARGET_P99_MS:.0f} ms",
                "measured": f"p99 {ms(p99)}, p50 {ms(s['delivery_p50_ms'])} (raw Pushpin: p99 "
                f"{ms(raw['delivery_p99_ms'])})",
                "met": p99 is not None and p99 < TARGET_P99_MS,
            },
        ]
    return targets
