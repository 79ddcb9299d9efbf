//! Inbound Bot Framework token validation (channel → bot).
//!
//! Every request to `/api/messages` carries `Authorization: Bearer <JWT>` signed by the Bot
//! Framework. The token is checked in this order: header shape, algorithm (RS256/384/512 only,
//! before any key lookup), key id, signature, then the claims (required `exp`, `iss` and `aud`;
//! lifetime with clock skew; issuer; audience); then, once the body is parsed, the `serviceurl`
//! claim and the signing key's endorsements ([`VerifiedToken::check_activity`]). The claim rules
//! and the reasons given are those `jsonwebtoken::Validation` applied when this module used it;
//! the claims are read from the payload without building a JSON tree.
//!
//! Signing keys come from the OpenID metadata document's `jwks_uri`. Only RSA keys are kept, each
//! imported once per fetch into prepared `aws-lc-rs` public keys (one per accepted algorithm), so
//! a request pays for the signature check only. The set is refreshed in the background after
//! 24 h, and at most once an hour when a token names an unknown `kid`. Concurrent requests that
//! miss share one refresh. Nothing here logs above debug, and the token text never reaches a log
//! line or an error message.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
    RSA_PKCS1_2048_8192_SHA512, RsaParameters, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use url::Url;

use crate::config::BotSettings;

/// The only signing algorithms accepted (the botbuilder allow-list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
}

impl Alg {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "RS384" => Some(Self::Rs384),
            "RS512" => Some(Self::Rs512),
            _ => None,
        }
    }

    /// The verification parameters (those `jsonwebtoken` uses: 2048 to 8192-bit keys).
    fn parameters(self) -> &'static RsaParameters {
        match self {
            Self::Rs256 => &RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &RSA_PKCS1_2048_8192_SHA512,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Rs256 => 0,
            Self::Rs384 => 1,
            Self::Rs512 => 2,
        }
    }
}

/// Every accepted algorithm, in [`Alg::index`] order.
const ALLOWED_ALGORITHMS: [Alg; 3] = [Alg::Rs256, Alg::Rs384, Alg::Rs512];
/// Decoded header or signature bytes kept on the stack; longer parts are decoded to the heap.
const STACK_PART_BYTES: usize = 1024;
/// Decoded payload bytes kept on the stack (Bot Framework payloads are under 1 KB).
const STACK_PAYLOAD_BYTES: usize = 4096;
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
    /// Endorsements of the key that signed the token (shared with the cached key).
    pub endorsements: Arc<[String]>,
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

/// One signing key, imported once per fetch.
struct SigningKey {
    /// The key prepared for each algorithm in [`ALLOWED_ALGORITHMS`] order; `None` when the
    /// components do not make an RSA key (every token signed with it then fails the signature
    /// check, as it did when the key was imported per request).
    prepared: Option<[ParsedPublicKey; 3]>,
    endorsements: Arc<[String]>,
}

impl SigningKey {
    /// Prepares the key from its big-endian modulus and exponent.
    fn new(n: &[u8], e: &[u8], endorsements: Vec<String>) -> Self {
        let components = RsaPublicKeyComponents { n, e };
        let prepared = match ALLOWED_ALGORITHMS
            .map(|alg| components.to_parsed_public_key(alg.parameters()).ok())
        {
            [Some(rs256), Some(rs384), Some(rs512)] => Some([rs256, rs384, rs512]),
            _ => None,
        };
        Self {
            prepared,
            endorsements: endorsements.into(),
        }
    }

    /// Whether `signature` is a valid `alg` signature of `message` by this key.
    fn verifies(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        self.prepared
            .as_ref()
            .is_some_and(|keys| keys[alg.index()].verify_sig(message, signature).is_ok())
    }
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

/// The claim rules (those of `jsonwebtoken::Validation` as this module configured it before).
struct ClaimRules {
    issuer: String,
    audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    leeway: u64,
}

struct Inner {
    metadata_url: Url,
    http: reqwest::Client,
    rules: ClaimRules,
    keys: RwLock<Option<Arc<KeySet>>>,
    refresh: Mutex<RefreshState>,
    background_refresh_running: AtomicBool,
}

/// Validates inbound tokens against the configured OpenID metadata, caching the keys.
pub struct BotAuthenticator {
    inner: Arc<Inner>,
}

impl BotAuthenticator {
    /// Creates the validator; keys are fetched on first use.
    pub fn new(settings: &BotSettings, http: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                metadata_url: settings.openid_metadata_url.clone(),
                http,
                rules: ClaimRules {
                    issuer: settings.token_issuer.clone(),
                    audience: settings.app_id.clone(),
                    leeway: settings.clock_skew_secs,
                },
                keys: RwLock::new(None),
                refresh: Mutex::new(RefreshState::default()),
                background_refresh_running: AtomicBool::new(false),
            }),
        }
    }

    /// Validates the `Authorization` header value.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<VerifiedToken, AuthError> {
        let token = bearer_token(authorization)?;
        let (alg, kid) = read_header(token)?;
        let signing_key = self.inner.signing_key(&kid).await?;
        let service_url = check_token(token, alg, &signing_key, &self.inner.rules, unix_now())
            .map_err(|reason| {
                tracing::debug!(reason, "bot token refused");
                rejected(reason)
            })?;
        Ok(VerifiedToken {
            service_url,
            endorsements: signing_key.endorsements.clone(),
        })
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

/// The JOSE header members read; any others are ignored.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
}

/// Reads the header: the algorithm must be allowed (checked before any key lookup) and a `kid`
/// present. Returns the algorithm and the key id.
fn read_header(token: &str) -> Result<(Alg, String), AuthError> {
    let malformed = || rejected("malformed token header");
    let encoded = token.split('.').next().unwrap_or_default();
    let mut buffer = [0u8; STACK_PART_BYTES];
    let bytes = decode_part(encoded, &mut buffer).ok_or_else(malformed)?;
    let header: RawHeader<'_> = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    let Some(alg) = Alg::from_name(&header.alg) else {
        let name = &header.alg;
        let printable =
            !name.is_empty() && name.len() <= 16 && name.chars().all(|c| c.is_ascii_alphanumeric());
        return Err(if printable {
            AuthError::Rejected(format!("unsupported token algorithm {name}"))
        } else {
            malformed()
        });
    };
    let kid = header
        .kid
        .filter(|kid| !kid.is_empty())
        .ok_or_else(|| rejected("the token names no signing key (kid)"))?;
    Ok((alg, kid.into_owned()))
}

/// Decodes one base64url (unpadded) token part, on the stack when it fits in `buffer`.
fn decode_part<'b>(encoded: &str, buffer: &'b mut [u8]) -> Option<Cow<'b, [u8]>> {
    match URL_SAFE_NO_PAD.decode_slice(encoded, buffer) {
        Ok(len) => buffer.get(..len).map(Cow::Borrowed),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            URL_SAFE_NO_PAD.decode(encoded).ok().map(Cow::Owned)
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => None,
    }
}

/// Checks the signature, then the claims, of a token whose header was read; returns the
/// `serviceurl` claim, or the reason for refusing the token. The order and the reasons are
/// those of `jsonwebtoken::decode` with the rules this module used to give it.
fn check_token(
    token: &str,
    alg: Alg,
    key: &SigningKey,
    rules: &ClaimRules,
    now: u64,
) -> Result<Option<String>, &'static str> {
    const MALFORMED: &str = "malformed token";
    let (message, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
    let (_, payload) = message.split_once('.').ok_or(MALFORMED)?;
    let mut signature_buffer = [0u8; STACK_PART_BYTES];
    let signature = decode_part(signature, &mut signature_buffer).ok_or(MALFORMED)?;
    if !key.verifies(alg, message.as_bytes(), &signature) {
        return Err("invalid token signature");
    }
    let mut payload_buffer = [0u8; STACK_PAYLOAD_BYTES];
    let payload = decode_part(payload, &mut payload_buffer).ok_or(MALFORMED)?;
    check_claims(&payload, rules, now)
}

/// The registered claims as they appear in the payload; duplicates are refused and unknown
/// members are skipped (but must be valid JSON).
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(default, borrow, deserialize_with = "raw_member")]
    exp: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_member")]
    nbf: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_member")]
    iss: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_member")]
    aud: Option<&'a RawValue>,
    /// Not checked; read so that a duplicate `sub` is refused, as `jsonwebtoken` did.
    #[serde(default, borrow, rename = "sub", deserialize_with = "raw_member")]
    _sub: Option<&'a RawValue>,
    #[serde(default, borrow)]
    serviceurl: Option<Cow<'a, str>>,
}

/// A present member, `null` included (`Option`'s own impl would read `null` as absent).
fn raw_member<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A claim as `jsonwebtoken` sees it: absent, unreadable, or read.
#[derive(Debug, PartialEq, Eq)]
enum Claim<T> {
    Absent,
    Unreadable,
    Read(T),
}

impl<T> Claim<T> {
    fn read<'a>(raw: Option<&'a RawValue>, parse: impl FnOnce(&'a str) -> Option<T>) -> Self {
        match raw {
            None => Self::Absent,
            Some(raw) => parse(raw.get()).map_or(Self::Unreadable, Self::Read),
        }
    }

    fn is_read(&self) -> bool {
        matches!(self, Self::Read(_))
    }
}

/// Validates the decoded payload against `rules` at time `now`; returns the `serviceurl` claim.
fn check_claims(
    payload: &[u8],
    rules: &ClaimRules,
    now: u64,
) -> Result<Option<String>, &'static str> {
    const MALFORMED: &str = "malformed token";
    // The claims set must be a JSON object (serde would also read a struct from an array).
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(MALFORMED);
    }
    let claims: RawClaims<'_> = serde_json::from_slice(payload).map_err(|_| MALFORMED)?;
    let exp = Claim::read(claims.exp, parse_numeric_date);
    let nbf = Claim::read(claims.nbf, parse_numeric_date);
    let iss = Claim::read(claims.iss, parse_string_or_strings);
    let aud = Claim::read(claims.aud, parse_string_or_strings);
    // Required claims, in this order.
    if !exp.is_read() {
        return Err("the token has no exp claim");
    }
    if !iss.is_read() {
        return Err("the token has no iss claim");
    }
    if !aud.is_read() {
        return Err("the token has no aud claim");
    }
    if nbf == Claim::Unreadable {
        return Err(MALFORMED);
    }
    if matches!(exp, Claim::Read(exp) if exp < now.saturating_sub(rules.leeway)) {
        return Err("the token has expired");
    }
    if matches!(nbf, Claim::Read(nbf) if nbf > now.saturating_add(rules.leeway)) {
        return Err("the token is not valid yet (nbf)");
    }
    if matches!(&iss, Claim::Read(values) if !values.iter().any(|v| *v == rules.issuer)) {
        return Err("wrong token issuer");
    }
    if matches!(&aud, Claim::Read(values) if !values.iter().any(|v| *v == rules.audience)) {
        return Err("wrong token audience");
    }
    Ok(claims.serviceurl.map(Cow::into_owned))
}

/// A NumericDate as `jsonwebtoken` reads it: a non-negative integer, or a non-negative finite
/// number rounded to the nearest second.
fn parse_numeric_date(text: &str) -> Option<u64> {
    struct NumericDate;
    impl Visitor<'_> for NumericDate {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a NumericDate")
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
            if value.is_finite() && value >= 0.0 && value < u64::MAX as f64 {
                Ok(value.round() as u64)
            } else {
                Err(E::custom("out of range"))
            }
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.deserialize_any(NumericDate).ok()
}

/// `iss` or `aud`: one string, or an array of strings.
fn parse_string_or_strings(text: &str) -> Option<Vec<Cow<'_, str>>> {
    struct StringOrStrings;
    impl<'de> Visitor<'de> for StringOrStrings {
        type Value = Vec<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }
        fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
            Ok(vec![Cow::Borrowed(value)])
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(vec![Cow::Owned(value.to_owned())])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut values = Vec::new();
            while let Some(value) = seq.next_element::<Cow<'de, str>>()? {
                values.push(value);
            }
            Ok(values)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.deserialize_any(StringOrStrings).ok()
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
            let n = URL_SAFE_NO_PAD.decode(jwk.n.as_deref()?).ok()?;
            let e = URL_SAFE_NO_PAD.decode(jwk.e.as_deref()?).ok()?;
            let signing_key = SigningKey::new(&n, &e, jwk.endorsements.unwrap_or_default());
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
        let (alg, kid) = read_header(&ok).expect("allowed");
        assert_eq!((alg, kid.as_str()), (Alg::Rs384, "k1"));
        for alg in ["HS256", "ES256", "PS256", "none"] {
            let token = token_with_header(&json!({"alg": alg, "kid": "k1"}));
            let err = read_header(&token).expect_err(alg).to_string();
            assert!(err.contains("unsupported token algorithm"), "{alg}: {err}");
            assert!(err.contains(alg), "{alg}: {err}");
        }
        let no_kid = token_with_header(&json!({"alg": "RS256"}));
        assert!(
            read_header(&no_kid)
                .expect_err("no kid")
                .to_string()
                .contains("kid")
        );
        let err = read_header("bm90IGpzb24.e30.c2ln").expect_err("garbage");
        assert_eq!(err.to_string(), "malformed token header");
    }

    #[test]
    fn error_texts_never_echo_the_token() {
        let secretish = token_with_header(&json!({"alg": "HS256", "kid": "k1"}));
        let err = read_header(&secretish).expect_err("refused").to_string();
        assert!(!err.contains(&secretish));
        let long_alg = token_with_header(&json!({"alg": "x".repeat(40), "kid": "k1"}));
        assert_eq!(
            read_header(&long_alg).expect_err("refused").to_string(),
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

    const ISSUER: &str = "https://api.botframework.com";
    const AUDIENCE: &str = "app-id";
    const NOW: u64 = 1_700_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            leeway: 300,
        }
    }

    fn good_claims() -> Value {
        json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 600, "nbf": NOW - 60,
               "serviceurl": "https://smba.example/amer/"})
    }

    fn claims_result(claims: &Value) -> Result<Option<String>, &'static str> {
        check_claims(claims.to_string().as_bytes(), &rules(), NOW)
    }

    /// The fixture key pair: (prepared public key, private key for signing).
    fn fixture_key() -> (SigningKey, jsonwebtoken::EncodingKey) {
        let jwks: Value = serde_json::from_str(include_str!("../../tests/fixtures/test-jwks.json"))
            .expect("jwks");
        let decode = |member: &str| {
            URL_SAFE_NO_PAD
                .decode(jwks["test"][member].as_str().expect("member"))
                .expect("base64")
        };
        let key = SigningKey::new(&decode("n"), &decode("e"), vec!["msteams".to_owned()]);
        let private = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!(
            "../../tests/fixtures/test-signing-key.pem"
        ))
        .expect("pem");
        (key, private)
    }

    fn sign(
        alg: jsonwebtoken::Algorithm,
        claims: &Value,
        private: &jsonwebtoken::EncodingKey,
    ) -> String {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some("test-key-1".to_owned());
        jsonwebtoken::encode(&header, claims, private).expect("signs")
    }

    #[test]
    fn prepared_keys_verify_every_allowed_algorithm() {
        let (key, private) = fixture_key();
        assert!(key.prepared.is_some());
        for (alg, jwt_alg) in [
            (Alg::Rs256, jsonwebtoken::Algorithm::RS256),
            (Alg::Rs384, jsonwebtoken::Algorithm::RS384),
            (Alg::Rs512, jsonwebtoken::Algorithm::RS512),
        ] {
            let token = sign(jwt_alg, &good_claims(), &private);
            assert_eq!(read_header(&token).expect("header").0, alg);
            assert_eq!(
                check_token(&token, alg, &key, &rules(), NOW),
                Ok(Some("https://smba.example/amer/".to_owned())),
                "{alg:?}"
            );
            // The header says one algorithm; verifying as another fails.
            let other = if alg == Alg::Rs256 {
                Alg::Rs512
            } else {
                Alg::Rs256
            };
            assert_eq!(
                check_token(&token, other, &key, &rules(), NOW),
                Err("invalid token signature")
            );
        }
    }

    #[test]
    fn signature_is_checked_before_the_claims() {
        let (key, private) = fixture_key();
        let expired = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW - 3600});
        let token = sign(jsonwebtoken::Algorithm::RS256, &expired, &private);
        assert_eq!(
            check_token(&token, Alg::Rs256, &key, &rules(), NOW),
            Err("the token has expired")
        );
        let (message, _) = token.rsplit_once('.').expect("parts");
        let forged = format!("{message}.{}", URL_SAFE_NO_PAD.encode([7u8; 256]));
        assert_eq!(
            check_token(&forged, Alg::Rs256, &key, &rules(), NOW),
            Err("invalid token signature")
        );
        // Claims swapped under a valid signature.
        let good = sign(jsonwebtoken::Algorithm::RS256, &good_claims(), &private);
        let mut parts: Vec<&str> = good.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(expired.to_string());
        parts[1] = &payload;
        assert_eq!(
            check_token(&parts.join("."), Alg::Rs256, &key, &rules(), NOW),
            Err("invalid token signature")
        );
    }

    #[test]
    fn an_unusable_key_fails_the_signature_check() {
        let (_, private) = fixture_key();
        let key = SigningKey::new(&[], &[1, 0, 1], Vec::new());
        assert!(key.prepared.is_none());
        let token = sign(jsonwebtoken::Algorithm::RS256, &good_claims(), &private);
        assert_eq!(
            check_token(&token, Alg::Rs256, &key, &rules(), NOW),
            Err("invalid token signature")
        );
    }

    #[test]
    fn bad_base64_and_wrong_part_counts_are_malformed() {
        let (key, private) = fixture_key();
        let token = sign(jsonwebtoken::Algorithm::RS256, &good_claims(), &private);
        let (message, _) = token.rsplit_once('.').expect("parts");
        for bad in [
            format!("{message}.!!!"),
            format!("{message}.c2ln="),
            "onlyonepart".to_owned(),
            "two.parts".to_owned(),
        ] {
            assert_eq!(
                check_token(&bad, Alg::Rs256, &key, &rules(), NOW),
                Err("malformed token"),
                "{bad}"
            );
        }
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k"}"#);
        for bad in [
            format!("*{header}.e30.c2ln"),
            format!("{header}=.e30.c2ln"),
            ".e30.c2ln".to_owned(),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(r#"{"kid":"k"}"#)),
            format!(
                "{}.e30.c2ln",
                URL_SAFE_NO_PAD.encode(r#"{"alg":5,"kid":"k"}"#)
            ),
        ] {
            assert_eq!(
                read_header(&bad).expect_err(&bad).to_string(),
                "malformed token header",
                "{bad}"
            );
        }
        // A header longer than the stack buffer still decodes.
        let long = URL_SAFE_NO_PAD.encode(
            json!({"alg": "RS256", "kid": "k", "x5c": ["A".repeat(3 * STACK_PART_BYTES)]})
                .to_string(),
        );
        let (alg, kid) = read_header(&format!("{long}.e30.c2ln")).expect("long header");
        assert_eq!((alg, kid.as_str()), (Alg::Rs256, "k"));
    }

    #[test]
    fn payload_must_be_a_json_object() {
        for payload in [
            "[]",
            "[1,2]",
            "\"text\"",
            "42",
            "null",
            "",
            "{",
            "{} {}",
            "{\"exp\":}",
        ] {
            assert_eq!(
                check_claims(payload.as_bytes(), &rules(), NOW),
                Err("malformed token"),
                "{payload}"
            );
        }
        assert_eq!(
            check_claims(b"  \n{\"x\": 1}", &rules(), NOW),
            Err("the token has no exp claim")
        );
    }

    #[test]
    fn good_claims_pass_and_return_the_service_url() {
        assert_eq!(
            claims_result(&good_claims()),
            Ok(Some("https://smba.example/amer/".to_owned()))
        );
        let mut no_url = good_claims();
        no_url["serviceurl"] = Value::Null;
        assert_eq!(claims_result(&no_url), Ok(None));
        let escaped = br#"{"iss":"https:\/\/api.botframework.com","aud":"app-id","exp":1700000600,"serviceurl":"https:\/\/x\/"}"#;
        assert_eq!(
            check_claims(escaped, &rules(), NOW),
            Ok(Some("https://x/".to_owned()))
        );
    }

    #[test]
    fn exp_must_be_a_number() {
        for exp in [
            json!("1700000600"),
            json!(null),
            json!(-1),
            json!(-1.5),
            json!([1]),
            json!({"a": 1}),
            json!(true),
        ] {
            let mut claims = good_claims();
            claims["exp"] = exp.clone();
            assert_eq!(
                claims_result(&claims),
                Err("the token has no exp claim"),
                "{exp}"
            );
        }
        let mut missing = good_claims();
        missing.as_object_mut().expect("object").remove("exp");
        assert_eq!(claims_result(&missing), Err("the token has no exp claim"));
        let mut float = good_claims();
        float["exp"] = json!(1_700_000_600.4);
        assert!(claims_result(&float).is_ok());
    }

    #[test]
    fn lifetime_uses_the_leeway() {
        let with = |exp: u64, nbf: Value| {
            let mut claims = good_claims();
            claims["exp"] = json!(exp);
            claims["nbf"] = nbf;
            claims_result(&claims)
        };
        assert!(with(NOW - 299, json!(NOW)).is_ok());
        assert!(with(NOW - 300, json!(NOW)).is_ok());
        assert_eq!(with(NOW - 301, json!(NOW)), Err("the token has expired"));
        assert!(with(NOW + 600, json!(NOW + 300)).is_ok());
        assert_eq!(
            with(NOW + 600, json!(NOW + 301)),
            Err("the token is not valid yet (nbf)")
        );
        // A present but unreadable nbf is refused, not ignored.
        assert_eq!(with(NOW + 600, json!("soon")), Err("malformed token"));
        assert_eq!(with(NOW + 600, Value::Null), Err("malformed token"));
        // The nbf format is checked before the lifetime.
        assert_eq!(with(NOW - 3600, json!("soon")), Err("malformed token"));
    }

    #[test]
    fn issuer_and_audience_accept_a_string_or_an_array() {
        let with = |member: &str, value: Value| {
            let mut claims = good_claims();
            claims[member] = value;
            claims_result(&claims)
        };
        assert!(with("aud", json!([AUDIENCE])).is_ok());
        assert!(with("aud", json!(["other", AUDIENCE])).is_ok());
        assert_eq!(with("aud", json!(["other"])), Err("wrong token audience"));
        assert_eq!(with("aud", json!([])), Err("wrong token audience"));
        assert_eq!(with("aud", json!("other")), Err("wrong token audience"));
        assert_eq!(
            with("aud", json!([AUDIENCE, 5])),
            Err("the token has no aud claim")
        );
        assert_eq!(with("aud", json!(5)), Err("the token has no aud claim"));
        assert_eq!(with("aud", Value::Null), Err("the token has no aud claim"));
        assert!(with("iss", json!([ISSUER])).is_ok());
        assert_eq!(
            with("iss", json!("https://evil.example")),
            Err("wrong token issuer")
        );
        assert_eq!(
            with("iss", json!({"a": ISSUER})),
            Err("the token has no iss claim")
        );
        // Issuer is checked before audience.
        let mut both = good_claims();
        both["iss"] = json!("x");
        both["aud"] = json!("y");
        assert_eq!(claims_result(&both), Err("wrong token issuer"));
    }

    #[test]
    fn duplicate_or_mistyped_members_are_malformed() {
        let duplicate = format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"exp":{}}}"#,
            NOW + 600,
            NOW + 600
        );
        assert_eq!(
            check_claims(duplicate.as_bytes(), &rules(), NOW),
            Err("malformed token")
        );
        let duplicate_sub = format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"sub":"a","sub":"b"}}"#,
            NOW + 600
        );
        assert_eq!(
            check_claims(duplicate_sub.as_bytes(), &rules(), NOW),
            Err("malformed token")
        );
        let mut mistyped = good_claims();
        mistyped["serviceurl"] = json!(5);
        assert_eq!(claims_result(&mistyped), Err("malformed token"));
        let mut extra = good_claims();
        extra["sub"] = json!(5);
        extra["other"] = json!({"nested": [1, 2, {"x": null}]});
        assert!(claims_result(&extra).is_ok());
    }

    /// The reason the former `jsonwebtoken::decode` path gave for `token`.
    fn jsonwebtoken_reason(token: &str) -> Result<Option<String>, String> {
        use jsonwebtoken::errors::ErrorKind;
        #[derive(Deserialize)]
        struct Claims {
            #[serde(default)]
            serviceurl: Option<String>,
        }
        let jwks: Value = serde_json::from_str(include_str!("../../tests/fixtures/test-jwks.json"))
            .expect("jwks");
        let key = jsonwebtoken::DecodingKey::from_rsa_components(
            jwks["test"]["n"].as_str().expect("n"),
            jwks["test"]["e"].as_str().expect("e"),
        )
        .expect("key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.algorithms = vec![
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::RS384,
            jsonwebtoken::Algorithm::RS512,
        ];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 300;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims.serviceurl)
            .map_err(|err| match err.kind() {
                ErrorKind::InvalidSignature => "invalid token signature".to_owned(),
                ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidIssuer => "wrong token issuer".to_owned(),
                ErrorKind::InvalidAudience => "wrong token audience".to_owned(),
                ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
                _ => "malformed token".to_owned(),
            })
    }

    #[test]
    fn same_verdicts_as_jsonwebtoken() {
        let (key, private) = fixture_key();
        let now = unix_now();
        let base = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "nbf": now - 60,
                          "serviceurl": "https://smba.example/"});
        let variants: Vec<(&str, Value)> = vec![
            ("exp", json!(now - 299)),
            ("exp", json!(now - 400)),
            ("exp", json!((now + 600) as f64 + 0.4)),
            ("exp", json!(format!("{}", now + 600))),
            ("exp", Value::Null),
            ("exp", json!(-5)),
            ("exp", json!(1e30)),
            ("nbf", json!(now + 200)),
            ("nbf", json!(now + 400)),
            ("nbf", json!("later")),
            ("nbf", Value::Null),
            ("nbf", json!(-5)),
            ("iss", json!("https://evil.example")),
            ("iss", json!([ISSUER, "x"])),
            ("iss", json!([])),
            ("iss", json!(7)),
            ("iss", Value::Null),
            ("aud", json!([AUDIENCE])),
            ("aud", json!(["a", "b"])),
            ("aud", json!([AUDIENCE, 1])),
            ("aud", json!({"x": AUDIENCE})),
            ("aud", json!("other")),
            ("serviceurl", Value::Null),
            ("serviceurl", json!(["x"])),
            ("sub", json!(5)),
            ("sub", json!("user")),
            ("extra", json!({"deep": [1, {"a": null}]})),
        ];
        let mut cases: Vec<Value> = variants
            .into_iter()
            .map(|(member, value)| {
                let mut claims = base.clone();
                claims[member] = value;
                claims
            })
            .collect();
        for member in ["exp", "iss", "aud", "nbf", "serviceurl"] {
            let mut claims = base.clone();
            claims.as_object_mut().expect("object").remove(member);
            cases.push(claims);
        }
        cases.push(base.clone());
        for claims in &cases {
            for jwt_alg in [
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::RS512,
            ] {
                let token = sign(jwt_alg, claims, &private);
                let (alg, _) = read_header(&token).expect("header");
                let ours =
                    check_token(&token, alg, &key, &rules(), unix_now()).map_err(str::to_owned);
                assert_eq!(ours, jsonwebtoken_reason(&token), "{claims}");
            }
        }
        // Tampering and broken encodings.
        let token = sign(jsonwebtoken::Algorithm::RS256, &base, &private);
        let (message, signature) = token.rsplit_once('.').expect("parts");
        for bad in [
            format!("{message}.{}", &signature[1..]),
            format!("{message}.{signature}A"),
            format!("{message}.!{signature}"),
            format!("{message}x.{signature}"),
        ] {
            let ours =
                check_token(&bad, Alg::Rs256, &key, &rules(), unix_now()).map_err(str::to_owned);
            assert_eq!(ours, jsonwebtoken_reason(&bad), "{bad}");
        }
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
        assert_eq!(*keys["a"].endorsements, ["msteams"]);
        assert!(keys["b"].endorsements.is_empty());
    }
}
