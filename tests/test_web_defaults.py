"""Safe defaults on the web: `*` never comes with credentials, configured origins match
exactly, and no header of a request is copied into a redirect."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import ALLOWED_ORIGIN, unique
from tests.support import TLS, Holds, Stack, running
from tests.test_posts_feed import follow, last, post


def cors(response: httpx.Response) -> tuple[str | None, str | None]:
    return (
        response.headers.get("access-control-allow-origin"),
        response.headers.get("access-control-allow-credentials"),
    )


def test_any_origin_never_comes_with_credentials(tmp_path: Path) -> None:
    with running(tmp_path / "data", CORS_ORIGINS="*") as stack:
        reader, writer = unique("juliet"), unique("romeo")
        with stack.account(reader) as r, stack.account(writer) as w:
            follow(r, f"{writer}/posts")
            for origin in ("https://anyone.example", "null"):
                answer = r.get("/api/subscribed", headers={"Origin": origin})
                assert answer.status_code == 200
                assert cors(answer) == ("*", None), origin
            preflight = r.options(
                "/api/subscribed",
                headers={"Origin": "null", "Access-Control-Request-Method": "POST"},
            )
            assert cors(preflight) == ("*", None)
            # A held answer carries the same headers, given by the origin to Pushpin.
            since = last(r)
            with Holds(stack) as holds:
                held = holds.hold(
                    "posts",
                    r.get,
                    f"/api/notifications/posts?since={since}",
                    headers={"Origin": "https://anyone.example"},
                )
                created = post(w, writer, "to any page, without credentials")
                answer = holds.published(held)
            assert answer.json()["items"] == [created]
            assert cors(answer) == ("*", None)


def test_configured_origins_match_exactly(stack: Stack) -> None:
    for origin in (
        f"{ALLOWED_ORIGIN}.evil.example",
        ALLOWED_ORIGIN.upper(),
        ALLOWED_ORIGIN + "/",
        "null",
        ALLOWED_ORIGIN.replace("https", "http"),
    ):
        answer = httpx.get(f"{stack.url}/health", verify=TLS, headers={"Origin": origin})
        # (Starlette sends Allow-Credentials to every origin; without Allow-Origin a browser
        # shows the page nothing.)
        assert cors(answer)[0] is None, origin
    # Positive control: the configured origin itself, with credentials.
    answer = httpx.get(f"{stack.url}/health", verify=TLS, headers={"Origin": ALLOWED_ORIGIN})
    assert cors(answer) == (ALLOWED_ORIGIN, "true")


def test_no_request_header_is_copied_into_a_redirect(stack: Stack) -> None:
    for base in (stack.url, stack.origin_url):
        answer = httpx.get(
            f"{base}/api/notifications/posts/",
            verify=TLS,
            headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        )
        assert answer.status_code == 404, base
        assert "location" not in answer.headers
        assert answer.json()["error"] == "no such endpoint"
    # Positive control: the path without the slash is the endpoint.
    assert httpx.get(f"{stack.url}/api/notifications/posts", verify=TLS).status_code == 401
