"""Every HTTP request: an id (X-Request-Id), its count by route and status in the metrics, the
count of requests in hand (/health), and one log line at debug level.

Pure ASGI, outside everything but Starlette's own error middleware: it only looks at the
answer's first message, so streamed answers pass through as they come.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.services import Services

log = logging.getLogger("app.requests")
HEADER = b"x-request-id"
# An id a client or a proxy in front sent is kept if it is one token of at most 64 characters
# that a header, a log line and a JSON string can all carry as they are.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,64}")
UNMATCHED = "unmatched"  # the route label of a path no route takes (a 404), which bounds it


def new_id() -> str:
    return secrets.token_hex(8)


class RequestLog:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app, self.services = app, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming(scope) or new_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # unless an answer starts: an error escaped, Starlette answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        s = self.services
        s.in_flight += 1
        s.requests += 1
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            s.in_flight -= 1
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", UNMATCHED)
            s.metrics.answered(route, status, seconds)
            if status >= 500:
                s.server_errors += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s %d %.1fms id=%s",
                    scope["method"],
                    route,
                    status,
                    seconds * 1000,
                    request_id,
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )


def _incoming(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return value.decode() if _SANE_ID.fullmatch(value) else None
    return None
