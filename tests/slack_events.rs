//! `@m365bot` mentions and direct messages end to end: signed Events API requests (and Socket
//! Mode envelopes) to the bot, answers in the Slack emulator — in the mention's thread,
//! personal ones to the user alone, direct messages in the conversation — a retried event
//! answered once, and the bot's own messages ignored.

mod support;

use m365bot::slack::events::{SEEN_RETENTION_MILLIS, first_seen};
use support::db::test_databases;

use std::time::{Duration, Instant};

use m365bot::sandbox::slack::{EventPlace, SANDBOX_TEAM_ID, SlackPosted, event_callback};
use support::slack::{SlackBot, text_of};

/// The answers the bot posted with the Web API (not through response URLs).
fn web_api_posts(bot: &SlackBot) -> Vec<SlackPosted> {
    bot.world()
        .messages()
        .into_iter()
        .filter(|m| m.response_url.is_none())
        .collect()
}

#[tokio::test]
async fn a_mention_is_acknowledged_at_once_and_answered_in_its_thread() {
    let bot = SlackBot::start().await;
    let (_, body) = event_callback(
        EventPlace::Mention("C0GENERAL"),
        "U0ADMIN",
        "roles",
        None,
        None,
    );
    let ts = body["event"]["ts"].as_str().expect("ts").to_owned();
    let started = Instant::now();
    assert_eq!(bot.send_event(&body, None).await, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "acknowledged within Slack's 3 seconds"
    );
    let answers = bot
        .posted_where(1, |m| m.channel == "C0GENERAL" && m.response_url.is_none())
        .await;
    let answer = answers.first().expect("an answer");
    assert_eq!(answer.via, "chat.postMessage");
    assert_eq!(
        answer.thread_ts.as_deref(),
        Some(ts.as_str()),
        "in the mention's thread"
    );
    assert_eq!(answer.ephemeral_to, None);
    let text = text_of(&answer.blocks);
    assert!(text.contains("x_mioms_m365_assis.administrator"), "{text}");
    assert!(text.contains("admin"), "the role list: {text}");
}

#[tokio::test]
async fn personal_answers_to_a_mention_go_to_the_user_alone() {
    let bot = SlackBot::start().await;
    // A sign-in link is personal.
    let (_, body) = event_callback(
        EventPlace::Mention("C0GENERAL"),
        "U0ADMIN",
        "link-account",
        None,
        None,
    );
    assert_eq!(bot.send_event(&body, None).await, 200);
    let private = bot
        .posted_where(1, |m| {
            m.via == "chat.postEphemeral" && m.ephemeral_to.as_deref() == Some("U0ADMIN")
        })
        .await;
    let text = text_of(&private.first().expect("an ephemeral answer").blocks);
    assert!(text.contains("/auth/link/start?state="), "{text}");
    // A refusal about the user too: jane.doe is no ServiceNow admin.
    let (_, body) = event_callback(
        EventPlace::Mention("C0GENERAL"),
        "U0JANE",
        "roles",
        None,
        None,
    );
    assert_eq!(bot.send_event(&body, None).await, 200);
    let refused = bot
        .posted_where(1, |m| {
            m.via == "chat.postEphemeral" && m.ephemeral_to.as_deref() == Some("U0JANE")
        })
        .await;
    let text = text_of(&refused.first().expect("a private refusal").blocks);
    assert!(text.contains("You need another ServiceNow role"), "{text}");
    assert!(
        web_api_posts(&bot)
            .iter()
            .all(|m| m.via == "chat.postEphemeral"),
        "nothing personal in the channel: {:?}",
        web_api_posts(&bot)
    );
}

#[tokio::test]
async fn a_direct_message_is_answered_in_the_conversation() {
    let bot = SlackBot::start().await;
    let (_, body) = event_callback(EventPlace::Direct("D0ADMIN"), "U0ADMIN", "help", None, None);
    assert_eq!(bot.send_event(&body, None).await, 200);
    let answers = bot
        .posted_where(1, |m| m.channel == "D0ADMIN" && m.response_url.is_none())
        .await;
    let answer = answers.first().expect("an answer");
    assert_eq!(answer.via, "chat.postMessage");
    assert_eq!(
        answer.thread_ts, None,
        "a direct message is answered in place"
    );
    let text = text_of(&answer.blocks);
    assert!(text.contains("link-account"), "{text}");
    assert!(text.contains("grant @user"), "{text}");

    // link-account in the direct message hands out the link there.
    let (_, body) = event_callback(
        EventPlace::Direct("D0ADMIN"),
        "U0ADMIN",
        "link-account",
        None,
        None,
    );
    assert_eq!(bot.send_event(&body, None).await, 200);
    let answers = bot
        .posted_where(2, |m| m.channel == "D0ADMIN" && m.response_url.is_none())
        .await;
    let text = text_of(&answers.get(1).expect("a second answer").blocks);
    assert!(text.contains("/auth/link/start?state="), "{text}");
}

#[tokio::test]
async fn a_retried_event_is_answered_once() {
    let bot = SlackBot::start().await;
    let (event_id, body) = event_callback(
        EventPlace::Mention("C0GENERAL"),
        "U0ADMIN",
        "help",
        None,
        None,
    );
    let ts = body["event"]["ts"].as_str().expect("ts").to_owned();
    assert_eq!(bot.send_event(&body, None).await, 200);
    // Slack did not see the ack in time and sends the same event again, twice.
    let (retry_id, retry) = event_callback(
        EventPlace::Mention("C0GENERAL"),
        "U0ADMIN",
        "help",
        None,
        Some(&event_id),
    );
    assert_eq!(retry_id, event_id);
    let mut retry = retry;
    retry["event"] = body["event"].clone();
    // Each retry is signed anew, a second later (one signature is accepted once).
    for attempt in [1, 2] {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(bot.send_event(&retry, Some(attempt)).await, 200);
    }
    // A different event afterwards is answered: the bot was not stuck.
    let (_, other) = event_callback(EventPlace::Direct("D0ADMIN"), "U0ADMIN", "help", None, None);
    assert_eq!(bot.send_event(&other, None).await, 200);
    bot.posted_where(1, |m| m.channel == "D0ADMIN").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers: Vec<SlackPosted> = web_api_posts(&bot)
        .into_iter()
        .filter(|m| m.thread_ts.as_deref() == Some(ts.as_str()))
        .collect();
    assert_eq!(answers.len(), 1, "answered once: {answers:?}");
}

#[tokio::test]
async fn the_bots_own_messages_and_edits_are_ignored() {
    let bot = SlackBot::start().await;
    let (_, mut own) = event_callback(EventPlace::Direct("D0ADMIN"), "U0BOT", "help", None, None);
    own["event"]["bot_id"] = serde_json::json!("B0BOT");
    assert_eq!(bot.send_event(&own, None).await, 200);
    let (_, mut own_without_bot_id) =
        event_callback(EventPlace::Direct("D0ADMIN"), "U0BOT", "help", None, None);
    own_without_bot_id["event"]
        .as_object_mut()
        .expect("event")
        .remove("bot_id");
    assert_eq!(bot.send_event(&own_without_bot_id, None).await, 200);
    let (_, mut edit) =
        event_callback(EventPlace::Direct("D0ADMIN"), "U0ADMIN", "help", None, None);
    edit["event"]["subtype"] = serde_json::json!("message_changed");
    assert_eq!(bot.send_event(&edit, None).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A person's message afterwards is answered, and it is the only answer.
    let (_, person) = event_callback(EventPlace::Direct("D0ADMIN"), "U0ADMIN", "help", None, None);
    assert_eq!(bot.send_event(&person, None).await, 200);
    bot.posted_where(1, |m| m.channel == "D0ADMIN").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(web_api_posts(&bot).len(), 1, "{:?}", web_api_posts(&bot));
}

#[tokio::test]
async fn a_mention_over_socket_mode_is_answered_in_its_thread() {
    let bot = SlackBot::start_with(false, None, |settings| {
        settings.slack.transport = m365bot::slack::Transport::Socket;
    })
    .await;
    let (_, body) = event_callback(
        EventPlace::Mention("C0GENERAL"),
        "U0ADMIN",
        "help",
        None,
        None,
    );
    let ts = body["event"]["ts"].as_str().expect("ts").to_owned();
    // Without `authorizations` (as the emulator's envelopes come): the bot asks auth.test who
    // it is.
    let envelope = bot
        .world()
        .socket_event(SANDBOX_TEAM_ID, body["event"].clone());
    let answers = bot
        .posted_where(1, |m| m.channel == "C0GENERAL" && m.response_url.is_none())
        .await;
    let answer = answers.first().expect("an answer over Socket Mode");
    assert_eq!(answer.thread_ts.as_deref(), Some(ts.as_str()));
    assert!(text_of(&answer.blocks).contains("link-account"));
    assert!(
        bot.world()
            .socket_acks()
            .iter()
            .any(|ack| ack.envelope_id == envelope && ack.payload.is_none()),
        "the envelope was acknowledged"
    );
}

#[tokio::test]
async fn event_ids_are_recorded_once_and_forgotten_after_an_hour_on_both_databases() {
    for test in test_databases().await {
        let label = test.label;
        assert!(
            first_seen(&test.db, "Ev1", 1_000).await.expect("insert"),
            "{label}"
        );
        assert!(
            !first_seen(&test.db, "Ev1", 2_000).await.expect("again"),
            "{label}"
        );
        assert!(
            first_seen(&test.db, "Ev2", 2_000).await.expect("other"),
            "{label}"
        );
        // Past the retention the id is forgotten (Slack stopped retrying long before).
        let later = 1_000 + SEEN_RETENTION_MILLIS + 1;
        assert!(
            first_seen(&test.db, "Ev1", later).await.expect("later"),
            "{label}"
        );
    }
}

#[tokio::test]
async fn a_mention_of_setup_points_to_the_slash_command_that_opens_its_window() {
    let bot = SlackBot::start().await;
    let (_, body) = event_callback(
        EventPlace::Mention("C0GENERAL"),
        "U0ADMIN",
        "setup",
        None,
        None,
    );
    assert_eq!(bot.send_event(&body, None).await, 200);
    let answers = bot
        .posted_where(1, |m| m.channel == "C0GENERAL" && m.response_url.is_none())
        .await;
    let text = text_of(&answers.first().expect("an answer").blocks);
    assert!(text.contains("/m365 setup"), "{text}");
    assert!(
        bot.world()
            .request_log()
            .iter()
            .all(|call| call.method != "views.open"),
        "no window without a trigger id"
    );
}
