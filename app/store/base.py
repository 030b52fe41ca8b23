"""The rows the store hands to the domain."""

from __future__ import annotations

from typing import Any, NamedTuple


class Account(NamedTuple):
    jid: str
    password_hash: str
    api_key: str


class NodeInfo(NamedTuple):
    id: int
    channel: str
    name: str
    access_model: str
    default_affiliation: str


class FeedItem(NamedTuple):
    event_id: int
    payload: str  # the item's JSON, exactly as published


class FeedState(NamedTuple):
    last_id: int  # the newest event in the whole log
    items: list[FeedItem]
    channel: str  # the feed's Pushpin channel
    head: int  # the last id published on it


class Position(NamedTuple):
    """A place in the deliveries, which are ordered by (event_id, channel)."""

    event_id: int
    channel: str

    @classmethod
    def after_event(cls, event_id: int) -> Position:
        """Just past every delivery of ``event_id`` (channels are never empty)."""
        return cls(event_id + 1, "")


class Recipients(NamedTuple):
    """Whose events channel an event goes to: one account, or a node's owner and moderators,
    or everyone who may read a node."""

    kind: str  # "user" | "moderators" | "readers"
    jid: str = ""


class Notice(NamedTuple):
    """An event for the events feed: ``{"type", "cursor", **fields}``."""

    type: str
    fields: dict[str, Any]
    to: Recipients
    subject: str | None = None  # the id of the post it concerns


class Delivery(NamedTuple):
    """One published GRIP item: an event on one Pushpin channel, chained by prev-id."""

    event_id: int
    channel: str
    prev_id: int
    payload: str
    gone: bool = False  # a post deleted since: its readers ask the origin, which skips it


class SubscriptionChange(NamedTuple):
    jid: str
    node_id: int
    affiliation: str | None  # None: no longer following
    notices: list[Notice]
    was: str | None  # the affiliation it was decided from: if it changed since, no change
    given: bool = False  # the owner gave this role: it caps the user's later follows


class RetryKey(NamedTuple):
    """What tells a retried post from a new one: the same ``key`` from the same author within
    the window is a retry if its ``fingerprint`` (of what was sent) matches."""

    key: str
    fingerprint: str
    now: float  # unix time
    window: float  # seconds a key holds


class PostWritten(NamedTuple):
    event_id: int
    body: str  # the post's JSON as stored
    retried: bool  # an earlier request with the same key made it


class Queue(NamedTuple):
    """An Aloha (Zulip) event queue: a filtered view of its account's deliveries."""

    id: str
    jid: str
    event_types: str | None  # JSON
    narrow: str  # JSON
    all_public_streams: bool
    lifespan: int
    acked: int
    last_poll: float


class QueueEvent(NamedTuple):
    event_id: int
    type: str
    payload: str
    node_id: int | None
    message_id: int | None  # the event id of the post it concerns, if any


class QueuePoll(NamedTuple):
    queue: Queue
    events: list[QueueEvent]
    heads: list[tuple[str, int]]  # the queue's channels, each with the last id published there
