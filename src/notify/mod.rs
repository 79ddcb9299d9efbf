//! Case-status and service-health notifications (`subscribe`, `unsubscribe`, `subscriptions`, `status`).

pub mod cards;
pub mod event;
pub mod filter;
pub mod outbox;
pub mod ratelimit;
pub mod sources;
pub mod store;
pub mod worker;

use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::core::command::Command;
use crate::core::identity::{self, RoleNeed};
use crate::core::{CommandHelp, InboundEvent, Platform, Reply, Tone};
use filter::Filter;
use store::{NewSubscription, SubscribeOutcome};

/// The commands this module answers, for the help card and the manifest.
pub const COMMANDS: &[CommandHelp] = &[
    CommandHelp {
        usage: "subscribe [filter]",
        description: "Post case-status and service-health updates here (filter e.g. source=servicenow priority=1,2 group=\"Service Desk\" changes-only).",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "unsubscribe",
        description: "Stop the notifications of this conversation.",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "subscriptions",
        description: "List this conversation's subscriptions with their delivery health.",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "status <case or incident>",
        description: "Show the current state of one case or incident.",
        scopes: &["personal", "team", "groupChat"],
    },
];

/// The `[notifications]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// Where case events come from (`[notifications.sources]`).
    pub sources: crate::notify::sources::SourcesSettings,
    /// Run the delivery worker in this process (default true).
    pub deliver: bool,
    /// Connector calls per second per conversation (Teams: 7); 0 = unlimited.
    pub per_conversation_per_second: f64,
    /// Connector calls per second for the whole app, per bot instance (Teams: 50 per app per
    /// tenant); 0 = unlimited.
    pub per_app_per_second: f64,
    /// Failed attempts (5xx, network, timeouts; not throttling) before a delivery becomes a
    /// dead letter.
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubled per attempt, with jitter.
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    pub retry_max_ms: u64,
    /// How long a claimed case/conversation lane is held, in seconds; a crashed instance's
    /// lanes are retried after this.
    pub lease_seconds: u64,
    /// Lanes claimed per batch.
    pub batch_size: usize,
    /// Batches in progress at once per instance (claim loops sharing the rate limits).
    pub claim_loops: usize,
    /// Connector calls in flight per instance.
    pub concurrency: usize,
    /// Idle wait between claims, in milliseconds.
    pub poll_interval_ms: u64,
    /// A connector call taking longer than this (milliseconds) counts as a network failure.
    pub send_timeout_ms: u64,
    /// Delivered and merged outbox rows are deleted after this many days (dead letters stay).
    pub retention_days: u32,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            sources: Default::default(),
            deliver: true,
            per_conversation_per_second: 7.0,
            per_app_per_second: 50.0,
            max_attempts: 12,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            lease_seconds: 60,
            batch_size: 200,
            claim_loops: 2,
            concurrency: 32,
            poll_interval_ms: 250,
            send_timeout_ms: 15_000,
            retention_days: 30,
        }
    }
}

/// Answers one of this module's commands.
pub async fn handle_command(app: &App, event: &InboundEvent, command: Command) -> Vec<Reply> {
    if event.platform != Platform::Teams {
        return vec![Reply::notice(
            Tone::Warning,
            "Teams only",
            "Case notifications are delivered to Microsoft Teams conversations in this version.",
            Some("Type the command in a Teams channel or chat with m365bot."),
        )];
    }
    let user = match identity::require(app, event, RoleNeed::InsightsOrAdministrator).await {
        Ok(user) => user,
        Err(refusal) => return vec![refusal],
    };
    let replies = match command {
        Command::Subscribe { filter } => subscribe(app, event, &user, &filter).await,
        Command::Unsubscribe => unsubscribe(app, event).await,
        Command::Subscriptions => subscriptions(app, event).await,
        Command::Status { reference } => status(app, &reference).await,
        other => return vec![crate::core::not_available(&other)],
    };
    replies.unwrap_or_else(|err| {
        tracing::error!(error = %err, "notification command failed");
        vec![Reply::notice(
            Tone::Attention,
            "Something went wrong",
            "I could not read or write the notification settings.",
            Some("Try again in a minute; if it keeps failing, ask the bot's operator to check its log and database."),
        )]
    })
}

async fn subscribe(
    app: &App,
    event: &InboundEvent,
    user: &identity::ChatUser,
    text: &str,
) -> Result<Vec<Reply>, sqlx::Error> {
    let filter = match Filter::parse(text) {
        Ok(filter) => filter,
        Err(err) => {
            return Ok(vec![Reply::notice(
                Tone::Attention,
                "That filter is not valid",
                &err.to_string(),
                Some(&format!("Usage: **{}**", filter::USAGE)),
            )]);
        }
    };
    let name = user
        .display_name
        .clone()
        .or_else(|| event.actor.name.clone())
        .unwrap_or_else(|| user.user_name.clone());
    let outcome = store::subscribe(
        &app.db,
        &NewSubscription {
            conversation_id: &event.conversation_id,
            conversation_type: &event.conversation_type,
            filter: &filter,
            user_id: &event.actor.user_id,
            user_name: Some(&name),
        },
    )
    .await?;
    let described = filter.describe();
    Ok(vec![match outcome {
        SubscribeOutcome::Created(_) => Reply::notice(
            Tone::Good,
            "Subscribed",
            &format!(
                "This conversation now gets **{described}**. Each case gets one card, updated in place, with later updates as replies in its thread."
            ),
            Some("Type **subscriptions** to see delivery health, **unsubscribe** to stop."),
        ),
        SubscribeOutcome::Reenabled(_) => Reply::notice(
            Tone::Good,
            "Subscription enabled again",
            &format!("This conversation gets **{described}** again."),
            Some("Type **subscriptions** to see delivery health."),
        ),
        SubscribeOutcome::AlreadySubscribed(_) => Reply::notice(
            Tone::Default,
            "Already subscribed",
            &format!("This conversation already gets **{described}**."),
            Some("Type **subscriptions** to see all subscriptions here."),
        ),
        SubscribeOutcome::TooMany => Reply::notice(
            Tone::Warning,
            "Too many subscriptions",
            &format!(
                "This conversation has {} subscriptions already.",
                store::MAX_PER_CONVERSATION
            ),
            Some("Type **unsubscribe** to remove them, then subscribe with a broader filter."),
        ),
    }])
}

async fn unsubscribe(app: &App, event: &InboundEvent) -> Result<Vec<Reply>, sqlx::Error> {
    let removed = store::unsubscribe(&app.db, &event.conversation_id).await?;
    Ok(vec![if removed == 0 {
        Reply::notice(
            Tone::Default,
            "No subscriptions here",
            "This conversation has no notification subscriptions.",
            Some("Type **subscribe** to start."),
        )
    } else {
        Reply::notice(
            Tone::Good,
            "Unsubscribed",
            &format!(
                "Removed {removed} subscription{} from this conversation. Updates already queued are not sent.",
                if removed == 1 { "" } else { "s" }
            ),
            None,
        )
    }])
}

/// `YYYY-MM-DD HH:MM UTC` of a time in milliseconds.
fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// The view model of the subscriptions card.
pub fn subscriptions_model(list: &[store::SubscriptionHealth]) -> Value {
    let items: Vec<Value> = list
        .iter()
        .map(|s| {
            let status = match (&s.disabled_reason, s.enabled) {
                (_, true) if s.dead_letters > 0 => format!(
                    "Active, {} dead letter{}",
                    s.dead_letters,
                    if s.dead_letters == 1 { "" } else { "s" }
                ),
                (_, true) => "Active".to_owned(),
                (Some(reason), false) => format!("Disabled: {}", cards::clip(reason, 300)),
                (None, false) => "Disabled".to_owned(),
            };
            serde_json::json!({
                "filter": if s.filter_text.is_empty() { "everything".to_owned() } else { s.filter_text.clone() },
                "status": status,
                "healthy": s.enabled && s.dead_letters == 0,
                "created": format!("{} by {}", when(s.created_at), cards::clip(&s.created_by, 100)),
                "counts": format!(
                    "{} delivered, {} waiting, {} failed attempts, {} dead letters",
                    s.delivered, s.pending, s.failures, s.dead_letters
                ),
                "last_delivery": s.last_delivery_at.map(when).unwrap_or_else(|| "none yet".to_owned()),
                "last_error": s.last_error.as_deref().map(|e| cards::clip(e, 300)).unwrap_or_default(),
            })
        })
        .collect();
    let intro = if items.is_empty() {
        "This conversation has no subscriptions. Type **subscribe** to start.".to_owned()
    } else {
        format!(
            "{} subscription{} in this conversation.",
            items.len(),
            if items.len() == 1 { "" } else { "s" }
        )
    };
    serde_json::json!({
        "intro": intro,
        "subscriptions": items,
    })
}

async fn subscriptions(app: &App, event: &InboundEvent) -> Result<Vec<Reply>, sqlx::Error> {
    let list = store::list(&app.db, &event.conversation_id).await?;
    Ok(vec![Reply::Card {
        template: "notify_subscriptions",
        data: subscriptions_model(&list),
    }])
}

async fn status(app: &App, reference: &str) -> Result<Vec<Reply>, sqlx::Error> {
    let reference = reference.trim();
    if reference.is_empty() || reference.chars().count() > 100 {
        return Ok(vec![Reply::notice(
            Tone::Attention,
            "Which case?",
            "Give a case or incident number.",
            Some("Usage: **status <case or incident number>**, e.g. status INC0010001"),
        )]);
    }
    if let Some(event) = outbox::latest_event(&app.db, reference).await? {
        return Ok(vec![Reply::Card {
            template: "notify_status",
            data: cards::case_model(&event, false),
        }]);
    }
    match live_incident(app, reference).await {
        Ok(Some(event)) => Ok(vec![Reply::Card {
            template: "notify_status",
            data: cards::case_model(&event, true),
        }]),
        Ok(None) => Ok(vec![Reply::notice(
            Tone::Warning,
            "Case not found",
            &format!(
                "I have no update of **{}** on record, and ServiceNow has no such record.",
                cards::clip(reference, 100)
            ),
            Some(
                "Check the number (e.g. INC0010001, or the Microsoft case number of a tracked incident).",
            ),
        )]),
        Err(reason) => Ok(vec![Reply::notice(
            Tone::Warning,
            "Case not found here",
            &format!(
                "I have no update of **{}** on record, and could not ask ServiceNow: {reason}",
                cards::clip(reference, 100)
            ),
            Some("Check the [servicenow] settings with **doctor**, or try again later."),
        )]),
    }
}

/// Reads a case live from ServiceNow by its number (or Microsoft case reference).
async fn live_incident(app: &App, reference: &str) -> Result<Option<event::CaseEvent>, String> {
    use crate::upstream::servicenow::{DisplayValue, EncodedQuery, ListOptions};
    let Some(client) = app.upstreams.servicenow.as_ref() else {
        return Err("ServiceNow is not configured".to_owned());
    };
    let settings = &app.settings.notifications.sources.servicenow;
    let query = EncodedQuery::new()
        .eq(&settings.number_field, reference)
        .or(
            &settings.case_reference_field,
            crate::upstream::servicenow::Operator::Eq,
            reference,
        );
    let options = ListOptions {
        query: query.text().map_err(|e| e.to_string())?.to_owned(),
        fields: settings.fields(),
        limit: Some(1),
        page_size: Some(1),
        display_value: DisplayValue::All,
        include_reference_links: false,
    };
    let records = client
        .list(&settings.table, &options)
        .await
        .map_err(|e| e.to_string())?;
    let Some(record) = records.first() else {
        return Ok(None);
    };
    sources::servicenow::event_from_record(
        settings,
        app.settings.servicenow.instance_url.as_ref(),
        record,
        None,
    )
    .map(|(event, _)| Some(event))
    .map_err(|e| e.to_string())
}

/// Answers a card action whose verb starts with this module's prefix.
pub async fn handle_action(
    _app: &App,
    _event: &InboundEvent,
    _verb: &str,
    _data: &Value,
) -> Vec<Reply> {
    vec![crate::core::out_of_date_card()]
}

/// Starts the background workers (outbox delivery, pollers); they stop with `shutdown`.
pub fn start_background(app: Arc<App>, shutdown: tokio_util::sync::CancellationToken) {
    worker::spawn(app.clone(), shutdown.clone());
    sources::start(app, shutdown);
}

/// This module's HTTP routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new().merge(sources::routes())
}
