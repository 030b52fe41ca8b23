"""Where a benchmark case runs: the run command on SQLite, on PostgreSQL, or as two nodes on one
PostgreSQL database (``tests.support.cluster``: two run commands, each a Pushpin and an origin,
every Pushpin a publish target of the origin that holds its lease).

A PostgreSQL setup gets a fresh database on the tests' server (``tests.databases``:
TEST_DATABASE_URL, or 127.0.0.1:5432 with trust auth), dropped when the case ends.

On this machine's 2 cores, two nodes share the cores with each other, with PostgreSQL and with
the load generator: they measure the contention of two origins on one database (the write lock,
the publisher's lease, announcements), not what a second machine would add.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import descendants
from tests.databases import SHARED_SECRETS, Databases
from tests.support import Stack, cluster, running

DATABASES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Setup:
    database: str = "sqlite"
    origins: int = 1  # run commands (nodes) on the one database

    def __post_init__(self) -> None:
        if self.database not in DATABASES:
            raise ValueError(f"database must be one of {', '.join(DATABASES)}")
        if self.origins not in (1, 2):
            raise ValueError("origins must be 1 or 2")
        if self.database == "sqlite" and self.origins != 1:
            # SQLite's announcements stay in their process: several nodes belong on PostgreSQL.
            raise ValueError("two origins need PostgreSQL")

    @property
    def key(self) -> str:
        """What a case's results file is named with: ``fanout``, ``fanout.postgresql``,
        ``fanout.postgresql.2``."""
        if self.database == "sqlite":
            return ""
        return f".{self.database}" + (f".{self.origins}" if self.origins > 1 else "")

    @property
    def label(self) -> str:
        name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[self.database]
        return name if self.origins == 1 else f"{name}, {self.origins} nodes"

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database, "origins": self.origins}

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> Setup:
        return cls(**value) if value else SQLITE


SQLITE = Setup()
POSTGRESQL = Setup("postgresql")
TWO_NODES = Setup("postgresql", 2)
SETUPS = (SQLITE, POSTGRESQL, TWO_NODES)


@dataclass
class Deployment:
    """The nodes of a setup, started: the first one takes the publisher's leases."""

    setup: Setup
    nodes: list[Stack]
    database_url: str  # the store's URL, for the benchmark's own setup (bench.seed)

    def node(self, index: int) -> Stack:
        """Clients spread over the nodes: the ``index``-th one goes to this node."""
        return self.nodes[index % len(self.nodes)]

    def origin_pids(self) -> list[int]:
        pids = []
        for node in self.nodes:
            assert node.process is not None
            pids.append(node.process.pid)
        return pids

    def pushpin_pids(self) -> list[int]:
        """Every Pushpin process of every node (each node's run command starts its own)."""
        return [pid for origin in self.origin_pids() for pid in descendants(origin)]


@contextlib.contextmanager
def deployed(setup: Setup, workdir: Path, **env: str) -> Iterator[Deployment]:
    """Start ``setup``'s nodes in ``workdir`` with ``env`` (over the database's settings)."""
    if setup.database == "sqlite":
        with running(workdir / "data", **env) as stack:
            data = Path(stack.env["DATA_DIR"]).resolve()
            yield Deployment(setup, [stack], f"sqlite://{data / 'buddycloud.sqlite3'}")
        return
    databases = Databases()
    try:
        url = databases.fresh()
        settings = {"DATABASE_URL": url, **SHARED_SECRETS, **env}
        if setup.origins == 1:
            with running(workdir / "data", **settings) as stack:
                yield Deployment(setup, [stack], url)
        else:
            with cluster(workdir, setup.origins, **settings) as nodes:
                yield Deployment(setup, nodes, url)
    finally:
        databases.drop_all()


def database_facts(setup: Setup) -> dict[str, Any]:
    """What the results depend on in the database server: its version, and whether a commit
    waits for the disk (each write transaction holds the write lock through its commit)."""
    if setup.database == "sqlite":
        import sqlite3

        return {"sqlite": sqlite3.sqlite_version, "synchronous": "NORMAL", "journal": "WAL"}
    from tests.databases import server_url

    url = server_url()  # which may ask the server itself, in a loop of its own

    async def ask() -> dict[str, Any]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            names = ("server_version", "fsync", "synchronous_commit", "shared_buffers")
            facts = {name: await conn.fetchval(f"SHOW {name}") for name in names}
            # Other databases on the server are other users' (the tests of other work, here):
            # their load is not ours, and is not measured apart.
            facts["other_sessions"] = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname IS NOT NULL"
                " AND pid != pg_backend_pid()"
            )
            return facts
        finally:
            await conn.close()

    return asyncio.run(ask())
