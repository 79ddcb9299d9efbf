-- One-time pages that show a completed setup's secrets after an Entra sign-in ("Reveal"):
-- the link token and the sign-in state are stored only as SHA-256; who may open the page is
-- bound by Entra object id or, when none is known, by e-mail/UPN.
CREATE TABLE setup_reveals (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    setup_id     TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    bound_oid    TEXT,
    bound_login  TEXT,
    recipient    TEXT NOT NULL,
    state_hash   TEXT,
    nonce        TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    viewed_by    TEXT,
    revoked_at   BIGINT
);
CREATE UNIQUE INDEX setup_reveals_state ON setup_reveals (state_hash);
CREATE INDEX setup_reveals_setup ON setup_reveals (setup_id, created_at);
