//! `@m365bot` mentions (`app_mention`) and direct messages (`message` with `channel_type =
//! "im"`) as core events, the same over the Events API request URL and Socket Mode.
//!
//! An event is acknowledged before anything else happens; the work runs in a task. Slack
//! retries an event it believes was missed (same `event_id`, `X-Slack-Retry-Num` raised): the
//! event ids handled are kept in the database (`slack_events_seen`, an hour), so a retry —
//! even one reaching another replica — is answered once. Messages from bots (the bot's own
//! among them), edits and other `subtype`s are ignored.
//!
//! Answers go to `chat.postMessage`: in a channel into the mention's thread, in a direct
//! message into the conversation. Personal answers (link-account and its status, errors about
//! the user) in a channel go to `chat.postEphemeral`, seen by the user alone.

use std::sync::Arc;

use serde_json::Value;

use super::api::SlackClient;
use super::payload::EventEnvelope;
use super::{blocks, people};
use crate::app::App;
use crate::core::command::{self, Command};
use crate::core::{Actor, ConversationAddress, EventKind, InboundEvent, Platform};
use crate::core::{Reply, Tone};
use crate::db::{Db, now_millis};

/// How long handled event ids are kept (Slack retries within minutes).
pub const SEEN_RETENTION_MILLIS: i64 = 3600 * 1000;

/// A mention or direct message addressed to the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Workspace.
    pub team_id: String,
    /// Who wrote it.
    pub user: String,
    /// What they wrote, the bot's mention included.
    pub text: String,
    /// Channel or direct message id.
    pub channel: String,
    /// The message's `ts`.
    pub ts: String,
    /// The thread it is in, if any.
    pub thread_ts: Option<String>,
    /// True in a direct message with the bot.
    pub is_direct: bool,
}

fn text_field<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event
        .get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

/// The message of an event when it is a mention of the bot or a direct message from a person;
/// `None` for anything else (edits, joins, bots, the bot itself, other event types).
pub fn chat_message(
    team_id: Option<&str>,
    event: &Value,
    bot_user_id: Option<&str>,
) -> Option<ChatMessage> {
    let is_direct = match text_field(event, "type")? {
        "app_mention" => false,
        "message" if text_field(event, "channel_type") == Some("im") => true,
        _ => return None,
    };
    if event.get("subtype").is_some_and(|v| !v.is_null())
        || event.get("bot_id").is_some_and(|v| !v.is_null())
    {
        return None;
    }
    let user = text_field(event, "user")?;
    if bot_user_id == Some(user) {
        return None;
    }
    Some(ChatMessage {
        team_id: team_id
            .or_else(|| text_field(event, "team"))
            .unwrap_or_default()
            .to_owned(),
        user: user.to_owned(),
        text: text_field(event, "text").unwrap_or_default().to_owned(),
        channel: text_field(event, "channel")?.to_owned(),
        ts: text_field(event, "ts")?.to_owned(),
        thread_ts: text_field(event, "thread_ts").map(str::to_owned),
        is_direct,
    })
}

/// Takes an event callback: returns at once; mentions and direct messages are answered in a
/// task.
pub fn accept(app: Arc<App>, envelope: EventEnvelope) {
    let EventEnvelope::EventCallback {
        team_id,
        event_id,
        event,
        authorizations,
    } = envelope
    else {
        return;
    };
    let bot_from_event = authorizations
        .iter()
        .find(|a| a.is_bot)
        .and_then(|a| a.user_id.clone());
    tokio::spawn(async move {
        let Some(slack) = app.slack.as_ref() else {
            return;
        };
        let team = team_id.as_deref().or_else(|| text_field(&event, "team"));
        let api = match slack.workspace_api(team).await {
            Ok(api) => api,
            Err(err) => {
                tracing::warn!(error = %err, "Slack event from a workspace without a token ignored");
                return;
            }
        };
        let bot_user_id = match bot_from_event {
            Some(id) => Some(id),
            None => bot_user_id(&api).await,
        };
        let Some(message) = chat_message(team_id.as_deref(), &event, bot_user_id.as_deref()) else {
            let kind = text_field(&event, "type").unwrap_or_default();
            tracing::debug!(
                slack.event = kind,
                "Slack event acknowledged, nothing to answer"
            );
            return;
        };
        if let Some(id) = event_id.as_deref()
            && !first_delivery(&app, id).await
        {
            tracing::debug!(slack.event_id = id, "Slack event already answered");
            return;
        }
        answer(&app, &api, &message, bot_user_id.as_deref()).await;
    });
}

/// The bot's user id in the workspace of `api` (`auth.test`), for events that do not name it.
async fn bot_user_id(api: &SlackClient) -> Option<String> {
    api.auth_test()
        .await
        .map(|identity| identity.user_id)
        .map_err(|err| {
            tracing::warn!(error = %err, "Slack auth.test failed; the bot's user id is unknown");
        })
        .ok()
}

/// True the first time `event_id` is seen (by any replica sharing the database); on a
/// database failure the event is answered (twice is better than never).
async fn first_delivery(app: &App, event_id: &str) -> bool {
    first_seen(&app.db, event_id, now_millis())
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "Slack event id not recorded");
            true
        })
}

/// Records `event_id` as handled at `now` (unix ms) and forgets ids older than an hour; true
/// when it was not recorded before.
pub async fn first_seen(db: &Db, event_id: &str, now: i64) -> sqlx::Result<bool> {
    sqlx::query("DELETE FROM slack_events_seen WHERE seen_at < $1")
        .bind(now - SEEN_RETENTION_MILLIS)
        .execute(&db.pool)
        .await?;
    let done = sqlx::query(
        "INSERT INTO slack_events_seen (event_id, seen_at) VALUES ($1, $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The core event of a mention or direct message (the bot's mention stripped from the text).
pub fn message_event(message: &ChatMessage, text: &str, personal: bool) -> InboundEvent {
    InboundEvent {
        actor: Actor {
            user_id: message.user.clone(),
            aad_object_id: None,
            name: None,
        },
        platform: Platform::Slack,
        conversation_id: message.channel.clone(),
        conversation_type: if message.is_direct || personal {
            "personal"
        } else {
            "channel"
        }
        .to_owned(),
        address: ConversationAddress {
            team_id: Some(message.team_id.clone()),
            channel_id: Some(message.channel.clone()),
            thread_conversation_id: message.channel.clone(),
            activity_id: Some(message.ts.clone()),
            ..ConversationAddress::default()
        },
        mentions: people::mentions(text),
        kind: EventKind::Message(text.to_owned()),
    }
}

/// True for a reply about the user that others in the channel need not see (an error card).
fn is_about_the_user(reply: &Reply) -> bool {
    let Reply::Card { data, .. } = reply;
    data.get("tone").and_then(Value::as_str) == Some("attention")
}

/// Runs the message through the core and posts the answers.
async fn answer(app: &App, api: &SlackClient, message: &ChatMessage, bot_user_id: Option<&str>) {
    let text = people::without_bot_mention(&message.text, bot_user_id);
    let parsed = command::parse(&text);
    let personal = parsed.as_ref().is_ok_and(super::is_personal_command);
    let replies = match super::immediate_reply(&parsed) {
        Ok(reply) => vec![reply],
        // The setup window opens only with a slash command's trigger id.
        Err(Command::Setup) => vec![Reply::notice(
            Tone::Default,
            "The setup opens in a window",
            "Type **/m365 setup**: the setup wizard opens in a window only you can see, so the secrets you type stay out of the conversation.",
            None,
        )],
        Err(_) => crate::chat::handle(app, message_event(message, &text, personal)).await,
    };
    for reply in replies {
        post(api, message, &reply, personal || is_about_the_user(&reply)).await;
    }
}

/// Posts one answer: in a direct message into the conversation (its thread, if any); in a
/// channel into the mention's thread, or to the user alone when `private`.
async fn post(api: &SlackClient, message: &ChatMessage, reply: &Reply, private: bool) {
    let rendered = blocks::render(reply);
    let thread = message
        .thread_ts
        .as_deref()
        .or((!message.is_direct).then_some(message.ts.as_str()));
    let sent = if private && !message.is_direct {
        api.post_ephemeral_in_thread(&message.channel, &message.user, &rendered, thread)
            .await
    } else {
        api.post_message(&message.channel, &rendered, thread)
            .await
            .map(drop)
    };
    if let Err(err) = sent {
        tracing::warn!(error = %err, retry = ?err.retry_kind(), "Slack answer not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mentions_and_direct_messages_from_people_are_taken_others_ignored() {
        let mention = json!({"type": "app_mention", "user": "U0ADMIN", "text": "<@U0BOT> roles",
            "ts": "1.000100", "channel": "C0GENERAL", "event_ts": "1.000100"});
        let taken = chat_message(Some("T1"), &mention, Some("U0BOT")).expect("taken");
        assert!(!taken.is_direct);
        assert_eq!(taken.team_id, "T1");
        let dm = json!({"type": "message", "channel_type": "im", "user": "U0ADMIN", "text": "help",
            "ts": "2.0", "channel": "D0ADMIN"});
        assert!(
            chat_message(Some("T1"), &dm, Some("U0BOT"))
                .expect("dm")
                .is_direct
        );
        let ignored = [
            json!({"type": "message", "channel_type": "im", "user": "U0BOT", "text": "hi", "ts": "3.0", "channel": "D0ADMIN"}),
            json!({"type": "message", "channel_type": "im", "bot_id": "B0BOT", "user": "U0X", "text": "hi", "ts": "3.0", "channel": "D0ADMIN"}),
            json!({"type": "message", "channel_type": "im", "subtype": "message_changed", "ts": "3.0", "channel": "D0ADMIN"}),
            json!({"type": "message", "channel_type": "channel", "user": "U0ADMIN", "text": "hi", "ts": "3.0", "channel": "C0GENERAL"}),
            json!({"type": "reaction_added", "user": "U0ADMIN"}),
        ];
        for event in ignored {
            assert!(
                chat_message(Some("T1"), &event, Some("U0BOT")).is_none(),
                "{event}"
            );
        }
    }
}
