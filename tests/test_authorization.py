"""Who may read, write, moderate and follow: every role, on every endpoint, in an open and in
a private (authorize) channel.

Roles are set in the store's file directly, so that each test starts from the same roles.
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

ROLES = ("anonymous", "none", "pending", "outcast", "member", "publisher", "moderator", "owner")


@dataclass
class World:
    stack: Stack
    topic: str
    access_model: str
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


def make_world(stack: Stack, access_model: str) -> World:
    users = {role: unique(role) for role in ROLES if role != "anonymous"}
    for jid in users.values():
        stack.account(jid).close()
    topic = f"matrix-{users['owner'].partition('@')[0]}@topics.example.com"
    with stack.client(users["owner"]) as o:
        fields = {"default_affiliation": "member", "access_model": access_model}
        assert o.post(f"/api/{topic}", json=fields).status_code == 201
        owner_post = post(o, topic, "the owner's")["id"]
    world = World(stack, topic, access_model, users, owner_post)
    reset_roles(world)
    return world


@pytest.fixture(scope="module", params=["open", "authorize"])
def world(stack: Stack, request: pytest.FixtureRequest) -> Iterator[World]:
    yield make_world(stack, request.param)


def reset_roles(world: World) -> None:
    for role, jid in world.users.items():
        if role != "owner":
            set_role(world.stack, jid, f"{world.topic}/posts", None if role == "none" else role)


# The status expected for each role, in the order of ROLES; private differs where noted.
OPEN = {
    "list posts": (401, 200, 200, 403, 200, 200, 200, 200),
    "read a post": (401, 200, 200, 403, 200, 200, 200, 200),
    "post": (401, 403, 403, 403, 403, 201, 201, 201),
    "edit another's post": (401, 403, 403, 403, 403, 403, 200, 200),
    "delete another's post": (401, 403, 403, 403, 403, 403, 204, 204),
    "follow": (401, 200, 200, 403, 200, 200, 200, 200),
    "list followers": (401, 200, 200, 403, 200, 200, 200, 200),
    "give a role": (401, 403, 403, 403, 403, 403, 403, 200),
    "list follow requests": (401, 403, 403, 403, 403, 403, 200, 200),
    "approve a request": (401, 403, 403, 403, 403, 403, 200, 200),
    "read metadata": (401, 200, 200, 403, 200, 200, 200, 200),
    "change metadata": (401, 403, 403, 403, 403, 403, 403, 200),
}
# In a private channel, whoever is not (yet) a follower reads nothing.
PRIVATE = {
    **OPEN,
    **{
        action: (401, 403, 403, 403, 200, 200, 200, 200)
        for action in ("list posts", "read a post", "list followers", "read metadata")
    },
}


def attempt(world: World, action: str, role: str) -> int:
    base = f"/api/{world.topic}/content/posts"
    source = f"{world.topic}/posts"
    with world.client(role) as c, world.client("owner") as o:
        if action == "list posts":
            return c.get(base).status_code
        if action == "read a post":
            return c.get(f"{base}/{world.owner_post}").status_code
        if action == "post":
            return c.post(base, json={"content": f"by the {role}"}).status_code
        if action in ("edit another's post", "delete another's post"):
            victim = post(o, world.topic, "to be changed")["id"]  # a fresh one each time
            if action.startswith("edit"):
                return c.put(f"{base}/{victim}", json={"content": "changed"}).status_code
            return c.delete(f"{base}/{victim}").status_code
        if action == "follow":
            wanted = "member" if role != "owner" else "owner"
            status = c.post("/api/subscribed", json={source: wanted}).status_code
            reset_roles(world)
            return status
        if action == "list followers":
            return c.get(f"/api/{world.topic}/subscribers/posts").status_code
        if action == "give a role":
            target = world.users["member"]
            answer = c.post(f"/api/{world.topic}/subscribers/posts", json={target: "publisher"})
            reset_roles(world)
            return answer.status_code
        if action == "list follow requests":
            return c.get(f"/api/{world.topic}/subscribers/posts/approve").status_code
        if action == "approve a request":
            applicant = unique("applicant")
            world.stack.account(applicant).close()
            set_role(world.stack, applicant, source, "pending")
            decision = [{"jid": applicant, "subscription": "subscribed"}]
            return c.post(
                f"/api/{world.topic}/subscribers/posts/approve", json=decision
            ).status_code
        if action == "read metadata":
            return c.get(f"/api/{world.topic}/metadata/posts").status_code
        if action == "change metadata":
            return c.post(f"/api/{world.topic}/metadata/posts", json={"title": role}).status_code
    raise AssertionError(action)


@pytest.mark.parametrize("action", OPEN)
@pytest.mark.parametrize("role", ROLES)
def test_matrix(world: World, action: str, role: str) -> None:
    expected = (OPEN if world.access_model == "open" else PRIVATE)[action][ROLES.index(role)]
    assert attempt(world, action, role) == expected


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
        channels = {  # (z...: Aloha queues' channels, which follow these)
            row[0]
            for row in db.execute(
                "SELECT d.channel FROM deliveries d JOIN posts p ON p.event_id = d.event_id"
                " WHERE p.id = ? AND d.channel NOT LIKE 'z%'",
                (created["id"],),
            )
        }
        ids = dict(db.execute("SELECT jid, id FROM accounts").fetchall())
        followers = dict(
            db.execute(
                "SELECT s.jid, s.affiliation FROM subscriptions s JOIN nodes n"
                " ON n.id = s.node_id WHERE n.channel = ?",
                (world.topic,),
            ).fetchall()
        )
    readers = {jid for jid, role in followers.items() if role not in ("pending", "outcast")}
    expected = {f"u{ids[jid]}" for jid in readers}
    if world.access_model == "open":
        expected.add("firehose")  # an open channel's post also goes to the firehose
    assert channels == expected
    for role in ("none", "pending", "outcast"):
        assert f"u{ids[world.users[role]]}" not in channels


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
