"""/health tells the truth to a load balancer: 503 when the store does not answer, and, with
several nodes on one PostgreSQL database, each origin reads the lag from the shared store.

(A stalled publisher's 503, and one dead target among several, are in tests/test_refusals.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import unique
from tests.databases import SHARED_SECRETS
from tests.support import TLS, Background, Stack, free_ports, health
from tests.test_posts_feed import post
from tests.test_publisher import wait_for


class FreezingProxy:
    """A TCP proxy in front of PostgreSQL that the test can freeze: while frozen it forwards
    nothing either way, as a server that hangs (or a cut network) would."""

    def __init__(self, background: Background, upstream: tuple[str, int]) -> None:
        self.background, self.upstream = background, upstream
        self.port = free_ports(1)[0]
        self.flowing = background.call(_event())
        self._writers: set[asyncio.StreamWriter] = set()
        self._server = background.call(asyncio.start_server(self._handle, "127.0.0.1", self.port))

    def freeze(self) -> None:
        self.background.loop.call_soon_threadsafe(self.flowing.clear)

    def thaw(self) -> None:
        self.background.loop.call_soon_threadsafe(self.flowing.set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self.flowing.wait()
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.add(up_writer)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    await self.flowing.wait()
                    w.write(data)
                    await w.drain()
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def close(self) -> None:
        self.background.call(self._close())

    async def _close(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()


async def _event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@contextlib.contextmanager
def started(stack: Stack) -> Iterator[Stack]:
    stack.start()
    try:
        yield stack
    finally:
        if stack.process is not None:
            stack.stop()


def answer(stack: Stack) -> httpx.Response:
    return httpx.get(stack.origin_url + "/health", verify=TLS, timeout=10)


def test_a_store_that_does_not_answer_makes_health_503(
    tmp_path: Path, postgres_url: str, bg: Background
) -> None:
    parts = urlsplit(postgres_url)
    proxy = FreezingProxy(bg, (parts.hostname or "127.0.0.1", parts.port or 5432))
    through = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    env = {"DATABASE_URL": through, **SHARED_SECRETS}
    with started(Stack(tmp_path / "data", env=env)) as stack:
        first = answer(stack)
        assert first.status_code == 200 and first.json()["status"] == "ok"
        assert first.headers["cache-control"] == "no-store"
        proxy.freeze()
        down = answer(stack)
        assert down.status_code == 503, down.text
        assert down.json() == {"status": "unhealthy", "reason": "store: no answer in 3s"}
        proxy.thaw()
        wait_for(lambda: answer(stack).status_code == 200, 15)
        # each 503 is counted as a server error (more than one while the store recovers);
        # a 200 is not
        assert first.json()["server_errors"] == 0
        errors = answer(stack).json()["server_errors"]
        assert errors >= 1
        assert answer(stack).json()["server_errors"] == errors
        stack.stop()
        proxy.close()


def test_an_origin_that_does_not_publish_reports_the_publishers_lag(
    tmp_path: Path, postgres_url: str
) -> None:
    """The second origin starts after the first published everything: it reports no lag,
    and stays 200 past HEALTH_PUBLISH_SECONDS, though it publishes nothing; a post made
    through it, which the first publishes, shows lag 0 on both.

    (This passes without the read of the saved position in Publisher.lag too: start() loads
    it and announcements keep it current. That read covers announcements lost while the
    listening connection is replaced, which this test does not produce.)"""
    env = {"DATABASE_URL": postgres_url, "HEALTH_PUBLISH_SECONDS": "1", **SHARED_SECRETS}
    first = Stack(tmp_path / "node0", env=dict(env))
    pushpin = f"http://127.0.0.1:{first.env['PUSHPIN_PUBLISH_PORT']}"
    first.env["GRIP_URL"] = pushpin
    with started(first):
        writer = unique("romeo")
        with first.account(writer) as w:
            post(w, writer, "published before the second origin starts")
        wait_for(lambda: health(first)["targets"][0]["lag_items"] == 0, 10)
        second = Stack(tmp_path / "node1", env={**env, "GRIP_URL": pushpin})
        with started(second):
            assert [t["publishing"] for t in health(second)["targets"]] == [False]
            wait_for(lambda: health(second)["targets"][0]["lag_items"] == 0, 5)
            time.sleep(1.5)  # past HEALTH_PUBLISH_SECONDS, with nothing published meanwhile
            state = answer(second)
            assert state.status_code == 200, state.text
            (target,) = state.json()["targets"]
            assert target["lag_items"] == 0 and target["lag_events"] == 0
            assert not target["stalled"]
            with second.client(writer) as w:
                post(w, writer, "published by the first origin, posted through the second")
            wait_for(lambda: health(second)["targets"][0]["lag_items"] == 0, 10)
            assert health(first)["last"] == health(second)["last"]


def test_proxy_health_is_a_stream_pushpin_holds(stack: Stack) -> None:
    """/health/proxy, through Pushpin: 200 and "ok", then the stream stays open, held by
    Pushpin (the origin has no request in hand meanwhile). Straight to the origin: 501, as
    any request to hold. (The run command's Pushpin waits for this before it is ready.)"""
    with httpx.stream("GET", stack.url + "/health/proxy", timeout=5) as held:
        assert held.status_code == 200
        assert next(held.iter_bytes()).startswith(b"ok")
        assert health(stack)["requests_in_flight"] == 0
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(stack.url + "/health/proxy", timeout=httpx.Timeout(5, read=0.5))
    direct = httpx.get(stack.origin_url + "/health/proxy")
    assert direct.status_code == 501 and "GRIP proxy" in direct.json()["error"]
