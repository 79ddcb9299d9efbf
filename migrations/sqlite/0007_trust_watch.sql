-- Watching the trust: the scheduled doctor (one row per schedule, claimed by one replica per
-- run), the last state of every watched subject and the state last alerted, and the alert
-- outbox (one row per card and destination, kept until delivered).
CREATE TABLE trust_schedule (
    name        TEXT PRIMARY KEY NOT NULL,
    next_run_at BIGINT NOT NULL,
    last_run_at BIGINT,
    claimed_by  TEXT
);
CREATE TABLE trust_subjects (
    subject     TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    alerted     TEXT NOT NULL,
    title       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    fix         TEXT,
    expires_at  BIGINT,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE trust_alerts (
    id              TEXT PRIMARY KEY NOT NULL,
    conversation_id TEXT NOT NULL,
    service_url     TEXT,
    model           TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX trust_alerts_due ON trust_alerts (status, next_attempt_at);
