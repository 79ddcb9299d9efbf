//! What Slack sends: slash commands (a form), interactions (a form whose one field `payload`
//! holds JSON) and Events API callbacks (JSON). Only the fields the bot reads are typed; the
//! rest is ignored, so new fields from Slack do not break parsing.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A malformed body (answered with 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// The fields of a form body, as strings (the last of repeated names wins).
fn form_fields(body: &[u8]) -> Map<String, Value> {
    url::form_urlencoded::parse(body)
        .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
        .collect()
}

/// A slash command (`application/x-www-form-urlencoded`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SlashCommand {
    /// Workspace.
    pub team_id: String,
    /// Workspace domain.
    #[serde(default)]
    pub team_domain: Option<String>,
    /// Enterprise Grid organisation, when there is one.
    #[serde(default)]
    pub enterprise_id: Option<String>,
    /// Where it was typed (`C…` channel, `G…` private, `D…` direct message).
    pub channel_id: String,
    /// Channel name (`directmessage` for a DM).
    #[serde(default)]
    pub channel_name: Option<String>,
    /// Who typed it.
    pub user_id: String,
    /// Their (deprecated) user name.
    #[serde(default)]
    pub user_name: Option<String>,
    /// The command, e.g. `/m365`.
    pub command: String,
    /// Everything after the command (may be empty).
    #[serde(default)]
    pub text: String,
    /// Where later answers go (up to 5 times within 30 minutes).
    pub response_url: String,
    /// For `views.open`, valid for 3 seconds.
    #[serde(default)]
    pub trigger_id: Option<String>,
    /// The app's id.
    #[serde(default)]
    pub api_app_id: Option<String>,
}

impl SlashCommand {
    /// Parses a slash-command form body.
    pub fn from_form(body: &[u8]) -> Result<Self, PayloadError> {
        serde_json::from_value(Value::Object(form_fields(body)))
            .map_err(|e| PayloadError(format!("the body is not a Slack slash command: {e}")))
    }

    /// True in a direct message with the bot.
    pub fn is_direct_message(&self) -> bool {
        self.channel_id.starts_with('D')
    }
}

/// An id with an optional name (`team`, `user`, `channel` of interactions).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Named {
    /// The id.
    pub id: String,
    /// User name (users).
    #[serde(default)]
    pub username: Option<String>,
    /// Display or channel name.
    #[serde(default)]
    pub name: Option<String>,
    /// Workspace domain (teams).
    #[serde(default)]
    pub domain: Option<String>,
}

/// Where a clicked element lives.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// `message`, `view` or `message_attachment`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The message's `ts`.
    #[serde(default)]
    pub message_ts: Option<String>,
    /// The thread's root `ts`, when the message is in a thread.
    #[serde(default)]
    pub thread_ts: Option<String>,
    /// The channel.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// The view, for elements in a modal.
    #[serde(default)]
    pub view_id: Option<String>,
}

/// One element the user acted on.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Action {
    /// The element's `action_id`.
    pub action_id: String,
    /// Its block's `block_id`.
    #[serde(default)]
    pub block_id: Option<String>,
    /// Element type (`button`, `static_select`, …).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// A button's value.
    #[serde(default)]
    pub value: Option<String>,
    /// A link button's URL (Slack opens it; the bot only acknowledges).
    #[serde(default)]
    pub url: Option<String>,
    /// A select's choice.
    #[serde(default)]
    pub selected_option: Option<Value>,
}

/// A modal as Slack reports it in view payloads.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct View {
    /// View id.
    pub id: String,
    /// The app's `callback_id` for the view.
    #[serde(default)]
    pub callback_id: Option<String>,
    /// What the app stored with the view (at most 3,000 characters).
    #[serde(default)]
    pub private_metadata: Option<String>,
    /// Input values: `block_id -> action_id -> element state`.
    #[serde(default)]
    pub state: Option<ViewState>,
    /// Race guard for `views.update`.
    #[serde(default)]
    pub hash: Option<String>,
    /// The view's blocks as shown.
    #[serde(default)]
    pub blocks: Vec<Value>,
}

/// Input values of a view or message.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ViewState {
    /// `block_id -> action_id -> element state`.
    #[serde(default)]
    pub values: Map<String, Value>,
}

/// A button click or select change.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BlockActions {
    /// Workspace.
    #[serde(default)]
    pub team: Option<Named>,
    /// Who acted.
    pub user: Named,
    /// Where.
    #[serde(default)]
    pub container: Container,
    /// The channel, for message surfaces.
    #[serde(default)]
    pub channel: Option<Named>,
    /// For `views.open`, valid for 3 seconds.
    #[serde(default)]
    pub trigger_id: Option<String>,
    /// Where answers go (message surfaces).
    #[serde(default)]
    pub response_url: Option<String>,
    /// The modal, for view surfaces.
    #[serde(default)]
    pub view: Option<View>,
    /// Input values of the message.
    #[serde(default)]
    pub state: Option<ViewState>,
    /// What was acted on (usually one).
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// A modal submitted or closed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ViewPayload {
    /// Workspace.
    #[serde(default)]
    pub team: Option<Named>,
    /// Who acted.
    pub user: Named,
    /// The view.
    pub view: View,
    /// Set on `view_closed` when the whole stack was closed.
    #[serde(default)]
    pub is_cleared: bool,
}

/// One interaction, dispatched on `type`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Interaction {
    /// Buttons, selects and other interactive elements.
    BlockActions(Box<BlockActions>),
    /// A modal's submit button.
    ViewSubmission(ViewPayload),
    /// A modal closed (only with `notify_on_close`).
    ViewClosed(ViewPayload),
    /// Shortcuts, suggestions and anything newer: acknowledged, not handled.
    #[serde(other)]
    Other,
}

impl Interaction {
    /// Parses an interaction form body (`payload=<url-encoded JSON>`).
    pub fn from_form(body: &[u8]) -> Result<Self, PayloadError> {
        let payload = url::form_urlencoded::parse(body)
            .find(|(name, _)| name == "payload")
            .map(|(_, value)| value.into_owned())
            .ok_or_else(|| PayloadError("the body has no payload field".to_owned()))?;
        serde_json::from_str(&payload)
            .map_err(|e| PayloadError(format!("the payload is not a Slack interaction: {e}")))
    }
}

/// An Events API request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventEnvelope {
    /// The handshake when the request URL is saved: answer the challenge.
    UrlVerification {
        /// Echoed back.
        challenge: String,
    },
    /// An event the app subscribed to.
    EventCallback {
        /// Workspace.
        #[serde(default)]
        team_id: Option<String>,
        /// Event id, unique per event (retries repeat it).
        #[serde(default)]
        event_id: Option<String>,
        /// The event itself (`app_mention`, `message`, `app_uninstalled`, …).
        event: Value,
    },
    /// Rate-limit notices and anything newer: acknowledged.
    #[serde(other)]
    Other,
}

impl EventEnvelope {
    /// Parses an Events API JSON body.
    pub fn from_json(body: &[u8]) -> Result<Self, PayloadError> {
        serde_json::from_slice(body)
            .map_err(|e| PayloadError(format!("the body is not a Slack event: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_without_required_fields_is_refused() {
        let err = SlashCommand::from_form(b"team_id=T1&text=help").expect_err("refused");
        assert!(err.0.contains("slash command"), "{err}");
        let ok = SlashCommand::from_form(
            b"team_id=T1&channel_id=D1&user_id=U1&command=%2Fm365&text=help+me&response_url=https%3A%2F%2Fhooks.slack.com%2Fx",
        )
        .expect("parses");
        assert_eq!(ok.text, "help me");
        assert!(ok.is_direct_message());
    }

    #[test]
    fn unknown_interaction_types_are_other_and_garbage_is_refused() {
        let body = format!(
            "payload={}",
            url::form_urlencoded::byte_serialize(br#"{"type":"shortcut","callback_id":"x"}"#)
                .collect::<String>()
        );
        assert_eq!(
            Interaction::from_form(body.as_bytes()).expect("parses"),
            Interaction::Other
        );
        assert!(Interaction::from_form(b"payload=%7Bnot-json").is_err());
        assert!(Interaction::from_form(b"other=1").is_err());
    }
}
