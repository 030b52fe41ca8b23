"""Nothing a user posts can stall the publisher: batches fit the target's limit by the bytes
sent, a refused batch is split, an item refused alone goes out as a hint, and /health tells.

Through the real run command and its Pushpin; one test gives Pushpin a small publish body limit
(its own config setting, push_in_max_body_size) so that a single item is refused.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import unique
from tests.sse import EventStream
from tests.support import ROOT, TLS, Background, Holds, Stack, basic, health, running
from tests.test_posts_feed import follow, last, post
from tests.test_publisher import recorder, wait_for

LONGEST_CJK = "漢" * 10_000  # 3 bytes each in UTF-8
LONGEST_EMOJI = "😀" * 10_000  # 4 bytes each


def health_answer(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.origin_url}/health", verify=TLS, timeout=10)


def followers(stack: Stack, writer: str, count: int) -> None:
    """``count`` accounts that follow ``writer``'s channel, made in parallel."""

    def make(_: int) -> None:
        with stack.account(unique("follower")) as c:
            follow(c, f"{writer}/posts")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(count)))


def held_then_published(stack: Stack, reader: httpx.Client, writer: httpx.Client, who: str) -> None:
    """A request held before a small post is answered with it by the publish (the origin is
    not asked again) within a second."""
    with Holds(stack) as holds:
        since = last(reader)
        held = holds.hold("posts", reader.get, f"/api/notifications/posts?since={since}")
        posted_at = time.monotonic()
        created = post(writer, who, "a later, small post")
        answer = holds.published(held)
        elapsed = time.monotonic() - posted_at
    assert answer.json()["items"] == [created]
    assert elapsed < 1.0, f"answered {elapsed:.2f}s after the post"


def test_the_longest_posts_to_100_followers_do_not_jam_the_publisher(stack: Stack) -> None:
    writer, reader = unique("romeo"), unique("juliet")
    with stack.account(writer) as w, stack.account(reader) as r:
        follow(r, f"{writer}/posts")
        followers(stack, writer, 99)
        published = health(stack)["published_items"]
        for content in (LONGEST_CJK, LONGEST_EMOJI):
            post(w, writer, content)
        # 2 posts x (100 followers + the writer's own feed + the firehose)
        wait_for(lambda: health(stack)["published_items"] >= published + 2 * 102, 10)
        state = health(stack)
        assert state["status"] == "ok"
        assert all(t["lag_items"] == 0 and not t["failing"] for t in state["targets"])
        assert all(t["passed_over"] == 0 for t in state["targets"]), "split, not passed over"
        held_then_published(stack, r, w, writer)
    assert "too large" not in stack.log()


@contextmanager
def small_publish_limit(tmp_path: Path, max_body: int) -> Iterator[Stack]:
    """The run command with a Pushpin that takes publish requests of ``max_body`` bytes (as a
    proxy with a smaller limit than the shipped 1 MB would; no post is that large)."""
    config = (ROOT / "pushpin" / "pushpin.conf").read_text()
    assert "push_in_max_body_size=1000000" in config
    (tmp_path / "pushpin.conf").write_text(
        config.replace("push_in_max_body_size=1000000", f"push_in_max_body_size={max_body}")
    )
    (tmp_path / "routes").write_text((ROOT / "pushpin" / "routes").read_text())
    with running(tmp_path / "data", PUSHPIN_CONFIG=str(tmp_path / "pushpin.conf")) as stack:
        yield stack


def test_an_item_refused_alone_reaches_its_reader_through_the_log(
    tmp_path: Path, bg: Background
) -> None:
    with small_publish_limit(tmp_path, 20_000) as stack:
        writer, reader = unique("romeo"), unique("juliet")
        with stack.account(writer) as w, stack.account(reader) as r:
            follow(r, f"{writer}/posts")
            login = {"Authorization": basic(reader)}
            stream = bg.call(EventStream.open(stack.url, "/api/notifications/posts", login))
            with Holds(stack) as holds:
                since = last(r)
                held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
                big = post(w, writer, LONGEST_CJK)  # about 30 kB: refused alone
                # Sent as a hint: Pushpin asked the origin once, which answered from the log.
                answer = holds.published(held, hints=1)
            assert answer.json()["items"] == [big]
            state = health(stack)
            # The reader's channel, the writer's and the firehose: each item refused alone.
            assert [t["passed_over"] for t in state["targets"]] == [3]
            assert state["status"] == "ok" and state["targets"][0]["lag_items"] == 0
            # Seen here: after a hint, the next item on the channel made Pushpin ask the origin
            # once more (its prev-id names the hint's id; the client gets it all the same).
            # From then on, small posts are published as ever.
            post(w, writer, "the item after the hint")
            held_then_published(stack, r, w, writer)
            # A stream saw no item for the big post (streams are not given its hint, whose id
            # they would take as seen): the next item's prev-id showed the gap, and the origin
            # sent the big post from the log, then the rest, each once.
            events = bg.call(stream.take(3))
            assert [e.json["content"] for e in events] == [
                LONGEST_CJK,
                "the item after the hint",
                "a later, small post",
            ]
            assert bg.call(stream.quiet(0.5)) == []
            stream.close()
        assert "as too large" in stack.log()


def test_a_refusing_target_is_retried_and_health_says_so(tmp_path: Path) -> None:
    """A target that answers 401 (a wrong key) is retried, never passed over: /health shows it
    failing and lagging, answers 503 once it has accepted nothing for HEALTH_PUBLISH_SECONDS
    while events wait, and when the target takes publishes again every item arrives."""
    with (
        recorder(failures=10**9, status=401) as target,
        running(tmp_path / "data", GRIP_URL=target.url, HEALTH_PUBLISH_SECONDS="1") as stack,
    ):
        assert health_answer(stack).status_code == 200  # nothing waits yet
        writer = unique("romeo")
        with stack.account(writer) as w:
            created = [post(w, writer, f"post {i}") for i in range(3)]
        wait_for(lambda: health_answer(stack).status_code == 503, 10)
        state = health(stack)
        assert state["status"] == "unhealthy" and "no publish target" in state["reason"]
        (lag,) = state["targets"]
        assert lag["failing"] and lag["stalled"] and lag["passed_over"] == 0
        assert lag["lag_items"] == 2 * len(created)  # the writer's own feed and the firehose
        assert lag["lag_seconds"] > 0
        target.failures = 0  # the key is right again
        wait_for(lambda: health_answer(stack).status_code == 200, 15)
        wait_for(lambda: len(target.delivered()) == len(created), 5)
        assert [
            json.loads(i["formats"]["http-response"]["body"])["items"][0]
            for i in target.delivered()
        ] == created
        assert health(stack)["targets"][0]["lag_items"] == 0


def test_one_dead_target_among_several_is_shown_not_fatal(tmp_path: Path) -> None:
    with recorder(failures=10**9) as dead:
        stack = Stack(tmp_path / "data", env={"HEALTH_PUBLISH_SECONDS": "1"})
        stack.env["GRIP_URL"] = f"http://127.0.0.1:{stack.env['PUSHPIN_PUBLISH_PORT']},{dead.url}"
        stack.start()
        try:
            writer = unique("romeo")
            with stack.account(writer) as w:
                post(w, writer, "one target takes it, the other is down")
            time.sleep(1.5)
            answer = health_answer(stack)
            state = answer.json()
            assert answer.status_code == 200 and state["status"] == "ok"
            alive, down = state["targets"]
            assert not alive["failing"] and alive["lag_items"] == 0
            assert down["failing"] and down["stalled"] and down["lag_items"] == 2
        finally:
            stack.stop()
