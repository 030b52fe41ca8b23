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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.store.schema import MIGRATIONS, NAMES_NORMALISED
from app.store.sql import Row

BACKUP_PAGES = 1024  # copied per step of a backup or restore (4 MiB of 4 KiB pages)


class InUse(Exception):
    """The database file is open in another process (a running origin, or an admin command)."""


def lock_path(path: Path) -> Path:
    """The file every process with ``path`` open holds a shared lock on: a restore takes it
    exclusively, so it never replaces a database under a running origin."""
    return path.with_name(f"{path.name}.lock")


class SqliteDatabase:
    def __init__(self, path: Path, shared_lock: bool = True) -> None:
        self.path = path
        self.label = str(path)
        self._shared_lock = shared_lock  # False: the caller holds the lock exclusively
        self._lock_fd: int | None = None
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
        if self._shared_lock:
            self._lock_fd = _lock(self.path, fcntl.LOCK_SH)
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
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # and with it the lock
            self._lock_fd = None

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

    async def ids_past(self, tx: Any, event_id: int) -> None:
        """AUTOINCREMENT already goes on after the largest id ever inserted."""

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


def _lock(path: Path, kind: int) -> int:
    """A file descriptor holding ``kind`` of lock on the database's lock file, or InUse."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        if kind == fcntl.LOCK_SH:
            raise InUse(f"{path} is being restored: start again when the restore is done") from None
        raise InUse(
            f"{path} is open in another process (the run command, or an admin command):"
            " stop the service first"
        ) from None
    return fd


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """While no other process has the database open (else InUse), and none may open it."""
    fd = _lock(path, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def backup(source: Path, target: Path, progress: Callable[[int, int], None]) -> int:
    """Copy the database at ``source`` into a new file ``target``, online: the copy is one
    snapshot (a read transaction held throughout, which in WAL mode lets writers go on), made
    page by page with ``progress(done, total)`` after each step. The last event id copied."""
    part = target.with_name(f"{target.name}.part")
    part.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=5000")
        src.execute("BEGIN")
        (last,) = src.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        _copy(src, part, "DELETE", progress)  # one self-contained file: no log beside it
        src.execute("COMMIT")
    finally:
        src.close()
    os.replace(part, target)
    return int(last)


def describe(path: Path) -> tuple[int, int]:
    """A backup's schema version and last event id; ValueError if it is no sound database of
    this server's."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        (check,) = db.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise ValueError(f"{path} is damaged: {check}")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        (last,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    except sqlite3.Error as exc:
        raise ValueError(f"{path} is not a database of this server: {exc}") from None
    finally:
        db.close()
    if version > len(MIGRATIONS):
        raise ValueError(f"{path} has schema version {version}, newer than this server")
    return int(version), int(last)


def high_water(path: Path) -> int:
    """The highest event id the database at ``path`` ever handed out (0: no such file):
    AUTOINCREMENT's counter, which pruning never lowers."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        (last,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        db.close()
    return max(int(row[0]) if row else 0, int(last))


def replace(path: Path, source: Path, progress: Callable[[int, int], None]) -> Path | None:
    """Put a copy of the database ``source`` at ``path`` (the caller holds it exclusively); the
    database that was there is moved aside, with its write-ahead log: where it went, or None."""
    aside = None
    if path.exists():
        aside = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        _copy(src, path, "WAL", progress)
    finally:
        src.close()
    return aside


def _copy(
    src: sqlite3.Connection, path: Path, journal_mode: str, progress: Callable[[int, int], None]
) -> None:
    """Copy ``src`` into a database at ``path`` page by page, saying how far it got, then
    give the copy ``journal_mode``."""
    dest = sqlite3.connect(path, isolation_level=None)
    try:
        src.backup(
            dest,
            pages=BACKUP_PAGES,
            progress=lambda _status, left, total: progress(total - left, total),
        )
        dest.execute(f"PRAGMA journal_mode={journal_mode}")
    finally:
        dest.close()
