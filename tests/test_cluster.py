"""Several nodes (each a Pushpin and an origin) on one PostgreSQL database, as one service:
one publisher per target, taken over when its process dies; commits that finish out of id
order lose nothing; a client moves from node to node with its cursor."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import unique
from tests.databases import SHARED_SECRETS, end_connections
from tests.support import TLS, Holds, Stack, cluster, health, kill, pushpin_pids
from tests.test_aloha import Aloha
from tests.test_posts_feed import follow, last, post


def node_env(postgres_url: str, **extra: str) -> dict[str, str]:
    """What every node of these clusters is given: the database and the keys they share."""
    return {"DATABASE_URL": postgres_url, **SHARED_SECRETS, **extra}


def wait_for(predicate: Callable[[], object], timeout: float) -> float:
    """Seconds until ``predicate()`` held (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


def publishing(nodes: list[Stack]) -> dict[str, list[int]]:
    """For each publish target, which nodes (by index) publish to it."""
    found: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        if node.process is None:
            continue
        for target in health(node)["targets"]:
            found.setdefault(target["target"], [])
            if target["publishing"]:
                found[target["target"]].append(index)
    return found


def one_publisher_each(nodes: list[Stack]) -> bool:
    return all(len(who) == 1 for who in publishing(nodes).values())


def test_one_origin_publishes_to_each_target_and_another_takes_over_within_5s(
    tmp_path: Path, postgres_url: str
) -> None:
    # A publisher that only looked at the log every 30 s would miss every deadline below: the
    # commits made on the other origin must wake it.
    env = node_env(postgres_url, PUBLISH_POLL_SECONDS="30")
    with cluster(tmp_path, 2, **env) as nodes:
        wait_for(lambda: one_publisher_each(nodes), 5)
        targets = publishing(nodes)
        assert len(targets) == 2 and all(who == [0] for who in targets.values()), targets
        first, second = nodes
        writer, reader = unique("romeo"), unique("juliet")
        with first.account(writer), second.account(reader) as r:
            follow(r, f"{writer}/posts")
            # Posted on the node without the leases, held on the other node's Pushpin: the
            # commit woke the publisher in the first node's process, at once.
            with Holds(second) as holds, second.client(writer) as w2:
                held = holds.hold("posts", r.get, f"/api/notifications/posts?since={last(r)}")
                created = post(w2, writer, "made on the second node")
                answer = holds.published(held, timeout=2)
            assert [i["id"] for i in answer.json()["items"]] == [created["id"]]
            # Holds made on the second node just after posts: it heard of each publish, so
            # none went out before it knew the proxy had seen its prev-id.
            for i in range(5):
                with Holds(second) as holds, second.client(writer) as w2:
                    post(w2, writer, f"then held at once {i}")
                    held = holds.hold("posts", r.get, f"/api/notifications/posts?since={last(r)}")
                    created = post(w2, writer, f"and answered {i}")
                    assert (
                        holds.published(held, timeout=2).json()["items"][0]["id"] == created["id"]
                    )
            assert health(second)["holds_unconfirmed"] == 0

            # The first node's whole tree dies: the second takes both leases within 5 s.
            start = time.monotonic()
            first.kill_tree()
            taken = wait_for(lambda: one_publisher_each(nodes), 10)
            assert publishing(nodes) == {t: [1] for t in targets}
            assert time.monotonic() - start < 5, f"took over after {taken:.1f}s"
            # And publishes: a request held on its Pushpin gets the next post.
            with Holds(second) as holds, second.client(writer) as w2:
                held = holds.hold("posts", r.get, f"/api/notifications/posts?since={last(r)}")
                created = post(w2, writer, "after the first node died")
                answer = holds.published(held, timeout=2)
            assert [i["id"] for i in answer.json()["items"]] == [created["id"]]


def test_commits_that_finish_out_of_id_order_lose_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    """The first node's commits wait 1.5 s after the log hands them an id (a test-only
    setting): a post made meanwhile on the second node must not commit first, or a reader
    who saw it would move past the first post for good."""
    env = node_env(postgres_url, HOLD_TIMEOUT="5")
    with cluster(tmp_path, 2, **env) as nodes:
        slow, fast = nodes
        slow.stop()
        slow.env["COMMIT_DELAY_FOR_TESTS"] = "1.5"
        slow.start()
        writer, reader = unique("romeo"), unique("juliet")
        with fast.account(writer) as w, fast.account(reader) as r:
            follow(r, f"{writer}/posts")
            cursor = last(r)
            seen: list[dict[str, Any]] = []

            def read() -> None:
                # A reader looping on since=last on the fast node, as fast as answers come.
                since, deadline = cursor, time.monotonic() + 15
                with fast.client(reader) as c:
                    while time.monotonic() < deadline:
                        body = c.get(f"/api/notifications/posts?since={since}").json()
                        seen.extend(body["items"])
                        since = body["last"]
                        if len(seen) >= 2:
                            return

            with ThreadPoolExecutor(3) as pool, slow.client(writer) as ws:
                reading = pool.submit(read)
                started = time.monotonic()
                first = pool.submit(post, ws, writer, "first: its commit is held back")
                time.sleep(0.5)
                second = pool.submit(post, w, writer, "second: made while the first waits")
                first_id, second_id = first.result()["id"], second.result()["id"]
                reading.result(timeout=60)
            # The slow commit did wait: the positive control that the test made the race.
            assert time.monotonic() - started >= 1.5
            assert [item["id"] for item in seen] == [first_id, second_id]


def test_a_client_moves_between_nodes_with_its_cursor_and_misses_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    env = node_env(postgres_url)
    with cluster(tmp_path, 2, **env) as nodes:
        writer, reader = unique("romeo"), unique("juliet")
        with nodes[0].account(writer) as w, nodes[1].account(reader) as r:
            follow(r, f"{writer}/posts")
            since = last(r)
            sent: list[str] = []
            got: list[str] = []
            for i in range(6):
                sent.append(post(w, writer, f"post {i}")["id"])
                node = nodes[i % 2]  # each poll on the other node, with the cursor so far
                with httpx.Client(verify=TLS, base_url=node.url, auth=r.auth, timeout=30) as c:
                    body = c.get(f"/api/notifications/posts?since={since}").json()
                got.extend(item["id"] for item in body["items"])
                since = body["last"]
            assert got == sent


def test_a_pushpin_fails_over_to_another_origin_when_its_own_is_down(
    tmp_path: Path, postgres_url: str
) -> None:
    env = node_env(postgres_url)
    with cluster(tmp_path, 2, **env) as nodes:
        first, second = nodes
        reader = unique("juliet")
        with first.account(reader) as r:
            assert r.get("/api/notifications/posts").status_code == 200
            # The first node's origin dies; its Pushpin lives on (its own session).
            assert first.process is not None
            first.process.kill()
            first.process.wait()
            first.process = None
            before = health(second)["feed_requests"].get("posts", 0)
            try:
                for _ in range(5):  # each request, not just the first, finds the live origin
                    answer = r.get("/api/notifications/posts")
                    assert answer.status_code == 200, answer.text
            finally:
                kill(pushpin_pids(first.data_dir))
            assert health(second)["feed_requests"].get("posts", 0) == before + 5


def test_limits_queues_and_keys_agree_across_origins(tmp_path: Path, postgres_url: str) -> None:
    """What must agree across origins does: a login limit counts failures made on either
    node, an Aloha queue registered on one is polled on the other, and a login works on both
    (one SECRET_KEY and GRIP_SIG_KEY)."""
    env = node_env(postgres_url, LOGIN_FAILURES_PER_ACCOUNT="4")
    with cluster(tmp_path, 2, **env) as nodes:
        user = unique("juliet")
        nodes[0].account(user).close()
        statuses = []
        for i in range(6):  # wrong passwords, alternating nodes
            with httpx.Client(verify=TLS, base_url=nodes[i % 2].url, timeout=30) as c:
                r = c.get("/api/account", auth=(user, f"wrong password {i}"))
            statuses.append(r.status_code)
        assert statuses == [401] * 4 + [429] * 2

        reader = Aloha(nodes[0], unique("romeo"))
        queue = reader.register()
        elsewhere = Aloha(nodes[1], reader.user, create=False)
        sent = elsewhere.send(reader.user, "sent on the second node")
        assert [e["message"]["id"] for e in elsewhere.events(queue)] == [sent]


def test_origins_recover_when_their_database_connections_are_cut(
    tmp_path: Path, postgres_url: str
) -> None:
    """As after a database restart or failover: every connection the origins had is ended.
    They connect again and listen again: a post made on the second node still wakes the
    publisher in the first at once (it looks at the log on its own only every 30 s here), and
    each target has one publisher again."""
    env = node_env(postgres_url, PUBLISH_POLL_SECONDS="30")
    with cluster(tmp_path, 2, **env) as nodes:
        writer, reader = unique("romeo"), unique("juliet")
        with nodes[0].account(writer), nodes[0].account(reader) as r:
            follow(r, f"{writer}/posts")
            ended = end_connections(postgres_url)
            assert ended >= 6  # each origin's pool, listener and leases
            time.sleep(1.5)  # the origins notice, and their publishers check their leases
            wait_for(lambda: one_publisher_each(nodes), 5)
            # Whichever origin took a target's lease again, the post is made on the other one
            # and held on that target's Pushpin: only the commit's NOTIFY can wake the publisher.
            label, (leader,) = next(iter(publishing(nodes).items()))
            (held_on,) = [n for n in nodes if label.endswith(n.env["PUSHPIN_PUBLISH_PORT"])]
            with Holds(held_on) as holds, nodes[1 - leader].client(writer) as w:
                held = holds.hold("posts", r.get, f"/api/notifications/posts?since={last(r)}")
                created = post(w, writer, "after the cut")
                answer = holds.published(held, timeout=3)
            assert [i["id"] for i in answer.json()["items"]] == [created["id"]]
            assert "listens for commits: connecting again" in nodes[leader].log()


def test_every_pushpin_gets_every_item_and_clients_of_a_killed_one_move_on(
    tmp_path: Path, postgres_url: str
) -> None:
    env = node_env(postgres_url)
    with cluster(tmp_path, 2, **env) as nodes:
        writer, reader = unique("romeo"), unique("juliet")
        with nodes[1].account(writer) as w, nodes[1].account(reader) as r:
            follow(r, f"{writer}/posts")
            since = last(r)
            # One request held on each node's Pushpin: one post answers both, by a publish.
            with Holds(nodes[0]) as on_first, Holds(nodes[1]) as on_second:
                url = f"/api/notifications/posts?since={since}"
                with httpx.Client(verify=TLS, base_url=nodes[0].url, auth=r.auth, timeout=30) as r0:
                    held = [
                        on_first.hold("posts", r0.get, url),
                        on_second.hold("posts", r.get, url),
                    ]
                    created = post(w, writer, "to every Pushpin")
                    answers = [on_first.published(held[0]), on_second.published(held[1])]
            assert [[i["id"] for i in a.json()["items"]] for a in answers] == [[created["id"]]] * 2
            since = answers[0].json()["last"]

            # The first node's Pushpin dies with a request held in it; posts go on meanwhile.
            with (
                ThreadPoolExecutor(1) as pool,
                httpx.Client(verify=TLS, base_url=nodes[0].url, auth=r.auth, timeout=30) as r0,
            ):
                orphan = pool.submit(r0.get, f"/api/notifications/posts?since={since}")
                time.sleep(1)
                kill(pushpin_pids(nodes[0].data_dir))
                sent = [
                    post(w, writer, f"while the first Pushpin is down {i}")["id"] for i in range(3)
                ]
                try:
                    orphan.result(timeout=10)
                    lost_request = False
                except httpx.HTTPError:
                    lost_request = True
            assert lost_request, "positive control: the held request died with its Pushpin"
            # Its client moves to the other node with its cursor, and misses nothing.
            got: list[str] = []
            while len(got) < len(sent):
                body = r.get(f"/api/notifications/posts?since={since}").json()
                got.extend(item["id"] for item in body["items"])
                since = body["last"]
            assert got == sent
