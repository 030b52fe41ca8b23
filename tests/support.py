"""Real parts for tests and benchmarks: the run command on free ports, and raw long-polls.

``Stack`` starts ``python -m app`` (Pushpin and the origin, as a user would) in its own data
folder, on ports below 32768 (the ephemeral range starts there; see docs/pushpin.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx

from app.pushpin import Pushpin, sockets_dir

# One TLS context for every test client: httpx loads the CA bundle again for each client it
# makes without one (about 40 ms a client: four social-model test files took 178 s, now 100 s).
TLS = ssl.create_default_context()

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
P = ParamSpec("P")
PASSWORD = "correct horse"
# Every test and benchmark comes from 127.0.0.1, as many users: the per-address and rate
# limits are raised for them (a test of a limit sets it back); tests/test_limits.py checks
# the defaults.
RAISED_LIMITS = {
    "ACCOUNTS_PER_HOUR": "1000000",
    "POSTS_PER_MINUTE": "1000000",
    "FOLLOWS_PER_MINUTE": "1000000",
    "MAX_HELD_PER_ADDRESS": "1000000",
    "MAX_CHANNELS": "1000000",  # a test follows 1,000 nodes of one owner
}


def free_ports(count: int) -> list[int]:
    """Distinct ports in 20000-32000 that nothing listens on now."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 32000)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class Stack:
    """The run command, started for real on free ports."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # e.g. ["--origin-only"]
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        port, origin, publish, pushpin_metrics = free_ports(4)
        self.env = {
            "DATA_DIR": str(self.data_dir),
            "PORT": str(port),
            "ORIGIN_PORT": str(origin),
            "PUSHPIN_PUBLISH_PORT": str(publish),
            "PUSHPIN_METRICS_PORT": str(pushpin_metrics),
            "LOG_LEVEL": "info",
            **RAISED_LIMITS,
            **self.env,
        }

    @property
    def url(self) -> str:
        """Where clients connect: Pushpin."""
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ORIGIN_PORT']}"

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PUSHPIN_PUBLISH_PORT']}/publish/"

    @property
    def sig_key(self) -> str:
        """The key Pushpin signs Grip-Sig with: given, or made in the data folder."""
        return self.env.get("GRIP_SIG_KEY") or (self.data_dir / "grip_sig_key").read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "run.log"

    def start(self, timeout: float = 30.0) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        offset = log.tell()  # a restart appends to the same log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", *self.args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while b"Ready:" not in self.log_path.read_bytes()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"run command did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill_tree(self) -> None:
        """SIGKILL the run command, then its Pushpin (its own session, so it outlives the
        run command): nothing gets to shut down cleanly, as with kill -9 of the whole group."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None
        kill(pushpin_pids(self.data_dir))

    def client(self, user: str | None = None, origin: bool = False) -> httpx.Client:
        auth = (user, PASSWORD) if user else None
        return httpx.Client(
            verify=TLS, base_url=self.origin_url if origin else self.url, auth=auth, timeout=30.0
        )

    def account(self, user: str) -> httpx.Client:
        """Create ``user`` and return a client logged in as them."""
        with self.client() as anonymous:
            r = anonymous.post("/api/account", json={"username": user, "password": PASSWORD})
            assert r.status_code == 201, r.text
        return self.client(user)


# The processes of a Pushpin (the names its runner starts).
PUSHPIN_NAMES = ("pushpin", "condure", "zurl", "m2adapter", "mongrel2")


def pushpin_pids(data_dir: Path) -> list[int]:
    pids = []
    # Pushpin's pid files are in its sockets folder (the run folder, or a short path in the
    # temp folder when the data folder's path is long).
    for pid_file in sockets_dir(data_dir / "pushpin").glob("*.pid"):
        text = pid_file.read_text().strip()
        if text.isdigit() and _is_pushpin(int(text)):
            pids.append(int(text))
    return pids


def _is_pushpin(pid: int) -> bool:
    # A pid file left by a dead process may name an unrelated process since: never kill that.
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(argv0).name.startswith(PUSHPIN_NAMES)


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def running(data_dir: Path, **env: str) -> Iterator[Stack]:
    stack = Stack(data_dir, env=env).start()
    try:
        yield stack
    finally:
        if stack.process is not None:
            stack.stop()


@contextmanager
def cluster(base: Path, count: int, **env: str) -> Iterator[list[Stack]]:
    """``count`` nodes (each a run command: Pushpin and origin) that form one service: one
    database (``env`` gives DATABASE_URL and the shared keys), every Pushpin in each node's
    GRIP_URL, every origin in each node's ORIGINS (its own first). Started in order: the
    first takes the publisher's leases."""
    with _cluster(base, count, env, origins_only=False) as nodes:
        yield nodes


@contextmanager
def split_cluster(base: Path, count: int, **env: str) -> Iterator[list[Stack]]:
    """``cluster``, but each node runs its origin alone (``--origin-only``) and its Pushpin is
    started here, as a deployment with Pushpin in a container of its own does: stopping a node
    then stops its origin only, and its Pushpin sends requests to the other origins meanwhile.
    """
    with _cluster(base, count, env, origins_only=True) as nodes:
        yield nodes


@contextmanager
def _cluster(
    base: Path, count: int, env: dict[str, str], origins_only: bool
) -> Iterator[list[Stack]]:
    args = ["--origin-only"] if origins_only else []
    nodes = [Stack(base / f"node{i}", env=dict(env), args=list(args)) for i in range(count)]
    publish = ",".join(f"http://127.0.0.1:{n.env['PUSHPIN_PUBLISH_PORT']}" for n in nodes)
    origins = [f"127.0.0.1:{n.env['ORIGIN_PORT']}" for n in nodes]
    for i, node in enumerate(nodes):
        node.env["GRIP_URL"] = publish
        node.env["ORIGINS"] = ",".join(origins[i:] + origins[:i])
    background = Background() if origins_only else None
    pushpins: list[Pushpin] = []
    try:
        with started(nodes):
            if background is not None:
                # Once every origin runs: a Pushpin is ready when a request through it is
                # answered.
                for node in nodes:
                    pushpins.append(node_pushpin(node))
                    background.call(pushpins[-1].start())
            yield nodes
    finally:
        if background is not None:
            for pushpin in pushpins:
                background.call(pushpin.stop())
            background.close()


@contextmanager
def started(nodes: list[Stack]) -> Iterator[list[Stack]]:
    """Start ``nodes`` in order; stop those still running at the end, whatever happened."""
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            if node.process is not None:
                node.stop()


def node_pushpin(node: Stack) -> Pushpin:
    """The Pushpin the run command would start for ``node``, for a node that runs its origin
    alone: same ports, run folder, routes (ORIGINS) and signing key."""
    return Pushpin(
        config=ROOT / "pushpin" / "pushpin.conf",
        rundir=node.data_dir / "pushpin",
        http_port=int(node.env["PORT"]),
        publish_port=int(node.env["PUSHPIN_PUBLISH_PORT"]),
        origin=node.env["ORIGINS"],
        sig_key=node.sig_key,
    )


def health(stack: Stack) -> dict[str, Any]:
    """The origin's ``/health``, asked directly (not through Pushpin)."""
    answer: dict[str, Any] = httpx.get(stack.origin_url + "/health", verify=TLS, timeout=10).json()
    return answer


# Pushpin asks the origin again for the holds on a channel this long after it first holds
# anything on it (its handler's SUBSCRIBED_DELAY). A channel stays subscribed for a minute
# after its last hold (subscription_linger), so a later hold on it sees that request sooner,
# or not at all.
SUBSCRIBED_DELAY = 1.0


class Holds:
    """Realtime requests held in Pushpin during one test, and how their answers came.

    A held request's answer looks the same whether Pushpin took it from a publish or asked the
    origin again, which answers from the log: Pushpin does that when a published item does not
    follow the hold's prev-id, and once anyway, ``SUBSCRIBED_DELAY`` after a channel's first
    hold. So ``in_place`` waits for the holds and for that request; from then on the origin is
    asked only when a publish does not fit a hold, or for a hint (Aloha). A test that says a
    held request gets something *published* checks that the origin's count of requests on that
    feed (``/health``'s ``feed_requests``) did not move from then to the answer: ``published``.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.pool = ThreadPoolExecutor(32)  # one thread per request held at once
        self.feeds: dict[Future[Any], str] = {}
        self.asked: dict[str, int] = {}  # feed -> origin requests once the holds were in place
        self.expected: dict[str, int] = {}  # feed -> origin requests once all sent are answered

    def __enter__(self) -> Holds:
        return self

    def __exit__(self, *exc: object) -> None:
        # A request still held (the test failed) ends at its own timeout, in its thread.
        self.pool.shutdown(wait=False, cancel_futures=True)

    def requests(self, feed: str) -> int:
        """Realtime requests on ``feed`` (posts, events, firehose, aloha) the origin handled."""
        count: int = health(self.stack)["feed_requests"].get(feed, 0)
        return count

    def send(self, feed: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Send a request on ``feed`` (``call(*args, **kwargs)``) and go on; ``in_place`` waits
        until it is held."""
        now = self.requests(feed)
        self.expected[feed] = max(self.expected.get(feed, 0), now) + 1
        future = self.pool.submit(call, *args, **kwargs)
        self.feeds[future] = feed
        return future

    def hold(self, feed: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Send a request on ``feed`` and return once it is held (``in_place``)."""
        future = self.send(feed, call, *args, **kwargs)
        self.in_place()
        return future

    def in_place(self) -> None:
        """Wait until the origin has answered every request sent with a hold, and then until
        Pushpin has asked it again for each newly held channel and had its answer."""
        pending = [future for future in self.feeds if not future.done()]
        held = Counter(self.feeds[future] for future in pending)
        self._origin_done(lambda counts: self._reached(counts, self.expected))
        # That request comes SUBSCRIBED_DELAY after a channel's first hold; for a channel held
        # in the last minute, sooner or not at all: then the deadline ends the wait.
        again = {feed: count + held[feed] for feed, count in self.expected.items()}
        deadline = time.monotonic() + SUBSCRIBED_DELAY + 1.0
        counts = self._origin_done(
            lambda counts: self._reached(counts, again) or time.monotonic() > deadline
        )
        answered = [future for future in pending if future.done()]
        assert not answered, f"answered, not held: {answered[0].result()}"
        self.asked = {feed: counts.get(feed, 0) for feed in self.expected}

    @staticmethod
    def _reached(counts: dict[str, int], wanted: dict[str, int]) -> bool:
        return all(counts.get(feed, 0) >= count for feed, count in wanted.items())

    def _origin_done(self, enough: Callable[[dict[str, int]], bool]) -> dict[str, int]:
        """The origin's counts, once they are ``enough`` and it has no request in hand."""
        deadline = time.monotonic() + 10
        while True:
            now = health(self.stack)
            counts: dict[str, int] = now["feed_requests"]
            if now["requests_in_flight"] == 0 and enough(counts):
                return counts
            assert time.monotonic() < deadline, f"not held: {counts} of {self.expected}"
            time.sleep(0.01)

    def published(self, future: Future[T], timeout: float = 5, hints: int = 0) -> T:
        """The answer of a held request, which must have come from a publish: the origin was
        asked nothing on its feed since the holds were in place (with ``hints``: that many
        times, one for each hint published to it)."""
        result = future.result(timeout)
        feed = self.feeds[future]
        asked = self.requests(feed) - self.asked[feed]
        assert asked == hints, (
            f"the origin was asked {asked} more {feed} requests, {hints} expected: the answer "
            f"came from the log, not from what was published"
        )
        self.asked[feed] += hints
        return result


def basic(user: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def raw_get(
    host: str, port: int, path: str, headers: dict[str, str], timeout: float
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET on its own connection, with asyncio streams: cheap enough to hold
    thousands at once (httpx is far too slow as a load generator for that)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """An HTTP response's status and headers (names in lower case)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status, parsed = await read_head(reader)
    if "content-length" in parsed:
        body = await reader.readexactly(int(parsed["content-length"]))
    elif parsed.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()  # the empty line after the last chunk
    else:
        body = await reader.read()
    return status, parsed, body


async def long_poll(
    stack_url: str, user: str, since: str, timeout: float = 70.0
) -> tuple[int, dict[str, Any]]:
    """A long-poll through Pushpin, retried (with a short pause) on Pushpin's 502s."""
    host, port = stack_url.removeprefix("http://").split(":")
    path = f"/api/notifications/posts?since={since}"
    for attempt in range(20):
        status, _, body = await raw_get(
            host, int(port), path, {"Authorization": basic(user)}, timeout
        )
        if status < 500:  # Pushpin answers 500 or 502 to bursts of new connections
            return status, json.loads(body) if body else {}
        await asyncio.sleep(0.05 * (attempt + 1))
    return status, {}


class Background:
    """An event loop in a thread, for the async parts (Pushpin, proxies) of synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class DelayProxy:
    """A TCP proxy that holds what the upstream sends back for ``delay`` seconds: it opens a
    window between the origin's answer and Pushpin's receipt of it, to inject events there."""

    def __init__(self, background: Background, upstream_port: int) -> None:
        self.background = background
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.answers = 0  # chunks the upstream sent back, i.e. answers the origin has written
        self.port = free_ports(1)[0]
        self._server = background.call(asyncio.start_server(self._handle, "127.0.0.1", self.port))

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        answering = asyncio.Event()  # set from a request's first bytes to its answer's first

        async def forward(r: asyncio.StreamReader, w: asyncio.StreamWriter, back: bool) -> None:
            try:
                while data := await r.read(65536):
                    if not back:
                        answering.set()
                    elif answering.is_set():
                        answering.clear()
                        self.answers += 1
                        await asyncio.sleep(self.delay)
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        await asyncio.gather(forward(client_r, up_w, False), forward(up_r, client_w, True))

    def close(self) -> None:
        self._server.close()
