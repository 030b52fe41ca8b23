"""The page at ``/`` in a real browser (Debian's chromium, driven by Playwright) through a real
Pushpin: two people sign up, one follows the other, a post shows on the other's page within a
second; Pushpin is killed and comes back under them, and what was posted meanwhile shows once.

Screenshots go to $PAGE_SCREENSHOTS (default: a temporary folder), never into the repository.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import unique
from tests.support import PASSWORD, Stack, kill, pushpin_pids

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("PAGE_SCREENSHOTS") or tempfile.mkdtemp(prefix="page-shots-"))


@pytest.fixture
def page_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path / "data").start()
    yield stack
    stack.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # As root chromium needs --no-sandbox; Playwright's own browser download is not used.
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def sign_up(browser: Browser, url: str, user: str) -> Page:
    page = browser.new_context().new_page()
    page.goto(url + "/")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("#signup-button")
    page.wait_for_selector("#status.live", timeout=10_000)
    assert page.inner_text("#who") == user
    return page


def items(page: Page, feed: str) -> list[str]:
    return page.locator(f"#{feed} li .text").all_inner_texts()


def wait_for_item(page: Page, feed: str, text: str, timeout_ms: float) -> None:
    page.locator(f"#{feed} li .text", has_text=text).first.wait_for(timeout=timeout_ms)


def test_two_people_see_each_others_posts_live_and_after_pushpin_restarts(
    page_stack: Stack, browser: Browser
) -> None:
    alice, bob = unique("alice"), unique("bob")
    a = sign_up(browser, page_stack.url, alice)
    b = sign_up(browser, page_stack.url, bob)
    # No password in any URL the pages loaded.
    assert PASSWORD not in a.url and PASSWORD not in b.url

    b.fill("#follow-channel", alice)
    b.click("#follow-button")
    # The page empties the field once the follow is stored (an error would stay in it).
    expect(b.locator("#follow-channel")).to_have_value("")
    assert b.inner_text("#error") == ""

    a.fill("#post-content", "hello from alice")
    began = time.monotonic()
    a.click("#post-button")
    wait_for_item(b, "posts", "hello from alice", 1000)  # within a second
    shown_after = time.monotonic() - began
    wait_for_item(a, "posts", "hello from alice", 1000)
    wait_for_item(b, "firehose", "hello from alice", 2000)

    # A follow request to a private channel shows in its owner's events.
    topic = unique("topic")
    with page_stack.client(alice) as api:
        assert api.post(f"/api/{topic}", json={"access_model": "authorize"}).status_code == 201
    b.fill("#follow-channel", topic)
    b.click("#follow-button")
    wait_for_item(a, "events", f"{bob} asks to follow {topic}/posts", 3000)
    a.screenshot(path=str(SHOTS / "alice-live.png"), full_page=True)
    b.screenshot(path=str(SHOTS / "bob-live.png"), full_page=True)

    # Pushpin dies under both pages; the run command starts it again. What is posted
    # meanwhile (straight to the origin) shows once on each page when its streams are back.
    kill(pushpin_pids(page_stack.data_dir))
    b.wait_for_selector("#status.reconnecting", timeout=10_000)
    b.screenshot(path=str(SHOTS / "bob-reconnecting.png"), full_page=True)
    with page_stack.client(alice, origin=True) as direct:
        for n in range(3):
            r = direct.post(f"/api/{alice}/content/posts", json={"content": f"missed {n}"})
            assert r.status_code == 201, r.text
    for n in range(3):
        wait_for_item(b, "posts", f"missed {n}", 30_000)
    b.wait_for_selector("#status.live", timeout=30_000)
    time.sleep(1.0)  # anything doubled would have come by now
    b.screenshot(path=str(SHOTS / "bob-after-restart.png"), full_page=True)
    assert items(b, "posts") == ["missed 2", "missed 1", "missed 0", "hello from alice"]
    assert items(a, "posts") == ["missed 2", "missed 1", "missed 0", "hello from alice"]
    print(
        f"post shown on the other page {shown_after * 1000:.0f} ms after the click; "
        f"screenshots in {SHOTS}"
    )


def test_the_page_needs_no_build_and_sends_no_credentials_in_urls(page_stack: Stack) -> None:
    with page_stack.client() as c:
        page = c.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = c.get("/page.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        # Logins go in an Authorization header to /api/session, never in a URL.
        assert '"/api/session"' in script.text and "Authorization: basic(" in script.text
        assert "?password" not in script.text and "password=" not in script.text
