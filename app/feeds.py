"""Feeds are views of the one log: answer at once with what follows a cursor, or hold.

A cursor is the id of an event in the log, written as a string of digits. Each feed is a
Pushpin channel (its user's, or the firehose's) on which the publisher sends exactly what the
immediate answer would hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import BadRequest, Gone
from app.model import feed_body
from app.store import Store
from app.store.base import FeedItem

MAX_ITEMS = 100
# A page of the contract (README). Answers are not holds, so Pushpin's 100,000-byte cap on an
# answer it may hold does not apply to them (docs/pushpin.md).
MAX_FEED_BYTES = 90_000
_MAX_CURSOR_DIGITS = 18
FEEDS = ("posts", "events", "firehose")


def parse_cursor(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_CURSOR_DIGITS:
        raise BadRequest("since must be a cursor: a string of digits, as given in 'last'")
    return int(raw)


@dataclass(frozen=True)
class Now:
    """Answer at once."""

    body: str


@dataclass(frozen=True)
class Hold:
    """Nothing to answer yet: hold on these channels; ``body`` is the answer on timeout."""

    channels: list[tuple[str, str]]
    body: str


def page(items: list[FeedItem], empty_last: int) -> Now:
    """As many items as fit the contract's limits; ``last`` is the last one included."""
    size = 0
    kept: list[str] = []
    last = empty_last
    for item in items[:MAX_ITEMS]:
        size += len(item.payload.encode()) + 1
        if kept and size > MAX_FEED_BYTES - 64:
            break
        kept.append(item.payload)
        last = item.event_id
    return Now(feed_body(last, kept))


class Feeds:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def latest(self) -> Now:
        return Now(feed_body(await self.store.last_event_id(), []))

    async def since(self, feed: str, jid: str | None, since: int) -> Now | Hold:
        """What follows ``since`` in ``feed`` for ``jid`` (None for the firehose)."""
        state = await self.store.read_feed(feed, jid, since, MAX_ITEMS)
        if since < state.kept_from:
            raise Gone(since, state.kept_from)
        if state.items:
            return page(state.items, since)
        if since > state.last_id:
            raise BadRequest(f"since {since} is ahead of the log (last is {state.last_id})")
        return Hold([(state.channel, str(state.head))], feed_body(since, []))

    async def history(self, jid: str, since: int | None) -> Now:
        """The caller's posts and events since ``since`` or since they were last online."""
        start, items, kept_from = await self.store.history(jid, since, MAX_ITEMS)
        if start < kept_from:  # also where they were last online, when not given
            raise Gone(start, kept_from)
        if since is not None and not items and since > await self.store.last_event_id():
            raise BadRequest(f"since {since} is ahead of the log")
        return page(items, start)
