//! The platform-neutral core: events in, replies out. Adapters translate to and from it.

pub mod command;
pub mod identity;

use serde::Serialize;
use serde_json::{Value, json};

use command::Command;

/// Who acted.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// Platform user id (`29:…` in Teams, `U…` in Slack).
    pub user_id: String,
    /// Entra object id, when the platform knows it.
    pub aad_object_id: Option<String>,
    /// Display name.
    pub name: Option<String>,
}

/// The chat platform an event came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Microsoft Teams (Bot Framework).
    #[default]
    Teams,
    /// Slack.
    Slack,
}

/// Where an event happened, with what a proactive message or a threaded reply needs.
#[derive(Debug, Clone, Default)]
pub struct ConversationAddress {
    /// Teams `serviceUrl` (empty for Slack).
    pub service_url: String,
    /// Tenant of the conversation.
    pub tenant_id: String,
    /// The bot's id in the conversation (`28:…`).
    pub bot_id: String,
    /// The bot's display name.
    pub bot_name: Option<String>,
    /// The conversation id as received (a channel thread keeps its `;messageid=` suffix).
    pub thread_conversation_id: String,
    /// The id of the inbound activity (the message, or the card message for card actions).
    pub activity_id: Option<String>,
    /// Team id of a channel conversation.
    pub team_id: Option<String>,
    /// Channel id of a channel conversation.
    pub channel_id: Option<String>,
}

/// A user mentioned in a message (other than the bot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    /// Platform user id.
    pub user_id: String,
    /// Display name.
    pub name: Option<String>,
    /// The mention's text as it appears in the message (`<at>Jane Doe</at>`).
    pub text: String,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A typed message (mention already stripped).
    Message(String),
    /// A card button: the verb and the submitted data (inputs merged in).
    CardAction {
        /// Routing verb.
        verb: String,
        /// Inputs and action data.
        data: Value,
    },
}

/// One event from a chat platform.
#[derive(Debug, Clone)]
pub struct InboundEvent {
    /// The actor.
    pub actor: Actor,
    /// The platform.
    pub platform: Platform,
    /// Conversation id (without thread suffix).
    pub conversation_id: String,
    /// `personal`, `channel` or `groupChat`.
    pub conversation_type: String,
    /// Where it happened.
    pub address: ConversationAddress,
    /// Users mentioned besides the bot.
    pub mentions: Vec<Mention>,
    /// The event.
    pub kind: EventKind,
}

impl InboundEvent {
    /// True in a 1:1 chat with the bot.
    pub fn is_personal(&self) -> bool {
        self.conversation_type == "personal"
    }
}

/// A reply in platform-neutral form.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A card rendered from `cards/<platform>/<template>.json.hbs` with `data`.
    Card {
        /// Template name without platform and extension.
        template: &'static str,
        /// The view model.
        data: Value,
    },
}

/// Style of a notice card.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    /// Neutral information.
    Default,
    /// Success.
    Good,
    /// Something needs attention.
    Warning,
    /// Something failed.
    Attention,
}

impl Reply {
    /// A short notice: title, text and what to do next.
    pub fn notice(tone: Tone, title: &str, text: &str, next_step: Option<&str>) -> Self {
        Self::Card {
            template: "notice",
            data: json!({"tone": tone, "title": title, "text": text, "next_step": next_step}),
        }
    }
}

/// One command of the help card and of the Teams manifest's command menu.
pub struct CommandHelp {
    /// What to type.
    pub usage: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Teams scopes where it is offered: `personal`, `team`, `groupChat`.
    pub scopes: &'static [&'static str],
}

/// The answer to a button whose verb nobody handles any more.
pub fn out_of_date_card() -> Reply {
    Reply::notice(
        Tone::Warning,
        "This card is out of date",
        "I no longer know what this button does.",
        Some("Type **help** to start again."),
    )
}

/// The answer to a command this version does not offer.
pub fn not_available(command: &Command) -> Reply {
    Reply::notice(
        Tone::Warning,
        "Not available yet",
        &format!(
            "**{}** is not available in this version of m365bot.",
            command_word(command)
        ),
        Some("Type **help** to see the commands that work."),
    )
}

/// The command's name as a user types it.
pub fn command_word(command: &Command) -> &'static str {
    match command {
        Command::Help => "help",
        Command::Setup => "setup",
        Command::SetupStatus => "setup status",
        Command::Doctor { .. } => "doctor",
        Command::LinkAccount => "link-account",
        Command::LinkAccountStatus => "link-account status",
        Command::UnlinkAccount => "unlink-account",
        Command::Grant { .. } => "grant",
        Command::Revoke { .. } => "revoke",
        Command::Roles => "roles",
        Command::Subscribe { .. } => "subscribe",
        Command::Unsubscribe => "unsubscribe",
        Command::Subscriptions => "subscriptions",
        Command::Status { .. } => "status",
        Command::RotateSecret { .. } => "rotate-secret",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_word() {
        let parsed = command::parse("subscribe").expect("parses");
        assert_eq!(command_word(&parsed), "subscribe");
        let Reply::Card { data, .. } = not_available(&parsed);
        assert!(data["text"].as_str().expect("text").contains("subscribe"));
    }
}
