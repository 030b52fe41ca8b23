"""CORS for the configured browser origins, for immediate answers and for held ones alike."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request

ALLOW_HEADERS = ["Authorization", "Content-Type"]
ALLOW_METHODS = ["GET", "POST", "PUT", "DELETE"]
EXPOSE_HEADERS = ["Location"]


class Cors:
    """``*`` lets any page read answers, never with the user's credentials (a page elsewhere
    must not act as the user); named origins, matched exactly, may send credentials."""

    def __init__(self, origins: list[str]) -> None:
        self.any = "*" in origins
        self.origins = ["*"] if self.any else origins
        # the pages that act as the user: they may send credentials, and the session cookie
        self.credentialed = [] if self.any else origins

    def middleware(self) -> Middleware:
        return Middleware(
            CORSMiddleware,
            allow_origins=self.origins,
            allow_methods=ALLOW_METHODS,
            allow_headers=ALLOW_HEADERS,
            allow_credentials=not self.any,
            expose_headers=EXPOSE_HEADERS,
        )

    def headers_for(self, request: Request) -> dict[str, str]:
        """What CORSMiddleware adds to a simple response: held responses are answered by
        Pushpin (it keeps these headers for the published answer), not by the middleware."""
        origin = request.headers.get("origin")
        exposed = {"Access-Control-Expose-Headers": ", ".join(EXPOSE_HEADERS)}
        if not origin:
            return {}
        if self.any:
            return {"Access-Control-Allow-Origin": "*", **exposed}
        if origin not in self.origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            **exposed,
            "Vary": "Origin",
        }
