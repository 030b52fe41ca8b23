"""Fan-out benchmark: how long one post takes to reach N long-polls held by Pushpin.

Two cases, run alternately (origin, raw, origin, raw, ...) so that both see the same machine
state, with the same load generator and the same shipped Pushpin config
(``pushpin/pushpin.conf``: ``message_rate`` and the rest):

origin
    The real run command (``python -m app``: Pushpin and the origin) in a temporary data folder.
    N long-polls ``GET /api/notifications/posts?since=CURSOR``, spread over a few reader accounts
    that follow one writer, are held by Pushpin; then the writer POSTs one post. Measured: from
    just before the POST is sent until the last of the N held requests has its answer, which must
    contain the post. That covers the origin's commit, its publisher's publish request and
    Pushpin's fan-out.
raw
    A bare Pushpin in front of a tiny origin (in this process) that holds every request on one
    channel. N requests are held, then one item (the same bytes as the origin case's answer) is
    published straight to Pushpin's publish port. Measured: from just before the publish request
    until the last delivery: Pushpin's fan-out alone, the floor for the origin case.

The ratio origin/raw is what the origin adds on top of Pushpin. Failures (no answer, an error
status, an answer without the post, an answer before the publish) are counted, never retried
once the publish has been sent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvloop

from app.pushpin import Pushpin
from tests.support import PASSWORD, ROOT, Stack, basic, free_ports, raw_get, running

HOST = "127.0.0.1"
PUSHPIN_CONFIG = ROOT / "pushpin" / "pushpin.conf"
# Each account costs a slow scrypt hash (about 50 ms) to create; a user may hold many
# long-polls at once, so a few readers carry all N of them.
READERS = 20
# Pushpin answers 500/502 to bursts of new connections (its queue towards zurl is small), so
# connections are opened in small batches, and the few refused ones are retried.
BATCH, BATCH_PAUSE = 50, 0.05
MAX_RETRIES = 20
# About 1 s after a channel first gets subscribers, Pushpin re-requests every request held on
# it from the origin; the publish must come after that, once the origin is idle.
SETTLE_SECONDS = 2.0
QUIET_TIMEOUT = 15.0
DELIVERY_TIMEOUT = 15.0  # far above any expected fan-out time, far below the hold timeout
HOLD_TIMEOUT = 55
REQUEST_TIMEOUT = HOLD_TIMEOUT + 15.0
# A stand-in for the raw case's published body, used only if no origin run delivered anything.
FALLBACK_BODY = b'{"last":"0","items":[' + b'{"content":"' + b"x" * 250 + b'"}]}'


class BenchError(Exception):
    """The benchmark could not run (as opposed to a run with failed deliveries)."""


@dataclass
class Answer:
    status: int  # 0 when there was no HTTP answer at all
    body: bytes
    at: float  # time.perf_counter() when it arrived
    error: str = ""


@dataclass
class RunResult:
    case: str  # "origin" or "raw"
    run: int
    clients: int
    delivered: int  # answers that arrived after the publish and carried the item
    failures: int
    last_ms: float | None  # publish (or POST) to the last delivery; None if nothing arrived
    first_ms: float | None
    median_ms: float | None
    request_ms: float  # how long the POST or publish request itself took to answer
    retried: int  # 5xx (or refused connections) retried while ramping up
    ramp_seconds: float
    quiet: bool  # the origin was idle before the publish, as it should be
    body_bytes: int
    failure_reasons: dict[str, int] = field(default_factory=dict)


class Holds:
    """N requests held through Pushpin, opened in ramped batches, then answered by one publish."""

    def __init__(self, port: int, request: Callable[[int], tuple[str, dict[str, str]]]) -> None:
        self.port = port
        self.request = request  # the path and headers of the i-th request
        self.published = False
        self.retried = 0
        self.tasks: list[asyncio.Task[Answer]] = []

    async def _one(self, path: str, headers: dict[str, str]) -> Answer:
        attempt = 0
        while True:
            try:
                status, _, body = await raw_get(HOST, self.port, path, headers, REQUEST_TIMEOUT)
                error = ""
            except (OSError, EOFError, ValueError) as exc:  # TimeoutError is an OSError
                status, body, error = 0, b"", type(exc).__name__
            at = time.perf_counter()
            # Refusals are normal while ramping up. After the publish a retry would only be held
            # again (or answered by the origin from its store, which is not fan-out): a failure.
            refused = status == 0 or status >= 500
            if refused and not self.published and attempt < MAX_RETRIES:
                attempt += 1
                self.retried += 1
                await asyncio.sleep(0.05 * attempt)
                continue
            return Answer(status, body, at, error)

    async def open(self, n: int, echo: Callable[[str], None], label: str) -> float:
        """Open ``n`` requests; return how long that took."""
        start = time.perf_counter()
        step = max(BATCH, -(-n // 4 // BATCH) * BATCH)  # about four progress lines per run
        for i in range(n):
            path, headers = self.request(i)
            self.tasks.append(asyncio.create_task(self._one(path, headers)))
            opened = i + 1
            if opened % BATCH == 0 or opened == n:
                await asyncio.sleep(BATCH_PAUSE)
                if opened % step == 0 or opened == n:
                    echo(f"  {label}: holding {opened}/{n}")
        return time.perf_counter() - start

    async def settle(self, quiet: Callable[[], Awaitable[bool]]) -> bool:
        """Wait until Pushpin holds every request and the origin is idle; False if it never
        was (the run still goes on, and says so)."""
        await asyncio.sleep(SETTLE_SECONDS)
        deadline = time.monotonic() + QUIET_TIMEOUT
        while not await quiet():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def measure(
        self, publish: Callable[[], Awaitable[Callable[[bytes], bool]]]
    ) -> tuple[float, float, list[float], Counter[str], bytes | None]:
        """Publish, then wait for every answer. ``publish`` sends the item and returns the check
        each answer must pass. Returns the publish time, how long the publish request took, each
        delivery's delay in ms, the failures by reason, and one delivered body."""
        failures: Counter[str] = Counter()
        for task in self.tasks:
            if task.done():  # answered before anything was published: not held
                failures[f"answered before the publish ({_describe(task.result())})"] += 1
        waiting = [t for t in self.tasks if not t.done()]
        # A garbage collection pass in this (client) process while answers arrive would show
        # up as fan-out time: collect now, and not during the measurement.
        gc.collect()
        gc.disable()
        try:
            self.published = True
            t0 = time.perf_counter()
            check = await publish()
            request_ms = (time.perf_counter() - t0) * 1000
            done, pending = await asyncio.wait(waiting, timeout=DELIVERY_TIMEOUT)
        finally:
            gc.enable()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        failures[f"no answer within {DELIVERY_TIMEOUT:.0f} s"] += len(pending)
        delays, sample = [], None
        for task in done:
            answer = task.result()
            if answer.status == 200 and check(answer.body):
                delays.append((answer.at - t0) * 1000)
                sample = answer.body
            elif answer.status == 200:
                failures["answer without the published item"] += 1
            else:
                failures[_describe(answer)] += 1
        return t0, request_ms, delays, +failures, sample


def _describe(answer: Answer) -> str:
    return f"HTTP {answer.status}" if answer.status else answer.error or "no answer"


def _result(
    case: str,
    run: int,
    clients: int,
    holds: Holds,
    ramp: float,
    quiet: bool,
    measured: tuple[float, float, list[float], Counter[str], bytes | None],
    body_bytes: int,
) -> RunResult:
    _, request_ms, delays, failures, _ = measured
    return RunResult(
        case=case,
        run=run,
        clients=clients,
        delivered=len(delays),
        failures=sum(failures.values()),
        last_ms=max(delays) if delays else None,
        first_ms=min(delays) if delays else None,
        median_ms=statistics.median(delays) if delays else None,
        request_ms=request_ms,
        retried=holds.retried,
        ramp_seconds=ramp,
        quiet=quiet,
        body_bytes=body_bytes,
        failure_reasons=dict(failures),
    )


class TinyOrigin:
    """The raw case's origin: holds every ``/hold/CHANNEL`` request on CHANNEL, answers anything
    else (Pushpin's readiness check GETs /health) with a plain 200. It does no work per request,
    so the raw case measures Pushpin alone."""

    def __init__(self) -> None:
        self.requests = 0

    def answer(self, path: str) -> bytes:
        if path.startswith("/hold/"):
            instruct = {
                "hold": {
                    "mode": "response",
                    "channels": [{"name": path.removeprefix("/hold/"), "prev-id": "0"}],
                    "timeout": HOLD_TIMEOUT,
                },
                "response": {
                    "code": 200,
                    "headers": {"Content-Type": "application/json"},
                    "body": "{}",
                },
            }
            body, content_type = json.dumps(instruct).encode(), "application/grip-instruct"
        else:
            body, content_type = b"ok\n", "text/plain"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
        return head.encode() + b"\r\n\r\n" + body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # zurl keeps connections to the origin alive: serve requests until it closes.
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.rstrip("\r\n").split("\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if length := int(headers.get("content-length", "0")):
                    await reader.readexactly(length)
                self.requests += 1
                writer.write(self.answer(request_line.split()[1]))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (OSError, EOFError, ValueError):
            pass  # the connection ended: nothing to answer
        finally:
            writer.close()


class Bench:
    def __init__(self, stack: Stack, writer: str, readers: list[str], rundir: Path) -> None:
        self.stack, self.writer, self.readers, self.rundir = stack, writer, readers, rundir
        self.tiny = TinyOrigin()
        self.origin_port, self.http_port, self.publish_port = free_ports(3)
        self.body: bytes | None = None  # an origin answer: the raw case publishes the same bytes

    async def run(self, clients: int, runs: int, echo: Callable[[str], None]) -> list[RunResult]:
        server = await asyncio.start_server(self.tiny.handle, HOST, self.origin_port)
        pushpin = Pushpin(
            config=PUSHPIN_CONFIG,
            rundir=self.rundir,
            http_port=self.http_port,
            publish_port=self.publish_port,
            origin=f"{HOST}:{self.origin_port}",
            sig_key="x" * 40,
        )
        results = []
        try:
            await pushpin.start()
            async with (
                httpx.AsyncClient(base_url=self.stack.url, auth=(self.writer, PASSWORD)) as w,
                httpx.AsyncClient(base_url=self.stack.origin_url) as origin,
                httpx.AsyncClient() as publisher,
            ):
                # Open the connections (and fill the origin's login cache) before any timing.
                assert (await w.get("/api/subscribed")).status_code == 200
                assert (await publisher.post(self._publish_url, json={"items": []})).is_success
                for run in range(1, runs + 1):
                    for case in ("origin", "raw"):
                        if case == "origin":
                            result = await self._origin_run(run, clients, w, origin, echo)
                        else:
                            result = await self._raw_run(run, clients, publisher, echo)
                        results.append(result)
                        echo(_run_line(result, runs))
        finally:
            await pushpin.stop()
            server.close()
            await server.wait_closed()
        return results

    @property
    def _publish_url(self) -> str:
        return f"http://{HOST}:{self.publish_port}/publish/"

    async def _origin_run(
        self,
        run: int,
        clients: int,
        w: httpx.AsyncClient,
        origin: httpx.AsyncClient,
        echo: Callable[[str], None],
    ) -> RunResult:
        r = await w.get("/api/notifications/posts")
        if r.status_code != 200:
            raise BenchError(f"cannot read the cursor: HTTP {r.status_code} {r.text}")
        since = r.json()["last"]
        path = f"/api/notifications/posts?since={since}"
        auth = [{"Authorization": basic(reader)} for reader in self.readers]
        holds = Holds(int(self.stack.env["PORT"]), lambda i: (path, auth[i % len(auth)]))
        ramp = await holds.open(clients, echo, f"origin run {run}")

        async def idle() -> bool:
            # Pushpin, not the origin, must be holding the requests.
            health = (await origin.get("/health")).json()
            return health["requests_in_flight"] == 0  # type: ignore[no-any-return]

        quiet = await holds.settle(idle)

        async def publish() -> Callable[[bytes], bool]:
            r = await w.post(
                f"/api/{self.writer}/content/posts", json={"content": f"fan-out run {run}"}
            )
            if r.status_code != 201:
                raise BenchError(f"the post failed: HTTP {r.status_code} {r.text}")
            created = r.json()
            return lambda body: created in json.loads(body).get("items", [])

        measured = await holds.measure(publish)
        self.body = self.body or measured[4]
        return _result("origin", run, clients, holds, ramp, quiet, measured, len(self.body or b""))

    async def _raw_run(
        self, run: int, clients: int, publisher: httpx.AsyncClient, echo: Callable[[str], None]
    ) -> RunResult:
        # A new channel each run: Pushpin drops a (channel, id) pair it saw in the last 60 s.
        channel = f"bench{run}"
        holds = Holds(self.http_port, lambda i: (f"/hold/{channel}", {}))
        ramp = await holds.open(clients, echo, f"raw run {run}")

        async def idle() -> bool:
            # The tiny origin answers at once; Pushpin is done when it stops re-requesting.
            before = self.tiny.requests
            await asyncio.sleep(0.5)
            return self.tiny.requests == before

        quiet = await holds.settle(idle)
        body = self.body or FALLBACK_BODY
        item = {
            "channel": channel,
            "id": "1",
            "prev-id": "0",
            "formats": {"http-response": {"body": body.decode()}},
        }

        async def publish() -> Callable[[bytes], bool]:
            r = await publisher.post(self._publish_url, json={"items": [item]})
            if r.status_code != 200:
                raise BenchError(f"the publish failed: HTTP {r.status_code} {r.text}")
            return lambda answer: answer == body

        measured = await holds.measure(publish)
        return _result("raw", run, clients, holds, ramp, quiet, measured, len(body))


def _run_line(r: RunResult, runs: int) -> str:
    what = "POST" if r.case == "origin" else "publish"
    if r.last_ms is None or r.first_ms is None or r.median_ms is None:
        timing = "nothing delivered"
    else:
        timing = (
            f"last answer {r.last_ms:.1f} ms after the {what} "
            f"(first {r.first_ms:.1f}, median {r.median_ms:.1f}; {what} {r.request_ms:.1f})"
        )
    line = (
        f"{r.case:<6} run {r.run}/{runs}: {r.delivered}/{r.clients} delivered, {timing}, "
        f"{r.failures} failed, {r.retried} retried while ramping up"
    )
    if r.failure_reasons:
        line += " " + json.dumps(r.failure_reasons)
    if not r.quiet:
        line += " [origin still busy at publish time]"
    return line


def _median(results: list[RunResult], case: str) -> float | None:
    times = [r.last_ms for r in results if r.case == case and r.last_ms is not None]
    return statistics.median(times) if times else None


def _setup(stack: Stack, readers: int) -> tuple[str, list[str]]:
    """One writer and a few readers that follow the writer's channel."""
    writer = "writer@bench.example"
    stack.account(writer).close()
    names = [f"reader{i}@bench.example" for i in range(readers)]
    for name in names:
        with stack.account(name) as client:
            r = client.post("/api/subscribed", json={f"{writer}/posts": "publisher"})
            if r.status_code != 200:
                raise BenchError(f"{name} cannot follow {writer}: HTTP {r.status_code} {r.text}")
    return writer, names


def _raise_file_limit(clients: int) -> None:
    """Each held request is a socket here and in Pushpin (started after this, so it inherits the
    limit): lift the soft limit to the hard one if N needs it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < clients + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(clients: int, runs: int, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; return the summary, every run's numbers under ``results``."""
    if clients < 1 or runs < 1:
        raise ValueError("clients and runs must be at least 1")
    _raise_file_limit(clients)
    echo(f"fan-out of one post to {clients} held long-polls, {runs} run(s) of each case")
    with (
        tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp,
        running(Path(tmp) / "data") as stack,
    ):
        writer, readers = _setup(stack, min(READERS, clients))
        bench = Bench(stack, writer, readers, Path(tmp) / "raw-pushpin")
        results = uvloop.run(bench.run(clients, runs, echo))
    origin_ms, raw_ms = _median(results, "origin"), _median(results, "raw")
    ratio = origin_ms / raw_ms if origin_ms is not None and raw_ms else None
    origin_failures = sum(r.failures for r in results if r.case == "origin")
    raw_failures = sum(r.failures for r in results if r.case == "raw")
    summary: dict[str, Any] = {
        "clients": clients,
        "runs": runs,
        "origin_median_ms": origin_ms,
        "raw_median_ms": raw_ms,
        "ratio": ratio,
        "failures": origin_failures + raw_failures,
        "origin_failures": origin_failures,
        "raw_failures": raw_failures,
        "results": [asdict(r) for r in results],
    }
    echo(
        f"summary: {clients} clients, median of {runs}: origin {_ms(origin_ms)}, "
        f"raw Pushpin {_ms(raw_ms)}, ratio {'n/a' if ratio is None else f'{ratio:.2f}'}, "
        f"failures {summary['failures']} (origin {origin_failures}, raw {raw_failures})"
    )
    return summary


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _machine() -> dict[str, Any]:
    try:
        pushpin = subprocess.run(
            ["pushpin", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        pushpin = "unknown"
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pushpin": pushpin,
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time one post's fan-out to N long-polls held by Pushpin, through the "
        "origin and on a raw Pushpin. Exits with 1 if any delivery failed.",
    )
    parser.add_argument("--clients", type=int, default=1000, help="held long-polls (1000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (3)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the raw results here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.runs < 1:
        parser.error("--clients and --runs must be at least 1")
    date = datetime.now(UTC).isoformat(timespec="seconds")
    machine = _machine()  # before the run: the load average is the machine's, not ours
    summary = run(args.clients, args.runs)
    if args.json:
        record = {
            "date": date,
            "command": shlex.join(sys.orig_argv),
            "machine": machine,
            "pushpin_config": str(PUSHPIN_CONFIG.relative_to(ROOT)),
            **summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 1 if summary["failures"] else 0
