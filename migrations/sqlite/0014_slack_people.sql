-- Slack people: the workspace of a linked Slack user, and the Events API deliveries already
-- handled (Slack retries an event it thinks was missed, with the same event_id).
ALTER TABLE account_links ADD COLUMN chat_team_id TEXT;

CREATE TABLE slack_events_seen (
    event_id TEXT PRIMARY KEY NOT NULL,
    seen_at  BIGINT NOT NULL
);
CREATE INDEX slack_events_seen_at ON slack_events_seen (seen_at);
