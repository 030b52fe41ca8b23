"""The `zulip` Python package, unmodified, against this server through a real Pushpin."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import zulip

from tests.conftest import unique
from tests.support import Stack
from tests.test_posts_feed import follow

CLIENTS: list[zulip.Client] = []


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while CLIENTS:
        session = CLIENTS.pop().session
        if session is not None:
            session.close()


def zulip_client(stack: Stack, user: str) -> zulip.Client:
    with stack.account(user) as c:
        key = c.get("/api/account").json()["api_key"]
    client = zulip.Client(email=user, api_key=key, site=stack.url)
    CLIENTS.append(client)
    return client


def test_the_zulip_client_works_unmodified(stack: Stack) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    other = f"other-{writer.partition('@')[0]}@topics.example.com"
    client, sender = zulip_client(stack, reader), zulip_client(stack, writer)
    assert client.zulip_version  # the constructor read server_settings
    with stack.client(writer) as w, stack.client(reader) as r:
        assert w.post(f"/api/{other}").status_code == 201
        follow(r, f"{writer}/posts", f"{other}/posts")

    queue = client.register(event_types=["message"], narrow=[["stream", writer]])
    assert queue["result"] == "success" and queue["last_event_id"] == -1
    sent = sender.send_message({"type": "stream", "to": other, "topic": "posts", "content": "no"})
    assert sent["result"] == "success"
    sent = sender.send_message(
        {"type": "stream", "to": writer, "topic": "posts", "content": "hello"}
    )
    assert sent["result"] == "success" and isinstance(sent["id"], int)
    got = client.get_events(queue_id=queue["queue_id"], last_event_id=-1)
    assert got["result"] == "success"
    (event,) = got["events"]  # the narrow left out the other stream
    assert event["type"] == "message" and event["message"]["content"] == "hello"
    assert event["message"]["sender_email"] == writer and event["message"]["id"] == sent["id"]

    assert client.deregister(queue["queue_id"])["result"] == "success"
    gone = client.get_events(queue_id=queue["queue_id"], last_event_id=event["id"])
    assert gone["result"] == "error" and gone["code"] == "BAD_EVENT_QUEUE_ID"
    assert gone["queue_id"] == queue["queue_id"]


LISTENER = """
import os, sys, zulip
client = zulip.Client(email=sys.argv[1], api_key=sys.argv[2], site=sys.argv[3])
def on_message(message):
    print(message["content"], flush=True)
    os._exit(0)
client.call_on_each_message(on_message)
"""


def test_call_on_each_message_receives_a_sent_message(stack: Stack) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    sender = zulip_client(stack, writer)
    with stack.account(reader) as r:
        follow(r, f"{writer}/posts")
        key = r.get("/api/account").json()["api_key"]
    # call_on_each_message never returns: it runs in a process of its own, as a bot would.
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, reader, key, stack.url], stdout=subprocess.PIPE, text=True
    )
    try:
        for attempt in range(20):  # until its queue is registered and polling
            sender.send_message(
                {"type": "stream", "to": writer, "topic": "posts", "content": f"ping {attempt}"}
            )
            try:
                out, _ = listener.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
        assert listener.returncode == 0 and out.startswith("ping")
    finally:
        listener.kill()
        listener.wait()


def test_bad_event_queue_id_is_zulips(stack: Stack) -> None:
    client = zulip_client(stack, unique("juliet"))
    answer = client.get_events(queue_id="no-such-queue", last_event_id=-1)
    assert isinstance(answer.pop("request_id"), str)  # beside Zulip's own fields
    assert answer == {
        "result": "error",
        "msg": "Bad event queue ID: no-such-queue",
        "code": "BAD_EVENT_QUEUE_ID",
        "queue_id": "no-such-queue",
    }
