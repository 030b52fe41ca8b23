"""The realtime posts feed: GET /api/notifications/posts[?since=CURSOR].

Without ``since``: the current cursor, at once. With it: the posts that follow it, at once, or
a GRIP hold that Pushpin keeps open until a post is published on a followed node.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app import grip
from app.api.common import JSON_TYPE, RawJSONResponse, caller, proxied, services
from app.errors import NotProxied
from app.feeds import Hold, parse_cursor


async def posts(request: Request) -> Response:
    s = services(request)
    jid = await caller(request)
    raw_since = request.query_params.get("since")
    if raw_since is None:
        return RawJSONResponse((await s.posts_feed.latest()).body)
    since = parse_cursor(raw_since)
    answer = await s.posts_feed.since(jid, since)
    if not isinstance(answer, Hold):
        return RawJSONResponse(answer.body)
    if not proxied(request):
        raise NotProxied(s.settings.proxy_url)
    return _hold(request, answer)


def _hold(request: Request, hold: Hold) -> Response:
    s = services(request)
    # The held answer's headers: Pushpin keeps them for the published answer too.
    headers = {"Content-Type": JSON_TYPE, **s.cors.headers_for(request)}
    # No Grip-Link: for a held long-poll Pushpin re-sends the client's own request when it
    # sees a gap, and with a next link Pushpin 1.36 lost held requests (see docs/design.md).
    return Response(
        grip.hold_response(hold.channels, s.settings.hold_timeout, hold.body, headers),
        media_type=grip.INSTRUCT_CONTENT_TYPE,
    )
