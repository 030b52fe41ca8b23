"""The domain's SQL, written once for every backend: what a backend provides is a `Database`.

The statements keep to what SQLite and PostgreSQL share (placeholders are written ``?``; a
backend that numbers them rewrites them). What differs between the two (locking, snapshots,
schema, how deleted bytes are freed) is the backend's; who may read what, channel names and
the events' JSON are decided here, once, or above in the domain.

Writes run one at a time across every process on the database (SQLite's write lock, or a
PostgreSQL advisory lock taken at the start of each write transaction). That is what makes
the log's ids commit in the order they were handed out: a reader, a hold or the publisher that
has seen id 11 has seen id 10, and two deliveries to one channel never take the same prev-id.
Reads that need more than one statement run in one snapshot.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from app.errors import Conflict, Unprocessable
from app.model import EVENTS, FIREHOSE, FIREHOSE_HINT, PENDING, POSTS, QUEUES, SOCKETS
from app.store.base import (
    Account,
    Delivery,
    FeedItem,
    FeedState,
    History,
    NodeInfo,
    NodeSize,
    Notice,
    Position,
    PostWritten,
    Pruned,
    Queue,
    QueueEvent,
    QueuePoll,
    RetryKey,
    SessionRow,
    SubscriptionChange,
)

Row = tuple[Any, ...]


class Connection(Protocol):
    """Statements on one connection (inside a transaction, or each its own)."""

    async def execute(self, sql: str, *params: Any) -> int:
        """Run a statement; the number of rows it changed."""

    async def fetchone(self, sql: str, *params: Any) -> Row | None: ...

    async def fetchall(self, sql: str, *params: Any) -> list[Row]: ...


class Database(Protocol):
    """What a backend provides: connections, transactions, its schema and its wake-ups."""

    label: str  # where it is, without credentials, for logs

    async def open(self, check_names: Callable[[list[str]], list[str]] | None) -> None:
        """Connect and migrate to this version's schema."""

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    def write(self) -> AbstractAsyncContextManager[Connection]:
        """A transaction, all or nothing, while no other writer runs on the database."""

    def read(self) -> AbstractAsyncContextManager[Connection]:
        """A read-only transaction: every statement sees one snapshot."""

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """Statements that each commit on their own."""

    def keyed(self, key: str) -> AbstractAsyncContextManager[Connection]:
        """A transaction while no other keyed transaction on ``key`` runs (writers on other
        keys, and the log's writer, may run meanwhile)."""

    async def appended(self, tx: Connection) -> None:
        """The transaction ``tx`` was handed its first id in the log (other processes may
        want to know once it commits)."""

    async def erased(self) -> None:
        """Rows were rewritten to erase text: make sure no old copy stays where it can."""

    async def ids_past(self, tx: Connection, event_id: int) -> None:
        """An event was inserted with id ``event_id``: the log's next ids come after it."""

    async def try_lease(self, name: str) -> bool:
        """Take the lease ``name`` unless another process holds it; held until released or
        until this process (or its connection to the database) ends."""

    async def lease_held(self, name: str) -> bool:
        """Does this process still hold the lease ``name``?"""

    async def release_lease(self, name: str) -> None: ...

    async def announce(self, message: str) -> None:
        """Send ``message`` to ``on_announce`` in every process on the database (this one
        included)."""

    on_announce: Callable[[str], None]


# Roles whose feeds carry a node's posts: an allow-list, so that a role added later (pending,
# for private channels) sees nothing until it is added here.
READER_ROLES = ("owner", "moderator", "publisher", "member")
MODERATOR_ROLES = ("owner", "moderator")
# A queue counts as alive for deliveries this long past its lifespan (a poll may be held).
QUEUE_GRACE = 300


def _among(roles: tuple[str, ...]) -> str:
    return "affiliation IN (" + ", ".join(f"'{r}'" for r in roles) + ")"


MAY_READ = _among(READER_ROLES)
_MODERATE = _among(MODERATOR_ROLES)
# What a reader may still see of what was delivered to them (e: the event, ?: the reader).
_READABLE_NODE = f"e.node_id IN (SELECT node_id FROM subscriptions WHERE jid = ? AND {MAY_READ})"
_VISIBLE_POSTS = (
    f"EXISTS (SELECT 1 FROM posts p WHERE p.event_id = e.id AND p.deleted = 0) AND {_READABLE_NODE}"
)
_VISIBLE_EVENTS = f"(e.type NOT IN ('post_updated', 'post_deleted') OR {_READABLE_NODE})"
_OPEN_NODE = (
    "EXISTS (SELECT 1 FROM nodes n JOIN channels c ON c.jid = n.channel"
    "  WHERE n.id = e.node_id AND c.access_model = 'open')"
)
# What an immediate answer serves for an event: a post as it is now (edited, say), any other
# event as it was logged. (Published items are the post as it was when committed.)
_CURRENT = "coalesce(p.body, e.payload)"
_OPEN_POSTS = (
    f"EXISTS (SELECT 1 FROM posts p WHERE p.event_id = e.id AND p.deleted = 0) AND {_OPEN_NODE}"
)
_BANNED_NODE = (
    "e.node_id IN (SELECT node_id FROM subscriptions WHERE jid = ? AND affiliation = 'outcast')"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Tx:
    """A write transaction's connection, noting whether it appended to the log."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.appended = False
        self.execute, self.fetchone, self.fetchall = conn.execute, conn.fetchone, conn.fetchall


class SqlStore:
    """The store the domain talks to (app.store.base.Store), over any `Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Called after every commit that appended to the log: the publisher's wake-up, made
        # here once rather than by each caller (a caller that forgot left posts unpublished
        # until the publisher's next look).
        self.on_commit: Callable[[], None] = lambda: None
        # Commits made by other processes on the same database, where the backend hears them.
        if hasattr(db, "on_append"):
            db.on_append = lambda: self.on_commit()
        # The publisher's progress, as announced by whichever process publishes.
        self.on_announce: Callable[[str], None] = lambda message: None
        db.on_announce = lambda message: self.on_announce(message)

    @property
    def label(self) -> str:
        return self.db.label

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[_Tx]:
        async with self.db.write() as conn:
            tx = _Tx(conn)
            yield tx
        if tx.appended:
            self.on_commit()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, check_names: Callable[[list[str]], list[str]] | None = None) -> None:
        """Connect, migrating to this version's schema (``check_names``: see the backend).
        An open that fails (a database from a later server, say) leaves nothing connected."""
        try:
            await self.db.open(check_names)
        except BaseException:
            await self.db.close()
            raise

    async def close(self) -> None:
        await self.db.close()

    async def schema_version(self) -> int:
        return await self.db.schema_version()

    # -- across processes --------------------------------------------------------------------

    async def try_lease(self, name: str) -> bool:
        return await self.db.try_lease(name)

    async def lease_held(self, name: str) -> bool:
        return await self.db.lease_held(name)

    async def release_lease(self, name: str) -> None:
        await self.db.release_lease(name)

    async def announce(self, message: str) -> None:
        await self.db.announce(message)

    # -- accounts and channels ---------------------------------------------------------------

    async def create_account(self, jid: str, password_hash: str, api_key: str, now: str) -> None:
        async with self._write() as tx:
            if await tx.fetchone("SELECT 1 FROM channels WHERE jid = ?", jid):
                raise Conflict(f"{jid} already exists")
            await tx.execute(
                "INSERT INTO accounts (jid, password_hash, api_key, created) VALUES (?,?,?,?)",
                jid,
                password_hash,
                api_key,
                now,
            )
            await self._insert_channel(tx, jid, jid, "", "", "open", "publisher", now)

    async def get_account(self, jid: str) -> Account | None:
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT jid, password_hash, api_key, credentials, banned IS NOT NULL"
                " FROM accounts WHERE jid = ? AND deleted IS NULL",
                jid,
            )
        return Account(row[0], row[1], row[2], int(row[3]), bool(row[4])) if row else None

    async def change_credentials(
        self,
        jid: str,
        password_hash: str | None = None,
        was: str | None = None,
        api_key: str | None = None,
    ) -> int | None:
        async with self._write() as tx:
            row = await tx.fetchone(
                "SELECT id, password_hash FROM accounts WHERE jid = ? AND deleted IS NULL", jid
            )
            if row is None or (was is not None and row[1] != was):
                return None
            if password_hash is not None:
                await tx.execute(
                    "UPDATE accounts SET password_hash = ? WHERE id = ?", password_hash, row[0]
                )
            if api_key is not None:
                await tx.execute("UPDATE accounts SET api_key = ? WHERE id = ?", api_key, row[0])
            await tx.execute(
                "UPDATE accounts SET credentials = credentials + 1 WHERE id = ?", row[0]
            )
            await tx.execute("DELETE FROM sessions WHERE jid = ?", jid)
            return int(row[0])

    async def delete_account(self, jid: str, was: str, now: str) -> int | None:
        async with self._write() as tx:
            row = await tx.fetchone(
                "SELECT id, password_hash FROM accounts WHERE jid = ? AND deleted IS NULL", jid
            )
            if row is None or row[1] != was:
                return None
            # No password hash matches '', and no API key is '!' and an id (keys are base64url).
            await tx.execute(
                "UPDATE accounts SET password_hash = '', api_key = ?,"
                " credentials = credentials + 1, deleted = ? WHERE id = ?",
                f"!{row[0]}",
                now,
                row[0],
            )
            for table in ("sessions", "queues", "subscriptions", "given_roles"):
                await tx.execute(f"DELETE FROM {table} WHERE jid = ?", jid)
            return int(row[0])

    async def set_banned(self, jid: str, banned: bool, now: str) -> int | None:
        async with self._write() as tx:
            row = await tx.fetchone(
                "SELECT id FROM accounts WHERE jid = ? AND deleted IS NULL", jid
            )
            if row is None:
                return None
            # Counted as a credential change: a stream's next link made before it is refused.
            await tx.execute(
                "UPDATE accounts SET banned = ?, credentials = credentials + 1 WHERE id = ?",
                now if banned else None,
                row[0],
            )
            await tx.execute("DELETE FROM sessions WHERE jid = ?", jid)
            return int(row[0])

    async def posts_by(self, jid: str) -> list[tuple[str, str, str]]:
        async with self.db.connection() as conn:
            rows = await conn.fetchall(
                "SELECT n.channel, n.name, p.id FROM posts p JOIN nodes n ON n.id = p.node_id"
                " WHERE p.author = ? AND p.deleted = 0 ORDER BY p.event_id",
                jid,
            )
        return [(r[0], r[1], r[2]) for r in rows]

    async def largest_nodes(self, limit: int) -> list[NodeSize]:
        async with self.db.connection() as conn:
            rows = await conn.fetchall(
                "SELECT n.channel, n.name, count(*), coalesce(sum(length(p.body)), 0)"
                " FROM posts p JOIN nodes n ON n.id = p.node_id WHERE p.deleted = 0"
                " GROUP BY n.id, n.channel, n.name ORDER BY 3 DESC, 4 DESC, 1, 2 LIMIT ?",
                limit,
            )
        return [NodeSize(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    async def create_channel(
        self,
        jid: str,
        owner: str,
        title: str,
        description: str,
        access_model: str,
        default_affiliation: str,
        now: str,
        max_owned: int = 0,
    ) -> None:
        """A topic channel; with ``max_owned``, Conflict if the owner has that many already."""
        async with self._write() as tx:
            if await tx.fetchone("SELECT 1 FROM channels WHERE jid = ?", jid):
                raise Conflict(f"channel {jid} already exists")
            if max_owned:
                (owned,) = await _one(
                    tx, "SELECT count(*) FROM channels WHERE owner = ? AND jid != owner", owner
                )
                if owned >= max_owned:
                    raise Conflict(f"a user may own at most {max_owned} topic channels")
            await self._insert_channel(
                tx, jid, owner, title, description, access_model, default_affiliation, now
            )

    async def _insert_channel(
        self,
        tx: _Tx,
        jid: str,
        owner: str,
        title: str,
        description: str,
        access_model: str,
        default_affiliation: str,
        now: str,
    ) -> None:
        await tx.execute(
            "INSERT INTO channels (jid, owner, title, description, access_model,"
            " default_affiliation, created) VALUES (?,?,?,?,?,?,?)",
            jid,
            owner,
            title,
            description,
            access_model,
            default_affiliation,
            now,
        )
        (node_id,) = await _one(
            tx, "INSERT INTO nodes (channel, name) VALUES (?, 'posts') RETURNING id", jid
        )
        await tx.execute(
            "INSERT INTO subscriptions (jid, node_id, affiliation) VALUES (?, ?, 'owner')",
            owner,
            node_id,
        )

    async def get_node(self, channel: str, name: str) -> NodeInfo | None:
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT n.id, n.channel, n.name, c.access_model,"
                " c.default_affiliation FROM nodes n JOIN channels c ON c.jid = n.channel"
                " WHERE n.channel = ? AND n.name = ?",
                channel,
                name,
            )
        return NodeInfo(*row) if row else None

    async def affiliation(self, jid: str, node_id: int) -> str | None:
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT affiliation FROM subscriptions WHERE jid = ? AND node_id = ?", jid, node_id
            )
        return row[0] if row else None

    async def given_role(self, jid: str, node_id: int) -> str | None:
        """The role the node's owner last gave ``jid`` (kept when they stop following)."""
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT affiliation FROM given_roles WHERE jid = ? AND node_id = ?", jid, node_id
            )
        return row[0] if row else None

    async def subscriptions(self, jid: str) -> dict[str, str]:
        async with self.db.connection() as conn:
            rows = await conn.fetchall(
                "SELECT n.channel || '/' || n.name, s.affiliation FROM subscriptions s"
                " JOIN nodes n ON n.id = s.node_id WHERE s.jid = ? ORDER BY 1",
                jid,
            )
        return dict(rows)

    async def apply_subscriptions(
        self,
        changes: list[SubscriptionChange],
        now: str,
        max_follows: int = 0,
        max_pending: int = 0,
    ) -> None:
        """Apply follows, role changes and unfollows, with their events, all or none. Each was
        decided from an affiliation that must still hold (else Conflict: a ban made meanwhile
        is never undone). With ``max_follows``, no account may end up following more nodes
        than that (bans do not count), nor with ``max_pending`` have more follow requests
        waiting."""
        async with self._write() as tx:
            for change in changes:
                row = await tx.fetchone(
                    "SELECT affiliation FROM subscriptions WHERE jid = ? AND node_id = ?",
                    change.jid,
                    change.node_id,
                )
                if (row[0] if row else None) != change.was:
                    raise Conflict(f"{change.jid}'s subscription changed meanwhile: try again")
                if change.affiliation is None:
                    await tx.execute(
                        "DELETE FROM subscriptions WHERE jid = ? AND node_id = ?",
                        change.jid,
                        change.node_id,
                    )
                else:
                    await tx.execute(
                        "INSERT INTO subscriptions (jid, node_id, affiliation) VALUES (?,?,?)"
                        " ON CONFLICT (jid, node_id)"
                        " DO UPDATE SET affiliation = excluded.affiliation",
                        change.jid,
                        change.node_id,
                        change.affiliation,
                    )
                if change.given and change.affiliation is not None:
                    await tx.execute(
                        "INSERT INTO given_roles (jid, node_id, affiliation) VALUES (?,?,?)"
                        " ON CONFLICT (jid, node_id)"
                        " DO UPDATE SET affiliation = excluded.affiliation",
                        change.jid,
                        change.node_id,
                        change.affiliation,
                    )
                for notice in change.notices:
                    await self._notify(tx, change.node_id, notice, now)
            for jid in {c.jid for c in changes} if max_follows else ():
                (count,) = await _one(
                    tx,
                    "SELECT count(*) FROM subscriptions WHERE jid = ? AND affiliation != 'outcast'",
                    jid,
                )
                if count > max_follows:
                    raise Conflict(
                        f"a user may follow at most {max_follows} nodes (own channel included)"
                    )
            for jid in {c.jid for c in changes if c.affiliation == PENDING} if max_pending else ():
                (count,) = await _one(
                    tx,
                    "SELECT count(*) FROM subscriptions WHERE jid = ? AND affiliation = ?",
                    jid,
                    PENDING,
                )
                if count > max_pending:
                    raise Conflict(f"a user may have at most {max_pending} follow requests waiting")

    async def subscribers(self, node_id: int) -> dict[str, str]:
        """Followers and their roles (pending requests are not followers yet)."""
        async with self.db.connection() as conn:
            rows = await conn.fetchall(
                "SELECT jid, affiliation FROM subscriptions WHERE node_id = ? AND affiliation != ?"
                " ORDER BY jid",
                node_id,
                PENDING,
            )
        return dict(rows)

    async def pending(self, node_id: int) -> list[str]:
        async with self.db.connection() as conn:
            rows = await conn.fetchall(
                "SELECT jid FROM subscriptions WHERE node_id = ? AND affiliation = ? ORDER BY jid",
                node_id,
                PENDING,
            )
        return [r[0] for r in rows]

    async def metadata(self, channel: str) -> dict[str, str]:
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT title, description, access_model, default_affiliation, owner, created"
                " FROM channels WHERE jid = ?",
                channel,
            )
        assert row is not None
        keys = ("title", "description", "access_model", "default_affiliation", "owner", "created")
        return dict(zip(keys, row, strict=True))

    async def set_metadata(self, channel: str, fields: dict[str, str]) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)  # names checked by the caller
        async with self._write() as tx:
            await tx.execute(
                f"UPDATE channels SET {assignments} WHERE jid = ?", *fields.values(), channel
            )

    # -- the log -----------------------------------------------------------------------------

    async def _append(
        self,
        tx: _Tx,
        type_: str,
        node_id: int | None,
        payload: str,
        now: str,
        subject: str | None = None,
    ) -> int:
        (event_id,) = await _one(
            tx,
            "INSERT INTO events (type, node_id, payload, created, subject) VALUES (?,?,?,?,?)"
            " RETURNING id",
            type_,
            node_id,
            payload,
            now,
            subject,
        )
        if not tx.appended:
            tx.appended = True
            await self.db.appended(tx.conn)
        return int(event_id)

    async def _append_event(
        self,
        tx: _Tx,
        type_: str,
        node_id: int | None,
        fields: dict[str, Any],
        now: str,
        subject: str | None = None,
    ) -> int:
        """An event whose JSON names its own cursor: ``{"type", "cursor", **fields}``."""
        event_id = await self._append(tx, type_, node_id, "", now, subject)
        payload = _dumps({"type": type_, "cursor": str(event_id), **fields})
        await tx.execute("UPDATE events SET payload = ? WHERE id = ?", payload, event_id)
        return event_id

    async def _deliver(
        self,
        tx: _Tx,
        event_id: int,
        prefix: str,
        accounts_sql: str,
        params: tuple[Any, ...],
        firehose: bool = False,
    ) -> None:
        """Deliver an event to the ``prefix`` channel of each account ``accounts_sql`` selects
        (as ``id``), and to the firehose if ``firehose``, each chained to the previous event on
        that channel; then to the Aloha queues' channels (``z<id>``, and ``zfirehose``) of the
        accounts it went to, if they have a queue."""
        recipients = f"SELECT '{prefix}' || r.id AS channel FROM ({accounts_sql}) r"
        if firehose:
            recipients += f" UNION ALL SELECT '{FIREHOSE}'"
        await tx.execute(
            "INSERT INTO deliveries (event_id, channel, prev_id)"
            " SELECT CAST(? AS BIGINT), c.channel, coalesce(h.last_id, 0)"
            f" FROM ({recipients}) c LEFT JOIN channel_heads h ON h.channel = c.channel",
            event_id,
            *params,
        )
        queues = (
            f"SELECT '{QUEUES}' || r.id AS channel FROM ({accounts_sql}) r"
            " WHERE EXISTS (SELECT 1 FROM queues q JOIN accounts a ON a.jid = q.jid"
            "  WHERE a.id = r.id AND q.last_poll + q.lifespan + ? >= ?)"
        )
        queue_params: tuple[Any, ...] = (*params, float(QUEUE_GRACE), time.time())
        if firehose:
            queues += (
                f" UNION ALL SELECT '{QUEUES}{FIREHOSE}' WHERE EXISTS"
                " (SELECT 1 FROM queues WHERE all_public_streams = 1)"
            )
        await tx.execute(
            "INSERT INTO deliveries (event_id, channel, prev_id)"
            " SELECT CAST(? AS BIGINT), c.channel, coalesce(h.last_id, 0)"
            f" FROM ({queues}) c LEFT JOIN channel_heads h ON h.channel = c.channel"
            " ON CONFLICT DO NOTHING",
            event_id,
            *queue_params,
        )
        await tx.execute(
            "INSERT INTO channel_heads (channel, last_id)"
            " SELECT channel, event_id FROM deliveries WHERE event_id = ?"
            " ON CONFLICT (channel) DO UPDATE SET last_id = excluded.last_id",
            event_id,
        )

    def _followers(self, roles: str) -> str:
        """SQL for the accounts (as ``id``) of node ?'s followers whose affiliation meets
        ``roles``."""
        return (
            "SELECT a.id FROM subscriptions s JOIN accounts a ON a.jid = s.jid"
            f" WHERE s.node_id = ? AND s.{roles}"
        )

    async def _notify(self, tx: _Tx, node_id: int, notice: Notice, now: str) -> int:
        event_id = await self._append_event(
            tx, notice.type, node_id, notice.fields, now, notice.subject
        )
        if notice.to.kind == "user":
            await self._deliver(
                tx, event_id, EVENTS, "SELECT id FROM accounts WHERE jid = ?", (notice.to.jid,)
            )
        elif notice.to.kind == "moderators":
            await self._deliver(tx, event_id, EVENTS, self._followers(_MODERATE), (node_id,))
        else:
            await self._deliver(tx, event_id, EVENTS, self._followers(MAY_READ), (node_id,))
        return event_id

    async def last_event_id(self) -> int:
        async with self.db.connection() as conn:
            (value,) = await _one(conn, "SELECT coalesce(max(id), 0) FROM events")
        return int(value)

    async def append_post(
        self,
        node: NodeInfo,
        post_id: str,
        author: str,
        payload: str,
        now: str,
        retry: RetryKey | None = None,
    ) -> PostWritten:
        """Log and deliver a post; with ``retry``, unless the author sent it already under
        that key (then that post, unchanged; a key reused for something else: Unprocessable)."""
        async with self._write() as tx:
            if retry is not None:
                sent = await tx.fetchone(
                    "SELECT k.fingerprint, k.event_id, p.body FROM idempotency_keys k"
                    " JOIN posts p ON p.event_id = k.event_id"
                    " WHERE k.author = ? AND k.key = ? AND k.created >= ?",
                    author,
                    retry.key,
                    retry.now - retry.window,
                )
                if sent is not None:
                    if sent[0] != retry.fingerprint:
                        raise Unprocessable(
                            "this Idempotency-Key was used for another request: use a new key"
                        )
                    return PostWritten(int(sent[1]), sent[2], True)
            event_id = await self._append(tx, "post", node.id, payload, now, post_id)
            await tx.execute(
                "INSERT INTO posts (id, node_id, event_id, author, body) VALUES (?,?,?,?,?)",
                post_id,
                node.id,
                event_id,
                author,
                payload,
            )
            await self._deliver(
                tx,
                event_id,
                POSTS,
                self._followers(MAY_READ),
                (node.id,),
                firehose=node.access_model == "open",
            )
            if retry is not None:
                await self._remember_key(tx, author, retry, event_id)
            return PostWritten(event_id, payload, False)

    async def _remember_key(self, tx: _Tx, author: str, retry: RetryKey, event_id: int) -> None:
        expired = retry.now - retry.window
        # A few expired keys go with each new one: the table stays as large as a window's.
        await tx.execute(
            "DELETE FROM idempotency_keys WHERE (author, key) IN (SELECT author, key"
            " FROM idempotency_keys WHERE created < ? LIMIT 16)",
            expired,
        )
        await tx.execute(
            "INSERT INTO idempotency_keys (author, key, fingerprint, event_id, created)"
            " VALUES (?,?,?,?,?) ON CONFLICT (author, key) DO UPDATE SET"
            " fingerprint = excluded.fingerprint, event_id = excluded.event_id,"
            " created = excluded.created",
            author,
            retry.key,
            retry.fingerprint,
            event_id,
            retry.now,
        )

    async def update_post(
        self, node_id: int, post_id: str, body: str, notice: Notice, now: str
    ) -> None:
        async with self._write() as tx:
            await tx.execute(
                "UPDATE posts SET body = ? WHERE id = ? AND node_id = ?", body, post_id, node_id
            )
            await self._notify(tx, node_id, notice, now)

    async def get_post(self, node_id: int, post_id: str) -> tuple[str, str] | None:
        """The post's author and JSON body, unless it does not exist or was deleted."""
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT author, body FROM posts WHERE id = ? AND node_id = ? AND deleted = 0",
                post_id,
                node_id,
            )
        return (row[0], row[1]) if row else None

    async def list_posts(self, node_id: int, limit: int, after: str | None) -> list[str] | None:
        """Post bodies, newest first; those older than post ``after``, if given (None: unknown)."""
        before = 2**63 - 1
        async with self.db.read() as conn:
            if after is not None:
                row = await conn.fetchone(
                    "SELECT event_id FROM posts WHERE id = ? AND node_id = ?", after, node_id
                )
                if row is None:
                    return None
                before = row[0]
            rows = await conn.fetchall(
                "SELECT body FROM posts WHERE node_id = ? AND deleted = 0 AND event_id < ?"
                " ORDER BY event_id DESC LIMIT ?",
                node_id,
                before,
                limit,
            )
        return [r[0] for r in rows]

    async def delete_post(
        self, node_id: int, post_id: str, notice: Notice, now: str, erase: tuple[str, ...]
    ) -> None:
        """Mark the post deleted and remove the ``erase`` fields (its text) from it and from
        every event that held it; the events stay. The backend then makes sure the old bytes
        do not stay where it can reach them (see its ``erased``)."""
        async with self._write() as tx:
            row = await tx.fetchone(
                "SELECT body FROM posts WHERE id = ? AND node_id = ?", post_id, node_id
            )
            if row is not None:
                await tx.execute(
                    "UPDATE posts SET deleted = 1, body = ? WHERE id = ? AND node_id = ?",
                    _without(row[0], erase),
                    post_id,
                    node_id,
                )
            for event_id, type_, payload in await tx.fetchall(
                "SELECT id, type, payload FROM events WHERE subject = ?"
                " AND type IN ('post', 'post_updated')",
                post_id,
            ):
                erased = _without(payload, erase, "post" if type_ == "post_updated" else None)
                await tx.execute("UPDATE events SET payload = ? WHERE id = ?", erased, event_id)
            await self._notify(tx, node_id, notice, now)
        await self.db.erased()

    # -- feeds ---------------------------------------------------------------------------

    async def read_feed(self, feed: str, jid: str | None, since: int, limit: int) -> FeedState:
        """In one snapshot: what was delivered to a feed's channel after ``since`` that the
        reader may still see, and that channel with the last id delivered on it (the prev-id
        of a hold made from this answer).

        ``feed`` is "posts" or "events" (the channel of account ``jid``) or "firehose".
        """
        hold_channel = None
        async with self.db.read() as conn:
            (last_id,) = await _one(conn, "SELECT coalesce(max(id), 0) FROM events")
            account_id = None
            params: tuple[Any, ...]
            if feed == "firehose":
                channel, visible, params = FIREHOSE, _OPEN_POSTS, ()
                if jid is not None and await _banned_somewhere(conn, jid):
                    # The firehose is public, but not to a banned user logged in as themselves:
                    # their hold is on the hint channel, so Pushpin asks here, which filters.
                    visible, params = f"{_OPEN_POSTS} AND NOT {_BANNED_NODE}", (jid,)
                    hold_channel = FIREHOSE_HINT
            else:
                (account_id,) = await _one(conn, "SELECT id FROM accounts WHERE jid = ?", jid)
                channel = f"{POSTS if feed == 'posts' else EVENTS}{account_id}"
                visible = _VISIBLE_POSTS if feed == "posts" else _VISIBLE_EVENTS
                params = (jid,)
            rows = await conn.fetchall(
                f"SELECT e.id, {_CURRENT} FROM deliveries d JOIN events e ON e.id = d.event_id"
                " LEFT JOIN posts p ON p.event_id = e.id"
                f" WHERE d.channel = ? AND d.event_id > ? AND {visible}"
                " ORDER BY d.event_id LIMIT ?",
                channel,
                since,
                *params,
                limit,
            )
            head = await _head(conn, channel)
            kept_from = await _kept_from(conn, [channel], since)
        if jid is not None and account_id is not None and since <= last_id:
            # Where the account was when last online: what /history starts from. A cursor
            # ahead of the log is refused by the caller, and must not move it.
            await self.mark_online(jid, since)
        items = [FeedItem(int(r[0]), r[1]) for r in rows]
        return FeedState(int(last_id), items, hold_channel or channel, head, kept_from)

    async def socket_channel(self, jid: str) -> str:
        async with self.db.read() as conn:
            (account_id,) = await _one(conn, "SELECT id FROM accounts WHERE jid = ?", jid)
        return f"{SOCKETS}{account_id}"

    async def mark_online(self, jid: str, cursor: int) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE accounts SET last_online = ? WHERE jid = ? AND last_online < ?",
                cursor,
                jid,
                cursor,
            )

    async def history(self, jid: str, since: int | None, limit: int) -> History:
        """The account's posts and events after ``since`` (default: where it was last online),
        posts wrapped as ``{"type": "post", "cursor", "post"}``; and the cursor used."""
        async with self.db.read() as conn:
            account_id, last_online = await _one(
                conn, "SELECT id, last_online FROM accounts WHERE jid = ?", jid
            )
            start = int(last_online if since is None else since)
            posts, events = f"{POSTS}{account_id}", f"{EVENTS}{account_id}"
            rows = await conn.fetchall(
                f"SELECT e.id, e.type, {_CURRENT} FROM deliveries d"
                " JOIN events e ON e.id = d.event_id LEFT JOIN posts p ON p.event_id = e.id"
                " WHERE d.channel IN (?, ?) AND d.event_id > ? AND ("
                f"  (d.channel = ? AND {_VISIBLE_POSTS}) OR (d.channel = ? AND {_VISIBLE_EVENTS}))"
                " ORDER BY d.event_id LIMIT ?",
                posts,
                events,
                start,
                posts,
                jid,
                events,
                jid,
                limit,
            )
            kept_from = await _kept_from(conn, [posts, events], start)
        items = [
            FeedItem(id_, f'{{"type":"post","cursor":"{id_}","post":{payload}}}')
            if type_ == "post"
            else FeedItem(id_, payload)
            for id_, type_, payload in rows
        ]
        return History(start, items, kept_from)

    # -- Aloha queues ----------------------------------------------------------------------

    async def create_queue(self, queue: Queue, max_alive: int = 0, grace: float = 0) -> int:
        """Store a new queue; it starts at the end of the log (returned), in the same
        transaction, so that nothing committed after it is missed. With ``max_alive``,
        Conflict if the account has that many queues alive already."""
        async with self._write() as tx:
            if max_alive:
                (alive,) = await _one(
                    tx,
                    "SELECT count(*) FROM queues WHERE jid = ? AND last_poll + lifespan + ? >= ?",
                    queue.jid,
                    float(grace),
                    queue.last_poll,
                )
                if alive >= max_alive:
                    raise Conflict(
                        f"a user may have at most {max_alive} event queues: delete one"
                        " (DELETE /api/v1/events) or let it expire"
                    )
            (last,) = await _one(tx, "SELECT coalesce(max(id), 0) FROM events")
            await tx.execute(
                "INSERT INTO queues (id, jid, event_types, narrow, all_public_streams, lifespan,"
                " acked, last_poll) VALUES (?,?,?,?,?,?,?,?)",
                queue.id,
                queue.jid,
                queue.event_types,
                queue.narrow,
                int(queue.all_public_streams),
                queue.lifespan,
                last,
                queue.last_poll,
            )
            return int(last)

    async def poll_queue(
        self, queue_id: str, jid: str, ack: int, now: float, limit: int, grace: float = 0
    ) -> QueuePoll | None:
        """Acknowledge up to ``ack`` and read what follows; None for a queue that is unknown,
        expired or someone else's. A queue expires ``lifespan`` seconds after its last poll
        ended: ``grace`` more than after it began, for a poll may be held that long."""
        async with self._write() as tx:
            row = await tx.fetchone(
                "SELECT id, jid, event_types, narrow, all_public_streams, lifespan, acked,"
                " last_poll FROM queues WHERE id = ?",
                queue_id,
            )
            if row is None or row[1] != jid:
                return None
            queue = Queue(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], row[7])
            if queue.last_poll + queue.lifespan + grace < now:
                await tx.execute("DELETE FROM queues WHERE id = ?", queue_id)
                return None
            acked = max(queue.acked, ack)
            (account_id,) = await _one(tx, "SELECT id FROM accounts WHERE jid = ?", jid)
            channels = [f"{QUEUES}{account_id}"]
            if queue.all_public_streams:
                channels.append(f"{QUEUES}{FIREHOSE}")
            if acked < await _kept_from(tx, channels, acked):
                # Retention pruned events it had not taken: as a queue Zulip garbage-collected.
                await tx.execute("DELETE FROM queues WHERE id = ?", queue_id)
                return None
            await tx.execute(
                "UPDATE queues SET acked = ?, last_poll = ? WHERE id = ?", acked, now, queue_id
            )
            marks = ",".join("?" * len(channels))
            rows = await tx.fetchall(
                f"SELECT DISTINCT e.id, e.type, {_CURRENT}, e.node_id,"
                "  (SELECT s.event_id FROM posts s WHERE s.id = e.subject)"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " LEFT JOIN posts p ON p.event_id = e.id"
                f" WHERE d.channel IN ({marks}) AND d.event_id > ?"
                " AND (e.type != 'post' OR p.deleted = 0)"
                f" AND (e.type IN ('subscription', 'follow_request') OR {_READABLE_NODE}"
                f"  OR (d.channel = '{QUEUES}{FIREHOSE}' AND {_OPEN_NODE} AND NOT {_BANNED_NODE}))"
                " ORDER BY e.id LIMIT ?",
                *channels,
                acked,
                jid,
                jid,
                limit,
            )
            heads = [(channel, await _head(tx, channel)) for channel in channels]
            events = [QueueEvent(*r) for r in rows]
            return QueuePoll(queue._replace(acked=acked), events, heads)

    async def skip_queue(self, queue_id: str, to: int) -> None:
        """Nothing up to ``to`` matches the queue's filters: start its next read after it."""
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE queues SET acked = ? WHERE id = ? AND acked < ?", to, queue_id, to
            )

    async def delete_queue(self, queue_id: str, jid: str, now: str) -> bool:
        """Delete a queue, and wake its account's held polls (a hint on its queue channel), so
        that one still held on this queue hears BAD_EVENT_QUEUE_ID now, not at its timeout."""
        async with self._write() as tx:
            deleted = await tx.execute("DELETE FROM queues WHERE id = ? AND jid = ?", queue_id, jid)
            if deleted:
                event_id = await self._append_event(
                    tx, "queue_deleted", None, {"queue_id": queue_id}, now
                )
                await tx.execute(
                    "INSERT INTO deliveries (event_id, channel, prev_id)"
                    f" SELECT CAST(? AS BIGINT), '{QUEUES}' || a.id, coalesce(h.last_id, 0)"
                    f" FROM accounts a LEFT JOIN channel_heads h ON h.channel = '{QUEUES}' || a.id"
                    " WHERE a.jid = ?",
                    event_id,
                    jid,
                )
                await tx.execute(
                    "INSERT INTO channel_heads (channel, last_id)"
                    " SELECT channel, event_id FROM deliveries WHERE event_id = ?"
                    " ON CONFLICT (channel) DO UPDATE SET last_id = excluded.last_id",
                    event_id,
                )
            return deleted > 0

    async def expire_queues(self, now: float, grace: float, limit: int) -> int:
        """Delete up to ``limit`` queues that expired; how many."""
        async with self.db.connection() as conn:
            return await conn.execute(
                "DELETE FROM queues WHERE id IN (SELECT id FROM queues"
                " WHERE last_poll + lifespan + ? < ? LIMIT ?)",
                float(grace),
                now,
                limit,
            )

    # -- retention: the log is pruned from its oldest end ------------------------------------

    async def prune_log(
        self, created_before: str, keep_events: int, max_events: int, max_deliveries: int
    ) -> Pruned:
        """One batch, in one write transaction: the ids to prune are decided under the write
        lock and deleted as a range, so processes that prune at once prune each batch once."""
        async with self.db.write() as tx:
            oldest, newest = await _one(tx, "SELECT min(id), max(id) FROM events")
            if oldest is None:
                return Pruned(0, 0, 0)
            oldest, newest = int(oldest), int(newest)
            # The newest event stays: its id is the log's end, which every cursor is checked
            # against, and which a new queue starts from.
            through = min(newest - 1, oldest + max_events - 1)
            by_count = newest - keep_events if keep_events else 0  # over the cap through it
            if through > by_count:  # past the cap, only what is old enough goes
                if not created_before:
                    through = by_count
                else:
                    (young,) = await _one(
                        tx,
                        "SELECT min(id) FROM events WHERE id > ? AND id <= ? AND created >= ?",
                        by_count,
                        through,
                        created_before,
                    )
                    if young is not None:
                        through = int(young) - 1
            row = await tx.fetchone(
                "SELECT event_id FROM deliveries WHERE event_id <= ?"
                " ORDER BY event_id, channel LIMIT 1 OFFSET ?",
                through,
                max_deliveries,
            )
            if row is not None:
                # An event with more deliveries than a batch goes alone, in one transaction
                # (the one that wrote them was as large).
                through = max(int(row[0]) - 1, oldest)
            if through < oldest:
                return Pruned(0, 0, 0)
            await tx.execute(
                "UPDATE channel_heads SET pruned = d.last FROM (SELECT channel,"
                " max(event_id) AS last FROM deliveries WHERE event_id <= ? GROUP BY channel) d"
                " WHERE channel_heads.channel = d.channel",
                through,
            )
            deliveries = await tx.execute("DELETE FROM deliveries WHERE event_id <= ?", through)
            events = await tx.execute("DELETE FROM events WHERE id <= ?", through)
        return Pruned(events, deliveries, through)

    async def oldest_event_id(self) -> int:
        async with self.db.connection() as conn:
            (value,) = await _one(conn, "SELECT coalesce(min(id), 0) FROM events")
        return int(value)

    async def restored(self, handed_out: int, now: str) -> int:
        async with self.db.write() as tx:
            (last,) = await _one(tx, "SELECT coalesce(max(id), 0) FROM events")
            last = int(last)
            if last >= handed_out:
                return last
            # An event just past the high-water mark, delivered nowhere: a cursor no client
            # held before, from which readers in the gap go on; the log's end is there (a
            # cursor in the gap is not "ahead of the log") and the next ids follow it.
            marker = handed_out + 1
            await tx.execute(
                "INSERT INTO log_gaps (after, through, restored) VALUES (?, ?, ?)",
                last,
                marker,
                now,
            )
            payload = _dumps({"type": "restored", "cursor": str(marker), "after": str(last)})
            await tx.execute(
                "INSERT INTO events (id, type, node_id, payload, created) VALUES (?,?,?,?,?)",
                marker,
                "restored",
                None,
                payload,
                now,
            )
            await self.db.ids_past(tx, marker)
        return last

    async def open_queues(self, now: float) -> int:
        async with self.db.connection() as conn:
            (count,) = await _one(
                conn, "SELECT count(*) FROM queues WHERE last_poll + lifespan >= ?", now
            )
        return int(count)

    # -- rate limits -----------------------------------------------------------------------

    async def take_slot(self, name: str, key: str, limit: int, window: float, now: float) -> float:
        """Count one for ``key`` under limit ``name`` (at most ``limit`` a ``window``) and
        answer 0; or, at the limit, count nothing and answer the seconds until a slot frees.
        One check and count per key at a time, across processes: no concurrency passes it."""
        async with self.db.keyed(f"{name}\x00{key}") as conn:
            # The limit-th newest slot: taken within the window, it makes ``limit`` there.
            # (Read from the newest down, so the cost is bounded by the limit, not by history.)
            row = await conn.fetchone(
                "SELECT at FROM rate_slots WHERE name = ? AND key = ?"
                " ORDER BY at DESC LIMIT 1 OFFSET ?",
                name,
                key,
                limit - 1,
            )
            if row is not None and float(row[0]) > now - window:
                return float(row[0]) + window - now
            await conn.execute(
                "INSERT INTO rate_slots (name, key, at) VALUES (?, ?, ?)", name, key, now
            )
            return 0.0

    async def give_back_slot(self, name: str, key: str) -> None:
        """Uncount the latest slot taken for ``key`` (what it was taken for went well)."""
        async with self.db.keyed(f"{name}\x00{key}") as conn:
            await conn.execute(
                "DELETE FROM rate_slots WHERE id = (SELECT id FROM rate_slots"
                " WHERE name = ? AND key = ? ORDER BY at DESC, id DESC LIMIT 1)",
                name,
                key,
            )

    async def prune_slots(self, before: float) -> int:
        """Forget the slots taken before ``before`` (older than every window); how many."""
        async with self.db.connection() as conn:
            return await conn.execute("DELETE FROM rate_slots WHERE at < ?", before)

    # -- browser sessions --------------------------------------------------------------------

    async def create_session(
        self, session_id: str, jid: str, now: float, expires: float, max_alive: int
    ) -> None:
        # One login of an account at a time counts and trims its sessions, across processes.
        async with self.db.keyed(f"sessions\x00{jid}") as conn:
            await conn.execute(
                "INSERT INTO sessions (id, jid, created, expires) VALUES (?, ?, ?, ?)",
                session_id,
                jid,
                now,
                expires,
            )
            await conn.execute(
                "DELETE FROM sessions WHERE jid = ? AND id NOT IN (SELECT id FROM sessions"
                " WHERE jid = ? ORDER BY expires DESC, id LIMIT ?)",
                jid,
                jid,
                max_alive,
            )

    async def session(self, session_id: str, now: float) -> SessionRow | None:
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT jid, expires FROM sessions WHERE id = ? AND expires > ?", session_id, now
            )
        return SessionRow(row[0], float(row[1])) if row else None

    async def end_session(self, session_id: str) -> bool:
        async with self.db.connection() as conn:
            return await conn.execute("DELETE FROM sessions WHERE id = ?", session_id) > 0

    async def prune_sessions(self, now: float) -> int:
        """Forget the sessions expired by ``now`` (refused already); how many."""
        async with self.db.connection() as conn:
            return await conn.execute("DELETE FROM sessions WHERE expires <= ?", now)

    # -- the publisher's outbox: the log itself ----------------------------------------------

    async def deliveries_after(self, position: Position, limit: int) -> list[Delivery]:
        async with self.db.connection() as conn:
            rows = await conn.fetchall(
                "SELECT d.event_id, d.channel, d.prev_id, e.payload,"
                "  EXISTS (SELECT 1 FROM posts p WHERE p.event_id = e.id AND p.deleted = 1)"
                " FROM deliveries d"
                " JOIN events e ON e.id = d.event_id WHERE (d.event_id, d.channel) > (?, ?)"
                " ORDER BY d.event_id, d.channel LIMIT ?",
                position.event_id,
                position.channel,
                limit,
            )
        return [Delivery(e, c, prev, payload, bool(gone)) for e, c, prev, payload, gone in rows]

    async def backlog(self, position: Position, limit: int) -> tuple[int, str | None]:
        """How many deliveries follow ``position`` (counted up to ``limit``), and when the
        first of them was logged (None: none)."""
        async with self.db.read() as conn:
            (count,) = await _one(
                conn,
                "SELECT count(*) FROM (SELECT 1 FROM deliveries"
                " WHERE (event_id, channel) > (?, ?) LIMIT ?) b",
                position.event_id,
                position.channel,
                limit,
            )
            row = await conn.fetchone(
                "SELECT e.created FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE (d.event_id, d.channel) > (?, ?) ORDER BY d.event_id, d.channel LIMIT 1",
                position.event_id,
                position.channel,
            )
        return int(count), row[0] if row else None

    async def publish_position(self, target: str) -> Position | None:
        async with self.db.connection() as conn:
            row = await conn.fetchone(
                "SELECT event_id, channel FROM publish_cursors WHERE target = ?", target
            )
        return Position(*row) if row else None

    async def save_publish_position(self, target: str, position: Position) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO publish_cursors (target, event_id, channel) VALUES (?, ?, ?)"
                " ON CONFLICT (target) DO UPDATE"
                " SET event_id = excluded.event_id, channel = excluded.channel",
                target,
                position.event_id,
                position.channel,
            )


async def _one(conn: Connection | _Tx, sql: str, *params: Any) -> Row:
    """The one row a statement answers (one that answers none is a bug here)."""
    row = await conn.fetchone(sql, *params)
    assert row is not None, sql
    return row


async def _head(conn: Connection | _Tx, channel: str) -> int:
    row = await conn.fetchone("SELECT last_id FROM channel_heads WHERE channel = ?", channel)
    return int(row[0]) if row else 0


async def _kept_from(conn: Connection | _Tx, channels: list[str], since: int) -> int:
    """Where a reader at ``since`` may go on from without having lost anything: the last id
    pruned from any of ``channels``, or the end of a restore's gap that ``since`` is in (the
    events it was the cursor of are gone: app/admin.py)."""
    marks = ",".join("?" * len(channels))
    # One statement, as before restores existed: a feed read makes no more round trips.
    row = await conn.fetchone(
        f"SELECT max(mark) FROM (SELECT pruned AS mark FROM channel_heads"
        f" WHERE channel IN ({marks}) UNION ALL SELECT through AS mark FROM log_gaps"
        " WHERE after < ? AND through > ?) marks",
        *channels,
        since,
        since,
    )
    return int(row[0]) if row and row[0] is not None else 0


async def _banned_somewhere(conn: Connection, jid: str) -> bool:
    row = await conn.fetchone(
        "SELECT 1 FROM subscriptions WHERE jid = ? AND affiliation = 'outcast' LIMIT 1", jid
    )
    return row is not None


def _without(payload: str, fields: tuple[str, ...], inside: str | None = None) -> str:
    """A JSON object (or its member ``inside``) without ``fields``, its keys kept in order."""
    value = json.loads(payload)
    target = value.get(inside) if inside else value
    if isinstance(target, dict):
        for name in fields:
            target.pop(name, None)
    return _dumps(value)
