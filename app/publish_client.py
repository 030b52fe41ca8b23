"""The publisher's HTTP client: POSTs to one GRIP publish endpoint on one keep-alive connection.

It does one job (a JSON POST, a short answer) and is fast at it, which matters because a publish
lies on every post's way to its readers. Measured against a raw Pushpin's publish endpoint on a
2-core machine (p50 of a 300-byte publish): httpx 1.4-2.5 ms, aiohttp 0.7 ms, this 0.15 ms.
``python -m bench.publish_clients`` compares it with httpx and pubcontrol (docs/design.md).
HTTP/1.1 only, http or https, answers with Content-Length or chunked; no redirects, no proxies.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


class ClientError(Exception):
    """No usable answer: the connection failed, timed out, or the answer was not HTTP."""


class PublishClient:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
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

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl, limit=_MAX_HEAD
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
