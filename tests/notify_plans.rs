//! The hot queries of notifications use indexes, not scans, once subscriptions and history
//! are large: claiming a batch, matching an event to subscriptions, `subscriptions` in one
//! conversation, and the retention purge. Checked with the planner of each backend (SQLite
//! `EXPLAIN QUERY PLAN`, PostgreSQL `EXPLAIN`) on a history of 20,000 subscriptions and
//! 50,000 outbox rows after `ANALYZE`.
//! Runs on SQLite and PostgreSQL. Their timings at 10k/100k/1M rows are in
//! `cargo bench --bench notify_scale`.

mod support;

use m365bot::db::{Backend, Db, now_millis};
use m365bot::notify::filter::event_routes;
use m365bot::notify::{outbox, store};
use sqlx::Row;
use support::db::test_databases;
use support::notify_scale::{Scale, case_event, conversation, group, populate, subscription};

/// A value bound to a `$N` placeholder of a planned statement.
enum Value {
    Int(i64),
    Text(String),
}

/// The plan of `sql` with `values` bound, one line per plan node.
async fn plan(db: &Db, sql: &str, values: &[Value]) -> Vec<String> {
    let explain = match db.backend {
        Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
        Backend::Postgres => format!("EXPLAIN {sql}"),
    };
    let mut query = sqlx::query(&explain);
    for value in values {
        query = match value {
            Value::Int(v) => query.bind(*v),
            Value::Text(v) => query.bind(v.clone()),
        };
    }
    let rows = query.fetch_all(&db.pool).await.expect("EXPLAIN");
    rows.iter()
        .map(|row| match db.backend {
            Backend::Sqlite => row.try_get::<String, _>(3).expect("detail"),
            Backend::Postgres => row.try_get::<String, _>(0).expect("QUERY PLAN"),
        })
        .collect()
}

/// The tables that grow with subscriptions and history.
const LARGE_TABLES: [&str; 5] = [
    "notify_outbox",
    "notify_lanes",
    "notify_events",
    "notify_subscriptions",
    "notify_subscription_routes",
];

/// Panics when the plan reads a large notification table from end to end (SQLite: any table).
fn assert_no_table_scan(db: &Db, what: &str, plan: &[String]) {
    let text = plan.join("\n");
    for line in plan {
        let scans = match db.backend {
            // `SCAN t` walks the whole table (or a whole index); `SEARCH t USING INDEX` does not.
            Backend::Sqlite => line.trim_start().starts_with("SCAN "),
            // PostgreSQL rightly reads a small table (`notify_destinations`, one row per
            // throttled conversation) sequentially; the large ones must not be.
            Backend::Postgres => LARGE_TABLES
                .iter()
                .any(|table| line.contains(&format!("Seq Scan on {table} "))),
        };
        assert!(!scans, "{what} scans a table on {:?}:\n{text}", db.backend);
    }
    let uses_index = match db.backend {
        Backend::Sqlite => {
            text.contains("USING INDEX")
                || text.contains("USING COVERING INDEX")
                || text.contains("USING INTEGER PRIMARY KEY")
        }
        Backend::Postgres => text.contains("Index"),
    };
    assert!(
        uses_index,
        "{what} uses no index on {:?}:\n{text}",
        db.backend
    );
    println!("{what} ({:?}):\n{text}\n", db.backend);
}

/// Panics unless the plan reads `table` through an index (SQLite: `SEARCH`; PostgreSQL: an
/// index or bitmap scan, never `Seq Scan`), even where a sequential read would be allowed.
fn assert_searches(db: &Db, what: &str, plan: &[String], table: &str) {
    let text = plan.join("\n");
    let (searched, scanned) = match db.backend {
        Backend::Sqlite => (
            plan.iter()
                .any(|line| line.contains(&format!("SEARCH {table} USING"))),
            plan.iter()
                .any(|line| line.contains(&format!("SCAN {table}"))),
        ),
        Backend::Postgres => (
            plan.iter().any(|line| {
                line.contains(&format!("Index Scan using {table}_"))
                    || line.contains(&format!("Index Only Scan using {table}_"))
                    || line.contains(&format!("Bitmap Index Scan on {table}_"))
            }),
            plan.iter()
                .any(|line| line.contains(&format!("Seq Scan on {table}"))),
        ),
    };
    assert!(
        searched && !scanned,
        "{what}: {table} is not searched by index on {:?}:\n{text}",
        db.backend
    );
}

#[tokio::test]
async fn hot_notification_queries_use_indexes_on_a_large_history() {
    for test in test_databases().await {
        let db = &test.db;
        // Enough subscriptions that reading all of them costs PostgreSQL more than the index.
        let scale = Scale {
            subscriptions: 20_000,
            conversations: 4_000,
            groups: 1_000,
            ..Scale::for_rows(50_000)
        };
        let now = now_millis();
        populate(db, &scale, "http://127.0.0.1:9/", now - 40 * 86_400_000).await;
        let counts = outbox::counts(db).await.expect("counts");
        assert_eq!(
            (counts.pending + counts.delivered) as usize,
            scale.outbox_rows,
            "[{}] the history was written",
            test.label
        );
        assert!(counts.pending > 0 && counts.delivered > counts.pending * 10);

        // Claiming a batch: the lanes, then the claimed lanes' rows.
        let claim = plan(
            db,
            &outbox::claim_lanes_sql(db.backend, false),
            &[
                Value::Text("worker-plan".into()),
                Value::Int(now + 60_000),
                Value::Int(now),
                Value::Int(200),
            ],
        )
        .await;
        assert_no_table_scan(db, "claim (lanes)", &claim);
        // The limited path: one sending replica per conversation. Every conversation has a
        // destination row, so it must be searched by index on both backends.
        let claim_as_sender = plan(
            db,
            &outbox::claim_lanes_sql(db.backend, true),
            &[
                Value::Text("worker-plan".into()),
                Value::Int(now + 60_000),
                Value::Int(now),
                Value::Int(200),
                Value::Text("replica-plan".into()),
            ],
        )
        .await;
        assert_no_table_scan(db, "claim as the sending replica (lanes)", &claim_as_sender);
        assert_searches(
            db,
            "claim as the sending replica (destinations)",
            &claim_as_sender,
            "notify_destinations",
        );
        let rows = plan(
            db,
            outbox::CLAIMED_ROWS_SQL,
            &[Value::Text("worker-plan".into()), Value::Int(now + 60_000)],
        )
        .await;
        assert_no_table_scan(db, "claim (rows)", &rows);

        // Writing a batch's outcomes: the rows by primary key, not every pending row.
        let finish = plan(
            db,
            &outbox::finish_rows_sql(3),
            &[
                Value::Text("delivered".into()),
                Value::Text(String::new()),
                Value::Int(now),
                Value::Int(1),
                Value::Int(2),
                Value::Int(3),
            ],
        )
        .await;
        assert_no_table_scan(db, "outcomes", &finish);
        let by_id = match db.backend {
            Backend::Sqlite => "USING INTEGER PRIMARY KEY",
            Backend::Postgres => "notify_outbox_pkey",
        };
        assert!(
            finish.iter().any(|line| line.contains(by_id)),
            "outcomes are not written by row id on {:?}:\n{}",
            db.backend,
            finish.join("\n")
        );

        // Matching an event to subscriptions.
        let event = case_event(1, 1, &group(7));
        let routes = event_routes(&event);
        let values: Vec<Value> = routes.iter().map(|r| Value::Text(r.clone())).collect();
        let matching = plan(db, &outbox::match_sql(routes.len()), &values).await;
        assert_no_table_scan(db, "match", &matching);

        // `subscriptions` in one conversation.
        let list = plan(db, store::LIST_SQL, &[Value::Text(conversation(3))]).await;
        assert_no_table_scan(db, "subscriptions (list)", &list);
        let ids: Vec<Value> = (0..5)
            .map(|n| Value::Text(subscription(3 + n * scale.conversations)))
            .collect();
        let health = plan(db, &store::list_health_sql(ids.len()), &ids).await;
        assert_no_table_scan(db, "subscriptions (health)", &health);

        // The retention purge: one bounded chunk.
        let purge = plan(
            db,
            &outbox::purge_sql(db.backend, outbox::status::DELIVERED),
            &[
                Value::Int(now - 30 * 86_400_000),
                Value::Int(outbox::PURGE_CHUNK),
            ],
        )
        .await;
        assert_no_table_scan(db, "purge", &purge);
        assert!(
            purge
                .iter()
                .any(|line| line.contains("notify_outbox_delivered_at")),
            "the purge does not use its partial index on {:?}:\n{}",
            db.backend,
            purge.join("\n")
        );

        // And they do what they say on this history.
        let conversation_subscriptions = store::list(db, &conversation(3)).await.expect("list");
        assert_eq!(conversation_subscriptions.len(), 5, "[{}]", test.label);
        let recorded = outbox::record_event(db, &case_event(scale.cases() + 1, 1, &group(7)))
            .await
            .expect("record");
        assert_eq!(
            recorded.deliveries,
            scale.subscriptions / scale.groups,
            "[{}] one delivery per subscription of the group",
            test.label
        );
        let purged = outbox::purge_finished(db, now - 30 * 86_400_000)
            .await
            .expect("purge");
        assert_eq!(purged as i64, counts.delivered, "[{}]", test.label);
        let after = outbox::counts(db).await.expect("counts");
        assert_eq!(after.delivered, 0);
        assert_eq!(
            after.pending,
            counts.pending + recorded.deliveries as i64,
            "[{}] the purge kept every pending row",
            test.label
        );
    }
}
