"""The benchmarks' big nodes: follower accounts and their follows, written in bulk straight into
the store's tables. This is the benchmarks' own setup, and nothing else uses it: the tests make
every account and follow through the API, as a user does.

Why not through the API: an account made there costs a scrypt hash (about 50 ms of CPU, so
100,000 followers would take 80 minutes of one core), and new accounts are limited per client
address. A hash shared by every account would need a code path for cheap passwords in the
server, used by nothing but the benchmarks, and the follows would still be a request each.

Why through the store's own connection (``open_store`` and its ``Database``): the same backend
code, placeholders and write transaction (the write lock on PostgreSQL) on SQLite and
PostgreSQL, and the same rows the API writes for an account: the account, its own channel, the
channel's posts node and the owner's subscription to it; then one subscription per follow, with
the role a follow of an open channel gets (publisher). Each account shares one real scrypt hash
of ``tests.support.PASSWORD``, and has an API key of its own, which is how the benchmark logs
in as many followers without a hash each.

What it leaves out: the follows' events (a follow through the API logs one for the node's
owner). The follows are as old as the log: nothing of them waits to be published.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from app.accounts import hash_password
from app.model import now_iso
from app.store import open_store
from app.store.sql import SqlStore
from tests.support import PASSWORD

DOMAIN = "seed.bench.example"


@dataclass(frozen=True)
class Follower:
    id: int  # the account's id: its posts feed is Pushpin channel u<id>
    jid: str
    api_key: str  # its password for Basic auth, without a hash


async def seed_followers(database_url: str, count: int, follows: dict[str, int]) -> list[Follower]:
    """Make ``count`` accounts (``f<i>@seed.bench.example``), and have the first ``n`` of them
    (by id) follow the posts node of each channel ``follows`` maps to ``n``. Returns the
    accounts in id order."""
    store = open_store(database_url)
    assert isinstance(store, SqlStore)
    await store.open()
    like = f"%@{DOMAIN}"
    key = secrets.token_urlsafe(16) + "-"  # each account's key is this and its number
    try:
        async with store.db.write() as tx:
            await tx.execute(
                "WITH RECURSIVE n(i) AS (SELECT CAST(0 AS BIGINT) UNION ALL"
                "  SELECT i + 1 FROM n WHERE i + 1 < ?)"
                " INSERT INTO accounts (jid, password_hash, api_key, created)"
                f" SELECT 'f' || i || '@{DOMAIN}', ?, CAST(? AS TEXT) || i, ? FROM n",
                count,
                hash_password(PASSWORD),
                key,
                now_iso(),
            )
            await tx.execute(
                "INSERT INTO channels (jid, owner, title, description, access_model,"
                " default_affiliation, created)"
                " SELECT jid, jid, '', '', 'open', 'publisher', created FROM accounts"
                " WHERE jid LIKE ?",
                like,
            )
            await tx.execute(
                "INSERT INTO nodes (channel, name) SELECT jid, 'posts' FROM accounts"
                " WHERE jid LIKE ?",
                like,
            )
            await tx.execute(
                "INSERT INTO subscriptions (jid, node_id, affiliation)"
                " SELECT channel, id, 'owner' FROM nodes WHERE channel LIKE ?",
                like,
            )
            for channel, n in follows.items():
                row = await tx.fetchone(
                    "SELECT id FROM nodes WHERE channel = ? AND name = 'posts'", channel
                )
                if row is None:
                    raise ValueError(f"no channel {channel} to follow")
                await tx.execute(
                    "INSERT INTO subscriptions (jid, node_id, affiliation)"
                    " SELECT jid, CAST(? AS BIGINT), 'publisher' FROM accounts WHERE jid LIKE ?"
                    " ORDER BY id LIMIT ?",
                    row[0],
                    like,
                    n,
                )
            rows = await tx.fetchall(
                "SELECT id, jid, api_key FROM accounts WHERE jid LIKE ? ORDER BY id", like
            )
        if database_url.startswith(("postgresql:", "postgres:")):
            # What autovacuum would do within the minute: the planner's statistics for the
            # new rows (the fan-out of a post is a join over subscriptions and accounts).
            async with store.db.connection() as conn:
                await conn.execute("ANALYZE")
    finally:
        await store.close()
    return [Follower(int(id_), jid, api_key) for id_, jid, api_key in rows]
