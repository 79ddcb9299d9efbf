//! Upstream clients: the ServiceNow Table API, Entra ID and Microsoft Graph, plus what they
//! share: bounded body reading, JSON decoding that turns odd bodies into typed errors (never a
//! panic), retry classification and metrics.
//!
//! Every client takes the shared `reqwest::Client` and its base URL as constructor
//! parameters, so tests and the sandbox point them at fakes.

pub mod entra;
pub mod graph;
pub mod oauth;
pub mod retry;
pub mod servicenow;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::RetryKind;
use crate::metrics::Metrics;

/// Largest success body read, in bytes; a larger body is a [`DecodeError::TooLarge`].
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest error body read, in bytes; the rest is dropped.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Characters of a body quoted in an error message.
pub const EXCERPT_CHARS: usize = 200;

/// Classifies a response by status and the wait it asks for ([`retry::requested_wait`]).
pub fn classify(status: u16, headers: &HeaderMap) -> RetryKind {
    match RetryKind::from_status(status, None) {
        RetryKind::Transient { .. } => RetryKind::Transient {
            retry_after: retry_after(headers),
        },
        other => other,
    }
}

/// The wait a throttled answer asks for: `Retry-After` (seconds or HTTP date) or
/// `X-RateLimit-Reset`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry::requested_wait(headers, std::time::SystemTime::now())
}

/// A header value as text, when present and visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The metrics label of an outcome: `ok` for `None`, else the retry kind.
pub fn outcome_label(failure: Option<RetryKind>) -> &'static str {
    match failure {
        None => "ok",
        Some(RetryKind::Network) => "network",
        Some(RetryKind::Transient { .. }) => "transient",
        Some(RetryKind::Permanent) => "permanent",
    }
}

/// Records call outcomes for one upstream, when a registry was given.
#[derive(Clone)]
pub(crate) struct Recorder {
    metrics: Option<Arc<Metrics>>,
    upstream: &'static str,
}

impl Recorder {
    pub(crate) fn new(upstream: &'static str) -> Self {
        Self {
            metrics: None,
            upstream,
        }
    }

    pub(crate) fn with(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records `result` (its retry kind on failure) and hands it back.
    pub(crate) fn observe<T, E>(
        &self,
        result: Result<T, E>,
        kind: impl Fn(&E) -> RetryKind,
    ) -> Result<T, E> {
        if let Some(metrics) = &self.metrics {
            let failure = result.as_ref().err().map(kind);
            metrics.record_upstream(self.upstream, outcome_label(failure));
        }
        result
    }
}

/// The request never got a complete answer: refused, reset, timed out or cut mid-body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(pub String);

impl NetworkError {
    fn from_reqwest(err: &reqwest::Error) -> Self {
        let host = err
            .url()
            .and_then(|url| url.host_str().map(|host| host_with_port(host, url.port())))
            .unwrap_or_else(|| "the server".to_owned());
        let what = if err.is_timeout() {
            format!("{host} did not answer in time")
        } else if err.is_connect() {
            format!("cannot connect to {host}")
        } else if err.is_body() || err.is_decode() {
            format!("the connection to {host} broke while reading the answer")
        } else if err.is_builder() {
            "the request could not be built".to_owned()
        } else {
            format!("the request to {host} failed")
        };
        // The innermost cause says most ("Connection refused"); the URL (and its query) is
        // never part of the text.
        let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
        let mut next = std::error::Error::source(err);
        while let Some(cause) = next {
            innermost = Some(cause);
            next = cause.source();
        }
        let cause = innermost
            .map(|cause| format!(" ({cause})"))
            .unwrap_or_default();
        Self(format!("{what}{cause}"))
    }
}

fn host_with_port(host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// A response read to its end, or to the byte limit.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body bytes read.
    pub body: Vec<u8>,
    /// True when the body was longer than the limit and reading stopped.
    pub truncated: bool,
}

impl RawResponse {
    /// Builds a response from parts (tests and sample parsers).
    pub fn new(status: u16, headers: HeaderMap, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers,
            body: body.into(),
            truncated: false,
        }
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The retry classification of this status and its `Retry-After`.
    pub fn retry(&self) -> RetryKind {
        classify(self.status, &self.headers)
    }

    /// A short, single-line description of the body for error messages.
    pub fn summary(&self) -> String {
        summarize_body(&self.body)
    }
}

/// Sends `request` and reads the body: up to [`MAX_BODY_BYTES`] for success statuses,
/// [`MAX_ERROR_BODY_BYTES`] for others.
pub async fn send(request: reqwest::RequestBuilder) -> Result<RawResponse, NetworkError> {
    let response = request
        .send()
        .await
        .map_err(|err| NetworkError::from_reqwest(&err))?;
    let limit = if response.status().is_success() {
        MAX_BODY_BYTES
    } else {
        MAX_ERROR_BODY_BYTES
    };
    read_response(response, limit).await
}

/// Reads a response body up to `limit` bytes; the rest is not read.
pub async fn read_response(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<RawResponse, NetworkError> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| NetworkError::from_reqwest(&err))?
    {
        let room = limit.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(RawResponse {
        status,
        headers,
        body,
        truncated,
    })
}

/// Why a body could not be decoded into the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No body where one was expected.
    #[error("the body is empty")]
    Empty,
    /// An HTML page (a proxy error, a login page, a hibernating instance).
    #[error("expected JSON but got an HTML page{}", title.as_ref().map(|t| format!(" \"{t}\"")).unwrap_or_default())]
    Html {
        /// The page `<title>`, if any.
        title: Option<String>,
    },
    /// Some other text that is not JSON.
    #[error("expected JSON but got text: {excerpt}")]
    NotJson {
        /// The start of the text.
        excerpt: String,
    },
    /// The JSON ends early (a cut connection or a proxy limit).
    #[error("the JSON is truncated (ends at line {line}, column {column})")]
    Truncated {
        /// Line where the input ended.
        line: usize,
        /// Column where the input ended.
        column: usize,
    },
    /// The JSON is malformed.
    #[error("the JSON is malformed at line {line}, column {column}")]
    Syntax {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
    /// Valid JSON of the wrong shape: a missing field, a number where text was expected.
    #[error("the JSON does not have the expected shape: {detail}")]
    Shape {
        /// What did not match.
        detail: String,
    },
    /// The body exceeded the read limit.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl DecodeError {
    /// True when the body was cut short (worth a retry).
    pub fn is_truncated(&self) -> bool {
        matches!(self, Self::Truncated { .. })
    }

    /// True when the body was an HTML page.
    pub fn is_html(&self) -> bool {
        matches!(self, Self::Html { .. })
    }
}

/// Decodes a JSON body into `T`. Error texts may quote values of the body.
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    decode_inner(body, false)
}

/// Decodes a JSON body that holds secrets (tokens): error texts never quote its values.
pub fn decode_json_secret<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    decode_inner(body, true)
}

/// Decodes a read response: [`DecodeError::TooLarge`] when it was cut at the limit.
pub fn decode_raw<T: DeserializeOwned>(raw: &RawResponse, secret: bool) -> Result<T, DecodeError> {
    if raw.truncated {
        return Err(DecodeError::TooLarge {
            limit: raw.body.len(),
        });
    }
    decode_inner(&raw.body, secret)
}

/// The retry kind of a decode failure at `status`: a cut body is worth a retry.
pub fn decode_retry(status: u16, headers: &HeaderMap, error: &DecodeError) -> RetryKind {
    let by_status = classify(status, headers);
    if error.is_truncated() && by_status == RetryKind::Permanent {
        RetryKind::Transient { retry_after: None }
    } else {
        by_status
    }
}

fn decode_inner<T: DeserializeOwned>(body: &[u8], secret: bool) -> Result<T, DecodeError> {
    let text = trim_start(body);
    match text.first() {
        None => return Err(DecodeError::Empty),
        Some(b'<') => {
            return Err(DecodeError::Html {
                title: html_title(text),
            });
        }
        Some(b'{' | b'[') => {}
        Some(_) if secret => {
            return Err(DecodeError::NotJson {
                excerpt: "(not shown: the body may hold a credential)".to_owned(),
            });
        }
        Some(_) => {
            return Err(DecodeError::NotJson {
                excerpt: excerpt(text, EXCERPT_CHARS),
            });
        }
    }
    serde_json::from_slice(text).map_err(|err| {
        let (line, column) = (err.line(), err.column());
        match err.classify() {
            serde_json::error::Category::Eof => DecodeError::Truncated { line, column },
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                DecodeError::Syntax { line, column }
            }
            serde_json::error::Category::Data => {
                let message = err.to_string();
                let quotes_no_value =
                    message.starts_with("missing field") || message.starts_with("unknown field");
                let detail = if secret && !quotes_no_value {
                    format!(
                        "a field has the wrong type or value (line {line}, column {column}; value not shown)"
                    )
                } else {
                    message
                };
                DecodeError::Shape { detail }
            }
        }
    })
}

fn trim_start(body: &[u8]) -> &[u8] {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    &body[start..]
}

/// True when the body looks like HTML.
pub fn looks_like_html(body: &[u8]) -> bool {
    trim_start(body).first() == Some(&b'<')
}

fn html_title(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY_BYTES)]);
    let lower = text.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let title = collapse_whitespace(&text[start..end]);
    (!title.is_empty()).then(|| truncate_chars(&title, 120))
}

/// A short, single-line description of a body for error messages: an HTML page by its title
/// (or its text), anything else by its first characters.
pub fn summarize_body(body: &[u8]) -> String {
    let text = trim_start(body);
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    if text.first() == Some(&b'<') {
        return match html_title(text) {
            Some(title) => format!("HTML page \"{title}\""),
            None => format!("HTML page: {}", excerpt(&strip_tags(text), EXCERPT_CHARS)),
        };
    }
    excerpt(text, EXCERPT_CHARS)
}

fn strip_tags(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len().min(4096));
    let mut in_tag = false;
    for &byte in body.iter().take(MAX_ERROR_BODY_BYTES) {
        match byte {
            b'<' => in_tag = true,
            b'>' if in_tag => {
                in_tag = false;
                out.push(b' ');
            }
            _ if !in_tag => out.push(byte),
            _ => {}
        }
    }
    out
}

/// The first `max_chars` characters of `bytes` (lossy UTF-8), whitespace collapsed, with `…`
/// when cut.
pub fn excerpt(bytes: &[u8], max_chars: usize) -> String {
    let head = &bytes[..bytes
        .len()
        .min(max_chars.saturating_mul(4).saturating_add(4))];
    let text = collapse_whitespace(&String::from_utf8_lossy(head));
    let cut = text.chars().count() > max_chars || head.len() < bytes.len();
    let mut out = truncate_chars(&text, max_chars);
    if cut && !out.ends_with('…') {
        out.push('…');
    }
    out
}

fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `base` with `segments` appended to its path (each segment percent-encoded), without query.
pub(crate) fn join_segments(base: &Url, segments: &[&str]) -> Result<Url, String> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| format!("{base} cannot be used as a base URL"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Checks that a base URL is http(s) and can carry paths.
pub(crate) fn check_base(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        return Err(format!("{url} is not an http(s) base URL"));
    }
    Ok(())
}

/// True when two URLs share scheme, host and port.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Deserializes a JSON `null` as the type's default.
pub(crate) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Seconds given as a number (`3599`) or as a string (`"3599"`, Entra v1); `null` or absent
/// allowed.
pub(crate) fn lenient_seconds_opt<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Float(f64),
        Text(String),
    }
    match Option::<Seconds>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Seconds::Number(n)) => Ok(Some(n)),
        Some(Seconds::Float(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
        Some(Seconds::Float(_)) => Err(serde::de::Error::custom(
            "expected a non-negative number of seconds",
        )),
        Some(Seconds::Text(text)) => text.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom("expected a number of seconds as a number or numeric string")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_bodies_are_typed_with_their_title() {
        let body = b"\n<!DOCTYPE html><html><head><title>502 Bad\n Gateway</title></head><body>x</body></html>";
        let err = decode_json::<serde_json::Value>(body).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Html {
                title: Some("502 Bad Gateway".to_owned())
            }
        );
        assert_eq!(summarize_body(body), "HTML page \"502 Bad Gateway\"");
        assert_eq!(
            summarize_body(b"<html><body><h1>Down</h1></body></html>"),
            "HTML page: Down"
        );
    }

    #[test]
    fn truncated_malformed_and_wrong_types_are_distinguished() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            name: String,
        }
        assert!(matches!(
            decode_json::<T>(br#"{"name": "ab"#),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_json::<T>(br#"{"name": "ab",,}"#),
            Err(DecodeError::Syntax { .. })
        ));
        let err = decode_json::<T>(br#"{"name": 5}"#).unwrap_err();
        assert!(matches!(&err, DecodeError::Shape { detail } if detail.contains("invalid type")));
        assert_eq!(decode_json::<T>(b"  ").unwrap_err(), DecodeError::Empty);
        assert!(matches!(
            decode_json::<T>(b"Service Unavailable"),
            Err(DecodeError::NotJson { excerpt }) if excerpt == "Service Unavailable"
        ));
    }

    #[test]
    fn secret_bodies_never_quote_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            n: u32,
        }
        let err = decode_json_secret::<T>(br#"{"n": "super-secret-token"}"#).unwrap_err();
        assert!(!err.to_string().contains("super-secret-token"), "{err}");
        let err = decode_json_secret::<T>(b"access_token=super-secret-token").unwrap_err();
        assert!(!err.to_string().contains("super-secret-token"), "{err}");
        let err = decode_json_secret::<T>(b"{}").unwrap_err();
        assert!(err.to_string().contains("missing field `n`"), "{err}");
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        let long = "a b\n".repeat(500);
        let text = excerpt(long.as_bytes(), 20);
        assert_eq!(text.chars().count(), 21);
        assert!(text.ends_with('…'));
        assert!(!text.contains('\n'));
        assert_eq!(excerpt("é".repeat(3).as_bytes(), 5), "ééé");
    }

    #[test]
    fn join_keeps_base_path_prefixes() {
        let base = Url::parse("http://127.0.0.1:9/servicenow").unwrap();
        let url = join_segments(&base, &["api", "now", "a/b"]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/servicenow/api/now/a%2Fb");
        let base = Url::parse("https://x.example/").unwrap();
        assert_eq!(
            join_segments(&base, &["t"]).unwrap().as_str(),
            "https://x.example/t"
        );
    }
}
