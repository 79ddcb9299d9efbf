-- The setup wizard: one row per setup (optimistic concurrency on `version`), and its audit log.
CREATE TABLE setup_wizards (
    setup_id        TEXT PRIMARY KEY NOT NULL,
    status          TEXT NOT NULL,
    state           TEXT NOT NULL,
    secrets         TEXT,
    version         BIGINT NOT NULL,
    started_by      TEXT NOT NULL,
    conversation_id TEXT,
    service_url     TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX setup_wizards_one_active ON setup_wizards (status) WHERE status = 'active';
CREATE INDEX setup_wizards_updated ON setup_wizards (updated_at);
CREATE TABLE setup_audit (
    audit_id   TEXT PRIMARY KEY NOT NULL,
    setup_id   TEXT NOT NULL,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX setup_audit_setup ON setup_audit (setup_id, at);
