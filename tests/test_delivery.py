"""Nothing lost, nothing twice: races between the origin and Pushpin, and failed publishes.

These run the real parts apart so that faults can be put between them: the run command as
the origin alone (``--origin-only``), a real Pushpin started here, and between the two a TCP
proxy that can hold the origin's answers back (``DelayProxy``), or a publish target that fails
on demand in front of Pushpin's real publish port.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.pushpin import Pushpin
from tests.conftest import unique
from tests.databases import database_env
from tests.support import ROOT, TLS, Background, DelayProxy, Holds, Stack, free_ports
from tests.test_posts_feed import follow, last, post

SIG_KEY = "a test signing key of more than 32 bytes"


class FailingPublish(ThreadingHTTPServer):
    """Stand-in in front of Pushpin's real publish port: fails the next ``failures`` publish
    requests with 503 (as a Pushpin that is away would), answers the next ``drops`` 200 and
    forwards nothing (a publish lost on the way), the same for the next ``drop_wakes`` sockets'
    wake-ups (requests of pings named by an event id, app/wakes.py), forwards the others."""

    def __init__(self, publish_port: int) -> None:
        self.target = f"http://127.0.0.1:{publish_port}/publish/"
        self.failures = 0
        self.drops = 0
        self.drop_wakes = 0
        self.log: list[tuple[int, list[str]]] = []  # (status, item ids) of each attempt
        self.dropped: list[list[str]] = []  # item ids of each request answered but not forwarded
        super().__init__(("127.0.0.1", free_ports(1)[0]), _FailingPublishHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FailingPublishHandler(BaseHTTPRequestHandler):
    server: FailingPublish

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        items = json.loads(body)["items"]
        ids = [item["id"] for item in items]
        wakes = bool(items) and all(_is_wake(item) for item in items)
        if self.server.failures > 0:
            self.server.failures -= 1
            status = 503
        elif self.server.drops > 0 or (wakes and self.server.drop_wakes > 0):
            if wakes and self.server.drop_wakes > 0:
                self.server.drop_wakes -= 1
            else:
                self.server.drops -= 1
            self.server.dropped.append(ids)
            status = 200
        else:
            status = httpx.post(self.server.target, verify=TLS, content=body, timeout=5).status_code
        self.server.log.append((status, ids))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _is_wake(item: dict[str, Any]) -> bool:
    ping = item.get("formats", {}).get("ws-message", {}).get("type") == "ping"
    return ping and str(item.get("id", "")).isdigit()


@dataclass
class Split:
    origin: Stack
    proxy: DelayProxy
    pushpin: Pushpin
    background: Background
    failing: FailingPublish | None = None

    def client(self, user: str) -> httpx.Client:
        return self.origin.client(user)  # base_url: Pushpin (PORT)

    def accounts(self, *users: str) -> None:
        for user in users:
            self.origin.account(user).close()

    def direct(self, user: str) -> httpx.Client:
        return self.origin.client(user, origin=True)


@contextmanager
def split_stack(tmp_path: Path, backend: str, failing_publish: bool = False) -> Iterator[Split]:
    port, publish_port = free_ports(2)
    env = {
        **database_env(backend),
        "PORT": str(port),
        "PUSHPIN_PUBLISH_PORT": str(publish_port),
        "GRIP_SIG_KEY": SIG_KEY,
    }
    failing = FailingPublish(publish_port) if failing_publish else None
    if failing:
        env["GRIP_URL"] = failing.url
    origin = Stack(tmp_path, env=env, args=["--origin-only"]).start()
    background = Background()
    proxy = DelayProxy(background, int(origin.env["ORIGIN_PORT"]))
    pushpin = Pushpin(
        config=ROOT / "pushpin" / "pushpin.conf",
        rundir=tmp_path / "pushpin",
        http_port=port,
        publish_port=publish_port,
        origin=f"127.0.0.1:{proxy.port}",
        sig_key=SIG_KEY,
    )
    background.call(pushpin.start())
    try:
        yield Split(origin, proxy, pushpin, background, failing)
    finally:
        if failing:
            failing.shutdown()
            failing.server_close()
        background.call(pushpin.stop())
        proxy.close()
        background.close()
        origin.stop()


@pytest.fixture
def split(tmp_path: Path, backend: str) -> Iterator[Split]:
    with split_stack(tmp_path, backend) as s:
        yield s


def post_in_the_window(split: Split, reader: httpx.Client, since: str, writer: str) -> float:
    """Send a long-poll; once the origin has read the log and answered with a hold, and before
    Pushpin has that answer, commit a post. Returns seconds from the commit to its delivery."""
    split.proxy.delay = 0.7
    seen = split.proxy.answers
    with concurrent.futures.ThreadPoolExecutor() as pool, split.direct(writer) as w:
        held = pool.submit(reader.get, f"/api/notifications/posts?since={since}")
        deadline = time.monotonic() + 5
        while split.proxy.answers == seen:  # the origin has answered: its read is done
            assert time.monotonic() < deadline
            time.sleep(0.001)
        created = post(w, writer, "committed between the origin's read and the hold")
        committed = time.monotonic()
        answer = held.result(timeout=10)
        delivered = time.monotonic()
    assert answer.status_code == 200
    assert answer.json()["items"] == [created]
    return delivered - committed


def test_race_on_a_channel_with_subscribers(split: Split) -> None:
    racer, writer = unique("juliet"), unique("romeo")
    split.accounts(racer, writer)
    with split.client(racer) as r, split.client(racer) as second, Holds(split.origin) as holds:
        follow(r, f"{writer}/posts")
        since = last(r)
        # The racer's channel has a subscriber: another long-poll of theirs, held already (and
        # past Pushpin's own request to the origin for a newly held channel).
        other = holds.hold("posts", second.get, f"/api/notifications/posts?since={since}")
        elapsed = post_in_the_window(split, r, since, writer)
        assert other.result(timeout=5).json()["items"][0]["author"] == writer
    assert elapsed < 3.0


def test_race_on_a_channel_without_subscribers(split: Split) -> None:
    racer, writer = unique("juliet"), unique("romeo")
    split.accounts(racer, writer)
    with split.client(racer) as r:
        follow(r, f"{writer}/posts")
        since = last(r)
        elapsed = post_in_the_window(split, r, since, writer)
    assert elapsed < 3.0


def test_a_failed_publish_on_one_node_holds_back_the_later_one_on_another(
    tmp_path: Path, backend: str
) -> None:
    reader, a, b = unique("juliet"), unique("romeo"), unique("mercutio")
    with split_stack(tmp_path, backend, failing_publish=True) as split:
        assert split.failing is not None
        split.accounts(reader, a, b)
        with (
            split.client(reader) as r,
            split.direct(a) as wa,
            split.direct(b) as wb,
            Holds(split.origin) as holds,
        ):
            follow(r, f"{a}/posts", f"{b}/posts")
            since = last(r)
            held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
            split.failing.failures = 3
            on_a = post(wa, a, "on A: its publish fails, then is retried")
            on_b = post(wb, b, "on B: later, and its publish would succeed")
            # Published: had B gone first, Pushpin would have seen the gap and asked the origin,
            # whose answer from the log starts with A too.
            first = holds.published(held, timeout=10).json()
            seen = [item["id"] for item in first["items"]]
            answers = [first]
            while len(seen) < 2:
                page = r.get(f"/api/notifications/posts?since={answers[-1]['last']}").json()
                answers.append(page)
                seen += [item["id"] for item in page["items"]]
    assert seen == [on_a["id"], on_b["id"]], "each once, in order"
    # The first answer is A: no cursor passed A before A was handed over.
    assert [item["id"] for item in first["items"]] == [on_a["id"]]
    log = split.failing.log
    assert [status for status, _ in log[:3]] == [503, 503, 503]
    assert all(ids[0] == log[0][1][0] for _, ids in log[:4]), "A retried before anything else"


def test_posts_made_while_pushpin_is_down_reach_clients_when_it_is_back(split: Split) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    split.accounts(reader, writer)
    with split.client(reader) as r, split.direct(writer) as w:
        follow(r, f"{writer}/posts")
        since = last(r)
        split.background.call(split.pushpin.stop())
        created = [post(w, writer, f"while Pushpin is down {i}") for i in range(3)]
        split.background.call(split.pushpin.start())
        assert r.get(f"/api/notifications/posts?since={since}").json()["items"] == created


def test_an_aloha_event_made_while_a_poll_is_on_its_way_is_delivered_once(split: Split) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    split.accounts(reader, writer)
    with split.client(reader) as r:
        follow(r, f"{writer}/posts")
        key = r.get("/api/account").json()["api_key"]
        auth = (reader, key)
        queue = r.post("/api/v1/register", data={}, auth=auth).json()["queue_id"]
        split.proxy.delay = 0.7
        seen = split.proxy.answers
        with concurrent.futures.ThreadPoolExecutor() as pool, split.direct(writer) as w:
            params = {"queue_id": queue, "last_event_id": "-1"}
            held = pool.submit(r.get, "/api/v1/events", params=params, auth=auth)
            deadline = time.monotonic() + 5
            while split.proxy.answers == seen:  # the origin has read the queue and answered
                assert time.monotonic() < deadline
                time.sleep(0.001)
            created = post(w, writer, "made while the poll was on its way")
            committed = time.monotonic()
            events = held.result(timeout=10).json()["events"]
            elapsed = time.monotonic() - committed
        split.proxy.delay = 0
        assert [e["message"]["post"] for e in events] == [created]
        assert elapsed < 3.0
        with split.direct(writer) as w:
            following = post(w, writer, "the next one")
        again = r.get(
            "/api/v1/events",
            params={**params, "last_event_id": str(events[-1]["id"]), "dont_block": "true"},
            auth=auth,
        )
        # Once: from there, only what came next.
        assert [e["message"]["post"] for e in again.json()["events"]] == [following]
