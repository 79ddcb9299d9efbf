//! Load benchmark of `POST /api/messages`: the release binary runs as its own process with
//! full Bot Framework authentication; this program plays the identity provider, the Teams
//! connector and the clients. Each request carries a distinct RS256 token and a `help`
//! message whose card reply is posted to the fake connector before the bot answers 200.
//!
//! Run: `cargo bench --bench messages` (prints the bot's CPU-ms per request, split into user
//! and system time, its peak RSS, and the CPU this load generator itself used per request).
//! `M365BOT_BENCH_BOT=<path>` benchmarks another build of the binary in the same scenario.
//! The bench fails (exit non-zero) unless every request was answered 200 and its reply (to
//! that message's activity id) reached the fake connector exactly once.

#[path = "support/conditions.rs"]
mod conditions;

use std::collections::HashMap;
use std::sync::Mutex;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
const TENANT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const SIGNING_KEY: &str = include_str!("../tests/fixtures/test-signing-key.pem");
const JWKS: &str = include_str!("../tests/fixtures/test-jwks.json");
const REQUESTS_PER_RUN: usize = 4000;
const CONVERSATIONS: usize = 100;

#[tokio::main]
async fn main() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("== messages: POST /api/messages on the release binary");
    println!(
        "   {cores} cores; measured: the bot process (its own SQLite file) and this load generator; load (1/5/15 min): {}",
        conditions::load()
    );
    let fakes = start_fakes().await;
    let service_url = format!("http://{fakes}/");
    let dir = tempfile::tempdir().expect("temp dir");
    let bot_addr = free_port();
    let mut bot = spawn_bot(bot_addr, fakes, &dir);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("client");
    wait_ready(&client, bot_addr).await;

    println!(
        "minting {} distinct RS256 tokens …",
        2 * REQUESTS_PER_RUN + 200
    );
    let tokens = Arc::new(mint_tokens(2 * REQUESTS_PER_RUN + 200, &service_url));
    let next_token = Arc::new(AtomicUsize::new(0));

    // Warm-up: key fetch, connector token, conversation rows.
    let mut problems = run(
        &client,
        bot_addr,
        &service_url,
        &tokens,
        &next_token,
        200,
        8,
    )
    .await;

    println!("\nPOST /api/messages, help message answered with a card through the connector");
    println!(
        "{:>11} {:>9} {:>8} {:>11} {:>11} {:>8} {:>8} {:>12} {:>12}",
        "concurrency",
        "requests",
        "wall s",
        "requests/s",
        "CPU-ms/req",
        "user",
        "sys",
        "peak RSS MB",
        "loadgen CPU"
    );
    for concurrency in [16, 64] {
        let cpu_before = cpu_millis(bot.id());
        let own_before = cpu_millis(std::process::id());
        let started = Instant::now();
        let failures = run(
            &client,
            bot_addr,
            &service_url,
            &tokens,
            &next_token,
            REQUESTS_PER_RUN,
            concurrency,
        )
        .await;
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_millis(bot.id()) - cpu_before;
        let own = cpu_millis(std::process::id()) - own_before;
        let rss = peak_rss_mb(bot.id());
        let per_request = |ms: f64| ms / REQUESTS_PER_RUN as f64;
        println!(
            "{concurrency:>11} {REQUESTS_PER_RUN:>9} {wall:>8.2} {:>11.0} {:>11.4} {:>8.4} {:>8.4} {rss:>12.1} {:>12.4}   load {}",
            REQUESTS_PER_RUN as f64 / wall,
            per_request(cpu.total()),
            per_request(cpu.user),
            per_request(cpu.system),
            per_request(own.total()),
            conditions::load(),
        );
        problems.extend(failures);
    }
    let delivered = DELIVERED.load(Ordering::Relaxed);
    println!("\ncards received by the fake connector: {delivered}");
    let _ = bot.kill();
    let _ = bot.wait();
    if !problems.is_empty() {
        eprintln!(
            "FAILED: {} request(s) without exactly one reply at the fake connector; the first: {}",
            problems.len(),
            problems
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        std::process::exit(1);
    }
    println!("every request was answered 200 and got exactly one reply");
}

static DELIVERED: AtomicUsize = AtomicUsize::new(0);
/// Replies received by the fake connector, per replied-to activity id.
static REPLIES: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
/// Numbers the messages of every run, so activity ids never repeat.
static NEXT_SEQUENCE: AtomicUsize = AtomicUsize::new(0);

fn replies_to(activity: &str) -> usize {
    REPLIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|replies| replies.get(activity).copied())
        .unwrap_or(0)
}

async fn run(
    client: &reqwest::Client,
    bot: SocketAddr,
    service_url: &str,
    tokens: &Arc<Vec<String>>,
    next_token: &Arc<AtomicUsize>,
    requests: usize,
    concurrency: usize,
) -> Vec<String> {
    let remaining = Arc::new(AtomicUsize::new(requests));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let tokens = tokens.clone();
        let next_token = next_token.clone();
        let remaining = remaining.clone();
        let url = format!("http://{bot}/api/messages");
        let service_url = service_url.to_owned();
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut sent = Vec::new();
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let token = &tokens[next_token.fetch_add(1, Ordering::Relaxed) % tokens.len()];
                let sequence = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
                let body = activity(&service_url, sequence);
                let response = client
                    .post(&url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => sent.push(format!("msg-{sequence}")),
                    Ok(r) => failures.push(format!("msg-{sequence}: HTTP {}", r.status())),
                    Err(e) => failures.push(format!("msg-{sequence}: {e}")),
                }
            }
            (sent, failures)
        }));
    }
    let mut problems = Vec::new();
    let mut sent = Vec::new();
    for worker in workers {
        match worker.await {
            Ok((ok, failed)) => {
                sent.extend(ok);
                problems.extend(failed);
            }
            Err(e) => problems.push(format!("a client task failed: {e}")),
        }
    }
    // The bot posts the reply before it answers 200: every answered message has its reply.
    for id in sent {
        let replies = replies_to(&id);
        if replies != 1 {
            problems.push(format!("{id}: {replies} replies"));
        }
    }
    problems
}

fn activity(service_url: &str, sequence: usize) -> Value {
    json!({
        "type": "message",
        "id": format!("msg-{sequence}"),
        "channelId": "msteams",
        "serviceUrl": service_url,
        "text": "help",
        "from": {"id": "29:user", "aadObjectId": "c5e99701-2a32-49c1-a660-4629ceeb8c61"},
        "recipient": {"id": format!("28:{APP_ID}")},
        "conversation": {"id": format!("a:conversation-{}", sequence % CONVERSATIONS), "conversationType": "personal", "tenantId": TENANT_ID},
        "channelData": {"tenant": {"id": TENANT_ID}},
    })
}

fn mint_tokens(count: usize, service_url: &str) -> Vec<String> {
    let key = EncodingKey::from_rsa_pem(SIGNING_KEY.as_bytes()).expect("test key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".to_owned());
    let now = chrono::Utc::now().timestamp();
    (0..count)
        .map(|n| {
            let claims = json!({
                "iss": "https://api.botframework.com",
                "aud": APP_ID,
                "exp": now + 3600,
                "nbf": now - 60,
                "serviceurl": service_url,
                "jti": format!("bench-{n}"),
            });
            jsonwebtoken::encode(&header, &claims, &key).expect("token")
        })
        .collect()
}

async fn start_fakes() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let jwks: Value = serde_json::from_str(JWKS).expect("jwks");
    let keys = json!({"keys": [jwks["test"].clone()]});
    let metadata = json!({
        "issuer": "https://api.botframework.com",
        "jwks_uri": format!("http://{addr}/keys"),
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let router = Router::new()
        .route("/.well-known/openidconfiguration", get(move || async move { axum::Json(metadata) }))
        .route("/keys", get(move || async move { axum::Json(keys) }))
        .route(
            "/token",
            post(|| async {
                axum::Json(json!({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": "bench-connector-token"}))
            }),
        )
        .route(
            "/v3/conversations/{conversation}/activities/{activity}",
            post(|axum::extract::Path((_conversation, activity)): axum::extract::Path<(String, String)>| async move {
                DELIVERED.fetch_add(1, Ordering::Relaxed);
                *REPLIES
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(HashMap::new)
                    .entry(activity)
                    .or_default() += 1;
                (axum::http::StatusCode::CREATED, axum::Json(json!({"id": "1"})))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn spawn_bot(addr: SocketAddr, fakes: SocketAddr, dir: &tempfile::TempDir) -> Child {
    // `M365BOT_BENCH_BOT` runs another build of the bot (e.g. a saved baseline) in the same
    // scenario, for like-with-like comparisons.
    let binary = std::env::var_os("M365BOT_BENCH_BOT")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_m365bot").into());
    Command::new(binary)
        .arg("serve")
        .env_clear()
        .env("M365BOT_SERVER__LISTEN", addr.to_string())
        .env(
            "M365BOT_DATABASE__URL",
            format!("sqlite://{}", dir.path().join("bench.db").display()),
        )
        .env("M365BOT_BOT__APP_ID", APP_ID)
        .env("M365BOT_BOT__APP_PASSWORD", "bench-secret")
        .env("M365BOT_BOT__TENANT_ID", TENANT_ID)
        .env(
            "M365BOT_BOT__OPENID_METADATA_URL",
            format!("http://{fakes}/.well-known/openidconfiguration"),
        )
        .env(
            "M365BOT_BOT__OUTBOUND_TOKEN_URL",
            format!("http://{fakes}/token"),
        )
        .env("M365BOT_BOT__ALLOWED_SERVICE_URL_HOSTS", "[\"127.0.0.1\"]")
        .env("M365BOT_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the bot binary starts")
}

async fn wait_ready(client: &reqwest::Client, bot: SocketAddr) {
    for _ in 0..200 {
        if client
            .get(format!("http://{bot}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bot did not become ready");
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// CPU time of a process, in milliseconds.
#[derive(Clone, Copy)]
struct CpuTime {
    user: f64,
    system: f64,
}

impl CpuTime {
    fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTime {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        Self {
            user: self.user - other.user,
            system: self.system - other.system,
        }
    }
}

/// User and system CPU time of a process, in milliseconds (Linux `/proc`).
fn cpu_millis(pid: u32) -> CpuTime {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // The kernel's USER_HZ is 100 on Linux for every common architecture.
    let ms = |field: &str| field.parse::<f64>().expect("CPU ticks") * 10.0;
    CpuTime {
        user: ms(fields[11]),
        system: ms(fields[12]),
    }
}

/// Peak resident set size (VmHWM) of a process, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
