"""What the domain asks of the store (`Store`), and the rows it hands back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

# What on_announce hears when the process listens again after losing its connection to the
# database: announcements made meanwhile went unheard.
LISTENING_AGAIN = "listening again"


class Account(NamedTuple):
    jid: str
    password_hash: str
    api_key: str
    credentials: int = 0  # how many times its password or API key changed
    banned: bool = False  # banned from the service by the operator: it may not log in


class SessionRow(NamedTuple):
    jid: str
    expires: float  # unix time


class NodeInfo(NamedTuple):
    id: int
    channel: str
    name: str
    access_model: str
    default_affiliation: str


class FeedItem(NamedTuple):
    event_id: int
    payload: str  # the item's JSON, exactly as published


class FeedState(NamedTuple):
    last_id: int  # the newest event in the whole log
    items: list[FeedItem]
    channel: str  # the feed's Pushpin channel
    head: int  # the last id published on it
    kept_from: int = 0  # the last id pruned from the feed: a cursor below it lost something


class History(NamedTuple):
    start: int  # the cursor the read began after
    items: list[FeedItem]
    kept_from: int  # as FeedState's, over the account's posts and events


class Pruned(NamedTuple):
    """One batch of retention: events and deliveries deleted, through event ``through``."""

    events: int
    deliveries: int
    through: int


class NodeSize(NamedTuple):
    """A node and what its posts take (deleted posts not counted)."""

    channel: str
    name: str
    posts: int
    bytes: int  # of the posts' JSON as stored


class Position(NamedTuple):
    """A place in the deliveries, which are ordered by (event_id, channel)."""

    event_id: int
    channel: str

    @classmethod
    def after_event(cls, event_id: int) -> Position:
        """Just past every delivery of ``event_id`` (channels are never empty)."""
        return cls(event_id + 1, "")


class Recipients(NamedTuple):
    """Whose events channel an event goes to: one account, or a node's owner and moderators,
    or everyone who may read a node."""

    kind: str  # "user" | "moderators" | "readers"
    jid: str = ""


class Notice(NamedTuple):
    """An event for the events feed: ``{"type", "cursor", **fields}``."""

    type: str
    fields: dict[str, Any]
    to: Recipients
    subject: str | None = None  # the id of the post it concerns


class Delivery(NamedTuple):
    """One published GRIP item: an event on one Pushpin channel, chained by prev-id."""

    event_id: int
    channel: str
    prev_id: int
    payload: str
    gone: bool = False  # a post deleted since: its readers ask the origin, which skips it


class SubscriptionChange(NamedTuple):
    jid: str
    node_id: int
    affiliation: str | None  # None: no longer following
    notices: list[Notice]
    was: str | None  # the affiliation it was decided from: if it changed since, no change
    given: bool = False  # the owner gave this role: it caps the user's later follows


class RetryKey(NamedTuple):
    """What tells a retried post from a new one: the same ``key`` from the same author within
    the window is a retry if its ``fingerprint`` (of what was sent) matches."""

    key: str
    fingerprint: str
    now: float  # unix time
    window: float  # seconds a key holds


class PostWritten(NamedTuple):
    event_id: int
    body: str  # the post's JSON as stored
    retried: bool  # an earlier request with the same key made it


class Queue(NamedTuple):
    """An Aloha (Zulip) event queue: a filtered view of its account's deliveries."""

    id: str
    jid: str
    event_types: str | None  # JSON
    narrow: str  # JSON
    all_public_streams: bool
    lifespan: int
    acked: int
    last_poll: float


class QueueEvent(NamedTuple):
    event_id: int
    type: str
    payload: str
    node_id: int | None
    message_id: int | None  # the event id of the post it concerns, if any


class QueuePoll(NamedTuple):
    queue: Queue
    events: list[QueueEvent]
    heads: list[tuple[str, int]]  # the queue's channels, each with the last id published there


class Store(Protocol):
    """The store the domain talks to. One implementation (app.store.sql.SqlStore) serves
    every backend; a backend plugs in below it, as an app.store.sql.Database."""

    on_commit: Callable[[], None]  # called after each commit that appended to the log

    @property
    def label(self) -> str:
        """Where the data is, without credentials, for logs."""

    async def open(self, check_names: Callable[[list[str]], list[str]] | None = None) -> None:
        """Connect, migrating to this version's schema. Migrating names stored by an older
        version needs ``check_names``: the problems it finds with them."""

    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...

    # across the processes on one database
    on_announce: Callable[[str], None]  # a message announced by any process

    async def try_lease(self, name: str) -> bool:
        """Take the lease ``name`` unless another process holds it; held until released, or
        until this process or its connection to the database ends."""

    async def lease_held(self, name: str) -> bool: ...
    async def release_lease(self, name: str) -> None: ...
    async def announce(self, message: str) -> None:
        """Send ``message`` to ``on_announce`` in every process on the database."""

    # accounts and channels
    async def create_account(self, jid: str, password_hash: str, api_key: str, now: str) -> None:
        """Conflict if the name is taken by an account or a channel."""

    async def get_account(self, jid: str) -> Account | None:
        """The account, unless there is none or it was deleted."""

    async def change_credentials(
        self,
        jid: str,
        password_hash: str | None = None,
        was: str | None = None,
        api_key: str | None = None,
    ) -> int | None:
        """Set the account's password hash (if it still is ``was``, when given) and/or API key,
        count the change and end its browser sessions; the account's id, or None (no account,
        or its password changed meanwhile)."""

    async def delete_account(self, jid: str, was: str, now: str) -> int | None:
        """Delete the account whose password hash still is ``was``: its credentials, sessions,
        queues and follows go; its row stays, so its id and name are never given again. The
        account's id, or None."""

    async def set_banned(self, jid: str, banned: bool, now: str) -> int | None:
        """Ban the account from the service (or lift its ban): a ban counts as a credential
        change and ends its browser sessions. The account's id, or None (no such account)."""

    async def posts_by(self, jid: str) -> list[tuple[str, str, str]]:
        """The (channel, node, post id) of every post ``jid`` wrote that is not deleted."""

    async def largest_nodes(self, limit: int) -> list[NodeSize]:
        """The ``limit`` nodes with the most posts, the largest first."""

    async def create_channel(
        self,
        jid: str,
        owner: str,
        title: str,
        description: str,
        access_model: str,
        default_affiliation: str,
        now: str,
        max_owned: int = 0,
    ) -> None: ...
    async def get_node(self, channel: str, name: str) -> NodeInfo | None: ...
    async def affiliation(self, jid: str, node_id: int) -> str | None: ...
    async def given_role(self, jid: str, node_id: int) -> str | None: ...
    async def subscriptions(self, jid: str) -> dict[str, str]: ...
    async def apply_subscriptions(
        self,
        changes: list[SubscriptionChange],
        now: str,
        max_follows: int = 0,
        max_pending: int = 0,
    ) -> None: ...
    async def subscribers(self, node_id: int) -> dict[str, str]: ...
    async def pending(self, node_id: int) -> list[str]: ...
    async def metadata(self, channel: str) -> dict[str, str]: ...
    async def set_metadata(self, channel: str, fields: dict[str, str]) -> None: ...

    # posts and the log
    async def last_event_id(self) -> int: ...
    async def append_post(
        self,
        node: NodeInfo,
        post_id: str,
        author: str,
        payload: str,
        now: str,
        retry: RetryKey | None = None,
    ) -> PostWritten: ...
    async def update_post(
        self, node_id: int, post_id: str, body: str, notice: Notice, now: str
    ) -> None: ...
    async def get_post(self, node_id: int, post_id: str) -> tuple[str, str] | None: ...
    async def list_posts(self, node_id: int, limit: int, after: str | None) -> list[str] | None: ...
    async def delete_post(
        self, node_id: int, post_id: str, notice: Notice, now: str, erase: tuple[str, ...]
    ) -> None: ...

    # feeds
    async def read_feed(self, feed: str, jid: str | None, since: int, limit: int) -> FeedState: ...
    async def socket_channel(self, jid: str) -> str:
        """The Pushpin channel the account's sockets are woken on."""
        ...

    async def mark_online(self, jid: str, cursor: int) -> None:
        """The account was online up to ``cursor`` (history starts there next time)."""
        ...

    async def history(self, jid: str, since: int | None, limit: int) -> History: ...

    # retention
    async def prune_log(
        self, created_before: str, keep_events: int, max_events: int, max_deliveries: int
    ) -> Pruned:
        """Delete the oldest events (with their deliveries) logged before ``created_before``
        (ISO 8601; "" for none) or older than the newest ``keep_events`` (0: none), at most
        ``max_events`` events and about ``max_deliveries`` deliveries, never the newest
        event; mark each channel with the last id pruned from it."""

    async def oldest_event_id(self) -> int:
        """The oldest event kept (0: none yet)."""

    async def restored(self, handed_out: int, now: str) -> int:
        """The database was restored from a backup while ids up to ``handed_out`` had been
        handed out: log an event with the next id (the log goes on after it) and record the
        gap from the backup's last event to it, whose cursors are answered as pruned ones (go
        on from that event). The backup's last event id (nothing is recorded when it is
        ``handed_out`` or more)."""

    # Aloha queues
    async def create_queue(self, queue: Queue, max_alive: int = 0, grace: float = 0) -> int: ...
    async def poll_queue(
        self, queue_id: str, jid: str, ack: int, now: float, limit: int, grace: float = 0
    ) -> QueuePoll | None:
        """None for a queue that is unknown, expired, someone else's, or whose events were
        pruned before it took them (it is deleted then)."""

    async def skip_queue(self, queue_id: str, to: int) -> None: ...
    async def delete_queue(self, queue_id: str, jid: str, now: str) -> bool: ...
    async def expire_queues(self, now: float, grace: float, limit: int) -> int: ...
    async def open_queues(self, now: float) -> int:
        """Queues whose lifespan has not run out at ``now`` (for the metrics)."""

    # rate limits, counted where every origin sees them
    async def take_slot(
        self, name: str, key: str, limit: int, window: float, now: float
    ) -> float: ...
    async def give_back_slot(self, name: str, key: str) -> None: ...
    async def prune_slots(self, before: float) -> int: ...

    # browser sessions, named by the hash of their cookie's token
    async def create_session(
        self, session_id: str, jid: str, now: float, expires: float, max_alive: int
    ) -> None:
        """A new session; the account's oldest are ended past ``max_alive`` at once."""

    async def session(self, session_id: str, now: float) -> SessionRow | None:
        """A session that has not ended nor expired by ``now``, or None."""

    async def end_session(self, session_id: str) -> bool: ...
    async def prune_sessions(self, now: float) -> int: ...

    # the publisher's outbox
    async def deliveries_after(self, position: Position, limit: int) -> list[Delivery]: ...
    async def backlog(self, position: Position, limit: int) -> tuple[int, str | None]: ...
    async def publish_position(self, target: str) -> Position | None: ...
    async def save_publish_position(self, target: str, position: Position) -> None: ...
