//! Fault injection for the emulators: added latency, 429 with `Retry-After` (every N requests
//! or with a probability) and a rate of 5xx answers, each in the error envelope of the
//! emulated service. Set at start ([`super::SandboxOptions`]) and changeable at runtime
//! ([`super::SandboxHandle::set_faults`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Shared;

/// Which emulator a setting or counter is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emulator {
    /// The ServiceNow instance.
    ServiceNow,
    /// Entra ID (login.microsoftonline.com).
    Entra,
    /// Microsoft Graph.
    Graph,
}

/// Faults of one emulator. The default injects nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Delay added to every matching request, in milliseconds.
    pub latency_ms: u64,
    /// Every Nth matching request (counted from when this config was set) gets 429.
    pub throttle_every: Option<u64>,
    /// Probability (0..=1) that a matching request gets 429.
    pub throttle_probability: f64,
    /// `Retry-After` seconds sent with an injected 429.
    pub retry_after_secs: u64,
    /// Every matching request in this many milliseconds after the config was set gets 429
    /// (a rate-limit window), with `Retry-After: retry_after_secs`.
    pub throttle_for_ms: u64,
    /// Probability (0..=1) that a matching request gets a 5xx.
    pub error_rate: f64,
    /// Status of injected server errors (500..=599; anything else means 503).
    pub error_status: u16,
    /// Injected server errors come as an HTML page (a failing node or a proxy in front of
    /// it) instead of the service's JSON error envelope.
    pub html_errors: bool,
    /// Only requests whose path starts with this are affected (`None`: all).
    pub path_prefix: Option<String>,
    /// Seed of the random draws, for reproducible tests (`None`: from the OS).
    pub seed: Option<u64>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            throttle_every: None,
            throttle_probability: 0.0,
            retry_after_secs: 1,
            throttle_for_ms: 0,
            error_rate: 0.0,
            error_status: 503,
            html_errors: false,
            path_prefix: None,
            seed: None,
        }
    }
}

impl FaultConfig {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a fixed latency.
    pub fn with_latency_ms(mut self, ms: u64) -> Self {
        self.latency_ms = ms;
        self
    }

    /// 429 on every `n`th request, with `Retry-After: retry_after_secs`.
    pub fn with_throttle_every(mut self, n: u64, retry_after_secs: u64) -> Self {
        self.throttle_every = Some(n.max(1));
        self.retry_after_secs = retry_after_secs;
        self
    }

    /// 429 with probability `p`, with `Retry-After: retry_after_secs`.
    pub fn with_throttle_probability(mut self, p: f64, retry_after_secs: u64) -> Self {
        self.throttle_probability = p;
        self.retry_after_secs = retry_after_secs;
        self
    }

    /// A storm: every request for `ms` milliseconds gets 429 with `Retry-After:
    /// retry_after_secs`.
    pub fn with_throttle_window(mut self, ms: u64, retry_after_secs: u64) -> Self {
        self.throttle_for_ms = ms;
        self.retry_after_secs = retry_after_secs;
        self
    }

    /// A 5xx (`error_status`) with probability `p`.
    pub fn with_error_rate(mut self, p: f64) -> Self {
        self.error_rate = p;
        self
    }

    /// Every request fails with `status` as an HTML page.
    pub fn with_html_errors(mut self, status: u16) -> Self {
        self.error_rate = 1.0;
        self.error_status = status;
        self.html_errors = true;
        self
    }

    /// Only requests under `prefix` are affected.
    pub fn with_path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.to_owned());
        self
    }

    /// Reproducible random draws.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// What the middleware decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 429 with this `Retry-After`.
    Throttle(u64),
    /// A server error with this status.
    ServerError(u16),
    /// A server error with this status, as an HTML page.
    HtmlError(u16),
}

/// One request an emulator received, as its fault layer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// A hash of the method, target, `Authorization` header and body: equal for a request
    /// sent again.
    pub fingerprint: u64,
    /// When it arrived.
    pub at: std::time::Instant,
    /// The status answered.
    pub status: u16,
    /// The `Retry-After` answered, in seconds, when there was one.
    pub retry_after_secs: Option<u64>,
    /// Who the emulator authenticated the request as (ServiceNow: the `sys_user` User ID).
    pub authenticated_as: Option<String>,
    /// How it was authenticated.
    pub auth_method: Option<AuthMethod>,
}

/// How an emulator authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// User name and password.
    Basic,
    /// An external JWT (an Entra token mapped through the OIDC provider configuration).
    Bearer,
    /// A token the instance issued itself (`/oauth_token.do`).
    OAuth,
}

/// Set by an emulator on its response: the authenticated principal, for the request log.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    pub(crate) user: String,
    pub(crate) method: AuthMethod,
}

/// Requests kept per emulator in the log; older ones are dropped.
const LOG_LIMIT: usize = 10_000;

struct Slot {
    config: FaultConfig,
    rng: StdRng,
    matched: u64,
    since: std::time::Instant,
}

impl Slot {
    fn new(config: FaultConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            config,
            rng,
            matched: 0,
            since: std::time::Instant::now(),
        }
    }

    /// Latency and fault for a request to `path`.
    fn decide(&mut self, path: &str) -> (Duration, Option<Fault>) {
        if let Some(prefix) = &self.config.path_prefix
            && !path.starts_with(prefix.as_str())
        {
            return (Duration::ZERO, None);
        }
        self.matched += 1;
        let latency = Duration::from_millis(self.config.latency_ms);
        let every = self
            .config
            .throttle_every
            .is_some_and(|n| n > 0 && self.matched.is_multiple_of(n));
        let p_throttle = self.config.throttle_probability.clamp(0.0, 1.0);
        let p_error = self.config.error_rate.clamp(0.0, 1.0);
        // Always draw both numbers so a seeded sequence does not depend on the settings.
        let draw_throttle: f64 = self.rng.random();
        let draw_error: f64 = self.rng.random();
        let in_window = self.since.elapsed() < Duration::from_millis(self.config.throttle_for_ms);
        if every || in_window || draw_throttle < p_throttle {
            return (latency, Some(Fault::Throttle(self.config.retry_after_secs)));
        }
        if draw_error < p_error {
            let status = if (500..=599).contains(&self.config.error_status) {
                self.config.error_status
            } else {
                503
            };
            let fault = if self.config.html_errors {
                Fault::HtmlError(status)
            } else {
                Fault::ServerError(status)
            };
            return (latency, Some(fault));
        }
        (latency, None)
    }
}

/// The fault settings and counters of the three emulators.
pub(crate) struct FaultHub {
    slots: [Mutex<Slot>; 3],
    counts: [AtomicU64; 3],
    logs: [Mutex<std::collections::VecDeque<LoggedRequest>>; 3],
}

fn index(emulator: Emulator) -> usize {
    match emulator {
        Emulator::ServiceNow => 0,
        Emulator::Entra => 1,
        Emulator::Graph => 2,
    }
}

impl FaultHub {
    pub(crate) fn new(servicenow: FaultConfig, entra: FaultConfig, graph: FaultConfig) -> Self {
        Self {
            slots: [
                Mutex::new(Slot::new(servicenow)),
                Mutex::new(Slot::new(entra)),
                Mutex::new(Slot::new(graph)),
            ],
            counts: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            logs: Default::default(),
        }
    }

    fn slot(&self, emulator: Emulator) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[index(emulator)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set(&self, emulator: Emulator, config: FaultConfig) {
        *self.slot(emulator) = Slot::new(config);
    }

    pub(crate) fn get(&self, emulator: Emulator) -> FaultConfig {
        self.slot(emulator).config.clone()
    }

    pub(crate) fn request_count(&self, emulator: Emulator) -> u64 {
        self.counts[index(emulator)].load(Ordering::Relaxed)
    }

    /// The requests one emulator received (the latest [`LOG_LIMIT`]), oldest first.
    pub(crate) fn request_log(&self, emulator: Emulator) -> Vec<LoggedRequest> {
        self.logs[index(emulator)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    fn log(&self, emulator: Emulator, entry: LoggedRequest) {
        let mut log = self.logs[index(emulator)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(entry);
    }

    fn decide(&self, emulator: Emulator, path: &str) -> (Duration, Option<Fault>) {
        self.counts[index(emulator)].fetch_add(1, Ordering::Relaxed);
        self.slot(emulator).decide(path)
    }
}

/// State of the fault middleware of one emulator.
#[derive(Clone)]
pub(crate) struct FaultLayer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) emulator: Emulator,
}

/// The middleware: counts, sleeps, then answers the fault or runs the emulator.
pub(crate) async fn middleware(
    State(layer): State<FaultLayer>,
    request: Request,
    next: Next,
) -> Response {
    let at = std::time::Instant::now();
    let method = request.method().to_string();
    let target = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |pq| pq.as_str().to_owned(),
    );
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&method, &target).hash(&mut hasher);
        parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
            .hash(&mut hasher);
        body.hash(&mut hasher);
        hasher.finish()
    };
    let request = Request::from_parts(parts, axum::body::Body::from(body));
    let (latency, fault) = layer
        .shared
        .faults
        .decide(layer.emulator, request.uri().path());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match fault {
        None => next.run(request).await,
        Some(Fault::HtmlError(status)) => html_error(status),
        Some(fault) => match layer.emulator {
            Emulator::ServiceNow => super::servicenow::fault_response(fault),
            Emulator::Entra => super::entra::fault_response(fault),
            Emulator::Graph => super::graph::fault_response(fault, request.headers()),
        },
    };
    let retry_after_secs = response
        .headers()
        .get(axum::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let authenticated = response.extensions().get::<Authenticated>().cloned();
    layer.shared.faults.log(
        layer.emulator,
        LoggedRequest {
            method,
            target,
            fingerprint,
            at,
            status: response.status().as_u16(),
            retry_after_secs,
            authenticated_as: authenticated.as_ref().map(|a| a.user.clone()),
            auth_method: authenticated.map(|a| a.method),
        },
    );
    response
}

/// A server error page as a failing node or its load balancer sends it: HTML, not JSON.
fn html_error(status: u16) -> Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    let reason = status.canonical_reason().unwrap_or("Server Error");
    let page = format!(
        "<!DOCTYPE html><html><head><title>{} {reason}</title></head><body><h1>{reason}</h1><p>The server encountered an error and could not complete your request.</p></body></html>",
        status.as_u16()
    );
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=UTF-8")],
        page,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_request_is_throttled_and_prefix_filters() {
        let mut slot = Slot::new(
            FaultConfig::none()
                .with_throttle_every(3, 7)
                .with_path_prefix("/api/"),
        );
        let faults: Vec<_> = (0..6).map(|_| slot.decide("/api/now/table/x").1).collect();
        assert_eq!(
            faults,
            vec![
                None,
                None,
                Some(Fault::Throttle(7)),
                None,
                None,
                Some(Fault::Throttle(7))
            ]
        );
        assert_eq!(slot.decide("/oauth_token.do").1, None);
    }

    #[test]
    fn seeded_error_rate_is_reproducible_and_roughly_right() {
        let run = || {
            let mut slot = Slot::new(FaultConfig::none().with_error_rate(0.25).with_seed(42));
            (0..1000)
                .filter(|_| slot.decide("/").1 == Some(Fault::ServerError(503)))
                .count()
        };
        let first = run();
        assert_eq!(first, run());
        assert!((150..=350).contains(&first), "{first}");
    }
}
