"""Private channels and every event type, end to end through a real Pushpin.

Each realtime assertion holds a request on the feed first, then makes the change, then reads
what the held request was answered with, which must have been published to it. Who must not
get something is shown by the same request getting, instead, the next thing they may see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import unique
from tests.support import Holds, Stack
from tests.test_posts_feed import post

FEED = {
    "posts": "/api/notifications/posts",
    "events": "/api/notifications/events",
    "firehose": "/api/firehose",
}


def cursor(client: httpx.Client, feed: str = "posts") -> str:
    value: str = client.get(FEED[feed]).json()["last"]
    return value


def held(
    holds: Holds, client: httpx.Client, feed: str, since: str | None = None
) -> Callable[[], Any]:
    """Send a request on ``feed`` to be held (``holds.in_place()`` waits until it is); the
    function returned waits for its answer's JSON, which must come from a publish."""
    since = since or cursor(client, feed)
    answer = holds.send(feed, client.get, f"{FEED[feed]}?since={since}", timeout=8)
    return lambda: holds.published(answer).json()


@pytest.fixture
def private(stack: Stack) -> Iterator[tuple[str, httpx.Client, httpx.Client, str]]:
    """A private channel: (channel, its owner's client, a would-be follower's client, jid)."""
    owner, follower = unique("capulet"), unique("romeo")
    channel = f"crypt-{owner.partition('@')[0]}@topics.example.com"
    with stack.account(owner) as o, stack.account(follower) as f:
        assert o.post(f"/api/{channel}", json={"access_model": "authorize"}).status_code == 201
        yield channel, o, f, follower


def request_to_follow(f: httpx.Client, channel: str) -> None:
    r = f.post("/api/subscribed", json={f"{channel}/posts": "publisher"})
    assert r.status_code == 200 and r.json()[f"{channel}/posts"] == "pending"


def test_a_follow_request_reaches_the_owner_and_moderators(
    stack: Stack, holds: Holds, private: Any
) -> None:
    channel, o, f, follower = private
    moderator = unique("nurse")
    with stack.account(moderator) as m:
        # Roles are for followers: nobody is made to follow.
        r = o.post(f"/api/{channel}/subscribers/posts", json={moderator: "moderator"})
        assert r.status_code == 409
        request_to_follow(m, channel)
        decision = [{"jid": moderator, "subscription": "subscribed"}]
        o.post(f"/api/{channel}/subscribers/posts/approve", json=decision)
        r = o.post(f"/api/{channel}/subscribers/posts", json={moderator: "moderator"})
        assert r.status_code == 200 and r.json()[moderator] == "moderator"
        to_owner, to_moderator = held(holds, o, "events"), held(holds, m, "events")
        holds.in_place()
        request_to_follow(f, channel)
        for answer in (to_owner(), to_moderator()):
            (item,) = answer["items"]
            assert item["type"] == "follow_request"
            assert item["node"] == f"{channel}/posts" and item["jid"] == follower
            assert item["cursor"] == answer["last"]
        pending = [{"jid": follower, "subscription": "pending"}]
        assert m.get(f"/api/{channel}/subscribers/posts/approve").json() == pending
        assert f.get(f"/api/{channel}/subscribers/posts/approve").status_code == 403


def test_approval_reaches_the_follower_who_then_gets_the_next_post_at_once(
    holds: Holds, private: Any
) -> None:
    channel, o, f, follower = private
    request_to_follow(f, channel)
    assert f.get(f"/api/{channel}/content/posts").status_code == 403  # pending: no reading
    event, posts = held(holds, f, "events"), held(holds, f, "posts")
    holds.in_place()
    decision = [{"jid": follower, "subscription": "subscribed"}]
    assert o.post(f"/api/{channel}/subscribers/posts/approve", json=decision).json() == []
    (item,) = event()["items"]
    assert item["type"] == "subscription" and item["change"] == "approved"
    assert item["subscription"] == "subscribed" and item["affiliation"] == "publisher"
    # The held posts request, open since before the approval, gets the next post.
    created = post(o, channel, "welcome")
    assert posts()["items"] == [created]
    assert f.get("/api/subscribed").json()[f"{channel}/posts"] == "publisher"


def test_a_rejected_follower_is_told_and_never_gets_a_post(holds: Holds, private: Any) -> None:
    channel, o, f, follower = private
    request_to_follow(f, channel)
    event, posts = held(holds, f, "events"), held(holds, f, "posts")
    holds.in_place()
    decision = [{"jid": follower, "subscription": "none"}]
    o.post(f"/api/{channel}/subscribers/posts/approve", json=decision)
    (item,) = event()["items"]
    assert item["change"] == "rejected" and item["subscription"] == "none"
    post(o, channel, "not for the rejected")
    own = post(f, follower, "the next post they may see: their own")
    assert posts()["items"] == [own]
    assert f.get(f"/api/{channel}/content/posts").status_code == 403


@pytest.mark.parametrize("how", ["banned", "unfollowed", "pending"])
def test_access_that_ended_ends_delivery_even_to_a_held_request(
    holds: Holds, private: Any, how: str
) -> None:
    channel, o, f, follower = private
    request_to_follow(f, channel)
    if how != "pending":
        decision = [{"jid": follower, "subscription": "subscribed"}]
        o.post(f"/api/{channel}/subscribers/posts/approve", json=decision)
    before = cursor(f)
    event = held(holds, f, "events") if how != "pending" else None
    # A posts request held while the follower could still read (or asked to).
    posts = held(holds, f, "posts", before)
    holds.in_place()
    if how == "banned":
        r = o.post(f"/api/{channel}/subscribers/posts", json={follower: "outcast"})
        assert r.json()[follower] == "outcast"
    elif how == "unfollowed":
        f.post("/api/subscribed", json={f"{channel}/posts": "none"})
    if event is not None:
        (item,) = event()["items"]
        assert item["type"] == "subscription" and item["change"] == how
        assert item["subscription"] == "none"
    post(o, channel, f"after the follower was {how}")
    own = post(f, follower, "the next post they may see: their own")
    assert posts()["items"] == [own]
    # Nor by an immediate answer from an old cursor.
    assert f.get(f"/api/notifications/posts?since={before}").json()["items"] == [own]


def test_role_changes_reach_the_follower(stack: Stack, holds: Holds) -> None:
    owner, follower = unique("capulet"), unique("romeo")
    channel = f"verona-{owner.partition('@')[0]}@topics.example.com"
    with stack.account(owner) as o, stack.account(follower) as f:
        o.post(f"/api/{channel}")
        f.post("/api/subscribed", json={f"{channel}/posts": "publisher"})
        event = held(holds, f, "events")
        holds.in_place()
        o.post(f"/api/{channel}/subscribers/posts", json={follower: "moderator"})
        (item,) = event()["items"]
        assert item["change"] == "role_changed" and item["affiliation"] == "moderator"
        assert f.get(f"/api/{channel}/subscribers/posts").json()[follower] == "moderator"
        assert (
            f.post(f"/api/{channel}/subscribers/posts", json={owner: "member"}).status_code == 403
        )


def test_edits_and_deletions_reach_every_reader(stack: Stack, holds: Holds, private: Any) -> None:
    channel, o, f, follower = private
    request_to_follow(f, channel)
    o.post(
        f"/api/{channel}/subscribers/posts/approve",
        json=[{"jid": follower, "subscription": "subscribed"}],
    )
    stranger = unique("tybalt")
    with stack.account(stranger) as s:
        created = post(f, channel, "first draft")
        url = f"/api/{channel}/content/posts/{created['id']}"
        s_since = cursor(s, "events")
        assert s.put(url, json={"content": "x"}).status_code == 403
        to_owner, to_author = held(holds, o, "events"), held(holds, f, "events")
        holds.in_place()
        edited = f.put(url, json={"content": "second draft"})
        assert edited.status_code == 200
        for answer in (to_owner(), to_author()):
            (item,) = answer["items"]
            assert item["type"] == "post_updated"
            assert item["post"] == edited.json()
            assert item["post"]["content"] == "second draft"
            assert item["post"]["updated"] >= item["post"]["published"]
        assert o.get(url).json()["content"] == "second draft"
        to_author = held(holds, f, "events")
        holds.in_place()
        assert o.delete(url).status_code == 204
        (item,) = to_author()["items"]
        assert item == {
            "type": "post_deleted",
            "cursor": item["cursor"],
            "id": created["id"],
            "source": f"{channel}/posts",
        }
        # A stranger hears of neither: from the same cursor, the first event they get is the
        # next one that concerns them.
        assert o.post(f"/api/{channel}/subscribers/posts", json={stranger: "outcast"}).is_success
        (told,) = s.get(f"/api/notifications/events?since={s_since}").json()["items"]
        assert told["type"] == "subscription" and told["change"] == "banned"
        assert told["jid"] == stranger


def test_the_firehose_has_every_open_post_and_no_private_one(
    stack: Stack, holds: Holds, private: Any
) -> None:
    channel, o, _, _ = private
    open_channel = f"square-{unique('x').partition('@')[0]}@topics.example.com"
    o.post(f"/api/{open_channel}")
    with stack.client() as anonymous:
        since = cursor(anonymous, "firehose")
        firehose = held(holds, anonymous, "firehose", since)
        holds.in_place()
        post(o, channel, "a private post")
        public = post(o, open_channel, "a public post")
        assert firehose()["items"] == [public]
        page = anonymous.get(f"/api/firehose?since={since}").json()
        assert page["items"] == [public]
        assert anonymous.get("/api/firehose", auth=("x@y.z", "wrong password")).status_code == 401


def test_history_since_last_online_then_live_misses_nothing(holds: Holds, private: Any) -> None:
    channel, o, f, follower = private
    request_to_follow(f, channel)
    o.post(
        f"/api/{channel}/subscribers/posts/approve",
        json=[{"jid": follower, "subscription": "subscribed"}],
    )
    last_seen = cursor(f)
    live = held(holds, f, "posts", last_seen)  # a realtime request: f was online here
    holds.in_place()
    first = post(o, channel, "the last post f saw live")
    assert live()["items"] == [first]
    # Then f is away, and does not ask again: posts and events.
    o.post(f"/api/{channel}/subscribers/posts", json={follower: "member"})
    second = post(o, channel, "and this too")
    history = f.get("/api/notifications/history").json()
    kinds = [(item["type"], item.get("post", {}).get("id")) for item in history["items"]]
    assert kinds == [("post", first["id"]), ("subscription", None), ("post", second["id"])]
    assert [item["cursor"] for item in history["items"]] == sorted(
        (item["cursor"] for item in history["items"]), key=int
    )
    # Coming back: catch up with history, then long-poll from its last: nothing is missed.
    live = held(holds, f, "posts", history["last"])
    holds.in_place()
    third = post(o, channel, "live again")
    assert live()["items"] == [third]
    explicit = f.get(f"/api/notifications/history?since={last_seen}").json()
    assert explicit["items"][:3] == history["items"]
    assert explicit["items"][3]["post"] == third


def test_metadata_is_read_by_readers_and_changed_by_the_owner(private: Any) -> None:
    channel, o, f, follower = private
    url = f"/api/{channel}/metadata/posts"
    assert f.get(url).status_code == 403  # private, and not a follower
    changed = o.post(url, json={"title": "The crypt", "description": "Shh"})
    assert changed.status_code == 200
    assert changed.json()["title"] == "The crypt"
    assert changed.json()["access_model"] == "authorize"
    request_to_follow(f, channel)
    o.post(
        f"/api/{channel}/subscribers/posts/approve",
        json=[{"jid": follower, "subscription": "subscribed"}],
    )
    assert f.get(url).json()["description"] == "Shh"
    assert f.post(url, json={"title": "mine now"}).status_code == 403
    assert o.post(url, json={"access_model": "secret"}).status_code == 400


def test_one_decision_per_request_and_edits_show_in_immediate_answers(private: Any) -> None:
    channel, o, f, follower = private
    request_to_follow(f, channel)
    twice = [
        {"jid": follower, "subscription": "subscribed"},
        {"jid": follower, "subscription": "none"},
    ]
    assert o.post(f"/api/{channel}/subscribers/posts/approve", json=twice).status_code == 400
    assert o.get(f"/api/{channel}/subscribers/posts/approve").json()[0]["jid"] == follower
    o.post(f"/api/{channel}/subscribers/posts/approve", json=twice[:1])
    since = cursor(f)
    created = post(o, channel, "my password is hunter2")
    o.put(f"/api/{channel}/content/posts/{created['id']}", json={"content": "[redacted]"})
    (item,) = f.get(f"/api/notifications/posts?since={since}").json()["items"]
    assert item["content"] == "[redacted]"
