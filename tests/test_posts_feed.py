"""The posts notifications feed as Buddycloud's realtime API describes it (README, "Try it"),
end to end through a real Pushpin."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
import time
from typing import Any

import httpx

from tests.conftest import unique
from tests.support import Holds, Stack, health, long_poll

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def follow(client: httpx.Client, *sources: str) -> None:
    r = client.post("/api/subscribed", json={source: "publisher" for source in sources})
    assert r.status_code == 200, r.text


def post(client: httpx.Client, channel: str, content: str) -> dict[str, Any]:
    r = client.post(f"/api/{channel}/content/posts", json={"content": content})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def last(client: httpx.Client) -> str:
    r = client.get("/api/notifications/posts")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["items"] == []
    cursor = body["last"]
    assert isinstance(cursor, str) and cursor.isdigit()
    return cursor


def test_seed_flow(stack: Stack, holds: Holds) -> None:
    reader, writer, stranger = unique("juliet"), unique("romeo"), unique("tybalt")
    with stack.account(reader) as r, stack.account(writer) as w, stack.account(stranger) as x:
        follow(r, f"{writer}/posts")
        parent = post(w, writer, "the post the example replies to")
        since = last(r)
        # A GET with since and nothing new hangs: Pushpin holds it.
        held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
        # Not for juliet: she does not follow this channel. The held request, answered with
        # exactly the next post of a channel she follows, shows it never got this one.
        post(x, stranger, "not for juliet: she does not follow this channel")
        posted_at = time.monotonic()
        created = w.post(
            f"/api/{writer}/content/posts", json={"content": "foo", "replyTo": parent["id"]}
        ).json()
        answer = holds.published(held)
        elapsed = time.monotonic() - posted_at
        assert elapsed < 1.0, f"held request answered {elapsed:.3f}s after the post"
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert list(body) == ["last", "items"]
        assert int(body["last"]) > int(since)
        assert body["items"] == [created]
        item = body["items"][0]
        assert list(item) == [
            "id",
            "source",
            "author",
            "published",
            "updated",
            "content",
            "media",
            "replyTo",
        ]
        assert item["source"] == f"{writer}/posts"
        assert item["author"] == writer
        assert ISO_MS.fullmatch(item["published"]) and item["updated"] == item["published"]
        assert item["media"] is None and item["replyTo"] == parent["id"]
        # Looping on last: held again, and then given the next post only (nothing repeated).
        again = holds.hold("posts", r.get, f"/api/notifications/posts?since={body['last']}")
        following = post(w, writer, "the next one")
        assert holds.published(again).json()["items"] == [following]


def test_published_answer_is_byte_for_byte_the_immediate_one(stack: Stack, holds: Holds) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    with stack.account(reader) as r, stack.account(writer) as w:
        follow(r, f"{writer}/posts")
        since = last(r)
        held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
        post(w, writer, "same bytes")
        published = holds.published(held)
        immediate = r.get(f"/api/notifications/posts?since={since}")
        assert published.content == immediate.content


def test_old_since_answers_at_once_oldest_first(stack: Stack) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    with stack.account(reader) as r, stack.account(writer) as w:
        follow(r, f"{writer}/posts")
        since = last(r)
        created = [post(w, writer, f"post {i}") for i in range(3)]
        own = post(r, reader, "my own channel counts too")
        start = time.monotonic()
        body = r.get(f"/api/notifications/posts?since={since}").json()
        assert time.monotonic() - start < 0.5
        assert body["items"] == [*created, own]
        assert body["last"] == last(r)


def test_timeout_answers_empty_items_with_the_same_last(tmp_path: Any) -> None:
    from tests.support import running

    with running(tmp_path / "data", HOLD_TIMEOUT="5") as stack:
        reader = unique("juliet")
        with stack.account(reader) as r:
            since = last(r)
            start = time.monotonic()
            answer = r.get(f"/api/notifications/posts?since={since}", timeout=20)
            waited = time.monotonic() - start
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "application/json"
            assert answer.json() == {"last": since, "items": []}
            assert 4.5 < waited < 10
            # Asked again from the same cursor, the feed does give what comes next.
            own = post(r, reader, "after the timeout")
            assert r.get(f"/api/notifications/posts?since={since}").json()["items"] == [own]


def test_two_posts_at_once_both_arrive_once_each(stack: Stack, holds: Holds) -> None:
    reader, a, b = unique("juliet"), unique("romeo"), unique("mercutio")
    with stack.account(reader) as r, stack.account(a) as wa, stack.account(b) as wb:
        follow(r, f"{a}/posts", f"{b}/posts")
        since = last(r)
        barrier = threading.Barrier(2)

        def write(client: httpx.Client, channel: str) -> dict[str, Any]:
            barrier.wait()
            return post(client, channel, f"at the same time, from {channel}")

        held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
        with concurrent.futures.ThreadPoolExecutor() as pool:
            writes = [pool.submit(write, wa, a), pool.submit(write, wb, b)]
            created = {f.result()["id"] for f in writes}
        first = holds.published(held).json()
        seen = [item["id"] for item in first["items"]]
        cursor = first["last"]
        while len(seen) < 2:
            page = r.get(f"/api/notifications/posts?since={cursor}", timeout=5).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["last"]
        assert sorted(seen) == sorted(created), "each post exactly once"


def test_user_following_1000_nodes_gets_every_post(stack: Stack, holds: Holds) -> None:
    owner, reader = unique("capulet"), unique("nurse")
    with stack.account(owner) as o, stack.account(reader) as r:
        # Long names (about 240 bytes, near the 255 allowed): a hold names all 1,000 nodes.
        tag = owner.partition("@")[0]
        channels = [f"topic{i}-{tag}-{'v' * 200}@topics.example.com" for i in range(1000)]
        for channel in channels:
            assert o.post(f"/api/{channel}").status_code == 201
        for start in range(0, len(channels), 200):  # a request body is at most 256 KiB
            follow(r, *(f"{c}/posts" for c in channels[start : start + 200]))
        assert len(r.get("/api/subscribed").json()) == 1001  # own channel included
        since = last(r)
        # The nodes Pushpin would drop first if the config kept its default of 20 channels.
        for channel in (channels[-1], channels[500], channels[0]):
            held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
            created = post(o, channel, f"into {channel}")
            body = holds.published(held).json()
            assert body["items"] == [created]
            since = body["last"]


def test_pushpin_not_the_origin_holds_the_connections(stack: Stack) -> None:
    n = 200
    readers = [unique("fan") for _ in range(n)]
    writer = unique("star")

    def fan(reader: str) -> None:
        with stack.account(reader) as r:
            follow(r, f"{writer}/posts")

    with stack.account(writer) as w:
        # four at a time: as many slow password hashes as the origin runs for one address
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(fan, readers))
        since = last(w)

    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        before = (await asyncio.to_thread(health, stack))["feed_requests"].get("posts", 0)
        polls = []
        for reader in readers:  # ramp up: Pushpin answers 502 to a burst of new connections
            polls.append(asyncio.create_task(long_poll(stack.url, reader, since)))
            await asyncio.sleep(0.002)
        # Each was asked of the origin, then held; about 1 s after a hold begins Pushpin asks
        # the origin once more. After that, nothing: the post reaches them all by a publish.
        deadline = time.monotonic() + 20
        while True:
            await asyncio.sleep(0.2)
            now = await asyncio.to_thread(health, stack)
            asked = now["feed_requests"]["posts"] - before
            if asked >= 2 * n and now["requests_in_flight"] == 0:
                break
            assert time.monotonic() < deadline, now
        assert not any(p.done() for p in polls)
        assert now["requests"] >= 2 * n, now
        with stack.client(writer) as client:
            await asyncio.to_thread(post, client, writer, "to all my fans")
        answers = await asyncio.wait_for(asyncio.gather(*polls), 10)
        after = await asyncio.to_thread(health, stack)
        assert after["feed_requests"]["posts"] - before == asked, "answered by the origin"
        return answers

    answers = asyncio.run(scenario())
    assert all(status == 200 for status, _ in answers)
    assert all(len(body["items"]) == 1 for _, body in answers)
    assert len({json.dumps(body) for _, body in answers}) == 1


def test_a_hold_that_did_not_come_through_pushpin_is_refused(stack: Stack) -> None:
    user = unique("juliet")
    with stack.account(user) as c, stack.client(user, origin=True) as direct:
        since = last(c)
        answer = direct.get(f"/api/notifications/posts?since={since}")
        assert answer.status_code == 501
        assert stack.url in answer.json()["error"]
        forged = direct.get(
            f"/api/notifications/posts?since={since}", headers={"Grip-Sig": "not.a.jwt"}
        )
        assert forged.status_code == 501
        # What needs no hold is answered directly too.
        assert direct.get("/api/notifications/posts").status_code == 200


def test_a_big_catch_up_is_paged_under_pushpins_body_limit(stack: Stack) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    with stack.account(reader) as r, stack.account(writer):
        follow(r, f"{writer}/posts")
        since = last(r)

        def write(first: int) -> list[str]:
            with stack.client(writer) as c:
                return [
                    post(c, writer, f"{i} " + "x" * (500 + (i * 997) % 4000))["id"]
                    for i in range(first, 2000, 2)
                ]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            written = {p for batch in pool.map(write, (0, 1)) for p in batch}
        seen: list[str] = []
        cursor = since
        while len(seen) < len(written):
            answer = r.get(f"/api/notifications/posts?since={cursor}", timeout=5)
            assert len(answer.content) < 90_000
            body = answer.json()
            assert 0 < len(body["items"]) <= 100
            seen += [item["id"] for item in body["items"]]
            cursor = body["last"]
        assert len(seen) == len(set(seen)) and set(seen) == written


def test_the_largest_post_fits_a_held_answer_intact(stack: Stack, holds: Holds) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    # 10,000 characters, most of them control characters, which JSON escapes as \\u00XX: six
    # bytes each.
    content = "\x01" * 9000 + '"\\é𝄞' * 250
    with stack.account(reader) as r, stack.account(writer) as w:
        follow(r, f"{writer}/posts")
        since = last(r)
        held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
        created = post(w, writer, content)
        answer = holds.published(held)
        assert 55_000 < len(answer.content) < 100_000
        assert answer.json()["items"] == [created]
        assert created["content"] == content
