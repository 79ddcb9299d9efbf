-- Case notifications into Slack channels.

-- Where a subscription lives: `teams` or `slack`; for Slack the workspace (team) id and the
-- channel id (the conversation id is then `slack:<team>:<channel>`).
ALTER TABLE notify_subscriptions ADD COLUMN platform TEXT NOT NULL DEFAULT 'teams';
ALTER TABLE notify_subscriptions ADD COLUMN team_id TEXT;
ALTER TABLE notify_subscriptions ADD COLUMN channel_id TEXT;
CREATE INDEX notify_subscriptions_platform_team ON notify_subscriptions (platform, team_id);

-- A root message `chat.postMessage` whose outcome is unknown (timeout, connection reset after
-- sending): before posting again, the channel's history is searched for the message carrying
-- this marker in its metadata.
CREATE TABLE notify_slack_unknown_posts (
    lane_id    BIGINT PRIMARY KEY NOT NULL,
    channel    TEXT NOT NULL,
    marker     TEXT NOT NULL,
    posted_at  BIGINT NOT NULL
);
