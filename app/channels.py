"""Channels, their nodes, posts and followers: the writes that become events in the log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from app import access
from app.errors import BadRequest, Conflict, Forbidden, NotFound
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
from app.store.base import NodeInfo

ACCESS_MODELS = ("open", "authorize")
DEFAULT_AFFILIATIONS = (Affiliation.PUBLISHER.value, Affiliation.MEMBER.value)
MAX_LIST = 100


class Channels:
    def __init__(self, store: Store, max_follows: int, on_commit: Callable[[], None]) -> None:
        self.store = store
        self.max_follows = max_follows
        self._on_commit = on_commit

    async def create(self, owner: str, channel: str, fields: dict[str, Any]) -> str:
        jid = parse_jid(channel)
        unknown = set(fields) - {"title", "description", "access_model", "default_affiliation"}
        if unknown:
            raise BadRequest(f"unknown channel fields: {', '.join(sorted(unknown))}")
        title = _text(fields, "title", 200)
        description = _text(fields, "description", 2000)
        access_model = fields.get("access_model", "open")
        if access_model not in ACCESS_MODELS:
            raise BadRequest(f"access_model must be one of {', '.join(ACCESS_MODELS)}")
        if access_model != "open":
            raise BadRequest("private (authorize) channels are not supported yet")
        default = fields.get("default_affiliation", Affiliation.PUBLISHER.value)
        if default not in DEFAULT_AFFILIATIONS:
            choices = ", ".join(DEFAULT_AFFILIATIONS)
            raise BadRequest(f"default_affiliation must be one of {choices}")
        await self.store.create_channel(
            jid, owner, title, description, access_model, default, now_iso()
        )
        return jid

    async def node(self, channel: str, node: str) -> NodeInfo:
        jid, name = parse_jid(channel), parse_node(node)
        info = await self.store.get_node(jid, name)
        if info is None:
            raise NotFound(f"no node {node_source(jid, name)}")
        return info

    async def _affiliation(self, jid: str, node: NodeInfo) -> Affiliation | None:
        return Affiliation.parse(await self.store.affiliation(jid, node.id))

    async def create_post(
        self, caller: str, channel: str, node: str, fields: Any
    ) -> tuple[Post, str]:
        """Create a post; returns it and its JSON, once committed."""
        info = await self.node(channel, node)
        access.check_post(info, await self._affiliation(caller, info))
        if not isinstance(fields, dict):
            raise BadRequest('expected a JSON object {"content": ...}')
        unknown = set(fields) - {"content", "replyTo", "media"}
        if unknown:
            raise BadRequest(f"unknown post fields: {', '.join(sorted(unknown))}")
        content = fields.get("content")
        if not isinstance(content, str) or not content.strip():
            raise BadRequest("content must be a non-empty string")
        if len(content) > MAX_CONTENT_CHARS:
            raise BadRequest(f"content is longer than {MAX_CONTENT_CHARS} characters")
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
            content=content,
            media=_media(fields.get("media")),
            reply_to=reply_to,
        )
        payload = post.dumps()
        await self.store.append_post(info, post.id, caller, payload, now)
        self._on_commit()
        return post, payload

    async def list_posts(
        self, caller: str, channel: str, node: str, limit: int, after: str | None
    ) -> list[str]:
        info = await self.node(channel, node)
        access.check_read(info, await self._affiliation(caller, info))
        posts = await self.store.list_posts(info.id, min(limit, MAX_LIST), after)
        if posts is None:
            raise BadRequest(f"after: no post {after!r} in this node")
        return posts

    async def get_post(self, caller: str, channel: str, node: str, post_id: str) -> str:
        info = await self.node(channel, node)
        access.check_read(info, await self._affiliation(caller, info))
        found = await self.store.get_post(info.id, post_id)
        if found is None:
            raise NotFound(f"no post {post_id[:80]!r} in {node_source(info.channel, info.name)}")
        return found[1]

    async def delete_post(self, caller: str, channel: str, node: str, post_id: str) -> None:
        info = await self.node(channel, node)
        found = await self.store.get_post(info.id, post_id)
        affiliation = await self._affiliation(caller, info)
        if found is None:
            access.check_read(info, affiliation)
            raise NotFound(f"no post {post_id[:80]!r} in {node_source(info.channel, info.name)}")
        access.check_delete(info, affiliation, caller, found[0])
        payload = json.dumps({"id": post_id, "source": node_source(info.channel, info.name)})
        await self.store.delete_post(info.id, post_id, payload, now_iso())
        self._on_commit()

    async def subscriptions(self, caller: str) -> dict[str, str]:
        return await self.store.subscriptions(caller)

    async def follow(self, caller: str, changes: Any) -> dict[str, str]:
        """Apply ``{"channel/node": role | "none"}``; answers the caller's resulting roles."""
        if not isinstance(changes, dict) or not changes:
            raise BadRequest('expected a JSON object {"channel@domain/posts": "publisher"}')
        planned: list[tuple[int, str | None]] = []
        for source, wanted in changes.items():
            channel, slash, node = source.rpartition("/")
            if not slash:
                raise BadRequest(f"{source[:80]!r}: expected channel@domain/node")
            info = await self.node(channel, node)
            current = await self._affiliation(caller, info)
            if current is Affiliation.OUTCAST:
                raise Forbidden(f"you are banned from {info.channel}")
            if wanted == "none":
                if current is Affiliation.OWNER:
                    raise Conflict("the owner cannot unfollow their own channel")
                planned.append((info.id, None))
                continue
            role = Affiliation.parse(wanted)
            if role is None:
                raise BadRequest(
                    f"{source[:300]}: role must be one of none, "
                    + ", ".join(a.value for a in Affiliation)
                )
            default = Affiliation(info.default_affiliation)
            if current is not None and current.rank > default.rank and role.rank >= current.rank:
                continue  # keep a role granted by the owner; nobody grants themselves more
            granted = role if role.rank <= default.rank else default
            if role is Affiliation.OUTCAST or current is Affiliation.OWNER:
                raise BadRequest(f"{source}: you cannot set that role on yourself")
            planned.append((info.id, granted.value))
        await self.store.set_subscriptions(caller, planned, self.max_follows)
        return await self.store.subscriptions(caller)


def _text(fields: dict[str, Any], name: str, limit: int) -> str:
    value = fields.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{name} must be a string of at most {limit} characters")
    return value


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
