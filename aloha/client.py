"""The Aloha client: Zulip's events API over HTTP, with backoff, and a loop that can be stopped.

Standard library only (``http.client``, ``json``, ``configparser``...), so ``import aloha``
works wherever Python does. The wire format is Zulip's: requests go to ``{site}/api/v1/...``
with HTTP Basic ``email:api_key``; non-string parameters are JSON-encoded and sent as form fields
(POST, DELETE) or in the query string (GET); answers are JSON with ``"result"``.

Failures worth retrying (connection refused or reset, a timeout, any 5xx including a proxy's
502 with a plain-text body, a 429, an answer that is not the JSON expected) are retried after
a delay drawn with *full jitter*: uniform in ``[0, min(backoff_max, backoff_base * 2**(n-1))]``
before the n-th retry. The delay starts over after a success. Each retry is logged at WARNING on
the ``"aloha"`` logger with the reason and the delay (also as the record attributes
``aloha_reason``, ``aloha_delay``, ``aloha_attempt``). Other 4xx answers raise
:class:`~aloha.errors.AlohaError` at once.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from aloha.errors import AlohaError, BadEventQueueError, ConfigError, RetriesExhausted

__all__ = ["DEFAULT_CONFIG_FILE", "Client"]

__version__ = "0.1.0"

DEFAULT_CONFIG_FILE = "~/aloharc"

logger = logging.getLogger("aloha")

Callback = Callable[[dict[str, Any]], None]
Validator = Callable[[dict[str, Any]], None]


class _Stopped(Exception):
    """stop() was called: unwinds call_on_each_event from wherever it waits."""


class _Retryable(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(
        self,
        reason: str,
        *,
        code: str,
        status: int | None = None,
        retry_after: float | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.response = response


def _encode(params: Mapping[str, object] | None) -> list[tuple[str, str]]:
    """Zulip's convention: strings as they are, anything else as JSON; ``None`` is left out."""
    fields: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        if value is None:
            continue
        fields.append((name, value if isinstance(value, str) else json.dumps(value)))
    return fields


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back on the backoff


def _malformed(reason: str, data: dict[str, Any]) -> _Retryable:
    return _Retryable(f"malformed answer: {reason}", code="MALFORMED_RESPONSE", response=data)


def _check_register(data: dict[str, Any]) -> None:
    if not isinstance(data.get("queue_id"), str):
        raise _malformed("register gave no queue_id", data)
    last = data.get("last_event_id")
    if not isinstance(last, int) or isinstance(last, bool):
        raise _malformed("register gave no last_event_id", data)


def _check_events(data: dict[str, Any]) -> None:
    events = data.get("events")
    if not isinstance(events, list):
        raise _malformed("no events list", data)
    for event in events:
        if not isinstance(event, dict):
            raise _malformed("an event is not an object", data)
        event_id = event.get("id")
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            raise _malformed("an event has no integer id", data)
        if not isinstance(event.get("type"), str):
            raise _malformed("an event has no type", data)


def _read_config(path: str) -> dict[str, str]:
    """``email``, ``key`` and ``site`` from the ``[api]`` section of a zuliprc-format file."""
    expanded = os.path.expanduser(path)
    parser = configparser.ConfigParser(interpolation=None)  # API keys may hold '%'
    try:
        found = parser.read(expanded, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigError(f"cannot parse {expanded}: {exc}") from exc
    if not found:
        raise ConfigError(f"cannot read config file {expanded}")
    if not parser.has_section("api"):
        raise ConfigError(f"{expanded} has no [api] section")
    return {
        key: parser.get("api", key).strip()
        for key in ("email", "key", "site")
        if parser.has_option("api", key)
    }


class Client:
    """A client of the Aloha (Zulip-compatible) API.

    ``Client(config_file="~/aloharc")`` reads ``email``, ``key`` and ``site`` from the ``[api]``
    section of a zuliprc-format file; ``Client(email=..., api_key=..., site=...)`` takes them
    directly (and those win over the file's). With neither, ``~/aloharc`` is read. ``site`` is
    like ``http://127.0.0.1:7999`` (``https://`` is assumed without a scheme).

    Timeouts: ``timeout`` for ordinary calls (and ``dont_block`` polls), ``poll_timeout`` for a
    long-poll (the server sends a heartbeat within about 55 s, so 90 s means trouble),
    ``connect_timeout`` to open a connection. Backoff: ``backoff_base`` doubling per retry,
    capped at ``backoff_max``, with full jitter (``rng`` may be a seeded ``random.Random``);
    single calls make at most ``max_attempts`` attempts, ``call_on_each_event`` never gives up.

    **Stopping.** :meth:`stop` ends ``call_on_each_event``/``call_on_each_message`` promptly
    from any thread (or from the callback), even while a long-poll is held by the server. Every
    request of the loop is made on its own connection, which the loop registers (under a lock)
    before it connects. ``stop()`` sets a flag, then calls ``shutdown(SHUT_RDWR)`` on the socket
    of each registered connection: that wakes the thread blocked in ``recv`` at once (``close``
    from another thread would not), the request fails, and the loop, seeing the flag, returns
    instead of retrying. Backoff pauses wait on a ``threading.Event`` that ``stop()`` sets, so
    they end at once too. The loop checks the flag after connecting and before each callback,
    so a ``stop()`` racing with either is never lost, and no callback starts after ``stop()``
    returned (one already running finishes). Ordinary calls (``send_message``...) are never
    interrupted, even if made while a loop runs. ``stop()`` ends every loop running on this
    client, or, when none is running, the next one to start; the flag is cleared when the last
    running loop returns, so the client can run a loop again. The abandoned event queue is not
    deleted: the server expires it.

    A client is safe to share between threads: each request has its own connection.
    """

    def __init__(
        self,
        email: str | None = None,
        api_key: str | None = None,
        config_file: str | None = None,
        site: str | None = None,
        *,
        timeout: float = 30.0,
        poll_timeout: float = 90.0,
        connect_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_attempts: int = 5,
        rng: random.Random | None = None,
        user_agent: str | None = None,
    ) -> None:
        if None in (email, api_key, site) or config_file is not None:
            path = config_file if config_file is not None else DEFAULT_CONFIG_FILE
            if config_file is not None or os.path.exists(os.path.expanduser(path)):
                values = _read_config(path)
                email = email if email is not None else values.get("email")
                api_key = api_key if api_key is not None else values.get("key")
                site = site if site is not None else values.get("site")
        given = {"email": email, "key": api_key, "site": site}
        missing = [name for name, value in given.items() if not value]
        if missing or email is None or api_key is None or site is None:
            raise ConfigError(
                f"missing {', '.join(missing)}: pass them, or name an aloharc file with an "
                f"[api] section (default {DEFAULT_CONFIG_FILE})"
            )
        if backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("need 0 < backoff_base <= backoff_max")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.email = email
        self.api_key = api_key
        self.timeout = timeout
        self.poll_timeout = poll_timeout
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_attempts = max_attempts
        self._rng = rng if rng is not None else random.Random()

        site = site.strip().rstrip("/")
        if "://" not in site:
            site = "https://" + site
        parts = urlsplit(site)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"site must be an http(s) URL, not {site!r}")
        prefix = parts.path.rstrip("/")
        prefix = prefix.removesuffix("/api")
        self.site = f"{parts.scheme}://{parts.netloc}{prefix}"
        self.base_url = f"{self.site}/api/v1/"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = f"{prefix}/api/v1/"
        token = base64.b64encode(f"{email}:{api_key}".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "Accept": "application/json",
            "User-Agent": user_agent or f"aloha-python/{__version__}",
        }

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._active: set[http.client.HTTPConnection] = set()
        self._loops = 0

    # -- the API --------------------------------------------------------------------------

    def register(
        self,
        event_types: list[str] | None = None,
        narrow: list[list[str]] | None = None,
        all_public_streams: bool = False,
        queue_lifespan_secs: int | None = None,
        **extra: object,
    ) -> dict[str, Any]:
        """Create an event queue: ``POST /api/v1/register``; answers ``queue_id`` and
        ``last_event_id``. ``extra`` passes further Zulip parameters as they are."""
        return self._call(
            "POST",
            "register",
            self._register_params(
                event_types, narrow, all_public_streams, queue_lifespan_secs, extra
            ),
            validate=_check_register,
        )

    def get_events(
        self, queue_id: str, last_event_id: int, dont_block: bool = False
    ) -> dict[str, Any]:
        """Events after ``last_event_id`` (which acknowledges those up to it):
        ``GET /api/v1/events``. Waits up to ``poll_timeout`` for one unless ``dont_block``.
        Raises :class:`~aloha.errors.BadEventQueueError` when the queue is gone."""
        return self._call(
            "GET",
            "events",
            {
                "queue_id": queue_id,
                "last_event_id": last_event_id,
                "dont_block": dont_block or None,
            },
            timeout=self.timeout if dont_block else self.poll_timeout,
            validate=_check_events,
        )

    def deregister(self, queue_id: str) -> dict[str, Any]:
        """Delete an event queue: ``DELETE /api/v1/events``."""
        return self._call("DELETE", "events", {"queue_id": queue_id})

    def send_message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``{"type": "stream", "to": ..., "topic": ..., "content": ...}``:
        ``POST /api/v1/messages``; answers the new message's ``id``.

        A random ``local_id`` is added unless given, and every retry of this send carries the
        same one, so the server stores the message once however often it is retried."""
        request = dict(message)
        if request.get("local_id") in (None, ""):
            request["local_id"] = uuid.uuid4().hex
        return self._call("POST", "messages", request)

    def call_endpoint(
        self,
        url: str,
        method: str = "POST",
        request: Mapping[str, object] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Any other endpoint, as ``url`` under ``/api/v1/`` (e.g. ``"server_settings"``),
        with the same encoding, errors and retries."""
        return self._call(method.upper(), url.lstrip("/"), request, timeout=timeout)

    def call_on_each_event(
        self,
        callback: Callback,
        event_types: list[str] | None = None,
        narrow: list[list[str]] | None = None,
        **register_kwargs: Any,
    ) -> None:
        """Register a queue, then call ``callback(event)`` for every event but heartbeats,
        until :meth:`stop` is called. Transient failures are retried with backoff forever; a
        lost queue is replaced by a new one (events in between are lost, as with Zulip);
        any other error, and any exception from ``callback``, is raised."""
        with self._lock:
            self._loops += 1
        try:
            self._loop(callback, event_types, narrow, register_kwargs)
        except _Stopped:
            logger.debug("event loop stopped")
        finally:
            with self._lock:
                self._loops -= 1
                if self._loops == 0:
                    self._stop.clear()

    def call_on_each_message(
        self,
        callback: Callback,
        narrow: list[list[str]] | None = None,
        **register_kwargs: Any,
    ) -> None:
        """:meth:`call_on_each_event` for ``message`` events: ``callback(event["message"])``."""

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "message":
                callback(event["message"])

        self.call_on_each_event(on_event, ["message"], narrow, **register_kwargs)

    def stop(self) -> None:
        """End ``call_on_each_*`` promptly, from any thread or from the callback (see the
        class docstring for how)."""
        with self._lock:
            self._stop.set()
            for conn in self._active:
                sock = conn.sock
                if sock is not None:
                    # OSError: not connected yet, or already closed; the flag is enough then
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    # -- the loop -------------------------------------------------------------------------

    @staticmethod
    def _register_params(
        event_types: list[str] | None,
        narrow: list[list[str]] | None,
        all_public_streams: bool,
        queue_lifespan_secs: int | None,
        extra: Mapping[str, object],
    ) -> dict[str, object]:
        params: dict[str, object] = {"event_types": event_types, "narrow": narrow}
        if all_public_streams:
            params["all_public_streams"] = True
        params["queue_lifespan_secs"] = queue_lifespan_secs
        params.update(extra)
        return params

    def _loop(
        self,
        callback: Callback,
        event_types: list[str] | None,
        narrow: list[list[str]] | None,
        register_kwargs: dict[str, Any],
    ) -> None:
        register_params = self._register_params(
            event_types,
            narrow,
            bool(register_kwargs.pop("all_public_streams", False)),
            register_kwargs.pop("queue_lifespan_secs", None),
            register_kwargs,
        )
        queue_id: str | None = None
        last_event_id = -1
        lost_queues = 0  # in a row: a server that keeps losing queues gets backoff too
        while True:
            if self._stop.is_set():
                raise _Stopped
            if queue_id is None:
                queue = self._call(
                    "POST",
                    "register",
                    register_params,
                    validate=_check_register,
                    interruptible=True,
                    retry_forever=True,
                )
                queue_id, last_event_id = queue["queue_id"], queue["last_event_id"]
                logger.info("registered event queue %s", queue_id)
            try:
                answer = self._call(
                    "GET",
                    "events",
                    {"queue_id": queue_id, "last_event_id": last_event_id},
                    timeout=self.poll_timeout,
                    validate=_check_events,
                    interruptible=True,
                    retry_forever=True,
                )
            except BadEventQueueError as exc:
                lost_queues += 1
                delay = self._delay(lost_queues - 1) if lost_queues > 1 else 0.0
                self._log_retry(
                    f"event queue {queue_id} is gone ({exc.msg}); registering a new one, "
                    f"events after {last_event_id} may be lost",
                    lost_queues,
                    delay,
                )
                queue_id = None
                self._pause(delay, interruptible=True)
                continue
            lost_queues = 0
            for event in answer["events"]:
                last_event_id = max(last_event_id, event["id"])
                if event["type"] == "heartbeat":
                    continue
                if self._stop.is_set():
                    raise _Stopped
                callback(event)

    # -- requests, retries ----------------------------------------------------------------

    def _call(
        self,
        method: str,
        endpoint: str,
        params: Mapping[str, object] | None,
        *,
        timeout: float | None = None,
        validate: Validator | None = None,
        interruptible: bool = False,
        retry_forever: bool = False,
    ) -> dict[str, Any]:
        """One call, retried up to ``max_attempts`` times (or forever) with backoff."""
        limit = None if retry_forever else self.max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                data = self._request(
                    method,
                    endpoint,
                    params,
                    self.timeout if timeout is None else timeout,
                    interruptible,
                )
                if validate is not None:
                    validate(data)
                return data
            except _Retryable as exc:
                if limit is not None and attempt >= limit:
                    raise RetriesExhausted(
                        f"{method} {endpoint} failed {attempt} times, last: {exc.reason}",
                        code=exc.code,
                        status=exc.status,
                        attempts=attempt,
                        response=exc.response,
                    ) from exc
                delay = self._delay(attempt)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)  # the server knows best
                self._log_retry(f"{method} {endpoint} failed: {exc.reason}", attempt, delay)
                self._pause(delay, interruptible)

    def _delay(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(retry-1))]."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** min(retry - 1, 60))
        return self._rng.uniform(0.0, ceiling)

    @staticmethod
    def _log_retry(reason: str, attempt: int, delay: float) -> None:
        logger.warning(
            "%s; retry %d in %.3f s",
            reason,
            attempt,
            delay,
            extra={"aloha_reason": reason, "aloha_attempt": attempt, "aloha_delay": delay},
        )

    def _pause(self, delay: float, interruptible: bool) -> None:
        if interruptible:
            if self._stop.wait(delay):
                raise _Stopped
        elif delay > 0:
            time.sleep(delay)

    def _request(
        self,
        method: str,
        endpoint: str,
        params: Mapping[str, object] | None,
        timeout: float,
        interruptible: bool,
    ) -> dict[str, Any]:
        """One attempt: the decoded success answer, or _Retryable, AlohaError or _Stopped."""
        path = self._path + endpoint
        headers = dict(self._headers)
        body: bytes | None = None
        fields = _encode(params)
        if method == "GET":
            if fields:
                path += "?" + urlencode(fields)
        else:
            body = urlencode(fields).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_class(self._host, self._port, timeout=min(timeout, self.connect_timeout))
        try:
            if interruptible:
                with self._lock:
                    if self._stop.is_set():
                        raise _Stopped
                    self._active.add(conn)
            try:
                conn.connect()
                if interruptible and self._stop.is_set():
                    raise _Stopped  # stop() ran while we connected, before it could see us
                conn.sock.settimeout(timeout)
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                if interruptible and self._stop.is_set():
                    raise _Stopped from exc
                raise _Retryable(
                    f"{type(exc).__name__}: {exc}".rstrip(": "), code="CONNECTION_ERROR"
                ) from exc
        finally:
            if interruptible:
                with self._lock:
                    self._active.discard(conn)
            conn.close()
        return self._interpret(response.status, raw, response.getheader("Retry-After"))

    @staticmethod
    def _interpret(status: int, raw: bytes, retry_after: str | None) -> dict[str, Any]:
        try:
            data: object = json.loads(raw)
        except ValueError:
            data = None
        answer = data if isinstance(data, dict) else None
        if status >= 500:
            detail = str(answer.get("msg", "")) if answer is not None else _snippet(raw)
            raise _Retryable(
                f"HTTP {status}" + (f" {detail}" if detail else ""),
                code="SERVER_ERROR",
                status=status,
                response=answer,
            )
        if status == 429:
            raise _Retryable(
                "HTTP 429 rate limited",
                code="RATE_LIMIT_HIT",
                status=status,
                retry_after=_retry_after(retry_after),
                response=answer,
            )
        success = 200 <= status < 300
        if answer is None:
            if success:
                raise _Retryable(
                    f"HTTP {status} answer is not a JSON object: {_snippet(raw)!r}",
                    code="MALFORMED_RESPONSE",
                    status=status,
                )
            raise AlohaError(
                _snippet(raw) or f"HTTP {status}", code=f"HTTP_{status}", status=status
            )
        result = answer.get("result")
        if success and result == "success":
            return answer
        if success and result != "error":
            raise _Retryable(
                f"HTTP {status} answer has no result", code="MALFORMED_RESPONSE", status=status
            )
        msg = str(answer.get("msg", ""))
        code = str(answer.get("code", "BAD_REQUEST"))
        error = BadEventQueueError if code == "BAD_EVENT_QUEUE_ID" else AlohaError
        raise error(msg, code=code, status=status, response=answer)
