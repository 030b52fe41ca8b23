"""The publisher: after each commit, the log's new items go to every GRIP proxy, in order.

The log is the outbox. A post is delivered to the Pushpin channel of every account that may
see it, each delivery chained by prev-id on its channel. Each target (a Pushpin, or Fanout's
CDN) keeps a position in the deliveries, saved in the store, and sends those that follow it in
log order, batched into one publish request. A failed publish is retried with backoff before
anything later goes out. Nothing here runs in a request: a POST only wakes the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from gripcontrol import parse_grip_uri

from app.config import ConfigError
from app.grip import hint_item, response_item
from app.model import feed_body
from app.publish_client import ClientError, PublishClient
from app.store import Store
from app.store.base import Delivery, Position

log = logging.getLogger("app.publisher")

BATCH_ROWS = 500
BATCH_BYTES = 800_000  # Pushpin's push_in_http_max_body_size is 1,000,000
SAVE_SECONDS = 0.2  # how often, at most, a target's position is saved
POLL_SECONDS = 1.0  # also picks up commits made by another process on the same store
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 5.0


class PublishError(Exception):
    pass


@dataclass
class Target:
    """One GRIP publish endpoint, parsed from a GRIP_URL entry."""

    publish_url: str
    label: str  # the URL without credentials, for logs and the cursor's key
    iss: str | None = None
    key: bytes | None = None
    position: Position = field(default_factory=lambda: Position(0, ""))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    client: PublishClient | None = None
    saved: Position = field(default_factory=lambda: Position(0, ""))  # as the store has it
    saved_at: float = 0.0
    failing: bool = False  # its last publish failed

    @classmethod
    def parse(cls, url: str) -> Target:
        parsed: dict[str, Any] = parse_grip_uri(url)
        key = parsed.get("key")
        if isinstance(key, bytes) and not parsed.get("control_iss"):
            raise ConfigError(f"GRIP_URL {url!r}: a key=base64:... needs iss= too")
        control = parsed["control_uri"]
        parts = urlsplit(control)
        label = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
        return cls(
            publish_url=control.rstrip("/") + "/publish/",
            label=label,
            iss=parsed.get("control_iss"),
            key=key.encode() if isinstance(key, str) else key,
        )

    def headers(self) -> dict[str, str]:
        if not self.key:
            return {}
        if self.iss:
            claims = {"iss": self.iss, "exp": int(time.time()) + 600}
            return {"Authorization": "Bearer " + jwt.encode(claims, self.key, "HS256")}
        return {"Authorization": "Bearer " + self.key.decode()}  # given as text: see parse


class Publisher:
    def __init__(self, store: Store, grip_urls: list[str], timeout: float = 5.0) -> None:
        self.store = store
        self.targets = [Target.parse(url) for url in grip_urls]
        for target in self.targets:
            target.client = PublishClient(target.publish_url, timeout)
        self._tasks: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()  # set (and replaced) after each accepted publish
        self.published = 0  # items accepted by a target, for /health and tests

    async def start(self) -> None:
        end = Position.after_event(await self.store.last_event_id())
        for target in self.targets:
            saved = await self.store.publish_position(target.label)
            # A new target starts at the end of the log: what came before is served from the
            # store when a client asks with its cursor.
            target.position = target.saved = end if saved is None else saved
            if saved is None:
                await self.store.save_publish_position(target.label, end)
            task = asyncio.create_task(self._run(target), name=f"publish {target.label}")
            self._tasks.append(task)

    def notify(self) -> None:
        """Called after a commit: there is something new in the log."""
        for target in self.targets:
            target.wake.set()

    async def published_through(self, channels: Sequence[tuple[str, str]], timeout: float) -> bool:
        """Wait until every target has accepted the item with id ``prev`` on each ``(channel,
        prev)``; False if that took longer than ``timeout``.

        A hold's prev-id must be the id Pushpin last saw on the channel: when they differ,
        Pushpin 1.36 asks the origin again, and in that retry it can lose the request for a
        minute (docs/design.md). A hold made while the publisher is behind would differ, so it
        waits for the publisher first (a few ms, under load). A target whose last publish
        failed is not waited for: it is down, and the hold would only be late.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(
            _past(t.position, c, int(p)) for t in self.targets if not t.failing for c, p in channels
        ):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def drain(self, timeout: float) -> bool:
        """Wait until every target has published the whole log; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [t for t in self.targets if await self.store.deliveries_after(t.position, 1)]
            if not pending:
                return True
            self.notify()
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for target in self.targets:
            try:
                await self._save(target, now=math.inf)
            except Exception:
                log.exception("could not save the position of %s", target.label)
        for target in self.targets:
            if target.client is not None:
                target.client.close()

    async def _run(self, target: Target) -> None:
        delay = BACKOFF_FIRST
        while True:
            target.wake.clear()
            try:
                sent = await self._publish_next(target)
            except Exception as exc:
                # Whatever failed (the target, the store), nothing later goes out before the
                # same batch has: retry it, ever more patiently. This task must not die.
                target.failing = True
                if isinstance(exc, PublishError):
                    log.warning(
                        "publish after %s to %s failed: %s; retrying in %.2fs",
                        target.position,
                        target.label,
                        exc,
                        delay,
                    )
                else:
                    log.exception("publisher for %s failed; retrying in %.2fs", target.label, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_FIRST
            target.failing = False
            if not sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(target.wake.wait(), POLL_SECONDS)

    async def _publish_next(self, target: Target) -> int:
        """Publish the next batch after the target's position; the number of items sent."""
        batch = _fit(await self.store.deliveries_after(target.position, BATCH_ROWS))
        if batch:
            await self._send(target, batch)
            target.position = Position(batch[-1].event_id, batch[-1].channel)
            self.published += len(batch)
            self._progress.set()
            self._progress = asyncio.Event()
        await self._save(target)  # when idle too: what was published lately is saved within 1 s
        return len(batch)

    async def _save(self, target: Target, now: float | None = None) -> None:
        """Save the target's position, at most every SAVE_SECONDS (a commit per publish doubled
        the store's commits under load). After a crash the last moments are published again:
        Pushpin drops an item id it has seen (on a new Pushpin, a client's hold from its
        cursor shows the gap and the origin answers from the log)."""
        now = time.monotonic() if now is None else now
        if now - target.saved_at >= SAVE_SECONDS and target.position != target.saved:
            await self.store.save_publish_position(target.label, target.position)
            target.saved, target.saved_at = target.position, now

    async def _send(self, target: Target, batch: list[Delivery]) -> None:
        items = [
            # An Aloha queue filters per queue: Pushpin re-asks the origin for each held poll.
            hint_item(d.channel, str(d.event_id), str(d.prev_id))
            if d.channel.startswith("z")
            else response_item(
                d.channel, str(d.event_id), str(d.prev_id), feed_body(d.event_id, [d.payload])
            )
            for d in batch
        ]
        body = json.dumps({"items": items}, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **target.headers()}
        assert target.client is not None
        try:
            status, answer = await target.client.post(body, headers)
        except ClientError as exc:
            raise PublishError(str(exc)) from exc
        if status != 200:
            raise PublishError(f"HTTP {status}: {answer[:200].decode(errors='replace')}")


def _past(position: Position, channel: str, item_id: int) -> bool:
    """Has a target at ``position`` published item ``item_id`` of ``channel``? (0: nothing.)"""
    return item_id == 0 or (position.event_id, position.channel) >= (item_id, channel)


def _fit(rows: list[Delivery]) -> list[Delivery]:
    """As many rows as fit one publish request (at least one)."""
    size = 0
    for index, row in enumerate(rows):
        size += len(row.payload) + len(row.channel) + 200
        if size > BATCH_BYTES and index > 0:
            return rows[:index]
    return rows
