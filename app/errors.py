"""Typed errors of the domain; the API layer turns each into a JSON answer with its status."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    code = "BAD_REQUEST"  # Zulip's name for it, on /api/v1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Unprocessable(ApiError):
    """Well-formed, but not what it claims to be (an Idempotency-Key reused for another
    request)."""

    status = 422


class Gone(ApiError):
    """A cursor older than what the log keeps: what followed it was pruned (retention). The
    client goes on from ``last``, the oldest cursor that is still served in full."""

    status = 410

    def __init__(self, since: int, last: int) -> None:
        super().__init__(
            f"since {since} is older than what the server keeps: events after it were"
            f" pruned; go on from {last}"
        )
        self.last = last


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class UnknownQueue(ApiError):
    """An Aloha queue that is unknown, expired or someone else's (Zulip's BAD_EVENT_QUEUE_ID)."""

    status = 400
    code = "BAD_EVENT_QUEUE_ID"

    def __init__(self, queue_id: str) -> None:
        super().__init__(f"Bad event queue ID: {queue_id}")
        self.queue_id = queue_id


class TooManyRequests(ApiError):
    status = 429
    code = "RATE_LIMIT_HIT"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotProxied(ApiError):
    """A request that would be held arrived without a valid Grip-Sig: only Pushpin may hold."""

    status = 501

    def __init__(self, proxy_url: str) -> None:
        super().__init__(
            "realtime requests must come through the GRIP proxy: connect to "
            f"{proxy_url} instead of the origin"
        )
