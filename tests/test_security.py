"""Grip-Sig and Grip-Last: only Pushpin is believed (login limits: tests/test_logins.py)."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from app.config import ConfigError, Settings
from app.grip import is_signed
from tests.conftest import unique
from tests.support import Holds, Stack
from tests.test_posts_feed import last, post

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
    key = stack.sig_key
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


def test_grip_headers_from_a_client_change_nothing(stack: Stack, holds: Holds) -> None:
    """A held feed is answered from ``since`` alone: the origin never reads ``Grip-Last`` (which
    Pushpin sends when it asks again), and Pushpin strips the ``Grip-*`` headers a client sends.
    So a client that claims an older last id, to be given old posts at once, is held like any
    other, and then gets the next post."""
    key = stack.sig_key
    user = unique("juliet")
    with stack.account(user) as c, stack.client(user, origin=True) as direct:
        start = last(c)
        old = post(c, user, "what the lie asks for")
        since = last(c)
        # The control: asked for honestly, from the older cursor, the old post comes at once.
        assert c.get(f"/api/notifications/posts?since={start}").json()["items"] == [old]
        path = f"/api/notifications/posts?since={since}"
        signed = {"Grip-Sig": token(key)}
        honest = direct.get(path, headers=signed).json()
        (channel,) = honest["hold"]["channels"]
        lie = {"Grip-Last": f"{channel['name']}; last-id={start}"}
        # Straight to the origin, signed as only Pushpin can: the same hold, not the old post.
        assert direct.get(path, headers={**signed, **lie}).json() == honest
        # Through Pushpin, with a forged signature too: held, then given the next post.
        held = holds.hold("posts", c.get, path, headers={**lie, "Grip-Sig": "forged"})
        following = post(c, user, "the next post")
        assert holds.published(held).json()["items"] == [following]
