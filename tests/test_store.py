"""The event log in a real SQLite file: ids, same-millisecond writes, schema versions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from app.errors import Conflict
from app.model import POSTS_NODE
from app.store import Store, open_store
from app.store.base import Position, SubscriptionChange
from app.store.schema import MIGRATIONS

NOW = "2014-06-24T15:34:54.449Z"


async def _store(path: Path) -> Store:
    store = open_store(f"sqlite://{path}")
    await store.open()
    return store


def test_two_posts_in_the_same_millisecond_get_distinct_growing_cursors(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await _store(tmp_path / "log.sqlite3")
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
        again = await _store(tmp_path / "log.sqlite3")
        third = (await again.append_post(node, "p3", jid, '{"id":"p3"}', NOW)).event_id
        assert third > second
        await again.close()

    asyncio.run(scenario())


def test_a_new_file_gets_the_current_schema_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await _store(tmp_path / "a.sqlite3")
        assert await store.schema_version() == len(MIGRATIONS)
        await store.close()

        # A file from a later server: no store method writes a version ahead of its own
        # migrations, so the test writes the file itself.
        newer = tmp_path / "newer.sqlite3"
        with sqlite3.connect(newer) as db:
            db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
        with pytest.raises(RuntimeError, match="newer than this server"):
            await _store(newer)

    asyncio.run(scenario())


def test_database_url_picks_the_backend(tmp_path: Path) -> None:
    assert open_store(f"sqlite://{tmp_path}/x.sqlite3").label == f"{tmp_path}/x.sqlite3"
    with pytest.raises(Exception, match="expected sqlite://PATH or postgresql"):
        open_store("mysql://somewhere/db")


def test_an_older_file_migrates_forward_keeping_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        store = await _store(tmp_path / "log.sqlite3")
        await store.create_account("juliet@example.com", "hash", "key", NOW)
        await store.close()

        # A later version of the server adds a migration.
        later = [*MIGRATIONS, "ALTER TABLE accounts ADD COLUMN nickname TEXT DEFAULT 'jules'"]
        monkeypatch.setattr("app.store.sqlite.MIGRATIONS", later)
        upgraded = await _store(tmp_path / "log.sqlite3")
        assert await upgraded.schema_version() == len(later)
        assert await upgraded.get_account("juliet@example.com") is not None
        await upgraded.close()
        # The column is the test's own migration's: no store method reads it.
        with sqlite3.connect(tmp_path / "log.sqlite3") as db:
            assert db.execute("SELECT nickname FROM accounts").fetchone() == ("jules",)

    asyncio.run(scenario())


def test_a_change_decided_from_a_stale_role_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await _store(tmp_path / "log.sqlite3")
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
