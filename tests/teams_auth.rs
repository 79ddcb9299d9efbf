//! Inbound Bot Framework authentication of `POST /api/messages`, against a loopback fake IdP.
//!
//! Every refusal must be a 401 JSON error and must not reach the message handler (which stores
//! a conversation reference when it runs).
mod support;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::TestApp;
use support::botframework::{
    FakeIdp, TEST_SERVICE_URL, TestKey, bearer, bot_toml, hs256_token, message_activity, mint,
    none_token, now, tamper_signature, valid_token,
};

/// A bot trusting `idp`. Outbound token requests go to a path the fake IdP does not serve, so a
/// reply attempt fails on loopback and never reaches the internet.
async fn spawn_bot(idp: &FakeIdp) -> TestApp {
    let toml = format!(
        "{}outbound_token_url = \"{}/no-token-endpoint\"\n",
        idp.bot_toml(),
        idp.base_url
    );
    TestApp::spawn(&toml).await
}

async fn conversations(app: &TestApp) -> i64 {
    app.app.db.conversation_count().await.expect("count")
}

/// Posts the `help` message with `token` (if any) and returns status and body.
async fn post(app: &TestApp, activity: &Value, authorization: Option<&str>) -> (u16, String) {
    let response = app.post_activity(activity, authorization).await;
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    (status, body)
}

/// Asserts a 401 JSON error that does not echo `token`, and that no handler ran; returns the
/// message.
async fn assert_refused(app: &TestApp, (status, body): (u16, String), token: &str) -> String {
    assert_eq!(status, 401, "body: {body}");
    let json: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(json["error"]["code"], "unauthorized", "{body}");
    let message = json["error"]["message"]
        .as_str()
        .expect("message string")
        .to_owned();
    assert!(!message.is_empty());
    assert!(message.len() < 200, "short message: {message}");
    if !token.is_empty() {
        assert!(!body.contains(token), "the token is echoed: {body}");
        let signature = token.rsplit('.').next().unwrap_or_default();
        if signature.len() > 8 {
            assert!(!body.contains(signature), "the signature is echoed");
        }
    }
    assert_eq!(
        conversations(app).await,
        0,
        "a handler ran despite the refusal"
    );
    message
}

async fn assert_accepted(app: &TestApp, (status, body): (u16, String)) {
    assert_eq!(status, 200, "body: {body}");
    assert_eq!(conversations(app).await, 1, "the message handler ran once");
}

#[tokio::test]
async fn valid_token_is_accepted() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = valid_token();
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    assert_accepted(&app, result).await;
    assert_eq!(idp.metadata_fetches(), 1);
    assert_eq!(idp.jwks_fetches(), 1);

    // Keys are cached: a second request fetches nothing.
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    assert_eq!(result.0, 200, "{}", result.1);
    assert_eq!(idp.jwks_fetches(), 1, "keys are cached");
}

#[tokio::test]
async fn rs384_and_rs512_are_accepted() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    for alg in [Algorithm::RS384, Algorithm::RS512] {
        let token = mint(json!({}), TestKey::Test, alg, TestKey::Test.kid());
        let (status, body) = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
    assert_eq!(conversations(&app).await, 1);
}

#[tokio::test]
async fn wrong_serviceurl_claim_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = mint(
        json!({"serviceurl": "https://attacker.example/teams/"}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("serviceurl"), "{message}");

    // The comparison is exact: a trailing-slash difference is refused too.
    let mut activity = message_activity("help");
    activity["serviceUrl"] = json!(TEST_SERVICE_URL.trim_end_matches('/'));
    let token = valid_token();
    let result = post(&app, &activity, Some(&bearer(&token))).await;
    assert_refused(&app, result, &token).await;
}

#[tokio::test]
async fn missing_serviceurl_claim_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = mint(
        json!({"serviceurl": null}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("serviceurl"), "{message}");
}

#[tokio::test]
async fn key_not_endorsed_for_msteams_is_refused() {
    let idp = FakeIdp::with_keys(vec![TestKey::Test.jwk(&["slack", "webchat"])]).await;
    let app = spawn_bot(&idp).await;
    let token = valid_token();
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("endorsed"), "{message}");
}

#[tokio::test]
async fn key_without_endorsements_is_accepted() {
    let idp = FakeIdp::with_keys(vec![TestKey::Test.jwk(&[])]).await;
    let app = spawn_bot(&idp).await;
    let result = post(
        &app,
        &message_activity("help"),
        Some(&bearer(&valid_token())),
    )
    .await;
    assert_accepted(&app, result).await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = mint(
        json!({"aud": "99999999-2222-3333-4444-555555555555"}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("audience"), "{message}");
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = mint(
        json!({"iss": "https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("issuer"), "{message}");
}

#[tokio::test]
async fn token_expired_four_minutes_ago_is_accepted() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = mint(
        json!({"exp": now() - 4 * 60, "nbf": now() - 3600}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    assert_accepted(&app, result).await;
}

#[tokio::test]
async fn token_expired_six_minutes_ago_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = mint(
        json!({"exp": now() - 6 * 60, "nbf": now() - 3600}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn token_not_valid_yet_and_token_without_exp_are_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let future = mint(
        json!({"nbf": now() + 10 * 60}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&future))).await;
    let message = assert_refused(&app, result, &future).await;
    assert!(message.contains("not valid yet"), "{message}");

    let no_exp = mint(
        json!({"exp": null}),
        TestKey::Test,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&no_exp))).await;
    let message = assert_refused(&app, result, &no_exp).await;
    assert!(message.contains("exp"), "{message}");
}

#[tokio::test]
async fn hs256_token_is_refused_before_any_key_lookup() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    // Even signed with the app password, a shared-secret token is not a channel token.
    let token = hs256_token(json!({}), b"test-secret");
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("HS256"), "{message}");
    assert_eq!(
        idp.jwks_fetches(),
        0,
        "no key lookup for a refused algorithm"
    );
}

#[tokio::test]
async fn alg_none_token_is_refused_before_any_key_lookup() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = none_token(json!({}));
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("unsupported token algorithm"), "{message}");
    assert_eq!(
        idp.jwks_fetches(),
        0,
        "no key lookup for a refused algorithm"
    );
}

#[tokio::test]
async fn missing_or_non_bearer_header_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let result = post(&app, &message_activity("help"), None).await;
    let message = assert_refused(&app, result, "").await;
    assert_eq!(message, "missing bearer token");

    let basic = "Basic dGVzdDp0ZXN0LXNlY3JldA==";
    let result = post(&app, &message_activity("help"), Some(basic)).await;
    let message = assert_refused(&app, result, "dGVzdDp0ZXN0LXNlY3JldA==").await;
    assert!(message.contains("Bearer"), "{message}");

    let result = post(&app, &message_activity("help"), Some("Bearer not-a-jwt")).await;
    assert_refused(&app, result, "not-a-jwt").await;
    assert_eq!(idp.jwks_fetches(), 0);
}

#[tokio::test]
async fn tampered_signature_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let token = tamper_signature(&valid_token());
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("signature"), "{message}");
}

#[tokio::test]
async fn tampered_claims_are_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    // Swap in another audience while keeping the original signature.
    let token = valid_token();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let forged = json!({"aud": "99999999-2222-3333-4444-555555555555"});
    let forged_claims = support::botframework::claims(forged);
    parts[1] = base64_url(&forged_claims.to_string());
    let forged = parts.join(".");
    let result = post(&app, &message_activity("help"), Some(&bearer(&forged))).await;
    let message = assert_refused(&app, result, &forged).await;
    assert!(message.contains("signature"), "{message}");
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn token_signed_by_a_key_not_in_the_jwks_is_refused() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    // Signed by the `other` key but claiming the published `test` kid.
    let token = mint(
        json!({}),
        TestKey::Other,
        Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("signature"), "{message}");

    // Signed by the `other` key under its own kid, which the IdP does not publish.
    let token = mint(
        json!({}),
        TestKey::Other,
        Algorithm::RS256,
        TestKey::Other.kid(),
    );
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("unknown key"), "{message}");
}

#[tokio::test]
async fn unknown_kid_refreshes_keys_once_then_is_rate_limited() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let result = post(
        &app,
        &message_activity("help"),
        Some(&bearer(&valid_token())),
    )
    .await;
    assert_accepted(&app, result).await;
    assert_eq!(idp.jwks_fetches(), 1);

    // The IdP rolls a new key in; the first token signed with it triggers one refresh.
    idp.set_keys(vec![
        TestKey::Test.jwk(&["msteams"]),
        TestKey::Other.jwk(&["msteams"]),
    ]);
    let rolled = mint(
        json!({}),
        TestKey::Other,
        Algorithm::RS256,
        TestKey::Other.kid(),
    );
    let (status, body) = post(&app, &message_activity("help"), Some(&bearer(&rolled))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.jwks_fetches(), 2, "an unknown kid refreshes the keys");

    // Another unknown kid right after does not fetch again.
    idp.set_keys(vec![
        TestKey::Test.jwk(&["msteams"]),
        TestKey::Other.jwk(&["msteams"]),
        TestKey::Other.jwk_with_kid("other-key-2", &["msteams"]),
    ]);
    let second = mint(json!({}), TestKey::Other, Algorithm::RS256, "other-key-2");
    let (status, body) = post(&app, &message_activity("help"), Some(&bearer(&second))).await;
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown key")),
        "{body}"
    );
    assert_eq!(
        idp.jwks_fetches(),
        2,
        "unknown-kid refreshes are rate-limited"
    );
    assert_eq!(
        conversations(&app).await,
        1,
        "no handler ran for the refused token"
    );

    // Known keys keep working.
    let (status, body) = post(&app, &message_activity("help"), Some(&bearer(&rolled))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn concurrent_unknown_kid_requests_share_one_refresh() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let (status, body) = post(
        &app,
        &message_activity("help"),
        Some(&bearer(&valid_token())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.jwks_fetches(), 1);

    idp.set_keys(vec![
        TestKey::Test.jwk(&["msteams"]),
        TestKey::Other.jwk(&["msteams"]),
    ]);
    let rolled = bearer(&mint(
        json!({}),
        TestKey::Other,
        Algorithm::RS256,
        TestKey::Other.kid(),
    ));
    let activity = message_activity("help");
    let requests = (0..12).map(|_| post(&app, &activity, Some(&rolled)));
    let results = futures_util::future::join_all(requests).await;
    for (status, body) in results {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        idp.jwks_fetches(),
        2,
        "one refresh for all concurrent requests"
    );
}

#[tokio::test]
async fn unreachable_keys_are_a_401() {
    let idp = FakeIdp::start().await;
    // The metadata URL answers 404: no keys can be had.
    let toml = format!(
        "{}outbound_token_url = \"{}/no-token-endpoint\"\n",
        bot_toml(&format!("{}/missing-metadata", idp.base_url)),
        idp.base_url
    );
    let app = TestApp::spawn(&toml).await;
    let token = valid_token();
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("signing keys unavailable"), "{message}");
    assert!(!message.contains("127.0.0.1"), "no internals: {message}");

    // Right after a failure the bot does not hammer the IdP; still a 401.
    let result = post(&app, &message_activity("help"), Some(&bearer(&token))).await;
    let message = assert_refused(&app, result, &token).await;
    assert!(message.contains("signing keys unavailable"), "{message}");
}

#[tokio::test]
async fn oversized_body_is_a_413_json_error() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let mut activity = message_activity("help");
    activity["text"] = json!("x".repeat(257 * 1024));
    let (status, body) = post(&app, &activity, Some(&bearer(&valid_token()))).await;
    assert_eq!(status, 413, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(json["error"]["code"], "payload_too_large", "{body}");
    assert_eq!(conversations(&app).await, 0);
}

#[tokio::test]
async fn malformed_json_with_a_valid_token_is_a_400() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let response = app
        .client
        .post(format!("{}/api/messages", app.base_url))
        .header("authorization", bearer(&valid_token()))
        .header("content-type", "application/json")
        .body("{\"type\": \"message\", ")
        .send()
        .await
        .expect("request reaches the bot");
    assert_eq!(response.status().as_u16(), 400);
    let json: Value = response.json().await.expect("JSON error body");
    assert_eq!(json["error"]["code"], "bad_request", "{json}");
    assert_eq!(conversations(&app).await, 0);
}

#[tokio::test]
async fn malformed_json_without_a_token_is_a_401() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let response = app
        .client
        .post(format!("{}/api/messages", app.base_url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request reaches the bot");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    assert_refused(&app, (status, body), "").await;
}

#[tokio::test]
async fn activity_from_another_tenant_is_a_403() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let mut activity = message_activity("help");
    activity["channelData"]["tenant"]["id"] = json!("ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee");
    activity["conversation"]["tenantId"] = json!("ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee");
    let (status, body) = post(&app, &activity, Some(&bearer(&valid_token()))).await;
    assert_eq!(status, 403, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(json["error"]["code"], "forbidden", "{body}");
    assert_eq!(conversations(&app).await, 0);
}

#[tokio::test]
async fn oversized_body_without_a_token_is_refused_before_it_is_read() {
    let idp = FakeIdp::start().await;
    let app = spawn_bot(&idp).await;
    let mut activity = message_activity("help");
    activity["text"] = json!("x".repeat(257 * 1024));
    let (status, body) = post(&app, &activity, None).await;
    assert_eq!(status, 401, "authentication comes first: {body}");
    assert_eq!(app.app.db.conversation_count().await.expect("count"), 0);
}
