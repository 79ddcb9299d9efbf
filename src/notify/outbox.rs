//! The durable outbox: events and their deliveries written in one transaction, then claimed
//! by delivery workers with a lease.
//!
//! Tables (migration `0004_notify`):
//! - `notify_events`: one row per `(case_key, revision)`; a duplicate event writes nothing.
//! - `notify_lanes`: one row per (case, conversation): the root card's activity id, the
//!   count of pending deliveries, the next attempt time and the lease. A lane is the unit a
//!   worker claims, so one case in one conversation is only ever delivered by one worker at a
//!   time (root card created once, updates in order, queued updates merged).
//! - `notify_outbox`: one row per (event, subscription), unique; `pending` until it becomes
//!   `delivered`, `merged` (a later update of the same case was delivered instead) or `dead`
//!   (dead letter, with the reason).
//! - `notify_destinations`: conversations frozen until a `Retry-After` has passed.
//!
//! A lane is claimed with `UPDATE … WHERE lease_until < now … RETURNING` (on PostgreSQL the
//! candidate lanes are picked `FOR UPDATE SKIP LOCKED`, and the outer `UPDATE` re-checks the
//! lease, so two instances never hold one lane); a crashed worker's lease expires and the lane
//! is claimed again. Rows are finished with `… WHERE status = 'pending' RETURNING lane_id`, and
//! the lane's pending count is lowered by exactly the rows that changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::db::{Backend, Db, now_millis};
use crate::notify::event::CaseEvent;
use crate::notify::filter::{Filter, event_routes};

/// What recording an event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordOutcome {
    /// False when the same `(case_key, revision)` was recorded before (nothing written).
    pub new: bool,
    /// Outbox rows written (one per matching subscription).
    pub deliveries: usize,
}

/// Status of an outbox row.
pub mod status {
    /// Waiting for delivery.
    pub const PENDING: &str = "pending";
    /// Delivered.
    pub const DELIVERED: &str = "delivered";
    /// Superseded by a later update of the same case, delivered in its place.
    pub const MERGED: &str = "merged";
    /// Dead letter: not delivered, with the reason in `last_error`.
    pub const DEAD: &str = "dead";
}

/// Rows per multi-row statement, and lanes per `CASE`-batched lane update (about seven
/// parameters each). Small on SQLite, which looks `$N` parameters up linearly (binding cost
/// grows with the square of the count); large on PostgreSQL, where round trips cost more.
fn chunk_sizes(db: &Db) -> (usize, usize) {
    backend_chunk_sizes(db.backend)
}

fn backend_chunk_sizes(backend: Backend) -> (usize, usize) {
    match backend {
        Backend::Sqlite => (100, 40),
        Backend::Postgres => (500, 200),
    }
}
/// Attempts at a transaction that PostgreSQL aborted for a deadlock or serialization failure.
const TRANSACTION_ATTEMPTS: usize = 4;

/// Records `event` and one outbox row per matching subscription, atomically; a duplicate
/// event writes nothing. When several subscriptions of one conversation match, the oldest one
/// carries the delivery, so a conversation never gets the same update twice.
pub async fn record_event(db: &Db, event: &CaseEvent) -> Result<RecordOutcome, sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match record_once(db, event).await {
            Err(err) if attempt < TRANSACTION_ATTEMPTS && is_retryable_conflict(&err) => {
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
            }
            other => return other,
        }
    }
}

/// True for PostgreSQL deadlock (`40P01`) and serialization (`40001`) failures.
pub fn is_retryable_conflict(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

async fn record_once(db: &Db, event: &CaseEvent) -> Result<RecordOutcome, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    // The insert comes first: it takes the write lock (SQLite) before anything is read.
    let outcome = record_in(&mut tx, db.backend, event).await?;
    if !outcome.new {
        tx.rollback().await?;
        return Ok(outcome);
    }
    tx.commit().await?;
    if outcome.deliveries > 0 {
        db.outbox_ready.notify_waiters();
    }
    Ok(outcome)
}

/// Records `event` and its outbox rows in the caller's transaction, as [`record_event`] does;
/// the caller commits, then wakes the delivery loops (`Db::outbox_ready`) when deliveries
/// were added. On SQLite the transaction should have written already, or this insert is its
/// first write, so that nothing is read before the write lock is taken.
pub async fn record_in(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    event: &CaseEvent,
) -> Result<RecordOutcome, sqlx::Error> {
    let payload = serde_json::to_string(event)
        .map_err(|e| sqlx::Error::Protocol(format!("the event does not serialise: {e}")))?;
    let now = now_millis();
    let inserted = sqlx::query(
        "INSERT INTO notify_events (case_key, revision, number, state, source, updated_at, payload, recorded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (case_key, revision) DO NOTHING RETURNING id",
    )
    .bind(&event.case_key)
    .bind(&event.revision)
    .bind(&event.number)
    .bind(&event.state)
    .bind(event.source.as_str())
    .bind(event.updated_at.timestamp_millis())
    .bind(&payload)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(inserted) = inserted else {
        return Ok(RecordOutcome {
            new: false,
            deliveries: 0,
        });
    };
    let event_id: i64 = inserted.try_get(0)?;
    let state_changed = match &event.previous_state {
        Some(previous) => !previous.eq_ignore_ascii_case(&event.state),
        None => {
            let previous: Option<String> = sqlx::query_scalar(
                "SELECT state FROM notify_events WHERE case_key = $1 AND id <> $2 \
                 ORDER BY updated_at DESC, id DESC LIMIT 1",
            )
            .bind(&event.case_key)
            .bind(event_id)
            .fetch_optional(&mut **tx)
            .await?;
            previous.is_none_or(|previous| !previous.eq_ignore_ascii_case(&event.state))
        }
    };
    // Only the subscriptions routed under one of the event's routes can match (an index
    // lookup per route, whatever the number of subscriptions).
    let routes = event_routes(event);
    let sql = match_sql(routes.len());
    let mut query = sqlx::query(&sql);
    for route in &routes {
        query = query.bind(route);
    }
    let subscriptions = query.fetch_all(&mut **tx).await?;
    // One delivery per conversation: the oldest matching subscription carries it.
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    for row in &subscriptions {
        let id: String = row.try_get(0)?;
        let conversation_id: String = row.try_get(1)?;
        let filter_json: String = row.try_get(2)?;
        let Ok(filter) = serde_json::from_str::<Filter>(&filter_json) else {
            tracing::warn!(
                subscription = %id,
                "a stored subscription filter does not parse; it matches nothing"
            );
            continue;
        };
        if filter.matches(event, state_changed) && !targets.contains_key(&conversation_id) {
            targets.insert(conversation_id, id);
        }
    }
    let targets: Vec<(String, String)> = targets.into_iter().collect();
    for chunk in targets.chunks(backend_chunk_sizes(backend).0) {
        let lanes = upsert_lanes(tx, &event.case_key, chunk, now).await?;
        insert_rows(tx, event_id, chunk, &lanes, now).await?;
    }
    Ok(RecordOutcome {
        new: true,
        deliveries: targets.len(),
    })
}

/// The enabled subscriptions routed under any of `routes` routes (`$1…`), oldest first.
pub fn match_sql(routes: usize) -> String {
    format!(
        "SELECT s.id, s.conversation_id, s.filter_json FROM notify_subscription_routes r \
         JOIN notify_subscriptions s ON s.id = r.subscription_id \
         WHERE r.route IN ({}) AND s.enabled = 1 ORDER BY s.created_at, s.id",
        placeholders(1, routes)
    )
}

/// Creates or bumps the lanes of `case_key` in the conversations of `targets`; returns the
/// lane id per conversation.
async fn upsert_lanes(
    tx: &mut Transaction<'static, Any>,
    case_key: &str,
    targets: &[(String, String)],
    now: i64,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut sql = String::from(
        "INSERT INTO notify_lanes (case_key, conversation_id, pending_count, next_attempt_at) VALUES ",
    );
    for index in 0..targets.len() {
        if index > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("($1, ${}, 1, $2)", index + 3));
    }
    sql.push_str(
        " ON CONFLICT (case_key, conversation_id) DO UPDATE SET \
         pending_count = notify_lanes.pending_count + 1 RETURNING id, conversation_id",
    );
    let mut query = sqlx::query(&sql).bind(case_key).bind(now);
    for (conversation_id, _) in targets {
        query = query.bind(conversation_id);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|row| Ok((row.try_get::<String, _>(1)?, row.try_get::<i64, _>(0)?)))
        .collect()
}

async fn insert_rows(
    tx: &mut Transaction<'static, Any>,
    event_id: i64,
    targets: &[(String, String)],
    lanes: &HashMap<String, i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut sql = String::from(
        "INSERT INTO notify_outbox (event_id, subscription_id, lane_id, status, created_at) VALUES ",
    );
    for index in 0..targets.len() {
        if index > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "($1, ${}, ${}, 'pending', $2)",
            2 * index + 3,
            2 * index + 4
        ));
    }
    let mut query = sqlx::query(&sql).bind(event_id).bind(now);
    for (conversation_id, subscription_id) in targets {
        let lane = lanes.get(conversation_id).copied().ok_or_else(|| {
            sqlx::Error::Protocol("a lane was not returned by its upsert".to_owned())
        })?;
        query = query.bind(subscription_id).bind(lane);
    }
    query.execute(&mut **tx).await.map(drop)
}

/// One pending delivery of a claimed lane.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// Outbox row id.
    pub id: i64,
    /// The subscription that matched.
    pub subscription_id: String,
    /// Failed attempts so far.
    pub attempts: i64,
    /// The event.
    pub event: CaseEvent,
    /// `Some(reason)` when the subscription was removed or disabled since.
    pub subscription_gone: Option<String>,
}

/// A lane (one case in one conversation) claimed by a worker, with its pending rows oldest
/// update first.
#[derive(Debug, Clone)]
pub struct ClaimedLane {
    /// Lane id.
    pub id: i64,
    /// The case.
    pub case_key: String,
    /// The conversation.
    pub conversation_id: String,
    /// The root card's activity id, once posted.
    pub root_activity_id: Option<String>,
    /// `updated_at` (ms) of the update the root card shows.
    pub delivered_updated_at: i64,
    /// The state the root card shows.
    pub delivered_state: Option<String>,
    /// Pending rows, oldest update first.
    pub rows: Vec<PendingRow>,
    /// The conversation's `serviceUrl`, when a reference is stored.
    pub service_url: Option<String>,
    /// The conversation's type (`channel`, `groupChat`, `personal`), when a reference is stored.
    pub conversation_type: Option<String>,
}

/// Leases up to `$4` due lanes (`$3`: now) to `$1` until `$2`, skipping frozen conversations
/// (and, with `sender`, conversations whose sending is held by another replica than `$5`).
/// On PostgreSQL the candidates are locked `SKIP LOCKED` and passed as an id array, which
/// keeps the update on the primary key instead of a semi-join over every lane.
pub fn claim_lanes_sql(backend: Backend, sender: bool) -> String {
    let (open, close) = match backend {
        Backend::Postgres => ("= ANY (ARRAY(", " FOR UPDATE SKIP LOCKED))"),
        Backend::Sqlite => ("IN (", ")"),
    };
    let held_elsewhere = if sender {
        " OR (sender_until > $3 AND sender <> $5)"
    } else {
        ""
    };
    format!(
        "UPDATE notify_lanes SET lease_owner = $1, lease_until = $2 WHERE id {open}\
         SELECT id FROM notify_lanes WHERE pending_count > 0 AND next_attempt_at <= $3 \
         AND lease_until < $3 AND conversation_id NOT IN \
         (SELECT conversation_id FROM notify_destinations WHERE frozen_until > $3{held_elsewhere}) \
         ORDER BY next_attempt_at, id LIMIT $4{close} AND lease_until < $3 \
         RETURNING id, case_key, conversation_id, root_activity_id, delivered_updated_at, delivered_state"
    )
}

/// The pending rows of the lanes leased to `$1` until `$2`, with their events, subscriptions
/// and conversation references. The lanes come first, found by their lease (`CROSS JOIN`
/// keeps SQLite from starting at the pending rows; PostgreSQL plans it as an inner join).
pub const CLAIMED_ROWS_SQL: &str = "SELECT o.id, o.lane_id, o.subscription_id, o.attempts, e.payload, s.enabled, \
     s.disabled_reason, c.service_url, c.conversation_type FROM notify_lanes l \
     CROSS JOIN notify_outbox o JOIN notify_events e ON e.id = o.event_id \
     LEFT JOIN notify_subscriptions s ON s.id = o.subscription_id \
     LEFT JOIN conversation_refs c ON c.conversation_id = l.conversation_id \
     WHERE l.lease_owner = $1 AND l.lease_until = $2 AND o.lane_id = l.id AND o.status = 'pending' \
     ORDER BY o.lane_id, e.updated_at, o.id";

/// Claims up to `limit` due lanes for `owner` until `lease_until` (ms), with their pending
/// rows. Lanes of frozen conversations are left alone.
///
/// With `sender` (the claiming replica), every conversation has one sending replica at a time:
/// lanes of conversations another replica sends to (`notify_destinations.sender`, until
/// `sender_until`) are left alone, and the claim takes the conversations of its lanes until
/// `lease_until`, in the same transaction. Two replicas that claimed lanes of one conversation
/// at once meet on its destination row; the one that loses puts its lanes back. So the
/// per-conversation limit, kept in each process, holds across replicas.
pub async fn claim(
    db: &Db,
    owner: &str,
    sender: Option<&str>,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> Result<Vec<ClaimedLane>, sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match claim_once(db, owner, sender, now, lease_until, limit).await {
            Err(err) if attempt < TRANSACTION_ATTEMPTS && is_retryable_conflict(&err) => {
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
            }
            other => return other,
        }
    }
}

async fn claim_once(
    db: &Db,
    owner: &str,
    sender: Option<&str>,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> Result<Vec<ClaimedLane>, sqlx::Error> {
    let sql = claim_lanes_sql(db.backend, sender.is_some());
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut query = sqlx::query(&sql)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(limit);
    if let Some(sender) = sender {
        query = query.bind(sender);
    }
    // A transaction only when conversations are taken too: the plain claim is one statement.
    let mut tx = match sender {
        Some(_) => Some(db.pool.begin().await?),
        None => None,
    };
    let rows = match tx.as_mut() {
        Some(tx) => query.fetch_all(&mut **tx).await?,
        None => query.fetch_all(&db.pool).await?,
    };
    let mut lanes: Vec<ClaimedLane> = rows
        .iter()
        .map(|row| {
            Ok(ClaimedLane {
                id: row.try_get(0)?,
                case_key: row.try_get(1)?,
                conversation_id: row.try_get(2)?,
                root_activity_id: row.try_get(3)?,
                delivered_updated_at: row.try_get(4)?,
                delivered_state: row.try_get(5)?,
                rows: Vec::new(),
                service_url: None,
                conversation_type: None,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    if let (Some(sender), Some(mut tx)) = (sender, tx) {
        let held = take_conversations(&mut tx, sender, now, lease_until, &lanes).await?;
        let lost: Vec<&str> = lanes
            .iter()
            .map(|lane| lane.conversation_id.as_str())
            .filter(|conversation| !held.contains(*conversation))
            .collect();
        for chunk in lost.chunks(chunk_sizes(db).0) {
            let sql = format!(
                "UPDATE notify_lanes SET lease_owner = NULL, lease_until = 0 \
                 WHERE lease_owner = $1 AND lease_until = $2 AND conversation_id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(owner).bind(lease_until);
            for conversation in chunk {
                query = query.bind(*conversation);
            }
            query.execute(&mut *tx).await?;
        }
        lanes.retain(|lane| held.contains(&lane.conversation_id));
        tx.commit().await?;
    }
    if lanes.is_empty() {
        return Ok(lanes);
    }
    lanes.sort_by_key(|lane| lane.id);
    let index: HashMap<i64, usize> = lanes
        .iter()
        .enumerate()
        .map(|(i, lane)| (lane.id, i))
        .collect();
    // The claimed lanes' pending rows, found by this claim's owner and lease (no id list).
    let rows = sqlx::query(CLAIMED_ROWS_SQL)
        .bind(owner)
        .bind(lease_until)
        .fetch_all(&db.pool)
        .await?;
    for row in rows {
        let lane_id: i64 = row.try_get(1)?;
        let Some(&at) = index.get(&lane_id) else {
            continue;
        };
        let lane = &mut lanes[at];
        if lane.service_url.is_none() {
            lane.service_url = row.try_get(7)?;
            lane.conversation_type = row.try_get(8)?;
        }
        lane.rows.push(pending_row(&row)?);
    }
    Ok(lanes)
}

/// Makes `sender` the sending replica of the conversations of `lanes` until `until` where no
/// other replica is; returns the conversations it holds. Rows are taken in sorted order, so
/// concurrent claims cannot deadlock on them.
async fn take_conversations(
    tx: &mut Transaction<'static, Any>,
    sender: &str,
    now: i64,
    until: i64,
    lanes: &[ClaimedLane],
) -> Result<HashSet<String>, sqlx::Error> {
    let conversations: BTreeSet<&str> = lanes
        .iter()
        .map(|lane| lane.conversation_id.as_str())
        .collect();
    let conversations: Vec<&str> = conversations.into_iter().collect();
    let mut held = HashSet::with_capacity(conversations.len());
    for chunk in conversations.chunks(100) {
        let values = (0..chunk.len())
            .map(|n| format!("(${}, 0, $1, $2)", n + 4))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO notify_destinations (conversation_id, frozen_until, sender, sender_until) \
             VALUES {values} ON CONFLICT (conversation_id) DO UPDATE SET sender = excluded.sender, \
             sender_until = excluded.sender_until WHERE notify_destinations.sender = excluded.sender \
             OR notify_destinations.sender IS NULL OR notify_destinations.sender_until <= $3 \
             RETURNING conversation_id"
        );
        let mut query = sqlx::query(&sql).bind(sender).bind(until).bind(now);
        for conversation in chunk {
            query = query.bind(*conversation);
        }
        for row in query.fetch_all(&mut **tx).await? {
            held.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(held)
}

fn pending_row(row: &AnyRow) -> Result<PendingRow, sqlx::Error> {
    let payload: String = row.try_get(4)?;
    let event: CaseEvent = serde_json::from_str(&payload)
        .map_err(|e| sqlx::Error::Decode(format!("stored event: {e}").into()))?;
    let enabled: Option<i64> = row.try_get(5)?;
    let reason: Option<String> = row.try_get(6)?;
    let subscription_gone = match enabled {
        None => Some("the subscription was removed (unsubscribe)".to_owned()),
        Some(0) => Some(format!(
            "the subscription is disabled: {}",
            reason.as_deref().unwrap_or("no reason recorded")
        )),
        Some(_) => None,
    };
    Ok(PendingRow {
        id: row.try_get(0)?,
        subscription_id: row.try_get(2)?,
        attempts: row.try_get(3)?,
        event,
        subscription_gone,
    })
}

/// `$start, $start+1, …` (`count` of them).
pub fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What happened to one claimed lane.
#[derive(Debug, Clone, Default)]
pub struct LaneResult {
    /// Lane id.
    pub lane_id: i64,
    /// The conversation.
    pub conversation_id: String,
    /// Rows delivered (the latest update).
    pub delivered: Vec<i64>,
    /// Rows superseded by the delivered one.
    pub merged: Vec<i64>,
    /// Rows given up, with the reason.
    pub dead: Vec<(i64, String)>,
    /// Rows to try again; `count_attempt` says whether this try counts towards the limit.
    pub retry: Vec<i64>,
    /// Whether the retry counts as a failed attempt (not for throttling or deferral).
    pub count_attempt: bool,
    /// The error of the failed attempt, for the rows and the subscription's health.
    pub error: Option<String>,
    /// When the lane is due again (ms), for retries and deferrals.
    pub next_attempt_at: Option<i64>,
    /// A new root card (or `Some(None)` to forget a root that no longer exists).
    pub root_activity_id: Option<Option<String>>,
    /// `updated_at` (ms) and state of the update now shown.
    pub shown: Option<(i64, String)>,
    /// Freeze the conversation until then (ms), after a `Retry-After`.
    pub freeze_until: Option<i64>,
    /// The bot was removed from the conversation: disable its subscriptions with this reason.
    pub bot_removed: Option<String>,
    /// Subscriptions of the failed or dead rows (for their failure and dead-letter counts).
    pub failed_subscriptions: Vec<String>,
}

/// Writes the results of a batch in one transaction and releases the lanes held by `owner`.
/// Retried a few times when PostgreSQL reports a deadlock.
pub async fn complete(db: &Db, owner: &str, results: &[LaneResult]) -> Result<(), sqlx::Error> {
    if results.is_empty() {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match complete_once(db, owner, results).await {
            Err(err) if attempt < TRANSACTION_ATTEMPTS && is_retryable_conflict(&err) => {
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
            }
            other => return other,
        }
    }
}

async fn complete_once(db: &Db, owner: &str, results: &[LaneResult]) -> Result<(), sqlx::Error> {
    let now = now_millis();
    let mut tx = db.pool.begin().await?;
    // Finished rows, grouped by (status, reason): one statement per group.
    let mut finished: BTreeMap<(&str, Option<&str>), Vec<i64>> = BTreeMap::new();
    for result in results {
        if !result.delivered.is_empty() {
            finished
                .entry((status::DELIVERED, None))
                .or_default()
                .extend(&result.delivered);
        }
        if !result.merged.is_empty() {
            finished
                .entry((status::MERGED, None))
                .or_default()
                .extend(&result.merged);
        }
        for (id, reason) in &result.dead {
            finished
                .entry((status::DEAD, Some(reason.as_str())))
                .or_default()
                .push(*id);
        }
    }
    let mut changed_per_lane: HashMap<i64, i64> = HashMap::new();
    for ((state, reason), ids) in &finished {
        for chunk in ids.chunks(chunk_sizes(db).0) {
            let sql = finish_rows_sql(chunk.len());
            let mut query = sqlx::query(&sql).bind(*state).bind(*reason).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                *changed_per_lane
                    .entry(row.try_get::<i64, _>(0)?)
                    .or_default() += 1;
            }
        }
    }
    // Failed attempts.
    for result in results.iter().filter(|r| !r.retry.is_empty()) {
        let sql = format!(
            "UPDATE notify_outbox SET attempts = attempts + $1, last_error = COALESCE($2, last_error) \
             WHERE status = 'pending' AND id IN ({})",
            placeholders(3, result.retry.len())
        );
        let mut query = sqlx::query(&sql)
            .bind(i64::from(result.count_attempt))
            .bind(result.error.as_deref());
        for id in &result.retry {
            query = query.bind(*id);
        }
        query.execute(&mut *tx).await?;
    }
    // Lanes: pending counts lowered by what changed, roots, next attempts, leases released.
    for chunk in results.chunks(chunk_sizes(db).1) {
        update_lanes(&mut tx, owner, chunk, &changed_per_lane).await?;
    }
    // Frozen conversations.
    for result in results {
        if let Some(until) = result.freeze_until {
            sqlx::query(
                "INSERT INTO notify_destinations (conversation_id, frozen_until) VALUES ($1, $2) \
                 ON CONFLICT (conversation_id) DO UPDATE SET frozen_until = CASE \
                 WHEN excluded.frozen_until > notify_destinations.frozen_until \
                 THEN excluded.frozen_until ELSE notify_destinations.frozen_until END",
            )
            .bind(&result.conversation_id)
            .bind(until)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(reason) = &result.bot_removed {
            sqlx::query(
                "UPDATE notify_subscriptions SET enabled = 0, disabled_reason = $1, disabled_at = $2, \
                 owner_notice_due = 1 WHERE conversation_id = $3 AND enabled = 1",
            )
            .bind(reason)
            .bind(now)
            .bind(&result.conversation_id)
            .execute(&mut *tx)
            .await?;
        }
    }
    // Subscription health: failed attempts and dead letters.
    let mut health: BTreeMap<&str, (i64, i64, Option<&str>)> = BTreeMap::new();
    for result in results {
        let dead = i64::try_from(result.dead.len()).unwrap_or(i64::MAX);
        let failed = i64::from(result.count_attempt && !result.retry.is_empty() || dead > 0);
        for subscription in &result.failed_subscriptions {
            let entry = health.entry(subscription.as_str()).or_default();
            entry.0 += failed;
            entry.1 += dead;
            let reason = result
                .error
                .as_deref()
                .or_else(|| result.dead.first().map(|(_, r)| r.as_str()));
            if reason.is_some() {
                entry.2 = reason;
            }
        }
    }
    for (subscription, (failed, dead, reason)) in health {
        sqlx::query(
            "UPDATE notify_subscriptions SET failure_count = failure_count + $1, \
             dead_letter_count = dead_letter_count + $2, last_error = COALESCE($3, last_error) WHERE id = $4",
        )
        .bind(failed)
        .bind(dead)
        .bind(reason)
        .bind(subscription)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Finishes `count` pending rows by id (`$4…`) with status `$1`, error `$2` and time `$3`;
/// returns their lanes. The rows are looked up by primary key (see migration 0012).
pub fn finish_rows_sql(count: usize) -> String {
    format!(
        "UPDATE notify_outbox SET status = $1, last_error = COALESCE($2, last_error), finished_at = $3 \
         WHERE status = 'pending' AND id IN ({}) RETURNING lane_id",
        placeholders(4, count)
    )
}

/// One `UPDATE … SET x = CASE id WHEN … END` for a chunk of lanes.
async fn update_lanes(
    tx: &mut Transaction<'static, Any>,
    owner: &str,
    chunk: &[LaneResult],
    changed: &HashMap<i64, i64>,
) -> Result<(), sqlx::Error> {
    #[derive(Default)]
    struct Case {
        sql: String,
    }
    let mut n = 2; // $1 is the owner.
    let mut next = || {
        n += 1;
        format!("${}", n - 1)
    };
    let mut binds: Vec<Bind> = vec![Bind::Text(Some(owner.to_owned()))];
    let mut pending = Case::default();
    let mut root = Case::default();
    let mut shown_at = Case::default();
    let mut shown_state = Case::default();
    let mut due = Case::default();
    let mut ids = Vec::new();
    for result in chunk {
        let id = result.lane_id;
        ids.push(id);
        if let Some(count) = changed.get(&id).filter(|c| **c > 0) {
            pending
                .sql
                .push_str(&format!(" WHEN {} THEN {}", next(), next()));
            binds.push(Bind::Int(id));
            binds.push(Bind::Int(*count));
        }
        if let Some(new_root) = &result.root_activity_id {
            root.sql
                .push_str(&format!(" WHEN {} THEN {}", next(), next()));
            binds.push(Bind::Int(id));
            binds.push(Bind::Text(new_root.clone()));
        }
        if let Some((at, state)) = &result.shown {
            shown_at
                .sql
                .push_str(&format!(" WHEN {} THEN {}", next(), next()));
            binds.push(Bind::Int(id));
            binds.push(Bind::Int(*at));
            shown_state
                .sql
                .push_str(&format!(" WHEN {} THEN {}", next(), next()));
            binds.push(Bind::Int(id));
            binds.push(Bind::Text(Some(state.clone())));
        }
        if let Some(at) = result.next_attempt_at {
            due.sql
                .push_str(&format!(" WHEN {} THEN {}", next(), next()));
            binds.push(Bind::Int(id));
            binds.push(Bind::Int(at));
        }
    }
    let mut sets = vec![
        "lease_owner = CASE WHEN lease_owner = $1 THEN NULL ELSE lease_owner END".to_owned(),
        "lease_until = CASE WHEN lease_owner = $1 THEN 0 ELSE lease_until END".to_owned(),
    ];
    if !pending.sql.is_empty() {
        // Lowered by what changed, never replaced: new rows may have arrived meanwhile.
        sets.push(format!(
            "pending_count = pending_count - (CASE id{} ELSE 0 END)",
            pending.sql
        ));
    }
    for (column, case) in [
        ("root_activity_id", &root),
        ("delivered_updated_at", &shown_at),
        ("delivered_state", &shown_state),
        ("next_attempt_at", &due),
    ] {
        if !case.sql.is_empty() {
            sets.push(format!("{column} = CASE id{} ELSE {column} END", case.sql));
        }
    }
    let mut in_list = Vec::new();
    for id in &ids {
        in_list.push(next());
        binds.push(Bind::Int(*id));
    }
    let sql = format!(
        "UPDATE notify_lanes SET {} WHERE id IN ({})",
        sets.join(", "),
        in_list.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for bind in binds {
        query = match bind {
            Bind::Int(v) => query.bind(v),
            Bind::Text(v) => query.bind(v),
        };
    }
    query.execute(&mut **tx).await.map(drop)
}

enum Bind {
    Int(i64),
    Text(Option<String>),
}

/// Counts of outbox rows by status (for tests, benches and `subscriptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting.
    pub pending: i64,
    /// Delivered.
    pub delivered: i64,
    /// Merged into a later update.
    pub merged: i64,
    /// Dead letters.
    pub dead: i64,
}

/// Counts the outbox rows by status.
pub async fn counts(db: &Db) -> Result<OutboxCounts, sqlx::Error> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM notify_outbox GROUP BY status")
        .fetch_all(&db.pool)
        .await?;
    let mut counts = OutboxCounts::default();
    for row in rows {
        let state: String = row.try_get(0)?;
        let count: i64 = row.try_get(1)?;
        match state.as_str() {
            status::PENDING => counts.pending = count,
            status::DELIVERED => counts.delivered = count,
            status::MERGED => counts.merged = count,
            status::DEAD => counts.dead = count,
            _ => {}
        }
    }
    Ok(counts)
}

/// What `/metrics` reports about the outbox, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxGauges {
    /// Rows waiting for delivery.
    pub pending: i64,
    /// Creation time (ms) of the oldest waiting row.
    pub oldest_pending_at: Option<i64>,
    /// Conversations frozen by a `Retry-After` right now.
    pub frozen_conversations: i64,
}

/// Reads the outbox gauges (the pending rows through their partial index).
pub async fn gauges(db: &Db, now: i64) -> Result<OutboxGauges, sqlx::Error> {
    let (pending, oldest_pending_at): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM notify_outbox WHERE status = 'pending'",
    )
    .fetch_one(&db.pool)
    .await?;
    let frozen_conversations: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notify_destinations WHERE frozen_until > $1")
            .bind(now)
            .fetch_one(&db.pool)
            .await?;
    Ok(OutboxGauges {
        pending,
        oldest_pending_at,
        frozen_conversations,
    })
}

/// Pending rows whose lane is leased right now: the deliveries in flight.
pub async fn in_flight(db: &Db, now: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM notify_outbox o JOIN notify_lanes l ON l.id = o.lane_id \
         WHERE o.status = 'pending' AND l.lease_until >= $1",
    )
    .bind(now)
    .fetch_one(&db.pool)
    .await
}

/// Rows the retention purge deletes per statement (each its own short transaction).
pub const PURGE_CHUNK: i64 = 1_000;
/// Pause between two purge chunks, so that delivery commits interleave with the purge.
const PURGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Deletes up to `$2` rows of status `finished` (`delivered` or `merged`, written into the
/// statement so that its partial index applies) finished before `$1`, oldest first: the rows
/// are found through that index and deleted by id (on PostgreSQL through an id array, which
/// keeps the delete on the primary key instead of a semi-join).
pub fn purge_sql(backend: Backend, finished: &str) -> String {
    debug_assert!(finished == status::DELIVERED || finished == status::MERGED);
    let (open, close) = match backend {
        Backend::Sqlite => ("IN (", ")"),
        Backend::Postgres => ("= ANY (ARRAY(", "))"),
    };
    format!(
        "DELETE FROM notify_outbox WHERE id {open}SELECT id FROM notify_outbox \
         WHERE status = '{finished}' AND finished_at < $1 ORDER BY finished_at LIMIT $2{close}"
    )
}

/// Deletes delivered and merged rows finished before `before` (ms) in chunks of
/// [`PURGE_CHUNK`] rows, each its own transaction, pausing between chunks; returns how many.
pub async fn purge_finished(db: &Db, before: i64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for finished in [status::DELIVERED, status::MERGED] {
        loop {
            let done = sqlx::query(&purge_sql(db.backend, finished))
                .bind(before)
                .bind(PURGE_CHUNK)
                .execute(&db.pool)
                .await?;
            total += done.rows_affected();
            if done.rows_affected() < u64::try_from(PURGE_CHUNK).unwrap_or(u64::MAX) {
                break;
            }
            tokio::time::sleep(PURGE_PAUSE).await;
        }
    }
    Ok(total)
}

/// The latest recorded event of a case by its number (`INC0010001`) or case key.
pub async fn latest_event(db: &Db, reference: &str) -> Result<Option<CaseEvent>, sqlx::Error> {
    let payload: Option<String> = sqlx::query_scalar(
        "SELECT payload FROM notify_events WHERE number = $1 OR case_key = $1 \
         ORDER BY updated_at DESC, id DESC LIMIT 1",
    )
    .bind(reference)
    .fetch_optional(&db.pool)
    .await?;
    payload
        .map(|p| {
            serde_json::from_str(&p)
                .map_err(|e| sqlx::Error::Decode(format!("stored event: {e}").into()))
        })
        .transpose()
}
