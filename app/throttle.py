"""Limits per key: counts in a sliding window (logins, posts, follows: past the limit, 429), and
how many run at once (slow password hashes: past the limit, the next waits its turn)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class Throttle:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        now = time.monotonic() if now is None else now
        failures = self._failures.get(key)
        if not failures:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window - now

    def take(self, key: str, now: float | None = None) -> float:
        """Count one for ``key`` if it is under the limit (0 then); else the seconds until it
        may, counting nothing. Checked and counted at once, so no concurrency passes it."""
        wait = self.retry_after(key, now)
        if wait == 0:
            self.failed(key, now)
        return wait

    def give_back(self, key: str) -> None:
        """Uncount the latest one taken for ``key`` (what it was taken for went well)."""
        failures = self._failures.get(key)
        if failures:
            failures.pop()

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) > 100_000:  # bound the memory an attacker can make us use
            horizon = now - self.window
            self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > horizon}
        self._failures.setdefault(key, deque(maxlen=self.limit)).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


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
