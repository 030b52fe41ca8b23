"""The embedded backend: one SQLite file in WAL mode, used from the event loop's own thread.

Every statement runs inline, without yielding to the loop, so one process's store calls never
interleave; between processes, SQLite's write lock (BEGIN IMMEDIATE) lets one writer in at a
time. Each call is short (a few indexed queries; commits do not wait for fsync in WAL mode
with synchronous=NORMAL), so running them inline costs the loop less than handing them to a
thread: measured at 1,000 posts a second, calls queued for a store thread waited 10 to 18 ms on
average for the interpreter lock while the thread itself was busy half the time
(docs/performance.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.store.schema import MIGRATIONS, NAMES_NORMALISED
from app.store.sql import Row


class SqliteDatabase:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        self._db: sqlite3.Connection | None = None
        self._write = _Transaction(self, "BEGIN IMMEDIATE")
        self._read = _Transaction(self, "BEGIN")
        self._plain = _Statements(self)
        self._leases: dict[str, int] = {}  # name: the file descriptor holding its lock
        self.on_announce: Callable[[str], None] = lambda message: None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store is not open"
        return self._db

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, check_names: Callable[[list[str]], list[str]] | None) -> None:
        """Open the file, migrating it to this version's schema. Migrating past
        NAMES_NORMALISED needs ``check_names``: the problems it finds with the names stored."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash (not a power cut) without fsync.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        # What a delete frees is overwritten, not left in free pages (a deleted post's text).
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA busy_timeout=5000")
        self._db = db
        self._migrate(check_names)

    async def close(self) -> None:
        for name in list(self._leases):
            await self.release_lease(name)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, check_names: Callable[[list[str]], list[str]] | None) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this server "
                f"({len(MIGRATIONS)}): upgrade the server"
            )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(accounts)")}
        if version and "id" not in columns:
            # Migration 1 changed once before any release (accounts.id, publish positions).
            raise RuntimeError(
                f"{self.path} was made by a pre-release build of this server: move it away"
            )
        for number in range(version, len(MIGRATIONS)):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while we waited for the write lock.
                if self.db.execute("PRAGMA user_version").fetchone()[0] <= number:
                    if number + 1 == NAMES_NORMALISED:
                        self._check_names(check_names)
                    for statement in statements(MIGRATIONS[number]):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version={number + 1}")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _check_names(self, check: Callable[[list[str]], list[str]] | None) -> None:
        """Refuse to migrate while ``check`` finds problems with the stored names (merging,
        renaming or dropping them here could lose someone's posts or login)."""
        names = [
            row[0]
            for row in self.db.execute("SELECT jid FROM accounts UNION SELECT jid FROM channels")
        ]
        if names and check is None:
            raise RuntimeError(f"{self.path}: its names must be checked to migrate it")
        problems = check(names) if check else []
        if problems:
            raise RuntimeError(
                f"{self.path} holds account or channel names that this version, which stores"
                " names as XMPP compares them (RFC 7622), would fold together, change or refuse."
                " Nothing was changed. Rename or remove them, then start again:\n  "
                + "\n  ".join(problems)
            )

    # -- connections -------------------------------------------------------------------------

    def write(self) -> _Transaction:
        return self._write

    def read(self) -> _Transaction:
        return self._read

    def connection(self) -> _Statements:
        return self._plain

    def keyed(self, key: str) -> _Transaction:
        """SQLite has one writer at a time anyway."""
        return self._write

    async def appended(self, tx: Any) -> None:
        """BEGIN IMMEDIATE already keeps every other writer out."""

    async def erased(self) -> None:
        """With secure_delete, SQLite overwrites what it frees; the checkpoint copies the
        erased pages into the database file and empties the write-ahead log, which held the
        old ones."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- across processes on one file -------------------------------------------------------

    async def try_lease(self, name: str) -> bool:
        """A lease is an exclusive lock on a file beside the database's, which the system
        releases when the process ends, however it ends."""
        if name in self._leases:
            return True
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        path = self.path.with_name(f"{self.path.name}.lease-{digest}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._leases[name] = fd
        return True

    async def lease_held(self, name: str) -> bool:
        return name in self._leases

    async def release_lease(self, name: str) -> None:
        fd = self._leases.pop(name, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    async def announce(self, message: str) -> None:
        """Heard in this process only: other processes on the file learn of the publisher's
        progress by their own polls (several nodes belong on PostgreSQL)."""
        self.on_announce(message)


class _Statements:
    """The connection's statements, each its own transaction unless one is open. (Nothing
    here awaits, so a transaction runs to its end before the loop runs anything else.)"""

    def __init__(self, owner: SqliteDatabase) -> None:
        self.owner = owner

    async def __aenter__(self) -> _Statements:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        return None

    async def execute(self, sql: str, *params: Any) -> int:
        return self.owner.db.execute(sql, params).rowcount

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        row: Row | None = self.owner.db.execute(sql, params).fetchone()
        return row

    async def fetchall(self, sql: str, *params: Any) -> list[Row]:
        return self.owner.db.execute(sql, params).fetchall()


class _Transaction(_Statements):
    """``begin`` ... COMMIT, rolled back on any error."""

    def __init__(self, owner: SqliteDatabase, begin: str) -> None:
        super().__init__(owner)
        self.begin = begin

    async def __aenter__(self) -> _Statements:
        self.owner.db.execute(self.begin)
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        self.owner.db.execute("ROLLBACK" if exc_type else "COMMIT")


def statements(script: str) -> list[str]:
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in code.split(";") if s.strip()]
