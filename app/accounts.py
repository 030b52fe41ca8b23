"""Accounts and HTTP Basic logins: slow password hashes and their limits, API keys, a cache."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from math import ceil

from app.config import Limits
from app.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    TooManyRequests,
    Unauthorized,
)
from app.model import now_iso, parse_jid
from app.store import Store
from app.store.base import Account
from app.throttle import AtOnce, Throttle

log = logging.getLogger(__name__)

# scrypt with n=2**14, r=8: about 16 MiB and tens of milliseconds per check.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
REALM = "buddycloud"
# The windows of the login limits and of the account creation limit (config.Limits).
FAILURE_WINDOW, CREATION_WINDOW = 60.0, 3600.0
# In the last quarter of a cached login's life, a request starts checking it again.
REFRESH_AHEAD = 0.25
MAX_CACHED_LOGINS = 100_000  # about 20 MB
MAX_REMEMBERED = 100_000  # (credentials, address) that succeeded: about 30 MB


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(computed, _unb64(digest))


def check_new_password(password: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise BadRequest(
            f"password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )


def new_api_key() -> str:
    return secrets.token_urlsafe(24)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


class Accounts:
    def __init__(
        self,
        store: Store,
        secret_key: str,
        cache_seconds: int,
        limits: Limits | None = None,
        max_cached: int = MAX_CACHED_LOGINS,
    ) -> None:
        self.store = store
        self._secret = secret_key.encode()
        self._cache_seconds, self._max_cached = cache_seconds, max_cached
        # keyed hash of "user:secret" -> (jid, expiry); never the plain password
        self._cache: dict[bytes, tuple[str, float]] = {}
        # the check running for a key: every request with those credentials waits for it
        self._checking: dict[bytes, asyncio.Task[str | None]] = {}
        # (keyed hash, address) of passwords that were right from that address, oldest first:
        # they pass the failure limits, which others' guesses may have filled
        self._succeeded: dict[tuple[bytes, str], None] = {}
        # times cached logins were dropped (app/lifecycle.py): a check that saw one caches nothing
        self._forgets = 0
        self.slow_checks = 0  # password hashes computed to check logins (an API key is cheap)
        self.new_hashes = 0  # password hashes computed for new accounts
        limits = limits or Limits()
        # A slot is taken before each slow hash and given back if the password was right, so
        # that no concurrency runs more hashes than the limits allow.
        self._per_account = Throttle(
            store, "login failures per account", limits.login_failures_per_account, FAILURE_WINDOW
        )
        self._per_address = Throttle(
            store, "login failures per address", limits.login_failures_per_address, FAILURE_WINDOW
        )
        self._unknown = Throttle(
            store, "unknown logins per address", limits.unknown_logins_per_address, FAILURE_WINDOW
        )
        self._creations = Throttle(
            store, "accounts per address", limits.accounts_per_hour, CREATION_WINDOW
        )
        self._hashing = AtOnce(limits.hashes_at_once_per_address)

    def hashes(self) -> dict[str, int]:
        """Slow hashes computed since start, and the most that one address ran at once."""
        return {
            "logins": self.slow_checks,
            "accounts": self.new_hashes,
            "most_at_once": self._hashing.most,
        }

    def logins_refused(self) -> dict[str, int]:
        """Logins refused (429) since start, by the limit that refused them."""
        return {t.name: t.refused for t in (self._per_account, self._per_address, self._unknown)}

    async def create(self, username: object, password: object, address: str = "") -> str:
        """A new account; Conflict if the name is taken, TooManyRequests past the accounts
        ``address`` may create in an hour (the name is checked first: it costs no hash)."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise BadRequest('expected JSON {"username": JID, "password": string}')
        jid = parse_jid(username)
        check_new_password(password)
        # Every channel, an account's or a topic's, is made with its posts node.
        if await self.store.get_node(jid, "posts") is not None:
            raise Conflict(f"{jid} already exists")
        if wait := await self._creations.take(address):
            raise TooManyRequests(
                f"too many accounts created from your address: try again in {ceil(wait)}s", wait
            )
        password_hash = await self.new_hash(password, address)
        api_key = new_api_key()
        # A name taken since the check above is still refused here (409).
        await self.store.create_account(jid, password_hash, api_key, now_iso())
        return jid

    async def new_hash(self, password: str, address: str) -> str:
        """The slow hash of a new password, in one of ``address``'s slots for hashes."""
        async with self._hashing.slot(address):
            self.new_hashes += 1
            return await asyncio.to_thread(hash_password, password)

    async def check_own_password(self, jid: str, password: object, address: str) -> Account:
        """The account of ``jid`` (logged in already), if ``password`` is its password (not
        its API key): Forbidden if not. A slow hash, limited as logins are."""
        if not isinstance(password, str):
            raise BadRequest("the account's password is needed, as a string")
        account = await self._account(jid, address)
        if account is None:
            raise Unauthorized("no such account")
        if not await self._check_password(self._key(jid, password), account, password, address):
            raise Forbidden("the password is wrong")
        return account

    def forget(self, jid: str | None = None) -> None:
        """Drop the cached logins of ``jid`` (None: of everyone), whose credentials changed;
        a check under way now caches nothing (it may have read them before the change)."""
        self._forgets += 1
        for key in [k for k, (who, _) in self._cache.items() if jid is None or who == jid]:
            del self._cache[key]

    async def authenticate(self, authorization: str | None, address: str = "") -> str:
        """The JID of the caller of a Basic ``Authorization`` header, or Unauthorized.

        An API key is never refused for others' failures. A password costs a slow hash, within
        the limits of ``address`` (the client's): past them the answer is TooManyRequests.
        """
        if not authorization:
            raise Unauthorized("login required: HTTP Basic with your JID and password or API key")
        username, secret = _parse_basic(authorization)
        key = self._key(username, secret)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached and cached[1] > now:
            if cached[1] - now < self._cache_seconds * REFRESH_AHEAD:
                # A user who keeps asking never waits for the hash: check again in the
                # background while the cached answer still holds.
                self._check(key, username, secret, address)
            return cached[0]
        # One slow check per credentials at a time: when the cache expires under a user with
        # thousands of long-polls, each must not start its own (50 ms of CPU apiece).
        jid = await asyncio.shield(self._check(key, username, secret, address))
        if jid is None:
            raise Unauthorized("invalid credentials")
        return jid

    def _key(self, username: str, secret: str) -> bytes:
        return hmac.new(self._secret, f"{username}\x00{secret}".encode(), "sha256").digest()

    def _check(
        self, key: bytes, username: str, secret: str, address: str
    ) -> asyncio.Task[str | None]:
        """The running check of these credentials, or a new one, which caches what it finds.
        (Requests that join a running check share the limits of the address that started it.)"""
        task = self._checking.get(key)
        if task is None:
            task = asyncio.create_task(self._verify_and_cache(key, username, secret, address))
            self._checking[key] = task
            task.add_done_callback(lambda done: self._checked(key, done))
        return task

    def _checked(self, key: bytes, task: asyncio.Task[str | None]) -> None:
        self._checking.pop(key, None)
        # A background check has no caller to raise to; the next request checks again. A
        # refusal (429) is an answer, not a failure.
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, ApiError):
            log.warning("checking credentials failed: %r", exc)

    async def _verify_and_cache(
        self, key: bytes, username: str, secret: str, address: str
    ) -> str | None:
        forgets = self._forgets
        try:
            jid = await self._verify(key, username, secret, address)
        except Banned:
            self._cache.pop(key, None)  # cached, and banned since
            raise
        if jid is None:
            self._cache.pop(key, None)  # cached, and a background check found them invalid
        elif self._cache_seconds and forgets == self._forgets:
            self._remember(key, jid)
        return jid

    def _remember(self, key: bytes, jid: str) -> None:
        # Re-inserted last, so that the dict stays in the order of expiry; when full, the
        # quarter that expires first goes (those users pay one more hash).
        self._cache.pop(key, None)
        if len(self._cache) >= self._max_cached:
            for old in list(itertools.islice(self._cache, max(1, self._max_cached // 4))):
                del self._cache[old]
        self._cache[key] = (jid, time.monotonic() + self._cache_seconds)

    async def verify_password(self, username: str, password: str, address: str) -> Account:
        """The account, if ``password`` is its password (not its API key): Zulip's
        fetch_api_key. Limited as logins are."""
        account = await self._account(username, address)
        if account is None or not await self._check_password(
            self._key(username, password), account, password, address
        ):
            raise Unauthorized("invalid credentials: fetch_api_key takes the password")
        _refuse_banned(account)
        return account

    async def _verify(self, key: bytes, username: str, secret: str, address: str) -> str | None:
        account = await self._account(username, address)
        if account is None:
            return None
        # Before any limit: an API key costs no hash, so nobody's failures may refuse it.
        if hmac.compare_digest(secret.encode(), account.api_key.encode()):
            return _refuse_banned(account)
        if not await self._check_password(key, account, secret, address):
            return None
        return _refuse_banned(account)

    async def _account(self, username: str, address: str) -> Account | None:
        """The account ``username`` names, or None, counted against ``address``'s own limit
        for unknown accounts (no hash is computed for them, and they fill no other limit)."""
        try:
            account = await self.store.get_account(parse_jid(username))
        except BadRequest:
            account = None
        if account is None and (wait := await self._unknown.take(address)):
            raise TooManyRequests(
                f"too many logins to unknown accounts: try again in {ceil(wait)}s", wait
            )
        return account

    async def _check_password(
        self, key: bytes, account: Account, password: str, address: str
    ) -> bool:
        """Is ``password`` the account's? The slow hash, run when ``address`` has a slot for it
        (TooManyRequests if not), with at most a few of that address's hashes at once."""
        known = (key, address) in self._succeeded
        # Credentials right before from this address skip the failure limits: others' guesses
        # (from a shared address, or at this account) cannot lock their owner out.
        taken = [] if known else await self._take_slots(account.jid, address)
        async with self._hashing.slot(address):
            self.slow_checks += 1
            ok = await asyncio.to_thread(check_password, password, account.password_hash)
        if ok:
            for throttle, slot in taken:
                await throttle.give_back(slot)
            self._succeeded.pop((key, address), None)  # re-inserted last: the newest
            if len(self._succeeded) >= MAX_REMEMBERED:
                for old in list(itertools.islice(self._succeeded, MAX_REMEMBERED // 4)):
                    del self._succeeded[old]
            self._succeeded[key, address] = None
        elif known:  # no longer right: one unlimited failure at most (two checks may race here)
            self._succeeded.pop((key, address), None)
        return ok

    async def _take_slots(self, jid: str, address: str) -> list[tuple[Throttle, str]]:
        """A slot for one more hash, per account from this address and per address."""
        # Per account *from one address*: a stranger's guesses elsewhere do not lock it out.
        account_key = f"{jid} from {address}"
        if wait := await self._per_account.take(account_key):
            raise TooManyRequests(
                f"too many failed logins to this account: try again in {ceil(wait)}s", wait
            )
        if wait := await self._per_address.take(address):
            await self._per_account.give_back(account_key)
            raise TooManyRequests(f"too many failed logins: try again in {ceil(wait)}s", wait)
        return [(self._per_account, account_key), (self._per_address, address)]


class Banned(Forbidden):
    """Right credentials of an account the operator banned (python -m app admin ban)."""

    code = "USER_DEACTIVATED"  # Zulip's name for an account that may not log in

    def __init__(self, jid: str) -> None:
        super().__init__(f"{jid} is banned from this service: ask its operator")


def _refuse_banned(account: Account) -> str:
    """The account's JID, if it is not banned. (Told only to whoever has its credentials.)"""
    if account.banned:
        raise Banned(account.jid)
    return account.jid


def _parse_basic(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized("only HTTP Basic authentication is supported")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed Basic credentials") from None
    username, colon, secret = decoded.partition(":")
    if not colon:
        raise Unauthorized("malformed Basic credentials")
    return username, secret
