"""The shared types and the rules for names: JIDs, nodes, affiliations, posts."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import idna
import precis_i18n

from app.errors import BadRequest

MAX_JID_BYTES = 255
MAX_CONTENT_CHARS = 10_000
# The wire contract's characters that no JID may hold, wherever they are.
_FORBIDDEN_IN_JID = re.compile(r"[\s/;,\"'<>\\\x00-\x1f\x7f]")
# RFC 7622 3.3.1 also keeps these out of a localpart.
_FORBIDDEN_IN_LOCALPART = re.compile(r"[&:]")
# IDNA's label separators (RFC 3490 3.1): the full stop and its ideographic and width forms.
_LABEL_SEPARATOR = re.compile("[.\u3002\uff0e\uff61]")
_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_NODE = re.compile(r"[a-z0-9_.-]{1,64}")
POSTS_NODE = "posts"
PENDING = "pending"  # a follow request to a private channel, not approved yet
FIREHOSE = "firehose"  # the Pushpin channel of the posts of every open channel
# Each firehose item is also published as a hint here, for banned users' logged-in holds.
FIREHOSE_HINT = "firehose-hint"
# Pushpin channels, by account: its posts feed, its events feed, its Aloha queues, and the
# channel its sockets are woken on (app/wakes.py).
POSTS, EVENTS, QUEUES, SOCKETS = "u", "e", "z", "w"


def feed_of(channel: str) -> str | None:
    """The feed a Pushpin channel carries ("posts", "events", "firehose"), None for the
    channels of Aloha queues and the firehose's hints."""
    if channel == FIREHOSE:
        return "firehose"
    kind = {POSTS: "posts", EVENTS: "events"}.get(channel[:1])
    return kind if kind and channel[1:].isdigit() else None


@functools.lru_cache(maxsize=10_000)
def parse_jid(raw: str) -> str:
    """A bare JID (``localpart@domain``) in the one form it is stored and compared in, as XMPP
    does (RFC 7622): the localpart by PRECIS's UsernameCaseMapped profile, the domain as
    IDNA2008 U-labels, all NFC. Width and case variants fold to one name; invisible and
    direction-control characters, and anything else either rule refuses, are a BadRequest.

    Cached: it runs on most requests, and costs tens of microseconds."""
    local, at, domain = raw.partition("@")
    if not at or "@" in domain:
        raise BadRequest(f"invalid JID {raw[:80]!r}: expected localpart@domain")
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_JID_BYTES:
        raise BadRequest(f"invalid JID {raw[:80]!r}: over {MAX_JID_BYTES} bytes")
    _check_contract(raw)
    try:
        jid = f"{_USERNAME.enforce(local)}@{_domainpart(domain)}"
    except ValueError as exc:  # PRECIS's and IDNA's refusals are UnicodeErrors
        raise BadRequest(f"invalid JID {raw[:80]!r}: {_why(exc)}") from None
    _check_contract(jid, raw)  # again: a fullwidth solidus maps to "/", say
    if len(jid.encode()) > MAX_JID_BYTES:
        raise BadRequest(f"invalid JID {raw[:80]!r}: over {MAX_JID_BYTES} bytes")
    return jid


def _check_contract(jid: str, raw: str | None = None) -> None:
    if _FORBIDDEN_IN_JID.search(jid) or _FORBIDDEN_IN_LOCALPART.search(jid.partition("@")[0]):
        raise BadRequest(
            f"invalid JID {(raw or jid)[:80]!r}: no whitespace, control characters, / ; , quotes,"
            " < > or \\ in a JID, nor & or : in its localpart"
        )


def _domainpart(raw: str) -> str:
    if raw.startswith("[") and raw.endswith("]"):  # an IPv6 literal (RFC 7622 3.2)
        address = ipaddress.IPv6Address(raw[1:-1])
        if address.scope_id:
            raise ValueError("an IPv6 literal names no zone")
        return f"[{address.compressed}]"
    labels = _LABEL_SEPARATOR.split(raw)
    if len(labels) > 1 and not labels[-1]:
        labels.pop()  # a final dot is no part of the name (RFC 7622 3.2)
    # Width and case are mapped, then NFC, as RFC 5895 maps a domain for IDNA2008: by the
    # localpart's PRECIS profile, label by label, which also refuses the invisible characters
    # that UTS 46's mapping would drop without a word. IDNA2008 then checks each label, and
    # an A-label (xn--) comes back as its U-label.
    mapped = ".".join(_USERNAME.enforce(label) for label in labels)
    return idna.decode(idna.encode(mapped))


def _why(exc: ValueError) -> str:
    if not isinstance(exc, UnicodeEncodeError):
        return str(exc)
    # PRECIS: DISALLOWED/<rule> for each character it refused, or for the whole string.
    reason = exc.reason.split()[0].removeprefix("DISALLOWED/")
    if reason == "empty":
        return "an empty localpart or domain label"
    if reason == "bidi_rule":
        return "right-to-left and left-to-right characters mixed (the bidi rule, RFC 5893)"
    return f"U+{ord(exc.object[exc.start]):04X} is not allowed ({reason})"


def name_problems(names: list[str]) -> list[str]:
    """What parse_jid would fold together, change or refuse among ``names`` stored by an
    older version (which lower-cased and checked a pattern): one line each."""
    forms: dict[str, list[str]] = {}
    problems = []
    for name in sorted(names):
        try:
            forms.setdefault(parse_jid(name), []).append(name)
        except BadRequest as exc:
            problems.append(f"{name!r} is refused: {exc.message}")
    for form, group in sorted(forms.items()):
        if len(group) > 1:
            problems.append(f"{', '.join(map(repr, group))} fold to {form!r}")
        elif group != [form]:
            problems.append(f"{group[0]!r} becomes {form!r}, so no login would find it")
    return problems


def parse_node(raw: str) -> str:
    if not _NODE.fullmatch(raw):
        raise BadRequest(f"invalid node name {raw[:80]!r}: expected [a-z0-9_.-]{{1,64}}")
    return raw


class Affiliation(StrEnum):
    OUTCAST = "outcast"
    MEMBER = "member"
    PUBLISHER = "publisher"
    MODERATOR = "moderator"
    OWNER = "owner"

    @classmethod
    def parse(cls, raw: object) -> Affiliation | None:
        """The affiliation named ``raw``, or None for anything else (any JSON value)."""
        return cls(raw) if isinstance(raw, str) and raw in _NAMES else None

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def may_post(self) -> bool:
        return self.rank >= Affiliation.PUBLISHER.rank

    @property
    def may_moderate(self) -> bool:
        return self.rank >= Affiliation.MODERATOR.rank


_RANK = {a: i for i, a in enumerate(Affiliation)}
_NAMES = frozenset(a.value for a in Affiliation)


def node_source(channel: str, node: str) -> str:
    """The Buddycloud name of a node, as in a post's ``source``."""
    return f"{channel}/{node}"


def feed_body(last: int, payloads: list[str]) -> str:
    """The one way a feed answer is written, immediate or published: same post, same bytes."""
    return f'{{"last":"{last}","items":[{",".join(payloads)}]}}'


def now_iso() -> str:
    """ISO 8601 UTC with milliseconds, as Buddycloud writes times."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Post:
    id: str
    source: str
    author: str
    published: str
    updated: str
    content: str
    media: list[dict[str, str]] | None
    reply_to: str | None

    def to_json(self) -> dict[str, Any]:
        # Key order follows Buddycloud's examples (as in the README).
        return {
            "id": self.id,
            "source": self.source,
            "author": self.author,
            "published": self.published,
            "updated": self.updated,
            "content": self.content,
            "media": self.media,
            "replyTo": self.reply_to,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))
