//! Case notifications into Slack channels, through the same outbox and lanes as Teams.
//!
//! A Slack subscription's conversation id is `slack:<team id>:<channel id>`, so one lane is
//! one case in one Slack channel. Per lane: the case's root message is posted once with
//! `chat.postMessage` (its `ts` stored as the lane's root), edited in place with
//! `chat.update` on later changes, and each later change is also posted as a thread reply
//! (`thread_ts`).
//!
//! Limits: every call into a channel takes a slot of that channel (about 1 per second, as
//! Slack allows `chat.postMessage`), `chat.update` and `conversations.history` also a slot of
//! their method tier (Tier 3, 50 per minute), and all calls a slot of the workspace when
//! `slack_per_workspace_per_second` is set. A 429 freezes the channel until its `Retry-After`
//! has passed in every replica (`notify_destinations`); a 429 of a tiered method also pauses
//! the workspace's shared bucket (`notify_rate_buckets`).
//!
//! `not_in_channel`, `channel_not_found`, `is_archived` disable the channel's subscriptions
//! with the reason and queue a direct message to each subscriber; `account_inactive`,
//! `token_revoked`, `invalid_auth` disable every subscription of the workspace
//! (`crate::notify::slack::disable_slack_team`). A root `chat.postMessage` whose outcome is unknown (timeout,
//! connection lost) is recorded; before posting again the channel's history is searched for
//! the message carrying the lane in its metadata, so at most one duplicate is posted, and each
//! post made without finding the first is counted (`resent_after_unknown`).

use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::Rng;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::time::Instant;

use super::api::{SlackApiError, SlackClient};
use super::blocks::{self, Message};
use crate::app::App;
use crate::core::Reply;
use crate::db::{Backend, Db, now_millis};
use crate::error::RetryKind;
use crate::notify::cards;
use crate::notify::outbox::{ClaimedLane, LaneResult, PendingRow, placeholders};
use crate::notify::ratelimit::RateLimiter;
use crate::notify::slack::{
    LaneDelivery, METADATA_EVENT_TYPE, PLATFORM, SlackAddress, channel_gone_advice,
    disable_slack_team, is_workspace_gone,
};
/// Added to every `Retry-After`, so that the retry lands after Slack's window.
const RETRY_AFTER_SLACK: Duration = Duration::from_millis(50);
/// The history searched for a root message of unknown outcome starts this long before it.
const HISTORY_MARGIN_MS: i64 = 60_000;

/// The rate limits of Slack deliveries.
#[derive(Debug)]
pub struct SlackDelivery {
    /// Per channel (and optionally per workspace).
    channels: RateLimiter,
    /// Tier 3 methods (`chat.update`, `conversations.history`), per workspace.
    tier3: RateLimiter,
}

impl SlackDelivery {
    /// The limits of `[notifications]`; on PostgreSQL the workspace-wide ones are shared by
    /// every replica.
    pub fn new(app: &App) -> Self {
        let settings = &app.settings.notifications;
        let tier3_per_second = settings.slack_tier3_per_minute / 60.0;
        let (channels, tier3) = if app.db.backend == Backend::Postgres {
            (
                RateLimiter::shared(
                    settings.slack_per_channel_per_second,
                    settings.slack_per_workspace_per_second,
                    app.db.clone(),
                    "slack:workspace",
                ),
                RateLimiter::shared(0.0, tier3_per_second, app.db.clone(), "slack:tier3"),
            )
        } else {
            (
                RateLimiter::new(
                    settings.slack_per_channel_per_second,
                    settings.slack_per_workspace_per_second,
                ),
                RateLimiter::new(0.0, tier3_per_second),
            )
        };
        Self { channels, tier3 }
    }

    /// Delivers the latest pending update (`latest`, with `older` merged into it) of a Slack
    /// lane; fills `result` like the Teams path does.
    #[allow(clippy::too_many_arguments)]
    pub async fn deliver_lane(
        &self,
        app: &App,
        lane: &ClaimedLane,
        address: &SlackAddress,
        live: &[&PendingRow],
        latest: &PendingRow,
        older: &[&PendingRow],
        lease_deadline: Instant,
        result: &mut LaneResult,
    ) {
        let Some(slack) = app.slack.as_ref() else {
            let reason = "Slack is not enabled on this bot (slack.enabled)".to_owned();
            for row in live {
                result.dead.push((row.id, reason.clone()));
            }
            result.error = Some(reason);
            result.failed_subscriptions = live.iter().map(|r| r.subscription_id.clone()).collect();
            return;
        };
        let api = match slack.api_for(&app.db, &address.team_id).await {
            Ok(api) => api,
            Err(super::TokenError::NotInstalled(team)) => {
                let reason = super::TokenError::NotInstalled(team).to_string();
                if let Err(err) = disable_slack_team(app, &address.team_id, &reason).await {
                    tracing::warn!(error = %err, "cannot disable the workspace's subscriptions");
                }
                for row in live {
                    result.dead.push((row.id, reason.clone()));
                }
                result.error = Some(reason);
                return;
            }
            Err(err) => {
                // The token store or auth.test failed: worth retrying.
                let failed = SlackApiError::Network {
                    method: "auth.test",
                    message: err.to_string(),
                };
                self.failed(app, address, live, latest, &failed, result)
                    .await;
                return;
            }
        };
        let call = Call {
            app,
            api: &api,
            limits: self,
            lane,
            address,
            lease_deadline,
            timeout: Duration::from_millis(app.settings.notifications.send_timeout_ms.max(1)),
        };
        match call.run(latest, older).await {
            Ok(new_root) => {
                result.delivered.push(latest.id);
                result.merged.extend(older.iter().map(|r| r.id));
                result.root_activity_id = new_root;
                result.shown = Some((
                    latest.event.updated_at.timestamp_millis(),
                    latest.event.state.clone(),
                ));
                app.metrics.record_slack("delivered", 1);
            }
            Err(Stop::Deferred(at)) => {
                result.retry = live.iter().map(|r| r.id).collect();
                result.next_attempt_at = Some(instant_to_millis(at));
            }
            Err(Stop::Failed(err)) => {
                self.failed(app, address, live, latest, &err, result).await;
            }
        }
    }

    /// Fills `result` after a failed call.
    async fn failed(
        &self,
        app: &App,
        address: &SlackAddress,
        live: &[&PendingRow],
        latest: &PendingRow,
        err: &SlackApiError,
        result: &mut LaneResult,
    ) {
        let now = now_millis();
        let settings = &app.settings.notifications;
        result.failed_subscriptions = live.iter().map(|r| r.subscription_id.clone()).collect();
        if let SlackApiError::RateLimited {
            method,
            retry_after,
        } = err
        {
            let wait = *retry_after + RETRY_AFTER_SLACK;
            let until = now.saturating_add(millis(wait));
            app.metrics.record_slack("throttled", 1);
            // The channel waits here and, through the database, in every replica.
            self.channels
                .freeze(&result.conversation_id, Instant::now() + wait);
            if *method != "chat.postMessage" {
                // A method tier is workspace-wide: every replica pauses it.
                if let Err(err) = self.tier3.pause(wait).await {
                    tracing::warn!(error = %err, "cannot pause the shared Slack rate limit");
                }
            }
            result.retry = live.iter().map(|r| r.id).collect();
            result.error = Some(err.to_string());
            result.freeze_until = Some(until);
            result.next_attempt_at = Some(until);
            result.failed_subscriptions.clear();
            return;
        }
        let code = err.code().unwrap_or_default();
        if let Some(advice) = channel_gone_advice(code) {
            let reason = format!("Slack answered {code}: {advice}");
            for row in live {
                result.dead.push((row.id, reason.clone()));
            }
            result.bot_removed = Some(reason.clone());
            result.error = Some(reason);
            app.metrics.record_slack("disabled_subscriptions", 1);
            return;
        }
        if is_workspace_gone(code) {
            let reason = format!(
                "Slack answered {code}: the app's token no longer works in this workspace; reinstall the app"
            );
            match disable_slack_team(app, &address.team_id, &reason).await {
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "cannot disable the workspace's subscriptions")
                }
            }
            for row in live {
                result.dead.push((row.id, reason.clone()));
            }
            result.error = Some(reason);
            return;
        }
        match err.retry_kind() {
            RetryKind::Transient { .. } | RetryKind::Network => {
                let max = i64::from(settings.max_attempts.max(1));
                let reason = err.to_string();
                if latest.attempts + 1 >= max {
                    let reason = format!("gave up after {max} attempts: {reason}");
                    for row in live {
                        result.dead.push((row.id, reason.clone()));
                    }
                } else {
                    result.retry = live.iter().map(|r| r.id).collect();
                    result.count_attempt = true;
                    result.next_attempt_at =
                        Some(now.saturating_add(millis(backoff(app, latest.attempts))));
                    app.metrics.record_slack("retried", 1);
                }
                result.error = Some(reason);
            }
            RetryKind::Permanent => {
                let reason = err.to_string();
                for row in live {
                    result.dead.push((row.id, reason.clone()));
                }
                result.error = Some(reason);
            }
        }
    }
}

impl LaneDelivery for SlackDelivery {
    fn deliver<'a>(
        &'a self,
        app: &'a App,
        lane: &'a ClaimedLane,
        address: &'a SlackAddress,
        live: &'a [&'a PendingRow],
        latest: &'a PendingRow,
        older: &'a [&'a PendingRow],
        lease_deadline: Instant,
        result: &'a mut LaneResult,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.deliver_lane(
            app,
            lane,
            address,
            live,
            latest,
            older,
            lease_deadline,
            result,
        ))
    }

    fn send_owner_notices<'a>(&'a self, app: &'a App) -> BoxFuture<'a, Result<usize, sqlx::Error>> {
        Box::pin(send_owner_notices(app))
    }
}

/// Why an attempt stopped.
#[derive(Debug)]
enum Stop {
    /// No rate-limit slot within the lease: try again then.
    Deferred(Instant),
    /// A Web API call failed.
    Failed(SlackApiError),
}

impl From<SlackApiError> for Stop {
    fn from(err: SlackApiError) -> Self {
        Self::Failed(err)
    }
}

/// One lane's delivery.
struct Call<'a> {
    app: &'a App,
    api: &'a SlackClient,
    limits: &'a SlackDelivery,
    lane: &'a ClaimedLane,
    address: &'a SlackAddress,
    lease_deadline: Instant,
    timeout: Duration,
}

impl Call<'_> {
    fn conversation(&self) -> &str {
        &self.lane.conversation_id
    }

    /// A slot of the channel (and of Tier 3 when `tiered`).
    async fn slot(&self, tiered: bool) -> Result<(), Stop> {
        if tiered {
            self.limits
                .tier3
                .acquire(&self.address.team_id, self.lease_deadline)
                .await
                .map_err(Stop::Deferred)?;
        }
        self.limits
            .channels
            .acquire(self.conversation(), self.lease_deadline)
            .await
            .map_err(Stop::Deferred)
    }

    /// The metadata of this lane's messages.
    fn metadata(&self, row: Option<i64>) -> Value {
        let mut payload = json!({"lane": self.lane.id.to_string(), "case": self.lane.case_key});
        if let Some(row) = row {
            payload["row"] = json!(row.to_string());
        }
        json!({"event_type": METADATA_EVENT_TYPE, "event_payload": payload})
    }

    /// Posts, updates and replies; returns the new root `ts` when one was posted or found.
    async fn run(
        &self,
        latest: &PendingRow,
        older: &[&PendingRow],
    ) -> Result<Option<Option<String>>, Stop> {
        let event = &latest.event;
        let case = blocks::render(&Reply::Card {
            template: "notify_case",
            data: cards::case_model(event, false),
        });
        let mut root = self.lane.root_activity_id.clone();
        let mut found = None;
        if root.is_none() {
            match self.find_unknown_post().await? {
                Some(ts) => {
                    // The earlier post did arrive: edit it instead of posting again.
                    self.app.metrics.record_slack("recovered_after_unknown", 1);
                    root = Some(ts.clone());
                    found = Some(ts);
                }
                None => return self.post_root(&case).await.map(|ts| Some(Some(ts))),
            }
        }
        let Some(root) = root else {
            return Ok(None);
        };
        self.slot(true).await?;
        let updated = timed(
            self.timeout,
            "chat.update",
            self.api
                .update_notification(&self.address.channel_id, &root, &case),
        )
        .await;
        match updated {
            Err(err) if err.code() == Some("message_not_found") => {
                // The root message was deleted: start a new thread with the current state.
                return self.post_root(&case).await.map(|ts| Some(Some(ts)));
            }
            other => {
                other?;
            }
        }
        if found.is_some() {
            // The found root already carries this update's thread start.
            return Ok(found.map(Some));
        }
        let previous = self
            .lane
            .delivered_state
            .as_deref()
            .or(older
                .first()
                .and_then(|r| r.event.previous_state.as_deref()))
            .or(event.previous_state.as_deref());
        let update = blocks::render(&Reply::Card {
            template: "notify_update",
            data: cards::update_model(event, previous, older.len()),
        });
        self.slot(false).await?;
        timed(
            self.timeout,
            "chat.postMessage",
            self.api.post_notification(
                &self.address.channel_id,
                &update,
                Some(&root),
                &self.metadata(Some(latest.id)),
            ),
        )
        .await?;
        Ok(None)
    }

    /// Posts the root message; an unknown outcome is recorded before it is reported.
    async fn post_root(&self, case: &Message) -> Result<String, Stop> {
        self.slot(false).await?;
        let posted = timed(
            self.timeout,
            "chat.postMessage",
            self.api
                .post_notification(&self.address.channel_id, case, None, &self.metadata(None)),
        )
        .await;
        match posted {
            Ok(posted) => Ok(posted.ts),
            Err(err @ SlackApiError::Network { .. }) => {
                self.app.metrics.record_slack("unknown_outcome", 1);
                if let Err(db) = record_unknown_post(
                    &self.app.db,
                    self.lane.id,
                    &self.address.channel_id,
                    &self.marker(),
                )
                .await
                {
                    tracing::warn!(error = %db, "an unknown Slack post outcome was not recorded");
                }
                Err(err.into())
            }
            Err(err) => Err(err.into()),
        }
    }

    fn marker(&self) -> String {
        self.lane.id.to_string()
    }

    /// After an unknown outcome: the `ts` of the root message found in the channel's history,
    /// or `None` (nothing recorded, or not found: the record is dropped, the post counted).
    async fn find_unknown_post(&self) -> Result<Option<String>, Stop> {
        let recorded = match unknown_post(&self.app.db, self.lane.id).await {
            Ok(recorded) => recorded,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read unknown Slack post outcomes");
                None
            }
        };
        let Some((marker, posted_at)) = recorded else {
            return Ok(None);
        };
        self.slot(true).await?;
        let oldest = posted_at.saturating_sub(HISTORY_MARGIN_MS).max(0);
        let oldest = format!("{}.{:06}", oldest / 1000, (oldest % 1000) * 1000);
        let history = timed(
            self.timeout,
            "conversations.history",
            self.api
                .conversation_history(&self.address.channel_id, &oldest, 200),
        )
        .await?;
        let found = history.into_iter().find(|message| {
            message.thread_ts.as_deref().is_none_or(|t| t == message.ts)
                && message.metadata.as_ref().is_some_and(|meta| {
                    meta["event_type"] == METADATA_EVENT_TYPE
                        && meta["event_payload"]["lane"].as_str() == Some(marker.as_str())
                        && meta["event_payload"].get("row").is_none()
                })
        });
        if let Err(err) = forget_unknown_post(&self.app.db, self.lane.id).await {
            tracing::warn!(error = %err, "cannot clear an unknown Slack post outcome");
        }
        if found.is_none() {
            // Posting again: if the first post did arrive after all, this is its duplicate.
            self.app.metrics.record_slack("resent_after_unknown", 1);
        }
        Ok(found.map(|m| m.ts))
    }
}

/// A Web API call with a timeout (a timeout is an unknown outcome, like a lost connection).
async fn timed<T>(
    timeout: Duration,
    method: &'static str,
    future: impl Future<Output = Result<T, SlackApiError>>,
) -> Result<T, SlackApiError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_) => Err(SlackApiError::Network {
            method,
            message: format!("no answer within {} ms", timeout.as_millis()),
        }),
    }
}

async fn record_unknown_post(
    db: &Db,
    lane_id: i64,
    channel: &str,
    marker: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_slack_unknown_posts (lane_id, channel, marker, posted_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (lane_id) DO NOTHING",
    )
    .bind(lane_id)
    .bind(channel)
    .bind(marker)
    .bind(now_millis())
    .execute(&db.pool)
    .await
    .map(drop)
}

async fn unknown_post(db: &Db, lane_id: i64) -> Result<Option<(String, i64)>, sqlx::Error> {
    let row =
        sqlx::query("SELECT marker, posted_at FROM notify_slack_unknown_posts WHERE lane_id = $1")
            .bind(lane_id)
            .fetch_optional(&db.pool)
            .await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}

async fn forget_unknown_post(db: &Db, lane_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notify_slack_unknown_posts WHERE lane_id = $1")
        .bind(lane_id)
        .execute(&db.pool)
        .await
        .map(drop)
}

/// Sends each Slack subscriber whose subscription was disabled a direct message saying why
/// and what to do; a failed message is tried again later. Returns the messages sent.
pub async fn send_owner_notices(app: &App) -> Result<usize, sqlx::Error> {
    let Some(slack) = app.slack.as_ref() else {
        return Ok(0);
    };
    let rows = sqlx::query(
        "SELECT id, created_by, filter_text, disabled_reason, channel_id, team_id FROM notify_subscriptions \
         WHERE owner_notice_due = 1 AND platform = $1 ORDER BY disabled_at LIMIT 200",
    )
    .bind(PLATFORM)
    .fetch_all(&app.db.pool)
    .await?;
    // Per (workspace, user): a user id is only meaningful in its workspace.
    type Notices = Vec<(String, String, String, String)>;
    let mut per_user: std::collections::BTreeMap<(String, String), Notices> = Default::default();
    for row in &rows {
        let team: Option<String> = row.try_get(5)?;
        let user: String = row.try_get(1)?;
        per_user
            .entry((team.unwrap_or_default(), user))
            .or_default()
            .push((
                row.try_get(0)?,
                row.try_get(2)?,
                row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                row.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
            ));
    }
    let mut sent = 0;
    for ((team, user), subscriptions) in per_user {
        let ids: Vec<&str> = subscriptions.iter().map(|s| s.0.as_str()).collect();
        let claim = format!(
            "UPDATE notify_subscriptions SET owner_notice_due = 0 WHERE owner_notice_due = 1 AND id IN ({})",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query(&claim);
        for id in &ids {
            query = query.bind(*id);
        }
        if query.execute(&app.db.pool).await?.rows_affected() == 0 {
            continue;
        }
        let lines: Vec<String> = subscriptions
            .iter()
            .map(|(_, filter, reason, channel)| {
                let filter = if filter.is_empty() {
                    "everything"
                } else {
                    filter
                };
                format!("- in <#{channel}> (filter: {filter}): {reason}")
            })
            .collect();
        let reply = Reply::notice(
            crate::core::Tone::Warning,
            "Notifications stopped",
            &format!(
                "I can no longer post in a channel where you subscribed to case notifications, so I disabled the subscription:\n\n{}",
                lines.join("\n")
            ),
            Some(
                "Invite me to the channel again (/invite @m365bot) or unarchive it, then type **/m365 subscribe** there (with the same filter) to resume.",
            ),
        );
        let posted = match slack.api_for(&app.db, &team).await {
            Ok(api) => api
                .post_message(&user, &blocks::render(&reply), None)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match posted {
            Ok(_) => sent += 1,
            Err(err) => {
                tracing::warn!(error = %err, "the disabled-subscription message was not delivered; will retry");
                let undo = format!(
                    "UPDATE notify_subscriptions SET owner_notice_due = 1 WHERE enabled = 0 AND id IN ({})",
                    placeholders(1, ids.len())
                );
                let mut query = sqlx::query(&undo);
                for id in &ids {
                    query = query.bind(*id);
                }
                query.execute(&app.db.pool).await?;
            }
        }
    }
    Ok(sent)
}

/// The retry delay after `attempts` failed attempts: doubled per attempt, with jitter.
fn backoff(app: &App, attempts: i64) -> Duration {
    let settings = &app.settings.notifications;
    let exponent = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let base = settings.retry_base_ms.max(1);
    let ceiling = settings.retry_max_ms.max(base);
    let full = base.saturating_mul(1u64 << exponent).min(ceiling);
    Duration::from_millis(rand::rng().random_range(full / 2..=full))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn instant_to_millis(at: Instant) -> i64 {
    now_millis().saturating_add(millis(at.saturating_duration_since(Instant::now())))
}
