//! Prometheus metrics kept in process: request counts and latencies by route, upstream calls
//! by outcome, notification deliveries by outcome, throttling and poller leadership. Rendered
//! in the text exposition format at `/metrics` (with the outbox gauges read from the database
//! at scrape time, see [`crate::notify::outbox::gauges`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The outcomes of `m365bot_notify_deliveries_total`, always rendered (zero included).
const DELIVERY_OUTCOMES: [&str; 6] = [
    "delivered",
    "merged",
    "dead",
    "retried",
    "throttled",
    "deferred",
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counts and latencies of one route.
#[derive(Default)]
struct RouteStats {
    /// Requests answered, by status.
    statuses: BTreeMap<u16, u64>,
    latency: Histogram,
}

#[derive(Default)]
struct Inner {
    /// By route; looked up by `&str`, so recording allocates only for a route's first request.
    routes: BTreeMap<String, RouteStats>,
    upstream: BTreeMap<(&'static str, &'static str), u64>,
    /// Outbox rows by what became of a delivery attempt.
    deliveries: BTreeMap<&'static str, u64>,
    /// 429 answers of the Bot Connector to notification deliveries.
    throttled: u64,
    /// Conversations frozen after a `Retry-After`.
    freezes: u64,
    /// App-wide pauses after a 429 with `Retry-After`.
    app_pauses: u64,
    /// Whether this instance leads each enabled poller.
    leaders: BTreeMap<&'static str, bool>,
    /// Polls by source and outcome (`ok`, `failed`).
    polls: BTreeMap<(&'static str, &'static str), u64>,
    /// When each source was last polled successfully (Unix seconds).
    last_poll_ok: BTreeMap<&'static str, i64>,
    /// Outbox rows deleted by the retention purge.
    purged: u64,
    runtime_auth_failures: u64,
    trust: Option<TrustGauges>,
    /// Slack notification events by kind (see [`SLACK_EVENTS`]).
    slack: BTreeMap<&'static str, u64>,
}

/// The kinds of `m365bot_slack_notify_total`, always rendered (zero included).
const SLACK_EVENTS: [&str; 8] = [
    "delivered",
    "retried",
    "throttled",
    "disabled_subscriptions",
    "unknown_outcome",
    "recovered_after_unknown",
    "resent_after_unknown",
    "notices_sent",
];

/// What the last scheduled doctor found, as every replica reads it from the database.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrustGauges {
    /// When the last scheduled doctor ran (Unix seconds), if it ever did.
    pub last_doctor_run: Option<i64>,
    /// Watched subjects (checks, secrets, the runtime path) failing now.
    pub failing_checks: i64,
    /// Days until the nearest client secret expires (negative: expired), if known.
    pub nearest_secret_expiry_days: Option<f64>,
}

/// The registry; cheap to update from any task.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one answered HTTP request.
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let stats = match inner.routes.get_mut(route) {
            Some(stats) => stats,
            None => inner.routes.entry(route.to_owned()).or_default(),
        };
        *stats.statuses.entry(status).or_default() += 1;
        let histogram = &mut stats.latency;
        let seconds = elapsed.as_secs_f64();
        for (slot, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *slot += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Records one call to an upstream (`connector`, `entra`, `servicenow`, `graph`) and its
    /// outcome (`ok`, `transient`, `permanent`, `network`).
    pub fn record_upstream(&self, upstream: &'static str, outcome: &'static str) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.upstream.entry((upstream, outcome)).or_default() += 1;
        }
    }

    /// Counts `rows` outbox rows whose delivery attempt ended as `outcome` (`delivered`,
    /// `merged`, `dead`, `retried`, `throttled`, `deferred`).
    pub fn record_deliveries(&self, outcome: &'static str, rows: usize) {
        if rows == 0 {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            *inner.deliveries.entry(outcome).or_default() += rows as u64;
        }
    }

    /// Outbox rows counted with `outcome` so far.
    pub fn deliveries(&self, outcome: &str) -> u64 {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.deliveries.get(outcome).copied())
            .unwrap_or(0)
    }

    /// Records a 429 from the connector; `freeze` when it froze the conversation and paused
    /// the app (it came with `Retry-After`).
    pub fn record_throttled(&self, freeze: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.throttled += 1;
            if freeze {
                inner.freezes += 1;
                inner.app_pauses += 1;
            }
        }
    }

    /// Records a conversation frozen by a `Retry-After` on another answer than 429.
    pub fn record_freeze(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.freezes += 1;
        }
    }

    /// Counts `count` Slack notification events of `kind` (one of [`SLACK_EVENTS`]: lanes
    /// delivered, retried, throttled by a 429; subscriptions disabled; root posts of unknown
    /// outcome, found again in the history, or posted again: a possible duplicate).
    pub fn record_slack(&self, kind: &'static str, count: usize) {
        if count == 0 {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            *inner.slack.entry(kind).or_default() += count as u64;
        }
    }

    /// Slack notification events of `kind` so far.
    pub fn slack(&self, kind: &str) -> u64 {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.slack.get(kind).copied())
            .unwrap_or(0)
    }

    /// Says whether this instance leads the poller of `source`.
    pub fn set_leader(&self, source: &'static str, leading: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.leaders.insert(source, leading);
        }
    }

    /// Records one poll of `source` by this instance, successful or not.
    pub fn record_poll(&self, source: &'static str, ok: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            let outcome = if ok { "ok" } else { "failed" };
            *inner.polls.entry((source, outcome)).or_default() += 1;
            if ok {
                inner
                    .last_poll_ok
                    .insert(source, chrono::Utc::now().timestamp());
            }
        }
    }

    /// Counts outbox rows deleted by the retention purge.
    pub fn record_purged(&self, rows: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.purged += rows;
        }
    }

    /// Whether this instance leads the poller of `source` (`None`: it does not run it).
    pub fn leader(&self, source: &str) -> Option<bool> {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.leaders.get(source).copied())
    }

    /// Replaces the trust gauges.
    pub fn set_trust(&self, gauges: TrustGauges) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.trust = Some(gauges);
        }
    }

    /// Records one runtime ServiceNow call refused (401/403) or left without a token.
    pub fn record_runtime_auth_failure(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.runtime_auth_failures += 1;
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let Ok(inner) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        out.push_str(
            "# HELP m365bot_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE m365bot_http_requests_total counter\n");
        for (route, stats) in &inner.routes {
            let route = escape(route);
            for (status, count) in &stats.statuses {
                let _ = writeln!(
                    out,
                    "m365bot_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str("# HELP m365bot_http_request_duration_seconds Time to answer HTTP requests, by route.\n");
        out.push_str("# TYPE m365bot_http_request_duration_seconds histogram\n");
        for (route, stats) in &inner.routes {
            let route = escape(route);
            let histogram = &stats.latency;
            for (bound, count) in BUCKETS.iter().zip(histogram.counts) {
                let _ = writeln!(
                    out,
                    "m365bot_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "m365bot_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "m365bot_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "m365bot_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                histogram.count
            );
        }
        out.push_str(
            "# HELP m365bot_upstream_calls_total Calls to upstream services, by outcome.\n",
        );
        out.push_str("# TYPE m365bot_upstream_calls_total counter\n");
        for ((upstream, outcome), count) in &inner.upstream {
            let _ = writeln!(
                out,
                "m365bot_upstream_calls_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        out.push_str("# HELP m365bot_slack_notify_total Slack notification events: lanes delivered, retried, throttled (429); subscriptions disabled; root posts of unknown outcome, recovered from the history, or posted again (possible duplicates); disabled-subscription messages sent.\n");
        out.push_str("# TYPE m365bot_slack_notify_total counter\n");
        for kind in SLACK_EVENTS {
            let count = inner.slack.get(kind).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "m365bot_slack_notify_total{{event=\"{kind}\"}} {count}"
            );
        }
        out.push_str("# HELP m365bot_notify_deliveries_total Outbox rows by the outcome of their delivery attempt.\n");
        out.push_str("# TYPE m365bot_notify_deliveries_total counter\n");
        for outcome in DELIVERY_OUTCOMES {
            let count = inner.deliveries.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "m365bot_notify_deliveries_total{{outcome=\"{outcome}\"}} {count}"
            );
        }
        for (name, help, value) in [
            (
                "m365bot_notify_throttled_total",
                "Answers 429 of the Bot Connector to notification deliveries.",
                inner.throttled,
            ),
            (
                "m365bot_notify_conversation_freezes_total",
                "Conversations frozen until a Retry-After passed.",
                inner.freezes,
            ),
            (
                "m365bot_notify_app_pauses_total",
                "App-wide delivery pauses after a 429 with Retry-After.",
                inner.app_pauses,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out.push_str("# HELP m365bot_poller_leader 1 when this instance holds the lease of the source's poller, 0 when another one does.\n");
        out.push_str("# TYPE m365bot_poller_leader gauge\n");
        for (source, leading) in &inner.leaders {
            let _ = writeln!(
                out,
                "m365bot_poller_leader{{source=\"{source}\"}} {}",
                u8::from(*leading)
            );
        }
        out.push_str("# HELP m365bot_poller_polls_total Polls of a notification source by this instance, by outcome (ok, failed).\n");
        out.push_str("# TYPE m365bot_poller_polls_total counter\n");
        for ((source, outcome), count) in &inner.polls {
            let _ = writeln!(
                out,
                "m365bot_poller_polls_total{{source=\"{source}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        out.push_str("# HELP m365bot_poller_last_success_timestamp_seconds When this instance last polled the source successfully (Unix seconds).\n");
        out.push_str("# TYPE m365bot_poller_last_success_timestamp_seconds gauge\n");
        for (source, at) in &inner.last_poll_ok {
            let _ = writeln!(
                out,
                "m365bot_poller_last_success_timestamp_seconds{{source=\"{source}\"}} {at}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP m365bot_notify_purged_total Outbox rows deleted by the retention purge.\n\
             # TYPE m365bot_notify_purged_total counter\nm365bot_notify_purged_total {}",
            inner.purged
        );
        out.push_str("# HELP m365bot_runtime_auth_failures_total Runtime ServiceNow calls (as the integration user) refused or left without a token.\n");
        out.push_str("# TYPE m365bot_runtime_auth_failures_total counter\n");
        let _ = writeln!(
            out,
            "m365bot_runtime_auth_failures_total {}",
            inner.runtime_auth_failures
        );
        if let Some(trust) = &inner.trust {
            render_trust(&mut out, trust);
        }
        out
    }
}

fn render_trust(out: &mut String, trust: &TrustGauges) {
    if let Some(at) = trust.last_doctor_run {
        out.push_str("# HELP m365bot_doctor_last_run_timestamp_seconds When the scheduled doctor last ran (any replica).\n");
        out.push_str("# TYPE m365bot_doctor_last_run_timestamp_seconds gauge\n");
        let _ = writeln!(out, "m365bot_doctor_last_run_timestamp_seconds {at}");
    }
    out.push_str("# HELP m365bot_doctor_failing_checks Watched checks failing now (doctor checks, secrets, the runtime path).\n");
    out.push_str("# TYPE m365bot_doctor_failing_checks gauge\n");
    let _ = writeln!(
        out,
        "m365bot_doctor_failing_checks {}",
        trust.failing_checks
    );
    if let Some(days) = trust.nearest_secret_expiry_days {
        out.push_str("# HELP m365bot_secret_expiry_days Days until the integration's nearest client secret expires.\n");
        out.push_str("# TYPE m365bot_secret_expiry_days gauge\n");
        let _ = writeln!(out, "m365bot_secret_expiry_days {days:.2}");
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.record_request("/api/messages", 200, Duration::from_millis(3));
        metrics.record_request("/api/messages", 401, Duration::from_millis(1));
        metrics.record_upstream("connector", "ok");
        let text = metrics.render();
        assert!(
            text.contains("m365bot_http_requests_total{route=\"/api/messages\",status=\"200\"} 1")
        );
        assert!(text.contains(
            "m365bot_http_request_duration_seconds_bucket{route=\"/api/messages\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "m365bot_http_request_duration_seconds_bucket{route=\"/api/messages\",le=\"0.001\"} 1"
        ));
        assert!(
            text.contains("m365bot_upstream_calls_total{upstream=\"connector\",outcome=\"ok\"} 1")
        );
        assert!(!text.contains("m365bot_doctor_failing_checks"), "{text}");
    }

    #[test]
    fn renders_the_trust_gauges_once_set() {
        let metrics = Metrics::default();
        metrics.set_trust(TrustGauges {
            last_doctor_run: Some(1_700_000_000),
            failing_checks: 2,
            nearest_secret_expiry_days: Some(19.5),
        });
        let text = metrics.render();
        assert!(
            text.contains("m365bot_doctor_last_run_timestamp_seconds 1700000000"),
            "{text}"
        );
        assert!(text.contains("m365bot_doctor_failing_checks 2"), "{text}");
        assert!(text.contains("m365bot_secret_expiry_days 19.50"), "{text}");
    }

    #[test]
    fn renders_delivery_counters_and_leadership() {
        let metrics = Metrics::default();
        metrics.record_deliveries("delivered", 3);
        metrics.record_deliveries("dead", 0);
        metrics.record_throttled(true);
        metrics.record_throttled(false);
        metrics.set_leader("servicenow", true);
        metrics.set_leader("service_health", false);
        let text = metrics.render();
        assert!(text.contains("m365bot_notify_deliveries_total{outcome=\"delivered\"} 3"));
        assert!(text.contains("m365bot_notify_deliveries_total{outcome=\"dead\"} 0"));
        assert!(text.contains("m365bot_notify_throttled_total 2"));
        assert!(text.contains("m365bot_notify_conversation_freezes_total 1"));
        assert!(text.contains("m365bot_poller_leader{source=\"servicenow\"} 1"));
        assert!(text.contains("m365bot_poller_leader{source=\"service_health\"} 0"));
        assert_eq!(metrics.leader("servicenow"), Some(true));
        assert_eq!(metrics.leader("graph"), None);
    }

    #[test]
    fn renders_polls_and_the_purge() {
        let metrics = Metrics::default();
        metrics.record_poll("servicenow", true);
        metrics.record_poll("servicenow", false);
        metrics.record_poll("servicenow", false);
        metrics.record_purged(1_000);
        metrics.record_purged(5);
        let text = metrics.render();
        assert!(
            text.contains("m365bot_poller_polls_total{source=\"servicenow\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("m365bot_poller_polls_total{source=\"servicenow\",outcome=\"failed\"} 2")
        );
        let stamp = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "m365bot_poller_last_success_timestamp_seconds{source=\"servicenow\"} ",
                )
            })
            .and_then(|v| v.parse::<i64>().ok())
            .expect("last success gauge");
        assert!((chrono::Utc::now().timestamp() - stamp).abs() < 60);
        assert!(!text.contains("last_success_timestamp_seconds{source=\"service_health\"}"));
        assert!(text.contains("m365bot_notify_purged_total 1005"));
    }
}
