"""Publishing over TLS with a token, as to Fastly Fanout's publish API: the run command
publishes to its own Pushpin through a real TLS front (nginx, with a certificate from an
authority the test makes and the origin is told to trust with GRIP_CA_FILE), which checks the
bearer token as Fastly does. What Fastly itself does beyond that cannot be run here (README,
"Behind Fastly Fanout")."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import unique
from tests.support import Holds, Stack, health
from tests.test_posts_feed import last, post
from tests.test_publisher import wait_for
from tests.test_refusals import health_answer
from tests.tls_front import TlsFront

TOKEN = "the-api-token"


def test_posts_reach_held_clients_over_tls_and_a_refused_token_is_retried(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "data", env={"HEALTH_PUBLISH_SECONDS": "1"})
    front = TlsFront(tmp_path / "front", int(stack.env["PUSHPIN_PUBLISH_PORT"]), TOKEN).start()
    stack.env["GRIP_URL"] = f"{front.grip_base}?key={TOKEN}"  # Fastly's form: the token as key
    stack.env["GRIP_CA_FILE"] = str(front.certificates.ca)
    try:
        stack.start()
        writer = unique("romeo")
        with stack.account(writer) as w, Holds(stack) as holds:
            held = holds.hold("posts", w.get, f"/api/notifications/posts?since={last(w)}")
            first = post(w, writer, "over TLS, with the token")
            answer = holds.published(held).json()
            assert answer["items"] == [first]

            # The token is revoked: the post waits in the log, the publisher retries it, and
            # /health says so (503 once nothing was accepted for HEALTH_PUBLISH_SECONDS).
            front.reload("another token")
            path = f"/api/notifications/posts?since={answer['last']}"
            held = holds.hold("posts", w.get, path)
            second = post(w, writer, "while the token is refused")
            wait_for(lambda: health_answer(stack).status_code == 503, 10)
            # A publish may still be in flight (on a connection nginx's old worker had kept
            # alive, until the publish timeout): failing shows once it is refused.
            wait_for(lambda: health(stack)["targets"][0]["failing"], 10)
            (target,) = health(stack)["targets"]
            assert target["failing"] and target["stalled"], target
            assert target["lag_items"] == 2  # the writer's feed and the firehose
            assert target["target"] == front.grip_base  # and no token in it
            assert TOKEN not in json.dumps(health(stack)) and TOKEN not in stack.log()
            assert "HTTP 401: wrong token" in stack.log()
            assert not held.done()

            # Accepted again: the same post reaches the same held request, published.
            front.reload(TOKEN)
            assert holds.published(held, timeout=15).json()["items"] == [second]
            wait_for(lambda: health_answer(stack).status_code == 200, 10)
            assert health(stack)["targets"][0]["lag_items"] == 0
    finally:
        if stack.process is not None:
            stack.stop()
        front.stop()
