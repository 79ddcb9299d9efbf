//! Validation of the ID token of an account-linking sign-in: signature against the tenant's
//! keys (v2 metadata → `jwks_uri`), audience = the sign-in app, lifetime, `tid` = the configured
//! tenant, issuer = the tenant's v2 issuer, nonce = the one sent.

use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use url::Url;

use crate::upstream::entra::EntraClient;

/// Clock skew allowed on `exp` / `nbf`, in seconds.
const LEEWAY_SECS: u64 = 300;

/// The claims of a validated ID token the bot uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// Object id of the signed-in account.
    pub oid: String,
    /// Its tenant.
    pub tid: String,
    /// `preferred_username` (the UPN), or `email`, or `upn`.
    pub username: String,
    /// Display name.
    pub name: Option<String>,
    /// The `email` claim, when the token carries one.
    pub email: Option<String>,
    /// The UPN: `preferred_username`, else the `upn` claim.
    pub upn: Option<String>,
}

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// The tenant's metadata or keys could not be read.
    #[error("the tenant's sign-in keys could not be read: {0}")]
    Keys(String),
    /// Signature, algorithm, audience or lifetime.
    #[error("the ID token is not valid: {0}")]
    Invalid(String),
    /// Issued for another tenant.
    #[error("the account belongs to another tenant ({actual})")]
    WrongTenant {
        /// The token's `tid`.
        actual: String,
    },
    /// The nonce does not match the sign-in the bot started.
    #[error("the ID token answers another sign-in (nonce mismatch)")]
    Nonce,
}

/// Validates `id_token` for `client_id` in `tenant` with `nonce`. `tenant` may be a domain or
/// an id; the expected `tid` and issuer come from the tenant's v2 metadata.
pub async fn validate_id_token(
    entra: &EntraClient,
    tenant: &str,
    client_id: &str,
    id_token: &str,
    nonce: &str,
) -> Result<IdClaims, TokenProblem> {
    let metadata = entra
        .openid_configuration_v2(tenant)
        .await
        .map_err(|e| TokenProblem::Keys(e.to_string()))?;
    let expected_tid = metadata
        .tenant_id
        .clone()
        .ok_or_else(|| TokenProblem::Keys("the tenant's metadata names no tenant id".to_owned()))?;
    let jwks_uri = Url::parse(metadata.jwks_uri.as_str())
        .map_err(|e| TokenProblem::Keys(format!("jwks_uri is not a URL ({e})")))?;
    let jwks = entra
        .jwks(&jwks_uri)
        .await
        .map_err(|e| TokenProblem::Keys(e.to_string()))?;
    let header = jsonwebtoken::decode_header(id_token)
        .map_err(|e| TokenProblem::Invalid(format!("unreadable header ({e})")))?;
    if !matches!(
        header.alg,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
    ) {
        return Err(TokenProblem::Invalid(format!(
            "algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| TokenProblem::Invalid("the token names no key (kid)".to_owned()))?;
    let key = jwks
        .find(&kid)
        .ok_or_else(|| {
            TokenProblem::Invalid("signed with a key the tenant does not publish".to_owned())
        })?
        .decoding_key()
        .map_err(TokenProblem::Keys)?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[client_id]);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
        .map_err(|e| TokenProblem::Invalid(e.to_string()))?
        .claims;
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let tid = text("tid").ok_or_else(|| TokenProblem::Invalid("no tid claim".to_owned()))?;
    if !tid.eq_ignore_ascii_case(&expected_tid) {
        return Err(TokenProblem::WrongTenant { actual: tid });
    }
    if text("iss").as_deref() != Some(metadata.issuer.as_str()) {
        return Err(TokenProblem::Invalid(
            "the issuer is not the tenant's".to_owned(),
        ));
    }
    if text("nonce").as_deref() != Some(nonce) {
        return Err(TokenProblem::Nonce);
    }
    let oid = text("oid").ok_or_else(|| TokenProblem::Invalid("no oid claim".to_owned()))?;
    let username = text("preferred_username")
        .or_else(|| text("email"))
        .or_else(|| text("upn"))
        .unwrap_or_else(|| oid.clone());
    Ok(IdClaims {
        oid: oid.to_ascii_lowercase(),
        tid: tid.to_ascii_lowercase(),
        username,
        name: text("name"),
        email: text("email"),
        upn: text("preferred_username").or_else(|| text("upn")),
    })
}
