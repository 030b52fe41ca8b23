"""The embedded store: one SQLite file in WAL mode, used from the event loop's own thread.

Every call runs to its end without yielding, so calls are serialised (the log's ids are assigned
in commit order). Each is short (a few indexed queries; commits do not wait for fsync in WAL
mode with synchronous=NORMAL), so running them inline costs the loop less than handing them to
a thread: measured at 1,000 posts a second, calls queued for a store thread waited 10 to 18 ms
on average for the interpreter lock while the thread itself was busy half the time
(docs/performance.md).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from app.errors import Conflict, Unprocessable
from app.model import FIREHOSE, FIREHOSE_HINT, PENDING
from app.store.base import (
    Account,
    Delivery,
    FeedItem,
    FeedState,
    NodeInfo,
    Notice,
    Position,
    PostWritten,
    Queue,
    QueueEvent,
    QueuePoll,
    RetryKey,
    SubscriptionChange,
)
from app.store.schema import MIGRATIONS, NAMES_NORMALISED

# The Pushpin channel of an account (a, in queries): every post it may see is published there.
USER_CHANNEL = "'u' || a.id"

# The followers whose feeds carry a node's posts: an allow-list, so that a role added later
# (pending, for private channels) sees nothing until it is added here.
MAY_READ = "affiliation IN ('owner', 'moderator', 'publisher', 'member')"
_MODERATE = "affiliation IN ('owner', 'moderator')"
# The Aloha queues' channel that follows a delivery d's channel: u5 and e5 give z5.
_QUEUE_CHANNEL = (
    f"CASE WHEN d.channel = '{FIREHOSE}' THEN 'z{FIREHOSE}' ELSE 'z' || substr(d.channel, 2) END"
)
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
# A queue counts as alive for deliveries this long past its lifespan (a poll may be held).
QUEUE_GRACE = 300
_NOW_EPOCH = "((julianday('now') - 2440587.5) * 86400.0)"
_OPEN_POSTS = (
    f"EXISTS (SELECT 1 FROM posts p WHERE p.event_id = e.id AND p.deleted = 0) AND {_OPEN_NODE}"
)
_BANNED_NODE = (
    "e.node_id IN (SELECT node_id FROM subscriptions WHERE jid = ? AND affiliation = 'outcast')"
)

P = ParamSpec("P")
T = TypeVar("T")


def _serialised(
    fn: Callable[Concatenate[SqliteStore, P], T],
) -> Callable[Concatenate[SqliteStore, P], Coroutine[Any, Any, T]]:
    """The store's calls are coroutines (a store on a server would await the network); this
    one runs each inline, to its end."""

    async def wrapper(self: SqliteStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return fn(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        # Called after every commit that appended to the log: the publisher's wake-up, made
        # here once rather than by each caller (a caller that forgot left posts unpublished
        # until the publisher's next look).
        self.on_commit: Callable[[], None] = lambda: None
        self._appended = False

    # -- lifecycle ---------------------------------------------------------------------------

    @_serialised
    def open(self, check_names: Callable[[list[str]], list[str]] | None = None) -> None:
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
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store is not open"
        return self._db

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
            with self._tx():
                # Another process may have migrated while we waited for the write lock.
                if self.db.execute("PRAGMA user_version").fetchone()[0] > number:
                    continue
                if number + 1 == NAMES_NORMALISED:
                    self._check_names(check_names)
                for statement in _statements(MIGRATIONS[number]):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={number + 1}")

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

    def _tx(self) -> _Transaction:
        return _Transaction(self)

    @_serialised
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    # -- accounts and channels ---------------------------------------------------------------

    @_serialised
    def create_account(self, jid: str, password_hash: str, api_key: str, now: str) -> None:
        with self._tx():
            if self.db.execute("SELECT 1 FROM channels WHERE jid = ?", (jid,)).fetchone():
                raise Conflict(f"{jid} already exists")
            self.db.execute(
                "INSERT INTO accounts (jid, password_hash, api_key, created) VALUES (?,?,?,?)",
                (jid, password_hash, api_key, now),
            )
            self._insert_channel(jid, jid, "", "", "open", "publisher", now)

    @_serialised
    def get_account(self, jid: str) -> Account | None:
        row = self.db.execute(
            "SELECT jid, password_hash, api_key FROM accounts WHERE jid = ?", (jid,)
        ).fetchone()
        return Account(*row) if row else None

    @_serialised
    def create_channel(
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
        with self._tx():
            if self.db.execute("SELECT 1 FROM channels WHERE jid = ?", (jid,)).fetchone():
                raise Conflict(f"channel {jid} already exists")
            if max_owned:
                (owned,) = self.db.execute(
                    "SELECT count(*) FROM channels WHERE owner = ? AND jid != owner", (owner,)
                ).fetchone()
                if owned >= max_owned:
                    raise Conflict(f"a user may own at most {max_owned} topic channels")
            self._insert_channel(
                jid, owner, title, description, access_model, default_affiliation, now
            )

    def _insert_channel(
        self,
        jid: str,
        owner: str,
        title: str,
        description: str,
        access_model: str,
        default_affiliation: str,
        now: str,
    ) -> None:
        self.db.execute(
            "INSERT INTO channels (jid, owner, title, description, access_model,"
            " default_affiliation, created) VALUES (?,?,?,?,?,?,?)",
            (jid, owner, title, description, access_model, default_affiliation, now),
        )
        node_id = self.db.execute(
            "INSERT INTO nodes (channel, name) VALUES (?, 'posts')",
            (jid,),
        ).lastrowid
        self.db.execute(
            "INSERT INTO subscriptions (jid, node_id, affiliation) VALUES (?, ?, 'owner')",
            (owner, node_id),
        )

    @_serialised
    def get_node(self, channel: str, name: str) -> NodeInfo | None:
        row = self.db.execute(
            "SELECT n.id, n.channel, n.name, c.access_model,"
            " c.default_affiliation FROM nodes n JOIN channels c ON c.jid = n.channel"
            " WHERE n.channel = ? AND n.name = ?",
            (channel, name),
        ).fetchone()
        return NodeInfo(*row) if row else None

    @_serialised
    def affiliation(self, jid: str, node_id: int) -> str | None:
        row = self.db.execute(
            "SELECT affiliation FROM subscriptions WHERE jid = ? AND node_id = ?", (jid, node_id)
        ).fetchone()
        return row[0] if row else None

    @_serialised
    def given_role(self, jid: str, node_id: int) -> str | None:
        """The role the node's owner last gave ``jid`` (kept when they stop following)."""
        row = self.db.execute(
            "SELECT affiliation FROM given_roles WHERE jid = ? AND node_id = ?", (jid, node_id)
        ).fetchone()
        return row[0] if row else None

    @_serialised
    def subscriptions(self, jid: str) -> dict[str, str]:
        rows = self.db.execute(
            "SELECT n.channel || '/' || n.name, s.affiliation FROM subscriptions s"
            " JOIN nodes n ON n.id = s.node_id WHERE s.jid = ? ORDER BY 1",
            (jid,),
        ).fetchall()
        return dict(rows)

    @_serialised
    def apply_subscriptions(
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
        with self._tx():
            for change in changes:
                row = self.db.execute(
                    "SELECT affiliation FROM subscriptions WHERE jid = ? AND node_id = ?",
                    (change.jid, change.node_id),
                ).fetchone()
                if (row[0] if row else None) != change.was:
                    raise Conflict(f"{change.jid}'s subscription changed meanwhile: try again")
                if change.affiliation is None:
                    self.db.execute(
                        "DELETE FROM subscriptions WHERE jid = ? AND node_id = ?",
                        (change.jid, change.node_id),
                    )
                else:
                    self.db.execute(
                        "INSERT INTO subscriptions (jid, node_id, affiliation) VALUES (?,?,?)"
                        " ON CONFLICT (jid, node_id)"
                        " DO UPDATE SET affiliation = excluded.affiliation",
                        (change.jid, change.node_id, change.affiliation),
                    )
                if change.given and change.affiliation is not None:
                    self.db.execute(
                        "INSERT INTO given_roles (jid, node_id, affiliation) VALUES (?,?,?)"
                        " ON CONFLICT (jid, node_id)"
                        " DO UPDATE SET affiliation = excluded.affiliation",
                        (change.jid, change.node_id, change.affiliation),
                    )
                for notice in change.notices:
                    self._notify(change.node_id, notice, now)
            for jid in {c.jid for c in changes} if max_follows else ():
                (count,) = self.db.execute(
                    "SELECT count(*) FROM subscriptions WHERE jid = ? AND affiliation != 'outcast'",
                    (jid,),
                ).fetchone()
                if count > max_follows:
                    raise Conflict(
                        f"a user may follow at most {max_follows} nodes (own channel included)"
                    )
            for jid in {c.jid for c in changes if c.affiliation == PENDING} if max_pending else ():
                (count,) = self.db.execute(
                    "SELECT count(*) FROM subscriptions WHERE jid = ? AND affiliation = ?",
                    (jid, PENDING),
                ).fetchone()
                if count > max_pending:
                    raise Conflict(f"a user may have at most {max_pending} follow requests waiting")

    @_serialised
    def subscribers(self, node_id: int) -> dict[str, str]:
        """Followers and their roles (pending requests are not followers yet)."""
        rows = self.db.execute(
            "SELECT jid, affiliation FROM subscriptions WHERE node_id = ? AND affiliation != ?"
            " ORDER BY jid",
            (node_id, PENDING),
        ).fetchall()
        return dict(rows)

    @_serialised
    def pending(self, node_id: int) -> list[str]:
        rows = self.db.execute(
            "SELECT jid FROM subscriptions WHERE node_id = ? AND affiliation = ? ORDER BY jid",
            (node_id, PENDING),
        ).fetchall()
        return [r[0] for r in rows]

    @_serialised
    def metadata(self, channel: str) -> dict[str, str]:
        row = self.db.execute(
            "SELECT title, description, access_model, default_affiliation, owner, created"
            " FROM channels WHERE jid = ?",
            (channel,),
        ).fetchone()
        keys = ("title", "description", "access_model", "default_affiliation", "owner", "created")
        return dict(zip(keys, row, strict=True))

    @_serialised
    def set_metadata(self, channel: str, fields: dict[str, str]) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)  # names checked by the caller
        with self._tx():
            self.db.execute(
                f"UPDATE channels SET {assignments} WHERE jid = ?", (*fields.values(), channel)
            )

    # -- the log -----------------------------------------------------------------------------

    def _append(
        self, type_: str, node_id: int | None, payload: str, now: str, subject: str | None = None
    ) -> int:
        assert self.db.in_transaction, "the log is appended to inside a transaction only"
        self._appended = True
        event_id = self.db.execute(
            "INSERT INTO events (type, node_id, payload, created, subject) VALUES (?,?,?,?,?)",
            (type_, node_id, payload, now, subject),
        ).lastrowid
        assert event_id is not None
        return event_id

    def _append_event(
        self,
        type_: str,
        node_id: int | None,
        fields: dict[str, Any],
        now: str,
        subject: str | None = None,
    ) -> int:
        """An event whose JSON names its own cursor: ``{"type", "cursor", **fields}``."""
        event_id = self._append(type_, node_id, "", now, subject)
        payload = json.dumps(
            {"type": type_, "cursor": str(event_id), **fields},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        self.db.execute("UPDATE events SET payload = ? WHERE id = ?", (payload, event_id))
        return event_id

    def _deliver(self, event_id: int, recipients_sql: str, params: tuple[Any, ...]) -> None:
        """Deliver an event to the channels ``recipients_sql`` selects (as ``channel``), each
        chained to the previous event on that channel; then to the Aloha queues' channels
        (``z<id>``, and ``zfirehose``) of the accounts it went to, if they have a queue."""
        self.db.execute(
            "INSERT INTO deliveries (event_id, channel, prev_id)"
            " SELECT ?, r.channel, coalesce(h.last_id, 0)"
            f" FROM ({recipients_sql}) r LEFT JOIN channel_heads h ON h.channel = r.channel",
            (event_id, *params),
        )
        self.db.execute(
            "INSERT OR IGNORE INTO deliveries (event_id, channel, prev_id)"
            f" SELECT ?, {_QUEUE_CHANNEL}, coalesce(h.last_id, 0) FROM deliveries d"
            f" LEFT JOIN channel_heads h ON h.channel = {_QUEUE_CHANNEL}"
            " WHERE d.event_id = ? AND substr(d.channel, 1, 1) != 'z' AND ("
            f"  (d.channel = '{FIREHOSE}' AND EXISTS"
            "    (SELECT 1 FROM queues WHERE all_public_streams = 1))"
            "  OR EXISTS (SELECT 1 FROM queues q JOIN accounts a ON a.jid = q.jid"
            "   WHERE a.id = CAST(substr(d.channel, 2) AS INTEGER)"
            f"   AND q.last_poll + q.lifespan + {QUEUE_GRACE} >= {_NOW_EPOCH}))",
            (event_id, event_id),
        )
        self.db.execute(
            "INSERT INTO channel_heads (channel, last_id)"
            " SELECT channel, event_id FROM deliveries WHERE event_id = ?"
            " ON CONFLICT (channel) DO UPDATE SET last_id = excluded.last_id",
            (event_id,),
        )

    def _followers(self, prefix: str, roles: str) -> str:
        """SQL for the channels (``prefix`` u: posts, e: events) of node ?'s followers whose
        affiliation meets ``roles``."""
        return (
            f"SELECT '{prefix}' || a.id AS channel FROM subscriptions s"
            f" JOIN accounts a ON a.jid = s.jid WHERE s.node_id = ? AND s.{roles}"
        )

    def _notify(self, node_id: int, notice: Notice, now: str) -> int:
        event_id = self._append_event(notice.type, node_id, notice.fields, now, notice.subject)
        if notice.to.kind == "user":
            self._deliver(
                event_id,
                "SELECT 'e' || id AS channel FROM accounts WHERE jid = ?",
                (notice.to.jid,),
            )
        elif notice.to.kind == "moderators":
            self._deliver(event_id, self._followers("e", _MODERATE), (node_id,))
        else:
            self._deliver(event_id, self._followers("e", MAY_READ), (node_id,))
        return event_id

    @_serialised
    def last_event_id(self) -> int:
        (value,) = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return int(value)

    @_serialised
    def append_post(
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
        with self._tx():
            if retry is not None:
                sent = self.db.execute(
                    "SELECT k.fingerprint, k.event_id, p.body FROM idempotency_keys k"
                    " JOIN posts p ON p.event_id = k.event_id"
                    " WHERE k.author = ? AND k.key = ? AND k.created >= ?",
                    (author, retry.key, retry.now - retry.window),
                ).fetchone()
                if sent is not None:
                    if sent[0] != retry.fingerprint:
                        raise Unprocessable(
                            "this Idempotency-Key was used for another request: use a new key"
                        )
                    return PostWritten(int(sent[1]), sent[2], True)
            event_id = self._append("post", node.id, payload, now, post_id)
            self.db.execute(
                "INSERT INTO posts (id, node_id, event_id, author, body) VALUES (?,?,?,?,?)",
                (post_id, node.id, event_id, author, payload),
            )
            recipients = self._followers("u", MAY_READ)
            if node.access_model == "open":
                recipients += f" UNION ALL SELECT '{FIREHOSE}'"
            self._deliver(event_id, recipients, (node.id,))
            if retry is not None:
                self._remember_key(author, retry, event_id)
            return PostWritten(event_id, payload, False)

    def _remember_key(self, author: str, retry: RetryKey, event_id: int) -> None:
        expired = retry.now - retry.window
        # A few expired keys go with each new one: the table stays as large as a window's.
        self.db.execute(
            "DELETE FROM idempotency_keys WHERE (author, key) IN (SELECT author, key"
            " FROM idempotency_keys WHERE created < ? LIMIT 16)",
            (expired,),
        )
        self.db.execute(
            "INSERT INTO idempotency_keys (author, key, fingerprint, event_id, created)"
            " VALUES (?,?,?,?,?) ON CONFLICT (author, key) DO UPDATE SET"
            " fingerprint = excluded.fingerprint, event_id = excluded.event_id,"
            " created = excluded.created",
            (author, retry.key, retry.fingerprint, event_id, retry.now),
        )

    @_serialised
    def update_post(self, node_id: int, post_id: str, body: str, notice: Notice, now: str) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE posts SET body = ? WHERE id = ? AND node_id = ?", (body, post_id, node_id)
            )
            self._notify(node_id, notice, now)

    @_serialised
    def get_post(self, node_id: int, post_id: str) -> tuple[str, str] | None:
        """The post's author and JSON body, unless it does not exist or was deleted."""
        row = self.db.execute(
            "SELECT author, body FROM posts WHERE id = ? AND node_id = ? AND deleted = 0",
            (post_id, node_id),
        ).fetchone()
        return (row[0], row[1]) if row else None

    @_serialised
    def list_posts(self, node_id: int, limit: int, after: str | None) -> list[str] | None:
        """Post bodies, newest first; those older than post ``after``, if given (None: unknown)."""
        before = 2**63 - 1
        if after is not None:
            row = self.db.execute(
                "SELECT event_id FROM posts WHERE id = ? AND node_id = ?", (after, node_id)
            ).fetchone()
            if row is None:
                return None
            before = row[0]
        rows = self.db.execute(
            "SELECT body FROM posts WHERE node_id = ? AND deleted = 0 AND event_id < ?"
            " ORDER BY event_id DESC LIMIT ?",
            (node_id, before, limit),
        ).fetchall()
        return [r[0] for r in rows]

    @_serialised
    def delete_post(
        self, node_id: int, post_id: str, notice: Notice, now: str, erase: tuple[str, ...]
    ) -> None:
        """Mark the post deleted and remove the ``erase`` fields (its text) from it and from
        every event that held it; the events stay. With secure_delete, SQLite overwrites what
        it frees; the checkpoint after it copies the erased pages into the database file and
        empties the write-ahead log, which held the old ones."""
        paths = ", ".join("?" * len(erase))
        with self._tx():
            self.db.execute(
                f"UPDATE posts SET deleted = 1, body = json_remove(body, {paths})"
                " WHERE id = ? AND node_id = ?",
                (*(f"$.{name}" for name in erase), post_id, node_id),
            )
            self.db.execute(
                f"UPDATE events SET payload = json_remove(payload, {paths})"
                " WHERE subject = ? AND type = 'post'",
                (*(f"$.{name}" for name in erase), post_id),
            )
            self.db.execute(
                f"UPDATE events SET payload = json_remove(payload, {paths})"
                " WHERE subject = ? AND type = 'post_updated'",
                (*(f"$.post.{name}" for name in erase), post_id),
            )
            self._notify(node_id, notice, now)
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- feeds ---------------------------------------------------------------------------

    @_serialised
    def read_feed(self, feed: str, jid: str | None, since: int, limit: int) -> FeedState:
        """In one read: what was delivered to a feed's channel after ``since`` that the reader
        may still see, and that channel with the last id published on it.

        ``feed`` is "posts" or "events" (the channel of account ``jid``) or "firehose".
        """
        last_id = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        hold_channel = None
        if feed == "firehose":
            channel, visible, params = FIREHOSE, _OPEN_POSTS, cast(tuple[Any, ...], ())
            if jid is not None and self._banned_somewhere(jid):
                # The firehose is public, but not to a banned user logged in as themselves:
                # their hold is on the hint channel, so Pushpin asks here, which filters.
                visible, params = f"{_OPEN_POSTS} AND NOT {_BANNED_NODE}", (jid,)
                hold_channel = FIREHOSE_HINT
        else:
            (account_id,) = self.db.execute(
                "SELECT id FROM accounts WHERE jid = ?", (jid,)
            ).fetchone()
            channel = f"{'u' if feed == 'posts' else 'e'}{account_id}"
            visible = _VISIBLE_POSTS if feed == "posts" else _VISIBLE_EVENTS
            params = (jid,)
            # Where the account was when last online: what /history starts from. A cursor
            # ahead of the log is refused by the caller, and must not move it.
            if since <= last_id:
                self.db.execute(
                    "UPDATE accounts SET last_online = ? WHERE id = ? AND last_online < ?",
                    (since, account_id, since),
                )
        items = [
            FeedItem(*r)
            for r in self.db.execute(
                f"SELECT e.id, {_CURRENT} FROM deliveries d JOIN events e ON e.id = d.event_id"
                " LEFT JOIN posts p ON p.event_id = e.id"
                f" WHERE d.channel = ? AND d.event_id > ? AND {visible}"
                " ORDER BY d.event_id LIMIT ?",
                (channel, since, *params, limit),
            )
        ]
        return FeedState(last_id, items, hold_channel or channel, self._head(channel))

    def _banned_somewhere(self, jid: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM subscriptions WHERE jid = ? AND affiliation = 'outcast' LIMIT 1", (jid,)
        ).fetchone()
        return row is not None

    @_serialised
    def history(self, jid: str, since: int | None, limit: int) -> tuple[int, list[FeedItem]]:
        """The account's posts and events after ``since`` (default: where it was last online),
        posts wrapped as ``{"type": "post", "cursor", "post"}``; and the cursor used."""
        account_id, last_online = self.db.execute(
            "SELECT id, last_online FROM accounts WHERE jid = ?", (jid,)
        ).fetchone()
        start = last_online if since is None else since
        rows = self.db.execute(
            f"SELECT e.id, e.type, {_CURRENT} FROM deliveries d"
            " JOIN events e ON e.id = d.event_id LEFT JOIN posts p ON p.event_id = e.id"
            f" WHERE d.channel IN (?, ?) AND d.event_id > ? AND ("
            f"  (d.channel = ? AND {_VISIBLE_POSTS}) OR (d.channel = ? AND {_VISIBLE_EVENTS}))"
            " ORDER BY d.event_id LIMIT ?",
            (
                f"u{account_id}",
                f"e{account_id}",
                start,
                f"u{account_id}",
                jid,
                f"e{account_id}",
                jid,
                limit,
            ),
        ).fetchall()
        items = [
            FeedItem(id_, f'{{"type":"post","cursor":"{id_}","post":{payload}}}')
            if type_ == "post"
            else FeedItem(id_, payload)
            for id_, type_, payload in rows
        ]
        return start, items

    # -- Aloha queues ----------------------------------------------------------------------

    @_serialised
    def create_queue(self, queue: Queue, max_alive: int = 0, grace: float = 0) -> int:
        """Store a new queue; it starts at the end of the log (returned), in the same
        transaction, so that nothing committed after it is missed. With ``max_alive``,
        Conflict if the account has that many queues alive already."""
        with self._tx():
            if max_alive:
                (alive,) = self.db.execute(
                    "SELECT count(*) FROM queues WHERE jid = ? AND last_poll + lifespan + ? >= ?",
                    (queue.jid, grace, queue.last_poll),
                ).fetchone()
                if alive >= max_alive:
                    raise Conflict(
                        f"a user may have at most {max_alive} event queues: delete one"
                        " (DELETE /api/v1/events) or let it expire"
                    )
            (last,) = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
            self.db.execute(
                "INSERT INTO queues (id, jid, event_types, narrow, all_public_streams, lifespan,"
                " acked, last_poll) VALUES (?,?,?,?,?,?,?,?)",
                (
                    queue.id,
                    queue.jid,
                    queue.event_types,
                    queue.narrow,
                    queue.all_public_streams,
                    queue.lifespan,
                    last,
                    queue.last_poll,
                ),
            )
            return int(last)

    @_serialised
    def poll_queue(
        self, queue_id: str, jid: str, ack: int, now: float, limit: int, grace: float = 0
    ) -> QueuePoll | None:
        """Acknowledge up to ``ack`` and read what follows; None for a queue that is unknown,
        expired or someone else's. A queue expires ``lifespan`` seconds after its last poll
        ended: ``grace`` more than after it began, for a poll may be held that long."""
        with self._tx():
            row = self.db.execute(
                "SELECT id, jid, event_types, narrow, all_public_streams, lifespan, acked,"
                " last_poll FROM queues WHERE id = ?",
                (queue_id,),
            ).fetchone()
            if row is None or row[1] != jid:
                return None
            queue = Queue(*row)
            if queue.last_poll + queue.lifespan + grace < now:
                self.db.execute("DELETE FROM queues WHERE id = ?", (queue_id,))
                return None
            acked = max(queue.acked, ack)
            self.db.execute(
                "UPDATE queues SET acked = ?, last_poll = ? WHERE id = ?", (acked, now, queue_id)
            )
            (account_id,) = self.db.execute(
                "SELECT id FROM accounts WHERE jid = ?", (jid,)
            ).fetchone()
            channels = [f"z{account_id}"] + ([f"z{FIREHOSE}"] if queue.all_public_streams else [])
            marks = ",".join("?" * len(channels))
            rows = self.db.execute(
                f"SELECT DISTINCT e.id, e.type, {_CURRENT}, e.node_id,"
                "  (SELECT p.event_id FROM posts p WHERE p.id = coalesce("
                "    json_extract(e.payload, '$.post.id'), json_extract(e.payload, '$.id')))"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " LEFT JOIN posts p ON p.event_id = e.id"
                f" WHERE d.channel IN ({marks}) AND d.event_id > ?"
                " AND (e.type != 'post' OR p.deleted = 0)"
                f" AND (e.type IN ('subscription', 'follow_request') OR {_READABLE_NODE}"
                f"  OR (d.channel = 'z{FIREHOSE}' AND {_OPEN_NODE} AND NOT {_BANNED_NODE}))"
                " ORDER BY e.id LIMIT ?",
                (*channels, acked, jid, jid, limit),
            ).fetchall()
            heads = [(channel, self._head(channel)) for channel in channels]
            return QueuePoll(queue._replace(acked=acked), [QueueEvent(*r) for r in rows], heads)

    def _head(self, channel: str) -> int:
        row = self.db.execute(
            "SELECT last_id FROM channel_heads WHERE channel = ?", (channel,)
        ).fetchone()
        return int(row[0]) if row else 0

    @_serialised
    def skip_queue(self, queue_id: str, to: int) -> None:
        """Nothing up to ``to`` matches the queue's filters: start its next read after it."""
        self.db.execute("UPDATE queues SET acked = max(acked, ?) WHERE id = ?", (to, queue_id))

    @_serialised
    def delete_queue(self, queue_id: str, jid: str, now: str) -> bool:
        """Delete a queue, and wake its account's held polls (a hint on its queue channel), so
        that one still held on this queue hears BAD_EVENT_QUEUE_ID now, not at its timeout."""
        with self._tx():
            deleted = self.db.execute(
                "DELETE FROM queues WHERE id = ? AND jid = ?", (queue_id, jid)
            ).rowcount
            if deleted:
                event_id = self._append_event("queue_deleted", None, {"queue_id": queue_id}, now)
                self._deliver(
                    event_id, "SELECT 'z' || id AS channel FROM accounts WHERE jid = ?", (jid,)
                )
            return deleted > 0

    @_serialised
    def expire_queues(self, now: float, grace: float, limit: int) -> int:
        """Delete up to ``limit`` queues that expired; how many."""
        return self.db.execute(
            "DELETE FROM queues WHERE id IN (SELECT id FROM queues"
            " WHERE last_poll + lifespan + ? < ? LIMIT ?)",
            (grace, now, limit),
        ).rowcount

    # -- the publisher's outbox: the log itself ----------------------------------------------

    @_serialised
    def deliveries_after(self, position: Position, limit: int) -> list[Delivery]:
        rows = self.db.execute(
            "SELECT d.event_id, d.channel, d.prev_id, e.payload,"
            "  EXISTS (SELECT 1 FROM posts p WHERE p.event_id = e.id AND p.deleted = 1)"
            " FROM deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE (d.event_id, d.channel) > (?, ?)"
            " ORDER BY d.event_id, d.channel LIMIT ?",
            (position.event_id, position.channel, limit),
        ).fetchall()
        return [Delivery(e, c, prev, payload, bool(gone)) for e, c, prev, payload, gone in rows]

    @_serialised
    def backlog(self, position: Position, limit: int) -> tuple[int, str | None]:
        """How many deliveries follow ``position`` (counted up to ``limit``), and when the
        first of them was logged (None: none)."""
        (count,) = self.db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE (event_id, channel) > (?, ?)"
            " LIMIT ?)",
            (position.event_id, position.channel, limit),
        ).fetchone()
        row = self.db.execute(
            "SELECT e.created FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE (d.event_id, d.channel) > (?, ?) ORDER BY d.event_id, d.channel LIMIT 1",
            (position.event_id, position.channel),
        ).fetchone()
        return int(count), row[0] if row else None

    @_serialised
    def publish_position(self, target: str) -> Position | None:
        row = self.db.execute(
            "SELECT event_id, channel FROM publish_cursors WHERE target = ?", (target,)
        ).fetchone()
        return Position(*row) if row else None

    @_serialised
    def save_publish_position(self, target: str, position: Position) -> None:
        self.db.execute(
            "INSERT INTO publish_cursors (target, event_id, channel) VALUES (?, ?, ?)"
            " ON CONFLICT (target) DO UPDATE"
            " SET event_id = excluded.event_id, channel = excluded.channel",
            (target, position.event_id, position.channel),
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; after a commit that appended to
    the log, the store's ``on_commit``."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store.db.execute("BEGIN IMMEDIATE")
        self.store._appended = False

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type:
            self.store.db.execute("ROLLBACK")
            return
        self.store.db.execute("COMMIT")
        if self.store._appended:
            self.store._appended = False
            self.store.on_commit()


def _statements(script: str) -> list[str]:
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in code.split(";") if s.strip()]
