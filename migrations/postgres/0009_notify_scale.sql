-- Notifications at scale: every hot query of the outbox and the subscriptions uses an index.

-- Which subscriptions an event can match, by the one filter dimension each subscription is
-- routed by (see notify::filter::Filter::routes): `*` (no filter), `source:…`, `group:…`,
-- `service:…`, `priority:…`. `?` marks a subscription made before routes existed: it is a
-- candidate for every event until the worker's housekeeping computes its routes.
CREATE TABLE notify_subscription_routes (
    route           TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    PRIMARY KEY (route, subscription_id)
);
CREATE INDEX notify_subscription_routes_subscription ON notify_subscription_routes (subscription_id);
INSERT INTO notify_subscription_routes (route, subscription_id) SELECT '?', id FROM notify_subscriptions;

-- The claim finds its own lanes' rows by owner and lease (only leased lanes are indexed).
CREATE INDEX notify_lanes_lease ON notify_lanes (lease_owner, lease_until) WHERE lease_owner IS NOT NULL;

-- The claim skips frozen conversations.
CREATE INDEX notify_destinations_frozen ON notify_destinations (frozen_until);

-- The retention purge finds old finished rows in bounded chunks.
CREATE INDEX notify_outbox_finished ON notify_outbox (status, finished_at);
