"""The operator's tool, as services: what ``python -m app admin ...`` (app/admin_cli.py) does.

It runs on the server, with the run command's settings, and talks to the store directly. What
it changes goes through the same paths as the API's: an account's hash and key as
app/accounts.py makes them, a ban closed out as app/lifecycle.py closes a password change
(every origin drops the account's cached logins, its streams and sockets are closed through
every proxy), a removed post deleted as its author would. Backups are SQLite's (one file,
copied online); PostgreSQL has its own tools, which this only advises.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.accounts import Accounts, check_new_password, hash_password, new_api_key
from app.channels import Channels
from app.config import Settings
from app.errors import ApiError
from app.lifecycle import LOGINS_CHANGED_PATH, Lifecycle, operator_token
from app.model import name_problems, now_iso, parse_jid
from app.publisher import Publisher, TargetLag
from app.retention import Retention
from app.sessions import Sessions
from app.store import Store, open_store
from app.store.base import NodeSize, Pruned

Progress = Callable[[str], None]  # one line of progress, for long work
ORIGIN_CALL_SECONDS = 3.0
RANDOM_PASSWORD_BYTES = 15  # 20 characters


class AdminError(Exception):
    """The command could not do what was asked; the message says why (exit code 1)."""


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file of DATABASE_URL, or None for PostgreSQL."""
    scheme, _, rest = settings.database_url.partition("://")
    return Path(rest) if scheme == "sqlite" else None


def postgres_advice(settings: Settings) -> str:
    """How to back up and restore a PostgreSQL store: its own tools do it, not this command."""
    return f"""\
The store is PostgreSQL: back it up with PostgreSQL's own tools, which take a consistent
snapshot while every node runs. This command does not back it up.

  backup:   pg_dump --format=custom --file=buddycloud.dump "$DATABASE_URL"

  restore:  1. stop every node (python -m app on each);
            2. note the highest event id handed out, if the old database is still there:
               psql "$DATABASE_URL" -Atc "SELECT last_value FROM events_id_seq"
            3. pg_restore --clean --if-exists --no-owner --dbname="$DATABASE_URL" buddycloud.dump
            4. python -m app admin restore --ids-after N   (N: the id of step 2, or higher)
               so that the log goes on past every cursor clients and Pushpin still hold, and
               those cursors from after the backup are answered as pruned ones (410, reset);
            5. start the nodes.

(DATABASE_URL here: {settings.database_url.partition("@")[2] or settings.database_url})"""


class Admin:
    """The admin command's services over an open store."""

    def __init__(self, settings: Settings, store: Store, progress: Progress) -> None:
        self.settings, self.store, self.progress = settings, store, progress
        self.accounts = Accounts(store, settings.secret_key, 0)
        self.publisher = Publisher(
            store,
            settings.grip_urls,
            settings.publish_timeout,
            settings.publish_poll_seconds,
            settings.grip_ca_file,
        )
        sessions = Sessions(store, settings.session_seconds, 1, 0)
        # On SQLite, the store's announcements stay in this process: running origins are told
        # on loopback. On PostgreSQL they reach every origin (NOTIFY).
        elsewhere = self._tell_origins if sqlite_path(settings) else None
        self.lifecycle = Lifecycle(store, self.accounts, sessions, self.publisher, elsewhere)
        self.channels = Channels(store, settings.limits, settings.idempotency_seconds)
        self.told: list[str] = []  # what telling the origins found, for the operator

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, settings: Settings, progress: Progress) -> AsyncIterator[Admin]:
        store = open_store(settings.database_url, 2)
        try:
            await store.open(check_names=name_problems)
        except Exception as exc:
            raise AdminError(f"cannot open the store {store.label}: {exc}") from exc
        admin = cls(settings, store, progress)
        try:
            yield admin
        finally:
            await admin.publisher.close()
            await store.close()

    # -- accounts ----------------------------------------------------------------------------

    async def create_account(self, username: str, password: str) -> str:
        """A new account with its channel, as POST /api/account makes it (no rate limit)."""
        jid = _jid(username)
        try:
            check_new_password(password)
            await self.store.create_account(jid, hash_password(password), new_api_key(), now_iso())
        except ApiError as exc:
            raise AdminError(exc.message) from None
        return jid

    async def reset_password(self, username: str, password: str | None) -> str:
        """Set a new password (a random one if None), which it answers; the old password
        stops working at once on every origin, and what was opened with it is closed."""
        jid = _jid(username)
        password = password or secrets.token_urlsafe(RANDOM_PASSWORD_BYTES)
        try:
            check_new_password(password)
        except ApiError as exc:
            raise AdminError(exc.message) from None
        account_id = await self.store.change_credentials(jid, password_hash=hash_password(password))
        if account_id is None:
            raise AdminError(f"no account {jid}")
        await self.lifecycle.changed(jid, account_id)
        return password

    async def ban(self, username: str, remove_posts: bool) -> int:
        """Ban the account from the service: it may not log in, its sessions end, its streams
        and sockets are closed. Its posts stay, unless ``remove_posts``: then each is deleted
        as its author would (readers hear post_deleted). The posts removed."""
        jid = _jid(username)
        account_id = await self.store.set_banned(jid, True, now_iso())
        if account_id is None:
            raise AdminError(f"no account {jid}")
        await self.lifecycle.changed(jid, account_id)
        removed = 0
        if remove_posts:
            posts = await self.store.posts_by(jid)
            for channel, node, post_id in posts:
                info = await self.store.get_node(channel, node)
                if info is not None:
                    await self.channels.remove_post(info, post_id)
                    removed += 1
                    if removed % 100 == 0:
                        self.progress(f"removed {removed} of {len(posts)} posts")
        return removed

    async def unban(self, username: str) -> None:
        jid = _jid(username)
        if await self.store.set_banned(jid, False, now_iso()) is None:
            raise AdminError(f"no account {jid}")

    async def _tell_origins(self, jid: str) -> None:
        """Ask each origin of ORIGINS, on loopback, to drop the account's cached logins."""
        headers = {"Authorization": f"Bearer {operator_token(self.settings.secret_key)}"}
        async with httpx.AsyncClient(timeout=ORIGIN_CALL_SECONDS) as client:
            for origin in self.settings.origins:
                url = f"http://{origin}{LOGINS_CHANGED_PATH}"
                try:
                    r = await client.post(url, json={"jid": jid}, headers=headers)
                except httpx.ConnectError:
                    self.told.append(f"no origin runs at {origin}: nothing cached there")
                    continue
                except httpx.HTTPError as exc:
                    self.told.append(f"could not tell the origin at {origin}: {exc!r}")
                    continue
                if r.status_code == 204:
                    self.told.append(f"the origin at {origin} dropped {jid}'s cached logins")
                else:
                    self.told.append(
                        f"the origin at {origin} answered {r.status_code}: its cached logins"
                        f" last AUTH_CACHE_SECONDS ({self.settings.auth_cache_seconds}) at most"
                    )

    # -- what the store holds ----------------------------------------------------------------

    async def largest_nodes(self, limit: int) -> list[NodeSize]:
        return await self.store.largest_nodes(limit)

    async def lag(self) -> tuple[int, list[TargetLag]]:
        """The newest event, and where each publish target stands (as /health reads it)."""
        newest = await self.store.last_event_id()
        return newest, await self.publisher.lag(self.settings.health_publish_seconds)

    async def prune(self) -> int:
        """Prune now what retention would prune (RETENTION_SECONDS, RETENTION_EVENTS)."""
        retention = Retention(
            self.store,
            self.settings.retention_seconds,
            self.settings.retention_events,
            self.settings.retention_check_seconds,
        )
        if not retention.enabled:
            raise AdminError("retention is off (RETENTION_SECONDS=0 and RETENTION_EVENTS=0)")

        def batch(pruned: Pruned) -> None:
            self.progress(
                f"pruned {retention.pruned_events} events, {retention.pruned_deliveries}"
                f" deliveries, through id {pruned.through}"
            )

        return await retention.prune(on_batch=batch)

    async def restored(self, ids_after: int) -> int:
        """Record that the store was restored while ids up to ``ids_after`` had been handed
        out (see restore); the restored log's last event id. Refused while a node runs: one
        holds the lease of each publish target."""
        for target in self.publisher.targets:
            name = self.publisher.lease(target)
            if not await self.store.try_lease(name):
                raise AdminError(
                    f"a node is running (one holds the lease to publish to {target.label}):"
                    " stop every node first"
                )
            await self.store.release_lease(name)
        return await self.store.restored(ids_after, now_iso())


def _jid(username: str) -> str:
    try:
        return parse_jid(username)
    except ApiError as exc:
        raise AdminError(exc.message) from None


# -- backups (SQLite) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    last: int  # the backup's last event id
    ids_after: int  # the highest id handed out before: new ids follow it
    aside: Path | None  # where the replaced database went


def backup(settings: Settings, target: Path, progress: Progress) -> int:
    """Copy the SQLite store into ``target`` while the service runs; its last event id."""
    from app.store import sqlite

    path = sqlite_path(settings)
    if path is None:
        raise AdminError(postgres_advice(settings))
    if not path.exists():
        raise AdminError(f"no database at {path} (DATA_DIR or DATABASE_URL?)")
    if target.exists():
        raise AdminError(f"{target} exists: name a new file")

    def step(done: int, total: int) -> None:
        progress(f"backup: {done} of {total} pages ({100 * done // max(total, 1)}%)")

    try:
        return sqlite.backup(path, target, step)
    except (OSError, sqlite3.Error) as exc:
        raise AdminError(f"backup failed: {exc}") from exc


async def restore(
    settings: Settings, source: Path | None, ids_after: int | None, progress: Progress
) -> Restored:
    """Put the backup ``source`` in place of the SQLite store (the service stopped), then move
    the log's ids past the highest ever handed out: the replaced database's, or ``ids_after``
    if higher (the replaced one lost). Cursors between the backup's last event and that id are
    answered as pruned ones. On PostgreSQL (restored with pg_restore) only the second part."""
    from app.store import sqlite
    from app.store.sql import SqlStore

    path = sqlite_path(settings)
    if path is None:
        if source is not None:
            raise AdminError(postgres_advice(settings))
        if ids_after is None:
            raise AdminError("give --ids-after N: the highest event id handed out before")
        async with Admin.opened(settings, progress) as admin:
            return Restored(await admin.restored(ids_after), ids_after, None)
    if source is None:
        raise AdminError("give the backup file to restore")
    try:
        version, last = sqlite.describe(source)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    progress(f"restore: {source} holds schema version {version}, events through id {last}")

    def step(done: int, total: int) -> None:
        progress(f"restore: {done} of {total} pages ({100 * done // max(total, 1)}%)")

    try:
        with sqlite.exclusive(path):
            high = max(sqlite.high_water(path), ids_after or 0)
            aside = sqlite.replace(path, source, step)
            # Opened while this process holds the database alone: nothing starts meanwhile.
            store = SqlStore(sqlite.SqliteDatabase(path, shared_lock=False))
            await store.open(check_names=name_problems)
            try:
                await store.restored(high, now_iso())
            finally:
                await store.close()
    except sqlite.InUse as exc:
        raise AdminError(str(exc)) from None
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        raise AdminError(f"restore failed: {exc}") from exc
    return Restored(last, max(high, last), aside)
