"""Credentials caching (a real SQLite store) and the parsing of GRIP_URL publish targets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from app.accounts import MAX_CACHED_LOGINS, Accounts, check_password, hash_password
from app.config import ConfigError
from app.errors import Unauthorized
from app.publisher import Target
from app.store import open_store
from tests.support import basic

PASSWORD = "a long enough password"


@contextlib.asynccontextmanager
async def accounts_on(
    tmp_path: Path, cache_seconds: int, max_cached: int = MAX_CACHED_LOGINS
) -> AsyncIterator[Accounts]:
    """Accounts on a real SQLite store in ``tmp_path``."""
    store = open_store(f"sqlite://{tmp_path}/db.sqlite3")
    await store.open()
    try:
        yield Accounts(
            store, secret_key="s" * 32, cache_seconds=cache_seconds, max_cached=max_cached
        )
    finally:
        await store.close()


def test_passwords_are_stored_under_a_slow_salted_hash() -> None:
    stored = hash_password(PASSWORD)
    assert PASSWORD not in stored and stored.startswith("scrypt$")
    assert stored != hash_password(PASSWORD)
    assert check_password(PASSWORD, stored)
    assert not check_password(PASSWORD + "!", stored)
    assert not check_password(PASSWORD, "garbage")
    start = time.perf_counter()
    check_password(PASSWORD, stored)
    assert time.perf_counter() - start > 0.005, "the hash must be slow"


def test_a_long_poll_does_not_pay_the_slow_hash_each_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with accounts_on(tmp_path, cache_seconds=60) as accounts:
            jid = await accounts.create("Juliet@Example.com", PASSWORD)
            assert jid == "juliet@example.com"

            for _ in range(50):
                assert await accounts.authenticate(basic(jid, PASSWORD)) == jid
            assert accounts.slow_checks == 1

            # A wrong password is not let through by the cache, and is not cached as right.
            for _ in range(2):
                with pytest.raises(Unauthorized):
                    await accounts.authenticate(basic(jid, PASSWORD + "!"))
            malformed = "Basic " + base64.b64encode(b"x").decode()
            for header in (None, "Bearer x", "Basic !!!", malformed):
                with pytest.raises(Unauthorized):
                    await accounts.authenticate(header)

    asyncio.run(scenario())


def test_grip_url_targets_pushpin_and_fanout() -> None:
    pushpin = Target.parse("http://127.0.0.1:5561")
    assert pushpin.publish_url == "http://127.0.0.1:5561/publish/"
    assert pushpin.headers() == {}

    key = b"0123456789abcdef0123456789abcdef"
    url = (
        "https://api.fanout.io/realm/myrealm?iss=myrealm&key=base64:"
        + base64.b64encode(key).decode()
    )
    fanout = Target.parse(url)
    assert fanout.publish_url == "https://api.fanout.io/realm/myrealm/publish/"
    assert fanout.label == "https://api.fanout.io/realm/myrealm"  # no key in logs
    token = fanout.headers()["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, key, algorithms=["HS256"])
    assert claims["iss"] == "myrealm" and claims["exp"] > time.time()

    with_password = Target.parse("http://user:secret@proxy.example:5561/")
    assert "secret" not in with_password.label

    # Fastly Fanout: the API token is the key, sent as a bearer token (no JWT: no iss).
    fastly = Target.parse("https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/?key=tok3n")
    assert fastly.publish_url == "https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/publish/"
    assert fastly.label == "https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY"
    assert fastly.headers() == {"Authorization": "Bearer tok3n"}
    with_query = Target.parse("https://proxy.example/base/?region=eu&key=tok3n")
    assert with_query.publish_url == "https://proxy.example/base/publish/?region=eu"

    with pytest.raises(ConfigError, match="needs iss") as refused:
        Target.parse("https://api.fanout.io/realm/r?key=base64:" + base64.b64encode(key).decode())
    assert base64.b64encode(key).decode() not in str(refused.value)


def test_cached_credentials_expire(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with accounts_on(tmp_path, cache_seconds=1) as accounts:
            jid = await accounts.create("juliet@example.com", PASSWORD)
            await accounts.authenticate(basic(jid, PASSWORD))
            await accounts.authenticate(basic(jid, PASSWORD))
            assert accounts.slow_checks == 1
            await asyncio.sleep(1.1)
            await accounts.authenticate(basic(jid, PASSWORD))
            assert accounts.slow_checks == 2  # the slow hash again

    asyncio.run(scenario())


def test_many_requests_with_the_same_credentials_share_one_slow_check(tmp_path: Path) -> None:
    # A user holding hundreds of long-polls when the cache expires: each request used to hash
    # the password itself, hundreds of 50 ms hashes at once.
    async def scenario() -> None:
        async with accounts_on(tmp_path, cache_seconds=60) as accounts:
            jid = await accounts.create("juliet@example.com", PASSWORD)
            header = basic(jid, PASSWORD)
            assert (
                await asyncio.gather(*(accounts.authenticate(header) for _ in range(200)))
                == [jid] * 200
            )
            assert accounts.slow_checks == 1
            wrong = basic(jid, PASSWORD + "!")
            answers = await asyncio.gather(
                *(accounts.authenticate(wrong) for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(a, Unauthorized) for a in answers)
            assert accounts.slow_checks == 2

    asyncio.run(scenario())


def test_a_busy_user_is_checked_again_before_the_cache_expires(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with accounts_on(tmp_path, cache_seconds=2) as accounts:
            jid = await accounts.create("juliet@example.com", PASSWORD)
            header = basic(jid, PASSWORD)
            await accounts.authenticate(header)
            await asyncio.sleep(1.7)  # in the cached login's last quarter
            assert await accounts.authenticate(header) == jid  # from the cache, a check started
            await asyncio.sleep(0.6)  # past the first expiry; the background check renewed it
            assert accounts.slow_checks == 2
            assert await accounts.authenticate(header) == jid
            assert accounts.slow_checks == 2

    asyncio.run(scenario())


def test_the_login_cache_is_bounded_and_keeps_the_latest(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with accounts_on(tmp_path, cache_seconds=3600, max_cached=4) as accounts:
            users = [await accounts.create(f"user{i}@example.com", PASSWORD) for i in range(6)]
            for user in users:
                await accounts.authenticate(basic(user, PASSWORD))
            assert accounts.slow_checks == 6
            for user in users[-3:]:  # still cached
                await accounts.authenticate(basic(user, PASSWORD))
            assert accounts.slow_checks == 6
            await accounts.authenticate(basic(users[0], PASSWORD))  # dropped for the newer
            assert accounts.slow_checks == 7

    asyncio.run(scenario())
