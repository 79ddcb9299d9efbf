-- The outcome of a delivery is written by row id: no index may lead with `status`, or SQLite
-- prefers `status = 'pending'` (every waiting row) over the ids. The retention purge gets one
-- partial index per status it deletes instead of the `(status, finished_at)` index.
DROP INDEX notify_outbox_finished;
CREATE INDEX notify_outbox_delivered_at ON notify_outbox (finished_at) WHERE status = 'delivered';
CREATE INDEX notify_outbox_merged_at ON notify_outbox (finished_at) WHERE status = 'merged';

-- The claim with one sending replica per conversation skips conversations frozen or held by
-- another replica: both conditions are found through an index (`frozen_until` has one).
CREATE INDEX notify_destinations_sender ON notify_destinations (sender_until);
