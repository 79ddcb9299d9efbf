//! Case notifications into Slack end to end: `/m365 subscribe` in a Slack channel, a case
//! change of a ServiceNow case recorded in the outbox, delivered by the outbox worker
//! to the Slack emulator (root message, edited in place, thread replies); Slack's errors
//! disabling subscriptions and telling the subscriber; a timed-out post found again or posted
//! once more and counted; a 429 honoured; role refusals; the doctor's Slack checks.

mod support;

use std::time::{Duration, Instant};

use m365bot::notify::{outbox, slack as notify_slack, store};
use m365bot::sandbox::slack::{PostFault, SANDBOX_TEAM_ID, SlackPosted};
use m365bot::slack::deliver;
use support::slack::{SlackBot, text_of};

const CHANNEL: &str = "C0GENERAL";

fn key(channel: &str) -> String {
    format!("slack:{SANDBOX_TEAM_ID}:{channel}")
}

/// A bot whose deliveries time out after `timeout_ms` and retry after 100 ms.
async fn bot_on(url: Option<&str>, timeout_ms: u64) -> SlackBot {
    SlackBot::start_with(false, url, |settings| {
        settings.notifications.send_timeout_ms = timeout_ms;
        settings.notifications.retry_base_ms = 100;
        settings.notifications.retry_max_ms = 200;
        settings.notifications.poll_interval_ms = 50;
        // The test polls ServiceNow itself, once per change.
        settings.notifications.sources.servicenow.poll = false;
        settings.notifications.sources.service_health.poll = false;
    })
    .await
}

/// Records a change of ServiceNow case `case` (revision `revision`, in `state`), as the
/// ServiceNow sources do.
async fn change_case(bot: &SlackBot, case: usize, revision: u32, state: &str) {
    let recorded = outbox::record_event(
        &bot.app.db,
        &support::notify::incident(case, revision, state),
    )
    .await
    .expect("recorded");
    assert!(recorded.new, "{recorded:?}");
}

/// Types `/m365 <text>` and returns the texts posted to its response URL.
async fn say(bot: &SlackBot, user: &str, channel: &str, text: &str) -> Vec<String> {
    let (ack, ticket) = bot.command(user, channel, text).await;
    assert_eq!(ack.status, 200, "{text}: {}", ack.text);
    let posted = bot.responses(&ticket, 1).await;
    posted.iter().map(|m| text_of(&m.blocks)).collect()
}

/// Waits (up to 15 s) until `check` holds for the messages in `channel`.
async fn wait_for(
    bot: &SlackBot,
    what: &str,
    check: impl Fn(&[SlackPosted]) -> bool,
) -> Vec<SlackPosted> {
    let started = Instant::now();
    loop {
        let all = bot.world().messages();
        if check(&all) {
            return all;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: {:#?}",
            all.iter()
                .map(|m| (&m.via, &m.channel, &m.ts, &m.thread_ts, &m.text))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn in_channel<'a>(all: &'a [SlackPosted], channel: &str, via: &str) -> Vec<&'a SlackPosted> {
    all.iter()
        .filter(|m| m.channel == channel && m.via == via)
        .collect()
}

async fn subscribe(bot: &SlackBot, channel: &str) {
    let shown = say(bot, "U0ADMIN", channel, "subscribe").await;
    assert!(shown.iter().any(|s| s.contains("Subscribed")), "{shown:?}");
}

async fn subscription_list(bot: &SlackBot, channel: &str) -> Vec<store::SubscriptionHealth> {
    store::list(&bot.app.db, &key(channel)).await.expect("list")
}

/// Root message, edited in place, thread reply: on `url`'s backend.
async fn root_update_and_thread_reply(url: Option<&str>) {
    let bot = bot_on(url, 5_000).await;
    subscribe(&bot, CHANNEL).await;
    let stored = subscription_list(&bot, CHANNEL).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let platform: (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT platform, team_id, channel_id FROM notify_subscriptions WHERE id = $1",
    )
    .bind(&stored[0].id)
    .fetch_one(&bot.app.db.pool)
    .await
    .expect("row");
    assert_eq!(
        platform,
        (
            "slack".to_owned(),
            Some(SANDBOX_TEAM_ID.to_owned()),
            Some(CHANNEL.to_owned())
        )
    );
    change_case(&bot, 1, 1, "In Progress").await;
    let all = wait_for(&bot, "root message", |all| {
        !in_channel(all, CHANNEL, "chat.postMessage").is_empty()
    })
    .await;
    let roots = in_channel(&all, CHANNEL, "chat.postMessage");
    assert_eq!(roots.len(), 1, "one root message");
    let root = roots[0].clone();
    assert!(root.thread_ts.is_none());
    assert_eq!(
        root.metadata.as_ref().expect("metadata")["event_type"],
        notify_slack::METADATA_EVENT_TYPE
    );
    // Slack's per-channel limit: the next call into the channel waits its second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    change_case(&bot, 1, 2, "On Hold").await;
    let all = wait_for(&bot, "update in place and a thread reply", |all| {
        !in_channel(all, CHANNEL, "chat.update").is_empty()
            && in_channel(all, CHANNEL, "chat.postMessage").len() >= 2
    })
    .await;
    let updates = in_channel(&all, CHANNEL, "chat.update");
    assert_eq!(updates.len(), 1);
    assert_eq!(
        updates[0].ts, root.ts,
        "the root message is edited in place"
    );
    assert!(
        text_of(&updates[0].blocks).contains("On Hold"),
        "{}",
        text_of(&updates[0].blocks)
    );
    let posts = in_channel(&all, CHANNEL, "chat.postMessage");
    assert_eq!(posts.len(), 2, "root + one reply, nothing doubled");
    assert_eq!(posts[1].thread_ts.as_deref(), Some(root.ts.as_str()));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    change_case(&bot, 1, 3, "In Progress").await;
    let all = wait_for(&bot, "a later reply in the same thread", |all| {
        in_channel(all, CHANNEL, "chat.postMessage").len() >= 3
    })
    .await;
    let posts = in_channel(&all, CHANNEL, "chat.postMessage");
    assert_eq!(posts.len(), 3);
    assert!(
        posts[1..]
            .iter()
            .all(|p| p.thread_ts.as_deref() == Some(root.ts.as_str()))
    );
    assert_eq!(in_channel(&all, CHANNEL, "chat.update").len(), 2);
    assert_eq!(bot.world().rate_limited_count(), 0, "no 429");
    let health = subscription_list(&bot, CHANNEL).await;
    assert_eq!(health[0].delivered, 3, "{health:?}");
    assert!(bot.app.metrics.slack("delivered") >= 3);
}

#[tokio::test]
async fn a_case_change_posts_a_root_message_then_edits_it_and_replies_in_its_thread() {
    root_update_and_thread_reply(None).await;
}

#[tokio::test]
async fn a_case_change_posts_a_root_message_then_edits_it_and_replies_in_its_thread_on_postgres() {
    let Some(pg) = support::db::postgres_test_db().await else {
        return;
    };
    root_update_and_thread_reply(Some(&pg.url)).await;
}

#[tokio::test]
async fn channel_errors_disable_the_subscription_and_tell_the_subscriber() {
    let bot = bot_on(None, 5_000).await;
    for (n, code) in ["not_in_channel", "channel_not_found", "is_archived"]
        .into_iter()
        .enumerate()
    {
        let channel = format!("C0ERR{n}");
        bot.world().set_channel(&channel, true, false);
        subscribe(&bot, &channel).await;
        bot.world().fail_next("chat.postMessage", code);
        change_case(&bot, n + 1, 1, "New").await;
        let started = Instant::now();
        let listed = loop {
            let listed = subscription_list(&bot, &channel).await;
            if !listed[0].enabled || started.elapsed() > Duration::from_secs(15) {
                break listed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!listed[0].enabled, "{code}: {listed:?}");
        let reason = listed[0].disabled_reason.clone().unwrap_or_default();
        assert!(reason.contains(code), "{code}: {reason}");
        // `subscriptions` in the channel shows it.
        let shown = say(&bot, "U0ADMIN", &channel, "subscriptions")
            .await
            .join("\n");
        assert!(
            shown.contains("Disabled") && shown.contains(code),
            "{code}: {shown}"
        );
        // The subscriber gets a direct message saying what to do.
        let sent = deliver::send_owner_notices(&bot.app)
            .await
            .expect("notices");
        assert_eq!(sent, 1, "{code}");
        let dm: Vec<SlackPosted> = bot.world().posts_in("D0ADMIN");
        let last = text_of(&dm.last().expect("a direct message").blocks);
        assert!(last.contains("Notifications stopped"), "{last}");
        assert!(
            last.contains(&channel) && last.contains("/invite"),
            "{last}"
        );
        assert_eq!(
            deliver::send_owner_notices(&bot.app).await.expect("again"),
            0,
            "told once"
        );
    }
    assert!(bot.app.metrics.slack("disabled_subscriptions") >= 3);
}

#[tokio::test]
async fn workspace_errors_disable_every_subscription_of_the_workspace() {
    let bot = bot_on(None, 5_000).await;
    for (n, code) in ["account_inactive", "token_revoked"]
        .into_iter()
        .enumerate()
    {
        let first = format!("C0WS{n}A");
        let second = format!("C0WS{n}B");
        for channel in [&first, &second] {
            bot.world().set_channel(channel, true, false);
            subscribe(&bot, channel).await;
        }
        bot.world().fail_next("chat.postMessage", code);
        change_case(&bot, n + 1, 1, "New").await;
        let started = Instant::now();
        loop {
            let a = subscription_list(&bot, &first).await;
            let b = subscription_list(&bot, &second).await;
            if (!a[0].enabled && !b[0].enabled) || started.elapsed() > Duration::from_secs(15) {
                for list in [a, b] {
                    assert!(!list[0].enabled, "{code}: {list:?}");
                    let reason = list[0].disabled_reason.clone().unwrap_or_default();
                    assert!(
                        reason.contains(code) && reason.contains("reinstall"),
                        "{reason}"
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Subscribing again enables them.
        for channel in [&first, &second] {
            let shown = say(&bot, "U0ADMIN", channel, "subscribe").await;
            assert!(
                shown.iter().any(|s| s.contains("enabled again")),
                "{shown:?}"
            );
        }
    }
}

#[tokio::test]
async fn disable_slack_team_disables_only_that_workspace() {
    for backend in support::db::test_databases().await {
        let bot = bot_on(Some(&backend.url), 5_000).await;
        subscribe(&bot, CHANNEL).await;
        bot.world().set_channel("C0OTHER", true, false);
        subscribe(&bot, "C0OTHER").await;
        let filter = m365bot::notify::filter::Filter::parse("").expect("filter");
        let other_team = store::subscribe_at(
            &bot.app.db,
            &store::NewSubscription {
                conversation_id: "slack:T0ELSEWHERE:C0X",
                conversation_type: "channel",
                filter: &filter,
                user_id: "U0X",
                user_name: None,
            },
            &store::Place {
                platform: "slack",
                team_id: Some("T0ELSEWHERE"),
                channel_id: Some("C0X"),
            },
        )
        .await
        .expect("subscribe");
        assert!(matches!(other_team, store::SubscribeOutcome::Created(_)));
        let disabled =
            notify_slack::disable_slack_team(&bot.app, SANDBOX_TEAM_ID, "the app was uninstalled")
                .await
                .expect("disable");
        assert_eq!(disabled, 2, "{}", backend.label);
        for channel in [CHANNEL, "C0OTHER"] {
            let list = subscription_list(&bot, channel).await;
            assert!(!list[0].enabled, "{}", backend.label);
            assert_eq!(
                list[0].disabled_reason.as_deref(),
                Some("the app was uninstalled")
            );
        }
        let elsewhere = store::list(&bot.app.db, "slack:T0ELSEWHERE:C0X")
            .await
            .expect("list");
        assert!(elsewhere[0].enabled, "{}", backend.label);
        // Again: nothing left to disable.
        assert_eq!(
            notify_slack::disable_slack_team(&bot.app, SANDBOX_TEAM_ID, "again")
                .await
                .expect("disable"),
            0
        );
    }
}

/// A root post that times out; returns the posts in the channel once delivered.
async fn timed_out_post(hidden_from_history: bool) -> (SlackBot, Vec<SlackPosted>) {
    let bot = bot_on(None, 300).await;
    subscribe(&bot, CHANNEL).await;
    bot.world().fault_next_post(PostFault::AnswerLate {
        delay: Duration::from_millis(1_500),
        hidden_from_history,
    });
    change_case(&bot, 1, 1, "New").await;
    let started = Instant::now();
    loop {
        let delivered = subscription_list(&bot, CHANNEL).await[0].delivered;
        if delivered == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posts = bot.world().posts_in(CHANNEL);
    (bot, posts)
}

#[tokio::test]
async fn a_timed_out_post_that_arrived_is_found_in_the_history_not_posted_again() {
    let (bot, posts) = timed_out_post(false).await;
    assert_eq!(posts.len(), 1, "no duplicate");
    assert_eq!(bot.app.metrics.slack("unknown_outcome"), 1);
    assert_eq!(bot.app.metrics.slack("recovered_after_unknown"), 1);
    assert_eq!(bot.app.metrics.slack("resent_after_unknown"), 0);
    assert!(
        bot.world()
            .request_log()
            .iter()
            .any(|l| l.method == "conversations.history")
    );
    // The lane's root is the message found: a later change edits it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    change_case(&bot, 1, 2, "On Hold").await;
    let all = wait_for(&bot, "edit of the found root", |all| {
        !in_channel(all, CHANNEL, "chat.update").is_empty()
    })
    .await;
    assert!(
        in_channel(&all, CHANNEL, "chat.update")
            .iter()
            .all(|u| u.ts == posts[0].ts)
    );
}

#[tokio::test]
async fn a_timed_out_post_missing_from_the_history_is_posted_once_more_and_counted() {
    let (bot, posts) = timed_out_post(true).await;
    assert_eq!(posts.len(), 2, "exactly one duplicate");
    assert_eq!(bot.app.metrics.slack("unknown_outcome"), 1);
    assert_eq!(bot.app.metrics.slack("resent_after_unknown"), 1);
    let metrics = bot.app.metrics.render();
    assert!(
        metrics.contains("m365bot_slack_notify_total{event=\"resent_after_unknown\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_429_is_honoured_before_the_next_call_into_the_channel() {
    let bot = bot_on(None, 5_000).await;
    subscribe(&bot, CHANNEL).await;
    // Another app's post just now: the bot's first post into the channel meets the limit.
    bot.world().set_per_channel_interval(Duration::from_secs(2));
    let api = &bot.app.slack.as_ref().expect("slack").api;
    let message = m365bot::slack::blocks::Message {
        text: "someone else".into(),
        blocks: Vec::new(),
    };
    api.post_message(CHANNEL, &message, None)
        .await
        .expect("post");
    change_case(&bot, 1, 1, "New").await;
    let all = wait_for(&bot, "delivered after the 429", |all| {
        in_channel(all, CHANNEL, "chat.postMessage").len() >= 2
    })
    .await;
    let log = bot.world().request_log();
    let refused = log.iter().filter(|l| l.status == 429).count();
    assert_eq!(refused, 1, "one 429, then the wait was honoured: {log:?}");
    assert_eq!(bot.app.metrics.slack("throttled"), 1);
    assert_eq!(in_channel(&all, CHANNEL, "chat.postMessage").len(), 2);
}

#[tokio::test]
async fn role_rules_are_those_of_teams() {
    let bot = bot_on(None, 5_000).await;
    // Jane holds insights_user only: refused in a channel, naming the administrator role...
    for command in ["subscribe", "unsubscribe"] {
        let shown = say(&bot, "U0JANE", CHANNEL, command).await.join("\n");
        assert!(
            shown.contains("You need another ServiceNow role"),
            "{shown}"
        );
        assert!(shown.contains(".administrator"), "{shown}");
    }
    assert!(subscription_list(&bot, CHANNEL).await.is_empty());
    // ...but in her direct message with the bot insights_user is enough.
    let shown = say(&bot, "U0JANE", "D0JANE", "subscribe").await.join("\n");
    assert!(shown.contains("Subscribed"), "{shown}");
    assert_eq!(subscription_list(&bot, "D0JANE").await.len(), 1);
    // The administrator may, and `unsubscribe` removes it.
    subscribe(&bot, CHANNEL).await;
    let shown = say(&bot, "U0ADMIN", CHANNEL, "unsubscribe")
        .await
        .join("\n");
    assert!(shown.contains("Unsubscribed"), "{shown}");
    assert!(subscription_list(&bot, CHANNEL).await.is_empty());
    // `status` works in Slack.
    let shown = say(&bot, "U0ADMIN", CHANNEL, "status bad|ref")
        .await
        .join("\n");
    assert!(
        shown.contains("Not a Microsoft 365 support case"),
        "{shown}"
    );
}

#[tokio::test]
async fn doctor_checks_token_scopes_and_channel_membership() {
    let bot = bot_on(None, 5_000).await;
    subscribe(&bot, CHANNEL).await;
    let outcomes = m365bot::slack::doctor::run(&bot.app).await;
    let status = |outcomes: &[m365bot::integration::doctor::CheckOutcome], id: &str| {
        outcomes
            .iter()
            .find(|o| o.id == id)
            .map(|o| (o.status, o.detail.clone(), o.fix.clone()))
            .expect(id)
    };
    use m365bot::integration::doctor::Status;
    for id in ["slack.token", "slack.scopes", "slack.channels"] {
        assert_eq!(status(&outcomes, id).0, Status::Pass, "{id}: {outcomes:?}");
    }
    // The bot leaves the subscribed channel.
    bot.world().set_channel(CHANNEL, false, false);
    let outcomes = m365bot::slack::doctor::run(&bot.app).await;
    let (verdict, detail, fix) = status(&outcomes, "slack.channels");
    assert_eq!(verdict, Status::Fail);
    assert!(
        detail.contains(CHANNEL) && detail.contains("/invite"),
        "{detail}"
    );
    assert!(fix.unwrap_or_default().contains("/invite"));
    // A scope is missing.
    bot.world().set_scopes(&["commands", "chat:write"]);
    let outcomes = m365bot::slack::doctor::run(&bot.app).await;
    let (verdict, detail, fix) = status(&outcomes, "slack.scopes");
    assert_eq!(verdict, Status::Fail);
    assert!(
        detail.contains("users:read.email") && detail.contains("channels:history"),
        "{detail}"
    );
    assert!(fix.unwrap_or_default().contains("reinstall"));
    // A revoked token.
    bot.world().fail_next("auth.test", "token_revoked");
    let outcomes = m365bot::slack::doctor::run(&bot.app).await;
    let (verdict, detail, _) = status(&outcomes, "slack.token");
    assert_eq!(verdict, Status::Fail);
    assert!(detail.contains("token_revoked"), "{detail}");
}
