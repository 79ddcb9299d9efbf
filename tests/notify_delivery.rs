//! Notification delivery: the outbox (dedupe, routing), the worker (root card, thread replies,
//! merging, Retry-After, bot removed, dead letters) and its reliability under failures and
//! with two workers on one database. Runs on SQLite and PostgreSQL.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use m365bot::app::App;
use m365bot::db::Db;
use m365bot::notify::filter::Filter;
use m365bot::notify::outbox::{self, OutboxCounts};
use m365bot::notify::store::{self, NewSubscription, SubscribeOutcome};
use m365bot::notify::worker::Worker;
use sqlx::Row;
use support::db::test_databases;
use support::notify::{
    FAST_RETRIES, Faults, LoadConnector, build_app, channel_id, channel_ref, incident, personal_ref,
};

async fn subscribe(db: &Db, conversation: &str, filter: &str, user: &str) -> String {
    let filter = Filter::parse(filter).expect("valid filter");
    match store::subscribe(
        db,
        &NewSubscription {
            conversation_id: conversation,
            conversation_type: "channel",
            filter: &filter,
            user_id: user,
            user_name: Some("Beth Anglin"),
        },
    )
    .await
    .expect("subscribe")
    {
        SubscribeOutcome::Created(id) => id,
        other => panic!("expected a new subscription, got {other:?}"),
    }
}

/// Runs `worker` until nothing is pending (panics after a minute).
async fn drain(app: &App, worker: &Worker) -> OutboxCounts {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let claimed = worker.run_once().await.expect("worker batch");
        let counts = outbox::counts(&app.db).await.expect("counts");
        if counts.pending == 0 {
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain: {counts:?}"
        );
        if claimed == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn duplicate_events_write_nothing_and_routing_follows_filters() {
    for test in test_databases().await {
        let db = &test.db;
        let label = test.label;
        subscribe(db, "19:a@thread.tacv2", "", "29:beth").await;
        // Two matching subscriptions in one conversation: still one delivery there.
        subscribe(db, "19:a@thread.tacv2", "priority=2", "29:beth").await;
        subscribe(db, "19:b@thread.tacv2", "source=service_health", "29:beth").await;
        subscribe(
            db,
            "19:c@thread.tacv2",
            "group=\"Service Desk\" changes-only",
            "29:beth",
        )
        .await;

        let first = incident(1, 1, "New");
        let recorded = outbox::record_event(db, &first).await.expect("record");
        assert_eq!(
            (recorded.new, recorded.deliveries),
            (true, 2),
            "[{label}] a and c (a new case counts as a change)"
        );
        // Push and poll both see the same update: the second write is a no-op.
        let again = outbox::record_event(db, &first)
            .await
            .expect("record again");
        assert_eq!((again.new, again.deliveries), (false, 0), "[{label}]");

        // Same state again: changes-only skips it.
        let same_state = incident(1, 2, "New");
        let recorded = outbox::record_event(db, &same_state).await.expect("record");
        assert_eq!(recorded.deliveries, 1, "[{label}] only a");
        let changed = incident(1, 3, "In Progress");
        let recorded = outbox::record_event(db, &changed).await.expect("record");
        assert_eq!(recorded.deliveries, 2, "[{label}] a and c");

        let counts = outbox::counts(db).await.expect("counts");
        assert_eq!(counts.pending, 5, "[{label}]");
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notify_events")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(events, 3, "[{label}]");
    }
}

#[tokio::test]
async fn one_root_card_per_case_updated_in_place_with_replies_and_merged_storms() {
    for test in test_databases().await {
        let label = test.label;
        let fake = LoadConnector::start(Faults {
            record_bodies: true,
            ..Faults::default()
        })
        .await;
        let app = build_app(&fake, &test.url, FAST_RETRIES).await;
        let worker = Worker::new(app.clone());
        let channel = channel_id(1);
        app.db
            .upsert_conversation(&channel_ref(&channel, &fake.service_url()))
            .await
            .expect("conversation");
        subscribe(&app.db, &channel, "", "29:beth").await;

        outbox::record_event(&app.db, &incident(7, 1, "New"))
            .await
            .expect("record");
        let counts = drain(&app, &worker).await;
        assert_eq!(counts.delivered, 1, "[{label}]");
        let sent = fake.deliveries();
        assert_eq!(sent.len(), 1, "[{label}]");
        assert_eq!(
            sent[0].kind, "send",
            "[{label}] a new thread in the channel"
        );
        assert_eq!(sent[0].conversation_id, channel, "[{label}]");
        let root = sent[0].answered_id.clone();
        let body = sent[0].body.clone().expect("body");
        let card = &body["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard", "[{label}]");
        assert_eq!(card["body"][0]["items"][3]["text"], "New", "[{label}]");
        assert_eq!(body["summary"], "INC0010007: New", "[{label}]");

        // A storm: four updates queue before the worker runs; one delivery of the latest.
        for (revision, state) in [
            (2, "In Progress"),
            (3, "On Hold"),
            (4, "In Progress"),
            (5, "Resolved"),
        ] {
            outbox::record_event(&app.db, &incident(7, revision, state))
                .await
                .expect("record");
        }
        let counts = drain(&app, &worker).await;
        assert_eq!(
            (counts.delivered, counts.merged),
            (2, 3),
            "[{label}] the latest delivered, three merged"
        );
        let sent = fake.deliveries();
        assert_eq!(sent.len(), 3, "[{label}] update + reply");
        assert_eq!(sent[1].kind, "update", "[{label}]");
        assert_eq!(
            sent[1].activity_id.as_deref(),
            Some(root.as_str()),
            "[{label}]"
        );
        let updated = &sent[1].body.as_ref().expect("body")["attachments"][0]["content"];
        assert_eq!(
            updated["body"][0]["items"][3]["text"], "Resolved",
            "[{label}]"
        );
        // Teams ignores the reply target of `POST …/activities/{root}` in a channel: the reply
        // goes to the thread's own conversation id.
        assert_eq!(sent[2].kind, "send", "[{label}]");
        assert_eq!(
            sent[2].conversation_id,
            format!("{channel};messageid={root}"),
            "[{label}] in the thread"
        );
        let reply = &sent[2].body.as_ref().expect("body")["attachments"][0]["content"];
        assert_eq!(reply["body"][0]["text"], "INC0010007", "[{label}]");
        assert_eq!(reply["body"][1]["text"], "resolved (Resolved)", "[{label}]");
        assert_eq!(
            reply["body"][4]["text"], "includes 3 earlier updates",
            "[{label}] {reply}"
        );

        // An update older than the one shown is merged, not posted.
        outbox::record_event(&app.db, &incident(7, 0, "Draft"))
            .await
            .expect("record");
        let counts = drain(&app, &worker).await;
        assert_eq!(counts.merged, 4, "[{label}]");
        assert_eq!(fake.delivery_count(), 3, "[{label}]");
        let root_stored: Option<String> = sqlx::query_scalar(
            "SELECT root_activity_id FROM notify_lanes WHERE conversation_id = $1",
        )
        .bind(&channel)
        .fetch_one(&app.db.pool)
        .await
        .expect("lane");
        assert_eq!(root_stored.as_deref(), Some(root.as_str()), "[{label}]");
    }
}

#[tokio::test]
async fn retry_after_freezes_the_conversation_and_bot_removed_disables_and_tells_the_subscriber() {
    for test in test_databases().await {
        let label = test.label;
        let fake = LoadConnector::start(Faults::default()).await;
        let app = build_app(&fake, &test.url, FAST_RETRIES).await;
        let worker = Worker::new(app.clone());
        let frozen = channel_id(1);
        let removed = channel_id(2);
        for channel in [&frozen, &removed] {
            app.db
                .upsert_conversation(&channel_ref(channel, &fake.service_url()))
                .await
                .expect("conversation");
        }
        subscribe(&app.db, &frozen, "", "29:beth").await;
        subscribe(&app.db, &removed, "", "29:fred").await;

        // Every call above one per second per conversation gets 429 Retry-After: 1.
        fake.set_faults(Faults {
            per_conversation_per_second: 1,
            ..Faults::default()
        });
        fake.remove_bot(&removed);
        for n in 1..=2 {
            outbox::record_event(&app.db, &incident(n, 1, "New"))
                .await
                .expect("record");
        }
        let counts = drain(&app, &worker).await;
        assert_eq!(
            counts.delivered, 2,
            "[{label}] both cases reach the frozen channel"
        );
        assert_eq!(
            counts.dead, 2,
            "[{label}] nothing reaches the removed channel"
        );
        assert_eq!(
            fake.rate_limited(),
            1,
            "[{label}] one 429, then the freeze held"
        );
        let frozen_until: i64 = sqlx::query_scalar(
            "SELECT frozen_until FROM notify_destinations WHERE conversation_id = $1",
        )
        .bind(&frozen)
        .fetch_one(&app.db.pool)
        .await
        .expect("the conversation was frozen");
        assert!(frozen_until > 0, "[{label}]");
        let attempts: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(attempts), 0) FROM notify_outbox")
                .fetch_one(&app.db.pool)
                .await
                .expect("attempts");
        assert_eq!(attempts, 0, "[{label}] throttling is not a failed attempt");

        // The removed channel's subscription is disabled with the reason, visible in the list.
        let list = store::list(&app.db, &removed).await.expect("list");
        assert!(!list[0].enabled, "[{label}]");
        assert!(
            list[0]
                .disabled_reason
                .as_deref()
                .is_some_and(|r| r.contains("BotNotInConversationRoster")),
            "[{label}] {list:?}"
        );
        assert_eq!(list[0].dead_letters, 2, "[{label}]");
        // Later events do not go there any more.
        let recorded = outbox::record_event(&app.db, &incident(3, 1, "New"))
            .await
            .expect("record");
        assert_eq!(recorded.deliveries, 1, "[{label}]");
        drain(&app, &worker).await;

        // The subscriber has no 1:1 chat yet: the notice waits; once it exists, it is sent once.
        assert_eq!(
            store::send_owner_notices(&app).await.expect("notices"),
            0,
            "[{label}]"
        );
        app.db
            .upsert_conversation(&personal_ref("a:fred", "29:fred", &fake.service_url()))
            .await
            .expect("personal chat");
        assert_eq!(
            store::send_owner_notices(&app).await.expect("notices"),
            1,
            "[{label}]"
        );
        assert_eq!(
            store::send_owner_notices(&app).await.expect("notices"),
            0,
            "[{label}] only once"
        );
        let notice = fake
            .deliveries()
            .into_iter()
            .find(|d| d.conversation_id == "a:fred")
            .expect("notice delivered to the 1:1 chat");
        assert_eq!(notice.summary, "Notifications stopped", "[{label}]");
    }
}

#[tokio::test]
async fn permanent_errors_and_removed_subscriptions_become_dead_letters_with_reasons() {
    for test in test_databases().await {
        let label = test.label;
        let fake = LoadConnector::start(Faults::default()).await;
        let app = build_app(&fake, &test.url, FAST_RETRIES).await;
        let worker = Worker::new(app.clone());
        let channel = channel_id(1);
        // No conversation reference stored for this channel.
        subscribe(&app.db, &channel, "", "29:beth").await;
        let gone = channel_id(2);
        app.db
            .upsert_conversation(&channel_ref(&gone, &fake.service_url()))
            .await
            .expect("conversation");
        subscribe(&app.db, &gone, "", "29:beth").await;
        outbox::record_event(&app.db, &incident(1, 1, "New"))
            .await
            .expect("record");
        assert_eq!(
            store::unsubscribe(&app.db, &gone)
                .await
                .expect("unsubscribe"),
            1
        );
        let counts = drain(&app, &worker).await;
        assert_eq!(counts.dead, 2, "[{label}]");
        let reasons: Vec<String> =
            sqlx::query("SELECT last_error FROM notify_outbox WHERE status = 'dead' ORDER BY id")
                .fetch_all(&app.db.pool)
                .await
                .expect("dead letters")
                .iter()
                .map(|r| {
                    r.try_get::<Option<String>, _>(0)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                })
                .collect();
        assert!(
            reasons[0].contains("no stored reference"),
            "[{label}] {reasons:?}"
        );
        assert!(
            reasons[1].contains("removed (unsubscribe)"),
            "[{label}] {reasons:?}"
        );
        assert_eq!(fake.delivery_count(), 0, "[{label}]");
    }
}

/// A size from the environment (for `scripts/notify-reliability.sh`), or `default`.
fn scale(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records `cases` new cases for `conversations` channels (each case to every channel).
async fn fan_out(app: &App, fake: &LoadConnector, conversations: usize, cases: usize) {
    for n in 0..conversations {
        let channel = channel_id(n);
        app.db
            .upsert_conversation(&channel_ref(&channel, &fake.service_url()))
            .await
            .expect("conversation");
        subscribe(&app.db, &channel, "", "29:beth").await;
    }
    for case in 0..cases {
        let recorded = outbox::record_event(&app.db, &incident(case, 1, "New"))
            .await
            .expect("record");
        assert_eq!(recorded.deliveries, conversations);
    }
}

#[tokio::test]
async fn a_failing_connector_still_gets_every_message_and_nothing_is_dead_lettered() {
    for test in test_databases().await {
        let label = test.label;
        let fake = LoadConnector::start(Faults {
            server_error: 0.30,
            throttle: 0.10,
            slow: 0.02,
            slow_delay: Duration::from_millis(400),
            ..Faults::default()
        })
        .await;
        let app = build_app(
            &fake,
            &test.url,
            &FAST_RETRIES.replace("send_timeout_ms = 2000", "send_timeout_ms = 200"),
        )
        .await;
        let worker = Worker::new(app.clone());
        let cases = scale("NOTIFY_FLAKY_CASES", 15);
        fan_out(&app, &fake, 20, cases).await;
        let counts = drain(&app, &worker).await;
        let total = 20 * cases;
        assert_eq!(counts.delivered, total as i64, "[{label}] {counts:?}");
        assert_eq!(counts.dead, 0, "[{label}]");
        assert_eq!(
            fake.unique_messages(),
            total,
            "[{label}] every message arrived"
        );
        let (server_errors, throttled, _, slow, _) = fake.failures();
        assert!(
            server_errors > 0 && throttled > 0 && slow > 0,
            "[{label}] faults were served"
        );
        // Duplicates only come from answers that arrived after the client gave up.
        let duplicates = fake.delivery_count() - fake.unique_messages();
        assert!(
            u64::try_from(duplicates).expect("count") <= slow,
            "[{label}] {duplicates} duplicates, {slow} slow answers"
        );
        println!(
            "[{label}] faults: 503={server_errors} 429={throttled} slow={slow}; duplicates {duplicates}"
        );
    }
}

#[tokio::test]
async fn two_workers_with_separate_pools_on_postgres_deliver_each_message_exactly_once() {
    // `None` only when the run was told plainly to skip PostgreSQL (the helper prints a note
    // and scripts/test.sh a banner); without either it panics with instructions.
    let Some(test) = support::db::postgres_test_db().await else {
        return;
    };
    let fake = LoadConnector::start(Faults::default()).await;
    let first = build_app(&fake, &test.url, FAST_RETRIES).await;
    let second = build_app(&fake, &test.url, FAST_RETRIES).await;
    let cases = scale("NOTIFY_TWO_WORKER_CASES", 10);
    let total = 50 * cases;
    fan_out(&first, &fake, 50, cases).await;
    let workers = [
        Arc::new(Worker::new(first.clone())),
        Arc::new(Worker::new(second.clone())),
    ];
    let mut tasks = Vec::new();
    for worker in &workers {
        let worker = worker.clone();
        let app = first.clone();
        tasks.push(tokio::spawn(async move { drain(&app, &worker).await }));
    }
    for task in tasks {
        task.await.expect("worker task");
    }
    let counts = outbox::counts(&first.db).await.expect("counts");
    assert_eq!(counts.delivered, total as i64, "{counts:?}");
    assert_eq!(fake.delivery_count(), total, "no message twice");
    assert_eq!(fake.unique_messages(), total);
    let per_conversation: HashMap<String, usize> =
        fake.deliveries().iter().fold(HashMap::new(), |mut map, d| {
            *map.entry(d.conversation_id.clone()).or_default() += 1;
            map
        });
    assert!(per_conversation.values().all(|n| *n == cases));
    let roots: HashSet<String> = fake
        .deliveries()
        .iter()
        .map(|d| d.answered_id.clone())
        .collect();
    assert_eq!(roots.len(), total);
    println!(
        "two workers on postgres: {total} messages, {} connector calls, {} duplicates",
        fake.delivery_count(),
        fake.delivery_count() - fake.unique_messages()
    );
}
