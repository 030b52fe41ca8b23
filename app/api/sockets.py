"""``/api/ws``: the seed's socket, as Pushpin's WebSocket-over-HTTP brings it to the origin.

Each request holds the socket's events since the last (``OPEN``, ``TEXT``, ``PONG``, ``CLOSE``,
...; gripcontrol's codec reads and writes them) and the handshake's headers again, so the
caller logs in on every request, as on any other, and the origin keeps nothing: the socket's
place in the log is connection meta that Pushpin keeps (``Meta-Cursor``, set by
``Set-Meta-Cursor``). app/sockets.py says why the origin sends every event itself.
"""

from __future__ import annotations

import contextlib
import json

from gripcontrol import WebSocketEvent, decode_websocket_events, encode_websocket_events
from starlette.requests import Request
from starlette.responses import Response

from app.api.common import caller, client_address, proxied, read_body, services
from app.errors import BadRequest, NotProxied, TooManyRequests, UnsupportedMediaType
from app.sockets import (
    PRESENCE,
    SWEEP_SECONDS,
    BadFrame,
    Reply,
    error_frame,
    parse_frame,
)

EVENTS_TYPE = "application/websocket-events"
# Pushpin brings a socket's requests at least every SWEEP_SECONDS.
SOCKET_COUNT_SECONDS = 2 * SWEEP_SECONDS + 10


async def socket_events(request: Request) -> Response:
    s = services(request)
    jid = await caller(request)  # refused at OPEN: the handshake answers 401
    if not proxied(request):
        raise NotProxied(s.settings.proxy_url)
    if request.headers.get("content-type", "").split(";")[0].strip() != EVENTS_TYPE:
        raise UnsupportedMediaType(f"/api/ws takes WebSocket-over-HTTP ({EVENTS_TYPE})")
    try:
        events = decode_websocket_events(await read_body(request))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"malformed {EVENTS_TYPE} body") from None
    _count(request, jid, {event.type for event in events})
    meta = request.headers.get("meta-cursor", "")
    cursor = int(meta) if meta.isdigit() else None  # None: not online yet
    headers = {"Keep-Alive-Interval": str(SWEEP_SECONDS)}
    out: list[WebSocketEvent] = []
    read = False  # the log was read for this socket already (a presence)
    for event in events:
        if event.type == "OPEN":
            out.append(WebSocketEvent("OPEN"))
            headers["Sec-WebSocket-Extensions"] = "grip"
        elif event.type == "TEXT":
            reply = await _text(request, jid, event.content or b"", cursor is None)
            if reply.cursor is not None:
                cursor, read = reply.cursor, True
            out += _events(request, reply)
        elif event.type == "PING":
            out.append(WebSocketEvent("PONG", event.content))
        elif event.type == "CLOSE":
            out.append(WebSocketEvent("CLOSE", event.content))
            cursor = None
    if cursor is not None and not read and not any(e.type == "CLOSE" for e in out):
        # A wake-up's pong, the sweep, or anything else: what followed the socket's place.
        # (A presence's answer ends with a ping: its pong reads what came meanwhile.)
        reply = await s.sockets.catch_up(jid, cursor)
        cursor = reply.cursor
        out += _events(request, reply)
    if cursor is not None:
        headers["Set-Meta-Cursor"] = str(cursor)
    return Response(encode_websocket_events(out), headers=headers, media_type=EVENTS_TYPE)


async def _text(request: Request, jid: str, content: bytes, offline: bool) -> Reply:
    try:
        name, data = parse_frame(content.decode("utf-8"))
        if name != PRESENCE:
            raise BadFrame(f"unknown event {name[:80]!r}: the socket takes {PRESENCE}")
        if not offline:
            raise BadFrame("already online: reconnect to start over from another cursor")
        return await services(request).sockets.presence(jid, data)
    except UnicodeDecodeError:
        return Reply(frames=[error_frame("a frame is UTF-8 text")])
    except BadFrame as exc:
        return Reply(frames=[error_frame(str(exc))])


def _count(request: Request, jid: str, kinds: set[str]) -> None:
    """Open sockets count against the held-request limits (a handshake past them answers
    429): from OPEN to CLOSE or DISCONNECT, renewed by each request, so that a socket whose
    end the origin missed (a restart, another origin answering) stops counting after
    SOCKET_COUNT_SECONDS without one."""
    held = services(request).held
    key = "socket " + request.headers.get("connection-id", "")
    if "OPEN" in kinds:
        held.admit(jid, client_address(request), [key], seconds=SOCKET_COUNT_SECONDS)
        return
    held.published([key])
    if not kinds & {"CLOSE", "DISCONNECT"}:
        with contextlib.suppress(TooManyRequests):  # counted again, after a restart, say
            held.admit(jid, client_address(request), [key], seconds=SOCKET_COUNT_SECONDS)


def _events(request: Request, reply: Reply) -> list[WebSocketEvent]:
    """Subscriptions first, then the frames (text frames carry grip's ``m:`` prefix), then a
    ping if more waits or the socket just subscribed: its pong brings the next read. A socket
    that subscribes is probed again later too (app/wakes.py says why)."""
    for _ in reply.subscribe:  # from here Pushpin holds the socket on that channel
        services(request).metrics.held("socket", "websocket")
    if reply.subscribe:
        services(request).publisher.probe(reply.subscribe)
    out = [
        WebSocketEvent("TEXT", "c:" + json.dumps({"type": "subscribe", "channel": channel}))
        for channel in reply.subscribe
    ]
    out += [WebSocketEvent("TEXT", "m:" + text) for text in reply.frames]
    if reply.more or reply.subscribe:
        out.append(WebSocketEvent("PING"))
    return out
