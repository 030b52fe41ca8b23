"""Browser sessions (app/sessions.py) on a real store of each backend: lookups shared and
cached, ended at once on the node that ends them, expiry, and a bound per account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest

from app.errors import Unauthorized
from app.sessions import Sessions
from app.store import Store, open_store
from app.store.base import SessionRow
from tests.databases import fresh_database


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    """A new, empty database on ``backend``."""
    return f"sqlite://{tmp_path}/db.sqlite3" if backend == "sqlite" else fresh_database()


@asynccontextmanager
async def sessions_on(url: str, **settings: Any) -> AsyncIterator[Sessions]:
    store = open_store(url)
    await store.open()
    try:
        yield Sessions(
            store, **{"lifetime": 3600, "max_alive": 100, "cache_seconds": 5, **settings}
        )
    finally:
        await store.close()


class PausedAfterRead:
    """The real store, but a session's read, once made, waits for ``go``: a lookup that read
    the row just before the session ended, made to happen every time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def session(self, session_id: str, now: float) -> SessionRow | None:
        row = await self.store.session(session_id, now)
        await self.go.wait()
        return row


def test_lookups_are_shared_and_cached_and_an_end_is_at_once(url: str) -> None:
    async def scenario() -> None:
        async with sessions_on(url) as sessions:
            session = await sessions.start("juliet@example.com")
            # Many requests at once with one cookie: one lookup; then none while cached.
            jids = await asyncio.gather(*(sessions.account(session.token) for _ in range(50)))
            assert set(jids) == {"juliet@example.com"} and sessions.lookups == 1
            await sessions.account(session.token)
            assert sessions.lookups == 1
            await sessions.end(session.token)
            with pytest.raises(Unauthorized):
                await sessions.account(session.token)  # at once, though it was cached

            # A lookup that read the row before the end is answered (it came first), but
            # what it read is not kept: the next request is refused.
            paused = PausedAfterRead(sessions.store)
            sessions.store = cast(Store, paused)
            session = await sessions.start("juliet@example.com")
            racing = asyncio.ensure_future(sessions.account(session.token))
            await asyncio.sleep(0.1)
            assert not racing.done()
            ending = asyncio.ensure_future(sessions.end(session.token))
            await asyncio.sleep(0.1)
            paused.go.set()
            await ending
            assert await racing == "juliet@example.com"
            with pytest.raises(Unauthorized):
                await sessions.account(session.token)

    asyncio.run(scenario())


def test_sessions_expire_and_an_account_keeps_its_newest(url: str) -> None:
    async def scenario() -> None:
        async with sessions_on(url, lifetime=1, max_alive=2) as sessions:
            made = [await sessions.start("romeo@example.com") for _ in range(3)]
            with pytest.raises(Unauthorized):
                await sessions.account(made[0].token)  # the oldest, past the limit
            for session in made[1:]:
                assert await sessions.account(session.token) == "romeo@example.com"
            other = await sessions.start("juliet@example.com")  # another account's count
            await sessions.account(made[1].token)
            await asyncio.sleep(1.1)
            for session in (*made[1:], other):
                with pytest.raises(Unauthorized):
                    await sessions.account(session.token)  # expired, though cached

    asyncio.run(scenario())
