//! The setup wizard in Slack modals: `/m365 setup` opens a window with the command's
//! `trigger_id` at once ("Checking…"), then shows the current step with `views.update`; a
//! submitted step becomes the core's card action (the same verb and data the Teams card
//! sends), answered with `response_action: update` (the next step), `errors` (beside the
//! field), or a "Working…" view followed by `views.update` when the step takes longer than
//! Slack waits. Buttons in the window (`block_actions` in a view) update it by id and hash.
//!
//! The events are personal: a modal is seen by its user only, so secrets typed there never
//! reach a channel.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::modal::{self, SetupRef};
use super::payload::{BlockActions, SlashCommand, ViewPayload};
use crate::app::App;
use crate::chat;
use crate::core::{Actor, ConversationAddress, EventKind, InboundEvent, Platform, Reply, Tone};

/// How long a submission may run before it is answered with a "Working…" view (Slack waits
/// 3 seconds for the answer).
pub const ANSWER_WITHIN: Duration = Duration::from_millis(2200);

/// The core event of something a user did in a setup window (always personal).
pub fn modal_event(user_id: &str, team_id: Option<&str>, kind: EventKind) -> InboundEvent {
    InboundEvent {
        actor: Actor {
            user_id: user_id.to_owned(),
            aad_object_id: None,
            name: None,
        },
        platform: Platform::Slack,
        // A Slack user id is also the address of the user's direct message with the bot.
        conversation_id: user_id.to_owned(),
        conversation_type: "personal".to_owned(),
        address: ConversationAddress {
            team_id: team_id.map(str::to_owned),
            thread_conversation_id: user_id.to_owned(),
            ..ConversationAddress::default()
        },
        mentions: Vec::new(),
        kind,
    }
}

fn first(replies: Vec<Reply>) -> Reply {
    replies.into_iter().next().unwrap_or_else(|| {
        Reply::notice(
            Tone::Attention,
            "Nothing to show",
            "The setup gave no answer to that.",
            Some("Type `/m365 setup` again."),
        )
    })
}

/// Opens the setup window for a slash command: "Checking…" with the `trigger_id` at once, then
/// the current step (or the refusal) by `views.update`. Failures are answered ephemerally
/// through the command's `response_url`.
pub async fn open(app: Arc<App>, slash: SlashCommand) {
    let Some(slack) = app.slack.as_ref() else {
        return;
    };
    let say = |text: String| {
        let url = slash.response_url.clone();
        let api = slack.api.clone();
        async move {
            let message = super::blocks::render(&Reply::notice(
                Tone::Attention,
                "I could not open the setup window",
                &text,
                Some(
                    "Type `/m365 setup` again (the window must open within 3 seconds of the command).",
                ),
            ));
            if let Err(err) = api.respond(&url, &message, false, false).await {
                tracing::warn!(error = %err, "Slack reply not delivered");
            }
        }
    };
    let Some(trigger) = slash.trigger_id.as_deref().filter(|t| !t.is_empty()) else {
        say("Slack sent no trigger id with the command.".to_owned()).await;
        return;
    };
    let shown = match slack
        .api
        .views_open(trigger, &modal::checking("your role and the setup"))
        .await
    {
        Ok(shown) => shown,
        Err(err) => {
            tracing::warn!(error = %err, "setup window not opened");
            say(format!("Slack refused to open it ({err}).")).await;
            return;
        }
    };
    let event = modal_event(
        &slash.user_id,
        Some(&slash.team_id),
        EventKind::Message(slash.text.clone()),
    );
    let reply = first(chat::handle(&app, event).await);
    let view = modal::render(&reply);
    if let Err(err) = slack
        .api
        .views_update(&shown.id, &view, shown.hash.as_deref())
        .await
    {
        tracing::warn!(error = %err, "setup window not updated");
    }
}

/// The title shown in a view's header block (the step a submission answers).
fn shown_title(blocks: &[Value]) -> String {
    blocks
        .iter()
        .find(|b| b["type"] == "header")
        .and_then(|b| b.pointer("/text/text"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The answer to a setup step's reply: the out-of-date view, errors beside the fields of
/// `shown_inputs`, or the next view. With errors after a live check (which stored the
/// failed attempt, so the setup's version moved on), the window is also brought to the new
/// version by `views.update` (same input blocks, so Slack keeps what was typed).
fn answer_for(
    app: &Arc<App>,
    reply: &Reply,
    window: (&str, Option<&str>, &SetupRef),
    step: &str,
    shown_inputs: &[String],
) -> Value {
    if modal::is_already_answered(reply) {
        return json!({"response_action": "update", "view": modal::out_of_date(modal::setup_ref(reply).as_ref())});
    }
    if let Some(errors) = modal::field_errors(reply, step)
        && errors.keys().all(|k| shown_inputs.contains(k))
    {
        let (view_id, hash, shown) = window;
        if modal::setup_ref(reply).is_some_and(|now| now != *shown) {
            let (app, view_id, hash) = (app.clone(), view_id.to_owned(), hash.map(str::to_owned));
            let view = modal::render(reply);
            tokio::spawn(async move {
                // After Slack has shown the errors (it applies the answer first).
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Some(slack) = app.slack.as_ref()
                    && let Err(err) = slack
                        .api
                        .views_update(&view_id, &view, hash.as_deref())
                        .await
                {
                    tracing::warn!(error = %err, "setup window not brought to the new version");
                }
            });
        }
        return json!({"response_action": "errors", "errors": errors});
    }
    json!({"response_action": "update", "view": modal::render(reply)})
}

/// The answer to a `view_submission` (`Value::Null`: an empty answer, which closes the
/// window). Within [`ANSWER_WITHIN`]: the next step, or errors beside the fields; later: a
/// "Working…" view now and the result by `views.update` when it is ready.
pub async fn submitted(app: Arc<App>, payload: ViewPayload) -> Value {
    let view = payload.view;
    let verb = view.callback_id.clone().unwrap_or_default();
    if !verb.starts_with("setup.") {
        return Value::Null;
    }
    let Some(setup) = SetupRef::parse(view.private_metadata.as_deref()) else {
        return json!({"response_action": "update", "view": modal::out_of_date(None)});
    };
    let values = view.state.clone().map(|s| s.values).unwrap_or_default();
    let data = modal::submitted_data(Some(&setup), &values);
    let step = shown_title(&view.blocks);
    let shown_inputs: Vec<String> = view
        .blocks
        .iter()
        .filter(|b| b["type"] == "input")
        .filter_map(|b| b["block_id"].as_str().map(str::to_owned))
        .collect();
    let event = modal_event(
        &payload.user.id,
        payload.team.as_ref().map(|t| t.id.as_str()),
        EventKind::CardAction {
            verb: verb.clone(),
            data,
        },
    );
    let worker_app = app.clone();
    let mut work = tokio::spawn(async move { first(chat::handle(&worker_app, event).await) });
    match tokio::time::timeout(ANSWER_WITHIN, &mut work).await {
        Ok(Ok(reply)) => answer_for(
            &app,
            &reply,
            (&view.id, view.hash.as_deref(), &setup),
            &step,
            &shown_inputs,
        ),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "setup step failed");
            let failed = Reply::notice(
                Tone::Attention,
                "That step failed",
                "The bot hit an internal error; nothing more was changed.",
                Some("Type `/m365 setup` to see where the setup is."),
            );
            json!({"response_action": "update", "view": modal::render(&failed)})
        }
        Err(_) => {
            let view_id = view.id.clone();
            tokio::spawn(async move {
                let Ok(reply) = work.await else { return };
                let Some(slack) = app.slack.as_ref() else {
                    return;
                };
                let shown = if modal::is_already_answered(&reply) {
                    modal::out_of_date(modal::setup_ref(&reply).as_ref())
                } else {
                    modal::render(&reply)
                };
                if let Err(err) = slack.api.views_update(&view_id, &shown, None).await {
                    tracing::warn!(error = %err, "setup window not updated after a slow step");
                }
            });
            json!({"response_action": "update", "view": modal::working(Some(&setup), &step)})
        }
    }
}

/// A button in a setup window: the card action it stands for, then `views.update` of the
/// window with the answer (guarded by the view's hash).
pub async fn clicked(app: Arc<App>, actions: BlockActions) {
    let (Some(view), Some(action)) = (actions.view.as_ref(), actions.actions.first()) else {
        return;
    };
    if action.url.is_some() {
        return;
    }
    let verb = modal::verb_of(&action.action_id).to_owned();
    if !verb.starts_with("setup.") {
        return;
    }
    let Some(slack) = app.slack.as_ref() else {
        return;
    };
    let setup = SetupRef::parse(view.private_metadata.as_deref());
    let extras: Map<String, Value> = action
        .value
        .as_deref()
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let with_inputs = extras.get("with_inputs").and_then(Value::as_bool) == Some(true);
    let values = if with_inputs {
        view.state.clone().map(|s| s.values).unwrap_or_default()
    } else {
        Map::new()
    };
    let mut data = modal::submitted_data(setup.as_ref(), &values);
    for (key, value) in extras {
        if key != "with_inputs" && key != "setup_id" && key != "version" {
            data[key] = value;
        }
    }
    let shown = match &setup {
        None if verb != "setup.refresh" => modal::out_of_date(None),
        _ => {
            let event = modal_event(
                &actions.user.id,
                actions.team.as_ref().map(|t| t.id.as_str()),
                EventKind::CardAction { verb, data },
            );
            let reply = first(chat::handle(&app, event).await);
            if modal::is_already_answered(&reply) {
                modal::out_of_date(modal::setup_ref(&reply).as_ref())
            } else {
                modal::render(&reply)
            }
        }
    };
    if let Err(err) = slack
        .api
        .views_update(&view.id, &shown, view.hash.as_deref())
        .await
    {
        tracing::warn!(error = %err, "setup window not updated after a click");
    }
}
