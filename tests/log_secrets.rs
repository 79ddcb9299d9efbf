//! The logs of full authenticated exchanges (valid inbound token, outbound token request,
//! reply through the connector, and a failing token request) contain no secret and no token.
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m365bot::config::{LogFormat, LogSettings};
use serde_json::json;
use support::botframework::{FakeIdp, TestKey, bearer, message_activity, mint};
use support::connector::{FakeConnector, ScriptedResponse, TEST_APP_PASSWORD, invalid_secret_body};
use support::{TestApp, merge_toml};

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_or_token_reaches_the_logs() {
    // Arrange: every log line at trace level, as JSON, into memory.
    let captured = Captured::default();
    let log_settings = LogSettings {
        format: LogFormat::Json,
        filter: "trace".to_owned(),
    };
    m365bot::telemetry::init(&log_settings, captured.clone());
    let idp = FakeIdp::start().await;
    let connector = FakeConnector::start().await;
    let settings = merge_toml(
        &idp.bot_toml(),
        &support::connector::connector_settings_toml(&connector),
    );
    let bot = TestApp::spawn(&settings).await;

    // Act 1: an authenticated `help`, answered through the connector with a bearer token.
    let inbound_token = mint(
        json!({"serviceurl": connector.service_url()}),
        TestKey::Test,
        jsonwebtoken::Algorithm::RS256,
        TestKey::Test.kid(),
    );
    let mut activity = message_activity("help");
    activity["serviceUrl"] = json!(connector.service_url());
    let response = bot
        .post_activity(&activity, Some(&bearer(&inbound_token)))
        .await;
    assert_eq!(response.status(), 200);
    let requests = connector.wait_for_requests(1, Duration::from_secs(5)).await;
    let outbound_token = requests[0]
        .bearer()
        .expect("reply carried a bearer token")
        .to_owned();

    // Act 2: the token endpoint refuses the secret (AADSTS7000215) on the next refresh.
    connector.revoke_tokens();
    connector.push_token_response(ScriptedResponse::json(401, invalid_secret_body()));
    activity["id"] = json!("second-message");
    let response = bot
        .post_activity(&activity, Some(&bearer(&inbound_token)))
        .await;
    assert_eq!(
        response.status(),
        200,
        "a failed reply is logged, the activity still accepted"
    );

    // Act 3: a refused inbound request.
    let response = bot.post_activity(&activity, Some("Bearer not-a-jwt")).await;
    assert_eq!(response.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Assert
    let logs = String::from_utf8(captured.0.lock().expect("log lock").clone()).expect("utf-8");
    assert!(logs.lines().count() > 5, "the exchange was logged:\n{logs}");
    assert!(
        logs.contains("reply not delivered"),
        "the failure is logged:\n{logs}"
    );
    for (what, secret) in [
        ("inbound JWT", inbound_token.as_str()),
        (
            "inbound JWT signature",
            inbound_token.rsplit('.').next().expect("signature"),
        ),
        ("outbound access token", outbound_token.as_str()),
        ("bot client secret", TEST_APP_PASSWORD),
        ("garbage bearer", "not-a-jwt"),
    ] {
        assert!(!logs.contains(secret), "{what} found in the logs:\n{logs}");
    }
}
