//! Entra ID emulator: OpenID metadata (v1 and v2), JWKS, the v1 and v2 token endpoints
//! (client credentials, authorization code with PKCE, refresh token) and the v2 authorize
//! endpoint, which "signs in" a configurable user without a UI.
//!
//! Token version follows the *resource* app, as in Entra: an app whose
//! `api.requestedAccessTokenVersion` is 2 gets v2 access tokens from either endpoint, every
//! other resource (Graph included) gets v1 tokens (`ver` "1.0", `iss`
//! `https://sts.windows.net/{tid}/`, `appid`); v2 tokens carry `ver` "2.0", `iss`
//! `{authority}/{tid}/v2.0` and `azp`. ID tokens are always v2. Tokens are RS256-signed with
//! the sandbox key in `sandbox-signing-key.pem`, published at the JWKS endpoints.
//!
//! The app registry ([`Directory`]) is shared with the Graph emulator. A Graph-created app
//! can get tokens without a service principal (the emulator does not check for one).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::faults::{Emulator, Fault, FaultLayer};
use super::{SandboxOptions, Shared, new_guid, now, query_pairs, random_token};

/// The sandbox's token-signing key. It is a throw-away key generated for the sandbox and
/// committed on purpose: it protects nothing and must never be trusted outside the sandbox.
const SIGNING_KEY_PEM: &str = include_str!("sandbox-signing-key.pem");
/// Self-signed certificate of that key (for `x5c` in the JWKS), sandbox only as well.
const SIGNING_CERT_PEM: &str = include_str!("sandbox-signing-cert.pem");
/// RSA modulus of the key, base64url (precomputed with openssl; checked by a unit test).
const SIGNING_KEY_N: &str = "41cU2xvS2N-nxu0p5cISq11XZZaPixvqvHpFrIyoTGvmyJ7MAMDrAoXiLi-4dLBz8dz6uukfkojW7H3L-WnqjMtmxhYqzY6smTTpob1JGIT8EcX6m98bnzcowwqDa3UFptvPWcFOlV-JwInI2kEiOasqXB8y7zFiixUUKdZv3ITgRcoYEyl93qWwAJf1kAthebpieU917kkAftvaDl-QEAvhPf3YZKdUEKoMh2n9vOop7OIWhZs778m8yaknxBOvcbpuiTmZbVdI9N-mXrIXoX24TwDupjPxclY6QDlghVbkx3clDs6dVdckMV7w7163w8oT_hVMdmZGjZLmdsA7Jw";
/// RSA public exponent (65537).
const SIGNING_KEY_E: &str = "AQAB";
/// SHA-1 thumbprint of the certificate, base64url; Entra uses it as `kid` and `x5t`.
const SIGNING_KEY_X5T: &str = "KChIFb-rQW68hfrqC4WxH1zcSjw";

/// Graph's well-known application id.
pub(crate) const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// Graph's resource URI.
pub(crate) const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// The Bot Framework's resource: every tenant's apps get app-only tokens for it (the bot's own
/// token for the Bot Connector, scope `https://api.botframework.com/.default`).
pub(crate) const BOT_FRAMEWORK_RESOURCE: &str = "https://api.botframework.com";
/// Graph application permissions of the seeded bot app (admin consent given).
pub const SEED_GRAPH_ROLES: &[&str] = &[
    "Application.ReadWrite.OwnedBy",
    "Organization.Read.All",
    "Domain.Read.All",
    "ServiceHealth.Read.All",
    "RoleManagement.Read.Directory",
];
/// Client id of the pre-registered Graph management app (fixed so configs survive restarts).
const SEED_GRAPH_CLIENT_ID: &str = "5e7b2a1c-0d4f-4c3b-9a8e-1f2d3c4b5a69";
/// Its secret (sandbox only).
const SEED_GRAPH_CLIENT_SECRET: &str = "Sbx8Q~sandbox.graph-management_secret.0001";
/// Object id of the default signed-in user: the Agents Playground's default user
/// (`sandbox/m365agentsplayground.yml`), so account linking works from the Playground.
pub(crate) const SEED_USER_OID: &str = "7c1e0f4a-0000-4000-8000-000000000001";
/// Template id of the built-in Entra role Global Administrator.
pub(crate) const GLOBAL_ADMINISTRATOR_ROLE: &str = "62e90394-69f5-4237-9190-012177145e10";
/// Access-token lifetime in seconds (the `expires_in` of the samples).
const TOKEN_SECS: i64 = 3599;
/// Lifetime of an authorization code.
const CODE_SECS: i64 = 600;

/// The signing key, its public half and its JWKS fields.
pub(crate) struct SigningKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    x5c: String,
}

impl SigningKeys {
    pub(crate) fn load() -> anyhow::Result<Self> {
        let encoding = EncodingKey::from_rsa_pem(SIGNING_KEY_PEM.as_bytes())?;
        let decoding = DecodingKey::from_rsa_components(SIGNING_KEY_N, SIGNING_KEY_E)?;
        let x5c = SIGNING_CERT_PEM
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect::<String>();
        Ok(Self {
            encoding,
            decoding,
            x5c,
        })
    }

    /// Signs claims; `x5t` goes into v1 headers only, as Entra does.
    pub(crate) fn sign(&self, claims: &Value, v1: bool) -> Option<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(SIGNING_KEY_X5T.to_owned());
        if v1 {
            header.x5t = Some(SIGNING_KEY_X5T.to_owned());
        }
        jsonwebtoken::encode(&header, claims, &self.encoding).ok()
    }

    /// Verifies signature and lifetime of a token this sandbox issued; returns its claims.
    pub(crate) fn verify(&self, token: &str, audiences: &[String]) -> Result<Value, String> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(audiences);
        validation.leeway = 60;
        jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "Lifetime validation failed, the token is expired.".to_owned()
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => "Invalid audience.".to_owned(),
                _ => "Invalid signature.".to_owned(),
            })
    }

    /// Verifies signature and lifetime only (the caller checks `aud` and `iss` itself).
    pub(crate) fn verify_any_audience(&self, token: &str) -> Result<Value, String> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        validation.leeway = 300;
        jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|err| err.to_string())
    }

    fn jwk(&self, issuer: Option<&str>) -> Value {
        let mut key = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": SIGNING_KEY_X5T,
            "x5t": SIGNING_KEY_X5T,
            "n": SIGNING_KEY_N,
            "e": SIGNING_KEY_E,
            "x5c": [self.x5c],
        });
        if let Some(issuer) = issuer {
            key["issuer"] = Value::String(issuer.to_owned());
        }
        key
    }
}

/// A client secret of an application. The secret text itself is only shown by
/// [`PasswordCredential::secret_text`] and never by `Debug`.
#[derive(Clone)]
pub struct PasswordCredential {
    /// `keyId` (GUID).
    pub key_id: String,
    /// `displayName`.
    pub display_name: Option<String>,
    /// `hint`: the first three characters of the secret.
    pub hint: String,
    /// `startDateTime`.
    pub start: DateTime<Utc>,
    /// `endDateTime`.
    pub end: DateTime<Utc>,
    /// When it was added (replication lag counts from here).
    pub added: DateTime<Utc>,
    secret: String,
}

impl PasswordCredential {
    fn new(display_name: Option<String>, start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        let secret = new_client_secret();
        Self {
            key_id: new_guid(),
            display_name,
            hint: secret.chars().take(3).collect(),
            start,
            end,
            added: now(),
            secret,
        }
    }

    /// The secret value (sandbox only; Graph returns it once, at `addPassword`).
    pub fn secret_text(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for PasswordCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordCredential")
            .field("key_id", &self.key_id)
            .field("display_name", &self.display_name)
            .field("hint", &self.hint)
            .field("start", &self.start)
            .field("end", &self.end)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A new secret for `addPassword`.
pub(crate) fn new_password(
    display_name: Option<String>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> PasswordCredential {
    PasswordCredential::new(display_name, start, end)
}

/// A Graph-style secret: 40 characters with `~` at the fourth position, like Entra's.
fn new_client_secret() -> String {
    let body = random_token(37).replace('-', ".");
    format!("{}8Q~{}", &body[..3], &body[3..])
}

/// An application registration (Graph `application`).
#[derive(Debug, Clone)]
pub struct AppRegistration {
    /// Object id (`id`).
    pub object_id: String,
    /// Client id (`appId`).
    pub app_id: String,
    /// `displayName`.
    pub display_name: String,
    /// `signInAudience`.
    pub sign_in_audience: String,
    /// `api.requestedAccessTokenVersion` (None = null = v1 tokens).
    pub requested_access_token_version: Option<i64>,
    /// `web.redirectUris`.
    pub web_redirect_uris: Vec<String>,
    /// `publicClient.redirectUris`.
    pub public_client_redirect_uris: Vec<String>,
    /// `identifierUris`.
    pub identifier_uris: Vec<String>,
    /// `passwordCredentials`.
    pub password_credentials: Vec<PasswordCredential>,
    /// `requiredResourceAccess`, kept as sent.
    pub required_resource_access: Value,
    /// `createdDateTime`.
    pub created: DateTime<Utc>,
    /// Object id used for the app's service principal and as `oid` of its app-only tokens.
    pub principal_id: String,
    /// Graph application permissions granted with admin consent: the `roles` of its app-only
    /// Graph tokens (none: Graph refuses every app-only call with 403).
    pub graph_roles: Vec<String>,
}

impl AppRegistration {
    pub(crate) fn new(display_name: &str) -> Self {
        Self {
            object_id: new_guid(),
            app_id: new_guid(),
            display_name: display_name.to_owned(),
            sign_in_audience: "AzureADMyOrg".to_owned(),
            requested_access_token_version: None,
            web_redirect_uris: Vec::new(),
            public_client_redirect_uris: Vec::new(),
            identifier_uris: Vec::new(),
            password_credentials: Vec::new(),
            required_resource_access: json!([]),
            created: now(),
            principal_id: new_guid(),
            graph_roles: Vec::new(),
        }
    }

    fn redirect_registered(&self, uri: &str) -> Option<RedirectKind> {
        if self.web_redirect_uris.iter().any(|u| u == uri) {
            Some(RedirectKind::Web)
        } else if self.public_client_redirect_uris.iter().any(|u| u == uri) {
            Some(RedirectKind::Public)
        } else {
            None
        }
    }
}

/// A service principal (Graph `servicePrincipal`).
#[derive(Debug, Clone)]
pub(crate) struct ServicePrincipal {
    pub(crate) id: String,
    pub(crate) app_id: String,
}

/// The user the authorize endpoint signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInUser {
    /// Object id (`oid`).
    pub oid: String,
    /// `preferred_username` / UPN.
    pub upn: String,
    /// Display name (`name`).
    pub name: String,
    /// Home tenant (`tid`); `None` means the demo tenant.
    pub tenant_id: Option<String>,
}

/// What happens at the next authorize request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// The user signs in and consents.
    SignIn(SignedInUser),
    /// The user cancels: `error=access_denied` goes back to the redirect URI.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedirectKind {
    Web,
    Public,
}

#[derive(Debug, Clone)]
struct PendingCode {
    client_id: String,
    redirect_uri: String,
    redirect_kind: RedirectKind,
    challenge: String,
    scope: String,
    nonce: Option<String>,
    user: SignedInUser,
    expires: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct RefreshGrant {
    client_id: String,
    scope: String,
    user: SignedInUser,
}

/// A tenant-wide directory role assignment (Graph `unifiedRoleAssignment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryRoleAssignment {
    /// `id`: in Entra the role template id and the principal id, both as .NET GUID bytes in
    /// base64url, then `-1`.
    pub id: String,
    /// `principalId`: object id of the user.
    pub principal_id: String,
    /// `roleDefinitionId`: the built-in role's template id.
    pub role_definition_id: String,
    /// `directoryScopeId` (`/` = the whole tenant).
    pub directory_scope_id: String,
}

impl DirectoryRoleAssignment {
    /// A tenant-wide assignment of `role_definition_id` to `principal_id`.
    pub fn new(principal_id: &str, role_definition_id: &str) -> Self {
        let mut bytes = guid_bytes_le(role_definition_id);
        bytes.extend(guid_bytes_le(principal_id));
        Self {
            id: format!("{}-1", URL_SAFE_NO_PAD.encode(bytes)),
            principal_id: principal_id.to_ascii_lowercase(),
            role_definition_id: role_definition_id.to_ascii_lowercase(),
            directory_scope_id: "/".to_owned(),
        }
    }
}

/// A GUID's 16 bytes in .NET order (first three groups little-endian); empty if malformed.
fn guid_bytes_le(guid: &str) -> Vec<u8> {
    let hex: String = guid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Vec::new();
    }
    let mut bytes: Vec<u8> = (0..16)
        .filter_map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok())
        .collect();
    bytes[0..4].reverse();
    bytes[4..6].reverse();
    bytes[6..8].reverse();
    bytes
}

/// A test's rewrite of issued ID tokens: (claims, correctly signed token) → token to send.
pub type IdTokenRewrite = std::sync::Arc<dyn Fn(&Value, &str) -> String + Send + Sync>;

/// The demo tenant's directory: tenant facts, app registry, pending codes.
pub(crate) struct Directory {
    pub(crate) tenant_id: String,
    pub(crate) organization_name: String,
    /// `(name, is_default, is_initial)`.
    pub(crate) domains: Vec<(String, bool, bool)>,
    pub(crate) apps: Vec<AppRegistration>,
    pub(crate) service_principals: Vec<ServicePrincipal>,
    pub(crate) authorize_outcome: AuthorizeOutcome,
    pub(crate) graph_writes_denied: bool,
    /// How long a new app or secret stays invisible to token requests and Graph reads, as
    /// Entra ID's replication makes it right after creation (zero: at once).
    pub(crate) replication_lag: ChronoDuration,
    /// Directory role assignments (`roleManagement/directory/roleAssignments`).
    pub(crate) role_assignments: Vec<DirectoryRoleAssignment>,
    /// Graph answers 403 to role-assignment reads (no `RoleManagement.Read.Directory`).
    pub(crate) role_reads_denied: bool,
    /// Rewrites the ID token of code redemptions (claims, correctly signed token) → token sent:
    /// lets tests return a forged, misdirected or expired ID token from a real code exchange.
    pub(crate) id_token_rewrite: Option<IdTokenRewrite>,
    codes: HashMap<String, PendingCode>,
    redeemed: HashSet<String>,
    refresh_tokens: HashMap<String, RefreshGrant>,
}

impl Directory {
    /// The seeded directory and the Graph app's credentials and the default user's UPN.
    pub(crate) fn seed(options: &SandboxOptions) -> (Self, String, String, String) {
        let mut domains = vec![(
            options.tenant_domain.clone(),
            options.custom_domain.is_none(),
            true,
        )];
        if let Some(custom) = &options.custom_domain {
            domains.push((custom.clone(), true, false));
        }
        let upn = format!("admin@{}", options.tenant_domain);
        let mut app = AppRegistration::new("m365bot sandbox Graph management");
        app.app_id = SEED_GRAPH_CLIENT_ID.to_owned();
        app.graph_roles = SEED_GRAPH_ROLES.iter().map(|r| (*r).to_owned()).collect();
        let start = now();
        let mut credential = PasswordCredential::new(
            Some("sandbox".to_owned()),
            start,
            start + ChronoDuration::days(730),
        );
        credential.secret = SEED_GRAPH_CLIENT_SECRET.to_owned();
        credential.hint = SEED_GRAPH_CLIENT_SECRET.chars().take(3).collect();
        // Registered long ago: replication lag never hides the bot's own app.
        app.created = start - ChronoDuration::days(30);
        credential.added = app.created;
        app.password_credentials.push(credential);
        let sp = ServicePrincipal {
            id: app.principal_id.clone(),
            app_id: app.app_id.clone(),
        };
        let dir = Self {
            tenant_id: options.tenant_id.to_ascii_lowercase(),
            organization_name: options.organization_name.clone(),
            domains,
            apps: vec![app],
            service_principals: vec![sp],
            authorize_outcome: AuthorizeOutcome::SignIn(SignedInUser {
                oid: SEED_USER_OID.to_owned(),
                upn: upn.clone(),
                name: "Sandbox Admin".to_owned(),
                tenant_id: None,
            }),
            graph_writes_denied: false,
            id_token_rewrite: None,
            replication_lag: ChronoDuration::zero(),
            // The default signed-in user is a Global Administrator, as a tenant's first admin is.
            role_assignments: vec![DirectoryRoleAssignment::new(
                SEED_USER_OID,
                GLOBAL_ADMINISTRATOR_ROLE,
            )],
            role_reads_denied: false,
            codes: HashMap::new(),
            redeemed: HashSet::new(),
            refresh_tokens: HashMap::new(),
        };
        (
            dir,
            SEED_GRAPH_CLIENT_ID.to_owned(),
            SEED_GRAPH_CLIENT_SECRET.to_owned(),
            upn,
        )
    }

    /// The tenant id for a path segment: the id itself, a verified domain, or `common` /
    /// `organizations` (which stand for the demo tenant here).
    pub(crate) fn resolve_tenant(&self, segment: &str) -> Option<String> {
        let lower = segment.to_ascii_lowercase();
        let known = lower == self.tenant_id
            || lower == "common"
            || lower == "organizations"
            || self
                .domains
                .iter()
                .any(|(d, _, _)| d.eq_ignore_ascii_case(&lower));
        known.then(|| self.tenant_id.clone())
    }

    pub(crate) fn initial_domain(&self) -> String {
        self.domains
            .iter()
            .find(|(_, _, initial)| *initial)
            .map(|(d, _, _)| d.clone())
            .unwrap_or_default()
    }

    /// The app with this client id, once replication made it visible.
    pub(crate) fn app_by_client_id(&self, client_id: &str) -> Option<&AppRegistration> {
        self.apps
            .iter()
            .find(|a| a.app_id.eq_ignore_ascii_case(client_id) && self.replicated(a.created))
    }

    /// True when something created at `since` is visible everywhere (replication done).
    pub(crate) fn replicated(&self, since: DateTime<Utc>) -> bool {
        now() - since >= self.replication_lag
    }

    pub(crate) fn app_by_client_id_mut(&mut self, client_id: &str) -> Option<&mut AppRegistration> {
        self.apps
            .iter_mut()
            .find(|a| a.app_id.eq_ignore_ascii_case(client_id))
    }

    pub(crate) fn create_app_with_secret(
        &mut self,
        display_name: &str,
        redirect_uris: &[&str],
    ) -> (String, String) {
        let mut app = AppRegistration::new(display_name);
        app.web_redirect_uris = redirect_uris.iter().map(|u| (*u).to_owned()).collect();
        let start = now();
        let credential = PasswordCredential::new(None, start, start + ChronoDuration::days(730));
        let secret = credential.secret.clone();
        app.password_credentials.push(credential);
        let ids = (app.app_id.clone(), secret);
        self.service_principals.push(ServicePrincipal {
            id: app.principal_id.clone(),
            app_id: app.app_id.clone(),
        });
        self.apps.push(app);
        ids
    }

    pub(crate) fn rotate_secret(&mut self, client_id: &str) -> Option<String> {
        let app = self.app_by_client_id_mut(client_id)?;
        let start = now();
        let credential = PasswordCredential::new(
            Some("rotated".to_owned()),
            start,
            start + ChronoDuration::days(730),
        );
        let secret = credential.secret.clone();
        app.password_credentials = vec![credential];
        Some(secret)
    }

    pub(crate) fn add_secret_text(&mut self, client_id: &str, text: &str) -> bool {
        let Some(app) = self.app_by_client_id_mut(client_id) else {
            return false;
        };
        let start = now() - ChronoDuration::days(1);
        let mut credential = PasswordCredential::new(
            Some("added back".to_owned()),
            start,
            start + ChronoDuration::days(730),
        );
        credential.hint = text.chars().take(3).collect();
        credential.added = start;
        credential.secret = text.to_owned();
        app.password_credentials.push(credential);
        true
    }

    pub(crate) fn expire_secrets(&mut self, client_id: &str) -> bool {
        let Some(app) = self.app_by_client_id_mut(client_id) else {
            return false;
        };
        let past = now() - ChronoDuration::days(1);
        for credential in &mut app.password_credentials {
            credential.end = past;
            if credential.start > past {
                credential.start = past - ChronoDuration::days(1);
            }
        }
        true
    }

    pub(crate) fn set_token_version(&mut self, client_id: &str, version: Option<i64>) -> bool {
        match self.app_by_client_id_mut(client_id) {
            Some(app) => {
                app.requested_access_token_version = version;
                true
            }
            None => false,
        }
    }

    /// Checks a client secret: `Ok` or the AADSTS error to answer.
    fn check_secret(&self, app: &AppRegistration, secret: &str) -> Result<(), AadError> {
        let current = now();
        match app
            .password_credentials
            .iter()
            .find(|c| !secret.is_empty() && c.secret == secret && self.replicated(c.added))
        {
            Some(c) if c.end > current && c.start <= current + ChronoDuration::minutes(5) => Ok(()),
            Some(_) => Err(AadError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000222,
                &format!(
                    "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                    app.app_id
                ),
            )),
            None => Err(AadError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    app.app_id
                ),
            )),
        }
    }
}

// ------------------------------------------------------------------------------------------
// errors
// ------------------------------------------------------------------------------------------

/// An Entra OAuth error: status, `error`, AADSTS code and message.
#[derive(Debug, Clone)]
pub(crate) struct AadError {
    status: StatusCode,
    error: String,
    code: u32,
    message: String,
}

impl AadError {
    fn new(status: StatusCode, error: &str, code: u32, message: &str) -> Self {
        Self {
            status,
            error: error.to_owned(),
            code,
            message: message.to_owned(),
        }
    }

    fn missing(parameter: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    fn unknown_tenant(tenant: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        )
    }

    fn unknown_client(client_id: &str, tenant_id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant_id}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    }

    fn invalid_grant(code: u32, message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", code, message)
    }

    /// The JSON body of the samples.
    pub(crate) fn body(&self) -> Value {
        let timestamp = now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let trace = new_guid();
        let correlation = new_guid();
        json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        })
    }

    fn response(&self) -> Response {
        json_response(self.status, &self.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    response
}

/// The answer of an injected fault.
pub(crate) fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::Throttle(seconds) => {
            let mut response = AadError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90055,
                "TenantThrottlingError - There are too many incoming requests.",
            )
            .response();
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Fault::ServerError(status) | Fault::HtmlError(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            AadError::new(
                status,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
            )
            .response()
        }
    }
}

// ------------------------------------------------------------------------------------------
// routes
// ------------------------------------------------------------------------------------------

/// The Entra emulator's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let layer = FaultLayer {
        shared: shared.clone(),
        emulator: Emulator::Entra,
    };
    Router::new()
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(metadata_v1),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(metadata_v2),
        )
        .route("/{tenant}/discovery/keys", get(keys_v1))
        .route("/{tenant}/discovery/v2.0/keys", get(keys_v2))
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            layer,
            super::faults::middleware,
        ))
        .with_state(shared)
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "not_found", "error_description": "The requested resource was not found."}),
    )
}

fn is_multi_tenant_alias(segment: &str) -> bool {
    segment.eq_ignore_ascii_case("common") || segment.eq_ignore_ascii_case("organizations")
}

async fn metadata_v1(State(shared): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    let Some(tid) = shared.world().dir.resolve_tenant(&tenant) else {
        return AadError::unknown_tenant(&tenant).response();
    };
    let base = &shared.urls.entra;
    let (issuer, path_tenant) = if is_multi_tenant_alias(&tenant) {
        (
            "https://sts.windows.net/{tenantid}/".to_owned(),
            tenant.clone(),
        )
    } else {
        (format!("https://sts.windows.net/{tid}/"), tid.clone())
    };
    let t = format!("{base}/{path_tenant}");
    json_response(
        StatusCode::OK,
        &json!({
            "token_endpoint": format!("{t}/oauth2/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/common/discovery/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": issuer,
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{t}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{t}/oauth2/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{t}/oauth2/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
            "check_session_iframe": format!("{t}/oauth2/checksession"),
            "userinfo_endpoint": format!("{t}/openid/userinfo"),
            "kerberos_endpoint": format!("{t}/kerberos"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": graph_host(&shared),
            "rbac_url": "https://pas.windows.net",
        }),
    )
}

fn graph_host(shared: &Shared) -> String {
    shared
        .urls
        .graph
        .split("://")
        .nth(1)
        .unwrap_or(shared.urls.graph.as_str())
        .to_owned()
}

fn v2_issuer(base: &str, tid: &str) -> String {
    format!("{base}/{tid}/v2.0")
}

async fn metadata_v2(State(shared): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    let Some(tid) = shared.world().dir.resolve_tenant(&tenant) else {
        return AadError::unknown_tenant(&tenant).response();
    };
    let base = &shared.urls.entra;
    let multi = is_multi_tenant_alias(&tenant);
    let (issuer, path_tenant, region) = if multi {
        (v2_issuer(base, "{tenantid}"), tenant.clone(), Value::Null)
    } else {
        (v2_issuer(base, &tid), tid.clone(), json!("EU"))
    };
    let t = format!("{base}/{path_tenant}");
    json_response(
        StatusCode::OK,
        &json!({
            "token_endpoint": format!("{t}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{t}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": format!("{}/oidc/userinfo", shared.urls.graph),
            "authorization_endpoint": format!("{t}/oauth2/v2.0/authorize"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{t}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": graph_host(&shared),
            "rbac_url": "https://pas.windows.net",
        }),
    )
}

async fn keys_v1(State(shared): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    if shared.world().dir.resolve_tenant(&tenant).is_none() {
        return AadError::unknown_tenant(&tenant).response();
    }
    json_response(StatusCode::OK, &json!({"keys": [shared.keys.jwk(None)]}))
}

async fn keys_v2(State(shared): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    let Some(tid) = shared.world().dir.resolve_tenant(&tenant) else {
        return AadError::unknown_tenant(&tenant).response();
    };
    let issuer = if is_multi_tenant_alias(&tenant) {
        v2_issuer(&shared.urls.entra, "{tenantid}")
    } else {
        v2_issuer(&shared.urls.entra, &tid)
    };
    json_response(
        StatusCode::OK,
        &json!({"keys": [shared.keys.jwk(Some(&issuer))]}),
    )
}

// ------------------------------------------------------------------------------------------
// tokens
// ------------------------------------------------------------------------------------------

/// What a token is for.
#[derive(Debug, Clone)]
struct Target {
    /// The `aud` of a v1 token (the resource as requested).
    aud_v1: String,
    /// The `aud` of a v2 token (the resource app's client id).
    aud_v2: String,
    /// Whether the resource wants v2 tokens.
    v2: bool,
}

/// Resolves a v1 `resource` or the resource part of a v2 scope.
fn resolve_resource(shared: &Shared, dir: &Directory, resource: &str) -> Option<Target> {
    let trimmed = resource.trim_end_matches('/');
    let sandbox_graph = shared.urls.graph.trim_end_matches('/');
    if trimmed.eq_ignore_ascii_case(GRAPH_RESOURCE)
        || trimmed.eq_ignore_ascii_case(GRAPH_APP_ID)
        || trimmed.eq_ignore_ascii_case(sandbox_graph)
    {
        return Some(Target {
            aud_v1: resource.to_owned(),
            aud_v2: GRAPH_APP_ID.to_owned(),
            v2: false,
        });
    }
    if trimmed.eq_ignore_ascii_case(BOT_FRAMEWORK_RESOURCE) {
        return Some(Target {
            aud_v1: BOT_FRAMEWORK_RESOURCE.to_owned(),
            aud_v2: BOT_FRAMEWORK_RESOURCE.to_owned(),
            v2: false,
        });
    }
    let app = dir.apps.iter().find(|a| {
        a.app_id.eq_ignore_ascii_case(trimmed)
            || a.identifier_uris
                .iter()
                .any(|u| u.trim_end_matches('/').eq_ignore_ascii_case(trimmed))
    })?;
    Some(Target {
        aud_v1: resource.to_owned(),
        aud_v2: app.app_id.clone(),
        v2: app.requested_access_token_version == Some(2),
    })
}

/// The resource of a v2 scope list: the part before the last `/` of the first qualified
/// scope; only OIDC or bare scopes mean Graph.
fn scope_resource(scope: &str) -> (String, bool) {
    for item in scope.split_whitespace() {
        if let Some(resource) = item.strip_suffix("/.default") {
            return (resource.to_owned(), true);
        }
        if item.contains("://")
            && let Some((resource, _)) = item.rsplit_once('/')
        {
            return (resource.to_owned(), false);
        }
    }
    (GRAPH_RESOURCE.to_owned(), false)
}

fn form_of(body: &Bytes) -> HashMap<String, String> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Client credentials from the form or from HTTP Basic.
fn client_credentials(form: &HashMap<String, String>, headers: &HeaderMap) -> (String, String) {
    let mut id = form.get("client_id").cloned().unwrap_or_default();
    let mut secret = form.get("client_secret").cloned().unwrap_or_default();
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok())
        && let Some((user, password)) = basic.split_once(':')
    {
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        if id.is_empty() {
            id = decode(user);
        }
        if secret.is_empty() {
            secret = decode(password);
        }
    }
    (id, secret)
}

struct Issued {
    access_token: String,
    v2: bool,
}

/// Signs an app-only access token for `app` and `target`.
fn app_token(shared: &Shared, tid: &str, app: &AppRegistration, target: &Target) -> Option<Issued> {
    let iat = now().timestamp();
    let mut claims = json!({
        "iat": iat,
        "nbf": iat,
        "exp": iat + TOKEN_SECS,
        "idtyp": "app",
        "oid": app.principal_id,
        "sub": app.principal_id,
        "tid": tid,
        "uti": random_token(22),
        "rh": "0.sandbox",
    });
    if target.v2 {
        claims["aud"] = json!(target.aud_v2);
        claims["iss"] = json!(v2_issuer(&shared.urls.entra, tid));
        claims["azp"] = json!(app.app_id);
        claims["azpacr"] = json!("1");
        claims["ver"] = json!("2.0");
    } else {
        claims["aud"] = json!(target.aud_v1);
        claims["iss"] = json!(format!("https://sts.windows.net/{tid}/"));
        claims["idp"] = json!(format!("https://sts.windows.net/{tid}/"));
        claims["appid"] = json!(app.app_id);
        claims["appidacr"] = json!("1");
        claims["ver"] = json!("1.0");
    }
    if target.aud_v2 == GRAPH_APP_ID && !app.graph_roles.is_empty() {
        claims["roles"] = json!(app.graph_roles);
    }
    let access_token = shared.keys.sign(&claims, !target.v2)?;
    Some(Issued {
        access_token,
        v2: target.v2,
    })
}

fn internal_error() -> Response {
    AadError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        50000,
        "There was an error issuing a token.",
    )
    .response()
}

async fn token_v1(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_of(&body);
    let world = shared.world();
    let dir = &world.dir;
    let Some(tid) = dir.resolve_tenant(&tenant) else {
        return AadError::unknown_tenant(&tenant).response();
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return AadError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            )
            .response();
        }
        None => return AadError::missing("grant_type").response(),
    }
    let (client_id, secret) = client_credentials(&form, &headers);
    if client_id.is_empty() {
        return AadError::missing("client_id").response();
    }
    let Some(resource) = form.get("resource").filter(|r| !r.is_empty()) else {
        return AadError::missing("resource").response();
    };
    let Some(app) = dir.app_by_client_id(&client_id) else {
        return AadError::unknown_client(&client_id, &tid).response();
    };
    if secret.is_empty() {
        return AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
        .response();
    }
    if let Err(err) = dir.check_secret(app, &secret) {
        return err.response();
    }
    let Some(target) = resolve_resource(&shared, dir, resource) else {
        return invalid_resource(resource, &tid);
    };
    let Some(issued) = app_token(&shared, &tid, app, &target) else {
        return internal_error();
    };
    let iat = now().timestamp();
    let _ = issued.v2;
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_SECS.to_string(),
            "ext_expires_in": TOKEN_SECS.to_string(),
            "expires_on": (iat + TOKEN_SECS).to_string(),
            "not_before": iat.to_string(),
            "resource": resource,
            "access_token": issued.access_token,
        }),
    )
}

fn invalid_resource(resource: &str, tid: &str) -> Response {
    AadError::new(
        StatusCode::BAD_REQUEST,
        "invalid_resource",
        500011,
        &format!(
            "The resource principal named {resource} was not found in the tenant named {tid}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
        ),
    )
    .response()
}

async fn token_v2(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_of(&body);
    let mut world = shared.world();
    let dir = &mut world.dir;
    let Some(tid) = dir.resolve_tenant(&tenant) else {
        return AadError::unknown_tenant(&tenant).response();
    };
    let (client_id, secret) = client_credentials(&form, &headers);
    if client_id.is_empty() {
        return AadError::missing("client_id").response();
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            client_credentials_v2(&shared, dir, &tid, &client_id, &secret, &form)
        }
        Some("authorization_code") => {
            match code_exchange(&shared, dir, &tid, &client_id, &secret, &form) {
                Ok(body) => json_response(StatusCode::OK, &body),
                Err(err) => err.response(),
            }
        }
        Some("refresh_token") => match refresh(&shared, dir, &tid, &client_id, &secret, &form) {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(err) => err.response(),
        },
        Some(other) => AadError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        )
        .response(),
        None => AadError::missing("grant_type").response(),
    }
}

fn client_credentials_v2(
    shared: &Shared,
    dir: &Directory,
    tid: &str,
    client_id: &str,
    secret: &str,
    form: &HashMap<String, String>,
) -> Response {
    let Some(scope) = form.get("scope").filter(|s| !s.is_empty()) else {
        return AadError::missing("scope").response();
    };
    let (resource, is_default) = scope_resource(scope);
    if !is_default {
        return AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )
        .response();
    }
    let Some(app) = dir.app_by_client_id(client_id) else {
        return AadError::unknown_client(client_id, tid).response();
    };
    if secret.is_empty() {
        return AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
        .response();
    }
    if let Err(err) = dir.check_secret(app, secret) {
        return err.response();
    }
    let Some(target) = resolve_resource(shared, dir, &resource) else {
        return invalid_resource(&resource, tid);
    };
    let Some(issued) = app_token(shared, tid, app, &target) else {
        return internal_error();
    };
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_SECS,
            "ext_expires_in": TOKEN_SECS,
            "access_token": issued.access_token,
        }),
    )
}

/// Signs delegated tokens (access + ID) for a signed-in user.
fn user_tokens(
    shared: &Shared,
    dir: &mut Directory,
    client_id: &str,
    scope: &str,
    user: &SignedInUser,
    nonce: Option<&str>,
) -> Result<Value, AadError> {
    let tid = user
        .tenant_id
        .clone()
        .unwrap_or_else(|| dir.tenant_id.clone());
    let (resource, _) = scope_resource(scope);
    let target = resolve_resource(shared, dir, &resource).ok_or_else(|| {
        AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!(
                "The resource principal named {resource} was not found in the tenant named {tid}."
            ),
        )
    })?;
    let iat = now().timestamp();
    let resource_scopes: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| !matches!(*s, "openid" | "profile" | "email" | "offline_access"))
        .map(|s| s.rsplit_once('/').map(|(_, name)| name).unwrap_or(s))
        .collect();
    let scp = if resource_scopes.is_empty() {
        "User.Read".to_owned()
    } else {
        resource_scopes.join(" ")
    };
    let mut access = json!({
        "iat": iat,
        "nbf": iat,
        "exp": iat + TOKEN_SECS,
        "idtyp": "user",
        "name": user.name,
        "oid": user.oid,
        "scp": scp,
        "sub": pairwise_sub(&user.oid, client_id),
        "tid": tid,
        "uti": random_token(22),
    });
    if target.v2 {
        access["aud"] = json!(target.aud_v2);
        access["iss"] = json!(v2_issuer(&shared.urls.entra, &tid));
        access["azp"] = json!(client_id);
        access["azpacr"] = json!("1");
        access["preferred_username"] = json!(user.upn);
        access["ver"] = json!("2.0");
    } else {
        let aud = if target.aud_v2 == GRAPH_APP_ID {
            GRAPH_RESOURCE.to_owned()
        } else {
            target.aud_v1.clone()
        };
        access["aud"] = json!(aud);
        access["iss"] = json!(format!("https://sts.windows.net/{tid}/"));
        access["appid"] = json!(client_id);
        access["appidacr"] = json!("1");
        access["upn"] = json!(user.upn);
        access["unique_name"] = json!(user.upn);
        access["ver"] = json!("1.0");
    }
    let access_token = shared.keys.sign(&access, !target.v2).ok_or_else(|| {
        AadError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50000,
            "signing failed",
        )
    })?;
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": TOKEN_SECS,
        "ext_expires_in": TOKEN_SECS,
        "access_token": access_token,
    });
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.contains(&"openid") {
        let mut id = json!({
            "aud": client_id,
            "iss": v2_issuer(&shared.urls.entra, &tid),
            "iat": iat,
            "nbf": iat,
            "exp": iat + TOKEN_SECS,
            "name": user.name,
            "oid": user.oid,
            "preferred_username": user.upn,
            "sub": pairwise_sub(&user.oid, client_id),
            "tid": tid,
            "uti": random_token(22),
            "ver": "2.0",
        });
        if let Some(nonce) = nonce {
            id["nonce"] = json!(nonce);
        }
        if scopes.contains(&"email") {
            id["email"] = json!(user.upn);
        }
        let id_token = shared.keys.sign(&id, false).ok_or_else(|| {
            AadError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50000,
                "signing failed",
            )
        })?;
        let id_token = match &dir.id_token_rewrite {
            Some(rewrite) => rewrite(&id, &id_token),
            None => id_token,
        };
        body["id_token"] = json!(id_token);
    }
    if scopes.contains(&"offline_access") {
        let refresh = random_token(120);
        dir.refresh_tokens.insert(
            refresh.clone(),
            RefreshGrant {
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                user: user.clone(),
            },
        );
        body["refresh_token"] = json!(refresh);
    }
    Ok(body)
}

/// Entra's pairwise `sub`: stable per user and app.
fn pairwise_sub(oid: &str, client_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(format!("{oid}:{client_id}").as_bytes()))
}

fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn code_exchange(
    shared: &Shared,
    dir: &mut Directory,
    tid: &str,
    client_id: &str,
    secret: &str,
    form: &HashMap<String, String>,
) -> Result<Value, AadError> {
    let code = form
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| AadError::missing("code"))?;
    if dir.redeemed.contains(code) {
        return Err(AadError::invalid_grant(
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
        ));
    }
    let app = dir
        .app_by_client_id(client_id)
        .cloned()
        .ok_or_else(|| AadError::unknown_client(client_id, tid))?;
    let pending = dir.codes.get(code).cloned().ok_or_else(|| {
        AadError::invalid_grant(9002313, "Invalid request. Request is malformed or invalid.")
    })?;
    if !pending.client_id.eq_ignore_ascii_case(client_id) {
        return Err(AadError::invalid_grant(
            70000,
            "Provided grant is invalid or malformed: the code was issued to another client.",
        ));
    }
    // The code is spent by any redemption attempt of its client, successful or not.
    dir.codes.remove(code);
    dir.redeemed.insert(code.clone());
    if pending.expires <= now() {
        return Err(AadError::invalid_grant(
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        ));
    }
    if form.get("redirect_uri").map(String::as_str) != Some(pending.redirect_uri.as_str()) {
        return Err(AadError::invalid_grant(
            50148,
            "The redirect_uri does not match the one of the authorization request.",
        ));
    }
    let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
    if verifier.is_empty() || pkce_s256(verifier) != pending.challenge {
        return Err(AadError::invalid_grant(
            501481,
            "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
        ));
    }
    if pending.redirect_kind == RedirectKind::Web {
        if secret.is_empty() {
            return Err(AadError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
        dir.check_secret(&app, secret)?;
    }
    user_tokens(
        shared,
        dir,
        client_id,
        &pending.scope,
        &pending.user,
        pending.nonce.as_deref(),
    )
}

fn refresh(
    shared: &Shared,
    dir: &mut Directory,
    tid: &str,
    client_id: &str,
    secret: &str,
    form: &HashMap<String, String>,
) -> Result<Value, AadError> {
    let token = form
        .get("refresh_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AadError::missing("refresh_token"))?;
    let app = dir
        .app_by_client_id(client_id)
        .cloned()
        .ok_or_else(|| AadError::unknown_client(client_id, tid))?;
    let grant = dir
        .refresh_tokens
        .remove(token)
        .filter(|g| g.client_id.eq_ignore_ascii_case(client_id))
        .ok_or_else(|| {
            AadError::invalid_grant(9002313, "Invalid request. Request is malformed or invalid.")
        })?;
    if !secret.is_empty() {
        dir.check_secret(&app, secret)?;
    }
    user_tokens(shared, dir, client_id, &grant.scope, &grant.user, None)
}

// ------------------------------------------------------------------------------------------
// authorize
// ------------------------------------------------------------------------------------------

fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        serializer.append_pair(k, v);
    }
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{}", serializer.finish());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90102,
            "'redirect_uri' value must be a valid absolute URI.",
        )
        .response(),
    }
}

fn redirect_error(
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = state {
        params.push(("state", state));
    }
    redirect(redirect_uri, &params)
}

async fn authorize(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    uri: Uri,
) -> Response {
    let params = query_pairs(&uri);
    let get = |name: &str| super::query_param(&params, name);
    let mut world = shared.world();
    let dir = &mut world.dir;
    let Some(tid) = dir.resolve_tenant(&tenant) else {
        return AadError::unknown_tenant(&tenant).response();
    };
    let Some(client_id) = get("client_id").filter(|c| !c.is_empty()) else {
        return AadError::missing("client_id").response();
    };
    let Some(app) = dir.app_by_client_id(client_id).cloned() else {
        return AadError::unknown_client(client_id, &tid).response();
    };
    let Some(redirect_uri) = get("redirect_uri").filter(|r| !r.is_empty()) else {
        return AadError::missing("redirect_uri").response();
    };
    let Some(kind) = app.redirect_registered(redirect_uri) else {
        // Never redirect to an unregistered URI: Entra shows an error page instead.
        return AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal.",
                app.app_id
            ),
        )
        .response();
    };
    let state = get("state");
    if get("response_type") != Some("code") {
        return redirect_error(
            redirect_uri,
            state,
            "unsupported_response_type",
            "AADSTS700054: response_type must be 'code' for this application.",
        );
    }
    let challenge = get("code_challenge").unwrap_or("");
    if challenge.is_empty() {
        return redirect_error(
            redirect_uri,
            state,
            "invalid_request",
            "AADSTS9002325: Proof Key for Code Exchange is required: send code_challenge and code_challenge_method=S256.",
        );
    }
    if get("code_challenge_method") != Some("S256") {
        return redirect_error(
            redirect_uri,
            state,
            "invalid_request",
            "AADSTS50148: The code_challenge_method is not supported by this sandbox; use S256.",
        );
    }
    let scope = get("scope").unwrap_or("openid").to_owned();
    let user = match dir.authorize_outcome.clone() {
        AuthorizeOutcome::Cancel => {
            let mut params = vec![
                ("error", "access_denied"),
                ("error_subcode", "cancel"),
                (
                    "error_description",
                    "AADSTS65004: User declined to consent to access the app.",
                ),
            ];
            if let Some(state) = state {
                params.push(("state", state));
            }
            return redirect(redirect_uri, &params);
        }
        AuthorizeOutcome::SignIn(user) => user,
    };
    let code = format!("1.{}", random_token(96));
    dir.codes.insert(
        code.clone(),
        PendingCode {
            client_id: app.app_id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            redirect_kind: kind,
            challenge: challenge.to_owned(),
            scope,
            nonce: get("nonce").map(str::to_owned),
            user,
            expires: now() + ChronoDuration::seconds(CODE_SECS),
        },
    );
    let session_state = new_guid();
    let mut out = vec![("code", code.as_str())];
    if let Some(state) = state {
        out.push(("state", state));
    }
    out.push(("session_state", session_state.as_str()));
    redirect(redirect_uri, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_assignment_ids_have_the_entra_shape() {
        // The example of the Graph docs (`rbacapplication-list-roleassignments.md`).
        let assignment = DirectoryRoleAssignment::new(
            "f1847572-48aa-47aa-96a3-2ec61904f41f",
            "62e90394-69f5-4237-9190-012177145e10",
        );
        assert_eq!(
            assignment.id,
            "lAPpYvVpN0KRkAEhdxReEHJ1hPGqSKpHlqMuxhkE9B8-1"
        );
    }

    #[test]
    fn embedded_public_key_matches_the_private_key() {
        let keys = SigningKeys::load().expect("sandbox key loads");
        let token = keys
            .sign(&json!({"aud": "x", "exp": now().timestamp() + 60}), true)
            .expect("signs");
        let claims = keys.verify(&token, &["x".to_owned()]).expect("verifies");
        assert_eq!(claims["aud"], "x");
        assert!(keys.verify(&token, &["y".to_owned()]).is_err());
    }

    #[test]
    fn pkce_matches_rfc7636_example() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn secrets_look_like_entra_secrets() {
        let secret = new_client_secret();
        assert_eq!(secret.len(), 40);
        assert_eq!(&secret[3..6], "8Q~");
    }

    #[test]
    fn scope_resource_picks_the_resource() {
        assert_eq!(
            scope_resource("https://graph.microsoft.com/.default"),
            ("https://graph.microsoft.com".to_owned(), true)
        );
        assert_eq!(
            scope_resource("openid profile offline_access"),
            (GRAPH_RESOURCE.to_owned(), false)
        );
        assert_eq!(
            scope_resource("openid api://abc/access_as_user"),
            ("api://abc".to_owned(), false)
        );
    }
}
