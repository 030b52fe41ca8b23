"""Every user's footprint is bounded: each limit is a setting with a documented default, and
past it the answer is 429 (a rate) or 409 (a count) while other users go on. Each test lowers
one limit on its own run command (the suite raises the rates: tests/support.py)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.config import Limits, Settings
from tests.conftest import unique
from tests.support import Stack, health, running
from tests.test_aloha import Aloha
from tests.test_posts_feed import follow, last, post
from tests.test_publisher import wait_for


def test_the_defaults(tmp_path: Path) -> None:
    limits = Settings.from_env({"DATA_DIR": str(tmp_path)}).limits
    assert limits == Limits()
    assert vars(limits) == {
        "max_follows": 5000,
        "max_channels": 100,
        "max_queues": 100,
        "max_pending": 100,
        "follows_per_minute": 60,
        "posts_per_minute": 120,
        "max_narrow_terms": 16,
        "max_held_per_user": 1000,  # the fan-out benchmark holds 500 per user
        "max_held_per_address": 5000,
        "accounts_per_hour": 20,
        "login_failures_per_account": 10,
        "login_failures_per_address": 30,
        "unknown_logins_per_address": 30,
        "hashes_at_once_per_address": 4,
        "max_sessions": 100,
    }
    raised = Settings.from_env({"DATA_DIR": str(tmp_path), "MAX_QUEUES": "7"}).limits
    assert raised.max_queues == 7


@contextmanager
def limited(tmp_path: Path, **env: str) -> Iterator[Stack]:
    with running(tmp_path / "data", **env) as stack:
        yield stack


def test_posts_a_minute(tmp_path: Path) -> None:
    with limited(tmp_path, POSTS_PER_MINUTE="3") as stack:
        one, two = unique("romeo"), unique("mercutio")
        with stack.account(one) as a, stack.account(two) as b:
            first = post(a, one, "1")
            a.put(f"/api/{one}/content/posts/{first['id']}", json={"content": "edited"})
            post(a, one, "3")
            refused = a.post(f"/api/{one}/content/posts", json={"content": "4"})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
            assert len(a.get(f"/api/{one}/content/posts").json()) == 2
            post(b, two, "another user posts on")


def test_follow_changes_a_minute(tmp_path: Path) -> None:
    with limited(tmp_path, FOLLOWS_PER_MINUTE="2") as stack:
        user, owner, other = unique("romeo"), unique("capulet"), unique("benvolio")
        with stack.account(user) as u, stack.account(owner), stack.account(other) as x:
            source = f"{owner}/posts"
            assert u.post("/api/subscribed", json={source: "publisher"}).status_code == 200
            assert u.post("/api/subscribed", json={source: "none"}).status_code == 200
            refused = u.post("/api/subscribed", json={source: "publisher"})
            assert refused.status_code == 429
            assert source not in u.get("/api/subscribed").json()
            assert x.post("/api/subscribed", json={source: "publisher"}).status_code == 200


def test_channels_owned(tmp_path: Path) -> None:
    with limited(tmp_path, MAX_CHANNELS="2") as stack:
        user, other = unique("romeo"), unique("benvolio")
        with stack.account(user) as u, stack.account(other) as x:
            topics = [f"t{i}-{user.partition('@')[0]}@topics.example.com" for i in range(3)]
            assert [u.post(f"/api/{t}").status_code for t in topics] == [201, 201, 409]
            assert "at most 2" in u.post(f"/api/{topics[2]}").json()["error"]
            assert x.post(f"/api/x-{topics[2]}").status_code == 201


def test_follow_requests_waiting(tmp_path: Path) -> None:
    with limited(tmp_path, MAX_PENDING="1") as stack:
        user, owner = unique("romeo"), unique("capulet")
        with stack.account(user) as u, stack.account(owner) as o:
            crypts = [f"c{i}-{owner.partition('@')[0]}@topics.example.com" for i in range(2)]
            for crypt in crypts:
                assert (
                    o.post(f"/api/{crypt}", json={"access_model": "authorize"}).status_code == 201
                )
            assert (
                u.post("/api/subscribed", json={f"{crypts[0]}/posts": "member"}).status_code == 200
            )
            refused = u.post("/api/subscribed", json={f"{crypts[1]}/posts": "member"})
            assert refused.status_code == 409
            # Once the first is decided, another may be asked.
            decision = [{"jid": user, "subscription": "subscribed"}]
            r = o.post(f"/api/{crypts[0]}/subscribers/posts/approve", json=decision)
            assert r.status_code == 200
            assert (
                u.post("/api/subscribed", json={f"{crypts[1]}/posts": "member"}).status_code == 200
            )


def test_queues_and_narrows(tmp_path: Path) -> None:
    with limited(tmp_path, MAX_QUEUES="2") as stack:
        user = Aloha(stack, unique("romeo"))
        first, _ = user.register(), user.register()
        refused = user.call("POST", "register")
        assert refused["result"] == "error" and "at most 2 event queues" in refused["msg"]
        assert user.call("DELETE", "events", queue_id=first)["result"] == "success"
        user.register()
        user.call("DELETE", "events", queue_id=first)
        long_terms = [["topic", "x" * 255]] * 16
        for narrow in ([["topic", "x"]] * 17, [["topic", "x" * 256]]):
            answer = user.call("POST", "register", narrow=narrow)
            assert answer["result"] == "error" and "narrow" in answer["msg"], answer
        other = Aloha(stack, unique("benvolio"))
        other.register(narrow=long_terms)  # the longest narrow is fine


def hold(client: httpx.Client, since: str) -> concurrent.futures.Future[httpx.Response]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(client.get, f"/api/notifications/posts?since={since}", timeout=20)
    pool.shutdown(wait=False)
    return future


def test_requests_held_per_user_and_per_address(tmp_path: Path) -> None:
    with limited(tmp_path, MAX_HELD_PER_USER="2", MAX_HELD_PER_ADDRESS="3") as stack:
        reader, writer, third = unique("juliet"), unique("romeo"), unique("nurse")
        with stack.account(reader) as r, stack.account(writer) as w, stack.account(third) as t:
            follow(r, f"{writer}/posts")
            since = last(r)
            held = [hold(r, since), hold(r, since)]
            time.sleep(0.5)
            refused = r.get(f"/api/notifications/posts?since={since}")
            assert refused.status_code == 429 and "this user" in refused.json()["error"]
            held.append(hold(t, last(t)))  # another user: the address's third
            time.sleep(0.5)
            refused = w.get(f"/api/notifications/posts?since={last(w)}")
            assert refused.status_code == 429 and "client address" in refused.json()["error"]
            created = post(w, writer, "ends the reader's holds")
            assert [f.result(timeout=5).json()["items"] for f in held[:2]] == [[created]] * 2
            # Those ended: the reader may hold again (and the writer's own post answers it).
            again = hold(r, last(r))
            time.sleep(0.5)
            assert not again.done()
            post(t, third, "ends the third's hold")
            assert held[2].result(timeout=5).status_code == 200
            second = post(w, writer, "and the reader's new one")
            assert again.result(timeout=5).json()["items"] == [second]


@pytest.mark.parametrize("queues", [3000])
def test_expired_queues_go_without_stalling_requests(tmp_path: Path, queues: int) -> None:
    """3,000 queues with the longest narrows expire together: the origin deletes them a few
    at a time, and no step of it keeps a request waiting 50 ms."""
    env = {"QUEUE_LIFESPAN": "1", "HOLD_TIMEOUT": "5", "MAX_QUEUES": str(queues)}
    with limited(tmp_path, **env) as stack:
        user = Aloha(stack, unique("romeo"))
        narrow = [["topic", f"{i:02d}" + "x" * 253] for i in range(16)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: user.register(narrow=narrow), range(queues)))
        wait_for(lambda: health(stack)["queues_expired"] >= queues, 60)
        state = health(stack)
        assert state["longest_expiry_step_ms"] < 50, state
