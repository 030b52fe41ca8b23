"""What every handler shares: JSON in and out, the caller's identity, errors as JSON."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app import grip
from app.accounts import REALM
from app.api import browser
from app.errors import (
    ApiError,
    BadRequest,
    Gone,
    NotProxied,
    PayloadTooLarge,
    TooManyRequests,
    UnknownQueue,
    UnsupportedMediaType,
)
from app.feeds import Hold
from app.services import Services

log = logging.getLogger(__name__)
# The longest post, form-encoded as the Zulip client sends it, is about 120 KB.
MAX_REQUEST_BYTES = 256 * 1024
JSON_TYPE = "application/json"
# How long a hold waits for the publisher to catch up (if it cannot, Pushpin is probably down:
# hold anyway, as Pushpin will ask again when it sees the gap).
PUBLISHED_WAIT_SECONDS = 2.0


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


class JSONResponse(Response):
    media_type = JSON_TYPE

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None):
        super().__init__(_dumps(content), status_code, headers)


class RawJSONResponse(Response):
    """A body that is already JSON text (feeds write theirs once, byte for byte)."""

    media_type = JSON_TYPE


def _dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


async def read_body(request: Request) -> bytes:
    """The request's body, refused (413) past 256 KiB without reading more than that."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_REQUEST_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise PayloadTooLarge(f"request body over {MAX_REQUEST_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> Any:
    """The request's JSON body: 415 unless declared JSON, 413 over 256 KiB, 400 if malformed."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        raise UnsupportedMediaType(f"send the body as {JSON_TYPE}")
    try:
        value = json.loads((await read_body(request)).decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    _check_strings(value)
    return value


def _check_strings(value: Any) -> None:
    """JSON may escape lone UTF-16 surrogates (\\ud800), which are no text: refuse them here,
    once, rather than fail wherever a string is stored or hashed."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(
                    "request body holds an unpaired surrogate (\\ud800-\\udfff)"
                ) from None


async def caller(request: Request) -> str:
    """The authenticated JID: by HTTP Basic, or else by the session cookie (a change by the
    cookie alone must come from one of our pages: Forbidden otherwise); or Unauthorized."""
    token = cookie_login(request)
    if token is not None:
        return await services(request).sessions.account(token)
    return await services(request).accounts.authenticate(
        request.headers.get("authorization"), client_address(request)
    )


def logged_in(request: Request) -> bool:
    """Does the request carry a login (good or not)?"""
    return bool(request.headers.get("authorization") or request.cookies.get(browser.COOKIE))


def cookie_login(request: Request) -> str | None:
    """The session token of a request that the cookie alone logs in (no Authorization), once
    a request that may change something has shown that one of our pages sent it."""
    token = request.cookies.get(browser.COOKIE)
    if not token or request.headers.get("authorization"):
        return None
    if request.method not in browser.SAFE_METHODS:
        host = request.headers.get("host", "")
        own = browser.origin_of(f"{scheme(request)}://{host}") if host else None
        browser.check_sent_by_page(request.headers, own, services(request).cors.credentialed)
    return token


def scheme(request: Request) -> str:
    """``http`` or ``https``, as the client connected: the proxy's X-Forwarded-Proto, when the
    request is the proxy's (anyone else could write that header), else ``http``, all the
    origin serves. (Not the request's URL: uvicorn rewrites its scheme from that header, which
    it believes from any peer on the loopback.)"""
    forwarded = request.headers.get("x-forwarded-proto")
    if forwarded and proxied(request):
        return "https" if forwarded.rsplit(",", 1)[-1].strip().lower() == "https" else "http"
    return "http"


def proxied(request: Request) -> bool:
    """Did the request come through our GRIP proxy (a valid Grip-Sig)? Checked once."""
    known: bool | None = getattr(request.state, "proxied", None)
    if known is None:
        settings = services(request).settings
        known = grip.is_signed(request.headers.get("grip-sig"), settings.sig_keys)
        request.state.proxied = known
    return known


def client_address(request: Request) -> str:
    """The client's address: the one Pushpin appended to X-Forwarded-For, when the request is
    Pushpin's (anyone else could write that header), else the peer's."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and proxied(request):
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else ""


def request_id(request: Request) -> str | None:
    """The request's id (app/api/request_log.py), which its log line and error answer carry."""
    found: str | None = getattr(request.state, "request_id", None)
    return found


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", f'Basic realm="{REALM}"')
    body = {"error": message}
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status, headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if request.url.path.startswith("/api/v1/"):
        return zulip_error(exc.status, exc.message, exc.code, headers, exc, request_id(request))
    if isinstance(exc, Gone):  # the cursor to go on from
        body = {"error": exc.message, "last": str(exc.last), "request_id": request_id(request)}
        return JSONResponse(body, exc.status, headers)
    return error_response(exc.status, exc.message, headers, request_id(request))


def zulip_error(
    status: int,
    message: str,
    code: str,
    headers: dict[str, str],
    exc: Exception | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    """Errors on /api/v1 as Zulip writes them (its clients read ``code``)."""
    body: dict[str, Any] = {"result": "error", "msg": message, "code": code}
    if isinstance(exc, UnknownQueue):
        body["queue_id"] = exc.queue_id
    if request_id:
        body["request_id"] = request_id
    if status == 401:
        headers = {**headers, "WWW-Authenticate": f'Basic realm="{REALM}"'}
    return JSONResponse(body, status, headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}
    text = message.get(exc.status_code, str(exc.detail))
    if request.url.path.startswith("/api/v1/"):
        response = zulip_error(exc.status_code, text, "BAD_REQUEST", {}, None, request_id(request))
    else:
        response = error_response(exc.status_code, text, None, request_id(request))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def server_error_handler(request: Request, exc: Exception) -> Response:
    """An error no handler expected: a JSON 500 with the request's id, which the log line
    before the traceback names too (uvicorn logs the traceback once this is sent)."""
    rid = request_id(request)
    log.error("internal error answering %s %s (request %s)", request.method, request.url.path, rid)
    headers = {"X-Request-Id": rid} if rid else {}
    return error_response(500, "internal error", headers, rid)


def query_int(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if (
        not raw.isascii()
        or not raw.isdigit()
        or len(raw) > 18
        or not minimum <= int(raw) <= maximum
    ):
        raise BadRequest(f"{name} must be an integer from {minimum} to {maximum}")
    return int(raw)


async def held(request: Request, feed: str, hold: Hold, jid: str | None) -> Response:
    """Answer with a GRIP hold, if the request came through our proxy (else 501: only Pushpin
    may hold a request), once what the hold's prev-ids name has been published. ``jid`` (None:
    anonymous) and the client's address may each have only so many holds at once (429)."""
    s = services(request)
    if not proxied(request):
        raise NotProxied(s.settings.proxy_url)
    if "grip-last" not in request.headers:  # else Pushpin asks again for a hold it counted
        s.held.admit(jid, client_address(request), [channel for channel, _ in hold.channels])
    if not await s.publisher.published_through(hold.channels, PUBLISHED_WAIT_SECONDS):
        s.holds_unconfirmed += 1
    s.metrics.held(feed, "long-poll")
    # The held answer's headers: Pushpin keeps them for the published answer too.
    headers = {"Content-Type": JSON_TYPE, **s.cors.headers_for(request)}
    # No Grip-Link: for a held long-poll Pushpin re-sends the client's own request when it
    # sees a gap, and with a next link Pushpin 1.36 lost held requests (see docs/design.md).
    return Response(
        grip.hold_response(hold.channels, s.settings.hold_timeout, hold.body, headers),
        media_type=grip.INSTRUCT_CONTENT_TYPE,
    )
