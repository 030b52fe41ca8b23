"""What an operator reads: ``/health`` (for a load balancer: 200 or 503) and ``/metrics``
(Prometheus' text format, for a scraper on loopback or one with METRICS_TOKEN); where the
admin command tells a running origin that an account's logins changed; and ``/health/proxy``,
with which whoever starts Pushpin sees that it can hold requests."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import (
    JSONResponse,
    error_response,
    proxied,
    read_json,
    request_id,
    services,
)
from app.errors import BadRequest, Forbidden, NotProxied
from app.lifecycle import operator_token
from app.metrics import CONTENT_TYPE
from app.publisher import TargetLag
from app.services import Services

log = logging.getLogger(__name__)
# A store that has not answered in this long is down, as far as a load balancer cares (their
# checks time out after a few seconds; this answers first).
STORE_ANSWER_SECONDS = 3.0
NOT_STORED = {"Cache-Control": "no-store"}
T = TypeVar("T")


# The channel of /health/proxy's stream: nothing is published on it.
PROXY_CHECK_CHANNEL = "health"


async def proxy_health(request: Request) -> Response:
    """A stream held by Pushpin, on a channel nothing is published to: its answer (``ok``)
    reaches the client only once Pushpin's handler has taken the hold. A Pushpin that answers
    its publish port and proxies requests may not yet hold any: its proxy answers 500 "Accept
    service unavailable." until its handler has connected to it (app/pushpin.py waits)."""
    if not proxied(request):
        raise NotProxied(services(request).settings.proxy_url)
    headers = {"Grip-Hold": "stream", "Grip-Channel": PROXY_CHECK_CHANNEL, **NOT_STORED}
    return Response("ok\n", headers=headers, media_type="text/plain")


async def health(request: Request) -> Response:
    """200 ``ok``, or 503 with the reason: the store does not answer (in
    STORE_ANSWER_SECONDS), or every publish target has events waiting and has accepted none
    for HEALTH_PUBLISH_SECONDS (one dead Pushpin among several is shown, and is not a
    reason). Each target's lag is read from the store every origin shares."""
    s = services(request)
    try:
        last, oldest, targets = await _within(_read(s), STORE_ANSWER_SECONDS)
    except TimeoutError:
        log.error("health: the store did not answer in %.0fs", STORE_ANSWER_SECONDS)
        return _unhealthy(f"store: no answer in {STORE_ANSWER_SECONDS:.0f}s")
    except Exception as exc:
        log.exception("health: the store does not answer")
        return _unhealthy(f"store: {exc}")
    body = {
        "status": "ok",
        "last": str(last),
        # requests being handled right now, this one excluded: holds live in Pushpin
        "requests_in_flight": s.in_flight - 1,
        "requests": s.requests,  # handled since start, this one included
        "server_errors": s.server_errors,  # answered 5xx since start
        "feed_requests": dict(s.feed_requests),
        "published_items": s.publisher.published,
        "holds_unconfirmed": s.holds_unconfirmed,
        # Aloha queues deleted after their life, and the longest the loop spent on one step
        "queues_expired": s.aloha.expired,
        "longest_expiry_step_ms": round(s.aloha.longest_expiry_step * 1000, 3),
        "targets": [asdict(t) for t in targets],
        "password_hashes": s.accounts.hashes(),
        "retention": {
            "seconds": s.settings.retention_seconds,
            "events": s.settings.retention_events,
            "oldest": str(oldest),  # the oldest event kept
            # pruned by this origin since it started
            "pruned_events": s.retention.pruned_events,
            "pruned_deliveries": s.retention.pruned_deliveries,
            "batches": s.retention.batches,
            "longest_batch_ms": round(s.retention.longest_batch * 1000, 3),
        },
    }
    if all(t.stalled for t in targets):
        body["status"] = "unhealthy"
        body["reason"] = (
            f"events wait and no publish target has accepted any for "
            f"{s.settings.health_publish_seconds}s"
        )
        return JSONResponse(body, 503, NOT_STORED)
    return JSONResponse(body, headers=NOT_STORED)


async def _read(s: Services) -> tuple[int, int, list[TargetLag]]:
    last, oldest = await s.store.last_event_id(), await s.store.oldest_event_id()
    return last, oldest, await s.publisher.lag(s.settings.health_publish_seconds)


async def _within(read: Coroutine[Any, Any, T], seconds: float) -> T:
    """``read``'s answer, or TimeoutError after ``seconds``. Unlike wait_for, this does not wait
    for the read to end once it is cancelled: a database driver may wait for the server to
    acknowledge the cancellation, from a store that does not answer. The read runs on (its
    end is collected) and fails or ends when the store answers again."""
    task = asyncio.ensure_future(read)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise TimeoutError
    return task.result()


def _unhealthy(reason: str) -> Response:
    return JSONResponse({"status": "unhealthy", "reason": reason}, 503, NOT_STORED)


async def metrics(request: Request) -> Response:
    """The origin's metrics (app/metrics.py); Pushpin's are on its own port (the README)."""
    s = services(request)
    token = s.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            challenge = {"WWW-Authenticate": 'Bearer realm="metrics"'}
            message = "metrics need Authorization: Bearer <METRICS_TOKEN>"
            return error_response(401, message, challenge, request_id(request))
    elif not straight_from_loopback(request):
        raise Forbidden("metrics are served to loopback only, unless METRICS_TOKEN is set")
    await sample(s)
    return Response(s.metrics.exposition(), media_type=CONTENT_TYPE, headers=NOT_STORED)


async def logins_changed(request: Request) -> Response:
    """The admin command changed an account's logins (a ban, a new password): drop what this
    origin cached of them. Straight from loopback, with the operator's token only."""
    s = services(request)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    token = operator_token(s.settings.secret_key)
    if not straight_from_loopback(request) or not (
        scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())
    ):
        raise Forbidden("for the admin command on this machine only")
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("jid"), str):
        raise BadRequest('expected JSON {"jid": JID}')
    s.lifecycle.forget(body["jid"])
    return Response(status_code=204, headers=NOT_STORED)


def straight_from_loopback(request: Request) -> bool:
    """Did the request come from this machine, through no proxy? A request Pushpin (or any
    proxy) forwards comes from loopback too, but carries Grip-Sig or X-Forwarded-For: never
    loopback, even when the client behind it is. (uvicorn rewrites the peer's address from
    X-Forwarded-For when the peer is on loopback: the headers are what tell.)"""
    headers = request.headers
    if "grip-sig" in headers or "x-forwarded-for" in headers or "forwarded" in headers:
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def sample(s: Services) -> None:
    """Set the gauges that ask the store: each target's lag, the Aloha queues alive."""
    for lag in await s.publisher.lag(s.settings.health_publish_seconds):
        s.metrics.lag(lag.target, lag.lag_events, lag.lag_seconds, lag.failing)
    s.metrics.open_queues.set(await s.store.open_queues(time.time()))
