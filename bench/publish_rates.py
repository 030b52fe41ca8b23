"""Publish clients at the rates batching produces: requests/s, items/s and CPU per publish.

A paced producer makes items at a steady offered rate, each what the publisher sends for one
delivery (a 1 KB post's feed answer, ``app.grip.response_item``, on one of 100 channels). One
sender takes what waits (up to 500 items) into one publish request and waits for its answer
before the next, as the publisher's task for one target does: the batch size is what the
client's own speed makes it. Two targets, on loopback:

plain http
    A raw Pushpin's publish port (Pushpin 1.36 answers ``Connection: close``: a connection
    per request), as a Pushpin beside the origin is reached.
https, kept alive
    The same Pushpin behind nginx with TLS and keep-alive (``tests/tls_front.py``), as a
    CDN's publish API is reached, less the network's round trip.

Clients: the publisher's hand-written ``PlainClient`` (plain http only), httpx (the
publisher's ``TlsClient`` over https), httpcore alone, and aiohttp. Each runs ``--seconds``
per rate, alternating, ``--rounds`` times; first a sender that publishes nothing, whose CPU
(the producer, encoding) is taken off the others'. Printed per client, the median of the
rounds: requests/s, items/s, items per request, this process's CPU above that baseline (in
cores, and per request), and each item's time from made to accepted (p50, p99).

    .venv/bin/python -m bench.publish_rates [--rates 300,1500,5000] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpcore
import httpx
import uvloop

from app.grip import response_item
from app.model import feed_body
from app.publish_client import PlainClient, TlsClient
from bench.common import RawPushpin, machine, percentile
from bench.publish_clients import post_payload
from tests.tls_front import TlsFront

BATCH_MAX = 500  # as app.publisher.BATCH_ROWS
TOKEN = "a-bench-token"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
BASELINE = "(nothing published)"
CLIENTS = ("PlainClient (hand-written)", "httpx", "httpcore", "aiohttp")

Post = Callable[[bytes], Awaitable[None]]


@dataclass
class Run:
    requests: float  # per second
    items: float  # per second
    cores: float  # this process's CPU while it ran
    p50: float  # ms from an item made to its publish accepted
    p99: float


async def paced(post: Post, rate: int, seconds: float, payload: str) -> Run:
    """Publish what a producer makes at ``rate`` items/s for ``seconds``, after 1 s of warmup."""
    pending: list[tuple[float, bytes]] = []
    wake = asyncio.Event()
    made: list[float] = []  # ms, made to accepted, once measuring
    counts = {"requests": 0, "items": 0}
    measuring = stopping = False
    serial = 0

    async def produce() -> None:
        nonlocal serial
        start, done = time.perf_counter(), 0
        while not stopping:
            due = int((time.perf_counter() - start) * rate)
            for _ in range(due - done):
                serial += 1
                body = feed_body(serial, [payload])
                item = response_item(f"c{serial % 100}", str(serial), str(serial - 1), body)
                encoded = json.dumps(item, separators=(",", ":")).encode()
                pending.append((time.perf_counter(), encoded))
            if due > done:
                done = due
                wake.set()
            await asyncio.sleep(0.001)

    async def send() -> None:
        # Ends on the flag, not by cancellation: Python 3.11's wait_for (in PlainClient) can
        # swallow a cancellation.
        while not stopping:
            with_items = await _wait(wake, 0.1)
            if not with_items:
                continue
            wake.clear()
            while pending and not stopping:
                batch = pending[:BATCH_MAX]
                del pending[:BATCH_MAX]
                await post(b'{"items":[' + b",".join(item for _, item in batch) + b"]}")
                if measuring:
                    now = time.perf_counter()
                    made.extend((now - at) * 1000 for at, _ in batch)
                    counts["requests"] += 1
                    counts["items"] += len(batch)

    tasks = [asyncio.create_task(produce()), asyncio.create_task(send())]
    await asyncio.sleep(1.0)
    measuring = True
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    measuring, stopping = False, True
    await asyncio.gather(*tasks)
    return Run(
        requests=counts["requests"] / wall,
        items=counts["items"] / wall,
        cores=cpu / wall,
        p50=percentile(made, 50) or 0.0,
        p99=percentile(made, 99) or 0.0,
    )


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class Clients:
    """Each client's post to one URL, made on first use and closed at the end."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self.url, self.context = url, context
        tls = url.startswith("https")
        self.plain = None if tls else PlainClient(url)
        self.tls = TlsClient(url, 5.0, context) if tls else None
        self.httpx = None if tls else httpx.AsyncClient(trust_env=False)
        self.httpcore = httpcore.AsyncConnectionPool(ssl_context=context, max_connections=1)
        self.aiohttp: aiohttp.ClientSession | None = None

    def posts(self) -> dict[str, Post]:
        found: dict[str, Post] = {BASELINE: self._nothing}
        if self.plain is not None:
            found[CLIENTS[0]] = self._plain
        found["httpx"] = self._httpx
        found["httpcore"] = self._httpcore
        found["aiohttp"] = self._aiohttp
        return found

    async def _nothing(self, body: bytes) -> None:
        pass

    async def _plain(self, body: bytes) -> None:
        assert self.plain is not None
        _check(*await self.plain.post(body, HEADERS))

    async def _httpx(self, body: bytes) -> None:
        if self.tls is not None:
            _check(*await self.tls.post(body, HEADERS))
            return
        assert self.httpx is not None
        answer = await self.httpx.post(self.url, content=body, headers=HEADERS)
        _check(answer.status_code, answer.content)

    async def _httpcore(self, body: bytes) -> None:
        headers = [(name.encode(), value.encode()) for name, value in HEADERS.items()]
        answer = await self.httpcore.request("POST", self.url, content=body, headers=headers)
        _check(answer.status, answer.content)

    async def _aiohttp(self, body: bytes) -> None:
        if self.aiohttp is None:
            tls = self.context if self.url.startswith("https") else False
            connector = aiohttp.TCPConnector(ssl=tls, limit=1)
            self.aiohttp = aiohttp.ClientSession(connector=connector)
        async with self.aiohttp.post(self.url, data=body, headers=HEADERS) as answer:
            _check(answer.status, await answer.read())

    async def close(self) -> None:
        if self.plain is not None:
            await self.plain.aclose()
        if self.tls is not None:
            await self.tls.aclose()
        if self.httpx is not None:
            await self.httpx.aclose()
        await self.httpcore.aclose()
        if self.aiohttp is not None:
            await self.aiohttp.close()


def _check(status: int, body: bytes) -> None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:100]!r}")


async def run(rates: list[int], seconds: float, rounds: int) -> None:
    payload = post_payload(1000)
    with tempfile.TemporaryDirectory() as folder:
        async with RawPushpin(Path(folder) / "pushpin") as raw:
            front = TlsFront(Path(folder) / "nginx", raw.publish_port, TOKEN)
            with front:
                context = ssl.create_default_context(cafile=front.certificates.ca)
                targets = {
                    "plain http, raw Pushpin": raw.publish_url,
                    "https, kept alive (nginx before Pushpin)": front.grip_base + "/publish/",
                }
                for target, url in targets.items():
                    clients = Clients(url, context)
                    try:
                        await _target(target, clients.posts(), rates, seconds, rounds, payload)
                    finally:
                        await clients.close()


async def _target(
    target: str, posts: dict[str, Post], rates: list[int], seconds: float, rounds: int, payload: str
) -> None:
    for rate in rates:
        runs: dict[str, list[Run]] = {name: [] for name in posts}
        for n in range(rounds):
            names = list(posts) if n % 2 == 0 else [BASELINE, *reversed(list(posts)[1:])]
            for name in names:
                runs[name].append(await paced(posts[name], rate, seconds, payload))
        print(f"{target}, {rate:,} items/s offered ({rounds} x {seconds:g} s, medians):")
        floor = statistics.median(r.cores for r in runs[BASELINE])
        for name, done in runs.items():
            requests = statistics.median(r.requests for r in done)
            items = statistics.median(r.items for r in done)
            above = [max(0.0, r.cores - floor) for r in done]
            per = [a / r.requests * 1000 for a, r in zip(above, done, strict=True) if r.requests]
            line = f"  {name:<28} {requests:7.1f} req/s {items:8.1f} items/s "
            if name == BASELINE:
                print(line + f"(producer and encoding: {floor:.3f} cores)", flush=True)
                continue
            print(
                line + f"{items / requests if requests else 0:5.1f} per req  "
                f"CPU {statistics.median(above):.3f} cores, "
                f"{statistics.median(per):.3f} ms/req ({min(per):.3f}-{max(per):.3f})  "
                f"made to accepted p50 {statistics.median(r.p50 for r in done):5.1f} "
                f"p99 {statistics.median(r.p99 for r in done):6.1f} ms",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="300,1500,5000", help="offered items/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured per client and rate")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each client, alternating")
    args = parser.parse_args()
    m = machine()
    print(f"{m['pushpin']}, {m['cpus']} cores ({m['cpu']}), Python {m['python']}; loopback")
    print(
        f"httpx {httpx.__version__}, httpcore {httpcore.__version__}, aiohttp {aiohttp.__version__}"
    )
    rates = [int(rate) for rate in args.rates.split(",")]
    uvloop.run(run(rates, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
