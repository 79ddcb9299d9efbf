//! The one retry policy of the upstream clients (ServiceNow, Entra ID, Graph): a 429 or 503
//! is retried after the wait the service asked for (`Retry-After` in seconds or as an HTTP
//! date, ServiceNow's `X-RateLimit-Reset`), never earlier, with bounded attempts and a bounded
//! total wait. Anything else is answered at once.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{RawResponse, header_str};

/// Statuses retried by the policy.
const RETRIED_STATUSES: [u16; 2] = [429, 503];

/// How often and how long a throttled request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Most time spent waiting between attempts, summed.
    pub max_total_wait: Duration,
    /// Wait before the first retry when the service named none (doubled for each retry).
    pub default_wait: Duration,
}

/// The policy every upstream client uses.
pub const STANDARD: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    max_total_wait: Duration::from_secs(10),
    default_wait: Duration::from_secs(1),
};

impl RetryPolicy {
    /// One sentence for a report: what was tried before giving up on `wait_asked`.
    pub fn gave_up(&self, wait_asked: Option<Duration>) -> String {
        match wait_asked {
            Some(wait) if wait > self.max_total_wait => format!(
                "gave up: the service asked to wait {} s, longer than the {} s the bot waits",
                wait.as_secs(),
                self.max_total_wait.as_secs()
            ),
            _ => format!(
                "gave up after {} attempts within {} s, each after the wait the service asked for",
                self.max_attempts,
                self.max_total_wait.as_secs()
            ),
        }
    }
}

/// The wait a 429 or 503 asks for: the longest of `Retry-After` (seconds or HTTP date) and
/// `X-RateLimit-Reset` (UNIX seconds), measured from `now`. `None` when neither is given.
pub fn requested_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let retry_after = header_str(headers, RETRY_AFTER.as_str()).and_then(|value| {
        crate::error::parse_retry_after(value).or_else(|| {
            let date = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
            Some(until(epoch_seconds_f64(date.timestamp_millis()), now))
        })
    });
    let reset = header_str(headers, "x-ratelimit-reset")
        .and_then(|value| value.trim().parse::<i64>().ok())
        .map(|seconds| until(epoch_seconds_f64(seconds.saturating_mul(1000)), now));
    match (retry_after, reset) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
    .map(|wait| wait.min(Duration::from_secs(3600)))
}

fn epoch_seconds_f64(millis: i64) -> f64 {
    millis as f64 / 1000.0
}

/// Time from `now` until `epoch_seconds` (zero when it has passed).
fn until(epoch_seconds: f64, now: SystemTime) -> Duration {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    Duration::from_secs_f64((epoch_seconds - now).max(0.0))
}

/// Runs `attempt` until it answers something other than 429/503, the attempts run out, or the
/// next wait would exceed the total; then returns the last answer. Errors are returned at once.
pub async fn with_retry<E, F, Fut>(policy: RetryPolicy, mut attempt: F) -> Result<RawResponse, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<RawResponse, E>>,
{
    let mut waited = Duration::ZERO;
    let mut fallback = policy.default_wait;
    let mut made = 0;
    loop {
        let raw = attempt().await?;
        made += 1;
        if !RETRIED_STATUSES.contains(&raw.status) || made >= policy.max_attempts {
            return Ok(raw);
        }
        let wait = match requested_wait(&raw.headers, SystemTime::now()) {
            Some(asked) => asked,
            None => {
                let wait = fallback;
                fallback = fallback.saturating_mul(2);
                wait
            }
        };
        // A little past the asked time, so clock granularity never makes it early.
        let wait = wait + Duration::from_millis(50);
        if waited + wait > policy.max_total_wait {
            return Ok(raw);
        }
        tracing::debug!(
            status = raw.status,
            wait_ms = wait.as_millis() as u64,
            "upstream throttled; retrying"
        );
        tokio::time::sleep(wait).await;
        waited += wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn waits_come_from_seconds_dates_and_rate_limit_resets() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            requested_wait(&headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480 + 0; 07:28:10 is ten seconds later.
        assert_eq!(
            requested_wait(
                &headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:10 GMT")]),
                now
            ),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            requested_wait(
                &headers(&[("retry-after", "1"), ("x-ratelimit-reset", "1445412485")]),
                now
            ),
            Some(Duration::from_secs(5)),
            "the later of the two"
        );
        assert_eq!(
            requested_wait(&headers(&[("retry-after", "soon")]), now),
            None
        );
        assert_eq!(requested_wait(&HeaderMap::new(), now), None);
    }

    #[tokio::test]
    async fn retries_429_after_the_wait_and_stops_at_the_budget() {
        let started = std::time::Instant::now();
        let mut calls = 0;
        let raw = with_retry::<(), _, _>(STANDARD, || {
            calls += 1;
            let status = if calls < 3 { 429 } else { 200 };
            let raw = RawResponse::new(status, headers(&[("retry-after", "0.2")]), "{}");
            async move { Ok(raw) }
        })
        .await
        .expect("answer");
        assert_eq!((raw.status, calls), (200, 3));
        assert!(started.elapsed() >= Duration::from_millis(400));

        let mut calls = 0;
        let raw = with_retry::<(), _, _>(STANDARD, || {
            calls += 1;
            let raw = RawResponse::new(429, headers(&[("retry-after", "60")]), "{}");
            async move { Ok(raw) }
        })
        .await
        .expect("answer");
        assert_eq!(
            (raw.status, calls),
            (429, 1),
            "a wait beyond the budget is not taken"
        );

        let mut calls = 0;
        let raw = with_retry::<(), _, _>(STANDARD, || {
            calls += 1;
            let raw = RawResponse::new(500, HeaderMap::new(), "<html></html>");
            async move { Ok(raw) }
        })
        .await
        .expect("answer");
        assert_eq!(
            (raw.status, calls),
            (500, 1),
            "only 429 and 503 are retried"
        );
    }
}
