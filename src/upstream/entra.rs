//! Entra ID (Microsoft identity platform) client: OpenID metadata (v1 and v2), JWKS, client
//! credentials (v1 with `resource`, v2 with `scope`), authorization code + PKCE, and AADSTS
//! errors turned into hints a person can act on.

use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
};
use rand::RngCore as _;
use reqwest::header::{ACCEPT, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use super::oauth::{
    AuthorizationCodeClient, TokenAnswer, TokenEndpointClient, TokenFailure, TokenHttp,
    token_client, unreadable_token,
};
use super::{
    DecodeError, NetworkError, RawResponse, Recorder, check_base, decode_raw, decode_retry,
    join_segments,
};
use crate::error::RetryKind;
use crate::ids::is_guid;
use crate::metrics::Metrics;

/// The public Entra ID authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";

/// A failed Entra ID call, classified once. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    /// No complete answer (refused, timed out, cut).
    #[error("Entra ID is unreachable: {0}")]
    Network(NetworkError),
    /// An OAuth / AADSTS error answer.
    #[error("Entra ID refused the request ({}{error}: {description}{}). {hint}", code_prefix(*code), trace_suffix(trace_id.as_deref()))]
    Aadsts {
        /// HTTP status.
        status: u16,
        /// The AADSTS number (`error_codes[0]`, or parsed from the description); 0 when none.
        code: u32,
        /// OAuth `error` (`invalid_client`, `invalid_tenant`, …).
        error: String,
        /// The first line of `error_description`.
        description: String,
        /// What to do.
        hint: &'static str,
        /// `trace_id`, for a support request.
        trace_id: Option<String>,
        /// Retry classification.
        retry: RetryKind,
    },
    /// An error status without an OAuth error body.
    #[error("Entra ID answered {status}: {summary}")]
    Http {
        /// HTTP status.
        status: u16,
        /// A short description of the body.
        summary: String,
        /// Retry classification.
        retry: RetryKind,
    },
    /// A success status with a body that is not the expected JSON.
    #[error("Entra ID answered {status} with a body the bot cannot read: {cause}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// What was wrong with the body.
        cause: DecodeError,
        /// Retry classification.
        retry: RetryKind,
    },
    /// A caller passed an invalid tenant, URL or verifier.
    #[error("invalid Entra ID request: {0}")]
    InvalidInput(String),
}

fn code_prefix(code: u32) -> String {
    if code == 0 {
        String::new()
    } else {
        format!("AADSTS{code} ")
    }
}

fn trace_suffix(trace_id: Option<&str>) -> String {
    trace_id.map_or_else(String::new, |id| format!("; trace id {id}"))
}

impl From<NetworkError> for EntraError {
    fn from(err: NetworkError) -> Self {
        Self::Network(err)
    }
}

impl EntraError {
    /// How a retrier should treat this failure.
    pub fn retry_kind(&self) -> RetryKind {
        match self {
            Self::Network(_) => RetryKind::Network,
            Self::Aadsts { retry, .. } | Self::Http { retry, .. } | Self::Decode { retry, .. } => {
                *retry
            }
            Self::InvalidInput(_) => RetryKind::Permanent,
        }
    }

    /// The AADSTS code, when Entra gave one.
    pub fn aadsts_code(&self) -> Option<u32> {
        match self {
            Self::Aadsts { code, .. } if *code != 0 => Some(*code),
            _ => None,
        }
    }

    /// The hint of an AADSTS error.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Self::Aadsts { hint, .. } => Some(hint),
            _ => None,
        }
    }
}

/// What a person can do about an AADSTS code.
pub fn hint_for(code: u32) -> &'static str {
    match code {
        7000215 => {
            "The client secret is wrong: copy the secret's Value (shown once, when it was created), not its Secret ID, or create a new secret"
        }
        7000222 => {
            "The client secret has expired: create a new secret for the app (Certificates & secrets) and enter its value"
        }
        7000218 => "No client secret was sent: enter the app's client secret",
        700016 => {
            "Entra ID has no application with this client id in this tenant: check the client id (Application ID) and the tenant, and that the app was registered in (or consented to by) this tenant"
        }
        90002 => {
            "The tenant was not found: check the spelling of the tenant domain (for example contoso.onmicrosoft.com) or use the tenant id"
        }
        900023 => "The tenant is not a valid domain name or tenant id: check its spelling",
        70011 => {
            "The scope is not valid: for client credentials use '<resource>/.default', for example https://graph.microsoft.com/.default"
        }
        500011 => {
            "The resource was not found in the tenant: check the resource (App ID URI or client id) and that its app has a service principal in this tenant"
        }
        65001 | 90094 | 90095 => {
            "The app has not been consented to: an administrator must grant admin consent for it in Entra ID (Enterprise applications > Permissions)"
        }
        50011 | 500113 => {
            "The redirect URI does not match one registered on the app: add it to the app's Web redirect URIs"
        }
        54005 | 70008 | 70000 => {
            "The sign-in code is expired or was already used: start the sign-in again"
        }
        50034 | 50126 => {
            "The account does not exist in this tenant or the sign-in failed: sign in with an account of the configured tenant"
        }
        53003 => {
            "A Conditional Access policy blocked the sign-in: ask an Entra administrator to review the policy for this app"
        }
        50076 | 50079 => "Multi-factor authentication is required: sign in interactively again",
        700054 => {
            "The app does not allow this response type: enable ID tokens for the app (Authentication > Implicit grant and hybrid flows) or use the code flow"
        }
        0 => "Entra ID refused the request; check the tenant, client id and secret",
        _ => {
            "Look the AADSTS code up at https://login.microsoftonline.com/error?code=<code>, then check the tenant, client id and secret"
        }
    }
}

/// An OAuth error body of Entra ID: the standard `error` and `error_description`, plus the
/// AADSTS numbers in `error_codes` and the `trace_id` of a support request.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EntraErrorResponse {
    /// OAuth `error` (`invalid_client`, `invalid_tenant`, …).
    pub error: String,
    /// The description, starting with `AADSTS<number>:`.
    #[serde(default)]
    pub error_description: Option<String>,
    /// The AADSTS numbers.
    #[serde(default, deserialize_with = "super::null_default")]
    pub error_codes: Vec<u32>,
    /// `trace_id`.
    #[serde(default)]
    pub trace_id: Option<String>,
}

impl std::fmt::Display for EntraErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.first_line())
    }
}

impl oauth2::ErrorResponse for EntraErrorResponse {}

impl EntraErrorResponse {
    /// The AADSTS number: `error_codes[0]`, else the one in the description; 0 when none.
    pub fn aadsts_code(&self) -> u32 {
        self.error_codes
            .first()
            .copied()
            .or_else(|| code_from_description(self.error_description.as_deref()?))
            .unwrap_or(0)
    }

    /// The first line of the description (the rest is trace and correlation ids).
    pub fn first_line(&self) -> &str {
        self.error_description
            .as_deref()
            .and_then(|text| text.lines().next())
            .unwrap_or_default()
            .trim()
    }

    /// The typed error of this body, answered with `status` and `headers`.
    pub fn into_error(self, status: u16, headers: &HeaderMap) -> EntraError {
        let mut retry = super::classify(status, headers);
        if self.error == "temporarily_unavailable" && retry == RetryKind::Permanent {
            retry = RetryKind::Transient {
                retry_after: super::retry_after(headers),
            };
        }
        let code = self.aadsts_code();
        EntraError::Aadsts {
            status,
            code,
            description: self.first_line().to_owned(),
            error: self.error,
            hint: hint_for(code),
            trace_id: self.trace_id,
            retry,
        }
    }
}

/// The AADSTS number in an error text (`AADSTS7000215: …`), if there is one.
pub fn code_from_description(description: &str) -> Option<u32> {
    let start = description.find("AADSTS")? + "AADSTS".len();
    let digits: String = description[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Maps an Entra error answer to a typed error (AADSTS code, first line, hint).
pub fn parse_error(raw: &RawResponse) -> EntraError {
    let body = if raw.truncated {
        None
    } else {
        serde_json::from_slice::<EntraErrorResponse>(&raw.body).ok()
    };
    match body {
        Some(body) => body.into_error(raw.status, &raw.headers),
        None => EntraError::Http {
            status: raw.status,
            summary: raw.summary(),
            retry: raw.retry(),
        },
    }
}

/// The typed error of a token request that gave no token.
fn token_failure(failure: TokenFailure<EntraErrorResponse>) -> EntraError {
    match failure {
        TokenFailure::Network(err) => EntraError::Network(err),
        TokenFailure::Refused { error, answer } => error.into_error(answer.status, &answer.headers),
        TokenFailure::Unreadable { answer, .. } if !answer.is_success() => parse_error(&answer),
        TokenFailure::Unreadable { answer, detail } => {
            let cause = unreadable_token(&answer, detail);
            EntraError::Decode {
                status: answer.status,
                retry: decode_retry(answer.status, &answer.headers, &cause),
                cause,
            }
        }
        TokenFailure::Invalid(detail) => EntraError::InvalidInput(detail),
    }
}

/// Decodes an Entra answer: `T` on success (secret-safe errors), the typed error otherwise.
pub fn parse_response<T: DeserializeOwned>(raw: &RawResponse) -> Result<T, EntraError> {
    if !raw.is_success() {
        return Err(parse_error(raw));
    }
    decode_raw::<T>(raw, true).map_err(|cause| EntraError::Decode {
        status: raw.status,
        retry: decode_retry(raw.status, &raw.headers, &cause),
        cause,
    })
}

/// The parts of an OpenID Connect metadata document the bot uses.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenIdConfiguration {
    /// `issuer`, verbatim (`https://sts.windows.net/{tid}/` for v1).
    pub issuer: String,
    /// `jwks_uri`.
    pub jwks_uri: Url,
    /// `token_endpoint`.
    pub token_endpoint: Url,
    /// `authorization_endpoint`.
    pub authorization_endpoint: Url,
    /// `end_session_endpoint`.
    #[serde(default)]
    pub end_session_endpoint: Option<Url>,
    /// `id_token_signing_alg_values_supported`.
    #[serde(default, deserialize_with = "super::null_default")]
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// `tenant_region_scope` (e.g. `EU`).
    #[serde(default)]
    pub tenant_region_scope: Option<String>,
    /// `msgraph_host`.
    #[serde(default)]
    pub msgraph_host: Option<String>,
    /// The tenant id (GUID) from the issuer or the token endpoint; `None` for the
    /// multi-tenant documents (`common`, `organizations`).
    #[serde(skip)]
    pub tenant_id: Option<String>,
}

impl OpenIdConfiguration {
    /// True for a v1 document (issuer on `sts.windows.net`).
    pub fn is_v1(&self) -> bool {
        self.issuer.contains("sts.windows.net")
    }
}

/// The first GUID path segment of a URL-like string.
pub fn tenant_id_from_url(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .split(['/', '?', '#'])
        .skip(1)
        .find(|segment| is_guid(segment))
        .map(str::to_ascii_lowercase)
}

/// Decodes an OpenID metadata answer and derives the tenant id.
pub fn parse_openid_configuration(raw: &RawResponse) -> Result<OpenIdConfiguration, EntraError> {
    let mut config = parse_response::<OpenIdConfiguration>(raw)?;
    config.tenant_id = tenant_id_from_url(&config.issuer)
        .or_else(|| tenant_id_from_url(config.token_endpoint.as_str()));
    Ok(config)
}

/// A JSON Web Key Set.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwks {
    /// The keys.
    #[serde(default, deserialize_with = "super::null_default")]
    pub keys: Vec<Jwk>,
}

/// One signing key.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    /// Key type (`RSA`).
    pub kty: String,
    /// `sig`.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// Key id, matched against the token header `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// Certificate thumbprint (v1 tokens).
    #[serde(default)]
    pub x5t: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA exponent, base64url.
    #[serde(default)]
    pub e: Option<String>,
    /// Certificate chain.
    #[serde(default, deserialize_with = "super::null_default")]
    pub x5c: Vec<String>,
    /// The issuer this key may sign for (v2 key sets).
    #[serde(default)]
    pub issuer: Option<String>,
}

impl Jwks {
    /// The key with this `kid`.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|key| key.kid.as_deref() == Some(kid))
    }
}

impl Jwk {
    /// An RS256/384/512 verification key from `n` and `e`.
    pub fn decoding_key(&self) -> Result<jsonwebtoken::DecodingKey, String> {
        if !self.kty.eq_ignore_ascii_case("RSA") {
            return Err(format!("key type {} is not RSA", self.kty));
        }
        let (Some(n), Some(e)) = (&self.n, &self.e) else {
            return Err("the RSA key has no modulus or exponent".to_owned());
        };
        jsonwebtoken::DecodingKey::from_rsa_components(n, e)
            .map_err(|err| format!("unusable RSA key: {err}"))
    }
}

/// An access token from a client-credentials request.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub access_token: SecretString,
    /// `Bearer`.
    pub token_type: String,
    /// Lifetime (v1 sends it as a string, v2 as a number).
    pub expires_in: Duration,
    /// When it expires (from `expires_on` if given, else now + `expires_in`).
    pub expires_at: DateTime<Utc>,
    /// v1: the resource the token is for.
    pub resource: Option<String>,
    /// v2: granted scope.
    pub scope: Option<String>,
}

/// Tokens from an authorization-code redemption.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// The access token.
    pub access_token: SecretString,
    /// The ID token (a JWT to validate), when `openid` was requested.
    pub id_token: Option<SecretString>,
    /// A refresh token, when `offline_access` was requested.
    pub refresh_token: Option<SecretString>,
    /// `Bearer`.
    pub token_type: String,
    /// Lifetime.
    pub expires_in: Duration,
    /// Granted scopes.
    pub scope: Option<String>,
}

fn expires_at(expires_in: u64, expires_on: Option<u64>) -> DateTime<Utc> {
    expires_on
        .and_then(|on| i64::try_from(on).ok())
        .and_then(|on| DateTime::from_timestamp(on, 0))
        .unwrap_or_else(|| {
            Utc::now() + chrono::Duration::seconds(i64::try_from(expires_in).unwrap_or(3600))
        })
}

impl From<TokenAnswer> for AccessToken {
    fn from(answer: TokenAnswer) -> Self {
        let expires_in = answer.expires_in_seconds().unwrap_or(DEFAULT_EXPIRES_IN);
        Self {
            expires_at: expires_at(expires_in, answer.expires_on),
            access_token: answer.secret(),
            token_type: answer.token_type_name(),
            expires_in: Duration::from_secs(expires_in),
            scope: answer.scope(),
            resource: answer.resource,
        }
    }
}

impl From<TokenAnswer> for TokenSet {
    fn from(answer: TokenAnswer) -> Self {
        Self {
            access_token: answer.secret(),
            refresh_token: answer.refresh_secret(),
            token_type: answer.token_type_name(),
            expires_in: Duration::from_secs(
                answer.expires_in_seconds().unwrap_or(DEFAULT_EXPIRES_IN),
            ),
            scope: answer.scope(),
            id_token: answer.id_token,
        }
    }
}

/// Lifetime assumed when a token answer has no `expires_in`.
const DEFAULT_EXPIRES_IN: u64 = 3600;

/// Decodes a recorded client-credentials token answer (v1 or v2) the way a live request does.
pub fn parse_token_response(raw: &RawResponse) -> Result<AccessToken, EntraError> {
    let client: TokenEndpointClient<EntraErrorResponse> = token_client(
        "",
        &SecretString::from(""),
        Url::parse("https://login.microsoftonline.com/common/oauth2/token")
            .map_err(|err| EntraError::InvalidInput(err.to_string()))?,
    );
    let replay = TokenHttp::replay(raw.clone());
    let result = client.exchange_client_credentials().request(&replay);
    replay
        .finish(result)
        .map(AccessToken::from)
        .map_err(token_failure)
}

/// A PKCE verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    verifier: SecretString,
    challenge: PkceCodeChallenge,
}

impl Pkce {
    /// A fresh random verifier (64 characters) and its challenge.
    pub fn generate() -> Self {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(48);
        Self {
            verifier: SecretString::from(verifier.into_secret()),
            challenge,
        }
    }

    /// Rebuilds from a stored verifier (43–128 unreserved characters).
    pub fn from_verifier(verifier: &str) -> Result<Self, EntraError> {
        let valid = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !valid {
            return Err(EntraError::InvalidInput(
                "a PKCE verifier has 43 to 128 characters from A-Z a-z 0-9 - . _ ~".to_owned(),
            ));
        }
        Ok(Self {
            challenge: PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
                verifier.to_owned(),
            )),
            verifier: SecretString::from(verifier),
        })
    }

    /// The verifier (kept server-side, sent with the code redemption).
    pub fn verifier(&self) -> &str {
        self.verifier.expose_secret()
    }

    /// The challenge (sent in the authorize URL).
    pub fn challenge(&self) -> &str {
        self.challenge.as_str()
    }
}

/// A random URL-safe token of `bytes` random bytes (for `state`, `nonce`, verifiers).
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// The parameters of an authorization-code + PKCE sign-in URL.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeRequest<'a> {
    /// The app's client id.
    pub client_id: &'a str,
    /// Where Entra sends the code.
    pub redirect_uri: &'a str,
    /// Space-separated scopes (`openid profile` at least for an ID token).
    pub scope: &'a str,
    /// The single-use state.
    pub state: &'a str,
    /// The nonce echoed in the ID token.
    pub nonce: &'a str,
    /// The PKCE pair; its S256 challenge goes in the URL.
    pub pkce: &'a Pkce,
    /// `login_hint` (the expected UPN), optional.
    pub login_hint: Option<&'a str>,
    /// `prompt` (`select_account`, `login`, `consent`), optional.
    pub prompt: Option<&'a str>,
}

/// What a client-credentials token is for.
#[derive(Debug, Clone, Copy)]
enum Audience<'a> {
    /// v1: `resource` (App ID URI or client id).
    Resource(&'a str),
    /// v2: `scope` (`<resource>/.default`).
    Scope(&'a str),
}

struct Inner {
    http: reqwest::Client,
    authority: Url,
    recorder: Recorder,
}

/// The Entra ID client; cheap to clone.
#[derive(Clone)]
pub struct EntraClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EntraClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraClient")
            .field("authority", &self.inner.authority.as_str())
            .finish_non_exhaustive()
    }
}

impl EntraClient {
    /// A client for `authority_base` ([`DEFAULT_AUTHORITY`] in production).
    pub fn new(http: reqwest::Client, authority_base: Url) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                authority: authority_base,
                recorder: Recorder::new("entra"),
            }),
        }
    }

    /// Records every call in `metrics` as `entra` / outcome.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                authority: self.inner.authority.clone(),
                recorder: self.inner.recorder.clone().with(metrics),
            }),
        }
    }

    /// The authority base URL.
    pub fn authority(&self) -> &Url {
        &self.inner.authority
    }

    fn url(&self, tenant: &str, rest: &[&str]) -> Result<Url, EntraError> {
        check_tenant(tenant)?;
        check_base(&self.inner.authority).map_err(EntraError::InvalidInput)?;
        let mut segments = vec![tenant];
        segments.extend_from_slice(rest);
        join_segments(&self.inner.authority, &segments).map_err(EntraError::InvalidInput)
    }

    /// `{authority}/{tenant}/.well-known/openid-configuration` (v1, the document the
    /// ServiceNow OIDC provider configuration points at).
    pub fn metadata_url_v1(&self, tenant: &str) -> Result<Url, EntraError> {
        self.url(tenant, &[".well-known", "openid-configuration"])
    }

    /// `{authority}/{tenant}/v2.0/.well-known/openid-configuration`.
    pub fn metadata_url_v2(&self, tenant: &str) -> Result<Url, EntraError> {
        self.url(tenant, &["v2.0", ".well-known", "openid-configuration"])
    }

    /// `{authority}/{tenant}/oauth2/token` (v1, the ServiceNow OAuth provider's token URL).
    pub fn token_url_v1(&self, tenant: &str) -> Result<Url, EntraError> {
        self.url(tenant, &["oauth2", "token"])
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url_v2(&self, tenant: &str) -> Result<Url, EntraError> {
        self.url(tenant, &["oauth2", "v2.0", "token"])
    }

    fn observe<T>(&self, result: Result<T, EntraError>) -> Result<T, EntraError> {
        self.inner.recorder.observe(result, EntraError::retry_kind)
    }

    /// A GET, retried under [`super::retry::STANDARD`] when throttled.
    async fn get(&self, url: Url) -> Result<RawResponse, EntraError> {
        super::retry::with_retry(super::retry::STANDARD, || async {
            let request = self
                .inner
                .http
                .get(url.clone())
                .header(ACCEPT, "application/json");
            Ok(super::send(request).await?)
        })
        .await
    }

    /// Runs a client-credentials request for `client_id` at `token_url`, for the v1
    /// `resource` or the v2 `scope`.
    async fn client_credentials(
        &self,
        token_url: Url,
        client_id: &str,
        secret: &SecretString,
        audience: Audience<'_>,
    ) -> Result<AccessToken, EntraError> {
        let client: TokenEndpointClient<EntraErrorResponse> =
            token_client(client_id, secret, token_url);
        let request = client.exchange_client_credentials();
        let request = match audience {
            Audience::Resource(resource) => request.add_extra_param("resource", resource),
            Audience::Scope(scope) => request.add_scope(Scope::new(scope.to_owned())),
        };
        let http = TokenHttp::with_retry(&self.inner.http, super::retry::STANDARD);
        let result = request.request_async(&http).await;
        http.finish(result)
            .map(AccessToken::from)
            .map_err(token_failure)
    }

    /// The v1 OpenID metadata of `tenant` (domain or id). An unknown tenant is
    /// [`EntraError::Aadsts`] with code 90002; the answer yields the tenant id.
    pub async fn openid_configuration(
        &self,
        tenant: &str,
    ) -> Result<OpenIdConfiguration, EntraError> {
        let result = async {
            let raw = self.get(self.metadata_url_v1(tenant)?).await?;
            parse_openid_configuration(&raw)
        }
        .await;
        self.observe(result)
    }

    /// The v2 OpenID metadata of `tenant`.
    pub async fn openid_configuration_v2(
        &self,
        tenant: &str,
    ) -> Result<OpenIdConfiguration, EntraError> {
        let result = async {
            let raw = self.get(self.metadata_url_v2(tenant)?).await?;
            parse_openid_configuration(&raw)
        }
        .await;
        self.observe(result)
    }

    /// The key set at `url` (the metadata's `jwks_uri`).
    pub async fn jwks(&self, url: &Url) -> Result<Jwks, EntraError> {
        let result = async {
            check_base(url).map_err(EntraError::InvalidInput)?;
            let raw = self.get(url.clone()).await?;
            parse_response::<Jwks>(&raw)
        }
        .await;
        self.observe(result)
    }

    /// A v1 client-credentials token for `resource` (App ID URI or client id), at
    /// `/{tenant}/oauth2/token`: the same request ServiceNow's outbound provider makes.
    pub async fn client_credentials_v1(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &SecretString,
        resource: &str,
    ) -> Result<AccessToken, EntraError> {
        let result = async {
            let url = self.token_url_v1(tenant)?;
            self.client_credentials(url, client_id, secret, Audience::Resource(resource))
                .await
        }
        .await;
        self.observe(result)
    }

    /// A v2 client-credentials token for `scope` (`<resource>/.default`).
    pub async fn client_credentials_v2(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &SecretString,
        scope: &str,
    ) -> Result<AccessToken, EntraError> {
        let result = async {
            let url = self.token_url_v2(tenant)?;
            self.client_credentials(url, client_id, secret, Audience::Scope(scope))
                .await
        }
        .await;
        self.observe(result)
    }

    /// The authorization-code client of `tenant` (v2 endpoints).
    fn code_client(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &SecretString,
    ) -> Result<AuthorizationCodeClient<EntraErrorResponse>, EntraError> {
        let authorize = self.url(tenant, &["oauth2", "v2.0", "authorize"])?;
        let token = self.token_url_v2(tenant)?;
        Ok(token_client(client_id, secret, token).set_auth_uri(AuthUrl::from_url(authorize)))
    }

    /// Redeems an authorization code (v2 endpoint) with its PKCE verifier.
    pub async fn exchange_code(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &SecretString,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenSet, EntraError> {
        let result = async {
            let client = self.code_client(tenant, client_id, secret)?;
            let redirect = redirect_url(redirect_uri)?;
            let http = TokenHttp::with_retry(&self.inner.http, super::retry::STANDARD);
            let result = client
                .exchange_code(AuthorizationCode::new(code.to_owned()))
                .set_pkce_verifier(PkceCodeVerifier::new(code_verifier.to_owned()))
                .set_redirect_uri(Cow::Owned(redirect))
                .request_async(&http)
                .await;
            http.finish(result)
                .map(TokenSet::from)
                .map_err(token_failure)
        }
        .await;
        self.observe(result)
    }

    /// The v2 sign-in URL for the authorization code flow with PKCE (S256).
    pub fn authorize_url(
        &self,
        tenant: &str,
        request: &AuthorizeRequest<'_>,
    ) -> Result<Url, EntraError> {
        // The URL carries no secret.
        let client = self.code_client(tenant, request.client_id, &SecretString::from(""))?;
        let state = request.state.to_owned();
        let mut sign_in = client
            .authorize_url(move || CsrfToken::new(state))
            .set_redirect_uri(Cow::Owned(redirect_url(request.redirect_uri)?))
            .add_scopes(
                request
                    .scope
                    .split_whitespace()
                    .map(|scope| Scope::new(scope.to_owned())),
            )
            .set_pkce_challenge(request.pkce.challenge.clone())
            .add_extra_param("response_mode", "query")
            .add_extra_param("nonce", request.nonce);
        if let Some(hint) = request.login_hint {
            sign_in = sign_in.add_extra_param("login_hint", hint);
        }
        if let Some(prompt) = request.prompt {
            sign_in = sign_in.add_extra_param("prompt", prompt);
        }
        Ok(sign_in.url().0)
    }
}

fn redirect_url(redirect_uri: &str) -> Result<RedirectUrl, EntraError> {
    RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|err| EntraError::InvalidInput(format!("the redirect URI is not a URL: {err}")))
}

/// The claims of a JWT without verifying it: for tokens straight from the token endpoint, to
/// report what Entra ID put in them. `None` when it is not a readable JWT.
pub fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Checks a tenant: a domain name, a tenant id, or `common` / `organizations`.
pub fn check_tenant(tenant: &str) -> Result<(), EntraError> {
    let valid = !tenant.is_empty()
        && tenant.len() <= 253
        && !tenant.starts_with(['.', '-'])
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(EntraError::InvalidInput(format!(
            "'{}' is not a tenant: enter a domain such as contoso.onmicrosoft.com or a tenant id",
            super::excerpt(tenant.as_bytes(), 80)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_the_rfc_7636_example() {
        // RFC 7636 appendix B.
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let fresh = Pkce::generate();
        assert!((43..=128).contains(&fresh.verifier().len()));
        assert_eq!(
            fresh.challenge(),
            Pkce::from_verifier(fresh.verifier()).unwrap().challenge()
        );
        assert_ne!(fresh.verifier(), Pkce::generate().verifier());
        assert!(Pkce::from_verifier("short").is_err());
        assert!(!format!("{fresh:?}").contains(fresh.verifier()));
    }

    #[test]
    fn tenant_ids_come_from_issuer_paths() {
        assert_eq!(
            tenant_id_from_url("https://sts.windows.net/8EAEF023-2b34-4da1-9baa-8bc8c9d6a490/")
                .as_deref(),
            Some("8eaef023-2b34-4da1-9baa-8bc8c9d6a490")
        );
        assert_eq!(
            tenant_id_from_url("https://login.microsoftonline.com/{tenantid}/v2.0"),
            None
        );
    }

    #[test]
    fn tenants_with_path_characters_are_refused() {
        assert!(check_tenant("contoso.onmicrosoft.com").is_ok());
        assert!(check_tenant("8eaef023-2b34-4da1-9baa-8bc8c9d6a490").is_ok());
        assert!(check_tenant("../common").is_err());
        assert!(check_tenant("a/b").is_err());
        assert!(check_tenant("").is_err());
    }

    #[test]
    fn authorize_url_carries_pkce_and_state() {
        let client = EntraClient::new(
            reqwest::Client::new(),
            Url::parse("http://127.0.0.1:1/entra/").unwrap(),
        );
        let pkce = Pkce::generate();
        let url = client
            .authorize_url(
                "contoso.com",
                &AuthorizeRequest {
                    client_id: "cid",
                    redirect_uri: "https://bot.example/auth/callback",
                    scope: "openid profile",
                    state: "st",
                    nonce: "no",
                    pkce: &pkce,
                    login_hint: None,
                    prompt: Some("select_account"),
                },
            )
            .unwrap();
        assert_eq!(url.path(), "/entra/contoso.com/oauth2/v2.0/authorize");
        let pairs: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert_eq!(pairs["code_challenge"], pkce.challenge());
        assert_eq!(pairs["redirect_uri"], "https://bot.example/auth/callback");
        assert_eq!(pairs["response_type"], "code");
        assert_eq!(pairs["prompt"], "select_account");
    }
}
