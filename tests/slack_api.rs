//! The Slack Web API client against the Slack emulator: typed answers, Slack's error bodies
//! as typed errors, `Retry-After` honoured, response URLs limited to Slack's, tokens kept out
//! of what is printed.

use std::time::{Duration, Instant};

use m365bot::sandbox::slack::{SANDBOX_APP_TOKEN, SANDBOX_BOT_TOKEN, SlackEmulator};
use m365bot::slack::api::{SlackApiError, SlackClient};
use m365bot::slack::blocks::{self, Message};
use secrecy::SecretString;
use serde_json::json;

async fn emulator() -> SlackEmulator {
    SlackEmulator::start("127.0.0.1:0".parse().expect("addr"), "contoso.example")
        .await
        .expect("emulator")
}

fn client(emulator: &SlackEmulator, token: &str) -> SlackClient {
    SlackClient::new(
        reqwest::Client::new(),
        url::Url::parse(&emulator.api_url()).expect("url"),
        SecretString::from(token),
    )
}

fn message(text: &str) -> Message {
    Message {
        text: text.to_owned(),
        blocks: vec![blocks::section(text)],
    }
}

#[tokio::test]
async fn post_update_and_thread_reply() {
    let slack = emulator().await;
    let api = client(&slack, SANDBOX_BOT_TOKEN);
    let me = api.auth_test().await.expect("auth.test");
    assert_eq!(me.team_id, "T0SANDBOX");
    assert_eq!(me.user_id, "U0BOT");
    let root = api
        .post_message("C0GENERAL", &message("INC0010001 is New"), None)
        .await
        .expect("posted");
    assert_eq!(root.channel, "C0GENERAL");
    let updated = api
        .update_message("C0GENERAL", &root.ts, &message("INC0010001 is In Progress"))
        .await
        .expect("updated in place");
    assert_eq!(updated.ts, root.ts);
    slack.handle().set_per_channel_interval(Duration::ZERO);
    let reply = api
        .post_message("C0GENERAL", &message("A comment"), Some(&root.ts))
        .await
        .expect("thread reply");
    assert_ne!(reply.ts, root.ts);
    let posted = slack.handle().messages();
    let vias: Vec<(&str, Option<&str>)> = posted
        .iter()
        .map(|m| (m.via.as_str(), m.thread_ts.as_deref()))
        .collect();
    assert_eq!(
        vias,
        [
            ("chat.postMessage", None),
            ("chat.update", None),
            ("chat.postMessage", Some(root.ts.as_str()))
        ]
    );
    let err = api
        .update_message("C0GENERAL", "999.000", &message("x"))
        .await
        .expect_err("no such message");
    assert_eq!(err.code(), Some("message_not_found"));
}

#[tokio::test]
async fn a_second_post_into_one_channel_within_a_second_waits_out_retry_after() {
    let slack = emulator().await;
    let api = client(&slack, SANDBOX_BOT_TOKEN);
    api.post_message("C0GENERAL", &message("one"), None)
        .await
        .expect("first");
    let started = Instant::now();
    api.post_message("C0GENERAL", &message("two"), None)
        .await
        .expect("second, after the wait Slack asked for");
    assert!(started.elapsed() >= Duration::from_millis(900), "waited");
    let statuses: Vec<u16> = slack
        .handle()
        .request_log()
        .iter()
        .map(|l| l.status)
        .collect();
    assert_eq!(statuses, [200, 429, 200]);
    // Another channel is not held back.
    api.post_message("D0ADMIN", &message("three"), None)
        .await
        .expect("other channel at once");
    assert_eq!(slack.handle().request_log().len(), 4);
}

#[tokio::test]
async fn slack_error_bodies_become_typed_errors() {
    let slack = emulator().await;
    let api = client(&slack, SANDBOX_BOT_TOKEN);
    let code = |r: Result<m365bot::slack::api::Posted, SlackApiError>| {
        let err = r.expect_err("refused");
        (err.code().map(str::to_owned), err.is_destination_gone())
    };
    assert_eq!(
        code(api.post_message("C0PRIVATE", &message("x"), None).await),
        (Some("not_in_channel".to_owned()), true)
    );
    assert_eq!(
        code(api.post_message("C0OLD", &message("x"), None).await),
        (Some("is_archived".to_owned()), true)
    );
    assert_eq!(
        code(api.post_message("C0NOWHERE", &message("x"), None).await),
        (Some("channel_not_found".to_owned()), true)
    );
    let too_long = Message {
        text: "x".to_owned(),
        blocks: vec![
            json!({"type": "section", "text": {"type": "mrkdwn", "text": "x".repeat(3001)}}),
        ],
    };
    let err = api
        .post_message("C0GENERAL", &too_long, None)
        .await
        .expect_err("invalid_blocks");
    assert_eq!(err.code(), Some("invalid_blocks"));
    assert!(err.to_string().contains("/blocks/0/text"), "{err}");
    let wrong = client(&slack, "xoxb-not-the-token");
    let err = wrong.auth_test().await.expect_err("invalid_auth");
    assert_eq!(err.code(), Some("invalid_auth"));
    assert!(
        !err.to_string().contains("xoxb"),
        "no token in errors: {err}"
    );
    let err = api
        .open_connection(&SecretString::from(SANDBOX_BOT_TOKEN))
        .await
        .expect_err("a bot token cannot open a socket");
    assert_eq!(err.code(), Some("not_allowed_token_type"));
    let _ = SANDBOX_APP_TOKEN;
}

#[tokio::test]
async fn users_channels_ephemeral_messages_and_views() {
    let slack = emulator().await;
    let api = client(&slack, SANDBOX_BOT_TOKEN);
    let jane = api.user_info("U0JANE").await.expect("users.info");
    assert_eq!(
        jane.profile.email.as_deref(),
        Some("jane.doe@contoso.example")
    );
    assert_eq!(
        api.user_info("U0NOBODY").await.expect_err("unknown").code(),
        Some("user_not_found")
    );
    let channel = api.conversation_info("C0PRIVATE").await.expect("info");
    assert!(channel.is_private);
    assert_eq!(channel.is_member, Some(false));
    api.post_ephemeral("C0GENERAL", "U0JANE", &message("only for Jane"))
        .await
        .expect("ephemeral");
    assert_eq!(
        slack.handle().messages()[0].ephemeral_to.as_deref(),
        Some("U0JANE")
    );

    let ticket = slack.handle().new_command("C0GENERAL", "U0ADMIN");
    let view = json!({"type": "modal", "title": blocks::modal_title("Microsoft 365 setup wizard"),
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [blocks::section("Step 1 of 12")]});
    assert!(
        blocks::check_modal(&view).is_empty(),
        "the title was shortened"
    );
    let id = api
        .views_open(&ticket.trigger_id, &view)
        .await
        .expect("views.open")
        .id;
    let again = api
        .views_open(&ticket.trigger_id, &view)
        .await
        .expect_err("a trigger opens one view");
    assert_eq!(again.code(), Some("exchanged_trigger_id"));
    let conflict = api
        .views_update(&id, &view, Some("stale-hash"))
        .await
        .expect_err("hash guard");
    assert_eq!(conflict.code(), Some("hash_conflict"));
    let updated = api
        .views_update(&id, &view, None)
        .await
        .expect("views.update");
    assert_eq!(updated.id, id);
    let bad = api
        .views_open("not-a-trigger", &view)
        .await
        .expect_err("invalid");
    assert!(bad.to_string().contains("invalid `trigger_id`"), "{bad}");
}

#[tokio::test]
async fn response_urls_are_slacks_only_and_good_for_five_posts() {
    let slack = emulator().await;
    let api = client(&slack, SANDBOX_BOT_TOKEN);
    let ticket = slack.handle().new_command("C0GENERAL", "U0ADMIN");
    for _ in 0..5 {
        api.respond(&ticket.response_url, &message("ok"), false, false)
            .await
            .expect("within five uses");
    }
    let sixth = api
        .respond(&ticket.response_url, &message("ok"), false, false)
        .await
        .expect_err("used up");
    assert!(
        matches!(sixth, SlackApiError::Status { status: 404, .. }),
        "{sixth:?}"
    );
    let before = slack.handle().request_log().len();
    let foreign = api
        .respond("https://attacker.example/hook", &message("x"), false, false)
        .await
        .expect_err("refused");
    assert!(matches!(foreign, SlackApiError::ForeignResponseUrl));
    assert!(
        !api.is_response_url("http://hooks.slack.com/commands/x"),
        "https only"
    );
    assert!(api.is_response_url("https://hooks.slack.com/commands/T1/2/3"));
    assert_eq!(slack.handle().request_log().len(), before, "nothing sent");
    assert!(
        !format!("{api:?}").contains(SANDBOX_BOT_TOKEN),
        "Debug hides the token"
    );
}
