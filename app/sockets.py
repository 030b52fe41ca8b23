"""The seed's socket: a WebSocket (held by Pushpin, spoken to the origin over HTTP) on which a
client says it is online and then gets every event that concerns it, each once, in order.

Frames are JSON arrays ``[name, data]`` with the Buddycloud socket API's event names. The
client sends ``["xmpp.buddycloud.presence", {}]`` (or ``{"since": cursor}``); the answer is
``["xmpp.buddycloud.presence", {"last": cursor}]`` (events after ``last`` follow), then the
history since then, then new events as they happen.

**Why the origin sends every event itself.** Pushpin keeps no prev-id chain on WebSockets, and
a socket's subscription takes effect in Pushpin some time after the origin's answer that asked
for it. Had published items carried the events, one committed after the origin read the
history and published before the subscription took effect would be lost, and one published
after it would arrive before history the origin sends later, out of order. So a socket's
place in the log is the connection's meta (``Meta-Cursor``, kept by Pushpin, set by each
answer), and only the origin sends events, reading the log after that cursor whenever Pushpin
brings it a request for the socket. What the publisher sends a socket is a wake-up: a ping
on its account's socket channel, paced (app/wakes.py), whose pong (every WebSocket client
answers pings by itself) comes back to the origin as a request. A wake-up that misses
(published before the subscription took effect) loses nothing but time: the presence answer
ends with a ping of its own, whose pong reads what was committed meanwhile; the origin probes
the socket's channel again a few times in the next seconds, for a commit made after that
read whose wake-up Pushpin took before the subscription (app/wakes.py); and Pushpin brings an
idle socket to the origin every SWEEP_SECONDS. Two wake-ups bring the same events once: the
second read starts after the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.errors import BadRequest
from app.feeds import MAX_FEED_BYTES, MAX_ITEMS, parse_cursor
from app.store import Store

PRESENCE = "xmpp.buddycloud.presence"
CLIENT_ERROR = "xmpp.error.client"
PUSH_ITEM = "xmpp.buddycloud.push.item"
PUSH_RETRACT = "xmpp.buddycloud.push.retract"
PUSH_AUTHORISATION = "xmpp.buddycloud.push.authorisation"
PUSH_SUBSCRIPTION = "xmpp.buddycloud.push.subscription"
PUSH_AFFILIATION = "xmpp.buddycloud.push.affiliation"
# What followed the socket's cursor was pruned (retention): it goes on from ``last``, as an
# SSE stream's ``reset`` event says. Not a name of the Buddycloud socket API, which has none.
RESET = "xmpp.buddycloud.reset"
# Pushpin brings the origin a request for a socket that has had none for this long (its own
# minimum is 20): the backstop for a wake-up that missed.
SWEEP_SECONDS = 60
MAX_FRAME_CHARS = 65_536  # a client frame: presence is a few bytes


class BadFrame(Exception):
    """A client frame the socket cannot take: it gets an error frame and stays open."""


@dataclass
class Reply:
    """What the origin sends a socket: ``frames`` (JSON text), after subscribing it to
    ``subscribe``; ``cursor``: its place in the log afterwards (None: not online yet);
    ``more``: a page was full, so ping it for the next."""

    frames: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    cursor: int | None = None
    more: bool = False


@dataclass
class CatchUp(Reply):
    start: int = 0  # where the read began


def frame(name: str, data: dict[str, Any]) -> str:
    return json.dumps([name, data], ensure_ascii=False, separators=(",", ":"))


def error_frame(description: str) -> str:
    return frame(CLIENT_ERROR, {"description": description})


def parse_frame(text: str) -> tuple[str, dict[str, Any]]:
    if len(text) > MAX_FRAME_CHARS:
        raise BadFrame(f"frame over {MAX_FRAME_CHARS} characters")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadFrame(f"a frame is a JSON array [name, data]: {exc}") from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], dict)
    ):
        raise BadFrame("a frame is a JSON array [name, data], data an object")
    return value[0], value[1]


def event_frame(payload: str) -> str:
    """A history item (a post, or an event of the events feed) as the socket's frame."""
    item = json.loads(payload)
    kind, cursor = item["type"], item["cursor"]
    if kind in ("post", "post_updated"):
        post = item["post"]
        return frame(PUSH_ITEM, {"cursor": cursor, "node": post["source"], "post": post})
    if kind == "post_deleted":
        return frame(PUSH_RETRACT, {"cursor": cursor, "node": item["source"], "id": item["id"]})
    if kind == "follow_request":
        fields = {"cursor": cursor, "node": item["node"], "jid": item["jid"]}
        return frame(PUSH_AUTHORISATION, fields)
    if kind == "subscription":
        base = {"cursor": cursor, "node": item["node"], "jid": item["jid"]}
        if item["change"] == "role_changed":
            return frame(PUSH_AFFILIATION, {**base, "affiliation": item["affiliation"]})
        fields = {"subscription": item["subscription"], "affiliation": item["affiliation"]}
        return frame(PUSH_SUBSCRIPTION, {**base, **fields, "change": item["change"]})
    raise ValueError(f"no socket frame for an event of type {kind!r}")


class Sockets:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def presence(self, jid: str, data: dict[str, Any]) -> CatchUp:
        """The client is online: acknowledge, subscribe its socket, send its history since
        ``data["since"]`` or since it was last online."""
        raw = data.get("since")
        if raw is not None and not isinstance(raw, str):
            raise BadFrame("since must be a cursor: a string of digits, as given in 'last'")
        try:
            since = None if raw is None else parse_cursor(raw)
        except BadRequest as exc:
            raise BadFrame(exc.message) from None
        last = await self.store.last_event_id()
        if since is not None and since > last:
            since = last  # ahead of the log: from its end, which the acknowledgement names
        reply = await self.catch_up(jid, since)
        reply.frames.insert(0, frame(PRESENCE, {"last": str(reply.start)}))
        reply.subscribe = [await self.store.socket_channel(jid)]
        return reply

    async def catch_up(self, jid: str, since: int | None) -> CatchUp:
        """What follows ``since`` (None: where ``jid`` was last online), one page. When
        events after it were pruned, a reset frame first, and the page from where it says."""
        asked, items, kept_from = await self.store.history(jid, since, MAX_ITEMS)
        start, reset = asked, []
        while start < kept_from:  # (again if more was pruned between the two reads)
            reset = [frame(RESET, {"last": str(kept_from)})]
            start, items, kept_from = await self.store.history(jid, kept_from, MAX_ITEMS)
        frames: list[str] = []
        cursor, size = start, 0
        for item in items:
            text = event_frame(item.payload)
            size += len(text.encode())
            if frames and size > MAX_FEED_BYTES:
                break
            frames.append(text)
            cursor = item.event_id
        if cursor > asked:
            await self.store.mark_online(jid, cursor)
        more = len(frames) < len(items) or len(items) == MAX_ITEMS
        return CatchUp(frames=reset + frames, cursor=cursor, more=more, start=start)
