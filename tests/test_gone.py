"""Gone means gone: a deleted post's text is in no feed, history, Aloha poll, publish or store
page after the delete; and a banned user, logged in as themselves, gets nothing of the channel
that banned them by any path (the firehose stays public to everyone else)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import unique
from tests.support import TLS, Holds, Stack, running
from tests.test_aloha import Aloha
from tests.test_posts_feed import follow, post
from tests.test_private import cursor
from tests.test_publisher import recorder, wait_for

FEEDS = (
    "/api/notifications/posts?since=0",
    "/api/notifications/events?since=0",
    "/api/notifications/history?since=0",
    "/api/firehose?since=0",
)


def delete(client: httpx.Client, channel: str, post_id: str) -> None:
    assert client.delete(f"/api/{channel}/content/posts/{post_id}").status_code == 204


def edit(client: httpx.Client, channel: str, post_id: str, content: str) -> None:
    r = client.put(f"/api/{channel}/content/posts/{post_id}", json={"content": content})
    assert r.status_code == 200, r.text


def everything(stack: Stack, reader: httpx.Client, aloha: Aloha, queue: str) -> str:
    """All a reader can be answered, as one text: every feed from the start, the writer's
    posts, and an Aloha poll of a queue made before the post."""
    texts = [reader.get(path).text for path in FEEDS]
    texts.append(httpx.get(f"{stack.url}/api/firehose?since=0", verify=TLS).text)
    texts.append(json.dumps(aloha.events(queue), ensure_ascii=False))
    return "\n".join(texts)


def test_a_deleted_posts_text_is_in_no_answer(stack: Stack) -> None:
    writer, reader = unique("romeo"), unique("juliet")
    original, edited = f"first words {uuid.uuid4()}", f"second words {uuid.uuid4()}"
    with stack.account(writer) as w, stack.account(reader) as r:
        follow(r, f"{writer}/posts")
        aloha = Aloha(stack, reader, create=False)
        queue = aloha.register()
        created = post(w, writer, original)
        edit(w, writer, created["id"], edited)
        post(w, writer, "a later post, so that no feed here is held")
        before = everything(stack, r, aloha, queue)
        assert edited in before, "positive control: the text is served (as edited)"
        delete(w, writer, created["id"])
        after = everything(stack, r, aloha, queue)
        assert original not in after and edited not in after
        # The events that say it changed stay, without its text.
        events = r.get("/api/notifications/events?since=0").json()["items"]
        mine = [e for e in events if e.get("id", e.get("post", {}).get("id")) == created["id"]]
        assert [e["type"] for e in mine] == ["post_updated", "post_deleted"]
        assert "content" not in mine[0]["post"] and mine[0]["post"]["id"] == created["id"]
        zulip = aloha.events(queue)
        assert [e["type"] for e in zulip] == ["message", "delete_message"]  # the later post
        assert r.get(f"/api/{writer}/content/posts/{created['id']}").status_code == 404


def test_nothing_published_after_the_delete_holds_the_text(tmp_path: Path) -> None:
    """The publisher is held back (a stand-in target refuses until the delete is done), so
    what it publishes of the post and its edit is published after the delete."""
    with (
        recorder(failures=10**9) as target,
        running(tmp_path / "data", GRIP_URL=target.url) as stack,
    ):
        writer, reader = unique("romeo"), unique("juliet")
        secret = f"soon gone {uuid.uuid4()}"
        with stack.account(writer) as w, stack.account(reader) as r:
            follow(r, f"{writer}/posts")
            created = post(w, writer, secret)
            edit(w, writer, created["id"], f"{secret} (edited)")
            wait_for(lambda: len(target.attempts) >= 2, 5)
            delete(w, writer, created["id"])
            target.failures = 0
            # The post, its edit and its deletion, each to the two users' feeds.
            wait_for(lambda: len(target.delivered()) >= 6, 10)
            wait_for(lambda: len(target.delivered(firehose=True)) == 1, 5)
        published = json.dumps([a[2] for a in target.attempts if a[1] == 200])
        assert secret not in published
        assert created["id"] in published, "positive control: the items were published"


def test_the_store_keeps_no_copy_of_a_deleted_posts_text(tmp_path: Path) -> None:
    """The one test that reads the store's files, as bytes: erasure is a property of the
    files, which no API shows. SQLite only: on PostgreSQL the old text stays until VACUUM and
    new rows reach it (README), which the store does not force."""
    with running(tmp_path / "data") as stack:
        writer = unique("romeo")
        original, edited = f"on disk {uuid.uuid4()}", f"still on disk {uuid.uuid4()}"

        def on_disk() -> bytes:
            files = sorted(stack.data_dir.glob("buddycloud.sqlite3*"))
            return b"".join(f.read_bytes() for f in files)

        with stack.account(writer) as w:
            created = post(w, writer, original)
            edit(w, writer, created["id"], edited)
            assert original.encode() in on_disk() and edited.encode() in on_disk()
            delete(w, writer, created["id"])
            assert original.encode() not in on_disk()
            assert edited.encode() not in on_disk()


def test_a_banned_user_gets_nothing_of_that_channel_by_any_path(stack: Stack, holds: Holds) -> None:
    owner, banned, other = unique("capulet"), unique("romeo"), unique("benvolio")
    channel = f"ban-{owner.partition('@')[0]}@topics.example.com"
    with stack.account(owner) as o, stack.account(banned) as b, stack.account(other) as x:
        assert o.post(f"/api/{channel}").status_code == 201
        follow(b, f"{channel}/posts")
        aloha = Aloha(stack, banned, create=False)
        queue = aloha.register(all_public_streams=True)
        r = o.post(f"/api/{channel}/subscribers/posts", json={banned: "outcast"})
        assert r.status_code == 200
        since = cursor(b, "firehose")
        # A held firehose request: the banned channel's post does not answer it (each post is
        # a hint for it, and the origin, asked, holds it again)...
        answer = holds.hold("firehose", b.get, f"/api/firehose?since={since}", timeout=8)
        hidden = post(o, channel, "not for the banned")
        time.sleep(0.5)
        assert not answer.done()
        shown = post(x, other, "any other open channel's post")  # positive control
        assert holds.published(answer, hints=2).json()["items"] == [shown]
        # ...nor an immediate one, nor the all_public_streams queue, nor history.
        items = b.get(f"/api/firehose?since={since}").json()["items"]
        assert [p["id"] for p in items] == [shown["id"]]
        messages = [e["message"]["id"] for e in aloha.events(queue) if e["type"] == "message"]
        assert len(messages) == 1
        assert hidden["content"] not in b.get("/api/notifications/history?since=0").text
        assert b.get(f"/api/{channel}/content/posts").status_code == 403
        # The firehose stays public: anonymous readers get the post.
        public = httpx.get(f"{stack.url}/api/firehose?since={since}", verify=TLS).json()["items"]
        assert [p["id"] for p in public] == [hidden["id"], shown["id"]]
