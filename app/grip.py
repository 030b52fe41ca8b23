"""GRIP, as pure functions: hold instructions, published items, GRIP_URL entries, the Grip-Sig
check."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from gripcontrol import parse_grip_uri
from jwt.algorithms import ECAlgorithm

INSTRUCT_CONTENT_TYPE = "application/grip-instruct"
FASTLY_API_HOST = "api.fastly.com"


# Grip-Sig tokens already checked, with their expiry: Pushpin signs with an expiry an hour
# ahead, so most requests carry a token seen before, and a check costs 0.05 ms of CPU with
# HS256, 0.11 ms with ES256.
_CHECKED: dict[tuple[str, tuple[SigKey, ...]], float] = {}
_CHECKED_MAX = 1024
SHARED_KEY_MIN = 32  # bytes: PyJWT warns below this, and a warning made its check fail


@dataclass(frozen=True)
class SigKey:
    """How one GRIP proxy signs ``Grip-Sig``: HS256 with a key it shares with the origin
    (Pushpin's ``sig_key``), or ES256 with the private half of a P-256 key pair, verified with
    the public half (Fastly Fanout, or a Pushpin given an EC key). Each key verifies only its
    own algorithm, so a public key can never be taken for an HMAC secret."""

    algorithm: str  # "HS256" or "ES256"
    issuer: str  # the token's iss must be exactly this
    material: bytes = field(repr=False)  # the secret, or the public key as PEM
    key: Any = field(repr=False, compare=False, hash=False)  # what PyJWT verifies with

    @classmethod
    def shared(cls, secret: str | bytes, issuer: str) -> SigKey:
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < SHARED_KEY_MIN:
            raise ValueError(f"a shared signing key must be at least {SHARED_KEY_MIN} bytes")
        return cls("HS256", issuer, raw, raw)

    @classmethod
    def public(cls, text: str | bytes, issuer: str) -> SigKey:
        """From a P-256 public key, as PEM (``-----BEGIN PUBLIC KEY-----``) or as a JWK."""
        raw = text.encode() if isinstance(text, str) else text
        key: object
        try:
            if raw.lstrip().startswith(b"{"):
                key = ECAlgorithm.from_jwk(raw.decode())
            else:
                key = serialization.load_pem_public_key(raw)
        except (ValueError, TypeError, UnicodeDecodeError, jwt.InvalidKeyError) as exc:
            if b"PRIVATE KEY" in raw or b'"d"' in raw:
                raise ValueError("it is a private key: give its public key") from None
            raise ValueError(f"not a PEM or JWK public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            kind = "a private key" if isinstance(key, ec.EllipticCurvePrivateKey) else "not EC"
            raise ValueError(f"an ES256 key must be a P-256 public key ({kind})")
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"an ES256 key must be on P-256, not {key.curve.name}")
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls("ES256", issuer, pem, key)


def is_signed(token: str | None, keys: tuple[SigKey, ...]) -> bool:
    """True when ``token`` (a Grip-Sig header) is an unexpired JWT signed with one of ``keys``
    and naming that key's issuer.

    Anything else (missing, malformed, tampered, expired, wrong issuer, another key, another
    algorithm) means the request did not come through one of our proxies.
    """
    if not token:
        return False
    expires = _CHECKED.get((token, keys))
    if expires is not None and expires > time.time():
        return True
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        return False
    for key in keys:
        if key.algorithm != algorithm:
            continue
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=key.issuer,
                options={"require": ["exp", "iss"]},
            )
        except jwt.PyJWTError:
            continue
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[(token, keys)] = float(claims["exp"])
        return True
    return False


@dataclass(frozen=True)
class GripUrl:
    """One ``GRIP_URL`` entry: where to publish, with what credentials, and (``verify-key``,
    ``verify-iss``) how the proxy behind it signs the requests it forwards."""

    publish_url: str
    label: str  # the URL without credentials, for logs and the publisher's saved position
    iss: str | None  # with key: publish with an HS256 JWT {iss, exp} signed with key
    key: bytes | None = field(repr=False)  # without iss: sent as a bearer token
    verify: SigKey | None = None


def parse_grip_url(url: str) -> GripUrl:
    """Parse a GRIP_URL entry (gripcontrol's syntax): ``http://host:5561`` (Pushpin),
    ``https://api.fastly.com/service/SID?key=TOKEN&verify-key=...`` (Fastly Fanout; its
    ``verify-iss`` defaults to ``fastly:SID``), ``https://api.fanout.io/realm/R?iss=R&key=base64:K``
    (Fanout Cloud). Raises ValueError with what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    parsed: dict[str, Any] = parse_grip_uri(url)
    key = parsed.get("key")
    iss = parsed.get("control_iss")
    if isinstance(key, bytes) and not iss:
        raise ValueError("a key=base64:... needs iss= too")
    control = parsed["control_uri"]
    control_parts = urlsplit(control)
    verify = None
    verify_key = parsed.get("verify_key")
    if verify_key is not None:
        verify_iss = parsed.get("verify_iss") or _fastly_issuer(control_parts)
        if not verify_iss:
            raise ValueError("verify-key needs verify-iss= (the iss the proxy signs with)")
        verify = _verify_key(verify_key, verify_iss)
    elif parsed.get("verify_iss"):
        raise ValueError("verify-iss needs verify-key=")
    return GripUrl(
        # Any other query parameter stays on the publish URL, after its path.
        publish_url=urlunsplit(control_parts._replace(path=control_parts.path + "/publish/")),
        label=without_credentials(control),
        iss=iss,
        key=key.encode() if isinstance(key, str) else key,
        verify=verify,
    )


def without_credentials(url: str) -> str:
    """A URL as it may be shown in logs: without user:password@ and without its query (where a
    GRIP_URL keeps its key)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))


def _verify_key(value: str | bytes, issuer: str) -> SigKey:
    """A verify-key: a public key (PEM or JWK: ES256), else a shared secret (HS256)."""
    raw = value.encode() if isinstance(value, str) else value
    if b"-----BEGIN" in raw or raw.lstrip().startswith(b"{"):
        return SigKey.public(raw, issuer)
    return SigKey.shared(raw, issuer)


def _fastly_issuer(parts: SplitResult) -> str | None:
    """Fastly signs with iss ``fastly:<service id>``, the id its publish URL names."""
    segments = parts.path.strip("/").split("/")
    if parts.hostname == FASTLY_API_HOST and len(segments) == 2 and segments[0] == "service":
        return f"fastly:{segments[1]}"
    return None


def hold_response(
    channels: Sequence[tuple[str, str]],
    timeout: int,
    body: str,
    headers: Mapping[str, str],
) -> bytes:
    """A long-poll hold as a GRIP instruct body (it carries any number of channels, which
    headers would not). ``channels`` pairs each channel with its prev-id; ``body`` and
    ``headers`` form the answer the client gets if nothing is published before ``timeout``.
    """
    instruction: dict[str, Any] = {
        "hold": {
            "mode": "response",
            "channels": [{"name": name, "prev-id": prev} for name, prev in channels],
            "timeout": timeout,
        },
        "response": {"code": 200, "headers": dict(headers), "body": body},
    }
    return json.dumps(instruction, ensure_ascii=False, separators=(",", ":")).encode()


def hint_item(channel: str, item_id: str, prev_id: str, streams: bool = True) -> dict[str, Any]:
    """A published item that makes Pushpin re-ask the origin for each request held on
    ``channel`` (a stream: call its next link), where each needs an answer of its own.
    Without ``streams``, streams do not see the item: the next one's prev-id shows them the
    gap, and they ask from before it (a stream asked by a hint asks from after it)."""
    formats: dict[str, Any] = {"http-response": {"action": "hint"}}
    if streams:
        formats["http-stream"] = {"action": "hint"}
    return {"channel": channel, "id": item_id, "prev-id": prev_id, "formats": formats}


def response_item(
    channel: str, item_id: str, prev_id: str, body: str, stream: str | None = None
) -> dict[str, Any]:
    """A published item that answers held long-polls on ``channel`` with ``body``, and sends
    ``stream`` (an SSE event) down the streams held on it."""
    formats: dict[str, Any] = {"http-response": {"body": body}}
    if stream is not None:
        formats["http-stream"] = {"content": stream}
    return {"channel": channel, "id": item_id, "prev-id": prev_id, "formats": formats}


def close_items(channel: str) -> list[dict[str, Any]]:
    """Items that end what is held on an account's feed ``channel``: its streams close, and
    its held long-polls are asked of the origin again (which may refuse them). No id: they
    stand outside the channel's prev-id chain."""
    formats = {"http-stream": {"action": "close"}, "http-response": {"action": "hint"}}
    return [{"channel": channel, "formats": formats}]


def held_hint(channel: str) -> dict[str, Any]:
    """An item that makes Pushpin ask the origin again for each long-poll held on
    ``channel``, at once (no id: outside the channel's prev-id chain)."""
    return {"channel": channel, "formats": {"http-response": {"action": "hint"}}}


def socket_close_item(channel: str, code: int) -> dict[str, Any]:
    """An item that closes every WebSocket subscribed to ``channel``, with ``code``."""
    return {"channel": channel, "formats": {"ws-message": {"action": "close", "code": code}}}
