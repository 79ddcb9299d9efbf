//! Account linking (`link-account`, `link-account status`, `unlink-account`) and role
//! enablement (`grant`, `revoke`, `roles`).
//!
//! Linking: the chat user (who must hold `<scope>.administrator`) gets a sign-in card pointing
//! at the bot's `/auth/link/start?state=…`; that redirects to Entra ID (authorization code +
//! PKCE, single-use state bound to the chat user and conversation); `/auth/link/callback`
//! redeems the code, validates the ID token ([`token`]), checks that the account is the chat
//! user's own (Teams `aadObjectId`) and holds a Microsoft 365 admin role ([`directory`]), writes
//! the link to ServiceNow ([`snow`]) and the database ([`store`]), and confirms in the chat
//! ([`deliver`]). The flow ([`flow`]) knows no chat platform.

pub mod cards;
pub mod deliver;
pub mod directory;
pub mod flow;
pub mod page;
pub mod roles;
pub mod snow;
pub mod store;
pub mod token;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::core::command::Command;
use crate::core::{CommandHelp, InboundEvent, Reply};

/// The commands this module answers, for the help card and the manifest.
pub const COMMANDS: &[CommandHelp] = &[
    CommandHelp {
        usage: "link-account",
        description: "Link your Microsoft 365 admin account (sign in with Microsoft Entra ID).",
        scopes: &["personal"],
    },
    CommandHelp {
        usage: "link-account status",
        description: "Show which Microsoft 365 account is linked to you.",
        scopes: &["personal"],
    },
    CommandHelp {
        usage: "unlink-account",
        description: "Remove the link to your Microsoft 365 admin account.",
        scopes: &["personal"],
    },
    CommandHelp {
        usage: "grant @user insights_user|administrator",
        description: "Enable the Microsoft 365 support integration for a user (ServiceNow admins).",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "revoke @user insights_user|administrator",
        description: "Take a role of the Microsoft 365 support integration away (ServiceNow admins).",
        scopes: &["personal", "team", "groupChat"],
    },
    CommandHelp {
        usage: "roles",
        description: "List who holds the integration's roles (ServiceNow admins).",
        scopes: &["personal", "team", "groupChat"],
    },
];

/// The `[link]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    /// Client id of the Entra app used for the sign-in (default: `entra.graph_client_id`,
    /// then `bot.app_id`). Its web redirect URIs must include `{server.public_url}/auth/link/callback`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its client secret (default: `entra.graph_client_secret`, then `bot.app_password`).
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretString>,
    /// Tenant (id or domain) whose accounts may be linked (default: the integration's tenant
    /// id, then `bot.tenant_id`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// How long a sign-in link stays valid, in seconds.
    #[serde(default = "default_state_ttl_secs")]
    pub state_ttl_secs: u64,
    /// ServiceNow table where the linked account is written.
    #[serde(default = "default_servicenow_table")]
    pub servicenow_table: String,
    /// Column of that table holding the linked account's UPN (an assumption: the retired
    /// app's own storage is not public).
    #[serde(default = "default_servicenow_field")]
    pub servicenow_field: String,
    /// Reference to `sys_user` in that table, when it is not `sys_user` itself.
    #[serde(default = "default_servicenow_user_field")]
    pub servicenow_user_field: String,
    /// Check with Graph that the account holds one of `directory_roles`.
    #[serde(default = "default_true")]
    pub check_directory_roles: bool,
    /// Entra role template ids accepted as "may manage support requests" (default: Global
    /// Administrator, Service Support Administrator, Helpdesk Administrator).
    #[serde(default = "directory::default_accepted_roles")]
    pub directory_roles: Vec<String>,
}

fn default_state_ttl_secs() -> u64 {
    600
}
fn default_servicenow_table() -> String {
    "sys_user".to_owned()
}
fn default_servicenow_field() -> String {
    "u_m365_admin_account".to_owned()
}
fn default_servicenow_user_field() -> String {
    "user".to_owned()
}
fn default_true() -> bool {
    true
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            client_id: None,
            client_secret: None,
            tenant: None,
            state_ttl_secs: default_state_ttl_secs(),
            servicenow_table: default_servicenow_table(),
            servicenow_field: default_servicenow_field(),
            servicenow_user_field: default_servicenow_user_field(),
            check_directory_roles: true,
            directory_roles: directory::default_accepted_roles(),
        }
    }
}

/// Answers one of this module's commands.
pub async fn handle_command(app: &App, event: &InboundEvent, command: Command) -> Vec<Reply> {
    match command {
        Command::LinkAccount => vec![flow::link_account(app, event).await],
        Command::LinkAccountStatus => vec![flow::link_status(app, event).await],
        Command::UnlinkAccount => vec![flow::unlink_account(app, event).await],
        Command::Grant { user, role } => vec![roles::change(app, event, &user, role, true).await],
        Command::Revoke { user, role } => {
            vec![roles::change(app, event, &user, role, false).await]
        }
        Command::Roles => vec![roles::list(app, event).await],
        other => vec![crate::core::not_available(&other)],
    }
}

/// Answers a card action whose verb starts with this module's prefix.
pub async fn handle_action(
    app: &App,
    event: &InboundEvent,
    verb: &str,
    _data: &Value,
) -> Vec<Reply> {
    match verb {
        "link.start" => vec![flow::link_account(app, event).await],
        "link.status" => vec![flow::link_status(app, event).await],
        "link.roles" => vec![roles::list(app, event).await],
        _ => vec![crate::core::out_of_date_card()],
    }
}

/// This module's HTTP routes: the browser side of the sign-in.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(flow::START_PATH, get(page::start))
        .route(flow::CALLBACK_PATH, get(page::callback))
}
