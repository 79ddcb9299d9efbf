//! The user journeys over Socket Mode, end to end against the emulators: `link-account`
//! followed through the Entra sign-in to a stored link, a role refusal, and `subscribe`
//! followed by changes of a ServiceNow case pushed by the emulated Business Rule → the root
//! message, edited in place, then a thread reply. (The same journeys over HTTP are in
//! `slack_link.rs` and `slack_notify.rs`; the setup windows over the socket in `slack_setup.rs`.)

mod support;

use std::time::{Duration, Instant};

use m365bot::link::store::LinkStore;
use m365bot::sandbox::slack::SlackPosted;
use serde_json::{Value, json};
use support::slack::{SlackBot, sign_in_url, text_of, walk};

const CHANNEL: &str = "C0GENERAL";

/// A bot on Socket Mode (no request URLs), connected, with the emulated ServiceNow pushing case
/// changes to it and the pollers off (so every change arrives by push).
async fn socket_bot() -> SlackBot {
    let bot = SlackBot::start_with(true, None, |settings| {
        settings.slack.transport = m365bot::slack::Transport::Socket;
        settings.notifications.poll_interval_ms = 50;
        settings.notifications.sources.servicenow.poll = false;
        settings.notifications.sources.service_health.poll = false;
    })
    .await;
    let started = Instant::now();
    while !bot.world().socket_connections().1 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the bot never opened its Socket Mode connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bot
}

/// `/m365 <text>` sent over the socket as `user` in `channel`: the acknowledgement's text and
/// the first message posted to the command's response URL.
async fn say(bot: &SlackBot, user: &str, channel: &str, text: &str) -> (String, SlackPosted) {
    let (envelope, ticket) = bot.world().socket_command(user, channel, text);
    let started = Instant::now();
    let ack = loop {
        if let Some(ack) = bot
            .world()
            .socket_acks()
            .into_iter()
            .find(|ack| ack.envelope_id == envelope)
        {
            break ack;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{text}: not acknowledged within Slack's 3 seconds"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let payload = ack.payload.unwrap_or(Value::Null);
    let posted = bot.responses(&ticket, 1).await;
    let first = posted
        .first()
        .unwrap_or_else(|| panic!("no answer to {text:?}"))
        .clone();
    (text_of(&payload["blocks"]), first)
}

/// Waits (up to 15 s) until the messages the bot posted into `CHANNEL` satisfy `done`.
async fn wait_in_channel(
    bot: &SlackBot,
    what: &str,
    done: impl Fn(&[SlackPosted]) -> bool,
) -> Vec<SlackPosted> {
    let started = Instant::now();
    loop {
        let posted: Vec<SlackPosted> = bot
            .world()
            .messages()
            .into_iter()
            .filter(|m| m.channel == CHANNEL && m.response_url.is_none())
            .collect();
        if done(&posted) {
            return posted;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: {:#?}",
            posted
                .iter()
                .map(|m| (&m.via, &m.ts, &m.thread_ts, &m.text))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_socket_mode_link_account_is_followed_through_the_sign_in() {
    let bot = socket_bot().await;
    let (ack, posted) = say(&bot, "U0ADMIN", CHANNEL, "link-account").await;
    assert!(ack.contains("Working on"), "{ack}");
    assert_eq!(posted.ephemeral_to.as_deref(), Some("U0ADMIN"), "personal");
    let start = sign_in_url(&posted.blocks)
        .unwrap_or_else(|| panic!("no sign-in link in {}", text_of(&posted.blocks)));
    let (status, page) = walk(&start).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Your Microsoft 365 account is linked"),
        "{page}"
    );
    let link = LinkStore::new(&bot.app.db)
        .link("slack", "U0ADMIN")
        .await
        .expect("readable")
        .expect("a link is stored");
    assert_eq!(
        link.m365_upn,
        format!("admin@{}", bot.demo.sandbox.demo().tenant_domain)
    );
    let (_, status) = say(&bot, "U0ADMIN", CHANNEL, "link-account status").await;
    assert!(
        text_of(&status.blocks).contains("Your Microsoft 365 account is linked"),
        "{}",
        text_of(&status.blocks)
    );
}

#[tokio::test]
async fn over_socket_mode_a_subscription_gets_the_pushed_case_as_root_edit_and_thread_reply() {
    let bot = socket_bot().await;
    // jane.doe holds no role of the app: refused in the channel, nothing stored.
    let (_, refused) = say(&bot, "U0JANE", CHANNEL, "subscribe").await;
    assert!(
        text_of(&refused.blocks).contains("You need another ServiceNow role"),
        "{}",
        text_of(&refused.blocks)
    );
    let (_, subscribed) = say(&bot, "U0ADMIN", CHANNEL, "subscribe").await;
    assert!(
        text_of(&subscribed.blocks).contains("Subscribed"),
        "{}",
        text_of(&subscribed.blocks)
    );

    // A case the integration relays (its case reference is set), changed in ServiceNow: the
    // emulated Business Rule pushes each change to the bot.
    let sandbox = bot.demo.sandbox.handle();
    let reference = bot
        .app
        .settings
        .notifications
        .sources
        .servicenow
        .case_reference_field
        .clone();
    let case = sandbox
        .sn_query("incident", &format!("{reference}ISNOTEMPTY"))
        .expect("incidents")
        .into_iter()
        .next()
        .expect("a seeded incident with a case reference");
    let sys_id = case["sys_id"].as_str().expect("sys_id").to_owned();
    let number = case["number"].as_str().expect("number").to_owned();

    sandbox
        .sn_update(
            "incident",
            &sys_id,
            json!({"state": "2", "work_notes": "Microsoft is looking at it"}),
        )
        .expect("first change");
    let posted = wait_in_channel(&bot, "the root message", |posted| {
        posted.iter().any(|m| m.via == "chat.postMessage")
    })
    .await;
    let root = posted
        .iter()
        .find(|m| m.via == "chat.postMessage")
        .expect("root")
        .clone();
    assert!(root.thread_ts.is_none(), "the root is a top-level message");
    assert!(
        text_of(&root.blocks).contains(&number),
        "{}",
        text_of(&root.blocks)
    );

    sandbox
        .sn_update(
            "incident",
            &sys_id,
            json!({"state": "3", "work_notes": "Escalated to the product group"}),
        )
        .expect("second change");
    let posted = wait_in_channel(&bot, "the edit and the thread reply", |posted| {
        posted
            .iter()
            .any(|m| m.via == "chat.update" && m.ts == root.ts)
            && posted
                .iter()
                .any(|m| m.thread_ts.as_deref() == Some(root.ts.as_str()))
    })
    .await;
    let roots = posted
        .iter()
        .filter(|m| m.via == "chat.postMessage" && m.thread_ts.is_none())
        .count();
    assert_eq!(roots, 1, "one root message per case");
    let edit = posted
        .iter()
        .find(|m| m.via == "chat.update")
        .expect("the root edited in place");
    assert!(
        text_of(&edit.blocks).contains(&number),
        "{}",
        text_of(&edit.blocks)
    );
    let reply = posted
        .iter()
        .find(|m| m.thread_ts.as_deref() == Some(root.ts.as_str()))
        .expect("a reply in the case's thread");
    assert!(
        !text_of(&reply.blocks).trim().is_empty(),
        "the reply says what changed"
    );
    assert_eq!(bot.world().rate_limited_count(), 0, "no call answered 429");
}
