"""A server-sent events reader for the tests: one raw asyncio connection per stream, cheap
enough to hold a thousand at once, reading Pushpin's chunked body as it comes."""

from __future__ import annotations

import asyncio
import codecs
import json
import socket
from dataclasses import dataclass
from typing import Any

from tests.support import read_head


@dataclass(frozen=True)
class Event:
    id: str | None
    name: str
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class EventStream:
    """``await EventStream.open(url, path, headers)``, then ``next()`` or ``take(n)``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]
    ) -> None:
        self.reader, self.writer, self.headers = reader, writer, headers
        self._text = ""
        self._chunk_left = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.comments = 0  # keep-alive lines seen

    @classmethod
    async def open(
        cls,
        url: str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
        receive_buffer: int | None = None,
    ) -> EventStream:
        """Open a stream; AssertionError unless it answers 200 with an event stream (after
        retrying Pushpin's 502s to bursts). ``receive_buffer``: a small socket buffer, for a
        reader that falls behind."""
        for attempt in range(20):
            status, head, stream = await cls.connect(url, path, headers, timeout, receive_buffer)
            if stream is not None or status < 500:
                break
            await asyncio.sleep(0.05 * (attempt + 1))
        assert stream is not None, (status, head)
        return stream

    @classmethod
    async def connect(
        cls,
        url: str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
        receive_buffer: int | None = None,
    ) -> tuple[int, dict[str, str], EventStream | None]:
        """One attempt, for callers that retry refusals themselves (the benchmarks): the
        status and headers, and the stream if it is one (200, an event stream, chunked). A
        connection closed unanswered, as under a burst, is a 599."""
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket()
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (host, int(port))), timeout
            )
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            status, head = await asyncio.wait_for(read_head(reader), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            status, head = 599, {}
        except BaseException:
            writer.close()
            raise
        streaming = (
            status == 200
            and head.get("content-type", "").startswith("text/event-stream")
            and head.get("transfer-encoding") == "chunked"
        )
        if not streaming:
            writer.close()
            return status, head, None
        return status, head, cls(reader, writer, head)

    async def next(self, timeout: float = 10) -> Event:
        """The next event (comments are counted, not returned); TimeoutError if none."""
        async with asyncio.timeout(timeout):
            while True:
                block, sep, rest = self._text.partition("\n\n")
                if sep:
                    self._text = rest
                    event = _parse(block)
                    if event is None:
                        self.comments += 1
                        continue
                    return event
                self._text += await self._read()

    async def take(self, count: int, timeout: float = 10) -> list[Event]:
        async with asyncio.timeout(timeout):
            return [await self.next(timeout) for _ in range(count)]

    async def quiet(self, seconds: float) -> list[Event]:
        """Whatever arrives within ``seconds`` (a test that nothing arrives)."""
        events = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    events.append(await self.next(seconds))
        except TimeoutError:
            return events

    async def _read(self) -> str:
        if not self._chunk_left:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                raise EOFError("the stream ended")
            self._chunk_left = size
        data = await self.reader.read(self._chunk_left)
        if not data:
            raise EOFError("the connection closed")
        self._chunk_left -= len(data)
        if not self._chunk_left:
            await self.reader.readexactly(2)  # the chunk's CRLF
        return self._decoder.decode(data)

    def close(self) -> None:
        self.writer.close()


def _parse(block: str) -> Event | None:
    fields: dict[str, str] = {}
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
    if not fields:
        return None
    return Event(fields.get("id"), fields.get("event", "message"), fields.get("data", ""))


def cursors(events: list[Event]) -> list[int]:
    return [int(e.id or 0) for e in events]
