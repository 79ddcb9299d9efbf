//! Test helpers of the notify feature.
//!
//! Self-contained on purpose (only crate and dependency paths, nothing from `super`):
//! `benches/notify.rs` and the crash test include this file by path. Keep additions free of
//! `super::` references.
//!
//! [`LoadConnector`] is a fast fake Bot Connector for the delivery tests and benchmarks: it
//! answers send / reply / update / create conversation and `POST /token`, keeps only what the
//! tests count (successful deliveries by conversation and `summary`, failures by kind), and
//! can misbehave on demand: a share of 5xx, 429 and slow answers, Teams' rate limits enforced
//! over a sliding one-second window (429 with `Retry-After` above them), and conversations
//! the bot was removed from (403 `BotNotInConversationRoster`).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{TimeZone, Utc};
use m365bot::app::{App, Application};
use m365bot::config::Settings;
use m365bot::db::conversations::ConversationRef;
use m365bot::notify::event::{CaseEvent, EventSource};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The bot identity of the notify tests.
pub const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
/// The tenant of the notify tests.
pub const TENANT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

/// How the fake misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Share of requests answered 503 (0.0 to 1.0).
    pub server_error: f64,
    /// Share answered 429 without `Retry-After`.
    pub throttle: f64,
    /// Share answered after `slow_delay` (a client timeout).
    pub slow: f64,
    /// Delay of a slow answer.
    pub slow_delay: Duration,
    /// Calls allowed per second per conversation (sliding window); 0 = unlimited.
    pub per_conversation_per_second: usize,
    /// Calls allowed per second in total; 0 = unlimited.
    pub global_per_second: usize,
    /// Keep every successful request's body.
    pub record_bodies: bool,
}

/// One successful connector call.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `send`, `reply`, `update` or `create`.
    pub kind: &'static str,
    /// Conversation id, decoded.
    pub conversation_id: String,
    /// Activity id of reply / update.
    pub activity_id: Option<String>,
    /// The activity's `summary` (identifies the case update).
    pub summary: String,
    /// The id the fake answered with.
    pub answered_id: String,
    /// The body, when bodies are recorded.
    pub body: Option<Value>,
    /// When it was answered.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    faults: Faults,
    removed: HashSet<String>,
    deliveries: Vec<Delivery>,
    server_errors: u64,
    throttled: u64,
    rate_limited: u64,
    slow: u64,
    forbidden: u64,
    window_global: VecDeque<Instant>,
    window_conversation: HashMap<String, VecDeque<Instant>>,
}

struct Shared {
    inner: Mutex<Inner>,
    ids: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fake connector; stopped when dropped.
pub struct LoadConnector {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl LoadConnector {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start(faults: Faults) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                faults,
                ..Inner::default()
            }),
            ids: AtomicU64::new(1_800_000_000_000),
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/v3/conversations", post(create))
            .route("/v3/conversations/{conversation}/activities", post(send))
            .route(
                "/v3/conversations/{conversation}/activities/{activity}",
                post(reply).put(update),
            )
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake connector");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self {
            addr,
            shared,
            shutdown,
        }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn service_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Changes the faults.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// Answers 403 `BotNotInConversationRoster` for this conversation from now on.
    pub fn remove_bot(&self, conversation_id: &str) {
        self.shared
            .lock()
            .removed
            .insert(conversation_id.to_owned());
    }

    /// Every successful call so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }

    /// Number of successful calls so far.
    pub fn delivery_count(&self) -> usize {
        self.shared.lock().deliveries.len()
    }

    /// Distinct (conversation, summary) pairs delivered.
    pub fn unique_messages(&self) -> usize {
        let inner = self.shared.lock();
        inner
            .deliveries
            .iter()
            .map(|d| (d.conversation_id.as_str(), d.summary.as_str()))
            .collect::<HashSet<_>>()
            .len()
    }

    /// Failures served: (503, 429 random, 429 rate limit, slow, 403).
    pub fn failures(&self) -> (u64, u64, u64, u64, u64) {
        let inner = self.shared.lock();
        (
            inner.server_errors,
            inner.throttled,
            inner.rate_limited,
            inner.slow,
            inner.forbidden,
        )
    }

    /// 429s served because a rate limit was exceeded.
    pub fn rate_limited(&self) -> u64 {
        self.shared.lock().rate_limited
    }

    /// Waits until `count` successful calls arrived (panics after `timeout`).
    pub async fn wait_for(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.delivery_count() < count {
            assert!(
                Instant::now() < deadline,
                "expected {count} deliveries within {timeout:?}, got {}",
                self.delivery_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LoadConnector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn token() -> Response {
    axum::Json(
        json!({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600,
        "access_token": "notify-fake-token"}),
    )
    .into_response()
}

fn teams_error(status: StatusCode, code: &str, retry_after: Option<u64>) -> Response {
    let mut response = (
        status,
        axum::Json(json!({"error": {"code": code, "message": "fake connector"}})),
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_str(&seconds.to_string()).expect("header"),
        );
    }
    response
}

/// Decides the answer: fault, rate limit, removed bot, or success (recorded).
async fn handle(
    shared: &Shared,
    kind: &'static str,
    conversation_id: String,
    activity_id: Option<String>,
    body: &Bytes,
) -> Response {
    enum Decision {
        Fail(Response),
        Slow(Duration),
        Ok,
    }
    let decision = {
        let mut inner = shared.lock();
        let faults = inner.faults.clone();
        let roll: f64 = rand::random();
        let now = Instant::now();
        if inner.removed.contains(&conversation_id) {
            inner.forbidden += 1;
            Decision::Fail(teams_error(
                StatusCode::FORBIDDEN,
                "BotNotInConversationRoster",
                None,
            ))
        } else if roll < faults.server_error {
            inner.server_errors += 1;
            Decision::Fail(teams_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceError",
                None,
            ))
        } else if roll < faults.server_error + faults.throttle {
            inner.throttled += 1;
            Decision::Fail(teams_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                None,
            ))
        } else {
            let second = Duration::from_secs(1);
            let global_full = faults.global_per_second > 0 && {
                let window = &mut inner.window_global;
                while window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= second)
                {
                    window.pop_front();
                }
                window.len() >= faults.global_per_second
            };
            let conversation_full = faults.per_conversation_per_second > 0 && {
                let window = inner
                    .window_conversation
                    .entry(conversation_id.clone())
                    .or_default();
                while window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= second)
                {
                    window.pop_front();
                }
                window.len() >= faults.per_conversation_per_second
            };
            if global_full || conversation_full {
                inner.rate_limited += 1;
                Decision::Fail(teams_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Throttled",
                    Some(1),
                ))
            } else {
                if faults.global_per_second > 0 {
                    inner.window_global.push_back(now);
                }
                if faults.per_conversation_per_second > 0
                    && let Some(window) = inner.window_conversation.get_mut(&conversation_id)
                {
                    window.push_back(now);
                }
                if roll < faults.server_error + faults.throttle + faults.slow {
                    inner.slow += 1;
                    Decision::Slow(faults.slow_delay)
                } else {
                    Decision::Ok
                }
            }
        }
    };
    match decision {
        Decision::Fail(response) => return response,
        Decision::Slow(delay) => tokio::time::sleep(delay).await,
        Decision::Ok => {}
    }
    let record_bodies = shared.lock().faults.record_bodies;
    let (summary, parsed) = if record_bodies {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let summary = parsed["summary"].as_str().unwrap_or_default().to_owned();
        (summary, Some(parsed))
    } else {
        // Only the summary: no JSON tree for the card (the fake shares the CPU with the bot).
        #[derive(serde::Deserialize)]
        struct Summary {
            #[serde(default)]
            summary: String,
        }
        let summary = serde_json::from_slice::<Summary>(body)
            .map(|s| s.summary)
            .unwrap_or_default();
        (summary, None)
    };
    let answered_id = match (kind, &activity_id) {
        ("update", Some(id)) => id.clone(),
        _ => shared.ids.fetch_add(1, Ordering::Relaxed).to_string(),
    };
    let mut inner = shared.lock();
    inner.deliveries.push(Delivery {
        kind,
        conversation_id,
        activity_id,
        summary,
        answered_id: answered_id.clone(),
        body: parsed,
        at: Instant::now(),
    });
    drop(inner);
    let status = if kind == "update" {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, axum::Json(json!({"id": answered_id}))).into_response()
}

async fn send(
    State(shared): State<Arc<Shared>>,
    Path(conversation): Path<String>,
    body: Bytes,
) -> Response {
    handle(&shared, "send", conversation, None, &body).await
}

async fn reply(
    State(shared): State<Arc<Shared>>,
    Path((conversation, activity)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    handle(&shared, "reply", conversation, Some(activity), &body).await
}

async fn update(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path((conversation, activity)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    debug_assert_eq!(method, Method::PUT);
    handle(&shared, "update", conversation, Some(activity), &body).await
}

async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let channel = parsed["channelData"]["channel"]["id"]
        .as_str()
        .unwrap_or("a:new")
        .to_owned();
    handle(&shared, "create", channel, None, &body).await
}

/// TOML of the settings that point a bot at `fake` with `database_url`, plus `extra`.
pub fn settings_toml(fake: &LoadConnector, database_url: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{database_url}\"\nmax_connections = 8\n\
         [bot]\napp_id = \"{APP_ID}\"\napp_password = \"notify-test-secret\"\ntenant_id = \"{TENANT_ID}\"\n\
         outbound_token_url = \"{}\"\nallowed_service_url_hosts = [\"127.0.0.1\"]\n\
         [log]\nfilter = \"warn\"\n{extra}",
        fake.token_url()
    )
}

/// A built application (database migrated, nothing served) for driving workers directly.
pub async fn build_app(fake: &LoadConnector, database_url: &str, notifications: &str) -> Arc<App> {
    let toml = settings_toml(
        fake,
        database_url,
        &format!("[notifications]\n{notifications}\n"),
    );
    let settings = Settings::from_toml_str(&toml).expect("notify test settings");
    Application::build(settings)
        .await
        .expect("application builds")
        .app()
}

/// Fast retry settings for tests (`[notifications]` body), delivery off in the built app.
pub const FAST_RETRIES: &str = "deliver = false\nretry_base_ms = 5\nretry_max_ms = 50\nsend_timeout_ms = 2000\nper_conversation_per_second = 0\nper_app_per_second = 0\npoll_interval_ms = 10\nmax_attempts = 30\nbatch_size = 200\nconcurrency = 32";

/// The reference of a channel conversation at `service_url`.
pub fn channel_ref(conversation_id: &str, service_url: &str) -> ConversationRef {
    ConversationRef {
        conversation_id: conversation_id.to_owned(),
        platform: "msteams".to_owned(),
        service_url: service_url.to_owned(),
        tenant_id: TENANT_ID.to_owned(),
        conversation_type: "channel".to_owned(),
        team_id: Some("19:team@thread.tacv2".to_owned()),
        channel_id: Some(conversation_id.to_owned()),
        bot_id: format!("28:{APP_ID}"),
        user_id: Some("29:subscriber".to_owned()),
        user_aad_object_id: None,
    }
}

/// The reference of the 1:1 chat of `user_id`.
pub fn personal_ref(conversation_id: &str, user_id: &str, service_url: &str) -> ConversationRef {
    ConversationRef {
        conversation_id: conversation_id.to_owned(),
        platform: "msteams".to_owned(),
        service_url: service_url.to_owned(),
        tenant_id: TENANT_ID.to_owned(),
        conversation_type: "personal".to_owned(),
        team_id: None,
        channel_id: None,
        bot_id: format!("28:{APP_ID}"),
        user_id: Some(user_id.to_owned()),
        user_aad_object_id: None,
    }
}

/// Channel conversation id number `n`.
pub fn channel_id(n: usize) -> String {
    format!("19:channel-{n}@thread.tacv2")
}

/// A ServiceNow incident update: case `n`, revision `revision`, in `state`.
pub fn incident(n: usize, revision: u32, state: &str) -> CaseEvent {
    CaseEvent {
        source: EventSource::ServiceNow,
        case_key: format!("servicenow:incident:{n:032x}"),
        revision: revision.to_string(),
        number: format!("INC{:07}", 10_000 + n),
        title: format!("Exchange Online mail flow delayed ({n})"),
        state: state.to_owned(),
        previous_state: None,
        priority: Some("2 - High".to_owned()),
        service: Some("Exchange Online".to_owned()),
        assignment_group: Some("Service Desk".to_owned()),
        microsoft_case: Some(format!("25112700{n:08}")),
        url: Some(format!(
            "https://contoso.service-now.com/incident.do?sys_id={n:032x}"
        )),
        latest_note: Some(format!("Update {revision} from Microsoft support.")),
        resolved: state == "Resolved",
        updated_at: Utc
            .timestamp_millis_opt(1_764_000_000_000 + i64::from(revision) * 60_000)
            .single()
            .expect("valid time"),
    }
}
