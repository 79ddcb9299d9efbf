//! The ID token of an account-linking sign-in, against the Entra emulator's real metadata and
//! keys: a correct token is accepted; a forged signature, another audience or issuer, a wrong
//! nonce, an expired token, `alg: none` and HS256 are each refused (the callback stores nothing
//! unless validation succeeds).

mod support;

use m365bot::link::token::{TokenProblem, validate_id_token};
use m365bot::sandbox::{Sandbox, SandboxOptions};
use m365bot::upstream::entra::EntraClient;
use serde_json::{Value, json};
use support::tokens;

const CLIENT_ID: &str = "6a1e5d0b-0000-4000-8000-00000000aaaa";
const NONCE: &str = "n-0S6_WzA2Mj";

struct Harness {
    _sandbox: Sandbox,
    entra: EntraClient,
    tenant: String,
    issuer: String,
}

async fn harness() -> Harness {
    let sandbox = Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts");
    let authority = url::Url::parse(&format!("{}/", sandbox.urls().entra)).expect("url");
    let entra = EntraClient::new(reqwest::Client::new(), authority);
    let tenant = sandbox.demo().tenant_id.clone();
    let issuer = entra
        .openid_configuration_v2(&tenant)
        .await
        .expect("metadata")
        .issuer
        .to_string();
    Harness {
        _sandbox: sandbox,
        entra,
        tenant,
        issuer,
    }
}

fn claims(h: &Harness) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "aud": CLIENT_ID,
        "iss": h.issuer,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "tid": h.tenant,
        "oid": "7C1E0F4A-0000-4000-8000-000000000001",
        "preferred_username": "admin@contoso.onmicrosoft.com",
        "name": "System Administrator",
        "nonce": NONCE,
        "ver": "2.0",
    })
}

async fn validate(h: &Harness, token: &str) -> Result<String, TokenProblem> {
    validate_id_token(&h.entra, &h.tenant, CLIENT_ID, token, NONCE)
        .await
        .map(|claims| claims.oid)
}

#[tokio::test]
async fn a_token_signed_by_the_tenant_is_accepted() {
    let h = harness().await;
    let oid = validate(&h, &tokens::sandbox_signed(&claims(&h)))
        .await
        .expect("valid");
    assert_eq!(oid, "7c1e0f4a-0000-4000-8000-000000000001");
}

#[tokio::test]
async fn forged_or_misdirected_id_tokens_are_refused() {
    let h = harness().await;
    let now = chrono::Utc::now().timestamp();
    let with = |name: &str, value: Value| {
        let mut c = claims(&h);
        c[name] = value;
        c
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "forged signature",
            tokens::with_forged_signature(&tokens::sandbox_signed(&claims(&h))),
        ),
        (
            "other audience",
            tokens::sandbox_signed(&with("aud", json!("another-app"))),
        ),
        (
            "other issuer",
            tokens::sandbox_signed(&with(
                "iss",
                json!(
                    "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"
                ),
            )),
        ),
        (
            "wrong nonce",
            tokens::sandbox_signed(&with("nonce", json!("replayed-nonce"))),
        ),
        (
            "expired",
            tokens::sandbox_signed(&with("exp", json!(now - 3600))),
        ),
        ("alg none", tokens::unsigned(&claims(&h))),
        (
            "HS256 with the public modulus as secret",
            tokens::hs256_signed(&claims(&h), b"AQAB"),
        ),
    ];
    for (what, token) in cases {
        let refused = validate(&h, &token).await;
        assert!(refused.is_err(), "{what}: {refused:?}");
        if what == "wrong nonce" {
            assert_eq!(refused, Err(TokenProblem::Nonce), "{what}");
        }
    }
}
