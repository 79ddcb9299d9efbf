//! A large notification history, written fast: subscriptions over many conversations, their
//! routes, events, lanes and outbox rows (most delivered), for the plan tests and the cost
//! bench.
//!
//! Self-contained on purpose (only crate and dependency paths): `benches/notify_scale.rs`
//! includes this file by path. Values are generated here (ids, numbers, fixed words), never
//! taken from input, so they are written as SQL literals in multi-row `INSERT`s of one
//! transaction (binding hundreds of thousands of parameters would cost more than the writes).
#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use m365bot::db::{Backend, Db};
use m365bot::notify::event::{CaseEvent, EventSource};
use m365bot::notify::filter::Filter;

/// The shape of a history.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Outbox rows.
    pub outbox_rows: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Conversations the subscriptions are spread over.
    pub conversations: usize,
    /// Assignment groups; each subscription filters on one (`group=G<n>`).
    pub groups: usize,
    /// Subscriptions each event was delivered through.
    pub fan_out: usize,
    /// Events per case.
    pub revisions: usize,
    /// Share of cases (per thousand) whose deliveries are still pending.
    pub pending_per_mille: usize,
}

impl Scale {
    /// `outbox_rows` rows; a tenth as many subscriptions over a fifth as many conversations
    /// (100,000 subscriptions in 20,000 conversations at 1,000,000 rows), 20 subscriptions per
    /// group, each event delivered through 100 subscriptions, 5 events per case, 1% of the
    /// cases pending (at least 2).
    pub fn for_rows(outbox_rows: usize) -> Self {
        let subscriptions = (outbox_rows / 10).max(500);
        Self {
            outbox_rows,
            subscriptions,
            conversations: (subscriptions / 5).max(100),
            groups: (subscriptions / 20).max(1),
            fan_out: 100,
            revisions: 5,
            pending_per_mille: 10,
        }
    }

    /// Cases in the history.
    pub fn cases(&self) -> usize {
        (self.outbox_rows / (self.fan_out * self.revisions)).max(1)
    }

    /// The group subscription `n` filters on: 20 consecutive subscriptions (in 20 different
    /// conversations) share one.
    pub fn group_of(&self, n: usize) -> usize {
        (n / (self.subscriptions / self.groups).max(1)).min(self.groups - 1)
    }

    /// Cases whose deliveries are pending (the last ones); at least 2, so that a claim of 200
    /// lanes finds 200 at every size.
    pub fn pending_cases(&self) -> usize {
        (self.cases() * self.pending_per_mille / 1000).max(2)
    }
}

/// Conversation id number `n` of the history.
pub fn conversation(n: usize) -> String {
    format!("19:scale-{n}@thread.tacv2")
}

/// Subscription id number `n`.
pub fn subscription(n: usize) -> String {
    format!("sub-scale-{n:08}")
}

/// Assignment group number `n`.
pub fn group(n: usize) -> String {
    format!("G{n}")
}

/// A ServiceNow incident update of `case` assigned to `group`.
pub fn case_event(case: usize, revision: usize, group: &str) -> CaseEvent {
    CaseEvent {
        source: EventSource::ServiceNow,
        case_key: format!("servicenow:incident:{case:032x}"),
        revision: revision.to_string(),
        number: format!("INC{:07}", 1_000_000 + case),
        title: format!("Scale case {case}"),
        state: if revision == 1 { "New" } else { "In Progress" }.to_owned(),
        previous_state: None,
        priority: Some("3 - Moderate".to_owned()),
        service: Some("Exchange Online".to_owned()),
        assignment_group: Some(group.to_owned()),
        microsoft_case: None,
        url: None,
        latest_note: Some(format!("Update {revision}.")),
        resolved: false,
        updated_at: Utc
            .timestamp_millis_opt(1_764_000_000_000 + (case * 100 + revision) as i64 * 1_000)
            .single()
            .expect("valid time"),
    }
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Rows per `INSERT` statement.
const ROWS_PER_STATEMENT: usize = 500;

/// Collects `VALUES` tuples and writes them in multi-row statements.
struct Inserter<'t> {
    tx: &'t mut sqlx::Transaction<'static, sqlx::Any>,
    head: String,
    values: Vec<String>,
}

impl Inserter<'_> {
    async fn push(&mut self, tuple: String) {
        self.values.push(tuple);
        if self.values.len() >= ROWS_PER_STATEMENT {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if self.values.is_empty() {
            return;
        }
        let sql = format!("{} VALUES {}", self.head, self.values.join(","));
        sqlx::query(&sql)
            .execute(&mut **self.tx)
            .await
            .unwrap_or_else(|e| panic!("bulk insert ({}): {e}", self.head));
        self.values.clear();
    }
}

/// Writes the history of `scale` into an empty, migrated database in one transaction (the
/// conversations' references at `service_url`); the delivered rows finished at `finished_at`
/// (ms). Then refreshes the planner statistics.
pub async fn populate(db: &Db, scale: &Scale, service_url: &str, finished_at: i64) {
    let mut tx = db.pool.begin().await.expect("begin");
    let now = finished_at;
    let mut rows = Inserter {
        tx: &mut tx,
        head: "INSERT INTO notify_subscriptions (id, conversation_id, conversation_type, \
               filter_text, filter_json, created_by, created_at)"
            .to_owned(),
        values: Vec::new(),
    };
    for n in 0..scale.subscriptions {
        let filter = Filter {
            groups: vec![group(scale.group_of(n))],
            ..Filter::default()
        };
        let json = serde_json::to_string(&filter).expect("filter json");
        rows.push(format!(
            "({}, {}, 'channel', {}, {}, '29:scale', {})",
            literal(&subscription(n)),
            literal(&conversation(n % scale.conversations)),
            literal(&filter.to_text()),
            literal(&json),
            now + n as i64
        ))
        .await;
    }
    rows.flush().await;
    rows.head = "INSERT INTO notify_subscription_routes (route, subscription_id)".to_owned();
    for n in 0..scale.subscriptions {
        let route = format!("group:{}", group(scale.group_of(n)).to_ascii_lowercase());
        rows.push(format!(
            "({}, {})",
            literal(&route),
            literal(&subscription(n))
        ))
        .await;
    }
    rows.flush().await;
    // The bot's reference of every conversation.
    rows.head = "INSERT INTO conversation_refs (conversation_id, platform, service_url, \
                 tenant_id, conversation_type, team_id, channel_id, bot_id, updated_at)"
        .to_owned();
    for n in 0..scale.conversations {
        rows.push(format!(
            "({id}, 'msteams', {url}, 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee', 'channel', \
             '19:team@thread.tacv2', {id}, '28:scale-bot', {now})",
            id = literal(&conversation(n)),
            url = literal(service_url),
        ))
        .await;
    }
    rows.flush().await;
    // Every conversation was sent to by a replica (its hold is over); a quarter of them were
    // throttled once (their freeze is over).
    rows.head = "INSERT INTO notify_destinations (conversation_id, frozen_until, sender, \
                 sender_until)"
        .to_owned();
    for n in 0..scale.conversations {
        let frozen_until = if n % 4 == 0 { finished_at } else { 0 };
        rows.push(format!(
            "({}, {frozen_until}, 'replica-gone', {finished_at})",
            literal(&conversation(n))
        ))
        .await;
    }
    rows.flush().await;
    let cases = scale.cases();
    let first_pending = cases - scale.pending_cases();
    rows.head = "INSERT INTO notify_events (id, case_key, revision, number, state, source, \
                 updated_at, payload, recorded_at)"
        .to_owned();
    for case in 0..cases {
        for revision in 1..=scale.revisions {
            let event = case_event(case, revision, &group(case % scale.groups));
            let id = case * scale.revisions + revision;
            rows.push(format!(
                "({id}, {}, {}, {}, {}, 'servicenow', {}, {}, {now})",
                literal(&event.case_key),
                literal(&event.revision),
                literal(&event.number),
                literal(&event.state),
                event.updated_at.timestamp_millis(),
                literal(&serde_json::to_string(&event).expect("event json")),
            ))
            .await;
        }
    }
    rows.flush().await;
    rows.head = "INSERT INTO notify_lanes (id, case_key, conversation_id, root_activity_id, \
                 delivered_updated_at, delivered_state, pending_count, next_attempt_at)"
        .to_owned();
    for case in 0..cases {
        let pending = case >= first_pending;
        let last = case_event(case, scale.revisions, "");
        for j in 0..scale.fan_out {
            let lane = case * scale.fan_out + j + 1;
            let sub = (case * scale.fan_out + j) % scale.subscriptions;
            let tuple = if pending {
                format!(
                    "({lane}, {}, {}, NULL, 0, NULL, {}, 0)",
                    literal(&last.case_key),
                    literal(&conversation(sub % scale.conversations)),
                    scale.revisions
                )
            } else {
                format!(
                    "({lane}, {}, {}, '1:root-{lane}', {}, 'In Progress', 0, 0)",
                    literal(&last.case_key),
                    literal(&conversation(sub % scale.conversations)),
                    last.updated_at.timestamp_millis()
                )
            };
            rows.push(tuple).await;
        }
    }
    rows.flush().await;
    rows.head = "INSERT INTO notify_outbox (id, event_id, subscription_id, lane_id, status, \
                 created_at, finished_at)"
        .to_owned();
    let mut id = 0;
    for case in 0..cases {
        let pending = case >= first_pending;
        for revision in 1..=scale.revisions {
            let event_id = case * scale.revisions + revision;
            for j in 0..scale.fan_out {
                id += 1;
                let lane = case * scale.fan_out + j + 1;
                let sub = subscription((case * scale.fan_out + j) % scale.subscriptions);
                rows.push(if pending {
                    format!(
                        "({id}, {event_id}, {}, {lane}, 'pending', {now}, NULL)",
                        literal(&sub)
                    )
                } else {
                    format!(
                        "({id}, {event_id}, {}, {lane}, 'delivered', {now}, {finished_at})",
                        literal(&sub)
                    )
                })
                .await;
            }
        }
    }
    rows.flush().await;
    if db.backend == Backend::Postgres {
        // Explicit ids leave the identity sequences behind.
        for table in ["notify_events", "notify_lanes", "notify_outbox"] {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            ))
            .execute(&mut *tx)
            .await
            .expect("sequence");
        }
    }
    tx.commit().await.expect("commit the history");
    sqlx::query("ANALYZE")
        .execute(&db.pool)
        .await
        .expect("ANALYZE");
}
