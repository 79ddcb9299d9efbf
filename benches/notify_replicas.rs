//! Teams' per-app limit held by several replicas together: three bot instances deliver from
//! one PostgreSQL outbox through a fake Bot Connector that enforces Teams' limits (50 calls/s
//! per app, 7 calls/s per conversation, sliding one-second windows, 429 with `Retry-After`
//! above them). Each instance has its own pool, worker and rate limiter, as separate processes
//! would; they share only the database (the app's send slots are leased from one bucket row,
//! each conversation has one sending instance at a time). They run in this one process, so
//! they share its clock and CPU; the fake shares them too.
//!
//! Prints the achieved rate as a share of the allowed one (target >= 95%), the 429 answers
//! (target 0), the busiest one-second window seen by the fake, and how the deliveries split
//! among the instances, with the machine (cores, load) and the server's durability settings.
//!
//! Run: `TEST_POSTGRES_URL=postgres://… cargo bench --bench notify_replicas` (a role that may
//! create databases). `NOTIFY_REPLICAS_CONVERSATIONS` (default 1,000 channels, one card each,
//! about 20 s) and `NOTIFY_REPLICAS` (default 3) change the size.

#[path = "../tests/support/db.rs"]
#[allow(dead_code)]
mod db_support;
#[path = "../tests/support/notify.rs"]
mod notify_support;

use std::time::{Duration, Instant};

use m365bot::db::Db;
use m365bot::notify::filter::Filter;
use m365bot::notify::outbox;
use m365bot::notify::store::{self, NewSubscription};
use m365bot::notify::worker::Worker;
use notify_support::{Faults, LoadConnector, build_app, channel_id, channel_ref, incident};
use tokio_util::sync::CancellationToken;

const ALLOWED: f64 = 50.0;

fn knob(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

async fn setting(db: &Db, name: &str) -> String {
    sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

#[tokio::main]
async fn main() {
    let replicas = knob("NOTIFY_REPLICAS", 3).max(1);
    let conversations = knob("NOTIFY_REPLICAS_CONVERSATIONS", 1_000).max(2);
    let Some(test) = db_support::postgres_test_db().await else {
        println!("PostgreSQL skipped (M365BOT_TESTS_WITHOUT_POSTGRES=1): nothing to measure");
        return;
    };
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "Shared per-app limit: {replicas} instances on one PostgreSQL, {conversations} channels x 1 card"
    );
    println!(
        "machine: {cores} cores, load average {} at start; instances, fake connector and bench in one process",
        load_average()
    );
    println!(
        "PostgreSQL {}: fsync={} synchronous_commit={} full_page_writes={}",
        setting(&test.db, "server_version").await,
        setting(&test.db, "fsync").await,
        setting(&test.db, "synchronous_commit").await,
        setting(&test.db, "full_page_writes").await
    );
    let fake = LoadConnector::start(Faults {
        per_conversation_per_second: 7,
        global_per_second: ALLOWED as usize,
        ..Faults::default()
    })
    .await;
    let limits = "deliver = false\nper_conversation_per_second = 7\nper_app_per_second = 50\n\
                  batch_size = 200\nconcurrency = 64\npoll_interval_ms = 20";
    let mut apps = Vec::new();
    for _ in 0..replicas {
        apps.push(build_app(&fake, &test.url, limits).await);
    }
    let everything = Filter::default();
    for n in 0..conversations {
        let channel = channel_id(n);
        apps[0]
            .db
            .upsert_conversation(&channel_ref(&channel, &fake.service_url()))
            .await
            .expect("conversation");
        store::subscribe(
            &apps[0].db,
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
    outbox::record_event(&apps[0].db, &incident(0, 1, "New"))
        .await
        .expect("record");
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for app in &apps {
        let worker = Worker::new(app.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move { worker.run(stop).await }));
    }
    let deadline =
        started + Duration::from_secs(60) + Duration::from_secs_f64(conversations as f64 / 10.0);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let counts = outbox::counts(&apps[0].db).await.expect("counts");
        if counts.pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {counts:?}");
    }
    stop.cancel();
    for task in tasks {
        task.await.expect("worker");
    }
    let deliveries = fake.deliveries();
    let mut times: Vec<Instant> = deliveries.iter().map(|d| d.at).collect();
    times.sort();
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        panic!("nothing delivered");
    };
    let seconds = (*last - *first).as_secs_f64();
    // n calls spaced over (last - first) seconds: (n - 1) intervals.
    let achieved = times.len().saturating_sub(1) as f64 / seconds;
    let busiest = times
        .iter()
        .enumerate()
        .map(|(i, start)| {
            times[i..]
                .iter()
                .take_while(|at| at.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let split: Vec<String> = apps
        .iter()
        .map(|app| app.metrics.deliveries("delivered").to_string())
        .collect();
    println!(
        "{:>10} {:>10} {:>12} {:>10} {:>9} {:>6} {:>14} {:>11}  per instance",
        "calls", "seconds", "achieved/s", "allowed/s", "share", "429s", "busiest 1 s", "duplicates"
    );
    println!(
        "{:>10} {seconds:>10.2} {achieved:>12.1} {ALLOWED:>10.0} {:>8.1}% {:>6} {busiest:>14} {:>11}  {}",
        times.len(),
        100.0 * achieved / ALLOWED,
        fake.rate_limited(),
        fake.delivery_count() - fake.unique_messages(),
        split.join(" / ")
    );
    println!("load average {} at the end", load_average());
}
