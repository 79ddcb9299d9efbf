//! Microsoft Graph client: app registrations (create, find, add secrets, service principals,
//! token version), organization and domains, and service health issues. Enums are compared
//! case-insensitively (docs use camelCase, payloads PascalCase).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use super::entra::{EntraClient, EntraError};
use super::{
    DecodeError, NetworkError, RawResponse, Recorder, check_base, decode_raw, decode_retry,
    join_segments, same_origin,
};
use crate::error::RetryKind;
use crate::metrics::Metrics;

/// The public Graph v1.0 base.
pub const DEFAULT_BASE: &str = "https://graph.microsoft.com/v1.0/";
/// The client-credentials scope for Graph.
pub const GRAPH_DEFAULT_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Pages followed at most by one list call.
pub const MAX_PAGES: usize = 1_000;

/// Permission hint for application calls.
pub const PERMISSION_APPLICATIONS: &str =
    "Application.ReadWrite.OwnedBy (or Application.ReadWrite.All)";
/// Permission hint for organization reads.
pub const PERMISSION_ORGANIZATION: &str = "Organization.Read.All";
/// Permission hint for domain reads.
pub const PERMISSION_DOMAINS: &str = "Domain.Read.All";
/// Permission hint for service health reads.
pub const PERMISSION_SERVICE_HEALTH: &str = "ServiceHealth.Read.All";
/// Permission hint for directory role assignment reads.
pub const PERMISSION_ROLE_ASSIGNMENTS: &str = "RoleManagement.Read.Directory";

/// Where Graph bearer tokens come from.
pub trait TokenSource: Send + Sync {
    /// A valid bearer token.
    fn token(&self) -> BoxFuture<'_, Result<SecretString, EntraError>>;
    /// Forgets a cached token (Graph answered 401); the next call fetches a new one.
    fn invalidate(&self) {}
}

/// A fixed token (tests, or a token obtained elsewhere).
pub struct StaticToken(pub SecretString);

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, EntraError>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// App-only tokens from Entra client credentials (v2), cached until one minute before
/// expiry; one refresh at a time.
pub struct ClientCredentials {
    entra: EntraClient,
    tenant: String,
    client_id: String,
    secret: SecretString,
    scope: String,
    cache: tokio::sync::Mutex<Option<(SecretString, Instant)>>,
}

impl ClientCredentials {
    /// Tokens for Graph ([`GRAPH_DEFAULT_SCOPE`]) as `client_id` in `tenant`.
    pub fn new(entra: EntraClient, tenant: &str, client_id: &str, secret: SecretString) -> Self {
        Self {
            entra,
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            secret,
            scope: GRAPH_DEFAULT_SCOPE.to_owned(),
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Another scope (e.g. for a Graph fake on another host).
    pub fn with_scope(mut self, scope: &str) -> Self {
        self.scope = scope.to_owned();
        self
    }
}

impl TokenSource for ClientCredentials {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, EntraError>> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if let Some((token, renew_at)) = cache.as_ref()
                && *renew_at > Instant::now()
            {
                return Ok(token.clone());
            }
            let fresh = self
                .entra
                .client_credentials_v2(&self.tenant, &self.client_id, &self.secret, &self.scope)
                .await?;
            let margin = Duration::from_secs(60);
            let usable = if fresh.expires_in > margin * 2 {
                fresh.expires_in - margin
            } else {
                fresh.expires_in / 2
            };
            *cache = Some((fresh.access_token.clone(), Instant::now() + usable));
            Ok(fresh.access_token)
        })
    }

    fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.try_lock() {
            *cache = None;
        }
    }
}

/// A failed Graph call, classified once.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// No complete answer (refused, timed out, cut).
    #[error("Microsoft Graph is unreachable: {0}")]
    Network(NetworkError),
    /// No token could be obtained.
    #[error("no Microsoft Graph token: {0}")]
    Token(EntraError),
    /// An error answer with Graph's envelope.
    #[error("Microsoft Graph answered {status} {code}: {message}{}", hint.as_ref().map(|h| format!(". {h}")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// `error.code` (`Authorization_RequestDenied`, `TooManyRequests`, …).
        code: String,
        /// `error.message`.
        message: String,
        /// What to do, when known.
        hint: Option<String>,
        /// `innerError.request-id`, for a support request.
        request_id: Option<String>,
        /// Retry classification (429 / 503 with `Retry-After`).
        retry: RetryKind,
    },
    /// An error status without the envelope.
    #[error("Microsoft Graph answered {status}: {summary}")]
    Http {
        /// HTTP status.
        status: u16,
        /// A short description of the body.
        summary: String,
        /// Retry classification.
        retry: RetryKind,
    },
    /// A success status with a body that is not the expected JSON.
    #[error("Microsoft Graph answered {status} with a body the bot cannot read: {cause}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// What was wrong with the body.
        cause: DecodeError,
        /// Retry classification.
        retry: RetryKind,
    },
    /// A `@odata.nextLink` the bot will not follow.
    #[error("Microsoft Graph pagination failed: {0}")]
    Pagination(String),
    /// A caller passed invalid input.
    #[error("invalid Microsoft Graph request: {0}")]
    InvalidInput(String),
}

impl From<NetworkError> for GraphError {
    fn from(err: NetworkError) -> Self {
        Self::Network(err)
    }
}

impl From<EntraError> for GraphError {
    fn from(err: EntraError) -> Self {
        Self::Token(err)
    }
}

impl GraphError {
    /// How a retrier should treat this failure.
    pub fn retry_kind(&self) -> RetryKind {
        match self {
            Self::Network(_) => RetryKind::Network,
            Self::Token(err) => err.retry_kind(),
            Self::Api { retry, .. } | Self::Http { retry, .. } | Self::Decode { retry, .. } => {
                *retry
            }
            Self::Pagination(_) | Self::InvalidInput(_) => RetryKind::Permanent,
        }
    }

    /// The HTTP status, when Graph answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Http { status, .. } | Self::Decode { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// True for 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "innerError")]
    inner_error: Option<Value>,
}

/// Maps a Graph error answer to a typed error; `permission` names the Graph permission the
/// call needs (for the 403 hint).
pub fn parse_error(raw: &RawResponse, permission: &str) -> GraphError {
    let retry = raw.retry();
    let envelope = if raw.truncated {
        None
    } else {
        serde_json::from_slice::<ErrorEnvelope>(&raw.body).ok()
    };
    let Some(ErrorEnvelope { error }) = envelope else {
        return GraphError::Http {
            status: raw.status,
            summary: raw.summary(),
            retry,
        };
    };
    let request_id = error
        .inner_error
        .as_ref()
        .and_then(|inner| inner.get("request-id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let hint = match raw.status {
        403 => Some(format!(
            "The bot's Microsoft Graph identity lacks the permission {permission}: add it as an application permission under API permissions > Microsoft Graph and grant admin consent"
        )),
        401 => Some(
            "Microsoft Graph refused the token: check that the token is for https://graph.microsoft.com in the right tenant and has not expired".to_owned(),
        ),
        429 => Some(
            "Microsoft Graph is throttling the bot; wait for the time it asked for".to_owned(),
        ),
        404 => Some(
            "Not found; a just-created object can take a few seconds to appear everywhere".to_owned(),
        ),
        _ => None,
    };
    GraphError::Api {
        status: raw.status,
        code: error.code,
        message: error.message.unwrap_or_default(),
        hint,
        request_id,
        retry,
    }
}

/// Decodes a Graph answer: `T` on success, the typed error otherwise.
pub fn parse_response<T: DeserializeOwned>(
    raw: &RawResponse,
    permission: &str,
) -> Result<T, GraphError> {
    if !raw.is_success() {
        return Err(parse_error(raw, permission));
    }
    decode_raw::<T>(raw, true).map_err(|cause| GraphError::Decode {
        status: raw.status,
        retry: decode_retry(raw.status, &raw.headers, &cause),
        cause,
    })
}

/// One page of a Graph collection.
#[derive(Debug, Clone, Deserialize)]
pub struct Collection<T> {
    /// The items.
    pub value: Vec<T>,
    /// `@odata.nextLink`: the next page, absolute.
    #[serde(default, rename = "@odata.nextLink")]
    pub next_link: Option<String>,
}

macro_rules! ci_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this version does not know, verbatim.
            Other(String),
        }

        impl $name {
            /// Parses a value, ignoring case.
            pub fn parse(text: &str) -> Self {
                $(if text.eq_ignore_ascii_case($text) {
                    return Self::$variant;
                })+
                Self::Other(text.to_owned())
            }

            /// The documented spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(text) => text,
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(|text| Self::parse(&text))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

ci_enum! {
    /// Who may sign in to an application.
    SignInAudience {
        /// Single tenant (what the integration uses).
        AzureAdMyOrg => "AzureADMyOrg",
        /// Any work or school tenant.
        AzureAdMultipleOrgs => "AzureADMultipleOrgs",
        /// Work/school and personal accounts.
        AzureAdAndPersonalMicrosoftAccount => "AzureADandPersonalMicrosoftAccount",
        /// Personal accounts only.
        PersonalMicrosoftAccount => "PersonalMicrosoftAccount",
    }
}

ci_enum! {
    /// `serviceHealthIssue.status` / `serviceHealth.status`.
    ServiceHealthStatus {
        /// serviceOperational
        ServiceOperational => "serviceOperational",
        /// investigating
        Investigating => "investigating",
        /// restoringService
        RestoringService => "restoringService",
        /// verifyingService
        VerifyingService => "verifyingService",
        /// serviceRestored
        ServiceRestored => "serviceRestored",
        /// postIncidentReviewPublished
        PostIncidentReviewPublished => "postIncidentReviewPublished",
        /// serviceDegradation
        ServiceDegradation => "serviceDegradation",
        /// serviceInterruption
        ServiceInterruption => "serviceInterruption",
        /// extendedRecovery
        ExtendedRecovery => "extendedRecovery",
        /// falsePositive
        FalsePositive => "falsePositive",
        /// investigationSuspended
        InvestigationSuspended => "investigationSuspended",
        /// resolved
        Resolved => "resolved",
        /// mitigatedExternal
        MitigatedExternal => "mitigatedExternal",
        /// mitigated
        Mitigated => "mitigated",
        /// resolvedExternal
        ResolvedExternal => "resolvedExternal",
        /// confirmed
        Confirmed => "confirmed",
        /// reported
        Reported => "reported",
    }
}

ci_enum! {
    /// `serviceHealthIssue.classification`.
    IssueClassification {
        /// advisory
        Advisory => "advisory",
        /// incident
        Incident => "incident",
    }
}

ci_enum! {
    /// `serviceHealthIssue.origin`.
    IssueOrigin {
        /// microsoft
        Microsoft => "microsoft",
        /// thirdParty
        ThirdParty => "thirdParty",
        /// customer
        Customer => "customer",
    }
}

/// `application.web`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebApplication {
    /// Web redirect URIs.
    #[serde(default, deserialize_with = "super::null_default")]
    pub redirect_uris: Vec<String>,
}

/// `application.api`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiApplication {
    /// Access token version the app (as a resource) receives: `None`/1 = v1, 2 = v2.
    #[serde(default)]
    pub requested_access_token_version: Option<i32>,
}

/// A secret's metadata on an application (the value is never returned).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasswordCredentialInfo {
    /// The secret's id.
    pub key_id: String,
    /// Its display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// When it expires.
    #[serde(default)]
    pub end_date_time: Option<DateTime<Utc>>,
    /// First characters of the secret.
    #[serde(default)]
    pub hint: Option<String>,
}

impl PasswordCredentialInfo {
    /// True when it has an end date in the past.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.end_date_time.is_some_and(|end| end <= now)
    }
}

/// An application registration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    /// Object id (for `/applications/{id}`).
    pub id: String,
    /// Client id.
    pub app_id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Who may sign in.
    #[serde(default)]
    pub sign_in_audience: Option<SignInAudience>,
    /// Web platform settings.
    #[serde(default, deserialize_with = "super::null_default")]
    pub web: WebApplication,
    /// API (resource) settings.
    #[serde(default, deserialize_with = "super::null_default")]
    pub api: ApiApplication,
    /// Secrets' metadata.
    #[serde(default, deserialize_with = "super::null_default")]
    pub password_credentials: Vec<PasswordCredentialInfo>,
    /// The verified publisher domain.
    #[serde(default)]
    pub publisher_domain: Option<String>,
}

impl Application {
    /// True when access tokens for this app are v1 (`requestedAccessTokenVersion` null or 1).
    pub fn issues_v1_tokens(&self) -> bool {
        matches!(self.api.requested_access_token_version, None | Some(1))
    }

    /// True for single-tenant apps.
    pub fn is_single_tenant(&self) -> bool {
        self.sign_in_audience == Some(SignInAudience::AzureAdMyOrg)
    }
}

/// A new secret: the value is shown only once.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasswordCredential {
    /// The secret value.
    pub secret_text: SecretString,
    /// The secret's id.
    pub key_id: String,
    /// Its display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// First characters of the secret.
    #[serde(default)]
    pub hint: Option<String>,
    /// Start.
    #[serde(default)]
    pub start_date_time: Option<DateTime<Utc>>,
    /// Expiry.
    #[serde(default)]
    pub end_date_time: Option<DateTime<Utc>>,
}

/// A service principal (enterprise application).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipal {
    /// Object id.
    pub id: String,
    /// The application's client id.
    pub app_id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The tenant owning the application.
    #[serde(default)]
    pub app_owner_organization_id: Option<String>,
    /// Whether sign-ins are enabled.
    #[serde(default)]
    pub account_enabled: Option<bool>,
    /// Identifier URIs and the client id.
    #[serde(default, deserialize_with = "super::null_default")]
    pub service_principal_names: Vec<String>,
}

/// A directory role assignment (`unifiedRoleAssignment`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnifiedRoleAssignment {
    /// Assignment id.
    pub id: String,
    /// Object id of the user, group or service principal.
    pub principal_id: String,
    /// The role definition; for built-in roles its template id.
    pub role_definition_id: String,
    /// Scope of the assignment (`/` = the whole tenant).
    #[serde(default)]
    pub directory_scope_id: Option<String>,
}

/// A verified domain of the organization.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedDomain {
    /// Domain name.
    pub name: String,
    /// Default domain.
    #[serde(default)]
    pub is_default: bool,
    /// The initial `*.onmicrosoft.com` domain.
    #[serde(default)]
    pub is_initial: bool,
    /// `Managed` / `Federated`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Comma-separated capabilities.
    #[serde(default)]
    pub capabilities: Option<String>,
}

/// The tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Organization {
    /// Tenant id.
    pub id: String,
    /// Organization name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Verified domains.
    #[serde(default, deserialize_with = "super::null_default")]
    pub verified_domains: Vec<VerifiedDomain>,
}

impl Organization {
    /// The initial `*.onmicrosoft.com` domain, if listed.
    pub fn initial_domain(&self) -> Option<&str> {
        self.verified_domains
            .iter()
            .find(|domain| domain.is_initial)
            .map(|domain| domain.name.as_str())
    }

    /// True when `domain` is one of the verified domains (case-insensitive).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.verified_domains
            .iter()
            .any(|known| known.name.eq_ignore_ascii_case(domain))
    }
}

/// `/organization` answers a collection; tolerate a single entity as well.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Collection<T>),
    One(T),
}

/// A domain of the tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    /// The domain name.
    pub id: String,
    /// Default domain.
    #[serde(default)]
    pub is_default: bool,
    /// Initial domain.
    #[serde(default)]
    pub is_initial: bool,
    /// Root domain.
    #[serde(default)]
    pub is_root: bool,
    /// Verified.
    #[serde(default)]
    pub is_verified: bool,
    /// `Managed` / `Federated`.
    #[serde(default)]
    pub authentication_type: Option<String>,
    /// Services on the domain.
    #[serde(default, deserialize_with = "super::null_default")]
    pub supported_services: Vec<String>,
}

/// `itemBody`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    /// `html` or `text`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The content.
    #[serde(default)]
    pub content: String,
}

/// One update of a service health issue.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealthIssuePost {
    /// When posted.
    pub created_date_time: DateTime<Utc>,
    /// `regular`, `quick`, `strategic`.
    #[serde(default)]
    pub post_type: Option<String>,
    /// The text.
    #[serde(default, deserialize_with = "super::null_default")]
    pub description: ItemBody,
}

/// A name/value detail.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyValuePair {
    /// Name.
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: Option<String>,
}

/// A Microsoft 365 service health issue.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealthIssue {
    /// Id such as `EX226792`.
    pub id: String,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Service name.
    #[serde(default)]
    pub service: String,
    /// Feature.
    #[serde(default)]
    pub feature: Option<String>,
    /// Feature group.
    #[serde(default)]
    pub feature_group: Option<String>,
    /// Advisory or incident.
    #[serde(default)]
    pub classification: Option<IssueClassification>,
    /// Who caused it.
    #[serde(default)]
    pub origin: Option<IssueOrigin>,
    /// Status.
    #[serde(default)]
    pub status: Option<ServiceHealthStatus>,
    /// Start.
    #[serde(default)]
    pub start_date_time: Option<DateTime<Utc>>,
    /// End.
    #[serde(default)]
    pub end_date_time: Option<DateTime<Utc>>,
    /// Last change (the polling watermark).
    pub last_modified_date_time: DateTime<Utc>,
    /// Resolved.
    #[serde(default)]
    pub is_resolved: bool,
    /// Impact.
    #[serde(default)]
    pub impact_description: Option<String>,
    /// Extra details.
    #[serde(default, deserialize_with = "super::null_default")]
    pub details: Vec<KeyValuePair>,
    /// Updates, oldest first as Graph sends them.
    #[serde(default, deserialize_with = "super::null_default")]
    pub posts: Vec<ServiceHealthIssuePost>,
}

/// Health of one service.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealthOverview {
    /// Service id (`Exchange`).
    pub id: String,
    /// Service name.
    #[serde(default)]
    pub service: String,
    /// Status.
    #[serde(default)]
    pub status: Option<ServiceHealthStatus>,
}

/// Fields to change on an application (`PATCH /applications/{id}`); `None` leaves a field.
#[derive(Debug, Clone, Default)]
pub struct ApplicationUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New web redirect URIs (replaces the list).
    pub redirect_uris: Option<Vec<String>>,
    /// New `api.requestedAccessTokenVersion` (`Some(None)` sets null = v1).
    pub requested_access_token_version: Option<Option<i32>>,
}

/// Quotes a string literal for OData `$filter` (`'` doubled).
pub fn odata_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    tokens: Arc<dyn TokenSource>,
    recorder: Recorder,
}

/// The Microsoft Graph client; cheap to clone.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client for `base` ([`DEFAULT_BASE`] in production) using tokens from `tokens`.
    pub fn new(http: reqwest::Client, base: Url, tokens: Arc<dyn TokenSource>) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                base,
                tokens,
                recorder: Recorder::new("graph"),
            }),
        }
    }

    /// Records every call in `metrics` as `graph` / outcome.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                base: self.inner.base.clone(),
                tokens: self.inner.tokens.clone(),
                recorder: self.inner.recorder.clone().with(metrics),
            }),
        }
    }

    /// The base URL.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    fn observe<T>(&self, result: Result<T, GraphError>) -> Result<T, GraphError> {
        self.inner.recorder.observe(result, GraphError::retry_kind)
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, GraphError> {
        check_base(&self.inner.base).map_err(GraphError::InvalidInput)?;
        let mut url =
            join_segments(&self.inner.base, segments).map_err(GraphError::InvalidInput)?;
        if !query.is_empty() {
            // Spaces as %20, not '+': OData parsers differ on '+'.
            let text = query
                .iter()
                .map(|(key, value)| format!("{key}={}", percent_encode(value)))
                .collect::<Vec<_>>()
                .join("&");
            url.set_query(Some(&text));
        }
        Ok(url)
    }

    /// Sends one request with a bearer token, retried under [`super::retry::STANDARD`] when
    /// throttled; a 401 renews the token once.
    async fn execute(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<RawResponse, GraphError> {
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
    ) -> Result<RawResponse, GraphError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.inner.tokens.token().await?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/json")
                .bearer_auth(token.expose_secret());
            if let Some(body) = body {
                request = request.header(CONTENT_TYPE, "application/json").json(body);
            }
            let raw = super::send(request).await?;
            if raw.status == 401 && attempt == 1 {
                self.inner.tokens.invalidate();
                continue;
            }
            return Ok(raw);
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        permission: &str,
    ) -> Result<T, GraphError> {
        let raw = self.execute(method, url, body).await?;
        parse_response(&raw, permission)
    }

    async fn call_optional<T: DeserializeOwned>(
        &self,
        url: Url,
        permission: &str,
    ) -> Result<Option<T>, GraphError> {
        match self.call(Method::GET, url, None, permission).await {
            Ok(value) => Ok(Some(value)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn call_no_content(
        &self,
        method: Method,
        url: Url,
        body: &Value,
        permission: &str,
    ) -> Result<(), GraphError> {
        let raw = self.execute(method, url, Some(body)).await?;
        if raw.is_success() {
            Ok(())
        } else {
            Err(parse_error(&raw, permission))
        }
    }

    /// Follows `@odata.nextLink` (same origin as the base only: the token goes there).
    async fn list_all<T: DeserializeOwned>(
        &self,
        first: Url,
        permission: &str,
    ) -> Result<Vec<T>, GraphError> {
        let mut items = Vec::new();
        let mut url = first;
        let mut seen = HashSet::new();
        for _ in 0..MAX_PAGES {
            let page: Collection<T> = self
                .call(Method::GET, url.clone(), None, permission)
                .await?;
            items.extend(page.value);
            let Some(next) = page.next_link else {
                return Ok(items);
            };
            let next = url.join(&next).map_err(|err| {
                GraphError::Pagination(format!("the next link is not a URL ({err})"))
            })?;
            if !same_origin(&next, &self.inner.base) {
                return Err(GraphError::Pagination(format!(
                    "refusing to send the token to {} (next link on another host)",
                    next.host_str().unwrap_or("?")
                )));
            }
            if !seen.insert(next.to_string()) {
                return Err(GraphError::Pagination(
                    "Graph sent the same next link twice".to_owned(),
                ));
            }
            url = next;
        }
        Err(GraphError::Pagination(format!(
            "more than {MAX_PAGES} pages"
        )))
    }

    /// Registers an application (`POST /applications`) with web redirect URIs.
    pub async fn create_application(
        &self,
        display_name: &str,
        redirect_uris: &[String],
        sign_in_audience: SignInAudience,
    ) -> Result<Application, GraphError> {
        let result = async {
            let body = json!({
                "displayName": display_name,
                "signInAudience": sign_in_audience.as_str(),
                "web": {"redirectUris": redirect_uris},
            });
            let url = self.url(&["applications"], &[])?;
            self.call(Method::POST, url, Some(&body), PERMISSION_APPLICATIONS)
                .await
        }
        .await;
        self.observe(result)
    }

    /// Reads an application by object id; `None` when it does not exist.
    pub async fn get_application(
        &self,
        object_id: &str,
    ) -> Result<Option<Application>, GraphError> {
        let result = async {
            let url = self.url(&["applications", object_id], &[])?;
            self.call_optional(url, PERMISSION_APPLICATIONS).await
        }
        .await;
        self.observe(result)
    }

    /// Finds an application by client id (`$filter=appId eq '…'`).
    pub async fn find_application_by_app_id(
        &self,
        app_id: &str,
    ) -> Result<Option<Application>, GraphError> {
        let result = async {
            let filter = format!("appId eq {}", odata_quote(app_id));
            let url = self.url(&["applications"], &[("$filter", filter)])?;
            let apps: Vec<Application> = self.list_all(url, PERMISSION_APPLICATIONS).await?;
            Ok(apps.into_iter().next())
        }
        .await;
        self.observe(result)
    }

    /// Finds applications by exact display name.
    pub async fn find_applications_by_name(
        &self,
        display_name: &str,
    ) -> Result<Vec<Application>, GraphError> {
        let result = async {
            let filter = format!("displayName eq {}", odata_quote(display_name));
            let url = self.url(&["applications"], &[("$filter", filter)])?;
            self.list_all(url, PERMISSION_APPLICATIONS).await
        }
        .await;
        self.observe(result)
    }

    /// Adds a secret (default lifetime: two years). The value is returned only now.
    pub async fn add_password(
        &self,
        object_id: &str,
        display_name: &str,
    ) -> Result<PasswordCredential, GraphError> {
        self.add_password_until(object_id, display_name, None).await
    }

    /// Adds a secret that expires at `end`.
    pub async fn add_password_until(
        &self,
        object_id: &str,
        display_name: &str,
        end: Option<DateTime<Utc>>,
    ) -> Result<PasswordCredential, GraphError> {
        let result = async {
            let mut credential = json!({"displayName": display_name});
            if let Some(end) = end {
                credential["endDateTime"] =
                    Value::String(end.to_rfc3339_opts(SecondsFormat::Secs, true));
            }
            let body = json!({"passwordCredential": credential});
            let url = self.url(&["applications", object_id, "addPassword"], &[])?;
            self.call(Method::POST, url, Some(&body), PERMISSION_APPLICATIONS)
                .await
        }
        .await;
        self.observe(result)
    }

    /// Removes a secret by its key id.
    pub async fn remove_password(&self, object_id: &str, key_id: &str) -> Result<(), GraphError> {
        let result = async {
            let url = self.url(&["applications", object_id, "removePassword"], &[])?;
            self.call_no_content(
                Method::POST,
                url,
                &json!({"keyId": key_id}),
                PERMISSION_APPLICATIONS,
            )
            .await
        }
        .await;
        self.observe(result)
    }

    /// Deletes an application (`DELETE /applications/{id}`, 204; Entra keeps it in deleted
    /// items for 30 days). Its service principal goes with it.
    pub async fn delete_application(&self, object_id: &str) -> Result<(), GraphError> {
        let result = async {
            let url = self.url(&["applications", object_id], &[])?;
            let raw = self.execute(Method::DELETE, url, None).await?;
            if raw.is_success() {
                Ok(())
            } else {
                Err(parse_error(&raw, PERMISSION_APPLICATIONS))
            }
        }
        .await;
        self.observe(result)
    }

    /// Changes an application (`PATCH`, 204).
    pub async fn update_application(
        &self,
        object_id: &str,
        update: &ApplicationUpdate,
    ) -> Result<(), GraphError> {
        let result = async {
            let mut body = serde_json::Map::new();
            if let Some(name) = &update.display_name {
                body.insert("displayName".to_owned(), json!(name));
            }
            if let Some(uris) = &update.redirect_uris {
                body.insert("web".to_owned(), json!({"redirectUris": uris}));
            }
            if let Some(version) = update.requested_access_token_version {
                body.insert(
                    "api".to_owned(),
                    json!({"requestedAccessTokenVersion": version}),
                );
            }
            if body.is_empty() {
                return Ok(());
            }
            let url = self.url(&["applications", object_id], &[])?;
            self.call_no_content(
                Method::PATCH,
                url,
                &Value::Object(body),
                PERMISSION_APPLICATIONS,
            )
            .await
        }
        .await;
        self.observe(result)
    }

    /// Creates the service principal of an application (`POST /servicePrincipals`).
    pub async fn create_service_principal(
        &self,
        app_id: &str,
    ) -> Result<ServicePrincipal, GraphError> {
        let result = async {
            let url = self.url(&["servicePrincipals"], &[])?;
            self.call(
                Method::POST,
                url,
                Some(&json!({"appId": app_id})),
                PERMISSION_APPLICATIONS,
            )
            .await
        }
        .await;
        self.observe(result)
    }

    /// Finds the service principal of a client id.
    pub async fn find_service_principal(
        &self,
        app_id: &str,
    ) -> Result<Option<ServicePrincipal>, GraphError> {
        let result = async {
            let filter = format!("appId eq {}", odata_quote(app_id));
            let url = self.url(&["servicePrincipals"], &[("$filter", filter)])?;
            let found: Vec<ServicePrincipal> = self.list_all(url, PERMISSION_APPLICATIONS).await?;
            Ok(found.into_iter().next())
        }
        .await;
        self.observe(result)
    }

    /// The directory role assignments of one principal
    /// (`GET /roleManagement/directory/roleAssignments?$filter=principalId eq '…'`).
    pub async fn role_assignments_of(
        &self,
        principal_id: &str,
    ) -> Result<Vec<UnifiedRoleAssignment>, GraphError> {
        let result = async {
            let filter = format!("principalId eq {}", odata_quote(principal_id));
            let url = self.url(
                &["roleManagement", "directory", "roleAssignments"],
                &[("$filter", filter)],
            )?;
            self.list_all(url, PERMISSION_ROLE_ASSIGNMENTS).await
        }
        .await;
        self.observe(result)
    }

    /// The application permissions (`roles`) in the bot's own app-only Graph token; empty
    /// when the token carries none.
    pub async fn token_roles(&self) -> Result<Vec<String>, GraphError> {
        let token = self.inner.tokens.token().await.map_err(GraphError::Token)?;
        let claims = super::entra::unverified_claims(token.expose_secret()).unwrap_or_default();
        Ok(claims
            .get("roles")
            .and_then(Value::as_array)
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The tenant: id, name, verified domains.
    pub async fn organization(&self) -> Result<Organization, GraphError> {
        let result = async {
            let url = self.url(
                &["organization"],
                &[("$select", "id,displayName,verifiedDomains".to_owned())],
            )?;
            let answer: OneOrMany<Organization> = self
                .call(Method::GET, url, None, PERMISSION_ORGANIZATION)
                .await?;
            match answer {
                OneOrMany::One(org) => Ok(org),
                OneOrMany::Many(collection) => {
                    collection
                        .value
                        .into_iter()
                        .next()
                        .ok_or_else(|| GraphError::Decode {
                            status: 200,
                            cause: DecodeError::Shape {
                                detail: "the organization collection is empty".to_owned(),
                            },
                            retry: RetryKind::Permanent,
                        })
                }
            }
        }
        .await;
        self.observe(result)
    }

    /// The tenant's domains.
    pub async fn domains(&self) -> Result<Vec<Domain>, GraphError> {
        let result = async {
            let url = self.url(&["domains"], &[])?;
            self.list_all(url, PERMISSION_DOMAINS).await
        }
        .await;
        self.observe(result)
    }

    /// Service health issues (with posts), changed at or after `since` when given, every page.
    pub async fn service_health_issues(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ServiceHealthIssue>, GraphError> {
        let result = async {
            let query: Vec<(&str, String)> = since
                .map(|since| {
                    (
                        "$filter",
                        format!(
                            "lastModifiedDateTime ge {}",
                            since.to_rfc3339_opts(SecondsFormat::Secs, true)
                        ),
                    )
                })
                .into_iter()
                .collect();
            let url = self.url(&["admin", "serviceAnnouncement", "issues"], &query)?;
            self.list_all(url, PERMISSION_SERVICE_HEALTH).await
        }
        .await;
        self.observe(result)
    }

    /// One service health issue; `None` when unknown.
    pub async fn service_health_issue(
        &self,
        id: &str,
    ) -> Result<Option<ServiceHealthIssue>, GraphError> {
        let result = async {
            let url = self.url(&["admin", "serviceAnnouncement", "issues", id], &[])?;
            self.call_optional(url, PERMISSION_SERVICE_HEALTH).await
        }
        .await;
        self.observe(result)
    }

    /// Health of every service.
    pub async fn service_health_overviews(&self) -> Result<Vec<ServiceHealthOverview>, GraphError> {
        let result = async {
            let url = self.url(&["admin", "serviceAnnouncement", "healthOverviews"], &[])?;
            self.list_all(url, PERMISSION_SERVICE_HEALTH).await
        }
        .await;
        self.observe(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_ignore_case_and_keep_unknown_values() {
        assert_eq!(
            ServiceHealthStatus::parse("ServiceRestored"),
            ServiceHealthStatus::ServiceRestored
        );
        assert_eq!(
            SignInAudience::parse("azureadmyorg"),
            SignInAudience::AzureAdMyOrg
        );
        assert_eq!(
            IssueClassification::parse("Unheard"),
            IssueClassification::Other("Unheard".to_owned())
        );
        assert_eq!(
            serde_json::to_string(&SignInAudience::AzureAdMyOrg).unwrap(),
            "\"AzureADMyOrg\""
        );
    }

    #[test]
    fn odata_literals_are_quoted_and_encoded() {
        assert_eq!(odata_quote("O'Brien"), "'O''Brien'");
        assert_eq!(percent_encode("appId eq 'a+b'"), "appId%20eq%20%27a%2Bb%27");
    }
}
