"""Publish requests: the publisher's own client against httpx's and pubcontrol's, same batches.

Starts a raw Pushpin on loopback (``bench.common.RawPushpin``: the shipped config, nothing held)
and publishes the same batches to its publish port, alternating between the clients:

PlainClient
    The publisher's hand-written client for plain http (``app/publish_client.py``), on the
    event loop: one POST per batch.
httpx AsyncClient
    The same POST through httpx (a dependency already, for Pushpin's readiness check).
pubcontrol publish, blocking, in a thread
    ``PubControlClient.publish(channel, item, blocking=True)`` run on a worker thread, so that
    the event loop is not stalled (called on the loop, it would stall it for as long as each
    line says). Its API takes one item per call: a batch of N items is N POSTs.
pubcontrol publish, non-blocking
    ``publish(..., blocking=False, callback=...)``: the call only queues; pubcontrol's own thread
    sends what is queued, up to 10 items per POST. Timed until the batch's last callback ran.
pubcontrol http_call, in a thread
    The same client's ``http_call("/publish/", body)``: its requests session POSTing the whole
    batch at once, the best pubcontrol's transport can do for a batch.

Each batch is what the publisher sends for one post delivered to N followers: N items on N
channels, the same feed body in each (``app.grip.response_item``; pubcontrol builds its own
items from ``Item`` and gripcontrol's ``HttpResponseFormat``). Printed per client: the time per
batch from the event loop's point of view (p50, p99) and this process's CPU per batch (every
thread; Pushpin runs in its own processes).

    .venv/bin/python -m bench.publish_clients [--runs 300] [--batch 50] [--post-bytes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvloop
from gripcontrol import HttpResponseFormat
from pubcontrol import Item, PubControlClient

from app.grip import response_item
from app.model import feed_body
from app.publish_client import PlainClient
from bench.common import RawPushpin, machine, percentile

WARMUP = 20
CLIENTS = (
    "PlainClient",
    "httpx AsyncClient",
    "pubcontrol publish, blocking, in a thread",
    "pubcontrol publish, non-blocking",
    "pubcontrol http_call, in a thread",
)


def post_payload(size: int) -> str:
    """A post as the feed answers carry it, about ``size`` bytes of JSON."""
    post = {
        "id": "3f1c6a52-8d6b-4c3e-9a51-2b7d0f4e9c11",
        "source": "romeo@example.com/posts",
        "author": "romeo@example.com",
        "published": "2026-11-23T12:00:00.000Z",
        "updated": "2026-11-23T12:00:00.000Z",
        "content": "",
        "media": None,
        "replyTo": None,
    }
    base = len(json.dumps(post, separators=(",", ":")))
    post["content"] = "x" * max(0, size - base)
    return json.dumps(post, separators=(",", ":"))


class Batches:
    """Batch number ``n`` of each client: ``size`` items with ids that only grow, on channels of
    that client's own (prev-id chains never cross between clients)."""

    def __init__(self, client: int, size: int, payload: str) -> None:
        self.channels = [f"c{client}u{i}" for i in range(size)]
        self.payload = payload

    def body(self, n: int) -> str:
        return feed_body(n, [self.payload])

    def items(self, n: int) -> list[dict[str, Any]]:
        body = self.body(n)
        return [response_item(c, str(n), str(n - 1), body) for c in self.channels]

    def request_body(self, n: int) -> bytes:
        items = [json.dumps(i, separators=(",", ":")) for i in self.items(n)]
        return ('{"items":[' + ",".join(items) + "]}").encode()


async def run(runs: int, batch: int, post_bytes: int, seconds: float) -> None:
    payload = post_payload(post_bytes)
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as rundir:
        async with RawPushpin(Path(rundir)) as raw:
            base = raw.publish_url.removesuffix("/publish/")
            own = PlainClient(raw.publish_url)
            hx = httpx.AsyncClient()
            pc = PubControlClient(base)
            thread = ThreadPoolExecutor(max_workers=1)  # one target: one publish at a time

            def blocking(b: Batches, n: int) -> None:
                for channel in b.channels:
                    item = Item(HttpResponseFormat(body=b.body(n)), id=str(n), prev_id=str(n - 1))
                    pc.publish(channel, item, blocking=True)

            async def non_blocking(b: Batches, n: int) -> None:
                done = loop.create_future()
                left = [len(b.channels)]
                failed: list[str] = []

                def callback(ok: bool, message: str) -> None:  # on pubcontrol's thread
                    if not ok:
                        failed.append(message)
                    left[0] -= 1
                    if left[0] == 0:
                        loop.call_soon_threadsafe(done.set_result, None)

                for channel in b.channels:
                    item = Item(HttpResponseFormat(body=b.body(n)), id=str(n), prev_id=str(n - 1))
                    pc.publish(channel, item, blocking=False, callback=callback)
                await done
                if failed:
                    raise RuntimeError(failed[0])

            async def own_post(b: Batches, n: int) -> None:
                status, answer = await own.post(
                    b.request_body(n), {"Content-Type": "application/json"}
                )
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {answer[:100]!r}")

            async def httpx_post(b: Batches, n: int) -> None:
                answer = await hx.post(
                    raw.publish_url,
                    content=b.request_body(n),
                    headers={"Content-Type": "application/json"},
                )
                if answer.status_code != 200:
                    raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:100]!r}")

            def http_call(b: Batches, n: int) -> None:
                pc.http_call("/publish/", b.request_body(n), {"Content-Type": "application/json"})

            calls: list[Callable[[Batches, int], Awaitable[None]]] = [
                own_post,
                httpx_post,
                lambda b, n: loop.run_in_executor(thread, blocking, b, n),
                non_blocking,
                lambda b, n: loop.run_in_executor(thread, http_call, b, n),
            ]
            batches = [Batches(i, batch, payload) for i in range(len(calls))]
            times: list[list[float]] = [[] for _ in calls]
            cpu: list[float] = [0.0 for _ in calls]
            failures = [0 for _ in calls]
            deadline = time.monotonic() + seconds
            for n in range(1, WARMUP + runs + 1):
                if time.monotonic() > deadline:
                    print(f"  (stopped after {n - 1 - WARMUP} runs: --seconds {seconds:g})")
                    break
                order = range(len(calls)) if n % 2 else reversed(range(len(calls)))
                for i in order:
                    started, started_cpu = time.perf_counter(), time.process_time()
                    try:
                        await calls[i](batches[i], n)
                    except Exception as exc:
                        failures[i] += 1
                        if failures[i] == 1:
                            print(f"  {CLIENTS[i]} failed: {exc}")
                        continue
                    if n > WARMUP:
                        times[i].append((time.perf_counter() - started) * 1000)
                        cpu[i] += time.process_time() - started_cpu
            own.close()
            await hx.aclose()
            await loop.run_in_executor(thread, pc.close)
            thread.shutdown()

    body = len(batches[0].request_body(1))
    print(
        f"{batch} item{'s' if batch > 1 else ''} per batch ({body:,} bytes as one publish "
        f"request), {len(times[0])} batches each:"
    )
    for i, name in enumerate(CLIENTS):
        done = times[i]
        p50, p99 = percentile(done, 50), percentile(done, 99)
        cpu_ms = cpu[i] / len(done) * 1000 if done else None
        print(
            f"  {name:<42} p50 {_ms(p50)}  p99 {_ms(p99)}  CPU {_ms(cpu_ms)} per batch"
            + (f"  ({failures[i]} failed)" if failures[i] else ""),
            flush=True,
        )


def _ms(value: float | None) -> str:
    return "    n/a" if value is None else f"{value:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="batches per client and size")
    parser.add_argument(
        "--batch", type=int, default=50, help="items in the large batch (also runs 1)"
    )
    parser.add_argument("--post-bytes", type=int, default=1000, help="size of the post's JSON")
    parser.add_argument(
        "--seconds", type=float, default=60, help="stop each batch size after this long"
    )
    args = parser.parse_args()
    m = machine()
    print(f"{m['pushpin']}, {m['cpus']} cores ({m['cpu']}), Python {m['python']}; loopback")
    for size in dict.fromkeys((1, args.batch)):
        uvloop.run(run(args.runs, size, args.post_bytes, args.seconds))


if __name__ == "__main__":
    main()
