"""The tests' PostgreSQL: each fresh database is new, empty, its own, and dropped afterwards."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import asyncpg

from tests.databases import SESSION, Databases, server_url


async def _tables(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT table_schema || '.' || table_name AS name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        return [row["name"] for row in rows]
    finally:
        await connection.close()


async def _create_table(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("CREATE TABLE posts (id bigint PRIMARY KEY)")
    finally:
        await connection.close()


async def _existing(names: list[str]) -> list[str]:
    connection = await asyncpg.connect(server_url())
    try:
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname = ANY($1::text[]) ORDER BY datname",
            names,
        )
        return [row["datname"] for row in rows]
    finally:
        await connection.close()


def _name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def test_fresh_databases_are_new_empty_separate_and_dropped() -> None:
    made = Databases()
    try:
        first, second = made.fresh(), made.fresh()
        names = sorted([_name(first), _name(second)])
        assert first != second
        assert asyncio.run(_existing(names)) == names
        assert asyncio.run(_tables(first)) == []
        assert asyncio.run(_tables(second)) == []

        asyncio.run(_create_table(first))
        assert asyncio.run(_tables(first)) == ["public.posts"]
        assert asyncio.run(_tables(second)) == []
    finally:
        made.drop_all()
    assert asyncio.run(_existing(names)) == []
    assert made.names == []


def test_the_fixture_gives_each_test_a_database_the_session_drops(postgres_url: str) -> None:
    assert asyncio.run(_tables(postgres_url)) == []
    # The session's finalizer drops what SESSION holds, with the drop_all tested above.
    assert _name(postgres_url) in SESSION.names
