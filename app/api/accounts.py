"""Accounts and the health check."""

from __future__ import annotations

import logging
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import JSONResponse, caller, client_address, read_json, services
from app.errors import BadRequest, Unauthorized

log = logging.getLogger(__name__)


async def create_account(request: Request) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest('expected JSON {"username": JID, "password": string}')
    jid = await services(request).accounts.create(
        body.get("username"), body.get("password"), client_address(request)
    )
    return JSONResponse({"username": jid}, 201)


async def show_account(request: Request) -> Response:
    """The caller's account, with the API key that Basic auth takes in place of the password."""
    jid = await caller(request)
    account = await services(request).store.get_account(jid)
    if account is None:  # deleted since the login was cached
        raise Unauthorized("no such account")
    return JSONResponse({"username": jid, "api_key": account.api_key})


async def health(request: Request) -> Response:
    """200 ``ok``, or 503 with the reason: the store does not answer, or every publish
    target has events waiting and has accepted none for HEALTH_PUBLISH_SECONDS (one dead
    Pushpin among several is shown, and is not a reason)."""
    s = services(request)
    try:
        last = await s.store.last_event_id()
        targets = await s.publisher.lag(s.settings.health_publish_seconds)
    except Exception as exc:
        log.exception("health: the store does not answer")
        return JSONResponse({"status": "unhealthy", "reason": f"store: {exc}"}, 503)
    body = {
        "status": "ok",
        "last": str(last),
        # requests being handled right now, this one excluded: holds live in Pushpin
        "requests_in_flight": s.in_flight - 1,
        "requests": s.requests,  # handled since start, this one included
        "feed_requests": dict(s.feed_requests),
        "published_items": s.publisher.published,
        "holds_unconfirmed": s.holds_unconfirmed,
        # Aloha queues deleted after their life, and the longest the loop spent on one step
        "queues_expired": s.aloha.expired,
        "longest_expiry_step_ms": round(s.aloha.longest_expiry_step * 1000, 3),
        "targets": [asdict(t) for t in targets],
        "password_hashes": s.accounts.hashes(),
    }
    if all(t.stalled for t in targets):
        body["status"] = "unhealthy"
        body["reason"] = (
            f"events wait and no publish target has accepted any for "
            f"{s.settings.health_publish_seconds}s"
        )
        return JSONResponse(body, 503)
    return JSONResponse(body)
