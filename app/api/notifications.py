"""The realtime posts feed: GET /api/notifications/posts[?since=CURSOR].

Without ``since``: the current cursor, at once. With it: the posts that follow it, at once, or
a GRIP hold that Pushpin keeps open until a post is published on a followed node.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from app import grip
from app.api.common import JSON_TYPE, RawJSONResponse, caller, services
from app.errors import NotProxied
from app.feeds import Hold, parse_cursor

PATH = "/api/notifications/posts"


async def posts(request: Request) -> Response:
    s = services(request)
    settings = s.settings
    proxied = grip.is_signed(
        request.headers.get("grip-sig"), settings.grip_sig_key, settings.grip_sig_iss
    )
    jid = _next_link_user(request, settings.secret_key) if proxied else None
    jid = jid or await caller(request)
    raw_since = request.query_params.get("since")
    if raw_since is None:
        return RawJSONResponse((await s.posts_feed.latest()).body)
    since = parse_cursor(raw_since)
    answer = await s.posts_feed.since(jid, since)
    if not isinstance(answer, Hold):
        return RawJSONResponse(answer.body)
    if not proxied:
        raise NotProxied(settings.proxy_url)
    return _hold(request, answer, jid, since)


def _hold(request: Request, hold: Hold, jid: str, since: int) -> Response:
    settings = services(request).settings
    # Pushpin asks a next link without the client's headers: the link carries its own proof.
    token = grip.sign(settings.secret_key, jid, PATH, str(since), ttl=settings.hold_timeout + 300)
    link = PATH + "?" + urlencode({"since": since, "user": jid, "token": token})
    headers = {"Content-Type": JSON_TYPE, **services(request).cors.headers_for(request)}
    return Response(
        grip.hold_response(hold.channels, settings.hold_timeout, hold.body, headers),
        media_type=grip.INSTRUCT_CONTENT_TYPE,
        headers={"Grip-Link": grip.next_link(link)},
    )


def _next_link_user(request: Request, secret: str) -> str | None:
    """The user named by a next link Pushpin followed, if its token is valid."""
    q = request.query_params
    user, token, since = q.get("user"), q.get("token"), q.get("since", "")
    if user and token and grip.verify(secret, token, user, PATH, since):
        return user
    return None
