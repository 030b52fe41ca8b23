"""Who may read, write, delete and follow: every role that exists, on every endpoint.

Roles that no endpoint grants yet (moderator, outcast) are set in the store's file directly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import unique
from tests.support import Stack
from tests.test_posts_feed import last, post

ROLES = ("anonymous", "none", "outcast", "member", "publisher", "moderator", "owner")


@dataclass
class World:
    stack: Stack
    topic: str
    users: dict[str, str]  # role -> jid
    owner_post: str

    def client(self, role: str) -> httpx.Client:
        return self.stack.client(None if role == "anonymous" else self.users[role])


def set_role(stack: Stack, jid: str, source: str, role: str | None) -> None:
    channel, _, node = source.rpartition("/")
    with sqlite3.connect(stack.data_dir / "buddycloud.sqlite3", timeout=10) as db:
        db.execute(
            "DELETE FROM subscriptions WHERE jid = ?"
            " AND node_id = (SELECT id FROM nodes WHERE channel = ? AND name = ?)",
            (jid, channel, node),
        )
        if role:
            db.execute(
                "INSERT INTO subscriptions (jid, node_id, affiliation)"
                " SELECT ?, id, ? FROM nodes WHERE channel = ? AND name = ?",
                (jid, role, channel, node),
            )


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    users = {role: unique(role) for role in ROLES if role != "anonymous"}
    for jid in users.values():
        stack.account(jid).close()
    topic = f"matrix-{users['owner'].partition('@')[0]}@topics.example.com"
    with stack.client(users["owner"]) as o:
        assert o.post(f"/api/{topic}", json={"default_affiliation": "member"}).status_code == 201
        owner_post = post(o, topic, "the owner's")["id"]
    world = World(stack, topic, users, owner_post)
    reset_roles(world)
    yield world


def reset_roles(world: World) -> None:
    for role, jid in world.users.items():
        if role != "owner":
            set_role(world.stack, jid, f"{world.topic}/posts", None if role == "none" else role)


# status expected per role, in the order of ROLES
MATRIX = {
    "list posts": (401, 200, 403, 200, 200, 200, 200),
    "read a post": (401, 200, 403, 200, 200, 200, 200),
    "post": (401, 403, 403, 403, 201, 201, 201),
    "delete another's post": (401, 403, 403, 403, 403, 204, 204),
    "follow": (401, 200, 403, 200, 200, 200, 200),
}


def attempt(world: World, action: str, role: str) -> int:
    base = f"/api/{world.topic}/content/posts"
    with world.client(role) as c:
        if action == "list posts":
            return c.get(base).status_code
        if action == "read a post":
            return c.get(f"{base}/{world.owner_post}").status_code
        if action == "post":
            return c.post(base, json={"content": f"by the {role}"}).status_code
        if action == "delete another's post":
            with world.client("owner") as o:  # a fresh victim each time
                victim = post(o, world.topic, "to be deleted")["id"]
            return c.delete(f"{base}/{victim}").status_code
        if action == "follow":
            wanted = "member" if role != "owner" else "owner"
            status = c.post("/api/subscribed", json={f"{world.topic}/posts": wanted}).status_code
            reset_roles(world)
            return status
    raise AssertionError(action)


@pytest.mark.parametrize("action", MATRIX)
@pytest.mark.parametrize("role", ROLES)
def test_matrix(world: World, action: str, role: str) -> None:
    assert attempt(world, action, role) == MATRIX[action][ROLES.index(role)]


def test_the_author_may_delete_their_own_post(world: World) -> None:
    with world.client("publisher") as c:
        mine = post(c, world.topic, "mine to delete")["id"]
        assert c.delete(f"/api/{world.topic}/content/posts/{mine}").status_code == 204


def test_an_outcast_neither_reads_nor_holds_on_the_channel(world: World) -> None:
    with world.client("outcast") as c, world.client("owner") as o:
        since = last(c)
        post(o, world.topic, "not for the outcast")
        # Nothing it may see: held, and the post never reaches it.
        with pytest.raises(httpx.ReadTimeout):
            c.get(f"/api/notifications/posts?since={since}", timeout=1.5)


def test_a_post_is_published_only_to_those_who_may_read_it(world: World, stack: Stack) -> None:
    with world.client("owner") as o:
        created = post(o, world.topic, "who gets this?")
    db_path = stack.data_dir / "buddycloud.sqlite3"
    with sqlite3.connect(db_path) as db:
        channels = {
            row[0]
            for row in db.execute(
                "SELECT d.channel FROM deliveries d JOIN posts p ON p.event_id = d.event_id"
                " WHERE p.id = ?",
                (created["id"],),
            )
        }
        ids = dict(db.execute("SELECT jid, id FROM accounts").fetchall())
    readers = ("member", "publisher", "moderator", "owner")
    # An open channel's post also goes to the firehose.
    assert channels == {f"u{ids[world.users[role]]}" for role in readers} | {"firehose"}


def test_a_hold_listens_to_its_own_channel_only(world: World, stack: Stack) -> None:
    import jwt

    key = (stack.data_dir / "grip_sig_key").read_text().strip()
    sig = jwt.encode({"iss": "pushpin", "exp": 9999999999}, key.encode(), "HS256")
    with sqlite3.connect(stack.data_dir / "buddycloud.sqlite3") as db:
        ids = dict(db.execute("SELECT jid, id FROM accounts").fetchall())
    for role in ("none", "outcast", "member", "owner"):
        jid = world.users[role]
        with stack.client(jid, origin=True) as direct:
            since = direct.get("/api/notifications/posts").json()["last"]
            held = direct.get(f"/api/notifications/posts?since={since}", headers={"Grip-Sig": sig})
            channels = [c["name"] for c in held.json()["hold"]["channels"]]
            assert channels == [f"u{ids[jid]}"], role
