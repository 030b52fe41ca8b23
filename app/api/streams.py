"""The feeds as server-sent events (``Accept: text/event-stream``), and their next links.

The stream starts after ``Last-Event-ID`` (what a browser's EventSource sends when it
reconnects), else after ``since``, else at the end of the log. Pushpin holds it; the origin
answers each of its next-link calls from the log (app/streams.py).
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import PUBLISHED_WAIT_SECONDS, client_address, proxied, services
from app.errors import NotProxied, Unauthorized
from app.feeds import parse_cursor
from app.model import FIREHOSE, FIREHOSE_HINT
from app.streams import (
    KEEP_ALIVE,
    LINK_TIMEOUT,
    SSE_CONTENT_TYPE,
    BadLink,
    Link,
    Step,
)

NEXT_PATH = "/api/stream/next"
# Where a Last-Event-ID that is no cursor of ours stands: past any cursor (parse_cursor takes
# 18 digits), so the stream resets to the end of the log rather than guess.
FOREIGN_CURSOR = 10**18


def wants_stream(request: Request) -> bool:
    return SSE_CONTENT_TYPE in request.headers.get("accept", "")


async def open_stream(request: Request, feed: str, jid: str | None) -> Response:
    s = services(request)
    if not proxied(request):
        raise NotProxied(s.settings.proxy_url)
    raw_last = request.headers.get("last-event-id")
    raw_since = request.query_params.get("since")
    since: int | None = None
    if raw_last is not None:
        last = raw_last.strip()
        since = int(last) if last.isascii() and last.isdigit() and len(last) <= 18 else None
        since = FOREIGN_CURSOR if since is None else since
    elif raw_since is not None:
        since = parse_cursor(raw_since)
    # Pushpin tells the origin nothing of a stream once it holds it: it counts against the
    # held-request limits as a long-poll would, until the hold timeout (app/holds.py).
    s.held.admit(jid, client_address(request), ())
    credentials = 0
    if jid is not None:
        account = await s.store.get_account(jid)
        if account is None:  # deleted since the login was checked
            raise Unauthorized("no such account")
        credentials = account.credentials
    step = await s.streams.step(feed, jid, since)
    headers = {"Cache-Control": "no-cache", **s.cors.headers_for(request)}
    return await _answer(request, Link(feed, jid, None, credentials), step, headers)


async def next_page(request: Request) -> Response:
    """Pushpin calls a stream's next link for its next page, on a gap it saw in the stream's
    channel, on a hint, or after LINK_TIMEOUT of silence. Where the stream stands: the token's
    cursor when it has one (a page's link: Pushpin's ``Grip-Last`` may be an old hold's; a
    hint channel's: it is the hint's own id), else ``Grip-Last``, what Pushpin sent last."""
    s = services(request)
    if not proxied(request):
        raise NotProxied(s.settings.proxy_url)
    try:
        link = s.link_tokens.read(request.path_params["link"])
    except BadLink:
        return _ended()
    if link.jid is not None:
        account = await s.store.get_account(link.jid)
        if account is None or account.credentials != link.credentials:
            return _ended()  # deleted, or a password or key changed since the stream opened
    if link.cursor is not None:  # the next page, or a hint on a hint channel
        s.feed_requests["stream_page"] += 1
        cursor: int | None = link.cursor
    else:  # a held stream's: a gap, a hint, or its idle timeout
        s.feed_requests["stream_repair"] += 1
        grip_last = _grip_last(request.headers.get("grip-last", ""))
        cursor = FOREIGN_CURSOR if grip_last is None else grip_last
    step = await s.streams.step(link.feed, link.jid, cursor)
    return await _answer(request, link, step, {})


def _ended() -> Response:
    """An answer that ends the stream: the client comes back with its own login."""
    return Response(b"", media_type=SSE_CONTENT_TYPE)


async def _answer(request: Request, stream: Link, step: Step, headers: dict[str, str]) -> Response:
    """``stream``: whose stream of which feed (its cursor is the step's)."""
    s = services(request)
    if step.hold and step.hold[0] == FIREHOSE:
        # the public firehose: one link for all who see it so (app/streams.py)
        stream = Link(stream.feed, None, None)
    # Pushpin's Grip-Last tells where a held stream stands, but not on a hint channel, where
    # it sends nothing itself (its Grip-Last is the hint's id): there the token tells.
    told = step.hold is not None and step.hold[0] != FIREHOSE_HINT
    link = Link(stream.feed, stream.jid, None if told else step.cursor, stream.credentials)
    token = quote(s.link_tokens.make(link), safe="")
    headers["Grip-Link"] = f"<{NEXT_PATH}/{token}>; rel=next; timeout={LINK_TIMEOUT}"
    if step.hold is not None:
        channel, prev_id = step.hold
        if not await s.publisher.published_through([step.hold], PUBLISHED_WAIT_SECONDS):
            s.holds_unconfirmed += 1
        s.metrics.held(stream.feed, "stream")
        headers["Grip-Hold"] = "stream"
        headers["Grip-Channel"] = f"{channel}; prev-id={prev_id}"
        headers["Grip-Keep-Alive"] = KEEP_ALIVE
    return Response(step.body.encode(), headers=headers, media_type=SSE_CONTENT_TYPE)


def _grip_last(header: str) -> int | None:
    """The last id in ``Grip-Last: <channel>; last-id=<id>`` (a stream holds one channel), or
    None: then nothing says where the stream stands, and it is reset to the end."""
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name == "last-id" and value.isascii() and value.isdigit() and len(value) <= 18:
            return int(value)
    return None
