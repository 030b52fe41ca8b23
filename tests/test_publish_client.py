"""The publisher's HTTP clients against a real server: Debian's nginx on loopback, over TLS
(httpx, with a certificate authority made here) and over plain http (the hand-written client),
the same test body for both. nginx keeps connections alive, answers chunked where asked, and
checks the bearer token in front of a real Pushpin's publish port."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from app.publish_client import ClientError, PlainClient, PublishClient, TlsClient, publish_client
from bench.common import RawPushpin
from tests.support import Background, free_ports
from tests.tls_front import CHUNKED_BODY, TlsFront

TOKEN = "a-token-as-fastly-gives"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    """nginx in front of a real Pushpin's publish port (a bare one, with a trivial origin);
    idle connections closed after 1 s."""
    folder = tmp_path_factory.mktemp("front")
    background = Background()
    raw = RawPushpin(folder / "pushpin")
    background.call(raw.__aenter__())
    try:
        with TlsFront(folder / "nginx", raw.publish_port, TOKEN, keepalive_seconds=1) as f:
            yield f
    finally:
        background.call(raw.__aexit__())
        background.close()


@pytest.fixture(params=["https", "http"])
def base(request: pytest.FixtureRequest, front: TlsFront) -> str:
    return front.url if request.param == "https" else front.plain_url


def client(front: TlsFront, url: str, timeout: float = 5.0) -> PublishClient:
    return publish_client(url, timeout, front.certificates.ca)


def test_the_scheme_picks_the_client(front: TlsFront) -> None:
    assert isinstance(client(front, front.url + "/x"), TlsClient)
    assert isinstance(client(front, front.plain_url + "/x"), PlainClient)


def test_a_publish_passes_with_the_token_and_not_without(front: TlsFront, base: str) -> None:
    path = front.grip_base.removeprefix(front.url) + "/publish/"

    async def scenario() -> None:
        c = client(front, base + path)
        try:
            status, body = await c.post(b'{"items":[]}', HEADERS)
            assert (status, body) == (200, b"Published\n")
            status, body = await c.post(b'{"items":[]}', {"Authorization": "Bearer wrong"})
            assert (status, body) == (401, b"wrong token\n")
        finally:
            await c.aclose()

    asyncio.run(scenario())


def test_one_connection_is_kept_alive_and_replaced_once_closed(front: TlsFront, base: str) -> None:
    """nginx numbers its connections and counts the requests on each: three posts share one;
    after nginx closed it (idle for 1 s), the next post opens another and succeeds."""

    async def scenario() -> None:
        c = client(front, base + "/connection")
        try:
            seen = [(await c.post(b"{}", HEADERS))[1].split() for _ in range(3)]
            assert [requests for _, requests in seen] == [b"1", b"2", b"3"]
            assert len({connection for connection, _ in seen}) == 1
            await asyncio.sleep(1.5)
            status, answer = await c.post(b"{}", HEADERS)
            connection, requests = answer.split()
            assert status == 200 and requests == b"1" and connection != seen[0][0]
        finally:
            await c.aclose()

    asyncio.run(scenario())


def test_a_chunked_answer_is_read_whole(front: TlsFront, base: str) -> None:
    async def scenario() -> None:
        c = client(front, base + "/chunked")
        try:
            for _ in range(2):  # and the connection is still good after it
                assert await c.post(b"{}", HEADERS) == (200, CHUNKED_BODY.encode())
        finally:
            await c.aclose()

    asyncio.run(scenario())


def test_a_server_we_do_not_trust_is_refused(front: TlsFront) -> None:
    async def scenario() -> None:
        c = publish_client(front.url + "/connection", 5.0)  # the test's authority not given
        try:
            with pytest.raises(ClientError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.post(b"{}", HEADERS)
        finally:
            await c.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_no_answer_or_no_server_is_a_client_error(front: TlsFront, scheme: str) -> None:
    """Stand-ins, said so: a socket that accepts and never answers (not even the TLS
    handshake), and a port nothing listens on."""

    async def scenario(url: str, message: str) -> None:
        c = client(front, url, timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(ClientError, match=message):
                await c.post(b"{}", HEADERS)
            assert time.monotonic() - started < 2
        finally:
            await c.aclose()

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", free_ports(1)[0]))
        silent.listen(8)
        port = silent.getsockname()[1]
        asyncio.run(scenario(f"{scheme}://127.0.0.1:{port}/", "no answer within 0.5s"))
    asyncio.run(scenario(f"{scheme}://127.0.0.1:{free_ports(1)[0]}/", "Connect"))
