//! The delivery worker: claims lanes (one case in one conversation) from the outbox, posts or
//! updates the case's root card and replies in its thread, within the rate limits, and writes
//! the outcome of each batch in one transaction.
//!
//! Per lane: the latest pending update is delivered and the older pending ones are marked
//! merged (a storm becomes one message per case). Without a root card yet, the card is sent
//! to the conversation (in a channel: a new thread) and its activity id is stored; later
//! updates replace the root card in place (`PUT`) and post an update card as a reply in the
//! thread. Failures: `Retry-After` freezes the conversation (in this process and in the
//! database) until then, and after a 429 pauses the app's sends in every replica; throttling
//! without it backs off; 5xx, network errors and timeouts
//! back off exponentially with jitter and count towards `max_attempts`, after which the row is
//! a dead letter; 403/404 "bot removed" disables the conversation's subscriptions and queues a
//! notice to whoever subscribed; other permanent errors make dead letters at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::NotifySettings;
use super::cards;
use super::outbox::{self, ClaimedLane, LaneResult, PendingRow};
use super::ratelimit::RateLimiter;
use crate::app::App;
use crate::db::{Backend, now_millis};
use crate::error::RetryKind;
use crate::teams::ADAPTIVE_CARD;
use crate::teams::connector::ConnectorError;

/// Leave this much of a lease unused (at most a quarter of it): a lane whose next call cannot
/// start before the lease ends minus this margin is put back instead.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Added to every `Retry-After`, so that the retry lands after the server's window, not on its
/// edge (times are kept in whole milliseconds).
const RETRY_AFTER_SLACK: Duration = Duration::from_millis(50);
/// Outcomes committed together, at least (and at most) this many.
const FLUSH_MIN: usize = 16;
/// See [`FLUSH_MIN`].
const FLUSH_MAX: usize = 256;
/// How long finished deliveries are gathered before they are committed together.
const COMMIT_GATHER: Duration = Duration::from_millis(20);
/// How often the owner notices and the retention purge run.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(15);

/// What the worker needs about a conversation.
#[derive(Debug, Clone)]
struct Destination {
    service_url: String,
    /// True for a Teams channel, where a reply goes to `<channel>;messageid=<root>` (Teams
    /// ignores the reply target of `POST …/activities/{id}` there).
    is_channel: bool,
}

/// One delivery worker (one per bot instance); several instances may share a database.
pub struct Worker {
    app: Arc<App>,
    owner: String,
    limiter: RateLimiter,
    /// Claim conversations for this replica alone (see [`outbox::claim`]).
    one_sender_per_conversation: bool,
    /// The delivery of Slack lanes, when Slack is enabled (see [`super::slack`]).
    slack: Option<Box<dyn super::slack::LaneDelivery>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The outcome of a connector call, classified for the outbox.
#[derive(Debug)]
enum Failure {
    /// 429 (or `Retry-After` on a 5xx): wait, do not count an attempt.
    Throttled(Option<Duration>),
    /// Worth retrying: counts as an attempt.
    Transient(String),
    /// The bot is no longer in the conversation.
    BotRemoved(String),
    /// Retrying cannot help.
    Permanent(String),
}

impl Failure {
    fn from_connector(err: &ConnectorError) -> Self {
        if err.is_bot_removed() {
            return Self::BotRemoved(err.to_string());
        }
        match err.retry_kind() {
            RetryKind::Transient { retry_after } if err.status() == Some(429) => {
                Self::Throttled(retry_after)
            }
            RetryKind::Transient {
                retry_after: Some(wait),
            } => Self::Throttled(Some(wait)),
            RetryKind::Transient { retry_after: None } | RetryKind::Network => {
                Self::Transient(err.to_string())
            }
            RetryKind::Permanent => Self::Permanent(err.to_string()),
        }
    }
}

/// An outgoing message activity with one Adaptive Card.
#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    summary: &'a str,
    attachments: [Attachment<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Attachment<'a> {
    content_type: &'static str,
    content: &'a RawValue,
}

fn message<'a>(id: Option<&'a str>, summary: &'a str, card: &'a RawValue) -> Outgoing<'a> {
    Outgoing {
        kind: "message",
        id,
        summary,
        attachments: [Attachment {
            content_type: ADAPTIVE_CARD,
            content: card,
        }],
    }
}

impl Worker {
    /// A worker with a fresh owner id and its own rate limiter. On PostgreSQL (several
    /// replicas possible) the app's rate is shared through the database and each conversation
    /// has one sending replica at a time; on SQLite (one process) both stay in the process.
    pub fn new(app: Arc<App>) -> Self {
        let settings = &app.settings.notifications;
        let owner = format!("worker-{:016x}", rand::rng().random::<u64>());
        let replicas = app.db.backend == Backend::Postgres;
        let limiter = if replicas {
            RateLimiter::shared(
                settings.per_conversation_per_second,
                settings.per_app_per_second,
                app.db.clone(),
                &format!("teams:{}", app.settings.bot.app_id),
            )
        } else {
            RateLimiter::new(
                settings.per_conversation_per_second,
                settings.per_app_per_second,
            )
        };
        let one_sender_per_conversation = replicas && settings.per_conversation_per_second > 0.0;
        Self {
            owner,
            limiter,
            one_sender_per_conversation,
            slack: app.slack_lanes(),
            app,
        }
    }

    fn settings(&self) -> &NotifySettings {
        &self.app.settings.notifications
    }

    /// Runs until `shutdown`: `claim_loops` loops (sharing the rate limiter) each claim a
    /// batch, deliver it and record the outcome, waiting a little when there is nothing to do
    /// (or until an event is recorded in this process); housekeeping runs beside them, so a
    /// long retention purge never holds up a claim.
    pub async fn run(&self, shutdown: CancellationToken) {
        tracing::info!(owner = %self.owner, "notification delivery worker started");
        let loops = self.settings().claim_loops.max(1);
        let runs = (0..loops).map(|n| {
            let owner = format!("{}-{n}", self.owner);
            let shutdown = shutdown.clone();
            async move { self.claim_loop(&owner, shutdown).await }
        });
        tokio::join!(
            futures_util::future::join_all(runs),
            self.housekeeping_loop(shutdown.clone())
        );
    }

    async fn claim_loop(&self, owner: &str, shutdown: CancellationToken) {
        let idle = Duration::from_millis(self.settings().poll_interval_ms.max(1));
        let ready = self.app.db.outbox_ready.clone();
        while !shutdown.is_cancelled() {
            // Registered before the claim: an event recorded meanwhile still wakes this loop.
            let recorded = ready.notified();
            tokio::pin!(recorded);
            recorded.as_mut().enable();
            let worked = match self.batch(owner).await {
                Ok(lanes) => lanes,
                Err(err) => {
                    tracing::warn!(error = %err, "notification delivery batch failed; retrying");
                    0
                }
            };
            if worked == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(idle) => {}
                    () = &mut recorded => {}
                }
            }
        }
    }

    async fn housekeeping_loop(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            self.housekeeping().await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
            }
        }
    }

    /// Claims and delivers one batch; returns the number of lanes claimed.
    pub async fn run_once(&self) -> Result<usize, sqlx::Error> {
        self.batch(&self.owner).await
    }

    async fn batch(&self, owner: &str) -> Result<usize, sqlx::Error> {
        let settings = self.settings();
        let lease = Duration::from_secs(settings.lease_seconds.max(1));
        let now = now_millis();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let lease_deadline = Instant::now() + lease.saturating_sub(LEASE_MARGIN.min(lease / 4));
        let sender = self
            .one_sender_per_conversation
            .then_some(self.owner.as_str());
        let lanes = outbox::claim(
            &self.app.db,
            owner,
            sender,
            now,
            now.saturating_add(lease_ms),
            settings.batch_size.max(1),
        )
        .await?;
        if lanes.is_empty() {
            return Ok(0);
        }
        let count = lanes.len();
        let concurrency = settings.concurrency.max(1);
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<LaneResult>();
        // Deliveries and commits run side by side in this task: a commit never holds up the
        // calls in flight (whose rate-limit slots would otherwise bunch up behind it).
        let deliver = async move {
            let mut deliveries = futures_util::stream::iter(lanes)
                .map(|lane| {
                    let is_channel = lane.conversation_type.as_deref() == Some("channel");
                    let destination = lane.service_url.clone().map(|service_url| Destination {
                        service_url,
                        is_channel,
                    });
                    async move {
                        let result = self.deliver_lane(lane, destination, lease_deadline).await;
                        self.record_outcome(&result);
                        result
                    }
                })
                .buffer_unordered(concurrency);
            while let Some(result) = deliveries.next().await {
                if sender.send(result).is_err() {
                    break;
                }
            }
        };
        // Outcomes are committed in groups as they come in, so a crash repeats at most the
        // deliveries of one group plus those in flight.
        let flush_every = concurrency.saturating_mul(2).clamp(FLUSH_MIN, FLUSH_MAX);
        let commit = async {
            let mut done: Vec<LaneResult> = Vec::with_capacity(flush_every);
            let mut outcome = Ok(());
            while receiver.recv_many(&mut done, flush_every).await > 0 {
                // Gather a group for a short while: fewer, larger commits.
                let until = Instant::now() + COMMIT_GATHER;
                let mut closed = false;
                while done.len() < flush_every {
                    let room = flush_every - done.len();
                    match tokio::time::timeout_at(until, receiver.recv_many(&mut done, room)).await
                    {
                        Ok(0) => closed = true,
                        Ok(_) => continue,
                        Err(_) => {}
                    }
                    break;
                }
                if let Err(err) = outbox::complete(&self.app.db, owner, &done).await {
                    // Those lanes stay leased and are retried when the lease ends.
                    tracing::warn!(error = %err, lanes = done.len(), "delivery outcomes not recorded");
                    outcome = Err(err);
                }
                done.clear();
                if closed {
                    break;
                }
            }
            outcome
        };
        let ((), outcome) = tokio::join!(deliver, commit);
        outcome.map(|()| count)
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let settings = self.settings();
        let exponent = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
        let base = settings.retry_base_ms.max(1);
        let ceiling = settings.retry_max_ms.max(base);
        let full = base.saturating_mul(1u64 << exponent.min(40)).min(ceiling);
        // Jitter: between half and all of the delay.
        let jittered = rand::rng().random_range(full / 2..=full);
        Duration::from_millis(jittered)
    }

    /// Delivers the latest pending update of one lane and says what became of every row.
    async fn deliver_lane(
        &self,
        lane: ClaimedLane,
        destination: Option<Destination>,
        lease_deadline: Instant,
    ) -> LaneResult {
        let mut result = LaneResult {
            lane_id: lane.id,
            conversation_id: lane.conversation_id.clone(),
            ..LaneResult::default()
        };
        // Rows of removed or disabled subscriptions, and updates older than the one shown.
        let mut live: Vec<&PendingRow> = Vec::new();
        for row in &lane.rows {
            if let Some(reason) = &row.subscription_gone {
                result.dead.push((row.id, reason.clone()));
            } else if row.event.updated_at.timestamp_millis() < lane.delivered_updated_at {
                result.merged.push(row.id);
            } else {
                live.push(row);
            }
        }
        let Some((latest, older)) = live.split_last() else {
            return result;
        };
        // Slack lanes (`slack:<team>:<channel>`) are delivered by the Slack path.
        if let Some(address) = super::slack::SlackAddress::parse(&lane.conversation_id) {
            match &self.slack {
                Some(slack) => {
                    slack
                        .deliver(
                            &self.app,
                            &lane,
                            &address,
                            &live,
                            latest,
                            older,
                            lease_deadline,
                            &mut result,
                        )
                        .await;
                }
                None => {
                    let reason = "Slack is not enabled on this bot (slack.enabled)".to_owned();
                    for row in &live {
                        result.dead.push((row.id, reason.clone()));
                    }
                    result.error = Some(reason);
                    result.failed_subscriptions =
                        live.iter().map(|r| r.subscription_id.clone()).collect();
                }
            }
            return result;
        }
        let Some(destination) = destination else {
            let reason = "the bot has no stored reference of this conversation (removed, or never installed there)".to_owned();
            for row in &live {
                result.dead.push((row.id, reason.clone()));
                result
                    .failed_subscriptions
                    .push(row.subscription_id.clone());
            }
            result.bot_removed = Some(reason);
            return result;
        };
        let settings = self.settings();
        let timeout = Duration::from_millis(settings.send_timeout_ms.max(1));
        let event = &latest.event;
        let summary = cards::summary(event);
        let case_card = match self
            .app
            .cards
            .render_raw("teams/notify_case", cards::case_model(event, false))
        {
            Ok(card) => card,
            Err(err) => {
                let reason = format!("the case card cannot be rendered: {err}");
                for row in &live {
                    result.dead.push((row.id, reason.clone()));
                }
                return result;
            }
        };
        let conversation = lane.conversation_id.as_str();
        let attempt = async {
            match &lane.root_activity_id {
                None => {
                    self.slot(conversation, lease_deadline).await?;
                    let sent = call(
                        timeout,
                        self.app.connector.send(
                            &destination.service_url,
                            conversation,
                            &message(None, &summary, &case_card),
                        ),
                    )
                    .await?;
                    Ok::<Option<Option<String>>, Attempt>(Some(
                        Some(sent.id).filter(|id| !id.is_empty()),
                    ))
                }
                Some(root) => {
                    self.slot(conversation, lease_deadline).await?;
                    let updated = call(
                        timeout,
                        self.app.connector.update(
                            &destination.service_url,
                            conversation,
                            root,
                            &message(Some(root), &summary, &case_card),
                        ),
                    )
                    .await;
                    if let Err(err) = &updated
                        && err.status() == Some(404)
                        && !err.is_bot_removed()
                    {
                        // The root card was deleted: start a new thread with the current state.
                        self.slot(conversation, lease_deadline).await?;
                        let sent = call(
                            timeout,
                            self.app.connector.send(
                                &destination.service_url,
                                conversation,
                                &message(None, &summary, &case_card),
                            ),
                        )
                        .await?;
                        return Ok(Some(Some(sent.id).filter(|id| !id.is_empty())));
                    }
                    updated?;
                    let previous = lane
                        .delivered_state
                        .as_deref()
                        .or(older
                            .first()
                            .and_then(|r| r.event.previous_state.as_deref()))
                        .or(event.previous_state.as_deref());
                    let model = cards::update_model(event, previous, older.len());
                    let update_card = self
                        .app
                        .cards
                        .render_raw("teams/notify_update", model)
                        .map_err(|e| Attempt::Render(e.to_string()))?;
                    self.slot(conversation, lease_deadline).await?;
                    let update = message(None, &summary, &update_card);
                    if destination.is_channel {
                        let thread = format!("{conversation};messageid={root}");
                        call(
                            timeout,
                            self.app
                                .connector
                                .send(&destination.service_url, &thread, &update),
                        )
                        .await?;
                    } else {
                        call(
                            timeout,
                            self.app.connector.reply(
                                &destination.service_url,
                                conversation,
                                root,
                                &update,
                            ),
                        )
                        .await?;
                    }
                    Ok(None)
                }
            }
        };
        match attempt.await {
            Ok(new_root) => {
                result.delivered.push(latest.id);
                result.merged.extend(older.iter().map(|r| r.id));
                result.root_activity_id = new_root;
                result.shown = Some((event.updated_at.timestamp_millis(), event.state.clone()));
            }
            Err(Attempt::Deferred(at)) => {
                result.retry = live.iter().map(|r| r.id).collect();
                result.next_attempt_at = Some(instant_to_millis(at));
            }
            Err(Attempt::Render(reason)) => {
                for row in &live {
                    result.dead.push((row.id, reason.clone()));
                }
            }
            Err(Attempt::Failed(err)) => {
                self.failed(&mut result, &live, latest, &err);
                if err.status() == Some(429) {
                    let retry_after = match Failure::from_connector(&err) {
                        Failure::Throttled(wait) => wait,
                        _ => None,
                    };
                    self.app.metrics.record_throttled(retry_after.is_some());
                    if let Some(wait) = retry_after {
                        // The app may be over Teams' limit: every replica pauses.
                        if let Err(err) = self.limiter.pause(wait + RETRY_AFTER_SLACK).await {
                            tracing::warn!(error = %err, "cannot pause the shared rate limit");
                        }
                    }
                } else if result.freeze_until.is_some() {
                    self.app.metrics.record_freeze();
                }
            }
        }
        result
    }

    /// Counts the rows of a finished lane by outcome.
    fn record_outcome(&self, result: &LaneResult) {
        let metrics = &self.app.metrics;
        metrics.record_deliveries("delivered", result.delivered.len());
        metrics.record_deliveries("merged", result.merged.len());
        metrics.record_deliveries("dead", result.dead.len());
        let retry = if result.count_attempt {
            "retried"
        } else if result.error.is_some() {
            "throttled"
        } else {
            "deferred"
        };
        metrics.record_deliveries(retry, result.retry.len());
    }

    fn failed(
        &self,
        result: &mut LaneResult,
        live: &[&PendingRow],
        latest: &PendingRow,
        err: &ConnectorError,
    ) {
        let now = now_millis();
        let subscriptions = || live.iter().map(|r| r.subscription_id.clone()).collect();
        match Failure::from_connector(err) {
            Failure::Throttled(wait) => {
                result.retry = live.iter().map(|r| r.id).collect();
                result.error = Some(err.to_string());
                match wait {
                    Some(wait) => {
                        // Retry-After: the whole conversation waits, here and in every
                        // instance (through the database).
                        let wait = wait + RETRY_AFTER_SLACK;
                        let until = now.saturating_add(duration_millis(wait));
                        self.limiter
                            .freeze(&result.conversation_id, Instant::now() + wait);
                        result.freeze_until = Some(until);
                        result.next_attempt_at = Some(until);
                    }
                    None => {
                        let wait = self.backoff(latest.attempts);
                        result.next_attempt_at = Some(now.saturating_add(duration_millis(wait)));
                    }
                }
            }
            Failure::Transient(reason) => {
                let max = i64::from(self.settings().max_attempts.max(1));
                if latest.attempts + 1 >= max {
                    let reason = format!("gave up after {max} attempts: {reason}");
                    for row in live {
                        result.dead.push((row.id, reason.clone()));
                    }
                } else {
                    result.retry = live.iter().map(|r| r.id).collect();
                    result.count_attempt = true;
                    result.next_attempt_at =
                        Some(now.saturating_add(duration_millis(self.backoff(latest.attempts))));
                }
                result.error = Some(reason);
                result.failed_subscriptions = subscriptions();
            }
            Failure::BotRemoved(reason) => {
                let reason = format!("the bot was removed from the conversation ({reason})");
                for row in live {
                    result.dead.push((row.id, reason.clone()));
                }
                result.bot_removed = Some(reason.clone());
                result.error = Some(reason);
                result.failed_subscriptions = subscriptions();
            }
            Failure::Permanent(reason) => {
                for row in live {
                    result.dead.push((row.id, reason.clone()));
                }
                result.error = Some(reason);
                result.failed_subscriptions = subscriptions();
            }
        }
    }

    /// Waits for the next rate-limit slot of `conversation`, or defers the lane when the slot
    /// comes too late for the lease.
    async fn slot(&self, conversation: &str, lease_deadline: Instant) -> Result<(), Attempt> {
        self.limiter
            .acquire(conversation, lease_deadline)
            .await
            .map_err(Attempt::Deferred)
    }

    /// Owner notices for disabled subscriptions, routes of subscriptions stored before
    /// routes existed, and the retention purge.
    async fn housekeeping(&self) {
        if let Err(err) = super::store::send_owner_notices(&self.app).await {
            tracing::warn!(error = %err, "notification owner notices failed");
        }
        if let Some(slack) = &self.slack
            && let Err(err) = slack.send_owner_notices(&self.app).await
        {
            tracing::warn!(error = %err, "Slack notification owner notices failed");
        }
        if let Err(err) = super::store::route_unrouted(&self.app.db).await {
            tracing::warn!(error = %err, "notification subscription routes not computed");
        }
        let days = i64::from(self.settings().retention_days.max(1));
        let before = now_millis().saturating_sub(days * 86_400_000);
        match outbox::purge_finished(&self.app.db, before).await {
            Ok(0) => {}
            Ok(n) => {
                self.app.metrics.record_purged(n);
                tracing::info!(rows = n, "purged old notification deliveries");
            }
            Err(err) => tracing::warn!(error = %err, "notification purge failed"),
        }
    }
}

/// Why an attempt at a lane stopped.
#[derive(Debug)]
enum Attempt {
    /// The rate limit leaves no slot within the lease: try again at this time.
    Deferred(Instant),
    /// A card could not be rendered.
    Render(String),
    /// The connector call failed.
    Failed(ConnectorError),
}

impl From<ConnectorError> for Attempt {
    fn from(err: ConnectorError) -> Self {
        Self::Failed(err)
    }
}

/// A connector call with a timeout (a timeout counts as a network failure).
async fn call<T>(
    timeout: Duration,
    future: impl Future<Output = Result<T, ConnectorError>>,
) -> Result<T, ConnectorError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_) => Err(ConnectorError::Network(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn instant_to_millis(at: Instant) -> i64 {
    let now = Instant::now();
    now_millis().saturating_add(duration_millis(at.saturating_duration_since(now)))
}

/// Starts the worker unless `[notifications] deliver = false`.
pub fn spawn(app: Arc<App>, shutdown: CancellationToken) {
    if !app.settings.notifications.deliver {
        tracing::info!("notification delivery is off in this instance (notifications.deliver)");
        return;
    }
    let worker = Worker::new(app);
    tokio::spawn(async move { worker.run(shutdown).await });
}
