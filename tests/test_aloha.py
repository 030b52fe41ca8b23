"""The Aloha (Zulip) events API on the wire, through a real Pushpin: queues, filters, no loss,
lifecycle. (tests/test_zulip_compat.py runs the real zulip client against the same.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import unique
from tests.support import PASSWORD, TLS, Holds, Stack, running
from tests.test_posts_feed import follow


def api_key(stack: Stack, user: str) -> str:
    with stack.client(user) as c:
        key: str = c.get("/api/account").json()["api_key"]
    return key


OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


class Aloha:
    """A Zulip-style caller: Basic email:api_key, JSON-encoded non-string values."""

    def __init__(self, stack: Stack, user: str, create: bool = True) -> None:
        if create:
            stack.account(user).close()
        self.user = user
        self.http = httpx.Client(
            verify=TLS,
            base_url=stack.url + "/api/v1/",
            auth=(user, api_key(stack, user)),
            timeout=20,
        )
        OPEN.append(self.http)

    def call(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
        if method == "GET":
            response = self.http.request(method, path, params=encoded)
        else:
            response = self.http.request(method, path, data=encoded)
        answer: dict[str, Any] = response.json()
        return answer

    def register(self, **params: Any) -> str:
        answer = self.call("POST", "register", **params)
        assert answer["result"] == "success", answer
        queue: str = answer["queue_id"]
        return queue

    def events(self, queue: str, last: int = -1, block: bool = False) -> list[dict[str, Any]]:
        answer = self.call(
            "GET", "events", queue_id=queue, last_event_id=last, dont_block=not block
        )
        assert answer["result"] == "success", answer
        found: list[dict[str, Any]] = answer["events"]
        return found

    def send(self, to: str, content: str, topic: str = "posts", **extra: Any) -> int:
        answer = self.call(
            "POST", "messages", type="stream", to=to, topic=topic, content=content, **extra
        )
        assert answer["result"] == "success", answer
        message_id: int = answer["id"]
        return message_id


def test_nothing_between_register_and_the_first_poll_is_lost(stack: Stack) -> None:
    reader, writer = Aloha(stack, unique("juliet")), Aloha(stack, unique("romeo"))
    with stack.client(reader.user) as r:
        follow(r, f"{writer.user}/posts")
    queue = reader.register()
    sent = writer.send(writer.user, "before the first poll")
    (event,) = reader.events(queue)
    assert event["type"] == "message" and event["message"]["id"] == sent
    following = writer.send(writer.user, "after the first poll")
    (event,) = reader.events(queue, event["id"])  # acknowledged: not again, only what follows
    assert event["message"]["id"] == following


def test_a_held_poll_gets_what_happens_while_it_waits(stack: Stack, holds: Holds) -> None:
    reader, writer = Aloha(stack, unique("juliet")), Aloha(stack, unique("romeo"))
    with stack.client(reader.user) as r:
        follow(r, f"{writer.user}/posts")
    queue = reader.register(event_types=["message"])
    held = holds.hold("aloha", reader.events, queue, -1, True)
    sent = writer.send(writer.user, "while you wait")
    # Published as a hint: Pushpin asked the origin once, for this poll, and nothing else.
    (event,) = holds.published(held, hints=1)
    assert event["message"]["id"] == sent and event["message"]["content"] == "while you wait"


def test_filters_are_exact(stack: Stack) -> None:
    reader, a, b = (Aloha(stack, unique(n)) for n in ("juliet", "romeo", "mercutio"))
    topic_channel = f"square-{a.user.partition('@')[0]}@topics.example.com"
    with stack.client(a.user) as ca:
        ca.post(f"/api/{topic_channel}")
    with stack.client(reader.user) as r:
        follow(r, f"{a.user}/posts", f"{b.user}/posts", f"{topic_channel}/posts")
    by_stream = reader.register(narrow=[["stream", a.user]])
    by_sender = reader.register(narrow=[["sender", b.user]])
    by_topic = reader.register(narrow=[["channel", topic_channel], ["topic", "posts"]])
    only_subscriptions = reader.register(event_types=["subscription"])
    a.send(a.user, "a in a"), b.send(b.user, "b in b"), a.send(topic_channel, "a in square")

    def contents(queue: str) -> list[str]:
        return [e["message"]["content"] for e in reader.events(queue) if e["type"] == "message"]

    assert contents(by_stream) == ["a in a"]
    assert contents(by_sender) == ["b in b"]
    assert contents(by_topic) == ["a in square"]
    # None of those messages, but the next event of its type.
    with stack.client(a.user) as ca:
        ca.post(f"/api/{a.user}/subscribers/posts", json={reader.user: "moderator"})
    (changed,) = reader.events(only_subscriptions)
    assert changed["type"] == "subscription" and changed["change"] == "role_changed"
    for bad in ([["bogus", "x"]], "not a list", [["stream"]]):
        answer = reader.call("POST", "register", narrow=bad)
        assert answer["result"] == "error" and answer["code"] == "BAD_REQUEST"
    bad_types = reader.call("POST", "register", event_types=["nope"])
    assert bad_types["result"] == "error"


def test_all_public_streams_is_the_firehose(stack: Stack) -> None:
    reader, writer = Aloha(stack, unique("juliet")), Aloha(stack, unique("romeo"))
    private = f"crypt-{writer.user.partition('@')[0]}@topics.example.com"
    with stack.client(writer.user) as w:
        w.post(f"/api/{private}", json={"access_model": "authorize"})
    queue = reader.register(all_public_streams=True)
    writer.send(private, "secret")
    writer.send(writer.user, "public")  # the reader does not follow it: the firehose has it
    assert [e["message"]["content"] for e in reader.events(queue)] == ["public"]


def test_edits_deletions_and_subscription_events(stack: Stack) -> None:
    owner, follower = Aloha(stack, unique("capulet")), Aloha(stack, unique("romeo"))
    channel = f"crypt-{owner.user.partition('@')[0]}@topics.example.com"
    with stack.client(owner.user) as o, stack.client(follower.user) as f:
        o.post(f"/api/{channel}", json={"access_model": "authorize"})
        owners_queue = owner.register()
        followers_queue = follower.register()
        f.post("/api/subscribed", json={f"{channel}/posts": "member"})
        (request,) = owner.events(owners_queue)
        assert request["type"] == "follow_request" and request["jid"] == follower.user
        decision = [{"jid": follower.user, "subscription": "subscribed"}]
        o.post(f"/api/{channel}/subscribers/posts/approve", json=decision)
        (approved,) = follower.events(followers_queue)
        assert approved["type"] == "subscription" and approved["op"] == "add"
        message_id = owner.send(channel, "draft")
        created = o.get(f"/api/{channel}/content/posts").json()[0]
        (message,) = follower.events(followers_queue, approved["id"])
        assert message["type"] == "message" and message["message"]["content"] == "draft"
        o.put(f"/api/{channel}/content/posts/{created['id']}", json={"content": "final"})
        (update,) = follower.events(followers_queue, message["id"])
        assert update["type"] == "update_message" and update["content"] == "final"
        o.delete(f"/api/{channel}/content/posts/{created['id']}")
        # Polled after the delete, the queue has only the deletion: the text is gone.
        events = follower.events(followers_queue, approved["id"])
        assert [e["type"] for e in events] == ["delete_message"]
        assert update["message_id"] == events[0]["message_id"] == message_id
        # Banned: no more messages of that channel, not even into an open queue; the next
        # message the follower may see (their own) does come.
        o.post(f"/api/{channel}/subscribers/posts", json={follower.user: "outcast"})
        owner.send(channel, "after the ban")
        follower.send(follower.user, "mine")
        events = follower.events(followers_queue, events[-1]["id"])
        assert [(e["type"], e.get("op")) for e in events] == [
            ("subscription", "remove"),
            ("message", None),
        ]
        assert events[1]["message"]["content"] == "mine"


def test_a_retried_send_with_its_local_id_makes_one_post(stack: Stack) -> None:
    writer = Aloha(stack, unique("romeo"))
    first = writer.send(writer.user, "once", local_id="abc123")
    again = writer.send(writer.user, "once", local_id="abc123")
    assert again == first
    with stack.client(writer.user) as w:
        assert [p["content"] for p in w.get(f"/api/{writer.user}/content/posts").json()] == ["once"]


def test_unknown_foreign_and_deleted_queues_are_bad_event_queue_id(stack: Stack) -> None:
    owner, stranger = Aloha(stack, unique("juliet")), Aloha(stack, unique("tybalt"))
    queue = owner.register()
    for caller, queue_id in ((stranger, queue), (owner, "no-such-queue")):
        answer = caller.call("GET", "events", queue_id=queue_id, last_event_id=-1)
        assert isinstance(answer.pop("request_id"), str)  # the origin's log line's
        assert answer == {
            "result": "error",
            "msg": f"Bad event queue ID: {queue_id}",
            "code": "BAD_EVENT_QUEUE_ID",
            "queue_id": queue_id,
        }
    assert owner.call("DELETE", "events", queue_id=queue)["result"] == "success"
    assert (
        owner.call("GET", "events", queue_id=queue, last_event_id=-1)["code"]
        == "BAD_EVENT_QUEUE_ID"
    )
    unauthorized = owner.http.post("register", auth=(owner.user, "wrong password"))
    assert unauthorized.json()["result"] == "error"


def test_queues_survive_a_restart_expire_and_send_heartbeats(tmp_path: Path) -> None:
    # The surviving queue lives 60 s, so however long the restart takes it is still there; the
    # short-lived one asks for 1 s and expires 1 s after its last poll ended (a poll may be
    # held HOLD_TIMEOUT = 5 s, so 6 s after it was registered).
    env = {"HOLD_TIMEOUT": "5", "QUEUE_LIFESPAN": "60"}
    with running(tmp_path, **env) as stack:
        reader = Aloha(stack, unique("juliet"))
        queue = reader.register()
        registered = time.monotonic()
        short_lived = reader.register(queue_lifespan_secs=1)
        # A poll with nothing to say is held, then answered with a heartbeat.
        start = time.monotonic()
        (heartbeat,) = reader.events(queue, block=True)
        assert heartbeat["type"] == "heartbeat" and 4.5 < time.monotonic() - start < 10
        first_env = dict(stack.env)
    with running(tmp_path, **first_env) as again:
        reader = Aloha(again, reader.user, create=False)
        sent = reader.send(reader.user, "after the restart")
        (event,) = reader.events(queue, heartbeat["id"])  # the queue is still there
        assert event["message"]["id"] == sent
        time.sleep(max(0.0, registered + 7 - time.monotonic()))
        gone = reader.call("GET", "events", queue_id=short_lived, last_event_id=-1)
        assert gone["code"] == "BAD_EVENT_QUEUE_ID"


def test_a_match_behind_a_long_filtered_backlog_comes_at_once(stack: Stack) -> None:
    reader, noisy, quiet = (Aloha(stack, unique(n)) for n in ("juliet", "tybalt", "romeo"))
    with stack.client(reader.user) as r:
        follow(r, f"{noisy.user}/posts", f"{quiet.user}/posts")
    queue = reader.register(narrow=[["sender", quiet.user]])
    for i in range(105):  # more than one page of what the queue filters out
        noisy.send(noisy.user, f"noise {i}")
    quiet.send(quiet.user, "signal")
    assert [e["message"]["content"] for e in reader.events(queue)] == ["signal"]


def test_odd_aloha_parameters_are_400(stack: Stack) -> None:
    user = Aloha(stack, unique("juliet"))
    queue = user.register()
    for last_event_id in (10**12, "99999999999999999999", "true", "-2"):
        answer = user.call("GET", "events", queue_id=queue, last_event_id=last_event_id)
        assert answer["result"] == "error" and answer["code"] == "BAD_REQUEST", last_event_id
    nested = user.call("POST", "messages", type="stream", to="[" * 20000, content="x")
    assert nested["result"] == "error"
    for params in ({"queue_lifespan_secs": True}, {"all_public_streams": "yes"}):
        assert user.call("POST", "register", **params)["result"] == "error"
    # A queue that did not move: nothing was acknowledged by the refused polls (one that
    # acknowledged up to 10**12 would skip this message).
    sent = user.send(user.user, "after the refused polls")
    assert [e["message"]["id"] for e in user.events(queue)] == [sent]


def test_a_poll_held_on_a_queue_that_is_deleted_hears_so_at_once(
    stack: Stack, holds: Holds
) -> None:
    user = Aloha(stack, unique("juliet"))
    queue, other = user.register(), user.register()
    held = holds.hold("aloha", user.call, "GET", "events", queue_id=queue, last_event_id=-1)
    start = time.monotonic()
    assert user.call("DELETE", "events", queue_id=queue)["result"] == "success"
    answer = holds.published(held, hints=1)
    assert answer["code"] == "BAD_EVENT_QUEUE_ID" and time.monotonic() - start < 3
    # The user's other queue is untouched: it gets what comes next.
    sent = user.send(user.user, "to the other queue")
    assert [e["message"]["id"] for e in user.events(other)] == [sent]


def test_server_settings_and_fetch_api_key_need_no_login(stack: Stack) -> None:
    user = unique("juliet")
    stack.account(user).close()
    with stack.client() as anonymous:
        settings = anonymous.get("/api/v1/server_settings").json()
        assert settings["result"] == "success" and settings["zulip_version"]
        fetched = anonymous.post(
            "/api/v1/fetch_api_key", data={"username": user, "password": PASSWORD}
        ).json()
        assert fetched == {
            "result": "success",
            "msg": "",
            "api_key": api_key(stack, user),
            "email": user,
        }
        wrong = anonymous.post("/api/v1/fetch_api_key", data={"username": user, "password": "x"})
        assert wrong.status_code == 401 and wrong.json()["result"] == "error"
