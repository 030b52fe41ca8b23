"""The publisher's HTTP clients: each POSTs to one GRIP publish endpoint, keeping its connection.

``publish_client(url)`` picks one by the URL's scheme. Over TLS (a CDN such as Fastly's publish
API, or any https target) it is httpx, a well-kept client: there the request rate is bounded by
the network's round trip, one publish in flight per target, and what TLS and the open Internet
ask of a client matters more than its CPU. Plain http is a Pushpin nearby, on this machine or
its network: there hundreds of publish requests a second are usual, and the hand-written
``PlainClient`` below spends a fifth of httpx's CPU or less on each, and answers ten times
sooner (``python -m bench.publish_rates``; the numbers and the choice: docs/design.md). It speaks
HTTP/1.1 without TLS, answers with Content-Length, chunked or up to the close; no redirects,
no proxies.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


class ClientError(Exception):
    """No usable answer: the connection failed, timed out, or the answer was not HTTP."""


class PublishClient(Protocol):
    async def post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """POST ``body``; the answer's status and body, or ClientError."""
        ...

    async def aclose(self) -> None: ...


def publish_client(url: str, timeout: float = 5.0, ca_file: Path | None = None) -> PublishClient:
    """The client for ``url``: httpx over TLS (trusting the system's authorities and those in
    ``ca_file``), the hand-written one over plain http."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return TlsClient(url, timeout, tls_context(ca_file))
    return PlainClient(url, timeout)


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Verifies servers against the system's authorities (SSL_CERT_FILE and SSL_CERT_DIR
    override where OpenSSL finds them) and, when given, those in ``ca_file`` too."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


class TlsClient:
    """httpx, one kept-alive HTTP/1.1 connection; no redirects, no proxies from the
    environment (as the plain client)."""

    def __init__(self, url: str, timeout: float, context: ssl.SSLContext) -> None:
        self.url = url
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            verify=context,
            timeout=timeout,
            trust_env=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            answer = await self._client.post(self.url, content=body, headers=dict(headers))
        except httpx.TimeoutException as exc:
            raise ClientError(f"no answer within {self.timeout:g}s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"{type(exc).__name__}: {exc}") from exc
        return answer.status_code, answer.content

    async def aclose(self) -> None:
        await self._client.aclose()


class PlainClient:
    """HTTP/1.1 over one kept-alive TCP connection, written for this one job."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = self.host if self.port == 80 else f"{self.host}:{self.port}"
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """POST ``body``; the answer's status and body. A kept-alive connection that the server
        closed meanwhile is replaced once, before anything of the answer arrived."""
        head = [
            f"POST {self.target} HTTP/1.1",
            f"Host: {self.host_header}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (1, 2):
            reused = self._writer is not None
            try:
                return await asyncio.wait_for(self._exchange(request), self.timeout)
            except TimeoutError as exc:
                self.close()
                raise ClientError(f"no answer within {self.timeout:g}s") from exc
            except (_Stale, ConnectionError) as exc:
                # Publishing twice is harmless: Pushpin drops an item id it has seen.
                self.close()
                if reused and attempt == 1:
                    continue
                raise ClientError(f"the connection failed: {type(exc).__name__}") from None
            except (OSError, EOFError, ValueError) as exc:
                self.close()
                raise ClientError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=_MAX_HEAD
            )
        assert self._reader is not None
        self._writer.write(request)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale from exc
            raise
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self._read_body(headers)
        if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.close()
        return int(rest[:3]), body

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        assert self._reader is not None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            size_total = 0
            while size := int((await self._reader.readline()).split(b";")[0], 16):
                size_total += size
                if size_total > _MAX_BODY:
                    raise ValueError("answer too large")
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readline()
            while (await self._reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(headers.get("content-length", "-1"))
        if length > _MAX_BODY:
            raise ValueError("answer too large")
        if length >= 0:
            return await self._reader.readexactly(length)
        body = await self._reader.read(_MAX_BODY)  # ends with the connection
        self.close()
        return body


class _Stale(Exception):
    """The kept-alive connection was closed before any answer came."""
