//! Latency from a ServiceNow change to the card at the fake Bot Connector, with the bot's and
//! the fake's rate limits off, on SQLite and PostgreSQL.
//!
//! 200 channels each subscribe to one assignment group (`group=G<n>`); ServiceNow changes 100
//! cases per second, each assigned to one of the 200 groups, so every change is one card to
//! one channel (100 cards per second).
//! 1. Push: the Business Rule's signed `POST /api/servicenow/events` to the serving bot (its
//!    HTTP listener, the push endpoint, the outbox and the delivery worker, all in this
//!    process); latency from just before the request is sent to the card's arrival.
//! 2. Poll: the same changes written into the ServiceNow emulator; the bot's poller
//!    (`interval_secs = 1`, the shortest) finds them; latency from the write to the card,
//!    bounded below by the poll interval.
//!
//! Every change must produce exactly one card, or the bench fails (exit non-zero).
//!
//! Run: `cargo bench --bench notify_latency` (PostgreSQL too when `TEST_POSTGRES_URL` is set;
//! `scripts/bench-postgres.sh notify_latency` starts a durable server). Knobs:
//! `NOTIFY_LATENCY_SECONDS` (push, default 60), `NOTIFY_LATENCY_POLL_SECONDS` (default 20),
//! `NOTIFY_LATENCY_RATE` (changes per second, default 100).

#[path = "support/conditions.rs"]
mod conditions;
#[path = "../tests/support/db.rs"]
#[allow(dead_code)]
mod db_support;
#[path = "../tests/support/notify.rs"]
mod notify_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use m365bot::app::{App, Application};
use m365bot::config::Settings;
use m365bot::notify::filter::Filter;
use m365bot::notify::sources::push;
use m365bot::notify::store::{self, NewSubscription};
use m365bot::sandbox::{Sandbox, SandboxOptions};
use notify_support::{Faults, LoadConnector, channel_id, channel_ref, settings_toml};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const CHANNELS: usize = 200;
const SECRET: &str = "latency-bench-push-secret-0123456789";

fn knob(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A serving bot; stopped when dropped.
struct Bot {
    app: Arc<App>,
    base_url: String,
    shutdown: CancellationToken,
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_bot(fake: &LoadConnector, database_url: &str, extra: &str) -> Bot {
    let toml = settings_toml(
        fake,
        database_url,
        &format!(
            "[notifications]\ndeliver = true\nper_conversation_per_second = 0\nper_app_per_second = 0\n\
             [notifications.sources.push]\nhmac_secret = \"{SECRET}\"\n{extra}"
        ),
    );
    let settings = Settings::from_toml_str(&toml).expect("latency bench settings");
    let application = Application::build(settings).await.expect("bot builds");
    let base_url = format!("http://{}", application.local_addr());
    let app = application.app();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { application.run_until_stopped(stop).await });
    let bot = Bot {
        app,
        base_url,
        shutdown,
    };
    for n in 0..CHANNELS {
        let channel = channel_id(n);
        bot.app
            .db
            .upsert_conversation(&channel_ref(&channel, &fake.service_url()))
            .await
            .expect("conversation");
        let filter = Filter {
            groups: vec![format!("G{n}")],
            ..Filter::default()
        };
        store::subscribe(
            &bot.app.db,
            &NewSubscription {
                conversation_id: &channel,
                conversation_type: "channel",
                filter: &filter,
                user_id: "29:beth",
                user_name: None,
            },
        )
        .await
        .expect("subscribe");
    }
    bot
}

/// The card summary of change `n` (`number: state`), by which the fake's deliveries are
/// matched to the changes.
fn summary(number: &str) -> String {
    format!("{number}: New")
}

/// Latencies (ms, sorted) of each change's first card; panics unless every change produced
/// exactly one card within `patience`.
async fn collect(
    fake: &LoadConnector,
    started: &Mutex<HashMap<String, Instant>>,
    expected: usize,
    patience: Duration,
) -> Vec<f64> {
    let deadline = Instant::now() + patience;
    while fake.delivery_count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer, to see duplicates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = started.lock().unwrap_or_else(|p| p.into_inner());
    let mut seen: HashMap<&str, Instant> = HashMap::new();
    let deliveries = fake.deliveries();
    for delivery in &deliveries {
        seen.entry(delivery.summary.as_str()).or_insert(delivery.at);
    }
    let mut latencies = Vec::with_capacity(expected);
    let mut missing = 0;
    for (summary, at) in started.iter() {
        match seen.get(summary.as_str()) {
            Some(arrived) => {
                latencies.push(arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            }
            None => missing += 1,
        }
    }
    assert_eq!(started.len(), expected, "every change was made");
    assert_eq!(
        missing, 0,
        "{missing} of {expected} changes produced no card within {patience:?}"
    );
    assert_eq!(
        deliveries.len(),
        expected,
        "one card per change (duplicates or strays otherwise)"
    );
    latencies.sort_by(f64::total_cmp);
    latencies
}

fn report(label: &str, path: &str, rate: usize, seconds: usize, latencies: &[f64]) {
    println!(
        "{label:>9} {path:>5} {:>8} {:>7.1} {:>9.1} {:>9.1} {:>9}   load {}",
        format!("{rate}/s x {seconds}s"),
        conditions::percentile(latencies, 50.0),
        conditions::percentile(latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len(),
        conditions::load()
    );
}

async fn push_run(label: &str, database_url: &str, rate: usize, seconds: usize) {
    let fake = LoadConnector::start(Faults::default()).await;
    let bot = start_bot(&fake, database_url, "").await;
    let client = reqwest::Client::new();
    let url = format!("{}{}", bot.base_url, push::PATH);
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = rate * seconds;
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(total);
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let begin = tokio::time::Instant::now();
    for n in 0..total {
        tokio::time::sleep_until(begin + every * n as u32).await;
        let number = format!("INC{:07}", 2_000_000 + n);
        let field = |value: &str| json!({"value": value, "display_value": value});
        let body = serde_json::to_vec(&json!({
            "table": "incident",
            "record": {
                "sys_id": field(&format!("{:032x}", 0x1a7e_0000_0000u64 + n as u64)),
                "sys_mod_count": field("0"),
                "sys_updated_on": field(&chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()),
                "number": field(&number),
                "short_description": field("Latency bench case"),
                "state": {"value": "1", "display_value": "New"},
                "assignment_group": {"value": format!("{:032x}", n % CHANNELS), "display_value": format!("G{}", n % CHANNELS)},
                "correlation_id": field(&format!("2601010040{n:06}")),
            },
        }))
        .expect("json");
        let request = client.post(&url).header("content-type", "application/json");
        let started = started.clone();
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = push::sign(SECRET.as_bytes(), timestamp, &body);
            started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(summary(&number), Instant::now());
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
    }
    for task in tasks {
        task.await.expect("push task");
    }
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 0, "{refused} pushes were not accepted");
    let latencies = collect(&fake, &started, total, Duration::from_secs(60)).await;
    report(label, "push", rate, seconds, &latencies);
}

async fn poll_run(label: &str, database_url: &str, rate: usize, seconds: usize) {
    let sandbox = Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts");
    let handle = sandbox.handle();
    let groups: Vec<String> = (0..CHANNELS)
        .map(|n| {
            handle
                .sn_insert("sys_user_group", json!({"name": format!("G{n}")}))
                .expect("group")
        })
        .collect();
    let fake = LoadConnector::start(Faults::default()).await;
    let extra = format!(
        "[servicenow]\ninstance_url = \"{}\"\nusername = \"admin\"\npassword = \"{}\"\n\
         [notifications.sources.servicenow]\npoll = true\ninterval_secs = 1\nbatch_size = 500\n",
        sandbox.urls().servicenow,
        sandbox.demo().servicenow_admin_password
    );
    let bot = start_bot(&fake, database_url, &extra).await;
    // The first poll starts the watermark; changes made from here on are new.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let started: Mutex<HashMap<String, Instant>> = Mutex::default();
    let total = rate * seconds;
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let begin = tokio::time::Instant::now();
    for n in 0..total {
        tokio::time::sleep_until(begin + every * n as u32).await;
        let number = format!("INC{:07}", 3_000_000 + n);
        started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(summary(&number), Instant::now());
        handle
            .sn_insert(
                "incident",
                json!({
                    "number": number,
                    "short_description": "Latency bench case",
                    "state": "1",
                    "assignment_group": groups[n % CHANNELS],
                    "correlation_id": format!("2601020040{n:06}"),
                }),
            )
            .expect("insert");
    }
    let latencies = collect(&fake, &started, total, Duration::from_secs(60)).await;
    drop(bot);
    report(label, "poll", rate, seconds, &latencies);
}

#[tokio::main]
async fn main() {
    let mut backends: Vec<(&str, db_support::TestDb)> = Vec::new();
    let sqlite = || async { db_support::sqlite_test_db().await };
    let postgres = std::env::var(db_support::POSTGRES_URL_VAR).is_ok_and(|v| !v.trim().is_empty());
    let probe = if postgres {
        db_support::postgres_test_db().await
    } else {
        None
    };
    let first = sqlite().await;
    let mut shown: Vec<&m365bot::db::Db> = vec![&first.db];
    if let Some(db) = &probe {
        shown.push(&db.db);
    }
    conditions::print_header(
        "notify_latency: ServiceNow change to card, limits off",
        "this bench process (bot, push client, fake connector and emulator in one process)",
        &shown,
    )
    .await;
    if !postgres {
        println!("   PostgreSQL skipped: set TEST_POSTGRES_URL (or run scripts/bench-postgres.sh)");
    }
    drop(shown);
    backends.push(("sqlite", first));
    if let Some(db) = probe {
        backends.push(("postgres", db));
    }
    let rate = knob("NOTIFY_LATENCY_RATE", 100);
    let push_seconds = knob("NOTIFY_LATENCY_SECONDS", 60);
    let poll_seconds = knob("NOTIFY_LATENCY_POLL_SECONDS", 20);
    println!("\n{CHANNELS} channels, one group each; every change is one card to one channel (ms)");
    println!(
        "{:>9} {:>5} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "backend", "path", "changes", "p50", "p99", "max", "cards"
    );
    for (label, test) in &backends {
        push_run(label, &test.url, rate, push_seconds).await;
    }
    // Fresh databases for the poller.
    let mut fresh = vec![("sqlite", db_support::sqlite_test_db().await)];
    if backends.len() > 1
        && let Some(db) = db_support::postgres_test_db().await
    {
        fresh.push(("postgres", db));
    }
    for (label, test) in &fresh {
        poll_run(label, &test.url, rate, poll_seconds).await;
    }
    println!(
        "\npeak RSS of this process (bot, clients, fakes): {:.1} MiB; load {}",
        conditions::own_peak_rss_mib().unwrap_or(f64::NAN),
        conditions::load()
    );
}
