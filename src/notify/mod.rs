//! Case-status and service-health notifications (`subscribe`, `unsubscribe`, `subscriptions`, `status`).

pub mod cards;
pub mod event;
pub mod filter;
pub mod outbox;
pub mod ratelimit;
pub mod slack;
pub mod sources;
pub mod store;
pub mod worker;

use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::core::command::Command;
use crate::core::{CommandHelp, InboundEvent, Platform, Reply, Tone};
use crate::identity::{self, RoleNeed};
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
    /// Connector calls per second for the whole app (Teams: 50 per app per tenant), shared by
    /// every instance on PostgreSQL; 0 = unlimited.
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
    /// Slack calls per second per channel (`chat.postMessage` allows about 1); 0 = unlimited.
    pub slack_per_channel_per_second: f64,
    /// Slack calls per second per workspace, shared by every instance on PostgreSQL;
    /// 0 = unlimited (the per-channel and method-tier limits still apply).
    pub slack_per_workspace_per_second: f64,
    /// Calls per minute of Slack's Tier 3 methods (`chat.update`, `conversations.history`).
    pub slack_tier3_per_minute: f64,
    /// The app role needed to subscribe or unsubscribe a conversation (`administrator` or
    /// `insights_user`); unset: `administrator` in channels and group chats (guests may read
    /// them), `insights_user` in personal chats.
    pub subscribe_role: Option<SubscribeRole>,
}

/// An app role that may change a conversation's subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRole {
    /// `<scope>.administrator`.
    Administrator,
    /// `<scope>.insights_user` (or administrator).
    InsightsUser,
}

impl NotifySettings {
    /// The role needed to change the subscriptions of a conversation of `conversation_type`
    /// (`personal`, `channel`, `groupChat`).
    pub fn subscribe_need(&self, conversation_type: &str) -> RoleNeed {
        let role = self
            .subscribe_role
            .unwrap_or(if conversation_type == "personal" {
                SubscribeRole::InsightsUser
            } else {
                SubscribeRole::Administrator
            });
        match role {
            SubscribeRole::Administrator => RoleNeed::AppAdministrator,
            SubscribeRole::InsightsUser => RoleNeed::InsightsOrAdministrator,
        }
    }
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
            slack_per_channel_per_second: 1.0,
            slack_per_workspace_per_second: 0.0,
            slack_tier3_per_minute: 50.0,
            subscribe_role: None,
        }
    }
}

/// Answers one of this module's commands.
pub async fn handle_command(app: &App, event: &InboundEvent, command: Command) -> Vec<Reply> {
    let need = match command {
        Command::Subscribe { .. } | Command::Unsubscribe => app
            .settings
            .notifications
            .subscribe_need(&event.conversation_type),
        _ => RoleNeed::InsightsOrAdministrator,
    };
    let user = match identity::require(app, event, need).await {
        Ok(user) => user,
        Err(refusal) => return vec![refusal],
    };
    let replies = match command {
        Command::Subscribe { filter } => subscribe(app, event, &user, &filter).await,
        Command::Unsubscribe => unsubscribe(app, &conversation_key(event)).await,
        Command::Subscriptions => subscriptions(app, &conversation_key(event)).await,
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

/// Where a conversation's subscriptions are kept: the conversation id in Teams,
/// `slack:<team>:<channel>` in Slack (see [`slack::SlackAddress`]).
pub fn conversation_key(event: &InboundEvent) -> String {
    match (event.platform, slack_address(event)) {
        (Platform::Slack, Some(address)) => address.conversation_id(),
        _ => event.conversation_id.clone(),
    }
}

/// The Slack workspace and channel of a Slack event.
fn slack_address(event: &InboundEvent) -> Option<slack::SlackAddress> {
    (event.platform == Platform::Slack).then(|| slack::SlackAddress {
        team_id: event.address.team_id.clone().unwrap_or_default(),
        channel_id: event
            .address
            .channel_id
            .clone()
            .unwrap_or_else(|| event.conversation_id.clone()),
    })
}

/// The values of the case table's choice list for `field` (values and labels).
async fn choice_values(
    client: &crate::upstream::servicenow::ServiceNowClient,
    table: &str,
    field: &str,
) -> Result<Vec<String>, String> {
    use crate::upstream::servicenow::EncodedQuery;
    let query = EncodedQuery::new().eq("name", table).eq("element", field);
    let rows = client
        .query(
            "sys_choice",
            query.text().map_err(|err| err.to_string())?,
            &["name", "element", "value", "label"],
            Some(200),
        )
        .await
        .map_err(|err| err.to_string())?;
    Ok(rows
        .iter()
        // ServiceNow ignores query terms it cannot apply: check every row.
        .filter(|row| row.str("name") == Some(table) && row.str("element") == Some(field))
        .flat_map(|row| [row.str("value"), row.str("label")])
        .flatten()
        .filter(|v| !v.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// What the sources can produce for the keys `filter` uses (only what it needs is read).
async fn vocabulary(app: &App, filter: &Filter) -> filter::Vocabulary {
    let source = &app.settings.notifications.sources.servicenow;
    let runtime = app.runtime.client();
    let client = runtime.as_ref().ok();
    let no_servicenow = match &runtime {
        Err(why) => format!("the bot cannot read ServiceNow: {why}"),
        Ok(_) => String::new(),
    };
    let mut known = filter::Vocabulary {
        priorities: Vec::new(),
        services: Ok(Vec::new()),
        groups: Ok(Vec::new()),
    };
    if !filter.priorities.is_empty()
        && let Some(client) = client
    {
        known.priorities = choice_values(client, &source.table, &source.priority_field)
            .await
            .unwrap_or_default();
    }
    if !filter.services.is_empty() {
        let mut services = Vec::new();
        let mut problems = Vec::new();
        match app.upstreams.graph.as_ref() {
            Some(graph) => match graph.service_health_overviews().await {
                Ok(overviews) => services.extend(
                    overviews
                        .into_iter()
                        .flat_map(|o| [o.service, o.id])
                        .filter(|s| !s.is_empty()),
                ),
                Err(err) => problems.push(format!("Microsoft 365 service health: {err}")),
            },
            None => problems.push("Microsoft Graph is not configured".to_owned()),
        }
        match client {
            Some(client) => match choice_values(client, &source.table, &source.service_field).await
            {
                Ok(values) => services.extend(values),
                Err(err) => problems.push(format!("ServiceNow: {err}")),
            },
            None => problems.push(no_servicenow.clone()),
        }
        known.services = if services.is_empty() {
            Err(format!(
                "no source lists services ({}). Try again later, or subscribe without service=.",
                problems.join("; ")
            ))
        } else {
            Ok(services)
        };
    }
    if !filter.groups.is_empty() {
        known.groups = match client {
            Some(client) => {
                use crate::upstream::servicenow::{EncodedQuery, Operator};
                let query = filter
                    .groups
                    .iter()
                    .fold(EncodedQuery::new(), |query, group| {
                        query.or("name", Operator::Eq, group)
                    });
                let text = query.text().map_err(|err| err.to_string());
                let rows = match text {
                    Ok(text) => client
                        .query("sys_user_group", text, &["name"], Some(100))
                        .await
                        .map_err(|err| err.to_string()),
                    Err(refused) => Err(refused),
                };
                rows.map(|rows| {
                    rows.iter()
                        .filter_map(|row| row.str("name").map(str::to_owned))
                        .collect()
                })
                .map_err(|err| format!("{err}. Try again later."))
            }
            None => Err(no_servicenow),
        };
    }
    known
}

async fn subscribe(
    app: &App,
    event: &InboundEvent,
    user: &identity::ChatUser,
    text: &str,
) -> Result<Vec<Reply>, sqlx::Error> {
    let parsed = Filter::parse(text);
    let checked = match parsed {
        Ok(filter) => {
            let known = vocabulary(app, &filter).await;
            filter.validate(&known).map(|()| filter)
        }
        Err(err) => Err(err),
    };
    let filter = match checked {
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
    let conversation_id = conversation_key(event);
    let address = slack_address(event);
    let place = match &address {
        Some(address) => store::Place {
            platform: slack::PLATFORM,
            team_id: Some(&address.team_id),
            channel_id: Some(&address.channel_id),
        },
        None => store::Place::TEAMS,
    };
    let outcome = store::subscribe_at(
        &app.db,
        &NewSubscription {
            conversation_id: &conversation_id,
            conversation_type: &event.conversation_type,
            filter: &filter,
            user_id: &event.actor.user_id,
            user_name: Some(&name),
        },
        &place,
    )
    .await?;
    let described = cards::untrusted(&filter.describe(), 500);
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

async fn unsubscribe(app: &App, conversation_id: &str) -> Result<Vec<Reply>, sqlx::Error> {
    let removed = store::unsubscribe(&app.db, conversation_id).await?;
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
                (Some(reason), false) => format!("Disabled: {}", cards::untrusted(reason, 300)),
                (None, false) => "Disabled".to_owned(),
            };
            serde_json::json!({
                "filter": if s.filter_text.is_empty() { "everything".to_owned() } else { cards::untrusted(&s.filter_text, 500) },
                "status": status,
                "healthy": s.enabled && s.dead_letters == 0,
                "created": format!("{} by {}", when(s.created_at), cards::untrusted(&s.created_by, 100)),
                "counts": format!(
                    "{} delivered, {} waiting, {} failed attempts, {} dead letters",
                    s.delivered, s.pending, s.failures, s.dead_letters
                ),
                "last_delivery": s.last_delivery_at.map(when).unwrap_or_else(|| "none yet".to_owned()),
                "last_error": s.last_error.as_deref().map(|e| cards::untrusted(e, 300)).unwrap_or_default(),
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

async fn subscriptions(app: &App, conversation_id: &str) -> Result<Vec<Reply>, sqlx::Error> {
    let list = store::list(&app.db, conversation_id).await?;
    Ok(vec![Reply::Card {
        template: "notify_subscriptions",
        data: subscriptions_model(&list),
    }])
}

/// True when `text` has the shape of a case or incident reference: 1 to 40 of
/// `A-Z a-z 0-9 _ . -`. Anything else is never looked up.
pub fn is_case_reference(text: &str) -> bool {
    (1..=40).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The card for a reference that is not a Microsoft 365 support case the bot may show.
fn not_a_support_case(reference: &str) -> Reply {
    Reply::notice(
        Tone::Warning,
        "Not a Microsoft 365 support case",
        &format!(
            "**{}** is not a Microsoft 365 support case I can show.",
            cards::untrusted(reference, 40)
        ),
        Some(
            "Give the number of an incident that tracks a Microsoft support case (e.g. INC0010001), or its Microsoft case number.",
        ),
    )
}

/// The card for a reference ServiceNow did not show the runtime identity: not a support case,
/// missing, or hidden from the integration user by the instance's ACLs.
fn not_found_live(app: &App, reference: &str) -> Reply {
    let who = app.runtime.describe();
    let mut text = format!(
        "**{}** is not a Microsoft 365 support case I can show: not found, or not visible to {who}.",
        cards::untrusted(reference, 40)
    );
    if let Some(note) = app.runtime.note() {
        text.push_str(&format!(" Note: {}.", crate::cards::escape_markdown(&note)));
    }
    Reply::notice(
        Tone::Warning,
        "Not a Microsoft 365 support case",
        &text,
        Some(
            "Give the number of an incident that tracks a Microsoft support case (e.g. INC0010001), or its Microsoft case number. A case the integration user may not read stays hidden.",
        ),
    )
}

async fn status(app: &App, reference: &str) -> Result<Vec<Reply>, sqlx::Error> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Ok(vec![Reply::notice(
            Tone::Attention,
            "Which case?",
            "Give a case or incident number.",
            Some("Usage: **status <case or incident number>**, e.g. status INC0010001"),
        )]);
    }
    if !is_case_reference(reference) {
        return Ok(vec![not_a_support_case(reference)]);
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
        Ok(None) => Ok(vec![not_found_live(app, reference)]),
        Err(reason) => Ok(vec![Reply::notice(
            Tone::Warning,
            "Case not found here",
            &format!(
                "I have no update of **{reference}** on record, and could not ask ServiceNow: {}",
                crate::cards::escape_markdown(&reason)
            ),
            Some("Check the [servicenow] settings with **doctor**, or try again later."),
        )]),
    }
}

/// Reads a case live from ServiceNow by its number (or Microsoft case reference), within the
/// sources' case filter: a record outside it (any other incident) is not shown. Each returned
/// row is checked in code, because ServiceNow ignores query terms on unknown columns.
async fn live_incident(app: &App, reference: &str) -> Result<Option<event::CaseEvent>, String> {
    use crate::upstream::servicenow::{DisplayValue, ListOptions};
    let client = app.runtime.client()?;
    let settings = &app.settings.notifications.sources.servicenow;
    let filter = settings.filter();
    let mut named = sources::servicenow::filter_fields(&filter)?;
    named.push(settings.number_field.clone());
    named.push(settings.case_reference_field.clone());
    let named_refs: Vec<&str> = named.iter().map(String::as_str).collect();
    client
        .ensure_fields(&settings.table, &named_refs)
        .await
        .map_err(|e| e.to_string())?;
    // `reference` has the case-reference shape (no `^`, `=`, spaces or newlines), so it cannot
    // add a condition. `^OR` binds to the condition before it: filter AND (number OR reference).
    let query = format!(
        "{filter}^{number}={reference}^OR{case}={reference}",
        number = settings.number_field,
        case = settings.case_reference_field,
    );
    let options = ListOptions {
        query,
        fields: settings.fields(),
        limit: Some(2),
        page_size: Some(2),
        display_value: DisplayValue::All,
        include_reference_links: false,
    };
    let records = client
        .list(&settings.table, &options)
        .await
        .map_err(|e| e.to_string())?;
    let matches = |field: &str, record: &crate::upstream::servicenow::Record| {
        record
            .str(field)
            .or_else(|| record.display_value(field))
            .is_some_and(|value| value.eq_ignore_ascii_case(reference))
    };
    let Some(record) = records.iter().find(|record| {
        (matches(&settings.number_field, record) || matches(&settings.case_reference_field, record))
            && record.non_empty(&settings.case_reference_field).is_some()
    }) else {
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
