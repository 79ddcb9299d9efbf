//! The Slack request URLs end to end: signatures checked before anything is parsed, refusals
//! that change nothing, every sample payload parsed and answered, commands acknowledged at
//! once and answered through the `response_url` against the Slack, ServiceNow and Entra
//! emulators.

mod support;

use m365bot::core::Reply;
use m365bot::slack::{COMMANDS_PATH, EVENTS_PATH, INTERACTIONS_PATH};
use serde_json::{Value, json};
use support::slack::{SlackBot, text_of};

const FORM: &str = "application/x-www-form-urlencoded";

fn samples_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/slack")
}

fn sample(name: &str) -> String {
    std::fs::read_to_string(samples_dir().join(name)).expect("sample")
}

fn payload_form(json: &str) -> String {
    format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(json.as_bytes()).collect::<String>()
    )
}

#[tokio::test]
async fn the_official_signature_vector_is_refused_as_stale_over_http() {
    let bot = SlackBot::start().await;
    let vector: Value = serde_json::from_str(&sample("signature_test_vector.json")).expect("json");
    let answer = bot
        .post_raw(
            COMMANDS_PATH,
            FORM,
            vector["raw_body"].as_str().expect("body").to_owned(),
            vector["x_slack_request_timestamp"].as_str(),
            vector["expected_x_slack_signature"].as_str(),
        )
        .await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    assert!(answer.text.contains("seconds ago"), "{}", answer.text);
    assert!(bot.world().request_log().is_empty(), "nothing sent");
}

#[tokio::test]
async fn bad_missing_future_and_replayed_signatures_get_401_and_change_nothing() {
    let bot = SlackBot::start().await;
    let (form, ticket) = bot.command_form("U0ADMIN", "C0GENERAL", "doctor");
    let now = chrono::Utc::now().timestamp();
    let sign = |ts: i64, secret: &str| {
        m365bot::slack::verify::sign(secret.as_bytes(), &ts.to_string(), form.as_bytes())
    };
    let secret = m365bot::sandbox::slack::SANDBOX_SIGNING_SECRET;
    let cases: Vec<(&str, Option<String>, Option<String>)> = vec![
        ("no headers", None, None),
        ("no signature", Some(now.to_string()), None),
        ("no timestamp", None, Some(sign(now, secret))),
        (
            "other secret",
            Some(now.to_string()),
            Some(sign(now, "some-other-signing-secret")),
        ),
        (
            "stale",
            Some((now - 301).to_string()),
            Some(sign(now - 301, secret)),
        ),
        (
            "future",
            Some((now + 301).to_string()),
            Some(sign(now + 301, secret)),
        ),
        (
            "garbage",
            Some(now.to_string()),
            Some("v0=nothex".to_owned()),
        ),
    ];
    for (label, ts, sig) in cases {
        let answer = bot
            .post_raw(
                COMMANDS_PATH,
                FORM,
                form.clone(),
                ts.as_deref(),
                sig.as_deref(),
            )
            .await;
        assert_eq!(answer.status, 401, "{label}: {}", answer.text);
        assert_eq!(answer.json["error"]["code"], "unauthorized", "{label}");
    }
    // A body changed after signing is refused too.
    let tampered = form.replace("doctor", "roles");
    let answer = bot
        .post_raw(
            COMMANDS_PATH,
            FORM,
            tampered,
            Some(&now.to_string()),
            Some(&sign(now, secret)),
        )
        .await;
    assert_eq!(answer.status, 401);
    assert!(
        bot.world().request_log().is_empty(),
        "nothing sent for refused requests"
    );

    let signature = sign(now, secret);
    let accepted = bot
        .post_raw(
            COMMANDS_PATH,
            FORM,
            form.clone(),
            Some(&now.to_string()),
            Some(&signature),
        )
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let replayed = bot
        .post_raw(
            COMMANDS_PATH,
            FORM,
            form.clone(),
            Some(&now.to_string()),
            Some(&signature),
        )
        .await;
    assert_eq!(replayed.status, 401, "one signature is accepted once");
    assert!(
        replayed.text.contains("already received"),
        "{}",
        replayed.text
    );
    let posted = bot.responses(&ticket, 1).await;
    assert_eq!(posted.len(), 1, "the accepted command was answered once");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(bot.responses(&ticket, 1).await.len(), 1, "and only once");
}

#[tokio::test]
async fn malformed_bodies_get_400_and_oversized_ones_413() {
    let bot = SlackBot::start().await;
    for (path, body) in [
        (COMMANDS_PATH, "team_id=T1&text=doctor"),
        (INTERACTIONS_PATH, "payload=%7Bnot-json"),
        (INTERACTIONS_PATH, "nothing=here"),
        (EVENTS_PATH, "{not json"),
    ] {
        let answer = bot.post_signed(path, FORM, body).await;
        assert_eq!(answer.status, 400, "{path} {body}: {}", answer.text);
        assert_eq!(answer.json["error"]["code"], "bad_request");
    }
    let huge = format!(
        "text={}",
        "a".repeat(bot.app.settings.server.max_body_bytes + 1)
    );
    let answer = bot.post_signed(COMMANDS_PATH, FORM, &huge).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert!(bot.world().request_log().is_empty(), "nothing sent");
}

#[tokio::test]
async fn url_verification_echoes_the_challenge_and_events_are_acknowledged() {
    let bot = SlackBot::start().await;
    let challenge = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
    let answer = bot
        .post_signed(EVENTS_PATH, "application/json", &challenge.to_string())
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["challenge"], challenge["challenge"]);
    let event = json!({"type": "event_callback", "team_id": "T0SANDBOX", "event_id": "Ev1",
        "event": {"type": "app_mention", "user": "U0ADMIN", "text": "<@U0BOT> help", "channel": "C0GENERAL", "ts": "1.2"}});
    let answer = bot
        .post_signed(EVENTS_PATH, "application/json", &event.to_string())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
}

/// Every file of the Slack samples is parsed and answered by the part of the bot it is for;
/// a new sample without a rule here fails the test.
#[tokio::test]
async fn every_sample_is_parsed_and_answered() {
    let bot = SlackBot::start().await;
    let mut names: Vec<String> = std::fs::read_dir(samples_dir())
        .expect("samples")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut checked = 0;
    for name in &names {
        let text = sample(name);
        match name.as_str() {
            "README.md" => continue,
            "signature_test_vector.json" => {
                let v: Value = serde_json::from_str(&text).expect("json");
                let verifier = m365bot::slack::verify::SignatureVerifier::new(
                    v["signing_secret"].as_str().expect("secret").as_bytes(),
                    std::time::Duration::from_secs(300),
                );
                let ts = v["x_slack_request_timestamp"].as_str().expect("ts");
                verifier
                    .verify_at(
                        ts,
                        v["expected_x_slack_signature"].as_str().expect("sig"),
                        v["raw_body"].as_str().expect("body").as_bytes(),
                        ts.parse().expect("number"),
                    )
                    .expect("the official vector verifies with its own clock");
            }
            n if n.starts_with("slash_command") => {
                let form = if n.ends_with(".form.txt") {
                    text.trim_end().to_owned()
                } else {
                    let decoded: serde_json::Map<String, Value> =
                        serde_json::from_str(&text).expect("json");
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    for (key, value) in &decoded {
                        form.append_pair(key, value.as_str().unwrap_or_default());
                    }
                    form.finish()
                };
                let answer = bot.post_signed(COMMANDS_PATH, FORM, &form).await;
                assert_eq!(answer.status, 200, "{name}: {}", answer.text);
                assert_eq!(answer.json["response_type"], "ephemeral", "{name}");
                let shown = text_of(&answer.json["blocks"]);
                assert!(
                    shown.contains("m365bot commands") || shown.contains("not one of my commands"),
                    "{name}: {shown}"
                );
            }
            n if n.ends_with(".payload.json") || n.ends_with(".form.txt") => {
                let form = if n.ends_with(".form.txt") {
                    text.trim_end().to_owned()
                } else {
                    payload_form(&text)
                };
                let parsed = m365bot::slack::payload::Interaction::from_form(form.as_bytes())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_ne!(
                    parsed,
                    m365bot::slack::payload::Interaction::Other,
                    "{name}"
                );
                let answer = bot.post_signed(INTERACTIONS_PATH, FORM, &form).await;
                assert_eq!(answer.status, 200, "{name}: {}", answer.text);
            }
            "view_submission.responses.json" => {
                let v: Value = serde_json::from_str(&text).expect("json");
                for key in ["update", "push"] {
                    let problems = m365bot::slack::blocks::check_modal(&v[key]["view"]);
                    assert!(problems.is_empty(), "{name} {key}: {problems:?}");
                }
                assert_eq!(v["errors"]["response_action"], "errors");
            }
            n if n.starts_with("api.") => check_api_examples(n, &text),
            "errors.examples.json" => check_error_examples(&text).await,
            "chat.postMessage.case_notification.request.json" => {
                let v: Value = serde_json::from_str(&text).expect("json");
                let blocks = v["blocks"].as_array().expect("blocks");
                let problems = m365bot::slack::blocks::check_limits(
                    blocks,
                    m365bot::slack::blocks::Surface::Message,
                );
                assert!(problems.is_empty(), "{problems:?}");
                let message = m365bot::slack::blocks::Message {
                    text: v["text"].as_str().expect("text").to_owned(),
                    blocks: blocks.clone(),
                };
                let posted = bot
                    .app
                    .slack
                    .as_ref()
                    .expect("slack")
                    .api
                    .post_message("C0GENERAL", &message, None)
                    .await
                    .expect("the emulator takes the sample case card");
                assert_eq!(posted.channel, "C0GENERAL");
            }
            "manifest.m365-bot.example.json" => {
                let v: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(v["features"]["slash_commands"][0]["command"], "/m365");
            }
            "manifest.m365-bot.example.yaml" => {
                // The YAML twin of the JSON sample (no YAML parser among the dependencies).
                assert!(names.iter().any(|n| n == "manifest.m365-bot.example.json"));
                assert!(text.contains("command: /m365"), "{text}");
            }
            other => panic!("sample {other} has no rule in this test: add one"),
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} samples checked");
}

fn check_api_examples(name: &str, text: &str) {
    use m365bot::slack::api::{AuthIdentity, Conversation, Posted, SlackUser, decode_answer};
    let v: Value = serde_json::from_str(text).expect("json");
    let method = name
        .trim_start_matches("api.")
        .trim_end_matches(".examples.json")
        .to_owned();
    let method: &'static str = Box::leak(method.into_boxed_str());
    for (key, example) in v.as_object().expect("object") {
        if key.starts_with('_') {
            continue;
        }
        let body = serde_json::to_vec(&example["example"]).expect("bytes");
        let ok = example["example"]["ok"] == true;
        let generic = decode_answer::<Value>(method, &body);
        if !ok {
            let err = generic.expect_err("ok false is an error");
            assert_eq!(
                err.code(),
                example["example"]["error"].as_str(),
                "{name} {key}"
            );
            continue;
        }
        generic.unwrap_or_else(|e| panic!("{name} {key}: {e}"));
        let typed = match method {
            "auth.test" => decode_answer::<AuthIdentity>(method, &body).map(|_| ()),
            "chat.postMessage" | "chat.update" => {
                decode_answer::<Posted>(method, &body).map(|_| ())
            }
            "conversations.info" => {
                #[derive(serde::Deserialize)]
                struct A {
                    #[allow(dead_code)]
                    channel: Conversation,
                }
                decode_answer::<A>(method, &body).map(|_| ())
            }
            "users.lookupByEmail" => {
                #[derive(serde::Deserialize)]
                struct A {
                    user: SlackUser,
                }
                decode_answer::<A>(method, &body).map(|a| {
                    assert!(a.user.profile.email.is_some(), "{name}: e-mail read");
                })
            }
            _ => Ok(()),
        };
        typed.unwrap_or_else(|e| panic!("{name} {key}: {e}"));
    }
}

async fn check_error_examples(text: &str) {
    use m365bot::slack::api::{SlackApiError, decode_answer};
    let v: Value = serde_json::from_str(text).expect("json");
    for (key, entry) in v.as_object().expect("object") {
        let Some(body) = entry.get("body") else {
            continue;
        };
        if key == "rate_limited_http" {
            // Served for real: HTTP 429 with Retry-After, through the client.
            let retry_after = entry["headers"]["Retry-After"]
                .as_str()
                .expect("header")
                .to_owned();
            let router = axum::Router::new().route(
                "/api/auth.test",
                axum::routing::post(move || {
                    let retry_after = retry_after.clone();
                    let body = entry_body();
                    async move {
                        (
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", retry_after)],
                            axum::Json(body),
                        )
                    }
                }),
            );
            fn entry_body() -> Value {
                json!({"ok": false, "error": "ratelimited"})
            }
            assert_eq!(body, &entry_body());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, router).await });
            let client = m365bot::slack::api::SlackClient::new(
                reqwest::Client::new(),
                url::Url::parse(&format!("http://{addr}/api/")).expect("url"),
                secrecy::SecretString::from("xoxb-test"),
            );
            match client.auth_test().await {
                Err(SlackApiError::RateLimited { retry_after, .. }) => {
                    assert_eq!(retry_after, std::time::Duration::from_secs(30));
                }
                other => panic!("429 is rate limiting: {other:?}"),
            }
            continue;
        }
        let bytes = serde_json::to_vec(body).expect("bytes");
        let decoded = decode_answer::<Value>("sample", &bytes);
        if body["ok"] == true {
            decoded.unwrap_or_else(|e| panic!("{key}: {e}"));
            continue;
        }
        let err = decoded.expect_err("ok false");
        assert_eq!(err.code(), body["error"].as_str(), "{key}");
        if let Some(messages) = body
            .pointer("/response_metadata/messages")
            .and_then(Value::as_array)
        {
            let shown = err.to_string();
            for message in messages {
                assert!(
                    shown.contains(message.as_str().expect("text")),
                    "{key}: {shown}"
                );
            }
        }
    }
}

#[tokio::test]
async fn help_is_answered_at_once_and_doctor_through_the_response_url() {
    let bot = SlackBot::start().await;
    let (help, _) = bot.command("U0ADMIN", "C0GENERAL", "help").await;
    assert_eq!(help.status, 200);
    assert_eq!(help.json["response_type"], "ephemeral");
    let shown = text_of(&help.json["blocks"]);
    assert!(shown.contains("/m365 doctor"), "{shown}");
    assert!(
        !shown.contains("(in Teams for now)"),
        "every command works in Slack: {shown}"
    );
    for works in [
        "/m365 setup`",
        "/m365 doctor [--repair]`",
        "/m365 rotate-secret",
    ] {
        let line = shown
            .lines()
            .find(|l| l.contains(works))
            .unwrap_or_else(|| panic!("{works} missing: {shown}"));
        assert!(!line.contains("in Teams for now"), "{line}");
    }
    assert!(bot.world().request_log().is_empty(), "help needs no call");

    let (ack, ticket) = bot.command("U0ADMIN", "C0GENERAL", "doctor").await;
    assert_eq!(ack.status, 200);
    assert!(
        text_of(&ack.json["blocks"]).contains("Working on `doctor`"),
        "{}",
        ack.text
    );
    let posted = bot.responses(&ticket, 1).await;
    let report = posted.first().expect("the report arrives");
    assert_eq!(report.ephemeral_to.as_deref(), Some("U0ADMIN"), "ephemeral");
    let shown = text_of(&report.blocks);
    assert!(shown.starts_with("Doctor"), "{shown}");
    // The integration's 17 checks and the Slack checks (token, scopes, channels).
    assert!(shown.contains("20 passed, 0 failed"), "{shown}");
    let problems = m365bot::slack::blocks::check_limits(
        report.blocks.as_array().expect("blocks"),
        m365bot::slack::blocks::Surface::Message,
    );
    assert!(problems.is_empty(), "{problems:?}");
    let methods: Vec<String> = bot
        .world()
        .request_log()
        .into_iter()
        .map(|l| l.method)
        .collect();
    assert_eq!(
        methods,
        ["users.info", "auth.test", "response_url"],
        "the e-mail, the Slack token check, then the answer"
    );
}

#[tokio::test]
async fn roles_are_checked_and_unknown_users_are_explained() {
    let bot = SlackBot::start().await;
    let cases = [
        ("U0JANE", "doctor", "You need another ServiceNow role"),
        (
            "U0JANE",
            "roles",
            "your ServiceNow user *jane.doe* does not hold it",
        ),
        ("U0GONE", "doctor", "cannot use m365bot"),
        ("U0NOBODY", "doctor", "could not find out who you are"),
        (
            "U0ADMIN",
            "roles",
            "*x_mioms_m365_assis.administrator*\nSystem Administrator (admin)",
        ),
        ("U0ADMIN", "setup status", "No setup yet"),
        (
            "U0ADMIN",
            "link-account status",
            "Your ServiceNow user *admin* has no linked",
        ),
    ];
    for (user, command, expected) in cases {
        let (ack, ticket) = bot.command(user, "C0GENERAL", command).await;
        assert_eq!(ack.status, 200, "{user} {command}");
        let posted = bot.responses(&ticket, 1).await;
        let shown: Vec<String> = posted.iter().map(|m| text_of(&m.blocks)).collect();
        assert!(
            shown.iter().any(|s| s.contains(expected)),
            "{user} {command}: expected {expected:?} in {shown:?}"
        );
    }
}

#[tokio::test]
async fn every_command_works_in_slack_and_unknown_ones_are_explained_at_once() {
    for usage in m365bot::chat::working_commands().map(|c| c.usage) {
        let typed = usage
            .split(" [")
            .next()
            .unwrap_or_default()
            .replace("<case or incident>", "INC0010001")
            .replace("outbound|inbound|rest-user", "outbound")
            .replace("@user", "<@U0JANE>")
            .replace("insights_user|administrator", "insights_user");
        let command = m365bot::core::command::parse(&typed)
            .unwrap_or_else(|err| panic!("{usage}: {typed:?} does not parse: {err}"));
        assert!(
            m365bot::slack::works_in_slack(&command),
            "{usage} is not served in Slack"
        );
    }
    let Reply::Card { data, .. } = m365bot::slack::help_card();
    let help = data.to_string();
    assert!(!help.contains("in Teams for now"), "{help}");
    let bot = SlackBot::start().await;
    let (answer, _) = bot.command("U0ADMIN", "C0GENERAL", "frobnicate").await;
    assert_eq!(answer.status, 200);
    assert!(text_of(&answer.json["blocks"]).contains("not one of my commands"));
    assert!(bot.world().request_log().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn the_help_button_is_answered_and_other_apps_buttons_are_ignored() {
    let bot = SlackBot::start().await;
    let ticket = bot.world().new_command("C0GENERAL", "U0ADMIN");
    let click = json!({"type": "block_actions", "user": {"id": "U0ADMIN"}, "team": {"id": "T0SANDBOX"},
        "container": {"type": "message", "message_ts": "1.1", "channel_id": "C0GENERAL"},
        "response_url": ticket.response_url, "actions": [{"action_id": "help", "type": "button", "value": "x"}]});
    let answer = bot
        .post_signed(INTERACTIONS_PATH, FORM, &payload_form(&click.to_string()))
        .await;
    assert_eq!(answer.status, 200);
    let posted = bot.responses(&ticket, 1).await;
    assert!(text_of(&posted[0].blocks).contains("m365bot commands"));
    let foreign = bot.world().new_command("C0GENERAL", "U0ADMIN");
    let mut other = click.clone();
    other["response_url"] = json!(foreign.response_url);
    other["actions"][0]["action_id"] = json!("someone-elses-button");
    let answer = bot
        .post_signed(INTERACTIONS_PATH, FORM, &payload_form(&other.to_string()))
        .await;
    assert_eq!(answer.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        bot.world()
            .messages()
            .iter()
            .all(|m| m.response_url.as_deref() != Some(foreign.response_id.as_str())),
        "nothing posted for a button that is not ours"
    );
}
