"""The origin's Prometheus metrics: one registry per app, and what the code counts into it.

Held connections are Pushpin's to count (its own metrics, docs/pushpin.md): the origin counts
what it does, the holds it answers included. Gauges that ask the store (publish lag, open Aloha
queues) are read when /metrics is scraped (app/api/operating.py), not kept up to date.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The *_created series double the output and say only when the process started.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "buddycloud_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Store calls are mostly well under a millisecond; requests that hash a password take 50 ms.
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
T = TypeVar("T")


class Metrics:
    """What the origin counts, in a registry of its own (several apps in one process, as in
    tests, keep theirs apart). The callers use the methods; the names are listed in the README."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # CPU, memory, open files of this process

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, registry=registry, buckets=SECONDS)

        self.requests = counter(
            "http_requests", "HTTP requests answered, by route template", ("route", "status")
        )
        self.request_seconds = histogram(
            "http_request_seconds", "Time to answer an HTTP request, by route", ("route",)
        )
        self.holds = counter(
            "holds",
            "Requests answered with a GRIP hold (Pushpin holds them)",
            ("feed", "transport"),
        )
        self.published_items = counter(
            "publish_items", "Items a publish target accepted", ("target",)
        )
        self.publish_batches = counter(
            "publish_batches", "Publish requests a target accepted", ("target",)
        )
        self.publish_failures = counter(
            "publish_failures", "Publish requests that failed (each is retried)", ("target",)
        )
        self.lag_events = gauge(
            "publish_lag_events",
            "The newest committed event's id minus the target's published position",
            ("target",),
        )
        self.lag_seconds = gauge(
            "publish_lag_seconds", "Age of the oldest delivery not yet published", ("target",)
        )
        self.failing = gauge(
            "publish_target_failing", "1 while the target's last publish failed", ("target",)
        )
        self.store_seconds = histogram(
            "store_call_seconds", "Time of each store call, by call", ("call",)
        )
        self.store_errors = counter("store_call_errors", "Store calls that raised", ("call",))
        self.open_queues = gauge("aloha_queues_open", "Aloha queues alive, on every origin")

    # -- what the code calls -------------------------------------------------------------------

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def held(self, feed: str, transport: Literal["long-poll", "stream", "websocket"]) -> None:
        self.holds.labels(feed, transport).inc()

    def published(self, target: str, items: int) -> None:
        self.published_items.labels(target).inc(items)
        self.publish_batches.labels(target).inc()

    def publish_failed(self, target: str) -> None:
        self.publish_failures.labels(target).inc()

    def lag(self, target: str, events: int, seconds: float, failing: bool) -> None:
        self.lag_events.labels(target).set(events)
        self.lag_seconds.labels(target).set(seconds)
        self.failing.labels(target).set(int(failing))

    def read_at_scrape(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        kind: Literal["counter", "gauge"] = "counter",
    ) -> None:
        """A value another part keeps (a plain number there), read at each scrape, one sample
        per key of what ``read`` answers."""
        self.registry.register(_Read(PREFIX + name, documentation, label, read, kind))

    def timed(self, target: T) -> T:
        """``target`` with each of its coroutine methods timed into store_call_seconds."""
        return cast(T, _Timed(target, self))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Read(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        kind: Literal["counter", "gauge"],
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.read, self.kind = read, kind

    def collect(self) -> Iterable[Metric]:
        family = (CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily)(
            self.name, self.documentation, labels=[self.label]
        )
        for key, value in self.read().items():
            family.add_metric([key], value)
        yield family

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape only: registering must not call ``read``


class _Timed:
    """Forwards everything to the wrapped object; its coroutine methods are timed. Written for
    the store, whose methods are many and grow: each is timed without a line of its own."""

    def __init__(self, target: Any, metrics: Metrics) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_metrics", metrics)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not inspect.iscoroutinefunction(value):
            return value
        seconds = self._metrics.store_seconds.labels(name)
        errors = self._metrics.store_errors.labels(name)

        @functools.wraps(value)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await value(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - start)

        object.__setattr__(self, name, timed)  # found directly from now on
        return timed

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)  # the store's hooks (on_commit, on_announce)
