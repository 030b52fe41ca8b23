"""The publisher: never in a request's way, in cursor order, retried before anything later.

Pushpin gives no way to make one publish fail on demand, so two tests use stand-ins for the
publish target, said so where they are: a socket that accepts and never answers, and a small
HTTP server that fails the first publishes and records what it gets. Delivery to clients is
shown through the real Pushpin elsewhere (and here, with a second target that hangs).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import unique
from tests.databases import database_env
from tests.support import Holds, Stack, free_ports
from tests.test_posts_feed import follow, last, post


@contextmanager
def silent_target() -> Iterator[str]:
    """Stand-in: accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_ports(1)[0]))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


class Recorder(ThreadingHTTPServer):
    """Stand-in publish target: fails the first ``failures`` publishes (with ``status``),
    records every one."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        self.attempts: list[tuple[float, int, list[dict[str, Any]]]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_ports(1)[0]), _RecorderHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def delivered(self, firehose: bool = False) -> list[dict[str, Any]]:
        """Items accepted, in order: those to users' feed channels, or those to the firehose
        (without the hint each firehose item also goes out as, and the sockets' wake-ups)."""
        with self.lock:
            return [
                item
                for _, status, items in self.attempts
                if status == 200
                for item in items
                if item["channel"] != "firehose-hint"  # the firehose's again, as hints
                and "http-response" in item["formats"]  # not a socket's wake-up ping
                and (item["channel"] == "firehose") == firehose
            ]


class _RecorderHandler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            failing = len(self.server.attempts) < self.server.failures
            status = self.server.status if failing else 200
            self.server.attempts.append((time.monotonic(), status, body["items"]))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def recorder(failures: int, status: int = 503) -> Iterator[Recorder]:
    server = Recorder(failures, status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def stack_with(data_dir: Path, grip_url: str | None = None, **env: str) -> Iterator[Stack]:
    stack = Stack(data_dir, env=env)
    stack.env["GRIP_URL"] = (
        grip_url or ""
    ) + f",http://127.0.0.1:{stack.env['PUSHPIN_PUBLISH_PORT']}"
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_hanging_target_blocks_neither_posts_nor_the_other_proxies(tmp_path: Path) -> None:
    with silent_target() as hanging, stack_with(tmp_path, hanging, PUBLISH_TIMEOUT="5") as stack:
        reader, writer = unique("juliet"), unique("romeo")
        with stack.account(reader) as r, stack.account(writer) as w:
            follow(r, f"{writer}/posts")
            for i in range(10):
                start = time.monotonic()
                post(w, writer, f"post {i}")
                # A post that waited for the hanging target would take its 5 s timeout.
                assert time.monotonic() - start < 1.0
            # The real Pushpin, the second target, still publishes while the first hangs.
            since = last(r)
            with Holds(stack) as holds:
                held = holds.hold("posts", r.get, f"/api/notifications/posts?since={since}")
                created = post(w, writer, "through the other proxy")
                assert holds.published(held).json()["items"] == [created]
        wait_for(lambda: "failed: no answer within" in stack.log(), 10)
        assert "retrying in" in stack.log()


def test_a_failed_publish_is_retried_before_anything_later(tmp_path: Path, backend: str) -> None:
    env = database_env(backend)
    with recorder(failures=4) as target, stack_with(tmp_path, target.url, **env) as stack:
        a, b = unique("romeo"), unique("mercutio")
        with stack.account(a) as wa, stack.account(b) as wb:
            created = [post(wa if i % 2 else wb, a if i % 2 else b, f"post {i}") for i in range(8)]
            wait_for(lambda: len(target.delivered()) == len(created), 10)
            wait_for(lambda: len(target.delivered(firehose=True)) == len(created), 10)
        with stack.client(a) as reader:
            first = int(reader.get("/api/notifications/posts").json()["last"]) - len(created)

    items = target.delivered()
    ids = [int(item["id"]) for item in items]
    assert ids == sorted(set(ids)), "each item once, in cursor order"
    assert ids == list(range(first + 1, first + 1 + len(created)))
    # Each node's items chain by prev-id, from 0 for a node's first.
    previous: dict[str, str] = {}
    for item in items:
        assert item["prev-id"] == previous.get(item["channel"], "0")
        previous[item["channel"]] = item["id"]
        body = json.loads(item["formats"]["http-response"]["body"])
        assert body["last"] == item["id"] and len(body["items"]) == 1
    assert [json.loads(i["formats"]["http-response"]["body"])["items"][0] for i in items] == [
        *created
    ]
    # The failures were retried with backoff: growing gaps between attempts.
    times = [t for t, _, _ in target.attempts[:5]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[-1] > gaps[0]
    assert sum(gaps) > 0.15


def test_parallel_writers_leave_no_gaps_forks_or_repeats(tmp_path: Path, backend: str) -> None:
    writers, per_writer = 8, 25
    env = database_env(backend)
    with recorder(failures=0) as target, stack_with(tmp_path, target.url, **env) as stack:
        owner = unique("capulet")
        topics = [f"t{i}-{owner.partition('@')[0]}@topics.example.com" for i in range(4)]
        users = [unique("writer") for _ in range(writers)]
        with stack.account(owner) as o:
            for topic in topics:
                assert o.post(f"/api/{topic}").status_code == 201
        for user in users:
            with stack.account(user) as c:
                follow(c, *(f"{t}/posts" for t in topics))

        def write(user: str) -> list[dict[str, Any]]:
            with stack.client(user) as c:
                return [post(c, topics[i % len(topics)], f"{user} {i}") for i in range(per_writer)]

        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            created = [p for batch in pool.map(write, users) for p in batch]
        # Every post goes to the channel of each of its node's followers: the writers and the
        # owner.
        followers = writers + 1
        wait_for(lambda: len(target.delivered()) == len(created) * followers, 20)
        wait_for(lambda: len(target.delivered(firehose=True)) == len(created), 20)

    items = target.delivered()
    ids = [int(item["id"]) for item in items]
    assert ids == sorted(ids), "in cursor order"
    assert sorted(set(ids)) == list(range(ids[0], ids[0] + len(created))), "no gap"
    firehose = target.delivered(firehose=True)  # every post of these open channels, in order
    assert [int(item["id"]) for item in firehose] == sorted(set(ids))
    assert [item["prev-id"] for item in firehose] == ["0"] + [i["id"] for i in firehose[:-1]]
    assert all(count == followers for count in Counter(ids).values()), "no repeat"
    previous: dict[str, str] = {}
    for item in items:  # one chain per channel: no fork (two items after one id), no hole
        assert item["prev-id"] == previous.get(item["channel"], "0")
        previous[item["channel"]] = item["id"]
    assert len(previous) == followers
    for channel in previous:
        published = [
            json.loads(i["formats"]["http-response"]["body"])["items"][0]
            for i in items
            if i["channel"] == channel
        ]
        assert sorted(p["id"] for p in published) == sorted(p["id"] for p in created)
        for user in users:  # each writer's posts went out in the order written
            mine = [p["content"] for p in published if p["author"] == user]
            assert mine == [f"{user} {i}" for i in range(per_writer)]
