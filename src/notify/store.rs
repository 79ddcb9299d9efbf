//! Subscriptions: create, remove, list with delivery health; notices to subscribers whose
//! subscription was disabled.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::json;
use sqlx::Row;

use super::filter::{Filter, UNROUTED};
use super::outbox::placeholders;
use crate::app::App;
use crate::db::{Db, now_millis};
use crate::teams::ADAPTIVE_CARD;

/// Most subscriptions per conversation.
pub const MAX_PER_CONVERSATION: i64 = 20;

/// Who subscribes, and where.
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    /// Conversation id (without thread suffix).
    pub conversation_id: &'a str,
    /// `personal`, `channel` or `groupChat`.
    pub conversation_type: &'a str,
    /// The filter.
    pub filter: &'a Filter,
    /// Platform user id of the subscriber.
    pub user_id: &'a str,
    /// Their display name.
    pub user_name: Option<&'a str>,
}

/// What `subscribe` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// A new subscription with this id.
    Created(String),
    /// A disabled subscription with the same filter was enabled again.
    Reenabled(String),
    /// The same filter is already active here.
    AlreadySubscribed(String),
    /// The conversation has too many subscriptions.
    TooMany,
}

/// The platform a subscription posts to, with the Slack workspace and channel.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// `teams` or `slack`.
    pub platform: &'a str,
    /// Slack workspace (team) id.
    pub team_id: Option<&'a str>,
    /// Slack channel id.
    pub channel_id: Option<&'a str>,
}

impl Place<'static> {
    /// A Teams conversation.
    pub const TEAMS: Self = Self {
        platform: "teams",
        team_id: None,
        channel_id: None,
    };
}

/// Creates a Teams subscription (or re-enables an identical disabled one).
pub async fn subscribe(
    db: &Db,
    new: &NewSubscription<'_>,
) -> Result<SubscribeOutcome, sqlx::Error> {
    subscribe_at(db, new, &Place::TEAMS).await
}

/// Creates a subscription on `place` (or re-enables an identical disabled one).
pub async fn subscribe_at(
    db: &Db,
    new: &NewSubscription<'_>,
    place: &Place<'_>,
) -> Result<SubscribeOutcome, sqlx::Error> {
    let text = new.filter.to_text();
    let json = serde_json::to_string(new.filter)
        .map_err(|e| sqlx::Error::Protocol(format!("filter: {e}")))?;
    let mut tx = db.pool.begin().await?;
    // Take the write lock first (SQLite), then read.
    sqlx::query("UPDATE notify_subscriptions SET enabled = enabled WHERE conversation_id = $1")
        .bind(new.conversation_id)
        .execute(&mut *tx)
        .await?;
    let existing = sqlx::query(
        "SELECT id, enabled FROM notify_subscriptions WHERE conversation_id = $1 AND filter_text = $2",
    )
    .bind(new.conversation_id)
    .bind(&text)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = existing {
        let id: String = row.try_get(0)?;
        let enabled: i64 = row.try_get(1)?;
        if enabled == 1 {
            tx.rollback().await?;
            return Ok(SubscribeOutcome::AlreadySubscribed(id));
        }
        sqlx::query(
            "UPDATE notify_subscriptions SET enabled = 1, disabled_reason = NULL, disabled_at = NULL, \
             owner_notice_due = 0, created_by = $1, created_by_name = $2 WHERE id = $3",
        )
        .bind(new.user_id)
        .bind(new.user_name)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(SubscribeOutcome::Reenabled(id));
    }
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notify_subscriptions WHERE conversation_id = $1")
            .bind(new.conversation_id)
            .fetch_one(&mut *tx)
            .await?;
    if count >= MAX_PER_CONVERSATION {
        tx.rollback().await?;
        return Ok(SubscribeOutcome::TooMany);
    }
    let id = format!("sub-{:032x}", rand::rng().random::<u128>());
    sqlx::query(
        "INSERT INTO notify_subscriptions (id, conversation_id, conversation_type, filter_text, \
         filter_json, created_by, created_by_name, created_at, platform, team_id, channel_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(new.conversation_id)
    .bind(new.conversation_type)
    .bind(&text)
    .bind(&json)
    .bind(new.user_id)
    .bind(new.user_name)
    .bind(now_millis())
    .bind(place.platform)
    .bind(place.team_id)
    .bind(place.channel_id)
    .execute(&mut *tx)
    .await?;
    insert_routes(&mut tx, &id, &new.filter.routes()).await?;
    tx.commit().await?;
    Ok(SubscribeOutcome::Created(id))
}

/// Removes every subscription of a conversation; returns how many. Their pending deliveries
/// become dead letters when a worker meets them ("the subscription was removed").
pub async fn unsubscribe(db: &Db, conversation_id: &str) -> Result<u64, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "DELETE FROM notify_subscription_routes WHERE subscription_id IN \
         (SELECT id FROM notify_subscriptions WHERE conversation_id = $1)",
    )
    .bind(conversation_id)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query("DELETE FROM notify_subscriptions WHERE conversation_id = $1")
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// Indexes subscription `id` under `routes` (see [`Filter::routes`]).
async fn insert_routes(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
    routes: &[String],
) -> Result<(), sqlx::Error> {
    let values: Vec<String> = (0..routes.len())
        .map(|n| format!("(${}, $1)", n + 2))
        .collect();
    let sql = format!(
        "INSERT INTO notify_subscription_routes (route, subscription_id) VALUES {} \
         ON CONFLICT (route, subscription_id) DO NOTHING",
        values.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(id);
    for route in routes {
        query = query.bind(route);
    }
    query.execute(&mut **tx).await.map(drop)
}

/// Computes the routes of up to 500 subscriptions stored before routes existed (routed
/// [`UNROUTED`], a candidate for every event); returns how many were routed.
pub async fn route_unrouted(db: &Db) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT s.id, s.filter_json FROM notify_subscription_routes r \
         JOIN notify_subscriptions s ON s.id = r.subscription_id WHERE r.route = $1 LIMIT 500",
    )
    .bind(UNROUTED)
    .fetch_all(&db.pool)
    .await?;
    let mut tx = db.pool.begin().await?;
    for row in &rows {
        let id: String = row.try_get(0)?;
        let filter_json: String = row.try_get(1)?;
        // A filter that does not parse matches nothing: it gets no route.
        if let Ok(filter) = serde_json::from_str::<Filter>(&filter_json) {
            insert_routes(&mut tx, &id, &filter.routes()).await?;
        }
        sqlx::query(
            "DELETE FROM notify_subscription_routes WHERE route = $1 AND subscription_id = $2",
        )
        .bind(UNROUTED)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// One subscription with its delivery health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionHealth {
    /// Id.
    pub id: String,
    /// The filter as typed (canonical).
    pub filter_text: String,
    /// Who subscribed (display name or user id).
    pub created_by: String,
    /// When (ms).
    pub created_at: i64,
    /// False once disabled (bot removed).
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Last delivery (ms).
    pub last_delivery_at: Option<i64>,
    /// Delivered updates (including merged ones) still on record.
    pub delivered: i64,
    /// Waiting.
    pub pending: i64,
    /// Failed attempts so far.
    pub failures: i64,
    /// Dead letters.
    pub dead_letters: i64,
    /// The last error.
    pub last_error: Option<String>,
}

/// The subscriptions of conversation `$1`, oldest first.
pub const LIST_SQL: &str = "SELECT id, filter_text, COALESCE(created_by_name, created_by), created_at, \
     enabled, disabled_reason, failure_count, last_error FROM notify_subscriptions \
     WHERE conversation_id = $1 ORDER BY created_at, id";

/// Outbox counts per status of `count` subscriptions (`$1…`).
pub fn list_health_sql(count: usize) -> String {
    format!(
        "SELECT subscription_id, status, COUNT(*), MAX(finished_at) FROM notify_outbox \
         WHERE subscription_id IN ({}) GROUP BY subscription_id, status",
        placeholders(1, count)
    )
}

/// The subscriptions of a conversation, oldest first, with their health.
pub async fn list(db: &Db, conversation_id: &str) -> Result<Vec<SubscriptionHealth>, sqlx::Error> {
    let rows = sqlx::query(LIST_SQL)
        .bind(conversation_id)
        .fetch_all(&db.pool)
        .await?;
    let mut list: Vec<SubscriptionHealth> = rows
        .iter()
        .map(|row| {
            Ok(SubscriptionHealth {
                id: row.try_get(0)?,
                filter_text: row.try_get(1)?,
                created_by: row.try_get(2)?,
                created_at: row.try_get(3)?,
                enabled: row.try_get::<i64, _>(4)? == 1,
                disabled_reason: row.try_get(5)?,
                failures: row.try_get(6)?,
                last_error: row.try_get(7)?,
                last_delivery_at: None,
                delivered: 0,
                pending: 0,
                dead_letters: 0,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    if list.is_empty() {
        return Ok(list);
    }
    let sql = list_health_sql(list.len());
    let mut query = sqlx::query(&sql);
    for item in &list {
        query = query.bind(item.id.clone());
    }
    let mut per: BTreeMap<String, Vec<(String, i64, Option<i64>)>> = BTreeMap::new();
    for row in query.fetch_all(&db.pool).await? {
        per.entry(row.try_get(0)?).or_default().push((
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        ));
    }
    for item in &mut list {
        for (state, count, last) in per.remove(&item.id).unwrap_or_default() {
            match state.as_str() {
                "delivered" | "merged" => {
                    item.delivered += count;
                    if state == "delivered" {
                        item.last_delivery_at = item.last_delivery_at.max(last);
                    }
                }
                "pending" => item.pending += count,
                "dead" => item.dead_letters += count,
                _ => {}
            }
        }
    }
    Ok(list)
}

/// Sends the "your subscription was disabled" notice to each subscriber the bot can reach in
/// a 1:1 chat; the others keep waiting until they talk to the bot. Returns notices sent.
pub async fn send_owner_notices(app: &App) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, created_by, filter_text, disabled_reason, conversation_type FROM notify_subscriptions \
         WHERE owner_notice_due = 1 AND platform = 'teams' ORDER BY disabled_at LIMIT 200",
    )
    .fetch_all(&app.db.pool)
    .await?;
    let mut per_user: BTreeMap<String, Vec<(String, String, String, String)>> = BTreeMap::new();
    for row in &rows {
        per_user.entry(row.try_get(1)?).or_default().push((
            row.try_get(0)?,
            row.try_get(2)?,
            row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            row.try_get(4)?,
        ));
    }
    let mut sent = 0;
    for (user, subscriptions) in per_user {
        let personal = sqlx::query(
            "SELECT conversation_id, service_url FROM conversation_refs \
             WHERE conversation_type = 'personal' AND user_id = $1 ORDER BY updated_at DESC LIMIT 1",
        )
        .bind(&user)
        .fetch_optional(&app.db.pool)
        .await?;
        let Some(personal) = personal else {
            continue;
        };
        let conversation_id: String = personal.try_get(0)?;
        let service_url: String = personal.try_get(1)?;
        let ids: Vec<&String> = subscriptions.iter().map(|s| &s.0).collect();
        // Claim the notices first, so two instances never both send them.
        let claim = format!(
            "UPDATE notify_subscriptions SET owner_notice_due = 0 WHERE owner_notice_due = 1 AND id IN ({})",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query(&claim);
        for id in &ids {
            query = query.bind(id.as_str());
        }
        if query.execute(&app.db.pool).await?.rows_affected() == 0 {
            continue;
        }
        let lines: Vec<String> = subscriptions
            .iter()
            .map(|(_, filter, reason, kind)| {
                let filter = if filter.is_empty() {
                    "everything"
                } else {
                    filter
                };
                format!(
                    "- in a {} (filter: {filter}): {reason}",
                    conversation_kind(kind)
                )
            })
            .collect();
        let model = json!({
            "tone": "warning",
            "title": "Notifications stopped",
            "text": format!(
                "I can no longer post in a conversation where you subscribed to case notifications, so I disabled the subscription:\n\n{}",
                lines.join("\n")
            ),
            "next_step": "Add me to that conversation again, then type **subscribe** there (with the same filter) to resume.",
        });
        let delivered = match app.cards.render_raw("teams/notice", model) {
            Ok(card) => {
                let activity = json!({
                    "type": "message",
                    "summary": "Notifications stopped",
                    "attachments": [{"contentType": ADAPTIVE_CARD, "content": card}],
                });
                app.connector
                    .send(&service_url, &conversation_id, &activity)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        match delivered {
            Ok(_) => sent += 1,
            Err(err) => {
                tracing::warn!(error = %err, "the disabled-subscription notice was not delivered; will retry");
                let undo = format!(
                    "UPDATE notify_subscriptions SET owner_notice_due = 1 WHERE enabled = 0 AND id IN ({})",
                    placeholders(1, ids.len())
                );
                let mut query = sqlx::query(&undo);
                for id in &ids {
                    query = query.bind(id.as_str());
                }
                query.execute(&app.db.pool).await?;
            }
        }
    }
    Ok(sent)
}

fn conversation_kind(kind: &str) -> &'static str {
    match kind {
        "channel" => "channel",
        "groupChat" => "group chat",
        _ => "chat",
    }
}
