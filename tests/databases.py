"""PostgreSQL for tests: the server ./test.sh provides, and a fresh database for each test.

``./test.sh`` sets ``TEST_DATABASE_URL`` (scripts/postgres.sh finds or starts a server). Run
without it, pytest uses the server on 127.0.0.1:5432 if it lets ``postgres`` in without a
password, and otherwise fails with what to do: a test that needs PostgreSQL never skips.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
_numbers = itertools.count()


class NoServer(RuntimeError):
    """No PostgreSQL server for the tests."""


@functools.cache
def server_url() -> str:
    """The server the tests make their databases on, as a URL to a database that exists."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    why = refusal(LOCAL_SERVER)
    if why is not None:
        raise NoServer(
            f"no PostgreSQL for the tests: TEST_DATABASE_URL is not set and {LOCAL_SERVER} "
            f"does not let us in ({why}). Run ./test.sh, which finds or starts a server, "
            "or set TEST_DATABASE_URL=postgresql://user@host:port/postgres"
        )
    return LOCAL_SERVER


def refusal(url: str) -> str | None:
    """Why the server at ``url`` does not let us in, or None when it does.

    scripts/postgres.sh asks this too. Logging in is the test: a server that answers but wants a
    password we do not have (Debian's own cluster, by default) is no use to the tests.
    """
    try:
        asyncio.run(_execute(url, "SELECT 1"))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return str(exc) or type(exc).__name__  # a timeout is an OSError with no message
    return None


class Databases:
    """Databases made on the test server, dropped together when they are no longer needed."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def fresh(self) -> str:
        """A new empty database's URL; its name is unique across processes and runs."""
        name = f"test_{os.getpid()}_{next(_numbers)}_{secrets.token_hex(4)}"
        asyncio.run(_execute(server_url(), f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return database_url(name)

    def drop_all(self) -> None:
        if not self.names:
            return
        # FORCE ends connections a test left open, which would otherwise block the drop.
        statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.names]
        asyncio.run(_execute(server_url(), *statements))
        self.names.clear()


def database_url(name: str) -> str:
    """The URL of the database ``name`` on the test server."""
    return urlunsplit(urlsplit(server_url())._replace(path=f"/{name}"))


SESSION = Databases()


BACKENDS = ("sqlite", "postgresql")
# Nodes on one PostgreSQL database share these (the run command refuses to start without).
SHARED_SECRETS = {"GRIP_SIG_KEY": "k" * 48, "SECRET_KEY": "s" * 32}


def database_env(backend: str) -> dict[str, str]:
    """The settings that put a run command on ``backend``: a fresh database for PostgreSQL;
    for SQLite, nothing (its file lives in the data folder)."""
    if backend == "sqlite":
        return {}
    return {"DATABASE_URL": fresh_database(), **SHARED_SECRETS}


def fresh_database() -> str:
    """A new empty database, dropped at the end of the test session (tests/conftest.py)."""
    return SESSION.fresh()


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def end_connections(url: str) -> int:
    """End every other connection to the database at ``url``, as a restart or failover of the
    server would (a fault a test injects; it reads and writes no data); how many it ended."""
    return asyncio.run(_end_connections(url))


async def _end_connections(url: str) -> int:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        ended: int = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return ended
