"""Following: GET and POST /api/subscribed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import JSONResponse, caller, read_json, services


async def subscribed(request: Request) -> Response:
    jid = await caller(request)
    channels = services(request).channels
    if request.method == "GET":
        return JSONResponse(await channels.subscriptions(jid))
    return JSONResponse(await channels.follow(jid, await read_json(request)))
