"""Names as XMPP compares them (RFC 7622), through the real run command and Pushpin: width and
case variants are one account and one channel, invisible and direction-control characters are
refused, an A-label domain is its U-label, a URL that is not UTF-8 is refused, and a store
whose names would now fold together does not start."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from app.accounts import hash_password
from app.config import Limits
from app.store import open_store
from app.store.schema import MIGRATIONS
from tests.conftest import unique
from tests.support import PASSWORD, TLS, Stack, raw_get, running
from tests.test_posts_feed import follow, post

# Invisible characters and direction controls, each of which once made a name that looked
# like another: zero-width joiner, non-joiner and space, right-to-left override, left-to-right
# embedding, isolates, marks, byte order mark, soft hyphen, word joiner, combining grapheme
# joiner, a variation selector, the Mongolian vowel separator, a Hangul filler, a tag.
INVISIBLE = [
    "\u200d", "\u200c", "\u200b", "\u202e", "\u202a", "\u2066", "\u2069", "\u200e", "\u200f",
    "\u061c", "\ufeff", "\u00ad", "\u2060", "\u034f", "\ufe0f", "\u180e", "\u3164", "\U000e0001",
]  # fmt: skip


def fullwidth(text: str) -> str:
    """ASCII letters and digits as their fullwidth forms (U+FF01 on): ``a`` is U+FF41."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in text)


def create(client: httpx.Client, username: str) -> httpx.Response:
    return client.post("/api/account", json={"username": username, "password": PASSWORD})


def whoami(stack: Stack, login: str, password: str = PASSWORD) -> httpx.Response:
    with httpx.Client(verify=TLS, base_url=stack.url, auth=(login, password), timeout=30) as c:
        return c.get("/api/account")


def test_width_and_case_variants_are_one_account(stack: Stack) -> None:
    user = unique("alice")
    local, _, domain = user.partition("@")
    with stack.client() as anonymous:
        first = create(anonymous, f"{fullwidth(local)}@{domain.upper()}")
        assert first.status_code == 201 and first.json() == {"username": user}, first.text
        for variant in (user, user.upper(), f"{fullwidth(local)}@{domain}", fullwidth(user)):
            again = create(anonymous, variant)
            assert again.status_code == 409, (variant, again.text)
        assert create(anonymous, unique("alice")).status_code == 201  # a new name is taken
    for login in (user, user.upper(), fullwidth(user), f"{local.title()}@{domain.upper()}"):
        r = whoami(stack, login)
        assert r.status_code == 200 and r.json()["username"] == user, (login, r.text)
    assert whoami(stack, unique("alice")).status_code == 401  # and another name is not hers


def test_width_and_case_variants_are_one_channel(stack: Stack) -> None:
    owner, reader = unique("owner"), unique("reader")
    topic = f"garden-{owner.partition('@')[0]}@topics.example.com"
    with stack.account(owner) as o, stack.account(reader) as r:
        made = o.post(f"/api/{fullwidth(topic).upper()}")
        assert made.status_code == 201, made.text
        assert o.post(f"/api/{topic}").status_code == 409
        assert o.post(f"/api/{topic.upper()}").status_code == 409
        follow = r.post("/api/subscribed", json={f"{topic.upper()}/posts": "publisher"})
        assert follow.status_code == 200 and follow.json()[f"{topic}/posts"] == "publisher"
        sent = post(r, fullwidth(topic), "one channel")
        assert sent["source"] == f"{topic}/posts" and sent["author"] == reader
        listed = o.get(f"/api/{topic}/content/posts").json()
        assert [p["id"] for p in listed] == [sent["id"]]
        # A JID in a body folds the same way: the owner bans the reader by another spelling.
        ban = o.post(f"/api/{topic}/subscribers/posts", json={fullwidth(reader): "outcast"})
        assert ban.status_code == 200, ban.text
        roles = o.get(f"/api/{topic}/subscribers/posts").json()
        assert roles[reader] == "outcast" and fullwidth(reader) not in roles


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_invisible_and_direction_controls_are_refused(stack: Stack, char: str) -> None:
    user = unique("bob")
    local, _, domain = user.partition("@")
    tricks = [
        f"{local[:2]}{char}{local[2:]}@{domain}",
        f"{char}{user}",
        f"{local}@ex{char}ample.com",
    ]
    with stack.client() as anonymous:
        for name in tricks:
            r = create(anonymous, name)
            assert r.status_code == 400, (name, r.text)
            assert r.headers["content-type"] == "application/json"
            assert "invalid JID" in r.json()["error"], r.text
        assert create(anonymous, user).status_code == 201  # none of them took the plain name
    with stack.account(unique("carol")) as c:
        for name in tricks:
            assert c.post(f"/api/{name}").status_code == 400, name
            follow = c.post("/api/subscribed", json={f"{name}/posts": "member"})
            assert follow.status_code == 400, (name, follow.text)
        assert c.post("/api/subscribed", json={f"{user}/posts": "member"}).status_code == 200


def test_a_url_that_is_not_utf8_is_refused_and_creates_nothing(stack: Stack) -> None:
    user = unique("dave")
    with stack.account(user) as c:
        before = c.get("/api/subscribed").json()
        for path in (
            f"/api/%FF{user}",
            f"/api/{user.replace('@', '%C0%40')}",
            "/api/%E9t%E9@x.com",
        ):
            r = c.post(path)
            assert r.status_code == 400, (path, r.text)
            assert "not UTF-8" in r.json()["error"], r.text
        assert c.get("/api/subscribed").json() == before
        # Positive controls: UTF-8, percent-encoded, is a name like any other.
        topic = f"%C3%A9t%C3%A9-{user.partition('@')[0]}@topics.example.com"
        made = c.post(f"/api/{topic}")
        assert made.status_code == 201, made.text
        assert (
            f"été-{user.partition('@')[0]}@topics.example.com/posts"
            in c.get("/api/subscribed").json()
        )
        # A "%" that starts no escape: Pushpin passes it on as a literal "%" (escaped, %25),
        # and the origin, reached directly, refuses it.
        host, port = stack.origin_url.removeprefix("http://").split(":")
        status, _, body = asyncio.run(
            raw_get(host, int(port), f"/api/{user}%G0/metadata/posts", {}, 10)
        )
        assert status == 400 and b"percent-encoding" in body, body
        # The Zulip side answers as Zulip does, for a bad query string as for a path.
        key = c.get("/api/account").json()["api_key"]
    with httpx.Client(verify=TLS, base_url=stack.url, auth=(user, key), timeout=30) as z:
        r = z.get("/api/v1/events?queue_id=%FF&last_event_id=-1")
        assert r.status_code == 400
        assert r.json()["result"] == "error" and r.json()["code"] == "BAD_REQUEST", r.text
        assert "percent-encoding" in r.json()["msg"]


def test_an_a_label_domain_is_the_same_account_as_its_u_label(stack: Stack) -> None:
    local = unique("erin").partition("@")[0]
    with stack.client() as anonymous:
        made = create(anonymous, f"{local}@xn--bcher-kva.example")
        assert made.status_code == 201 and made.json() == {"username": f"{local}@bücher.example"}
        assert create(anonymous, f"{local}@bücher.example").status_code == 409
        assert create(anonymous, f"{local}@BÜCHER.EXAMPLE").status_code == 409
        assert create(anonymous, f"{local}@bucher.example").status_code == 201  # not the same
    for login in (f"{local}@bücher.example", f"{local}@XN--BCHER-KVA.EXAMPLE"):
        r = whoami(stack, login)
        assert r.status_code == 200 and r.json()["username"] == f"{local}@bücher.example"


def test_a_narrow_names_a_stream_or_a_sender_in_any_spelling(stack: Stack) -> None:
    reader, writer = unique("reader"), unique("writer")
    with stack.account(reader) as r, stack.account(writer) as w:
        follow(r, f"{writer}/posts")
        key = r.get("/api/account").json()["api_key"]
        narrows = {
            "stream": [["stream", writer.upper()]],
            "sender": [["sender", fullwidth(writer)]],
            "another stream": [["stream", fullwidth(reader)]],  # matches nothing here
        }
        with httpx.Client(
            verify=TLS, base_url=f"{stack.url}/api/v1/", auth=(reader, key), timeout=30
        ) as z:
            queues = {
                name: z.post("register", data={"narrow": json.dumps(narrow)}).json()["queue_id"]
                for name, narrow in narrows.items()
            }
            post(w, writer, "to the narrow")
            seen = {}
            for name, queue in queues.items():
                query = {"queue_id": queue, "last_event_id": "-1", "dont_block": "true"}
                events = z.get("events", params=query).json()["events"]
                seen[name] = [e["message"]["content"] for e in events if e["type"] == "message"]
    assert seen == {"stream": ["to the narrow"], "sender": ["to the narrow"], "another stream": []}


def test_failed_logins_count_for_the_account_however_it_is_spelled(tmp_path: Path) -> None:
    with running(tmp_path) as stack:
        victim, other = unique("frank"), unique("grace")
        stack.account(victim).close()
        stack.account(other).close()
        local, _, domain = victim.partition("@")
        spellings = [victim.upper(), fullwidth(victim), f"{local}@{domain.upper()}."]
        with stack.client() as c:
            for n in range(Limits().login_failures_per_account):
                wrong = c.get("/api/subscribed", auth=(spellings[n % len(spellings)], "guess"))
                assert wrong.status_code == 401
            assert c.get("/api/subscribed", auth=(victim, PASSWORD)).status_code == 429
            assert c.get("/api/subscribed", auth=(other, PASSWORD)).status_code == 200


def _store_at_version_3(path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A store as version 3 of this server made it (which lower-cased names and checked a
    pattern), with an account for each of ``names``, made by the store's own methods."""

    async def make() -> None:
        with monkeypatch.context() as patched:
            patched.setattr("app.store.sqlite.MIGRATIONS", MIGRATIONS[:3])
            store = open_store(f"sqlite://{path}")
            await store.open()
            assert await store.schema_version() == 3
            for name in names:
                await store.create_account(name, hash_password(PASSWORD), name, "2026-01-01")
            await store.close()

    asyncio.run(make())


def _accounts_before_the_check(path: Path, names: list[str]) -> int:
    """How many of ``names`` the store file still holds, as they were written (the server
    refused to start, so no API answers: the file is read as it is, whatever later versions'
    columns the store's own methods would ask for)."""
    with closing(sqlite3.connect(path)) as db:
        marks = ",".join("?" * len(names))
        (count,) = db.execute(
            f"SELECT count(*) FROM accounts WHERE jid IN ({marks})", names
        ).fetchone()
    return int(count)


def test_a_store_whose_names_now_fold_together_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    names = ["a@example.com", "\uff41@example.com", "romeo@example.com", "b\u200d@example.com"]
    _store_at_version_3(data / "buddycloud.sqlite3", names, monkeypatch)
    stack = Stack(data)
    with pytest.raises(RuntimeError, match="did not start"):
        stack.start()
    assert stack.process is not None and stack.process.wait(10) != 0
    log = stack.log()
    assert "'a@example.com', '\uff41@example.com' fold to 'a@example.com'" in log, log
    assert "'b\\u200d@example.com' is refused" in log, log
    assert "romeo@example.com" not in log, "a name that is fine is not listed"
    assert "Ready:" not in log and "Nothing was changed" in log
    # Nothing was merged or dropped.
    assert _accounts_before_the_check(data / "buddycloud.sqlite3", names) == 4


def test_a_store_whose_names_are_all_normal_migrates_and_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    names = ["juliet@example.com", "romeo@bücher.example"]
    _store_at_version_3(data / "buddycloud.sqlite3", names, monkeypatch)
    with running(data) as stack:
        assert f"at schema version {len(MIGRATIONS)}" in stack.log()
        for login in ("Juliet@Example.com", "romeo@xn--bcher-kva.example"):
            assert whoami(stack, login).status_code == 200, login
