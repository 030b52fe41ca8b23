"""The backend for several nodes: PostgreSQL, through asyncpg.

Why asyncpg: of the two well-kept async drivers, it took about half the CPU of psycopg 3 for
each shape of call the store makes (bench.drivers, on 2 cores: a write transaction 296 against
523 us, a keyed row 41 against 94 us, 100 rows 117 against 214 us), and the store's calls are
many small statements on the event loop's thread. It prepares and caches statements on each
connection and speaks PostgreSQL's binary protocol.

Every write transaction first takes one transaction-level advisory lock, so writes run one at
a time across every process on the database, as SQLite's do: the log's ids, handed out by a
sequence at insert, therefore commit in order, and no reader, hold or publisher position can
pass an id that commits later (app/store/sql.py). A transaction that appends to the log also
sends a NOTIFY, which PostgreSQL delivers at commit, to every origin listening.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.store.base import LISTENING_AGAIN
from app.store.schema import POSTGRES_MIGRATIONS
from app.store.sql import Row

log = logging.getLogger("app.store")

# Advisory lock keys (any two numbers no other application on the database uses).
WRITE_LOCK = 0x6275_6464  # "budd": one writer at a time
MIGRATE_LOCK = 0x6275_6465
APPENDED = "log_appended"  # the NOTIFY channel: the log grew
ANNOUNCED = "announced"  # the NOTIFY channel of announce()
LEASE_CHECK_SECONDS = 2.0
# The server ends a lease whose origin vanished from the network (no FIN, no RST) once these
# keepalives go unanswered: about 25 s, not the system's default two hours.
LEASE_KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


class PostgresDatabase:
    def __init__(self, url: str, pool_size: int = 10, commit_delay: float = 0.0) -> None:
        self.url = url
        parts = urlsplit(url)
        self.label = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.pool_size = pool_size
        # Tests only: how long a transaction waits once the log handed it an id, to make
        # commits finish in another order than their ids were handed out, were that possible.
        self.commit_delay = commit_delay
        self.on_append: Callable[[], None] = lambda: None  # a commit (any process's) appended
        self.on_announce: Callable[[str], None] = lambda message: None
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        # Leases are session advisory locks, on a connection of their own: they end with it.
        self._leases: asyncpg.Connection | None = None
        self._held: set[str] = set()
        self._leasing = asyncio.Lock()  # one lease call at a time on that connection
        self._relisten: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store is not open"
        return self._pool

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, check_names: Callable[[list[str]], list[str]] | None) -> None:
        """Connect and migrate. (Every name a PostgreSQL store holds was stored normalised:
        there is no older version whose names need checking.)"""
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
        await self._migrate()
        await self._listen()

    async def _listen(self) -> None:
        """Listen for the log's commits and the announcements, on a connection of its own;
        when it is lost (a database restart), listen again on a new one, and meanwhile the
        publisher's own look at the log every PUBLISH_POLL_SECONDS keeps it going."""
        listener = await asyncpg.connect(self.url)
        await listener.add_listener(APPENDED, self._appended)
        await listener.add_listener(ANNOUNCED, self._announced)
        listener.add_termination_listener(self._lost_listener)
        self._listener = listener

    def _lost_listener(self, connection: Any) -> None:
        if self._listener is connection and self._pool is not None:
            log.warning("lost the connection that listens for commits: connecting again")
            self._listener = None
            self._relisten = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        delay = 0.1
        while self._pool is not None and self._listener is None:
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listening again failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.on_append()  # commits made meanwhile went unheard
        self.on_announce(LISTENING_AGAIN)  # and so did announcements

    def _appended(self, *args: Any) -> None:
        self.on_append()

    def _announced(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        self.on_announce(str(payload))

    async def close(self) -> None:
        if self._leases is not None:
            await self._leases.close()
            self._leases = None
            self._held.clear()
        pool, self._pool = self._pool, None  # first: a listener closed now is not lost
        if self._relisten is not None:
            self._relisten.cancel()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if pool is not None:
            await pool.close()

    async def schema_version(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT max(version) FROM schema_versions"))

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # One process migrates; the others wait here, then find nothing left to do.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions"
                " (version INTEGER PRIMARY KEY, applied TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_versions")
            if version > len(POSTGRES_MIGRATIONS):
                raise RuntimeError(
                    f"{self.label} has schema version {version}, newer than this server "
                    f"({len(POSTGRES_MIGRATIONS)}): upgrade the server"
                )
            for number in range(version, len(POSTGRES_MIGRATIONS)):
                await conn.execute(POSTGRES_MIGRATIONS[number])
                await conn.execute("INSERT INTO schema_versions (version) VALUES ($1)", number + 1)
                log.info("%s migrated to schema version %d", self.label, number + 1)

    # -- connections -------------------------------------------------------------------------

    @asynccontextmanager
    async def write(self) -> AsyncIterator[_Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            yield _Connection(conn)

    @asynccontextmanager
    async def keyed(self, key: str) -> AsyncIterator[_Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _key(f"keyed {key}"))
            yield _Connection(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[_Connection]:
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield _Connection(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Connection]:
        async with self.pool.acquire() as conn:
            yield _Connection(conn)

    async def appended(self, tx: Any) -> None:
        await tx.execute(f"NOTIFY {APPENDED}")
        if self.commit_delay:
            await asyncio.sleep(self.commit_delay)

    async def erased(self) -> None:
        """PostgreSQL keeps a row's old version until VACUUM reclaims it (README: what remains
        where). Autovacuum does so in time; nothing to force here."""

    async def ids_past(self, tx: Any, event_id: int) -> None:
        """An id given at insert does not move the identity's sequence: move it here."""
        await tx.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'id'), CAST(? AS BIGINT))", event_id
        )

    # -- across processes --------------------------------------------------------------------

    async def try_lease(self, name: str) -> bool:
        async with self._leasing:
            if name in self._held:
                return await self._alive()
            if self._leases is None or self._leases.is_closed():
                self._held.clear()
                self._leases = await asyncpg.connect(
                    self.url, timeout=LEASE_CHECK_SECONDS, server_settings=LEASE_KEEPALIVES
                )
            taken = await self._leases.fetchval("SELECT pg_try_advisory_lock($1)", _key(name))
            if taken:
                self._held.add(name)
            return bool(taken)

    async def lease_held(self, name: str) -> bool:
        async with self._leasing:
            return name in self._held and await self._alive()

    async def _alive(self) -> bool:
        """Leases live as long as the connection that took them: ask it (if it died, they
        all ended, and another process may hold them now)."""
        if self._leases is None:
            return False
        try:
            await self._leases.fetchval("SELECT 1", timeout=LEASE_CHECK_SECONDS)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            log.warning("lost the connection holding the leases %s", sorted(self._held))
            self._held.clear()
            self._leases.terminate()
            self._leases = None
            return False
        return True

    async def release_lease(self, name: str) -> None:
        async with self._leasing:
            if name in self._held and self._leases is not None:
                self._held.discard(name)
                await self._leases.execute("SELECT pg_advisory_unlock($1)", _key(name))

    async def announce(self, message: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", ANNOUNCED, message)


def _key(name: str) -> int:
    """An advisory lock's 64-bit key for a lease's name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class _Connection:
    def __init__(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        self.conn = conn

    async def execute(self, sql: str, *params: Any) -> int:
        status = await self.conn.execute(_numbered(sql), *params)
        count = status.rpartition(" ")[2]
        return int(count) if count.isdigit() else 0

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        record = await self.conn.fetchrow(_numbered(sql), *params)
        return None if record is None else tuple(record)

    async def fetchall(self, sql: str, *params: Any) -> list[Row]:
        return [tuple(r) for r in await self.conn.fetch(_numbered(sql), *params)]


_MARK = re.compile(r"\?")


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """The store writes placeholders as ``?`` (no statement has one in a literal); PostgreSQL
    numbers them."""
    counter = iter(range(1, 1000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)
