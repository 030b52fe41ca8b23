"""The fan-out cases' harness: N clients held through Pushpin (long-polls, event streams,
WebSockets), then one post (or a raw publish) and the time until the last of them has it.

- ``Holds`` opens the clients in ramped batches (Pushpin refuses bursts; refusals are tried
  again until the publish), waits until every one is held and the servers idle, publishes and
  measures; a client is an ``Attempt`` (``long_polls`` is one).
- ``Bench`` alternates origin runs and raw runs on one deployment and one raw Pushpin
  (``origin_run``, ``raw_run`` do one run each); ``Clients`` are the HTTP clients they share.
- ``summarize`` makes a row per size (medians over the runs, origin against raw, failures,
  memory while held, CPU from the POST to the last delivery), ``targets`` the verdict,
  ``fanout_record`` the case's record of them and of every run.

What each case holds and why: ``bench.fanout`` (long-polls), ``bench.sse_fanout``,
``bench.ws_fanout``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    HOLD_TIMEOUT,
    HOST,
    IDLE_CORES,
    QUIET_INTERVAL,
    BenchError,
    RawPushpin,
    cpu_seconds,
    median,
    ms,
    raise_file_limit,
    ratio,
    rss_bytes,
    total_cpu_seconds,
    tree_rss_bytes,
)
from bench.setups import Deployment
from tests.support import PASSWORD, raw_get

# Pushpin answers 500/502 to bursts of new connections (its queue towards zurl is small), so
# connections are opened in small batches, and the few refused ones are retried.
BATCH, BATCH_PAUSE = 50, 0.05
MAX_RETRIES = 20
# About 1 s after a channel first gets subscribers, Pushpin re-requests every request held on
# it from the origin; the publish must come after that, once every request is held: no client
# waits to retry a refusal, none was refused for a while, and the origin and Pushpin are idle.
SETTLE_SECONDS = 2.0
QUIET_TIMEOUT = 30.0
REFUSAL_GAP = 1.0  # ... and no refusal for this long (idle: bench.common's QUIET_INTERVAL)
DELIVERY_TIMEOUT = 15.0  # far above any expected fan-out time, far below the hold timeout
REQUEST_TIMEOUT = HOLD_TIMEOUT + 15.0
TARGET_CLIENTS, TARGET_RATIO = 5000, 1.2


@dataclass
class Answer:
    status: int  # 0 when there was no HTTP answer at all
    body: bytes
    at: float  # time.perf_counter() when it arrived
    error: str = ""


def failed(exc: BaseException) -> Answer:
    """A client's try that ended without an HTTP answer: the error's type, and its errno's
    text where it has one (a refused connection, too many open files)."""
    reason = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        reason += f" ({exc.strerror})"
    return Answer(0, b"", time.perf_counter(), reason)


# One client's try at being held, ending with what it got (the i-th client's); a status of 0
# or 5xx is a refusal, tried again until the publish.
Attempt = Callable[[int], Awaitable[Answer]]


def long_polls(ports: list[int], request: Callable[[int], tuple[str, dict[str, str]]]) -> Attempt:
    """Long-polls: the i-th goes to ``ports[i % len(ports)]`` with ``request(i)`` (its path
    and headers); its answer is the response."""

    async def attempt(i: int) -> Answer:
        path, headers = request(i)
        port = ports[i % len(ports)]
        try:
            status, _, body = await raw_get(HOST, port, path, headers, REQUEST_TIMEOUT)
        except (OSError, EOFError, ValueError) as exc:  # TimeoutError is an OSError
            return failed(exc)
        return Answer(status, body, time.perf_counter())

    return attempt


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
    settle_seconds: float  # from the last request opened until all were held (or the deadline)
    quiet: bool  # every request was held and the servers idle before the publish, as they should
    body_bytes: int
    # resident memory while the N requests were held (the origin process; Pushpin's processes)
    origin_rss_mb: float | None
    pushpin_rss_mb: float
    failure_reasons: dict[str, int] = field(default_factory=dict)
    # CPU seconds from the POST (or publish) until the last answer or the timeout
    origin_cpu_seconds: float | None = None
    pushpin_cpu_seconds: float | None = None
    # The origins' realtime requests by kind (their /health's feed_requests) from the first
    # client opened until the post: the clients' own, and Pushpin's asking again (a stream's
    # next-link call is a "stream_repair"); and every request they got from the POST until
    # the last answer, the POST's own included
    origin_requests: dict[str, int] | None = None
    origin_requests_after_post: int | None = None
    # answers with a 5xx status the origins gave from the first client opened to the end (a
    # client's 502 or 500 counted as a failure or a retry is Pushpin's when this is 0)
    origin_server_errors: int | None = None


@dataclass
class Measured:
    """What ``Holds.measure`` saw: when the publish started, how long its request took, each
    delivery's delay, the failures by reason, one delivered body, and the CPU seconds of each
    group of processes it was given until the last answer (or the timeout)."""

    t0: float
    request_ms: float
    delays: list[float]
    failures: Counter[str]
    sample: bytes | None
    cpu: dict[str, float]


class Holds:
    """N clients held through Pushpin (long-polls, streams, sockets: ``attempt``), opened in
    ramped batches, then answered by one publish."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.published = False
        self.retried = 0
        self.waiting = 0  # requests refused, waiting to be sent again
        self.last_refusal = 0.0  # time.monotonic() of the last refusal
        self.tasks: list[asyncio.Task[Answer]] = []

    async def _one(self, i: int) -> Answer:
        attempt = 0
        while True:
            answer = await self.attempt(i)
            # Refusals are normal while ramping up. After the publish a retry would only be held
            # again (or answered by the origin from its store, which is not fan-out): a failure.
            refused = answer.status == 0 or answer.status >= 500
            if refused and not self.published and attempt < MAX_RETRIES:
                attempt += 1
                self.retried += 1
                self.last_refusal = time.monotonic()
                self.waiting += 1
                try:
                    await asyncio.sleep(0.05 * attempt)
                finally:
                    self.waiting -= 1
                continue
            return answer

    async def open(self, n: int, echo: Callable[[str], None], label: str) -> float:
        """Open ``n`` requests; return how long that took."""
        start = time.perf_counter()
        step = max(BATCH, -(-n // 4 // BATCH) * BATCH)  # about four progress lines per run
        for i in range(n):
            self.tasks.append(asyncio.create_task(self._one(i)))
            opened = i + 1
            if opened % BATCH == 0 or opened == n:
                await asyncio.sleep(BATCH_PAUSE)
                if opened % step == 0 or opened == n:
                    echo(f"  {label}: holding {opened}/{n}")
        return time.perf_counter() - start

    async def settle(self, idle: Callable[[], Awaitable[bool]]) -> tuple[bool, float]:
        """Wait until Pushpin holds every request: no client waits to send a refused request
        again, none was refused for REFUSAL_GAP, and ``idle`` (the servers got no request and
        used next to no CPU over QUIET_INTERVAL). Returns whether that happened before
        QUIET_TIMEOUT (the run goes on either way, and says so) and how long it took.

        A request the servers still work on when the post is made is not a fan-out to a held
        request: answered from the log, it would pass; refused, it would count as failed."""
        start = time.monotonic()
        await asyncio.sleep(SETTLE_SECONDS)
        deadline = start + SETTLE_SECONDS + QUIET_TIMEOUT
        while True:
            clients_done = not self.waiting and time.monotonic() - self.last_refusal > REFUSAL_GAP
            if clients_done and await idle():
                return True, time.monotonic() - start
            if time.monotonic() > deadline:
                return False, time.monotonic() - start
            await asyncio.sleep(0.1)

    async def measure(
        self,
        publish: Callable[[], Awaitable[Callable[[bytes], bool]]],
        timeout: float = DELIVERY_TIMEOUT,
        pids: dict[str, list[int]] | None = None,
    ) -> Measured:
        """Publish, then wait up to ``timeout`` for every answer. ``publish`` sends the item and
        returns the check each answer must pass; ``pids``: groups of processes whose CPU to
        measure meanwhile."""
        failures: Counter[str] = Counter()
        for task in self.tasks:
            if task.done():  # answered before anything was published: not held
                failures[f"answered before the publish ({_describe(task.result())})"] += 1
        waiting = [t for t in self.tasks if not t.done()]
        # A garbage collection pass in this (client) process while answers arrive would show
        # up as fan-out time: collect now, and not during the measurement.
        gc.collect()
        gc.disable()
        groups = pids or {}
        try:
            cpu_before = {name: total_cpu_seconds(group) for name, group in groups.items()}
            self.published = True
            t0 = time.perf_counter()
            try:
                check = await publish()
            except (BenchError, httpx.HTTPError) as exc:
                # Counted against this run (every held request fails), not the end of the suite.
                failures[f"the post failed: {type(exc).__name__} {exc}"[:200]] += 1
                check = _never
            request_ms = (time.perf_counter() - t0) * 1000
            done, pending = await asyncio.wait(waiting, timeout=timeout) if waiting else ((), ())
            cpu = {
                name: total_cpu_seconds(group) - cpu_before[name] for name, group in groups.items()
            }
        finally:
            gc.enable()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        failures[f"no answer within {timeout:.0f} s"] += len(pending)
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
        return Measured(t0, request_ms, delays, +failures, sample, cpu)


def _never(body: bytes) -> bool:
    return False


def _describe(answer: Answer) -> str:
    return f"HTTP {answer.status}" if answer.status else answer.error or "no answer"


def run_result(
    case: str,
    run: int,
    clients: int,
    holds: Holds,
    ramp: tuple[float, float, bool],  # opening the requests, then settling, and whether it did
    measured: Measured,
    body_bytes: int,
    memory: tuple[float | None, float],
) -> RunResult:
    delays, failures = measured.delays, measured.failures
    ramp_seconds, settle_seconds, quiet = ramp
    return RunResult(
        case=case,
        run=run,
        clients=clients,
        delivered=len(delays),
        failures=sum(failures.values()),
        last_ms=max(delays) if delays else None,
        first_ms=min(delays) if delays else None,
        median_ms=median(delays),
        request_ms=measured.request_ms,
        retried=holds.retried,
        ramp_seconds=ramp_seconds,
        settle_seconds=settle_seconds,
        quiet=quiet,
        body_bytes=body_bytes,
        origin_rss_mb=memory[0],
        pushpin_rss_mb=memory[1],
        failure_reasons=dict(failures),
        origin_cpu_seconds=measured.cpu.get("origin"),
        pushpin_cpu_seconds=measured.cpu.get("pushpin"),
    )


def origins_idle(
    d: Deployment, origins: list[httpx.AsyncClient], echo: Callable[[str], None], label: str
) -> Callable[[], Awaitable[bool]]:
    """Whether Pushpin, not an origin, holds the requests: between two looks at each origin's
    /health, no origin got another request, none had one in hand, and neither they nor their
    Pushpins worked. (``origins``: a client for each node's origin, in order.)"""

    async def idle() -> bool:
        pids = d.origin_pids() + d.pushpin_pids()
        try:
            before = [(await o.get("/health", timeout=30)).json() for o in origins]
            cpu = sum(map(cpu_seconds, pids))
            await asyncio.sleep(QUIET_INTERVAL)
            after = [(await o.get("/health", timeout=30)).json() for o in origins]
            cores = (sum(map(cpu_seconds, pids)) - cpu) / QUIET_INTERVAL
        except (httpx.HTTPError, OSError) as exc:  # OSError: a process ended meanwhile
            echo(f"  {label}: cannot tell if idle ({type(exc).__name__})")
            return False
        # The second /health of each origin is one request.
        asked = [a["requests"] - b["requests"] for a, b in zip(after, before, strict=True)]
        busy = any(a["requests_in_flight"] for a in after)
        return all(n == 1 for n in asked) and not busy and cores < IDLE_CORES

    return idle


def held_memory(d: Deployment) -> tuple[float, float]:
    """Resident memory of the origins, and of their Pushpins' processes, in MB (summed over
    the nodes)."""
    origins = sum(rss_bytes(pid) for pid in d.origin_pids())
    return origins / 2**20, tree_rss_bytes(d.pushpin_pids()) / 2**20


class Bench:
    """Origin runs and raw runs, alternating, on one deployment and one raw Pushpin; a
    subclass says how its clients are held (``origin_run``, ``raw_run``)."""

    def __init__(self, d: Deployment, writer: str, rundir: Path) -> None:
        self.d, self.writer = d, writer
        self.raw = RawPushpin(rundir)
        self.body: bytes | None = None  # an origin answer: the raw case publishes the same bytes

    async def run(
        self, sizes: list[int], runs: int, echo: Callable[[str], None]
    ) -> list[RunResult]:
        async with self.raw, Clients(self.d, self.writer) as clients:
            await clients.warm(self.raw)

            async def origin(run: int, n: int) -> RunResult:
                result, sample = await self.origin_run(run, n, clients, echo)
                self.body = self.body or sample
                return result

            async def raw(run: int, n: int) -> RunResult:
                return await self.raw_run(run, n, clients, echo)

            return await alternate(sizes, runs, [origin, raw, *self.more_runs(clients, echo)], echo)

    def more_runs(
        self, clients: Clients, echo: Callable[[str], None]
    ) -> list[Callable[[int, int], Awaitable[RunResult]]]:
        """Runs of other cases, after each raw run (``run(number, clients)``)."""
        return []

    async def origin_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> tuple[RunResult, bytes | None]:
        """A run of ``n`` clients through the origin: its result, one delivered answer."""
        raise NotImplementedError

    async def raw_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> RunResult:
        raise NotImplementedError


class Clients:
    """The origin case's HTTP clients: the writer's (through the first node's Pushpin), one
    for each node's origin (its /health), and one for a raw Pushpin's publish port."""

    def __init__(self, d: Deployment, writer: str) -> None:
        self.d = d
        self.writer = httpx.AsyncClient(base_url=d.nodes[0].url, auth=(writer, PASSWORD))
        self.origins = [httpx.AsyncClient(base_url=node.origin_url) for node in d.nodes]
        self.publisher = httpx.AsyncClient()
        self.post_path = f"/api/{writer}/content/posts"

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in [self.writer, *self.origins, self.publisher]:
            await client.aclose()

    async def warm(self, raw: RawPushpin) -> None:
        """Open the connections (and fill the origin's login cache) before any timing."""
        assert (await self.writer.get("/api/subscribed")).status_code == 200
        assert (await self.publisher.post(raw.publish_url, json={"items": []})).is_success

    async def cursor(self) -> str:
        """The end of the log now (as the writer's posts feed says)."""
        r = await self.writer.get("/api/notifications/posts")
        if r.status_code != 200:
            raise BenchError(f"cannot read the cursor: HTTP {r.status_code} {r.text}")
        last: str = r.json()["last"]
        return last

    async def requests(self) -> tuple[int, Counter[str], int]:
        """The requests the origins have had (this look at /health not counted), the realtime
        ones they have handled, by kind, and those they answered with a 5xx status, summed
        over the nodes."""
        total, feeds, errors = 0, Counter[str](), 0
        for origin in self.origins:
            health = (await origin.get("/health", timeout=30)).json()
            total += health["requests"] - 1
            feeds.update(health["feed_requests"])
            errors += health["server_errors"]
        return total, feeds, errors

    async def post(self, content: str) -> dict[str, Any]:
        r = await self.writer.post(
            self.post_path, json={"content": content}, timeout=DELIVERY_TIMEOUT
        )
        if r.status_code != 201:
            raise BenchError(f"the post failed: HTTP {r.status_code} {r.text}")
        created: dict[str, Any] = r.json()
        return created


async def origin_run(
    d: Deployment,
    holds: Holds,
    run_clients: tuple[int, int],
    http: Clients,
    check: Callable[[dict[str, Any]], Callable[[bytes], bool]],
    echo: Callable[[str], None],
) -> tuple[RunResult, bytes | None]:
    """One origin run (``run_clients``: its number, and how many clients): open the clients
    of ``holds``, wait until all are held, post, measure. ``check(created)``: what each answer
    must pass, given the post made. Returns the result and one delivered answer (what a raw
    run publishes)."""
    run, clients = run_clients
    label = f"origin run {run}"
    _, before, errors_before = await http.requests()
    ramp = await holds.open(clients, echo, label)
    quiet, settle = await holds.settle(origins_idle(d, http.origins, echo, label))
    held = held_memory(d)
    posted_at, after, _ = await http.requests()

    async def publish() -> Callable[[bytes], bool]:
        return check(await http.post(f"fan-out run {run}"))

    pids = {"origin": d.origin_pids(), "pushpin": d.pushpin_pids()}
    measured = await holds.measure(publish, pids=pids)
    size = len(measured.sample or b"")
    result = run_result("origin", run, clients, holds, (ramp, settle, quiet), measured, size, held)
    result.origin_requests = {
        k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)
    }
    # Less the look at /health that read ``posted_at`` (counted by the next look, not by it).
    total, _, errors = await http.requests()
    result.origin_requests_after_post = total - posted_at - len(d.nodes)
    result.origin_server_errors = errors - errors_before
    return result, measured.sample


def raw_channel(kind: str, run: int, clients: int) -> str:
    """A raw run's channel, new each run: every raw run publishes its item as id 1, and Pushpin
    drops a (channel, id) pair it saw in the last 60 s."""
    return f"{kind}{clients}-{run}"


async def raw_run(
    raw: RawPushpin,
    holds: Holds,
    run_clients: tuple[int, int],
    http: Clients,
    item: dict[str, Any],
    body: bytes,
    echo: Callable[[str], None],
    case: str = "raw",
) -> RunResult:
    """One raw run (``run_clients``: its number, and how many clients): open the clients of
    ``holds`` on a raw Pushpin, wait until all are held, publish ``item``, measure; each answer
    must be ``body``."""
    run, clients = run_clients
    label = f"{case} run {run}"
    ramp = await holds.open(clients, echo, label)
    quiet, settle = await holds.settle(raw.idle)
    held = (None, tree_rss_bytes(raw.pids()) / 2**20)

    async def publish() -> Callable[[bytes], bool]:
        r = await http.publisher.post(raw.publish_url, json={"items": [item]})
        if r.status_code != 200:
            raise BenchError(f"the publish failed: HTTP {r.status_code} {r.text}")
        return lambda answer: answer == body

    measured = await holds.measure(publish, pids={"pushpin": raw.pids()})
    return run_result(case, run, clients, holds, (ramp, settle, quiet), measured, len(body), held)


async def alternate(
    sizes: list[int],
    runs: int,
    cases: list[Callable[[int, int], Awaitable[RunResult]]],
    echo: Callable[[str], None],
) -> list[RunResult]:
    """Each size, ``runs`` times: a run of each case in turn (``case(run, clients)``: the
    origin's, then the raw one's)."""
    results = []
    for clients in sizes:
        for run in range(1, runs + 1):
            for case in cases:
                result = await case(run, clients)
                results.append(result)
                echo(run_line(result, runs))
    return results


def begin_fanout(
    sizes: list[int], runs: int, noun: str, what: str, label: str, echo: Callable[[str], None]
) -> None:
    """Check a fan-out case's sizes and runs, raise the open-file limit for its largest size,
    and say what runs: one post to each of ``sizes`` ``what``, on the setup ``label``."""
    if min(sizes) < 1 or runs < 1:
        raise ValueError(f"{noun} and runs must be at least 1")
    raise_file_limit(max(sizes))
    echo(f"fan-out of one post to {', '.join(map(str, sizes))} {what}, {runs} run(s), on {label}")


def run_line(r: RunResult, runs: int) -> str:
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
        f"{r.failures} failed, {r.retried} retried while ramping up; opened in "
        f"{r.ramp_seconds:.1f} s, all held {r.settle_seconds:.1f} s later"
    )
    if r.pushpin_cpu_seconds is not None:
        origin = "" if r.origin_cpu_seconds is None else f"origin {_s(r.origin_cpu_seconds)}, "
        line += f"; CPU: {origin}Pushpin {_s(r.pushpin_cpu_seconds)}"
    if r.origin_requests is not None:
        line += (
            f"; origin requests until the post {json.dumps(r.origin_requests)}, after it "
            f"{r.origin_requests_after_post}; origin 5xx answers {r.origin_server_errors}"
        )
    if r.failure_reasons:
        line += " " + json.dumps(r.failure_reasons)
    if not r.quiet:
        line += " [not all held, or the servers still busy, at publish time]"
    return line


def _s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def median_of(results: list[RunResult], case: str, clients: int, what: str) -> float | None:
    """The median of ``what`` over ``case``'s runs with ``clients`` (None where missing)."""
    return median(
        [
            value
            for r in results
            if r.case == case and r.clients == clients and (value := getattr(r, what)) is not None
        ]
    )


def summarize(
    results: list[RunResult],
    sizes: list[int],
    runs: int,
    users: int,
    nodes: int,
    noun: str,
    echo: Callable[[str], None],
) -> list[dict[str, Any]]:
    """A row per size: medians of the runs, origin and raw, their ratio, the failures, memory
    while held and CPU from the POST to the last delivery."""
    rows = []
    for clients in sizes:
        origin_ms = median_of(results, "origin", clients, "last_ms")
        raw_ms = median_of(results, "raw", clients, "last_ms")
        row = {
            "clients": clients,
            "users": users,
            "nodes": nodes,
            "runs": runs,
            "origin_ms": origin_ms,
            "raw_ms": raw_ms,
            "ratio": ratio(origin_ms, raw_ms),
            "origin_failures": sum(
                r.failures for r in results if r.case == "origin" and r.clients == clients
            ),
            "raw_failures": sum(
                r.failures for r in results if r.case == "raw" and r.clients == clients
            ),
            "origin_rss_mb": median_of(results, "origin", clients, "origin_rss_mb"),
            "pushpin_rss_mb": median_of(results, "origin", clients, "pushpin_rss_mb"),
            "raw_pushpin_rss_mb": median_of(results, "raw", clients, "pushpin_rss_mb"),
            "origin_cpu_seconds": median_of(results, "origin", clients, "origin_cpu_seconds"),
            "pushpin_cpu_seconds": median_of(results, "origin", clients, "pushpin_cpu_seconds"),
            "raw_pushpin_cpu_seconds": median_of(results, "raw", clients, "pushpin_cpu_seconds"),
        }
        rows.append(row)
        r = row["ratio"]
        echo(
            f"fan-out to {clients} {noun}: median of {runs}: origin {ms(origin_ms)}, raw "
            f"Pushpin {ms(raw_ms)}, ratio {'n/a' if r is None else f'{r:.2f}'}, failures "
            f"{row['origin_failures']} (raw {row['raw_failures']}); memory while held: "
            f"origin {_mb(row['origin_rss_mb'])}, Pushpin {_mb(row['pushpin_rss_mb'])} "
            f"(raw Pushpin {_mb(row['raw_pushpin_rss_mb'])}); CPU: origin "
            f"{_s(row['origin_cpu_seconds'])}, Pushpin {_s(row['pushpin_cpu_seconds'])} "
            f"(raw Pushpin {_s(row['raw_pushpin_cpu_seconds'])})"
        )
    return rows


def summarize_extra(
    rows: list[dict[str, Any]],
    results: list[RunResult],
    case: str,
    label: str,
    echo: Callable[[str], None],
) -> None:
    """Add another raw case's medians to each size's row, as ``<case>_ms``, ``<case>_failures``
    and ``<case>_pushpin_cpu_seconds`` (``case`` with ``_`` for ``-``)."""
    key = case.replace("-", "_")
    for row in rows:
        n = row["clients"]
        row[f"{key}_ms"] = median_of(results, case, n, "last_ms")
        row[f"{key}_failures"] = sum(
            r.failures for r in results if r.case == case and r.clients == n
        )
        row[f"{key}_pushpin_cpu_seconds"] = median_of(results, case, n, "pushpin_cpu_seconds")
        echo(
            f"fan-out to {n}, {label}: median of {row['runs']}: {ms(row[f'{key}_ms'])}, "
            f"failures {row[f'{key}_failures']}, Pushpin CPU "
            f"{_s(row[f'{key}_pushpin_cpu_seconds'])}"
        )


def fanout_record(
    rows: list[dict[str, Any]], verdict: list[dict[str, Any]], results: list[RunResult]
) -> dict[str, Any]:
    """A fan-out case's part of its record: a summary row per size, the targets, every run."""
    return {
        "summary": {"sizes": rows},
        "targets": verdict,
        "results": [asdict(r) for r in results],
    }


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def targets(
    rows: list[dict[str, Any]], what: str, clients: int = TARGET_CLIENTS
) -> list[dict[str, Any]]:
    """Within TARGET_RATIO of raw Pushpin at ``clients`` (``what``: the target's name, with
    ``{clients}``); a run without that size (the smoke test) is judged at its largest."""
    row = next((r for r in rows if r["clients"] == clients), rows[-1])
    r = row["ratio"]
    return [
        {
            "target": f"{what.format(clients=row['clients'])} within {TARGET_RATIO} x raw Pushpin",
            "measured": f"{ms(row['origin_ms'])} vs raw {ms(row['raw_ms'])}: "
            f"{'n/a' if r is None else f'{r:.2f} x'}, {row['origin_failures']} failed",
            "met": r is not None and r <= TARGET_RATIO and not row["origin_failures"],
        }
    ]
