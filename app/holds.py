"""How many long-polls Pushpin holds for each user and each client address, as the origin
sees them: past a limit, the next request that would be held answers 429. Streams and sockets
count against the same limits: a stream for a while after it opens (Pushpin says nothing of
it afterwards), a socket while Pushpin brings the origin its requests (app/api/sockets.py).

Pushpin does not tell the origin when a held request ends, but it ends in one of two ways
the origin knows of: a publish on one of its channels (which answers it, or with a hint makes
Pushpin ask again), or its timeout. So a hold counts from the answer that made it until the
publisher sends an item on one of its channels, or until the timeout. Pushpin's own retries
of a held request (they carry ``Grip-Last``) replace that request and are not counted again.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.errors import TooManyRequests


@dataclass
class _Hold:
    keys: tuple[str, ...]
    channels: tuple[str, ...]
    expires: float


@dataclass
class HeldRequests:
    per_user: int
    per_address: int
    timeout: float  # Pushpin's hold timeout, plus a little
    counts: Counter[str] = field(default_factory=Counter)
    _holds: dict[int, _Hold] = field(default_factory=dict)
    _by_channel: dict[str, set[int]] = field(default_factory=dict)
    _expiry: list[tuple[float, int]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def admit(
        self,
        jid: str | None,
        address: str,
        channels: Iterable[str],
        now: float | None = None,
        seconds: float | None = None,
    ) -> None:
        """Count one more hold on ``channels`` for ``jid`` (None: anonymous) from
        ``address``, for ``seconds`` (default: the hold timeout) unless something is
        published on one of them first; TooManyRequests if either is at its limit."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        keys = [(f"address:{address}", self.per_address)]
        if jid is not None:
            keys.append((f"user:{jid}", self.per_user))
        for key, limit in keys:
            if self.counts[key] >= limit:
                what = "user" if key.startswith("user:") else "client address"
                raise TooManyRequests(
                    f"too many requests held for this {what} (at most {limit} at once):"
                    " let one end first",
                    1.0,
                )
        hold_id = next(self._ids)
        hold = _Hold(tuple(k for k, _ in keys), tuple(channels), now + (seconds or self.timeout))
        self._holds[hold_id] = hold
        for key in hold.keys:
            self.counts[key] += 1
        for channel in hold.channels:
            self._by_channel.setdefault(channel, set()).add(hold_id)
        heapq.heappush(self._expiry, (hold.expires, hold_id))

    def published(self, channels: Iterable[str]) -> None:
        """Items are being published on ``channels`` (or they ended otherwise): the holds on
        them end."""
        for channel in channels:
            for hold_id in self._by_channel.pop(channel, ()):
                self._end(hold_id)

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, hold_id = heapq.heappop(self._expiry)
            self._end(hold_id)

    def _end(self, hold_id: int) -> None:
        hold = self._holds.pop(hold_id, None)
        if hold is None:
            return
        for key in hold.keys:
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]
        for channel in hold.channels:
            ids = self._by_channel.get(channel)
            if ids is not None:
                ids.discard(hold_id)
                if not ids:
                    del self._by_channel[channel]
