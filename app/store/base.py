"""The rows the store hands to the domain."""

from __future__ import annotations

from typing import NamedTuple


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


class Delivery(NamedTuple):
    """One published GRIP item: an event on one Pushpin channel, chained by prev-id."""

    event_id: int
    channel: str
    prev_id: int
    payload: str


class PostsFeedState(NamedTuple):
    last_id: int  # the newest event in the whole log
    items: list[FeedItem]
    channel: str  # the account's Pushpin channel
    head: int  # the last id published on it


class Position(NamedTuple):
    """A place in the deliveries, which are ordered by (event_id, channel)."""

    event_id: int
    channel: str

    @classmethod
    def after_event(cls, event_id: int) -> Position:
        """Just past every delivery of ``event_id`` (channels are never empty)."""
        return cls(event_id + 1, "")
