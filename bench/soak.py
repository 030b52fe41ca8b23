"""Soak with real faults: a client looping on ``since=last`` sees every post once, in order.

``python -m bench.soak [--clients 20] [--writers 5] [--posts 500]`` starts the real run command
(``python -m app``: Pushpin and the origin) in a data folder. W writers, each on its own
account and channel, create P posts in all, concurrently. C reader accounts each follow some
of the writers' channels and loop on ``GET /api/notifications/posts?since=<last>`` as a
realtime client does, retrying the same cursor with backoff on connection errors, timeouts
and 5xx answers. While the writers are writing, two faults are made for real:

1. Pushpin alone is killed (SIGKILL of every pid in its pid files); the run command must
   notice and start it again ("pushpin is back").
2. The whole process tree is killed (SIGKILL of the run command, then of every Pushpin
   process, as a machine's OOM killer or ``kill -9`` of the group would), and the run command
   is started again on the same data folder and ports.

``--nodes N`` (2 or more) runs N nodes, each a run command, on one PostgreSQL database
(``--database-url``, by default a new database on the tests' server: TEST_DATABASE_URL, or
127.0.0.1:5432), each Pushpin and each origin listed in every node's GRIP_URL and ORIGINS.
Readers and writers are spread over the nodes' ports; one that cannot reach its node (refused,
or hung up on) moves to the next node with its cursor, as the API's clients may. The fault is
then one, midway: the whole process tree of the node holding the publisher's leases is killed
(its clients move), and it is started again.

``--faults rolling-origins`` (with ``--nodes`` 2 or more) makes no kill but a graceful rolling
restart: each node runs its origin alone (``--origin-only``) behind a Pushpin the soak starts,
and each origin in turn gets SIGTERM and is started again once it has stopped, while its
Pushpin sends requests to the other origins. Any failed request other than a 502 (which the
client retries) then counts as a failure. ``--faults rolling-nodes`` restarts whole run
commands (Pushpin too, which the run command always stops with the origin) one at a time;
their clients move to another node.

Then the readers catch up, and for each reader the posts it received are compared with the
committed posts (read back from the store) of the channels it follows: none may be lost,
duplicated, out of order within a channel, from a channel it does not follow, or unknown to
the store. Writers check, too, that every post answered 201 is still there after the crash.
Exit code 1 if anything is off; the data folder is then kept for its logs (``run.log``,
``pushpin/pushpin.log``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from tests.databases import SHARED_SECRETS, Databases
from tests.support import (
    PASSWORD,
    Stack,
    cluster,
    health,
    kill,
    pushpin_pids,
    running,
    split_cluster,
)

# Holds time out well within a run, so that a post Pushpin failed to deliver would still reach
# the reader (from the store, by cursor) before the catch-up deadline: a late post is not lost.
HOLD_TIMEOUT = 10
RATE = 20.0  # posts per second, all writers together, when nothing is failing
# The backoff a real client should use: 50 ms doubling to 2 s, with jitter so that clients
# refused together do not all come back together (Pushpin answers 500/502 to bursts).
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
POST_TIMEOUT = 10.0
RECOVERY_TIMEOUT = 60.0
PROGRESS_SECONDS = 3.0
CONTENT = re.compile(r"soak w(\d+) n(\d+)")
FAULTS = ("kills", "rolling-origins", "rolling-nodes")


class SoakError(Exception):
    """The soak could not be run as planned (as opposed to a run that found lost posts)."""


async def _backoff(delay: float) -> float:
    """Sleep for ``delay`` with jitter; return the next delay."""
    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
    return min(delay * 2, BACKOFF_MAX)


def _source(jid: str) -> str:
    return f"{jid}/posts"


@dataclass
class Route:
    """The node a client asks (by its client URL), its failed requests, and its moves to the
    next node."""

    urls: list[str]  # every node's
    index: int
    moves: int = 0
    failures: list[tuple[float, int, str]] = field(default_factory=list)  # (when, node, what)
    failed_in_a_row: int = 0  # requests that failed since the last answer
    most_in_a_row: int = 0

    @property
    def url(self) -> str:
        return self.urls[self.index]

    def answered(self) -> None:
        self.failed_in_a_row = 0

    @property
    def retries(self) -> Counter[str]:
        return Counter(what for _, _, what in self.failures)

    def failed(self, what: str, exc: httpx.TransportError | None = None) -> None:
        """A request failed (``what``: its status or error); if its node could not be reached
        (refused, or hung up on: not a timeout), go on at the next node."""
        self.failures.append((time.monotonic(), self.index, what))
        self.failed_in_a_row += 1
        self.most_in_a_row = max(self.most_in_a_row, self.failed_in_a_row)
        if exc is None or isinstance(exc, httpx.TimeoutException) or len(self.urls) == 1:
            return
        self.index = (self.index + 1) % len(self.urls)
        self.moves += 1


@dataclass
class Writer:
    index: int
    jid: str
    count: int  # posts this writer creates
    route: Route
    acked: dict[int, str] = field(default_factory=dict)  # sequence number -> post id
    acked_at: dict[str, float] = field(default_factory=dict)  # post id -> monotonic time
    recovered: int = 0  # POSTs that failed for us but had committed (found by the check)

    def content(self, seq: int) -> str:
        return f"soak w{self.index} n{seq}"

    async def run(
        self,
        http: httpx.AsyncClient,
        interval: float,
        on_send: Callable[[], None],
        on_ack: Callable[[], None],
    ) -> None:
        for seq in range(self.count):
            post_id = await self._post(http, self.content(seq), on_send)
            self.acked[seq] = post_id
            self.acked_at[post_id] = time.monotonic()
            on_ack()
            # Irregular gaps: bursts and pauses both, as the publisher's batching sees them.
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))

    async def _post(
        self, http: httpx.AsyncClient, content: str, on_send: Callable[[], None]
    ) -> str:
        path = f"/api/{self.jid}/content/posts"
        delay = BACKOFF_FIRST
        while True:
            on_send()
            try:
                r = await http.post(
                    self.route.url + path, json={"content": content}, timeout=POST_TIMEOUT
                )
            except httpx.TransportError as exc:
                self.route.failed(type(exc).__name__, exc)
            else:
                if r.status_code == 201:
                    self.route.answered()
                    post_id: str = r.json()["id"]
                    return post_id
                self.route.failed(f"HTTP {r.status_code}")
            delay = await _backoff(delay)
            # The request may have reached the origin and committed, with only its answer lost
            # (Pushpin or the whole tree killed meanwhile): posting again would duplicate it.
            # Posts are written one at a time, so if it committed it is among the newest.
            found = await self._find(http, content)
            if found is not None:
                self.recovered += 1
                return found

    async def _find(self, http: httpx.AsyncClient, content: str) -> str | None:
        delay = BACKOFF_FIRST
        while True:
            try:
                r = await http.get(
                    f"{self.route.url}/api/{self.jid}/content/posts", params={"max": 5}
                )
                if r.status_code == 200:
                    self.route.answered()
                    for post in r.json():
                        if post["content"] == content:
                            found: str = post["id"]
                            return found
                    return None
                self.route.failed(f"check HTTP {r.status_code}")
            except httpx.TransportError as exc:
                self.route.failed(f"check {type(exc).__name__}", exc)
            delay = await _backoff(delay)


@dataclass
class Received:
    post_id: str
    source: str
    content: str
    at: float


@dataclass
class Reader:
    index: int
    jid: str
    follows: set[str]  # sources ("jid/posts") of the writers followed
    route: Route
    since: str = ""
    received: list[Received] = field(default_factory=list)
    requests: int = 0
    empty: int = 0  # holds that timed out
    errors: list[str] = field(default_factory=list)  # 4xx answers, cursors going back
    # Every answer with items, as (time since start, since asked, last given, post ids): kept
    # in the data folder when something is off, to find the answer that skipped a post.
    answers: list[tuple[float, str, str, list[str]]] = field(default_factory=list)

    async def start(self, http: httpx.AsyncClient) -> None:
        """The cursor to loop from: taken before any post is written, so every post of the
        followed channels is expected."""
        delay = BACKOFF_FIRST
        while True:
            with contextlib.suppress(httpx.TransportError):
                r = await http.get(self.route.url + "/api/notifications/posts")
                if r.status_code == 200:
                    self.since = r.json()["last"]
                    return
            delay = await _backoff(delay)

    async def run(self, http: httpx.AsyncClient) -> None:
        """Loop on ``since=last`` until cancelled, as a realtime client does."""
        delay = BACKOFF_FIRST
        while True:
            self.requests += 1
            try:
                r = await http.get(
                    self.route.url + "/api/notifications/posts", params={"since": self.since}
                )
            except httpx.TransportError as exc:
                # The same cursor again, at the next node if this one is gone.
                self.route.failed(type(exc).__name__, exc)
            else:
                if r.status_code == 200:
                    self.route.answered()
                    self._take(r.json())
                    delay = BACKOFF_FIRST
                    continue
                self.route.failed(f"HTTP {r.status_code}")
                if r.status_code < 500:
                    self.errors.append(f"since={self.since}: HTTP {r.status_code} {r.text[:200]}")
            # Same cursor again, after a pause: nothing is skipped by retrying.
            delay = await _backoff(delay)

    def _take(self, body: dict[str, Any]) -> None:
        now = time.monotonic()
        items: list[dict[str, Any]] = body["items"]
        if not items:
            self.empty += 1
        for item in items:
            self.received.append(Received(item["id"], item["source"], item["content"], now))
        last: str = body["last"]
        if items:
            self.answers.append((now, self.since, last, [item["id"] for item in items]))
        if int(last) < int(self.since):
            self.errors.append(f"cursor went back from {self.since} to {last}")
        self.since = last


@dataclass
class Fault:
    kind: str
    written: int  # posts acknowledged when it was made
    at: float  # seconds since the soak started
    recovery_seconds: float  # until the run command said Pushpin is back, or was Ready again
    node: int = 0
    exit_code: int | None = None  # of a run command stopped gracefully


class Soak:
    def __init__(
        self,
        nodes: list[Stack],
        writers: list[Writer],
        readers: list[Reader],
        rate: float,
        faults: str,
        echo: Callable[[str], None],
    ) -> None:
        self.nodes = nodes  # a node killed or stopped is started again on the same Stack
        self.writers = writers
        self.readers = readers
        self.interval = len(writers) / rate
        self.posts = sum(w.count for w in writers)
        self.plan = faults
        self.planned = _planned(faults, len(nodes))
        self.echo = echo
        self.written = 0
        self.faults: list[Fault] = []
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}
        self.contents: dict[str, str] = {}  # post id -> content, of every committed post
        self.sending = asyncio.Event()  # set when a writer sends a POST

    def _ack(self) -> None:
        self.written += 1

    async def run(self, catch_up_seconds: float) -> dict[str, list[str]]:
        """Write, break things, catch up; return each writer's committed post ids in order."""

        def client(jid: str, timeout: float) -> httpx.AsyncClient:
            return httpx.AsyncClient(auth=(jid, PASSWORD), timeout=timeout)

        hold_timeout = float(self.nodes[0].env.get("HOLD_TIMEOUT", "55"))
        async with contextlib.AsyncExitStack() as exits:
            reader_http = [
                await exits.enter_async_context(client(r.jid, hold_timeout + 10))
                for r in self.readers
            ]
            writer_http = [
                await exits.enter_async_context(client(w.jid, POST_TIMEOUT)) for w in self.writers
            ]
            await asyncio.gather(
                *(r.start(h) for r, h in zip(self.readers, reader_http, strict=True))
            )
            readers = [
                asyncio.create_task(r.run(h))
                for r, h in zip(self.readers, reader_http, strict=True)
            ]
            progress = asyncio.create_task(self._progress())
            try:
                t0 = time.monotonic()
                faults = asyncio.create_task(self._faults())
                await asyncio.gather(
                    *(
                        w.run(h, self.interval, self.sending.set, self._ack)
                        for w, h in zip(self.writers, writer_http, strict=True)
                    )
                )
                self.timings["writing_seconds"] = time.monotonic() - t0
                await faults
                truth = await self._committed(writer_http)
                t1 = time.monotonic()
                await self._catch_up(truth, catch_up_seconds)
                self.timings["catch_up_seconds"] = time.monotonic() - t1
            finally:
                for task in [*readers, progress]:
                    task.cancel()
                await asyncio.gather(*readers, progress, return_exceptions=True)
        return truth

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            received = sum(len(r.received) for r in self.readers)
            retries = sum(len(r.route.failures) for r in self.readers)
            self.echo(
                f"[{time.monotonic() - self.started:5.1f}s] written {self.written}/{self.posts}, "
                f"faults done {len(self.faults)}/{self.planned}, received {received}, "
                f"reader retries {retries}"
            )

    async def _reach(self, written: int) -> None:
        while self.written < written:
            await asyncio.sleep(0.02)
        # Strike while a POST is on its way when we can, a few ms after it was sent: its
        # answer may then be lost after its commit, which the writers must not turn into a
        # duplicate. A POST through Pushpin takes about 5-10 ms here.
        self.sending.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sending.wait(), 1.0)
        await asyncio.sleep(random.uniform(0.0, 0.01))

    async def _faults(self) -> None:
        # All while the writers are writing, spread evenly over their posts.
        if self.plan != "kills":
            for index in range(len(self.nodes)):
                await self._reach((index + 1) * self.posts // (len(self.nodes) + 1))
                await self._restart(index)
        elif len(self.nodes) == 1:
            await self._reach(self.posts // 3)
            await self._kill_pushpin()
            await self._reach(2 * self.posts // 3)
            await self._kill_tree(0)
        else:
            await self._reach(self.posts // 2)
            await self._kill_tree(await asyncio.to_thread(self._publishing_node))

    def _publishing_node(self) -> int:
        """The node whose origin holds the publisher's leases (for every target)."""
        holders = [
            index
            for index, node in enumerate(self.nodes)
            if all(target["publishing"] for target in health(node)["targets"])
        ]
        if len(holders) != 1:
            raise SoakError(f"not one node holds every publisher lease: {holders}")
        return holders[0]

    async def _kill_pushpin(self) -> None:
        stack = self.nodes[0]
        log = stack.log_path
        offset = log.stat().st_size
        pids = pushpin_pids(stack.data_dir)
        if not pids:
            raise SoakError("no Pushpin pids in the run folder")
        written, t0 = self.written, time.monotonic()
        kill(pids)
        self.echo(f"fault 1: SIGKILL of Pushpin alone (pids {pids}) at {written} posts written")
        # The run command restarts Pushpin itself; the soak only watches its log.
        while b"pushpin is back" not in log.read_bytes()[offset:]:
            process = stack.process
            if process is None or process.poll() is not None:
                raise SoakError("the run command died when Pushpin was killed")
            if time.monotonic() - t0 > RECOVERY_TIMEOUT:
                raise SoakError(f"Pushpin not back after {RECOVERY_TIMEOUT:.0f}s")
            await asyncio.sleep(0.05)
        recovery = time.monotonic() - t0
        self.faults.append(Fault("pushpin SIGKILL", written, t0 - self.started, recovery))
        self.echo(f"fault 1: Pushpin back after {recovery:.2f}s")

    async def _kill_tree(self, index: int) -> None:
        node = self.nodes[index]
        process = node.process
        if process is None:
            raise SoakError(f"node {index}'s run command is not running")
        written, t0 = self.written, time.monotonic()
        # Python first, then Pushpin (its own session, so it outlives Python): nothing gets to
        # shut down cleanly, as with kill -9 of the whole group.
        process.kill()
        await asyncio.to_thread(process.wait)
        node.process = None
        pids = pushpin_pids(node.data_dir)
        kill(pids)
        number = len(self.faults) + 1
        self.echo(
            f"fault {number}: SIGKILL of node {index}'s run command (pid {process.pid}) and "
            f"Pushpin (pids {pids}) at {written} posts written"
        )
        # Stack.start keeps the process before it is ready: a failed start is still stopped.
        await asyncio.to_thread(node.start)
        recovery = time.monotonic() - t0
        kind = "whole tree SIGKILL and restart"
        self.faults.append(Fault(kind, written, t0 - self.started, recovery, index))
        self.echo(f"fault {number}: node {index}'s run command Ready again after {recovery:.2f}s")

    async def _restart(self, index: int) -> None:
        """Stop node ``index``'s run command gracefully (SIGTERM), then start it again."""
        node = self.nodes[index]
        written, t0 = self.written, time.monotonic()
        alone = "--origin-only" in node.args
        kind = "origin" if alone else "node"
        what = "origin" if alone else "run command (origin and Pushpin)"
        self.echo(f"restart {index + 1}: SIGTERM to node {index}'s {what} at {written} written")
        code = await asyncio.to_thread(node.stop, signal.SIGTERM)
        stopped = time.monotonic() - t0
        await asyncio.to_thread(node.start)
        recovery = time.monotonic() - t0
        kind = f"{kind} SIGTERM and restart"
        self.faults.append(Fault(kind, written, t0 - self.started, recovery, index, code))
        self.echo(
            f"restart {index + 1}: stopped with {code} after {stopped:.2f}s, Ready again after "
            f"{recovery:.2f}s"
        )

    async def _committed(self, writer_http: list[httpx.AsyncClient]) -> dict[str, list[str]]:
        """Each writer's posts as the store has them, oldest first: the ground truth."""
        truth: dict[str, list[str]] = {}
        for writer, http in zip(self.writers, writer_http, strict=True):
            newest_first: list[dict[str, Any]] = []
            while True:
                params: dict[str, str | int] = {"max": 100}
                if newest_first:
                    params["after"] = newest_first[-1]["id"]
                path = f"{writer.route.url}/api/{writer.jid}/content/posts"
                page = await self._get_list(http, path, params)
                if not page:
                    break
                newest_first += page
            truth[_source(writer.jid)] = [p["id"] for p in reversed(newest_first)]
            self.contents.update({p["id"]: p["content"] for p in newest_first})
        return truth

    async def _get_list(
        self, http: httpx.AsyncClient, path: str, params: dict[str, str | int]
    ) -> list[dict[str, Any]]:
        delay = BACKOFF_FIRST
        while True:
            with contextlib.suppress(httpx.TransportError):
                r = await http.get(path, params=params)
                if r.status_code == 200:
                    page: list[dict[str, Any]] = r.json()
                    return page
                if r.status_code < 500:
                    raise SoakError(f"GET {path}: HTTP {r.status_code} {r.text[:200]}")
            delay = await _backoff(delay)

    async def _catch_up(self, truth: dict[str, list[str]], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(_expected(r, truth) <= {x.post_id for x in r.received} for r in self.readers):
                return
            await asyncio.sleep(0.1)


def _expected(reader: Reader, truth: dict[str, list[str]]) -> set[str]:
    return {post_id for source in reader.follows for post_id in truth.get(source, [])}


def _check_reader(reader: Reader, truth: dict[str, list[str]]) -> dict[str, int]:
    """The counts for one reader against the store's committed posts."""
    expected = _expected(reader, truth)
    known = {post_id for ids in truth.values() for post_id in ids}
    position = {post_id: i for ids in truth.values() for i, post_id in enumerate(ids)}
    counts = Counter(x.post_id for x in reader.received)
    out_of_order, highest = 0, dict[str, int]()
    seen: set[str] = set()
    for x in reader.received:
        if x.post_id in seen or x.post_id not in position:
            continue
        seen.add(x.post_id)
        # Within one channel, each new post must come after every one received before it.
        if position[x.post_id] < highest.get(x.source, -1):
            out_of_order += 1
        highest[x.source] = max(highest.get(x.source, -1), position[x.post_id])
    return {
        "expected": len(expected),
        "received": len(reader.received),
        "lost": len(expected - counts.keys()),
        "duplicated": sum(n - 1 for n in counts.values()),
        "out_of_order": out_of_order,
        "foreign": sum(1 for x in reader.received if x.source not in reader.follows),
        "unknown": sum(1 for x in reader.received if x.post_id not in known),
    }


def _check_writers(
    writers: list[Writer], truth: dict[str, list[str]], contents: dict[str, str]
) -> dict[str, int]:
    """What the writers were told against what the store kept."""
    lost_writes = duplicate_writes = store_out_of_order = 0
    for w in writers:
        committed = truth.get(_source(w.jid), [])
        lost_writes += len(set(w.acked.values()) - set(committed))  # 201, then gone
        seqs = []
        for post_id in committed:
            match = CONTENT.fullmatch(contents.get(post_id, ""))
            if match and int(match.group(1)) == w.index:
                seqs.append(int(match.group(2)))
        duplicate_writes += len(seqs) - len(set(seqs))
        store_out_of_order += sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    return {
        "lost_writes": lost_writes,
        "duplicate_writes": duplicate_writes,
        "store_out_of_order": store_out_of_order,
    }


def _latencies(writers: list[Writer], readers: list[Reader]) -> dict[str, float | None]:
    """From the writer's 201 to the reader's answer, first copy of each post; clamped at 0 (a
    reader may have it before the writer has its 201)."""
    acked_at = {post_id: at for w in writers for post_id, at in w.acked_at.items()}
    delays: list[float] = []
    for r in readers:
        first: dict[str, float] = {}
        for x in r.received:
            first.setdefault(x.post_id, x.at)
        delays += [max(0.0, at - acked_at[p]) * 1000 for p, at in first.items() if p in acked_at]
    if not delays:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    delays.sort()
    return {
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "max_ms": delays[-1],
    }


def _setup(
    nodes: list[Stack], writers: int, readers: int, posts: int, seed: int
) -> tuple[list[Writer], list[Reader]]:
    """The accounts and follows, made through the first node; each client is given a node,
    in turn."""
    rng = random.Random(seed)
    stack, urls = nodes[0], [node.url for node in nodes]
    ws = [
        Writer(
            i,
            f"writer{i}@soak.example",
            posts // writers + (1 if i < posts % writers else 0),
            Route(urls, i % len(urls)),
        )
        for i in range(writers)
    ]
    for w in ws:
        stack.account(w.jid).close()
    rs = []
    for i in range(readers):
        # Some of the writers, never all when there are several: a post from a channel the
        # reader does not follow then counts as foreign.
        k = rng.randint(1, max(1, writers - 1))
        followed = rng.sample(ws, k)
        follows = {_source(w.jid) for w in followed}
        reader = Reader(i, f"reader{i}@soak.example", follows, Route(urls, i % len(urls)))
        with stack.account(reader.jid) as c:
            r = c.post("/api/subscribed", json={source: "publisher" for source in reader.follows})
            if r.status_code != 200:
                raise SoakError(f"{reader.jid} cannot follow: HTTP {r.status_code} {r.text}")
        rs.append(reader)
    return ws, rs


def _planned(faults: str, nodes: int) -> int:
    """How many faults the plan makes: a kill of Pushpin and of the whole tree on one node, a
    kill of one node's whole tree among several, or a restart of each node."""
    if faults == "kills":
        return 2 if nodes == 1 else 1
    return nodes


def _nodes(
    exits: contextlib.ExitStack,
    folder: Path,
    count: int,
    faults: str,
    env: dict[str, str],
) -> list[Stack]:
    if count == 1:
        return [exits.enter_context(running(folder, **env))]
    start = split_cluster if faults == "rolling-origins" else cluster
    nodes: list[Stack] = exits.enter_context(start(folder, count, **env))
    return nodes


def run(
    clients: int,
    writers: int,
    posts: int,
    data_dir: Path | None = None,
    *,
    nodes: int = 1,
    database_url: str | None = None,
    faults: str = "kills",
    rate: float = RATE,
    hold_timeout: int = HOLD_TIMEOUT,
    seed: int = 1,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the soak; return the counts (summed over readers), the faults and the timings.

    ``data_dir`` None: a temporary folder, removed afterwards unless something was off.
    ``database_url`` None, with several nodes: a new database on the tests' server, dropped
    afterwards unless something was off (one node: SQLite in the data folder)."""
    if clients < 1 or writers < 1 or posts < 3:
        raise ValueError("need at least 1 client, 1 writer and 3 posts")
    if faults not in FAULTS or (faults != "kills" and nodes < 2) or nodes < 1:
        raise ValueError(f"faults {faults!r} on {nodes} nodes: rolling restarts need 2 or more")
    started = time.monotonic()
    temporary = data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="soak-")) / "data" if data_dir is None else data_dir
    env = {"HOLD_TIMEOUT": str(hold_timeout)}
    made: Databases | None = None
    if database_url is None and nodes > 1:
        made = Databases()
        database_url = made.fresh()
    if database_url is not None:
        env |= {"DATABASE_URL": database_url, **SHARED_SECRETS}
    echo(
        f"soak: {clients} readers, {writers} writers, {posts} posts at {rate:g}/s, "
        f"HOLD_TIMEOUT={hold_timeout}, {nodes} node{'s' if nodes > 1 else ''}, faults {faults}, "
        f"data in {folder}" + (f", database {database_url}" if database_url else "")
    )
    with contextlib.ExitStack() as exits:
        stacks = _nodes(exits, folder, nodes, faults, env)
        ws, rs = _setup(stacks, writers, clients, posts, seed)
        setup_seconds = time.monotonic() - started
        soak = Soak(stacks, ws, rs, rate, faults, echo)
        # Past the hold timeout, so that even a post Pushpin never delivered reaches the
        # reader by cursor when its hold times out: what is still missing then is lost.
        truth = uvloop.run(soak.run(catch_up_seconds=2 * hold_timeout + 10))
        # Every node still running (the contexts would stop them too, but not keep the codes).
        exit_codes = [node.stop() for node in stacks if node.process is not None]
    per_reader = [_check_reader(r, truth) for r in rs]
    totals = {k: sum(c[k] for c in per_reader) for k in per_reader[0]}
    writer_retries = sum((w.route.retries for w in ws), Counter[str]())
    reader_retries = sum((r.route.retries for r in rs), Counter[str]())
    routes = [(w.jid, w.route) for w in ws] + [(r.jid, r.route) for r in rs]
    failures = [
        {"t": round(at - soak.started, 3), "client": jid, "node": node, "what": what}
        for jid, route in routes
        for at, node, what in route.failures
    ]
    summary: dict[str, Any] = {
        "clients": clients,
        "writers": writers,
        "posts": posts,
        "nodes": nodes,
        "plan": faults,
        "committed": sum(len(ids) for ids in truth.values()),
        **totals,
        "clients_without_posts": sum(1 for c in per_reader if c["received"] == 0),
        **_check_writers(ws, truth, soak.contents),
        "recovered_writes": sum(w.recovered for w in ws),
        "writer_retries": dict(writer_retries),
        "reader_retries": dict(reader_retries),
        # Failed requests other than 502s (which a graceful restart may cause, and the client
        # retries): none may happen in a rolling restart of the origins.
        "failed_not_502": sum(
            n for k, n in (writer_retries + reader_retries).items() if not k.endswith("HTTP 502")
        ),
        "most_failed_in_a_row": max(route.most_in_a_row for _, route in routes),
        "writer_moves": sum(w.route.moves for w in ws),
        "reader_moves": sum(r.route.moves for r in rs),
        "reader_requests": sum(r.requests for r in rs),
        "reader_timeouts": sum(r.empty for r in rs),
        "reader_errors": [e for r in rs for e in r.errors],
        # Every failed request (retried), by time since the soak started: to set beside the
        # faults' times.
        "failures": sorted(failures, key=lambda f: f["t"]),
        "faults": [vars(f) for f in soak.faults],
        "exit_codes": exit_codes,
        "exit_code": next((code for code in exit_codes if code != 0), 0),
        "latency": _latencies(ws, rs),
        "seconds": {
            "setup": setup_seconds,
            **{k.removesuffix("_seconds"): v for k, v in soak.timings.items()},
            "total": time.monotonic() - started,
        },
        "per_reader": per_reader,
        "data_dir": str(folder),
    }
    bad = [
        k
        for k in (
            "lost",
            "duplicated",
            "out_of_order",
            "foreign",
            "unknown",
            "lost_writes",
            "duplicate_writes",
            "store_out_of_order",
            "clients_without_posts",
        )
        if summary[k]
    ]
    if summary["reader_errors"]:
        bad.append("reader_errors")
    if faults == "rolling-origins" and summary["failed_not_502"]:
        bad.append("failed_not_502")
    stopped = [f["exit_code"] for f in summary["faults"] if f["exit_code"] is not None]
    if len(summary["faults"]) != soak.planned or summary["exit_code"] != 0 or any(stopped):
        bad.append("faults or exit")
    summary["ok"] = not bad
    latency = summary["latency"]
    retried = ", ".join(f"{k} {n}" for k, n in sorted((writer_retries + reader_retries).items()))
    echo(
        f"summary: {summary['committed']}/{posts} posts committed, {totals['expected']} "
        f"expected by {clients} readers, {totals['received']} received; lost {totals['lost']}, "
        f"duplicated {totals['duplicated']}, out of order {totals['out_of_order']}, foreign "
        f"{totals['foreign']}, unknown {totals['unknown']}; writes lost "
        f"{summary['lost_writes']}, duplicated {summary['duplicate_writes']}; faults "
        f"{len(summary['faults'])}/{soak.planned}, exit {exit_codes}; failed requests retried: "
        f"{retried or 'none'} (at most {summary['most_failed_in_a_row']} in a row); clients "
        f"moved {summary['writer_moves'] + summary['reader_moves']} times; latency p50 "
        f"{_ms(latency['p50_ms'])}, p99 {_ms(latency['p99_ms'])}, max "
        f"{_ms(latency['max_ms'])}; {summary['seconds']['total']:.1f}s"
        + ("" if not bad else f"; FAILED: {', '.join(bad)}")
    )
    if failures:
        # When requests failed, beside when the faults came (seconds since the clients began).
        timeline = [(f["at"], f"{f['kind']} of node {f['node']}") for f in summary["faults"]]
        timeline += [(f["t"], f"{f['what']} at node {f['node']}") for f in failures]
        echo("timeline: " + "; ".join(f"{t:.2f}s {what}" for t, what in sorted(timeline)))
    if bad:
        _dump(folder / "soak-failure.json", rs, truth, soak.contents, started)
        echo(f"wrote {folder / 'soak-failure.json'}: what each reader missed and was answered")
    if temporary:
        if bad:
            echo(f"kept {folder} for its logs (run.log, pushpin/pushpin.log)")
        else:
            shutil.rmtree(folder.parent, ignore_errors=True)
    if made is not None:
        if bad:
            echo(f"kept the database {database_url}")
        else:
            made.drop_all()
    return summary


def _dump(
    path: Path,
    readers: list[Reader],
    truth: dict[str, list[str]],
    contents: dict[str, str],
    started: float,
) -> None:
    """For diagnosis: per reader, the posts it missed or got twice, and its answers."""
    record = []
    for r in readers:
        counts = Counter(x.post_id for x in r.received)
        record.append(
            {
                "reader": r.jid,
                "follows": sorted(r.follows),
                "lost": [
                    {"id": p, "content": contents.get(p)}
                    for p in sorted(_expected(r, truth) - counts.keys())
                ],
                "duplicated": [p for p, n in counts.items() if n > 1],
                "answers": [
                    {"t": round(t - started, 3), "since": since, "last": last, "ids": ids}
                    for t, since, last, ids in r.answers
                ],
            }
        )
    path.write_text(json.dumps(record, indent=1) + "\n")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Readers looping on since=last through a Pushpin kill and a whole-tree "
        "kill and restart must see every post once, in order. Exits with 1 if not.",
    )
    parser.add_argument("--clients", type=int, default=20, help="reader accounts (20)")
    parser.add_argument("--writers", type=int, default=5, help="writer accounts (5)")
    parser.add_argument("--posts", type=int, default=500, help="posts in all (500)")
    parser.add_argument("--rate", type=float, default=RATE, help=f"posts per second ({RATE:g})")
    parser.add_argument(
        "--hold-timeout", type=int, default=HOLD_TIMEOUT, help=f"HOLD_TIMEOUT ({HOLD_TIMEOUT})"
    )
    parser.add_argument("--seed", type=int, default=1, help="who follows whom (1)")
    parser.add_argument("--data-dir", type=Path, help="data folder (default: a temporary one)")
    parser.add_argument(
        "--nodes", type=int, default=1, help="nodes (run commands) on one database (1)"
    )
    parser.add_argument(
        "--database-url",
        help="the PostgreSQL database the nodes share (default, with --nodes 2 or more: a new "
        "one on TEST_DATABASE_URL's server, or postgres@127.0.0.1:5432; one node: SQLite)",
    )
    parser.add_argument(
        "--faults",
        choices=FAULTS,
        default="kills",
        help="kills (default); or, with --nodes 2 or more, a graceful rolling restart of the "
        "origins alone (behind Pushpins the soak runs) or of whole nodes",
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.writers < 1 or args.posts < 3 or args.rate <= 0:
        parser.error("need --clients and --writers >= 1, --posts >= 3, --rate > 0")
    if args.nodes < 1 or (args.faults != "kills" and args.nodes < 2):
        parser.error("need --nodes >= 1, and 2 or more for a rolling restart")
    summary = run(
        args.clients,
        args.writers,
        args.posts,
        args.data_dir,
        nodes=args.nodes,
        database_url=args.database_url,
        faults=args.faults,
        rate=args.rate,
        hold_timeout=args.hold_timeout,
        seed=args.seed,
        echo=lambda line: print(line, flush=True),
    )
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
