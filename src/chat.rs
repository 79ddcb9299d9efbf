//! Dispatch: routes the core's events to the feature that handles them and gathers the
//! commands each feature declares. Adapters call [`handle`]; the core knows nothing of this.

use serde_json::{Value, json};

use crate::app::App;
use crate::core::command::{self, Command, ParseError};
use crate::core::{CommandHelp, EventKind, InboundEvent, Reply, Tone, out_of_date_card};

/// The commands of the core itself.
const CORE_COMMANDS: &[CommandHelp] = &[CommandHelp {
    usage: "help",
    description: "Show the commands I understand.",
    scopes: &["personal", "team", "groupChat"],
}];

/// The commands that work in this version, in help-card order; the Teams manifest lists the
/// same. Each feature module declares its own.
pub fn working_commands() -> impl Iterator<Item = &'static CommandHelp> {
    CORE_COMMANDS
        .iter()
        .chain(crate::setup::COMMANDS)
        .chain(crate::link::COMMANDS)
        .chain(crate::notify::COMMANDS)
}

/// The help card.
pub fn help_card() -> Reply {
    let commands: Vec<Value> = working_commands()
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

/// Handles one event and returns the replies to show. For a card action the first reply
/// replaces the card.
pub async fn handle(app: &App, event: InboundEvent) -> Vec<Reply> {
    match &event.kind {
        EventKind::Message(text) => match command::parse(text) {
            Ok(Command::Help) | Err(ParseError::Empty) => vec![help_card()],
            Ok(command) => dispatch_command(app, &event, command).await,
            Err(err @ ParseError::Unknown(_)) => vec![Reply::notice(
                Tone::Default,
                "I understand commands; type help",
                &err.to_string(),
                None,
            )],
            Err(err) => vec![Reply::notice(
                Tone::Attention,
                "I didn't understand that",
                &err.to_string(),
                None,
            )],
        },
        EventKind::CardAction { verb, data } => {
            let feature = verb.split('.').next().unwrap_or_default();
            match feature {
                "help" => vec![help_card()],
                "setup" => crate::setup::handle_action(app, &event, verb, data).await,
                "link" => crate::link::handle_action(app, &event, verb, data).await,
                "notify" => crate::notify::handle_action(app, &event, verb, data).await,
                _ => vec![out_of_date_card()],
            }
        }
    }
}

async fn dispatch_command(app: &App, event: &InboundEvent, command: Command) -> Vec<Reply> {
    match command {
        Command::Help => vec![help_card()],
        Command::Setup
        | Command::SetupStatus
        | Command::Doctor { .. }
        | Command::RotateSecret { .. } => crate::setup::handle_command(app, event, command).await,
        Command::LinkAccount
        | Command::LinkAccountStatus
        | Command::UnlinkAccount
        | Command::Grant { .. }
        | Command::Revoke { .. }
        | Command::Roles => crate::link::handle_command(app, event, command).await,
        Command::Subscribe { .. }
        | Command::Unsubscribe
        | Command::Subscriptions
        | Command::Status { .. } => crate::notify::handle_command(app, event, command).await,
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
        let expected: Vec<&str> = working_commands().map(|c| c.usage).collect();
        assert_eq!(usages, expected);
        assert_eq!(usages[0], "help");
    }
}
