-- Conversation references captured from Teams activities, for proactive messages.
CREATE TABLE conversation_refs (
    conversation_id   TEXT PRIMARY KEY NOT NULL,
    platform          TEXT NOT NULL,
    service_url       TEXT NOT NULL,
    tenant_id         TEXT NOT NULL,
    conversation_type TEXT NOT NULL,
    team_id           TEXT,
    channel_id        TEXT,
    bot_id            TEXT NOT NULL,
    user_id           TEXT,
    user_aad_object_id TEXT,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX conversation_refs_team ON conversation_refs (team_id);
