"""The exceptions the Aloha client raises: all are :class:`AlohaError`, with ``code`` and ``msg``.

The server answers errors as Zulip does, ``{"result": "error", "msg": ..., "code": ...}`` with a
4xx status; those become an :class:`AlohaError` whose ``code``, ``msg`` and ``status`` are the
server's. Failures that are worth retrying (no connection, a timeout, a 5xx, an answer that is
not the JSON expected) are retried with backoff; :class:`RetriesExhausted` is raised when a
single call ran out of attempts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AlohaError", "BadEventQueueError", "ConfigError", "RetriesExhausted"]


class AlohaError(Exception):
    """An error the caller must see.

    ``code`` is the server's error code (``"BAD_REQUEST"``, ``"UNAUTHORIZED"``, ...), or
    ``"HTTP_<status>"`` when a 4xx answer carried no JSON; ``msg`` is the human-readable message;
    ``status`` is the HTTP status, or ``None`` when there was no HTTP answer; ``response`` is the
    decoded JSON answer, when there was one.
    """

    def __init__(
        self,
        msg: str,
        *,
        code: str = "BAD_REQUEST",
        status: int | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.status = status
        self.response: dict[str, Any] = response if response is not None else {}

    def __str__(self) -> str:
        status = "" if self.status is None else f" (HTTP {self.status})"
        return f"{self.code}{status}: {self.msg}"


class BadEventQueueError(AlohaError):
    """The event queue is unknown, expired or someone else's (``BAD_EVENT_QUEUE_ID``).

    ``call_on_each_event`` handles it by registering a new queue; a caller of ``get_events``
    sees it and should do the same.
    """


class RetriesExhausted(AlohaError):
    """Every attempt of a single call failed in a way worth retrying; this is the last failure.

    ``code`` is ``"CONNECTION_ERROR"`` (no HTTP answer: refused, reset, timed out),
    ``"SERVER_ERROR"`` (a 5xx), ``"RATE_LIMIT_HIT"`` (a 429) or ``"MALFORMED_RESPONSE"``;
    ``attempts`` says how many were made.
    """

    def __init__(
        self,
        msg: str,
        *,
        code: str,
        status: int | None,
        attempts: int,
        response: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(msg, code=code, status=status, response=response)
        self.attempts = attempts


class ConfigError(AlohaError):
    """The client cannot be configured: a missing or unreadable aloharc file, a missing key."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, code="CONFIG_ERROR")
