//! `POST /api/servicenow/events`: case updates pushed by a ServiceNow Business Rule.
//!
//! Authentication, one of:
//! - HMAC: `X-M365bot-Timestamp: <unix seconds>` and
//!   `X-M365bot-Signature: v1=<HMAC-SHA256 of "{timestamp}.{raw body}">` (hex, or base64 as
//!   ServiceNow's `CertificateEncryption.generateMac` returns it), within a replay window; a
//!   signature is accepted once.
//! - An Entra access token (`Authorization: Bearer`), app-only: signature by the tenant's keys,
//!   issuer, `nbf`/`exp`. With an integration (completed setup or `[integration]`) exactly its
//!   outbound app: its tenant, `appid`/`azp` = the outbound client id, `aud` = that client id
//!   (or `api://` form), the token the Business Rule gets from the outbound OAuth provider.
//!   Without one, the configured tenant, audiences and `appid`/`azp` allow-list.
//!
//! Anything else is 401, a malformed body 400; nothing is stored for a refused request.
//!
//! The body: `{"table": "incident", "record": {<field>: {"value", "display_value"} | "text"},
//! "previous_state": "New", "note": "latest comment"}`, the record in the shape of the Table
//! API with `sysparm_display_value=all`, so push and poll share one mapping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::servicenow::event_from_record;
use super::{Accepted, accept_event, store};
use crate::app::App;
use crate::error::ApiError;
use crate::upstream::entra::Jwks;
use crate::upstream::servicenow::Record;

/// The path of the push endpoint.
pub const PATH: &str = "/api/servicenow/events";
/// Header with the signing time (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-m365bot-timestamp";
/// Header with the signature (`v1=<hex>`).
pub const SIGNATURE_HEADER: &str = "x-m365bot-signature";
/// Key sets are refreshed after this long.
const KEYS_TTL: Duration = Duration::from_secs(24 * 3600);
/// An unknown `kid` refreshes the key set at most this often.
const KEYS_MIN_REFRESH: Duration = Duration::from_secs(300);

/// The push routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route(PATH, post(receive))
}

/// The signature header value for `body` signed at `timestamp` (unix seconds) with `secret`:
/// `v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_message(timestamp, body));
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

fn signed_message(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    message
}

/// The body of a push.
#[derive(Debug, Deserialize)]
pub struct PushPayload {
    /// The table of the record.
    pub table: String,
    /// The record's fields.
    pub record: Map<String, Value>,
    /// The state before the update (display value), when the Business Rule knows it.
    #[serde(default)]
    pub previous_state: Option<String>,
    /// The latest comment or work note, when the update added one.
    #[serde(default)]
    pub note: Option<String>,
}

/// How a push was authenticated.
#[derive(Debug)]
enum Authenticated {
    /// A valid HMAC signature; the claim that blocks its replay.
    Hmac { claim: String, expires_at: i64 },
    /// A valid Entra bearer token of this client id.
    Bearer,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::Unauthorized(message.to_owned())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Longest signature header accepted, in bytes.
pub const MAX_SIGNATURE_HEADER: usize = 1024;
/// Most `v1=` signatures compared per request (the current and the next secret).
pub const MAX_SIGNATURES: usize = 2;

/// Decodes the `v1=` values of a signature header (hex or base64, 32 bytes each): at most
/// [`MAX_SIGNATURES`] of them, in a header of at most [`MAX_SIGNATURE_HEADER`] bytes.
pub fn signature_candidates(value: &str) -> Result<Vec<[u8; 32]>, &'static str> {
    if value.len() > MAX_SIGNATURE_HEADER {
        return Err("the signature header is longer than 1 KiB");
    }
    let mut candidates = Vec::new();
    for text in value
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
    {
        if candidates.len() == MAX_SIGNATURES {
            return Err("the signature header carries more than two v1= signatures");
        }
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        } else {
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        };
        if let Some(tag) = bytes.and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()) {
            candidates.push(tag);
        }
    }
    if candidates.is_empty() {
        return Err("the signature header has no v1= signature of 32 bytes (hex or base64)");
    }
    Ok(candidates)
}

fn verify_hmac(
    app: &App,
    headers: &HeaderMap,
    signature: &str,
    body: &[u8],
) -> Result<Authenticated, ApiError> {
    let settings = &app.settings.notifications.sources.push;
    let Some(secret) = settings
        .hmac_secret
        .as_ref()
        .filter(|secret| !secret.expose_secret().is_empty())
    else {
        return Err(unauthorized(
            "signed pushes are not enabled on this bot (notifications.sources.push.hmac_secret)",
        ));
    };
    // Cheap checks first: a malformed header is refused before any MAC is computed.
    let candidates = signature_candidates(signature).map_err(unauthorized)?;
    let timestamp: i64 = header(headers, TIMESTAMP_HEADER)
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| unauthorized("missing or invalid X-M365bot-Timestamp (unix seconds)"))?;
    let now = chrono::Utc::now().timestamp();
    let window = i64::try_from(settings.window_secs.min(86_400)).unwrap_or(300);
    let distance = now.checked_sub(timestamp).map(i64::unsigned_abs);
    if distance.is_none_or(|distance| distance > window.unsigned_abs()) {
        return Err(unauthorized(
            "the timestamp is outside the replay window; check the ServiceNow clock and resend",
        ));
    }
    // One MAC over the body, compared in constant time with each candidate.
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    let expected = hmac::sign(&key, &signed_message(timestamp, body));
    let valid = candidates.iter().find(|tag| {
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), tag.as_slice()).is_ok()
    });
    let Some(tag) = valid else {
        return Err(unauthorized(
            "the signature does not match: check the shared secret in the Business Rule",
        ));
    };
    let mut hasher = Sha256::new();
    hasher.update(timestamp.to_string().as_bytes());
    hasher.update(b".");
    hasher.update(tag);
    let claim: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Authenticated::Hmac {
        claim,
        expires_at: (timestamp + window + 60).saturating_mul(1000),
    })
}

/// Cached key sets per `(authority, tenant)`.
struct TenantKeys {
    fetched: Instant,
    tenant_id: String,
    jwks: Jwks,
}

fn key_cache() -> &'static Mutex<HashMap<String, Arc<TenantKeys>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<TenantKeys>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn refresh_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

async fn tenant_keys(app: &App, tenant: &str, kid: &str) -> Result<Arc<TenantKeys>, ApiError> {
    let entra = &app.upstreams.entra;
    let cache_key = format!("{}|{tenant}", entra.authority());
    let cached = key_cache()
        .lock()
        .ok()
        .and_then(|cache| cache.get(&cache_key).cloned());
    if let Some(keys) = &cached {
        let fresh = keys.fetched.elapsed() < KEYS_TTL;
        let knows = keys.jwks.find(kid).is_some();
        if fresh && (knows || keys.fetched.elapsed() < KEYS_MIN_REFRESH) {
            return Ok(keys.clone());
        }
    }
    // Single flight: one refresh at a time; whoever waited reuses a refresh made meanwhile,
    // and unknown key ids refetch at most every KEYS_MIN_REFRESH.
    let _refreshing = refresh_lock().lock().await;
    let cached = key_cache()
        .lock()
        .ok()
        .and_then(|cache| cache.get(&cache_key).cloned())
        .or(cached);
    if let Some(keys) = &cached
        && keys.fetched.elapsed() < KEYS_MIN_REFRESH
    {
        return Ok(keys.clone());
    }
    let fetched = async {
        let metadata = entra.openid_configuration(tenant).await?;
        let jwks = entra.jwks(&metadata.jwks_uri).await?;
        Ok::<_, crate::upstream::entra::EntraError>((metadata.tenant_id, jwks))
    }
    .await;
    match fetched {
        Ok((Some(tenant_id), jwks)) => {
            let keys = Arc::new(TenantKeys {
                fetched: Instant::now(),
                tenant_id,
                jwks,
            });
            if let Ok(mut cache) = key_cache().lock() {
                cache.insert(cache_key, keys.clone());
            }
            Ok(keys)
        }
        Ok((None, _)) => Err(ApiError::Unavailable(
            "the bearer tenant's metadata names no tenant id; set notifications.sources.push.bearer_tenant to the tenant".to_owned(),
        )),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the Entra signing keys for pushed bearer tokens");
            match cached {
                Some(keys) => Ok(keys),
                None => Err(ApiError::Unavailable(
                    "the bot cannot read the Entra signing keys right now; retry later".to_owned(),
                )),
            }
        }
    }
}

/// True for an app-only (client-credentials) token: no delegated `scp`, and `idtyp = app`
/// (v2, or v1 with the optional claim) or application `roles`.
pub fn is_app_only(claims: &Value) -> bool {
    let delegated =
        claims.get("scp").is_some() || claims.get("idtyp").and_then(Value::as_str) == Some("user");
    let app = claims.get("idtyp").and_then(Value::as_str) == Some("app")
        || claims
            .get("roles")
            .and_then(Value::as_array)
            .is_some_and(|roles| !roles.is_empty());
    app && !delegated
}

async fn verify_bearer(app: &App, token: &str) -> Result<Authenticated, ApiError> {
    let settings = &app.settings.notifications.sources.push;
    // With an integration, exactly its outbound app may push (the Business Rule asks the
    // outbound OAuth provider for a token whose resource is that app); otherwise the
    // configured audiences and allow-list.
    let (tenant, audiences, allowed_apps) = match app.runtime.push_identity() {
        Some(outbound) => {
            let mut audiences = vec![
                outbound.client_id.clone(),
                format!("api://{}", outbound.client_id),
            ];
            audiences.extend(settings.bearer_audiences.iter().cloned());
            (outbound.tenant, audiences, vec![outbound.client_id])
        }
        None => {
            if settings.bearer_audiences.is_empty() || settings.bearer_allowed_app_ids.is_empty() {
                return Err(unauthorized(
                    "bearer tokens are not enabled on this bot (no integration is set up, and notifications.sources.push.bearer_audiences and bearer_allowed_app_ids are empty)",
                ));
            }
            let tenant = settings
                .bearer_tenant
                .clone()
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| app.settings.bot.tenant_id.clone());
            (
                tenant,
                settings.bearer_audiences.clone(),
                settings.bearer_allowed_app_ids.clone(),
            )
        }
    };
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| unauthorized("the bearer token is not a JWT"))?;
    if header.alg != Algorithm::RS256 {
        return Err(unauthorized("the bearer token is not signed with RS256"));
    }
    let kid = header
        .kid
        .ok_or_else(|| unauthorized("the bearer token names no signing key"))?;
    let keys = tenant_keys(app, &tenant, &kid).await?;
    let jwk = keys
        .jwks
        .find(&kid)
        .ok_or_else(|| unauthorized("the bearer token is not signed by the tenant's keys"))?;
    let decoding = jwk
        .decoding_key()
        .map_err(|_| unauthorized("the tenant's signing key is unusable"))?;
    let authority = app
        .upstreams
        .entra
        .authority()
        .as_str()
        .trim_end_matches('/');
    let issuers = [
        format!("https://sts.windows.net/{}/", keys.tenant_id),
        format!("{authority}/{}/v2.0", keys.tenant_id),
    ];
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&audiences);
    validation.set_issuer(&issuers);
    validation.leeway = 300;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss"]);
    let data = jsonwebtoken::decode::<Value>(token, &decoding, &validation).map_err(|_| {
        unauthorized("the bearer token is invalid, expired or for another audience")
    })?;
    let claims = data.claims;
    let tid = claims
        .get("tid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !tid.eq_ignore_ascii_case(&keys.tenant_id) {
        return Err(unauthorized("the bearer token is from another tenant"));
    }
    if !is_app_only(&claims) {
        return Err(unauthorized(
            "the bearer token was issued to a user (delegated); push with the outbound app's own client-credentials token",
        ));
    }
    let client = claims
        .get("appid")
        .or_else(|| claims.get("azp"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let allowed = allowed_apps
        .iter()
        .any(|id| id.eq_ignore_ascii_case(client));
    if !allowed {
        return Err(unauthorized(
            "the bearer token's client (appid/azp) is not allowed to push events",
        ));
    }
    Ok(Authenticated::Bearer)
}

async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Authenticated, ApiError> {
    if let Some(signature) = header(headers, SIGNATURE_HEADER) {
        return verify_hmac(app, headers, signature, body);
    }
    if let Some(token) = header(headers, "authorization").and_then(|value| {
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
    }) {
        return verify_bearer(app, token.trim()).await;
    }
    Err(unauthorized(
        "missing credentials: sign the body (X-M365bot-Timestamp and X-M365bot-Signature) or send an Entra bearer token",
    ))
}

fn parse_payload(body: &[u8]) -> Result<PushPayload, ApiError> {
    serde_json::from_slice::<PushPayload>(body).map_err(|err| {
        let what = if err.is_data() {
            "the body does not have the expected shape: {\"table\", \"record\": {…}}"
        } else {
            "the body is not JSON"
        };
        ApiError::BadRequest(what.to_owned())
    })
}

async fn receive(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let sources = &app.settings.notifications.sources;
    if body.len() > sources.push.max_body_bytes {
        return Err(ApiError::PayloadTooLarge);
    }
    let auth = authenticate(&app, &headers, &body).await?;
    let payload = parse_payload(&body)?;
    let settings = &sources.servicenow;
    if payload.table != settings.table {
        return Err(ApiError::BadRequest(format!(
            "table {:?} is not the configured case table {:?}",
            crate::upstream::excerpt(payload.table.as_bytes(), 80),
            settings.table
        )));
    }
    let record = Record(payload.record);
    let instance = app.settings.servicenow.instance_url.as_ref();
    let (mut event, order) = event_from_record(settings, instance, &record, payload.note)
        .map_err(|err| ApiError::BadRequest(err.0))?;
    event.previous_state = payload
        .previous_state
        .map(|state| state.trim().to_owned())
        .filter(|state| !state.is_empty());
    let mirror = super::is_mirror_record(&app, &record)
        .await
        .map_err(unavailable)?;
    if let Authenticated::Hmac { claim, expires_at } = &auth {
        let fresh = store::claim_replay(&app.db, claim, *expires_at)
            .await
            .map_err(unavailable)?;
        if !fresh {
            return Err(unauthorized(
                "this signed request was received before (replay)",
            ));
        }
    }
    if mirror {
        return Ok(Json(
            json!({"status": "ignored", "reason": "service-health mirror"}),
        ));
    }
    let case_key = event.case_key.clone();
    match accept_event(&app, event, order).await {
        Ok(accepted) => {
            let status = match accepted {
                Accepted::Recorded(outcome) if outcome.new => "recorded",
                Accepted::Recorded(_) => "duplicate",
                Accepted::Stale => "stale",
            };
            tracing::info!(case_key = %case_key, status, "pushed case event");
            Ok(Json(json!({"status": status, "case_key": case_key})))
        }
        Err(err) => {
            if let Authenticated::Hmac { claim, .. } = &auth {
                let _ = store::release_replay(&app.db, claim).await;
            }
            Err(unavailable(err))
        }
    }
}

fn unavailable(err: sqlx::Error) -> ApiError {
    tracing::error!(error = %err, "a pushed case event could not be stored");
    ApiError::Unavailable("the event could not be stored; retry later".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_or_base64_of_32_bytes() {
        let header = sign(b"secret", 1_700_000_000, b"{}");
        assert!(header.starts_with("v1=") && header.len() == 67, "{header}");
        let hex_tag = signature_candidates(&header).expect("one signature");
        assert_eq!(hex_tag.len(), 1);
        let b64 = base64::engine::general_purpose::STANDARD.encode(hex_tag[0]);
        assert_eq!(
            signature_candidates(&format!("v1={b64}")),
            Ok(hex_tag.clone())
        );
        assert!(signature_candidates("v1=zz").is_err());
        assert!(signature_candidates("v0=abcd").is_err());
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        assert!(hmac::verify(&key, &signed_message(1_700_000_000, b"{}"), &hex_tag[0]).is_ok());
        assert!(hmac::verify(&key, &signed_message(1_700_000_001, b"{}"), &hex_tag[0]).is_err());
    }

    #[test]
    fn signature_headers_are_bounded() {
        let one = sign(b"secret", 1_700_000_000, b"{}");
        let two = format!("{one},{one}");
        assert_eq!(signature_candidates(&two).map(|c| c.len()), Ok(2));
        // A third candidate, or a header over 1 KiB, is refused before any MAC is computed.
        assert!(signature_candidates(&format!("{two},{one}")).is_err());
        let padded = format!("{one},{}", "x".repeat(MAX_SIGNATURE_HEADER));
        assert!(signature_candidates(&padded).is_err());
        let many = vec!["v1=zz"; 200].join(",");
        assert!(signature_candidates(&many).is_err());
    }
}
