"""The realtime feeds: posts, events and the firehose (held through GRIP), and history.

``GET /api/notifications/posts``, ``/api/notifications/events`` and ``/api/firehose``: without
``since``, the current cursor at once; with it, what follows it, at once, or a GRIP hold that
Pushpin keeps open until something is published on the feed's channel.
``GET /api/notifications/history`` is answered at once, never held.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import RawJSONResponse, caller, held, logged_in, services
from app.api.streams import open_stream, wants_stream
from app.feeds import Hold, parse_cursor


async def posts(request: Request) -> Response:
    return await _feed(request, "posts", await caller(request))


async def events(request: Request) -> Response:
    return await _feed(request, "events", await caller(request))


async def firehose(request: Request) -> Response:
    """Open channels' posts: readable without login (credentials, if sent, must be good, and
    a logged-in reader gets nothing of a channel that banned them)."""
    jid = await caller(request) if logged_in(request) else None
    return await _feed(request, "firehose", jid)


async def history(request: Request) -> Response:
    jid = await caller(request)
    raw_since = request.query_params.get("since")
    since = None if raw_since is None else parse_cursor(raw_since)
    return RawJSONResponse((await services(request).feeds.history(jid, since)).body)


async def _feed(request: Request, feed: str, jid: str | None) -> Response:
    s = services(request)
    s.feed_requests[feed] += 1
    if wants_stream(request):
        return await open_stream(request, feed, jid)
    raw_since = request.query_params.get("since")
    if raw_since is None:
        return RawJSONResponse((await s.feeds.latest()).body)
    answer = await s.feeds.since(feed, jid, parse_cursor(raw_since))
    if not isinstance(answer, Hold):
        return RawJSONResponse(answer.body)
    return await held(request, feed, answer, jid)
