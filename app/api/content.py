"""Channels and posts: /api/{channel} and /api/{channel}/content/{node}[/{id}]."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import JSONResponse, RawJSONResponse, caller, query_int, read_json, services
from app.channels import Retry
from app.errors import BadRequest


async def create_channel(request: Request) -> Response:
    jid = await caller(request)
    body = await read_json(request) if await _has_body(request) else {}
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object of channel fields")
    channel = await services(request).channels.create(jid, request.path_params["channel"], body)
    return JSONResponse({"channel": channel}, 201)


async def list_posts(request: Request) -> Response:
    jid = await caller(request)
    limit = query_int(request, "max", 20, 1, 100)
    posts = await services(request).channels.list_posts(
        jid,
        request.path_params["channel"],
        request.path_params["node"],
        limit,
        request.query_params.get("after"),
    )
    return RawJSONResponse("[" + ",".join(posts) + "]")


async def create_post(request: Request) -> Response:
    """201 with the post; a retry (the same ``Idempotency-Key`` and body) answers the first
    request's post again, with 200."""
    jid = await caller(request)
    channel, node = request.path_params["channel"], request.path_params["node"]
    body = await read_json(request)
    key = request.headers.get("idempotency-key")
    retry = None if key is None else Retry("header", parse_idempotency_key(key))
    created = await services(request).channels.create_post(jid, channel, node, body, retry)
    return RawJSONResponse(
        created.body, 200 if created.retried else 201, headers={"Location": created.location}
    )


def parse_idempotency_key(raw: str) -> str:
    if not 1 <= len(raw) <= 255 or not raw.isascii() or not raw.isprintable():
        raise BadRequest("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return raw


async def get_post(request: Request) -> Response:
    jid = await caller(request)
    p = request.path_params
    return RawJSONResponse(
        await services(request).channels.get_post(jid, p["channel"], p["node"], p["id"])
    )


async def edit_post(request: Request) -> Response:
    jid = await caller(request)
    p = request.path_params
    body = await read_json(request)
    return RawJSONResponse(
        await services(request).channels.edit_post(jid, p["channel"], p["node"], p["id"], body)
    )


async def metadata(request: Request) -> Response:
    jid = await caller(request)
    channels, p = services(request).channels, request.path_params
    if request.method == "GET":
        return JSONResponse(await channels.metadata(jid, p["channel"], p["node"]))
    body = await read_json(request)
    return JSONResponse(await channels.set_metadata(jid, p["channel"], p["node"], body))


async def delete_post(request: Request) -> Response:
    jid = await caller(request)
    p = request.path_params
    await services(request).channels.delete_post(jid, p["channel"], p["node"], p["id"])
    return Response(status_code=204)


async def _has_body(request: Request) -> bool:
    return bool(
        request.headers.get("content-length", "0") != "0"
        or request.headers.get("transfer-encoding")
    )
