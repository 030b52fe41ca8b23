"""The page at ``/``: sign up or log in, post, follow, and watch the feeds live (app/web/).
Plain HTML and JavaScript, served as they are: no build step."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

WEB = Path(__file__).resolve().parent.parent / "web"
_PAGE = (WEB / "index.html").read_bytes()
_SCRIPT = (WEB / "page.js").read_bytes()
_HEADERS = {
    "Cache-Control": "no-cache",
    # Its own scripts and styles, and requests to its own origin: nothing else.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


async def page(request: Request) -> Response:
    return Response(_PAGE, headers=_HEADERS, media_type="text/html; charset=utf-8")


async def script(request: Request) -> Response:
    return Response(_SCRIPT, headers=_HEADERS, media_type="text/javascript; charset=utf-8")
