"""Roles only the owner gives: a follow never raises a role the owner set, whatever the order of
follows, unfollows, bans and approvals. Every transition goes through the API."""

from __future__ import annotations

import itertools

import httpx
import pytest

from tests.conftest import unique
from tests.support import Stack

GIVEN = ("member", "publisher", "moderator")


def make_topic(stack: Stack, owner: httpx.Client, default: str, access: str = "open") -> str:
    topic = f"roles-{unique('t').partition('@')[0]}@topics.example.com"
    fields = {"default_affiliation": default, "access_model": access}
    assert owner.post(f"/api/{topic}", json=fields).status_code == 201
    return topic


def follow(client: httpx.Client, topic: str, role: str = "publisher") -> int:
    return client.post("/api/subscribed", json={f"{topic}/posts": role}).status_code


def role_of(client: httpx.Client, topic: str) -> str | None:
    roles: dict[str, str] = client.get("/api/subscribed").json()
    return roles.get(f"{topic}/posts")


def give(owner: httpx.Client, topic: str, jid: str, role: str) -> None:
    r = owner.post(f"/api/{topic}/subscribers/posts", json={jid: role})
    assert r.status_code == 200, r.text


def may_post(client: httpx.Client, topic: str) -> bool:
    status = client.post(f"/api/{topic}/content/posts", json={"content": "hello"}).status_code
    assert status in (201, 403)
    return status == 201


@pytest.mark.parametrize(("was", "given"), list(itertools.product(GIVEN, [*GIVEN, "outcast"])))
def test_every_role_the_owner_gives_holds_against_a_refollow(
    stack: Stack, was: str, given: str
) -> None:
    """From each role to each other: the follower's own follow requests (for the highest
    role, and after unfollowing) never lift them above what the owner gave."""
    owner, user = unique("owner"), unique("user")
    with stack.account(owner) as o, stack.account(user) as u:
        topic = make_topic(stack, o, "publisher")
        assert follow(u, topic) == 200
        if was != "publisher":
            give(o, topic, user, was)
        assert role_of(u, topic) == was
        give(o, topic, user, given)
        assert role_of(u, topic) == given
        if given == "outcast":
            assert follow(u, topic) == 403  # ban, then refollow: refused
            assert role_of(u, topic) == "outcast" and not may_post(u, topic)
            return
        assert follow(u, topic, "moderator") == 200  # asks for more than the default
        assert role_of(u, topic) == given
        assert follow(u, topic, "none") == 200 and role_of(u, topic) is None
        assert follow(u, topic, "moderator") == 200
        # Back at the default, unless the owner had given less: a promotion ends with the
        # follow, a demotion does not.
        expected = "member" if given == "member" else "publisher"
        assert role_of(u, topic) == expected
        assert may_post(u, topic) == (expected != "member")


def test_a_demoted_follower_cannot_promote_themselves_back(stack: Stack) -> None:
    owner, user, other = unique("owner"), unique("user"), unique("other")
    with stack.account(owner) as o, stack.account(user) as u, stack.account(other) as x:
        topic = make_topic(stack, o, "publisher")
        assert follow(u, topic) == 200 and follow(x, topic) == 200
        give(o, topic, user, "member")
        assert follow(u, topic, "publisher") == 200
        assert role_of(u, topic) == "member" and not may_post(u, topic)
        assert may_post(x, topic), "positive control: a follower the owner left alone may post"
        give(o, topic, user, "publisher")  # only the owner lifts it
        assert may_post(u, topic)


def test_unban_then_refollow_gets_the_default(stack: Stack) -> None:
    owner, user = unique("owner"), unique("user")
    with stack.account(owner) as o, stack.account(user) as u:
        topic = make_topic(stack, o, "publisher")
        assert follow(u, topic) == 200
        give(o, topic, user, "outcast")
        assert follow(u, topic) == 403
        give(o, topic, user, "none")  # the owner lifts the ban
        assert follow(u, topic) == 200 and role_of(u, topic) == "publisher"


def test_an_approved_request_is_capped_by_an_earlier_demotion(stack: Stack) -> None:
    owner, user = unique("owner"), unique("user")
    with stack.account(owner) as o, stack.account(user) as u:
        topic = make_topic(stack, o, "publisher", access="authorize")
        assert follow(u, topic) == 200 and role_of(u, topic) == "pending"
        approve = [{"jid": user, "subscription": "subscribed"}]
        assert o.post(f"/api/{topic}/subscribers/posts/approve", json=approve).status_code == 200
        assert role_of(u, topic) == "publisher"
        give(o, topic, user, "member")
        assert follow(u, topic, "none") == 200
        assert follow(u, topic) == 200 and role_of(u, topic) == "pending"
        assert o.post(f"/api/{topic}/subscribers/posts/approve", json=approve).status_code == 200
        assert role_of(u, topic) == "member" and not may_post(u, topic)
