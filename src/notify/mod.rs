//! Case-status and service-health notifications (`subscribe`, `unsubscribe`, `subscriptions`, `status`).

pub mod event;
pub mod outbox;
pub mod sources;

use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::core::command::Command;
use crate::core::{CommandHelp, InboundEvent, Reply};

/// The commands this module answers, for the help card and the manifest.
pub const COMMANDS: &[CommandHelp] = &[];

/// The `[notifications]` configuration section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {}

/// Answers one of this module's commands.
pub async fn handle_command(_app: &App, _event: &InboundEvent, command: Command) -> Vec<Reply> {
    vec![crate::core::not_available(&command)]
}

/// Answers a card action whose verb starts with this module's prefix.
pub async fn handle_action(
    _app: &App,
    _event: &InboundEvent,
    _verb: &str,
    _data: &Value,
) -> Vec<Reply> {
    vec![crate::core::out_of_date_card()]
}

/// Starts the background workers (outbox delivery, pollers); they stop with `shutdown`.
pub fn start_background(app: Arc<App>, shutdown: tokio_util::sync::CancellationToken) {
    sources::start(app, shutdown);
}

/// This module's HTTP routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new().merge(sources::routes())
}
