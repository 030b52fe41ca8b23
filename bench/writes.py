"""Write transactions a second through the store's one write lock, by followers per post.

No HTTP and no Pushpin: posts are written through the store itself (``append_post``, the
transaction a POST makes: the event, the post, a deliveries row and a channel head per
recipient), on a fresh database, to nodes with 0, 100, 1,000 and 10,000 followers (seeded by
``bench.seed``). Each node is open, so a post also goes to the firehose: a post to F followers
writes F + 2 deliveries (the owner's own feed, the firehose). For each node:

one writer
    One process posts one post after another. No other writer waits, so a post's time is how
    long it holds the write lock, its commit included: 1 / that is the most posts a second the
    lock lets through at that follower count, from however many origins. A post's time grows
    with the posts already delivered to the same followers (each delivery is an insert into
    the followers' own ranges of the deliveries index): the first and last tenth of the phase
    are reported apart.
many writers
    WRITERS tasks in each process post at once (with ``--origins 2``, two processes on the
    same database, as two origins would), each as soon as its last post is committed.
    Measured: posts a second, deliveries rows a second, and each post's time from the call to
    its commit, waiting for the lock included.

Each process is a ``python -m bench.writes`` worker started for the phase: it opens the store,
says it is ready, is told when to start (all together), and reports its numbers as JSON. The
CPU reported is the workers' own (the database server's is not counted: on PostgreSQL it is
shared with whatever else uses the server). On SQLite the store runs each call inline on the
event loop, so one process's writers never overlap: only a second process contends, through
SQLite's own lock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from app.accounts import hash_password
from app.model import Post, node_source, now_iso
from app.store import open_store
from bench.common import BenchError, percentile
from bench.seed import seed_followers
from bench.setups import SQLITE, Setup
from tests.databases import Databases
from tests.support import PASSWORD, ROOT

WRITERS = 8
START_DELAY = 0.2  # workers start together this long after the last is ready
TARGET_FOLLOWERS, TARGET_RATE = 100, 1000.0  # the throughput case's rate, for its followers


def _writer(followers: int) -> str:
    return f"w{followers}@bench.example"


# -- a worker: one process's writers --------------------------------------------------------


async def work(url: str, channel: str, writers: int, seconds: float) -> dict[str, Any]:
    """Post to ``channel``'s node from ``writers`` tasks for ``seconds`` from the unix time
    read on stdin once ready; each post's time in ms, when the last ended, and this process's
    CPU seconds."""
    store = open_store(url)
    await store.open()
    try:
        node = await store.get_node(channel, "posts")
        if node is None:
            raise BenchError(f"no node {channel}")
        times: list[float] = []
        print("ready", flush=True)
        start_at = float(sys.stdin.readline())
        end_at = start_at + seconds

        async def writer() -> None:
            while time.time() < end_at:
                now = now_iso()
                post = Post(
                    id=str(uuid.uuid4()),
                    source=node_source(node.channel, node.name),
                    author=channel,
                    published=now,
                    updated=now,
                    content="a post of the size people write, give or take: " + "x" * 200,
                    media=None,
                    reply_to=None,
                )
                t0 = time.perf_counter()
                await store.append_post(node, post.id, channel, post.dumps(), now)
                times.append((time.perf_counter() - t0) * 1000)

        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return {
            "times_ms": times,
            "seconds": time.time() - start_at,
            "cpu_seconds": time.process_time() - cpu,
        }
    finally:
        await store.close()


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writes")
    parser.add_argument("url")
    parser.add_argument("channel")
    parser.add_argument("writers", type=int)
    parser.add_argument("seconds", type=float)
    args = parser.parse_args(argv)
    found = uvloop.run(work(args.url, args.channel, args.writers, args.seconds))
    print(json.dumps(found))
    return 0


# -- the case --------------------------------------------------------------------------------


def _phase(url: str, channel: str, processes: int, writers: int, seconds: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.writes", url, channel, str(writers), str(seconds)]
    workers = [
        subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise BenchError("a writes worker did not start (its error is above)")
        start_at = time.time() + START_DELAY
        found = []
        for worker in workers:
            out, _ = worker.communicate(f"{start_at}\n", timeout=seconds + 120)
            if worker.returncode:
                raise BenchError("a writes worker failed (its error is above)")
            found.append(json.loads(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    times = [t for f in found for t in f["times_ms"]]
    elapsed = max(f["seconds"] for f in found)
    tenth = max(1, len(found[0]["times_ms"]) // 10)  # of the first process's posts, in order
    return {
        "processes": processes,
        "writers": writers,
        "posts": len(times),
        "seconds": elapsed,
        "posts_per_second": len(times) / elapsed,
        "mean_ms": sum(times) / len(times) if times else None,
        "first_tenth_mean_ms": _mean(found[0]["times_ms"][:tenth]),
        "last_tenth_mean_ms": _mean(found[0]["times_ms"][-tenth:]),
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "cpu_cores": sum(f["cpu_seconds"] for f in found) / elapsed,
    }


def run(
    followers: list[int],
    seconds: float,
    workdir: Path,
    *,
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """For each follower count, one writer and then many, ``seconds`` each."""
    echo(
        f"writes: posts through the store to nodes of {', '.join(f'{f:,}' for f in followers)} "
        f"followers, {seconds:.0f} s per phase, on {setup.label} "
        f"({setup.origins} process(es) of {WRITERS} writers when many)"
    )
    databases = Databases()
    try:
        if setup.database == "sqlite":
            url = f"sqlite://{workdir.resolve() / 'writes.sqlite3'}"
        else:
            url = databases.fresh()
        seeded = uvloop.run(_prepare(url, followers))
        echo(f"  seeded {seeded:,} followers")
        rows = []
        for count in followers:
            channel = _writer(count)
            one = _phase(url, channel, 1, 1, seconds)
            many = _phase(url, channel, setup.origins, WRITERS, seconds)
            deliveries = count + 2
            row = {
                "followers": count,
                "deliveries_per_post": deliveries,
                "one": one,
                "many": many,
                "deliveries_per_second": many["posts_per_second"] * deliveries,
            }
            rows.append(row)
            echo(
                f"  {count:,} followers: one writer {_n(one['mean_ms'])} ms a post on average "
                f"(first tenth {_n(one['first_tenth_mean_ms'])}, last "
                f"{_n(one['last_tenth_mean_ms'])}; p99 {_n(one['p99_ms'])}), "
                f"{one['posts_per_second']:,.0f} posts/s; "
                f"{many['processes'] * many['writers']} writers {many['posts_per_second']:,.0f} "
                f"posts/s ({row['deliveries_per_second']:,.0f} deliveries rows/s), p50 "
                f"{_n(many['p50_ms'])} ms, p99 {_n(many['p99_ms'])} ms, workers' CPU "
                f"{many['cpu_cores']:.2f} cores"
            )
    finally:
        databases.drop_all()
    return {"summary": {"followers": rows}, "targets": _targets(rows, setup)}


async def _prepare(url: str, followers: list[int]) -> int:
    """The schema, a writer (owner) per node, and the followers; how many followers."""
    store = open_store(url)
    await store.open()
    password = hash_password(PASSWORD)
    try:
        for count in followers:
            await store.create_account(_writer(count), password, uuid.uuid4().hex, now_iso())
    finally:
        await store.close()
    follows = {_writer(count): count for count in followers if count}
    await seed_followers(url, max(followers), follows)
    return max(followers)


def _targets(rows: list[dict[str, Any]], setup: Setup) -> list[dict[str, Any]]:
    """Judged at 100 followers a post; a smaller run (the smoke test) at its largest."""
    row = next((r for r in rows if r["followers"] == TARGET_FOLLOWERS), rows[-1])
    many = row["many"]
    writers = many["processes"] * many["writers"]
    return [
        {
            "target": f"the write lock lets {TARGET_RATE:,.0f} posts/s through at "
            f"{row['followers']:,} followers a post (the throughput case's rate)",
            "measured": f"{writers} writers in {many['processes']} process(es): "
            f"{many['posts_per_second']:,.0f} posts/s ({row['deliveries_per_second']:,.0f} "
            f"deliveries rows/s), p99 {_n(many['p99_ms'])} ms; one writer "
            f"{_n(row['one']['mean_ms'])} ms a post on average",
            "met": many["posts_per_second"] >= TARGET_RATE,
        }
    ]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _n(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
