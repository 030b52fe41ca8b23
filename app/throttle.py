"""Counts per key in a sliding window (failed logins, posts, follows): past the limit, 429."""

from __future__ import annotations

import time
from collections import deque


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

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) > 100_000:  # bound the memory an attacker can make us use
            horizon = now - self.window
            self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > horizon}
        self._failures.setdefault(key, deque(maxlen=self.limit)).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
