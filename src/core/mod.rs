//! The platform-neutral core: events in, replies out. Adapters translate to and from it.

pub mod command;

use serde::Serialize;
use serde_json::{Value, json};

use crate::app::App;
use command::{Command, ParseError};

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
    /// Conversation id (without thread suffix).
    pub conversation_id: String,
    /// `personal`, `channel` or `groupChat`.
    pub conversation_type: String,
    /// The event.
    pub kind: EventKind,
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

/// The commands that work in this version; the Teams manifest lists the same.
pub const WORKING_COMMANDS: &[CommandHelp] = &[CommandHelp {
    usage: "help",
    description: "Show the commands I understand.",
    scopes: &["personal", "team", "groupChat"],
}];

/// The help card.
pub fn help_card() -> Reply {
    let commands: Vec<Value> = WORKING_COMMANDS
        .iter()
        .map(|c| json!({"usage": c.usage, "description": c.description}))
        .collect();
    Reply::Card {
        template: "help",
        data: json!({
            "title": "m365bot commands",
            "intro": "Type a command in this chat, or mention me in a channel (@m365bot help). **/m365** in front works too.",
            "commands": commands,
        }),
    }
}

/// Handles one event and returns the replies to show.
pub async fn handle(_app: &App, event: InboundEvent) -> Vec<Reply> {
    match event.kind {
        EventKind::Message(text) => handle_text(&text),
        EventKind::CardAction { verb, .. } => match verb.as_str() {
            "help" => vec![help_card()],
            _ => vec![Reply::notice(
                Tone::Warning,
                "This card is out of date",
                "I no longer know what this button does.",
                Some("Type **help** to start again."),
            )],
        },
    }
}

fn handle_text(text: &str) -> Vec<Reply> {
    match command::parse(text) {
        Ok(Command::Help) => vec![help_card()],
        Ok(other) => vec![Reply::notice(
            Tone::Warning,
            "Not available yet",
            &format!(
                "**{}** is not available in this version of m365bot.",
                command_word(&other)
            ),
            Some("Type **help** to see the commands that work."),
        )],
        Err(ParseError::Empty) => vec![help_card()],
        Err(err) => vec![Reply::notice(
            Tone::Attention,
            "I didn't understand that",
            &err.to_string(),
            None,
        )],
    }
}

fn command_word(command: &Command) -> &'static str {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_only_working_commands() {
        let Reply::Card { template, data } = help_card();
        assert_eq!(template, "help");
        let usages: Vec<&str> = data["commands"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["usage"].as_str())
            .collect();
        assert_eq!(usages, ["help"]);
    }

    #[test]
    fn unknown_command_gets_a_hint() {
        let replies = handle_text("frobnicate");
        let Reply::Card { template, data } = &replies[0];
        assert_eq!(*template, "notice");
        assert!(data["text"].as_str().expect("text").contains("help"));
    }
}
