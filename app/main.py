"""The origin application: create_app(settings) wires the store, the publisher and the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from app.accounts import CREATION_WINDOW, Accounts
from app.aloha import Aloha
from app.api import (
    accounts,
    aloha,
    content,
    notifications,
    openapi,
    operating,
    page,
    social,
    sockets,
    streams,
)
from app.api.common import api_error_handler, http_error_handler, server_error_handler
from app.api.percent_encoding import PercentEncoding
from app.api.request_log import RequestLog
from app.channels import Channels
from app.config import Settings
from app.cors import Cors
from app.errors import ApiError
from app.feeds import Feeds
from app.holds import HeldRequests
from app.lifecycle import LOGINS_CHANGED_PATH, Lifecycle
from app.metrics import Metrics
from app.model import name_problems
from app.publisher import Publisher
from app.retention import Retention
from app.services import Services
from app.sessions import Sessions
from app.sockets import Sockets
from app.store import open_store
from app.streams import LinkTokens, Streams
from app.subscriptions import Subscriptions
from app.throttle import prune_forever

log = logging.getLogger("app")
DRAIN_SECONDS = 5.0


ROUTES = [
    Route("/", page.page, methods=["GET"]),
    Route("/page.js", page.script, methods=["GET"]),
    Route("/health", operating.health, methods=["GET"]),
    Route("/health/proxy", operating.proxy_health, methods=["GET"]),
    Route("/metrics", operating.metrics, methods=["GET"]),
    Route(LOGINS_CHANGED_PATH, operating.logins_changed, methods=["POST"]),
    Route("/openapi.json", openapi.openapi, methods=["GET"]),
    Route("/api/v1/server_settings", aloha.server_settings, methods=["GET", "POST"]),
    Route("/api/v1/fetch_api_key", aloha.fetch_api_key, methods=["POST"]),
    Route("/api/v1/register", aloha.register, methods=["POST"]),
    Route("/api/v1/events", aloha.events, methods=["GET", "DELETE"]),
    Route("/api/v1/messages", aloha.messages, methods=["POST"]),
    Route("/api/v1/settings", aloha.update_settings, methods=["PATCH"]),
    Route("/api/v1/users/me/api_key/regenerate", aloha.regenerate_api_key, methods=["POST"]),
    Route("/api/v1/users/me", aloha.deactivate, methods=["DELETE"]),
    Route("/api/account", accounts.create_account, methods=["POST"]),
    Route("/api/account", accounts.show_account, methods=["GET"]),
    Route("/api/account", accounts.change_password, methods=["PATCH"]),
    Route("/api/account", accounts.delete_account, methods=["DELETE"]),
    Route("/api/account/api_key", accounts.new_api_key, methods=["POST"]),
    Route("/api/session", accounts.start_session, methods=["POST"]),
    Route("/api/session", accounts.show_session, methods=["GET"]),
    Route("/api/session", accounts.end_session, methods=["DELETE"]),
    Route("/api/subscribed", social.subscribed, methods=["GET", "POST"]),
    Route("/api/notifications/posts", notifications.posts, methods=["GET"]),
    Route("/api/notifications/events", notifications.events, methods=["GET"]),
    Route("/api/notifications/history", notifications.history, methods=["GET"]),
    Route("/api/firehose", notifications.firehose, methods=["GET"]),
    Route(streams.NEXT_PATH + "/{link}", streams.next_page, methods=["GET"]),
    Route("/api/ws", sockets.socket_events, methods=["POST"]),
    Route("/api/{channel}", content.create_channel, methods=["POST"]),
    Route("/api/{channel}/content/{node}", content.list_posts, methods=["GET"]),
    Route("/api/{channel}/content/{node}", content.create_post, methods=["POST"]),
    Route("/api/{channel}/content/{node}/{id}", content.get_post, methods=["GET"]),
    Route("/api/{channel}/content/{node}/{id}", content.edit_post, methods=["PUT"]),
    Route("/api/{channel}/content/{node}/{id}", content.delete_post, methods=["DELETE"]),
    Route("/api/{channel}/metadata/{node}", content.metadata, methods=["GET", "POST"]),
    Route("/api/{channel}/subscribers/{node}", social.subscribers, methods=["GET", "POST"]),
    Route("/api/{channel}/subscribers/{node}/approve", social.approve, methods=["GET", "POST"]),
]


def create_app(settings: Settings) -> Starlette:
    metrics = Metrics()
    # Every store call is timed (store_call_seconds), by the name of the call.
    store = metrics.timed(
        open_store(settings.database_url, settings.database_pool_size, settings.commit_delay)
    )
    publisher = Publisher(
        store,
        settings.grip_urls,
        settings.publish_timeout,
        settings.publish_poll_seconds,
        settings.grip_ca_file,
        metrics,
    )
    cors = Cors(settings.cors_origins)
    store.on_commit = publisher.notify
    limits = settings.limits
    held = HeldRequests(
        limits.max_held_per_user, limits.max_held_per_address, settings.hold_timeout + 5
    )
    publisher.on_sending = held.published
    channels = Channels(store, settings.limits, settings.idempotency_seconds)
    logins = Accounts(store, settings.secret_key, settings.auth_cache_seconds, settings.limits)
    browser_sessions = Sessions(
        store, settings.session_seconds, limits.max_sessions, settings.session_cache_seconds
    )
    services = Services(
        settings=settings,
        store=store,
        publisher=publisher,
        accounts=logins,
        sessions=browser_sessions,
        lifecycle=Lifecycle(store, logins, browser_sessions, publisher),
        channels=channels,
        subscriptions=Subscriptions(channels, settings.limits),
        feeds=Feeds(store),
        streams=Streams(store),
        link_tokens=LinkTokens(settings.secret_key),
        sockets=Sockets(store),
        aloha=Aloha(
            store, channels, settings.queue_lifespan, settings.hold_timeout, settings.limits
        ),
        cors=cors,
        held=held,
        retention=Retention(
            store,
            settings.retention_seconds,
            settings.retention_events,
            settings.retention_check_seconds,
        ),
        metrics=metrics,
    )
    accounts_ = services.accounts
    metrics.read_at_scrape(
        "password_hashes",
        "Slow password hashes computed: to check a login, or for a new account",
        "purpose",
        lambda: {"login": accounts_.slow_checks, "account": accounts_.new_hashes},
    )
    metrics.read_at_scrape(
        "logins_throttled",
        "Logins refused (429) by a limit on failures or on unknown accounts",
        "limit",
        accounts_.logins_refused,
    )
    retention_ = services.retention
    metrics.read_at_scrape(
        "retention_pruned_rows",
        "Rows retention removed (app/retention.py), by table",
        "table",
        lambda: {
            "events": retention_.pruned_events,
            "deliveries": retention_.pruned_deliveries,
        },
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open(check_names=name_problems)
        await publisher.start()
        expiry = asyncio.create_task(services.aloha.expire_forever(), name="expire queues")
        pruning = asyncio.create_task(prune_forever(store, CREATION_WINDOW), name="prune slots")
        sessions = asyncio.create_task(services.sessions.prune_forever(), name="prune sessions")
        retention = asyncio.create_task(services.retention.prune_forever(), name="retention")
        log.info("store %s at schema version %d", store.label, await store.schema_version())
        try:
            yield
        finally:
            for task in (expiry, pruning, sessions, retention):
                task.cancel()
            await asyncio.gather(expiry, pruning, sessions, retention, return_exceptions=True)
            if not await publisher.drain(DRAIN_SECONDS):
                log.warning(
                    "outbox not drained after %.0fs; clients will catch up by cursor", DRAIN_SECONDS
                )
            await publisher.close()
            await store.close()

    app = Starlette(
        routes=ROUTES,
        # CORS only where browser origins are configured: it wraps every answer otherwise.
        middleware=[
            Middleware(RequestLog, services=services),
            *([cors.middleware()] if settings.cors_origins else []),
            Middleware(PercentEncoding),
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: server_error_handler,
        },
        lifespan=lifespan,
    )
    # No redirect from a path with a trailing slash to one without: Starlette builds its
    # Location from the request's Host header. Such a path answers 404 like any other.
    app.router.redirect_slashes = False
    app.state.services = services
    return app
