"""GET /openapi.json: the OpenAPI description of the HTTP API (no login)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import JSONResponse

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Buddycloud realtime", "version": "0.1.0"},
    "paths": {},
}


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)
