"""What every benchmark case shares: the machine's facts, process CPU and memory readings, a
keep-alive HTTP client on raw sockets, and a raw Pushpin (the floor every case is held to).

The load generator runs on the same machine as Pushpin and the origin (2 cores here), so it is
kept cheap: asyncio streams on uvloop, no HTTP library on the hot path.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gripcontrol import WebSocketEvent, decode_websocket_events, encode_websocket_events

from app.pushpin import Pushpin
from app.streams import KEEP_ALIVE, LINK_TIMEOUT
from tests.support import ROOT, Stack, free_ports, read_response

HOST = "127.0.0.1"
PUSHPIN_CONFIG = ROOT / "pushpin" / "pushpin.conf"
HOLD_TIMEOUT = 55
QUIET_INTERVAL = 0.5  # idle: no request and almost no CPU over this long
IDLE_CORES = 0.1
FILE_MARGIN = 1000  # open files beyond one per client: the servers' own, logs, pipes
SOCKET_EVENTS = "application/websocket-events"  # WebSocket-over-HTTP
SOCKET_ACK = '["ack",{}]'  # the raw origin's answer to a WebSocket's text frame
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """The benchmark could not run (as opposed to a run with failed deliveries)."""


def machine() -> dict[str, Any]:
    try:
        pushpin = subprocess.run(
            ["pushpin", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        pushpin = "unknown"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * _PAGE / 2**30, 1),
        "python": platform.python_version(),
        "pushpin": pushpin,
        "load_average": os.getloadavg(),
    }


# -- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def total_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds of ``pids``, summed over those that still run."""
    return _summed(cpu_seconds, pids)


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_rss_bytes(pids: Sequence[int]) -> int:
    return int(_summed(rss_bytes, pids))


def _summed(read: Callable[[int], float], pids: Sequence[int]) -> float:
    """``read`` of each of ``pids``, summed over those that still run."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # it ended
            total += read(pid)
    return total


# -- numbers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def number(value: float | None, digits: int = 1, unit: str = "") -> str:
    """``value`` with thousands separators and ``digits`` decimals, or n/a."""
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- accounts --------------------------------------------------------------------------------


def followers(stack: Stack, readers: int) -> tuple[str, list[str]]:
    """One writer, and ``readers`` readers who follow the writer's channel."""
    writer = "writer@bench.example"
    stack.account(writer).close()
    names = [f"reader{i}@bench.example" for i in range(readers)]
    for name in names:
        with stack.account(name) as client:
            r = client.post("/api/subscribed", json={f"{writer}/posts": "publisher"})
            if r.status_code != 200:
                raise BenchError(f"{name} cannot follow {writer}: HTTP {r.status_code} {r.text}")
    return writer, names


# -- HTTP ------------------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, port: int, host: str = HOST) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request (reconnecting if the last answer closed the connection)."""
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout
            )
        assert self._reader is not None and self._writer is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        try:
            status, answer_headers, answer = await asyncio.wait_for(
                read_response(self._reader), timeout
            )
        except BaseException:
            self.close()
            raise
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return status, answer_headers, answer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# -- the raw case: Pushpin and an origin that does nothing -----------------------------------


@dataclass
class Feed:
    """One channel of the raw case's origin: its items in id order, and how far they have been
    published (a hold's prev-id must be what Pushpin last saw, as the origin does)."""

    ids: list[int] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    published: int = 0


class TinyOrigin:
    """The raw case's origin, doing next to no work per request:

    - ``/hold/CHANNEL?prev=ID``: hold on CHANNEL with prev-id ID (default 0);
    - ``/feed/CHANNEL?since=ID``: the items after ID from memory at once (as JSON ``{"last",
      "items"}``), or else a hold on CHANNEL: a long-poll feed, like the origin's, for items
      the benchmark adds with ``append`` and publishes itself;
    - ``/stream/CHANNEL``: an empty server-sent events stream held on CHANNEL (no prev-id, no
      next link), for ``http-stream`` items; with ``?prev=ID``, held as the origin's are, with
      prev-id ID and a next link that all such streams share, ``/next/CHANNEL?prev=ID``, which
      answers with the same hold;
    - ``/ws/CHANNEL``: a WebSocket (over HTTP) subscribed to CHANNEL as it opens, for
      ``ws-message`` items; a text frame from the client is answered with ``SOCKET_ACK``, and
      a pong (an answer to a published ping) with ``socket_frame`` when it is set;
    - anything else (Pushpin's readiness check GETs /health): a plain 200.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.feeds: dict[str, Feed] = {}
        self.socket_frame: str | None = None
        self._published = asyncio.Event()

    def append(self, channel: str, item_id: int, item: str) -> int:
        """Add an item; the id of the channel's item before it (0 for none)."""
        feed = self.feeds.setdefault(channel, Feed())
        prev = feed.ids[-1] if feed.ids else 0
        feed.ids.append(item_id)
        feed.bodies.append(item)
        return prev

    def mark_published(self, channel: str, item_id: int) -> None:
        feed = self.feeds[channel]
        feed.published = max(feed.published, item_id)
        self._published.set()
        self._published = asyncio.Event()

    async def answer(self, target: str, content_type: str = "", body: bytes = b"") -> bytes:
        path, _, query = target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        if path.startswith("/feed/"):
            channel = path.removeprefix("/feed/")
            feed = self.feeds.setdefault(channel, Feed())
            first = bisect.bisect_right(feed.ids, int(params.get("since", "0")))
            if first < len(feed.ids):
                bodies = feed.bodies[first : first + 100]
                last = feed.ids[first + len(bodies) - 1]
                body = f'{{"last":"{last}","items":[{",".join(bodies)}]}}'.encode()
                return _http(body, "application/json")
            head = feed.ids[-1] if feed.ids else 0
            while feed.published < head:
                await self._published.wait()
            return _http(_hold(channel, str(head), '{"items":[]}'), "application/grip-instruct")
        if path.startswith("/hold/"):
            hold = _hold(path.removeprefix("/hold/"), params.get("prev", "0"), "{}")
            return _http(hold, "application/grip-instruct")
        if path.startswith(("/stream/", "/next/")):
            channel = path.removeprefix("/stream/").removeprefix("/next/")
            grip = {
                "Grip-Hold": "stream",
                "Grip-Channel": channel,
                "Grip-Keep-Alive": KEEP_ALIVE,  # as the origin's streams
            }
            if "prev" in params:  # as the origin's: a prev-id, and a link all streams share
                grip["Grip-Channel"] += f"; prev-id={params['prev']}"
                link = f"/next/{channel}?prev={params['prev']}"
                grip["Grip-Link"] = f"<{link}>; rel=next; timeout={LINK_TIMEOUT}"
            return _http(b"", "text/event-stream", grip)
        if path.startswith("/ws/") and content_type == SOCKET_EVENTS:
            events = _socket_answer(path.removeprefix("/ws/"), body, self.socket_frame)
            return _http(events, SOCKET_EVENTS, {"Sec-WebSocket-Extensions": "grip"})
        return _http(b"ok\n", "text/plain")

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
                body = b""
                if length := int(headers.get("content-length", "0")):
                    body = await reader.readexactly(length)
                self.requests += 1
                content_type = headers.get("content-type", "")
                writer.write(await self.answer(request_line.split()[1], content_type, body))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (OSError, EOFError, ValueError):
            pass  # the connection ended: nothing to answer
        finally:
            writer.close()


def _hold(channel: str, prev: str, body: str) -> bytes:
    instruct = {
        "hold": {
            "mode": "response",
            "channels": [{"name": channel, "prev-id": prev}],
            "timeout": HOLD_TIMEOUT,
        },
        "response": {"code": 200, "headers": {"Content-Type": "application/json"}, "body": body},
    }
    return json.dumps(instruct).encode()


def _socket_answer(channel: str, body: bytes, frame: str | None) -> bytes:
    """The answer to a WebSocket's events: the opening accepted and subscribed to ``channel``,
    each text frame acknowledged, pings answered, pongs answered with ``frame`` (if any), a
    close returned."""
    out = []
    for event in decode_websocket_events(body):
        if event.type == "OPEN":
            subscribe = json.dumps({"type": "subscribe", "channel": channel})
            out += [WebSocketEvent("OPEN"), WebSocketEvent("TEXT", "c:" + subscribe)]
        elif event.type == "TEXT":
            out.append(WebSocketEvent("TEXT", "m:" + SOCKET_ACK))
        elif event.type == "PING":
            out.append(WebSocketEvent("PONG", event.content))
        elif event.type == "PONG" and frame is not None:
            out.append(WebSocketEvent("TEXT", "m:" + frame))
        elif event.type == "CLOSE":
            out.append(WebSocketEvent("CLOSE", event.content))
    encoded: bytes = encode_websocket_events(out)
    return encoded


def _http(body: bytes, content_type: str, headers: dict[str, str] | None = None) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
    head += "".join(f"\r\n{name}: {value}" for name, value in (headers or {}).items())
    return head.encode() + b"\r\n\r\n" + body


class RawPushpin:
    """A bare Pushpin, with the shipped config, in front of a ``TinyOrigin`` in this process."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.tiny = TinyOrigin()
        self.origin_port, self.http_port, self.publish_port = free_ports(3)
        self._server: asyncio.Server | None = None
        self._pushpin: Pushpin | None = None

    @property
    def publish_url(self) -> str:
        return f"http://{HOST}:{self.publish_port}/publish/"

    def pids(self) -> list[int]:
        """Pushpin's processes (the runner and what it started)."""
        if self._pushpin is None or self._pushpin.pid is None:
            return []
        return [self._pushpin.pid, *descendants(self._pushpin.pid)]

    async def idle(self) -> bool:
        """The tiny origin answers at once; Pushpin is done holding when it stops asking it
        again and working."""
        pids = self.pids()
        before = self.tiny.requests
        try:
            cpu = sum(map(cpu_seconds, pids))
            await asyncio.sleep(QUIET_INTERVAL)
            cores = (sum(map(cpu_seconds, pids)) - cpu) / QUIET_INTERVAL
        except OSError:  # a process ended meanwhile
            return False
        return self.tiny.requests == before and cores < IDLE_CORES

    async def __aenter__(self) -> RawPushpin:
        self._server = await asyncio.start_server(self.tiny.handle, HOST, self.origin_port)
        self._pushpin = Pushpin(
            config=PUSHPIN_CONFIG,
            rundir=self.rundir,
            http_port=self.http_port,
            publish_port=self.publish_port,
            origin=f"{HOST}:{self.origin_port}",
            sig_key="x" * 40,
        )
        await self._pushpin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pushpin is not None:
            await self._pushpin.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def publish_body(channel: str, item_id: int, body: bytes) -> bytes:
    """A raw publish request's body: one item on ``channel``, chained to the item before it."""
    item = {
        "channel": channel,
        "id": str(item_id),
        "prev-id": str(item_id - 1),
        "formats": {"http-response": {"body": body.decode()}},
    }
    return json.dumps({"items": [item]}).encode()


def raise_file_limit(needed: int) -> None:
    """Each held request, stream or socket is a socket here and in Pushpin (started after this,
    so it inherits the limit): lift the soft limit to the hard one if ``needed`` sockets need
    it; BenchError if even the hard one is too low (the run would fail midway with EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + FILE_MARGIN
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise BenchError(
            f"{needed:,} clients need about {wanted:,} open files, and the hard limit is "
            f"{hard:,}: raise it (ulimit -Hn, or LimitNOFILE in a service) and run again"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
