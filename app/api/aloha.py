"""Aloha (Zulip's API) under /api/v1: server_settings, fetch_api_key, register, events,
messages. Parameters come as form fields (POST, DELETE) or the query (GET), non-string values
JSON-encoded; answers are ``{"result": "success", "msg": "", ...}``."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import (
    JSONResponse,
    caller,
    client_address,
    held,
    read_body,
    services,
)
from app.errors import BadRequest

ZULIP_VERSION = "9.0"  # what the zulip client reads from server_settings
FEATURE_LEVEL = 1


def success(**fields: Any) -> JSONResponse:
    return JSONResponse({"result": "success", "msg": "", **fields})


async def server_settings(request: Request) -> Response:
    return success(
        zulip_version=ZULIP_VERSION,
        zulip_feature_level=FEATURE_LEVEL,
        push_notifications_enabled=False,
        authentication_methods={"password": True},
        realm_uri=services(request).settings.proxy_url,
        realm_name="Buddycloud",
    )


async def fetch_api_key(request: Request) -> Response:
    fields = await _params(request)
    username, password = fields.get("username", ""), fields.get("password", "")
    account = await services(request).accounts.verify_password(
        username, password, client_address(request)
    )
    return success(api_key=account.api_key, email=account.jid)


async def register(request: Request) -> Response:
    jid = await caller(request)
    fields = await _params(request)
    answer = await services(request).aloha.register(
        jid,
        event_types=_json(fields, "event_types"),
        narrow=_json(fields, "narrow"),
        all_public_streams=_json(fields, "all_public_streams") or False,
        queue_lifespan_secs=_json(fields, "queue_lifespan_secs"),
    )
    return success(
        **answer, event_queue_longpoll_timeout_seconds=services(request).settings.hold_timeout
    )


async def events(request: Request) -> Response:
    jid = await caller(request)
    fields = await _params(request)
    aloha = services(request).aloha
    if request.method == "DELETE":
        await aloha.deregister(jid, fields.get("queue_id", ""))
        return success()
    services(request).feed_requests["aloha"] += 1
    last_event_id = _json(fields, "last_event_id")
    if last_event_id is None:
        last_event_id = -1
    if not isinstance(last_event_id, int) or isinstance(last_event_id, bool):
        raise BadRequest("last_event_id must be an integer")
    found, hold = await aloha.events(jid, fields.get("queue_id", ""), last_event_id)
    if found or _json(fields, "dont_block"):
        return success(events=found)
    return await held(request, "aloha", hold, jid)


async def messages(request: Request) -> Response:
    jid = await caller(request)
    fields = await _params(request)
    message_id = await services(request).aloha.send_message(jid, fields)
    return success(id=message_id)


async def update_settings(request: Request) -> Response:
    """Zulip's password change: form fields ``old_password`` and ``new_password`` (the only
    settings there are here)."""
    jid = await caller(request)
    fields = await _form(request)
    if "old_password" not in fields or "new_password" not in fields:
        raise BadRequest("old_password and new_password are required: no other setting exists")
    await services(request).lifecycle.change_password(
        jid, fields["old_password"], fields["new_password"], client_address(request)
    )
    return success()


async def regenerate_api_key(request: Request) -> Response:
    jid = await caller(request)
    return success(api_key=await services(request).lifecycle.new_api_key(jid))


async def deactivate(request: Request) -> Response:
    """Zulip's ``DELETE /users/me``, with the account's password as the form field
    ``password`` (Zulip asks for none: deleting here needs the password, not only the key)."""
    jid = await caller(request)
    fields = await _form(request)
    if "password" not in fields:
        raise BadRequest("password is required: the account's password")
    await services(request).lifecycle.delete(jid, fields["password"], client_address(request))
    return success()


async def _form(request: Request) -> dict[str, str]:
    """Form fields of the body only: a password never travels in a URL."""
    if any(name.endswith("password") for name in request.query_params):
        raise BadRequest("send passwords as form fields in the body, never in the URL")
    return await _params(request)


async def _params(request: Request) -> dict[str, str]:
    """Query parameters, then form fields (url-encoded) over them."""
    params = dict(request.query_params)
    if request.method in ("POST", "DELETE", "PATCH"):
        body = await read_body(request)
        try:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise BadRequest("request body is not valid UTF-8") from None
    return params


def _json(fields: dict[str, str], name: str) -> Any:
    """A parameter's value: JSON when it parses as JSON, else the plain string."""
    raw = fields.get(name)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw
    except RecursionError:
        raise BadRequest(f"{name} is nested too deeply") from None
