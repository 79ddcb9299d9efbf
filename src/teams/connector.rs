//! Bot Connector REST client (bot → channel): token cache, reply, send, update, delete, create
//! conversation.
//!
//! The bearer token is fetched with the client-credentials grant, cached (read without waiting
//! while it is fresh) and refreshed five minutes before it expires; one refresh runs at a time
//! and concurrent callers share its result. The token is only ever sent to allow-listed
//! `serviceUrl` hosts over HTTPS (plain HTTP only for allow-listed loopback hosts). Failures are
//! classified once, in [`ConnectorError`]; the client itself retries only once, after a 401,
//! with a fresh token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use oauth2::{Scope, TokenResponse as _};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use url::{Host, Url};

use crate::config::Settings;
use crate::error::{RetryKind, parse_retry_after};
use crate::metrics::Metrics;
use crate::upstream::entra::EntraErrorResponse;
use crate::upstream::oauth::{
    TokenEndpointClient, TokenFailure, TokenHttp, token_client, unreadable_token,
};
use crate::upstream::retry_after;

/// A token is refreshed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Lifetime assumed when a token answer has no `expires_in`.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(10 * 60);
/// Longest lifetime believed from a token answer.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest answer body read from the connector or the token endpoint.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest body excerpt kept in an error.
const EXCERPT_CHARS: usize = 300;

/// A failed token request (client credentials against Entra ID), without secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint URL is unusable (not a URL, or plain HTTP off loopback).
    #[error("bot.outbound_token_url is unusable: {0}")]
    InvalidUrl(String),
    /// The token endpoint refused the request; the AADSTS answer summarised.
    #[error("{}", describe_rejection(*status, error, error_codes, description))]
    Rejected {
        /// HTTP status.
        status: u16,
        /// OAuth `error` (e.g. `invalid_client`), empty if the body had none.
        error: String,
        /// `error_codes` (e.g. `[7000215]`).
        error_codes: Vec<i64>,
        /// First line of `error_description` (or a body excerpt), shortened.
        description: String,
        /// `Retry-After`, when the endpoint sent one.
        retry_after: Option<Duration>,
    },
    /// The token endpoint could not be reached.
    #[error("token endpoint unreachable: {0}")]
    Network(String),
    /// The token endpoint answered 2xx with something that is not a token.
    #[error("token endpoint answered with an unusable body: {0}")]
    Decode(String),
}

impl TokenError {
    /// How a retrier should treat this failure.
    pub fn retry_kind(&self) -> RetryKind {
        match self {
            Self::InvalidUrl(_) => RetryKind::Permanent,
            Self::Rejected {
                status,
                retry_after,
                ..
            } => match status {
                429 | 500 | 502 | 503 | 504 => RetryKind::Transient {
                    retry_after: *retry_after,
                },
                _ => RetryKind::Permanent,
            },
            Self::Network(_) => RetryKind::Network,
            Self::Decode(_) => RetryKind::Transient { retry_after: None },
        }
    }
}

fn describe_rejection(status: u16, error: &str, codes: &[i64], description: &str) -> String {
    let mut text = format!("Entra ID refused the bot's token request (HTTP {status}");
    if !error.is_empty() {
        text.push_str(", ");
        text.push_str(error);
    }
    for code in codes {
        text.push_str(&format!(", AADSTS{code}"));
    }
    text.push(')');
    if !description.is_empty() {
        text.push_str(": ");
        text.push_str(description);
    }
    if let Some(hint) = codes.iter().find_map(|code| token_hint(*code)) {
        text.push_str(". ");
        text.push_str(hint);
    }
    text
}

/// What to do next for the AADSTS codes an operator is likely to meet.
fn token_hint(code: i64) -> Option<&'static str> {
    Some(match code {
        7000215 => {
            "Check bot.app_password: it must be the client secret's value (not its ID) of the bot's app registration"
        }
        7000222 => "The client secret has expired: create a new one and set bot.app_password",
        700016 => {
            "Check bot.app_id and bot.tenant_id: the app registration was not found in that tenant"
        }
        90002 => "Check bot.tenant_id: the tenant was not found",
        70011 => "Check bot.outbound_scope",
        _ => return None,
    })
}

/// A failed connector call, classified once.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The serviceUrl host is not allow-listed; no token was fetched and no request made.
    #[error(
        "serviceUrl host {0} is not allowed (add it to bot.allowed_service_url_hosts if it is a genuine Bot Connector host)"
    )]
    HostNotAllowed(String),
    /// The serviceUrl is unusable (not a URL, plain HTTP off loopback, query or credentials).
    #[error("serviceUrl is unusable: {0}")]
    InvalidServiceUrl(String),
    /// The request cannot be sent: an id that cannot be a URL path segment (empty, `.` or
    /// `..`), or a body that does not serialise.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The bearer token could not be obtained.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The connector answered with an error status.
    #[error("{}", describe_status(*status, code.as_deref(), message))]
    Status {
        /// HTTP status.
        status: u16,
        /// The Teams error code from `{"error":{"code"}}`, e.g. `BotNotInConversationRoster`.
        code: Option<String>,
        /// The error message, or an excerpt of the body; shortened, never the token.
        message: String,
        /// `Retry-After`, when the connector sent one.
        retry_after: Option<Duration>,
    },
    /// The connector could not be reached (refused, reset, timed out).
    #[error("connector unreachable: {0}")]
    Network(String),
    /// The connector answered 2xx with a body that is not the expected JSON.
    #[error("connector answered with an unusable body: {0}")]
    Decode(String),
}

fn describe_status(status: u16, code: Option<&str>, message: &str) -> String {
    let mut text = format!("connector answered HTTP {status}");
    if let Some(code) = code {
        text.push_str(&format!(" {code}"));
    }
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(message);
    }
    text
}

impl ConnectorError {
    /// How a retrier should treat this failure.
    pub fn retry_kind(&self) -> RetryKind {
        match self {
            Self::HostNotAllowed(_) | Self::InvalidServiceUrl(_) | Self::InvalidRequest(_) => {
                RetryKind::Permanent
            }
            Self::Token(err) => err.retry_kind(),
            Self::Status {
                status,
                retry_after,
                ..
            } => match status {
                429 | 412 | 500 | 502 | 503 | 504 => RetryKind::Transient {
                    retry_after: *retry_after,
                },
                _ => RetryKind::Permanent,
            },
            Self::Network(_) => RetryKind::Network,
            // The message may have been delivered: do not send it again.
            Self::Decode(_) => RetryKind::Permanent,
        }
    }

    /// The HTTP status the connector answered, if it answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Teams error code (e.g. `ConversationBlockedByUser`), if the connector sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True when the bot is no longer in the conversation (403 `BotNotInConversationRoster`,
    /// 403 `ForbiddenOperationException`, 404 `ConversationNotFound`): stop sending there.
    pub fn is_bot_removed(&self) -> bool {
        matches!(
            (self.status(), self.error_code()),
            (Some(403), Some("BotNotInConversationRoster"))
                | (Some(403), Some("ForbiddenOperationException"))
                | (Some(404), Some("ConversationNotFound"))
        )
    }

    fn outcome(&self) -> &'static str {
        match self.retry_kind() {
            RetryKind::Network => "network",
            RetryKind::Transient { .. } => "transient",
            RetryKind::Permanent => "permanent",
        }
    }
}

/// `{"id": …}` returned by send, reply and update.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceResponse {
    /// The activity id (empty when the connector answered without one).
    #[serde(default)]
    pub id: String,
}

/// `{"id", "activityId"?, "serviceUrl"?}` returned by create conversation.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationResourceResponse {
    /// The new conversation's id.
    pub id: String,
    /// The id of the first activity, when the request carried one.
    #[serde(default)]
    pub activity_id: Option<String>,
    /// The serviceUrl to use for this conversation, when the connector says so.
    #[serde(default)]
    pub service_url: Option<String>,
}

/// A member of a conversation as `GET /v3/conversations/{id}/members/{member}` returns it
/// (`TeamsChannelAccount`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamsMember {
    /// The member's id in the channel (`29:…`).
    #[serde(default)]
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Entra object id.
    #[serde(default)]
    pub aad_object_id: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// User principal name (also accepted with the Playground's spelling).
    #[serde(default, alias = "userPrincipleName")]
    pub user_principal_name: Option<String>,
    /// Home tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// True when `host` matches one allow-list entry: an exact host, or `*.suffix` matching any
/// sub-domain of `suffix` (not `suffix` itself). Case-insensitive; a trailing dot is ignored.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = normalize_host(host);
    if host.is_empty() {
        return false;
    }
    allowed.iter().any(|entry| {
        let entry = normalize_host(entry);
        match entry.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            _ => !entry.is_empty() && entry == host,
        }
    })
}

fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Percent-encodes one path segment: everything but ASCII letters, digits and `-._~`.
pub fn encode_segment(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len() + 16);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

fn id_segment(value: &str, what: &'static str) -> Result<String, ConnectorError> {
    if value.is_empty() || value == "." || value == ".." {
        return Err(ConnectorError::InvalidRequest(format!(
            "the {what} id is empty or a dot segment"
        )));
    }
    Ok(encode_segment(value))
}

/// Checks `service_url` against the allow-list and returns it parsed, ending in `/`.
pub fn checked_service_url(allowed: &[String], service_url: &str) -> Result<Url, ConnectorError> {
    let mut text = service_url.trim().to_owned();
    if !text.ends_with('/') {
        text.push('/');
    }
    let url = Url::parse(&text)
        .map_err(|e| ConnectorError::InvalidServiceUrl(format!("not a URL ({e})")))?;
    let (host_text, loopback) = match url.host() {
        Some(Host::Domain(domain)) => (
            domain.to_ascii_lowercase(),
            domain.eq_ignore_ascii_case("localhost"),
        ),
        Some(Host::Ipv4(ip)) => (ip.to_string(), ip.is_loopback()),
        Some(Host::Ipv6(ip)) => (ip.to_string(), ip.is_loopback()),
        None => {
            return Err(ConnectorError::InvalidServiceUrl(
                "it has no host".to_owned(),
            ));
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(ConnectorError::InvalidServiceUrl(format!(
                "plain http is only allowed for loopback hosts, not {host_text}"
            )));
        }
        other => {
            return Err(ConnectorError::InvalidServiceUrl(format!(
                "scheme {other} is not https"
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConnectorError::InvalidServiceUrl(
            "it carries credentials".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConnectorError::InvalidServiceUrl(
            "it has a query or fragment".to_owned(),
        ));
    }
    if !host_allowed(allowed, &host_text) {
        return Err(ConnectorError::HostNotAllowed(host_text));
    }
    Ok(url)
}

#[derive(Clone)]
struct CachedToken {
    value: Arc<str>,
    /// `Bearer <value>`, marked sensitive; built once per token.
    header: HeaderValue,
    refresh_at: Instant,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("refresh_at", &self.refresh_at)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct SlotState {
    /// The last refresh's error and the `completed` count it was stored at.
    last_error: Option<(u64, TokenError)>,
}

/// The token of the configured scope, refreshed by one caller at a time.
#[derive(Default)]
struct TokenSlot {
    /// Refreshes finished (success or failure), read before waiting for `state`.
    completed: AtomicU64,
    /// The current token, readable without waiting; written only under the `state` lock.
    current: Mutex<Option<CachedToken>>,
    /// Held while a refresh runs (and to invalidate), so refreshes happen one at a time.
    state: tokio::sync::Mutex<SlotState>,
}

impl TokenSlot {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<CachedToken>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current token if it does not need a refresh yet.
    fn fresh(&self) -> Option<CachedToken> {
        self.current()
            .as_ref()
            .filter(|token| Instant::now() < token.refresh_at)
            .cloned()
    }
}

/// Resolved `serviceUrl`s remembered by [`ConnectorClient`]; more are checked again.
const CHECKED_URLS: usize = 32;

#[derive(Deserialize)]
struct TeamsErrorBody {
    error: TeamsError,
}

#[derive(Deserialize)]
struct TeamsError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Sends activities to Teams.
pub struct ConnectorClient {
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    app_id: String,
    app_password: Option<SecretString>,
    token_url: String,
    scope: String,
    allowed_hosts: Vec<String>,
    token: TokenSlot,
    /// `serviceUrl`s that passed [`checked_service_url`], with the result (the allow-list does
    /// not change, so neither does the answer).
    checked_urls: Mutex<Vec<(String, Arc<Url>)>>,
}

impl ConnectorClient {
    /// Creates the client. Without `bot.app_password` (insecure-local mode only) no token is
    /// fetched and requests carry no `Authorization` header.
    pub fn new(settings: &Settings, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        let app_password = settings
            .bot
            .app_password
            .clone()
            .filter(|p| !p.expose_secret().is_empty());
        Self {
            http,
            metrics,
            app_id: settings.bot.app_id.clone(),
            app_password,
            token_url: settings.outbound_token_url(),
            scope: settings.bot.outbound_scope.clone(),
            allowed_hosts: settings.bot.allowed_service_url_hosts.clone(),
            token: TokenSlot::default(),
            checked_urls: Mutex::new(Vec::new()),
        }
    }

    /// `POST /v3/conversations/{conversation}/activities/{activity}`: a reply to `activity_id`.
    /// Teams keeps it in the thread only when `conversation_id` names the thread
    /// (`<channel>;messageid=<root>`, as inbound channel activities do); a proactive reply in a
    /// channel thread is a [`Self::send`] to that thread id. The activity (here and in [`Self::send`] and [`Self::update`]) is anything
    /// serialisable: a `serde_json::Value`, or a [`CardMessage`](super::CardMessage) borrowing
    /// from the inbound activity.
    pub async fn reply(
        &self,
        service_url: &str,
        conversation_id: &str,
        activity_id: &str,
        activity: &(impl Serialize + ?Sized),
    ) -> Result<ResourceResponse, ConnectorError> {
        let path = activities_path(conversation_id, Some(activity_id))?;
        self.resource(Method::POST, service_url, &path, json_body(activity)?)
            .await
    }

    /// `POST /v3/conversations/{conversation}/activities`: a new message (in a channel, a new
    /// thread unless the id carries `;messageid=`).
    pub async fn send(
        &self,
        service_url: &str,
        conversation_id: &str,
        activity: &(impl Serialize + ?Sized),
    ) -> Result<ResourceResponse, ConnectorError> {
        let path = activities_path(conversation_id, None)?;
        self.resource(Method::POST, service_url, &path, json_body(activity)?)
            .await
    }

    /// `PUT /v3/conversations/{conversation}/activities/{activity}`: replaces a message (e.g.
    /// a card updated in place).
    pub async fn update(
        &self,
        service_url: &str,
        conversation_id: &str,
        activity_id: &str,
        activity: &(impl Serialize + ?Sized),
    ) -> Result<ResourceResponse, ConnectorError> {
        let path = activities_path(conversation_id, Some(activity_id))?;
        self.resource(Method::PUT, service_url, &path, json_body(activity)?)
            .await
    }

    /// `DELETE /v3/conversations/{conversation}/activities/{activity}`.
    pub async fn delete(
        &self,
        service_url: &str,
        conversation_id: &str,
        activity_id: &str,
    ) -> Result<(), ConnectorError> {
        let path = activities_path(conversation_id, Some(activity_id))?;
        self.call(Method::DELETE, service_url, &path, None)
            .await
            .map(drop)
    }

    /// `POST /v3/conversations`: starts a conversation (proactive 1:1 chat or channel thread)
    /// from `ConversationParameters` (any serialisable value, e.g. a `serde_json::Value`).
    pub async fn create_conversation<P: Serialize + ?Sized>(
        &self,
        service_url: &str,
        parameters: &P,
    ) -> Result<ConversationResourceResponse, ConnectorError> {
        let body = serde_json::to_vec(parameters)
            .map_err(|e| ConnectorError::InvalidRequest(format!("conversation parameters: {e}")))?;
        let bytes = self
            .call(Method::POST, service_url, "v3/conversations", Some(body))
            .await?;
        let answer: ConversationResourceResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ConnectorError::Decode(decode_problem(&e, &bytes)))?;
        if answer.id.is_empty() {
            return Err(ConnectorError::Decode(
                "the new conversation has no id".to_owned(),
            ));
        }
        Ok(answer)
    }

    /// `GET /v3/conversations/{conversation}/members/{member}`: one member with e-mail and UPN.
    pub async fn get_member(
        &self,
        service_url: &str,
        conversation_id: &str,
        member_id: &str,
    ) -> Result<TeamsMember, ConnectorError> {
        let path = format!(
            "v3/conversations/{}/members/{}",
            id_segment(conversation_id, "conversation")?,
            id_segment(member_id, "member")?
        );
        let bytes = self.call(Method::GET, service_url, &path, None).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ConnectorError::Decode(decode_problem(&e, &bytes)))
    }

    async fn resource(
        &self,
        method: Method,
        service_url: &str,
        path: &str,
        activity: Vec<u8>,
    ) -> Result<ResourceResponse, ConnectorError> {
        let bytes = self.call(method, service_url, path, Some(activity)).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(ResourceResponse::default());
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ConnectorError::Decode(decode_problem(&e, &bytes)))
    }

    /// One connector call with a JSON `body`: host check, token, request, one retry after a
    /// 401.
    async fn call(
        &self,
        method: Method,
        service_url: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ConnectorError> {
        let base = self.checked_base(service_url)?;
        let url = base
            .join(path)
            .map_err(|e| ConnectorError::InvalidServiceUrl(format!("cannot join the path: {e}")))?;
        let host = base.host_str().unwrap_or_default();
        let mut retried = false;
        loop {
            let token = self.bearer().await?;
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            if let Some(token) = &token {
                request = request.header(AUTHORIZATION, token.header.clone());
            }
            let result = self
                .exchange(request, host, token.as_ref().map(|t| &*t.value))
                .await;
            match result {
                Ok(bytes) => {
                    self.metrics.record_upstream("connector", "ok");
                    return Ok(bytes);
                }
                Err(err) => {
                    self.metrics.record_upstream("connector", err.outcome());
                    if err.status() == Some(401)
                        && !retried
                        && let Some(token) = token
                    {
                        tracing::info!(host, "connector answered 401; refreshing the token once");
                        self.invalidate(&token.value).await;
                        retried = true;
                        continue;
                    }
                    tracing::debug!(host, method = %method, error = %err, "connector call failed");
                    return Err(err);
                }
            }
        }
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        host: &str,
        token: Option<&str>,
    ) -> Result<Vec<u8>, ConnectorError> {
        let response = request
            .send()
            .await
            .map_err(|e| ConnectorError::Network(network_problem(&e, host)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = read_limited(response).await.map_err(|e| match e {
            ReadProblem::Network(e) => ConnectorError::Network(network_problem(&e, host)),
            ReadProblem::TooLarge => ConnectorError::Decode(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            )),
        })?;
        if status.is_success() {
            return Ok(bytes);
        }
        let (code, message) = match serde_json::from_slice::<TeamsErrorBody>(&bytes) {
            Ok(body) => (
                body.error
                    .code
                    .filter(|c| !c.is_empty())
                    .map(|c| excerpt(&c, 100, token)),
                excerpt(
                    body.error.message.as_deref().unwrap_or_default(),
                    EXCERPT_CHARS,
                    token,
                ),
            ),
            Err(_) => (
                None,
                excerpt(&String::from_utf8_lossy(&bytes), EXCERPT_CHARS, token),
            ),
        };
        Err(ConnectorError::Status {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }

    /// `service_url` checked against the allow-list ([`checked_service_url`]), remembered.
    fn checked_base(&self, service_url: &str) -> Result<Arc<Url>, ConnectorError> {
        let lock = || {
            self.checked_urls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some((_, url)) = lock().iter().find(|(text, _)| text == service_url) {
            return Ok(url.clone());
        }
        let url = Arc::new(checked_service_url(&self.allowed_hosts, service_url)?);
        let mut checked = lock();
        if checked.len() >= CHECKED_URLS {
            checked.remove(0);
        }
        checked.push((service_url.to_owned(), url.clone()));
        Ok(url)
    }

    /// The bearer token for the configured scope, or `None` without a client secret.
    async fn bearer(&self) -> Result<Option<CachedToken>, ConnectorError> {
        let Some(password) = &self.app_password else {
            return Ok(None);
        };
        let slot = &self.token;
        let seen = slot.completed.load(Ordering::Acquire);
        if let Some(token) = slot.fresh() {
            return Ok(Some(token));
        }
        let mut state = slot.state.lock().await;
        if let Some(token) = slot.fresh() {
            return Ok(Some(token));
        }
        // A refresh that finished while this caller waited failed: share its error.
        if let Some((at, err)) = &state.last_error
            && *at > seen
        {
            return Err(err.clone().into());
        }
        let result = self.fetch_token(password, &self.scope).await;
        let completed = slot.completed.fetch_add(1, Ordering::AcqRel) + 1;
        match result {
            Ok(token) => {
                *slot.current() = Some(token.clone());
                state.last_error = None;
                Ok(Some(token))
            }
            Err(err) => {
                *slot.current() = None;
                state.last_error = Some((completed, err.clone()));
                Err(err.into())
            }
        }
    }

    /// Drops the cached token if it is still `used` (another caller may have refreshed it).
    async fn invalidate(&self, used: &str) {
        let slot = &self.token;
        let _refreshing = slot.state.lock().await;
        let mut current = slot.current();
        if current.as_ref().is_some_and(|t| &*t.value == used) {
            *current = None;
        }
    }

    async fn fetch_token(
        &self,
        password: &SecretString,
        scope: &str,
    ) -> Result<CachedToken, TokenError> {
        let result = self.request_token(password, scope).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => match err.retry_kind() {
                RetryKind::Network => "network",
                RetryKind::Transient { .. } => "transient",
                RetryKind::Permanent => "permanent",
            },
        };
        if !matches!(result, Err(TokenError::InvalidUrl(_))) {
            self.metrics.record_upstream("entra", outcome);
        }
        if let Err(err) = &result {
            tracing::warn!(error = %err, "bot token request failed");
        }
        result
    }

    async fn request_token(
        &self,
        password: &SecretString,
        scope: &str,
    ) -> Result<CachedToken, TokenError> {
        let url = Url::parse(&self.token_url).map_err(|e| TokenError::InvalidUrl(e.to_string()))?;
        let loopback = match url.host() {
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if !(url.scheme() == "https" || url.scheme() == "http" && loopback) {
            return Err(TokenError::InvalidUrl(
                "it must be https (plain http only on loopback)".to_owned(),
            ));
        }
        let secret = password.expose_secret();
        let client: TokenEndpointClient<EntraErrorResponse> =
            token_client(&self.app_id, password, url);
        let started = Instant::now();
        let http = TokenHttp::new(&self.http);
        let result = client
            .exchange_client_credentials()
            .add_scope(Scope::new(scope.to_owned()))
            .request_async(&http)
            .await;
        let answer = http.finish(result).map_err(|failure| match failure {
            TokenFailure::Network(err) => TokenError::Network(excerpt(&err.0, EXCERPT_CHARS, None)),
            TokenFailure::Refused { error, answer } => TokenError::Rejected {
                status: answer.status,
                error: excerpt(&error.error, 60, Some(secret)),
                error_codes: error
                    .error_codes
                    .iter()
                    .take(5)
                    .map(|&code| i64::from(code))
                    .collect(),
                description: excerpt(error.first_line(), EXCERPT_CHARS, Some(secret)),
                retry_after: retry_after(&answer.headers),
            },
            TokenFailure::Unreadable { answer, .. } if !answer.is_success() => {
                TokenError::Rejected {
                    status: answer.status,
                    error: String::new(),
                    error_codes: Vec::new(),
                    description: excerpt(
                        &String::from_utf8_lossy(&answer.body),
                        EXCERPT_CHARS,
                        Some(secret),
                    ),
                    retry_after: retry_after(&answer.headers),
                }
            }
            TokenFailure::Unreadable { answer, detail } => {
                let problem = unreadable_token(&answer, detail).to_string();
                TokenError::Decode(excerpt(&problem, EXCERPT_CHARS, Some(secret)))
            }
            TokenFailure::Invalid(detail) => TokenError::InvalidUrl(detail),
        })?;
        let access_token = answer.access_token().secret();
        if access_token.is_empty() {
            return Err(TokenError::Decode("no access_token".to_owned()));
        }
        let lifetime = answer
            .expires_in()
            .map_or(DEFAULT_EXPIRES_IN, |lifetime| lifetime.min(MAX_EXPIRES_IN));
        let refresh_at = (started + lifetime)
            .checked_sub(REFRESH_MARGIN)
            .unwrap_or(started);
        let mut header = HeaderValue::try_from(format!("Bearer {access_token}")).map_err(|_| {
            TokenError::Decode("the access_token cannot be sent in a header".to_owned())
        })?;
        header.set_sensitive(true);
        Ok(CachedToken {
            value: access_token.as_str().into(),
            header,
            refresh_at,
        })
    }
}

/// The JSON text of an outgoing activity.
fn json_body(activity: &(impl Serialize + ?Sized)) -> Result<Vec<u8>, ConnectorError> {
    serde_json::to_vec(activity).map_err(|e| {
        ConnectorError::InvalidRequest(format!("the activity does not serialise: {e}"))
    })
}

fn activities_path(
    conversation_id: &str,
    activity_id: Option<&str>,
) -> Result<String, ConnectorError> {
    let mut path = format!(
        "v3/conversations/{}/activities",
        id_segment(conversation_id, "conversation")?
    );
    if let Some(activity_id) = activity_id {
        path.push('/');
        path.push_str(&id_segment(activity_id, "activity")?);
    }
    Ok(path)
}

enum ReadProblem {
    Network(reqwest::Error),
    TooLarge,
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, ReadProblem> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadProblem::Network)? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ReadProblem::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A reqwest error with its causes, without the URL (it may carry ids).
fn network_problem(err: &reqwest::Error, host: &str) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = format!("{host}: {kind}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    excerpt(&text, EXCERPT_CHARS, None)
}

fn decode_problem(err: &serde_json::Error, bytes: &[u8]) -> String {
    format!(
        "{err} (body starts: {})",
        excerpt(&String::from_utf8_lossy(bytes), 80, None)
    )
}

/// At most `max` characters of `text`, control characters flattened, `secret` redacted.
fn excerpt(text: &str, max: usize, secret: Option<&str>) -> String {
    let mut text = text.to_owned();
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let allowed = hosts(&["*.botframework.com", "smba.trafficmanager.net"]);
        assert!(host_allowed(&allowed, "smba.botframework.com"));
        assert!(host_allowed(&allowed, "a.b.BotFramework.com"));
        assert!(host_allowed(&allowed, "SMBA.trafficmanager.net."));
        assert!(!host_allowed(&allowed, "botframework.com"));
        assert!(!host_allowed(&allowed, "evilbotframework.com"));
        assert!(!host_allowed(&allowed, "botframework.com.evil.net"));
        assert!(!host_allowed(&allowed, "x.smba.trafficmanager.net"));
        assert!(!host_allowed(&allowed, ""));
        assert!(!host_allowed(&hosts(&["*."]), "a.b"));
    }

    #[test]
    fn service_url_rules() {
        let allowed = hosts(&["smba.trafficmanager.net", "127.0.0.1", "::1"]);
        let url = checked_service_url(&allowed, "https://smba.trafficmanager.net/amer/t")
            .expect("allowed");
        assert_eq!(url.as_str(), "https://smba.trafficmanager.net/amer/t/");
        assert!(checked_service_url(&allowed, "http://127.0.0.1:9/").is_ok());
        assert!(checked_service_url(&allowed, "http://[::1]:9/").is_ok());
        assert!(matches!(
            checked_service_url(&allowed, "http://smba.trafficmanager.net/"),
            Err(ConnectorError::InvalidServiceUrl(_))
        ));
        assert!(matches!(
            checked_service_url(&allowed, "http://localhost:9/"),
            Err(ConnectorError::HostNotAllowed(_))
        ));
        assert!(matches!(
            checked_service_url(&allowed, "https://evil.example/"),
            Err(ConnectorError::HostNotAllowed(h)) if h == "evil.example"
        ));
        for bad in [
            "not a url",
            "ftp://smba.trafficmanager.net/",
            "https://u:p@smba.trafficmanager.net/",
            "https://smba.trafficmanager.net/?x=1",
        ] {
            assert!(
                matches!(
                    checked_service_url(&allowed, bad),
                    Err(ConnectorError::InvalidServiceUrl(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_encoded_as_one_segment() {
        assert_eq!(
            encode_segment("19:abc@thread.tacv2;messageid=123"),
            "19%3Aabc%40thread.tacv2%3Bmessageid%3D123"
        );
        assert_eq!(encode_segment("a/b?c#d e%"), "a%2Fb%3Fc%23d%20e%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert!(matches!(
            activities_path("..", None),
            Err(ConnectorError::InvalidRequest(m)) if m.contains("conversation")
        ));
        assert!(matches!(
            activities_path("a:1", Some("")),
            Err(ConnectorError::InvalidRequest(m)) if m.contains("activity")
        ));
    }

    #[test]
    fn excerpt_is_short_and_redacted() {
        let long = "x".repeat(1000);
        assert!(excerpt(&long, 10, None).chars().count() <= 11);
        assert_eq!(excerpt("a tok3n b", 50, Some("tok3n")), "a [redacted] b");
        assert_eq!(excerpt("a\r\nb", 50, None), "a  b");
    }

    #[test]
    fn classification() {
        let status = |status, code: Option<&str>, retry_after| ConnectorError::Status {
            status,
            code: code.map(str::to_owned),
            message: String::new(),
            retry_after,
        };
        assert_eq!(
            status(429, None, Some(Duration::from_secs(2))).retry_kind(),
            RetryKind::Transient {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(status(412, None, None).retry_kind().is_retryable());
        assert!(status(500, None, None).retry_kind().is_retryable());
        assert_eq!(
            status(413, Some("MessageSizeTooBig"), None).retry_kind(),
            RetryKind::Permanent
        );
        assert!(status(403, Some("BotNotInConversationRoster"), None).is_bot_removed());
        assert!(status(403, Some("ForbiddenOperationException"), None).is_bot_removed());
        assert!(status(404, Some("ConversationNotFound"), None).is_bot_removed());
        assert!(!status(403, Some("ConversationBlockedByUser"), None).is_bot_removed());
        assert!(!status(404, Some("ActivityNotFoundInConversation"), None).is_bot_removed());
        assert_eq!(
            ConnectorError::Network("x".to_owned()).retry_kind(),
            RetryKind::Network
        );
    }
}
