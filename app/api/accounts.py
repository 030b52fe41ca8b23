"""Accounts and the health check."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import JSONResponse, caller, read_json, services
from app.errors import BadRequest, Unauthorized


async def create_account(request: Request) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest('expected JSON {"username": JID, "password": string}')
    jid = await services(request).accounts.create(body.get("username"), body.get("password"))
    return JSONResponse({"username": jid}, 201)


async def show_account(request: Request) -> Response:
    """The caller's account, with the API key that Basic auth takes in place of the password."""
    jid = await caller(request)
    account = await services(request).store.get_account(jid)
    if account is None:  # deleted since the login was cached
        raise Unauthorized("no such account")
    return JSONResponse({"username": jid, "api_key": account.api_key})


async def health(request: Request) -> Response:
    s = services(request)
    return JSONResponse(
        {
            "status": "ok",
            "last": str(await s.store.last_event_id()),
            # requests being handled right now, this one excluded: holds live in Pushpin
            "requests_in_flight": s.in_flight - 1,
            "requests": s.requests,  # handled since start, this one included
            "published_items": s.publisher.published,
        }
    )
