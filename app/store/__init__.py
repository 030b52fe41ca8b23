"""Persistence, picked by the scheme of DATABASE_URL: the domain talks to a `Store`."""

from __future__ import annotations

from pathlib import Path

from app.config import ConfigError
from app.store.base import Store
from app.store.sql import SqlStore


def open_store(url: str, pool_size: int = 10, commit_delay: float = 0.0) -> Store:
    """A store for ``url`` (not connected yet: ``await store.open()``). ``pool_size`` and
    ``commit_delay`` (tests only) are PostgreSQL's (app/store/postgres.py)."""
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite" and sep and rest:
        from app.store.sqlite import SqliteDatabase

        # sqlite:///var/lib/x.sqlite3 is absolute, sqlite://data/x.sqlite3 relative.
        return SqlStore(SqliteDatabase(Path(rest)))
    if scheme in ("postgresql", "postgres") and sep:
        from app.store.postgres import PostgresDatabase

        return SqlStore(PostgresDatabase(url, pool_size, commit_delay))
    raise ConfigError(f"DATABASE_URL {url!r}: expected sqlite://PATH or postgresql://...")


__all__ = ["Store", "open_store"]
