"""Channels, their metadata and their posts: the writes that become events in the log."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from math import ceil
from typing import Any, NamedTuple
from urllib.parse import quote

from app import access
from app.config import Limits
from app.errors import BadRequest, NotFound, TooManyRequests
from app.model import (
    MAX_CONTENT_CHARS,
    Affiliation,
    Post,
    node_source,
    now_iso,
    parse_jid,
    parse_node,
)
from app.store import Store
from app.store.base import NodeInfo, Notice, Recipients, RetryKey
from app.throttle import Throttle

ACCESS_MODELS = ("open", "authorize")
DEFAULT_AFFILIATIONS = (Affiliation.PUBLISHER.value, Affiliation.MEMBER.value)
METADATA_FIELDS = ("title", "description", "access_model", "default_affiliation")
MAX_LIST = 100
# What a delete erases of a post, wherever it was kept: its text. Its id, author and times stay
# (the events that say it changed and was deleted name it).
ERASED_ON_DELETE = ("content", "media")


class NewPost(NamedTuple):
    body: str  # the post's JSON
    event_id: int  # its cursor
    location: str  # its URL path
    retried: bool  # made by an earlier request with the same key


@dataclass(frozen=True)
class Retry:
    """How a client marks a request it may send again: an ``Idempotency-Key`` header (the
    same key with another body is refused), or Zulip's ``local_id`` (a retry only with the
    same stream, topic and content: anything else is a new message)."""

    kind: str  # "header" | "local_id"
    value: str

    def key_for(self, source: str, sent: dict[str, Any], now: float, window: float) -> RetryKey:
        fingerprint = _digest([source, sent])
        if self.kind == "header":
            return RetryKey(f"header:{self.value}", fingerprint, now, window)
        # local_id: what was sent is part of the key, so a different send is a new message.
        key = f"local_id:{_digest([self.value, source, sent])}"
        return RetryKey(key, fingerprint, now, window)


def _digest(value: Any) -> str:
    canonical = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Channels:
    def __init__(
        self, store: Store, limits: Limits | None = None, retry_window: float = 86_400
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.retry_window = retry_window
        self._writes = Throttle(store, "posts per user", self.limits.posts_per_minute, 60.0)

    async def create(self, owner: str, channel: str, fields: dict[str, Any]) -> str:
        jid = parse_jid(channel)
        values = {"access_model": "open", "default_affiliation": "publisher"}
        values |= _metadata(fields)
        await self.store.create_channel(
            jid,
            owner,
            values.get("title", ""),
            values.get("description", ""),
            values["access_model"],
            values["default_affiliation"],
            now_iso(),
            self.limits.max_channels,
        )
        return jid

    async def node(self, channel: str, node: str) -> NodeInfo:
        jid, name = parse_jid(channel), parse_node(node)
        info = await self.store.get_node(jid, name)
        if info is None:
            raise NotFound(f"no node {node_source(jid, name)}")
        return info

    async def affiliation(self, jid: str, node: NodeInfo) -> Affiliation | None:
        return Affiliation.parse(await self.store.affiliation(jid, node.id))

    async def metadata(self, caller: str, channel: str, node: str) -> dict[str, str]:
        info = await self.node(channel, node)
        access.check_read(info, await self.affiliation(caller, info))
        return await self.store.metadata(info.channel)

    async def set_metadata(
        self, caller: str, channel: str, node: str, fields: Any
    ) -> dict[str, str]:
        info = await self.node(channel, node)
        access.check_owner(info, await self.affiliation(caller, info))
        if not isinstance(fields, dict) or not fields:
            raise BadRequest(f"expected a JSON object with some of: {', '.join(METADATA_FIELDS)}")
        await self.store.set_metadata(info.channel, _metadata(fields))
        return await self.store.metadata(info.channel)

    async def create_post(
        self, caller: str, channel: str, node: str, fields: Any, retry: Retry | None = None
    ) -> NewPost:
        """Create a post, once committed. With ``retry``, a request the caller already made
        under the same key makes nothing new: the answer is the first one's post."""
        info = await self.node(channel, node)
        access.check_post(info, await self.affiliation(caller, info))
        await self._count_write(caller)
        if not isinstance(fields, dict):
            raise BadRequest('expected a JSON object {"content": ...}')
        unknown = set(fields) - {"content", "replyTo", "media"}
        if unknown:
            raise BadRequest(f"unknown post fields: {', '.join(sorted(unknown))}")
        reply_to = fields.get("replyTo")
        if reply_to is not None and (
            not isinstance(reply_to, str) or await self.store.get_post(info.id, reply_to) is None
        ):
            raise BadRequest("replyTo must be the id of a post in the same node")
        now = now_iso()
        post = Post(
            id=str(uuid.uuid4()),
            source=node_source(info.channel, info.name),
            author=caller,
            published=now,
            updated=now,
            content=_content(fields.get("content")),
            media=_media(fields.get("media")),
            reply_to=reply_to,
        )
        key = None
        if retry is not None:
            sent = {"content": post.content, "media": post.media, "replyTo": reply_to}
            key = retry.key_for(post.source, sent, time.time(), self.retry_window)
        written = await self.store.append_post(info, post.id, caller, post.dumps(), now, key)
        post_id = post.id if not written.retried else json.loads(written.body)["id"]
        location = f"/api/{quote(info.channel)}/content/{info.name}/{post_id}"
        return NewPost(written.body, written.event_id, location, written.retried)

    async def edit_post(
        self, caller: str, channel: str, node: str, post_id: str, fields: Any
    ) -> str:
        """Change a post's content (and media); returns its new JSON."""
        info, author, body = await self._existing_post(caller, channel, node, post_id)
        access.check_edit(info, await self.affiliation(caller, info), caller, author)
        await self._count_write(caller)
        if not isinstance(fields, dict) or "content" not in fields:
            raise BadRequest('expected a JSON object {"content": ...}')
        unknown = set(fields) - {"content", "media"}
        if unknown:
            raise BadRequest(f"unknown post fields: {', '.join(sorted(unknown))}")
        post = json.loads(body)
        post["content"] = _content(fields["content"])
        if "media" in fields:
            post["media"] = _media(fields["media"])
        post["updated"] = now = now_iso()
        payload = json.dumps(post, ensure_ascii=False, separators=(",", ":"))
        notice = Notice("post_updated", {"post": post}, Recipients("readers"), post_id)
        await self.store.update_post(info.id, post_id, payload, notice, now)
        return payload

    async def list_posts(
        self, caller: str, channel: str, node: str, limit: int, after: str | None
    ) -> list[str]:
        info = await self.node(channel, node)
        access.check_read(info, await self.affiliation(caller, info))
        posts = await self.store.list_posts(info.id, min(limit, MAX_LIST), after)
        if posts is None:
            raise BadRequest(f"after: no post {after!r} in this node")
        return posts

    async def get_post(self, caller: str, channel: str, node: str, post_id: str) -> str:
        return (await self._existing_post(caller, channel, node, post_id))[2]

    async def delete_post(self, caller: str, channel: str, node: str, post_id: str) -> None:
        info, author, _ = await self._existing_post(caller, channel, node, post_id)
        access.check_edit(info, await self.affiliation(caller, info), caller, author)
        await self._count_write(caller)
        await self.remove_post(info, post_id)

    async def remove_post(self, info: NodeInfo, post_id: str) -> None:
        """Delete a post, whoever may: its readers hear ``post_deleted``, its text is erased."""
        source = node_source(info.channel, info.name)
        fields = {"id": post_id, "source": source}
        notice = Notice("post_deleted", fields, Recipients("readers"), post_id)
        await self.store.delete_post(info.id, post_id, notice, now_iso(), ERASED_ON_DELETE)

    async def _count_write(self, caller: str) -> None:
        """Posts, edits and deletes each count against POSTS_PER_MINUTE (a retry too)."""
        if wait := await self._writes.take(caller):
            raise TooManyRequests(
                f"at most {self.limits.posts_per_minute} posts, edits and deletes a minute:"
                f" try again in {ceil(wait)}s",
                wait,
            )

    async def _existing_post(
        self, caller: str, channel: str, node: str, post_id: str
    ) -> tuple[NodeInfo, str, str]:
        """The node, the author and the JSON of a post the caller may read."""
        info = await self.node(channel, node)
        access.check_read(info, await self.affiliation(caller, info))
        found = await self.store.get_post(info.id, post_id)
        if found is None:
            raise NotFound(f"no post {post_id[:80]!r} in {node_source(info.channel, info.name)}")
        return info, found[0], found[1]


def _metadata(fields: dict[str, Any]) -> dict[str, str]:
    unknown = set(fields) - set(METADATA_FIELDS)
    if unknown:
        raise BadRequest(f"unknown channel fields: {', '.join(sorted(unknown))}")
    values: dict[str, str] = {}
    for name, limit in (("title", 200), ("description", 2000)):
        if name in fields:
            value = fields[name]
            if not isinstance(value, str) or len(value) > limit:
                raise BadRequest(f"{name} must be a string of at most {limit} characters")
            if "\x00" in value:  # PostgreSQL stores no NUL in text; no title needs one
                raise BadRequest(f"{name} must not contain the NUL character (U+0000)")
            values[name] = value
    for name, allowed in (
        ("access_model", ACCESS_MODELS),
        ("default_affiliation", DEFAULT_AFFILIATIONS),
    ):
        if name in fields:
            if fields[name] not in allowed:
                raise BadRequest(f"{name} must be one of {', '.join(allowed)}")
            values[name] = fields[name]
    return values


def _content(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("content must be a non-empty string")
    if len(raw) > MAX_CONTENT_CHARS:
        raise BadRequest(f"content is longer than {MAX_CONTENT_CHARS} characters")
    return raw


def _media(raw: Any) -> list[dict[str, str]] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or len(raw) > 20
        or not all(
            isinstance(m, dict)
            and set(m) == {"id", "channel"}
            and all(isinstance(v, str) and 0 < len(v) <= 255 for v in m.values())
            for m in raw
        )
    ):
        raise BadRequest('media must be null or a list of {"id": ..., "channel": ...}')
    return [{"id": m["id"], "channel": m["channel"]} for m in raw]
