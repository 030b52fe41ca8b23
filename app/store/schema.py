"""The SQLite schema, as forward-only migrations: version N is the first N scripts applied."""

# From this version on, every account and channel name is stored in its normal form (RFC 7622,
# app.model.parse_jid). Before taking it, the store checks the names an older version stored
# and refuses to go on if the rule would fold any together, change or refuse them.
NAMES_NORMALISED = 5

MIGRATIONS: list[str] = [
    # 1: accounts, channels, nodes, follows, the one event log and what the publisher needs.
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,  -- names the account's Pushpin channel: u<id>
        jid TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        api_key TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL
    );
    CREATE TABLE channels (
        jid TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        title TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        access_model TEXT NOT NULL,
        default_affiliation TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL REFERENCES channels(jid),
        name TEXT NOT NULL,
        UNIQUE (channel, name)
    );
    CREATE TABLE subscriptions (
        jid TEXT NOT NULL,
        node_id INTEGER NOT NULL REFERENCES nodes(id),
        affiliation TEXT NOT NULL,
        PRIMARY KEY (jid, node_id)
    ) WITHOUT ROWID;
    CREATE INDEX subscriptions_by_node ON subscriptions (node_id);

    -- The one append-only log. AUTOINCREMENT: an id is never reused, even after a crash.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        node_id INTEGER REFERENCES nodes(id),
        payload TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE INDEX events_by_node ON events (node_id, id);

    -- Which Pushpin channels each event is published to, with the prev-id chain per channel.
    -- A post goes to the channel of every account that may see it (fan-out on write), so each
    -- account's feed is one chain in which Pushpin can see any gap.
    CREATE TABLE deliveries (
        event_id INTEGER NOT NULL REFERENCES events(id),
        channel TEXT NOT NULL,
        prev_id INTEGER NOT NULL,
        PRIMARY KEY (event_id, channel)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_by_channel ON deliveries (channel, event_id);
    CREATE TABLE channel_heads (
        channel TEXT PRIMARY KEY,
        last_id INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Each publish target's position in deliveries: the last (event_id, channel) it took.
    CREATE TABLE publish_cursors (
        target TEXT PRIMARY KEY,
        event_id INTEGER NOT NULL,
        channel TEXT NOT NULL
    ) WITHOUT ROWID;

    -- Current state of posts; the log keeps each post as it was created.
    CREATE TABLE posts (
        id TEXT PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id),
        event_id INTEGER NOT NULL UNIQUE REFERENCES events(id),
        author TEXT NOT NULL,
        body TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX posts_by_node ON posts (node_id, event_id);
    """,
    # 2: where each account was when last online (the cursor of its last realtime request).
    """
    ALTER TABLE accounts ADD COLUMN last_online INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: Aloha (Zulip-compatible) event queues, which live in the store; posts sent with a
    # client's local_id, so that a retried send makes one post.
    """
    CREATE TABLE queues (
        id TEXT PRIMARY KEY,
        jid TEXT NOT NULL,
        event_types TEXT,  -- JSON list, or NULL for all
        narrow TEXT NOT NULL,  -- JSON list of [operator, operand]
        all_public_streams INTEGER NOT NULL,
        lifespan INTEGER NOT NULL,  -- seconds without a poll before it expires
        acked INTEGER NOT NULL,  -- events up to this cursor are done with
        last_poll REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX queues_by_jid ON queues (jid);
    ALTER TABLE posts ADD COLUMN local_id TEXT;
    CREATE UNIQUE INDEX posts_by_local_id ON posts (author, local_id) WHERE local_id IS NOT NULL;
    """,
    # 4: retries of a post are told apart by a key (Idempotency-Key, or Zulip's local_id with
    # what it sends), not by local_id alone; the role an owner last gave caps a re-follow;
    # each event names the post it concerns, so that a deleted post's text can be erased from
    # every event that held it (and is, for posts deleted before).
    """
    ALTER TABLE events ADD COLUMN subject TEXT;
    UPDATE events SET subject = (SELECT id FROM posts WHERE event_id = events.id)
        WHERE type = 'post';
    UPDATE events SET subject = json_extract(payload, '$.post.id') WHERE type = 'post_updated';
    UPDATE events SET subject = json_extract(payload, '$.id') WHERE type = 'post_deleted';
    CREATE INDEX events_by_subject ON events (subject) WHERE subject IS NOT NULL;
    UPDATE posts SET body = json_remove(body, '$.content', '$.media') WHERE deleted = 1;
    UPDATE events SET payload = json_remove(payload, '$.content', '$.media')
        WHERE type = 'post' AND subject IN (SELECT id FROM posts WHERE deleted = 1);
    UPDATE events SET payload = json_remove(payload, '$.post.content', '$.post.media')
        WHERE type = 'post_updated' AND subject IN (SELECT id FROM posts WHERE deleted = 1);
    DROP INDEX posts_by_local_id;
    CREATE TABLE idempotency_keys (
        author TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,  -- of the request: the same key with another body is refused
        event_id INTEGER NOT NULL REFERENCES events(id),
        created REAL NOT NULL,  -- unix time: the key holds for IDEMPOTENCY_SECONDS
        PRIMARY KEY (author, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created);
    CREATE TABLE given_roles (
        jid TEXT NOT NULL,
        node_id INTEGER NOT NULL REFERENCES nodes(id),
        affiliation TEXT NOT NULL,
        PRIMARY KEY (jid, node_id)
    ) WITHOUT ROWID;
    """,
    # 5: no change to the tables: the names are checked first (NAMES_NORMALISED).
    "",
    # 6: rate limits (logins, posts, follows, new accounts) are counted in the store, so that
    # every origin on one database counts against the same limit.
    """
    CREATE TABLE rate_slots (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,  -- which limit
        key TEXT NOT NULL,  -- whose: an account, an address, or both
        at REAL NOT NULL  -- unix time it was taken: it frees one window later
    );
    CREATE INDEX rate_slots_by_key ON rate_slots (name, key, at);
    CREATE INDEX rate_slots_by_age ON rate_slots (at);
    """,
    # 7: browser sessions. A row per session, named by the SHA-256 of the random token its
    # cookie holds (the token itself is never stored); by account, to end an account's sessions.
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,  -- hex SHA-256 of the cookie's token
        jid TEXT NOT NULL,
        created REAL NOT NULL,  -- unix time
        expires REAL NOT NULL  -- unix time: refused from then on, and pruned
    ) WITHOUT ROWID;
    CREATE INDEX sessions_by_jid ON sessions (jid, expires);
    CREATE INDEX sessions_by_expiry ON sessions (expires);
    """,
    # 8: retention. The log and its deliveries are pruned from their oldest end; posts and
    # idempotency keys stay, so they no longer reference the log (SQLite drops a foreign key
    # only by rebuilding the table). Each channel keeps the last id of its deliveries pruned:
    # a cursor below it has lost something there (410, reset, BAD_EVENT_QUEUE_ID).
    """
    CREATE TABLE posts_kept (
        id TEXT PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id),
        event_id INTEGER NOT NULL UNIQUE,  -- its event in the log, which may be pruned
        author TEXT NOT NULL,
        body TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        local_id TEXT
    );
    INSERT INTO posts_kept (id, node_id, event_id, author, body, deleted, local_id)
        SELECT id, node_id, event_id, author, body, deleted, local_id FROM posts;
    DROP TABLE posts;
    ALTER TABLE posts_kept RENAME TO posts;
    CREATE INDEX posts_by_node ON posts (node_id, event_id);
    CREATE TABLE idempotency_keys_kept (
        author TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        event_id INTEGER NOT NULL,  -- the post's, as posts.event_id
        created REAL NOT NULL,
        PRIMARY KEY (author, key)
    ) WITHOUT ROWID;
    INSERT INTO idempotency_keys_kept (author, key, fingerprint, event_id, created)
        SELECT author, key, fingerprint, event_id, created FROM idempotency_keys;
    DROP TABLE idempotency_keys;
    ALTER TABLE idempotency_keys_kept RENAME TO idempotency_keys;
    CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created);
    ALTER TABLE channel_heads ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0;
    """,
    # 9: an account's credentials change (a password, a new API key) and it may be deleted: a
    # count of its credential changes, which every stream's next link names (a stream opened
    # before a change ends at its next call), and when it was deleted (the row stays: its id
    # names Pushpin channels and its name authors posts, so neither is given again).
    """
    ALTER TABLE accounts ADD COLUMN credentials INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN deleted TEXT;
    """,
    # 10: the admin command (app/admin.py). An account may be banned from the service (when;
    # NULL: not banned). A restore of an older backup leaves a gap in the log: the ids after
    # the backup's last event up to the highest id the replaced database had handed out were
    # cursors of events that are gone; a cursor in it is answered as a pruned one (410, reset).
    """
    ALTER TABLE accounts ADD COLUMN banned TEXT;
    CREATE TABLE log_gaps (
        after INTEGER NOT NULL,  -- the restored backup's last event
        through INTEGER NOT NULL,  -- the restore's event, past every id handed out before
        restored TEXT NOT NULL  -- when
    );
    """,
]

# PostgreSQL, the backend for several nodes: version 1 is the SQLite schema as of version 5,
# with the same columns and types where SQLite's are loose. Names and channels compare as
# bytes (COLLATE "C"), as in SQLite and in Python: the publisher orders its positions by them.
POSTGRES_MIGRATIONS: list[str] = [
    """
    CREATE TABLE accounts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        jid TEXT COLLATE "C" NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        api_key TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL,
        last_online BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE channels (
        jid TEXT COLLATE "C" PRIMARY KEY,
        owner TEXT COLLATE "C" NOT NULL,
        title TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        access_model TEXT NOT NULL,
        default_affiliation TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE INDEX channels_by_owner ON channels (owner);
    CREATE TABLE nodes (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        channel TEXT COLLATE "C" NOT NULL REFERENCES channels(jid),
        name TEXT COLLATE "C" NOT NULL,
        UNIQUE (channel, name)
    );
    CREATE TABLE subscriptions (
        jid TEXT COLLATE "C" NOT NULL,
        node_id BIGINT NOT NULL REFERENCES nodes(id),
        affiliation TEXT NOT NULL,
        PRIMARY KEY (jid, node_id)
    );
    CREATE INDEX subscriptions_by_node ON subscriptions (node_id);
    CREATE TABLE given_roles (
        jid TEXT COLLATE "C" NOT NULL,
        node_id BIGINT NOT NULL REFERENCES nodes(id),
        affiliation TEXT NOT NULL,
        PRIMARY KEY (jid, node_id)
    );

    -- The one append-only log. Ids come from a sequence, handed out at insert; every write
    -- transaction holds the store's write lock until it commits, so they commit in order.
    CREATE TABLE events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        type TEXT NOT NULL,
        node_id BIGINT REFERENCES nodes(id),
        payload TEXT NOT NULL,
        created TEXT NOT NULL,
        subject TEXT COLLATE "C"
    );
    CREATE INDEX events_by_node ON events (node_id, id);
    CREATE INDEX events_by_subject ON events (subject) WHERE subject IS NOT NULL;
    CREATE TABLE deliveries (
        event_id BIGINT NOT NULL REFERENCES events(id),
        channel TEXT COLLATE "C" NOT NULL,
        prev_id BIGINT NOT NULL,
        PRIMARY KEY (event_id, channel)
    );
    CREATE INDEX deliveries_by_channel ON deliveries (channel, event_id);
    CREATE TABLE channel_heads (
        channel TEXT COLLATE "C" PRIMARY KEY,
        last_id BIGINT NOT NULL
    );
    CREATE TABLE publish_cursors (
        target TEXT PRIMARY KEY,
        event_id BIGINT NOT NULL,
        channel TEXT COLLATE "C" NOT NULL
    );

    CREATE TABLE posts (
        id TEXT COLLATE "C" PRIMARY KEY,
        node_id BIGINT NOT NULL REFERENCES nodes(id),
        event_id BIGINT NOT NULL UNIQUE REFERENCES events(id),
        author TEXT COLLATE "C" NOT NULL,
        body TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        local_id TEXT
    );
    CREATE INDEX posts_by_node ON posts (node_id, event_id);
    CREATE TABLE idempotency_keys (
        author TEXT COLLATE "C" NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        event_id BIGINT NOT NULL REFERENCES events(id),
        created DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (author, key)
    );
    CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created);

    CREATE TABLE queues (
        id TEXT PRIMARY KEY,
        jid TEXT COLLATE "C" NOT NULL,
        event_types TEXT,
        narrow TEXT NOT NULL,
        all_public_streams INTEGER NOT NULL,
        lifespan INTEGER NOT NULL,
        acked BIGINT NOT NULL,
        last_poll DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX queues_by_jid ON queues (jid);
    """,
    # 2: rate limits counted in the store (SQLite's version 6).
    """
    CREATE TABLE rate_slots (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        key TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX rate_slots_by_key ON rate_slots (name, key, at);
    CREATE INDEX rate_slots_by_age ON rate_slots (at);
    """,
    # 3: browser sessions (SQLite's version 7).
    """
    CREATE TABLE sessions (
        id TEXT COLLATE "C" PRIMARY KEY,
        jid TEXT COLLATE "C" NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        expires DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX sessions_by_jid ON sessions (jid, expires);
    CREATE INDEX sessions_by_expiry ON sessions (expires);
    """,
    # 4: retention (SQLite's version 8).
    """
    ALTER TABLE posts DROP CONSTRAINT posts_event_id_fkey;
    ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_event_id_fkey;
    ALTER TABLE channel_heads ADD COLUMN pruned BIGINT NOT NULL DEFAULT 0;
    """,
    # 5: credential changes and deleted accounts (SQLite's version 9).
    """
    ALTER TABLE accounts ADD COLUMN credentials BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN deleted TEXT;
    """,
    # 6: bans and the log's gaps (SQLite's version 10).
    """
    ALTER TABLE accounts ADD COLUMN banned TEXT;
    CREATE TABLE log_gaps (
        after BIGINT NOT NULL,
        through BIGINT NOT NULL,
        restored TEXT NOT NULL
    );
    """,
]
