"""The services a request handler reaches: one of each, made by create_app."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from app.accounts import Accounts
from app.aloha import Aloha
from app.channels import Channels
from app.config import Settings
from app.cors import Cors
from app.feeds import Feeds
from app.holds import HeldRequests
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.publisher import Publisher
from app.retention import Retention
from app.sessions import Sessions
from app.sockets import Sockets
from app.store import Store
from app.streams import LinkTokens, Streams
from app.subscriptions import Subscriptions


@dataclass
class Services:
    settings: Settings
    store: Store
    publisher: Publisher
    accounts: Accounts
    sessions: Sessions
    lifecycle: Lifecycle
    channels: Channels
    subscriptions: Subscriptions
    aloha: Aloha
    feeds: Feeds
    streams: Streams
    link_tokens: LinkTokens
    sockets: Sockets
    cors: Cors
    held: HeldRequests
    retention: Retention
    metrics: Metrics
    in_flight: int = 0
    requests: int = 0  # handled since start
    server_errors: int = 0  # of those, answered with a 5xx status (/health)
    # realtime requests per feed: a test tells a published answer from one the origin gave
    feed_requests: Counter[str] = field(default_factory=Counter)
    # holds sent without knowing that the proxy has seen their prev-ids (the publisher did not
    # catch up, or its progress did not reach this origin, within PUBLISHED_WAIT_SECONDS)
    holds_unconfirmed: int = 0
