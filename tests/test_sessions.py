"""Browser logins by session cookie, through the real run command (Pushpin and origin) on both
backends: what the cookie is, what it logs in, how it ends, which writes it may make without
a page of ours behind them, and that a session holds across nodes on one PostgreSQL database.
Then the sessions themselves (app/sessions.py) on a real store of each backend: lookups shared
and cached, and ended at once on the node that ends them, however they race; expiry; a bound
per account.

Every request here is sent on its own (``send``), so no cookie jar carries a cookie along: a
request carries exactly the cookie and headers the test gives it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from app.api.openapi import SPEC
from tests.conftest import ALLOWED_ORIGIN, unique
from tests.support import PASSWORD, TLS, Holds, Stack, cluster
from tests.test_cluster import node_env
from tests.test_posts_feed import last
from tests.test_security import token as grip_sig

FOREIGN = "https://evil.example"
DEFAULT_SESSION_SECONDS = 14 * 86_400
DEFAULT_CACHE_SECONDS = 5


def send(
    base: str,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One request on a client of its own, with the session ``cookie`` if given."""
    headers = dict(headers or {})
    if cookie is not None:
        headers["Cookie"] = f"session={cookie}"
    with httpx.Client(verify=TLS, base_url=base, timeout=30) as c:
        return c.request(method, path, auth=auth, headers=headers, **kwargs)


def cookie_attributes(response: httpx.Response) -> dict[str, str]:
    """The Set-Cookie of ``response``: its name and value as ``session``, then its attributes
    (names lower-cased; a flag maps to "")."""
    (header,) = response.headers.get_list("set-cookie")
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    assert name == "session", header
    attributes = {"session": value}
    for part in rest:
        key, _, val = part.partition("=")
        attributes[key.lower()] = val
    return attributes


def login(base: str, user: str, secret: str = PASSWORD, **kwargs: Any) -> str:
    """Log ``user`` in with Basic; the session cookie's value."""
    r = send(base, "POST", "/api/session", auth=(user, secret), **kwargs)
    assert r.status_code == 200, r.text
    assert r.json() == {"username": user}
    return cookie_attributes(r)["session"]


def posts_of(stack: Stack, user: str) -> list[str]:
    """The contents of ``user``'s channel, newest first, as the API lists them (Basic)."""
    r = send(stack.url, "GET", f"/api/{user}/content/posts", auth=(user, PASSWORD))
    assert r.status_code == 200, r.text
    return [p["content"] for p in r.json()]


def test_a_login_sets_an_http_only_strict_cookie_that_logs_feeds_in(
    stack: Stack, holds: Holds
) -> None:
    user = unique("juliet")
    with stack.account(user) as basic:
        r = send(stack.url, "POST", "/api/session", auth=(user, PASSWORD))
        assert r.status_code == 200 and r.json() == {"username": user}
        assert r.headers["cache-control"] == "no-store"
        cookie = cookie_attributes(r)
        assert cookie["httponly"] == "" and cookie["samesite"] == "Strict"
        assert cookie["path"] == "/" and cookie["max-age"] == str(DEFAULT_SESSION_SECONDS)
        assert "secure" not in cookie  # it came over http
        assert "domain" not in cookie  # this host only
        token = cookie["session"]
        assert len(token) == 43 and PASSWORD not in token

        # The cookie alone logs in: the feed answers the cursor, the account its owner.
        r = send(stack.url, "GET", "/api/notifications/posts", cookie=token)
        assert r.status_code == 200, r.text
        assert r.json() == {"last": last(basic), "items": []}
        assert send(stack.url, "GET", "/api/account", cookie=token).json()["username"] == user
        # A long-poll with the cookie is held by Pushpin, and gets the next post.
        path = f"/api/notifications/posts?since={last(basic)}"
        held = holds.hold("posts", send, stack.url, "GET", path, cookie=token)
        r = basic.post(f"/api/{user}/content/posts", json={"content": "by the cookie's feed"})
        assert r.status_code == 201, r.text
        assert [i["content"] for i in holds.published(held).json()["items"]] == [
            "by the cookie's feed"
        ]

        # The API key logs in too, as with Basic anywhere.
        api_key = basic.get("/api/account").json()["api_key"]
        other = login(stack.url, user, api_key)
        assert other != token
        assert send(stack.url, "GET", "/api/subscribed", cookie=other).status_code == 200


def test_wrong_credentials_set_no_cookie(stack: Stack) -> None:
    user = unique("juliet")
    stack.account(user).close()
    for auth in ((user, "wrong password"), (unique("nobody"), PASSWORD)):
        r = send(stack.url, "POST", "/api/session", auth=auth)
        assert r.status_code == 401, r.text
        assert "set-cookie" not in r.headers
        assert r.headers["www-authenticate"].startswith("Basic")
    # Nothing but Basic logs in: not credentials in the URL, nor in a body.
    credentials = {"username": user, "password": PASSWORD}
    for r in (
        send(stack.url, "POST", "/api/session", params=credentials),
        send(stack.url, "POST", "/api/session", json=credentials),
    ):
        assert r.status_code == 401 and "set-cookie" not in r.headers, r.text
    # Nor a cookie: a session is made from credentials, not from another session.
    token = login(stack.url, user)
    r = send(stack.url, "POST", "/api/session", cookie=token, headers={"Origin": stack.url})
    assert r.status_code == 401 and "set-cookie" not in r.headers
    # A cookie no login made logs nothing in.
    for forged in ("x" * 43, "", "not a token", token[:-1]):
        r = send(stack.url, "GET", "/api/account", cookie=forged)
        assert r.status_code == 401, forged


def test_a_logout_ends_the_session_and_a_kept_cookie_is_refused(stack: Stack) -> None:
    user = unique("juliet")
    stack.account(user).close()
    token = login(stack.url, user)
    assert send(stack.url, "GET", "/api/notifications/posts", cookie=token).status_code == 200

    # From a page elsewhere, the logout is refused, and the session lives on.
    r = send(stack.url, "DELETE", "/api/session", cookie=token, headers={"Origin": FOREIGN})
    assert r.status_code == 403 and "error" in r.json()
    assert send(stack.url, "GET", "/api/account", cookie=token).status_code == 200

    r = send(stack.url, "DELETE", "/api/session", cookie=token, headers={"Origin": stack.url})
    assert r.status_code == 204
    cleared = cookie_attributes(r)
    assert cleared["session"] == "" and cleared["max-age"] == "0"
    assert cleared["path"] == "/" and cleared["httponly"] == ""
    # A copy of the cookie kept from before is refused, for reading and for writing.
    r = send(stack.url, "GET", "/api/notifications/posts", cookie=token)
    assert r.status_code == 401 and "session has ended" in r.json()["error"]
    r = send(
        stack.url,
        "POST",
        f"/api/{user}/content/posts",
        cookie=token,
        headers={"Origin": stack.url},
        json={"content": "after the logout"},
    )
    assert r.status_code == 401
    assert posts_of(stack, user) == []
    # Logging out again, or with no session, is no error.
    page = {"Origin": stack.url}
    assert send(stack.url, "DELETE", "/api/session", cookie=token, headers=page).status_code == 204
    assert send(stack.url, "DELETE", "/api/session").status_code == 204

    # A new login from a browser that holds a session ends that one.
    first = login(stack.url, user)
    second = login(stack.url, user, headers={"Cookie": f"session={first}"})
    assert send(stack.url, "GET", "/api/account", cookie=first).status_code == 401
    assert send(stack.url, "GET", "/api/account", cookie=second).status_code == 200


def test_a_change_by_the_cookie_alone_must_come_from_our_page(stack: Stack) -> None:
    user, other = unique("juliet"), unique("romeo")
    stack.account(user).close()
    stack.account(other).close()
    token = login(stack.url, user)
    path = f"/api/{user}/content/posts"

    def create(content: str, **kwargs: Any) -> httpx.Response:
        return send(stack.url, "POST", path, json={"content": content}, **kwargs)

    refused = {
        "from another site": {"Origin": FOREIGN},
        "with no Origin nor Referer": {},
        "from a sandboxed page": {"Origin": "null"},
        "from a page elsewhere, by its Referer": {"Referer": f"{FOREIGN}/page"},
        "from our host over https, which the page was not": {
            "Origin": stack.url.replace("http:", "https:")
        },
        # Pushpin writes X-Forwarded-Proto itself: a client's claim changes nothing.
        "claiming https to the proxy": {
            "Origin": stack.url.replace("http:", "https:"),
            "X-Forwarded-Proto": "https",
        },
        "from a sibling port": {"Origin": "http://127.0.0.1:1"},
    }
    for why, headers in refused.items():
        r = create(why, cookie=token, headers=headers)
        assert r.status_code == 403, (why, r.text)
        assert r.headers["content-type"] == "application/json" and r.json()["error"], why
    # Nothing was stored, as the API shows.
    assert posts_of(stack, user) == []

    # The positive controls: from our page (by Origin, or by Referer), or from a configured
    # browser origin, the same request goes through.
    allowed = {
        "same origin": {"Origin": stack.url},
        "same origin, by Referer": {"Referer": f"{stack.url}/app/index.html?x=1"},
        "a configured origin": {"Origin": ALLOWED_ORIGIN},
    }
    for why, headers in allowed.items():
        r = create(why, cookie=token, headers=headers)
        assert r.status_code == 201, (why, r.text)
        assert r.json()["author"] == user
    # Reads are not checked: SameSite keeps the cookie from other sites' requests.
    r = send(stack.url, "GET", path, cookie=token, headers={"Origin": FOREIGN})
    assert r.status_code == 200

    # Basic needs no Origin, from anywhere; and Basic wins over the cookie.
    assert create("by Basic", auth=(user, PASSWORD)).status_code == 201
    r = create("by Basic, elsewhere", auth=(user, PASSWORD), headers={"Origin": FOREIGN})
    assert r.status_code == 201
    r = send(
        stack.url,
        "POST",
        f"/api/{other}/content/posts",
        json={"content": "Basic wins"},
        cookie=token,
        auth=(other, PASSWORD),
        headers={"Origin": FOREIGN},
    )
    assert r.status_code == 201 and r.json()["author"] == other
    r = create("a bad Basic", cookie=token, auth=(user, "wrong"), headers={"Origin": stack.url})
    assert r.status_code == 401
    assert posts_of(stack, user) == [
        "by Basic, elsewhere",
        "by Basic",
        "a configured origin",
        "same origin, by Referer",
        "same origin",
    ]


def test_the_cookie_is_secure_when_the_proxy_says_https(stack: Stack) -> None:
    """Straight to the origin, as a proxy that took the client's https would send it: only a
    request with a valid Grip-Sig is believed about the scheme."""
    user = unique("juliet")
    stack.account(user).close()
    signed = {"Grip-Sig": grip_sig(stack.sig_key), "X-Forwarded-Proto": "https"}
    r = send(stack.origin_url, "POST", "/api/session", auth=(user, PASSWORD), headers=signed)
    assert r.status_code == 200
    cookie = cookie_attributes(r)
    assert cookie["secure"] == "" and cookie["samesite"] == "Strict"
    # Its page is https://<the host it asked>: the origin of a change is checked against that.
    token, host = cookie["session"], stack.origin_url.removeprefix("http://")
    path = f"/api/{user}/content/posts"
    for page, status in ((f"http://{host}", 403), (f"https://{host}", 201)):
        r = send(
            stack.origin_url,
            "POST",
            path,
            cookie=token,
            headers={**signed, "Origin": page},
            json={"content": f"from {page}"},
        )
        assert r.status_code == status, (page, r.text)
    unsigned = {"X-Forwarded-Proto": "https"}
    r = send(stack.origin_url, "POST", "/api/session", auth=(user, PASSWORD), headers=unsigned)
    assert "secure" not in cookie_attributes(r)
    r = send(stack.origin_url, "DELETE", "/api/session", headers=signed)
    assert cookie_attributes(r)["secure"] == ""  # cleared as it was set


def test_a_session_holds_on_every_node_and_ends_on_every_node(
    tmp_path: Path, postgres_url: str
) -> None:
    with cluster(tmp_path, 2, **node_env(postgres_url)) as (first, second):
        user = unique("juliet")
        first.account(user).close()
        token = login(first.url, user)
        # Made on the first node, it logs in on the second (which now has it cached).
        for node in (first, second):
            r = send(node.url, "GET", "/api/notifications/posts", cookie=token)
            assert r.status_code == 200, r.text
        r = send(
            second.url,
            "POST",
            f"/api/{user}/content/posts",
            cookie=token,
            headers={"Origin": second.url},
            json={"content": "on the second node"},
        )
        assert r.status_code == 201, r.text

        r = send(first.url, "DELETE", "/api/session", cookie=token, headers={"Origin": first.url})
        ended = time.monotonic()
        assert r.status_code == 204
        # Refused at once on the node that ended it; on the other within its cache's life.
        assert send(first.url, "GET", "/api/account", cookie=token).status_code == 401
        while send(second.url, "GET", "/api/account", cookie=token).status_code == 200:
            assert time.monotonic() - ended < DEFAULT_CACHE_SECONDS + 1, "still logged in"
            time.sleep(0.1)
        for node in (first, second):
            assert send(node.url, "GET", "/api/account", cookie=token).status_code == 401


def test_the_api_takes_no_credential_in_a_url() -> None:
    credentials = {"password", "api_key", "key", "token", "session", "secret", "username"}
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            parameters = operation if method == "parameters" else operation.get("parameters", [])
            for parameter in parameters:
                if parameter["in"] in ("query", "path"):
                    assert parameter["name"].lower() not in credentials, (path, method)
