"""Retention: the log and its deliveries are pruned from their oldest end, in the background.

What goes: events older than RETENTION_SECONDS, and those beyond the newest RETENTION_EVENTS,
with their deliveries; never posts, channels or accounts, and never the newest event (its id
is the log's end). Each channel keeps the last id pruned from it, so a reader whose cursor is
below that is told (410, a stream's reset, BAD_EVENT_QUEUE_ID), and a reader who kept up never
is. Batches are small transactions with a pause between them, so requests (and, on SQLite,
the event loop that runs both) wait at most one batch. Every origin runs this: a batch decides
its range under the store's write lock, so two origins at once prune each range once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from app.store import Store
from app.store.base import Pruned

log = logging.getLogger("app.retention")

BATCH_EVENTS = 1000
BATCH_DELIVERIES = 2000
PAUSE_SECONDS = 0.05  # between batches: requests go first


class Retention:
    def __init__(self, store: Store, seconds: int, events: int, every: float) -> None:
        self.store = store
        self.seconds = seconds  # 0: no limit by age
        self.events = events  # 0: no limit by count
        self.every = every
        # since start, for /health (and whoever counts them)
        self.pruned_events = 0
        self.pruned_deliveries = 0
        self.batches = 0
        self.longest_batch = 0.0  # seconds of the longest batch
        self.pruned_through = 0  # the last id this origin pruned

    @property
    def enabled(self) -> bool:
        return bool(self.seconds or self.events)

    async def prune(self, on_batch: Callable[[Pruned], None] | None = None) -> int:
        """Prune what is due, batch by batch (``on_batch`` hears of each); the events pruned."""
        cutoff = ""
        if self.seconds:
            moment = datetime.fromtimestamp(time.time() - self.seconds, UTC)
            cutoff = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"  # as events are dated
        started, events, deliveries = time.perf_counter(), 0, 0
        while True:
            begun = time.perf_counter()
            batch = await self.store.prune_log(cutoff, self.events, BATCH_EVENTS, BATCH_DELIVERIES)
            if not batch.events:
                break
            self.longest_batch = max(self.longest_batch, time.perf_counter() - begun)
            self.batches += 1
            events += batch.events
            deliveries += batch.deliveries
            self.pruned_events += batch.events
            self.pruned_deliveries += batch.deliveries
            self.pruned_through = batch.through
            if on_batch is not None:
                on_batch(batch)
            await asyncio.sleep(PAUSE_SECONDS)
        if events:
            log.info(
                "retention pruned %d events and %d deliveries, through id %d, in %.2fs",
                events,
                deliveries,
                self.pruned_through,
                time.perf_counter() - started,
            )
        return events

    async def prune_forever(self) -> None:
        while self.enabled:
            try:
                await self.prune()
            except Exception:
                log.exception("retention failed; trying again later")
            await asyncio.sleep(self.every)
