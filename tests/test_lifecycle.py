"""Accounts over time, through the real run command (Pushpin and origin) on both backends: a
new password, a new API key and a deleted account, on the API and in Zulip's forms; the old
credentials refused at once, on every node of a cluster; and what was open with them (a
stream, a socket, a browser session, a held long-poll) closed."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import zulip

from tests.conftest import unique
from tests.sse import EventStream
from tests.support import PASSWORD, TLS, Background, Stack, basic, cluster, long_poll
from tests.test_cluster import node_env
from tests.test_posts_feed import follow, last, post
from tests.test_sessions import login, send
from tests.test_sockets import Socket, contents
from tests.test_streams import open_stream, take

NEW_PASSWORD = "a new horse battery"


def status(base: str, auth: tuple[str, str] | None = None, cookie: str | None = None) -> int:
    """What ``GET /api/account`` answers with these credentials."""
    return send(base, "GET", "/api/account", auth=auth, cookie=cookie).status_code


def api_key(stack: Stack, user: str) -> str:
    with stack.client(user) as c:
        key: str = c.get("/api/account").json()["api_key"]
    return key


def ended(bg: Background, stream: EventStream, timeout: float = 10) -> bool:
    """Does ``stream`` end (its body closes) within ``timeout``, with no event first?"""
    try:
        event = bg.call(stream.next(timeout), timeout + 5)
    except (EOFError, ConnectionError):
        return True
    finally:
        stream.close()
    raise AssertionError(f"an event came instead: {event}")


def close_code(bg: Background, sock: Socket, timeout: float = 10) -> int | None:
    """The close code of ``sock``, once it closes (AssertionError if a frame comes first)."""

    async def closed() -> int | None:
        try:
            frame = await asyncio.wait_for(sock.ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        raise AssertionError(f"a frame came instead: {frame!r}")

    return bg.call(closed(), timeout + 5)


def test_changing_the_password(stack: Stack) -> None:
    user = unique("life")
    stack.account(user).close()
    key = api_key(stack, user)
    change = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    with stack.client(user) as c:
        for body, code in [
            ({"old_password": "wrong password", "new_password": NEW_PASSWORD}, 403),
            ({"old_password": PASSWORD, "new_password": "short"}, 400),
            ({"old_password": PASSWORD, "new_password": "x" * 1025}, 400),
            ({"old_password": PASSWORD, "new_password": 12345678}, 400),
            ({"new_password": NEW_PASSWORD}, 400),
            ([PASSWORD, NEW_PASSWORD], 400),
        ]:
            r = c.patch("/api/account", json=body)
            assert r.status_code == code, (body, r.text)
            assert isinstance(r.json()["error"], str)
            assert status(stack.url, (user, PASSWORD)) == 200  # nothing changed
        # With the API key as the old password: that is not the password.
        r = c.patch("/api/account", json={**change, "old_password": key})
        assert r.status_code == 403, r.text
        assert c.patch("/api/account", json=change).status_code == 204
    assert status(stack.url, (user, PASSWORD)) == 401
    assert status(stack.url, (user, NEW_PASSWORD)) == 200
    assert status(stack.url, (user, key)) == 200  # the key is another credential


def test_rotating_the_api_key(stack: Stack) -> None:
    user = unique("life")
    stack.account(user).close()
    old = api_key(stack, user)
    assert status(stack.url, (user, old)) == 200
    r = send(stack.url, "POST", "/api/account/api_key", auth=(user, old))
    assert r.status_code == 200, r.text
    new = r.json()["api_key"]
    assert new != old and r.headers["cache-control"] == "no-store"
    assert status(stack.url, (user, old)) == 401
    assert status(stack.url, (user, new)) == 200
    assert status(stack.url, (user, PASSWORD)) == 200


def test_a_change_closes_streams_sockets_sessions_and_held_polls(
    stack: Stack, bg: Background
) -> None:
    """Each open thing first shows it works (a post arrives); after the change, the stream
    ends, the socket closes with 4001, the cookie is refused and the held long-poll is
    answered 401 at once. With the new password, the same feed works again."""
    user = unique("life")
    with stack.account(user) as c:
        stream = open_stream(bg, stack.url, "/api/notifications/posts", user)
        sock = Socket.of(bg, stack.url, user)
        sock.online()
        cookie = login(stack.url, user)
        assert status(stack.url, cookie=cookie) == 200
        post(c, user, "before")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "before"
        assert contents(sock.take(1)) == ["before"]
        held: Future[tuple[int, dict[str, Any]]] = asyncio.run_coroutine_threadsafe(
            long_poll(stack.url, user, last(c)), bg.loop
        )
        with pytest.raises(TimeoutError):  # held, not answered
            held.result(timeout=1.5)
        r = c.patch("/api/account", json={"old_password": PASSWORD, "new_password": NEW_PASSWORD})
        assert r.status_code == 204, r.text
    assert held.result(timeout=10)[0] == 401
    assert ended(bg, stream)
    assert close_code(bg, sock) == 4001
    assert status(stack.url, cookie=cookie) == 401
    with httpx.Client(verify=TLS, base_url=stack.url, auth=(user, NEW_PASSWORD), timeout=30) as c:
        login_now = basic(user, NEW_PASSWORD)
        stream = open_stream(bg, stack.url, "/api/notifications/posts", Authorization=login_now)
        post(c, user, "after")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "after"
        stream.close()


def test_deleting_an_account(stack: Stack, bg: Background) -> None:
    """Its credentials, sessions, stream and socket end; its posts stay in its channel, in
    followers' feeds and in the firehose, authored by its JID; the JID is not given again."""
    gone, reader = unique("gone"), unique("reader")
    with stack.account(gone) as g, stack.account(reader) as r:
        follow(r, f"{gone}/posts")
        since = last(r)
        post(g, gone, "my last words")
        key = api_key(stack, gone)
        stream = open_stream(bg, stack.url, "/api/notifications/events", gone)
        sock = Socket.of(bg, stack.url, gone)
        sock.online()
        cookie = login(stack.url, gone)
        for body, code in [
            (None, 415),
            ({}, 400),
            ({"password": "wrong password"}, 403),
            ({"password": key}, 403),  # the API key is not the password
        ]:
            answer = (
                g.request("DELETE", "/api/account", json=body)
                if body is not None
                else (g.request("DELETE", "/api/account"))
            )
            assert answer.status_code == code, (body, answer.text)
            assert status(stack.url, (gone, PASSWORD)) == 200
        r2 = g.request("DELETE", "/api/account", json={"password": PASSWORD})
        assert r2.status_code == 204, r2.text
        for secret in (PASSWORD, key):
            assert status(stack.url, (gone, secret)) == 401
        assert status(stack.url, cookie=cookie) == 401
        assert ended(bg, stream)
        assert close_code(bg, sock) == 4001
        fetch = {"username": gone, "password": PASSWORD}
        assert r.post("/api/v1/fetch_api_key", data=fetch).status_code == 401
        # What stays: the posts, wherever they were served before.
        feed = r.get(f"/api/notifications/posts?since={since}").json()["items"]
        assert [(p["author"], p["content"]) for p in feed] == [(gone, "my last words")]
        listed = r.get(f"/api/{gone}/content/posts").json()
        assert [p["content"] for p in listed] == ["my last words"]
        firehose = r.get(f"/api/firehose?since={since}").json()["items"]
        assert (gone, "my last words") in [(p["author"], p["content"]) for p in firehose]
        # The name is not given again.
        again = {"username": gone, "password": PASSWORD}
        assert r.post("/api/account", json=again).status_code == 409


def close(client: zulip.Client) -> None:
    if client.session is not None:
        client.session.close()


def test_zulip_forms(stack: Stack) -> None:
    user = unique("zulip")
    stack.account(user).close()
    old_key = api_key(stack, user)
    client = zulip.Client(email=user, api_key=old_key, site=stack.url)
    try:
        change = {"old_password": "wrong password", "new_password": NEW_PASSWORD}
        answer = client.call_endpoint("settings", method="PATCH", request=change)
        assert answer["result"] == "error", answer
        assert status(stack.url, (user, PASSWORD)) == 200
        change["old_password"] = PASSWORD
        answer = client.call_endpoint("settings", method="PATCH", request=change)
        assert answer == {"result": "success", "msg": ""}, answer
        assert status(stack.url, (user, PASSWORD)) == 401
        assert status(stack.url, (user, NEW_PASSWORD)) == 200
        answer = client.call_endpoint("users/me/api_key/regenerate", method="POST")
        assert answer["result"] == "success", answer
        new_key = answer["api_key"]
        assert status(stack.url, (user, old_key)) == 401
        assert status(stack.url, (user, new_key)) == 200
    finally:
        close(client)
    client = zulip.Client(email=user, api_key=new_key, site=stack.url)
    try:
        answer = client.call_endpoint("users/me", method="DELETE", request={})
        assert answer["result"] == "error" and "password" in answer["msg"], answer
        request = {"password": NEW_PASSWORD}
        answer = client.call_endpoint("users/me", method="DELETE", request=request)
        assert answer == {"result": "success", "msg": ""}, answer
        assert status(stack.url, (user, new_key)) == 401
    finally:
        close(client)


def test_a_change_on_one_node_is_refused_at_once_on_the_other(
    tmp_path: Path, postgres_url: str, bg: Background
) -> None:
    """Two nodes on one PostgreSQL: node 1's origin has the old password cached (and a
    session); the password changes through node 0; node 1 refuses both straight away, and a
    stream open through node 1's Pushpin ends."""
    user = unique("life")
    with cluster(tmp_path, 2, **node_env(postgres_url)) as nodes:
        first, second = nodes
        first.account(user).close()
        cookie = login(second.url, user)
        assert status(second.origin_url, (user, PASSWORD)) == 200  # cached there now
        assert status(second.origin_url, cookie=cookie) == 200
        stream = open_stream(bg, second.url, "/api/notifications/posts", user)
        with first.client(user) as c:
            post(c, user, "control")
            (event,) = take(bg, stream, 1)
            assert event.json["content"] == "control"
            change = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
            assert c.patch("/api/account", json=change).status_code == 204
        assert status(second.origin_url, (user, PASSWORD)) == 401
        assert status(second.origin_url, cookie=cookie) == 401
        assert status(second.origin_url, (user, NEW_PASSWORD)) == 200
        assert ended(bg, stream)
