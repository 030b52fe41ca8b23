"""Who may read, write, moderate and follow: every role, on every endpoint, in an open and in
a private (authorize) channel.

Each role is given through the API, as users get it, and checked there before the tests run;
a test that changes a role puts it back the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import jwt
import pytest

from tests.conftest import unique
from tests.support import Holds, Stack
from tests.test_posts_feed import last, post

ROLES = ("anonymous", "none", "pending", "outcast", "member", "publisher", "moderator", "owner")


@dataclass
class World:
    stack: Stack
    topic: str
    access_model: str
    users: dict[str, str]  # role -> jid
    applicant: str  # pending, for the owner and moderators to decide on
    owner_post: str

    @property
    def source(self) -> str:
        return f"{self.topic}/posts"

    def client(self, role: str) -> httpx.Client:
        return self.stack.client(None if role == "anonymous" else self.users[role])


def roles(world: World) -> dict[str, str]:
    """Every role on the topic, as its owner sees them: followers (outcasts too) and requests."""
    with world.client("owner") as o:
        found: dict[str, str] = o.get(f"/api/{world.topic}/subscribers/posts").json()
        for request in o.get(f"/api/{world.topic}/subscribers/posts/approve").json():
            found[request["jid"]] = "pending"
    return found


def give(world: World, jid: str, role: str) -> None:
    """Give ``jid``, who has no role on the topic, ``role``, the way a user gets it."""
    with world.client("owner") as o, world.stack.client(jid) as c:

        def ok(response: httpx.Response) -> None:
            assert response.status_code == 200, response.text

        def access(model: str) -> None:
            ok(o.post(f"/api/{world.topic}/metadata/posts", json={"access_model": model}))

        if role == "outcast":  # a ban applies to anyone
            ok(o.post(f"/api/{world.topic}/subscribers/posts", json={jid: "outcast"}))
        elif role == "pending":  # a request to follow a private channel (that may open since)
            if world.access_model == "open":
                access("authorize")
            ok(c.post("/api/subscribed", json={world.source: "member"}))
            if world.access_model == "open":
                access("open")
        elif role != "none":
            ok(c.post("/api/subscribed", json={world.source: "member"}))
            if world.access_model == "authorize":
                decision = [{"jid": jid, "subscription": "subscribed"}]
                ok(o.post(f"/api/{world.topic}/subscribers/posts/approve", json=decision))
            if role != "member":
                ok(o.post(f"/api/{world.topic}/subscribers/posts", json={jid: role}))


def put_back(world: World, jid: str, role: str) -> None:
    """Give ``jid`` back ``role`` if an attempt changed it."""
    now = roles(world).get(jid, "none")
    if now == role:
        return
    if now != "none":
        with world.client("owner") as o:
            removed = o.post(f"/api/{world.topic}/subscribers/posts", json={jid: "none"})
            assert removed.status_code == 200, removed.text
    give(world, jid, role)
    assert roles(world).get(jid, "none") == role


def make_world(stack: Stack, access_model: str) -> World:
    users = {role: unique(role) for role in ROLES if role != "anonymous"}
    applicant = unique("applicant")
    for jid in [*users.values(), applicant]:
        stack.account(jid).close()
    topic = f"matrix-{users['owner'].partition('@')[0]}@topics.example.com"
    with stack.client(users["owner"]) as o:
        fields = {"default_affiliation": "member", "access_model": access_model}
        assert o.post(f"/api/{topic}", json=fields).status_code == 201
        owner_post = post(o, topic, "the owner's")["id"]
    world = World(stack, topic, access_model, users, applicant, owner_post)
    for role, jid in users.items():
        if role != "owner":
            give(world, jid, role)
    give(world, applicant, "pending")
    expected = {jid: role for role, jid in users.items() if role != "none"}
    assert roles(world) == {**expected, applicant: "pending"}
    return world


@pytest.fixture(scope="module", params=["open", "authorize"])
def world(stack: Stack, request: pytest.FixtureRequest) -> Iterator[World]:
    yield make_world(stack, request.param)


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
    source = world.source
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
            if role != "anonymous":
                put_back(world, world.users[role], role)
            return status
        if action == "list followers":
            return c.get(f"/api/{world.topic}/subscribers/posts").status_code
        if action == "give a role":
            target = world.users["member"]
            answer = c.post(f"/api/{world.topic}/subscribers/posts", json={target: "publisher"})
            put_back(world, target, "member")
            return answer.status_code
        if action == "list follow requests":
            return c.get(f"/api/{world.topic}/subscribers/posts/approve").status_code
        if action == "approve a request":
            decision = [{"jid": world.applicant, "subscription": "subscribed"}]
            answer = c.post(f"/api/{world.topic}/subscribers/posts/approve", json=decision)
            put_back(world, world.applicant, "pending")
            return answer.status_code
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


def test_an_outcast_neither_reads_nor_holds_on_the_channel(world: World, holds: Holds) -> None:
    with world.client("outcast") as c, world.client("owner") as o:
        assert c.get(f"/api/{world.topic}/content/posts").status_code == 403
        since = last(c)
        held = holds.hold("posts", c.get, f"/api/notifications/posts?since={since}")
        post(o, world.topic, "not for the outcast")
        # The same request gets the next post the outcast may see, and only that.
        own = post(c, world.users["outcast"], "the outcast's own")
        assert holds.published(held).json()["items"] == [own]


def test_a_post_is_published_only_to_those_who_may_read_it(world: World, holds: Holds) -> None:
    """Everyone holds a request; the owner posts. Readers get the post, published; the others
    get, on the same request, the next post they may see (their own) and nothing before it."""
    readers = ("member", "publisher", "moderator", "owner")
    others = ("none", "pending", "outcast")
    with ExitStack() as exits:
        clients = {role: exits.enter_context(world.client(role)) for role in ROLES}
        since = last(clients["owner"])
        feeds = {
            role: holds.send("posts", clients[role].get, f"/api/notifications/posts?since={since}")
            for role in (*readers, *others)
        }
        firehose = holds.send("firehose", clients["anonymous"].get, f"/api/firehose?since={since}")
        holds.in_place()
        created = post(clients["owner"], world.topic, "who gets this?")
        for role in readers:
            assert holds.published(feeds[role]).json()["items"] == [created], role
        own = {}
        for role in others:
            own[role] = post(clients[role], world.users[role], f"the {role}'s own")
            assert holds.published(feeds[role]).json()["items"] == [own[role]], role
        # The firehose has every post of an open channel, and nothing of a private one.
        first_open = created if world.access_model == "open" else own["none"]
        assert holds.published(firehose).json()["items"] == [first_open]


def test_a_hold_listens_to_its_own_channel_only(world: World, stack: Stack) -> None:
    """One channel per user, whatever they follow: the same on every hold of theirs, and no
    one else's."""
    key = stack.sig_key
    sig = jwt.encode({"iss": "pushpin", "exp": 9999999999}, key.encode(), "HS256")
    channels = {}
    for role in ("none", "outcast", "member", "owner"):
        with stack.client(world.users[role], origin=True) as direct:
            since = direct.get("/api/notifications/posts").json()["last"]
            holds = [
                direct.get(f"/api/notifications/posts?since={since}", headers={"Grip-Sig": sig})
                for _ in range(2)
            ]
        first, again = ([c["name"] for c in h.json()["hold"]["channels"]] for h in holds)
        assert len(first) == 1 and again == first, (role, first, again)
        channels[role] = first[0]
    assert len(set(channels.values())) == len(channels), channels
