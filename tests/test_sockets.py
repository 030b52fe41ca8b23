"""The seed's socket through a real Pushpin (WebSocket-over-HTTP), with a real WebSocket client
(``websockets``): presence, history, live events, each once and in order across reconnects,
races with the subscription, access changes, an origin restart, bad frames and logins."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from app.wakes import PROBE_DELAYS
from tests.conftest import unique
from tests.sse import EventStream
from tests.support import Background, Stack, basic
from tests.test_delivery import split_stack
from tests.test_limits import limited
from tests.test_metrics import scrape, value
from tests.test_posts_feed import follow, last, post
from tests.test_publisher import wait_for
from tests.test_sessions import login

PRESENCE = "xmpp.buddycloud.presence"
Frame = tuple[str, dict[str, Any]]


class Socket:
    """A WebSocket client on the background loop, read and written from the test."""

    def __init__(self, bg: Background, url: str, headers: dict[str, str]) -> None:
        self.bg = bg
        ws_url = url.replace("http://", "ws://") + "/api/ws"

        async def connect() -> ClientConnection:
            return await websockets.connect(ws_url, additional_headers=headers, open_timeout=10)

        self.ws = bg.call(connect())

    @classmethod
    def of(cls, bg: Background, url: str, user: str) -> Socket:
        return cls(bg, url, {"Authorization": basic(user)})

    def send(self, name: str, data: dict[str, Any]) -> None:
        self.bg.call(self.ws.send(json.dumps([name, data])))

    def send_raw(self, text: str) -> None:
        self.bg.call(self.ws.send(text))

    def online(self, since: str | None = None) -> str:
        """Say it is online; the acknowledgement's cursor."""
        self.send(PRESENCE, {} if since is None else {"since": since})
        name, data = self.next()
        assert name == PRESENCE, (name, data)
        last: str = data["last"]
        return last

    def next(self, timeout: float = 10) -> Frame:
        text = self.bg.call(asyncio.wait_for(self.ws.recv(), timeout), timeout + 5)
        name, data = json.loads(text)
        return name, data

    def take(self, count: int, timeout: float = 10) -> list[Frame]:
        return [self.next(timeout) for _ in range(count)]

    def quiet(self, seconds: float) -> list[Frame]:
        frames = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frames.append(self.next(left))
            except TimeoutError:
                break
        return frames

    @property
    def open(self) -> bool:
        return self.ws.state.name == "OPEN"

    def close(self) -> None:
        self.bg.call(self.ws.close())


def contents(frames: list[Frame]) -> list[str]:
    return [data["post"]["content"] for _, data in frames]


def cursor_list(frames: list[Frame]) -> list[int]:
    return [int(data["cursor"]) for _, data in frames]


def test_presence_is_acknowledged_then_history_then_live(stack: Stack, bg: Background) -> None:
    user = unique("ws")
    with stack.account(user) as c:
        start = last(c)
        post(c, user, "one")
        sock = Socket.of(bg, stack.url, user)
        # Nothing before the presence message, though a post waits.
        assert sock.quiet(0.5) == []
        assert sock.online(since=start) == start
        history = sock.take(1)
        assert history[0][0] == "xmpp.buddycloud.push.item"
        assert history[0][1]["node"] == f"{user}/posts"
        assert contents(history) == ["one"]
        post(c, user, "two")
        live = sock.take(1)
        assert contents(live) == ["two"]
        assert cursor_list(history + live) == sorted(cursor_list(history + live))
        assert sock.quiet(0.5) == []
        sock.close()


def test_without_since_history_starts_where_the_user_was_last_online(
    stack: Stack, bg: Background
) -> None:
    user = unique("ws")
    with stack.account(user) as c:
        sock = Socket.of(bg, stack.url, user)
        sock.online()
        post(c, user, "seen")
        (seen,) = sock.take(1)
        sock.close()
        post(c, user, "missed 1")
        post(c, user, "missed 2")
        again = Socket.of(bg, stack.url, user)
        assert again.online() == seen[1]["cursor"]
        assert contents(again.take(2)) == ["missed 1", "missed 2"]
        assert again.quiet(0.5) == []
        again.close()


def test_reconnects_with_since_get_each_event_once(stack: Stack, bg: Background) -> None:
    user = unique("ws")
    with stack.account(user) as c:
        got: list[Frame] = []
        cursor = last(c)
        for round_ in range(3):
            sock = Socket.of(bg, stack.url, user)
            sock.online(since=cursor)
            post(c, user, f"live {round_}")
            got += sock.take(1 if round_ == 0 else 3)
            cursor = got[-1][1]["cursor"]
            sock.close()
            post(c, user, f"offline {round_} a")
            post(c, user, f"offline {round_} b")
        sock = Socket.of(bg, stack.url, user)
        sock.online(since=cursor)
        got += sock.take(2)
        assert sock.quiet(0.5) == []
        sock.close()
        expected = ["live 0"]
        for n in range(3):
            expected += [f"offline {n} a", f"offline {n} b"] + ([f"live {n + 1}"] if n < 2 else [])
        assert contents(got) == expected
        assert cursor_list(got) == sorted(set(cursor_list(got)))


def test_every_kind_of_event_with_its_name(stack: Stack, bg: Background) -> None:
    owner, follower = unique("ws"), unique("ws")
    topic = unique("topic")
    with stack.account(owner) as o, stack.account(follower) as f:
        assert o.post(f"/api/{topic}", json={"access_model": "authorize"}).status_code == 201
        owner_sock, follower_sock = (
            Socket.of(bg, stack.url, owner),
            Socket.of(bg, stack.url, follower),
        )
        owner_sock.online()
        follower_sock.online()
        follow(f, f"{topic}/posts")
        name, data = owner_sock.next()
        assert (name, data["node"], data["jid"]) == (
            "xmpp.buddycloud.push.authorisation",
            f"{topic}/posts",
            follower,
        )
        decision = [{"jid": follower, "subscription": "subscribed"}]
        assert o.post(f"/api/{topic}/subscribers/posts/approve", json=decision).is_success
        name, data = follower_sock.next()
        assert name == "xmpp.buddycloud.push.subscription"
        assert (data["jid"], data["subscription"]) == (follower, "subscribed")
        assert o.post(f"/api/{topic}/subscribers/posts", json={follower: "member"}).is_success
        name, data = follower_sock.next()
        assert name == "xmpp.buddycloud.push.affiliation"
        assert (data["jid"], data["affiliation"]) == (follower, "member")
        created = post(o, topic, "first")
        name, data = follower_sock.next()
        assert (name, data["post"]["content"]) == ("xmpp.buddycloud.push.item", "first")
        r = o.put(f"/api/{topic}/content/posts/{created['id']}", json={"content": "edited"})
        assert r.is_success, r.text
        name, data = follower_sock.next()
        assert (name, data["post"]["content"]) == ("xmpp.buddycloud.push.item", "edited")
        assert o.delete(f"/api/{topic}/content/posts/{created['id']}").is_success
        name, data = follower_sock.next()
        assert (name, data["id"], data["node"]) == (
            "xmpp.buddycloud.push.retract",
            created["id"],
            f"{topic}/posts",
        )
        for sock in (owner_sock, follower_sock):
            sock.close()


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "{}",
        '["only a name"]',
        '["xmpp.nothing", {}]',
        '["xmpp.buddycloud.presence", 1]',
    ],
)
def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(
    stack: Stack, bg: Background, frame: str
) -> None:
    user = unique("ws")
    with stack.account(user) as c:
        sock = Socket.of(bg, stack.url, user)
        sock.send_raw(frame)
        name, data = sock.next()
        assert name == "xmpp.error.client"
        assert data["description"]
        assert sock.open
        sock.online()
        post(c, user, "still here")
        assert contents(sock.take(1)) == ["still here"]
        sock.close()


def test_a_bad_since_gets_an_error_and_a_second_presence_too(stack: Stack, bg: Background) -> None:
    user = unique("ws")
    stack.account(user).close()
    sock = Socket.of(bg, stack.url, user)
    sock.send(PRESENCE, {"since": "abc"})
    assert sock.next()[0] == "xmpp.error.client"
    sock.online()
    sock.send(PRESENCE, {})
    assert sock.next()[0] == "xmpp.error.client"
    sock.close()


def test_a_socket_needs_a_login(stack: Stack, bg: Background) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        Socket(bg, stack.url, {})
    assert refused.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        Socket(bg, stack.url, {"Authorization": basic("nobody@example.com", "wrong password")})


def test_a_browser_session_logs_a_socket_in_from_our_page_only(
    stack: Stack, bg: Background
) -> None:
    user = unique("ws")
    with stack.account(user) as c:
        cookie = login(stack.url, user)
        ours = Socket(bg, stack.url, {"Cookie": f"session={cookie}", "Origin": stack.url})
        ours.online()
        post(c, user, "to the page")
        assert contents(ours.take(1)) == ["to the page"]
        ours.close()
        # Another site's page, with the user's cookie: refused at the handshake.
        with pytest.raises(websockets.InvalidStatus) as refused:
            Socket(bg, stack.url, {"Cookie": f"session={cookie}", "Origin": "https://evil.example"})
        assert refused.value.response.status_code == 403


def test_open_socket_follows_access(stack: Stack, bg: Background) -> None:
    owner, reader = unique("ws"), unique("ws")
    topic = unique("topic")
    with stack.account(owner) as o, stack.account(reader) as r:
        assert o.post(f"/api/{topic}", json={"access_model": "authorize"}).status_code == 201
        sock = Socket.of(bg, stack.url, reader)
        sock.online()
        follow(r, f"{topic}/posts")
        post(o, topic, "before approval")
        decision = [{"jid": reader, "subscription": "subscribed"}]
        assert o.post(f"/api/{topic}/subscribers/posts/approve", json=decision).is_success
        assert sock.next()[0] == "xmpp.buddycloud.push.subscription"
        post(o, topic, "after approval")
        assert contents(sock.take(1)) == ["after approval"]
        assert o.post(f"/api/{topic}/subscribers/posts", json={reader: "outcast"}).is_success
        name, data = sock.next()
        assert (name, data["subscription"]) == ("xmpp.buddycloud.push.subscription", "none")
        post(o, topic, "after the ban")
        post(r, reader, "control")
        assert contents(sock.take(1)) == ["control"]
        assert sock.quiet(0.5) == []
        sock.close()


def test_a_commit_between_the_history_read_and_the_subscription_arrives_once(
    tmp_path: Path, backend: str, bg: Background
) -> None:
    """The presence answer is held back on its way to Pushpin; a post committed meanwhile is
    published (its wake-up too) before the socket's subscription exists. It still arrives,
    once, soon: the answer's own ping brings the origin back after the subscription."""
    with split_stack(tmp_path, backend) as split:
        user = unique("ws")
        split.accounts(user)
        with split.direct(user) as direct:
            sock = Socket.of(bg, split.origin.url, user)
            split.proxy.delay = 0.7
            seen = split.proxy.answers
            sock.send(PRESENCE, {})
            deadline = time.monotonic() + 5
            while split.proxy.answers == seen:  # the origin has read and answered
                assert time.monotonic() < deadline
                time.sleep(0.005)
            post(direct, user, "in the window")
            assert sock.next()[0] == PRESENCE  # its history did not have the post
            began = time.monotonic()
            assert contents(sock.take(1)) == ["in the window"]
            assert time.monotonic() - began < 5  # not the 60 s sweep
            split.proxy.delay = 0
            post(direct, user, "after")
            assert contents(sock.take(1)) == ["after"]
            assert sock.quiet(0.5) == []
            sock.close()


def test_a_graceful_origin_restart_drops_no_socket(
    tmp_path: Path, backend: str, bg: Background
) -> None:
    with split_stack(tmp_path, backend) as split:
        user = unique("ws")
        split.accounts(user)
        with split.direct(user) as direct:
            sock = Socket.of(bg, split.origin.url, user)
            sock.online()
            post(direct, user, "before")
            assert contents(sock.take(1)) == ["before"]
            # The presence's probes are pings whose pongs Pushpin brings to the origin: one
            # that came while the only origin was down would close the socket (a pong, as any
            # request of a socket, has nowhere else to go). A quiet socket is what this tests.
            time.sleep(max(PROBE_DELAYS) + 0.5)
            split.origin.stop()
            split.origin.start()
            post(direct, user, "after the restart")
            assert contents(sock.take(1, timeout=15)) == ["after the restart"]
            assert sock.open
            sock.close()


def test_a_wake_up_pushpin_takes_before_the_sockets_subscription_is_made_up_for(
    tmp_path: Path, backend: str, bg: Background
) -> None:
    """Pushpin's handler may take a wake-up before the subscription its proxy passed on, and
    the socket then misses it (app/wakes.py). A wake-up answered but not passed on to Pushpin
    stands for one here: the presence's probes bring the post within seconds, not at the 60 s
    sweep (without them, this post waited for the sweep)."""
    with split_stack(tmp_path, backend, failing_publish=True) as split:
        assert split.failing is not None
        user = unique("ws")
        split.accounts(user)
        with split.direct(user) as direct:
            sock = Socket.of(bg, split.origin.url, user)
            sock.online()
            # The presence answer's own ping: once its pong has been read (the socket's third
            # request, after OPEN and the presence), a post reaches the socket by a wake-up or
            # a probe only.
            wait_for(lambda: socket_requests(split.origin) >= 3, 5)
            split.failing.drop_wakes = 1
            post(direct, user, "after a lost wake-up")
            frames = sock.take(1, timeout=4)
            assert contents(frames) == ["after a lost wake-up"]
            # The post's wake-up (named by its event) was the one dropped: a probe brought it.
            assert split.failing.dropped == [[frames[0][1]["cursor"]]]
            assert sock.quiet(0.5) == []
            sock.close()


def socket_requests(stack: Stack) -> float:
    """The requests Pushpin has brought the origin for sockets, answered (its /metrics)."""
    return value(scrape(stack), "buddycloud_http_requests_total", route="/api/ws", status="200")


def admitted_once_closed(bg: Background, url: str, user: str, timeout: float = 10) -> Socket:
    """A handshake retried while it is refused 429: a closed socket frees its place once
    Pushpin's CLOSE reaches the origin."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Socket.of(bg, url, user)
        except websockets.InvalidStatus as refused:
            assert refused.response.status_code == 429
            assert time.monotonic() < deadline, "the closed socket's place was never freed"
            time.sleep(0.05)


def test_streams_and_sockets_count_against_the_held_limit(tmp_path: Path, bg: Background) -> None:
    """With MAX_HELD_PER_USER=2: two sockets, the third handshake is refused; one closes and
    a new one is let in. Streams count too: two open, the third is refused."""
    with limited(tmp_path, MAX_HELD_PER_USER="2") as stack:
        user = unique("ws")
        stack.account(user).close()
        first, second = Socket.of(bg, stack.url, user), Socket.of(bg, stack.url, user)
        with pytest.raises(websockets.InvalidStatus) as refused:
            Socket.of(bg, stack.url, user)
        assert refused.value.response.status_code == 429
        first.close()
        third = admitted_once_closed(bg, stack.url, user)
        third.online()
        for sock in (second, third):
            sock.close()

    with limited(tmp_path / "streams", MAX_HELD_PER_USER="2") as stack:
        user = unique("sse")
        stack.account(user).close()
        streams = [
            bg.call(
                EventStream.open(
                    stack.url, "/api/notifications/posts", {"Authorization": basic(user)}
                )
            )
            for _ in range(2)
        ]
        with stack.client(user) as c:
            r = c.get("/api/notifications/posts", headers={"Accept": "text/event-stream"})
            assert r.status_code == 429 and "this user" in r.json()["error"]
        for stream in streams:
            stream.close()
