"""The store's own interface on each backend, on real databases: ids, same-millisecond and
concurrent writes, schema versions."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from app.errors import Conflict, Unauthorized
from app.model import POSTS_NODE
from app.sessions import Sessions
from app.store import Store, open_store
from app.store.base import Position, SessionRow, SubscriptionChange
from app.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS
from tests.databases import fresh_database

NOW = "2014-06-24T15:34:54.449Z"
# Each backend's migrations, as the module that applies them names them (to add one).
SCHEMAS = {
    "sqlite": ("app.store.sqlite.MIGRATIONS", MIGRATIONS),
    "postgresql": ("app.store.postgres.POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS),
}


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    """A new, empty database on ``backend``."""
    return f"sqlite://{tmp_path}/log.sqlite3" if backend == "sqlite" else fresh_database()


async def _store(url: str) -> Store:
    store = open_store(url)
    await store.open()
    return store


def test_two_posts_in_the_same_millisecond_get_distinct_growing_cursors(url: str) -> None:
    async def scenario() -> None:
        store = await _store(url)
        jid = "juliet@example.com"
        await store.create_account(jid, "hash", "key", NOW)
        node = await store.get_node(jid, POSTS_NODE)
        assert node is not None
        # The same timestamp for both, as two posts in one millisecond would have.
        first = (await store.append_post(node, "p1", jid, '{"id":"p1"}', NOW)).event_id
        second = (await store.append_post(node, "p2", jid, '{"id":"p2"}', NOW)).event_id
        assert second > first > 0
        feed = await store.read_feed("posts", jid, 0, 100)
        assert [item.event_id for item in feed.items] == [first, second]
        # Each went to the owner's channel, the second chained to the first.
        deliveries = await store.deliveries_after(Position(0, ""), 10)
        assert [(d.event_id, d.channel, d.prev_id) for d in deliveries if d.channel[0] == "u"] == [
            (first, feed.channel, 0),
            (second, feed.channel, first),
        ]
        assert feed.head == second
        await store.close()

        # Ids keep growing after a reopen, and are never reused.
        again = await _store(url)
        third = (await again.append_post(node, "p3", jid, '{"id":"p3"}', NOW)).event_id
        assert third > second
        await again.close()

    asyncio.run(scenario())


def test_posts_from_two_processes_at_once_chain_on_each_channel(url: str) -> None:
    """Two stores on one database, as two origins are: each post gets its own id, and on each
    channel every delivery chains to the one before it (two sharing a prev-id would be a gap
    Pushpin cannot see)."""

    async def scenario() -> None:
        one, other = await _store(url), await _store(url)
        writer, reader = "juliet@example.com", "romeo@example.com"
        await one.create_account(writer, "hash", "key", NOW)
        await other.create_account(reader, "hash", "another key", NOW)
        node = await one.get_node(writer, POSTS_NODE)
        assert node is not None
        await other.apply_subscriptions(
            [SubscriptionChange(reader, node.id, "publisher", [], None)], NOW
        )
        posts = [
            (one if n % 2 else other).append_post(node, f"p{n}", writer, f'{{"id":"p{n}"}}', NOW)
            for n in range(50)
        ]
        ids = [written.event_id for written in await asyncio.gather(*posts)]
        assert len(set(ids)) == 50 and min(ids) > 0

        chains: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for d in await one.deliveries_after(Position(0, ""), 1000):
            chains[d.channel].append((d.event_id, d.prev_id))
        feeds = [await one.read_feed("posts", jid, 0, 100) for jid in (writer, reader)]
        assert sorted(chains) == sorted(["firehose", *(feed.channel for feed in feeds)])
        for channel, chain in chains.items():
            assert sorted(id_ for id_, _ in chain) == sorted(ids), channel
            # deliveries_after orders by id: each delivery names the one before it.
            assert [prev for _, prev in chain] == [0] + [id_ for id_, _ in chain[:-1]], channel
        for feed in feeds:
            assert [item.event_id for item in feed.items] == sorted(ids)
            assert feed.head == max(ids)
        await one.close()
        await other.close()

    asyncio.run(scenario())


def test_a_new_database_gets_the_current_schema(backend: str, url: str) -> None:
    async def scenario() -> None:
        store = await _store(url)
        assert await store.schema_version() == len(SCHEMAS[backend][1])
        await store.close()

    asyncio.run(scenario())


def test_a_database_from_a_later_server_is_refused(backend: str, url: str) -> None:
    async def scenario() -> None:
        await (await _store(url)).close()
        # No store method writes a version ahead of its own migrations, so the test writes
        # the version a later server would have left, where each backend keeps it.
        await _write_schema_version(url, len(SCHEMAS[backend][1]) + 1)
        with pytest.raises(RuntimeError, match="newer than this server"):
            await _store(url)

    asyncio.run(scenario())


async def _write_schema_version(url: str, version: int) -> None:
    if url.startswith("sqlite://"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as db:
            db.execute(f"PRAGMA user_version={version}")
        return
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("INSERT INTO schema_versions (version) VALUES ($1)", version)
    finally:
        await connection.close()


def test_a_file_from_a_pre_release_build_is_refused(tmp_path: Path) -> None:
    """SQLite only: the first migration changed once before any release, and only SQLite
    files were made then (every PostgreSQL database has the released schema)."""

    async def scenario() -> None:
        path = tmp_path / "old.sqlite3"
        # No store method makes such a file: the test writes it as that build left it.
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE accounts (jid TEXT PRIMARY KEY)")
            db.execute("PRAGMA user_version=1")
        with pytest.raises(RuntimeError, match="pre-release build"):
            await _store(f"sqlite://{path}")

    asyncio.run(scenario())


def test_database_url_picks_the_backend(tmp_path: Path) -> None:
    assert open_store(f"sqlite://{tmp_path}/x.sqlite3").label == f"{tmp_path}/x.sqlite3"
    # (not connected: a label only, without the credentials)
    postgres = open_store("postgresql://juliet:secret@db.example.com:5432/buddycloud")
    assert postgres.label == "postgresql://db.example.com:5432/buddycloud"
    with pytest.raises(Exception, match="expected sqlite://PATH or postgresql"):
        open_store("mysql://somewhere/db")


def test_an_older_database_migrates_forward_keeping_its_data(
    backend: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        store = await _store(url)
        await store.create_account("juliet@example.com", "hash", "key", NOW)
        await store.close()

        # A later version of the server adds a migration.
        where, migrations = SCHEMAS[backend]
        later = [*migrations, "UPDATE channels SET title = 'Capulet'"]
        monkeypatch.setattr(where, later)
        upgraded = await _store(url)
        assert await upgraded.schema_version() == len(later)
        assert await upgraded.get_account("juliet@example.com") is not None
        assert (await upgraded.metadata("juliet@example.com"))["title"] == "Capulet"
        await upgraded.close()

    asyncio.run(scenario())


def test_a_change_decided_from_a_stale_role_is_refused(url: str) -> None:
    async def scenario() -> None:
        store = await _store(url)
        await store.create_account("juliet@example.com", "hash", "key", NOW)
        await store.create_account("romeo@example.com", "hash", "another key", NOW)
        node = await store.get_node("juliet@example.com", POSTS_NODE)
        assert node is not None
        follow = SubscriptionChange("romeo@example.com", node.id, "publisher", [], None)
        await store.apply_subscriptions([follow], NOW)
        ban = SubscriptionChange("romeo@example.com", node.id, "outcast", [], "publisher")
        await store.apply_subscriptions([ban], NOW)
        # Romeo's own request, decided before the ban, must not undo it.
        stale = SubscriptionChange("romeo@example.com", node.id, "publisher", [], "publisher")
        with pytest.raises(Conflict):
            await store.apply_subscriptions([stale], NOW)
        assert await store.affiliation("romeo@example.com", node.id) == "outcast"
        await store.close()

    asyncio.run(scenario())


# The sessions' cache (app/sessions.py) on a real store of each backend: the race between a
# lookup and an end, and expiry, which the stack cannot show in its time.


@asynccontextmanager
async def sessions_on(url: str, **settings: Any) -> AsyncIterator[Sessions]:
    store = await _store(url)
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
