"""GET /openapi.json: the OpenAPI description of the HTTP API (no login).

Written by hand to match what the handlers accept and answer (tests/test_fuzz.py generates
requests from it and checks every answer against it).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app.api.common import JSONResponse

# Characters no JID may hold (app.model._FORBIDDEN_IN_JID): Python's whitespace, controls,
# / ; , quotes < > and backslash. Spelled out rather than \s, whose ECMA-262 meaning differs.
_NOT_IN_JID = (
    r"\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    r"/;,\"'<>\\"
)
_LABEL = rf"[^@.{_NOT_IN_JID}]+"
JID_PATTERN = rf"^[^@{_NOT_IN_JID}]+@{_LABEL}(\.{_LABEL})*$"
NODE_PATTERN = r"^[a-z0-9_.-]{1,64}$"
ROLES = ["owner", "moderator", "publisher", "member", "outcast"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/{status}"} for status in statuses}


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
        **extra,
    }


CHANNEL = _param(
    "channel",
    "path",
    {"type": "string", "pattern": JID_PATTERN, "maxLength": 255},
    "A channel: a bare JID, localpart@domain, compared in lower case (at most 255 bytes).",
    example="juliet@example.com",
)
NODE = _param(
    "node",
    "path",
    {"type": "string", "pattern": NODE_PATTERN},
    "A node of the channel.",
    example="posts",
)
POST_ID = _param("id", "path", {"type": "string"}, "A post's id, as in its `id` field.")

# The errors every operation that needs a login may answer.
LOGIN_ERRORS = (401, 429)
# The errors of reading a JSON request body.
BODY_ERRORS = (400, 413, 415)

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Buddycloud realtime",
        "version": "0.1.0",
        "description": (
            "Buddycloud's HTTP API, served by a GRIP origin behind Pushpin. Request bodies are "
            "JSON (`Content-Type: application/json`, at most 64 KiB). Errors are "
            '`{"error": "message"}`. Log in with HTTP Basic: your JID and your password or '
            "API key. After 10 failed logins in a minute for one account from one client "
            "address, or 30 from one address, the answer is 429 with `Retry-After`."
        ),
    },
    "security": [{"basicAuth": []}],
    "paths": {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and counters",
                "security": [],
                "responses": {"200": {"description": "Up", "content": _json(_ref("Health"))}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI description",
                        "content": _json({"type": "object"}),
                    }
                },
            }
        },
        "/api/account": {
            "post": {
                "operationId": "createAccount",
                "summary": "Create an account and its personal channel (node posts)",
                "security": [],
                "requestBody": {"required": True, "content": _json(_ref("NewAccount"))},
                "responses": {
                    "201": {
                        "description": "Created",
                        "content": _json(_ref("Username")),
                    },
                    **_errors(*BODY_ERRORS, 409),
                },
            },
            "get": {
                "operationId": "showAccount",
                "summary": "The caller's account and API key",
                "responses": {
                    "200": {"description": "The caller", "content": _json(_ref("Account"))},
                    **_errors(*LOGIN_ERRORS),
                },
            },
        },
        "/api/subscribed": {
            "get": {
                "operationId": "subscriptions",
                "summary": "The caller's roles, by node (own channel included)",
                "responses": {
                    "200": {"description": "Roles", "content": _json(_ref("Roles"))},
                    **_errors(*LOGIN_ERRORS),
                },
            },
            "post": {
                "operationId": "follow",
                "summary": "Follow (a role, capped at the channel's default) or unfollow (none)",
                "description": (
                    "Keys are `channel/node`. All changes apply, or none. The owner cannot "
                    "unfollow their own channel, nor anyone follow more than MAX_FOLLOWS "
                    "nodes (409); an outcast cannot follow (403)."
                ),
                "requestBody": {"required": True, "content": _json(_ref("Follow"))},
                "responses": {
                    "200": {
                        "description": "The caller's roles after the change",
                        "content": _json(_ref("Roles")),
                    },
                    **_errors(*BODY_ERRORS, *LOGIN_ERRORS, 403, 404, 409),
                },
            },
        },
        "/api/notifications/posts": {
            "get": {
                "operationId": "postsFeed",
                "summary": "The realtime feed of posts of the nodes the caller follows",
                "description": (
                    "Without `since`: the current cursor, at once. With it: the posts after "
                    "it, at once, or, when there are none, a hold that only the GRIP proxy "
                    "may keep (a request that reached the origin directly gets 501)."
                ),
                "parameters": [
                    _param(
                        "since",
                        "query",
                        {"type": "string", "pattern": r"^[0-9]{1,18}$"},
                        "A cursor, as given in `last`; not ahead of the log.",
                    ),
                    _param(
                        "Grip-Sig",
                        "header",
                        {"type": "string"},
                        "Set by the GRIP proxy (a JWT signed with GRIP_SIG_KEY); "
                        "clients never send it.",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": (
                            "Posts after `since` (at most 100, under 90,000 bytes); to the "
                            "GRIP proxy, a hold instruction"
                        ),
                        "content": {
                            **_json(_ref("Feed")),
                            "application/grip-instruct": {"schema": {"type": "object"}},
                        },
                    },
                    **_errors(400, *LOGIN_ERRORS, 501),
                },
            }
        },
        "/api/{channel}": {
            "post": {
                "operationId": "createChannel",
                "summary": "Create a topic channel owned by the caller",
                "parameters": [CHANNEL],
                "requestBody": {"required": False, "content": _json(_ref("ChannelFields"))},
                "responses": {
                    "201": {
                        "description": "Created",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["channel"],
                                "properties": {"channel": {"type": "string"}},
                                "additionalProperties": False,
                            }
                        ),
                    },
                    **_errors(*BODY_ERRORS, *LOGIN_ERRORS, 409),
                },
            }
        },
        "/api/{channel}/content/{node}": {
            "parameters": [CHANNEL, NODE],
            "get": {
                "operationId": "listPosts",
                "summary": "Posts of a node, newest first",
                "parameters": [
                    _param(
                        "max",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        "How many posts at most.",
                    ),
                    _param(
                        "after",
                        "query",
                        {"type": "string"},
                        "The id of a post of this node: only posts older than it.",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "Posts",
                        "content": _json({"type": "array", "items": _ref("Post")}),
                    },
                    **_errors(400, *LOGIN_ERRORS, 403, 404),
                },
            },
            "post": {
                "operationId": "createPost",
                "summary": "Post to a node (publisher, moderator or owner)",
                "requestBody": {"required": True, "content": _json(_ref("NewPost"))},
                "responses": {
                    "201": {
                        "description": "Created",
                        "headers": {
                            "Location": {
                                "description": "The post's URL",
                                "required": True,
                                "schema": {"type": "string"},
                            }
                        },
                        "content": _json(_ref("Post")),
                    },
                    **_errors(*BODY_ERRORS, *LOGIN_ERRORS, 403, 404),
                },
            },
        },
        "/api/{channel}/content/{node}/{id}": {
            "parameters": [CHANNEL, NODE, POST_ID],
            "get": {
                "operationId": "getPost",
                "summary": "One post",
                "responses": {
                    "200": {"description": "The post", "content": _json(_ref("Post"))},
                    **_errors(400, *LOGIN_ERRORS, 403, 404),
                },
            },
            "delete": {
                "operationId": "deletePost",
                "summary": "Delete a post (its author, the owner or a moderator)",
                "responses": {
                    "204": {"description": "Deleted"},
                    **_errors(400, *LOGIN_ERRORS, 403, 404),
                },
            },
        },
    },
    "components": {
        "securitySchemes": {
            "basicAuth": {
                "type": "http",
                "scheme": "basic",
                "description": "Your JID and your password or API key.",
            }
        },
        "responses": {
            "400": {"description": "Malformed request", "content": _json(_ref("Error"))},
            "401": {
                "description": "No or wrong credentials",
                "headers": {
                    "WWW-Authenticate": {"required": True, "schema": {"type": "string"}},
                },
                "content": _json(_ref("Error")),
            },
            "403": {"description": "Not allowed to you", "content": _json(_ref("Error"))},
            "404": {
                "description": "No such channel, node or post",
                "content": _json(_ref("Error")),
            },
            "409": {"description": "Conflicts with what exists", "content": _json(_ref("Error"))},
            "413": {"description": "Body over 64 KiB", "content": _json(_ref("Error"))},
            "415": {"description": "Body not declared JSON", "content": _json(_ref("Error"))},
            "429": {
                "description": "Too many failed logins",
                "headers": {
                    "Retry-After": {
                        "required": True,
                        "description": "Seconds to wait",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                },
                "content": _json(_ref("Error")),
            },
            "501": {
                "description": "A request that would be held reached the origin, not the proxy",
                "content": _json(_ref("Error")),
            },
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
                "additionalProperties": False,
            },
            "Health": {
                "type": "object",
                "required": ["status", "last", "requests_in_flight", "published_items"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok"]},
                    "last": _ref("Cursor"),
                    "requests_in_flight": {"type": "integer", "minimum": 0},
                    "published_items": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            },
            "Cursor": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The id of an event in the log",
            },
            "Jid": {"type": "string", "pattern": JID_PATTERN, "maxLength": 255},
            "NewAccount": {
                "type": "object",
                "required": ["username", "password"],
                "properties": {
                    "username": _ref("Jid"),
                    "password": {"type": "string", "minLength": 8, "maxLength": 1024},
                },
                "example": {"username": "juliet@example.com", "password": "balcony123"},
            },
            "Username": {
                "type": "object",
                "required": ["username"],
                "properties": {"username": {"type": "string"}},
                "additionalProperties": False,
            },
            "Account": {
                "type": "object",
                "required": ["username", "api_key"],
                "properties": {"username": {"type": "string"}, "api_key": {"type": "string"}},
                "additionalProperties": False,
            },
            "ChannelFields": {
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 200},
                    "description": {"type": "string", "maxLength": 2000},
                    "access_model": {
                        "type": "string",
                        "enum": ["open", "authorize"],
                        "default": "open",
                        "description": "authorize is not supported yet (400)",
                    },
                    "default_affiliation": {
                        "type": "string",
                        "enum": ["publisher", "member"],
                        "default": "publisher",
                    },
                },
                "additionalProperties": False,
            },
            "Roles": {
                "type": "object",
                "description": "Role by node, keyed `channel/node`",
                "additionalProperties": {"type": "string", "enum": ROLES},
            },
            "Follow": {
                "type": "object",
                "description": "Wanted role (or none: unfollow) by node, keyed `channel/node`",
                "minProperties": 1,
                "additionalProperties": {"type": "string", "enum": ["none", *ROLES]},
                "example": {"romeo@example.com/posts": "publisher"},
            },
            "Media": {
                "type": "object",
                "required": ["id", "channel"],
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 255},
                    "channel": {"type": "string", "minLength": 1, "maxLength": 255},
                },
                "additionalProperties": False,
            },
            "NewPost": {
                "type": "object",
                "required": ["content"],
                "properties": {
                    "content": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 10000,
                        "pattern": r"\S",
                        "description": "Not only whitespace",
                    },
                    "replyTo": {
                        "type": "string",
                        "nullable": True,
                        "description": "The id of a post of the same node",
                    },
                    "media": {
                        "type": "array",
                        "nullable": True,
                        "maxItems": 20,
                        "items": _ref("Media"),
                    },
                },
                "additionalProperties": False,
                "example": {"content": "But soft, what light through yonder window breaks?"},
            },
            "Post": {
                "type": "object",
                "required": [
                    "id",
                    "source",
                    "author",
                    "published",
                    "updated",
                    "content",
                    "media",
                    "replyTo",
                ],
                "properties": {
                    "id": {"type": "string"},
                    "source": {"type": "string", "description": "channel/node"},
                    "author": {"type": "string"},
                    "published": {"type": "string", "format": "date-time"},
                    "updated": {"type": "string", "format": "date-time"},
                    "content": {"type": "string"},
                    "media": {"type": "array", "nullable": True, "items": _ref("Media")},
                    "replyTo": {"type": "string", "nullable": True},
                },
                "additionalProperties": False,
            },
            "Feed": {
                "type": "object",
                "required": ["last", "items"],
                "properties": {
                    "last": _ref("Cursor"),
                    "items": {"type": "array", "maxItems": 100, "items": _ref("Post")},
                },
                "additionalProperties": False,
            },
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)
