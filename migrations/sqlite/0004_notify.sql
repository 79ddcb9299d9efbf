-- Case-status and service-health notifications: subscriptions, events, the outbox.

-- One `subscribe` in one conversation.
CREATE TABLE notify_subscriptions (
    id                 TEXT PRIMARY KEY NOT NULL,
    conversation_id    TEXT NOT NULL,
    conversation_type  TEXT NOT NULL,
    filter_text        TEXT NOT NULL,
    filter_json        TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    created_by_name    TEXT,
    created_at         BIGINT NOT NULL,
    enabled            BIGINT NOT NULL DEFAULT 1,
    disabled_reason    TEXT,
    disabled_at        BIGINT,
    owner_notice_due   BIGINT NOT NULL DEFAULT 0,
    last_delivery_at   BIGINT,
    delivered_count    BIGINT NOT NULL DEFAULT 0,
    failure_count      BIGINT NOT NULL DEFAULT 0,
    dead_letter_count  BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT
);
CREATE INDEX notify_subscriptions_conversation ON notify_subscriptions (conversation_id);
CREATE INDEX notify_subscriptions_notice ON notify_subscriptions (owner_notice_due);

-- Every distinct case update; (case_key, revision) is the dedupe key.
CREATE TABLE notify_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    case_key    TEXT NOT NULL,
    revision    TEXT NOT NULL,
    number      TEXT NOT NULL,
    state       TEXT NOT NULL,
    source      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    payload     TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    UNIQUE (case_key, revision)
);
CREATE INDEX notify_events_number ON notify_events (number);
CREATE INDEX notify_events_case ON notify_events (case_key, updated_at);

-- One case in one conversation: its thread (root card) and the lease of whoever delivers it.
CREATE TABLE notify_lanes (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    case_key               TEXT NOT NULL,
    conversation_id        TEXT NOT NULL,
    root_activity_id       TEXT,
    delivered_updated_at   BIGINT NOT NULL DEFAULT 0,
    delivered_state        TEXT,
    pending_count          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at        BIGINT NOT NULL DEFAULT 0,
    lease_owner            TEXT,
    lease_until            BIGINT NOT NULL DEFAULT 0,
    UNIQUE (case_key, conversation_id)
);
CREATE INDEX notify_lanes_due ON notify_lanes (next_attempt_at) WHERE pending_count > 0;
CREATE INDEX notify_lanes_conversation ON notify_lanes (conversation_id);

-- One delivery of one event through one subscription; (event_id, subscription_id) is unique.
CREATE TABLE notify_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        BIGINT NOT NULL REFERENCES notify_events (id),
    subscription_id TEXT NOT NULL,
    lane_id         BIGINT NOT NULL REFERENCES notify_lanes (id),
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX notify_outbox_pending ON notify_outbox (lane_id) WHERE status = 'pending';
CREATE INDEX notify_outbox_subscription ON notify_outbox (subscription_id, status);

-- Conversations the connector asked to wait (Retry-After).
CREATE TABLE notify_destinations (
    conversation_id TEXT PRIMARY KEY NOT NULL,
    frozen_until    BIGINT NOT NULL
);
