"""Hold cost: the origin's CPU for a ``since`` request that ends in a GRIP hold, by follows.

The run command (Pushpin and the origin). Three readers follow 1, 100 and 1,000 nodes (each
node has a post, so each reader's feed has as many). Each reader's ``GET
/api/notifications/posts?since=LAST`` is sent straight to the origin's port, signed with the
Grip-Sig that Pushpin would add, so that the origin answers with a hold instruction; Pushpin
itself is left out, as this case is about the origin. Several keep-alive connections send
requests back to back.

Measured: the origin process's CPU time (all threads) over the requests, divided by their
number, and requests per second. For scale, the same for ``GET /health`` (the cost of the
origin's HTTP stack alone) and for a post (``POST /api/USER/content/posts`` straight to the
origin: stored, and published to Pushpin by the origin's publisher, whose CPU is counted too).
Each connection posts as a user of its own, to that user's channel: a post is counted against
its author's rate limit in the store, which reads every slot of the author's last minute, so
one author making every post would be measured, not a post.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import uvloop

from bench.common import BenchError, Conn, cpu_seconds
from bench.setups import SQLITE, Setup, deployed
from tests.support import Stack, basic

FOLLOWS = (1, 100, 1000)
CONNECTIONS = 8
SIG_KEY = "bench-grip-sig-key-" + "k" * 32
TARGET_CPU_MS = 2.0
OWNER = "owner@bench.example"


def _poster(i: int) -> str:
    return f"poster{i}@bench.example"


def _node(i: int) -> str:
    return f"n{i}@bench.example"


def _setup(stack: Stack, nodes: int) -> list[str]:
    """``nodes`` channels with one post each; a reader per entry of FOLLOWS that follows as
    many of them; a poster per connection."""
    readers = []
    with stack.account(OWNER) as owner:
        owner.base_url = stack.origin_url
        for i in range(nodes):
            r = owner.post(f"/api/{_node(i)}", json={})
            if r.status_code != 201:
                raise BenchError(f"cannot create {_node(i)}: HTTP {r.status_code} {r.text}")
        for count in FOLLOWS:
            if count > nodes:
                continue
            name = f"follows{count}@bench.example"
            with stack.account(name) as client:
                follows = {f"{_node(i)}/posts": "publisher" for i in range(count)}
                r = client.post("/api/subscribed", json=follows)
                if r.status_code != 200:
                    raise BenchError(f"{name} cannot follow: HTTP {r.status_code} {r.text}")
            readers.append(name)
        for i in range(nodes):
            r = owner.post(f"/api/{_node(i)}/content/posts", json={"content": f"post {i}"})
            if r.status_code != 201:
                raise BenchError(f"cannot post to {_node(i)}: HTTP {r.status_code} {r.text}")
    for i in range(CONNECTIONS):
        stack.account(_poster(i)).close()  # logged in by the warm-up, before any timing
    return readers


@dataclass
class Kind:
    """One kind of request the case sends, and the answer it must get."""

    label: str
    follows: int  # nodes the user follows (0: not a hold)
    path: str  # "{user}" in it is the connection's user
    users: list[str | None]  # the connections take turns as these
    content_type: str
    method: str = "GET"
    body: bytes = b""
    status: int = 200


async def _load(
    port: int,
    kind: Kind,
    signed: Callable[[str | None], Callable[[], dict[str, str]]],
    requests: int,
    pid: int,
) -> dict[str, float]:
    """Send ``requests`` requests over CONNECTIONS connections; the origin's CPU per request
    and the requests per second."""
    remaining = requests
    failures: list[str] = []

    async def worker(index: int) -> None:
        nonlocal remaining
        user = kind.users[index % len(kind.users)]
        path = kind.path.replace("{user}", user or "")
        headers = signed(user)
        conn = Conn(port)
        while remaining > 0:
            remaining -= 1
            status, answer_headers, _ = await conn.request(kind.method, path, headers(), kind.body)
            content_type = answer_headers.get("content-type")
            if (status, content_type) != (kind.status, kind.content_type):
                failures.append(f"HTTP {status} {content_type}")
        conn.close()

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))
    cpu1, t1 = cpu_seconds(pid), time.perf_counter()
    if failures:
        raise BenchError(f"{len(failures)} requests did not end as expected: {failures[0]}")
    return {
        "cpu_ms_per_request": (cpu1 - cpu0) * 1000 / requests,
        "requests_per_second": requests / (t1 - t0),
        "origin_cpu_cores": (cpu1 - cpu0) / (t1 - t0),
    }


async def _measure(
    stack: Stack, readers: list[str], requests: int, pid: int, echo: Callable[[str], None]
) -> list[dict[str, Any]]:
    port = int(stack.env["ORIGIN_PORT"])

    def signed(user: str | None) -> Callable[[], dict[str, str]]:
        auth = {"Authorization": basic(user)} if user else {}
        token = jwt.encode({"iss": "pushpin", "exp": int(time.time()) + 3600}, SIG_KEY, "HS256")
        return lambda: {**auth, "Grip-Sig": token, "Content-Type": "application/json"}

    conn = Conn(port)
    status, _, body = await conn.request("GET", "/health")
    conn.close()
    if status != 200:
        raise BenchError(f"/health: HTTP {status}")
    last = json.loads(body)["last"]
    since = f"/api/notifications/posts?since={last}"
    kinds = [Kind("GET /health", 0, "/health", [None], "application/json")]
    kinds += [
        Kind(f"hold, {count} follows", count, since, [reader], "application/grip-instruct")
        for count, reader in zip(FOLLOWS, readers, strict=False)
    ]
    kinds.append(
        Kind(
            "POST a post (stored, published)",
            0,
            "/api/{user}/content/posts",
            [_poster(i) for i in range(CONNECTIONS)],
            "application/json",
            method="POST",
            body=json.dumps({"content": "a post"}).encode(),
            status=201,
        )
    )
    rows = []
    for kind in kinds:
        await _load(port, kind, signed, max(50, requests // 10), pid)  # warm up
        numbers = await _load(port, kind, signed, requests, pid)
        echo(
            f"  {kind.label}: {numbers['cpu_ms_per_request']:.3f} ms of origin CPU per request, "
            f"{numbers['requests_per_second']:.0f} requests/s"
        )
        rows.append({"case": kind.label, "follows": kind.follows, "requests": requests, **numbers})
    return rows


def run(
    requests: int,
    workdir: Path,
    *,
    nodes: int = max(FOLLOWS),
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    if setup.origins != 1:
        raise ValueError("the hold cost is one origin's")
    echo(
        f"hold cost: {requests} held requests per reader, {CONNECTIONS} connections, "
        f"on {setup.label}"
    )
    # One owner creates every node, and each reader's holds are never published: lift the
    # per-user limits on channels owned and requests held (past them the origin answers 409
    # and 429, and nothing is measured).
    limits = {"MAX_CHANNELS": str(nodes + 1), "MAX_HELD_PER_USER": str(2 * requests + 1000)}
    with deployed(setup, workdir, GRIP_SIG_KEY=SIG_KEY, **limits) as d:
        stack = d.nodes[0]
        readers = _setup(stack, nodes)
        assert stack.process is not None
        rows = uvloop.run(_measure(stack, readers, requests, stack.process.pid, echo))
    holds = [r for r in rows if r["case"].startswith("hold")]
    worst = max(holds, key=lambda r: r["follows"])
    targets = [
        {
            "target": f"a hold under {TARGET_CPU_MS:.0f} ms of origin CPU, "
            f"{worst['follows']} follows",
            "measured": f"{worst['cpu_ms_per_request']:.2f} ms "
            f"({worst['requests_per_second']:.0f} holds/s)",
            "met": worst["cpu_ms_per_request"] < TARGET_CPU_MS,
        }
    ]
    return {"summary": {"cases": rows}, "targets": targets}
