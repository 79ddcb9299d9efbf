-- Slack workspaces installed through the OAuth v2 flow (/slack/install): one bot token per
-- workspace, sealed with setup.encryption_key (AES-256-GCM, the team id as associated data).
CREATE TABLE slack_installations (
    team_id          TEXT PRIMARY KEY NOT NULL,
    team_name        TEXT,
    enterprise_id    TEXT,
    app_id           TEXT,
    bot_user_id      TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    bot_token_sealed TEXT NOT NULL,
    installed_by     TEXT,
    installed_at     BIGINT NOT NULL
);
-- The install flow's `state`, stored only as SHA-256; single use, with an expiry.
CREATE TABLE slack_install_states (
    state_hash  TEXT PRIMARY KEY NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
-- Installs, refusals and removals (never a token).
CREATE TABLE slack_install_audit (
    audit_id  TEXT PRIMARY KEY NOT NULL,
    at        BIGINT NOT NULL,
    team_id   TEXT,
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX slack_install_audit_team ON slack_install_audit (team_id, at);
