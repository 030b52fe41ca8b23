"""A generated run over the whole API, from the description the origin serves at /openapi.json.

Schemathesis generates requests for every operation (the description's examples, its coverage
cases, then EXAMPLES fuzzed ones, valid and invalid) and sends them to the origin in-process,
through its ASGI support, which runs the app's lifespan: the store and the publisher start and
stop as in production. No Pushpin: the publisher publishes to a stand-in that takes everything.
Each operation gets a fresh origin holding real data (the README's two lovers, a topic channel,
a private one, posts, a follow and a follow request); most requests log in as one of the two,
and generated path parameters and bodies often name that data, to get past 401 and 404.

The run goes on SQLite, then on PostgreSQL (a fresh database for each operation's origin) with
the same coverage cases but POSTGRES_EXAMPLES fuzzed requests an operation, not EXAMPLES: on
this machine the full run took about 280 s there against 150 s on SQLite, and CI runs both;
with 30, PostgreSQL adds about 50 s.

Every answer must be documented (status, content type, headers, body) and never a 5xx, but
for the 501 of a realtime request that would be held and did not come through the proxy; the
answer is 401 (or 429) without a valid login, and neither with one; and a request answered
4xx must leave the store as it was, as the API shows it (VIEWS: the test reads no database).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, unquote

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from app.api.openapi import JID_PATTERN, NODE_PATTERN, SPEC
from app.config import Settings
from app.main import ROUTES, create_app
from tests.databases import database_env
from tests.support import RAISED_LIMITS
from tests.test_publisher import recorder

EXAMPLES = 220  # fuzzed requests per operation; the issue asks for at least 200
POSTGRES_EXAMPLES = 30  # the same on PostgreSQL (see above)


@schemathesis.serializer("application/websocket-events")
def _websocket_events(ctx: Any, value: Any) -> bytes:
    """POST /api/ws takes Pushpin's WebSocket-over-HTTP events: fuzzed as any text."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


# The data each origin starts with (the description's examples name it too).
JULIET, ROMEO = "juliet@example.com", "romeo@example.com"
TOPIC, PRIVATE = "balcony@example.com", "tomb@example.com"
CHANNELS = [JULIET, ROMEO, TOPIC, PRIVATE]
PASSWORDS = {JULIET: "balcony123", ROMEO: "montague123"}
LOGINS = {user: basic(user, password) for user, password in PASSWORDS.items()}
NODES = [f"{channel}/posts" for channel in CHANNELS]
# (channel, id) of the posts the running test's origin starts with
SEEDED_POSTS: list[tuple[str, str]] = []

# The realtime feeds: a request that would be held answers 501 unless the GRIP proxy sent it.
HELD = {
    f"{method.upper()} {path}"
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    if method != "parameters" and "501" in operation["responses"]
}
# Operations that check the account's password from their body (app/lifecycle.py).
PASSWORD_IN_BODY = {"PATCH /api/account", "DELETE /api/account"}
# requests sent, by backend, operation and phase
CALLS: Counter[tuple[str, str, str | None]] = Counter()
View = tuple[str | None, str]  # (login, path) of a GET
Snapshot = dict[View, tuple[int, str]]  # what each view answered: status and body


def _views() -> tuple[View, ...]:
    """What a request answered 4xx must leave as it was, as the API shows it (the test reads
    no database). Every post, event and delivery appends to the log, whose last id the firehose
    gives; the rest changes in place, or makes no event."""
    views: list[View] = [(None, "/api/firehose")]
    for user in (JULIET, ROMEO):
        views += [
            # their follows, roles and follow requests, and the channels they own
            (user, "/api/subscribed"),
            # what was delivered to them, posts as they are now (edited, deleted)
            (user, "/api/notifications/history?since=0"),
            # where they were last online, as far as /history shows it: it starts there
            (user, "/api/notifications/history"),
        ]
    for channel in CHANNELS:
        owner = ROMEO if channel == ROMEO else JULIET
        views += [
            (owner, f"/api/{channel}/metadata/posts"),
            (owner, f"/api/{channel}/subscribers/posts"),  # every role on it, any account's
        ]
    return tuple(views)


VIEWS = _views()


class Origin:
    """The ASGI app schemathesis calls: the running test's origin.

    Schemathesis's pytest plugin ends every ASGI lifespan after each test, and a store cannot be
    opened again once closed; so each operation gets a fresh origin (see `api`), and the schema
    names this stand-in, which hands everything, lifespan included, to the current one.
    """

    def __init__(self) -> None:
        self.app: Starlette | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # where its lifespan runs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "no origin: the test does not use the `api` fixture"
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


ORIGIN = Origin()
Case = schemathesis.Case[Any]

# The description the origin serves (the `api` fixture checks that it serves this), loaded at
# import: schemathesis needs it to make one test per operation. (Its loader that reads it from a
# fixture's app sets pytest's Node._nodeid, which pytest 9 no longer has.)
schema = schemathesis.openapi.from_dict(json.loads(json.dumps(SPEC)))
schema.app = ORIGIN  # as schemathesis.openapi.from_asgi does
schema.config.generation.update(with_security_parameters=False)  # see Login


@dataclass
class Api:
    """The running test's origin, and what its views showed after the last request."""

    backend: str
    origin: Origin
    proxy_url: str
    seen: Snapshot = field(default_factory=dict)

    def snapshot(self, views: tuple[View, ...] = VIEWS) -> Snapshot:
        """What ``views`` answer now. (Through the app's ASGI interface, in its own event loop,
        as schemathesis's requests go, but without an HTTP client: a snapshot follows each of
        some 5,500 generated requests, and took 1.2 to 1.8 ms this way against 14 to 16 ms
        through schemathesis's client, which would add over a minute to the run.)"""
        if not views:
            return {}
        assert self.origin.loop is not None and self.origin.app is not None
        answers = asyncio.run_coroutine_threadsafe(
            _get_all(self.origin.app, views), self.origin.loop
        )
        return dict(zip(views, answers.result(30), strict=True))


async def _get_all(app: Starlette, views: tuple[View, ...]) -> list[tuple[int, str]]:
    return [await _get(app, path, login) for login, path in views]


async def _get(app: Starlette, path: str, login: str | None) -> tuple[int, str]:
    route, _, query = path.partition("?")
    # One request id for every snapshot, so that an error's body (which names it) is the same.
    headers = [(b"host", b"testserver"), (b"x-request-id", b"snapshot")]
    if login is not None:
        headers.append((b"authorization", LOGINS[login].encode()))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(route),
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    answer: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        answer.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in answer if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in answer if m["type"] == "http.response.body")
    return status, body.decode()


def created_views(case: Case) -> tuple[View, ...]:
    """The channel a request of an operation that makes one names, seen by Juliet (the views
    show only the channels Juliet and Romeo own, and an account's is its own)."""
    if case.operation.label == "POST /api/{channel}":
        return ((JULIET, f"{case.formatted_path}/metadata/posts"),)
    if case.operation.label == "POST /api/account" and isinstance(case.body, dict):
        name = case.body.get("username")
        if isinstance(name, str):
            return ((JULIET, f"/api/{quote(name, safe='')}/metadata/posts"),)
    return ()


def changes(before: Snapshot, after: Snapshot) -> str:
    return "\n".join(
        f"{view}: {before[view]!r:.300} became {after[view]!r:.300}"
        for view in before
        if after[view] != before[view]
    )


@pytest.fixture(scope="module")
def publish_target() -> Iterator[str]:
    with recorder(failures=0) as target:
        yield target.url


@pytest.fixture
def api(tmp_path: Path, publish_target: str) -> Iterator[Api]:
    """A fresh origin on SQLite with real data, shared by every generated request of one
    operation."""
    yield from _origin("sqlite", tmp_path, publish_target)


@pytest.fixture
def api_on_postgresql(tmp_path: Path, publish_target: str) -> Iterator[Api]:
    """The same on a fresh PostgreSQL database."""
    yield from _origin("postgresql", tmp_path, publish_target)


def _origin(backend: str, tmp_path: Path, publish_target: str) -> Iterator[Api]:
    settings = Settings.from_env(
        {
            **RAISED_LIMITS,  # the generated requests all come from one address, as two users
            "DATA_DIR": str(tmp_path),
            **database_env(backend),
            "GRIP_URL": publish_target,
            # Juliet and Romeo stay logged in for the whole run, though the generated failed
            # logins trip the per-address throttle (every request comes from one address).
            "AUTH_CACHE_SECONDS": "3600",
        }
    )
    ORIGIN.app = create_app(settings)
    try:
        # This starts the lifespan; it runs until the plugin ends it, after the test.
        with asgi.get_client(cast(asgi.ASGIApp, ORIGIN)) as client:
            assert client.get("/openapi.json").json() == schema.raw_schema
            api = Api(backend, ORIGIN, settings.proxy_url)
            SEEDED_POSTS[:] = _seed(client)
            api.seen = api.snapshot()
            # The control: a view that answers an error shows nothing of the store.
            assert {view: a for view, a in api.seen.items() if a[0] != 200} == {}
        yield api
    finally:
        asgi.shutdown_lifespans()
        ORIGIN.app = ORIGIN.loop = None
        SEEDED_POSTS.clear()


def _seed(client: asgi.ASGIClient) -> list[tuple[str, str]]:
    """Two accounts, Juliet's topic channel and private channel, posts, a follow and a follow
    request; returns the posts' channels and ids.

    Romeo follows the topic after its one post: his posts feed holds from any cursor (a 501
    here), Juliet's has items up to the last one; her events feed has his request.
    """

    def call(path: str, user: str | None, body: Any, status: int = 201) -> Any:
        auth = {"Authorization": basic(user, PASSWORDS[user])} if user else {}
        response = client.post(path, json=body, headers=auth)
        assert response.status_code == status, response.text
        return response.json()

    for user, password in PASSWORDS.items():
        call("/api/account", None, {"username": user, "password": password})
    call(f"/api/{TOPIC}", JULIET, {"title": "Balcony", "default_affiliation": "member"})
    on_topic = call(f"/api/{TOPIC}/content/posts", JULIET, {"content": "Wherefore art thou"})
    call("/api/subscribed", ROMEO, {f"{TOPIC}/posts": "member"}, 200)
    call(f"/api/{PRIVATE}", JULIET, {"access_model": "authorize"})
    call("/api/subscribed", ROMEO, {f"{PRIVATE}/posts": "publisher"}, 200)  # pending
    first = call(f"/api/{JULIET}/content/posts", JULIET, {"content": "But soft"})
    reply = call(
        f"/api/{JULIET}/content/posts",
        JULIET,
        {"content": "It is the east", "replyTo": first["id"]},
    )
    return [(TOPIC, on_topic["id"]), (JULIET, first["id"]), (JULIET, reply["id"])]


# The Authorization header is the test's, not schemathesis's (which, left to it, breaks the
# credentials of half the invalid cases it makes, and of all of those of an operation that takes
# nothing else): it is drawn with the rest of the request (see the flatmap_headers hook), so
# that Hypothesis replays a failing example exactly, and this header carries it to Login.
WHO = "X-Fuzz-Login"


def _logins(n: int) -> st.SearchStrategy[str]:
    """Juliet, more than half the time; Romeo; or (one in five) no or a bad login."""
    if n < 11:
        return st.just(basic(JULIET, PASSWORDS[JULIET]))
    if n < 16:
        return st.just(basic(ROMEO, PASSWORDS[ROMEO]))
    if n == 16:
        return st.just("")  # none
    if n == 17:
        return st.text(max_size=20).map(lambda password: basic(JULIET, password))
    if n == 18:
        return st.binary(max_size=40).map(lambda raw: f"Basic {base64.b64encode(raw).decode()}")
    return st.text(st.characters(codec="latin-1", exclude_categories=["Cc", "Zs"]), max_size=40)


LOGINS_DRAWN = st.integers(0, 19).flatmap(_logins)


@schema.auth(refresh_interval=None)
class Login:
    """Sets the drawn Authorization (Juliet's, where nothing was drawn: the description's
    examples and coverage cases)."""

    def get(self, case: Case, ctx: schemathesis.AuthContext) -> str | None:
        login: str = case.headers.pop(WHO, LOGINS[JULIET])
        return login or None

    def set(self, case: Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = data


# The hooks below make generated values often name the data the origin holds. They swap only
# values that the description takes for others it takes, so that invalid cases stay invalid.


def _or(value: Any, known: list[Any]) -> st.SearchStrategy[Any]:
    """The generated value, or (as often) one of the known ones."""
    return st.one_of(st.just(value), st.sampled_from(known)) if known else st.just(value)


# Values of the wrong type: every field of every request body is a string, but for `media` (an
# array or null), which is left alone, so that no invalid case can become valid by this.
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
WRONG_TYPE = (
    st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(_ANY_JSON, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=8), _ANY_JSON, max_size=3)
)


@schema.hook
def flatmap_headers(
    context: schemathesis.HookContext, headers: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any]]:
    return LOGINS_DRAWN.map(lambda login: {**(headers or {}), WHO: login})


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """An existing channel, node or post. (Path parameters come here percent-encoded, and
    Hypothesis may fill in only some of them, around the description's examples.)"""
    if not path_parameters or not _valid_jid(unquote(path_parameters.get("channel", ""))):
        return st.just(path_parameters)
    node = path_parameters.get("node")
    if node is not None and not re.fullmatch(NODE_PATTERN, unquote(node)):
        return st.just(path_parameters)
    if "id" in path_parameters:
        known = [{"channel": c, "node": "posts", "id": i} for c, i in SEEDED_POSTS]
    elif node is not None:
        known = [{"channel": c, "node": "posts"} for c in CHANNELS]
    else:
        known = [{"channel": c} for c in CHANNELS]
    encoded = [{name: quote(value, safe="") for name, value in k.items()} for k in known]
    return _or(path_parameters, encoded)


@schema.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """A cursor near the end of the log (a hold, for Romeo), a post to page after."""
    if not query:
        return st.just(query)
    since, after = query.get("since"), query.get("after")
    if isinstance(since, str) and re.fullmatch(r"[0-9]{1,18}", since):
        return _or(since, ["0", "1", "2", "3"]).map(lambda s: {**query, "since": s})
    if isinstance(after, str):
        return _or(after, [i for _, i in SEEDED_POSTS]).map(lambda a: {**query, "after": a})
    return st.just(query)


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Existing nodes to follow, accounts to give roles to or to approve, an existing post to
    reply to; and, in one object in four, a field of the wrong type (schemathesis's invalid
    bodies seldom have one where it matters)."""
    assert context.operation is not None
    label = context.operation.label
    if label == "POST /api/{channel}/subscribers/{node}/approve" and isinstance(body, list):
        return st.tuples(*[_decision(item) for item in body]).map(list)
    if not isinstance(body, dict):
        return st.just(body)
    bodies = st.just(body)
    if label == "POST /api/subscribed" and body:
        keys = st.tuples(*[_or(key, NODES) for key in body])
        bodies = keys.map(lambda chosen: dict(zip(chosen, body.values(), strict=True)))
    elif label == "POST /api/{channel}/subscribers/{node}" and body:
        keys = st.tuples(*[_or(key, [JULIET, ROMEO]) for key in body])
        bodies = keys.map(lambda chosen: dict(zip(chosen, body.values(), strict=True)))
    elif label == "POST /api/{channel}/content/{node}" and isinstance(body.get("replyTo"), str):
        replies = _or(body["replyTo"], [i for _, i in SEEDED_POSTS])
        bodies = replies.map(lambda i: {**body, "replyTo": i})
    return bodies.flatmap(lambda b: st.one_of(st.just(b), st.just(b), st.just(b), _retyped(b)))


def _decision(item: Any) -> st.SearchStrategy[Any]:
    if not isinstance(item, dict) or not isinstance(item.get("jid"), str):
        return st.just(item)
    return _or(item["jid"], [ROMEO, JULIET]).map(lambda jid: {**item, "jid": jid})


def _retyped(body: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    fields = sorted(name for name in body if name != "media")
    if not fields:
        return st.just(body)
    return st.tuples(st.sampled_from(fields), WRONG_TYPE).map(lambda f: {**body, f[0]: f[1]})


def _valid_jid(value: str) -> bool:
    return len(value) <= 255 and bool(re.search(JID_PATTERN, value))


SETTINGS = hypothesis.settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    # The origin is meant to be shared by all the examples of one operation (see `api`).
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


@schema.parametrize()
@hypothesis.settings(SETTINGS, max_examples=EXAMPLES)
def test_generated_requests(case: Case, api: Api) -> None:
    check(case, api)


@schema.parametrize()
@hypothesis.settings(SETTINGS, max_examples=POSTGRES_EXAMPLES)
def test_generated_requests_on_postgresql(case: Case, api_on_postgresql: Api) -> None:
    check(case, api_on_postgresql)


def check(case: Case, api: Api) -> None:
    CALLS[api.backend, case.operation.label, case.meta.phase.name if case.meta else None] += 1
    assert WHO not in case.headers, "Login did not set the drawn login"
    # Nothing but requests changes what the views show: the last snapshot shows it now.
    made = created_views(case)
    before = api.seen | api.snapshot(made)
    try:
        response = case.call()
    except Exception as exc:  # the origin raised: a client would get a 500
        api.seen = api.snapshot()
        exc.add_note(f"The origin raised: a 500.\n{changes(before, api.seen | api.snapshot(made))}")
        raise
    api.seen = api.snapshot()  # (and the next request's before)
    after = api.seen | api.snapshot(made)
    status = response.status_code
    request = case.as_curl_command()
    if 400 <= status < 500:
        assert after == before, (
            f"answered {status}, yet the store changed\n{changes(before, after)}\n{request}"
        )
    if needs_login(case) and reached_handler(case, response):
        # (schemathesis's ignored_auth check does half of this, but takes a 429 for a failure)
        if case.headers.get("Authorization") in LOGINS.values():
            # A password in the body is checked and limited as logins are: generated wrong
            # ones meet that limit (429), whatever the login.
            refused = (401,) if case.operation.label in PASSWORD_IN_BODY else (401, 429)
            assert status not in refused, f"{status} with a valid login\n{request}"
        else:
            assert status in (401, 429), f"{status} without a valid login\n{request}"
    if status == 501 and case.operation.label in HELD:
        # A hold that did not come through the proxy: the contract's answer, not a failure.
        assert api.proxy_url in response.json()["error"], response.text
    else:
        assert status < 500, f"{status} {response.text[:500]}\n{request}"
    case.validate_response(
        response,
        checks=[
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )


def test_every_operation_got_its_examples() -> None:
    """Runs after the generated runs (pytest keeps the file's order)."""
    if not CALLS:
        pytest.skip("the generated run did not run")
    least = {"sqlite": 200, "postgresql": POSTGRES_EXAMPLES}
    for backend in sorted({backend for backend, _, _ in CALLS}):
        fuzzed = {
            f"{method.upper()} {path}": CALLS[backend, f"{method.upper()} {path}", "fuzzing"]
            for path, item in SPEC["paths"].items()
            for method in item
            if method != "parameters"
        }
        assert {label: n for label, n in fuzzed.items() if n < least[backend]} == {}, backend


def test_the_description_has_every_route() -> None:
    # Aloha's /api/v1 is Zulip's API, form-encoded: not described here yet (its tests are
    # tests/test_zulip_compat.py, with the real zulip client, and tests/test_aloha.py).
    routes = {
        f"{method} {route.path}"
        for route in ROUTES
        for method in (route.methods or set()) - {"HEAD"}  # (Starlette adds HEAD to GET)
        if not route.path.startswith("/api/v1/")
    }
    described = {
        f"{method.upper()} {path}"
        for path, item in SPEC["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert described == routes


def needs_login(case: Case) -> bool:
    operation = SPEC["paths"][case.operation.path][case.operation.method.lower()]
    requirements = operation.get("security", SPEC["security"])
    return bool(requirements) and {} not in requirements  # ({}: the login is optional)


def reached_handler(case: Case, response: schemathesis.Response) -> bool:
    """False for what the router answered itself: a method or a path it has no route for."""
    routed = case.method.upper() == case.operation.method.upper()
    return routed and not (response.status_code == 404 and "no such endpoint" in response.text)
