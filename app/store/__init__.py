"""Persistence, picked by the scheme of DATABASE_URL."""

from __future__ import annotations

from pathlib import Path

from app.config import ConfigError
from app.store.sqlite import SqliteStore

Store = SqliteStore


def open_store(url: str) -> Store:
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite" and sep and rest:
        # sqlite:///var/lib/x.sqlite3 is absolute, sqlite://data/x.sqlite3 relative.
        return SqliteStore(Path(rest))
    raise ConfigError(f"DATABASE_URL {url!r}: expected sqlite://PATH")


__all__ = ["Store", "open_store"]
