//! The outbound Bot Connector client against the fake connector and token endpoint, over real
//! HTTP on loopback.
mod support;

use std::sync::Arc;
use std::time::Duration;

use m365bot::config::Settings;
use m365bot::error::RetryKind;
use m365bot::metrics::Metrics;
use m365bot::teams::connector::{ConnectorClient, ConnectorError, TokenError, host_allowed};
use serde_json::{Value, json};
use support::connector::{
    FakeConnector, ScriptedResponse, TEST_APP_PASSWORD, connector_settings_toml,
};

const CHANNEL_THREAD: &str = "19:abc@thread.tacv2;messageid=123";
const PERSONAL: &str = "a:1xyz";

struct Harness {
    fake: FakeConnector,
    client: ConnectorClient,
    metrics: Arc<Metrics>,
}

/// A client in bot-framework mode pointed at a fresh fake, with `extra` TOML merged over it.
async fn harness(extra: &str) -> Harness {
    let fake = FakeConnector::start().await;
    let toml = support::merge_toml(&connector_settings_toml(&fake), extra);
    let settings = Settings::from_toml_str(&toml).expect("test settings");
    let http = m365bot::app::http_client(&settings).expect("http client");
    harness_with(fake, &settings, http)
}

fn harness_with(fake: FakeConnector, settings: &Settings, http: reqwest::Client) -> Harness {
    let metrics = Arc::new(Metrics::default());
    let client = ConnectorClient::new(settings, http, metrics.clone());
    Harness {
        fake,
        client,
        metrics,
    }
}

fn message(text: &str) -> Value {
    json!({"type": "message", "text": text})
}

/// The value of `m365bot_upstream_calls_total{upstream, outcome}` (0 when absent).
fn upstream_count(metrics: &Metrics, upstream: &str, outcome: &str) -> u64 {
    let prefix =
        format!("m365bot_upstream_calls_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .map_or(0, |n| n.parse().expect("counter value"))
}

#[tokio::test]
async fn one_token_serves_many_calls() {
    let h = harness("").await;
    for i in 0..5 {
        let sent = h
            .client
            .send(
                &h.fake.service_url(),
                PERSONAL,
                &message(&format!("hi {i}")),
            )
            .await
            .expect("sent");
        assert!(!sent.id.is_empty(), "the connector's id is returned");
    }
    assert_eq!(h.fake.token_issue_count(), 1);
    let token = &h.fake.issued_tokens()[0];
    let requests = h.fake.requests();
    assert_eq!(requests.len(), 5);
    for request in &requests {
        assert_eq!(request.bearer(), Some(token.as_str()));
        assert_eq!(request.method, "POST");
    }
    assert_eq!(requests[4].body["text"], "hi 4");
    let form = &h.fake.token_requests()[0];
    assert_eq!(form.field("grant_type"), Some("client_credentials"));
    assert_eq!(form.field("client_id"), Some(support::TEST_APP_ID));
    assert_eq!(form.field("client_secret"), Some(TEST_APP_PASSWORD));
    assert_eq!(
        form.field("scope"),
        Some("https://api.botframework.com/.default")
    );
    assert_eq!(upstream_count(&h.metrics, "entra", "ok"), 1);
    assert_eq!(upstream_count(&h.metrics, "connector", "ok"), 5);
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let h = harness("").await;
    h.fake.set_token_delay(Duration::from_millis(200));
    let service_url = h.fake.service_url();
    let calls = (0..20).map(|i| {
        let body = message(&format!("n{i}"));
        let client = &h.client;
        let service_url = service_url.clone();
        async move { client.send(&service_url, PERSONAL, &body).await }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(h.fake.token_requests().len(), 1, "single-flight refresh");
    assert_eq!(h.fake.requests().len(), 20);
}

#[tokio::test]
async fn concurrent_callers_share_a_failed_token_request() {
    let h = harness("").await;
    h.fake.set_token_delay(Duration::from_millis(200));
    h.fake.push_token_response(ScriptedResponse::json(
        400,
        json!({"error": "invalid_request", "error_description": "AADSTS900144: missing", "error_codes": [900144]}),
    ));
    let service_url = h.fake.service_url();
    let calls = (0..5).map(|_| {
        let client = &h.client;
        let service_url = service_url.clone();
        async move { client.send(&service_url, PERSONAL, &message("x")).await }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(ConnectorError::Token(_)))),
        "{results:?}"
    );
    assert_eq!(
        h.fake.token_requests().len(),
        1,
        "waiters share the failure instead of hammering Entra"
    );
    // A later call tries again.
    h.client
        .send(&service_url, PERSONAL, &message("later"))
        .await
        .expect("fresh attempt succeeds");
    assert_eq!(h.fake.token_requests().len(), 2);
}

#[tokio::test]
async fn token_is_refreshed_within_five_minutes_of_expiry() {
    let h = harness("").await;
    h.fake.set_token_expires_in(json!(200));
    let url = h.fake.service_url();
    h.client
        .send(&url, PERSONAL, &message("1"))
        .await
        .expect("1");
    h.client
        .send(&url, PERSONAL, &message("2"))
        .await
        .expect("2");
    assert_eq!(h.fake.token_issue_count(), 2, "a 200 s token is refreshed");
    let tokens = h.fake.issued_tokens();
    let requests = h.fake.requests();
    assert_eq!(requests[0].bearer(), Some(tokens[0].as_str()));
    assert_eq!(requests[1].bearer(), Some(tokens[1].as_str()));
}

#[tokio::test]
async fn expires_in_as_a_string_is_understood() {
    let h = harness("").await;
    h.fake.set_token_expires_in(json!("3600"));
    let url = h.fake.service_url();
    h.client
        .send(&url, PERSONAL, &message("1"))
        .await
        .expect("1");
    h.client
        .send(&url, PERSONAL, &message("2"))
        .await
        .expect("2");
    assert_eq!(h.fake.token_issue_count(), 1);
}

#[tokio::test]
async fn unauthorized_refreshes_the_token_once_and_retries() {
    let h = harness("").await;
    let url = h.fake.service_url();
    h.client
        .send(&url, PERSONAL, &message("warm"))
        .await
        .expect("warm");
    h.fake.fail_next(401, None);
    h.client
        .send(&url, PERSONAL, &message("after 401"))
        .await
        .expect("retried with a fresh token");
    let tokens = h.fake.issued_tokens();
    assert_eq!(tokens.len(), 2);
    let requests = h.fake.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1].bearer(), Some(tokens[0].as_str()));
    assert_eq!(requests[2].bearer(), Some(tokens[1].as_str()));
    assert_eq!(requests[2].body["text"], "after 401");
}

#[tokio::test]
async fn revoked_token_is_replaced() {
    let h = harness("").await;
    let url = h.fake.service_url();
    h.client
        .send(&url, PERSONAL, &message("1"))
        .await
        .expect("1");
    h.fake.revoke_tokens();
    h.client
        .send(&url, PERSONAL, &message("2"))
        .await
        .expect("2");
    assert_eq!(h.fake.token_issue_count(), 2);
    assert_eq!(h.fake.requests().len(), 3);
}

#[tokio::test]
async fn a_second_unauthorized_is_returned_not_retried() {
    let h = harness("").await;
    h.fake.fail_next(401, None);
    h.fake.fail_next(401, None);
    h.fake.fail_next(401, None);
    let err = h
        .client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect_err("still 401");
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.retry_kind(), RetryKind::Permanent);
    assert_eq!(h.fake.requests().len(), 2, "exactly one retry");
    assert_eq!(h.fake.token_issue_count(), 2);
}

#[tokio::test]
async fn host_not_allowed_makes_no_request_at_all() {
    let h = harness("[bot]\nallowed_service_url_hosts = [\"smba.trafficmanager.net\"]").await;
    let err = h
        .client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ConnectorError::HostNotAllowed(host) if host == "127.0.0.1"),
        "{err:?}"
    );
    assert_eq!(err.retry_kind(), RetryKind::Permanent);
    assert!(h.fake.requests().is_empty());
    assert!(h.fake.token_requests().is_empty(), "no token fetched");
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused() {
    let h = harness("[bot]\nallowed_service_url_hosts = [\"smba.trafficmanager.net\"]").await;
    let err = h
        .client
        .reply(
            "http://smba.trafficmanager.net/amer/",
            CHANNEL_THREAD,
            "1",
            &message("x"),
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ConnectorError::InvalidServiceUrl(_)),
        "{err:?}"
    );
    assert!(h.fake.token_requests().is_empty(), "no token fetched");
}

#[test]
fn wildcard_hosts_match_sub_domains() {
    let allowed = vec!["*.botframework.com".to_owned(), "127.0.0.1".to_owned()];
    assert!(host_allowed(&allowed, "smba.botframework.com"));
    assert!(host_allowed(&allowed, "EU.SMBA.botframework.com"));
    assert!(!host_allowed(&allowed, "botframework.com.attacker.net"));
    assert!(!host_allowed(&allowed, "notbotframework.com"));
    assert!(!host_allowed(&allowed, "127.0.0.2"));
}

#[tokio::test]
async fn ids_reach_the_connector_exactly() {
    let h = harness("").await;
    let url = h.fake.service_url();
    let odd = "x/y?z#w v%20;@:";
    h.client
        .reply(&url, CHANNEL_THREAD, "1:2@x", &message("r"))
        .await
        .expect("reply");
    h.client
        .send(&url, PERSONAL, &message("s"))
        .await
        .expect("send");
    h.client
        .send(&url, odd, &message("o"))
        .await
        .expect("odd id");
    let updated = h
        .client
        .update(&url, CHANNEL_THREAD, "1700000000001", &message("u"))
        .await
        .expect("update");
    assert_eq!(updated.id, "1700000000001");
    let requests = h.fake.requests();
    assert_eq!(requests[0].conversation_id.as_deref(), Some(CHANNEL_THREAD));
    assert_eq!(requests[0].activity_id.as_deref(), Some("1:2@x"));
    assert_eq!(
        requests[0].path,
        "/v3/conversations/19%3Aabc%40thread.tacv2%3Bmessageid%3D123/activities/1%3A2%40x"
    );
    assert_eq!(requests[1].conversation_id.as_deref(), Some(PERSONAL));
    assert_eq!(requests[1].path, "/v3/conversations/a%3A1xyz/activities");
    assert_eq!(requests[2].conversation_id.as_deref(), Some(odd));
    assert_eq!(requests[3].method, "PUT");
    assert_eq!(requests[3].activity_id.as_deref(), Some("1700000000001"));
    assert_eq!(requests[3].body["text"], "u");
}

#[tokio::test]
async fn service_url_without_trailing_slash_and_with_a_path() {
    let h = harness("").await;
    let url = format!("{}amer/tenant", h.fake.service_url());
    // The fake serves only the root, so a path prefix gives 404: the URL is still built right.
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("404 from the fake");
    assert_eq!(err.status(), Some(404));
    let bare = h.fake.service_url().trim_end_matches('/').to_owned();
    h.client
        .send(&bare, PERSONAL, &message("y"))
        .await
        .expect("slash added");
    assert_eq!(
        h.fake.requests().last().map(|r| r.path.clone()).as_deref(),
        Some("/v3/conversations/a%3A1xyz/activities")
    );
}

#[tokio::test]
async fn throttling_is_transient_with_retry_after() {
    let h = harness("").await;
    h.fake.fail_next(429, Some(2));
    let err = h
        .client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect_err("throttled");
    assert_eq!(
        err.retry_kind(),
        RetryKind::Transient {
            retry_after: Some(Duration::from_secs(2))
        }
    );
    assert_eq!(err.error_code(), Some("Throttled"));
    assert_eq!(h.fake.requests().len(), 1, "no retry inside the client");
    assert_eq!(upstream_count(&h.metrics, "connector", "transient"), 1);
}

#[tokio::test]
async fn bot_removed_is_permanent_and_recognised() {
    let h = harness("").await;
    let url = h.fake.service_url();
    h.fake.fail_next_bot_removed();
    let err = h
        .client
        .reply(&url, CHANNEL_THREAD, "1", &message("x"))
        .await
        .expect_err("removed");
    assert!(err.is_bot_removed());
    assert_eq!(err.retry_kind(), RetryKind::Permanent);
    assert_eq!(err.error_code(), Some("BotNotInConversationRoster"));
    assert!(
        err.to_string().contains("BotNotInConversationRoster"),
        "{err}"
    );

    h.fake.push_response(ScriptedResponse::teams_error(
        404,
        "ConversationNotFound",
        "Conversation not found.",
    ));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("404");
    assert!(err.is_bot_removed());

    h.fake.push_response(ScriptedResponse::teams_error(
        403,
        "ConversationBlockedByUser",
        "User blocked the conversation with the bot.",
    ));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("403");
    assert!(!err.is_bot_removed());
    assert_eq!(err.error_code(), Some("ConversationBlockedByUser"));
    assert_eq!(err.retry_kind(), RetryKind::Permanent);

    h.fake.push_response(ScriptedResponse::teams_error(
        413,
        "MessageSizeTooBig",
        "Message size too big.",
    ));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("413");
    assert_eq!(err.retry_kind(), RetryKind::Permanent);
    assert_eq!(upstream_count(&h.metrics, "connector", "permanent"), 4);
}

#[tokio::test]
async fn server_errors_are_transient() {
    let h = harness("").await;
    let url = h.fake.service_url();
    for status in [500, 502, 503, 504, 412] {
        h.fake.fail_next(status, None);
        let err = h
            .client
            .send(&url, PERSONAL, &message("x"))
            .await
            .expect_err("fails");
        assert_eq!(err.status(), Some(status));
        assert_eq!(
            err.retry_kind(),
            RetryKind::Transient { retry_after: None },
            "{status}"
        );
    }
    h.fake.push_response(ScriptedResponse::raw(
        502,
        "text/html",
        &format!("<html>{}</html>", "bad gateway ".repeat(200)),
    ));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("502");
    assert!(err.retry_kind().is_retryable());
    assert!(err.to_string().len() < 500, "body is truncated: {err}");
    assert_eq!(h.fake.requests().len(), 6);
}

#[tokio::test]
async fn garbage_in_a_success_is_a_decode_error() {
    let h = harness("").await;
    let url = h.fake.service_url();
    h.fake.push_response(ScriptedResponse::raw(
        200,
        "text/html",
        "<html><body>Welcome to the captive portal</body></html>",
    ));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("html");
    assert!(matches!(err, ConnectorError::Decode(_)), "{err:?}");
    h.fake.push_response(ScriptedResponse::raw(
        201,
        "application/json",
        "{\"id\": \"12",
    ));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("cut");
    assert!(matches!(err, ConnectorError::Decode(_)), "{err:?}");
    h.fake
        .push_response(ScriptedResponse::raw(200, "application/json", "[1,2]"));
    let err = h
        .client
        .create_conversation(&url, &json!({"bot": {"id": "b"}}))
        .await
        .expect_err("not an object");
    assert!(matches!(err, ConnectorError::Decode(_)), "{err:?}");
}

#[tokio::test]
async fn error_texts_never_repeat_the_token() {
    let h = harness("").await;
    h.fake.push_response(
        ScriptedResponse::raw(400, "text/plain", "you sent: ").echoing_authorization(),
    );
    let err = h
        .client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect_err("400");
    let token = &h.fake.issued_tokens()[0];
    let text = format!("{err} {err:?}");
    assert!(text.contains("you sent"), "{text}");
    assert!(!text.contains(token.as_str()), "{text}");
}

#[tokio::test]
async fn create_conversation_returns_the_new_ids() {
    let h = harness("").await;
    let url = h.fake.service_url();
    let params = json!({
        "isGroup": true,
        "bot": {"id": support::TEST_APP_ID},
        "channelData": {"channel": {"id": "19:general@thread.tacv2"}, "tenant": {"id": support::TEST_TENANT_ID}},
        "activity": message("A new case thread"),
        "tenantId": support::TEST_TENANT_ID,
    });
    let created = h
        .client
        .create_conversation(&url, &params)
        .await
        .expect("created");
    assert!(
        created.id.starts_with("19:general@thread.tacv2;messageid="),
        "{}",
        created.id
    );
    assert!(created.activity_id.is_some());
    let personal = json!({"bot": {"id": support::TEST_APP_ID}, "members": [{"id": "29:user"}],
        "channelData": {"tenant": {"id": support::TEST_TENANT_ID}}});
    let created = h
        .client
        .create_conversation(&url, &personal)
        .await
        .expect("1:1");
    assert!(created.id.starts_with("a:"), "{}", created.id);
    assert_eq!(created.activity_id, None);
    let requests = h.fake.requests();
    assert_eq!(requests[0].path, "/v3/conversations");
    assert_eq!(requests[0].body, params);
    assert!(requests[1].bearer().is_some());
}

#[tokio::test]
async fn delete_uses_the_delete_method() {
    let h = harness("").await;
    h.client
        .delete(&h.fake.service_url(), CHANNEL_THREAD, "17")
        .await
        .expect("deleted");
    let request = &h.fake.requests()[0];
    assert_eq!(request.method, "DELETE");
    assert_eq!(request.activity_id.as_deref(), Some("17"));
}

#[tokio::test]
async fn invalid_secret_gives_a_typed_error_without_the_secret() {
    let secret = "Wr0ng~secret.value_9f8e7d";
    let h = harness(&format!("[bot]\napp_password = \"{secret}\"")).await;
    let err = h
        .client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect_err("token refused");
    let ConnectorError::Token(TokenError::Rejected {
        status,
        error,
        error_codes,
        ..
    }) = &err
    else {
        panic!("expected a token rejection, got {err:?}");
    };
    assert_eq!(*status, 401);
    assert_eq!(error, "invalid_client");
    assert_eq!(error_codes, &vec![7000215]);
    let text = err.to_string();
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(text.contains("bot.app_password"), "says what to do: {text}");
    assert!(!text.contains(secret) && !format!("{err:?}").contains(secret));
    assert!(!text.contains("Trace ID"), "only the first line: {text}");
    assert_eq!(err.retry_kind(), RetryKind::Permanent);
    assert!(h.fake.requests().is_empty(), "nothing sent without a token");
    assert_eq!(upstream_count(&h.metrics, "entra", "permanent"), 1);
}

#[tokio::test]
async fn a_token_error_echoing_the_secret_is_redacted() {
    let h = harness("").await;
    h.fake.push_token_response(ScriptedResponse::json(
        400,
        json!({"error": "invalid_request", "error_description": format!("bad client_secret={TEST_APP_PASSWORD}"), "error_codes": [900144]}),
    ));
    let err = h
        .client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("[redacted]"), "{text}");
    assert!(!text.contains(TEST_APP_PASSWORD), "{text}");
}

#[tokio::test]
async fn token_endpoint_troubles_are_classified() {
    let h = harness("").await;
    let url = h.fake.service_url();
    h.fake
        .push_token_response(ScriptedResponse::status(429).with_header("retry-after", "3"));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("429");
    assert_eq!(
        err.retry_kind(),
        RetryKind::Transient {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    h.fake.push_token_response(ScriptedResponse::raw(
        200,
        "text/html",
        "<html>proxy login</html>",
    ));
    let err = h
        .client
        .send(&url, PERSONAL, &message("x"))
        .await
        .expect_err("html");
    assert!(
        matches!(err, ConnectorError::Token(TokenError::Decode(_))),
        "{err:?}"
    );
    assert_eq!(upstream_count(&h.metrics, "entra", "transient"), 2);
    assert!(h.fake.requests().is_empty());
}

#[tokio::test]
async fn the_fixture_body_is_what_the_fake_answers() {
    let body = support::connector::invalid_secret_body();
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"][0], 7000215);
}

#[tokio::test]
async fn no_password_sends_no_authorization_header() {
    let fake = FakeConnector::start().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:3978\"\n[bot]\nauth_mode = \"insecure-local\"\n\
         tenant_id = \"agents-playground\"\noutbound_token_url = \"{}\"\n\
         allowed_service_url_hosts = [\"127.0.0.1\"]\n",
        fake.token_url()
    );
    let settings = Settings::from_toml_str(&toml).expect("playground settings");
    let http = m365bot::app::http_client(&settings).expect("http");
    let h = harness_with(fake, &settings, http);
    h.fake.set_require_auth(false);
    h.client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect("sent");
    let request = &h.fake.requests()[0];
    assert_eq!(request.authorization(), None);
    assert!(h.fake.token_requests().is_empty());
    assert_eq!(upstream_count(&h.metrics, "entra", "ok"), 0);
}

#[tokio::test]
async fn unreachable_connector_is_a_network_error() {
    let h = harness("").await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let err = h
        .client
        .send(
            &format!("http://127.0.0.1:{port}/"),
            PERSONAL,
            &message("x"),
        )
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectorError::Network(_)), "{err:?}");
    assert_eq!(err.retry_kind(), RetryKind::Network);
    assert_eq!(upstream_count(&h.metrics, "connector", "network"), 1);
}

#[tokio::test]
async fn a_slow_connector_times_out_as_a_network_error() {
    let fake = FakeConnector::start().await;
    let settings = Settings::from_toml_str(&connector_settings_toml(&fake)).expect("settings");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let h = harness_with(fake, &settings, http);
    h.fake
        .push_response(ScriptedResponse::status(200).with_delay(Duration::from_secs(3)));
    let err = h
        .client
        .send(&h.fake.service_url(), PERSONAL, &message("x"))
        .await
        .expect_err("timed out");
    assert_eq!(err.retry_kind(), RetryKind::Network, "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
}
