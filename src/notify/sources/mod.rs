//! The event sources: the ServiceNow push endpoint, the ServiceNow poller and the Microsoft
//! 365 service-health poller (with optional mirroring into ServiceNow incidents). Every source
//! ends in [`crate::notify::event::CaseEvent`] handed to
//! [`crate::notify::outbox::record_event`].

pub mod health;
pub mod leader;
pub mod push;
pub mod script;
pub mod servicenow;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::error::RetryKind;
use crate::notify::event::CaseEvent;
use crate::notify::outbox::RecordOutcome;
use crate::upstream::graph::GraphError;
use crate::upstream::servicenow::ServiceNowError;

/// The `[notifications.sources]` configuration section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesSettings {
    /// The ServiceNow table of support cases (poller and push parser).
    #[serde(default)]
    pub servicenow: ServiceNowSourceSettings,
    /// The push endpoint `POST /api/servicenow/events`.
    #[serde(default)]
    pub push: PushSettings,
    /// Microsoft 365 service health from Graph.
    #[serde(default)]
    pub service_health: ServiceHealthSettings,
}

/// `[notifications.sources.servicenow]`: which records are support cases and how they map.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowSourceSettings {
    /// Run the poller (reconciliation, or the only source where push is not installed).
    #[serde(default)]
    pub poll: bool,
    /// Seconds between polls.
    #[serde(default = "default_sn_interval")]
    pub interval_secs: u64,
    /// The first poll starts this many seconds in the past (not at the start of the table).
    #[serde(default = "default_look_back")]
    pub look_back_secs: u64,
    /// Records read per request.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seconds before the watermark read again on each poll (late commits, same-second
    /// updates); rows already handled are skipped.
    #[serde(default = "default_overlap")]
    pub overlap_secs: u64,
    /// The table of support cases.
    #[serde(default = "default_table")]
    pub table: String,
    /// The column that carries the Microsoft support case reference.
    #[serde(default = "default_case_field")]
    pub case_reference_field: String,
    /// Encoded query selecting the cases (`^NQ` not allowed); default
    /// `<case_reference_field>ISNOTEMPTY`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Column shown as the case number.
    #[serde(default = "default_number_field")]
    pub number_field: String,
    /// Column shown as the title.
    #[serde(default = "default_title_field")]
    pub title_field: String,
    /// Column shown as the state.
    #[serde(default = "default_state_field")]
    pub state_field: String,
    /// Column shown as the priority.
    #[serde(default = "default_priority_field")]
    pub priority_field: String,
    /// Column shown as the service (category or configuration item).
    #[serde(default = "default_service_field")]
    pub service_field: String,
    /// Column of the assignment group.
    #[serde(default = "default_group_field")]
    pub assignment_group_field: String,
    /// State values (database values) that mean resolved or closed.
    #[serde(default = "default_resolved_states")]
    pub resolved_states: Vec<String>,
    /// Journal elements whose latest entry is relayed as the note of an update.
    #[serde(default = "default_note_elements")]
    pub note_elements: Vec<String>,
}

/// `[notifications.sources.push]`: how `POST /api/servicenow/events` authenticates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// Shared secret of the HMAC signature (`X-M365bot-Signature`); unset disables HMAC.
    #[serde(default, skip_serializing)]
    pub hmac_secret: Option<SecretString>,
    /// Accepted distance between `X-M365bot-Timestamp` and now, in seconds.
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Accepted `aud` values of Entra bearer tokens; empty disables bearer tokens.
    #[serde(default)]
    pub bearer_audiences: Vec<String>,
    /// Client ids (`appid` / `azp`) allowed to push with a bearer token.
    #[serde(default)]
    pub bearer_allowed_app_ids: Vec<String>,
    /// Tenant of the bearer tokens (domain or id); default `bot.tenant_id`.
    #[serde(default)]
    pub bearer_tenant: Option<String>,
    /// Largest accepted body, in bytes.
    #[serde(default = "default_push_body")]
    pub max_body_bytes: usize,
}

/// `[notifications.sources.service_health]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHealthSettings {
    /// Poll Graph service health issues.
    #[serde(default)]
    pub poll: bool,
    /// Seconds between polls.
    #[serde(default = "default_health_interval")]
    pub interval_secs: u64,
    /// The first poll reads issues changed this many seconds back.
    #[serde(default = "default_health_look_back")]
    pub look_back_secs: u64,
    /// Mirror issues into ServiceNow incidents (create, a work note per post, resolve).
    #[serde(default)]
    pub mirror: bool,
    /// Table of mirrored incidents.
    #[serde(default = "default_table")]
    pub mirror_table: String,
    /// Column that holds the issue id, to find the incident again.
    #[serde(default = "default_case_field")]
    pub mirror_correlation_field: String,
    /// `category` of created incidents.
    #[serde(default)]
    pub mirror_category: Option<String>,
    /// `assignment_group` (sys_id) of created incidents.
    #[serde(default)]
    pub mirror_assignment_group: Option<String>,
    /// Resolve the incident when the issue is resolved.
    #[serde(default = "default_true")]
    pub mirror_resolve: bool,
    /// `state` value set on resolution.
    #[serde(default = "default_resolved_state")]
    pub mirror_resolved_state: String,
    /// `close_code` set on resolution.
    #[serde(default = "default_close_code")]
    pub mirror_close_code: String,
}

fn default_sn_interval() -> u64 {
    60
}
fn default_look_back() -> u64 {
    3600
}
fn default_overlap() -> u64 {
    60
}
fn default_batch() -> usize {
    200
}
fn default_table() -> String {
    "incident".to_owned()
}
fn default_case_field() -> String {
    "correlation_id".to_owned()
}
fn default_number_field() -> String {
    "number".to_owned()
}
fn default_title_field() -> String {
    "short_description".to_owned()
}
fn default_state_field() -> String {
    "state".to_owned()
}
fn default_priority_field() -> String {
    "priority".to_owned()
}
fn default_service_field() -> String {
    "category".to_owned()
}
fn default_group_field() -> String {
    "assignment_group".to_owned()
}
fn default_resolved_states() -> Vec<String> {
    ["6", "7", "8"].into_iter().map(str::to_owned).collect()
}
fn default_note_elements() -> Vec<String> {
    ["comments", "work_notes"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}
fn default_window() -> u64 {
    300
}
fn default_push_body() -> usize {
    64 * 1024
}
fn default_health_interval() -> u64 {
    300
}
fn default_health_look_back() -> u64 {
    7 * 24 * 3600
}
fn default_true() -> bool {
    true
}
fn default_resolved_state() -> String {
    "6".to_owned()
}
fn default_close_code() -> String {
    "Closed/Resolved by Caller".to_owned()
}

impl Default for ServiceNowSourceSettings {
    fn default() -> Self {
        Self {
            poll: false,
            interval_secs: default_sn_interval(),
            look_back_secs: default_look_back(),
            batch_size: default_batch(),
            overlap_secs: default_overlap(),
            table: default_table(),
            case_reference_field: default_case_field(),
            filter: None,
            number_field: default_number_field(),
            title_field: default_title_field(),
            state_field: default_state_field(),
            priority_field: default_priority_field(),
            service_field: default_service_field(),
            assignment_group_field: default_group_field(),
            resolved_states: default_resolved_states(),
            note_elements: default_note_elements(),
        }
    }
}

impl ServiceNowSourceSettings {
    /// The encoded query selecting cases.
    pub fn filter(&self) -> String {
        self.filter
            .clone()
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| format!("{}ISNOTEMPTY", self.case_reference_field))
    }

    /// The columns read from each record (push payload and poll).
    pub fn fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = Vec::new();
        for field in [
            "sys_id",
            "sys_mod_count",
            "sys_updated_on",
            "active",
            self.number_field.as_str(),
            self.title_field.as_str(),
            self.state_field.as_str(),
            self.priority_field.as_str(),
            self.service_field.as_str(),
            self.assignment_group_field.as_str(),
            self.case_reference_field.as_str(),
        ] {
            if !field.is_empty() && !fields.iter().any(|known| known == field) {
                fields.push(field.to_owned());
            }
        }
        fields
    }
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            hmac_secret: None,
            window_secs: default_window(),
            bearer_audiences: Vec::new(),
            bearer_allowed_app_ids: Vec::new(),
            bearer_tenant: None,
            max_body_bytes: default_push_body(),
        }
    }
}

impl Default for ServiceHealthSettings {
    fn default() -> Self {
        Self {
            poll: false,
            interval_secs: default_health_interval(),
            look_back_secs: default_health_look_back(),
            mirror: false,
            mirror_table: default_table(),
            mirror_correlation_field: default_case_field(),
            mirror_category: None,
            mirror_assignment_group: None,
            mirror_resolve: true,
            mirror_resolved_state: default_resolved_state(),
            mirror_close_code: default_close_code(),
        }
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is not configured (no ServiceNow account, no Graph credentials, a bad key).
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// ServiceNow failed.
    #[error(transparent)]
    ServiceNow(#[from] ServiceNowError),
    /// Graph failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl SourceError {
    /// How the poll loop retries.
    pub fn retry_kind(&self) -> RetryKind {
        match self {
            Self::NotConfigured(_) => RetryKind::Permanent,
            Self::ServiceNow(err) => err.retry_kind(),
            Self::Graph(err) => err.retry_kind(),
            Self::Db(_) => RetryKind::Transient { retry_after: None },
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Records or issues read.
    pub fetched: usize,
    /// Events recorded as new.
    pub recorded: usize,
    /// Events the outbox already had (push came first, or an overlap).
    pub duplicates: usize,
    /// Rows at or before the watermark, skipped.
    pub skipped: usize,
    /// Updates older than the latest known revision of their case, dropped.
    pub stale: usize,
    /// Outbox rows written.
    pub deliveries: usize,
    /// Incidents created by mirroring.
    pub mirrored_created: usize,
    /// Work notes added by mirroring.
    pub mirrored_notes: usize,
    /// Incidents resolved by mirroring.
    pub mirrored_resolved: usize,
    /// The watermark after the poll.
    pub watermark: Option<String>,
}

/// What handing one event to the outbox did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Recorded (new or duplicate, as the outbox says).
    Recorded(RecordOutcome),
    /// Older than the latest known revision of the case: dropped.
    Stale,
}

/// Hands `event` (whose revision sorts as `order`) to the outbox, filling `previous_state`
/// from the last known state of the case, and remembers the case's latest revision. An update
/// older than the known one is dropped (async Business Rules can arrive out of order).
pub async fn accept_event(
    app: &App,
    mut event: CaseEvent,
    order: i64,
) -> Result<Accepted, sqlx::Error> {
    let known = store::case_state(&app.db, &event.case_key).await?;
    if let Some(known) = &known {
        if order < known.revision_order {
            return Ok(Accepted::Stale);
        }
        event.previous_state = if order == known.revision_order {
            known.previous_state.clone()
        } else {
            Some(known.state.clone())
        };
    }
    let outcome = crate::notify::outbox::record_event(&app.db, &event).await?;
    store::remember_case(
        &app.db,
        &event.case_key,
        &event.revision,
        order,
        &event.state,
        event.previous_state.as_deref(),
    )
    .await?;
    Ok(Accepted::Recorded(outcome))
}

/// Hands a poller's page of events (each with the sort order of its revision) to the outbox
/// as [`accept_event`] does for each in turn, and stores the poller's position after the page
/// (`mark` of `source`), all in one transaction: the page is recorded with its position, or
/// not at all. Retried a few times when PostgreSQL reports a deadlock.
pub async fn accept_page(
    app: &App,
    events: &[(CaseEvent, i64)],
    source: &str,
    mark: &store::Watermark,
) -> Result<Vec<Accepted>, sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match accept_page_once(app, events, source, mark).await {
            Err(err)
                if attempt < ACCEPT_ATTEMPTS
                    && crate::notify::outbox::is_retryable_conflict(&err) =>
            {
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

/// Attempts at a page's transaction that PostgreSQL aborted for a deadlock.
const ACCEPT_ATTEMPTS: u64 = 4;

async fn accept_page_once(
    app: &App,
    events: &[(CaseEvent, i64)],
    source: &str,
    mark: &store::Watermark,
) -> Result<Vec<Accepted>, sqlx::Error> {
    let db = &app.db;
    let mut tx = db.pool.begin().await?;
    // The watermark is written first: it takes the write lock (SQLite) before anything is read.
    store::set_watermark_in(&mut tx, source, mark).await?;
    let keys: Vec<&str> = events.iter().map(|(e, _)| e.case_key.as_str()).collect();
    let mut known = store::case_states_in(&mut tx, &keys).await?;
    let mut accepted = Vec::with_capacity(events.len());
    let mut deliveries = 0;
    for (event, order) in events {
        let mut event = event.clone();
        if let Some(state) = known.get(&event.case_key) {
            if *order < state.revision_order {
                accepted.push(Accepted::Stale);
                continue;
            }
            event.previous_state = if *order == state.revision_order {
                state.previous_state.clone()
            } else {
                Some(state.state.clone())
            };
        }
        let outcome = crate::notify::outbox::record_in(&mut tx, db.backend, &event).await?;
        deliveries += outcome.deliveries;
        store::remember_case_in(
            &mut tx,
            &event.case_key,
            &event.revision,
            *order,
            &event.state,
            event.previous_state.as_deref(),
        )
        .await?;
        known.insert(
            event.case_key.clone(),
            store::CaseState {
                revision: event.revision.clone(),
                revision_order: *order,
                state: event.state.clone(),
                previous_state: event.previous_state.clone(),
            },
        );
        accepted.push(Accepted::Recorded(outcome));
    }
    tx.commit().await?;
    if deliveries > 0 {
        db.outbox_ready.notify_waiters();
    }
    Ok(accepted)
}

/// True when `record` is an incident the bot created as a service-health mirror (by its
/// sys_id, or by its correlation value while the incident is being created).
pub async fn is_mirror_record(
    app: &App,
    record: &crate::upstream::servicenow::Record,
) -> Result<bool, sqlx::Error> {
    let health = &app.settings.notifications.sources.service_health;
    if health.mirror_table != app.settings.notifications.sources.servicenow.table {
        return Ok(false);
    }
    if let Some(sys_id) = record.sys_id()
        && store::is_mirror_incident(&app.db, sys_id).await?
    {
        return Ok(true);
    }
    match record.non_empty(&health.mirror_correlation_field) {
        Some(value) => store::is_mirror_reference(&app.db, value.trim()).await,
        None => Ok(false),
    }
}

impl PollReport {
    fn count(&mut self, accepted: Accepted) {
        match accepted {
            Accepted::Recorded(outcome) if outcome.new => {
                self.recorded += 1;
                self.deliveries += outcome.deliveries;
            }
            Accepted::Recorded(_) => self.duplicates += 1,
            Accepted::Stale => self.stale += 1,
        }
    }
}

/// The push endpoint's routes.
pub fn routes() -> Router<Arc<App>> {
    push::routes()
}

/// Polls the ServiceNow case table once (see [`servicenow::poll_once`]).
pub async fn poll_servicenow_once(app: &App) -> Result<PollReport, SourceError> {
    servicenow::poll_once(app).await
}

/// Polls Graph service health once, mirroring when configured (see [`health::poll_once`]).
pub async fn poll_service_health_once(app: &App) -> Result<PollReport, SourceError> {
    health::poll_once(app).await
}

/// Starts the pollers that are enabled; they stop with `shutdown`.
pub fn start(app: Arc<App>, shutdown: CancellationToken) {
    let sources = &app.settings.notifications.sources;
    let short_secret = sources
        .push
        .hmac_secret
        .as_ref()
        .is_some_and(|secret| secret.expose_secret().len() < 16);
    if short_secret {
        tracing::warn!(
            "notifications.sources.push.hmac_secret is shorter than 16 characters; use a long random secret"
        );
    }
    if sources.servicenow.poll {
        let interval = Duration::from_secs(sources.servicenow.interval_secs.max(1));
        let poller = app.clone();
        tokio::spawn(run_loop(
            app.clone(),
            "servicenow",
            interval,
            shutdown.clone(),
            move || {
                let app = poller.clone();
                async move { servicenow::poll_once(&app).await }
            },
        ));
    }
    if sources.service_health.poll {
        let interval = Duration::from_secs(sources.service_health.interval_secs.max(1));
        let poller = app.clone();
        tokio::spawn(run_loop(
            app,
            "service_health",
            interval,
            shutdown,
            move || {
                let app = poller.clone();
                async move { health::poll_once(&app).await }
            },
        ));
    }
}

/// Longest wait between failed polls.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// The wait after the `failures`th failure in a row of kind `kind`.
pub fn backoff(interval: Duration, failures: u32, kind: RetryKind) -> Duration {
    let exponential = interval
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF);
    match kind {
        RetryKind::Transient {
            retry_after: Some(asked),
        } => asked.max(interval).min(MAX_BACKOFF.max(asked)),
        RetryKind::Transient { retry_after: None } | RetryKind::Network => exponential,
        RetryKind::Permanent => exponential.max(Duration::from_secs(300).min(MAX_BACKOFF)),
    }
}

/// Polls `name` every `interval` (backing off after failures) while this instance leads it
/// (see [`leader`]).
async fn run_loop<F, Fut>(
    app: Arc<App>,
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    poll: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<PollReport, SourceError>> + Send,
{
    let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let db = app.db.clone();
    let metrics = app.metrics.clone();
    drop(app);
    leader::run_led(db, metrics.clone(), name, interval, shutdown, move || {
        let outcome = poll();
        let failures = failures.clone();
        let metrics = metrics.clone();
        async move {
            use std::sync::atomic::Ordering;
            let result = outcome.await;
            metrics.record_poll(name, result.is_ok());
            match result {
                Ok(report) => {
                    failures.store(0, Ordering::Relaxed);
                    if report.recorded > 0 || report.stale > 0 {
                        tracing::info!(
                            source = name,
                            fetched = report.fetched,
                            recorded = report.recorded,
                            duplicates = report.duplicates,
                            stale = report.stale,
                            "notification source polled"
                        );
                    } else {
                        tracing::debug!(
                            source = name,
                            fetched = report.fetched,
                            "notification source polled"
                        );
                    }
                    interval
                }
                Err(err) => {
                    let failed = failures.load(Ordering::Relaxed).saturating_add(1);
                    failures.store(failed, Ordering::Relaxed);
                    let kind = err.retry_kind();
                    let wait = backoff(interval, failed, kind);
                    tracing::warn!(
                        source = name,
                        error = %err,
                        retry = ?kind,
                        failures = failed,
                        retry_in_secs = wait.as_secs(),
                        "notification source poll failed; retrying"
                    );
                    wait
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let base = Duration::from_secs(10);
        assert_eq!(
            backoff(base, 1, RetryKind::Network),
            Duration::from_secs(20)
        );
        assert_eq!(
            backoff(base, 3, RetryKind::Network),
            Duration::from_secs(80)
        );
        assert_eq!(backoff(base, 40, RetryKind::Network), MAX_BACKOFF);
        assert_eq!(
            backoff(
                base,
                1,
                RetryKind::Transient {
                    retry_after: Some(Duration::from_secs(120))
                }
            ),
            Duration::from_secs(120)
        );
        assert!(backoff(base, 1, RetryKind::Permanent) >= Duration::from_secs(300));
    }

    #[test]
    fn default_filter_names_the_case_field() {
        let settings = ServiceNowSourceSettings::default();
        assert_eq!(settings.filter(), "correlation_idISNOTEMPTY");
        let fields = settings.fields();
        assert!(fields.contains(&"sys_mod_count".to_owned()));
        assert!(fields.contains(&"correlation_id".to_owned()));
    }
}
