"""Acknowledged means stored: a retried post makes nothing new, and only a true retry is one.

`Idempotency-Key` on `POST .../content/{node}`, and Zulip's `local_id` on `/api/v1/messages`,
through the real stack.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import unique
from tests.support import Stack, running
from tests.test_aloha import Aloha


def contents(client: httpx.Client, channel: str) -> list[str]:
    return [p["content"] for p in client.get(f"/api/{channel}/content/posts").json()]


def send(client: httpx.Client, channel: str, key: str, content: str) -> httpx.Response:
    return client.post(
        f"/api/{channel}/content/posts",
        json={"content": content},
        headers={"Idempotency-Key": key},
    )


def test_a_post_retried_with_its_key_is_stored_once(stack: Stack) -> None:
    writer = unique("romeo")
    with stack.account(writer) as w:
        first = send(w, writer, "k-1", "once")
        assert first.status_code == 201
        again = send(w, writer, "k-1", "once")  # the client lost the first answer
        assert again.status_code == 200
        assert again.json() == first.json()
        assert again.headers["location"] == first.headers["location"]
        assert contents(w, writer) == ["once"]
        # Positive control: another key is another post.
        assert send(w, writer, "k-2", "once").status_code == 201
        assert contents(w, writer) == ["once", "once"]


def test_a_key_reused_for_another_body_is_refused_and_stores_nothing(stack: Stack) -> None:
    writer = unique("romeo")
    with stack.account(writer) as w:
        assert send(w, writer, "k", "first").status_code == 201
        reused = send(w, writer, "k", "something else")
        assert reused.status_code == 422
        assert "Idempotency-Key" in reused.json()["error"]
        assert contents(w, writer) == ["first"]


def test_keys_are_the_senders_own(stack: Stack) -> None:
    one, two = unique("romeo"), unique("mercutio")
    with stack.account(one) as a, stack.account(two) as b:
        topic = f"keys-{unique('t').partition('@')[0]}@topics.example.com"
        assert a.post(f"/api/{topic}").status_code == 201
        assert b.post("/api/subscribed", json={f"{topic}/posts": "publisher"}).status_code == 200
        assert send(a, topic, "same", "by one").status_code == 201
        assert send(b, topic, "same", "by two").status_code == 201
        assert sorted(contents(a, topic)) == ["by one", "by two"]


def test_a_bad_key_is_refused(stack: Stack) -> None:
    writer = unique("romeo")
    with stack.account(writer) as w:
        assert send(w, writer, "x" * 256, "too long a key").status_code == 400
        assert contents(w, writer) == []


def test_a_key_holds_for_idempotency_seconds(tmp_path: Path) -> None:
    with running(tmp_path / "data", IDEMPOTENCY_SECONDS="1") as stack:
        writer = unique("romeo")
        with stack.account(writer) as w:
            assert send(w, writer, "k", "first").status_code == 201
            assert send(w, writer, "k", "first").status_code == 200
            time.sleep(1.2)
            assert send(w, writer, "k", "first").status_code == 201
            assert contents(w, writer) == ["first", "first"]


def test_local_id_dedupes_only_the_same_send(stack: Stack) -> None:
    """The same local_id to another stream, or with other content, is a new message."""
    writer = Aloha(stack, unique("romeo"))
    other = f"local-{unique('t').partition('@')[0]}@topics.example.com"
    with stack.client(writer.user) as w:
        assert w.post(f"/api/{other}").status_code == 201
        first = writer.send(writer.user, "to A", local_id="1")
        assert writer.send(writer.user, "to A", local_id="1") == first  # a retry
        to_b = writer.send(other, "to B", local_id="1")
        assert to_b != first
        changed = writer.send(writer.user, "to A, edited before sending", local_id="1")
        assert changed not in (first, to_b)
        assert contents(w, writer.user) == ["to A, edited before sending", "to A"]
        assert contents(w, other) == ["to B"]


def test_the_longest_post_fits_as_the_zulip_client_sends_it(stack: Stack) -> None:
    """10,000 emoji, form-encoded: about 120 kB of request body."""
    writer = Aloha(stack, unique("romeo"))
    longest = "😀" * 10_000
    writer.send(writer.user, longest)
    with stack.client(writer.user) as w:
        assert contents(w, writer.user) == [longest]
        # One character more is refused as content, not as a body too large.
        answer = writer.call(
            "POST", "messages", type="stream", to=writer.user, topic="posts", content=longest + "😀"
        )
        assert answer["result"] == "error" and "10000 characters" in answer["msg"]
