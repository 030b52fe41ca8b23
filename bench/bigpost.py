"""A post to a node with many followers (10,000 and 100,000): how long its commit takes, and how
long until an item for every follower is published to Pushpin; against a raw Pushpin published
as many items.

A post is fanned out on write (docs/design.md): its transaction writes a deliveries row per
follower (and moves each follower's channel head), all under the store's one write lock; then
the publisher sends one item per follower to every Pushpin, in requests of up to BATCH_ROWS
items, in (event id, channel) order. The followers are seeded in bulk (``bench.seed``).

Nobody can hold 100,000 long-polls on this machine (``limits`` in the results says why), so a
sample of the followers (1,000) each holds one long-poll, spread evenly through the publish
order, the last follower in it among them: the sample's last delivery comes with the last
publish request. Pushpin drops the items published for channels nobody holds.

origin
    The run command (with two nodes, both; the sample spread over their Pushpins). Once every
    long-poll is held and the servers are idle, the node's owner POSTs a post straight to the
    (first) origin. Measured: the POST's answer (the commit); until the origin's /health shows
    no item waiting for any target (asked again every POLL_SHARE of the time so far: every item
    published, to every Pushpin); and each held follower's delivery. Also the CPU the origins
    and Pushpins used meanwhile (PostgreSQL's is not counted: the server is shared).
raw
    A bare Pushpin, the same number of long-polls held on as many channels, spread the same
    way among N channels. N items (the origin's bytes, one per channel, made beforehand) are
    published in requests of BATCH_ROWS items, one after another, as the publisher sends them.
    Measured: until the last publish request is answered, and each delivery: Pushpin taking N
    items, the floor for the origin's publish.

Runs alternate origin, raw; each origin run is a new post to the same node (the first one
creates its followers' channel heads, later ones move them).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

from app.model import POSTS
from app.publisher import BATCH_ROWS
from bench.common import (
    HOLD_TIMEOUT,
    BenchError,
    Conn,
    RawPushpin,
    median,
    ms,
    raise_file_limit,
    ratio,
    total_cpu_seconds,
    tree_rss_bytes,
)
from bench.harness import Holds, held_memory, long_polls, origins_idle
from bench.seed import Follower, seed_followers
from bench.setups import SQLITE, Deployment, Setup, deployed
from tests.support import PASSWORD, basic

# /health is looked at every POLL_SHARE of the time since the POST (within these bounds): the
# time to publish is known within about that share, and /health (which counts what waits, up
# to 100,000 rows) is not asked hundreds of times during a long publish.
POLL_SHARE, POLL_MIN, POLL_MAX = 0.05, 0.005, 0.25
# A held request that no answer reached by then has timed out in Pushpin (HOLD_TIMEOUT).
DELIVERY_TIMEOUT = HOLD_TIMEOUT + 10.0
PUBLISH_DEADLINE = 300.0
POST_TIMEOUT = 120.0
TARGET_FOLLOWERS = 100_000
TARGET_COMMIT_MS = 1000.0  # the write lock holds every other write back that long
TARGET_RATIO = 2.0


def _writer(followers: int) -> str:
    return f"big{followers}@bench.example"


def spread(count: int, among: int) -> list[int]:
    """``count`` indices spread evenly over ``range(among)``, the first and the last among
    them."""
    if count >= among:
        return list(range(among))
    if count == 1:
        return [among - 1]
    return sorted({round(j * (among - 1) / (count - 1)) for j in range(count)})


class BigPost:
    def __init__(self, d: Deployment, followers: list[Follower], rundir: Path) -> None:
        self.d, self.followers = d, followers
        self.raw = RawPushpin(rundir)
        self.body: bytes | None = None  # an origin answer, which the raw case publishes

    async def run(
        self, sizes: list[int], runs: int, held: int, echo: Callable[[str], None]
    ) -> list[dict[str, Any]]:
        first = self.d.nodes[0]
        results = []
        async with self.raw, httpx.AsyncClient(timeout=POST_TIMEOUT) as http:
            origins = [httpx.AsyncClient(base_url=n.origin_url) for n in self.d.nodes]
            try:
                for size in sizes:
                    writer = _writer(size)
                    # The owner's login is cached before any timing (one password hash).
                    r = await http.get(
                        f"{first.origin_url}/api/subscribed", auth=(writer, PASSWORD)
                    )
                    if r.status_code != 200:
                        raise BenchError(f"{writer} cannot log in: HTTP {r.status_code}")
                    for run in range(1, runs + 1):
                        row = await self._origin_run(run, size, held, http, origins, echo)
                        results.append(row)
                        echo(_line(row))
                        row = await self._raw_run(run, size, held, echo)
                        results.append(row)
                        echo(_line(row))
            finally:
                for client in origins:
                    await client.aclose()
        return results

    async def _origin_run(
        self,
        run: int,
        size: int,
        held: int,
        http: httpx.AsyncClient,
        origins: list[httpx.AsyncClient],
        echo: Callable[[str], None],
    ) -> dict[str, Any]:
        label = f"origin, {size:,} followers, run {run}"
        # The node's followers are the first ``size`` seeded accounts; the sample is spread
        # over them in the order the publisher takes their channels.
        by_channel = sorted(self.followers[:size], key=lambda f: f"{POSTS}{f.id}")
        sample = [by_channel[i] for i in spread(held, size)]
        before = (await origins[0].get("/health")).json()
        path = f"/api/notifications/posts?since={before['last']}"
        auth = [basic(f.jid, f.api_key) for f in sample]
        ports = [int(node.env["PORT"]) for node in self.d.nodes]
        holds = Holds(long_polls(ports, lambda i: (path, {"Authorization": auth[i]})))
        await holds.open(len(sample), echo, label)
        quiet, settle = await holds.settle(origins_idle(self.d, origins, echo, label))
        origin_rss, pushpin_rss = held_memory(self.d)
        before = (await origins[0].get("/health")).json()
        origin_pids, pushpin_pids = self.d.origin_pids(), self.d.pushpin_pids()
        cpu = (total_cpu_seconds(origin_pids), total_cpu_seconds(pushpin_pids))
        writer = _writer(size)
        published: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.Future()

        async def publish() -> Callable[[bytes], bool]:
            sent = time.perf_counter()
            r = await http.post(
                f"{self.d.nodes[0].origin_url}/api/{writer}/content/posts",
                json={"content": f"a post to {size:,} followers, run {run}"},
                auth=(writer, PASSWORD),
            )
            if r.status_code != 201:
                raise BenchError(f"the post failed: HTTP {r.status_code} {r.text[:200]}")
            created = r.json()
            task = asyncio.create_task(_all_published(origins[0], sent))
            task.add_done_callback(lambda t: _settle(published, t))
            return lambda body: created in json.loads(body).get("items", [])

        measured = await holds.measure(publish, DELIVERY_TIMEOUT)
        t0, commit_ms, delays = measured.t0, measured.request_ms, measured.delays
        done_at, after = await asyncio.wait_for(published, PUBLISH_DEADLINE)
        busy = max(done_at, t0 + max(delays, default=0.0) / 1000) - t0
        used = (total_cpu_seconds(origin_pids) - cpu[0], total_cpu_seconds(pushpin_pids) - cpu[1])
        self.body = self.body or measured.sample
        return {
            "case": "origin",
            "run": run,
            "followers": size,
            "held": len(sample),
            "nodes": len(self.d.nodes),
            "commit_ms": commit_ms,
            "published_ms": (done_at - t0) * 1000,
            "published_items": after["published_items"] - before["published_items"],
            "targets": len(after["targets"]),
            **_deliveries(delays, measured.failures),
            "quiet": quiet,
            "settle_seconds": settle,
            "origin_cpu_seconds": used[0],
            "pushpin_cpu_seconds": used[1],
            "busy_seconds": busy,
            "origin_rss_mb": origin_rss,
            "pushpin_rss_mb": pushpin_rss,
        }

    async def _raw_run(
        self, run: int, size: int, held: int, echo: Callable[[str], None]
    ) -> dict[str, Any]:
        # New channels each run: Pushpin drops a (channel, id) pair it saw in the last minute.
        channels = [f"s{size}r{run}-{k:06d}" for k in range(size)]
        sample = [channels[i] for i in spread(held, size)]
        holds = Holds(long_polls([self.raw.http_port], lambda i: (f"/hold/{sample[i]}?prev=0", {})))
        await holds.open(len(sample), echo, f"raw, {size:,} channels, run {run}")
        quiet, settle = await holds.settle(self.raw.idle)
        pushpin_rss = tree_rss_bytes(self.raw.pids()) / 2**20
        body = (self.body or b'{"last":"1","items":[]}').decode()
        requests = [
            json.dumps(
                {
                    "items": [
                        {
                            "channel": channel,
                            "id": "1",
                            "prev-id": "0",
                            "formats": {"http-response": {"body": body}},
                        }
                        for channel in channels[start : start + BATCH_ROWS]
                    ]
                }
            ).encode()
            for start in range(0, size, BATCH_ROWS)
        ]
        pids = self.raw.pids()
        cpu = total_cpu_seconds(pids)
        conn = Conn(self.raw.publish_port)

        async def publish() -> Callable[[bytes], bool]:
            for request in requests:
                status, _, answer = await conn.request(
                    "POST", "/publish/", {"Content-Type": "application/json"}, request, 60
                )
                if status != 200:
                    raise BenchError(f"the publish failed: HTTP {status} {answer[:200]!r}")
            return lambda answer: answer == body.encode()

        try:
            measured = await holds.measure(publish, DELIVERY_TIMEOUT)
        finally:
            conn.close()
        return {
            "case": "raw",
            "run": run,
            "followers": size,
            "held": len(sample),
            "nodes": 1,
            "commit_ms": None,
            "published_ms": measured.request_ms,
            "published_items": size,
            "targets": 1,
            **_deliveries(measured.delays, measured.failures),
            "quiet": quiet,
            "settle_seconds": settle,
            "origin_cpu_seconds": None,
            "pushpin_cpu_seconds": total_cpu_seconds(pids) - cpu,
            "busy_seconds": max(measured.request_ms, max(measured.delays, default=0.0)) / 1000,
            "origin_rss_mb": None,
            "pushpin_rss_mb": pushpin_rss,
        }


async def _all_published(origin: httpx.AsyncClient, t0: float) -> tuple[float, dict[str, Any]]:
    """When the origin's /health first shows nothing waiting for any target, and what it
    said then (``t0``: when the POST was sent)."""
    deadline = t0 + PUBLISH_DEADLINE
    while time.perf_counter() < deadline:
        health: dict[str, Any] = (await origin.get("/health", timeout=30)).json()
        if all(t["lag_items"] == 0 for t in health["targets"]):
            return time.perf_counter(), health
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(min(POLL_MAX, max(POLL_MIN, POLL_SHARE * elapsed)))
    raise BenchError(f"items still waiting {PUBLISH_DEADLINE:.0f} s after the post")


def _settle(
    future: asyncio.Future[tuple[float, dict[str, Any]]],
    task: asyncio.Task[tuple[float, dict[str, Any]]],
) -> None:
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def _deliveries(delays: list[float], failures: dict[str, int]) -> dict[str, Any]:
    return {
        "delivered": len(delays),
        "failures": sum(failures.values()),
        "failure_reasons": dict(failures),
        "first_ms": min(delays, default=None),
        "median_ms": median(delays),
        "last_ms": max(delays, default=None),
    }


def _line(r: dict[str, Any]) -> str:
    what = (
        f"commit {ms(r['commit_ms'])}, all {r['published_items']:,} items published "
        f"{ms(r['published_ms'])} after the POST"
        if r["case"] == "origin"
        else f"{r['published_items']:,} items published in {ms(r['published_ms'])}"
    )
    line = (
        f"{r['case']:<6} {r['followers']:,} followers, run {r['run']}: {what}; "
        f"{r['delivered']}/{r['held']} held delivered, last {ms(r['last_ms'])}, "
        f"{r['failures']} failed; CPU: Pushpin {r['pushpin_cpu_seconds']:.2f} s"
    )
    if r["origin_cpu_seconds"] is not None:
        line += f", origin {r['origin_cpu_seconds']:.2f} s"
    if r["failure_reasons"]:
        line += " " + json.dumps(r["failure_reasons"])
    if not r["quiet"]:
        line += " [not all held, or the servers still busy, at publish time]"
    return line


def limits() -> dict[str, Any]:
    """What bounds the long-polls one machine can hold for this benchmark: file descriptors
    (two per held request through Pushpin: the client's and Pushpin's), and the ephemeral ports
    from one client address to one Pushpin port."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return {
        "open_files_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "ephemeral_ports": high - low + 1,
        "cpus": os.cpu_count(),
    }


def _median(results: list[dict[str, Any]], case: str, size: int, what: str) -> float | None:
    return median(
        [
            value
            for r in results
            if r["case"] == case and r["followers"] == size and (value := r[what]) is not None
        ]
    )


def run(
    sizes: list[int],
    runs: int,
    held: int,
    workdir: Path,
    *,
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A post to a node of each size in ``sizes``, ``runs`` times, ``held`` of its followers
    holding a long-poll each; and the raw case."""
    if min(sizes) < 1 or runs < 1 or held < 1:
        raise ValueError("followers, runs and held must be at least 1")
    raise_file_limit(held)
    echo(
        f"a post to {', '.join(f'{s:,}' for s in sizes)} followers, {held:,} of them holding "
        f"a long-poll, {runs} run(s), on {setup.label}"
    )
    with deployed(setup, workdir) as d:
        for size in sizes:
            d.nodes[0].account(_writer(size)).close()
        started = time.perf_counter()
        followers = uvloop.run(
            seed_followers(d.database_url, max(sizes), {_writer(s): s for s in sizes})
        )
        seeded = time.perf_counter() - started
        echo(f"  seeded {len(followers):,} followers in {seeded:.1f} s")
        bench = BigPost(d, followers, workdir / "raw-pushpin")
        results = uvloop.run(bench.run(sizes, runs, held, echo))
    rows = []
    for size in sizes:
        origin_ms = _median(results, "origin", size, "published_ms")
        raw_ms = _median(results, "raw", size, "published_ms")
        commits = [
            r["commit_ms"] for r in results if r["case"] == "origin" and r["followers"] == size
        ]
        row = {
            "followers": size,
            "held": min(held, size),
            "nodes": setup.origins,
            "runs": runs,
            "commit_ms": median(commits),
            "commit_max_ms": max(commits, default=None),
            "published_ms": origin_ms,
            "raw_published_ms": raw_ms,
            "ratio": ratio(origin_ms, raw_ms),
            "last_delivery_ms": _median(results, "origin", size, "last_ms"),
            "raw_last_delivery_ms": _median(results, "raw", size, "last_ms"),
            "origin_cpu_seconds": _median(results, "origin", size, "origin_cpu_seconds"),
            "pushpin_cpu_seconds": _median(results, "origin", size, "pushpin_cpu_seconds"),
            "raw_pushpin_cpu_seconds": _median(results, "raw", size, "pushpin_cpu_seconds"),
            "origin_failures": sum(
                r["failures"] for r in results if r["case"] == "origin" and r["followers"] == size
            ),
            "raw_failures": sum(
                r["failures"] for r in results if r["case"] == "raw" and r["followers"] == size
            ),
        }
        rows.append(row)
        echo(
            f"a post to {size:,} followers: median of {runs}: commit {ms(row['commit_ms'])}, "
            f"every item published {ms(origin_ms)} after the POST (raw Pushpin took the same "
            f"number of items in {ms(raw_ms)}); held sample's last delivery "
            f"{ms(row['last_delivery_ms'])} (raw {ms(row['raw_last_delivery_ms'])}); failures "
            f"{row['origin_failures']} (raw {row['raw_failures']})"
        )
    return {
        "summary": {"sizes": rows, "seed_seconds": seeded, "limits": limits()},
        "targets": _targets(rows),
        "results": results,
    }


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Judged at 100,000 followers; a smaller run (the smoke test) at its largest size."""
    row = next((r for r in rows if r["followers"] == TARGET_FOLLOWERS), rows[-1])
    size = f"{row['followers']:,}"
    r = row["ratio"]
    failed = row["origin_failures"]
    return [
        {
            "target": f"a post to {size} followers commits within {TARGET_COMMIT_MS:,.0f} ms "
            "(every other write on the database waits meanwhile)",
            "measured": f"{ms(row['commit_ms'])} (median of {row['runs']}; slowest "
            f"{ms(row['commit_max_ms'])})",
            "met": row["commit_ms"] is not None and row["commit_ms"] <= TARGET_COMMIT_MS,
        },
        {
            "target": f"a post to {size} followers: every item published within "
            f"{TARGET_RATIO:.0f} x raw Pushpin's time to take as many",
            "measured": f"{ms(row['published_ms'])} vs raw {ms(row['raw_published_ms'])}: "
            f"{'n/a' if r is None else f'{r:.2f} x'}, {failed} of the held sample failed",
            "met": r is not None and r <= TARGET_RATIO and not failed,
        },
    ]
