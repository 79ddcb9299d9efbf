//! ServiceNow Table API client (`/api/now/v2/table/{table}`), Basic or OAuth client
//! credentials, with the traps of `reference/servicenow.md` §0 item 6 handled:
//! ACL-filtered short pages (pagination follows `Link rel="next"` until it is absent), the v1
//! 404 on an empty list (read as empty), and silently ignored query parts (check columns with
//! [`ServiceNowClient::ensure_fields`] first).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use super::oauth::{
    TokenAnswer, TokenEndpointClient, TokenFailure, TokenHttp, token_client, unreadable_token,
};
use super::{
    DecodeError, NetworkError, RawResponse, Recorder, check_base, decode_raw, decode_retry,
    header_str, join_segments,
};
use crate::error::RetryKind;
use crate::metrics::Metrics;

/// Records per page unless a smaller limit is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// Pages followed at most by one list call.
pub const MAX_PAGES: usize = 10_000;
/// How long [`ServiceNowClient::columns`] answers are reused.
pub const COLUMNS_CACHE_TTL: Duration = Duration::from_secs(600);
/// A cached OAuth token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// How the bot authenticates to the instance.
#[derive(Debug, Clone)]
pub enum ServiceNowAuth {
    /// Basic authentication with a ServiceNow user.
    Basic {
        /// The ServiceNow user name (User ID).
        user: String,
        /// Its password.
        password: SecretString,
    },
    /// OAuth client credentials against the instance's `/oauth_token.do`.
    OAuthClientCredentials {
        /// Client id of the instance's OAuth API endpoint.
        client_id: String,
        /// Its client secret.
        client_secret: SecretString,
    },
    /// A bearer token obtained elsewhere (an Entra token accepted by an OIDC provider).
    Bearer {
        /// The access token.
        token: SecretString,
    },
}

/// A failed ServiceNow call, classified once.
#[derive(Debug, thiserror::Error)]
pub enum ServiceNowError {
    /// No complete answer (refused, timed out, cut).
    #[error("ServiceNow is unreachable: {0}")]
    Network(NetworkError),
    /// 401: the credentials or token were refused.
    #[error(
        "ServiceNow refused the credentials (401 {message}{}). {hint}",
        detail_suffix(detail)
    )]
    Unauthorized {
        /// `error.message`.
        message: String,
        /// `error.detail`.
        detail: Option<String>,
        /// What to do.
        hint: String,
    },
    /// 403: an ACL, business rule or data policy refused the request.
    #[error(
        "ServiceNow denied the request (403 {message}{}). {hint}",
        detail_suffix(detail)
    )]
    Forbidden {
        /// `error.message`.
        message: String,
        /// `error.detail`.
        detail: Option<String>,
        /// What to do.
        hint: String,
    },
    /// Any other error status with ServiceNow's JSON error envelope.
    #[error("ServiceNow answered {status}: {message}{}", detail_suffix(detail))]
    Api {
        /// HTTP status.
        status: u16,
        /// `error.message`.
        message: String,
        /// `error.detail` (often null).
        detail: Option<String>,
        /// Retry classification (429 / 5xx transient, with `Retry-After`).
        retry: RetryKind,
    },
    /// An error status without the envelope (a proxy page, a wrong URL).
    #[error("ServiceNow answered {status} without its JSON error envelope: {summary}{}", http_hint(*status))]
    Http {
        /// HTTP status.
        status: u16,
        /// A short description of the body.
        summary: String,
        /// Retry classification.
        retry: RetryKind,
    },
    /// A success status with a body that is not the expected JSON.
    #[error(
        "ServiceNow answered {status} with a body the bot cannot read: {cause}{}",
        decode_hint(cause)
    )]
    Decode {
        /// HTTP status.
        status: u16,
        /// What was wrong with the body.
        cause: DecodeError,
        /// Retry classification.
        retry: RetryKind,
    },
    /// `/oauth_token.do` refused the client credentials.
    #[error("ServiceNow refused the OAuth token request ({status} {error}: {description}). {hint}")]
    Token {
        /// HTTP status.
        status: u16,
        /// OAuth `error`.
        error: String,
        /// OAuth `error_description`.
        description: String,
        /// What to do.
        hint: String,
        /// Retry classification.
        retry: RetryKind,
    },
    /// Columns that do not exist (ServiceNow would silently ignore them in a query).
    #[error("ServiceNow table '{table}' has no column {}: a query naming it would be silently ignored by ServiceNow. Check the field names in the bot's configuration against the table's dictionary (sys_dictionary)", missing.join(", "))]
    MissingFields {
        /// The table checked (with its parents).
        table: String,
        /// The unknown field names.
        missing: Vec<String>,
    },
    /// No `sys_db_object` row for the table is visible.
    #[error(
        "ServiceNow has no table '{0}' visible to the bot's user: check the name, that the application owning it is installed, and that the user can read sys_db_object"
    )]
    UnknownTable(String),
    /// A `Link` header the bot cannot follow.
    #[error("ServiceNow pagination failed: {0}")]
    Pagination(String),
    /// A caller passed an invalid table name, sys_id or base URL.
    #[error("invalid ServiceNow request: {0}")]
    InvalidInput(String),
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(detail) if !detail.is_empty() => format!(": {detail}"),
        _ => String::new(),
    }
}

fn http_hint(status: u16) -> &'static str {
    match status {
        404 => ". Check the instance URL (it should be https://<instance>.service-now.com/)",
        502..=504 => ". A proxy or the instance is briefly unavailable; the bot retries",
        _ => "",
    }
}

fn decode_hint(source: &DecodeError) -> &'static str {
    if source.is_html() {
        ". An HTML page instead of JSON usually means a hibernating developer instance (wake it at developer.servicenow.com) or a login/SSO page in front of the API; check the instance URL"
    } else {
        ""
    }
}

impl From<NetworkError> for ServiceNowError {
    fn from(err: NetworkError) -> Self {
        Self::Network(err)
    }
}

impl ServiceNowError {
    /// How a retrier should treat this failure.
    pub fn retry_kind(&self) -> RetryKind {
        match self {
            Self::Network(_) => RetryKind::Network,
            Self::Api { retry, .. }
            | Self::Http { retry, .. }
            | Self::Decode { retry, .. }
            | Self::Token { retry, .. } => *retry,
            Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::MissingFields { .. }
            | Self::UnknownTable(_)
            | Self::Pagination(_)
            | Self::InvalidInput(_) => RetryKind::Permanent,
        }
    }

    /// The HTTP status, when the instance answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::Api { status, .. }
            | Self::Http { status, .. }
            | Self::Decode { status, .. }
            | Self::Token { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for the 404 envelope "No Record found" (missing, or hidden by an ACL).
    pub fn is_no_record(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }

    /// True for 400 "Invalid table …" (the table does not exist, e.g. app not installed).
    pub fn is_invalid_table(&self) -> bool {
        matches!(self, Self::Api { status: 400, message, .. } if message.starts_with("Invalid table"))
    }
}

/// One ServiceNow record: field name to value (strings, or reference objects).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct Record(pub Map<String, Value>);

/// A reference field in any of its shapes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reference {
    /// The referenced record's sys_id (from `value`, a bare string, or the `link`).
    pub sys_id: Option<String>,
    /// The display value, when display values were requested.
    pub display_value: Option<String>,
    /// The REST link to the referenced record.
    pub link: Option<String>,
}

impl Record {
    /// The raw value of a field.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    /// A field as text: a string, or the `value` of a `{display_value, value}` pair.
    pub fn str(&self, field: &str) -> Option<&str> {
        match self.0.get(field)? {
            Value::String(text) => Some(text),
            Value::Object(object) => object.get("value").and_then(Value::as_str),
            _ => None,
        }
    }

    /// A field as text, `None` when absent or empty (`""`).
    pub fn non_empty(&self, field: &str) -> Option<&str> {
        self.str(field).filter(|text| !text.is_empty())
    }

    /// The display value of a field: `display_value` of an object, else the plain string.
    pub fn display_value(&self, field: &str) -> Option<&str> {
        match self.0.get(field)? {
            Value::String(text) => Some(text),
            Value::Object(object) => object.get("display_value").and_then(Value::as_str),
            _ => None,
        }
    }

    /// A boolean field (`"true"` / `"false"`, or a JSON boolean).
    pub fn bool(&self, field: &str) -> Option<bool> {
        if let Some(Value::Bool(value)) = self.0.get(field) {
            return Some(*value);
        }
        match self.str(field)? {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// An integer field (`"4"`, or a JSON number).
    pub fn i64(&self, field: &str) -> Option<i64> {
        if let Some(Value::Number(number)) = self.0.get(field) {
            return number.as_i64();
        }
        self.str(field)?.trim().parse().ok()
    }

    /// A date/time field in ServiceNow's UTC `YYYY-MM-DD HH:MM:SS` form.
    pub fn datetime(&self, field: &str) -> Option<DateTime<Utc>> {
        parse_datetime(self.str(field)?)
    }

    /// A reference field: a bare sys_id, `{value, link}` or `{display_value, link}`;
    /// `None` when absent or empty.
    pub fn reference(&self, field: &str) -> Option<Reference> {
        let reference = match self.0.get(field)? {
            Value::String(text) => Reference {
                sys_id: Some(text.clone()),
                ..Reference::default()
            },
            Value::Object(object) => {
                let text = |key: &str| {
                    object
                        .get(key)
                        .and_then(Value::as_str)
                        .filter(|text| !text.is_empty())
                        .map(str::to_owned)
                };
                let link = text("link");
                let sys_id = text("value").or_else(|| link.as_deref().and_then(sys_id_from_link));
                Reference {
                    sys_id,
                    display_value: text("display_value"),
                    link,
                }
            }
            _ => return None,
        };
        let empty = reference.sys_id.as_deref().is_none_or(str::is_empty)
            && reference.display_value.is_none()
            && reference.link.is_none();
        (!empty).then_some(reference)
    }

    /// The record's `sys_id`.
    pub fn sys_id(&self) -> Option<&str> {
        self.non_empty("sys_id")
    }

    /// All fields.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The fields, owned.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

fn sys_id_from_link(link: &str) -> Option<String> {
    let path = link.split(['?', '#']).next()?;
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    (last.len() == 32 && last.bytes().all(|b| b.is_ascii_hexdigit())).then(|| last.to_owned())
}

/// Formats a UTC time the way ServiceNow stores and queries it: `YYYY-MM-DD HH:MM:SS`.
pub fn format_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Parses ServiceNow's UTC `YYYY-MM-DD HH:MM:SS`.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|naive| naive.and_utc())
}

/// Escapes a value for an encoded query: `^` becomes `^^`.
pub fn escape_value(value: &str) -> String {
    value.replace('^', "^^")
}

/// An encoded-query operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `LIKE` (contains)
    Like,
    /// `NOT LIKE`
    NotLike,
    /// `STARTSWITH`
    StartsWith,
    /// `ENDSWITH`
    EndsWith,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `IN` (comma-separated values)
    In,
    /// `NOT IN`
    NotIn,
    /// `ISEMPTY` (no value)
    IsEmpty,
    /// `ISNOTEMPTY` (no value)
    IsNotEmpty,
}

impl Operator {
    /// The operator as written in an encoded query.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Like => "LIKE",
            Self::NotLike => "NOT LIKE",
            Self::StartsWith => "STARTSWITH",
            Self::EndsWith => "ENDSWITH",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::In => "IN",
            Self::NotIn => "NOT IN",
            Self::IsEmpty => "ISEMPTY",
            Self::IsNotEmpty => "ISNOTEMPTY",
        }
    }
}

/// Builds a `sysparm_query` with escaped values, remembering the fields it names so they can
/// be checked with [`ServiceNowClient::ensure_fields`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedQuery {
    text: String,
    fields: Vec<String>,
    after_new_query: bool,
}

impl EncodedQuery {
    /// An empty query.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, joiner: &str, term: &str, field: &str) -> Self {
        if !self.text.is_empty() && !self.after_new_query {
            self.text.push_str(joiner);
        }
        self.after_new_query = false;
        self.text.push_str(term);
        if !field.is_empty() && !self.fields.iter().any(|known| known == field) {
            self.fields.push(field.to_owned());
        }
        self
    }

    fn term(field: &str, op: Operator, value: &str) -> String {
        match op {
            Operator::IsEmpty | Operator::IsNotEmpty => format!("{field}{}", op.as_str()),
            _ => format!("{field}{}{}", op.as_str(), escape_value(value)),
        }
    }

    /// `^field<op>value` (AND).
    pub fn and(self, field: &str, op: Operator, value: &str) -> Self {
        let term = Self::term(field, op, value);
        self.push("^", &term, field)
    }

    /// `^ORfield<op>value` (OR with the previous condition).
    pub fn or(self, field: &str, op: Operator, value: &str) -> Self {
        let term = Self::term(field, op, value);
        self.push("^OR", &term, field)
    }

    /// `field=value` (AND).
    pub fn eq(self, field: &str, value: &str) -> Self {
        self.and(field, Operator::Eq, value)
    }

    /// `fieldINa,b,c` (AND). Values cannot contain commas.
    pub fn is_in(self, field: &str, values: &[&str]) -> Self {
        self.and(field, Operator::In, &values.join(","))
    }

    /// `^NQ`: starts a new query whose results are added (OR of whole queries).
    pub fn new_query(mut self) -> Self {
        if !self.text.is_empty() && !self.after_new_query {
            self.text.push_str("^NQ");
            self.after_new_query = true;
        }
        self
    }

    /// `^ORDERBYfield`.
    pub fn order_by(self, field: &str) -> Self {
        let term = format!("ORDERBY{field}");
        self.push("^", &term, field)
    }

    /// `^ORDERBYDESCfield`.
    pub fn order_by_desc(self, field: &str) -> Self {
        let term = format!("ORDERBYDESC{field}");
        self.push("^", &term, field)
    }

    /// The encoded query text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The distinct fields the query names, in order (dot-walks as written).
    pub fn fields(&self) -> Vec<&str> {
        self.fields.iter().map(String::as_str).collect()
    }
}

impl std::fmt::Display for EncodedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for EncodedQuery {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// `sysparm_display_value`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DisplayValue {
    /// Database values (default; use for anything compared or stored).
    #[default]
    False,
    /// Display values.
    True,
    /// Both, as `{display_value, value}` objects.
    All,
}

impl DisplayValue {
    fn as_str(self) -> &'static str {
        match self {
            Self::False => "false",
            Self::True => "true",
            Self::All => "all",
        }
    }
}

/// Everything a list call can ask for.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `sysparm_query` (empty: all records).
    pub query: String,
    /// `sysparm_fields` (empty: all fields).
    pub fields: Vec<String>,
    /// Most records returned in total (`None`: all).
    pub limit: Option<usize>,
    /// Records per page (`None`: [`DEFAULT_PAGE_SIZE`]).
    pub page_size: Option<usize>,
    /// `sysparm_display_value`.
    pub display_value: DisplayValue,
    /// Keep reference links (`sysparm_exclude_reference_link=false`).
    pub include_reference_links: bool,
}

/// `{"result": …}`.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    result: T,
}

/// `{"error": {"message", "detail"}, "status": "failure"}`.
#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    detail: Option<Value>,
}

fn value_text(value: Option<Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    }
}

/// Decodes a Table API answer: the `result` of a success, or the typed error of a failure.
pub fn parse_response<T: DeserializeOwned>(raw: &RawResponse) -> Result<T, ServiceNowError> {
    if !raw.is_success() {
        return Err(parse_error(raw));
    }
    decode_raw::<Envelope<T>>(raw, false)
        .map(|envelope| envelope.result)
        .map_err(|cause| ServiceNowError::Decode {
            status: raw.status,
            retry: decode_retry(raw.status, &raw.headers, &cause),
            cause,
        })
}

/// Maps an error answer (status ≥ 300) to a typed error.
pub fn parse_error(raw: &RawResponse) -> ServiceNowError {
    let retry = raw.retry();
    let envelope = if raw.truncated {
        None
    } else {
        serde_json::from_slice::<ErrorEnvelope>(&raw.body).ok()
    };
    let Some(ErrorEnvelope { error }) = envelope else {
        return ServiceNowError::Http {
            status: raw.status,
            summary: raw.summary(),
            retry,
        };
    };
    let message = value_text(error.message).unwrap_or_else(|| "(no message)".to_owned());
    let detail = value_text(error.detail);
    match raw.status {
        401 => ServiceNowError::Unauthorized {
            hint: unauthorized_hint(&raw.headers),
            message,
            detail,
        },
        403 => ServiceNowError::Forbidden {
            hint: forbidden_hint(&message, detail.as_deref()).to_owned(),
            message,
            detail,
        },
        status => ServiceNowError::Api {
            status,
            message,
            detail,
            retry,
        },
    }
}

fn unauthorized_hint(headers: &HeaderMap) -> String {
    let mut hint = "Check the bot's ServiceNow credentials: the user name and password (Basic) or the OAuth client id and secret; the user must be active, not locked out, and have web service access".to_owned();
    if header_str(headers, "x-mfa_token").is_some() {
        hint.push_str(". The instance asks for multi-factor authentication for this user: use a web-service-only integration user or OAuth");
    }
    hint
}

fn forbidden_hint(message: &str, detail: Option<&str>) -> &'static str {
    let detail = detail.unwrap_or_default();
    if message.contains("Insufficient rights") {
        "The bot's ServiceNow user may not read this table or a field used in the query (ACL). Give it a role with read access to the table (configuration tables such as oauth_entity and sys_db_object need admin), or query fewer fields"
    } else if detail.contains("ACL") || message.contains("Operation Failed") {
        "An ACL, business rule or data policy refused the change. Check the roles of the bot's ServiceNow user and the table's data policies and business rules"
    } else {
        "An ACL refused the request. Check the roles of the bot's ServiceNow user; for a table of another application scope, also check its Application Access settings (Accessible from, Can read/create/update) on sys_db_object"
    }
}

/// One link of a `Link` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The target between `<` and `>`, verbatim.
    pub target: String,
    /// The `rel` values (lowercase).
    pub rels: Vec<String>,
}

/// Parses an RFC 8288 `Link` header value. Tolerates `<` / `>` inside targets (ServiceNow's
/// doc example has `<instance name>` in its URLs).
pub fn parse_link_header(value: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some(after) = rest.strip_prefix('<') else {
            break;
        };
        // The target ends at the first '>' followed by ';', ',' or the end.
        let mut end = None;
        for (index, _) in after.match_indices('>') {
            let tail = after[index + 1..].trim_start();
            if tail.is_empty() || tail.starts_with(';') || tail.starts_with(',') {
                end = Some(index);
                break;
            }
        }
        let Some(end) = end else {
            break;
        };
        let target = after[..end].trim().to_owned();
        rest = &after[end + 1..];
        // Parameters run to the next ',' outside quotes.
        let mut in_quotes = false;
        let mut params_end = rest.len();
        for (index, c) in rest.char_indices() {
            match c {
                '"' => in_quotes = !in_quotes,
                ',' if !in_quotes => {
                    params_end = index;
                    break;
                }
                _ => {}
            }
        }
        let params = &rest[..params_end];
        rest = &rest[params_end..];
        let mut rels = Vec::new();
        for param in params.split(';') {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            if key.trim().eq_ignore_ascii_case("rel") {
                rels.extend(
                    value
                        .trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .map(str::to_ascii_lowercase),
                );
            }
        }
        links.push(Link { target, rels });
    }
    links
}

/// The `rel="next"` target of the `Link` headers, if any.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse_link_header)
        .find(|link| link.rels.iter().any(|rel| rel == "next"))
        .map(|link| link.target)
}

/// `X-Total-Count`, when present.
pub fn total_count(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, "x-total-count")?.trim().parse().ok()
}

/// A token from `/oauth_token.do`.
#[derive(Debug)]
pub struct ServiceNowToken {
    /// The bearer token.
    pub access_token: SecretString,
    /// `Bearer`.
    pub token_type: Option<String>,
    /// Lifetime in seconds (number or string; 1799 when not given).
    pub expires_in: u64,
    /// Granted scope.
    pub scope: Option<String>,
}

/// Lifetime of a ServiceNow token that came without `expires_in` (the instance default).
const DEFAULT_TOKEN_EXPIRY: u64 = 1799;

impl From<TokenAnswer> for ServiceNowToken {
    fn from(answer: TokenAnswer) -> Self {
        Self {
            access_token: answer.secret(),
            token_type: Some(answer.token_type_name()),
            expires_in: answer.expires_in_seconds().unwrap_or(DEFAULT_TOKEN_EXPIRY),
            scope: answer.scope(),
        }
    }
}

/// The error body of `/oauth_token.do`: `error` and `error_description` only (other
/// failures of the instance come in the Table API's `{"error": {"message", "detail"}}` shape).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ServiceNowTokenError {
    /// OAuth `error` (`access_denied`, `invalid_client`, …).
    pub error: String,
    /// OAuth `error_description`.
    #[serde(default)]
    pub error_description: Option<String>,
}

impl std::fmt::Display for ServiceNowTokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.error,
            self.error_description.as_deref().unwrap_or_default()
        )
    }
}

impl oauth2::ErrorResponse for ServiceNowTokenError {}

const TOKEN_HINT: &str = "Check the client id and secret of the instance's OAuth API endpoint (System OAuth > Application Registry), that client credentials are enabled (system property glide.oauth.inbound.client.credential.grant_type.enabled = true) and that the OAuth entity has an OAuth Application User";

/// The typed error of a token request that gave no token.
fn token_failure(failure: TokenFailure<ServiceNowTokenError>) -> ServiceNowError {
    match failure {
        TokenFailure::Network(err) => ServiceNowError::Network(err),
        TokenFailure::Refused { error, answer } => ServiceNowError::Token {
            status: answer.status,
            error: error.error,
            description: error.error_description.unwrap_or_default(),
            hint: TOKEN_HINT.to_owned(),
            retry: answer.retry(),
        },
        TokenFailure::Unreadable { answer, .. } if !answer.is_success() => parse_error(&answer),
        TokenFailure::Unreadable { answer, detail } => {
            let cause = unreadable_token(&answer, detail);
            ServiceNowError::Decode {
                status: answer.status,
                retry: decode_retry(answer.status, &answer.headers, &cause),
                cause,
            }
        }
        TokenFailure::Invalid(detail) => ServiceNowError::InvalidInput(detail),
    }
}

/// Decodes a recorded `/oauth_token.do` answer the way a live request does.
pub fn parse_token_response(raw: &RawResponse) -> Result<ServiceNowToken, ServiceNowError> {
    let token_url = Url::parse("https://instance.service-now.com/oauth_token.do")
        .map_err(|err| ServiceNowError::InvalidInput(err.to_string()))?;
    let client: TokenEndpointClient<ServiceNowTokenError> =
        token_client("", &SecretString::from(""), token_url);
    let replay = TokenHttp::replay(raw.clone());
    let result = client.exchange_client_credentials().request(&replay);
    replay
        .finish(result)
        .map(ServiceNowToken::from)
        .map_err(token_failure)
}

struct CachedToken {
    token: SecretString,
    renew_at: Instant,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: ServiceNowAuth,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    columns: Mutex<HashMap<String, (Instant, HashSet<String>)>>,
    page_size: usize,
    recorder: Recorder,
}

/// The ServiceNow Table API client; cheap to clone (shared state).
#[derive(Clone)]
pub struct ServiceNowClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceNowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceNowClient")
            .field("base", &self.inner.base.as_str())
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

impl ServiceNowClient {
    /// A client for the instance at `instance_base_url` (e.g.
    /// `https://contoso.service-now.com/`; a path prefix is kept).
    pub fn new(http: reqwest::Client, instance_base_url: Url, auth: ServiceNowAuth) -> Self {
        Self::build(
            http,
            instance_base_url,
            auth,
            DEFAULT_PAGE_SIZE,
            Recorder::new("servicenow"),
        )
    }

    fn build(
        http: reqwest::Client,
        base: Url,
        auth: ServiceNowAuth,
        page_size: usize,
        recorder: Recorder,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                token: tokio::sync::Mutex::new(None),
                columns: Mutex::new(HashMap::new()),
                page_size: page_size.max(1),
                recorder,
            }),
        }
    }

    fn rebuild(self, page_size: usize, recorder: Recorder) -> Self {
        let inner = &self.inner;
        Self::build(
            inner.http.clone(),
            inner.base.clone(),
            inner.auth.clone(),
            page_size,
            recorder,
        )
    }

    /// Records every call in `metrics` as `servicenow` / outcome.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        let recorder = self.inner.recorder.clone().with(metrics);
        let page_size = self.inner.page_size;
        self.rebuild(page_size, recorder)
    }

    /// Changes the default number of records per page.
    pub fn with_page_size(self, page_size: usize) -> Self {
        let recorder = self.inner.recorder.clone();
        self.rebuild(page_size, recorder)
    }

    /// The instance base URL.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    fn observe<T>(&self, result: Result<T, ServiceNowError>) -> Result<T, ServiceNowError> {
        self.inner
            .recorder
            .observe(result, ServiceNowError::retry_kind)
    }

    fn table_url(&self, table: &str, sys_id: Option<&str>) -> Result<Url, ServiceNowError> {
        check_table(table)?;
        check_base(&self.inner.base).map_err(ServiceNowError::InvalidInput)?;
        let mut segments = vec!["api", "now", "v2", "table", table];
        if let Some(sys_id) = sys_id {
            check_sys_id(sys_id)?;
            segments.push(sys_id);
        }
        join_segments(&self.inner.base, &segments).map_err(ServiceNowError::InvalidInput)
    }

    /// The token endpoint `{instance}/oauth_token.do`.
    pub fn token_url(&self) -> Result<Url, ServiceNowError> {
        check_base(&self.inner.base).map_err(ServiceNowError::InvalidInput)?;
        join_segments(&self.inner.base, &["oauth_token.do"]).map_err(ServiceNowError::InvalidInput)
    }

    async fn bearer(&self) -> Result<SecretString, ServiceNowError> {
        let ServiceNowAuth::OAuthClientCredentials {
            client_id,
            client_secret,
        } = &self.inner.auth
        else {
            return Err(ServiceNowError::InvalidInput(
                "no OAuth credentials configured".to_owned(),
            ));
        };
        // Held across the refresh: one token request at a time.
        let mut cached = self.inner.token.lock().await;
        if let Some(token) = cached.as_ref()
            && token.renew_at > Instant::now()
        {
            return Ok(token.token.clone());
        }
        let client: TokenEndpointClient<ServiceNowTokenError> =
            token_client(client_id, client_secret, self.token_url()?);
        let http = TokenHttp::new(&self.inner.http);
        let result = client
            .exchange_client_credentials()
            .request_async(&http)
            .await;
        let token = http
            .finish(result)
            .map(ServiceNowToken::from)
            .map_err(token_failure)?;
        let lifetime = Duration::from_secs(token.expires_in);
        let usable = if lifetime > TOKEN_MARGIN * 2 {
            lifetime - TOKEN_MARGIN
        } else {
            lifetime / 2
        };
        *cached = Some(CachedToken {
            token: token.access_token.clone(),
            renew_at: Instant::now() + usable,
        });
        Ok(token.access_token)
    }

    async fn forget_token(&self) {
        *self.inner.token.lock().await = None;
    }

    /// Sends one request with authentication, retried under [`super::retry::STANDARD`]
    /// when throttled; with OAuth, a 401 renews the token once.
    async fn execute(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<RawResponse, ServiceNowError> {
        super::retry::with_retry(super::retry::STANDARD, || {
            self.execute_once(method.clone(), url.clone(), body)
        })
        .await
    }

    async fn execute_once(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<RawResponse, ServiceNowError> {
        let oauth = matches!(
            self.inner.auth,
            ServiceNowAuth::OAuthClientCredentials { .. }
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.header(CONTENT_TYPE, "application/json").json(body);
            }
            request = match &self.inner.auth {
                ServiceNowAuth::Basic { user, password } => {
                    request.basic_auth(user, Some(password.expose_secret()))
                }
                ServiceNowAuth::OAuthClientCredentials { .. } => {
                    let token = self.bearer().await?;
                    request.bearer_auth(token.expose_secret())
                }
                ServiceNowAuth::Bearer { token } => request.bearer_auth(token.expose_secret()),
            };
            let raw = super::send(request).await?;
            if raw.status == 401 && oauth && attempt == 1 {
                self.forget_token().await;
                continue;
            }
            return Ok(raw);
        }
    }

    fn default_params(url: &mut Url, display_value: DisplayValue, include_links: bool) {
        url.query_pairs_mut()
            .append_pair(
                "sysparm_exclude_reference_link",
                if include_links { "false" } else { "true" },
            )
            .append_pair("sysparm_display_value", display_value.as_str());
    }

    /// Reads one record; `None` when it does not exist or an ACL hides it (404).
    pub async fn get(
        &self,
        table: &str,
        sys_id: &str,
        fields: &[&str],
    ) -> Result<Option<Record>, ServiceNowError> {
        let result = self.get_inner(table, sys_id, fields).await;
        self.observe(result)
    }

    async fn get_inner(
        &self,
        table: &str,
        sys_id: &str,
        fields: &[&str],
    ) -> Result<Option<Record>, ServiceNowError> {
        let mut url = self.table_url(table, Some(sys_id))?;
        if !fields.is_empty() {
            url.query_pairs_mut()
                .append_pair("sysparm_fields", &fields.join(","));
        }
        Self::default_params(&mut url, DisplayValue::False, false);
        let raw = self.execute(Method::GET, url, None).await?;
        match parse_response::<Record>(&raw) {
            Ok(record) => Ok(Some(record)),
            Err(err) if err.is_no_record() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Lists records matching `encoded_query` (empty: all), following every page; `limit`
    /// caps the total.
    pub async fn query(
        &self,
        table: &str,
        encoded_query: &str,
        fields: &[&str],
        limit: Option<usize>,
    ) -> Result<Vec<Record>, ServiceNowError> {
        let options = ListOptions {
            query: encoded_query.to_owned(),
            fields: fields.iter().map(|field| (*field).to_owned()).collect(),
            limit,
            ..ListOptions::default()
        };
        self.list(table, &options).await
    }

    /// Checks the fields of `query` with [`Self::ensure_fields`], then runs it.
    pub async fn query_checked(
        &self,
        table: &str,
        query: &EncodedQuery,
        fields: &[&str],
        limit: Option<usize>,
    ) -> Result<Vec<Record>, ServiceNowError> {
        let mut named = query.fields();
        named.extend_from_slice(fields);
        self.ensure_fields(table, &named).await?;
        self.query(table, query.as_str(), fields, limit).await
    }

    /// Lists records with every option. Pages are followed while the answer has a
    /// `Link rel="next"`; a short or empty page (ACL-filtered) does not stop it. A 404
    /// "No Record found" (Table API v1 style) is an empty list.
    pub async fn list(
        &self,
        table: &str,
        options: &ListOptions,
    ) -> Result<Vec<Record>, ServiceNowError> {
        let result = self.list_inner(table, options).await;
        self.observe(result)
    }

    async fn list_inner(
        &self,
        table: &str,
        options: &ListOptions,
    ) -> Result<Vec<Record>, ServiceNowError> {
        let mut url = self.table_url(table, None)?;
        if options.limit == Some(0) {
            return Ok(Vec::new());
        }
        let page_size = options
            .page_size
            .unwrap_or(self.inner.page_size)
            .min(options.limit.unwrap_or(usize::MAX))
            .max(1);
        {
            let mut pairs = url.query_pairs_mut();
            if !options.query.is_empty() {
                pairs.append_pair("sysparm_query", &options.query);
            }
            if !options.fields.is_empty() {
                pairs.append_pair("sysparm_fields", &options.fields.join(","));
            }
            pairs
                .append_pair("sysparm_limit", &page_size.to_string())
                .append_pair("sysparm_offset", "0");
        }
        Self::default_params(
            &mut url,
            options.display_value,
            options.include_reference_links,
        );
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        loop {
            if seen.len() >= MAX_PAGES {
                return Err(ServiceNowError::Pagination(format!(
                    "more than {MAX_PAGES} pages; narrow the query"
                )));
            }
            let raw = self.execute(Method::GET, url.clone(), None).await?;
            let page = match parse_response::<Vec<Record>>(&raw) {
                Ok(page) => page,
                Err(err) if err.is_no_record() => break,
                Err(err) => return Err(err),
            };
            records.extend(page);
            if let Some(limit) = options.limit
                && records.len() >= limit
            {
                records.truncate(limit);
                break;
            }
            let Some(target) = next_link(&raw.headers) else {
                break;
            };
            // Only the query of the link is used: the request stays on the configured
            // instance URL, so credentials never go to a host named in a header.
            let Some((_, next_query)) = target.split_once('?') else {
                return Err(ServiceNowError::Pagination(format!(
                    "the next link has no query string: {}",
                    super::excerpt(target.as_bytes(), 120)
                )));
            };
            if !seen.insert(next_query.to_owned()) {
                return Err(ServiceNowError::Pagination(
                    "the instance sent the same next link twice".to_owned(),
                ));
            }
            url.set_query(Some(next_query));
        }
        Ok(records)
    }

    /// Creates a record (`POST`, 201) and returns it as stored.
    pub async fn create(
        &self,
        table: &str,
        fields: &Map<String, Value>,
    ) -> Result<Record, ServiceNowError> {
        let result = async {
            let mut url = self.table_url(table, None)?;
            Self::default_params(&mut url, DisplayValue::False, false);
            let body = Value::Object(fields.clone());
            let raw = self.execute(Method::POST, url, Some(&body)).await?;
            parse_response::<Record>(&raw)
        }
        .await;
        self.observe(result)
    }

    /// Updates fields of a record (`PATCH`) and returns it as stored.
    pub async fn update(
        &self,
        table: &str,
        sys_id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Record, ServiceNowError> {
        let result = async {
            let mut url = self.table_url(table, Some(sys_id))?;
            Self::default_params(&mut url, DisplayValue::False, false);
            let body = Value::Object(fields.clone());
            let raw = self.execute(Method::PATCH, url, Some(&body)).await?;
            parse_response::<Record>(&raw)
        }
        .await;
        self.observe(result)
    }

    /// Deletes a record: `true` when deleted, `false` when it was not found (404).
    pub async fn delete(&self, table: &str, sys_id: &str) -> Result<bool, ServiceNowError> {
        let result = async {
            let url = self.table_url(table, Some(sys_id))?;
            let raw = self.execute(Method::DELETE, url, None).await?;
            if raw.is_success() {
                return Ok(true);
            }
            let err = parse_error(&raw);
            if err.is_no_record() {
                Ok(false)
            } else {
                Err(err)
            }
        }
        .await;
        self.observe(result)
    }

    /// The table and its parents, nearest first (`incident`, `task`), from
    /// `sys_db_object.super_class`.
    pub async fn table_hierarchy(&self, table: &str) -> Result<Vec<String>, ServiceNowError> {
        let result = self.table_hierarchy_inner(table).await;
        self.observe(result)
    }

    async fn table_hierarchy_inner(&self, table: &str) -> Result<Vec<String>, ServiceNowError> {
        check_table(table)?;
        let options = ListOptions {
            query: EncodedQuery::new().eq("name", table).to_string(),
            fields: vec!["name".to_owned(), "super_class".to_owned()],
            limit: Some(1),
            ..ListOptions::default()
        };
        let rows = self.list_inner("sys_db_object", &options).await?;
        let Some(mut row) = rows.into_iter().next() else {
            return Err(ServiceNowError::UnknownTable(table.to_owned()));
        };
        let mut chain = vec![table.to_owned()];
        // Parents by sys_id: plain reads, no dot-walking needed.
        for _ in 0..32 {
            let Some(parent) = row.reference("super_class").and_then(|r| r.sys_id) else {
                break;
            };
            let Some(parent_row) = self
                .get_inner("sys_db_object", &parent, &["name", "super_class"])
                .await?
            else {
                break;
            };
            let Some(name) = parent_row.non_empty("name").map(str::to_owned) else {
                break;
            };
            if chain.contains(&name) {
                break;
            }
            chain.push(name);
            row = parent_row;
        }
        Ok(chain)
    }

    /// The column names of `table`, including inherited ones, from `sys_dictionary`
    /// (`name=<table>` for the table and each parent, field `element`). Cached for
    /// [`COLUMNS_CACHE_TTL`].
    pub async fn columns(&self, table: &str) -> Result<HashSet<String>, ServiceNowError> {
        let result = self.columns_inner(table).await;
        self.observe(result)
    }

    async fn columns_inner(&self, table: &str) -> Result<HashSet<String>, ServiceNowError> {
        if let Ok(cache) = self.inner.columns.lock()
            && let Some((at, columns)) = cache.get(table)
            && at.elapsed() < COLUMNS_CACHE_TTL
        {
            return Ok(columns.clone());
        }
        let mut columns = HashSet::new();
        for name in self.table_hierarchy_inner(table).await? {
            let options = ListOptions {
                query: EncodedQuery::new().eq("name", &name).to_string(),
                fields: vec!["element".to_owned()],
                ..ListOptions::default()
            };
            let rows = self.list_inner("sys_dictionary", &options).await?;
            columns.extend(
                rows.iter()
                    .filter_map(|row| row.non_empty("element"))
                    .map(str::to_owned),
            );
        }
        if let Ok(mut cache) = self.inner.columns.lock() {
            cache.insert(table.to_owned(), (Instant::now(), columns.clone()));
        }
        Ok(columns)
    }

    /// Fails with [`ServiceNowError::MissingFields`] naming every field (first segment of a
    /// dot-walk) that `table` does not have. Use before querying configurable columns.
    pub async fn ensure_fields(&self, table: &str, fields: &[&str]) -> Result<(), ServiceNowError> {
        let result = async {
            let columns = self.columns_inner(table).await?;
            let mut missing: Vec<String> = Vec::new();
            for field in fields {
                let head = field.split('.').next().unwrap_or_default().trim();
                if head.is_empty() || columns.contains(head) {
                    continue;
                }
                if !missing.iter().any(|known| known == head) {
                    missing.push(head.to_owned());
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(ServiceNowError::MissingFields {
                    table: table.to_owned(),
                    missing,
                })
            }
        }
        .await;
        self.observe(result)
    }
}

fn check_table(table: &str) -> Result<(), ServiceNowError> {
    let valid = !table.is_empty()
        && table.len() <= 80
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ServiceNowError::InvalidInput(format!(
            "'{}' is not a table name (letters, digits and _ only)",
            super::excerpt(table.as_bytes(), 80)
        )))
    }
}

fn check_sys_id(sys_id: &str) -> Result<(), ServiceNowError> {
    let valid = !sys_id.is_empty()
        && sys_id.len() <= 64
        && sys_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ServiceNowError::InvalidInput(format!(
            "'{}' is not a sys_id",
            super::excerpt(sys_id.as_bytes(), 64)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Record {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn encoded_query_escapes_carets_and_tracks_fields() {
        let query = EncodedQuery::new()
            .eq("short_description", "a^b")
            .or("short_description", Operator::Like, "x")
            .and("sys_updated_on", Operator::Ge, "2025-01-01 00:00:00")
            .and("assigned_to", Operator::IsEmpty, "ignored")
            .order_by("sys_updated_on");
        assert_eq!(
            query.as_str(),
            "short_description=a^^b^ORshort_descriptionLIKEx^sys_updated_on>=2025-01-01 00:00:00^assigned_toISEMPTY^ORDERBYsys_updated_on"
        );
        assert_eq!(
            query.fields(),
            vec!["short_description", "sys_updated_on", "assigned_to"]
        );
        let two = EncodedQuery::new()
            .eq("active", "true")
            .new_query()
            .new_query()
            .is_in("state", &["1", "2"]);
        assert_eq!(two.as_str(), "active=true^NQstateIN1,2");
    }

    #[test]
    fn record_accessors_accept_every_reference_shape() {
        let r = record(json!({
            "active": "true",
            "mod": "4",
            "at": "2015-11-01 22:37:27",
            "bare": "46c6f9efa9fe198101ddf5eed9adf6e7",
            "empty": "",
            "linked": {"link": "https://x/api/now/table/sys_user/46c6f9efa9fe198101ddf5eed9adf6e7", "value": "46c6f9efa9fe198101ddf5eed9adf6e7"},
            "shown": {"display_value": "Fred", "link": "https://x/api/now/table/sys_user/f5a3716d0f6002003a2d47bce1050ed4"},
            "both": {"display_value": "New", "value": "1"},
            "number": 5
        }));
        assert_eq!(r.bool("active"), Some(true));
        assert_eq!(r.i64("mod"), Some(4));
        assert_eq!(
            r.datetime("at").map(format_datetime).as_deref(),
            Some("2015-11-01 22:37:27")
        );
        assert_eq!(
            r.reference("bare").and_then(|x| x.sys_id).as_deref(),
            Some("46c6f9efa9fe198101ddf5eed9adf6e7")
        );
        assert_eq!(r.reference("empty"), None);
        assert_eq!(
            r.reference("linked").and_then(|x| x.sys_id).as_deref(),
            Some("46c6f9efa9fe198101ddf5eed9adf6e7")
        );
        let shown = r.reference("shown").unwrap();
        assert_eq!(shown.display_value.as_deref(), Some("Fred"));
        assert_eq!(
            shown.sys_id.as_deref(),
            Some("f5a3716d0f6002003a2d47bce1050ed4")
        );
        assert_eq!(r.str("both"), Some("1"));
        assert_eq!(r.display_value("both"), Some("New"));
        assert_eq!(r.str("number"), None);
        assert_eq!(r.i64("number"), Some(5));
        assert_eq!(r.bool("mod"), None);
    }

    #[test]
    fn link_header_tolerates_brackets_in_targets() {
        let links = parse_link_header(
            "<https://<instance name>.servicenow.com/x?a=1,b>;rel=\"next\", <https://h/x?o=0>; rel=\"first prev\"",
        );
        assert_eq!(links.len(), 2);
        assert_eq!(
            links[0].target,
            "https://<instance name>.servicenow.com/x?a=1,b"
        );
        assert_eq!(links[0].rels, vec!["next"]);
        assert_eq!(links[1].rels, vec!["first", "prev"]);
        assert!(parse_link_header("garbage").is_empty());
        assert!(parse_link_header("<unterminated").is_empty());
    }

    #[test]
    fn invalid_names_are_refused_before_any_request() {
        assert!(check_table("incident").is_ok());
        assert!(check_table("x_mioms_m365_assis_case").is_ok());
        assert!(check_table("../sys_user").is_err());
        assert!(check_table("").is_err());
        assert!(check_sys_id("a9e30c7dc61122760116894de7bcc7bd").is_ok());
        assert!(check_sys_id("a/b").is_err());
    }
}
