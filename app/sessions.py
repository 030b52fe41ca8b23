"""Browser logins: a session is a row in the store, named by the hash of a random token that
the browser keeps in a cookie (app/api/browser.py). Every origin on the database reads the same
rows, so a session made on one node works on all, and one ended on any is refused by all: at
once on the node that ended it, within ``cache_seconds`` on the others."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import secrets
import time
from typing import NamedTuple

from app.errors import Unauthorized
from app.store import Store
from app.store.base import SessionRow

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
# secrets.token_urlsafe(32): 43 characters of base64url, no padding
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
PRUNE_SECONDS = 600.0
MAX_CACHED_SESSIONS = 100_000  # about 20 MB


class Session(NamedTuple):
    token: str  # the cookie's value: the store keeps only its hash
    jid: str
    expires: float  # unix time


class Sessions:
    def __init__(
        self,
        store: Store,
        lifetime: int,
        max_alive: int,
        cache_seconds: int,
        max_cached: int = MAX_CACHED_SESSIONS,
    ) -> None:
        self.store = store
        self.lifetime = lifetime  # seconds from the login
        self.max_alive = max_alive  # per account: a login past it ends the oldest
        self.cache_seconds, self.max_cached = cache_seconds, max_cached
        # session id -> (jid, believed until, unix time), oldest first
        self._cache: dict[str, tuple[str, float]] = {}
        # the lookup running for a session id: every request with that cookie waits for it
        self._looking: dict[str, asyncio.Future[SessionRow | None]] = {}
        # sessions this process has ended: a lookup that saw one end meanwhile caches nothing
        self._ends = 0
        self.lookups = 0  # asked of the store since start

    async def start(self, jid: str) -> Session:
        """A new session for ``jid``, who has just logged in."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = time.time()
        expires = now + self.lifetime
        await self.store.create_session(_id(token), jid, now, expires, self.max_alive)
        return Session(token, jid, expires)

    async def account(self, token: str) -> str:
        """The JID of the session ``token`` names, or Unauthorized once it has ended: logged
        out, expired, or never made."""
        row = await self._row(_id(token)) if _TOKEN.fullmatch(token) else None
        if row is None:
            raise Unauthorized("the session has ended: log in again (POST /api/session)")
        return row.jid

    async def end(self, token: str) -> None:
        """End the session ``token`` names, if it is one: refused from now on."""
        if not _TOKEN.fullmatch(token):
            return
        session_id = _id(token)
        # Before and after the delete: no lookup that may have read the row caches it.
        self._forget(session_id)
        await self.store.end_session(session_id)
        self._forget(session_id)

    def forget_account(self, jid: str | None = None) -> None:
        """Drop the cached sessions of ``jid`` (None: everyone's), whose rows were deleted
        (app/lifecycle.py): refused from now on; a lookup under way caches nothing."""
        self._ends += 1
        for session_id in [s for s, (who, _) in self._cache.items() if jid is None or who == jid]:
            del self._cache[session_id]

    def _forget(self, session_id: str) -> None:
        self._ends += 1
        self._cache.pop(session_id, None)
        self._looking.pop(session_id, None)

    async def _row(self, session_id: str) -> SessionRow | None:
        now = time.time()
        cached = self._cache.get(session_id)
        if cached is not None and cached[1] > now:
            return SessionRow(*cached)
        running = self._looking.get(session_id)
        if running is not None:
            # (shielded: one waiter that goes away does not cancel the others' lookup)
            return await asyncio.shield(running)
        self.lookups += 1
        running = asyncio.ensure_future(self.store.session(session_id, now))
        running.add_done_callback(_retrieved)
        self._looking[session_id] = running
        ends = self._ends
        try:
            row = await asyncio.shield(running)
        finally:
            if self._looking.get(session_id) is running:
                del self._looking[session_id]
        if row is not None and self.cache_seconds and ends == self._ends:
            self._remember(session_id, row)
        return row

    def _remember(self, session_id: str, row: SessionRow) -> None:
        # When full, the quarter cached first goes (their next requests ask the store).
        self._cache.pop(session_id, None)
        if len(self._cache) >= self.max_cached:
            for old in list(itertools.islice(self._cache, max(1, self.max_cached // 4))):
                del self._cache[old]
        self._cache[session_id] = (row.jid, min(row.expires, time.time() + self.cache_seconds))

    async def prune_forever(self, every: float = PRUNE_SECONDS) -> None:
        """Forget expired sessions now and then (they are refused already)."""
        while True:
            try:
                await self.store.prune_sessions(time.time())
            except Exception:
                log.exception("pruning expired sessions failed; trying again later")
            await asyncio.sleep(every)


def _id(token: str) -> str:
    """What the store names a session by. The token is 256 random bits, so a plain hash is
    enough: whoever reads the store cannot turn a row back into a cookie."""
    return hashlib.sha256(token.encode()).hexdigest()


def _retrieved(future: asyncio.Future[SessionRow | None]) -> None:
    """A lookup whose waiters all went away fails unheard: its error is logged, not lost."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.debug("looking up a session failed: %r", exc)
