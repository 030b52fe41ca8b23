"""Accounts over time: a new password, a new API key, a deleted account. Each is one commit,
after which every origin on the database drops the account's cached logins and sessions at
once, and what is open on the account's channels (streams, sockets, held long-polls and Zulip
polls) is closed or asked again, so that nothing opened with the old credentials lives on.

Every origin hears of a change by an announcement (PostgreSQL's NOTIFY, sent at commit to every
origin listening; on SQLite there is one origin). The origin that made the change waits until
it hears its own announcement before it answers: by then PostgreSQL has sent it to every other
origin too. docs/design.md ("Accounts over time") says why this and not a read per request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable

from app.accounts import Accounts, check_new_password, new_api_key
from app.errors import BadRequest, Conflict, Unauthorized
from app.grip import close_items, held_hint, socket_close_item
from app.model import EVENTS, POSTS, QUEUES, SOCKETS, now_iso
from app.publisher import Publisher
from app.sessions import Sessions
from app.store import Store
from app.store.base import LISTENING_AGAIN

log = logging.getLogger(__name__)

CHANGED = "credentials:"  # an announcement: the JID whose credentials changed, and a nonce
HEARD_WAIT = 1.0  # seconds the changing origin waits to hear its own announcement
# The close code of a socket whose account's credentials changed: log in again.
SOCKET_CLOSE_CODE = 4001


# Where a running origin hears, from the admin command on its machine, that an account's
# logins changed (SQLite's announcements stay in one process): straight from loopback, with the
# operator's token, which only who can read SECRET_KEY can make.
LOGINS_CHANGED_PATH = "/admin/logins-changed"


def operator_token(secret_key: str) -> str:
    return hmac.new(secret_key.encode(), b"operator: logins changed", "sha256").hexdigest()


class Lifecycle:
    def __init__(
        self,
        store: Store,
        accounts: Accounts,
        sessions: Sessions,
        publisher: Publisher,
        elsewhere: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store, self.accounts = store, accounts
        self.sessions, self.publisher = sessions, publisher
        # Tells origins the announcement does not reach (the admin command on SQLite, whose
        # announcements stay in its own process) that the account's logins changed.
        self.elsewhere = elsewhere
        # Announcements that are not ours go on to whoever listened before (the publisher).
        self._others = store.on_announce
        store.on_announce = self._heard
        self._waiting: dict[str, asyncio.Event] = {}  # our announcements not heard yet

    async def change_password(self, jid: str, old: object, new: object, address: str) -> None:
        """Forbidden if ``old`` is not the password; BadRequest if ``new`` is no password."""
        if not isinstance(new, str):
            raise BadRequest("new_password must be a string")
        check_new_password(new)
        account = await self.accounts.check_own_password(jid, old, address)
        password_hash = await self.accounts.new_hash(new, address)
        account_id = await self.store.change_credentials(
            jid, password_hash=password_hash, was=account.password_hash
        )
        if account_id is None:
            raise Conflict("the password was changed meanwhile: nothing was changed")
        await self.changed(jid, account_id)

    async def new_api_key(self, jid: str) -> str:
        api_key = new_api_key()
        account_id = await self.store.change_credentials(jid, api_key=api_key)
        if account_id is None:
            raise Unauthorized("no such account")
        await self.changed(jid, account_id)
        return api_key

    async def delete(self, jid: str, password: object, address: str) -> None:
        """Forbidden if ``password`` is not the account's password (its API key is not
        enough)."""
        account = await self.accounts.check_own_password(jid, password, address)
        account_id = await self.store.delete_account(jid, account.password_hash, now_iso())
        if account_id is None:
            raise Conflict("the password was changed meanwhile: nothing was deleted")
        await self.changed(jid, account_id)

    def forget(self, jid: str) -> None:
        """Drop the account's cached logins and sessions here (another process changed it)."""
        self.accounts.forget(jid)
        self.sessions.forget_account(jid)

    async def changed(self, jid: str, account_id: int) -> None:
        """After the commit: tell every origin, then close what is open. Never raises: the
        change is made, and an error now would say it was not."""
        self.accounts.forget(jid)
        self.sessions.forget_account(jid)
        nonce = secrets.token_hex(8)
        heard = self._waiting[nonce] = asyncio.Event()
        try:
            await self.store.announce(CHANGED + json.dumps([jid, nonce]))
            await asyncio.wait_for(heard.wait(), HEARD_WAIT)
        except Exception as exc:  # the other origins' caches: AUTH_CACHE_SECONDS at most
            log.error("telling the other origins that %s's credentials changed: %r", jid, exc)
        finally:
            self._waiting.pop(nonce, None)
        if self.elsewhere is not None:  # before the closes: a client reconnects at once
            await self.elsewhere(jid)
        await self.close_connections(jid, account_id)

    async def close_connections(self, jid: str, account_id: int) -> None:
        """Close the account's streams and sockets and ask its held requests again, through
        every proxy."""
        items = [item for kind in (POSTS, EVENTS) for item in close_items(f"{kind}{account_id}")]
        items.append(held_hint(f"{QUEUES}{account_id}"))
        items.append(socket_close_item(f"{SOCKETS}{account_id}", SOCKET_CLOSE_CODE))
        try:
            await self.publisher.send_now(items)
        except Exception:
            log.exception("closing %s's streams and sockets", jid)

    def _heard(self, message: str) -> None:
        if message == LISTENING_AGAIN:  # announcements may have been missed: forget them all
            self.accounts.forget()
            self.sessions.forget_account()
        elif message.startswith(CHANGED):
            try:
                jid, nonce = json.loads(message.removeprefix(CHANGED))
            except ValueError:
                log.warning("ignored a malformed announcement: %.100r", message)
                return
            self.accounts.forget(jid)
            self.sessions.forget_account(jid)
            if (heard := self._waiting.get(nonce)) is not None:
                heard.set()
        else:
            self._others(message)
