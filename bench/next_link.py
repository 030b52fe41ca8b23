"""Next links on held requests and held streams: a check to re-run when Pushpin is upgraded.

On a raw Pushpin, N clients are held by a tiny origin, then one item is published 3 s after the
last one was opened, and the clients that got it within 5 s are counted; each with no next
link, with one next link shared by all, and with a distinct next link each (as a per-user link
would be). Then the origin's next-link calls are counted until none came for 5 s: how many,
for how many distinct links, and when the last came after the last client was opened.
Pushpin re-asks (calls the links of) the holds it has on a channel 1 s after the channel's
first one, so what is re-asked depends on how fast they are opened (``--ramp``).

``--mode response`` (the default)
    Long-polls held on a shared channel plus a channel of their own (as a user's own node):
    why long-poll holds carry no Grip-Link.
``--mode stream``
    Server-sent event streams (``Grip-Hold: stream``) held on the shared channel with
    ``prev-id`` 0 (without a link, with no prev-id: Pushpin 1.36 refuses a stream hold with a
    prev-id and no next link, measured: all 200 of 200); the published item is an
    ``http-stream`` item with ``prev-id`` 0. A next link's answer holds the stream again in the
    same way: why the origin's stream links are shared (app/streams.py).

    .venv/bin/python -m bench.next_link [--mode stream] [--clients 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.pushpin import Pushpin
from bench.common import raise_file_limit
from tests.sse import EventStream
from tests.support import free_ports, raw_get

ROOT = Path(__file__).resolve().parent.parent
LINKS = ("none", "shared", "distinct")
MODES = ("response", "stream")
PUBLISHED = "published"
PUBLISH_AFTER = 3.0  # past Pushpin's 1 s re-ask of newly subscribed holds
DELIVERY_WAIT = 5.0
CALLS_QUIET = 5.0  # link calls are over when none came for this long
# Seconds between two clients opened. Pushpin re-asks the holds of a channel that it holds 1 s
# after the channel's first one: at this pace, 200.
RAMP = 0.005


@dataclass
class Calls:
    """The origin's next-link calls: when each came, and for which link."""

    at: list[float] = field(default_factory=list)
    links: set[str] = field(default_factory=set)


@dataclass
class Trial:
    got: int  # clients that got the publish within DELIVERY_WAIT
    refused: int  # refused by Pushpin with a 5xx (long-polls: at connect)
    lost: int  # never answered, or the stream ended
    calls: int  # next-link calls the origin got
    links: int  # distinct links among them
    last_call: float | None  # seconds from the last client opened to the last call


def origin(link: str, mode: str, calls: Calls) -> Starlette:
    def headers(i: str) -> dict[str, str]:
        if link == "shared":
            return {"Grip-Link": "</next?i=shared>; rel=next"}
        if link == "distinct":
            return {"Grip-Link": f"</next?i={i}>; rel=next"}
        return {}

    def response_hold(i: str) -> Response:
        instruct = {
            "hold": {
                "mode": "response",
                "channels": [
                    {"name": "shared", "prev-id": "0"},
                    {"name": f"own{i}", "prev-id": "0"},
                ],
                "timeout": 55,
            },
            "response": {"code": 200, "headers": {"Content-Type": "text/plain"}, "body": "timeout"},
        }
        return Response(
            json.dumps(instruct), media_type="application/grip-instruct", headers=headers(i)
        )

    def stream_hold(i: str) -> Response:
        # Pushpin 1.36 refuses a stream hold with a prev-id and no next link (the client gets a
        # 5xx): without a link, the stream holds the channel without one.
        channel = "shared; prev-id=0" if link != "none" else "shared"
        grip = {"Grip-Hold": "stream", "Grip-Channel": channel, **headers(i)}
        return Response(b"", media_type="text/event-stream", headers=grip)

    hold = stream_hold if mode == "stream" else response_hold

    async def first(request: Request) -> Response:
        return hold(request.query_params["i"])

    # The links lead to the same hold, so that a request Pushpin makes for one succeeds and any
    # loss is Pushpin's, not a broken link's.
    async def next_link(request: Request) -> Response:
        calls.at.append(time.monotonic())
        calls.links.add(request.query_params["i"])
        return hold(request.query_params["i"])

    async def health(request: Request) -> Response:
        return Response("ok")

    routes = [Route("/hold", first), Route("/next", next_link), Route("/health", health)]
    return Starlette(routes=routes)


async def _long_poll(port: int, i: int) -> str:
    """What a long-poll got: the publish, a refusal, or something else."""
    try:
        status, _, body = await raw_get("127.0.0.1", port, f"/hold?i={i}", {}, 30)
    except (OSError, EOFError, ValueError):
        return "lost"
    if status >= 500:
        return "refused"
    return "got" if body == PUBLISHED.encode() else "lost"


async def _stream(port: int, i: int, opened: list[EventStream]) -> str:
    """What a stream got first (after retrying Pushpin's refusals at connect)."""
    try:
        stream = await EventStream.open(f"http://127.0.0.1:{port}", f"/hold?i={i}")
    except AssertionError:
        return "refused"
    except (OSError, EOFError, ValueError):
        return "lost"
    opened.append(stream)
    try:
        event = await stream.next(60)
    except (OSError, EOFError, ValueError):
        return "lost"
    return "got" if event.data == PUBLISHED else "lost"


async def trial(
    link: str, clients: int, mode: str = "response", wait: float = 150, ramp: float = RAMP
) -> Trial:
    """Hold ``clients`` (one opened every ``ramp`` s), publish, count; then count next-link
    calls for up to ``wait`` s."""
    port, origin_port, publish_port = free_ports(3)
    calls = Calls()
    app = origin(link, mode, calls)
    server = uvicorn.Server(uvicorn.Config(app, port=origin_port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    streams: list[EventStream] = []
    with tempfile.TemporaryDirectory() as rundir:
        pushpin = Pushpin(
            config=ROOT / "pushpin" / "pushpin.conf",
            rundir=Path(rundir),
            http_port=port,
            publish_port=publish_port,
            origin=f"127.0.0.1:{origin_port}",
            sig_key="k" * 40,
            hold_check=None,  # the trial origin has no /health/proxy
        )
        await pushpin.start()
        try:
            holds = []
            for i in range(clients):  # ramped: Pushpin refuses bursts of new connections
                client = _stream(port, i, streams) if mode == "stream" else _long_poll(port, i)
                holds.append(asyncio.create_task(client))
                await asyncio.sleep(ramp)
            opened = time.monotonic()
            await asyncio.sleep(PUBLISH_AFTER)
            formats = (
                {"http-stream": {"content": f"data: {PUBLISHED}\n\n"}}
                if mode == "stream"
                else {"http-response": {"body": PUBLISHED}}
            )
            item = {"channel": "shared", "id": "1", "prev-id": "0", "formats": formats}
            async with httpx.AsyncClient() as publisher:
                await publisher.post(
                    f"http://127.0.0.1:{publish_port}/publish/", json={"items": [item]}
                )
            done, pending = await asyncio.wait(holds, timeout=DELIVERY_WAIT)
            for task in pending:
                task.cancel()
            outcomes = [t.result() for t in done]
            while time.monotonic() < opened + wait:
                last = calls.at[-1] if calls.at else opened
                if time.monotonic() - last > CALLS_QUIET:
                    break
                await asyncio.sleep(0.5)
            return Trial(
                got=outcomes.count("got"),
                refused=outcomes.count("refused"),
                lost=clients - outcomes.count("got") - outcomes.count("refused"),
                calls=len(calls.at),
                links=len(calls.links),
                last_call=calls.at[-1] - opened if calls.at else None,
            )
        finally:
            for stream in streams:
                stream.close()
            await pushpin.stop()
            server.should_exit = True
            await serving


def describe(link: str, clients: int, t: Trial) -> str:
    last = "none" if t.last_call is None else f"the last {t.last_call:.1f} s after the last open"
    return (
        f"Grip-Link {link:>8}: {t.got}/{clients} got the publish, {t.lost} never did"
        f" ({t.refused} refused at connect with a 5xx); next-link calls: {t.calls} for"
        f" {t.links} distinct links, {last}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--mode", choices=MODES, default="response")
    parser.add_argument(
        "--wait", type=float, default=150, help="longest wait for next-link calls, in seconds"
    )
    parser.add_argument(
        "--ramp", type=float, default=RAMP, help=f"seconds between two opens ({RAMP})"
    )
    args = parser.parse_args()
    raise_file_limit(args.clients)
    for link in LINKS:
        result = asyncio.run(trial(link, args.clients, args.mode, args.wait, args.ramp))
        print(describe(link, args.clients, result), flush=True)


if __name__ == "__main__":
    main()
