"""Following (/api/subscribed), followers and roles (/api/{channel}/subscribers/{node}), and
follow requests (/api/{channel}/subscribers/{node}/approve)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import JSONResponse, caller, read_json, services


async def subscribed(request: Request) -> Response:
    jid = await caller(request)
    subscriptions = services(request).subscriptions
    if request.method == "GET":
        return JSONResponse(await subscriptions.of(jid))
    return JSONResponse(await subscriptions.follow(jid, await read_json(request)))


async def subscribers(request: Request) -> Response:
    jid = await caller(request)
    subscriptions, p = services(request).subscriptions, request.path_params
    if request.method == "GET":
        return JSONResponse(await subscriptions.subscribers(jid, p["channel"], p["node"]))
    roles = await read_json(request)
    return JSONResponse(await subscriptions.set_roles(jid, p["channel"], p["node"], roles))


async def approve(request: Request) -> Response:
    jid = await caller(request)
    subscriptions, p = services(request).subscriptions, request.path_params
    if request.method == "GET":
        return JSONResponse(await subscriptions.pending(jid, p["channel"], p["node"]))
    await subscriptions.decide(jid, p["channel"], p["node"], await read_json(request))
    return JSONResponse(await subscriptions.pending(jid, p["channel"], p["node"]))
