//! `/api/messages` end to end in insecure-local mode (as with the Agents Playground): every
//! captured Teams and Playground activity parses, messages get card replies through a fake
//! connector, invokes are answered synchronously, installs and removals update the stored
//! conversation references.
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use m365bot::teams::activity::Activity;
use serde_json::{Value, json};
use support::TestApp;
use support::connector::FakeConnector;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/teams")
}

/// Every activity sample: `(file name, activity JSON)`; Playground captures are unwrapped.
fn activity_samples() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    let mut stack = vec![fixture_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("fixture dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy().into_owned();
            let is_activity = name.starts_with("teams-")
                || name.starts_with("pg-")
                || path.parent().is_some_and(|p| p.ends_with("templates"));
            if !is_activity {
                return None;
            }
            let json: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect(&name);
            let body = if json.get("method").is_some() {
                json["body"].clone()
            } else {
                json
            };
            Some((name, body))
        })
        .collect()
}

fn sample(name: &str) -> Value {
    activity_samples()
        .into_iter()
        .find(|(file, _)| file == name)
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// A bot in insecure-local mode serving the sample's tenant, replying to `fake`.
async fn bot_for(sample: &Value, fake: &FakeConnector) -> TestApp {
    let tenant = sample
        .pointer("/channelData/tenant/id")
        .or_else(|| sample.pointer("/conversation/tenantId"))
        .and_then(Value::as_str)
        .expect("sample has a tenant");
    let _ = fake;
    TestApp::spawn(&format!(
        "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"{tenant}\"\n\
         allowed_service_url_hosts = [\"127.0.0.1\"]\n"
    ))
    .await
}

fn pointed_at(mut activity: Value, fake: &FakeConnector) -> Value {
    activity["serviceUrl"] = json!(fake.service_url());
    activity
}

fn card_of(request: &support::connector::RecordedRequest) -> Value {
    let attachment = &request.body["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    attachment["content"].clone()
}

fn card_text(card: &Value) -> String {
    card.to_string()
}

#[test]
fn every_captured_activity_parses() {
    let samples = activity_samples();
    assert!(
        samples.len() >= 30,
        "expected the Teams and Playground samples, found {}",
        samples.len()
    );
    for (name, body) in samples {
        let activity: Activity =
            serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!activity.kind.is_empty(), "{name}: type");
        assert_eq!(activity.channel_id, "msteams", "{name}: channelId");
        assert!(
            !activity.conversation.id.is_empty(),
            "{name}: conversation id"
        );
        if body.pointer("/channelData/tenant/id").is_some()
            || body.pointer("/conversation/tenantId").is_some()
        {
            assert!(activity.tenant_id().is_some(), "{name}: tenant");
        }
        if activity.kind == "message" && activity.value.is_none() {
            assert!(activity.text.is_some(), "{name}: message text");
        }
    }
}

#[tokio::test]
async fn every_message_sample_gets_a_card_reply_through_the_connector() {
    let fake = FakeConnector::start().await;
    let messages: Vec<(String, Value)> = activity_samples()
        .into_iter()
        .filter(|(_, body)| body["type"] == "message")
        .collect();
    assert!(messages.len() >= 8, "message samples: {}", messages.len());
    let mut expected_requests = 0;
    for (name, body) in messages {
        let bot = bot_for(&body, &fake).await;
        let response = bot
            .post_activity(&pointed_at(body.clone(), &fake), None)
            .await;
        assert_eq!(response.status(), 200, "{name}");
        expected_requests += 1;
        let requests = fake
            .wait_for_requests(expected_requests, Duration::from_secs(5))
            .await;
        let reply = requests.last().expect("a reply");
        assert_eq!(reply.method, "POST", "{name}");
        assert_eq!(
            reply.conversation_id.as_deref(),
            body["conversation"]["id"].as_str(),
            "{name}"
        );
        assert_eq!(
            reply.activity_id.as_deref(),
            body["id"].as_str(),
            "{name}: reply to the message"
        );
        assert_eq!(reply.body["replyToId"], body["id"], "{name}");
        assert_eq!(
            reply.body["from"]["id"], body["recipient"]["id"],
            "{name}: sent as the bot"
        );
        let card = card_of(reply);
        assert_eq!(card["type"], "AdaptiveCard", "{name}");
        assert_eq!(card["version"], "1.5", "{name}");
        assert!(
            reply.authorization().is_none(),
            "{name}: no token without a password"
        );
        let stored = bot.app.db.conversation_count().await.expect("count");
        assert_eq!(stored, 1, "{name}: conversation reference stored");
    }
}

#[tokio::test]
async fn help_in_a_channel_mention_answers_with_the_command_list() {
    let fake = FakeConnector::start().await;
    let mut activity = sample("teams-channel-message-with-mention.json");
    activity["text"] = json!("<at>ridotest</at> help");
    let bot = bot_for(&activity, &fake).await;
    let response = bot
        .post_activity(&pointed_at(activity.clone(), &fake), None)
        .await;
    assert_eq!(response.status(), 200);
    let requests = fake.wait_for_requests(1, Duration::from_secs(5)).await;
    let card = card_of(&requests[0]);
    let text = card_text(&card);
    assert!(text.contains("m365bot commands"), "{text}");
    assert!(text.contains("help"), "{text}");
    let stored = bot
        .app
        .db
        .conversation("19:6848757105754c8981c67612732d9aa7@thread.tacv2")
        .await
        .expect("query")
        .expect("stored without the thread suffix");
    assert_eq!(stored.conversation_type, "channel");
    assert_eq!(
        stored.team_id.as_deref(),
        Some("19:66P469zibfbsGI-_a0aN_toLTZpyzS6u7CT3TsXdgPw1@thread.tacv2")
    );
}

#[tokio::test]
async fn slash_prefix_and_unknown_commands_are_understood() {
    let fake = FakeConnector::start().await;
    let base = sample("pg-personal-message-api.json");
    let bot = bot_for(&base, &fake).await;
    for (n, (text, expected)) in [
        ("/m365 help", "m365bot commands"),
        ("frobnicate", "frobnicate\\\" is not one of my commands"),
        ("hi, anyone there?", "I understand commands; type help"),
        ("setup now", "Usage"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut activity = pointed_at(base.clone(), &fake);
        activity["text"] = json!(text);
        activity["id"] = json!(format!("message-{n}"));
        assert_eq!(bot.post_activity(&activity, None).await.status(), 200);
        let requests = fake.wait_for_requests(n + 1, Duration::from_secs(5)).await;
        let card = card_text(&card_of(&requests[n]));
        assert!(card.contains(expected), "{text}: {card}");
        assert!(
            !card.contains("hi,"),
            "free text is quoted without its punctuation: {card}"
        );
    }
}

#[tokio::test]
async fn card_action_invoke_is_answered_in_the_http_response() {
    let fake = FakeConnector::start().await;
    let mut invoke = sample("pg-adaptiveCard-action-invoke-api.json");
    invoke["value"]["action"]["verb"] = json!("help");
    let bot = bot_for(&invoke, &fake).await;
    let response = bot.post_activity(&pointed_at(invoke, &fake), None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["statusCode"], 200);
    assert_eq!(body["type"], "application/vnd.microsoft.card.adaptive");
    assert!(body["value"].to_string().contains("m365bot commands"));
    assert!(
        fake.requests().is_empty(),
        "the card is replaced in the response, nothing is posted"
    );
}

#[tokio::test]
async fn card_action_without_verb_gets_an_error_body_not_a_crash() {
    let fake = FakeConnector::start().await;
    let invoke = sample("teams-adaptiveCard-action-invoke-personal.json");
    let bot = bot_for(&invoke, &fake).await;
    let response = bot.post_activity(&pointed_at(invoke, &fake), None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["statusCode"], 400);
    assert_eq!(body["type"], "application/vnd.microsoft.error");
}

#[tokio::test]
async fn sign_in_invokes_get_a_2xx_or_4xx_never_a_5xx() {
    let fake = FakeConnector::start().await;
    for (name, expected) in [
        ("teams-signin-verifyState-invoke.json", 200),
        // No single sign-on: 412 makes Teams fall back to the sign-in card.
        ("teams-signin-tokenExchange-invoke.json", 412),
    ] {
        // These SDK fixtures carry no tenant; Teams always sends one.
        let mut invoke = sample(name);
        invoke["channelData"] = json!({"tenant": {"id": support::TEST_TENANT_ID}});
        let bot = bot_for(&invoke, &fake).await;
        let id = invoke["value"]["id"].clone();
        let response = bot.post_activity(&pointed_at(invoke, &fake), None).await;
        assert_eq!(response.status(), expected, "{name}");
        if expected == 412 {
            // The shape of invoke-response-signin-tokenExchange-failure.json.
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["id"], id);
            assert!(
                body["failureDetail"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty())
            );
        }
    }
    let mut other = sample("teams-signin-verifyState-invoke.json");
    other["channelData"] = json!({"tenant": {"id": support::TEST_TENANT_ID}});
    other["name"] = json!("task/fetch");
    let bot = bot_for(&other, &fake).await;
    let response = bot.post_activity(&pointed_at(other, &fake), None).await;
    assert_eq!(response.status(), 400, "an invoke the bot does not handle");
}

#[tokio::test]
async fn activities_of_other_channels_are_refused() {
    let fake = FakeConnector::start().await;
    let message = sample("teams-channel-message-with-mention.json");
    let bot = bot_for(&message, &fake).await;
    for channel in ["webchat", "directline", "emulator", ""] {
        let mut activity = pointed_at(message.clone(), &fake);
        activity["channelId"] = json!(channel);
        let response = bot.post_activity(&activity, None).await;
        assert_eq!(response.status(), 403, "channelId {channel:?}");
    }
    assert!(fake.requests().is_empty(), "nothing answered");
    assert_eq!(bot.app.db.conversation_count().await.expect("count"), 0);
}

#[tokio::test]
async fn install_and_uninstall_keep_conversation_references() {
    let fake = FakeConnector::start().await;
    let install = sample("team-install.json");
    let bot = bot_for(&install, &fake).await;
    assert_eq!(
        bot.post_activity(&pointed_at(install.clone(), &fake), None)
            .await
            .status(),
        200
    );
    let stored = bot
        .app
        .db
        .conversation("team-id")
        .await
        .expect("query")
        .expect("stored");
    assert_eq!(stored.service_url, fake.service_url());
    assert_eq!(stored.team_id.as_deref(), Some("team-id"));
    let uninstall = sample("team-uninstall.json");
    assert_eq!(
        bot.post_activity(&pointed_at(uninstall, &fake), None)
            .await
            .status(),
        200
    );
    assert_eq!(
        bot.app.db.conversation_count().await.expect("count"),
        0,
        "removed on uninstall"
    );
}

#[tokio::test]
async fn personal_install_is_welcomed_with_the_help_card() {
    let fake = FakeConnector::start().await;
    let mut added = sample("teams-conversationUpdate-bot-added-personal.json");
    // The published sample anonymised the recipient differently from the added bot member.
    added["recipient"]["id"] = added["membersAdded"][0]["id"].clone();
    let bot = bot_for(&added, &fake).await;
    assert_eq!(
        bot.post_activity(&pointed_at(added, &fake), None)
            .await
            .status(),
        200
    );
    let requests = fake.wait_for_requests(1, Duration::from_secs(5)).await;
    assert!(card_text(&card_of(&requests[0])).contains("m365bot commands"));
    assert_eq!(bot.app.db.conversation_count().await.expect("count"), 1);
}

#[tokio::test]
async fn bot_removed_from_team_forgets_the_team() {
    let fake = FakeConnector::start().await;
    let added = sample("teams-conversationUpdate-bot-added-to-team.json");
    let bot = bot_for(&added, &fake).await;
    assert_eq!(
        bot.post_activity(&pointed_at(added.clone(), &fake), None)
            .await
            .status(),
        200
    );
    assert_eq!(bot.app.db.conversation_count().await.expect("count"), 1);
    let mut removed = added.clone();
    removed["membersRemoved"] = removed["membersAdded"].clone();
    removed["membersAdded"] = json!([]);
    removed["channelData"]["eventType"] = json!("teamMemberRemoved");
    assert_eq!(
        bot.post_activity(&pointed_at(removed, &fake), None)
            .await
            .status(),
        200
    );
    assert_eq!(bot.app.db.conversation_count().await.expect("count"), 0);
}

#[tokio::test]
async fn another_tenant_is_refused_and_nothing_is_stored() {
    let fake = FakeConnector::start().await;
    let message = sample("pg-personal-message-api.json");
    let bot = bot_for(&message, &fake).await;
    let mut foreign = pointed_at(message, &fake);
    foreign["channelData"]["tenant"]["id"] = json!("99999999-9999-9999-9999-999999999999");
    foreign["conversation"]["tenantId"] = json!("99999999-9999-9999-9999-999999999999");
    let response = bot.post_activity(&foreign, None).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(bot.app.db.conversation_count().await.expect("count"), 0);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clear_errors() {
    let fake = FakeConnector::start().await;
    let message = sample("pg-personal-message-api.json");
    let bot = bot_for(&message, &fake).await;
    let url = format!("{}/api/messages", bot.base_url);
    let response = bot
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"type\": \"mess")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "bad_request");
    let huge = format!(
        "{{\"type\":\"message\",\"text\":\"{}\"}}",
        "x".repeat(300 * 1024)
    );
    let response = bot
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "payload_too_large");
}
