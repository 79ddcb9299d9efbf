//! The setup wizard (`setup`, `setup status`, `doctor`): a state machine persisted per setup,
//! one Adaptive Card per step in a 1:1 chat, every step verified live.
//!
//! Modules: [`state`] (steps, inputs, the pure transition), [`store`] (rows, versions, audit),
//! [`crypto`] (secrets at rest), [`effects`] (Graph / ServiceNow / Entra work per step),
//! [`view`] (card view models), [`flow`] (commands and card actions), [`reveal`] (the one-time
//! page that shows the secrets after an Entra sign-in).

pub mod crypto;
pub mod effects;
pub mod flow;
pub mod reveal;
pub mod rotate;
pub mod settings;
pub mod state;
pub mod store;
pub mod view;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use serde_json::Value;

use crate::app::App;
use crate::core::command::Command;
use crate::core::{CommandHelp, InboundEvent, Reply};

pub use settings::SetupSettings;

/// Refuses to start when the database holds encrypted setup secrets but no
/// `setup.encryption_key` is configured (they could never be read, and a new key would not fit).
pub async fn check_stored_secrets(
    db: &crate::db::Db,
    settings: &crate::config::Settings,
) -> anyhow::Result<()> {
    // An empty key counts as none: nothing could be decrypted with it.
    if settings
        .setup
        .encryption_key
        .as_ref()
        .is_some_and(|key| !secrecy::ExposeSecret::expose_secret(key).trim().is_empty())
    {
        return Ok(());
    }
    let stored = store::count_with_secrets(db)
        .await
        .context("reading the stored setups")?;
    if stored > 0 {
        anyhow::bail!(
            "setup.encryption_key is not set, but the database holds {stored} setup(s) with encrypted secrets: configure the key they were stored with (M365BOT_SETUP__ENCRYPTION_KEY)"
        );
    }
    Ok(())
}

/// The commands this module answers, for the help card and the manifest.
pub const COMMANDS: &[CommandHelp] = &[
    CommandHelp {
        usage: "setup",
        description: "Set up the Microsoft 365 support integration step by step (ServiceNow admins).",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "setup status",
        description: "Where the setup is, what is verified and what drifted since.",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "doctor [--repair]",
        description: "Verify the integration end to end, with a fix for every failure.",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "rotate-secret outbound|inbound|rest-user",
        description: "Replace an app's client secret everywhere it is used, verified, then remove the old one (ServiceNow admins).",
        // An occasional admin task: on the help card, typed, but not in the Teams command
        // menus (they hold 12 commands), where it would push everyday commands out.
        scopes: &[],
    },
];

/// Answers one of this module's commands.
pub async fn handle_command(app: &App, event: &InboundEvent, command: Command) -> Vec<Reply> {
    flow::command(app, event, command).await
}

/// Answers a card action whose verb starts with this module's prefix.
pub async fn handle_action(
    app: &App,
    event: &InboundEvent,
    verb: &str,
    data: &Value,
) -> Vec<Reply> {
    flow::action(app, event, verb, data).await
}

/// The integration the last completed setup stored (secrets decrypted), for `m365bot doctor`;
/// `None` when no setup has completed in this database.
pub async fn stored_integration_spec(
    settings: &crate::config::Settings,
) -> anyhow::Result<Option<crate::integration::IntegrationSpec>> {
    let db = crate::db::Db::connect(&settings.database.url, 1).await?;
    db.migrate().await?;
    let Some(row) = store::latest_completed(&db)
        .await
        .context("reading the stored setup")?
    else {
        return Ok(None);
    };
    let secret_box = crypto::SecretBox::new(settings.setup.encryption_key.as_ref())
        .context("the stored setup's secrets need setup.encryption_key")?;
    let secrets = flow::open_secrets(&secret_box, &row).map_err(anyhow::Error::msg)?;
    Ok(effects::spec_from(settings, &row.wizard.data, &secrets))
}

/// This module's HTTP routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route(reveal::REVEAL_PATH, axum::routing::get(reveal::start))
}
