"""Server-sent events through a real Pushpin: the feeds as streams, each item once, in order,
across reconnects, gaps, floods and changes of access."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, unique
from tests.sse import Event, EventStream, cursors
from tests.support import PASSWORD, TLS, Background, Stack, basic, health
from tests.test_delivery import split_stack
from tests.test_posts_feed import follow, last, post


def open_stream(
    bg: Background,
    url: str,
    path: str,
    user: str | None = None,
    receive_buffer: int | None = None,
    **headers: str,
) -> EventStream:
    if user:
        headers["Authorization"] = basic(user)
    wire = {name.replace("_", "-"): value for name, value in headers.items()}
    return bg.call(EventStream.open(url, path, wire, receive_buffer=receive_buffer))


def take(bg: Background, stream: EventStream, count: int, timeout: float = 10) -> list[Event]:
    return bg.call(stream.take(count, timeout), timeout + 5)


def quiet(bg: Background, stream: EventStream, seconds: float) -> list[Event]:
    return bg.call(stream.quiet(seconds), seconds + 5)


def long_poll_items(client: httpx.Client, since: str) -> list[dict[str, object]]:
    r = client.get(f"/api/notifications/posts?since={since}")
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["items"]
    return items


def test_backlog_after_since_then_live_items_each_once(stack: Stack, bg: Background) -> None:
    user = unique("sse")
    with stack.account(user) as c:
        start = last(c)
        first = post(c, user, "one")
        post(c, user, "two")
        stream = open_stream(bg, stack.url, f"/api/notifications/posts?since={start}", user)
        backlog = take(bg, stream, 2)
        assert [e.name for e in backlog] == ["post", "post"]
        assert [e.json["content"] for e in backlog] == ["one", "two"]
        assert backlog[0].json == first
        # The same items, byte for byte, as a long-poll's (ids are the cursors).
        assert [e.json for e in backlog] == long_poll_items(c, start)
        assert int(backlog[0].id or 0) > int(start)
        post(c, user, "three")
        (live,) = take(bg, stream, 1)
        assert live.json["content"] == "three"
        both = cursors([*backlog, live])
        assert both == sorted(set(both))
        assert quiet(bg, stream, 0.5) == []
        stream.close()


def test_without_a_cursor_the_stream_starts_at_the_end(stack: Stack, bg: Background) -> None:
    user = unique("sse")
    with stack.account(user) as c:
        post(c, user, "old")
        stream = open_stream(bg, stack.url, "/api/notifications/posts", user)
        post(c, user, "new")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "new"
        stream.close()


def test_reconnect_with_last_event_id_gets_what_was_missed_once(
    stack: Stack, bg: Background
) -> None:
    user = unique("sse")
    with stack.account(user) as c:
        start = last(c)
        stream = open_stream(bg, stack.url, f"/api/notifications/posts?since={start}", user)
        post(c, user, "a")
        (a,) = take(bg, stream, 1)
        stream.close()
        post(c, user, "b")
        post(c, user, "c")
        # Last-Event-ID (what EventSource sends back) wins over since.
        again = open_stream(
            bg,
            stack.url,
            f"/api/notifications/posts?since={start}",
            user,
            Last_Event_ID=a.id or "",
        )
        missed = take(bg, again, 2)
        assert [e.json["content"] for e in missed] == ["b", "c"]
        post(c, user, "d")
        (d,) = take(bg, again, 1)
        assert d.json["content"] == "d"
        assert quiet(bg, again, 0.5) == []
        again.close()


@pytest.mark.parametrize("cursor", ["99999999999", "not-ours"])
def test_a_cursor_it_cannot_serve_gets_a_reset(stack: Stack, bg: Background, cursor: str) -> None:
    user = unique("sse")
    with stack.account(user) as c:
        end = last(c)
        stream = open_stream(bg, stack.url, "/api/notifications/posts", user, Last_Event_ID=cursor)
        (reset,) = take(bg, stream, 1)
        assert reset.name == "reset"
        assert reset.json == {"last": end}
        assert reset.id == end  # the client's Last-Event-ID moves there
        post(c, user, "after the reset")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "after the reset"
        stream.close()


def test_a_malformed_since_is_refused(stack: Stack) -> None:
    user = unique("sse")
    with stack.account(user) as c:
        r = c.get("/api/notifications/posts?since=abc", headers={"Accept": "text/event-stream"})
        assert r.status_code == 400
        assert "since" in r.json()["error"]


def test_a_stream_needs_a_login(stack: Stack) -> None:
    with stack.client() as anonymous:
        r = anonymous.get(
            "/api/notifications/posts?since=0", headers={"Accept": "text/event-stream"}
        )
        assert r.status_code == 401


def test_a_stream_not_through_the_proxy_is_refused(stack: Stack) -> None:
    user = unique("sse")
    stack.account(user).close()
    with stack.client(user, origin=True) as direct:
        r = direct.get("/api/notifications/posts", headers={"Accept": "text/event-stream"})
        assert r.status_code == 501


def test_events_feed_names_each_event_by_its_type(stack: Stack, bg: Background) -> None:
    owner, asker = unique("sse"), unique("sse")
    topic = unique("topic")
    with stack.account(owner) as o, stack.account(asker) as a:
        r = o.post(f"/api/{topic}", json={"access_model": "authorize"})
        assert r.status_code == 201, r.text
        stream = open_stream(bg, stack.url, "/api/notifications/events", owner)
        follow(a, f"{topic}/posts")
        (request,) = take(bg, stream, 1)
        assert request.name == "follow_request"
        assert request.json["type"] == "follow_request"
        assert request.json["jid"] == asker
        assert request.id == request.json["cursor"]
        stream.close()


def test_firehose_streams_without_login(stack: Stack, bg: Background) -> None:
    user = unique("sse")
    with stack.account(user) as c:
        stream = open_stream(bg, stack.url, "/api/firehose")
        post(c, user, "for everyone")
        events = take(bg, stream, 1, timeout=10)
        # Other tests post to the firehose too: find ours.
        while events[-1].json.get("content") != "for everyone":
            events += take(bg, stream, 1)
        assert events[-1].name == "post"
        stream.close()


@SQLITE_ONLY
def test_keep_alive_comments_on_a_quiet_stream(stack: Stack, bg: Background) -> None:
    user = unique("sse")
    stack.account(user).close()
    stream = open_stream(bg, stack.url, "/api/notifications/posts", user)
    assert quiet(bg, stream, 25) == []
    assert stream.comments >= 1  # at least one comment line in 25 s
    stream.close()


@SQLITE_ONLY
def test_a_backlog_of_5000_items_is_paged(stack: Stack, bg: Background) -> None:
    user = unique("sse")
    with stack.account(user) as c:
        start = last(c)

        async def post_many() -> None:
            async with httpx.AsyncClient(
                verify=TLS, base_url=stack.origin_url, auth=(user, PASSWORD), timeout=30
            ) as client:
                for batch in range(50):
                    answers = await asyncio.gather(
                        *(
                            client.post(
                                f"/api/{user}/content/posts",
                                json={"content": f"item {batch * 100 + n}"},
                            )
                            for n in range(100)
                        )
                    )
                    assert all(a.status_code == 201 for a in answers)

        bg.call(post_many(), timeout=300)
        began = time.monotonic()
        stream = open_stream(bg, stack.url, f"/api/notifications/posts?since={start}", user)
        events = take(bg, stream, 5000, timeout=120)
        took = time.monotonic() - began
        assert len(set(cursors(events))) == 5000
        assert cursors(events) == sorted(cursors(events))
        assert {e.json["content"] for e in events} == {f"item {n}" for n in range(5000)}
        post(c, user, "live after the backlog")
        (live,) = take(bg, stream, 1)
        assert live.json["content"] == "live after the backlog"
        stream.close()
        print(f"5,000 waiting items streamed in {took:.2f} s")


def test_a_lost_publish_is_repaired_through_the_next_link(
    tmp_path: Path, backend: str, bg: Background
) -> None:
    """Pushpin never gets one post (its publish is answered 200 and dropped): the next item's
    prev-id shows the gap, Pushpin calls the stream's next link, and the origin sends the lost
    post before the next one."""
    with split_stack(tmp_path, backend, failing_publish=True) as split:
        user = unique("sse")
        split.accounts(user)
        assert split.failing is not None
        with split.client(user) as c:
            stream = open_stream(bg, split.origin.url, "/api/notifications/posts", user)
            split.failing.drops = 1
            post(c, user, "dropped on the way")
            assert quiet(bg, stream, 1.0) == []  # it did not arrive: the drop happened
            post(c, user, "next")
            events = take(bg, stream, 2)
            assert [e.json["content"] for e in events] == ["dropped on the way", "next"]
            assert quiet(bg, stream, 0.5) == []
            stream.close()


def repairs(stack: Stack) -> int:
    """How often Pushpin called a held stream's next link: on a gap it saw in the stream's
    channel, once for each newly subscribed channel (after about a second), or after the
    link's idle timeout."""
    count: int = health(stack)["feed_requests"].get("stream_repair", 0)
    return count


def wait_for_repairs(stack: Stack, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while repairs(stack) < count:
        assert time.monotonic() < deadline, f"{repairs(stack)} of {count} next-link calls"
        time.sleep(0.05)


@SQLITE_ONLY
def test_a_stream_flooded_until_pushpin_drops_items_still_gets_every_item_once(
    stack: Stack, bg: Background
) -> None:
    """A reader stops reading while 300 posts of 30 kB pour in. Pushpin queues at most 100
    items for a stream it cannot write to and drops the rest silently; the next item it takes
    does not follow the last it sent, so it calls the stream's next link (a repair: the
    positive sign that it dropped some), and the origin sends what is missing from the log.
    The reader gets every item once, in order, the one after the flood too.

    Pushpin's connection manager (condure 1.9.1) resumes writing to a reader whose receive
    window had filled only on its next keep-alive, up to 45 s later (docs/pushpin.md): the
    generous timeouts are for that."""
    user = unique("sse")
    with stack.account(user) as c:
        start = last(c)
        before = repairs(stack)
        stream = open_stream(
            bg,
            stack.url,
            f"/api/notifications/posts?since={start}",
            user,
            receive_buffer=4096,
        )
        # The new channel's own next-link call (Pushpin re-asks a channel's first holds),
        # which would otherwise count as a repair below.
        wait_for_repairs(stack, before + 1)
        post(c, user, "0 settled")
        (first,) = take(bg, stream, 1)
        assert first.json["content"] == "0 settled"
        settled = repairs(stack)
        big = "字" * 9_990  # 30 kB of UTF-8
        count = 300

        async def flood() -> None:
            async with httpx.AsyncClient(
                verify=TLS, base_url=stack.origin_url, auth=(user, PASSWORD), timeout=30
            ) as client:
                for n in range(1, count + 1):
                    r = await client.post(
                        f"/api/{user}/content/posts", json={"content": f"{n} {big}"}
                    )
                    assert r.status_code == 201

        def number(event: Event) -> int:
            return int(event.json["content"].split()[0])

        async def catch_up() -> list[Event]:
            """Read, posting one more item every 3 s until the newest has arrived: the items
            Pushpin dropped at the end of the flood show as a gap only when a next one comes
            (or after the link's idle timeout), and an item posted while the queue is still
            full is dropped too."""
            events: list[Event] = []
            newest = count

            async def read() -> None:
                while not events or number(events[-1]) < newest:
                    events.append(await stream.next(timeout=150))

            reader = asyncio.create_task(read())
            async with httpx.AsyncClient(
                verify=TLS, base_url=stack.origin_url, auth=(user, PASSWORD), timeout=30
            ) as client:
                while not reader.done():
                    newest += 1
                    r = await client.post(
                        f"/api/{user}/content/posts", json={"content": f"{newest} after"}
                    )
                    assert r.status_code == 201
                    await asyncio.wait([reader], timeout=3)
            await reader
            return events

        try:
            bg.call(flood(), timeout=120)  # the stream is not read meanwhile
            events = bg.call(catch_up(), timeout=200)
            numbers = [number(e) for e in [first, *events]]
            assert numbers == list(range(len(numbers)))
            assert quiet(bg, stream, 1.0) == []
            assert repairs(stack) > settled, "no gap: Pushpin dropped nothing"
            print(f"{len(numbers) - count - 1} posts after the flood; repairs: {repairs(stack)}")
        finally:
            stream.close()


def test_open_stream_follows_access(stack: Stack, bg: Background) -> None:
    """Unfollowed or banned: nothing more of that node on the open stream; approved: the
    next post arrives on the stream opened before the approval."""
    owner, reader = unique("sse"), unique("sse")
    topic = unique("topic")
    with stack.account(owner) as o, stack.account(reader) as r:
        assert o.post(f"/api/{topic}", json={"access_model": "authorize"}).status_code == 201
        stream = open_stream(bg, stack.url, "/api/notifications/posts", reader)
        follow(r, f"{topic}/posts")
        post(o, topic, "before approval")
        approve = o.post(
            f"/api/{topic}/subscribers/posts/approve",
            json=[{"jid": reader, "subscription": "subscribed"}],
        )
        assert approve.status_code == 200, approve.text
        post(o, topic, "after approval")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "after approval"
        # Banned: nothing more of the topic; the reader's own post still arrives (control).
        ban = o.post(f"/api/{topic}/subscribers/posts", json={reader: "outcast"})
        assert ban.status_code == 200, ban.text
        post(o, topic, "after the ban")
        post(r, reader, "own post")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "own post"
        assert quiet(bg, stream, 0.5) == []
        stream.close()


def test_unfollowing_ends_delivery_on_the_open_stream(stack: Stack, bg: Background) -> None:
    author, reader = unique("sse"), unique("sse")
    with stack.account(author) as a, stack.account(reader) as r:
        follow(r, f"{author}/posts")
        stream = open_stream(bg, stack.url, "/api/notifications/posts", reader)
        post(a, author, "while following")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "while following"
        r.post("/api/subscribed", json={f"{author}/posts": "none"}).raise_for_status()
        post(a, author, "after unfollowing")
        post(r, reader, "control")
        (event,) = take(bg, stream, 1)
        assert event.json["content"] == "control"
        stream.close()


def test_1000_open_streams_all_get_one_post(stack: Stack, bg: Background) -> None:
    author = unique("sse")
    with stack.account(author) as a:

        async def open_all() -> list[EventStream]:
            streams: list[EventStream] = []
            for _ in range(20):  # ramped: Pushpin answers 502 to big bursts
                streams += await asyncio.gather(
                    *(EventStream.open(stack.url, "/api/firehose") for _ in range(50))
                )
            return streams

        streams = bg.call(open_all(), timeout=120)
        time.sleep(1.5)  # Pushpin re-asks new subscribers' streams after about 1 s
        created = post(a, author, "to a thousand")

        async def each_gets_it(stream: EventStream) -> bool:
            try:
                async with asyncio.timeout(20):
                    while True:
                        event = await stream.next(20)
                        if event.json.get("id") == created["id"]:
                            return True
            except TimeoutError:
                return False

        async def all_get_it() -> list[bool]:
            return await asyncio.gather(*(each_gets_it(s) for s in streams))

        got = bg.call(all_get_it(), timeout=60)
        assert sum(got) == 1000, f"{sum(got)} of 1000 got it; health: {health(stack)}"
        for stream in streams:
            stream.close()
        print(json.dumps({"streams": len(streams)}))


def test_a_banned_readers_firehose_stream_leaves_out_that_channel(
    stack: Stack, bg: Background
) -> None:
    """Logged in, a reader banned from a channel gets the firehose without it: every other
    open channel's post comes (the control), that channel's never does."""
    owner, banned, other = unique("sse"), unique("sse"), unique("sse")
    topic = unique("topic")
    with stack.account(owner) as o, stack.account(banned) as b, stack.account(other) as x:
        assert o.post(f"/api/{topic}").status_code == 201
        follow(b, f"{topic}/posts")
        assert o.post(f"/api/{topic}/subscribers/posts", json={banned: "outcast"}).is_success
        stream = open_stream(bg, stack.url, "/api/firehose", banned)
        anonymous = open_stream(bg, stack.url, "/api/firehose")
        post(o, topic, "not for the banned")
        post(x, other, "for everyone")
        post(o, topic, "still not")
        post(x, other, "again for everyone")
        mine = [e.json["content"] for e in take(bg, stream, 2)]
        assert mine == ["for everyone", "again for everyone"]
        assert quiet(bg, stream, 0.5) == []
        # The same posts, in full, to a reader without a login.
        public = [e.json["content"] for e in take(bg, anonymous, 4)]
        assert public == ["not for the banned", "for everyone", "still not", "again for everyone"]
        stream.close()
        anonymous.close()
