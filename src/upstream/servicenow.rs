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
/// How long [`ServiceNowClient::dictionary`] answers are reused.
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
    /// Microsoft's call path: a v1 client-credentials token of an Entra app (the REST-user
    /// app) for `resource` (the inbound app), which the instance's OIDC provider maps to a user.
    EntraClientCredentials {
        /// The Entra client the token is requested from.
        entra: super::entra::EntraClient,
        /// Tenant (domain or id).
        tenant: String,
        /// The Entra app's client id.
        client_id: String,
        /// Its secret.
        client_secret: SecretString,
        /// The v1 `resource` the token is for.
        resource: String,
    },
}

/// What one authenticated call showed about the credentials, for an [`AuthObserver`].
#[derive(Debug)]
pub enum AuthEvent<'a> {
    /// The instance accepted the credentials (a 2xx answer, or an error that is not about them).
    Accepted,
    /// The instance answered 401 (after one token renewal) or 403.
    Refused {
        /// 401 or 403.
        status: u16,
        /// The instance's error message and detail.
        message: String,
    },
    /// No token could be obtained for the call.
    TokenFailed(&'a ServiceNowError),
}

/// Told about every authenticated call's outcome (see [`ServiceNowClient::with_auth_observer`]).
pub type AuthObserver = Arc<dyn Fn(AuthEvent<'_>) + Send + Sync>;

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
    /// Entra ID gave no token for the instance (Microsoft's call path).
    #[error("no Entra ID token for ServiceNow: {0}")]
    EntraToken(Box<super::entra::EntraError>),
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
    /// A query value or field the builder refuses (it could add a condition or run a script).
    #[error(transparent)]
    UnsafeValue(#[from] UnsafeQueryValue),
    /// A column the bot needs could not be found in the table's dictionary; it is never guessed.
    #[error(
        "ServiceNow table '{table}' has no column for \"{label}\" (tried the column names {} and the labels {}); the bot does not guess a column. {manual}",
        candidates.join(", "),
        labels.iter().map(|label| format!("\"{label}\"")).collect::<Vec<_>>().join(", ")
    )]
    UnresolvedColumn {
        /// The table (its parents were searched too).
        table: String,
        /// The guide's label of the column.
        label: String,
        /// The column names tried.
        candidates: Vec<String>,
        /// The labels tried.
        labels: Vec<String>,
        /// The manual step to take instead.
        manual: String,
    },
    /// ServiceNow answered a lookup with a row that does not match its conditions: a condition
    /// was ignored (e.g. a column that does not exist), so nothing found may be written.
    #[error(
        "ServiceNow answered the lookup {query} on '{table}' with a record that does not match it (sys_id {sys_id}): the instance ignored a condition, so the bot will not use or change what it returned. Check the table's columns (sys_dictionary)"
    )]
    QueryNotApplied {
        /// The table.
        table: String,
        /// The conditions, as sent.
        query: String,
        /// The non-matching record.
        sys_id: String,
    },
    /// A lookup that must select one record matched several.
    #[error(
        "{count} records of '{table}' match {query}; the bot changes a record only when exactly one matches. Remove or rename the duplicates in ServiceNow, then try again"
    )]
    Ambiguous {
        /// The table.
        table: String,
        /// The conditions, as sent.
        query: String,
        /// How many matched (at least this many).
        count: usize,
    },
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
            Self::EntraToken(err) => err.retry_kind(),
            Self::Api { retry, .. }
            | Self::Http { retry, .. }
            | Self::Decode { retry, .. }
            | Self::Token { retry, .. } => *retry,
            Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::MissingFields { .. }
            | Self::UnknownTable(_)
            | Self::Pagination(_)
            | Self::InvalidInput(_)
            | Self::UnsafeValue(_)
            | Self::UnresolvedColumn { .. }
            | Self::QueryNotApplied { .. }
            | Self::Ambiguous { .. } => RetryKind::Permanent,
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

/// A value or field name the encoded-query builder refuses because it could change the query
/// itself: add a condition (`^`, a line break), or run a script (`javascript:`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeQueryValue {
    /// The value contains `^`, the separator of query conditions (whether `^^` escapes it is
    /// not documented, so it is never sent).
    #[error(
        "this value cannot be looked up in ServiceNow: it contains '^', which separates query conditions"
    )]
    Caret,
    /// The value contains a line break.
    #[error("this value cannot be looked up in ServiceNow: it contains a line break")]
    LineBreak,
    /// The value starts with `javascript:`, which ServiceNow evaluates as a script.
    #[error(
        "this value cannot be looked up in ServiceNow: it starts with 'javascript:', which ServiceNow would run as a script"
    )]
    Script,
    /// A field name that is not a column name or dot-walk.
    #[error(
        "'{0}' cannot be used as a ServiceNow column in a query (letters, digits, '_' and '.' only)"
    )]
    FieldName(String),
}

/// Refuses a query value that could add a condition or run a script.
pub fn check_query_value(value: &str) -> Result<(), UnsafeQueryValue> {
    if value.contains('^') {
        return Err(UnsafeQueryValue::Caret);
    }
    if value.contains(['\n', '\r']) {
        return Err(UnsafeQueryValue::LineBreak);
    }
    let head: String = value.trim_start().chars().take(11).collect();
    if head.eq_ignore_ascii_case("javascript:") {
        return Err(UnsafeQueryValue::Script);
    }
    Ok(())
}

/// Refuses a field name that is not a column name or a dot-walk of column names.
pub fn check_query_field(field: &str) -> Result<(), UnsafeQueryValue> {
    let valid = !field.is_empty()
        && field.len() <= 200
        && field.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(UnsafeQueryValue::FieldName(super::excerpt(
            field.as_bytes(),
            80,
        )))
    }
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

/// Builds a `sysparm_query`, remembering the fields it names so they can be checked with
/// [`ServiceNowClient::ensure_fields`]. A value that could add a condition or run a script
/// ([`check_query_value`]) or a field that is not a column name refuses the whole query: its
/// [`Self::text`] is then the typed error, so it is never sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedQuery {
    text: String,
    fields: Vec<String>,
    after_new_query: bool,
    refused: Option<UnsafeQueryValue>,
}

impl EncodedQuery {
    /// An empty query.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, joiner: &str, term: Result<String, UnsafeQueryValue>, field: &str) -> Self {
        let term = match term {
            Ok(term) => term,
            Err(refused) => {
                self.refused.get_or_insert(refused);
                return self;
            }
        };
        if !self.text.is_empty() && !self.after_new_query {
            self.text.push_str(joiner);
        }
        self.after_new_query = false;
        self.text.push_str(&term);
        if !field.is_empty() && !self.fields.iter().any(|known| known == field) {
            self.fields.push(field.to_owned());
        }
        self
    }

    fn term(field: &str, op: Operator, value: &str) -> Result<String, UnsafeQueryValue> {
        check_query_field(field)?;
        match op {
            Operator::IsEmpty | Operator::IsNotEmpty => Ok(format!("{field}{}", op.as_str())),
            _ => {
                check_query_value(value)?;
                Ok(format!("{field}{}{value}", op.as_str()))
            }
        }
    }

    /// `^field<op>value` (AND).
    pub fn and(self, field: &str, op: Operator, value: &str) -> Self {
        let term = Self::term(field, op, value);
        self.push("^", term, field)
    }

    /// `^ORfield<op>value` (OR with the previous condition).
    pub fn or(self, field: &str, op: Operator, value: &str) -> Self {
        let term = Self::term(field, op, value);
        self.push("^OR", term, field)
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
        let term = check_query_field(field).map(|()| format!("ORDERBY{field}"));
        self.push("^", term, field)
    }

    /// `^ORDERBYDESCfield`.
    pub fn order_by_desc(self, field: &str) -> Self {
        let term = check_query_field(field).map(|()| format!("ORDERBYDESC{field}"));
        self.push("^", term, field)
    }

    /// The encoded query text, or why it was refused (the first refused value or field).
    pub fn text(&self) -> Result<&str, UnsafeQueryValue> {
        match &self.refused {
            Some(refused) => Err(refused.clone()),
            None => Ok(&self.text),
        }
    }

    /// The distinct fields the query names, in order (dot-walks as written).
    pub fn fields(&self) -> Vec<&str> {
        self.fields.iter().map(String::as_str).collect()
    }
}

/// One column of a table as `sys_dictionary` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictionaryColumn {
    /// The table that defines it (the table itself or one it extends).
    pub defined_on: String,
    /// The column name (`element`).
    pub element: String,
    /// Its label (`column_label`).
    pub label: String,
}

/// The columns of a table, its own and inherited ones, read from `sys_dictionary`.
#[derive(Debug, Clone)]
pub struct TableDictionary {
    /// The table.
    pub table: String,
    /// The table and the tables it extends, nearest first.
    pub hierarchy: Vec<String>,
    /// Every column, nearest table first, each name once.
    pub columns: Vec<DictionaryColumn>,
    fetched_at: Instant,
}

impl TableDictionary {
    /// A dictionary built from known entries (for tests and offline resolution).
    pub fn from_columns(
        table: &str,
        hierarchy: Vec<String>,
        columns: Vec<DictionaryColumn>,
    ) -> Self {
        Self {
            table: table.to_owned(),
            hierarchy,
            columns,
            fetched_at: Instant::now(),
        }
    }

    /// The column named `element`, if the table has it (own or inherited).
    pub fn column(&self, element: &str) -> Option<Column> {
        self.columns
            .iter()
            .find(|column| column.element == element)
            .map(|found| self.resolved(found))
    }

    /// The columns whose label equals `label` (ignoring case and surrounding spaces).
    pub fn by_label(&self, label: &str) -> Vec<Column> {
        let label = label.trim();
        self.columns
            .iter()
            .filter(|column| column.label.eq_ignore_ascii_case(label))
            .map(|found| self.resolved(found))
            .collect()
    }

    /// How old this answer is.
    pub fn age(&self) -> Duration {
        self.fetched_at.elapsed()
    }

    fn resolved(&self, found: &DictionaryColumn) -> Column {
        Column {
            table: self.table.clone(),
            name: found.element.clone(),
            label: found.label.clone(),
        }
    }
}

/// The tables whose columns are platform basics, documented by ServiceNow and used by name
/// without a dictionary lookup ([`Column::standard`]).
pub const STANDARD_TABLES: &[&str] =
    &["sys_user", "sys_user_has_role", "sys_user_role", "incident"];

/// A column known to exist on a table: found in its dictionary ([`TableDictionary::column`],
/// [`TableDictionary::by_label`]), or a documented column of a platform basic table
/// ([`Column::standard`]). The only kind of column a [`CheckedQuery`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    table: String,
    name: String,
    label: String,
}

impl Column {
    /// `sys_id` of any table, or a column of a platform basic table ([`STANDARD_TABLES`]).
    pub fn standard(table: &str, name: &str) -> Result<Self, ServiceNowError> {
        if name != "sys_id" && !STANDARD_TABLES.contains(&table) {
            return Err(ServiceNowError::InvalidInput(format!(
                "the column {table}.{name} must be resolved from the table's dictionary"
            )));
        }
        check_table(table)?;
        check_query_field(name)?;
        Ok(Self {
            table: table.to_owned(),
            name: name.to_owned(),
            label: name.to_owned(),
        })
    }

    /// The table it was resolved for.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The column name on this instance.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its label on this instance.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// An equality lookup on one table, built only from [`Column`]s of that table and values
/// [`check_query_value`] accepts. [`ServiceNowClient::find_checked`] and
/// [`ServiceNowClient::find_one`] check every returned row against every condition in code,
/// because ServiceNow ignores a condition it cannot apply and would return rows the lookup
/// never selected. Values are compared ignoring ASCII case, as the instance's `=` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedQuery {
    table: String,
    conditions: Vec<(Column, String)>,
}

impl CheckedQuery {
    /// A lookup on `table` (add at least one condition).
    pub fn on(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            conditions: Vec::new(),
        }
    }

    /// Adds `column = value` (AND). Refuses a column of another table and a value that could
    /// add a condition.
    pub fn eq(mut self, column: &Column, value: &str) -> Result<Self, ServiceNowError> {
        if column.table != self.table {
            return Err(ServiceNowError::InvalidInput(format!(
                "the column {} belongs to '{}', not to '{}'",
                column.name, column.table, self.table
            )));
        }
        check_query_value(value)?;
        self.conditions.push((column.clone(), value.to_owned()));
        Ok(self)
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The encoded query sent (`a=x^b=y`); a lookup without conditions is refused.
    pub fn encoded(&self) -> Result<String, ServiceNowError> {
        if self.conditions.is_empty() {
            return Err(ServiceNowError::InvalidInput(format!(
                "a lookup on '{}' needs at least one condition",
                self.table
            )));
        }
        let query = self
            .conditions
            .iter()
            .fold(EncodedQuery::new(), |query, (column, value)| {
                query.eq(column.name(), value)
            });
        Ok(query.text()?.to_owned())
    }

    /// True when `record` has every condition's value (ignoring ASCII case).
    pub fn matches(&self, record: &Record) -> bool {
        self.conditions.iter().all(|(column, value)| {
            record
                .str(column.name())
                .is_some_and(|found| found.eq_ignore_ascii_case(value))
        })
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
    dictionaries: Mutex<HashMap<String, Arc<TableDictionary>>>,
    page_size: usize,
    recorder: Recorder,
    observer: Option<AuthObserver>,
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
            None,
        )
    }

    fn build(
        http: reqwest::Client,
        base: Url,
        auth: ServiceNowAuth,
        page_size: usize,
        recorder: Recorder,
        observer: Option<AuthObserver>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                token: tokio::sync::Mutex::new(None),
                dictionaries: Mutex::new(HashMap::new()),
                page_size: page_size.max(1),
                recorder,
                observer,
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
            inner.observer.clone(),
        )
    }

    /// Tells `observer` how the instance treated the credentials on every call.
    pub fn with_auth_observer(self, observer: AuthObserver) -> Self {
        let inner = &self.inner;
        Self::build(
            inner.http.clone(),
            inner.base.clone(),
            inner.auth.clone(),
            inner.page_size,
            inner.recorder.clone(),
            Some(observer),
        )
    }

    /// How the client authenticates.
    pub fn auth(&self) -> &ServiceNowAuth {
        &self.inner.auth
    }

    /// Drops the cached token, so the next call requests a new one.
    pub async fn forget_cached_token(&self) {
        self.forget_token().await;
    }

    fn tell(&self, event: AuthEvent<'_>) {
        if let Some(observer) = &self.inner.observer {
            observer(event);
        }
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
        // Held across the refresh: one token request at a time.
        let mut cached = self.inner.token.lock().await;
        if let Some(token) = cached.as_ref()
            && token.renew_at > Instant::now()
        {
            return Ok(token.token.clone());
        }
        let (access_token, lifetime) = match &self.inner.auth {
            ServiceNowAuth::OAuthClientCredentials {
                client_id,
                client_secret,
            } => {
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
                (token.access_token, Duration::from_secs(token.expires_in))
            }
            ServiceNowAuth::EntraClientCredentials {
                entra,
                tenant,
                client_id,
                client_secret,
                resource,
            } => {
                let token = entra
                    .client_credentials_v1(tenant, client_id, client_secret, resource)
                    .await
                    .map_err(|err| ServiceNowError::EntraToken(Box::new(err)))?;
                (token.access_token, token.expires_in)
            }
            ServiceNowAuth::Basic { .. } | ServiceNowAuth::Bearer { .. } => {
                return Err(ServiceNowError::InvalidInput(
                    "no OAuth credentials configured".to_owned(),
                ));
            }
        };
        let usable = if lifetime > TOKEN_MARGIN * 2 {
            lifetime - TOKEN_MARGIN
        } else {
            lifetime / 2
        };
        *cached = Some(CachedToken {
            token: access_token.clone(),
            renew_at: Instant::now() + usable,
        });
        Ok(access_token)
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
        let renewable = matches!(
            self.inner.auth,
            ServiceNowAuth::OAuthClientCredentials { .. }
                | ServiceNowAuth::EntraClientCredentials { .. }
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
                ServiceNowAuth::OAuthClientCredentials { .. }
                | ServiceNowAuth::EntraClientCredentials { .. } => {
                    let token = match self.bearer().await {
                        Ok(token) => token,
                        Err(err) => {
                            self.tell(AuthEvent::TokenFailed(&err));
                            return Err(err);
                        }
                    };
                    request.bearer_auth(token.expose_secret())
                }
                ServiceNowAuth::Bearer { token } => request.bearer_auth(token.expose_secret()),
            };
            let raw = super::send(request).await?;
            if raw.status == 401 && renewable && attempt == 1 {
                self.forget_token().await;
                continue;
            }
            if raw.status == 401 || raw.status == 403 {
                let message = match parse_error(&raw) {
                    ServiceNowError::Unauthorized {
                        message, detail, ..
                    }
                    | ServiceNowError::Forbidden {
                        message, detail, ..
                    } => format!("{message}{}", detail_suffix(&detail)),
                    other => other.to_string(),
                };
                self.tell(AuthEvent::Refused {
                    status: raw.status,
                    message,
                });
            } else if raw.status < 500 && raw.status != 429 {
                self.tell(AuthEvent::Accepted);
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
        let text = query.text()?;
        let mut named = query.fields();
        named.extend_from_slice(fields);
        self.ensure_fields(table, &named).await?;
        self.query(table, text, fields, limit).await
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
        self.patch(table, sys_id, fields, false).await
    }

    /// Updates fields given as display values (`sysparm_input_display_value=true`): the way a
    /// password field (`sys_user.user_password`) must be written, so the instance stores its
    /// one-way hash of the value instead of the raw text.
    pub async fn update_display_values(
        &self,
        table: &str,
        sys_id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Record, ServiceNowError> {
        self.patch(table, sys_id, fields, true).await
    }

    async fn patch(
        &self,
        table: &str,
        sys_id: &str,
        fields: &Map<String, Value>,
        input_display_value: bool,
    ) -> Result<Record, ServiceNowError> {
        let result = async {
            let mut url = self.table_url(table, Some(sys_id))?;
            Self::default_params(&mut url, DisplayValue::False, false);
            if input_display_value {
                url.query_pairs_mut()
                    .append_pair("sysparm_input_display_value", "true");
            }
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
            query: EncodedQuery::new().eq("name", table).text()?.to_owned(),
            // The parent's name and its parent come in the same answer (dot-walked fields).
            fields: [
                "name",
                "super_class",
                "super_class.name",
                "super_class.super_class",
            ]
            .map(str::to_owned)
            .to_vec(),
            limit: Some(1),
            ..ListOptions::default()
        };
        let rows = self.list_inner("sys_db_object", &options).await?;
        let Some(row) = rows
            .into_iter()
            .next()
            .filter(|row| row.str("name") == Some(table))
        else {
            return Err(ServiceNowError::UnknownTable(table.to_owned()));
        };
        let mut chain = vec![table.to_owned()];
        let mut next_parent = row.reference("super_class").and_then(|r| r.sys_id);
        if next_parent.is_some()
            && let Some(parent_name) = row.non_empty("super_class.name").map(str::to_owned)
            && parent_name != table
        {
            chain.push(parent_name);
            next_parent = row
                .reference("super_class.super_class")
                .and_then(|r| r.sys_id);
        }
        // Further parents by sys_id: plain reads.
        for _ in 0..32 {
            let Some(parent) = next_parent.take() else {
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
            next_parent = parent_row.reference("super_class").and_then(|r| r.sys_id);
        }
        Ok(chain)
    }

    /// The column names of `table`, including inherited ones, from [`Self::dictionary`].
    pub async fn columns(&self, table: &str) -> Result<HashSet<String>, ServiceNowError> {
        let result = self.columns_inner(table).await;
        self.observe(result)
    }

    async fn columns_inner(&self, table: &str) -> Result<HashSet<String>, ServiceNowError> {
        let dictionary = self.dictionary_inner(table, false).await?;
        Ok(dictionary
            .columns
            .iter()
            .map(|column| column.element.clone())
            .collect())
    }

    /// The columns of `table` and of every table it extends (`sys_db_object.super_class`), from
    /// `sys_dictionary`: element, label and the table that defines each. Cached per table for
    /// [`COLUMNS_CACHE_TTL`]; `refresh` reads the instance again.
    pub async fn dictionary(
        &self,
        table: &str,
        refresh: bool,
    ) -> Result<Arc<TableDictionary>, ServiceNowError> {
        let result = self.dictionary_inner(table, refresh).await;
        self.observe(result)
    }

    /// The column `name` of `table` (own or inherited), for a [`CheckedQuery`]; a column the
    /// table does not have is [`ServiceNowError::MissingFields`]. For configured column names.
    pub async fn resolve_column(&self, table: &str, name: &str) -> Result<Column, ServiceNowError> {
        let result = async {
            self.dictionary_inner(table, false)
                .await?
                .column(name)
                .ok_or_else(|| ServiceNowError::MissingFields {
                    table: table.to_owned(),
                    missing: vec![name.to_owned()],
                })
        }
        .await;
        self.observe(result)
    }

    /// Forgets every cached dictionary (after a schema change on the instance).
    pub fn forget_dictionaries(&self) {
        if let Ok(mut cache) = self.inner.dictionaries.lock() {
            cache.clear();
        }
    }

    async fn dictionary_inner(
        &self,
        table: &str,
        refresh: bool,
    ) -> Result<Arc<TableDictionary>, ServiceNowError> {
        if !refresh
            && let Ok(cache) = self.inner.dictionaries.lock()
            && let Some(dictionary) = cache.get(table)
            && dictionary.fetched_at.elapsed() < COLUMNS_CACHE_TTL
        {
            return Ok(dictionary.clone());
        }
        let hierarchy = self.table_hierarchy_inner(table).await?;
        let names: Vec<&str> = hierarchy.iter().map(String::as_str).collect();
        let options = ListOptions {
            query: EncodedQuery::new().is_in("name", &names).text()?.to_owned(),
            fields: vec![
                "name".to_owned(),
                "element".to_owned(),
                "column_label".to_owned(),
            ],
            ..ListOptions::default()
        };
        let rows = self.list_inner("sys_dictionary", &options).await?;
        let mut columns: Vec<DictionaryColumn> = rows
            .iter()
            .filter_map(|row| {
                let defined_on = row.non_empty("name")?;
                // The IN condition is checked here too: an ignored condition must not add
                // columns of other tables.
                hierarchy.iter().position(|name| name == defined_on)?;
                Some(DictionaryColumn {
                    defined_on: defined_on.to_owned(),
                    element: row.non_empty("element")?.to_owned(),
                    label: row
                        .str("column_label")
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                })
            })
            .collect();
        // Nearest table first: a column redefined on a child wins.
        columns.sort_by_key(|column| {
            hierarchy
                .iter()
                .position(|name| *name == column.defined_on)
                .unwrap_or(usize::MAX)
        });
        let mut seen = HashSet::new();
        columns.retain(|column| seen.insert(column.element.clone()));
        let dictionary = Arc::new(TableDictionary {
            table: table.to_owned(),
            hierarchy,
            columns,
            fetched_at: Instant::now(),
        });
        if let Ok(mut cache) = self.inner.dictionaries.lock() {
            cache.insert(table.to_owned(), dictionary.clone());
        }
        Ok(dictionary)
    }

    /// Runs a [`CheckedQuery`] and returns the matching records (at most `limit`). Every
    /// returned row is checked in code against every condition; a row that does not match
    /// means the instance ignored a condition, and the whole answer is refused
    /// ([`ServiceNowError::QueryNotApplied`]). `fields` empty: all fields.
    pub async fn find_checked(
        &self,
        query: &CheckedQuery,
        fields: &[&str],
        limit: Option<usize>,
    ) -> Result<Vec<Record>, ServiceNowError> {
        let result = self.find_checked_inner(query, fields, limit).await;
        self.observe(result)
    }

    async fn find_checked_inner(
        &self,
        query: &CheckedQuery,
        fields: &[&str],
        limit: Option<usize>,
    ) -> Result<Vec<Record>, ServiceNowError> {
        let encoded = query.encoded()?;
        let mut wanted: Vec<String> = Vec::new();
        if !fields.is_empty() {
            let needed = fields
                .iter()
                .copied()
                .chain(["sys_id"])
                .chain(query.conditions.iter().map(|(column, _)| column.name()));
            for field in needed {
                if !wanted.iter().any(|known| known == field) {
                    wanted.push(field.to_owned());
                }
            }
        }
        let options = ListOptions {
            query: encoded.clone(),
            fields: wanted,
            limit,
            ..ListOptions::default()
        };
        let rows = self.list_inner(&query.table, &options).await?;
        if let Some(stray) = rows.iter().find(|row| !query.matches(row)) {
            return Err(ServiceNowError::QueryNotApplied {
                table: query.table.clone(),
                query: encoded,
                sys_id: stray.sys_id().unwrap_or("unknown").to_owned(),
            });
        }
        Ok(rows)
    }

    /// The one record a [`CheckedQuery`] selects, `None` when none does; more than one match
    /// is [`ServiceNowError::Ambiguous`], so a caller never updates a record picked at random.
    pub async fn find_one(
        &self,
        query: &CheckedQuery,
        fields: &[&str],
    ) -> Result<Option<Record>, ServiceNowError> {
        let result = async {
            let mut rows = self.find_checked_inner(query, fields, Some(2)).await?;
            if rows.len() > 1 {
                return Err(ServiceNowError::Ambiguous {
                    table: query.table.clone(),
                    query: query.encoded()?,
                    count: rows.len(),
                });
            }
            Ok(rows.pop())
        }
        .await;
        self.observe(result)
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
    fn encoded_query_builds_terms_and_tracks_fields() {
        let query = EncodedQuery::new()
            .eq("short_description", "a b")
            .or("short_description", Operator::Like, "x")
            .and("sys_updated_on", Operator::Ge, "2025-01-01 00:00:00")
            .and("assigned_to", Operator::IsEmpty, "ignored")
            .order_by("sys_updated_on");
        assert_eq!(
            query.text(),
            Ok(
                "short_description=a b^ORshort_descriptionLIKEx^sys_updated_on>=2025-01-01 00:00:00^assigned_toISEMPTY^ORDERBYsys_updated_on"
            )
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
        assert_eq!(two.text(), Ok("active=true^NQstateIN1,2"));
    }

    #[test]
    fn values_that_could_change_the_query_are_refused() {
        let refused = |value: &str| EncodedQuery::new().eq("email", value).text().err();
        assert_eq!(refused("a^ORactive=false"), Some(UnsafeQueryValue::Caret));
        assert_eq!(refused("a^^b"), Some(UnsafeQueryValue::Caret));
        assert_eq!(refused("a\nb"), Some(UnsafeQueryValue::LineBreak));
        assert_eq!(refused("a\rb"), Some(UnsafeQueryValue::LineBreak));
        assert_eq!(
            refused("javascript:gs.getUserID()"),
            Some(UnsafeQueryValue::Script)
        );
        assert_eq!(refused("  JavaScript:1"), Some(UnsafeQueryValue::Script));
        assert_eq!(refused("my javascript: notes"), None);
        let field = EncodedQuery::new().eq("email^ORactive", "x").text().err();
        assert!(matches!(field, Some(UnsafeQueryValue::FieldName(_))));
        // The first refusal wins and nothing of the query is sent.
        let later = EncodedQuery::new()
            .eq("active", "true")
            .eq("email", "x^y")
            .eq("name", "z");
        assert_eq!(later.text(), Err(UnsafeQueryValue::Caret));
        let err = ServiceNowError::from(UnsafeQueryValue::Script);
        assert!(err.to_string().contains("cannot be looked up"));
        assert_eq!(err.retry_kind(), RetryKind::Permanent);
    }

    /// Splits an encoded query the way ServiceNow does: conditions are separated by `^`
    /// (`^OR`, `^NQ` and `^ORDERBY` start with it too).
    fn conditions_of(text: &str) -> Vec<&str> {
        text.split('^').collect()
    }

    proptest::proptest! {
        /// No value the builder accepts can add a condition, start a new query or run a script:
        /// the query always has exactly one condition per term, each naming its own field and
        /// holding the value unchanged.
        #[test]
        fn no_accepted_value_adds_a_condition(
            values in proptest::collection::vec(proptest::prelude::any::<String>(), 1..4),
            spliced in proptest::collection::vec(
                proptest::sample::select(vec!["^", "^OR", "^NQ", "\n", "\r", "javascript:", "JavaScript:", "^ORDERBY", ",", "=", "@"]),
                0..3,
            ),
        ) {
            let fields = ["email", "user_name", "name", "number"];
            let mut query = EncodedQuery::new();
            let mut sent = Vec::new();
            for (index, value) in values.iter().enumerate() {
                let mut value = value.clone();
                if let Some(piece) = spliced.get(index) {
                    let at = value.char_indices().nth(value.chars().count() / 2).map_or(value.len(), |(at, _)| at);
                    value.insert_str(at, piece);
                }
                query = query.eq(fields[index % fields.len()], &value);
                sent.push((fields[index % fields.len()], value));
            }
            match query.text() {
                Ok(text) => {
                    let conditions = conditions_of(text);
                    proptest::prop_assert_eq!(conditions.len(), sent.len());
                    for (condition, (field, value)) in conditions.iter().zip(&sent) {
                        proptest::prop_assert_eq!(*condition, format!("{field}={value}"));
                        proptest::prop_assert!(!value.contains('^'));
                        proptest::prop_assert!(!value.contains(['\n', '\r']));
                        proptest::prop_assert!(!value.trim_start().to_ascii_lowercase().starts_with("javascript:"));
                    }
                }
                Err(_) => {
                    let unsafe_value = sent.iter().any(|(_, value)| check_query_value(value).is_err());
                    proptest::prop_assert!(unsafe_value, "refused only for an unsafe value");
                }
            }
        }
    }

    fn column(table: &str, name: &str) -> Column {
        TableDictionary::from_columns(
            table,
            vec![table.to_owned()],
            vec![DictionaryColumn {
                defined_on: table.to_owned(),
                element: name.to_owned(),
                label: name.to_owned(),
            }],
        )
        .column(name)
        .expect("in the dictionary")
    }

    #[test]
    fn checked_queries_take_columns_of_their_table_and_check_rows() {
        let name = column("oidc_provider_configuration", "name");
        let query = CheckedQuery::on("oidc_provider_configuration")
            .eq(&name, "Contoso Azure")
            .expect("own column");
        assert_eq!(query.encoded().expect("text"), "name=Contoso Azure");
        assert!(query.matches(&record(json!({"name": "contoso azure"}))));
        assert!(!query.matches(&record(json!({"name": "Contoso SSO"}))));
        assert!(!query.matches(&record(json!({"oidc_provider": "Contoso Azure"}))));
        let other = column("oauth_entity", "name");
        assert!(
            CheckedQuery::on("oidc_provider_configuration")
                .eq(&other, "x")
                .is_err()
        );
        assert!(
            CheckedQuery::on("oidc_provider_configuration")
                .encoded()
                .is_err()
        );
        assert!(matches!(
            CheckedQuery::on("oidc_provider_configuration").eq(&name, "a^ORb"),
            Err(ServiceNowError::UnsafeValue(UnsafeQueryValue::Caret))
        ));
        assert!(Column::standard("oauth_entity", "client_id").is_err());
        assert!(Column::standard("sys_user", "user_name").is_ok());
        assert!(Column::standard("oauth_entity", "sys_id").is_ok());
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
