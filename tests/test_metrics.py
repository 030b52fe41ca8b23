"""GET /metrics through the real run command: who may read it, and that each count moves when
the thing it counts happens (read with prometheus_client's own parser, as a scraper would)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import unique
from tests.databases import database_env
from tests.sse import EventStream
from tests.support import PASSWORD, TLS, Background, Holds, Stack, basic, running
from tests.test_posts_feed import last, post
from tests.test_publisher import recorder, wait_for

TOKEN = "a-metrics-token-of-some-length"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(stack: Stack, headers: dict[str, str] | None = None) -> Samples:
    r = httpx.get(stack.origin_url + "/metrics", verify=TLS, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_answer_straight_from_loopback_and_never_through_pushpin(stack: Stack) -> None:
    samples = scrape(stack)  # no login: straight from loopback
    assert value(samples, "buddycloud_http_requests_total", route="/metrics", status="200") >= 0
    # Through Pushpin the request also comes from 127.0.0.1, but signed: not loopback.
    proxied = httpx.get(stack.url + "/metrics", verify=TLS, timeout=10)
    assert proxied.status_code == 403
    assert proxied.json()["request_id"] == proxied.headers["x-request-id"]
    # So does a request that says another proxy forwarded it.
    forwarded = httpx.get(
        stack.origin_url + "/metrics",
        verify=TLS,
        headers={"X-Forwarded-For": "203.0.113.9"},
        timeout=10,
    )
    assert forwarded.status_code == 403


def test_requests_are_counted_by_route_template_not_by_path(stack: Stack) -> None:
    route = "/api/{channel}/content/{node}"
    before = scrape(stack)
    writer = unique("romeo")
    with stack.account(writer) as w, stack.client() as anonymous:
        assert w.get(f"/api/{writer}/content/posts").status_code == 200
        assert w.get(f"/api/{unique('nobody')}/content/posts").status_code == 404
        assert anonymous.get(f"/no/such/{writer}").status_code == 404
    after = scrape(stack)
    counted = "buddycloud_http_requests_total"
    for status, more in (("200", 1), ("404", 1)):
        grew = value(after, counted, route=route, status=status) - value(
            before, counted, route=route, status=status
        )
        assert grew == more, (status, grew)
    assert value(after, counted, route="unmatched", status="404") > value(
        before, counted, route="unmatched", status="404"
    )
    labels = {dict(key[1]).get("route", "") for key in after if key[0] == counted}
    assert not any(writer in route for route in labels), "a raw path became a label"


def test_holds_are_counted_by_feed_and_transport(stack: Stack, bg: Background) -> None:
    reader = unique("juliet")
    holds = "buddycloud_holds_total"
    before = scrape(stack)
    with stack.account(reader) as r, Holds(stack) as held:
        held.hold("posts", r.get, f"/api/notifications/posts?since={last(r)}")
        login = {"Authorization": basic(reader)}
        stream = bg.call(EventStream.open(stack.url, "/api/notifications/events", login))
        bg.call(socket_online(stack, login))
        after = scrape(stack)
        stream.close()
    for feed, transport in (("posts", "long-poll"), ("events", "stream"), ("socket", "websocket")):
        grew = value(after, holds, feed=feed, transport=transport) - value(
            before, holds, feed=feed, transport=transport
        )
        assert grew >= 1, (feed, transport)
    assert value(after, holds, feed="posts", transport="stream") == value(
        before, holds, feed="posts", transport="stream"
    )


async def socket_online(stack: Stack, login: dict[str, str]) -> None:
    """A socket that says it is online, and so is subscribed (held) on its channel."""
    url = stack.url.replace("http://", "ws://") + "/api/ws"
    async with websockets.connect(url, additional_headers=login, open_timeout=10) as ws:
        await ws.send(json.dumps(["xmpp.buddycloud.presence", {}]))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer[0] == "xmpp.buddycloud.presence"


def test_a_post_is_counted_in_store_calls_and_publishes(stack: Stack) -> None:
    before = scrape(stack)
    (target,) = {dict(k[1])["target"] for k in before if k[0] == "buddycloud_publish_lag_events"}
    writer = unique("romeo")
    with stack.account(writer) as w:
        post(w, writer, "counted")

    def published() -> bool:
        now = scrape(stack)
        grew = value(now, "buddycloud_publish_items_total", target=target) - value(
            before, "buddycloud_publish_items_total", target=target
        )
        return grew >= 2  # the writer's own feed and the firehose

    wait_for(published, 10)
    after = scrape(stack)
    calls = "buddycloud_store_call_seconds_count"
    assert value(after, calls, call="append_post") == value(before, calls, call="append_post") + 1
    assert value(after, "buddycloud_publish_batches_total", target=target) > value(
        before, "buddycloud_publish_batches_total", target=target
    )
    assert value(after, "buddycloud_publish_lag_events", target=target) == 0
    assert value(after, "buddycloud_publish_target_failing", target=target) == 0


def test_a_refusing_target_shows_failures_and_lag(tmp_path: Path, backend: str) -> None:
    with (
        recorder(failures=10**9, status=503) as target,
        running(tmp_path / "data", GRIP_URL=target.url, **database_env(backend)) as stack,
    ):
        writer = unique("romeo")
        with stack.account(writer) as w:
            for i in range(3):
                post(w, writer, f"post {i}")
        wait_for(lambda: len(target.attempts) >= 2, 10)
        samples = scrape(stack)
        assert value(samples, "buddycloud_publish_failures_total", target=target.url) >= 2
        assert value(samples, "buddycloud_publish_items_total", target=target.url) == 0
        assert value(samples, "buddycloud_publish_lag_events", target=target.url) >= 3
        assert value(samples, "buddycloud_publish_lag_seconds", target=target.url) > 0
        assert value(samples, "buddycloud_publish_target_failing", target=target.url) == 1
        target.failures = 0
        wait_for(
            lambda: value(scrape(stack), "buddycloud_publish_lag_events", target=target.url) == 0,
            15,
        )


def test_password_hashes_throttled_logins_and_open_queues(tmp_path: Path, backend: str) -> None:
    env = {"UNKNOWN_LOGINS_PER_ADDRESS": "1", **database_env(backend)}
    with running(tmp_path / "data", **env) as stack:
        user = unique("juliet")
        stack.account(user).close()
        with httpx.Client(verify=TLS, base_url=stack.url, timeout=10) as c:
            assert c.get("/api/account", auth=(user, "wrong password")).status_code == 401
            assert c.get("/api/account", auth=(user, PASSWORD)).status_code == 200
            for expected in (401, 429):  # the second unknown account is past the limit
                nobody = unique("nobody")
                assert c.get("/api/account", auth=(nobody, PASSWORD)).status_code == expected
            before = scrape(stack)
            r = c.post("/api/v1/register", auth=(user, PASSWORD), data={})
            assert r.status_code == 200, r.text
        samples = scrape(stack)
        hashes = "buddycloud_password_hashes_total"
        assert value(samples, hashes, purpose="account") == 1
        assert value(samples, hashes, purpose="login") == 2  # the wrong one, then the right one
        throttled = "buddycloud_logins_throttled_total"
        assert value(samples, throttled, limit="unknown logins per address") == 1
        assert value(samples, throttled, limit="login failures per address") == 0
        opened = "buddycloud_aloha_queues_open"
        assert value(samples, opened) == value(before, opened) + 1 == 1


def test_metrics_token_is_needed_from_anywhere_once_set(tmp_path: Path) -> None:
    with running(tmp_path / "data", METRICS_TOKEN=TOKEN) as stack:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": TOKEN}):
            r = httpx.get(stack.origin_url + "/metrics", verify=TLS, headers=headers, timeout=10)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["request_id"] == r.headers["x-request-id"]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert "buddycloud_http_requests_total" in scrape(stack, bearer).__repr__()
        # From anywhere: through Pushpin too.
        through = httpx.get(stack.url + "/metrics", verify=TLS, headers=bearer, timeout=10)
        assert through.status_code == 200
        assert "buddycloud_publish_lag_events" in through.text


def test_pushpins_own_metrics_answer_on_their_port(stack: Stack) -> None:
    port = stack.env["PUSHPIN_METRICS_PORT"]
    assert f"shows its metrics on 127.0.0.1:{port}" in stack.log()
    deadline = time.monotonic() + 5
    while True:  # a scraper's view: Pushpin's counters, under the pushpin_ prefix
        samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", verify=TLS, timeout=10).text)
        names = {name for name, _ in samples}
        if {"pushpin_message_received_total", "pushpin_connection_connected"} <= names:
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.2)


@pytest.mark.parametrize("sent", ["client-7f3a.9", "two words", "x" * 65])
def test_a_request_id_is_kept_when_sane_and_made_otherwise(stack: Stack, sent: str) -> None:
    for url in (stack.origin_url, stack.url):
        r = httpx.get(url + "/api/account", verify=TLS, headers={"X-Request-Id": sent}, timeout=10)
        assert r.status_code == 401
        rid = r.headers["x-request-id"]
        assert r.json()["request_id"] == rid
        assert (rid == sent) == (sent == "client-7f3a.9"), rid
    # Zulip's error shape carries it too.
    r = httpx.get(stack.origin_url + "/api/v1/events", verify=TLS, timeout=10)
    assert r.json()["request_id"] == r.headers["x-request-id"]
