"""Limits per key: counts in a sliding window (logins, posts, follows: past the limit, 429), and
how many run at once (slow password hashes: past the limit, the next waits its turn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app.store import Store

log = logging.getLogger("app.throttle")


class Throttle:
    """At most ``limit`` a ``window`` (seconds) per key, in a sliding window: a slot taken at t
    frees at t + window. Counted in the store, so that every origin on one database counts
    against the same limit."""

    def __init__(self, store: Store, name: str, limit: int, window: float) -> None:
        self.store = store
        self.name = name
        self.limit = limit
        self.window = window
        self.refused = 0  # takes refused since start (each a 429), for the metrics

    async def take(self, key: str, now: float | None = None) -> float:
        """Count one for ``key`` if it is under the limit (0 then); else the seconds until it
        may, counting nothing. Checked and counted at once, so no concurrency passes it."""
        now = time.time() if now is None else now
        wait = await self.store.take_slot(self.name, key, self.limit, self.window, now)
        if wait:
            self.refused += 1
        return wait

    async def give_back(self, key: str) -> None:
        """Uncount the latest one taken for ``key`` (what it was taken for went well)."""
        await self.store.give_back_slot(self.name, key)


async def prune_forever(store: Store, longest_window: float, every: float = 60.0) -> None:
    """Forget slots older than every limit's window, now and then (they count for nothing)."""
    while True:
        try:
            await store.prune_slots(time.time() - longest_window)
        except Exception:
            log.exception("pruning the rate limits' slots failed; trying again later")
        await asyncio.sleep(every)


@dataclass
class _Running:
    semaphore: asyncio.Semaphore
    users: int = 0  # running or waiting
    running: int = 0


@dataclass
class AtOnce:
    """At most ``limit`` at once per key; the next waits until one ends."""

    limit: int
    most: int = 0  # the most that ran at once for one key, since start
    _keys: dict[str, _Running] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Running(asyncio.Semaphore(self.limit))
        entry.users += 1
        try:
            async with entry.semaphore:
                entry.running += 1
                self.most = max(self.most, entry.running)
                try:
                    yield
                finally:
                    entry.running -= 1
        finally:
            entry.users -= 1
            if not entry.users:  # only keys in use are kept
                del self._keys[key]
