//! Peak memory of the serving process at scale: a separate `m365bot serve` (the release binary
//! cargo builds for this bench) on a database holding 100,000 subscriptions over 20,000
//! conversations and 1,000,000 outbox rows (99% delivered 40 days ago, 1% pending), on SQLite
//! and PostgreSQL.
//!
//! The bench process writes the history, runs the fake Bot Connector and the load; the served
//! process alone does the work: it delivers the pending history, runs its retention purge of
//! the old rows (30 days), and takes signed ServiceNow pushes over HTTP (`NOTIFY_SERVE_RATE`
//! per second, default 50, each a case of one group: 20 cards each, 1,000 cards per second)
//! until the purge is over and `NOTIFY_SERVE_SECONDS` (default 30) have passed. Reported: the
//! served process's peak RSS (`VmHWM` of `/proc/<pid>/status`, target < 100 MB), its RSS at the
//! end, the purge's duration, and push-to-card latency p50 / p99 during all this.
//!
//! Every push must be accepted, every card arrive once and every old row be purged, or the
//! bench fails. Run: `cargo bench --bench notify_serve` (PostgreSQL too when
//! `TEST_POSTGRES_URL` is set; `scripts/bench-postgres.sh notify_serve` starts a durable
//! server). `NOTIFY_SERVE_ROWS` changes the history's size (default 1,000,000).

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
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use m365bot::db::{Db, now_millis};
use m365bot::notify::sources::push;
use notify_support::{Faults, LoadConnector, settings_toml};
use scale_support::{Scale, group, populate};
use serde_json::json;

const SECRET: &str = "serve-bench-push-secret-0123456789";
const DAY_MS: i64 = 86_400_000;
/// The served process's retention (days); the history finished 40 days ago.
const RETENTION_DAYS: i64 = 30;
/// Longest the load runs waiting for the purge to finish.
const MAX_SECONDS: u64 = 900;

fn knob(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The served process; killed when dropped.
struct Served {
    child: Child,
    base_url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current resident memory (`VmRSS`), in MiB.
    fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

/// Starts `m365bot serve` on `database_url` with deliveries to `fake`; waits for `/readyz`.
async fn serve(fake: &LoadConnector, database_url: &str, dir: &std::path::Path) -> Served {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let toml = settings_toml(
        fake,
        database_url,
        &format!(
            "[notifications]\ndeliver = true\nper_conversation_per_second = 0\nper_app_per_second = 0\n\
             retention_days = {RETENTION_DAYS}\n\
             [notifications.sources.push]\nhmac_secret = \"{SECRET}\"\n"
        ),
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = dir.join("m365bot.toml");
    std::fs::write(&config, toml).expect("config file");
    let log = std::fs::File::create(dir.join("serve.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_m365bot"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("m365bot serve starts");
    let mut served = Served {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = served.child.try_wait() {
            let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
            panic!("m365bot serve exited ({status}):\n{log}");
        }
        let ready = client
            .get(format!("{}/readyz", served.base_url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return served;
        }
        assert!(
            Instant::now() < deadline,
            "m365bot serve not ready in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Delivered and merged rows finished before `cutoff` (one count per status, each through its
/// partial index).
async fn old_rows(db: &Db, cutoff: i64) -> i64 {
    let mut total = 0;
    for status in ["delivered", "merged"] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM notify_outbox WHERE status = '{status}' AND finished_at < $1"
        ))
        .bind(cutoff)
        .fetch_one(&db.pool)
        .await
        .expect("count old rows");
        total += n;
    }
    total
}

/// The signed push of case `n` (a new case of `group`), and its card's summary.
fn push_body(n: usize, group: &str) -> (Vec<u8>, String) {
    let number = format!("INC{:07}", 5_000_000 + n);
    let field = |value: &str| json!({"value": value, "display_value": value});
    let body = serde_json::to_vec(&json!({
        "table": "incident",
        "record": {
            "sys_id": field(&format!("{:032x}", 0x5e7e_0000_0000u64 + n as u64)),
            "sys_mod_count": field("0"),
            "sys_updated_on": field(&chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()),
            "number": field(&number),
            "short_description": field("Serve bench case"),
            "state": {"value": "1", "display_value": "New"},
            "assignment_group": {"value": format!("{:032x}", n), "display_value": group},
            "correlation_id": field(&format!("2601020040{n:06}")),
        },
    }))
    .expect("json");
    (body, format!("{number}: New"))
}

async fn run(label: &str, test: &db_support::TestDb, rows: usize, rate: usize, seconds: u64) {
    let fake = LoadConnector::start(Faults::default()).await;
    let scale = Scale::for_rows(rows);
    let started = Instant::now();
    populate(
        &test.db,
        &scale,
        &fake.service_url(),
        now_millis() - 40 * DAY_MS,
    )
    .await;
    let written = started.elapsed().as_secs_f64();
    let cutoff = now_millis() - RETENTION_DAYS * DAY_MS;
    let old = old_rows(&test.db, cutoff).await;
    let dir = tempfile::tempdir().expect("dir");
    let served = serve(&fake, &test.url, dir.path()).await;
    let serving = Instant::now();

    // Pushes at `rate` per second until the purge is over and `seconds` have passed.
    let client = reqwest::Client::new();
    let url = format!("{}{}", served.base_url, push::PATH);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let begin = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let mut purge_took = None;
    let mut last_check = Instant::now();
    let mut rss_max: f64 = 0.0;
    let mut n = 0usize;
    loop {
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            rss_max = rss_max.max(served.rss_mib().unwrap_or(0.0));
            if purge_took.is_none() && old_rows(&test.db, cutoff).await == 0 {
                purge_took = Some(serving.elapsed());
            }
        }
        let elapsed = serving.elapsed();
        if purge_took.is_some() && elapsed >= Duration::from_secs(seconds) {
            break;
        }
        assert!(
            elapsed < Duration::from_secs(MAX_SECONDS),
            "the purge of {old} rows did not finish in {MAX_SECONDS} s"
        );
        tokio::time::sleep_until(begin + every * n as u32).await;
        let (body, summary) = push_body(n, &group(n * 7 % scale.groups));
        let request = client.post(&url).header("content-type", "application/json");
        let sent = sent.clone();
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = push::sign(SECRET.as_bytes(), timestamp, &body);
            sent.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(summary, Instant::now());
            let answer = request
                .header(push::TIMESTAMP_HEADER, timestamp.to_string())
                .header(push::SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await;
            if !answer.is_ok_and(|a| a.status().is_success()) {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
        n += 1;
    }
    for task in tasks {
        task.await.expect("push task");
    }
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 0, "{refused} of {n} pushes were not accepted");

    // Every push's cards (one per subscription of its group), once each.
    let per_group = scale.subscriptions / scale.groups;
    let expected = n * per_group;
    let ours = |fake: &LoadConnector| {
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        fake.deliveries()
            .into_iter()
            .filter(|d| sent.contains_key(&d.summary))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ours(&fake).len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cards = ours(&fake);
    let peak = conditions::peak_rss_mib(served.pid()).unwrap_or(f64::NAN);
    let end_rss = served.rss_mib().unwrap_or(f64::NAN);
    drop(served);
    assert_eq!(cards.len(), expected, "every push's cards arrived, once");
    assert_eq!(old_rows(&test.db, cutoff).await, 0, "no old row is left");
    let mut latencies: Vec<f64> = {
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        cards
            .iter()
            .filter_map(|d| {
                sent.get(&d.summary)
                    .map(|at| d.at.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let purge = purge_took.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "{label:>9} {rows:>9} {written:>8.0} {old:>9} {purge:>8.1} {n:>7} {:>8} {:>7.1} {:>8.1} {peak:>9.1} {end_rss:>8.1}   load {}",
        cards.len(),
        conditions::percentile(&latencies, 50.0),
        conditions::percentile(&latencies, 99.0),
        conditions::load()
    );
    println!(
        "{label:>9} peak RSS {peak:.1} MiB ({:.1} MB) of the serving process (max sampled VmRSS {rss_max:.1} MiB); target < 100 MB: {}",
        peak * 1.048_576,
        if peak * 1.048_576 < 100.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}

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
            "notify_serve: peak RSS of a separate `m365bot serve` under deliveries, pushes and the purge",
            "a separate `m365bot serve` process (release binary, VmHWM of /proc/<pid>/status); \
             the fake connector and the load run in the bench process",
            &shown,
        )
        .await;
        if !postgres {
            println!(
                "   PostgreSQL skipped: set TEST_POSTGRES_URL (or run scripts/bench-postgres.sh)"
            );
        }
    }
    let rows = knob("NOTIFY_SERVE_ROWS", 1_000_000);
    let rate = knob("NOTIFY_SERVE_RATE", 50);
    let seconds = knob("NOTIFY_SERVE_SECONDS", 30) as u64;
    let scale = Scale::for_rows(rows);
    println!(
        "\n{rows} outbox rows ({} subscriptions in {} conversations), {rate} pushes/s x {} cards, \
         retention {RETENTION_DAYS} days; times in s, latency (push sent to card) in ms, memory in MiB",
        scale.subscriptions,
        scale.conversations,
        scale.subscriptions / scale.groups
    );
    println!(
        "{:>9} {:>9} {:>8} {:>9} {:>8} {:>7} {:>8} {:>7} {:>8} {:>9} {:>8}",
        "backend",
        "outbox",
        "write s",
        "old rows",
        "purge s",
        "pushes",
        "cards",
        "p50",
        "p99",
        "peak RSS",
        "end RSS"
    );
    for label in &labels {
        let test = if *label == "postgres" {
            db_support::postgres_test_db()
                .await
                .expect("TEST_POSTGRES_URL")
        } else {
            db_support::sqlite_test_db().await
        };
        run(label, &test, rows, rate, seconds).await;
    }
}
