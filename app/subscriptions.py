"""Following, follow requests and their approval, roles and bans: each change an event.

A follower of an open channel gets its default role at once; of an authorize (private) channel,
"pending" until its owner or a moderator approves. Events go to the events feed of whom they
concern: a follow request to the node's owner and moderators, a subscription update (approved,
rejected, role changed, banned, unfollowed) to the follower.
"""

from __future__ import annotations

from math import ceil
from typing import Any

from app import access
from app.channels import Channels
from app.config import Limits
from app.errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests
from app.model import PENDING, Affiliation, node_source, now_iso, parse_jid
from app.store.base import NodeInfo, Notice, Recipients, SubscriptionChange
from app.throttle import Throttle

ROLES_THE_OWNER_GIVES = ("member", "publisher", "moderator", "outcast", "none")


class Subscriptions:
    def __init__(self, channels: Channels, limits: Limits):
        self.channels = channels
        self.store = channels.store
        self.limits = limits
        # A follow to a private channel is an event to its owner: bound how often.
        self._changes = Throttle(self.store, "follows per user", limits.follows_per_minute, 60.0)

    async def of(self, caller: str) -> dict[str, str]:
        return await self.store.subscriptions(caller)

    async def follow(self, caller: str, wanted: Any) -> dict[str, str]:
        """Apply ``{"channel/node": role | "none"}``; answers the caller's resulting roles."""
        if not isinstance(wanted, dict) or not wanted:
            raise BadRequest('expected a JSON object {"channel@domain/posts": "publisher"}')
        if wait := await self._changes.take(caller):
            raise TooManyRequests(
                f"at most {self.limits.follows_per_minute} follow changes a minute:"
                f" try again in {ceil(wait)}s",
                wait,
            )
        changes: list[SubscriptionChange] = []
        for source, role_name in wanted.items():
            channel, slash, node = source.rpartition("/")
            if not slash:
                raise BadRequest(f"{source[:80]!r}: expected channel@domain/node")
            info = await self.channels.node(channel, node)
            current = await self.store.affiliation(caller, info.id)
            cap = await self._cap(caller, info)
            change = self._follow_change(caller, info, current, cap, role_name)
            if change is not None:
                changes.append(change)
        await self.store.apply_subscriptions(
            changes, now_iso(), self.limits.max_follows, self.limits.max_pending
        )
        return await self.store.subscriptions(caller)

    async def _cap(self, jid: str, info: NodeInfo) -> Affiliation:
        """The most a follow of ``jid`` may give: the node's default, or less if the owner
        last gave them less (a demotion outlives an unfollow)."""
        default = Affiliation(info.default_affiliation)
        given = Affiliation.parse(await self.store.given_role(jid, info.id))
        return given if given is not None and given.rank < default.rank else default

    def _follow_change(
        self,
        caller: str,
        info: NodeInfo,
        current: str | None,
        cap: Affiliation,
        role_name: Any,
    ) -> SubscriptionChange | None:
        source = node_source(info.channel, info.name)
        if current == Affiliation.OUTCAST:
            raise Forbidden(f"you are banned from {info.channel}")
        if role_name == "none":
            if current == Affiliation.OWNER:
                raise Conflict("the owner cannot unfollow their own channel")
            if current is None:
                return None
            notice = _subscription_notice(source, caller, None, "unfollowed")
            return SubscriptionChange(caller, info.id, None, [notice], current)
        role = Affiliation.parse(role_name)
        if role is None:
            raise BadRequest(
                f"{source}: role must be one of none, " + ", ".join(a.value for a in Affiliation)
            )
        if role is Affiliation.OUTCAST:
            raise BadRequest(f"{source}: you cannot set that role on yourself")
        if current is not None:
            # Following already (or asked to), or the owner: roles are the owner's to change.
            return None
        if info.access_model != "open":
            request = Notice(
                "follow_request", {"node": source, "jid": caller}, Recipients("moderators")
            )
            return SubscriptionChange(caller, info.id, PENDING, [request], current)
        granted = role if role.rank <= cap.rank else cap
        return SubscriptionChange(caller, info.id, granted.value, [], current)

    async def subscribers(self, caller: str, channel: str, node: str) -> dict[str, str]:
        info = await self.channels.node(channel, node)
        access.check_read(info, await self.channels.affiliation(caller, info))
        return await self.store.subscribers(info.id)

    async def pending(self, caller: str, channel: str, node: str) -> list[dict[str, str]]:
        info = await self._moderated(caller, channel, node)
        return [{"jid": jid, "subscription": PENDING} for jid in await self.store.pending(info.id)]

    async def decide(self, caller: str, channel: str, node: str, decisions: Any) -> None:
        """Approve (``subscribed``) or reject (``none``) pending follow requests."""
        info = await self._moderated(caller, channel, node)
        if not isinstance(decisions, list) or not decisions:
            raise BadRequest('expected a JSON list [{"jid": ..., "subscription": "subscribed"}]')
        pending = set(await self.store.pending(info.id))
        source = node_source(info.channel, info.name)
        changes = []
        decided: set[str] = set()
        for decision in decisions:
            if not isinstance(decision, dict) or not isinstance(decision.get("jid"), str):
                raise BadRequest('each decision is {"jid": ..., "subscription": ...}')
            jid = parse_jid(decision["jid"])
            if jid not in pending:
                raise NotFound(f"{jid} has no pending request for {source}")
            if jid in decided:
                raise BadRequest(f"{jid} is decided twice")
            decided.add(jid)
            if decision.get("subscription") == "subscribed":
                role = (await self._cap(jid, info)).value
                notice = _subscription_notice(source, jid, role, "approved")
                changes.append(SubscriptionChange(jid, info.id, role, [notice], PENDING))
            elif decision.get("subscription") == "none":
                notice = _subscription_notice(source, jid, None, "rejected")
                changes.append(SubscriptionChange(jid, info.id, None, [notice], PENDING))
            else:
                raise BadRequest('subscription must be "subscribed" (approve) or "none" (reject)')
        await self.store.apply_subscriptions(changes, now_iso())

    async def set_roles(self, caller: str, channel: str, node: str, roles: Any) -> dict[str, str]:
        """The owner gives roles, bans (outcast) or removes (none): ``{jid: role}``."""
        info = await self.channels.node(channel, node)
        access.check_owner(info, await self.channels.affiliation(caller, info))
        if not isinstance(roles, dict) or not roles:
            raise BadRequest('expected a JSON object {"jid": "moderator"}')
        source = node_source(info.channel, info.name)
        changes = []
        for raw_jid, role in roles.items():
            jid = parse_jid(raw_jid)
            if role not in ROLES_THE_OWNER_GIVES:
                raise BadRequest(f"{jid}: role must be one of {', '.join(ROLES_THE_OWNER_GIVES)}")
            if jid == caller:
                raise BadRequest("the owner's own role cannot change")
            if await self.store.get_account(jid) is None:
                raise NotFound(f"no account {jid}")
            current = await self.store.affiliation(jid, info.id)
            if role == "none":
                if current is None:
                    continue
                notice = _subscription_notice(source, jid, None, "unfollowed")
                changes.append(SubscriptionChange(jid, info.id, None, [notice], current))
            else:
                if current in (None, PENDING) and role != Affiliation.OUTCAST:
                    # Nobody is made to follow: roles are for followers (bans are for anyone).
                    raise Conflict(f"{jid} does not follow {source}: only a ban applies")
                banned = role == Affiliation.OUTCAST
                notice = _subscription_notice(
                    source, jid, role, "banned" if banned else "role_changed"
                )
                changes.append(
                    SubscriptionChange(jid, info.id, role, [notice], current, given=not banned)
                )
        await self.store.apply_subscriptions(changes, now_iso())
        return await self.store.subscribers(info.id)

    async def _moderated(self, caller: str, channel: str, node: str) -> NodeInfo:
        info = await self.channels.node(channel, node)
        access.check_moderate(info, await self.channels.affiliation(caller, info))
        return info


def _subscription_notice(source: str, jid: str, role: str | None, change: str) -> Notice:
    fields = {
        "node": source,
        "jid": jid,
        "subscription": "subscribed" if role and role != Affiliation.OUTCAST else "none",
        "affiliation": role or "none",
        "change": change,
    }
    return Notice("subscription", fields, Recipients("user", jid))
