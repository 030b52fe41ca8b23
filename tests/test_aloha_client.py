"""The ``aloha`` client package, against real sockets.

The servers here are stand-ins for the real server, said so where they are: a closed port, and
tiny ``http.server`` threads that play Zulip's wire format (answers scripted per test, including
a proxy's 502 with a plain-text body, as Pushpin gives, and a long-poll held until the client
closes the socket). They let each test make one failure happen on demand and record exactly what
the client sent and when. The client itself is not mocked: it connects, sends and waits for
real. End-to-end tests against the real server live elsewhere.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

import aloha
from tests.support import free_ports

EMAIL = "juliet@example.com"
KEY = "s3cr3t%key"


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


# (status, content type, body), or None to hold the request until the client closes the socket
Answer = tuple[int, str, bytes] | None


def ok(**fields: Any) -> Answer:
    return 200, "application/json", json.dumps({"result": "success", "msg": "", **fields}).encode()


def error(status: int, code: str, msg: str, **fields: Any) -> Answer:
    body = {"result": "error", "msg": msg, "code": code, **fields}
    return status, "application/json", json.dumps(body).encode()


BAD_GATEWAY: Answer = (502, "text/plain", b"Bad gateway: the origin is not answering\n")


class FakeZulip(ThreadingHTTPServer):
    """Stand-in for the server: ``respond(request, server)`` scripts every answer."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, respond: Callable[[Request, FakeZulip], Answer]) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.held = threading.Event()  # a request is being held
        self.released = threading.Event()  # a held request saw the client close its socket
        super().__init__(("127.0.0.1", free_ports(1)[0]), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def seen(self, method: str, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if (r.method, r.path) == (method, path)]


class _Handler(BaseHTTPRequestHandler):
    server: FakeZulip

    def _handle(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            assert self.headers["Content-Type"] == "application/x-www-form-urlencoded"
            params.update(parse_qsl(self.rfile.read(length).decode()))
        request = Request(self.command, url.path, params, dict(self.headers.items()))
        with self.server.lock:
            self.server.requests.append(request)
        answer = self.server.respond(request, self.server)
        if answer is None:
            self.server.held.set()
            self.rfile.read(1)  # returns only when the client closes its end
            self.server.released.set()
            self.close_connection = True
            return
        status, content_type, body = answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fake_zulip(respond: Callable[[Request, FakeZulip], Answer]) -> Iterator[FakeZulip]:
    server = FakeZulip(respond)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def client(site: str, **options: Any) -> aloha.Client:
    return aloha.Client(email=EMAIL, api_key=KEY, site=site, **options)


def retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aloha" and hasattr(r, "aloha_delay")]


def delay(record: logging.LogRecord) -> float:
    value = getattr(record, "aloha_delay")  # noqa: B009 (set through logging's extra)
    assert isinstance(value, float)
    return value


def wait_for(predicate: Callable[[], object], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextmanager
def looping(c: aloha.Client, run: Callable[[], None]) -> Iterator[dict[str, BaseException | None]]:
    """Runs ``run`` (a call_on_each_* loop) in a thread; on exit, stops it and joins it."""
    outcome: dict[str, BaseException | None] = {"error": None}

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        c.stop()
        thread.join(5)
        assert not thread.is_alive(), "the loop did not stop"


# -- backoff ----------------------------------------------------------------------------------

CAP = 0.4
SLACK = 0.1  # a connection refused on loopback, or one HTTP exchange, on a busy 2-core machine


def test_backoff_against_a_closed_port_grows_with_jitter_under_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stand-in: a port nothing listens on, so every attempt is refused at once.
    caplog.set_level(logging.WARNING, logger="aloha")
    c = client(
        f"http://127.0.0.1:{free_ports(1)[0]}",
        backoff_base=0.05,
        backoff_max=CAP,
        max_attempts=10,
        rng=random.Random(2),
    )
    with pytest.raises(aloha.RetriesExhausted) as raised:
        c.register()
    end = time.time()
    assert raised.value.code == "CONNECTION_ERROR"
    assert raised.value.status is None
    assert raised.value.attempts == 10
    assert "Connection refused" in raised.value.msg

    records = retries(caplog)
    assert len(records) == 9
    assert all("ConnectionRefusedError" in r.getMessage() for r in records)
    # Each record is logged just before the pause: the gap to the next attempt's failure is
    # the pause drawn, plus one refused connection.
    failures = [r.created for r in records] + [end]
    gaps = [b - a for a, b in itertools.pairwise(failures)]
    drawn = [delay(r) for r in records]
    for n, (gap, pause) in enumerate(zip(gaps, drawn, strict=True), start=1):
        assert 0 <= pause <= min(CAP, 0.05 * 2 ** (n - 1)) + 1e-9  # full jitter under the ceiling
        assert pause - 0.005 <= gap <= pause + SLACK
        assert gap <= CAP + SLACK
    assert statistics.mean(gaps[:3]) * 2 < statistics.mean(gaps[-3:])  # grows on average
    assert len({round(g, 2) for g in gaps[-5:]}) >= 3  # jitter: capped pauses still differ


def test_the_loop_retries_a_closed_port_forever_and_stop_cuts_the_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aloha")
    c = client(
        f"http://127.0.0.1:{free_ports(1)[0]}",
        backoff_base=0.02,
        backoff_max=5,
        rng=random.Random(1),
    )
    with looping(c, lambda: c.call_on_each_event(lambda e: None)) as outcome:
        wait_for(lambda: len(retries(caplog)) >= 8)  # beyond max_attempts: the loop goes on
        wait_for(lambda: delay(retries(caplog)[-1]) > 1.5)  # now in a long pause
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 0.5
    assert outcome["error"] is None


def test_502_with_a_plain_text_body_is_retried_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stand-in: answers the first four polls as a proxy with no origin behind it would.
    def respond(request: Request, server: FakeZulip) -> Answer:
        if len(server.requests) <= 4:
            return BAD_GATEWAY
        return ok(events=[{"id": 8, "type": "heartbeat"}])

    caplog.set_level(logging.WARNING, logger="aloha")
    with fake_zulip(respond) as server:
        c = client(server.url, backoff_base=0.05, backoff_max=CAP, rng=random.Random(3))
        answer = c.get_events("q1", 7, dont_block=True)
    assert answer["events"] == [{"id": 8, "type": "heartbeat"}]
    polls = server.seen("GET", "/api/v1/events")
    assert len(polls) == 5
    assert {tuple(p.params.items()) for p in polls} == {
        (("queue_id", "q1"), ("last_event_id", "7"), ("dont_block", "true"))
    }
    records = retries(caplog)
    assert len(records) == 4
    assert all("HTTP 502 Bad gateway" in r.getMessage() for r in records)
    gaps = [b.at - a.at for a, b in itertools.pairwise(polls)]
    for n, (gap, record) in enumerate(zip(gaps, records, strict=True), start=1):
        assert delay(record) <= min(CAP, 0.05 * 2 ** (n - 1)) + 1e-9
        assert delay(record) - 0.005 <= gap <= delay(record) + SLACK
    assert len({round(g, 3) for g in gaps}) == len(gaps)


def test_502_every_time_runs_out_of_attempts() -> None:
    with fake_zulip(lambda request, server: BAD_GATEWAY) as server:
        c = client(server.url, backoff_base=0.01, backoff_max=0.02, max_attempts=3)
        with pytest.raises(aloha.RetriesExhausted) as raised:
            c.deregister("q1")
    assert raised.value.attempts == 3
    assert (raised.value.code, raised.value.status) == ("SERVER_ERROR", 502)
    assert len(server.requests) == 3


def test_malformed_json_and_a_429_are_retried() -> None:
    answers: list[Answer] = [
        (200, "application/json", b'{"result": "succ'),
        (429, "application/json", b'{"result": "error", "code": "RATE_LIMIT_HIT", "msg": ""}'),
        ok(queue_id="q1", last_event_id=-1),
    ]
    with fake_zulip(lambda request, server: answers.pop(0)) as server:
        c = client(server.url, backoff_base=0.01, backoff_max=0.02)
        assert c.register()["queue_id"] == "q1"
    assert len(server.requests) == 3


# -- errors the caller sees -------------------------------------------------------------------


def test_a_4xx_raises_a_typed_error_at_once() -> None:
    def respond(request: Request, server: FakeZulip) -> Answer:
        if request.path == "/api/v1/messages":
            return error(400, "STREAM_NOT_FOUND", "Stream 'nowhere' does not exist")
        return 401, "text/plain", b"Unauthorized"

    with fake_zulip(respond) as server:
        c = client(server.url, backoff_base=0.01, backoff_max=0.02)
        with pytest.raises(aloha.AlohaError) as raised:
            c.send_message({"type": "stream", "to": "nowhere", "topic": "t", "content": "x"})
        assert (raised.value.code, raised.value.status) == ("STREAM_NOT_FOUND", 400)
        assert raised.value.msg == "Stream 'nowhere' does not exist"
        with pytest.raises(aloha.AlohaError) as raised:
            c.call_on_each_event(lambda e: None)  # the loop raises it too
        assert (raised.value.code, raised.value.status) == ("HTTP_401", 401)
    assert len(server.requests) == 2  # neither was retried


# -- the event loop ---------------------------------------------------------------------------


def test_bad_event_queue_id_makes_the_loop_register_again() -> None:
    # Stand-in playing Zulip: queue A is lost at once, queue B gives one message then waits.
    message = {"id": 5, "type": "stream", "content": "hello", "sender_email": "romeo@example.com"}

    def respond(request: Request, server: FakeZulip) -> Answer:
        if request.path == "/api/v1/register":
            registers = len(server.seen("POST", "/api/v1/register"))
            if registers == 1:
                return BAD_GATEWAY  # and a proxy hiccup first, for good measure
            return ok(queue_id="A" if registers == 2 else "B", last_event_id=-1)
        queue, last = request.params["queue_id"], request.params["last_event_id"]
        if queue == "A":
            return error(400, "BAD_EVENT_QUEUE_ID", "Bad event queue ID: A", queue_id="A")
        if last == "-1":
            heartbeat = {"id": 0, "type": "heartbeat"}
            return ok(events=[heartbeat, {"id": 1, "type": "message", "message": message}])
        return None  # hold

    got: list[dict[str, Any]] = []
    with fake_zulip(respond) as server:
        c = client(server.url, backoff_base=0.01, backoff_max=0.02)
        with looping(c, lambda: c.call_on_each_event(got.append, ["message"])) as outcome:
            wait_for(server.held.is_set)
        assert outcome["error"] is None
        assert got == [{"id": 1, "type": "message", "message": message}]
        registers = server.seen("POST", "/api/v1/register")
        assert len(registers) == 3  # one 502, then A, then B
        assert registers[-1].params["event_types"] == '["message"]'
        polls = server.seen("GET", "/api/v1/events")
        assert [(p.params["queue_id"], p.params["last_event_id"]) for p in polls] == [
            ("A", "-1"),
            ("B", "-1"),
            ("B", "1"),  # last_event_id = max(ids seen)
        ]


def test_call_on_each_message_gives_the_messages() -> None:
    def respond(request: Request, server: FakeZulip) -> Answer:
        if request.path == "/api/v1/register":
            return ok(queue_id="Q", last_event_id=3)
        if request.params["last_event_id"] == "3":
            events = [{"id": i, "type": "message", "message": {"id": 10 + i}} for i in (5, 4)]
            return ok(events=events)
        return None

    got: list[dict[str, Any]] = []
    with fake_zulip(respond) as server:
        c = client(server.url)
        with looping(c, lambda: c.call_on_each_message(got.append)):
            wait_for(server.held.is_set)
        assert got == [{"id": 15}, {"id": 14}]
        assert server.requests[-1].params["last_event_id"] == "5"


def test_stop_ends_the_loop_while_the_server_holds_the_poll() -> None:
    # Stand-in: never answers a poll; the handler waits until the client closes the socket.
    def respond(request: Request, server: FakeZulip) -> Answer:
        return ok(queue_id="Q", last_event_id=-1) if request.method == "POST" else None

    with fake_zulip(respond) as server:
        c = client(server.url, poll_timeout=90)
        done = threading.Event()

        def run() -> None:
            c.call_on_each_event(print)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        assert server.held.wait(5)
        time.sleep(0.2)
        assert not done.is_set()
        start = time.monotonic()
        c.stop()
        assert done.wait(1), "call_on_each_event did not return within a second"
        elapsed = time.monotonic() - start
        thread.join(1)
        assert server.released.wait(1)  # the held request's socket was closed
    assert elapsed < 0.5
    assert len(server.seen("GET", "/api/v1/events")) == 1  # no retry after stop


def test_stop_from_the_callback_and_before_the_loop() -> None:
    def respond(request: Request, server: FakeZulip) -> Answer:
        if request.method == "POST":
            return ok(queue_id="Q", last_event_id=-1)
        return ok(events=[{"id": 0, "type": "message", "message": {}}, {"id": 1, "type": "x"}])

    with fake_zulip(respond) as server:
        c = client(server.url)
        got: list[dict[str, Any]] = []

        def callback(event: dict[str, Any]) -> None:
            got.append(event)
            c.stop()

        c.call_on_each_event(callback)
        assert [e["id"] for e in got] == [0]  # nothing after stop()
        c.stop()  # before the loop starts: the next loop returns at once, without a request
        before = len(server.requests)
        c.call_on_each_event(callback)
        assert len(server.requests) == before
        c.call_on_each_event(callback)  # the flag was cleared: this one runs
        assert len(got) == 2


# -- single calls -----------------------------------------------------------------------------


def test_a_retried_send_keeps_its_local_id() -> None:
    # Stand-in: the first send fails as a proxy would, the second is recorded and stored.
    def respond(request: Request, server: FakeZulip) -> Answer:
        sends = server.seen("POST", "/api/v1/messages")
        return BAD_GATEWAY if len(sends) % 2 == 1 else ok(id=len(sends))

    with fake_zulip(respond) as server:
        c = client(server.url, backoff_base=0.01, backoff_max=0.02)
        message = {"type": "stream", "to": "romeo@example.com", "topic": "posts", "content": "hi"}
        assert c.send_message(message) == {"result": "success", "msg": "", "id": 2}
        assert c.send_message({**message, "local_id": "mine"})["id"] == 4
    first, retried, second, second_retried = (r.params for r in server.requests)
    assert first == retried
    assert {k: first[k] for k in message} == message
    assert len(first["local_id"]) == 32
    assert "local_id" not in message  # the caller's dict is left alone
    assert second["local_id"] == second_retried["local_id"] == "mine"


def test_requests_follow_zulips_wire_format() -> None:
    with fake_zulip(lambda request, server: ok(queue_id="Q", last_event_id=-1)) as server:
        c = client(server.url + "/", timeout=5)
        c.register(
            ["message", "subscription"], [["stream", "a b"]], True, 600, apply_markdown=False
        )
        c.deregister("Q")
        c.call_endpoint("server_settings", method="GET")
    register, deregister, settings = server.requests
    assert (register.method, register.path) == ("POST", "/api/v1/register")
    assert register.params == {
        "event_types": '["message", "subscription"]',
        "narrow": '[["stream", "a b"]]',
        "all_public_streams": "true",
        "queue_lifespan_secs": "600",
        "apply_markdown": "false",
    }
    assert (deregister.method, deregister.path, deregister.params) == (
        "DELETE",
        "/api/v1/events",
        {"queue_id": "Q"},
    )
    assert (settings.method, settings.path, settings.params) == (
        "GET",
        "/api/v1/server_settings",
        {},
    )
    auth = register.headers["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(auth).decode() == f"{EMAIL}:{KEY}"


# -- configuration ----------------------------------------------------------------------------


def test_the_aloharc_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with fake_zulip(lambda request, server: ok(id=1)) as server:
        (tmp_path / "aloharc").write_text(
            f"[api]\nemail = {EMAIL}\nkey = {KEY}\nsite = {server.url}/api/\n"
        )
        c = aloha.Client(config_file="~/aloharc")
        assert (c.email, c.api_key, c.site) == (EMAIL, KEY, server.url)
        assert c.base_url == f"{server.url}/api/v1/"
        c.send_message({"type": "stream", "to": "x", "topic": "t", "content": "c"})
        assert aloha.Client().email == EMAIL  # ~/aloharc is the default
        assert aloha.Client(email="romeo@example.com").email == "romeo@example.com"
    auth = server.requests[0].headers["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(auth).decode() == f"{EMAIL}:{KEY}"


def test_a_bad_or_missing_config_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(aloha.ConfigError, match="cannot read"):
        aloha.Client(config_file="~/aloharc")
    with pytest.raises(aloha.ConfigError, match="missing email, key, site"):
        aloha.Client()
    (tmp_path / "aloharc").write_text("[api]\nemail = a@example.com\n")
    with pytest.raises(aloha.ConfigError, match="missing key, site"):
        aloha.Client(config_file=str(tmp_path / "aloharc"))
    (tmp_path / "other").write_text("[zulip]\nemail = a@example.com\n")
    with pytest.raises(aloha.ConfigError, match=r"no \[api\] section"):
        aloha.Client(config_file=str(tmp_path / "other"))
    assert aloha.Client("a@example.com", "k", site="chat.example.com").site == (
        "https://chat.example.com"
    )
