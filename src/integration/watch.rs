//! Watching the trust: `doctor` on a schedule (exactly one replica per run, claimed through the
//! database), the expiry of the three apps' client secrets from Graph, one alert card per
//! change of state (a new failure, a recovery, a secret expiring soon) to the admin who
//! completed setup and to the admin channel, and the trust metrics.
//!
//! Tables (migration `0007_trust_watch`):
//! - `trust_schedule`: one row per schedule; a replica runs the doctor only when its
//!   `UPDATE … SET next_run_at = … WHERE next_run_at <= now` changed the row (no leader).
//! - `trust_subjects`: one row per watched subject (a doctor check id, `secret.<app>`,
//!   `runtime.<path>`): the state seen last and the state last alerted. An alert is raised by
//!   the `UPDATE … SET alerted = new WHERE alerted = old` that changes the row, so a restart or
//!   a second replica never raises it twice.
//! - `trust_alerts`: the alert outbox, written in the same transaction; rows stay `pending`
//!   until the connector accepted them (retried with backoff), `dead` after a permanent refusal.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::doctor::{CheckOutcome, Status};
use super::{IntegrationSpec, Upstreams};
use crate::app::App;
use crate::db::{Db, now_millis};
use crate::metrics::TrustGauges;

/// The `[watch]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSettings {
    /// Seconds between two scheduled doctor runs (over all replicas together).
    #[serde(default = "default_doctor_interval_secs")]
    pub doctor_interval_secs: u64,
    /// Conversation id of the Teams channel that receives the alerts too (e.g.
    /// `19:…@thread.tacv2`); the bot must be installed in its team.
    #[serde(default)]
    pub admin_channel: Option<String>,
    /// A client secret expiring within this many days raises a warning.
    #[serde(default = "default_expiry_warning_days")]
    pub expiry_warning_days: u32,
}

fn default_doctor_interval_secs() -> u64 {
    6 * 60 * 60
}
fn default_expiry_warning_days() -> u32 {
    30
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            doctor_interval_secs: default_doctor_interval_secs(),
            admin_channel: None,
            expiry_warning_days: default_expiry_warning_days(),
        }
    }
}

impl WatchSettings {
    /// Start-up validation: the key at fault and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.doctor_interval_secs == 0 {
            return Err((
                "watch.doctor_interval_secs",
                "must be at least 1 (seconds between two scheduled doctor runs)".to_owned(),
            ));
        }
        if self
            .admin_channel
            .as_deref()
            .is_some_and(|channel| channel.trim().is_empty() || channel.len() > 400)
        {
            return Err((
                "watch.admin_channel",
                "must be a Teams conversation id such as 19:…@thread.tacv2 (or be left out)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    fn interval_millis(&self) -> i64 {
        i64::try_from(self.doctor_interval_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
    }
}

/// The state of a watched subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectState {
    /// Verified.
    Ok,
    /// Verified wrong, or expired.
    Failing,
    /// A client secret that expires within the warning period.
    Expiring,
}

impl SubjectState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failing => "failing",
            Self::Expiring => "expiring",
        }
    }
}

/// What one run (or the runtime path) found about one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// A doctor check id, `secret.outbound|inbound|rest_user` or `runtime.<path>`.
    pub subject: String,
    /// The state now.
    pub state: SubjectState,
    /// What is watched.
    pub title: String,
    /// What was found.
    pub detail: String,
    /// What to do, for a failure or an expiring secret.
    pub fix: Option<String>,
    /// For a secret: when it expires (unix ms).
    pub expires_at: Option<i64>,
}

/// A change of state that raises an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The observation that changed the state.
    pub observation: Observation,
    /// The state alerted before (`ok`, `failing`, `expiring`).
    pub from: String,
}

impl Transition {
    fn is_recovery(&self) -> bool {
        self.observation.state == SubjectState::Ok
    }
}

/// The subjects of a doctor run: a failed check fails, a passed one is ok; skipped checks
/// (not configured, or blocked by another failure) say nothing and keep their state.
pub fn observations_from_doctor(outcomes: &[CheckOutcome]) -> Vec<Observation> {
    outcomes
        .iter()
        .filter_map(|outcome| {
            let state = match outcome.status {
                Status::Pass => SubjectState::Ok,
                Status::Fail => SubjectState::Failing,
                Status::Skip => return None,
            };
            Some(Observation {
                subject: outcome.id.to_owned(),
                state,
                title: outcome.title.clone(),
                detail: outcome.detail.clone(),
                fix: outcome.fix.clone().filter(|_| state != SubjectState::Ok),
                expires_at: None,
            })
        })
        .collect()
}

/// Which of the integration's apps, with its subject name and label.
const SECRET_APPS: [(&str, &str); 3] = [
    ("outbound", "Outbound app"),
    ("inbound", "Inbound REST API app"),
    ("rest_user", "REST-user app"),
];

/// The expiry of the client secret each app uses, from Graph (`passwordCredentials[]
/// .endDateTime`). The secret in use is the one whose `hint` (its first three characters)
/// matches the stored secret; when none matches, the latest-expiring one counts. Apps Graph
/// cannot read give no observation (the registration checks report that).
pub async fn secret_expiry(
    upstreams: &Upstreams,
    spec: &IntegrationSpec,
    now: DateTime<Utc>,
    warning_days: u32,
) -> Vec<Observation> {
    let Some(graph) = &upstreams.graph else {
        return Vec::new();
    };
    let apps = [
        Some(&spec.outbound_app),
        spec.inbound_app.as_ref(),
        spec.rest_user_app.as_ref(),
    ];
    let mut observations = Vec::new();
    for ((name, label), credentials) in SECRET_APPS.iter().zip(apps) {
        let Some(credentials) = credentials.filter(|c| !c.client_id.is_empty()) else {
            continue;
        };
        let application = match graph
            .find_application_by_app_id(&credentials.client_id)
            .await
        {
            Ok(Some(application)) => application,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(app = name, error = %err, "watch: Graph did not tell the secret's expiry");
                continue;
            }
        };
        let secret = secrecy::ExposeSecret::expose_secret(&credentials.client_secret);
        let Some(end) = expiry_in_use(&application.password_credentials, secret) else {
            continue;
        };
        let subject = format!("secret.{name}");
        let title = format!("{label} client secret");
        let days = (end - now).num_seconds() as f64 / 86_400.0;
        let date = end.format("%Y-%m-%d");
        let rotate = format!(
            "Type **rotate-secret {}** (or run `m365bot rotate-secret {}`): the bot adds a new secret, puts it where it is used, verifies it and removes the old one.",
            name.replace('_', "-"),
            name.replace('_', "-")
        );
        let (state, detail) = if end <= now {
            (SubjectState::Failing, format!("expired on {date}"))
        } else if days <= f64::from(warning_days) {
            (
                SubjectState::Expiring,
                format!("expires on {date}, in {} day(s)", days.floor() as i64),
            )
        } else {
            (
                SubjectState::Ok,
                format!("valid until {date} ({} days)", days.floor() as i64),
            )
        };
        observations.push(Observation {
            subject,
            state,
            title,
            detail,
            fix: (state != SubjectState::Ok).then_some(rotate),
            expires_at: Some(end.timestamp_millis()),
        });
    }
    observations
}

/// When the secret in use expires: among the app's secrets whose `hint` starts the stored
/// secret (else all of them), the latest end date.
fn expiry_in_use(
    credentials: &[crate::upstream::graph::PasswordCredentialInfo],
    secret: &str,
) -> Option<DateTime<Utc>> {
    let in_use: Vec<_> = credentials
        .iter()
        .filter(|c| {
            c.hint
                .as_deref()
                .is_some_and(|hint| !hint.is_empty() && secret.starts_with(hint))
        })
        .collect();
    let candidates = if in_use.is_empty() {
        credentials.iter().collect()
    } else {
        in_use
    };
    candidates.iter().filter_map(|c| c.end_date_time).max()
}

/// Where alerts go: a conversation, and its serviceUrl when known from setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Conversation id.
    pub conversation_id: String,
    /// Its serviceUrl, when known; otherwise read from the stored conversation reference.
    pub service_url: Option<String>,
}

/// The admin who completed setup (in their 1:1 chat with the bot, else the wizard's) and
/// the configured admin channel.
pub async fn recipients(app: &App) -> Vec<Recipient> {
    use crate::setup::store;
    let mut out = Vec::new();
    let completed = store::latest_completed(&app.db).await.ok().flatten();
    let setup_service_url = completed.as_ref().and_then(|row| row.service_url.clone());
    if let Some(row) = &completed {
        let completer = match store::completed_by(&app.db, &row.setup_id).await {
            Ok(Some(user_id)) => store::personal_conversation_of(&app.db, &user_id)
                .await
                .ok()
                .flatten(),
            _ => None,
        };
        let admin = match completer {
            Some((conversation_id, service_url)) => Some(Recipient {
                conversation_id,
                service_url: Some(service_url),
            }),
            None => row
                .conversation_id
                .clone()
                .map(|conversation_id| Recipient {
                    conversation_id,
                    service_url: row.service_url.clone(),
                }),
        };
        out.extend(admin);
    }
    if let Some(channel) = &app.settings.watch.admin_channel
        && !out.iter().any(|r| &r.conversation_id == channel)
    {
        out.push(Recipient {
            conversation_id: channel.clone(),
            service_url: setup_service_url,
        });
    }
    out
}

/// Records the observations and, for every subject whose alerted state this call changed,
/// one alert card per recipient, in one transaction. Returns the transitions.
pub async fn record(
    db: &Db,
    observations: &[Observation],
    recipients: &[Recipient],
    context: &AlertContext,
) -> Result<Vec<Transition>, sqlx::Error> {
    let now = now_millis();
    let mut tx = db.pool.begin().await?;
    let mut transitions = Vec::new();
    for observation in observations {
        let state = observation.state.as_str();
        sqlx::query(
            "INSERT INTO trust_subjects (subject, state, alerted, title, detail, fix, expires_at, updated_at) \
             VALUES ($1, $2, 'ok', $3, $4, $5, $6, $7) ON CONFLICT (subject) DO NOTHING",
        )
        .bind(&observation.subject)
        .bind(state)
        .bind(&observation.title)
        .bind(&observation.detail)
        .bind(&observation.fix)
        .bind(observation.expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let alerted: String =
            sqlx::query_scalar("SELECT alerted FROM trust_subjects WHERE subject = $1")
                .bind(&observation.subject)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "UPDATE trust_subjects SET state = $1, title = $2, detail = $3, fix = $4, \
             expires_at = $5, updated_at = $6 WHERE subject = $7",
        )
        .bind(state)
        .bind(&observation.title)
        .bind(&observation.detail)
        .bind(&observation.fix)
        .bind(observation.expires_at)
        .bind(now)
        .bind(&observation.subject)
        .execute(&mut *tx)
        .await?;
        if alerted == state {
            continue;
        }
        let changed = sqlx::query(
            "UPDATE trust_subjects SET alerted = $1 WHERE subject = $2 AND alerted = $3",
        )
        .bind(state)
        .bind(&observation.subject)
        .bind(&alerted)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 1 {
            transitions.push(Transition {
                observation: observation.clone(),
                from: alerted,
            });
        }
    }
    if !transitions.is_empty() {
        let model = alert_model(&transitions, context).to_string();
        for recipient in recipients {
            sqlx::query(
                "INSERT INTO trust_alerts (id, conversation_id, service_url, model, status, attempts, \
                 next_attempt_at, created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)",
            )
            .bind(crate::setup::store::new_id())
            .bind(&recipient.conversation_id)
            .bind(&recipient.service_url)
            .bind(&model)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(transitions)
}

/// What an alert card says besides the transitions.
#[derive(Debug, Clone, Default)]
pub struct AlertContext {
    /// What found it: `the scheduled doctor` or `a runtime call`.
    pub source: String,
    /// When the next scheduled check runs, if known.
    pub next_run: Option<DateTime<Utc>>,
}

/// The view model of `teams/trust_alert` for one run's transitions.
pub fn alert_model(transitions: &[Transition], context: &AlertContext) -> Value {
    let failures = transitions
        .iter()
        .filter(|t| t.observation.state == SubjectState::Failing)
        .count();
    let expiring = transitions
        .iter()
        .filter(|t| t.observation.state == SubjectState::Expiring)
        .count();
    let recoveries = transitions.iter().filter(|t| t.is_recovery()).count();
    let (tone, title) = if failures > 0 {
        (
            "attention",
            if failures == 1 {
                "The integration has a new problem".to_owned()
            } else {
                format!("The integration has {failures} new problems")
            },
        )
    } else if expiring > 0 {
        ("warning", "A client secret expires soon".to_owned())
    } else {
        ("good", "The integration recovered".to_owned())
    };
    let mut items: Vec<&Transition> = transitions.iter().collect();
    // Failures first, then expiring secrets, then recoveries.
    items.sort_by_key(|t| match t.observation.state {
        SubjectState::Failing => 0,
        SubjectState::Expiring => 1,
        SubjectState::Ok => 2,
    });
    let items: Vec<Value> = items
        .into_iter()
        .map(|t| {
            let o = &t.observation;
            let (tone, what) = match o.state {
                SubjectState::Failing => ("attention", "failing"),
                SubjectState::Expiring => ("warning", "expiring"),
                SubjectState::Ok if t.from == "expiring" => ("good", "renewed"),
                SubjectState::Ok => ("good", "recovered"),
            };
            json!({
                "tone": tone,
                "title": format!("{} ({what})", o.title),
                "detail": o.detail,
                "fix": o.fix,
            })
        })
        .collect();
    let mut summary = Vec::new();
    if failures > 0 {
        summary.push(format!("{failures} new failure(s)"));
    }
    if expiring > 0 {
        summary.push(format!("{expiring} secret(s) expiring"));
    }
    if recoveries > 0 {
        summary.push(format!("{recoveries} recovered"));
    }
    let next = match context.next_run {
        Some(at) => format!(
            " The next scheduled check runs at {} UTC.",
            at.format("%Y-%m-%d %H:%M")
        ),
        None => String::new(),
    };
    json!({
        "tone": tone,
        "title": title,
        "intro": format!(
            "Found by {}: {}. You hear from me again only when this changes.{next}",
            if context.source.is_empty() { "the scheduled doctor" } else { &context.source },
            summary.join(", ")
        ),
        "items": items,
        "next_step": if failures > 0 || expiring > 0 {
            Value::String("Type **doctor** for the full report, or **setup status** for what drifted.".to_owned())
        } else {
            Value::Null
        },
    })
}

/// Alert rows one pass delivers at most.
const DELIVERY_BATCH: i64 = 20;
/// Attempts before an alert becomes a dead letter.
const MAX_ATTEMPTS: i64 = 10;
/// How long a claimed alert is left to its sender before another may retry it.
const DELIVERY_LEASE_MS: i64 = 60_000;

/// Sends the alerts that are due; returns how many were delivered.
pub async fn deliver_due(app: &App) -> Result<usize, sqlx::Error> {
    let now = now_millis();
    let rows = sqlx::query(
        "SELECT id, conversation_id, service_url, model, attempts FROM trust_alerts \
         WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY created_at LIMIT $2",
    )
    .bind(now)
    .bind(DELIVERY_BATCH)
    .fetch_all(&app.db.pool)
    .await?;
    let mut delivered = 0;
    for row in rows {
        let id: String = row.try_get(0)?;
        let conversation_id: String = row.try_get(1)?;
        let service_url: Option<String> = row.try_get(2)?;
        let model: String = row.try_get(3)?;
        let attempts: i64 = row.try_get(4)?;
        let claimed = sqlx::query(
            "UPDATE trust_alerts SET attempts = attempts + 1, next_attempt_at = $1 \
             WHERE id = $2 AND status = 'pending' AND next_attempt_at <= $3",
        )
        .bind(now + DELIVERY_LEASE_MS)
        .bind(&id)
        .bind(now)
        .execute(&app.db.pool)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        match send_alert(app, &conversation_id, service_url.as_deref(), model).await {
            Ok(()) => {
                sqlx::query("UPDATE trust_alerts SET status = 'sent', sent_at = $1, last_error = NULL WHERE id = $2")
                    .bind(now_millis())
                    .bind(&id)
                    .execute(&app.db.pool)
                    .await?;
                delivered += 1;
            }
            Err((permanent, error)) => {
                let attempts = attempts + 1;
                let dead = permanent || attempts >= MAX_ATTEMPTS;
                tracing::warn!(conversation = %conversation_id, error = %error, dead, "watch: alert not delivered");
                let backoff = 5_000_i64.saturating_mul(1 << attempts.clamp(0, 7));
                sqlx::query(
                    "UPDATE trust_alerts SET status = $1, last_error = $2, next_attempt_at = $3 WHERE id = $4",
                )
                .bind(if dead { "dead" } else { "pending" })
                .bind(&error)
                .bind(now_millis() + backoff)
                .bind(&id)
                .execute(&app.db.pool)
                .await?;
            }
        }
    }
    Ok(delivered)
}

/// Sends one alert card; the error says whether retrying is pointless.
async fn send_alert(
    app: &App,
    conversation_id: &str,
    service_url: Option<&str>,
    model: String,
) -> Result<(), (bool, String)> {
    let reference = app
        .db
        .conversation(conversation_id)
        .await
        .map_err(|e| (false, e.to_string()))?;
    let service_url = reference
        .as_ref()
        .map(|r| r.service_url.clone())
        .or_else(|| service_url.map(str::to_owned))
        .ok_or_else(|| {
            (
                false,
                "the bot has no conversation reference for it yet (install the bot in that team or chat)"
                    .to_owned(),
            )
        })?;
    let model: Value = serde_json::from_str(&model).map_err(|e| (true, e.to_string()))?;
    let title = model["title"]
        .as_str()
        .unwrap_or("m365bot alert")
        .to_owned();
    let card = app
        .cards
        .render_raw("teams/trust_alert", model)
        .map_err(|e| (true, e.to_string()))?;
    let mut activity = json!({
        "type": "message",
        "summary": title,
        "attachments": [{"contentType": crate::teams::ADAPTIVE_CARD, "content": card}],
    });
    if let Some(reference) = &reference {
        activity["from"] = json!({"id": reference.bot_id});
    }
    app.connector
        .send(&service_url, conversation_id, &activity)
        .await
        .map(drop)
        .map_err(|err| {
            let permanent = matches!(err.retry_kind(), crate::error::RetryKind::Permanent);
            (permanent, err.to_string())
        })
}

/// The name of the doctor's schedule row.
const DOCTOR_SCHEDULE: &str = "doctor";

/// The first scheduled run after the very first start comes at most this long after it.
const FIRST_RUN_DELAY_MS: i64 = 5 * 60 * 1000;

/// Claims the next scheduled doctor run for `owner` when it is due; true when this caller
/// must run it. Works alike on SQLite and PostgreSQL: the conditional `UPDATE` changes the row
/// for exactly one caller. The schedule is created on first use, due one interval (at most
/// five minutes) later.
pub async fn claim_run(
    db: &Db,
    owner: &str,
    interval_ms: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO trust_schedule (name, next_run_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(DOCTOR_SCHEDULE)
    .bind(now.saturating_add(interval_ms.min(FIRST_RUN_DELAY_MS)))
    .execute(&db.pool)
    .await?;
    let claimed = sqlx::query(
        "UPDATE trust_schedule SET next_run_at = $1, last_run_at = $2, claimed_by = $3 \
         WHERE name = $4 AND next_run_at <= $2",
    )
    .bind(now.saturating_add(interval_ms))
    .bind(now)
    .bind(owner)
    .bind(DOCTOR_SCHEDULE)
    .execute(&db.pool)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// What one scheduled run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Subjects observed.
    pub observed: usize,
    /// State changes (each raises one card per recipient).
    pub transitions: Vec<Transition>,
}

/// Runs the doctor (no repair) and the secret expiry for the stored integration and records
/// what changed. `Ok(None)` when there is no integration to watch.
pub async fn run_doctor(app: &App) -> Result<Option<RunSummary>, String> {
    let Some(spec) = crate::setup::flow::stored_integration(app).await? else {
        return Ok(None);
    };
    let upstreams = crate::setup::effects::upstreams_for(app, &spec.tenant);
    let outcomes = super::doctor::run(&upstreams, &spec, false).await;
    let mut observations = observations_from_doctor(&outcomes);
    observations.extend(runtime_recovered(app, &spec, &outcomes));
    observations.extend(
        secret_expiry(
            &upstreams,
            &spec,
            Utc::now(),
            app.settings.watch.expiry_warning_days,
        )
        .await,
    );
    let recipients = recipients(app).await;
    let context = AlertContext {
        source: "the scheduled doctor".to_owned(),
        next_run: Utc
            .timestamp_millis_opt(now_millis() + app.settings.watch.interval_millis())
            .single(),
    };
    let transitions = record(&app.db, &observations, &recipients, &context)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(RunSummary {
        observed: observations.len(),
        transitions,
    }))
}

/// The subject of the runtime path (the integration user's calls to ServiceNow).
pub const RUNTIME_SUBJECT: &str = "runtime.servicenow";
const RUNTIME_TITLE: &str = "Runtime calls to ServiceNow as the integration user";

/// The doctor checks that prove the runtime chain works, by authentication type.
fn runtime_chain_checks(auth: super::AuthType) -> &'static [&'static str] {
    match auth {
        super::AuthType::Aad => &[
            "tenant",
            "rest_user_app.token",
            "servicenow.reachable",
            "servicenow.inbound_flow",
        ],
        super::AuthType::Basic => &["servicenow.reachable", "servicenow.basic_login"],
    }
}

/// The runtime path's failure as an observation, naming the likely broken step.
pub fn runtime_failure(failure: &super::runtime::RuntimeFailure) -> Observation {
    Observation {
        subject: RUNTIME_SUBJECT.to_owned(),
        state: SubjectState::Failing,
        title: RUNTIME_TITLE.to_owned(),
        detail: format!(
            "{} (likely broken: {}; at {} UTC)",
            failure.detail,
            failure.step,
            failure.at.format("%Y-%m-%d %H:%M:%S")
        ),
        fix: Some(failure.fix.clone()),
        expires_at: None,
    }
}

/// The runtime path recovered, when the checks of its chain passed (in `outcomes`) and this
/// replica's last runtime call was not refused.
fn runtime_recovered(
    app: &App,
    spec: &IntegrationSpec,
    outcomes: &[CheckOutcome],
) -> Option<Observation> {
    let needed = runtime_chain_checks(spec.auth_type);
    let proven = needed.iter().all(|id| {
        outcomes
            .iter()
            .any(|o| o.id == *id && o.status == Status::Pass)
    });
    (proven && app.runtime.last_failure().is_none()).then(|| Observation {
        subject: RUNTIME_SUBJECT.to_owned(),
        state: SubjectState::Ok,
        title: RUNTIME_TITLE.to_owned(),
        detail: "the integration user's chain was verified live (token, ServiceNow read)"
            .to_owned(),
        fix: None,
        expires_at: None,
    })
}

/// Follows the runtime path's failures: a new failure raises an alert at once; when the
/// failure clears (a call worked again, or the identity was reloaded) the chain is verified
/// live before a recovery is reported.
async fn follow_runtime(app: Arc<App>, shutdown: CancellationToken) {
    let mut changes = app.runtime.subscribe();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let current = changes.borrow_and_update().clone();
        match current {
            Some(failure) => report_runtime(&app, runtime_failure(&failure)).await,
            None => {
                if let Ok(Some(spec)) = crate::setup::flow::stored_integration(&app).await {
                    let upstreams = crate::setup::effects::upstreams_for(&app, &spec.tenant);
                    let checks = runtime_chain_checks(spec.auth_type);
                    let outcomes = super::doctor::run_only(&upstreams, &spec, checks, false).await;
                    if let Some(recovered) = runtime_recovered(&app, &spec, &outcomes) {
                        report_runtime(&app, recovered).await;
                    }
                }
            }
        }
    }
}

/// Reports what the runtime path saw (a refused call, or a chain verified again): raises
/// the same alert as the scheduled doctor when the state changes, and delivers it.
pub async fn report_runtime(app: &App, observation: Observation) {
    let recipients = recipients(app).await;
    let context = AlertContext {
        source: "a runtime call".to_owned(),
        next_run: None,
    };
    match record(
        &app.db,
        std::slice::from_ref(&observation),
        &recipients,
        &context,
    )
    .await
    {
        Ok(transitions) if !transitions.is_empty() => {
            if let Err(err) = deliver_due(app).await {
                tracing::warn!(error = %err, "watch: alert delivery failed");
            }
            refresh_metrics(app).await;
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "watch: runtime observation not recorded"),
    }
}

/// Reads the trust gauges from the database (whichever replica ran) into this replica's
/// metrics.
pub async fn refresh_metrics(app: &App) {
    match gauges(&app.db).await {
        Ok(gauges) => app.metrics.set_trust(gauges),
        Err(err) => tracing::warn!(error = %err, "watch: metrics not refreshed"),
    }
}

/// The trust gauges as stored.
pub async fn gauges(db: &Db) -> Result<TrustGauges, sqlx::Error> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_run_at FROM trust_schedule WHERE name = $1")
            .bind(DOCTOR_SCHEDULE)
            .fetch_optional(&db.pool)
            .await?
            .flatten();
    let failing: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM trust_subjects WHERE state = 'failing'")
            .fetch_one(&db.pool)
            .await?;
    let nearest: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(expires_at) FROM trust_subjects WHERE expires_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(TrustGauges {
        last_doctor_run: last.map(|ms| ms / 1000),
        failing_checks: failing,
        nearest_secret_expiry_days: nearest.map(|ms| (ms - now_millis()) as f64 / 86_400_000.0),
    })
}

/// One line on what the watch knows now, for `setup status`: when the scheduled doctor last
/// ran, what is failing or expiring, the nearest secret expiry. `None` before the first run.
pub async fn summary(db: &Db) -> Option<String> {
    let gauges = gauges(db).await.ok()?;
    let last = gauges.last_doctor_run?;
    let mut line = format!(
        "scheduled doctor last ran {} UTC",
        Utc.timestamp_opt(last, 0)
            .single()?
            .format("%Y-%m-%d %H:%M")
    );
    let problems = current_problems(db).await.ok()?;
    if problems.is_empty() {
        line.push_str("; nothing failing or expiring");
    } else {
        let listed: Vec<String> = problems
            .iter()
            .map(|(_, state, title, _)| format!("{title} ({state})"))
            .collect();
        line.push_str(&format!("; {}", listed.join(", ")));
    }
    if let Some(days) = gauges.nearest_secret_expiry_days {
        line.push_str(&format!(
            "; nearest client secret expiry in {} day(s)",
            days.floor() as i64
        ));
    }
    Some(line)
}

/// The subjects failing or expiring now: (subject, state, title, detail).
pub async fn current_problems(
    db: &Db,
) -> Result<Vec<(String, String, String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT subject, state, title, detail FROM trust_subjects WHERE state <> 'ok' ORDER BY subject",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .collect()
}

/// Runs the watch on this replica until `shutdown`: delivers due alerts, claims and runs the
/// scheduled doctor when it is due, and refreshes the trust metrics.
pub fn spawn(app: Arc<App>, shutdown: CancellationToken) {
    tokio::spawn(follow_runtime(app.clone(), shutdown.clone()));
    tokio::spawn(async move {
        let owner = crate::setup::store::new_id();
        let interval = app.settings.watch.doctor_interval_secs;
        let tick = Duration::from_secs(interval.clamp(1, 30));
        let mut loaded = stored_setup_stamp(&app.db).await;
        loop {
            // A setup changed by another replica or the command line (a rotated secret):
            // the runtime identity uses it from now on.
            let stamp = stored_setup_stamp(&app.db).await;
            if stamp != loaded {
                super::runtime::reload(&app).await;
                loaded = stamp;
            }
            tick_once(&app, &owner).await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(tick) => {}
            }
        }
    });
}

/// When the latest completed setup was last written (`None`: none, or unreadable).
async fn stored_setup_stamp(db: &Db) -> Option<(String, i64)> {
    crate::setup::store::latest_completed(db)
        .await
        .ok()
        .flatten()
        .map(|row| (row.setup_id, row.version))
}

async fn tick_once(app: &App, owner: &str) {
    let interval = app.settings.watch.interval_millis();
    match claim_run(&app.db, owner, interval, now_millis()).await {
        Ok(true) => match run_doctor(app).await {
            Ok(Some(summary)) => tracing::info!(
                observed = summary.observed,
                changes = summary.transitions.len(),
                "watch: scheduled doctor ran"
            ),
            Ok(None) => tracing::debug!("watch: no integration to watch yet"),
            Err(err) => tracing::warn!(error = %err, "watch: scheduled doctor failed"),
        },
        Ok(false) => {}
        Err(err) => tracing::warn!(error = %err, "watch: the schedule could not be read"),
    }
    if let Err(err) = deliver_due(app).await {
        tracing::warn!(error = %err, "watch: alert delivery failed");
    }
    refresh_metrics(app).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(subject: &str, state: SubjectState) -> Observation {
        Observation {
            subject: subject.to_owned(),
            state,
            title: format!("{subject} title"),
            detail: "detail".to_owned(),
            fix: None,
            expires_at: None,
        }
    }

    #[test]
    fn the_card_leads_with_the_worst_change() {
        let transitions = vec![
            Transition {
                observation: observation("a", SubjectState::Ok),
                from: "failing".to_owned(),
            },
            Transition {
                observation: observation("b", SubjectState::Failing),
                from: "ok".to_owned(),
            },
        ];
        let model = alert_model(&transitions, &AlertContext::default());
        assert_eq!(model["tone"], "attention");
        assert_eq!(model["items"][0]["title"], "b title (failing)");
        assert_eq!(model["items"][1]["title"], "a title (recovered)");
        let recovered = alert_model(&transitions[..1], &AlertContext::default());
        assert_eq!(recovered["tone"], "good");
        assert!(recovered["next_step"].is_null());
    }

    #[test]
    fn the_expiry_is_the_one_of_the_secret_in_use() {
        let credential = |hint: &str, days: i64| crate::upstream::graph::PasswordCredentialInfo {
            key_id: hint.to_owned(),
            display_name: None,
            end_date_time: Some(Utc::now() + chrono::Duration::days(days)),
            hint: Some(hint.to_owned()),
        };
        let credentials = [credential("abc", 20), credential("xyz", 400)];
        let in_use = expiry_in_use(&credentials, "abcdef-secret").expect("found");
        assert!((in_use - Utc::now()).num_days() < 21, "{in_use}");
        // An unknown secret: the latest-expiring one counts.
        let latest = expiry_in_use(&credentials, "zzz-unknown").expect("found");
        assert!((latest - Utc::now()).num_days() > 300, "{latest}");
        assert_eq!(expiry_in_use(&[], "abc"), None);
    }

    #[test]
    fn the_watch_section_is_read_and_checked_at_start_up() {
        const BASE: &str = "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\n[server]\nlisten = \"127.0.0.1:0\"\n";
        let defaults = crate::config::Settings::from_toml_str(BASE).expect("defaults");
        assert_eq!(defaults.watch.doctor_interval_secs, 6 * 60 * 60);
        assert_eq!(defaults.watch.expiry_warning_days, 30);
        assert_eq!(defaults.watch.admin_channel, None);
        let set = crate::config::Settings::from_toml_str(&format!(
            "{BASE}[watch]\ndoctor_interval_secs = 60\nadmin_channel = \"19:abc@thread.tacv2\"\n"
        ))
        .expect("valid");
        assert_eq!(set.watch.doctor_interval_secs, 60);
        assert_eq!(
            set.watch.admin_channel.as_deref(),
            Some("19:abc@thread.tacv2")
        );
        let err = crate::config::Settings::from_toml_str(&format!(
            "{BASE}[watch]\ndoctor_interval_secs = 0\n"
        ))
        .expect_err("refused");
        assert!(
            err.to_string().contains("watch.doctor_interval_secs"),
            "{err}"
        );
        let err = crate::config::Settings::from_toml_str(&format!(
            "{BASE}[watch]\nadmin_channel = \" \"\n"
        ))
        .expect_err("refused");
        assert!(err.to_string().contains("watch.admin_channel"), "{err}");
    }
}
