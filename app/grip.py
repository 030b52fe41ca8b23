"""GRIP, as pure functions: hold instructions, published items, the Grip-Sig check."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

INSTRUCT_CONTENT_TYPE = "application/grip-instruct"


def is_signed(token: str | None, key: str, issuer: str) -> bool:
    """True when ``token`` (a Grip-Sig header) is an unexpired HS256 JWT from ``issuer``.

    Anything else (missing, malformed, tampered, expired, wrong issuer) means the request did
    not come through our proxy.
    """
    if not token:
        return False
    try:
        jwt.decode(
            token,
            key.encode(),
            algorithms=["HS256"],
            issuer=issuer,
            options={"require": ["exp", "iss"]},
        )
    except jwt.PyJWTError:
        return False
    return True


def hold_response(
    channels: Sequence[tuple[str, str]],
    timeout: int,
    body: str,
    headers: Mapping[str, str],
) -> bytes:
    """A long-poll hold as a GRIP instruct body (it carries any number of channels, which
    headers would not). ``channels`` pairs each channel with its prev-id; ``body`` and
    ``headers`` form the answer the client gets if nothing is published before ``timeout``.
    """
    instruction: dict[str, Any] = {
        "hold": {
            "mode": "response",
            "channels": [{"name": name, "prev-id": prev} for name, prev in channels],
            "timeout": timeout,
        },
        "response": {"code": 200, "headers": dict(headers), "body": body},
    }
    return json.dumps(instruction, ensure_ascii=False, separators=(",", ":")).encode()


def hint_item(channel: str, item_id: str, prev_id: str) -> dict[str, Any]:
    """A published item that makes Pushpin re-ask the origin for each request held on
    ``channel``, where every held request needs an answer of its own."""
    return {
        "channel": channel,
        "id": item_id,
        "prev-id": prev_id,
        "formats": {"http-response": {"action": "hint"}},
    }


def response_item(channel: str, item_id: str, prev_id: str, body: str) -> dict[str, Any]:
    """A published item that answers held long-polls on ``channel`` with ``body``."""
    return {
        "channel": channel,
        "id": item_id,
        "prev-id": prev_id,
        "formats": {"http-response": {"body": body}},
    }
