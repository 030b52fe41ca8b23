"""GRIP, as pure functions: hold instructions, published items, the Grip-Sig check."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

INSTRUCT_CONTENT_TYPE = "application/grip-instruct"


# Grip-Sig tokens already checked, with their expiry: Pushpin signs with an expiry an hour
# ahead, so most requests carry a token seen before, and a check costs about 0.1 ms of CPU.
_CHECKED: dict[tuple[str, str, str], float] = {}
_CHECKED_MAX = 1024


def is_signed(token: str | None, key: str, issuer: str) -> bool:
    """True when ``token`` (a Grip-Sig header) is an unexpired HS256 JWT from ``issuer``.

    Anything else (missing, malformed, tampered, expired, wrong issuer) means the request did
    not come through our proxy.
    """
    if not token:
        return False
    expires = _CHECKED.get((token, key, issuer))
    if expires is not None and expires > time.time():
        return True
    try:
        claims = jwt.decode(
            token,
            key.encode(),
            algorithms=["HS256"],
            issuer=issuer,
            options={"require": ["exp", "iss"]},
        )
    except jwt.PyJWTError:
        return False
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[(token, key, issuer)] = float(claims["exp"])
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
