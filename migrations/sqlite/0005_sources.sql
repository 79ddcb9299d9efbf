-- Notification sources: poller watermarks, the last known revision of each case, push replay
-- protection and service-health issues mirrored into ServiceNow incidents.
CREATE TABLE notify_source_watermarks (
    source      TEXT PRIMARY KEY NOT NULL,
    watermark   TEXT NOT NULL,
    last_key    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE notify_source_cases (
    case_key        TEXT PRIMARY KEY NOT NULL,
    revision        TEXT NOT NULL,
    revision_order  BIGINT NOT NULL,
    state           TEXT NOT NULL,
    previous_state  TEXT,
    updated_at      BIGINT NOT NULL
);
CREATE TABLE notify_push_replays (
    signature_hash  TEXT PRIMARY KEY NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX notify_push_replays_expiry ON notify_push_replays (expires_at);
CREATE TABLE notify_health_mirrors (
    issue_id         TEXT PRIMARY KEY NOT NULL,
    incident_sys_id  TEXT NOT NULL,
    last_post_at     BIGINT NOT NULL,
    resolved         BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX notify_health_mirrors_incident ON notify_health_mirrors (incident_sys_id);
