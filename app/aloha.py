"""Aloha, Zulip's real-time events API under another name: queues over the one log.

A queue is a filtered view of its account's deliveries (posts of followed nodes, events that
concern it, and with all_public_streams the firehose): `register` stores its filters and
starts it at the end of the log; `events` acknowledges and reads what follows. A stream is a
channel (its JID), a topic is a node. Event ids are the log's cursors: they only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from datetime import datetime
from typing import Any

from app.channels import Channels, Retry
from app.config import Limits
from app.errors import BadRequest, UnknownQueue
from app.feeds import Hold
from app.model import POSTS_NODE, now_iso, parse_jid, parse_node
from app.store import Store
from app.store.base import Queue, QueueEvent

EVENT_TYPES = (
    "message",
    "update_message",
    "delete_message",
    "subscription",
    "follow_request",
    "heartbeat",
)
NARROW_OPERATORS = {"stream": "stream", "channel": "stream", "topic": "topic", "sender": "sender"}
MAX_EVENTS = 100
MAX_OPERAND_CHARS = 255  # a narrow names a stream, a topic or a sender
EXPIRE_STEP = 50  # queues deleted in one go
EXPIRE_EVERY = 10.0  # seconds between looks for expired queues


class Aloha:
    def __init__(
        self,
        store: Store,
        channels: Channels,
        lifespan: int,
        hold: int,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.channels = channels
        self.lifespan = lifespan
        self.hold = hold  # a poll may be held this long: it counts as polling
        self.limits = limits or Limits()
        self.expired = 0  # queues deleted after their life, since start
        self.longest_expiry_step = 0.0  # seconds the loop spent in one step of that

    async def expire_forever(self) -> None:
        """Delete queues past their life, a few at a time, so that no request waits long for
        it however many expire at once (a queue's narrow may be a few kB)."""
        while True:
            while True:
                started = time.perf_counter()
                deleted = await self.store.expire_queues(time.time(), self.hold, EXPIRE_STEP)
                self.longest_expiry_step = max(
                    self.longest_expiry_step, time.perf_counter() - started
                )
                self.expired += deleted
                if deleted < EXPIRE_STEP:
                    break
                await asyncio.sleep(0)  # let requests in between
            await asyncio.sleep(EXPIRE_EVERY)

    async def register(
        self,
        jid: str,
        event_types: Any = None,
        narrow: Any = None,
        all_public_streams: Any = False,
        queue_lifespan_secs: Any = None,
    ) -> dict[str, Any]:
        types = _event_types(event_types)
        if not isinstance(all_public_streams, bool):
            raise BadRequest("all_public_streams must be true or false")
        narrowed = _narrow(narrow, self.limits.max_narrow_terms)
        lifespan = self.lifespan
        if queue_lifespan_secs is not None:
            if (
                not isinstance(queue_lifespan_secs, int)
                or isinstance(queue_lifespan_secs, bool)
                or queue_lifespan_secs < 1
            ):
                raise BadRequest("queue_lifespan_secs must be a positive integer")
            lifespan = min(queue_lifespan_secs, self.lifespan)
        queue = Queue(
            id=f"{int(time.time())}:{secrets.token_hex(8)}",
            jid=jid,
            event_types=None if types is None else json.dumps(types),
            narrow=json.dumps(narrowed),
            all_public_streams=bool(all_public_streams),
            lifespan=lifespan,
            acked=0,
            last_poll=time.time(),
        )
        await self.store.create_queue(queue, self.limits.max_queues, self.hold)
        return {"queue_id": queue.id, "last_event_id": -1}

    async def events(
        self, jid: str, queue_id: str, last_event_id: int
    ) -> tuple[list[dict[str, Any]], Hold]:
        """The queue's next events (acknowledging up to ``last_event_id``), and how to hold
        when there are none: on its channels, with a heartbeat as the timeout answer."""
        if not -1 <= last_event_id <= await self.store.last_event_id():
            raise BadRequest("last_event_id must be an event id given by this server, or -1")
        while True:
            poll = await self.store.poll_queue(
                queue_id, jid, last_event_id, time.time(), MAX_EVENTS, self.hold
            )
            if poll is None:
                raise UnknownQueue(queue_id)
            queue = poll.queue
            types = None if queue.event_types is None else set(json.loads(queue.event_types))
            narrow = [tuple(term) for term in json.loads(queue.narrow)]
            events = [
                event
                for raw in poll.events
                if (event := _to_zulip(raw)) is not None
                and (types is None or event["type"] in types)
                and _matches(event, narrow)
            ]
            position = poll.events[-1].event_id if poll.events else queue.acked
            if events or len(poll.events) < MAX_EVENTS:
                break
            # A full page of what this queue filters out: step past it, and read on.
            await self.store.skip_queue(queue.id, position)
        if poll.events and not events:
            await self.store.skip_queue(queue.id, position)  # none of those is for this queue
        heartbeat = {"type": "heartbeat", "id": position}
        body = json.dumps({"result": "success", "msg": "", "events": [heartbeat]})
        return events, Hold([(channel, str(head)) for channel, head in poll.heads], body)

    async def deregister(self, jid: str, queue_id: str) -> None:
        if not await self.store.delete_queue(queue_id, jid, now_iso()):
            raise UnknownQueue(queue_id)

    async def send_message(self, jid: str, fields: dict[str, str]) -> int:
        """Post ``content`` to stream ``to``, topic ``topic``; the message id is its cursor."""
        if fields.get("type", "stream") not in ("stream", "channel"):
            raise BadRequest("only stream messages are supported")
        to = fields.get("to", "")
        if to.startswith("["):  # Zulip clients may send a JSON list of one stream
            try:
                to = json.loads(to)[0]
            except (ValueError, IndexError, KeyError, TypeError, RecursionError):
                raise BadRequest("to must name one stream") from None
        if not isinstance(to, str):
            raise BadRequest("to must name one stream")
        topic = fields.get("topic") or fields.get("subject") or POSTS_NODE
        parse_jid(to), parse_node(topic)
        local_id = fields.get("local_id")
        created = await self.channels.create_post(
            jid,
            to,
            topic,
            {"content": fields.get("content")},
            Retry("local_id", local_id) if local_id else None,
        )
        return created.event_id


def _event_types(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise BadRequest("event_types must be a JSON list of event type names")
    unknown = set(raw) - set(EVENT_TYPES)
    if unknown:
        raise BadRequest(f"unknown event types: {', '.join(sorted(unknown))}")
    return list(raw)


def _narrow(raw: Any, max_terms: int) -> list[list[str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("narrow must be a JSON list of [operator, operand]")
    if len(raw) > max_terms:
        raise BadRequest(f"a narrow has at most {max_terms} terms")
    terms = []
    for term in raw:
        if isinstance(term, dict):  # Zulip also takes {"operator", "operand"}
            term = [term.get("operator"), term.get("operand")]
        if (
            not isinstance(term, list)
            or len(term) != 2
            or not all(isinstance(part, str) for part in term)
            or term[0] not in NARROW_OPERATORS
            or len(term[1]) > MAX_OPERAND_CHARS
        ):
            raise BadRequest(
                f"bad narrow term {str(term)[:80]}: operators are {', '.join(NARROW_OPERATORS)},"
                f" operands at most {MAX_OPERAND_CHARS} characters"
            )
        terms.append([NARROW_OPERATORS[term[0]], _operand(NARROW_OPERATORS[term[0]], term[1])])
    return terms


def _operand(operator: str, raw: str) -> str:
    """A stream or a sender named as its JID is stored, as a login is found (a name that is no
    JID matches nothing); a topic in lower case."""
    if operator in ("stream", "sender"):
        with contextlib.suppress(BadRequest):
            return parse_jid(raw)
    return raw.lower()


def _matches(event: dict[str, Any], narrow: list[tuple[str, ...]]) -> bool:
    """Narrows filter message events, as in Zulip."""
    if event["type"] != "message":
        return True
    message = event["message"]
    values = {
        "stream": message["display_recipient"],
        "topic": message["subject"],
        "sender": message["sender_email"],
    }
    return all(values[operator].lower() == operand for operator, operand in narrow)


def _epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def _to_zulip(raw: QueueEvent) -> dict[str, Any] | None:
    data = json.loads(raw.payload)
    if raw.type == "post":
        stream, _, topic = data["source"].rpartition("/")
        message = {
            "id": raw.event_id,
            "sender_email": data["author"],
            "sender_full_name": data["author"],
            "content": data["content"],
            "timestamp": _epoch(data["published"]),
            "type": "stream",
            "display_recipient": stream,
            "stream_id": raw.node_id,
            "subject": topic,
            "topic": topic,
            "client": "buddycloud",
            "flags": [],
            "post": data,
        }
        return {"type": "message", "id": raw.event_id, "message": message, "flags": []}
    if raw.type == "post_updated":
        post = data["post"]
        if "content" not in post:
            return None  # the post was deleted since: its delete_message follows
        stream, _, topic = post["source"].rpartition("/")
        return {
            "type": "update_message",
            "id": raw.event_id,
            "message_id": raw.message_id,
            "message_ids": [raw.message_id],
            "content": post["content"],
            "stream_name": stream,
            "subject": topic,
            "edit_timestamp": _epoch(post["updated"]),
        }
    if raw.type == "post_deleted":
        stream, _, topic = data["source"].rpartition("/")
        return {
            "type": "delete_message",
            "id": raw.event_id,
            "message_id": raw.message_id,
            "message_ids": [raw.message_id],
            "message_type": "stream",
            "stream_name": stream,
            "topic": topic,
        }
    if raw.type == "subscription":
        stream, _, _ = data["node"].rpartition("/")
        op = {"approved": "add", "role_changed": "update"}.get(data["change"], "remove")
        event = {"type": "subscription", "id": raw.event_id, "op": op, **data}
        event["subscriptions"] = [{"name": stream, "role": data["affiliation"]}]
        del event["cursor"]
        return event
    if raw.type == "follow_request":
        event = {**data, "id": raw.event_id}
        del event["cursor"]
        return event
    return None
