"""The hold instruction stays within what Pushpin accepts, at the most a user may follow."""

from __future__ import annotations

from app.config import MAX_FOLLOWS_LIMIT
from app.grip import hold_response
from app.model import feed_body

# Pushpin 1.36 refuses an origin's answer to a request it holds past this many bytes.
PUSHPIN_MAX_ACCEPT_BODY = 100_000


def test_a_hold_on_the_most_nodes_a_user_may_follow_fits() -> None:
    # Worst case: nine-digit node ids, fifteen-digit event ids, CORS for a long origin.
    channels = [
        (f"n{999_999_999 - i}", str(999_999_999_999_999 - i)) for i in range(MAX_FOLLOWS_LIMIT)
    ]
    headers = {
        "Content-Type": "application/json",
        "Access-Control-Allow-Origin": "https://" + "a" * 200 + ".example",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "Location",
        "Vary": "Origin",
    }
    body = hold_response(channels, 55, feed_body(999_999_999_999_999, []), headers)
    assert len(body) < PUSHPIN_MAX_ACCEPT_BODY
