"""What browser logins need over HTTP: the session cookie, and the check that a write logged in
by that cookie alone was sent by a page of ours (the second line behind SameSite=Strict)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from app.errors import Forbidden

COOKIE = "session"
# Methods that change nothing: a page elsewhere may make the browser send them (SameSite aside).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ATTRIBUTES = "; Path=/; HttpOnly; SameSite=Strict"


def set_cookie(token: str, max_age: int, secure: bool) -> str:
    """The Set-Cookie of a new session: out of the page's scripts' reach (HttpOnly), never sent
    with a request another site starts (SameSite=Strict), over https only when it came so."""
    return f"{COOKIE}={token}; Max-Age={max_age}{_ATTRIBUTES}{'; Secure' if secure else ''}"


def clear_cookie(secure: bool) -> str:
    return f"{COOKIE}=; Max-Age=0{_ATTRIBUTES}{'; Secure' if secure else ''}"


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, as browsers write an Origin (lower case, no
    default port); None for anything else (``null``, say)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def check_sent_by_page(headers: Headers, own: str | None, trusted: Iterable[str]) -> None:
    """Forbidden unless the request's ``Origin`` (or, without one, its ``Referer``) is ``own``,
    the origin the request was sent to, or one of the ``trusted`` browser origins."""
    claimed = headers.get("origin") or headers.get("referer")
    if claimed is None:
        raise Forbidden(
            "a change logged in by the session cookie must say where it comes from (Origin)"
        )
    sender = origin_of(claimed)
    allowed = {own, *(origin_of(origin) for origin in trusted)} - {None}
    if sender is None or sender not in allowed:
        where = sender or "an unknown origin"
        raise Forbidden(f"a change logged in by the session cookie from {where} is refused")
