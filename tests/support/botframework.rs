//! Fake Bot Framework identity provider (OpenID metadata + JWKS) and token minting.
//!
//! `FakeIdp::start()` serves `/.well-known/openidconfiguration` and `/keys` on 127.0.0.1 with
//! the `test` key (kid `test-key-1`) endorsed for `msteams`. Tests can swap the key set, set
//! endorsements and count JWKS fetches. `mint` signs tokens with the fixture keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{TEST_APP_ID, TEST_TENANT_ID};

/// The issuer of channel → bot tokens (the production value, which is the default setting).
pub const TEST_ISSUER: &str = "https://api.botframework.com";
/// The `serviceurl` claim of minted tokens and the `serviceUrl` of test activities. It is on
/// loopback (a closed port) so that a reply attempt never leaves the machine.
pub const TEST_SERVICE_URL: &str = "http://127.0.0.1:9/teams/";

/// One of the RSA key pairs in `tests/fixtures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    /// `test-signing-key.pem`, kid `test-key-1`.
    Test,
    /// `other-signing-key.pem`, kid `other-key-1`.
    Other,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

impl TestKey {
    /// The key id published for this key in `test-jwks.json`.
    pub fn kid(self) -> &'static str {
        match self {
            Self::Test => "test-key-1",
            Self::Other => "other-key-1",
        }
    }

    fn jwks_entry(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Other => "other",
        }
    }

    /// The private key, for signing.
    pub fn encoding_key(self) -> EncodingKey {
        let pem = match self {
            Self::Test => fixture("test-signing-key.pem"),
            Self::Other => fixture("other-signing-key.pem"),
        };
        EncodingKey::from_rsa_pem(&pem).expect("fixture PEM is an RSA private key")
    }

    /// The public JWK with the given endorsements (none: the member is omitted).
    pub fn jwk(self, endorsements: &[&str]) -> Value {
        let all: Value =
            serde_json::from_slice(&fixture("test-jwks.json")).expect("test-jwks.json is JSON");
        let mut jwk = all[self.jwks_entry()].clone();
        assert!(jwk.is_object(), "test-jwks.json has {}", self.jwks_entry());
        if !endorsements.is_empty() {
            jwk["endorsements"] = json!(endorsements);
        }
        jwk
    }

    /// The public JWK published under another key id.
    pub fn jwk_with_kid(self, kid: &str, endorsements: &[&str]) -> Value {
        let mut jwk = self.jwk(endorsements);
        jwk["kid"] = json!(kid);
        jwk
    }
}

struct IdpState {
    base_url: String,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
    metadata_fetches: AtomicUsize,
}

/// A loopback OpenID provider serving Bot Framework style metadata and keys.
pub struct FakeIdp {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    state: Arc<IdpState>,
    shutdown: CancellationToken,
}

impl FakeIdp {
    /// Serves the `test` key endorsed for `msteams`.
    pub async fn start() -> Self {
        Self::with_keys(vec![TestKey::Test.jwk(&["msteams"])]).await
    }

    /// Serves exactly `keys` (JWK objects) in the JWKS.
    pub async fn with_keys(keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake IdP");
        let addr = listener.local_addr().expect("local addr");
        let base_url = format!("http://{addr}");
        let state = Arc::new(IdpState {
            base_url: base_url.clone(),
            keys: Mutex::new(keys),
            jwks_fetches: AtomicUsize::new(0),
            metadata_fetches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/.well-known/openidconfiguration", get(metadata))
            .route("/keys", get(jwks))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        Self {
            base_url,
            state,
            shutdown,
        }
    }

    /// The OpenID metadata URL to configure as `bot.openid_metadata_url`.
    pub fn metadata_url(&self) -> String {
        format!("{}/.well-known/openidconfiguration", self.base_url)
    }

    /// Replaces the published keys (takes effect on the bot's next fetch).
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().expect("keys lock") = keys;
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the metadata document was fetched.
    pub fn metadata_fetches(&self) -> usize {
        self.state.metadata_fetches.load(Ordering::SeqCst)
    }

    /// The `[bot]` settings of a bot that trusts this IdP (test app id, tenant and secret).
    pub fn bot_toml(&self) -> String {
        bot_toml(&self.metadata_url())
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `[bot]` settings with the test identity and the given OpenID metadata URL.
pub fn bot_toml(metadata_url: &str) -> String {
    format!(
        "[bot]\napp_id = \"{TEST_APP_ID}\"\napp_password = \"test-secret\"\n\
         tenant_id = \"{TEST_TENANT_ID}\"\nopenid_metadata_url = \"{metadata_url}\"\n"
    )
}

async fn metadata(State(state): State<Arc<IdpState>>) -> Json<Value> {
    state.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "issuer": TEST_ISSUER,
        "authorization_endpoint": format!("{}/authorize", state.base_url),
        "jwks_uri": format!("{}/keys", state.base_url),
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    }))
}

async fn jwks(State(state): State<Arc<IdpState>>) -> Json<Value> {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = state.keys.lock().expect("keys lock").clone();
    Json(json!({ "keys": keys }))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid channel → bot claims for the test bot, with `overrides` merged in (a `null` value
/// removes the claim).
pub fn claims(overrides: Value) -> Value {
    let now = now();
    let mut claims = json!({
        "serviceurl": TEST_SERVICE_URL,
        "nbf": now - 60,
        "exp": now + 3600,
        "iss": TEST_ISSUER,
        "aud": TEST_APP_ID,
    });
    let map = claims.as_object_mut().expect("object");
    if let Value::Object(overrides) = overrides {
        for (name, value) in overrides {
            if value.is_null() {
                map.remove(&name);
            } else {
                map.insert(name, value);
            }
        }
    }
    claims
}

/// A token with `claims(overrides)`, signed by `key` with `alg` (an RSA one) and header `kid`.
pub fn mint(overrides: Value, key: TestKey, alg: Algorithm, kid: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims(overrides), &key.encoding_key()).expect("token signs")
}

/// A valid RS256 token from the `test` key.
pub fn valid_token() -> String {
    mint(
        json!({}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    )
}

/// An HS256 token (shared secret) naming the `test` key id.
pub fn hs256_token(overrides: Value, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(TestKey::Test.kid().to_owned());
    jsonwebtoken::encode(
        &header,
        &claims(overrides),
        &EncodingKey::from_secret(secret),
    )
    .expect("token signs")
}

/// An unsigned `alg: none` token naming the `test` key id (empty signature part).
pub fn none_token(overrides: Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": TestKey::Test.kid()});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims(overrides).to_string())
    )
}

/// `token` with one bit of its signature flipped.
pub fn tamper_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("a JWT");
    let mut bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    let last = bytes.last_mut().expect("non-empty signature");
    *last ^= 0x01;
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A personal-chat `message` activity from the test tenant, to `TEST_SERVICE_URL`.
pub fn message_activity(text: &str) -> Value {
    json!({
        "type": "message",
        "id": "1700000000000",
        "timestamp": "2026-11-27T10:00:00.000Z",
        "channelId": "msteams",
        "serviceUrl": TEST_SERVICE_URL,
        "from": {
            "id": "29:1user-test",
            "name": "Test User",
            "aadObjectId": "00000000-0000-0000-0000-0000000000aa"
        },
        "recipient": {"id": format!("28:{TEST_APP_ID}"), "name": "m365bot"},
        "conversation": {
            "id": "a:1personal-test-conversation",
            "conversationType": "personal",
            "tenantId": TEST_TENANT_ID
        },
        "text": text,
        "textFormat": "plain",
        "locale": "en-US",
        "channelData": {"tenant": {"id": TEST_TENANT_ID}}
    })
}
