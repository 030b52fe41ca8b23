"""The shared types and the rules for names: JIDs, nodes, affiliations, posts."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from app.errors import BadRequest

MAX_JID_BYTES = 255
MAX_CONTENT_CHARS = 10_000
_FORBIDDEN_IN_JID = re.compile(r"[\s/;,\"'<>\\\x00-\x1f\x7f]")
_NODE = re.compile(r"[a-z0-9_.-]{1,64}")
POSTS_NODE = "posts"
PENDING = "pending"  # a follow request to a private channel, not approved yet
FIREHOSE = "firehose"  # the Pushpin channel of the posts of every open channel
# Each firehose item is also published as a hint here, for banned users' logged-in holds.
FIREHOSE_HINT = "firehose-hint"


def parse_jid(raw: str) -> str:
    """Validate a bare JID (``local@domain``) and return it in lower case."""
    jid = raw.lower()
    local, at, domain = jid.partition("@")
    if (
        not at
        or not local
        or not domain
        or "@" in domain
        or _FORBIDDEN_IN_JID.search(jid)
        or len(jid.encode("utf-8", "surrogatepass")) > MAX_JID_BYTES
        or domain.startswith(".")
        or domain.endswith(".")
        or ".." in domain
    ):
        raise BadRequest(f"invalid JID {raw[:80]!r}: expected localpart@domain")
    try:
        jid.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("invalid JID: not valid Unicode") from None
    return jid


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
