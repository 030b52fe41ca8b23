"""Grip-Sig and Grip-Last: only Pushpin is believed (login limits: tests/test_logins.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from app.config import ConfigError, Settings
from app.grip import SigKey, is_signed
from app.pushpin import Pushpin
from tests.conftest import unique
from tests.support import ROOT, TLS, Background, Holds, Stack, free_ports
from tests.test_posts_feed import last, post

KEY = "k" * 32


PUSHPIN_KEYS = (SigKey.shared(KEY, "pushpin"),)
FASTLY_ISS = "fastly:SU1Z0isxPaozGVKXdv0eY"


def token(key: str = KEY, iss: str = "pushpin", exp: float | None = None) -> str:
    claims = {"iss": iss, "exp": int(time.time() + 60 if exp is None else exp)}
    return jwt.encode(claims, key.encode(), "HS256")


def ec_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A P-256 key pair, as Fastly signs with: the private key, and the public one as PEM."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def es256(private: ec.EllipticCurvePrivateKey, iss: str, exp: float | None = None) -> str:
    claims = {"iss": iss, "exp": int(time.time() + 60 if exp is None else exp)}
    return jwt.encode(claims, private, "ES256")


def test_grip_sig_accepts_only_an_unexpired_token_from_the_issuer_with_the_key() -> None:
    assert is_signed(token(), PUSHPIN_KEYS)
    assert not is_signed(None, PUSHPIN_KEYS)
    assert not is_signed("", PUSHPIN_KEYS)
    assert not is_signed("garbage", PUSHPIN_KEYS)
    assert not is_signed(token(exp=time.time() - 10), PUSHPIN_KEYS)  # expired
    assert not is_signed(token(iss="someone-else"), PUSHPIN_KEYS)  # wrong issuer
    assert not is_signed(token(key="x" * 32), PUSHPIN_KEYS)  # another key
    header, _payload, signature = token().split(".")
    forged = jwt.encode({"iss": "pushpin", "exp": int(time.time() + 999)}, "y" * 32, "HS256")
    assert not is_signed(f"{header}.{forged.split('.')[1]}.{signature}", PUSHPIN_KEYS)
    unsigned = jwt.encode({"iss": "pushpin", "exp": int(time.time() + 60)}, "", "none")
    assert not is_signed(unsigned, PUSHPIN_KEYS)


def test_grip_sig_es256_needs_the_proxys_public_key_and_its_issuer() -> None:
    """As Fastly signs: ES256 with its P-256 key, iss fastly:<service id>. Fastly signs for
    every service with the same key, so the issuer is what tells our service's requests."""
    private, public = ec_key()
    keys = (*PUSHPIN_KEYS, SigKey.public(public, FASTLY_ISS))
    assert is_signed(es256(private, FASTLY_ISS), keys)
    assert is_signed(token(), keys)  # the run command's own Pushpin still signs with HS256
    assert not is_signed(es256(private, "fastly:another-service"), keys)
    assert not is_signed(es256(ec_key()[0], FASTLY_ISS), keys)  # another key pair
    assert not is_signed(es256(private, FASTLY_ISS, exp=time.time() - 10), keys)
    assert not is_signed(es256(private, FASTLY_ISS), PUSHPIN_KEYS)  # no public key given
    assert not is_signed(token(iss=FASTLY_ISS), keys)  # the shared key has its own issuer
    # The public key is public: an HS256 token keyed with it must not pass (algorithm
    # confusion). PyJWT refuses to make one, so it is made by hand.
    head = _b64(b'{"alg":"HS256","typ":"JWT"}')
    body = _b64(json.dumps({"iss": FASTLY_ISS, "exp": int(time.time() + 60)}).encode())
    mac = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert not is_signed(f"{head}.{body}.{_b64(mac)}", keys)


def test_a_public_key_is_taken_as_pem_or_jwk_and_nothing_else() -> None:
    private, public = ec_key()
    jwk = ECAlgorithm.to_jwk(private.public_key())
    assert SigKey.public(jwk, FASTLY_ISS) == SigKey.public(public, FASTLY_ISS)
    assert is_signed(es256(private, FASTLY_ISS), (SigKey.public(jwk, FASTLY_ISS),))
    pkcs8 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="private key"):
        SigKey.public(pkcs8, FASTLY_ISS)
    with pytest.raises(ValueError, match="private key"):
        SigKey.public(ECAlgorithm.to_jwk(private), FASTLY_ISS)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValueError, match="P-256"):
        SigKey.public(
            p384.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            FASTLY_ISS,
        )
    with pytest.raises(ValueError, match="not a PEM or JWK"):
        SigKey.public("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----", "x")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_the_signing_key_is_generated_once_and_must_be_long(tmp_path: Path) -> None:
    first = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert len(first.grip_sig_key.encode()) >= 32
    assert (tmp_path / "grip_sig_key").stat().st_mode & 0o777 == 0o600
    assert Settings.from_env({"DATA_DIR": str(tmp_path)}).grip_sig_key == first.grip_sig_key
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"DATA_DIR": str(tmp_path), "GRIP_SIG_KEY": "short"})


def test_a_proxys_public_key_is_a_setting_and_a_bad_one_stops_the_start(tmp_path: Path) -> None:
    private, public = ec_key()
    env = {"DATA_DIR": str(tmp_path), "GRIP_SIG_KEY": KEY}
    (tmp_path / "fastly.pem").write_bytes(public)
    for given in (public.decode(), str(tmp_path / "fastly.pem")):  # the PEM, or its path
        settings = Settings.from_env(
            {**env, "GRIP_VERIFY_KEY": given, "GRIP_VERIFY_ISS": FASTLY_ISS}
        )
        assert is_signed(es256(private, FASTLY_ISS), settings.sig_keys)
        assert is_signed(token(), settings.sig_keys)
    refused = {
        "GRIP_VERIFY_ISS must be set": {"GRIP_VERIFY_KEY": public.decode()},
        "GRIP_VERIFY_KEY is not": {"GRIP_VERIFY_ISS": FASTLY_ISS},
        "cannot read it": {
            "GRIP_VERIFY_KEY": str(tmp_path / "missing.pem"),
            "GRIP_VERIFY_ISS": FASTLY_ISS,
        },
        "private key": {
            "GRIP_VERIFY_ISS": FASTLY_ISS,
            "GRIP_VERIFY_KEY": private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        },
        "not a PEM or JWK": {
            "GRIP_VERIFY_KEY": "-----BEGIN PUBLIC KEY-----\nno\n",
            "GRIP_VERIFY_ISS": FASTLY_ISS,
        },
        "GRIP_CA_FILE: no such file": {"GRIP_CA_FILE": str(tmp_path / "ca.pem")},
    }
    for message, more in refused.items():
        with pytest.raises(ConfigError, match=message):
            Settings.from_env({**env, **more})


def test_the_run_command_names_a_bad_key_and_does_not_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "GRIP_VERIFY_KEY": str(tmp_path / "fastly.pem"),
        "GRIP_VERIFY_ISS": FASTLY_ISS,
    }
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"configuration error: GRIP_VERIFY_KEY ({tmp_path}"), result


def test_a_fastly_grip_url_carries_its_verify_key(tmp_path: Path) -> None:
    """GRIP_URL=https://api.fastly.com/service/SID?key=TOKEN&verify-key=...: the publish
    target and the key its Grip-Sig is checked with; its verify-iss is fastly:SID unless
    given. Without a key to check Fastly's signature every request would look unproxied, so
    that refuses to start."""
    private, public = ec_key()
    env = {"DATA_DIR": str(tmp_path), "GRIP_SIG_KEY": KEY}
    service = FASTLY_ISS.removeprefix("fastly:")
    base = f"https://api.fastly.com/service/{service}?key=TOKEN"
    as_base64 = quote("base64:" + base64.b64encode(public).decode())
    as_jwk = quote(ECAlgorithm.to_jwk(private.public_key()))
    for verify in (f"&verify-key={as_base64}", f"&verify-key={as_jwk}&verify-iss={FASTLY_ISS}"):
        settings = Settings.from_env({**env, "GRIP_URL": base + verify})
        assert is_signed(es256(private, FASTLY_ISS), settings.sig_keys)
        assert not is_signed(es256(private, "fastly:other"), settings.sig_keys)
    with pytest.raises(ConfigError, match="no key checks the Grip-Sig") as refused:
        Settings.from_env({**env, "GRIP_URL": base})
    assert "TOKEN" not in str(refused.value)
    settings = Settings.from_env(
        {
            **env,
            "GRIP_URL": base,
            "GRIP_VERIFY_KEY": public.decode(),
            "GRIP_VERIFY_ISS": FASTLY_ISS,
        }
    )
    assert is_signed(es256(private, FASTLY_ISS), settings.sig_keys)
    # Elsewhere a verify-key needs its issuer; a shared one its length.
    with pytest.raises(ConfigError, match="needs verify-iss"):
        Settings.from_env({**env, "GRIP_URL": f"https://proxy.example/?verify-key={as_base64}"})
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({**env, "GRIP_URL": "http://p.example/?verify-key=short&verify-iss=p"})


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


def test_a_proxy_signing_with_an_ec_key_is_believed_and_no_other(tmp_path: Path) -> None:
    """Through real Pushpins that sign as Fastly does (ES256, iss fastly:<service id>;
    Pushpin 1.36 takes an EC key as sig_key=file:PATH, in PKCS#8 PEM): the origin knows only
    the proxy's public key (GRIP_VERIFY_KEY, as a path). A request through the Pushpin with
    the matching private key is held and gets the next post; through a Pushpin signing with
    another key, or straight to the origin with the right key and another service's issuer,
    it is not proxied (501)."""
    private, public = ec_key()
    other, _ = ec_key()
    for name, key in (("proxy.key", private), ("other.key", other)):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (tmp_path / name).write_bytes(pem)
        (tmp_path / name).chmod(0o600)
    (tmp_path / "proxy.pub").write_bytes(public)
    port, publish_port, other_port = free_ports(3)
    env = {
        "PORT": str(port),
        "PUSHPIN_PUBLISH_PORT": str(publish_port),
        "GRIP_VERIFY_KEY": str(tmp_path / "proxy.pub"),
        "GRIP_VERIFY_ISS": FASTLY_ISS,
    }
    origin = Stack(tmp_path / "origin", env=env, args=["--origin-only"]).start()
    background = Background()
    pushpins = [
        Pushpin(
            config=ROOT / "pushpin" / "pushpin.conf",
            rundir=tmp_path / rundir,
            http_port=http_port,
            publish_port=publish,
            origin=f"127.0.0.1:{origin.env['ORIGIN_PORT']}",
            sig_key=f"file:{tmp_path / key_file}",
            sig_iss=FASTLY_ISS,
            hold_check=check,
        )
        # The origin holds nothing for the other proxy: it does not believe its signature.
        for rundir, http_port, publish, key_file, check in (
            ("pushpin", port, publish_port, "proxy.key", "/health/proxy"),
            ("other", other_port, free_ports(1)[0], "other.key", None),
        )
    ]
    try:
        for pushpin in pushpins:
            background.call(pushpin.start())
        user = unique("juliet")
        with origin.account(user) as c, Holds(origin) as holds:
            held = holds.hold("posts", c.get, f"/api/notifications/posts?since={last(c)}")
            created = post(c, user, "through the proxy that signs with the key we know")
            answer = holds.published(held).json()
            assert answer["items"] == [created]
            path = f"/api/notifications/posts?since={answer['last']}"
            with httpx.Client(
                verify=TLS, base_url=f"http://127.0.0.1:{other_port}", auth=c.auth
            ) as via:
                refused = via.get(path)
            assert refused.status_code == 501, refused.text
            with origin.client(user, origin=True) as direct:
                signed = direct.get(path, headers={"Grip-Sig": es256(private, FASTLY_ISS)})
                assert "hold" in signed.json()
                wrong_iss = direct.get(path, headers={"Grip-Sig": es256(private, "fastly:x")})
                assert wrong_iss.status_code == 501
    finally:
        for pushpin in pushpins:
            background.call(pushpin.stop())
        background.close()
        origin.stop()
