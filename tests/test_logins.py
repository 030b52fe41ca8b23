"""Login and account creation limits, through the real run command: a slot is taken before each
slow hash, and nobody's failures lock out an API key or a password already right from there.

Every test comes from its own loopback address (127.0.0.N): Pushpin appends it to
X-Forwarded-For, and the origin counts each as one client address. Hashes are counted by the
origin itself, in /health's ``password_hashes``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.model import name_problems
from app.store import open_store
from app.throttle import AtOnce, Throttle
from tests.conftest import unique
from tests.databases import fresh_database
from tests.support import PASSWORD, Stack, running

_hosts = itertools.count(10)


def address() -> str:
    """A client address no other test here uses."""
    return f"127.0.0.{next(_hosts)}"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default login limits. No login is cached, so each one that is let through costs a
    hash: what lets a user in is the limits, never the cache."""
    with running(tmp_path_factory.mktemp("limited"), AUTH_CACHE_SECONDS="0") as stack:
        yield stack


@pytest.fixture(scope="module")
def few_accounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """3 accounts an hour per address, and no limit on hashes at once (a control)."""
    with running(
        tmp_path_factory.mktemp("few_accounts"),
        ACCOUNTS_PER_HOUR="3",
        HASHES_AT_ONCE_PER_ADDRESS="1000",
    ) as stack:
        yield stack


def client(stack: Stack, host: str) -> httpx.Client:
    """A client connecting to Pushpin from ``host``."""
    transport = httpx.HTTPTransport(local_address=host)
    return httpx.Client(base_url=stack.url, transport=transport, timeout=30.0)


def hashes(stack: Stack) -> dict[str, int]:
    with stack.client() as c:
        counts: dict[str, int] = c.get("/health").json()["password_hashes"]
        return counts


def create(stack: Stack, host: str, user: str) -> httpx.Response:
    with client(stack, host) as c:
        return c.post("/api/account", json={"username": user, "password": PASSWORD})


def api_key(stack: Stack, host: str, user: str) -> str:
    """``user``'s API key, asked with their password from ``host``."""
    with client(stack, host) as c:
        r = c.get("/api/account", auth=(user, PASSWORD))
        assert r.status_code == 200, r.text
        key: str = r.json()["api_key"]
        return key


def logins(stack: Stack, host: str, credentials: list[tuple[str, str]]) -> list[httpx.Response]:
    """One login with each of ``credentials``, all at once, from ``host``."""

    async def all_at_once() -> list[httpx.Response]:
        transport = httpx.AsyncHTTPTransport(
            local_address=host, limits=httpx.Limits(max_connections=len(credentials))
        )
        async with httpx.AsyncClient(base_url=stack.url, transport=transport, timeout=60.0) as c:

            async def login(auth: tuple[str, str]) -> httpx.Response:
                for attempt in range(20):
                    r = await c.get("/api/subscribed", auth=auth)
                    if r.status_code not in (500, 502):  # Pushpin's answer to a sudden burst
                        return r
                    await asyncio.sleep(0.05 * (attempt + 1))
                return r

            return await asyncio.gather(*(login(auth) for auth in credentials))

    return asyncio.run(all_at_once())


def refused(r: httpx.Response, window: int = 60) -> bool:
    """A 429 that says when to come back."""
    return (
        r.status_code == 429
        and 1 <= int(r.headers["retry-after"]) <= window
        and "try again" in r.json()["error"]
    )


def test_the_limits_default_to_what_the_readme_says(tmp_path: Path) -> None:
    limits = Settings.from_env({"DATA_DIR": str(tmp_path)}).limits
    assert limits.accounts_per_hour == 20
    assert limits.login_failures_per_account == 10
    assert limits.login_failures_per_address == 30
    assert limits.unknown_logins_per_address == 30
    assert limits.hashes_at_once_per_address == 4


def test_throttle_counts_in_a_sliding_window_and_takes_slots(backend: str, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/x.sqlite3" if backend == "sqlite" else fresh_database()

    async def scenario() -> None:
        # Two stores on one database, as two origins: they count against the same limit.
        first, second = open_store(url), open_store(url)
        await first.open(name_problems)
        await second.open(name_problems)
        try:
            here, there = (Throttle(s, "test", limit=3, window=60) for s in (first, second))
            assert [
                await t.take("slots", now=n) for t, n in ((here, 0), (there, 1), (here, 2))
            ] == [
                0,
                0,
                0,
            ]
            assert await there.take("slots", now=3) == pytest.approx(57)  # refused, not counted
            assert await here.take("other", now=3) == 0
            await there.give_back("slots")
            assert await here.take("slots", now=4) == 0
            assert await there.take("slots", now=60.5) == 0  # the one taken at 0 left the window
            # Taken at once from both: never more than the limit.
            await first.prune_slots(before=10**10)
            results = await asyncio.gather(*(t.take("racing", now=100) for t in (here, there) * 10))
            assert results.count(0) == 3
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_at_once_lets_a_few_run_and_the_others_wait_their_turn() -> None:
    async def scenario() -> None:
        gate, running, finished = AtOnce(limit=2), Counter[str](), []

        async def job(key: str, n: int) -> None:
            async with gate.slot(key):
                running[key] += 1
                assert running[key] <= 2
                await asyncio.sleep(0.01)
                running[key] -= 1
            finished.append(n)

        await asyncio.gather(*(job("a", n) for n in range(6)), job("b", 6), job("b", 7))
        assert sorted(finished) == list(range(8)) and gate.most == 2

    asyncio.run(scenario())


def test_concurrent_wrong_passwords_for_one_account_cost_at_most_the_limit(
    limited: Stack,
) -> None:
    here, elsewhere = address(), address()
    victim = unique("juliet")
    assert create(limited, here, victim).status_code == 201
    key = api_key(limited, elsewhere, victim)
    before = hashes(limited)
    answers = logins(limited, here, [(victim, f"guess {n}") for n in range(200)])
    after = hashes(limited)
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {401: 10, 429: 190}, statuses
    assert all(refused(r) for r in answers if r.status_code == 429)
    assert after["logins"] - before["logins"] == 10, (before, after)
    assert after["most_at_once"] <= 4

    with client(limited, here) as c:
        # The password from here waits out the minute, and so does fetch_api_key...
        assert refused(c.get("/api/subscribed", auth=(victim, PASSWORD)))
        fetch = c.post("/api/v1/fetch_api_key", data={"username": victim, "password": PASSWORD})
        assert fetch.status_code == 429 and fetch.json()["code"] == "RATE_LIMIT_HIT"
        # ...but the API key is never refused.
        assert c.get("/api/subscribed", auth=(victim, key)).status_code == 200
    with client(limited, elsewhere) as c:  # nor is the password where it was right before
        assert c.get("/api/subscribed", auth=(victim, PASSWORD)).status_code == 200
    assert hashes(limited)["logins"] - after["logins"] == 1  # refusals and API keys cost none


def test_an_address_runs_at_most_a_few_hashes_at_once(limited: Stack, few_accounts: Stack) -> None:
    def most_at_once(stack: Stack) -> tuple[Counter[int], int]:
        setup, here = address(), address()
        users = [unique("romeo") for _ in range(3)]
        for user in users:
            assert create(stack, setup, user).status_code == 201
        before = hashes(stack)["logins"]
        answers = logins(stack, here, [(u, f"guess {n}") for u in users for n in range(8)])
        after = hashes(stack)
        assert after["logins"] - before == 24
        return Counter(r.status_code for r in answers), after["most_at_once"]

    # 24 wrong passwords at once (under every failure limit): each waits its turn, none is
    # refused, and no more than 4 are hashed at once.
    statuses, most = most_at_once(limited)
    assert statuses == {401: 24} and most == 4
    # The control: with no such limit, the same burst runs more at once.
    statuses, most = most_at_once(few_accounts)
    assert statuses == {401: 24} and most > 4


def test_failures_for_unknown_accounts_do_not_lock_out_real_ones(limited: Stack) -> None:
    here, elsewhere = address(), address()
    user = unique("juliet")
    assert create(limited, here, user).status_code == 201
    key = api_key(limited, elsewhere, user)
    before = hashes(limited)["logins"]
    with client(limited, here) as c:
        for n in range(30):  # whatever address they claim: Pushpin appends the real one
            spoof = {"X-Forwarded-For": f"10.0.0.{n}"} if n % 2 else {}
            nobody = unique("nobody") if n % 3 else "not a jid"
            r = c.get("/api/subscribed", auth=(nobody, "guess"), headers=spoof)
            assert r.status_code == 401
        assert refused(c.get("/api/subscribed", auth=(unique("nobody"), "guess")))
        # Their own count is full; logins to a real account, never right from here, are not
        # held back: a right password is let in, a wrong one is told so.
        assert c.get("/api/subscribed", auth=(user, PASSWORD)).status_code == 200
        assert c.get("/api/subscribed", auth=(user, "guess")).status_code == 401
        assert c.get("/api/subscribed", auth=(user, key)).status_code == 200
    assert hashes(limited)["logins"] - before == 2  # unknown accounts cost no hash


def test_a_password_right_before_from_an_address_is_not_locked_out_by_others(
    limited: Stack,
) -> None:
    office, home = address(), address()
    victim, newcomer, mallory, eve = (unique(name) for name in ("juliet", "romeo", "m", "e"))
    for user in (victim, newcomer, mallory, eve):
        assert create(limited, home, user).status_code == 201
    newcomer_key = api_key(limited, home, newcomer)
    with client(limited, office) as c:
        assert c.get("/api/subscribed", auth=(victim, PASSWORD)).status_code == 200
        # Someone in the same office guesses the victim's password, then fills the office's
        # limit on failures with other accounts.
        for user in (victim, mallory, eve):
            for _ in range(10):
                assert c.get("/api/subscribed", auth=(user, "guess")).status_code == 401
        assert refused(c.get("/api/subscribed", auth=(victim, "guess")))
        assert refused(c.get("/api/subscribed", auth=(newcomer, "guess")))
        before = hashes(limited)["logins"]
        # The victim's password was right from here: it still is, each time checked anew.
        for _ in range(3):
            assert c.get("/api/subscribed", auth=(victim, PASSWORD)).status_code == 200
        assert hashes(limited)["logins"] - before == 3
        # A password never right from here waits out the minute; an API key never waits.
        assert refused(c.get("/api/subscribed", auth=(newcomer, PASSWORD)))
        assert c.get("/api/subscribed", auth=(newcomer, newcomer_key)).status_code == 200
    with client(limited, home) as c:  # and from elsewhere, nothing is held back
        assert c.get("/api/subscribed", auth=(newcomer, PASSWORD)).status_code == 200


def test_a_taken_name_costs_no_hash(limited: Stack) -> None:
    here = address()
    user, topic = unique("juliet"), unique("topic")
    before = hashes(limited)["accounts"]
    assert create(limited, here, user).status_code == 201
    assert hashes(limited)["accounts"] - before == 1
    with client(limited, here) as c:
        assert c.post(f"/api/{topic}", auth=(user, PASSWORD), json={}).status_code == 201
    for taken in (user, user.upper(), topic):  # an account's name, or a topic channel's
        r = create(limited, here, taken)
        assert r.status_code == 409 and "already exists" in r.json()["error"]
    assert hashes(limited)["accounts"] - before == 1


def test_account_creation_is_limited_per_address(few_accounts: Stack) -> None:
    here, elsewhere = address(), address()
    before = hashes(few_accounts)["accounts"]
    made = [unique("juliet") for _ in range(3)]
    for user in made:
        assert create(few_accounts, here, user).status_code == 201
    r = create(few_accounts, here, unique("romeo"))
    assert refused(r, window=3600) and int(r.headers["retry-after"]) > 3500
    assert create(few_accounts, here, made[0]).status_code == 409  # the name first
    assert create(few_accounts, elsewhere, unique("romeo")).status_code == 201
    assert hashes(few_accounts)["accounts"] - before == 4  # nothing refused cost a hash
