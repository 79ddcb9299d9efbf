//! Several replicas on one database: the shared app-wide rate limit, one sending replica per
//! conversation, poller leader election with hand-over, and the delivery metrics at
//! `/metrics` and `/readyz`. Runs on SQLite and PostgreSQL.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m365bot::app::Application;
use m365bot::config::Settings;
use m365bot::db::{Db, now_millis};
use m365bot::metrics::Metrics;
use m365bot::notify::filter::Filter;
use m365bot::notify::outbox;
use m365bot::notify::ratelimit::{lease_slots, pause_bucket};
use m365bot::notify::sources::leader;
use m365bot::notify::store::{self, NewSubscription};
use m365bot::notify::worker::Worker;
use support::db::test_databases;
use support::notify::{
    FAST_RETRIES, Faults, LoadConnector, channel_id, channel_ref, incident, settings_toml,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

async fn subscribe_channel(db: &Db, fake: &LoadConnector, n: usize) {
    let channel = channel_id(n);
    db.upsert_conversation(&channel_ref(&channel, &fake.service_url()))
        .await
        .expect("conversation");
    store::subscribe(
        db,
        &NewSubscription {
            conversation_id: &channel,
            conversation_type: "channel",
            filter: &Filter::default(),
            user_id: "29:beth",
            user_name: None,
        },
    )
    .await
    .expect("subscribe");
}

#[tokio::test]
async fn replicas_lease_disjoint_evenly_spaced_slots_and_a_pause_holds_them_all() {
    for test in test_databases().await {
        let label = test.label;
        // Three replicas: three pools on one database, leasing at the same time.
        let mut pools = Vec::new();
        for _ in 0..3 {
            pools.push(Db::connect(&test.url, 2).await.expect("pool"));
        }
        let step_us = 20_600;
        let mut tasks = Vec::new();
        for db in pools.clone() {
            tasks.push(tokio::spawn(async move {
                let mut slots = Vec::new();
                for _ in 0..10 {
                    let (first, now) = lease_slots(&db, "teams:test", 4, step_us)
                        .await
                        .expect("lease");
                    assert!(first >= now - 1_000, "no slot in the past: {first} < {now}");
                    slots.extend((0..4).map(|n| first + n * step_us));
                }
                slots
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("lease task"));
        }
        let distinct: BTreeSet<i64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), 120, "[{label}] no slot given twice");
        let sorted: Vec<i64> = distinct.into_iter().collect();
        for pair in sorted.windows(2) {
            assert!(
                pair[1] - pair[0] >= step_us,
                "[{label}] slots {} and {} closer than one step",
                pair[0],
                pair[1]
            );
        }
        // A 429 seen by one replica pauses the others: their next slots come after it.
        pause_bucket(&pools[0], "teams:test", Duration::from_secs(30))
            .await
            .expect("pause");
        let (first, now) = lease_slots(&pools[2], "teams:test", 1, step_us)
            .await
            .expect("lease after the pause");
        assert!(
            first >= now + 29_000_000,
            "[{label}] the pause holds every replica: slot {first}, now {now}"
        );
        // Other buckets are not affected.
        let (other, now) = lease_slots(&pools[1], "teams:other", 1, step_us)
            .await
            .expect("other bucket");
        assert!(other < now + 1_000_000, "[{label}] {other} vs {now}");
    }
}

#[tokio::test]
async fn each_conversation_has_one_sending_replica_at_a_time() {
    for test in test_databases().await {
        let label = test.label;
        let fake = LoadConnector::start(Faults::default()).await;
        for n in 0..4 {
            subscribe_channel(&test.db, &fake, n).await;
        }
        for case in 0..3 {
            outbox::record_event(&test.db, &incident(case, 1, "New"))
                .await
                .expect("record");
        }
        let now = now_millis();
        let lease = now + 60_000;
        // Replica A takes two lanes (conversations 0 and 1 of case 0, by id order).
        let first = outbox::claim(&test.db, "a-0", Some("a"), now, lease, 2)
            .await
            .expect("claim a");
        let a_conversations: BTreeSet<String> =
            first.iter().map(|l| l.conversation_id.clone()).collect();
        assert_eq!(first.len(), 2, "[{label}]");
        // Replica B gets every other due lane, but none in A's conversations.
        let second = outbox::claim(&test.db, "b-0", Some("b"), now, lease, 100)
            .await
            .expect("claim b");
        assert_eq!(second.len(), 12 - 2 - 4, "[{label}] {second:?}");
        assert!(
            second
                .iter()
                .all(|l| !a_conversations.contains(&l.conversation_id)),
            "[{label}] B claimed a lane of a conversation A sends to"
        );
        // A's own second claim loop may take the rest of A's conversations.
        let again = outbox::claim(&test.db, "a-1", Some("a"), now, lease, 100)
            .await
            .expect("claim a again");
        assert_eq!(again.len(), 4, "[{label}]");
        assert!(
            again
                .iter()
                .all(|l| a_conversations.contains(&l.conversation_id)),
            "[{label}]"
        );
        // Without a sender (no per-conversation limit) claims are by lane only.
        let later = now + 120_000;
        let free = outbox::claim(&test.db, "c-0", None, later, later + 60_000, 100)
            .await
            .expect("claim without sender");
        assert_eq!(free.len(), 12, "[{label}] every lane, its lease expired");
        // After A's hold expires (A crashed), B may take A's conversations.
        let taken = outbox::claim(
            &test.db,
            "b-1",
            Some("b"),
            later + 61_000,
            later + 120_000,
            100,
        )
        .await
        .expect("claim after expiry");
        assert_eq!(taken.len(), 12, "[{label}]");
    }
}

#[tokio::test]
async fn three_replicas_with_limits_deliver_everything_exactly_once() {
    // `None` only when the run was told plainly to skip PostgreSQL.
    let Some(test) = support::db::postgres_test_db().await else {
        return;
    };
    let fake = LoadConnector::start(Faults {
        per_conversation_per_second: 7,
        global_per_second: 50,
        ..Faults::default()
    })
    .await;
    let limits = "deliver = false\nper_conversation_per_second = 7\nper_app_per_second = 50\n\
                  batch_size = 20\nconcurrency = 16\npoll_interval_ms = 10";
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(support::notify::build_app(&fake, &test.url, limits).await);
    }
    for n in 0..30 {
        subscribe_channel(&apps[0].db, &fake, n).await;
    }
    for case in 0..2 {
        outbox::record_event(&apps[0].db, &incident(case, 1, "New"))
            .await
            .expect("record");
    }
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for app in &apps {
        let worker = Worker::new(app.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move { worker.run(stop).await }));
    }
    fake.wait_for(60, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox::counts(&apps[0].db).await.expect("counts").delivered < 60 {
        assert!(Instant::now() < deadline, "outcomes not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for task in tasks {
        task.await.expect("worker");
    }
    assert_eq!(fake.delivery_count(), 60, "no message twice");
    assert_eq!(fake.unique_messages(), 60);
    let leased: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notify_rate_buckets")
        .fetch_one(&apps[0].db.pool)
        .await
        .expect("bucket");
    assert_eq!(leased, 1, "the replicas shared one bucket row");
    println!(
        "three replicas: 60 messages, {} answers 429 (rate limit)",
        fake.rate_limited()
    );
}

/// A poll that records who polled when, and returns the interval.
fn recorder(
    polls: &Arc<Mutex<Vec<(&'static str, Instant)>>>,
    name: &'static str,
    interval: Duration,
) -> impl FnMut() -> std::future::Ready<Duration> + Send + 'static {
    let polls = polls.clone();
    move || {
        polls.lock().expect("polls").push((name, Instant::now()));
        std::future::ready(interval)
    }
}

#[tokio::test]
async fn one_instance_polls_each_source_and_another_takes_over_within_two_intervals() {
    for test in test_databases().await {
        let label = test.label;
        let interval = Duration::from_millis(1_000);
        let polls: Arc<Mutex<Vec<(&'static str, Instant)>>> = Arc::default();
        let metrics_a = Arc::new(Metrics::default());
        let metrics_b = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let a = tokio::spawn(leader::run_led(
            Db::connect(&test.url, 2).await.expect("pool a"),
            metrics_a.clone(),
            "servicenow",
            interval,
            stop.clone(),
            recorder(&polls, "a", interval),
        ));
        // A leads first (a free lease is polled at once).
        let deadline = Instant::now() + Duration::from_secs(5);
        while polls.lock().expect("polls").is_empty() {
            assert!(Instant::now() < deadline, "[{label}] nobody polled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let b = tokio::spawn(leader::run_led(
            Db::connect(&test.url, 2).await.expect("pool b"),
            metrics_b.clone(),
            "servicenow",
            interval,
            stop.clone(),
            recorder(&polls, "b", interval),
        ));
        tokio::time::sleep(interval * 3).await;
        assert_eq!(metrics_a.leader("servicenow"), Some(true), "[{label}]");
        assert_eq!(metrics_b.leader("servicenow"), Some(false), "[{label}]");
        assert!(
            polls
                .lock()
                .expect("polls")
                .iter()
                .all(|(who, _)| *who == "a"),
            "[{label}] only the leader polls"
        );
        // Kill the leader: its task stops at once, its lease is not given up.
        a.abort();
        let killed = Instant::now();
        let _ = a.await;
        let (holder, _) = leader::current(
            &Db::connect(&test.url, 1).await.expect("pool"),
            "servicenow",
        )
        .await
        .expect("lease")
        .expect("the dead leader's lease is still there");
        assert!(holder.starts_with("instance-"), "[{label}] {holder}");
        let deadline = killed + interval * 2;
        loop {
            let took_over = polls
                .lock()
                .expect("polls")
                .iter()
                .find(|(who, _)| *who == "b")
                .map(|(_, at)| *at);
            if let Some(at) = took_over {
                assert!(
                    at <= deadline,
                    "[{label}] B polled {:?} after the kill, more than two intervals",
                    at - killed
                );
                break;
            }
            assert!(
                Instant::now() <= deadline,
                "[{label}] nobody took over within two intervals"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics_b.leader("servicenow"), Some(true), "[{label}]");
        tokio::time::sleep(interval).await;
        stop.cancel();
        b.await.expect("b stops");
        // Never two polls within one interval (a little slack for timer granularity).
        let polls = polls.lock().expect("polls").clone();
        for pair in polls.windows(2) {
            let gap = pair[1].1 - pair[0].1;
            assert!(
                gap >= interval.mul_f64(0.95),
                "[{label}] {} then {} polled {gap:?} apart",
                pair[0].0,
                pair[1].0
            );
        }
        // B stopped cleanly: the lease is free for the next instance.
        let db = Db::connect(&test.url, 1).await.expect("pool");
        assert!(
            leader::current(&db, "servicenow")
                .await
                .expect("read")
                .is_none(),
            "[{label}] a clean stop gives the lease up"
        );
        assert!(
            leader::try_acquire(&db, "servicenow", "next", interval)
                .await
                .expect("acquire")
        );
        assert!(
            !leader::try_acquire(&db, "servicenow", "other", interval)
                .await
                .expect("acquire")
        );
    }
}

#[tokio::test]
async fn metrics_and_readiness_show_outbox_deliveries_throttling_and_leadership() {
    let fake = LoadConnector::start(Faults {
        // One call per second per conversation: the second card of a channel gets a 429
        // with Retry-After.
        per_conversation_per_second: 1,
        ..Faults::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bot.db").display());
    let toml = settings_toml(
        &fake,
        &url,
        &format!(
            "[notifications]\n{FAST_RETRIES}\n[notifications.sources.servicenow]\npoll = true\ninterval_secs = 1\n"
        ),
    );
    let settings = Settings::from_toml_str(&toml).expect("settings");
    let application = Application::build(settings).await.expect("builds");
    let base = format!("http://{}", application.local_addr());
    let app = application.app();
    let stop = CancellationToken::new();
    let serve = stop.clone();
    tokio::spawn(async move { application.run_until_stopped(serve).await });

    for n in 0..3 {
        subscribe_channel(&app.db, &fake, n).await;
    }
    fake.remove_bot(&channel_id(2));
    // Two cases in channel 0 and 1: one card each goes through, the second gets a 429.
    for case in 0..2 {
        outbox::record_event(&app.db, &incident(case, 1, "New"))
            .await
            .expect("record");
    }
    let worker = Worker::new(app.clone());
    worker.run_once().await.expect("batch");
    let delivered_at = Instant::now();

    let client = reqwest::Client::new();
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    assert_eq!(
        value("m365bot_notify_deliveries_total{outcome=\"delivered\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        value("m365bot_notify_deliveries_total{outcome=\"dead\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        value("m365bot_notify_deliveries_total{outcome=\"throttled\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(value("m365bot_notify_throttled_total"), 2.0, "{text}");
    assert_eq!(
        value("m365bot_notify_conversation_freezes_total"),
        2.0,
        "{text}"
    );
    assert_eq!(value("m365bot_notify_app_pauses_total"), 2.0, "{text}");
    assert_eq!(value("m365bot_notify_outbox_up"), 1.0, "{text}");
    assert_eq!(value("m365bot_notify_outbox_pending"), 2.0, "{text}");
    assert!(value("m365bot_notify_outbox_oldest_pending_age_seconds") >= 0.0);
    let frozen = value("m365bot_notify_frozen_conversations");
    // The freezes last one second (the fake's Retry-After) plus 50 ms.
    if delivered_at.elapsed() < Duration::from_millis(900) {
        assert_eq!(frozen, 2.0, "{text}");
    }
    for metric in [
        "# TYPE m365bot_notify_deliveries_total counter",
        "# TYPE m365bot_notify_outbox_pending gauge",
        "# TYPE m365bot_poller_leader gauge",
    ] {
        assert!(text.contains(metric), "{metric} missing:\n{text}");
    }

    // The only instance leads its poller; /readyz and /metrics say so.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready: serde_json::Value = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("JSON");
        if ready["leaders"]["servicenow"] == true {
            assert!(ready["leaders"]["service_health"].is_null(), "{ready}");
            break;
        }
        assert!(Instant::now() < deadline, "never led: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains("m365bot_poller_leader{source=\"servicenow\"} 1"),
        "{text}"
    );
    let per_kind: HashMap<&str, usize> =
        fake.deliveries().iter().fold(HashMap::new(), |mut map, d| {
            *map.entry(d.kind).or_default() += 1;
            map
        });
    assert_eq!(per_kind.get("send"), Some(&2), "{per_kind:?}");
    stop.cancel();
}
