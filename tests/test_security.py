"""Grip-Sig, Grip-Last and failed-login throttling."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import jwt
import pytest

from app.accounts import FAILURES_PER_ACCOUNT, FAILURES_PER_ADDRESS
from app.config import ConfigError, Settings
from app.grip import is_signed
from tests.conftest import unique
from tests.support import PASSWORD, Stack, running
from tests.test_posts_feed import last

KEY = "k" * 32


def token(key: str = KEY, iss: str = "pushpin", exp: float | None = None) -> str:
    claims = {"iss": iss, "exp": int(time.time() + 60 if exp is None else exp)}
    return jwt.encode(claims, key.encode(), "HS256")


def test_grip_sig_accepts_only_an_unexpired_token_from_the_issuer_with_the_key() -> None:
    assert is_signed(token(), KEY, "pushpin")
    assert not is_signed(None, KEY, "pushpin")
    assert not is_signed("", KEY, "pushpin")
    assert not is_signed("garbage", KEY, "pushpin")
    assert not is_signed(token(exp=time.time() - 10), KEY, "pushpin")  # expired
    assert not is_signed(token(iss="someone-else"), KEY, "pushpin")  # wrong issuer
    assert not is_signed(token(key="x" * 32), KEY, "pushpin")  # another key
    header, _payload, signature = token().split(".")
    forged = jwt.encode({"iss": "pushpin", "exp": int(time.time() + 999)}, "y" * 32, "HS256")
    assert not is_signed(f"{header}.{forged.split('.')[1]}.{signature}", KEY, "pushpin")
    unsigned = jwt.encode({"iss": "pushpin", "exp": int(time.time() + 60)}, None, "none")
    assert not is_signed(unsigned, KEY, "pushpin")


def test_the_signing_key_is_generated_once_and_must_be_long(tmp_path: Path) -> None:
    first = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert len(first.grip_sig_key.encode()) >= 32
    assert (tmp_path / "grip_sig_key").stat().st_mode & 0o777 == 0o600
    assert Settings.from_env({"DATA_DIR": str(tmp_path)}).grip_sig_key == first.grip_sig_key
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"DATA_DIR": str(tmp_path), "GRIP_SIG_KEY": "short"})


def test_only_requests_signed_by_pushpin_are_held(stack: Stack) -> None:
    key = (stack.data_dir / "grip_sig_key").read_text().strip()
    user = unique("juliet")
    with stack.account(user) as c, stack.client(user, origin=True) as direct:
        path = f"/api/notifications/posts?since={last(c)}"
        held = direct.get(path, headers={"Grip-Sig": token(key)})
        assert held.status_code == 200
        assert held.headers["content-type"] == "application/grip-instruct"
        assert "grip-link" not in held.headers  # see docs/design.md: it lost deliveries
        assert "hold" in held.json()
        header, _payload, signature = token(key).split(".")
        for sig in (
            None,
            token(key, exp=time.time() - 5),
            token(key, iss="intruder"),
            token("z" * 40),
            f"{header}.{token(key, exp=time.time() + 9999).split('.')[1]}.{signature}",
        ):
            r = direct.get(path, headers={"Grip-Sig": sig} if sig else {})
            assert r.status_code == 501, sig
            assert stack.url in r.json()["error"]


def test_a_grip_last_from_a_client_is_never_trusted(stack: Stack) -> None:
    key = (stack.data_dir / "grip_sig_key").read_text().strip()
    user = unique("juliet")
    with stack.account(user) as c, stack.client(user, origin=True) as direct:
        since = last(c)
        lie = {"Grip-Last": f"node:{user}/posts; last-id=999999999"}
        honest = direct.get(
            f"/api/notifications/posts?since={since}", headers={"Grip-Sig": token(key)}
        )
        lying = direct.get(
            f"/api/notifications/posts?since={since}", headers={"Grip-Sig": token(key), **lie}
        )
        assert lying.json() == honest.json()
        with pytest.raises(httpx.ReadTimeout):  # through Pushpin: still simply held
            c.get(f"/api/notifications/posts?since={since}", headers=lie, timeout=1.5)


def test_failed_logins_are_throttled_per_account_and_per_address(tmp_path: Path) -> None:
    with running(tmp_path) as stack:
        victim, other, third = unique("juliet"), unique("romeo"), unique("mercutio")
        for user in (victim, other, third):
            stack.account(user).close()
        with stack.client() as c:
            for _ in range(FAILURES_PER_ACCOUNT):
                assert c.get("/api/subscribed", auth=(victim, "guess")).status_code == 401
            blocked = c.get("/api/subscribed", auth=(victim, PASSWORD))
            assert blocked.status_code == 429
            assert int(blocked.headers["retry-after"]) > 0 and blocked.json()["error"]
            # Another account from the same address is not blocked yet, nor is the same account
            # from another address (a stranger's guesses do not lock its owner out)...
            assert c.get("/api/subscribed", auth=(other, PASSWORD)).status_code == 200
            elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")  # another client address
            with httpx.Client(base_url=stack.url, transport=elsewhere) as c2:
                assert c2.get("/api/subscribed", auth=(victim, PASSWORD)).status_code == 200
            # ...until the address itself has failed too often, whatever it claims to be. (A
            # login verified a moment ago is remembered, and still let through.)
            failures = FAILURES_PER_ACCOUNT
            while failures < FAILURES_PER_ADDRESS:
                spoof = {"X-Forwarded-For": f"10.0.0.{failures}"}
                r = c.get("/api/subscribed", auth=(unique("nobody"), "guess"), headers=spoof)
                assert r.status_code == 401
                failures += 1
            assert c.get("/api/subscribed", auth=(third, PASSWORD)).status_code == 429
            assert c.get("/api/subscribed", auth=(other, PASSWORD)).status_code == 200
