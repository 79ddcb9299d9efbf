-- Account linking: pending sign-ins (single-use state), stored links, and the audit of link
-- and role changes. The sign-in state itself is never stored, only its SHA-256.
CREATE TABLE link_states (
    state_hash             TEXT PRIMARY KEY NOT NULL,
    platform               TEXT NOT NULL,
    chat_user_id           TEXT NOT NULL,
    chat_user_name         TEXT,
    aad_object_id          TEXT,
    conversation_id        TEXT NOT NULL,
    conversation_type      TEXT NOT NULL,
    service_url            TEXT NOT NULL,
    tenant_id              TEXT NOT NULL,
    bot_id                 TEXT NOT NULL,
    servicenow_user_sys_id TEXT NOT NULL,
    servicenow_user_name   TEXT NOT NULL,
    nonce                  TEXT NOT NULL,
    created_at             BIGINT NOT NULL,
    expires_at             BIGINT NOT NULL,
    consumed_at            BIGINT
);
CREATE INDEX link_states_expires ON link_states (expires_at);

CREATE TABLE account_links (
    platform               TEXT NOT NULL,
    chat_user_id           TEXT NOT NULL,
    servicenow_user_sys_id TEXT NOT NULL,
    servicenow_user_name   TEXT NOT NULL,
    m365_object_id         TEXT NOT NULL,
    m365_upn               TEXT NOT NULL,
    m365_tenant_id         TEXT NOT NULL,
    m365_roles             TEXT NOT NULL,
    linked_at              BIGINT NOT NULL,
    linked_by              TEXT NOT NULL,
    PRIMARY KEY (platform, chat_user_id)
);
CREATE INDEX account_links_sys_user ON account_links (servicenow_user_sys_id);

CREATE TABLE link_audit (
    id                     TEXT PRIMARY KEY NOT NULL,
    at                     BIGINT NOT NULL,
    action                 TEXT NOT NULL,
    outcome                TEXT NOT NULL,
    actor_platform         TEXT NOT NULL,
    actor_user_id          TEXT NOT NULL,
    actor_servicenow_user  TEXT,
    target_servicenow_user TEXT,
    role                   TEXT,
    detail                 TEXT
);
CREATE INDEX link_audit_at ON link_audit (at);
