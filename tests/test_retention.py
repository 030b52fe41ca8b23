"""Retention through the real stack, on both backends: the log and its deliveries are pruned in
the background; a reader whose cursor lost something is told so on every transport (410 with
the cursor to go on from, a stream's reset, the socket's reset frame, BAD_EVENT_QUEUE_ID), a
reader who kept up never is; and under a steady load the log stops growing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import unique
from tests.databases import database_env
from tests.support import Background, Stack, health, running
from tests.test_aloha import Aloha
from tests.test_metrics import scrape, value
from tests.test_posts_feed import follow, last, post
from tests.test_sockets import PRESENCE, Socket
from tests.test_streams import open_stream, take

KEEP = 20  # RETENTION_EVENTS of the stack below: the newest 20 events stay
RESET = "xmpp.buddycloud.reset"


@pytest.fixture(scope="module")
def kept(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack that keeps the newest KEEP events (no limit by age), and looks every second."""
    env = database_env(backend)
    with running(
        tmp_path_factory.mktemp("retention"),
        RETENTION_EVENTS=str(KEEP),
        RETENTION_SECONDS="0",
        RETENTION_CHECK_SECONDS="1",
        HOLD_TIMEOUT="5",
        **env,
    ) as stack:
        yield stack


def pruned_past(stack: Stack, cursor: int, timeout: float = 15) -> None:
    """Wait until the event after ``cursor`` is pruned, and the log is down to the newest
    KEEP events: a look made while posts came in may have pruned only part of what is due,
    and the next (a second later) would prune past a `last` the test was just told."""
    deadline = time.monotonic() + timeout
    while True:
        state = health(stack)
        kept_from = int(state["retention"]["oldest"])
        if kept_from > cursor + 1 and kept_from >= int(state["last"]) - KEEP + 1:
            return
        assert time.monotonic() < deadline, state["retention"]
        time.sleep(0.2)


def posts(client: httpx.Client, user: str, count: int) -> None:
    """``count`` posts by ``user``, "post 0" on; all still there whatever was pruned."""
    made = [post(client, user, f"post {i}")["id"] for i in range(count)]
    items = client.get(f"/api/{user}/content/posts?max={count}").json()
    assert [p["id"] for p in reversed(items)] == made  # posts are never pruned


def test_a_pruned_cursor_gets_410_and_going_on_from_last_loses_nothing_kept(
    kept: Stack,
) -> None:
    user = unique("retained")
    with kept.account(user) as c:
        start = last(c)
        posts(c, user, KEEP + 10)
        pruned_past(kept, int(start))
        r = c.get(f"/api/notifications/posts?since={start}")
        assert r.status_code == 410, r.text
        gone = r.json()
        assert set(gone) == {"error", "last", "request_id"}
        assert "older than what the server keeps" in gone["error"]
        resume = gone["last"]
        assert int(start) < int(resume) < int(last(c))
        # From `last`, what is kept, each once and in order, to the newest post.
        r = c.get(f"/api/notifications/posts?since={resume}")
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        contents = [item["content"] for item in items]
        assert contents[-1] == f"post {KEEP + 9}"
        assert contents == [f"post {i}" for i in range(KEEP + 10 - len(items), KEEP + 10)]
        # History too.
        assert c.get(f"/api/notifications/history?since={start}").status_code == 410
        assert c.get(f"/api/notifications/history?since={resume}").status_code == 200
        # The pruning shows in /metrics.
        pruned = "buddycloud_retention_pruned_rows_total"
        assert value(scrape(kept), pruned, table="events") > 0


def test_a_cursor_within_retention_is_answered_in_full(kept: Stack) -> None:
    user = unique("recent")
    with kept.account(user) as c:
        start = last(c)
        posts(c, user, KEEP + 5)
        pruned_past(kept, int(start))
        r = c.get("/api/notifications/posts?since=0")
        assert r.status_code == 410  # 0 is a cursor like any other: what followed was pruned
        within = int(last(c)) - 3
        r = c.get(f"/api/notifications/posts?since={within}")
        assert r.status_code == 200, r.text
        assert [i["content"] for i in r.json()["items"]] == [
            f"post {i}" for i in range(KEEP + 2, KEEP + 5)
        ]


def test_a_reader_who_kept_up_with_a_quiet_feed_is_never_told(kept: Stack) -> None:
    """Its cursor is far older than the oldest event kept, but nothing of its feed was pruned:
    a held long-poll times out as usual, history answers, a socket goes on."""
    quiet, busy = unique("quiet"), unique("busy")
    with kept.account(quiet) as q, kept.account(busy) as b:
        start = last(q)
        posts(b, busy, KEEP + 5)
        pruned_past(kept, int(start))
        r = q.get(f"/api/notifications/posts?since={start}", timeout=20)
        assert r.status_code == 200 and r.json() == {"last": start, "items": []}, r.text
        r = q.get(f"/api/notifications/history?since={start}")
        assert r.status_code == 200 and r.json()["items"] == [], r.text


def test_a_stream_from_a_pruned_cursor_gets_a_reset_then_what_is_kept(
    kept: Stack, bg: Background
) -> None:
    user = unique("sse")
    with kept.account(user) as c:
        start = last(c)
        posts(c, user, KEEP + 10)
        pruned_past(kept, int(start))
        stream = open_stream(bg, kept.url, "/api/notifications/posts", user, last_event_id=start)
        reset, first = take(bg, stream, 2)
        assert reset.name == "reset"
        resume = reset.json["last"]
        assert reset.id == resume and int(start) < int(resume)
        assert first.name == "post" and int(first.id or 0) > int(resume)
        r = c.get(f"/api/notifications/posts?since={resume}")
        kept_items = r.json()["items"] if r.status_code == 200 else None
        if kept_items is not None:  # (unless pruning moved on meanwhile)
            assert first.json == kept_items[0]
        post(c, user, "live")
        rest = take(bg, stream, int(last(c)) - int(first.id or 0))
        assert rest[-1].json["content"] == "live"
        ids = [int(e.id or 0) for e in [first, *rest]]
        assert ids == sorted(set(ids))
        stream.close()


def test_a_socket_from_a_pruned_cursor_gets_a_reset_frame(kept: Stack, bg: Background) -> None:
    user = unique("ws")
    with kept.account(user) as c:
        start = last(c)
        posts(c, user, KEEP + 10)
        pruned_past(kept, int(start))
        sock = Socket.of(bg, kept.url, user)
        sock.send(PRESENCE, {"since": start})
        (ack_name, ack), (reset_name, reset), (item_name, item) = sock.take(3)
        assert ack_name == PRESENCE and reset_name == RESET
        assert ack == reset and int(start) < int(reset["last"])
        assert item_name == "xmpp.buddycloud.push.item"
        assert int(item["cursor"]) > int(reset["last"])
        post(c, user, "live")
        frames = sock.take(int(last(c)) - int(item["cursor"]))
        assert frames[-1][1]["post"]["content"] == "live"
        assert all(name != RESET for name, _ in frames)
        bg.call(sock.ws.close())
        # A socket that kept up (since = the newest cursor) gets no reset.
        again = Socket.of(bg, kept.url, user)
        assert again.online(since=last(c)) == last(c)
        assert again.quiet(1.0) == []
        bg.call(again.ws.close())


def test_a_queue_whose_events_were_pruned_is_bad_event_queue_id(kept: Stack) -> None:
    idle, polled = Aloha(kept, unique("idle")), Aloha(kept, unique("polled"))
    idle_queue, polled_queue = idle.register(), polled.register()
    seen: list[int] = []
    with kept.client(idle.user) as i, kept.client(polled.user) as p:
        for n in range(KEEP + 5):
            post(i, idle.user, f"idle {n}")
            post(p, polled.user, f"polled {n}")
            answer = polled.call(
                "GET",
                "events",
                queue_id=polled_queue,
                last_event_id=seen[-1] if seen else -1,
                dont_block=True,
            )
            assert answer["result"] == "success", answer
            seen += [e["id"] for e in answer["events"]]
        pruned_past(kept, seen[0])
    answer = idle.call("GET", "events", queue_id=idle_queue, last_event_id=-1)
    assert answer["code"] == "BAD_EVENT_QUEUE_ID", answer
    assert idle.call("GET", "events", queue_id=idle_queue, last_event_id=-1)["code"] == (
        "BAD_EVENT_QUEUE_ID"
    )
    # The queue that kept up goes on.
    answer = polled.call(
        "GET", "events", queue_id=polled_queue, last_event_id=seen[-1], dont_block=True
    )
    assert answer["result"] == "success", answer
    assert len(seen) == KEEP + 5


# -- the soak ------------------------------------------------------------------------------

SOAK_SECONDS = 30
SOAK_RATE = 20  # posts a second
SOAK_FOLLOWERS = 10  # deliveries per post: theirs, the author's and the firehose's
SOAK_RETENTION = 6  # seconds


class Sizes:
    """The store's size, measured from outside the origin, by table: SQLite's pages in use (a
    read-only connection asks SQLite's dbstat; the file keeps freed pages for reuse), and
    PostgreSQL's relation sizes (on a connection of the test's own). PostgreSQL reuses the
    space of deleted rows once VACUUM has passed, which autovacuum does at most once a minute
    (its default naptime), longer than this soak: so the test runs VACUUM on the two pruned
    tables before each measure, as autovacuum would, and measures where that leads."""

    def __init__(self, backend: str, env: dict[str, str], data_dir: Path) -> None:
        self.backend, self.env, self.data_dir = backend, env, data_dir

    def measure(self) -> dict[str, int]:
        if self.backend == "sqlite":
            path = self.data_dir / "buddycloud.sqlite3"
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                rows = db.execute(
                    "SELECT coalesce(i.tbl_name, s.name), sum(s.pgsize) FROM dbstat s"
                    " LEFT JOIN sqlite_master i ON i.name = s.name GROUP BY 1"
                ).fetchall()
                (free,) = db.execute("PRAGMA freelist_count").fetchone()
                (page,) = db.execute("PRAGMA page_size").fetchone()
            db.close()
            sizes = dict(rows)
            return self._summed(sizes, path.stat().st_size, free * page)
        return asyncio.run(self._postgres())

    async def _postgres(self) -> dict[str, int]:
        conn = await asyncpg.connect(self.env["DATABASE_URL"])
        try:
            await conn.execute("VACUUM events, deliveries")
            rows = await conn.fetch(
                "SELECT relname, pg_total_relation_size(oid) FROM pg_class"
                " WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            )
            database = await conn.fetchval("SELECT pg_database_size(current_database())")
        finally:
            await conn.close()
        return self._summed({r[0]: r[1] for r in rows}, database, 0)

    @staticmethod
    def _summed(tables: dict[str, int], file: int, free: int) -> dict[str, int]:
        log = tables.get("events", 0) + tables.get("deliveries", 0)
        return {"log": log, "posts": tables.get("posts", 0), "file": file, "free": free}


def test_soak_with_a_short_retention_levels_off_and_a_reader_who_keeps_up_loses_nothing(
    backend: str, tmp_path: Path
) -> None:
    env = database_env(backend)
    data_dir = tmp_path / "data"
    with running(
        data_dir,
        RETENTION_SECONDS=str(SOAK_RETENTION),
        RETENTION_EVENTS="0",
        RETENTION_CHECK_SECONDS="1",
        HOLD_TIMEOUT="5",  # the reader's last hold ends soon after the last post
        **env,
    ) as stack:
        sizes = Sizes(backend, env, data_dir)
        writer = unique("soakwriter")
        stack.account(writer).close()
        readers = [unique("soakreader") for _ in range(SOAK_FOLLOWERS)]
        for reader in readers:
            with stack.account(reader) as r:
                follow(r, f"{writer}/posts")
        got: list[str] = []
        errors: list[str] = []
        stop = threading.Event()

        def read() -> None:
            """One follower long-polls on since=last the whole time, as a client keeps up."""
            with stack.client(readers[0]) as r:
                cursor = last(r)
                while not stop.is_set() or len(got) < len(sent):
                    try:
                        answer = r.get(f"/api/notifications/posts?since={cursor}", timeout=70)
                    except httpx.TransportError:  # a kept-alive connection closed under it
                        time.sleep(0.1)
                        continue  # a GET: asked again from the same cursor, as clients do
                    if answer.status_code in (500, 502):
                        time.sleep(0.1)
                        continue
                    if answer.status_code != 200:
                        errors.append(f"{answer.status_code} {answer.text}")
                        return
                    body = answer.json()
                    got.extend(item["id"] for item in body["items"])
                    cursor = body["last"]

        sent: list[str] = []
        reader_thread = threading.Thread(target=read, daemon=True)
        reader_thread.start()
        timeline: list[tuple[float, dict[str, int], int]] = []
        began = time.monotonic()
        next_measure = began
        with stack.client(writer) as w:
            while (elapsed := time.monotonic() - began) < SOAK_SECONDS:
                sent.append(post(w, writer, f"soak {len(sent)}")["id"])
                if time.monotonic() >= next_measure:
                    timeline.append((elapsed, sizes.measure(), len(sent)))
                    next_measure += 5
                time.sleep(max(0.0, began + len(sent) / SOAK_RATE - time.monotonic()))
        timeline.append((time.monotonic() - began, sizes.measure(), len(sent)))
        stop.set()
        reader_thread.join(90)
        retention = health(stack)["retention"]

    print(f"\n{backend}: {len(sent)} posts in {SOAK_SECONDS} s, kept {SOAK_RETENTION} s")
    for elapsed, size, posted in timeline:
        print(
            f"  {elapsed:5.1f} s  {posted:5d} posts  log {size['log'] / 1024:7.0f} kB"
            f"  posts {size['posts'] / 1024:6.0f} kB  file {size['file'] / 1024:7.0f} kB"
            f"  free {size['free'] / 1024:6.0f} kB"
        )
    print(f"  retention: {retention}")
    assert errors == [], errors
    assert got == sent  # every post once, in order: none lost to pruning
    assert retention["pruned_events"] > 0
    # The log grows for the first SOAK_RETENTION seconds, then holds: what was logged in the
    # last stretch is about what was pruned. (Posts, never pruned, grow all along.)
    grown = [size["log"] for elapsed, size, _ in timeline if elapsed > SOAK_RETENTION + 10]
    peak_early = max(size["log"] for elapsed, size, _ in timeline if elapsed <= SOAK_RETENTION + 10)
    assert grown and max(grown) <= 1.5 * peak_early, timeline
