"""Wake-ups for sockets: after a target accepts events for an account, a ping on the account's
socket channel (``w<id>``), so that each of its open sockets' pongs brings the origin to read
what followed the socket's cursor (app/sockets.py).

Paced, not sent with the events: every pong is a new request from Pushpin to the origin, and
Pushpin 1.36 queues at most 100 new requests towards its zurl (``OUT_HWM`` in its source);
past that the socket whose request did not fit is closed (``wsproxysession ... target error``).
A post to 1,000 followers with a ping each in one publish lost about a third of their sockets
that way (bench ``wsfanout``). So the pings go out WAKE_BATCH at a time, WAKE_INTERVAL apart,
and an account woken several times before its turn is woken once. A wake-up that fails is
not retried: Pushpin brings every socket to the origin at least every SWEEP_SECONDS anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

from app.model import SOCKETS, feed_of

log = logging.getLogger("app.wakes")

WAKE_BATCH = 50
WAKE_INTERVAL = 0.02  # seconds between batches: at most 2,500 sockets woken a second


def socket_channel(channel: str) -> str | None:
    """The socket channel woken by events on ``channel`` (an account's posts or events)."""
    if feed_of(channel) in ("posts", "events"):
        return SOCKETS + channel[1:]
    return None


def ping(channel: str, event_id: int) -> bytes:
    """A ping on ``channel``, named by the newest event it wakes for: Pushpin 1.36 drops a
    ws-message item without content ("filter error"), and an id it saw on the channel in
    the last minute."""
    cursor = str(event_id)
    item = {
        "channel": channel,
        "id": cursor,
        "formats": {"ws-message": {"type": "ping", "content": cursor}},
    }
    return json.dumps(item, separators=(",", ":")).encode()


class Wakes:
    """The accounts to wake on one publish target, and the task that wakes them."""

    def __init__(self, send: Callable[[list[bytes]], Awaitable[None]], label: str) -> None:
        self._send = send
        self._label = label
        self._pending: dict[str, int] = {}  # channel: newest event, in the order first asked
        self._asked = asyncio.Event()
        self.sent = 0

    def add(self, events: Iterable[tuple[str, int]]) -> None:
        """Events were accepted, each ``(channel, event id)``: wake the accounts' sockets."""
        for channel, event_id in events:
            if (woken := socket_channel(channel)) is not None:
                self._pending[woken] = max(event_id, self._pending.get(woken, 0))
        if self._pending:
            self._asked.set()

    async def run(self) -> None:
        while True:
            await self._asked.wait()
            self._asked.clear()
            while self._pending:
                batch = [(c, self._pending.pop(c)) for c in list(self._pending)[:WAKE_BATCH]]
                try:
                    await self._send([ping(channel, event_id) for channel, event_id in batch])
                    self.sent += len(batch)
                except Exception as exc:  # the sweep brings those sockets in
                    log.warning("waking %d sockets on %s failed: %s", len(batch), self._label, exc)
                await asyncio.sleep(WAKE_INTERVAL)
