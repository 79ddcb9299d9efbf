//! Cost of notifications as subscriptions and history grow, on SQLite and PostgreSQL.
//!
//! 1. For histories of 10,000, 100,000 and 1,000,000 outbox rows (a tenth as many
//!    subscriptions over a fiftieth as many conversations: 100,000 subscriptions in 20,000
//!    conversations at 1M; 99% delivered), written with multi-row `INSERT`s in one
//!    transaction: the median time of claiming a batch (200 lanes with their rows), matching
//!    and recording an event (20 matching subscriptions among all, committed), and
//!    `subscriptions` in one conversation. Flat means these do not grow with the history.
//! 2. At the largest history: delivery latency (event recorded to card at the fake connector)
//!    under a steady load, first alone, then while the retention purge deletes every old row
//!    in chunks; and the peak RSS of this process, which runs the delivery worker.
//!
//! Run: `cargo bench --bench notify_scale` (PostgreSQL too when `TEST_POSTGRES_URL` is set;
//! `scripts/bench-postgres.sh notify_scale` starts a durable server). Knobs:
//! `NOTIFY_SCALE_ROWS` (comma-separated sizes, default `10000,100000,1000000`),
//! `NOTIFY_SCALE_EVENTS_PER_SECOND` (load during the purge, default 50 events = 1,000 cards/s).

#[path = "support/conditions.rs"]
mod conditions;
#[path = "../tests/support/db.rs"]
#[allow(dead_code)]
mod db_support;
#[path = "../tests/support/notify.rs"]
mod notify_support;
#[path = "../tests/support/notify_scale.rs"]
mod scale_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use m365bot::db::{Db, now_millis};
use m365bot::notify::outbox;
use m365bot::notify::store;
use m365bot::notify::worker::Worker;
use notify_support::{Faults, LoadConnector, build_app};
use scale_support::{Scale, case_event, conversation, group, populate};

/// Timed repetitions of each operation.
const REPEATS: usize = 21;
const DAY_MS: i64 = 86_400_000;

fn sizes() -> Vec<usize> {
    std::env::var("NOTIFY_SCALE_ROWS")
        .ok()
        .map(|text| {
            text.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000])
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    conditions::median_and_spread(&mut samples).0
}

/// Times claim, match-and-record and `subscriptions` on the history of `scale`.
async fn costs(db: &Db, scale: &Scale) -> (f64, f64, f64) {
    let owner = "bench-claimer";
    let mut claim = Vec::new();
    for _ in 0..REPEATS {
        let now = now_millis();
        let started = Instant::now();
        let lanes = outbox::claim(db, owner, None, now, now + 60_000, 200)
            .await
            .expect("claim");
        claim.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(!lanes.is_empty() && lanes.iter().all(|l| !l.rows.is_empty()));
        sqlx::query(
            "UPDATE notify_lanes SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&db.pool)
        .await
        .expect("release");
    }
    let per_group = scale.subscriptions / scale.groups;
    let mut matching = Vec::new();
    for n in 0..REPEATS {
        let event = case_event(scale.cases() + 10 + n, 1, &group(n * 7 % scale.groups));
        let started = Instant::now();
        let recorded = outbox::record_event(db, &event).await.expect("record");
        matching.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            recorded.deliveries, per_group,
            "one per subscription of the group"
        );
    }
    let mut list = Vec::new();
    for n in 0..REPEATS {
        let started = Instant::now();
        let listed = store::list(db, &conversation(n * 13 % scale.conversations))
            .await
            .expect("list");
        list.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(!listed.is_empty());
    }
    (median_ms(claim), median_ms(matching), median_ms(list))
}

/// Steady load: `per_second` new cases, each matching one group (20 channels), for
/// `seconds`; returns each card's latency (ms) from the start of its event's recording.
async fn load(
    db: &Db,
    fake: &LoadConnector,
    scale: &Scale,
    first_case: usize,
    per_second: usize,
    until: impl Fn() -> bool,
) -> (Vec<f64>, usize) {
    let mut started: HashMap<String, Instant> = HashMap::new();
    let every = Duration::from_secs_f64(1.0 / per_second as f64);
    let begin = tokio::time::Instant::now();
    let mut n = 0;
    let before = fake.delivery_count();
    // At least two seconds of load, however soon `until` holds.
    while !(until() && begin.elapsed() >= Duration::from_secs(2)) {
        tokio::time::sleep_until(begin + every * n as u32).await;
        let event = case_event(first_case + n, 1, &group(n * 7 % scale.groups));
        started.insert(format!("{}: {}", event.number, event.state), Instant::now());
        outbox::record_event(db, &event).await.expect("record");
        n += 1;
    }
    let per_group = scale.subscriptions / scale.groups;
    let expected = before + n * per_group;
    let deadline = Instant::now() + Duration::from_secs(120);
    while fake.delivery_count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries = fake.deliveries();
    let mut latencies: Vec<f64> = deliveries[before..]
        .iter()
        .filter_map(|d| {
            started
                .get(&d.summary)
                .map(|at| d.at.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    assert_eq!(
        latencies.len(),
        n * per_group,
        "every card of the load arrived, once"
    );
    latencies.sort_by(f64::total_cmp);
    (latencies, n)
}

/// Delivered or merged rows finished before `cutoff`.
async fn old_rows(db: &Db, cutoff: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM notify_outbox WHERE status IN ('delivered', 'merged') AND finished_at < $1",
    )
    .bind(cutoff)
    .fetch_one(&db.pool)
    .await
    .expect("count old rows")
}

/// Delivery latency alone, then during the purge of the old history, on the history of
/// `scale` (written here with references to `fake`).
async fn purge_under_load(label: &str, url: &str, fake: &LoadConnector, scale: &Scale) {
    let per_second: usize = std::env::var("NOTIFY_SCALE_EVENTS_PER_SECOND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // The peak memory of this phase only (not of writing the histories).
    let reset = conditions::reset_own_peak_rss();
    // Retention far beyond the history: the worker's own housekeeping leaves it to the bench.
    let app = build_app(
        fake,
        url,
        "deliver = false\nper_conversation_per_second = 0\nper_app_per_second = 0\nretention_days = 3650\n\
         batch_size = 500\nconcurrency = 128\nclaim_loops = 2\npoll_interval_ms = 250",
    )
    .await;
    let worker = Arc::new(Worker::new(app.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = {
        let worker = worker.clone();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    // The history's pending deliveries go first.
    let deadline = Instant::now() + Duration::from_secs(300);
    while outbox::counts(&app.db).await.expect("counts").pending > 0 {
        assert!(
            Instant::now() < deadline,
            "the history's backlog did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base_case = scale.cases() + 1_000;
    let quiet_until = Instant::now() + Duration::from_secs(10);
    let (alone, events) = load(&app.db, fake, scale, base_case, per_second, || {
        Instant::now() >= quiet_until
    })
    .await;
    let cutoff = now_millis() - 30 * DAY_MS;
    let old = old_rows(&app.db, cutoff).await;
    let purging = {
        let db = app.db.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let purged = outbox::purge_finished(&db, cutoff).await.expect("purge");
            (purged, started.elapsed())
        })
    };
    let (during, _) = load(&app.db, fake, scale, base_case + events, per_second, || {
        purging.is_finished()
    })
    .await;
    let (purged, took) = purging.await.expect("purge task");
    stop.cancel();
    let _ = running.await;
    assert_eq!(purged as i64, old, "the purge deleted the old history");
    assert_eq!(old_rows(&app.db, cutoff).await, 0, "no old row is left");
    for (phase, latencies) in [("alone", &alone), ("purging", &during)] {
        println!(
            "{label:>9} {phase:>8} {:>7} {:>8.1} {:>8.1} {:>8.1}   load {}",
            latencies.len(),
            conditions::percentile(latencies, 50.0),
            conditions::percentile(latencies, 99.0),
            latencies.last().copied().unwrap_or(f64::NAN),
            conditions::load()
        );
    }
    println!(
        "{label:>9} purge: {purged} rows in {:.1} s ({:.0} rows/s, chunks of {})",
        took.as_secs_f64(),
        purged as f64 / took.as_secs_f64(),
        outbox::PURGE_CHUNK,
    );
    println!(
        "{label:>9} peak RSS of this process during this phase (delivery worker, fake connector, load, purge): {:.1} MiB{}",
        conditions::own_peak_rss_mib().unwrap_or(f64::NAN),
        if reset {
            ""
        } else {
            " (peak not reset: includes writing the histories)"
        }
    );
}

#[tokio::main]
async fn main() {
    let postgres = std::env::var(db_support::POSTGRES_URL_VAR).is_ok_and(|v| !v.trim().is_empty());
    let labels: Vec<&str> = if postgres {
        vec!["sqlite", "postgres"]
    } else {
        vec!["sqlite"]
    };
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
        }
        conditions::print_header(
            "notify_scale: cost as subscriptions and history grow",
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
    let sizes = sizes();
    let largest = sizes.iter().copied().max().unwrap_or(10_000);
    println!(
        "\n1. median of {REPEATS} (ms); match = match and record an event to 20 subscriptions, committed"
    );
    println!(
        "{:>9} {:>9} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8}",
        "backend", "outbox", "subs", "convs", "setup s", "claim", "match", "list"
    );
    let mut kept = Vec::new();
    for label in &labels {
        for &rows in &sizes {
            let test = if *label == "postgres" {
                db_support::postgres_test_db()
                    .await
                    .expect("TEST_POSTGRES_URL")
            } else {
                db_support::sqlite_test_db().await
            };
            let scale = Scale::for_rows(rows);
            let fake = LoadConnector::start(Faults::default()).await;
            let started = Instant::now();
            populate(
                &test.db,
                &scale,
                &fake.service_url(),
                now_millis() - 40 * DAY_MS,
            )
            .await;
            let setup = started.elapsed().as_secs_f64();
            let (claim, matching, list) = costs(&test.db, &scale).await;
            println!(
                "{label:>9} {rows:>9} {:>8} {:>7} {setup:>9.1} {claim:>8.2} {matching:>8.2} {list:>8.2}   load {}",
                scale.subscriptions,
                scale.conversations,
                conditions::load()
            );
            if rows == largest {
                kept.push((label, test, fake, scale));
            }
        }
    }
    println!(
        "\n2. delivery latency (ms, event recorded to card) at the largest history, alone and during the retention purge"
    );
    println!(
        "{:>9} {:>8} {:>7} {:>8} {:>8} {:>8}",
        "backend", "phase", "cards", "p50", "p99", "max"
    );
    for (label, test, fake, scale) in &kept {
        purge_under_load(label, &test.url, fake, scale).await;
    }
}
