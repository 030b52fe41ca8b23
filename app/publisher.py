"""The publisher: after each commit, the log's new items go to every GRIP proxy, in order.

The log is the outbox. A post is delivered to the Pushpin channel of every account that may
see it, each delivery chained by prev-id on its channel. Each target (a Pushpin, or Fanout's
CDN) keeps a position in the deliveries, saved in the store, and sends those that follow it in
log order, batched into one publish request. A failed publish is retried with backoff before
anything later goes out. Nothing here runs in a request: a POST only wakes the publisher.

Several origins may share the database: for each target, the one holding its lease (the
store's, which ends with the process) publishes, and announces each accepted publish to the
others, so that a hold they make knows what its proxy has seen. The others try to take the
lease every LEASE_RETRY_SECONDS, so one takes over soon after the publisher's process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt

from app.config import ConfigError
from app.grip import hint_item, parse_grip_url, response_item, without_credentials
from app.metrics import Metrics
from app.model import FIREHOSE, FIREHOSE_HINT, feed_body, feed_of
from app.publish_client import ClientError, PublishClient, publish_client
from app.store import Store
from app.store.base import Delivery, Position
from app.streams import item_event
from app.wakes import Wakes

log = logging.getLogger("app.publisher")

BATCH_ROWS = 500
BATCH_BYTES = 800_000  # Pushpin takes publish requests up to 1,000,000 bytes by default
SAVE_SECONDS = 0.2  # how often, at most, a target's position is saved
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 5.0
CLOSE_TRIES = 3  # times close() cancels the targets' tasks (waiting a second each)
LAG_COUNT_MAX = 100_000  # /health counts a target's backlog up to this
LEASE_RETRY_SECONDS = 1.0  # how often an origin without a target's lease tries to take it
LEASE_CHECK_SECONDS = 1.0  # how often the publisher makes sure it still holds its lease
ANNOUNCE_BYTES = 7000  # PostgreSQL's NOTIFY takes up to 8,000: past this, no channel list


@dataclass(frozen=True)
class TargetLag:
    target: str
    failing: bool  # its last publish failed
    lag_items: int  # deliveries not yet accepted (counted up to LAG_COUNT_MAX)
    lag_events: int  # the newest event's id minus the one it has accepted up to
    lag_seconds: float  # age of the oldest of them
    stalled: bool
    passed_over: int
    publishing: bool  # this origin holds the target's lease (another publishes otherwise)


class PublishError(Exception):
    """A publish request failed: retried, with backoff, before anything later is sent."""


class TooLarge(PublishError):
    """The target refused a publish request as too large (HTTP 413, or Pushpin's 400)."""


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
    wake_client: PublishClient | None = None
    saved: Position = field(default_factory=lambda: Position(0, ""))  # as the store has it
    # as the store had it when this origin, not publishing to the target, last looked (lag)
    seen_saved: Position = field(default_factory=lambda: Position(0, ""))
    saved_at: float = 0.0
    failing: bool = False  # its last publish failed
    accepted_at: float = field(default_factory=time.monotonic)  # its last accepted publish
    passed_over: int = 0  # items it refused alone as too large, sent as hints instead
    leader: bool = False  # this process holds the target's lease and publishes to it
    wakes: Wakes | None = None  # its sockets' wake-ups (app/wakes.py)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # its holder let it go
    lease_checked: float = 0.0

    @classmethod
    def parse(cls, url: str) -> Target:
        try:
            entry = parse_grip_url(url)
        except ValueError as exc:
            raise ConfigError(f"GRIP_URL {without_credentials(url)!r}: {exc}") from None
        return cls(publish_url=entry.publish_url, label=entry.label, iss=entry.iss, key=entry.key)

    def headers(self) -> dict[str, str]:
        if not self.key:
            return {}
        if self.iss:
            claims = {"iss": self.iss, "exp": int(time.time()) + 600}
            return {"Authorization": "Bearer " + jwt.encode(claims, self.key, "HS256")}
        return {"Authorization": "Bearer " + self.key.decode()}  # given as text: see parse


class Publisher:
    def __init__(
        self,
        store: Store,
        grip_urls: list[str],
        timeout: float = 5.0,
        poll_seconds: float = 1.0,
        ca_file: Path | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        # How often it looks at the log unwoken: a safety net, which also picks up commits
        # made by another process on the same store.
        self.poll_seconds = poll_seconds
        self.targets = [Target.parse(url) for url in grip_urls]
        for target in self.targets:
            target.client = publish_client(target.publish_url, timeout, ca_file)
            # Its own connection: a client sends one request at a time.
            target.wake_client = publish_client(target.publish_url, timeout, ca_file)
        self._timeout, self._ca_file = timeout, ca_file
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._progress = asyncio.Event()  # set (and replaced) after each accepted publish
        # Told the channels of each publish before it is sent (the holds on them end).
        self.on_sending: Callable[[list[str]], None] = lambda channels: None
        self.published = 0  # items accepted by a target, for /health and tests
        store.on_announce = self._heard

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
            send = functools.partial(self._send, target, client=target.wake_client)
            target.wakes = Wakes(send, target.label)
            task = asyncio.create_task(target.wakes.run(), name=f"wake sockets {target.label}")
            self._tasks.append(task)

    def lease(self, target: Target) -> str:
        """The lease whose holder publishes to ``target`` (one origin at a time)."""
        return f"publish {target.label}"

    async def _lead(self, target: Target) -> bool:
        """Is this process the one publishing to ``target``? Takes its lease when free, and
        then starts from the furthest of what was saved and what the last holder announced."""
        now = time.monotonic()
        if target.leader:
            if now - target.lease_checked < LEASE_CHECK_SECONDS:
                return True
            target.lease_checked = now
            if await self.store.lease_held(self.lease(target)):
                return True
            target.leader = False
            log.warning("lost the lease to publish to %s: another origin may take it", target.label)
        if not await self.store.try_lease(self.lease(target)):
            return False
        saved = await self.store.publish_position(target.label)
        if saved is not None and saved > target.position:
            target.position = target.saved = saved
        target.leader, target.lease_checked, target.accepted_at = True, now, now
        log.info(
            "publishing to %s from %s (this origin took its lease)", target.label, target.position
        )
        return True

    def _heard(self, message: str) -> None:
        """Another origin's publisher announced an accepted publish (``channels``: the
        channels it published on), or that it let the target's lease go (``channels`` None)."""
        try:
            label, event_id, channel, channels = json.loads(message)
        except ValueError:
            log.warning("ignored an announcement that is not ours: %.100r", message)
            return
        for target in self.targets:
            if target.label != label or target.leader:
                continue
            if channels is None:
                target.released.set()  # try to take the lease now, not at the next retry
            position = Position(event_id, channel)
            if position > target.position:
                target.position = position
                target.accepted_at = time.monotonic()
                self.on_sending(channels or [])
                self._progress.set()
                self._progress = asyncio.Event()

    async def send_now(self, items: list[dict[str, Any]]) -> list[str]:
        """Send ``items`` to every target at once, outside the log's order (items with no id:
        closes and hints), each on a connection of its own; the targets that failed, each
        logged. Whichever origin calls this sends: it needs no lease."""

        async def send(target: Target) -> bool:
            client = publish_client(target.publish_url, self._timeout, self._ca_file)
            try:
                await self._send(target, [_encode(items)], client)
                return True
            except PublishError as exc:
                log.warning("sending %d items to %s failed: %s", len(items), target.label, exc)
                return False
            finally:
                await client.aclose()

        sent = await asyncio.gather(*(send(target) for target in self.targets))
        return [t.label for t, ok in zip(self.targets, sent, strict=True) if not ok]

    def probe(self, channels: list[str]) -> None:
        """Sockets just subscribed to ``channels``: probe them through every target
        (app/wakes.py). Whichever origin answered sends the probes: they need no lease."""
        for target in self.targets:
            if target.wakes is not None:
                for channel in channels:
                    target.wakes.probe(channel)

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
        # The firehose's hint items go out with the firehose's own.
        published = [(FIREHOSE if c == FIREHOSE_HINT else c, int(p)) for c, p in channels]
        while not all(
            _past(t.position, c, p) for t in self.targets if not t.failing for c, p in published
        ):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def lag(self, stalled_after: float) -> list[TargetLag]:
        """Where each target stands: what waits for it, since when, and whether it is stalled
        (events wait and it has accepted nothing for ``stalled_after`` seconds).

        Where another origin publishes, this one knows the target's position from what that
        one announces, and from what it saves in the store: the store's, when it is further
        (an origin started after the last publish has heard nothing), counts as progress."""
        now, wall = time.monotonic(), time.time()
        newest = await self.store.last_event_id()
        lags = []
        for target in self.targets:
            position = target.position
            if not target.leader:
                saved = await self.store.publish_position(target.label)
                if saved is not None and saved > target.seen_saved:
                    target.seen_saved = saved
                    if saved > position:
                        target.accepted_at = now
                position = max(position, target.seen_saved)
            items, oldest = await self.store.backlog(position, LAG_COUNT_MAX)
            seconds = 0.0 if oldest is None else max(0.0, wall - _epoch(oldest))
            idle = now - target.accepted_at
            lags.append(
                TargetLag(
                    target=target.label,
                    failing=target.failing,
                    lag_items=items,
                    lag_events=max(0, newest - _through(position)) if items else 0,
                    lag_seconds=round(seconds, 3),
                    stalled=items > 0 and idle > stalled_after,
                    passed_over=target.passed_over,
                    publishing=target.leader,
                )
            )
        return lags

    async def drain(self, timeout: float) -> bool:
        """Wait until every target has published the whole log; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [
                t
                for t in self.targets
                if t.leader and await self.store.deliveries_after(t.position, 1)
            ]
            if not pending:
                return True
            self.notify()
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        # Python 3.11's wait_for can swallow a cancellation that lands as the call it waits
        # for fails (a refused connection, say): the loop then ends on its flag instead.
        self._closing = True
        pending = set(self._tasks)
        for _ in range(CLOSE_TRIES):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks.clear()
        for target in self.targets:
            if not target.leader:
                continue
            try:
                await self._save(target, now=math.inf)
                await self.store.release_lease(self.lease(target))
                released = [target.label, target.position.event_id, target.position.channel]
                await self.store.announce(json.dumps([*released, None]))
            except Exception:
                log.exception("could not save the position of %s", target.label)
            target.leader = False
        for target in self.targets:
            for client in (target.client, target.wake_client):
                if client is not None:
                    await client.aclose()

    async def _run(self, target: Target) -> None:
        delay = BACKOFF_FIRST
        while not self._closing:
            target.wake.clear()
            try:
                if not await self._lead(target):
                    target.released.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(target.released.wait(), LEASE_RETRY_SECONDS)
                    continue
                sent = await self._publish_next(target)
            except Exception as exc:
                # Whatever failed (the target, the store), nothing later goes out before the
                # same batch has: retry it, ever more patiently. This task must not die.
                target.failing = True
                if isinstance(exc, PublishError):
                    self.metrics.publish_failed(target.label)
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
                await self._idle(target)

    async def _idle(self, target: Target) -> None:
        """Wait for a wake-up, or until the next look at the log; meanwhile make sure, every
        LEASE_CHECK_SECONDS, that this process still holds the target's lease."""
        deadline = time.monotonic() + self.poll_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(target.wake.wait(), min(remaining, LEASE_CHECK_SECONDS))
                return
            if not await self._lead(target):
                return

    async def _publish_next(self, target: Target) -> int:
        """Publish the next batch after the target's position; the number of items sent."""
        rows = await self.store.deliveries_after(target.position, BATCH_ROWS)
        items = [_encode(_items(row)) for row in rows]
        count = _fit(items)
        if count:
            await self._publish(target, rows[:count], items[:count])
        await self._save(target)  # when idle too: what was published lately is saved within 1 s
        return count

    async def _publish(self, target: Target, rows: list[Delivery], items: list[bytes]) -> None:
        """Send ``items`` (encoded ``rows``) and move the target past them. A request refused
        as too large is split in two, down to single items; an item refused alone goes out
        as a hint instead (Pushpin then asks the origin, which answers from the log), or, if
        even that is refused, not at all: the next item's prev-id shows Pushpin the gap, and
        the origin answers from the log again. Any other failure raises, to be retried."""
        channels = [row.channel for row in rows]
        self.on_sending(channels + ([FIREHOSE_HINT] if FIREHOSE in channels else []))
        try:
            await self._send(target, items)
        except TooLarge as exc:
            if len(rows) > 1:
                half = len(rows) // 2
                await self._publish(target, rows[:half], items[:half])
                await self._publish(target, rows[half:], items[half:])
                return
            row = rows[0]
            log.warning(
                "%s refused item %d on %s (%d bytes) as too large (%s): sending a hint instead",
                target.label,
                row.event_id,
                row.channel,
                len(items[0]),
                exc,
            )
            target.passed_over += 1
            try:
                await self._send(target, [_encode(_hints(row))])
            except TooLarge:
                log.error("%s refused even the hint for item %d", target.label, row.event_id)
        await self._accepted(target, rows, channels)

    async def _accepted(self, target: Target, rows: list[Delivery], channels: list[str]) -> None:
        target.position = Position(rows[-1].event_id, rows[-1].channel)
        target.accepted_at = time.monotonic()
        if target.wakes is not None:
            target.wakes.add((row.channel, row.event_id) for row in rows)
        self.published += len(rows)
        self.metrics.published(target.label, len(rows))
        self._progress.set()
        self._progress = asyncio.Event()
        # The holds other origins made on these channels end too, when they hear of it.
        position = [target.label, target.position.event_id, target.position.channel]
        message = json.dumps([*position, sorted(set(channels))])
        if len(message) > ANNOUNCE_BYTES:
            message = json.dumps([*position, []])
        await self.store.announce(message)

    async def _save(self, target: Target, now: float | None = None) -> None:
        """Save the target's position, at most every SAVE_SECONDS (a commit per publish doubled
        the store's commits under load). After a crash the last moments are published again:
        Pushpin drops an item id it has seen (on a new Pushpin, a client's hold from its
        cursor shows the gap and the origin answers from the log)."""
        now = time.monotonic() if now is None else now
        if now - target.saved_at >= SAVE_SECONDS and target.position != target.saved:
            await self.store.save_publish_position(target.label, target.position)
            target.saved, target.saved_at = target.position, now

    async def _send(
        self, target: Target, items: list[bytes], client: PublishClient | None = None
    ) -> None:
        body = b'{"items":[' + b",".join(items) + b"]}"
        headers = {"Content-Type": "application/json", **target.headers()}
        client = client or target.client
        assert client is not None
        try:
            status, answer = await client.post(body, headers)
        except ClientError as exc:
            raise PublishError(str(exc)) from exc
        if status == 200:
            return
        reason = f"HTTP {status}: {answer[:200].decode(errors='replace')}"
        # Pushpin answers 400 "Request body too large" (others 413). A 400 for anything else
        # in our items is treated the same way: splitting finds the item, which is passed over.
        # Anything else (401, 403, 429, 5xx) says nothing about the items: retry them.
        if status in (400, 413):
            raise TooLarge(reason)
        raise PublishError(reason)


def _items(row: Delivery) -> list[dict[str, Any]]:
    """What a delivery is published as: the feed's answer; a hint where each held request
    needs an answer of its own (an Aloha queue filters per queue) or where the origin must
    decide (a post deleted since it was logged is skipped there); and each firehose item
    once more as a hint, for banned users' holds."""
    item_id, prev_id = str(row.event_id), str(row.prev_id)
    feed = feed_of(row.channel)
    if feed is None or row.gone:
        items = [hint_item(row.channel, item_id, prev_id)]
    else:
        body = feed_body(row.event_id, [row.payload])
        stream = item_event(feed, row.event_id, row.payload)
        items = [response_item(row.channel, item_id, prev_id, body, stream)]
    if row.channel == FIREHOSE:
        items.append(hint_item(FIREHOSE_HINT, str(row.event_id), str(row.prev_id)))
    return items


def _hints(row: Delivery) -> list[dict[str, Any]]:
    # Streams skip what a hint names (Grip-Last is then its id): they must see this one as a
    # gap instead, and ask from before it.
    items = [hint_item(row.channel, str(row.event_id), str(row.prev_id), streams=False)]
    if row.channel == FIREHOSE:
        items.append(hint_item(FIREHOSE_HINT, str(row.event_id), str(row.prev_id)))
    return items


def _encode(items: list[dict[str, Any]]) -> bytes:
    """A delivery's items, as they appear in the publish body's list."""
    return b",".join(
        json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() for item in items
    )


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _past(position: Position, channel: str, item_id: int) -> bool:
    """Has a target at ``position`` published item ``item_id`` of ``channel``? (0: nothing.)"""
    return item_id == 0 or (position.event_id, position.channel) >= (item_id, channel)


def _through(position: Position) -> int:
    """The last event a target at ``position`` has passed: (E, "") is before E's deliveries
    (Position.after_event), (E, channel) among them or after the last."""
    return position.event_id - 1 if position.channel == "" else position.event_id


def _fit(items: list[bytes]) -> int:
    """How many of ``items`` fit one publish request, by the bytes sent (at least one)."""
    size = len(b'{"items":[]}')
    for index, item in enumerate(items):
        size += len(item) + 1
        if size > BATCH_BYTES and index > 0:
            return index
    return len(items)
