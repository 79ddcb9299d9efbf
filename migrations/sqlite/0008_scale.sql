-- Several replicas on one database: the app-wide send rate shared as a token bucket, the
-- sender of each conversation, and the leases that elect one poller per source.

-- One row per rate limit shared by every replica (name `teams:<app id>`): the next free send
-- slot and the end of a pause after a 429, in microseconds of the database's clock.
CREATE TABLE notify_rate_buckets (
    name             TEXT PRIMARY KEY NOT NULL,
    next_slot_us     BIGINT NOT NULL,
    paused_until_us  BIGINT NOT NULL DEFAULT 0
);

-- The replica that sends to a conversation until `sender_until` (ms), so that the
-- per-conversation limit is kept by one process.
ALTER TABLE notify_destinations ADD COLUMN sender TEXT;
ALTER TABLE notify_destinations ADD COLUMN sender_until BIGINT NOT NULL DEFAULT 0;

-- Leader election of the pollers: the instance holding a source's lease polls it.
CREATE TABLE notify_poller_leases (
    source       TEXT PRIMARY KEY NOT NULL,
    holder       TEXT NOT NULL,
    lease_until  BIGINT NOT NULL
);
