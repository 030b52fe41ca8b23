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

Probes, after a socket subscribes: Pushpin's handler takes a socket's subscription some time
after its proxy has passed on the answer that asked for it, and it may first take publishes
that arrived meanwhile (seen at ``log_level=3``: the subscription taken 6 ms after the answer,
behind a wake-up published 5 ms after it, which reached no socket). The presence's own ping
had by then been answered, its read made before the commit the wake-up was for: the socket
missed the event until the next wake-up or the sweep. So the origin that answered a presence
pings the account's socket channel again PROBE_DELAYS later, each ping with an id of its own;
the first that lands after the subscription brings a read that finds what the gap held (and
any later one reads nothing). They are paced with the wake-ups, after them, and a probe due
for a channel whose wake-up goes out in the same batch is that wake-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable

from app.model import SOCKETS, feed_of

log = logging.getLogger("app.wakes")

WAKE_BATCH = 50
WAKE_INTERVAL = 0.02  # seconds between batches: at most 2,500 sockets woken a second
PROBE_DELAYS = (0.2, 1.0, 3.0)  # seconds after a presence's answer


def socket_channel(channel: str) -> str | None:
    """The socket channel woken by events on ``channel`` (an account's posts or events)."""
    if feed_of(channel) in ("posts", "events"):
        return SOCKETS + channel[1:]
    return None


def ping(channel: str, name: str) -> bytes:
    """A ping on ``channel`` named ``name``: Pushpin 1.36 drops a ws-message item without
    content ("filter error"), and an id it saw on the channel in the last minute. A wake-up is
    named by the newest event it wakes for, a probe by a random name."""
    item = {
        "channel": channel,
        "id": name,
        "formats": {"ws-message": {"type": "ping", "content": name}},
    }
    return json.dumps(item, separators=(",", ":")).encode()


class Wakes:
    """The accounts to wake on one publish target, and the task that wakes them."""

    def __init__(self, send: Callable[[list[bytes]], Awaitable[None]], label: str) -> None:
        self._send = send
        self._label = label
        self._pending: dict[str, int] = {}  # channel: newest event, in the order first asked
        self._probes: dict[str, None] = {}  # channels to probe, in the order first asked
        self._asked = asyncio.Event()
        self.sent = 0

    def add(self, events: Iterable[tuple[str, int]]) -> None:
        """Events were accepted, each ``(channel, event id)``: wake the accounts' sockets."""
        for channel, event_id in events:
            if (woken := socket_channel(channel)) is not None:
                self._pending[woken] = max(event_id, self._pending.get(woken, 0))
        if self._pending:
            self._asked.set()

    def probe(self, channel: str) -> None:
        """A socket just subscribed to ``channel``: ping it PROBE_DELAYS from now."""
        loop = asyncio.get_running_loop()
        for delay in PROBE_DELAYS:
            loop.call_later(delay, self._probe_due, channel)

    def _probe_due(self, channel: str) -> None:
        self._probes[channel] = None
        self._asked.set()

    def _next_batch(self) -> list[bytes]:
        """Up to WAKE_BATCH pings: the wake-ups first, then the probes."""
        channels = list(self._pending)[:WAKE_BATCH]
        batch = [ping(channel, str(self._pending.pop(channel))) for channel in channels]
        for channel in channels:
            self._probes.pop(channel, None)  # the wake-up is its probe
        for channel in list(self._probes)[: WAKE_BATCH - len(batch)]:
            del self._probes[channel]
            batch.append(ping(channel, "probe-" + secrets.token_hex(6)))
        return batch

    async def run(self) -> None:
        while True:
            await self._asked.wait()
            self._asked.clear()
            while self._pending or self._probes:
                batch = self._next_batch()
                try:
                    await self._send(batch)
                    self.sent += len(batch)
                except Exception as exc:  # the sweep brings those sockets in
                    log.warning("waking %d sockets on %s failed: %s", len(batch), self._label, exc)
                await asyncio.sleep(WAKE_INTERVAL)
