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
# Looser than app.model.parse_jid (PRECIS and IDNA2008 are no regular expression): a JID that
# matches may still be refused, one that does not never is. A final dot is stripped.
_NOT_IN_JID = (
    r"\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    r"/;,\"'<>\\"
)
_LABEL = rf"[^@.{_NOT_IN_JID}]+"
JID_PATTERN = rf"^[^@{_NOT_IN_JID}]+@{_LABEL}(\.{_LABEL})*\.?$"
NODE_PATTERN = r"^[a-z0-9_.-]{1,64}$"
ROLES = ["owner", "moderator", "publisher", "member", "outcast"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": _json(schema)}


def _ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": _json(schema)}}


def _post_at(description: str) -> dict[str, Any]:
    """A post as the answer, with its URL in ``Location``."""
    location = {"description": "The post's URL", "required": True, "schema": {"type": "string"}}
    return {
        "description": description,
        "headers": {"Location": location},
        "content": _json({"$ref": "#/components/schemas/Post"}),
    }


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


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


CHANNEL = _param(
    "channel",
    "path",
    {"type": "string", "pattern": JID_PATTERN, "maxLength": 255},
    "A channel: a bare JID, localpart@domain, as XMPP compares them (RFC 7622: width and case"
    " folded, IDN domains as U-labels; at most 255 bytes).",
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
SINCE = _param(
    "since",
    "query",
    {"type": "string", "pattern": r"^[0-9]{1,18}$"},
    "A cursor, as given in `last`; not ahead of the log.",
)
SET_COOKIE = {
    "required": True,
    "description": "The session cookie (`session`), set or cleared",
    "schema": {"type": "string", "pattern": "^session="},
}
GRIP_SIG = _param(
    "Grip-Sig",
    "header",
    {"type": "string"},
    "Set by the GRIP proxy (a JWT signed with GRIP_SIG_KEY); clients never send it.",
)

# The errors every operation that needs a login may answer.
LOGIN_ERRORS = (401, 429)
# The errors of reading a JSON request body.
BODY_ERRORS = (400, 413, 415)
# The errors of naming a channel's node (or a post of it) that the caller may read.
NODE_ERRORS = (400, *LOGIN_ERRORS, 403, 404)


def _realtime(operation_id: str, summary: str, items: str, login: bool = True) -> dict[str, Any]:
    """A realtime feed: answered at once, or held by the GRIP proxy (501 to anyone else)."""
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": (
            "Without `since`: the current cursor, at once. With it: what follows it, at once "
            "(at most 100 items, under 90,000 bytes; `last` is the last one's cursor), or, "
            "when there is nothing yet, a hold that only the GRIP proxy may keep (a request "
            "that reached the origin directly gets 501). With `Accept: text/event-stream`: "
            "a stream of server-sent events held by the proxy (`id:` the cursor; after "
            "`Last-Event-ID`, else `since`, else the end of the log; `event: reset` with "
            '`{"last"}` for a cursor it cannot serve: ahead of the log, or one whose following '
            "events were pruned)."
        ),
        "parameters": [SINCE, GRIP_SIG],
        "responses": {
            "200": {
                "description": "What follows `since`; to the GRIP proxy, a hold instruction",
                "content": {
                    **_json(_ref(items)),
                    "application/grip-instruct": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **_errors(400, *LOGIN_ERRORS, 410, 501),
        },
    }
    if not login:
        operation["security"] = [{}, {"basicAuth": []}]  # credentials, if sent, must be good
    return operation


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Buddycloud realtime",
        "version": "0.1.0",
        "description": (
            "Buddycloud's HTTP API, served by a GRIP origin behind Pushpin. Request bodies are "
            "JSON (`Content-Type: application/json`, at most 256 KiB). Errors are "
            '`{"error": "message"}`. Log in with HTTP Basic: your JID and your password or '
            "API key. By default a client address may fail 10 logins a minute per account, "
            "30 in all, and 30 to unknown accounts (counted apart), and create 20 accounts an "
            "hour; past a limit the answer is 429 with `Retry-After`. An API key, and a "
            "password already right from that address, are never refused for others' "
            "failures. A browser may instead log in once (`POST /api/session`) and send the "
            "session cookie it gets; Basic wins when both come. A change (any method but GET, "
            "HEAD, OPTIONS) logged in by the cookie alone needs an `Origin` (or `Referer`) "
            "that is the API's own origin or a configured browser origin: 403 otherwise."
        ),
    },
    "security": [{"basicAuth": []}, {"sessionCookie": []}],
    "paths": {
        "/": {
            "get": {
                "operationId": "page",
                "summary": "A page to sign up or log in, post, follow and watch the feeds live",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/page.js": {
            "get": {
                "operationId": "pageScript",
                "summary": "The page's script",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The script",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/ws": {
            "post": {
                "operationId": "socket",
                "summary": "The socket (a WebSocket at GET /api/ws), as the GRIP proxy brings it",
                "description": (
                    "Clients open a WebSocket at `/api/ws`; Pushpin speaks to the origin about "
                    "it with these requests (WebSocket-over-HTTP events, signed by Pushpin; a "
                    "request that reached the origin directly gets 501). Frames are JSON "
                    "`[name, data]` (the README lists them)."
                ),
                "parameters": [GRIP_SIG],
                "requestBody": {
                    "required": True,
                    "content": {"application/websocket-events": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": {
                        "description": "The socket's events",
                        "content": {"application/websocket-events": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, *LOGIN_ERRORS, 403, 413, 415, 501),
                },
            }
        },
        "/api/stream/next/{link}": {
            "get": {
                "operationId": "streamNextLink",
                "summary": "A stream's next page, as the GRIP proxy asks for it",
                "description": (
                    "The next link of a stream of server-sent events: only the GRIP proxy calls "
                    "it (a request that reached the origin directly gets 501), with the token "
                    "the origin gave it. An unknown or expired token ends the stream."
                ),
                "security": [],
                "parameters": [
                    _param("link", "path", {"type": "string"}, "Given by the origin"),
                    GRIP_SIG,
                ],
                "responses": {
                    "200": {
                        "description": "The stream's next events",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(501),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and counters",
                "security": [],
                "responses": {
                    **_ok("Up", _ref("Health")),
                    "503": {
                        "description": "The store does not answer, or publishing is stalled",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["status", "reason"],
                                "properties": {
                                    "status": {"type": "string", "enum": ["unhealthy"]},
                                    "reason": {"type": "string"},
                                },
                            }
                        ),
                    },
                },
            }
        },
        "/health/proxy": {
            "get": {
                "operationId": "proxyHealth",
                "summary": "A stream Pushpin holds: its 'ok' shows Pushpin can hold requests",
                "description": "For whoever starts Pushpin: a Pushpin that proxies requests may "
                "not hold any yet (500 'Accept service unavailable.'); through it, this answers "
                "200 'ok' and stays open, on a channel nothing is published to",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Held: 'ok', then nothing",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(501),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "The origin's metrics, in Prometheus' text format",
                "description": "Straight from loopback (no proxy in between) without a login; "
                "with METRICS_TOKEN set, only with Authorization: Bearer <token>, from anywhere",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus' text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": {
                        "description": "METRICS_TOKEN is set and the request does not carry it",
                        "content": _json(_ref("Error")),
                    },
                    "403": {
                        "description": "Not straight from loopback, and no METRICS_TOKEN is set",
                        "content": _json(_ref("Error")),
                    },
                },
            }
        },
        "/admin/logins-changed": {
            "post": {
                "operationId": "loginsChanged",
                "summary": "The admin command changed an account's logins: drop them here",
                "description": "For python -m app admin on this machine: straight from "
                "loopback only, with Authorization: Bearer <a token derived from SECRET_KEY>",
                "security": [],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["jid"],
                        "properties": {"jid": {"type": "string"}},
                    }
                ),
                "responses": {
                    "204": {"description": "The account's cached logins and sessions dropped"},
                    "400": {"description": 'Not {"jid": string}', "content": _json(_ref("Error"))},
                    "403": {
                        "description": "Not straight from loopback, or without the token",
                        "content": _json(_ref("Error")),
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "security": [],
                "responses": _ok("The OpenAPI description", {"type": "object"}),
            }
        },
        "/api/account": {
            "post": {
                "operationId": "createAccount",
                "summary": "Create an account and its personal channel (node posts)",
                "security": [],
                "requestBody": _body(_ref("NewAccount")),
                "responses": {
                    **_ok("Created", _object(["username"], username=_ref("Jid")), 201),
                    **_errors(*BODY_ERRORS, 409, 429),
                },
            },
            "get": {
                "operationId": "showAccount",
                "summary": "The caller's account and API key",
                "responses": {**_ok("The caller", _ref("Account")), **_errors(*LOGIN_ERRORS)},
            },
            "patch": {
                "operationId": "changePassword",
                "summary": "Change the password",
                "description": (
                    "The old password (not the API key) must be right (403 if not; a slow hash, "
                    "limited as logins are). The new one follows the signup rule. The old "
                    "password is refused at once on every node; the account's browser sessions "
                    "end, its streams and sockets close and its held long-polls are asked again."
                ),
                "requestBody": _body(
                    _object(
                        ["old_password", "new_password"],
                        old_password={"type": "string"},
                        new_password={"type": "string", "minLength": 8, "maxLength": 1024},
                    )
                ),
                "responses": {
                    "204": {"description": "Changed"},
                    **_errors(*BODY_ERRORS, *LOGIN_ERRORS, 403, 409),
                },
            },
            "delete": {
                "operationId": "deleteAccount",
                "summary": "Delete the account (its password in the body)",
                "description": (
                    "Its credentials, sessions, Aloha queues and follows go, and what is open "
                    "closes as on a password change. Its posts and channel stay, authored by its "
                    "JID, which is never given to a new account (409)."
                ),
                "requestBody": _body(_object(["password"], password={"type": "string"})),
                "responses": {
                    "204": {"description": "Deleted", "headers": {"Set-Cookie": SET_COOKIE}},
                    **_errors(*BODY_ERRORS, *LOGIN_ERRORS, 403, 409),
                },
            },
        },
        "/api/account/api_key": {
            "post": {
                "operationId": "newApiKey",
                "summary": "A new API key; the old one is refused at once on every node",
                "description": "Sessions, streams and sockets close as on a password change.",
                "responses": {
                    **_ok("The new key", _object(["api_key"], api_key={"type": "string"})),
                    **_errors(*LOGIN_ERRORS),
                },
            }
        },
        "/api/session": {
            "post": {
                "operationId": "startSession",
                "summary": "Log a browser in: Basic credentials in, a session cookie out",
                "description": (
                    "Takes HTTP Basic only (password or API key, checked and limited as every "
                    "login). Sets `session`: HttpOnly, SameSite=Strict, Path=/, Secure when the "
                    "request came over https, for SESSION_SECONDS. A session the request's "
                    "cookie named before ends."
                ),
                "security": [{"basicAuth": []}],
                "responses": {
                    "200": {
                        "description": "Logged in",
                        "headers": {"Set-Cookie": SET_COOKIE},
                        "content": _json(_object(["username"], username=_ref("Jid"))),
                    },
                    **_errors(*LOGIN_ERRORS),
                },
            },
            "get": {
                "operationId": "showSession",
                "summary": "Who the browser's session logs in (404 when nothing does)",
                "security": [{}, {"basicAuth": []}, {"sessionCookie": []}],
                "responses": {
                    "200": {
                        "description": "Logged in",
                        "content": _json(_object(["username"], username=_ref("Jid"))),
                    },
                    **_errors(404, 429),
                },
            },
            "delete": {
                "operationId": "endSession",
                "summary": "Log out: the cookie's session ends on every node; the cookie clears",
                "description": (
                    "204 whether or not the request named a session. Basic credentials, if "
                    "sent, must be good; without them, a request with the cookie must come "
                    "from one of the API's pages (403)."
                ),
                "security": [{}, {"basicAuth": []}, {"sessionCookie": []}],
                "responses": {
                    "204": {"description": "Logged out", "headers": {"Set-Cookie": SET_COOKIE}},
                    **_errors(401, 403, 429),
                },
            },
        },
        "/api/subscribed": {
            "get": {
                "operationId": "subscriptions",
                "summary": "The caller's roles, by node (own channel included)",
                "responses": {**_ok("Roles", _ref("Subscriptions")), **_errors(*LOGIN_ERRORS)},
            },
            "post": {
                "operationId": "follow",
                "summary": "Follow (a role, capped at the channel's default) or unfollow (none)",
                "description": (
                    "Keys are `channel/node`. All changes apply, or none. Following a private "
                    "(authorize) channel leaves you pending until its owner or a moderator "
                    "approves. The owner cannot unfollow their own channel, nor anyone follow "
                    "more than MAX_FOLLOWS nodes (409); an outcast cannot follow (403)."
                ),
                "requestBody": _body(_ref("Follow")),
                "responses": {
                    **_ok("The caller's roles after the change", _ref("Subscriptions")),
                    **_errors(*BODY_ERRORS, *LOGIN_ERRORS, 403, 404, 409),
                },
            },
        },
        "/api/notifications/posts": {
            "get": _realtime(
                "postsFeed", "Posts of the nodes the caller may read, as they come", "PostFeed"
            )
        },
        "/api/notifications/events": {
            "get": _realtime(
                "eventsFeed",
                "Everything else that concerns the caller: follow requests, subscription "
                "changes, edited and deleted posts",
                "EventFeed",
            )
        },
        "/api/firehose": {
            "get": _realtime(
                "firehose", "Posts of every open channel (no login needed)", "PostFeed", False
            )
        },
        "/api/notifications/history": {
            "get": {
                "operationId": "history",
                "summary": "The caller's posts and events since a cursor, oldest first",
                "description": (
                    "Since `since`, or, without it, since the caller was last online (the "
                    "`since` of their last realtime request); answered at once, never held, "
                    "paged like the feeds. Posts come as `{type: post, cursor, post}`."
                ),
                "parameters": [SINCE],
                "responses": {
                    **_ok("What followed", _ref("HistoryFeed")),
                    **_errors(400, *LOGIN_ERRORS, 410),
                },
            }
        },
        "/api/{channel}": {
            "post": {
                "operationId": "createChannel",
                "summary": "Create a topic channel owned by the caller",
                "parameters": [CHANNEL],
                "requestBody": _body(_ref("ChannelFields"), required=False),
                "responses": {
                    **_ok("Created", _object(["channel"], channel=_ref("Jid")), 201),
                    **_errors(*BODY_ERRORS, *LOGIN_ERRORS, 403, 409),
                },
            }
        },
        "/api/{channel}/metadata/{node}": {
            "parameters": [CHANNEL, NODE],
            "get": {
                "operationId": "metadata",
                "summary": "The channel's metadata (to whoever may read the node)",
                "responses": {**_ok("Metadata", _ref("Metadata")), **_errors(*NODE_ERRORS)},
            },
            "post": {
                "operationId": "setMetadata",
                "summary": "Change the channel's metadata (its owner)",
                "requestBody": _body({"allOf": [_ref("ChannelFields")], "minProperties": 1}),
                "responses": {
                    **_ok("The new metadata", _ref("Metadata")),
                    **_errors(*BODY_ERRORS, *NODE_ERRORS),
                },
            },
        },
        "/api/{channel}/subscribers/{node}": {
            "parameters": [CHANNEL, NODE],
            "get": {
                "operationId": "subscribers",
                "summary": "The node's followers and their roles (pending requests aside)",
                "responses": {**_ok("Roles", _ref("Subscribers")), **_errors(*NODE_ERRORS)},
            },
            "post": {
                "operationId": "setRoles",
                "summary": "Give roles, ban (outcast) or remove (none) followers (the owner)",
                "description": "Roles are for followers only (409 otherwise); a ban applies to"
                " anyone. 409 too if a role changed while the request was decided.",
                "requestBody": _body(_ref("Roles")),
                "responses": {
                    **_ok("The followers after the change", _ref("Subscribers")),
                    **_errors(*BODY_ERRORS, *NODE_ERRORS, 409),
                },
            },
        },
        "/api/{channel}/subscribers/{node}/approve": {
            "parameters": [CHANNEL, NODE],
            "get": {
                "operationId": "pending",
                "summary": "Pending follow requests (the owner and moderators)",
                "responses": {**_ok("Requests", _ref("Pending")), **_errors(*NODE_ERRORS)},
            },
            "post": {
                "operationId": "decide",
                "summary": "Approve (subscribed) or reject (none) follow requests",
                "requestBody": _body(_ref("Decisions")),
                "responses": {
                    **_ok("The requests still pending", _ref("Pending")),
                    **_errors(*BODY_ERRORS, *NODE_ERRORS, 409),
                },
            },
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
                    **_ok("Posts", {"type": "array", "items": _ref("Post")}),
                    **_errors(*NODE_ERRORS),
                },
            },
            "post": {
                "operationId": "createPost",
                "summary": "Post to a node (publisher, moderator or owner)",
                "description": (
                    "With an Idempotency-Key, a retry with the same key and body within "
                    "IDEMPOTENCY_SECONDS answers the first post again (200) and stores nothing; "
                    "the same key with another body answers 422. Posts, edits and deletes count "
                    "against POSTS_PER_MINUTE (429)."
                ),
                "parameters": [
                    _param(
                        "Idempotency-Key",
                        "header",
                        {"type": "string", "minLength": 1, "maxLength": 255},
                        "Marks a request the client may send again (1-255 printable ASCII).",
                    )
                ],
                "requestBody": _body(_ref("NewPost")),
                "responses": {
                    "200": _post_at("A retry: the post its key made first"),
                    "201": _post_at("Created"),
                    **_errors(*BODY_ERRORS, *NODE_ERRORS, 422),
                },
            },
        },
        "/api/{channel}/content/{node}/{id}": {
            "parameters": [CHANNEL, NODE, POST_ID],
            "get": {
                "operationId": "getPost",
                "summary": "One post",
                "responses": {**_ok("The post", _ref("Post")), **_errors(*NODE_ERRORS)},
            },
            "put": {
                "operationId": "editPost",
                "summary": "Change a post's content and media (its author, the owner or a "
                "moderator)",
                "requestBody": _body(_ref("PostEdit")),
                "responses": {
                    **_ok("The post as changed", _ref("Post")),
                    **_errors(*BODY_ERRORS, *NODE_ERRORS),
                },
            },
            "delete": {
                "operationId": "deletePost",
                "summary": "Delete a post (its author, the owner or a moderator)",
                "responses": {"204": {"description": "Deleted"}, **_errors(*NODE_ERRORS)},
            },
        },
    },
    "components": {
        "securitySchemes": {
            "basicAuth": {
                "type": "http",
                "scheme": "basic",
                "description": "Your JID and your password or API key.",
            },
            "sessionCookie": {
                "type": "apiKey",
                "in": "cookie",
                "name": "session",
                "description": "The cookie `POST /api/session` sets (browsers).",
            },
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
            "403": {
                "description": "Not allowed to you; or a change logged in by the session "
                "cookie alone, from no page of the API's origin or a configured one",
                "content": _json(_ref("Error")),
            },
            "404": {
                "description": "No such channel, node, post or account",
                "content": _json(_ref("Error")),
            },
            "409": {"description": "Conflicts with what exists", "content": _json(_ref("Error"))},
            "410": {
                "description": "The cursor is older than what the server keeps: events after it"
                " were pruned; go on from `last`",
                "content": _json(_ref("Gone")),
            },
            "413": {"description": "Body over 256 KiB", "content": _json(_ref("Error"))},
            "415": {"description": "Body not declared JSON", "content": _json(_ref("Error"))},
            "422": {
                "description": "An Idempotency-Key used before for another request",
                "content": _json(_ref("Error")),
            },
            "429": {
                "description": "Over a limit: failed logins, accounts created, posts or follow"
                " changes a minute, or requests held at once",
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
            "Error": _object(
                ["error"],
                error={"type": "string"},
                request_id={
                    "type": "string",
                    "description": "the request's X-Request-Id, as the origin's log has it",
                },
            ),
            "Gone": _object(
                ["error", "last"],
                error={"type": "string"},
                last={"type": "string"},
                request_id={"type": "string"},
            ),
            "Health": _object(
                [
                    "status",
                    "last",
                    "requests_in_flight",
                    "requests",
                    "server_errors",
                    "feed_requests",
                    "published_items",
                    "holds_unconfirmed",
                    "queues_expired",
                    "longest_expiry_step_ms",
                    "targets",
                    "password_hashes",
                    "retention",
                ],
                status={"type": "string", "enum": ["ok"]},
                last=_ref("Cursor"),
                requests_in_flight={"type": "integer", "minimum": 0},
                requests={
                    "type": "integer",
                    "minimum": 1,
                    "description": "HTTP requests handled since start, this one included",
                },
                server_errors={
                    "type": "integer",
                    "minimum": 0,
                    "description": "HTTP requests the origin answered with a 5xx status since "
                    "start (a proxy's own 502s to clients are not here)",
                },
                feed_requests={
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 1},
                    "description": "Realtime requests handled since start, by feed "
                    "(posts, events, firehose, aloha), and streams' next-link calls: "
                    "stream_page (the next page of a backlog), stream_repair (a held stream "
                    "called it: a gap, a hint or its idle timeout)",
                },
                published_items={"type": "integer", "minimum": 0},
                holds_unconfirmed={
                    "type": "integer",
                    "minimum": 0,
                    "description": "holds sent before this origin knew the proxy had seen "
                    "their prev-ids (the publisher, or word of its progress, was late)",
                },
                queues_expired={
                    "type": "integer",
                    "minimum": 0,
                    "description": "Aloha queues deleted after their life, since start",
                },
                longest_expiry_step_ms={
                    "type": "number",
                    "minimum": 0,
                    "description": "the longest the origin spent on one step of deleting them",
                },
                targets={
                    "type": "array",
                    "items": _object(
                        [
                            "target",
                            "failing",
                            "lag_items",
                            "lag_events",
                            "lag_seconds",
                            "stalled",
                            "passed_over",
                            "publishing",
                        ],
                        target={"type": "string", "description": "the publish URL, no key"},
                        failing={"type": "boolean", "description": "its last publish failed"},
                        lag_items={
                            "type": "integer",
                            "minimum": 0,
                            "description": "deliveries it has not accepted yet",
                        },
                        lag_events={
                            "type": "integer",
                            "minimum": 0,
                            "description": "the newest event's id minus the id it has "
                            "accepted up to",
                        },
                        lag_seconds={
                            "type": "number",
                            "minimum": 0,
                            "description": "age of the oldest of them",
                        },
                        stalled={
                            "type": "boolean",
                            "description": "events wait and it accepted none for "
                            "HEALTH_PUBLISH_SECONDS",
                        },
                        passed_over={
                            "type": "integer",
                            "minimum": 0,
                            "description": "items it refused alone as too large, sent as "
                            "hints (clients got them from the log)",
                        },
                        publishing={
                            "type": "boolean",
                            "description": "this origin holds the target's lease and publishes"
                            " to it (another origin on the database does otherwise)",
                        },
                    ),
                },
                password_hashes=_object(
                    ["logins", "accounts", "most_at_once"],
                    logins={"type": "integer", "minimum": 0, "description": "checks of logins"},
                    accounts={"type": "integer", "minimum": 0, "description": "for new accounts"},
                    most_at_once={
                        "type": "integer",
                        "minimum": 0,
                        "description": "the most one client address ran at once",
                    },
                ),
                retention=_object(
                    [
                        "seconds",
                        "events",
                        "oldest",
                        "pruned_events",
                        "pruned_deliveries",
                        "batches",
                        "longest_batch_ms",
                    ],
                    seconds={"type": "integer", "description": "RETENTION_SECONDS"},
                    events={"type": "integer", "description": "RETENTION_EVENTS"},
                    oldest=_ref("Cursor"),
                    pruned_events={"type": "integer", "minimum": 0},
                    pruned_deliveries={"type": "integer", "minimum": 0},
                    batches={"type": "integer", "minimum": 0},
                    longest_batch_ms={"type": "number", "minimum": 0},
                ),
            ),
            "Cursor": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The id of an event in the log",
            },
            "Jid": {"type": "string", "pattern": JID_PATTERN, "maxLength": 255},
            "Source": {"type": "string", "description": "channel/node"},
            "Role": {"type": "string", "enum": ROLES},
            "NewAccount": {
                "type": "object",
                "required": ["username", "password"],
                "properties": {
                    "username": _ref("Jid"),
                    "password": {"type": "string", "minLength": 8, "maxLength": 1024},
                },
                "example": {"username": "juliet@example.com", "password": "balcony123"},
            },
            "Account": _object(
                ["username", "api_key"], username=_ref("Jid"), api_key={"type": "string"}
            ),
            "ChannelFields": {
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 200},
                    "description": {"type": "string", "maxLength": 2000},
                    "access_model": {
                        "type": "string",
                        "enum": ["open", "authorize"],
                        "description": "authorize: followers wait for approval (default open)",
                    },
                    "default_affiliation": {
                        "type": "string",
                        "enum": ["publisher", "member"],
                        "description": "The role a follower gets (default publisher)",
                    },
                },
                "additionalProperties": False,
                "example": {"title": "Balcony", "default_affiliation": "member"},
            },
            "Metadata": _object(
                ["title", "description", "access_model", "default_affiliation", "owner", "created"],
                title={"type": "string"},
                description={"type": "string"},
                access_model={"type": "string", "enum": ["open", "authorize"]},
                default_affiliation={"type": "string", "enum": ["publisher", "member"]},
                owner=_ref("Jid"),
                created={"type": "string", "format": "date-time"},
            ),
            "Subscriptions": {
                "type": "object",
                "description": "Role by node, keyed `channel/node`; pending: awaiting approval",
                "additionalProperties": {"type": "string", "enum": [*ROLES, "pending"]},
            },
            "Follow": {
                "type": "object",
                "description": "Wanted role (or none: unfollow) by node, keyed `channel/node`",
                "minProperties": 1,
                "additionalProperties": {"type": "string", "enum": ["none", *ROLES]},
                "example": {"romeo@example.com/posts": "publisher"},
            },
            "Subscribers": {
                "type": "object",
                "description": "Role by follower's JID",
                "additionalProperties": _ref("Role"),
            },
            "Roles": {
                "type": "object",
                "description": "New role by follower's JID (none: remove); not the owner's own",
                "minProperties": 1,
                "additionalProperties": {
                    "type": "string",
                    "enum": ["member", "publisher", "moderator", "outcast", "none"],
                },
                "example": {"romeo@example.com": "moderator"},
            },
            "Pending": {
                "type": "array",
                "items": _object(
                    ["jid", "subscription"],
                    jid=_ref("Jid"),
                    subscription={"type": "string", "enum": ["pending"]},
                ),
            },
            "Decisions": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["jid", "subscription"],
                    "properties": {
                        "jid": _ref("Jid"),
                        "subscription": {"type": "string", "enum": ["subscribed", "none"]},
                    },
                },
                "example": [{"jid": "romeo@example.com", "subscription": "subscribed"}],
            },
            "Media": _object(
                ["id", "channel"],
                id={"type": "string", "minLength": 1, "maxLength": 255},
                channel={"type": "string", "minLength": 1, "maxLength": 255},
            ),
            "Content": {
                "type": "string",
                "minLength": 1,
                "maxLength": 10000,
                "pattern": r"\S",
                "description": "Not only whitespace",
            },
            "MediaList": {
                "type": "array",
                "nullable": True,
                "maxItems": 20,
                "items": _ref("Media"),
            },
            "NewPost": {
                **_object(
                    ["content"],
                    content=_ref("Content"),
                    replyTo={
                        "type": "string",
                        "nullable": True,
                        "description": "The id of a post of the same node",
                    },
                    media=_ref("MediaList"),
                ),
                "example": {"content": "But soft, what light through yonder window breaks?"},
            },
            "PostEdit": _object(["content"], content=_ref("Content"), media=_ref("MediaList")),
            "Post": _object(
                ["id", "source", "author", "published", "updated", "content", "media", "replyTo"],
                id={"type": "string"},
                source=_ref("Source"),
                author=_ref("Jid"),
                published={"type": "string", "format": "date-time"},
                updated={"type": "string", "format": "date-time"},
                content={"type": "string"},
                media={"type": "array", "nullable": True, "items": _ref("Media")},
                replyTo={"type": "string", "nullable": True},
            ),
            "Event": _object(
                ["type", "cursor"],
                type={
                    "type": "string",
                    "enum": ["follow_request", "subscription", "post_updated", "post_deleted"],
                },
                cursor=_ref("Cursor"),
                # follow_request and subscription
                node=_ref("Source"),
                jid=_ref("Jid"),
                # subscription
                subscription={"type": "string", "enum": ["subscribed", "none"]},
                affiliation={"type": "string", "enum": [*ROLES, "none"]},
                change={
                    "type": "string",
                    "enum": ["approved", "rejected", "role_changed", "banned", "unfollowed"],
                },
                # post_updated (the post as changed) and post_deleted (id and source)
                post=_ref("Post"),
                id={"type": "string"},
                source=_ref("Source"),
            ),
            "HistoryItem": {
                "description": "An event, or a post as `{type: post, cursor, post}`",
                "oneOf": [
                    _ref("Event"),
                    _object(
                        ["type", "cursor", "post"],
                        type={"type": "string", "enum": ["post"]},
                        cursor=_ref("Cursor"),
                        post=_ref("Post"),
                    ),
                ],
            },
            **{
                name: _object(
                    ["last", "items"],
                    last=_ref("Cursor"),
                    items={"type": "array", "maxItems": 100, "items": _ref(item)},
                )
                for name, item in (
                    ("PostFeed", "Post"),
                    ("EventFeed", "Event"),
                    ("HistoryFeed", "HistoryItem"),
                )
            },
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)
