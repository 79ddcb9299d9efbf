//! Error types shared across boundaries: the HTTP error and the upstream retry classification.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// How an upstream failure should be handled by whoever retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// Connection refused, reset or timed out: retry with backoff.
    Network,
    /// The upstream is busy or briefly failing: retry, after `retry_after` when it said so.
    Transient {
        /// The wait the upstream asked for (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (bad request, forbidden, not found).
    Permanent,
}

impl RetryKind {
    /// Classifies an HTTP status with its `Retry-After` header value, if any.
    pub fn from_status(status: u16, retry_after: Option<&str>) -> Self {
        match status {
            429 | 412 | 500 | 502 | 503 | 504 => Self::Transient {
                retry_after: retry_after.and_then(parse_retry_after),
            },
            _ => Self::Permanent,
        }
    }

    /// True unless permanent.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Self::Permanent)
    }
}

/// Parses a `Retry-After` value given in seconds (the HTTP-date form is treated as unknown).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// An error answered to an HTTP caller: a status and a short JSON body, no internals.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or invalid credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (e.g. another tenant).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body is larger than allowed.
    #[error("payload too large")]
    PayloadTooLarge,
    /// A dependency (database) is down.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else; details are logged, never returned.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::BadRequest(_) => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            Self::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "request failed");
                "internal error; see the bot's log".to_owned()
            }
            Self::Unauthorized(m) | Self::Forbidden(m) | Self::BadRequest(m) => m.clone(),
            Self::Unavailable(m) => m.clone(),
            Self::PayloadTooLarge => "request body too large".to_owned(),
        };
        if !matches!(self, Self::Internal(_)) {
            // Debug, not info: a flood of bad requests must not flood the log.
            tracing::debug!(status = self.status().as_u16(), reason = %message, "request refused");
        }
        (
            self.status(),
            Json(json!({"error": {"code": self.code(), "message": message}})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_connector_table() {
        assert_eq!(
            RetryKind::from_status(429, Some("7")),
            RetryKind::Transient {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        for status in [412, 502, 503, 504] {
            assert!(
                RetryKind::from_status(status, None).is_retryable(),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 413] {
            assert_eq!(
                RetryKind::from_status(status, None),
                RetryKind::Permanent,
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_parsing_rejects_garbage() {
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-3"), None);
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
    }
}
