"""Why long-poll holds carry no Grip-Link: a check to re-run when Pushpin is upgraded.

Holds N long-polls on a raw Pushpin whose tiny origin answers each with a hold on a shared
channel plus a channel of its own (as a user's own node), then publishes one item and counts
how many held requests got it within 5 s: with no next link, with one next link shared by all
holds, and with a distinct next link per hold (as a per-user link would be).

    .venv/bin/python -m bench.next_link [--clients 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.pushpin import Pushpin
from tests.support import free_ports, raw_get

ROOT = Path(__file__).resolve().parent.parent
LINKS = ("none", "shared", "distinct")


def origin(link: str) -> Starlette:
    async def hold(request: Request) -> Response:
        i = request.query_params["i"]
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
        headers = {}
        if link == "shared":
            headers["Grip-Link"] = "</next?i=shared>; rel=next"
        elif link == "distinct":
            headers["Grip-Link"] = f"</next?i={i}>; rel=next"
        return Response(
            json.dumps(instruct), media_type="application/grip-instruct", headers=headers
        )

    async def health(request: Request) -> Response:
        return Response("ok")

    # The links lead to the same hold, so that a request Pushpin makes for one succeeds and any
    # loss is Pushpin's, not a broken link's.
    return Starlette(routes=[Route("/hold", hold), Route("/next", hold), Route("/health", health)])


async def trial(link: str, clients: int) -> tuple[int, int, int]:
    """(got the publish, refused by Pushpin with a 5xx, silently never answered)"""
    port, origin_port, publish_port = free_ports(3)
    server = uvicorn.Server(uvicorn.Config(origin(link), port=origin_port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    with tempfile.TemporaryDirectory() as rundir:
        pushpin = Pushpin(
            config=ROOT / "pushpin" / "pushpin.conf",
            rundir=Path(rundir),
            http_port=port,
            publish_port=publish_port,
            origin=f"127.0.0.1:{origin_port}",
            sig_key="k" * 40,
        )
        await pushpin.start()
        try:
            polls = []
            for i in range(clients):  # ramped: Pushpin refuses bursts of new connections
                polls.append(
                    asyncio.create_task(raw_get("127.0.0.1", port, f"/hold?i={i}", {}, 30))
                )
                await asyncio.sleep(0.005)
            await asyncio.sleep(3)  # past Pushpin's 1 s re-request of newly subscribed holds
            item = {
                "channel": "shared",
                "id": "1",
                "prev-id": "0",
                "formats": {"http-response": {"body": "published"}},
            }
            async with httpx.AsyncClient() as client:
                await client.post(
                    f"http://127.0.0.1:{publish_port}/publish/", json={"items": [item]}
                )
            done, pending = await asyncio.wait(polls, timeout=5)
            for task in pending:
                task.cancel()
            answers = [t.result() for t in done if t.exception() is None]
            got = sum(1 for _, _, body in answers if body == b"published")
            refused = sum(1 for status, _, _ in answers if status >= 500)
            return got, refused, clients - got - refused
        finally:
            await pushpin.stop()
            server.should_exit = True
            await serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    for link in LINKS:
        got, refused, lost = asyncio.run(trial(link, args.clients))
        print(
            f"Grip-Link {link:>8}: {got}/{args.clients} got the publish, {lost} never answered"
            f" ({refused} refused at connect with a 5xx)",
            flush=True,
        )


if __name__ == "__main__":
    main()
