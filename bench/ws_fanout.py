"""Fan-out of one post to N WebSockets held by Pushpin, one user each, beside a raw Pushpin.

origin
    The run command; N accounts (seeded in bulk, ``bench.seed``) follow one writer's channel,
    and each holds a WebSocket at ``/api/ws`` (Pushpin's WebSocket-over-HTTP), logged in with
    its own API key, online with ``["xmpp.buddycloud.presence", {"since": CURSOR}]`` (the
    cursor at the start of the run: a run's sockets see nothing of the runs before). Then the
    writer POSTs one post. Measured: from just before the POST until the last socket has the
    post's ``xmpp.buddycloud.push.item`` frame.
raw
    A bare Pushpin in front of a tiny origin that subscribes each socket to one channel as it
    opens and acknowledges its first frame; the same frame's text is published as one
    ``ws-message`` item.
raw, woken by ping (``raw-wake``)
    The same, but what is published is a ping, and the tiny origin answers each pong with the
    frame: the origin's round trip per socket without the origin's own work, so what of the
    origin case's time and failures is Pushpin's.

One socket per user, because that is what a socket is: a user's, on the user's own channels.
A post to the writer's channel is published to each follower's channel, and the origin's
design makes each socket's delivery a round trip (app/sockets.py): a published item only
wakes the socket with a ping; its pong comes back to the origin as a request, answered with
the events after the socket's cursor, read from the log. So the origin case costs one origin
request and one log read per socket per post, where the raw case costs none: the origin's CPU
from the POST to the last delivery is the number to read beside the time.

Opened ramped (50 every 50 ms; refusals tried again), and the post made once every socket
has its acknowledgement and the servers are idle (``bench.harness.Holds``). The sockets stay
open until the run ends (closing one is a request to the origin).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from app.sockets import PRESENCE, PUSH_ITEM
from bench.common import HOST, SOCKET_ACK, followers, ms, number
from bench.harness import (
    REQUEST_TIMEOUT,
    Answer,
    Bench,
    Clients,
    Holds,
    RunResult,
    begin_fanout,
    failed,
    fanout_record,
    origin_run,
    raw_channel,
    raw_run,
    summarize,
    summarize_extra,
)
from bench.seed import Follower, seed_followers
from bench.setups import SQLITE, Deployment, Setup, deployed
from tests.support import basic

CONNECT_TIMEOUT = 30.0
RAW_WAKE = "raw-wake"  # raw Pushpin, sockets woken by a published ping as the origin's are
FALLBACK_FRAME = json.dumps([PUSH_ITEM, {"post": {"content": "x" * 250}}])


class Sockets:
    """WebSockets: the i-th to ``request(i)`` (its URL and headers), saying ``hello`` and
    waiting for an acknowledgement named ``ack``; each attempt's answer is the first frame
    after that. The sockets stay open until ``close``."""

    def __init__(
        self, request: Callable[[int], tuple[str, dict[str, str]]], hello: str, ack: str
    ) -> None:
        self.request, self.hello, self.ack = request, hello, ack
        self.open: list[ClientConnection] = []

    async def attempt(self, i: int) -> Answer:
        url, headers = self.request(i)
        try:
            ws = await websockets.connect(
                url,
                additional_headers=headers,
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=None,  # the client's own pings would be requests to the origin
                compression=None,
                proxy=None,
            )
        except InvalidStatus as exc:
            return Answer(exc.response.status_code, b"", time.perf_counter())
        except (OSError, WebSocketException) as exc:  # TimeoutError is an OSError
            return failed(exc)
        self.open.append(ws)
        try:
            await ws.send(self.hello)
            ack = await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT)
            if json.loads(ack)[0] != self.ack:
                return Answer(0, b"", time.perf_counter(), f"not acknowledged: {ack!s:.100}")
            frame = await asyncio.wait_for(ws.recv(), REQUEST_TIMEOUT)
        except ConnectionClosed as exc:
            code = "no close frame" if exc.rcvd is None else f"{exc.rcvd.code} {exc.rcvd.reason}"
            return Answer(0, b"", time.perf_counter(), f"closed ({code.strip()})")
        except (OSError, WebSocketException) as exc:
            return failed(exc)
        at = time.perf_counter()
        return Answer(200, frame.encode() if isinstance(frame, str) else frame, at)

    async def close(self) -> None:
        sockets, self.open = self.open, []
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


class UserSockets(Bench):
    def __init__(self, d: Deployment, writer: str, users: list[Follower], rundir: Path) -> None:
        super().__init__(d, writer, rundir)
        self.users = users

    async def origin_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> tuple[RunResult, bytes | None]:
        hello = json.dumps([PRESENCE, {"since": await clients.cursor()}])

        def request(i: int) -> tuple[str, dict[str, str]]:
            user = self.users[i]
            url = self.d.node(i).url.replace("http://", "ws://") + "/api/ws"
            return url, {"Authorization": basic(user.jid, user.api_key)}

        def check(created: dict[str, Any]) -> Callable[[bytes], bool]:
            def passes(frame: bytes) -> bool:
                name, data = json.loads(frame)
                return bool(name == PUSH_ITEM and data["post"]["id"] == created["id"])

            return passes

        sockets = Sockets(request, hello, PRESENCE)
        try:
            holds = Holds(sockets.attempt)
            return await origin_run(self.d, holds, (run, n), clients, check, echo)
        finally:
            await sockets.close()

    async def raw_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> RunResult:
        return await self._raw(run, n, clients, echo, wake=False)

    def more_runs(
        self, clients: Clients, echo: Callable[[str], None]
    ) -> list[Callable[[int, int], Awaitable[RunResult]]]:
        async def wake(run: int, n: int) -> RunResult:
            return await self._raw(run, n, clients, echo, wake=True)

        return [wake]

    async def _raw(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None], wake: bool
    ) -> RunResult:
        """A raw run: the frame published to the sockets, or (``wake``) a ping published and
        each pong answered by the tiny origin with the frame, as the origin does."""
        channel = raw_channel("wake" if wake else "ws", run, n)
        url = f"ws://{HOST}:{self.raw.http_port}/ws/{channel}"
        ack = json.loads(SOCKET_ACK)[0]
        sockets = Sockets(lambda i: (url, {}), json.dumps([PRESENCE, {}]), ack)
        frame = self.body or FALLBACK_FRAME.encode()
        self.raw.tiny.socket_frame = frame.decode() if wake else None
        message = {"type": "ping", "content": "1"} if wake else {"content": frame.decode()}
        item = {"channel": channel, "id": "1", "formats": {"ws-message": message}}
        case = RAW_WAKE if wake else "raw"
        try:
            holds = Holds(sockets.attempt)
            return await raw_run(self.raw, holds, (run, n), clients, item, frame, echo, case)
        finally:
            await sockets.close()


def run(
    sizes: list[int],
    runs: int,
    workdir: Path,
    *,
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fan-out to each number of sockets in ``sizes`` (one user each), ``runs`` times, origin
    and raw."""
    begin_fanout(sizes, runs, "sockets", "WebSockets, one user each", setup.label, echo)
    with deployed(setup, workdir) as d:
        writer, _ = followers(d.nodes[0], 0)
        users = uvloop.run(seed_followers(d.database_url, max(sizes), {writer: max(sizes)}))
        bench = UserSockets(d, writer, users, workdir / "raw-pushpin")
        results = uvloop.run(bench.run(sizes, runs, echo))
    rows = summarize(results, sizes, runs, max(sizes), setup.origins, "WebSockets", echo)
    summarize_extra(rows, results, RAW_WAKE, "raw Pushpin woken by ping", echo)
    return fanout_record(rows, _targets(rows), results)


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every socket gets the post; the time and the origin's CPU beside raw Pushpin's are
    what is measured (the design costs a round trip to the origin per socket)."""
    row = rows[-1]
    r = row["ratio"]
    cpu = row["origin_cpu_seconds"]
    per_socket = None if cpu is None else cpu * 1000 / row["clients"]
    return [
        {
            "target": f"fan-out to {row['clients']:,} WebSockets (one user each): every socket "
            "gets the post",
            "measured": f"{row['origin_failures']} failed; {ms(row['origin_ms'])} vs raw "
            f"{ms(row['raw_ms'])} ({'n/a' if r is None else f'{r:.2f} x'}), origin CPU "
            f"{number(per_socket, 2)} ms a socket; raw Pushpin woken by ping as the origin's "
            f"sockets are: {ms(row['raw_wake_ms'])}, {row['raw_wake_failures']} failed",
            "met": not row["origin_failures"] and row["origin_ms"] is not None,
        }
    ]
