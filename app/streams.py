"""The feeds as server-sent events: the same items as the long-polls, one SSE event each,
held open by Pushpin (a GRIP ``stream`` hold) instead of answered once.

A stream is a chain of answers. The first (the client's own request) and every later one
(Pushpin calling the stream's next link) hold at most a page of the backlog after the stream's
cursor. While more is waiting, the answer holds no channel and names the next link, which
Pushpin calls as soon as the page is sent. Once caught up, the answer holds the feed's channel
with ``prev-id`` = the last id delivered on it, so Pushpin itself tells a gap (an item whose
``prev-id`` it did not see, dropped on a full queue, say) and calls the next link with
``Grip-Last`` (the last id it sent on this stream); the origin answers from the log again.

Pushpin calls the next link without any of the client's headers, so the link carries its own
token (``LinkTokens``): signed with the origin's secret, naming the feed and the reader, with an
expiry, and, on a page's link, the cursor the page ended at (a held stream's cursor is the
``Grip-Last`` of the call). It is no credential: only the proxy ever sees it, and it reads
nothing but that one reader's feed.

Links are shared on purpose. Pushpin 1.36 calls held streams' links through a limiter of 10
calls a second per distinct URL (each call taking up to 100 streams that share the URL), and
merges calls whose URL path and ``Grip-Last`` are the same (it ignores the query). So the token
is in the path, and it is the same for every stream that would get the same answer: all of one
reader's streams of a feed held at one place, every anonymous firehose stream. Measured: 1,000
firehose streams, each with a link of its own, took 100 s to be updated after they subscribed
(a third missed a post for 20 s); sharing, see tests/test_streams.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import jwt

from app.feeds import MAX_FEED_BYTES, MAX_ITEMS
from app.store import Store
from app.store.base import FeedItem

SSE_CONTENT_TYPE = "text/event-stream"
# A comment line every 20 s of silence (the contract promises one at least every 30 s).
KEEP_ALIVE = ":\\n\\n; format=cstring; timeout=20"
# An idle stream calls its next link this often (the answer renews the token): it also ends
# a stream whose reader's account is gone, and repairs one that lost the end of a burst
# (Pushpin sees such a gap only when the next item comes). A busy stream calls it only on a
# gap. Pushpin's own default; streams that share a link share the call.
LINK_TIMEOUT = 120
# A link token outlives many idle calls; one that has expired (a busy stream that never needed
# its link for this long) ends the stream, and the client reconnects from its Last-Event-ID.
# Expiries are rounded up to TOKEN_ROUNDING, so that streams opened minutes apart share links.
TOKEN_SECONDS = 3600
TOKEN_ROUNDING = 600
_TOKEN_ALGORITHM = "HS256"


def sse_event(cursor: int, name: str, data: str) -> str:
    """One event. ``data`` is one line of JSON (JSON escapes every line break in it)."""
    return f"id: {cursor}\nevent: {name}\ndata: {data}\n\n"


def item_event(feed: str, cursor: int, payload: str) -> str:
    """A feed item as its SSE event: ``post`` on the posts feed and the firehose, the item's
    own ``type`` on the events feed."""
    name = json.loads(payload)["type"] if feed == "events" else "post"
    return sse_event(cursor, name, payload)


def reset_event(last: int) -> str:
    """For a cursor that cannot be served: go on from ``last`` (and nothing was skipped
    silently). Its id moves the client's Last-Event-ID there."""
    return sse_event(last, "reset", json.dumps({"last": str(last)}))


@dataclass(frozen=True)
class Step:
    """One answer of a stream: ``body`` to send, then either hold ``hold`` (the feed's channel
    and its prev-id: caught up) or, with ``hold`` None, call the next link from ``cursor``."""

    body: str
    cursor: int
    hold: tuple[str, str] | None


class Streams:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def step(self, feed: str, jid: str | None, since: int | None) -> Step:
        """What a stream of ``feed`` for ``jid`` (None: anonymous, the firehose) answers when
        it stands at ``since``: None starts at the end of the log; a cursor the log cannot
        serve gets a reset: to the end when it is ahead of the log, to the last id pruned
        from the feed when what followed it was pruned (the rest follows, page by page)."""
        if since is None:
            since = await self.store.last_event_id()
        state = await self.store.read_feed(feed, jid, since, MAX_ITEMS)
        hold = (state.channel, str(state.head))
        if since > state.last_id:
            return Step(reset_event(state.last_id), state.last_id, hold)
        if since < state.kept_from:
            return Step(reset_event(state.kept_from), state.kept_from, None)
        kept = _fit(state.items)
        body = "".join(item_event(feed, item.event_id, item.payload) for item in kept)
        cursor = kept[-1].event_id if kept else since
        if len(kept) < len(state.items) or len(state.items) == MAX_ITEMS:
            return Step(body, cursor, None)  # more may wait: the next page, by the link
        return Step(body, cursor, hold)


def _fit(items: list[FeedItem]) -> list[FeedItem]:
    """As many items as one answer takes (the long-polls' page: Pushpin takes at most
    100,000 bytes from the origin in an answer it holds)."""
    size = 0
    for index, item in enumerate(items):
        size += len(item.payload.encode()) + 64
        if index and size > MAX_FEED_BYTES:
            return items[:index]
    return items


@dataclass(frozen=True)
class Link:
    """What a next link's token says: whose stream of which feed; for a page's link (and a
    stream held on a hint channel), where the stream stands (None: a held stream, whose place
    is the call's Grip-Last)."""

    feed: str
    jid: str | None
    cursor: int | None
    # the reader's credential changes when the stream opened: after another, the stream ends
    credentials: int = 0


class BadLink(Exception):
    """A token that is not ours, or has expired: the stream ends, and the client comes back
    with its own credentials and Last-Event-ID."""


class LinkTokens:
    def __init__(self, secret: str, seconds: int = TOKEN_SECONDS) -> None:
        self._key = ("stream-link:" + secret).encode()
        self.seconds = seconds

    def make(self, link: Link) -> str:
        expires = -(-(int(time.time()) + self.seconds) // TOKEN_ROUNDING) * TOKEN_ROUNDING
        claims = {
            "f": link.feed,
            "u": link.jid or "",
            "c": link.cursor,
            "g": link.credentials,
            "exp": expires,
        }
        return jwt.encode(claims, self._key, algorithm=_TOKEN_ALGORITHM)

    def read(self, token: str) -> Link:
        try:
            claims = jwt.decode(token, self._key, algorithms=[_TOKEN_ALGORITHM])
            feed, jid, cursor, credentials = claims["f"], claims["u"], claims["c"], claims["g"]
        except (jwt.PyJWTError, KeyError, TypeError) as exc:
            raise BadLink(str(exc)) from None
        if (
            feed not in ("posts", "events", "firehose")
            or not isinstance(cursor, int | None)
            or not isinstance(credentials, int)
        ):
            raise BadLink("malformed stream link")
        return Link(feed, jid or None, cursor, credentials)
