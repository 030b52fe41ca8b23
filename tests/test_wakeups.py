"""Every commit that logs an event wakes the publisher at once, whatever made it: the store
wakes it after each such commit, not each caller. With the publisher's own look at the log
put 60 s apart, each kind of change must still reach a held request within a second."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import unique
from tests.databases import database_env
from tests.support import Stack, running
from tests.test_aloha import Aloha
from tests.test_posts_feed import follow, post

SOON = 1.0


@pytest.fixture(scope="module")
def slow_poll(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {**database_env(backend), "PUBLISH_POLL_SECONDS": "60"}
    with running(tmp_path_factory.mktemp("wakeups"), **env) as stack:
        yield stack


def answered_soon(request: Callable[[], Any], change: Callable[[], object]) -> Any:
    """Hold ``request``, make ``change``; its answer, which must come within SOON."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(request)
        time.sleep(1.5)  # held, and past Pushpin's own look at a newly held channel
        assert not held.done(), "the request was not held"
        changed = time.monotonic()
        change()
        answer = held.result(timeout=10)
        assert time.monotonic() - changed < SOON, "the publisher was not woken"
    return answer


def events_of(client: httpx.Client) -> Callable[[], Any]:
    since = client.get("/api/notifications/events").json()["last"]
    return lambda: client.get(f"/api/notifications/events?since={since}").json()["items"]


def test_a_post_an_edit_and_a_delete(slow_poll: Stack) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    with slow_poll.account(reader) as r, slow_poll.account(writer) as w:
        follow(r, f"{writer}/posts")
        since = r.get("/api/notifications/posts").json()["last"]
        created: list[dict[str, Any]] = []
        answer = answered_soon(
            lambda: r.get(f"/api/notifications/posts?since={since}").json()["items"],
            lambda: created.append(post(w, writer, "wakes it")),
        )
        assert answer == created
        path = f"/api/{writer}/content/posts/{created[0]['id']}"
        (edited,) = answered_soon(
            events_of(r), lambda: w.put(path, json={"content": "edited"}).raise_for_status()
        )
        assert edited["type"] == "post_updated"
        (deleted,) = answered_soon(events_of(r), lambda: w.delete(path).raise_for_status())
        assert deleted["type"] == "post_deleted"


def test_a_follow_request_and_its_approval(slow_poll: Stack) -> None:
    owner, follower = unique("capulet"), unique("romeo")
    crypt = f"wake-{owner.partition('@')[0]}@topics.example.com"
    with slow_poll.account(owner) as o, slow_poll.account(follower) as f:
        assert o.post(f"/api/{crypt}", json={"access_model": "authorize"}).status_code == 201
        (request,) = answered_soon(events_of(o), lambda: follow(f, f"{crypt}/posts"))
        assert request["type"] == "follow_request"
        decision = [{"jid": follower, "subscription": "subscribed"}]
        approve = f"/api/{crypt}/subscribers/posts/approve"
        (approved,) = answered_soon(
            events_of(f), lambda: o.post(approve, json=decision).raise_for_status()
        )
        assert approved["change"] == "approved"
        roles = f"/api/{crypt}/subscribers/posts"
        (changed,) = answered_soon(
            events_of(f), lambda: o.post(roles, json={follower: "moderator"}).raise_for_status()
        )
        assert changed["change"] == "role_changed"


def test_deleting_a_queue(slow_poll: Stack) -> None:
    user = Aloha(slow_poll, unique("juliet"))
    queue = user.register()
    answer = answered_soon(
        lambda: user.call("GET", "events", queue_id=queue, last_event_id=-1),
        lambda: user.call("DELETE", "events", queue_id=queue),
    )
    assert answer["code"] == "BAD_EVENT_QUEUE_ID"
