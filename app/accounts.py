"""Accounts and HTTP Basic authentication: slow password hashes, API keys, a short-lived cache."""

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

from app.errors import BadRequest, TooManyRequests, Unauthorized
from app.model import now_iso, parse_jid
from app.store import Store
from app.store.base import Account
from app.throttle import Throttle

log = logging.getLogger(__name__)

# scrypt with n=2**14, r=8: about 16 MiB and tens of milliseconds per check.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
REALM = "buddycloud"
# Failed logins allowed per minute, for one account from one address and for one address in
# all, before 429.
FAILURES_PER_ACCOUNT, FAILURES_PER_ADDRESS, FAILURE_WINDOW = 10, 30, 60.0
# In the last quarter of a cached login's life, a request starts checking it again.
REFRESH_AHEAD = 0.25
MAX_CACHED_LOGINS = 100_000  # about 20 MB


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
        max_cached: int = MAX_CACHED_LOGINS,
    ) -> None:
        self.store = store
        self._secret = secret_key.encode()
        self._cache_seconds, self._max_cached = cache_seconds, max_cached
        # keyed hash of "user:secret" -> (jid, expiry); never the plain password
        self._cache: dict[bytes, tuple[str, float]] = {}
        # the check running for a key: every request with those credentials waits for it
        self._checking: dict[bytes, asyncio.Task[str | None]] = {}
        self.slow_checks = 0  # password hashes computed (logging in with an API key is cheap)
        self._per_account = Throttle(FAILURES_PER_ACCOUNT, FAILURE_WINDOW)
        self._per_address = Throttle(FAILURES_PER_ADDRESS, FAILURE_WINDOW)

    async def create(self, username: object, password: object) -> str:
        if not isinstance(username, str) or not isinstance(password, str):
            raise BadRequest('expected JSON {"username": JID, "password": string}')
        jid = parse_jid(username)
        if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            raise BadRequest(
                f"password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
            )
        password_hash = await asyncio.to_thread(hash_password, password)
        api_key = secrets.token_urlsafe(24)
        await self.store.create_account(jid, password_hash, api_key, now_iso())
        return jid

    async def authenticate(self, authorization: str | None, address: str = "") -> str:
        """The JID of the caller of a Basic ``Authorization`` header, or Unauthorized.

        Failed logins are counted per account and client ``address``, and per address; past
        either limit the answer is TooManyRequests, before any slow hash is computed.
        """
        if not authorization:
            raise Unauthorized("login required: HTTP Basic with your JID and password or API key")
        username, secret = _parse_basic(authorization)
        key = hmac.new(self._secret, f"{username}\x00{secret}".encode(), "sha256").digest()
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached and cached[1] > now:
            if cached[1] - now < self._cache_seconds * REFRESH_AHEAD:
                # A user who keeps asking never waits for the hash: check again in the
                # background while the cached answer still holds.
                self._check(key, username, secret)
            return cached[0]
        keys = self._throttled(username, address)
        # One slow check per credentials at a time: when the cache expires under a user with
        # thousands of long-polls, each must not start its own (50 ms of CPU apiece).
        jid = await asyncio.shield(self._check(key, username, secret))
        if jid is None:
            self._failed(keys)
            raise Unauthorized("invalid credentials")
        self._per_account.succeeded(keys[0])
        return jid

    def _check(self, key: bytes, username: str, secret: str) -> asyncio.Task[str | None]:
        """The running check of these credentials, or a new one, which caches what it finds."""
        task = self._checking.get(key)
        if task is None:
            task = asyncio.create_task(self._verify_and_cache(key, username, secret))
            self._checking[key] = task
            task.add_done_callback(lambda done: self._checked(key, done))
        return task

    def _checked(self, key: bytes, task: asyncio.Task[str | None]) -> None:
        self._checking.pop(key, None)
        # A background check has no caller to raise to; the next request checks again.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("checking credentials failed: %r", exc)

    async def _verify_and_cache(self, key: bytes, username: str, secret: str) -> str | None:
        jid = await self._verify(username, secret)
        if jid is None:
            self._cache.pop(key, None)  # cached, and a background check found them invalid
        elif self._cache_seconds:
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
        fetch_api_key. Failures are throttled like failed logins."""
        keys = self._throttled(username, address)
        try:
            account = await self.store.get_account(parse_jid(username))
        except BadRequest:
            account = None
        if account is None or not await asyncio.to_thread(
            check_password, password, account.password_hash
        ):
            self._failed(keys)
            raise Unauthorized("invalid credentials: fetch_api_key takes the password")
        self._per_account.succeeded(keys[0])
        return account

    def _throttled(self, username: str, address: str) -> tuple[str, str]:
        """The throttle's keys for a login attempt; TooManyRequests past either limit."""
        # Per account *from one address*: a stranger's guesses do not lock the owner out.
        account_key, address_key = f"{_login_name(username)}\x00{address}", address
        wait = max(
            self._per_account.retry_after(account_key), self._per_address.retry_after(address_key)
        )
        if wait > 0:
            raise TooManyRequests(f"too many failed logins: try again in {wait:.0f}s", wait)
        return account_key, address_key

    def _failed(self, keys: tuple[str, str]) -> None:
        self._per_account.failed(keys[0])
        self._per_address.failed(keys[1])

    async def _verify(self, username: str, secret: str) -> str | None:
        try:
            jid = parse_jid(username)
        except BadRequest:
            return None
        account = await self.store.get_account(jid)
        if account is None:
            return None
        if hmac.compare_digest(secret.encode(), account.api_key.encode()):
            return jid
        self.slow_checks += 1
        ok = await asyncio.to_thread(check_password, secret, account.password_hash)
        return jid if ok else None


def _login_name(username: str) -> str:
    """The account a login names, to count its failures: every spelling of it is one."""
    try:
        return parse_jid(username)
    except BadRequest:
        return username.lower()


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
