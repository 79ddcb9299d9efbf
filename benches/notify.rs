//! Notification delivery benchmark: 10,000 notifications (10 cases × 1,000 channels) through a
//! fake Bot Connector on loopback, outbox durable in SQLite and PostgreSQL.
//!
//! 1. No connector limit (bot limits off): deliveries per second, 3 runs on fresh databases,
//!    median and spread. A delivery counts once its outcome is committed: the clock stops when
//!    the outbox has no pending row left (claims and status updates are batched; every
//!    outcome is committed before the next batch).
//! 2. The fake enforces Teams' limits (50 calls/s per app, 7 calls/s per conversation, sliding
//!    one-second windows, 429 above them) and the bot runs with the same limits: the achieved
//!    rate against the allowed one, and the 429s received (should be zero).
//!
//! The header names the databases' durability settings (read from them), cores, the measured
//! process and the load. Run: `cargo bench --bench notify` (PostgreSQL when
//! `TEST_POSTGRES_URL` names a server where the role may create databases;
//! `scripts/bench-postgres.sh notify` starts one with the production durability settings).
//! `NOTIFY_BENCH_RUNS` changes the number of runs (default 3), `NOTIFY_BENCH_LIMITED=<n>` the
//! size of the limited run (default 1,000 notifications, about 20 s).

#[path = "support/conditions.rs"]
mod conditions;
#[path = "../tests/support/db.rs"]
#[allow(dead_code)]
mod db_support;
#[path = "../tests/support/notify.rs"]
mod notify_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use m365bot::app::App;
use m365bot::notify::filter::Filter;
use m365bot::notify::outbox;
use m365bot::notify::store::{self, NewSubscription};
use m365bot::notify::worker::Worker;
use notify_support::{Faults, LoadConnector, build_app, channel_id, channel_ref, incident};

const CONVERSATIONS: usize = 1_000;
const CASES: usize = 10;

#[tokio::main]
async fn main() {
    let postgres = std::env::var(db_support::POSTGRES_URL_VAR).is_ok_and(|v| !v.trim().is_empty());
    let mut labels = vec!["sqlite"];
    {
        let probe = db_support::sqlite_test_db().await;
        let pg = if postgres {
            db_support::postgres_test_db().await
        } else {
            None
        };
        let mut shown = vec![&probe.db];
        if let Some(pg) = &pg {
            shown.push(&pg.db);
            labels.push("postgres");
        }
        conditions::print_header(
            "notify: delivery throughput and Teams' limits",
            "this bench process (delivery worker, fake connector and bench in one process)",
            &shown,
        )
        .await;
        if !postgres {
            println!(
                "   PostgreSQL skipped: set TEST_POSTGRES_URL (or run scripts/bench-postgres.sh)"
            );
        }
    }
    let runs = knob("NOTIFY_BENCH_RUNS", 3).max(1);

    println!(
        "\n1. {CASES} cases x {CONVERSATIONS} channels = {} notifications, no connector limit; {runs} runs",
        CASES * CONVERSATIONS
    );
    println!(
        "{:>9} {:>4} {:>9} {:>10} {:>13} {:>10} {:>11}",
        "backend", "run", "record s", "deliver s", "deliveries/s", "calls", "duplicates"
    );
    for label in &labels {
        let mut rates = Vec::new();
        for run in 1..=runs {
            let test = if *label == "postgres" {
                db_support::postgres_test_db()
                    .await
                    .expect("TEST_POSTGRES_URL")
            } else {
                db_support::sqlite_test_db().await
            };
            rates.push(unlimited(label, run, &test.url).await);
        }
        let (median, low, high) = conditions::median_and_spread(&mut rates);
        println!(
            "{label:>9} median {median:.0} deliveries/s over {runs} runs (spread {low:.0}-{high:.0}); load {}",
            conditions::load()
        );
    }

    if std::env::var("NOTIFY_BENCH_SKIP_LIMITED").as_deref() == Ok("1") {
        return;
    }
    let limited = std::env::var("NOTIFY_BENCH_LIMITED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000usize);
    println!(
        "\n2. Teams limits enforced by the fake (429 above 50 calls/s per app, 7 calls/s per conversation)"
    );
    println!(
        "{:>9} {:>28} {:>8} {:>10} {:>12} {:>9} {:>6}",
        "backend", "scenario", "calls", "seconds", "achieved/s", "allowed/s", "429s"
    );
    // Fresh databases for the limited runs.
    let mut fresh: Vec<(&str, db_support::TestDb)> =
        vec![("sqlite", db_support::sqlite_test_db().await)];
    if labels.len() > 1
        && let Some(db) = db_support::postgres_test_db().await
    {
        fresh.push(("postgres", db));
    }
    for (label, test) in &fresh {
        limited_run(label, &test.url, limited / 10, 10, 50.0).await;
    }
    let single = db_support::sqlite_test_db().await;
    limited_run("sqlite", &single.url, 1, 70, 7.0).await;
}

async fn subscribe_all(app: &App, fake: &LoadConnector, conversations: usize) {
    let everything = Filter::default();
    for n in 0..conversations {
        let channel = channel_id(n);
        app.db
            .upsert_conversation(&channel_ref(&channel, &fake.service_url()))
            .await
            .expect("conversation");
        store::subscribe(
            &app.db,
            &NewSubscription {
                conversation_id: &channel,
                conversation_type: "channel",
                filter: &everything,
                user_id: "29:beth",
                user_name: None,
            },
        )
        .await
        .expect("subscribe");
    }
}

/// A tuning value from the environment, or `default`.
fn knob(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the worker as the bot does (its claim loops) until nothing is pending.
async fn drain(app: &Arc<App>) {
    let worker = Arc::new(Worker::new(app.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = {
        let worker = worker.clone();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let counts = outbox::counts(&app.db).await.expect("counts");
        if counts.pending == 0 {
            break;
        }
    }
    stop.cancel();
    let _ = running.await;
}

/// One unlimited run; returns deliveries per second.
async fn unlimited(label: &str, run: usize, url: &str) -> f64 {
    let fake = LoadConnector::start(Faults::default()).await;
    let app = build_app(
        &fake,
        url,
        &format!(
            "deliver = false\nper_conversation_per_second = 0\nper_app_per_second = 0\npoll_interval_ms = 5\n\
             batch_size = {}\nconcurrency = {}\nclaim_loops = {}",
            knob("NOTIFY_BENCH_BATCH", 500),
            knob("NOTIFY_BENCH_CONCURRENCY", 128),
            knob("NOTIFY_BENCH_LOOPS", 2)
        ),
    )
    .await;
    subscribe_all(&app, &fake, CONVERSATIONS).await;
    let started = Instant::now();
    for case in 0..CASES {
        outbox::record_event(&app.db, &incident(case, 1, "New"))
            .await
            .expect("record");
    }
    let recorded = started.elapsed().as_secs_f64();
    let started = Instant::now();
    drain(&app).await;
    let seconds = started.elapsed().as_secs_f64();
    let counts = outbox::counts(&app.db).await.expect("counts");
    assert_eq!(
        counts.delivered as usize,
        CASES * CONVERSATIONS,
        "{counts:?}"
    );
    let rate = counts.delivered as f64 / seconds;
    println!(
        "{label:>9} {run:>4} {recorded:>9.2} {seconds:>10.2} {rate:>13.0} {:>10} {:>11}   load {}",
        fake.delivery_count(),
        fake.delivery_count() - fake.unique_messages(),
        conditions::load()
    );
    rate
}

async fn limited_run(label: &str, url: &str, conversations: usize, cases: usize, allowed: f64) {
    let fake = LoadConnector::start(Faults {
        per_conversation_per_second: 7,
        global_per_second: 50,
        ..Faults::default()
    })
    .await;
    let app = build_app(
        &fake,
        url,
        "deliver = false\nper_conversation_per_second = 7\nper_app_per_second = 50\nbatch_size = 200\nconcurrency = 64\npoll_interval_ms = 20",
    )
    .await;
    subscribe_all(&app, &fake, conversations).await;
    for case in 0..cases {
        outbox::record_event(&app.db, &incident(case, 1, "New"))
            .await
            .expect("record");
    }
    drain(&app).await;
    let deliveries = fake.deliveries();
    let (Some(first), Some(last)) = (
        deliveries.iter().map(|d| d.at).min(),
        deliveries.iter().map(|d| d.at).max(),
    ) else {
        panic!("nothing delivered");
    };
    // n calls spaced over (last - first) seconds: (n - 1) intervals.
    let seconds = (last - first).as_secs_f64();
    let achieved = (deliveries.len().saturating_sub(1)) as f64 / seconds;
    let scenario = format!("{cases} x {conversations} channel(s)");
    println!(
        "{label:>9} {scenario:>28} {:>8} {seconds:>10.2} {achieved:>12.1} {allowed:>9.0} {:>6}   ({:.1}% of allowed; load {})",
        deliveries.len(),
        fake.rate_limited(),
        100.0 * achieved / allowed,
        conditions::load()
    );
}
