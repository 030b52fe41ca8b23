"""Refuses a request whose URL percent-encodes anything but UTF-8 text (400, JSON).

Starlette decodes the path and the query with ``errors="replace"``: ``/api/%FF@example.com``
would name a channel ``\\ufffd@example.com``, a name nobody sent. The raw bytes are checked here,
once, before any route sees the decoded text.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.common import error_response, zulip_error

# A "%" not followed by two hex digits (RFC 3986 2.1).
_BROKEN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
MESSAGE = (
    "the URL's percent-encoding is broken or not UTF-8: percent-encode the UTF-8 bytes of "
    "the text, as %XX each"
)


def is_text(raw: bytes) -> bool:
    """Does ``raw`` (a path or query as sent) percent-decode to UTF-8 text?"""
    if _BROKEN_ESCAPE.search(raw):
        return False
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class PercentEncoding:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # raw_path is optional in ASGI: without it, the server gave text, nothing to check.
        if scope["type"] != "http" or (
            is_text(scope.get("raw_path") or b"") and is_text(scope.get("query_string", b""))
        ):
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id")
        if scope["path"].startswith("/api/v1/"):
            response = zulip_error(400, MESSAGE, "BAD_REQUEST", {}, None, request_id)
        else:
            response = error_response(400, MESSAGE, None, request_id)
        await response(scope, receive, send)
