//! Inbound Bot Framework token validation (channel → bot).
//!
//! Every request to `/api/messages` carries `Authorization: Bearer <JWT>` signed by the Bot
//! Framework. The token is checked in this order: header shape, algorithm (RS256/384/512 only,
//! before any key lookup), key id, signature, issuer, audience, lifetime (with clock skew);
//! then, once the body is parsed, the `serviceurl` claim and the signing key's endorsements
//! ([`VerifiedToken::check_activity`]).
//!
//! Signing keys come from the OpenID metadata document's `jwks_uri`. Only RSA keys are kept, each
//! turned into a ready [`DecodingKey`] once per fetch. The set is refreshed in the background
//! after 24 h, and at most once an hour when a token names an unknown `kid`. Concurrent requests
//! that miss share one refresh. Nothing here logs above debug, and the token text never reaches a
//! log line or an error message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use crate::config::BotSettings;

/// The only signing algorithms accepted (the botbuilder allow-list).
const ALLOWED_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
/// Age after which the key set is refreshed (in the background; the old keys stay in use).
const KEY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Smallest interval between two refreshes caused by an unknown `kid`.
const UNKNOWN_KID_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// Wait after a failed fetch before the next attempt.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(15);
/// Longest accepted token; Bot Framework tokens are about 1.5 KB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest accepted metadata or JWKS document.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a request was refused; every variant answers 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    MissingToken,
    /// The token failed a check; the text names which.
    #[error("{0}")]
    Rejected(String),
    /// Signing keys could not be fetched.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

fn rejected(reason: &str) -> AuthError {
    AuthError::Rejected(reason.to_owned())
}

/// Claims of a token that passed signature, algorithm, issuer, audience and lifetime checks.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The `serviceurl` claim.
    pub service_url: Option<String>,
    /// Endorsements of the key that signed the token.
    pub endorsements: Vec<String>,
}

impl VerifiedToken {
    /// Checks the token against the activity it came with (`serviceurl`, endorsements).
    ///
    /// The `serviceurl` claim must equal `service_url` exactly. When the signing key lists
    /// endorsements, a non-empty `channel_id` must be one of them.
    pub fn check_activity(&self, service_url: &str, channel_id: &str) -> Result<(), AuthError> {
        match self.service_url.as_deref() {
            None => return Err(rejected("the token has no serviceurl claim")),
            Some(claim) if claim != service_url => {
                return Err(rejected(
                    "the token's serviceurl claim does not match the activity's serviceUrl",
                ));
            }
            Some(_) => {}
        }
        if !channel_id.is_empty()
            && !self.endorsements.is_empty()
            && !self.endorsements.iter().any(|e| e == channel_id)
        {
            return Err(rejected(
                "the signing key is not endorsed for the activity's channel",
            ));
        }
        Ok(())
    }
}

/// One usable signing key, parsed once per fetch.
struct SigningKey {
    key: DecodingKey,
    endorsements: Vec<String>,
}

/// The keys of one JWKS fetch, by `kid`.
struct KeySet {
    keys: HashMap<String, Arc<SigningKey>>,
    fetched_at: Instant,
}

impl KeySet {
    fn get(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.keys.get(kid).cloned()
    }
}

/// Bookkeeping of fetches; its mutex also makes refreshes one at a time.
#[derive(Default)]
struct RefreshState {
    /// When the last fetch (successful or not) finished.
    last_completed: Option<Instant>,
    /// When the last fetch failed.
    last_failure: Option<Instant>,
    /// When an unknown `kid` last caused a fetch.
    last_unknown_kid_refresh: Option<Instant>,
}

struct Inner {
    metadata_url: Url,
    http: reqwest::Client,
    validation: Validation,
    keys: RwLock<Option<Arc<KeySet>>>,
    refresh: Mutex<RefreshState>,
    background_refresh_running: AtomicBool,
}

/// Validates inbound tokens against the configured OpenID metadata, caching the keys.
pub struct BotAuthenticator {
    inner: Arc<Inner>,
}

/// The claims read from a verified token (the checked ones are read by `jsonwebtoken`).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    serviceurl: Option<String>,
}

impl BotAuthenticator {
    /// Creates the validator; keys are fetched on first use.
    pub fn new(settings: &BotSettings, http: reqwest::Client) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = ALLOWED_ALGORITHMS.to_vec();
        validation.set_issuer(&[&settings.token_issuer]);
        validation.set_audience(&[&settings.app_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = settings.clock_skew_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        Self {
            inner: Arc::new(Inner {
                metadata_url: settings.openid_metadata_url.clone(),
                http,
                validation,
                keys: RwLock::new(None),
                refresh: Mutex::new(RefreshState::default()),
                background_refresh_running: AtomicBool::new(false),
            }),
        }
    }

    /// Validates the `Authorization` header value.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<VerifiedToken, AuthError> {
        let token = bearer_token(authorization)?;
        let kid = signing_key_id(token)?;
        let signing_key = self.inner.signing_key(&kid).await?;
        let data =
            decode::<Claims>(token, &signing_key.key, &self.inner.validation).map_err(|err| {
                let reason = describe_jwt_error(err.kind());
                tracing::debug!(reason = %reason, "bot token refused");
                AuthError::Rejected(reason)
            })?;
        Ok(VerifiedToken {
            service_url: data.claims.serviceurl,
            endorsements: signing_key.endorsements.clone(),
        })
    }
}

/// Extracts the token from `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or(AuthError::MissingToken)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(rejected("the Authorization header is not a Bearer token"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(rejected("the token is too large"));
    }
    if token.split('.').count() != 3 {
        return Err(rejected("the token is not a signed JWT"));
    }
    Ok(token)
}

/// Reads the header: the algorithm must be allowed and a `kid` present.
fn signing_key_id(token: &str) -> Result<String, AuthError> {
    let Ok(header) = decode_header(token) else {
        // `jsonwebtoken` cannot represent `none` or unknown algorithms: name them if we can.
        return Err(match raw_algorithm(token) {
            Some(alg) => AuthError::Rejected(format!("unsupported token algorithm {alg}")),
            None => rejected("malformed token header"),
        });
    };
    if !ALLOWED_ALGORITHMS.contains(&header.alg) {
        return Err(AuthError::Rejected(format!(
            "unsupported token algorithm {:?}",
            header.alg
        )));
    }
    header
        .kid
        .filter(|kid| !kid.is_empty())
        .ok_or_else(|| rejected("the token names no signing key (kid)"))
}

/// The `alg` of a header `jsonwebtoken` refused, when it is short and printable.
fn raw_algorithm(token: &str) -> Option<String> {
    let encoded = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).ok()?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    let alg = header.get("alg")?.as_str()?;
    (!alg.is_empty() && alg.len() <= 16 && alg.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| alg.to_owned())
}

/// A short reason for a failed `jsonwebtoken::decode`.
fn describe_jwt_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "invalid token signature".to_owned(),
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidIssuer => "wrong token issuer".to_owned(),
        ErrorKind::InvalidAudience => "wrong token audience".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" | "iss" | "aud" | "nbf" | "sub" => format!("the token has no {claim} claim"),
            _ => "the token lacks a required claim".to_owned(),
        },
        ErrorKind::InvalidAlgorithm => "unsupported token algorithm".to_owned(),
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            "the signing key is unusable".to_owned()
        }
        _ => "malformed token".to_owned(),
    }
}

impl Inner {
    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, keys: HashMap<String, Arc<SigningKey>>) {
        let set = Arc::new(KeySet {
            keys,
            fetched_at: Instant::now(),
        });
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(set);
    }

    /// The key for `kid`: from the cache, else after one shared (rate-limited) refresh.
    async fn signing_key(self: &Arc<Self>, kid: &str) -> Result<Arc<SigningKey>, AuthError> {
        let observed = Instant::now();
        if let Some(set) = self.snapshot() {
            if set.fetched_at.elapsed() >= KEY_MAX_AGE {
                self.spawn_scheduled_refresh();
            }
            if let Some(key) = set.get(kid) {
                return Ok(key);
            }
        }
        // Slow path: no keys yet, or an unknown kid. Refreshes happen one at a time; whoever
        // waited for one that finished after it looked reuses that result.
        let mut state = self.refresh.lock().await;
        let current = self.snapshot();
        let refreshed_meanwhile = state.last_completed.is_some_and(|at| at >= observed);
        if let Some(key) = current.as_ref().and_then(|set| set.get(kid)) {
            return Ok(key);
        }
        if refreshed_meanwhile {
            return Err(match current {
                Some(_) => unknown_key(),
                None => AuthError::KeysUnavailable("the key fetch failed".to_owned()),
            });
        }
        match &current {
            None => {
                if state
                    .last_failure
                    .is_some_and(|at| at.elapsed() < FAILED_FETCH_BACKOFF)
                {
                    return Err(AuthError::KeysUnavailable(
                        "the last key fetch failed; retrying shortly".to_owned(),
                    ));
                }
            }
            Some(_) => {
                if state
                    .last_unknown_kid_refresh
                    .is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFRESH_INTERVAL)
                {
                    tracing::debug!("unknown signing key id; key refresh rate-limited");
                    return Err(unknown_key());
                }
                state.last_unknown_kid_refresh = Some(Instant::now());
                tracing::debug!("unknown signing key id; refreshing the keys");
            }
        }
        match self.refresh_locked(&mut state).await {
            Ok(()) => self
                .snapshot()
                .and_then(|set| set.get(kid))
                .ok_or_else(unknown_key),
            Err(reason) if current.is_none() => Err(AuthError::KeysUnavailable(reason)),
            Err(_) => Err(unknown_key()),
        }
    }

    /// Starts one background refresh of a stale key set; requests keep using the old keys.
    fn spawn_scheduled_refresh(self: &Arc<Self>) {
        if self
            .background_refresh_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            {
                let mut state = inner.refresh.lock().await;
                let stale = inner
                    .snapshot()
                    .is_none_or(|set| set.fetched_at.elapsed() >= KEY_MAX_AGE);
                let backing_off = state
                    .last_failure
                    .is_some_and(|at| at.elapsed() < FAILED_FETCH_BACKOFF);
                if stale && !backing_off {
                    tracing::debug!("scheduled signing key refresh");
                    // A failure keeps the old keys; it is logged in `refresh_locked`.
                    let _ = inner.refresh_locked(&mut state).await;
                }
            }
            inner
                .background_refresh_running
                .store(false, Ordering::Release);
        });
    }

    /// Fetches and installs the keys; the caller holds the refresh lock.
    async fn refresh_locked(&self, state: &mut RefreshState) -> Result<(), String> {
        let result = self.fetch_keys().await;
        state.last_completed = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "Bot Framework signing keys fetched");
                state.last_failure = None;
                self.install(keys);
                Ok(())
            }
            Err(reason) => {
                tracing::debug!(reason = %reason, "Bot Framework signing key fetch failed");
                state.last_failure = Some(Instant::now());
                Err(reason)
            }
        }
    }

    /// Reads the metadata, then its `jwks_uri`, and parses the RSA keys.
    async fn fetch_keys(&self) -> Result<HashMap<String, Arc<SigningKey>>, String> {
        let metadata: OpenIdMetadata = self
            .get_json(self.metadata_url.clone(), "OpenID metadata")
            .await?;
        let jwks_uri = self
            .metadata_url
            .join(&metadata.jwks_uri)
            .map_err(|_| "OpenID metadata: jwks_uri is not a URL".to_owned())?;
        let jwks: Jwks = self.get_json(jwks_uri, "JWKS").await?;
        let keys = parse_keys(jwks.keys);
        if keys.is_empty() {
            return Err("JWKS: no usable RSA signing keys".to_owned());
        }
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
        what: &str,
    ) -> Result<T, String> {
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| format!("{what}: {}", describe_http_error(&err)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{what}: HTTP {}", status.as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| format!("{what}: {}", describe_http_error(&err)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("{what}: document too large"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| format!("{what}: not the expected JSON"))
    }
}

fn unknown_key() -> AuthError {
    rejected("the token is signed with an unknown key")
}

fn describe_http_error(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "request timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "response body unreadable"
    } else {
        "request failed"
    }
}

#[derive(Deserialize)]
struct OpenIdMetadata {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Jwks {
    #[serde(default)]
    keys: Vec<Value>,
}

/// The JWK members used; anything else is ignored.
#[derive(Deserialize)]
struct RawJwk {
    #[serde(default)]
    kty: String,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    endorsements: Option<Vec<String>>,
}

/// Keeps the RSA signature keys that have a `kid`; malformed entries are skipped.
fn parse_keys(keys: Vec<Value>) -> HashMap<String, Arc<SigningKey>> {
    keys.into_iter()
        .filter_map(|value| serde_json::from_value::<RawJwk>(value).ok())
        .filter(|jwk| jwk.kty == "RSA" && jwk.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|jwk| {
            let kid = jwk.kid.filter(|kid| !kid.is_empty())?;
            let key =
                DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok()?;
            let signing_key = SigningKey {
                key,
                endorsements: jwk.endorsements.unwrap_or_default(),
            };
            Some((kid, Arc::new(signing_key)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn token_with_header(header: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let claims = URL_SAFE_NO_PAD.encode(r#"{"aud":"x"}"#);
        format!("{header}.{claims}.c2ln")
    }

    #[test]
    fn bearer_header_parsing() {
        assert!(matches!(bearer_token(None), Err(AuthError::MissingToken)));
        assert!(matches!(
            bearer_token(Some("  ")),
            Err(AuthError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(Some("Bearer ")),
            Err(AuthError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(Some("Basic dXNlcjpwdw==")),
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            bearer_token(Some("Bearer")),
            Err(AuthError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(Some("Token")),
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            bearer_token(Some("Bearer abc")),
            Err(AuthError::Rejected(_))
        ));
        assert_eq!(bearer_token(Some("Bearer a.b.c")).ok(), Some("a.b.c"));
        assert_eq!(bearer_token(Some("bearer  a.b.c ")).ok(), Some("a.b.c"));
        let huge = format!("Bearer {}.b.c", "a".repeat(MAX_TOKEN_BYTES));
        assert!(matches!(
            bearer_token(Some(&huge)),
            Err(AuthError::Rejected(_))
        ));
    }

    #[test]
    fn header_algorithm_and_kid() {
        let ok = token_with_header(&json!({"alg": "RS384", "kid": "k1", "typ": "JWT"}));
        assert_eq!(signing_key_id(&ok).ok().as_deref(), Some("k1"));
        for alg in ["HS256", "ES256", "PS256", "none"] {
            let token = token_with_header(&json!({"alg": alg, "kid": "k1"}));
            let err = signing_key_id(&token).expect_err(alg).to_string();
            assert!(err.contains("unsupported token algorithm"), "{alg}: {err}");
            assert!(err.contains(alg), "{alg}: {err}");
        }
        let no_kid = token_with_header(&json!({"alg": "RS256"}));
        assert!(
            signing_key_id(&no_kid)
                .expect_err("no kid")
                .to_string()
                .contains("kid")
        );
        let err = signing_key_id("bm90IGpzb24.e30.c2ln").expect_err("garbage");
        assert_eq!(err.to_string(), "malformed token header");
    }

    #[test]
    fn error_texts_never_echo_the_token() {
        let secretish = token_with_header(&json!({"alg": "HS256", "kid": "k1"}));
        let err = signing_key_id(&secretish).expect_err("refused").to_string();
        assert!(!err.contains(&secretish));
        let long_alg = token_with_header(&json!({"alg": "x".repeat(40), "kid": "k1"}));
        assert_eq!(
            signing_key_id(&long_alg).expect_err("refused").to_string(),
            "malformed token header"
        );
    }

    fn verified(service_url: Option<&str>, endorsements: &[&str]) -> VerifiedToken {
        VerifiedToken {
            service_url: service_url.map(str::to_owned),
            endorsements: endorsements.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn service_url_must_match_exactly() {
        let token = verified(Some("https://smba.example/amer/"), &[]);
        assert!(
            token
                .check_activity("https://smba.example/amer/", "msteams")
                .is_ok()
        );
        assert!(
            token
                .check_activity("https://smba.example/amer", "msteams")
                .is_err()
        );
        assert!(
            token
                .check_activity("https://SMBA.example/amer/", "msteams")
                .is_err()
        );
        let missing = verified(None, &[]);
        let err = missing
            .check_activity("https://smba.example/amer/", "msteams")
            .expect_err("no claim");
        assert!(err.to_string().contains("serviceurl"), "{err}");
    }

    #[test]
    fn endorsements_check() {
        let url = "https://smba.example/";
        let teams = verified(Some(url), &["msteams", "webchat"]);
        assert!(teams.check_activity(url, "msteams").is_ok());
        assert!(
            teams.check_activity(url, "").is_ok(),
            "empty channelId passes"
        );
        assert!(teams.check_activity(url, "slack").is_err());
        let unendorsed = verified(Some(url), &[]);
        assert!(unendorsed.check_activity(url, "slack").is_ok());
    }

    #[test]
    fn only_rsa_signature_keys_are_kept() {
        let keys = parse_keys(vec![
            json!({"kty": "RSA", "use": "sig", "kid": "a", "n": "AQAB", "e": "AQAB",
                   "endorsements": ["msteams"]}),
            json!({"kty": "RSA", "kid": "b", "n": "AQAB", "e": "AQAB"}),
            json!({"kty": "RSA", "use": "enc", "kid": "c", "n": "AQAB", "e": "AQAB"}),
            json!({"kty": "EC", "kid": "d", "crv": "P-256", "x": "AA", "y": "AA"}),
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
            json!({"kty": "RSA", "kid": "f", "n": "AQAB", "e": "AQAB", "endorsements": "x"}),
            json!({"kty": "RSA", "kid": "g", "n": "!!", "e": "AQAB"}),
        ]);
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["a", "b"]);
        assert_eq!(keys["a"].endorsements, ["msteams"]);
        assert!(keys["b"].endorsements.is_empty());
    }
}
