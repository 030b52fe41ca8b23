"""Accounts, channels, posts and following, over HTTP through Pushpin (a real run command)."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx

from tests.conftest import ALLOWED_ORIGIN, unique
from tests.support import PASSWORD, Holds, Stack
from tests.test_posts_feed import follow, last, post


def posts_of(client: httpx.Client, channel: str, **params: str) -> list[str]:
    r = client.get(f"/api/{channel}/content/posts", params=params)
    assert r.status_code == 200, r.text
    return [p["content"] for p in r.json()]


def test_health_needs_no_login(stack: Stack) -> None:
    with stack.client() as anonymous:
        r = anonymous.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_accounts_and_basic_auth(stack: Stack) -> None:
    user = unique("juliet")
    with stack.account(user) as c, stack.client() as anonymous:
        again = anonymous.post("/api/account", json={"username": user, "password": PASSWORD})
        assert again.status_code == 409
        upper = anonymous.post(
            "/api/account", json={"username": user.upper(), "password": PASSWORD}
        )
        assert upper.status_code == 409, "JIDs are compared in lower case"
        short = anonymous.post("/api/account", json={"username": unique("x"), "password": "short"})
        assert short.status_code == 400 and "password" in short.json()["error"]
        for bad in ["no-at-sign", "a@b/c", "a;b@c.d", "a@b@c", " a@b.c", '"q"@b.c', "", "a@"]:
            r = anonymous.post("/api/account", json={"username": bad, "password": PASSWORD})
            assert r.status_code == 400, bad

        missing = anonymous.get("/api/subscribed")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Basic realm=")
        assert missing.json()["error"]
        wrong = anonymous.get("/api/subscribed", auth=(user, "wrong password"))
        assert wrong.status_code == 401
        assert c.get("/api/subscribed").status_code == 200  # right password, now cached
        assert anonymous.get("/api/subscribed", auth=(user, "wrong password")).status_code == 401
        unknown = anonymous.get("/api/subscribed", auth=(unique("nobody"), PASSWORD))
        assert unknown.status_code == 401

        api_key = c.get("/api/account").json()["api_key"]
        by_key = anonymous.get("/api/subscribed", auth=(user, api_key))
        assert by_key.status_code == 200
        assert by_key.json() == {f"{user}/posts": "owner"}


def test_create_get_list_and_delete_posts(stack: Stack) -> None:
    user = unique("juliet")
    with stack.account(user) as c:
        created = c.post(f"/api/{user}/content/posts", json={"content": "first"})
        assert created.status_code == 201
        assert created.headers["content-type"] == "application/json"
        body = created.json()
        location = created.headers["location"]
        assert location.endswith(f"/content/posts/{body['id']}")
        assert c.get(location).json() == body
        reply = c.post(
            f"/api/{user}/content/posts", json={"content": "a reply", "replyTo": body["id"]}
        ).json()
        assert reply["replyTo"] == body["id"]
        for i in range(3):
            post(c, user, f"more {i}")
        assert posts_of(c, user) == ["more 2", "more 1", "more 0", "a reply", "first"]
        assert posts_of(c, user, max="2") == ["more 2", "more 1"]
        newest = c.get(f"/api/{user}/content/posts", params={"max": "1"}).json()[0]
        assert posts_of(c, user, after=newest["id"], max="2") == ["more 1", "more 0"]

        assert c.delete(location).status_code == 204
        assert c.get(location).status_code == 404
        assert c.delete(location).status_code == 404
        assert posts_of(c, user) == ["more 2", "more 1", "more 0", "a reply"]


def test_bad_input_is_a_4xx_json_error_and_stores_nothing(stack: Stack) -> None:
    user = unique("juliet")
    with stack.account(user) as c:
        post(c, user, "the only post")
        url = f"/api/{user}/content/posts"
        cases: list[tuple[int, dict[str, object]]] = [
            (400, {"json": {}}),
            (400, {"json": {"content": ""}}),
            (400, {"json": {"content": 5}}),
            (400, {"json": {"content": "x" * 10_001}}),
            (400, {"json": {"content": "x", "unknown": 1}}),
            (400, {"json": {"content": "x", "replyTo": "no-such-post"}}),
            (400, {"json": {"content": "x", "media": "nope"}}),
            (400, {"json": ["content"]}),
            (400, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
            (
                400,
                {
                    "content": b'{"content": "\xff"}',
                    "headers": {"content-type": "application/json"},
                },
            ),
            (415, {"content": b'{"content": "x"}', "headers": {"content-type": "text/plain"}}),
            (413, {"json": {"content": "x" * 270_000}}),
        ]
        for status, kwargs in cases:
            r = c.post(url, **kwargs)  # type: ignore[arg-type]
            assert r.status_code == status, (kwargs, r.text)
            assert r.headers["content-type"] == "application/json"
            assert isinstance(r.json()["error"], str)
        assert (
            c.post(f"/api/{unique('ghost')}/content/posts", json={"content": "x"}).status_code
            == 404
        )
        assert c.post(f"/api/{user}/content/nosuchnode", json={"content": "x"}).status_code == 404
        assert c.post(f"/api/{user}/content/Bad%20Node", json={"content": "x"}).status_code == 400
        assert c.post("/api/not-a-jid/content/posts", json={"content": "x"}).status_code == 400
        assert c.get(f"/api/{user}/content/posts", params={"max": "-1"}).status_code == 400
        assert c.get(f"/api/{user}/content/posts", params={"after": "nope"}).status_code == 400
        assert c.get("/api/no/such/endpoint/at/all").status_code == 404
        assert posts_of(c, user) == ["the only post"]


def test_roles_decide_who_may_post_and_delete(stack: Stack) -> None:
    owner, follower, member, stranger = (unique(n) for n in ("capulet", "nurse", "page", "monk"))
    topic = f"verona-{owner.partition('@')[0]}@topics.example.com"
    members_only = f"crypt-{owner.partition('@')[0]}@topics.example.com"
    with (
        stack.account(owner) as o,
        stack.account(follower) as f,
        stack.account(member) as m,
        stack.account(stranger) as s,
    ):
        assert o.post(f"/api/{topic}", json={"title": "Verona"}).status_code == 201
        assert o.post(f"/api/{topic}").status_code == 409
        r = o.post(f"/api/{members_only}", json={"default_affiliation": "member"})
        assert r.status_code == 201
        assert o.post(f"/api/{unique('x')}", json={"access_model": "secret"}).status_code == 400

        # Following an open channel gives its default role, never more than that.
        follow(f, f"{topic}/posts")
        assert f.get("/api/subscribed").json()[f"{topic}/posts"] == "publisher"
        r = m.post("/api/subscribed", json={f"{members_only}/posts": "moderator"})
        assert r.json()[f"{members_only}/posts"] == "member"
        r = m.post("/api/subscribed", json={f"{topic}/posts": "owner"})
        assert r.json()[f"{topic}/posts"] == "publisher"

        mine = post(f, topic, "a follower with the publisher role may post")
        assert s.post(f"/api/{topic}/content/posts", json={"content": "x"}).status_code == 403
        assert (
            m.post(f"/api/{members_only}/content/posts", json={"content": "x"}).status_code == 403
        )
        # Anyone logged in may read an open channel.
        assert posts_of(s, topic) == [mine["content"]]

        theirs = post(o, topic, "the owner's post")
        assert f.delete(f"/api/{topic}/content/posts/{theirs['id']}").status_code == 403
        assert s.delete(f"/api/{topic}/content/posts/{mine['id']}").status_code == 403
        assert o.delete(f"/api/{topic}/content/posts/{mine['id']}").status_code == 204
        assert f.delete(f"/api/{topic}/content/posts/{theirs['id']}").status_code == 403
        assert o.delete(f"/api/{topic}/content/posts/{theirs['id']}").status_code == 204


def test_follow_and_unfollow(stack: Stack, holds: Holds) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    with stack.account(reader) as r, stack.account(writer) as w:
        assert r.get("/api/subscribed").json() == {f"{reader}/posts": "owner"}
        follow(r, f"{writer}/posts")
        assert r.get("/api/subscribed").json() == {
            f"{reader}/posts": "owner",
            f"{writer}/posts": "publisher",
        }
        since = last(r)
        unfollowed = r.post("/api/subscribed", json={f"{writer}/posts": "none"})
        assert unfollowed.json() == {f"{reader}/posts": "owner"}
        held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
        post(w, writer, "after the unfollow")
        mine = post(r, reader, "the next post the reader may see: their own")
        assert holds.published(held).json()["items"] == [mine]
        own = r.post("/api/subscribed", json={f"{reader}/posts": "none"})
        assert own.status_code == 409
        for bad in [[], {}, {"no-slash": "member"}, {f"{writer}/posts": "king"}]:
            assert r.post("/api/subscribed", json=bad).status_code == 400, bad
        assert r.post("/api/subscribed", json={f"{unique('g')}/posts": "member"}).status_code == 404
        assert r.get("/api/subscribed").json() == {f"{reader}/posts": "owner"}


def test_cors_for_configured_origins_on_immediate_and_published_answers(
    stack: Stack, holds: Holds
) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    allowed = {"Origin": ALLOWED_ORIGIN}
    with stack.account(reader) as r, stack.account(writer) as w:
        follow(r, f"{writer}/posts")
        since = last(r)
        now = r.get("/api/notifications/posts", headers=allowed)
        assert now.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        other = r.get("/api/notifications/posts", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = r.options(
            "/api/notifications/posts",
            headers={
                **allowed,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        held = holds.hold(
            "posts", r.get, f"/api/notifications/posts?since={since}", headers=allowed
        )
        post(w, writer, "cross-origin")
        published = holds.published(held)
        assert published.json()["items"][0]["content"] == "cross-origin"
        assert published.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert published.headers["content-type"] == "application/json"


def test_bodies_that_once_caused_server_errors_are_4xx(stack: Stack) -> None:
    user = unique("juliet")
    with stack.account(user) as c, stack.client() as anonymous:
        json_type = {"content-type": "application/json"}
        surrogate = b'"\\ud800 unpaired"'
        cases = [
            (anonymous, "/api/account", b'{"username": "x@y.z", "password": ' + surrogate + b"}"),
            (c, f"/api/{user}/content/posts", b'{"content": ' + surrogate + b"}"),
            (c, f"/api/{unique('t')}", b'{"title": ' + surrogate + b"}"),
            # PostgreSQL stores no NUL in text: refused on every backend alike.
            (c, f"/api/{unique('t')}", b'{"title": "a\\u0000b"}'),
            (c, f"/api/{user}/metadata/posts", b'{"description": "\\u0000"}'),
            (c, f"/api/{user}/content/posts", b"[" * 30_000),
            (c, "/api/subscribed", json.dumps({f"{user}/posts": []}).encode()),
            (c, "/api/subscribed", json.dumps({f"{user}/posts": {}}).encode()),
        ]
        for client, url, body in cases:
            r = client.post(url, content=body, headers=json_type)
            assert r.status_code == 400, (url, body[:60], r.text)
            assert r.json()["error"]
        post(c, user, "the first post that is fine")
        assert posts_of(c, user) == ["the first post that is fine"]


def test_bad_cursors_are_400_and_never_held(stack: Stack) -> None:
    user = unique("juliet")
    with stack.account(user) as c:
        current = int(last(c))
        ahead, huge = str(current + 1000), "9" * 30
        for since in ["abc", "-1", "1e5", "0x10", " 1", "\uff11", "", ahead, huge]:
            r = c.get("/api/notifications/posts", params={"since": since}, timeout=5)
            assert r.status_code == 400, since
            assert "since" in r.json()["error"]


def test_hostile_names_never_reach_another_channel(stack: Stack) -> None:
    user = unique("juliet")
    with stack.account(user) as c:
        names = [
            "a;b@example.com",
            "a,b@example.com",
            'a"b@example.com',
            "a'b@example.com",
            "a\nb@example.com",
            "a b@example.com",
            "a<b>@example.com",
            "a\\b@example.com",
            "a@..",
            "a@b..c",
            "a@" + "d" * 300,
        ]
        for name in names:
            r = c.post(f"/api/{quote(name, safe='')}")
            assert r.status_code in (400, 404), (name, r.status_code)
            assert r.json()["error"]
        # Path tricks: an encoded slash or dot-segments never address another channel's node.
        for path in [
            f"/api/{quote(user + '/../' + user, safe='')}/content/posts",
            f"/api/{user}%2Fcontent%2Fposts/content/posts",
            f"/api/{user}/content/posts%2F..",
            f"/api/{user}/content/..%2Fposts",
        ]:
            r = c.post(path, json={"content": "x"})
            assert 400 <= r.status_code < 500, (path, r.status_code)
        post(c, user, "by the right path")
        assert posts_of(c, user) == ["by the right path"]


def test_a_refused_cursor_does_not_move_last_online(stack: Stack) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    with stack.account(reader) as r, stack.account(writer) as w:
        follow(r, f"{writer}/posts")
        before = r.get("/api/notifications/history").json()["last"]
        ahead = str(int(last(r)) + 1_000_000)
        assert r.get(f"/api/notifications/posts?since={ahead}").status_code == 400
        assert r.get("/api/notifications/history").json()["last"] == before
        created = post(w, writer, "after the refused cursor")
        assert r.get("/api/notifications/history").json()["items"][-1]["post"] == created
    # A number Python refuses to parse (over 4,300 digits), straight to the origin (Pushpin
    # drops so long a request line).
    with stack.client(writer, origin=True) as direct:
        huge = {"max": "9" * 5000}
        assert direct.get(f"/api/{writer}/content/posts", params=huge).status_code == 400
