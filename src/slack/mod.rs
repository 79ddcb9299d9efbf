//! Slack: the request URLs (`/slack/commands`, `/slack/interactions`, `/slack/events`),
//! request verification, the Web API client and the translation between Slack payloads and
//! the core's events and replies.
//!
//! Every request is verified on its raw bytes before it is parsed, and acknowledged at once
//! (Slack gives up after 3 seconds): a command that needs ServiceNow or Entra is answered with
//! an ephemeral "working on it" and its replies follow through the command's `response_url`.
//! `/m365 setup` runs the wizard in modals ([`wizard`], [`modal`]). `@m365bot` mentions and
//! direct messages ([`events`]) are acknowledged at once too and answered with
//! `chat.postMessage` (in the mention's thread), personal answers only to the user. Case
//! notifications are delivered into channels by [`deliver`]; [`doctor`] checks the token, its
//! scopes and the bot's membership of subscribed channels.

pub mod api;
pub mod blocks;
pub mod deliver;
pub mod doctor;
pub mod events;
pub mod install;
pub mod manifest;
pub mod modal;
pub mod payload;
pub mod people;
pub mod settings;
pub mod socket;
pub mod verify;
pub mod wizard;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::app::App;
use crate::core::command::{self, Command, ParseError};
use crate::core::identity::{PlatformDirectory, PlatformIdentity};
use crate::core::{
    self, Actor, ConversationAddress, EventKind, InboundEvent, Platform, Reply, Tone,
};
use crate::error::ApiError;
use api::SlackClient;
use blocks::Message;
use futures_util::future::BoxFuture;
use payload::{EventEnvelope, Interaction, SlashCommand};
pub use settings::{EmailMatch, SlackSettings, Transport};
use verify::{SignatureVerifier, VerifyError};

/// Path of the slash-command request URL.
pub const COMMANDS_PATH: &str = "/slack/commands";
/// Path of the interactivity request URL.
pub const INTERACTIONS_PATH: &str = "/slack/interactions";
/// Path of the Events API request URL.
pub const EVENTS_PATH: &str = "/slack/events";
/// The slash command the manifest declares.
pub const SLASH_COMMAND: &str = "/m365";
/// `action_id` of a button that shows the help.
pub const HELP_ACTION: &str = "help";

/// The Slack side of the application, present when `slack.enabled`.
#[derive(Debug)]
pub struct Slack {
    /// Checks request signatures (HTTP transport).
    pub verifier: Option<SignatureVerifier>,
    /// The Web API with the bot token.
    pub api: SlackClient,
    /// The app-level token, for Socket Mode.
    pub app_token: Option<secrecy::SecretString>,
    /// The rule tying a `link-account` sign-in to the Slack user.
    pub email_match: EmailMatch,
    /// Opens the tokens of workspaces installed through `/slack/install` (present when
    /// `slack.client_id` is set).
    pub secrets: Option<crate::setup::crypto::SecretBox>,
    /// The workspace of the configured bot token (`auth.test`, asked once when needed).
    configured_team: tokio::sync::OnceCell<String>,
    /// The database holding installed workspaces' tokens (with `secrets`).
    db: Option<crate::db::Db>,
}

/// Why no Web API client can be made for a workspace.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Neither the configured token nor a stored one belongs to the workspace.
    #[error(
        "m365bot is not installed in the Slack workspace {0}: install it there from the bot's /slack/install page"
    )]
    NotInstalled(String),
    /// The stored token cannot be read.
    #[error(transparent)]
    Store(#[from] install::StoreError),
    /// `auth.test` of the configured token failed, so its workspace is unknown.
    #[error("cannot tell the workspace of slack.bot_token: {0}")]
    ConfiguredTeam(api::SlackApiError),
}

impl Slack {
    /// The adapter for validated settings, or `None` when Slack is off.
    pub fn from_settings(settings: &SlackSettings, http: reqwest::Client) -> Option<Self> {
        if !settings.enabled {
            return None;
        }
        let token = settings.bot_token.clone()?;
        let verifier = match settings.transport {
            Transport::Http => settings.signing_secret.as_ref().map(|secret| {
                SignatureVerifier::new(
                    secret.expose_secret().trim().as_bytes(),
                    Duration::from_secs(settings.signature_window_secs),
                )
            }),
            Transport::Socket => None,
        };
        let app_token = match settings.transport {
            Transport::Socket => settings.app_token.clone(),
            Transport::Http => None,
        };
        Some(Self {
            verifier,
            api: SlackClient::new(http, settings.api_url.clone(), token),
            app_token,
            email_match: settings.email_match,
            secrets: None,
            configured_team: tokio::sync::OnceCell::new_with(settings.team_id.clone()),
            db: None,
        })
    }

    /// Adds the database and the key that opens installed workspaces' tokens
    /// (`setup.encryption_key`), when installs are configured.
    pub fn with_installs(mut self, settings: &crate::config::Settings, db: &crate::db::Db) -> Self {
        if settings.slack.installs_enabled() {
            self.secrets =
                crate::setup::crypto::SecretBox::new(settings.setup.encryption_key.as_ref()).ok();
            self.db = Some(db.clone());
        }
        self
    }

    /// The Web API client of the workspace `team_id`: its stored token when it was installed
    /// through `/slack/install`, the configured token for the configured workspace.
    pub async fn api_for(
        &self,
        db: &crate::db::Db,
        team_id: &str,
    ) -> Result<SlackClient, TokenError> {
        let Some(secrets) = self.secrets.as_ref() else {
            // One workspace only: every request comes from the configured one.
            return Ok(self.api.clone());
        };
        if let Some(token) = install::stored_token(db, secrets, team_id).await? {
            return Ok(self.api.with_token(token));
        }
        let configured = self
            .configured_team
            .get_or_try_init(|| async {
                self.api
                    .auth_test()
                    .await
                    .map(|identity| identity.team_id)
                    .map_err(TokenError::ConfiguredTeam)
            })
            .await?;
        if configured == team_id {
            Ok(self.api.clone())
        } else {
            Err(TokenError::NotInstalled(team_id.to_owned()))
        }
    }
}

/// Starts Socket Mode when it is the configured transport.
pub fn start_background(app: Arc<App>, shutdown: tokio_util::sync::CancellationToken) {
    let Some(token) = app.slack.as_ref().and_then(|slack| slack.app_token.clone()) else {
        return;
    };
    tokio::spawn(socket::run(app, token, shutdown));
}

/// The Slack request URLs.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(COMMANDS_PATH, post(commands))
        .route(INTERACTIONS_PATH, post(interactions))
        .route(EVENTS_PATH, post(events))
        .merge(install::routes())
}

/// Why a request to a Slack URL is not served.
enum Refusal {
    /// Slack (or its HTTP transport) is off.
    NotEnabled,
    /// The signature check failed.
    Refused(ApiError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::NotEnabled => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "not_found", "message": "Slack request URLs are not enabled on this bot (slack.enabled, slack.transport = \"http\")"}})),
            )
                .into_response(),
            Self::Refused(err) => err.into_response(),
        }
    }
}

/// The adapter, when the request is signed by Slack; else the refusal to answer.
fn verified<'a>(app: &'a App, headers: &HeaderMap, body: &[u8]) -> Result<&'a Slack, Refusal> {
    let slack = app.slack.as_ref().ok_or(Refusal::NotEnabled)?;
    let verifier = slack.verifier.as_ref().ok_or(Refusal::NotEnabled)?;
    match verifier.verify(headers, body) {
        Ok(()) => Ok(slack),
        Err(VerifyError::Busy) => Err(Refusal::Refused(ApiError::Unavailable(
            VerifyError::Busy.to_string(),
        ))),
        Err(err) => Err(Refusal::Refused(ApiError::Unauthorized(err.to_string()))),
    }
}

/// An immediate ephemeral answer to a command.
fn ephemeral(message: &Message) -> Value {
    let mut body = message.to_json();
    body["response_type"] = json!("ephemeral");
    body
}

/// `POST /slack/commands`.
async fn commands(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = verified(&app, &headers, &body) {
        return refused.into_response();
    }
    let command = match SlashCommand::from_form(&body) {
        Ok(command) => command,
        Err(err) => return ApiError::BadRequest(err.to_string()).into_response(),
    };
    Json(answer_command(app, command)).into_response()
}

/// True for the commands whose replies Slack can show in this version (`setup` opens a
/// modal; the others answer through the `response_url`).
pub fn works_in_slack(command: &Command) -> bool {
    matches!(
        command,
        Command::Help
            | Command::Setup
            | Command::SetupStatus
            | Command::Doctor { .. }
            | Command::RotateSecret { .. }
            | Command::LinkAccount
            | Command::LinkAccountStatus
            | Command::UnlinkAccount
            | Command::Grant { .. }
            | Command::Revoke { .. }
            | Command::Roles
            | Command::Subscribe { .. }
            | Command::Unsubscribe
            | Command::Subscriptions
            | Command::Status { .. }
    )
}

/// True for the commands whose answers are for the user alone (a sign-in link, their own
/// link): Slack shows them only to the user, so the core may treat the conversation as
/// personal.
pub fn is_personal_command(command: &Command) -> bool {
    matches!(
        command,
        Command::LinkAccount | Command::LinkAccountStatus | Command::UnlinkAccount
    )
}

/// The usages of the help card that work in Slack (see [`works_in_slack`]).
const SLACK_USAGES: &[&str] = &[
    "help",
    "setup",
    "setup status",
    "doctor",
    "rotate-secret outbound|inbound|rest-user",
    "link-account",
    "link-account status",
    "unlink-account",
    "grant @user insights_user|administrator",
    "revoke @user insights_user|administrator",
    "roles",
    "subscribe",
    "unsubscribe",
    "subscriptions",
    "status",
];

/// The help card for Slack: the core's, with the commands Slack cannot do yet marked.
pub fn help_card() -> Reply {
    let Reply::Card { template, mut data } = crate::chat::help_card();
    if let Some(commands) = data.get_mut("commands").and_then(Value::as_array_mut) {
        for command in commands {
            let usage = command["usage"].as_str().unwrap_or_default();
            let works = SLACK_USAGES.iter().any(|known| {
                usage == *known
                    || usage
                        .strip_prefix(known)
                        .is_some_and(|rest| rest.starts_with(" [") || rest.starts_with(" <"))
            });
            if !works && let Some(description) = command["description"].as_str() {
                command["description"] = json!(format!("{description} _(in Teams for now)_"));
            }
        }
    }
    Reply::Card { template, data }
}

/// The answer to a command that Slack cannot do yet.
pub fn not_in_slack_yet(command: &Command) -> Reply {
    Reply::notice(
        Tone::Warning,
        "Not available in Slack yet",
        &format!(
            "**{}** is not available in Slack in this version of m365bot.",
            core::command_word(command)
        ),
        Some("Use Teams for it: type the same command in a chat with m365bot."),
    )
}

/// The immediate answer to a slash command (the HTTP body, or the Socket Mode ack payload):
/// help and refusals in it, anything that calls ServiceNow or Entra "working on it", its
/// replies following through the `response_url`.
pub fn answer_command(app: Arc<App>, slash: SlashCommand) -> Value {
    match immediate_reply(&command::parse(&slash.text)) {
        Ok(reply) => ephemeral(&blocks::render(&reply)),
        Err(Command::Setup) => {
            // The window opens with the trigger id at once; the step follows in it.
            tokio::spawn(wizard::open(app, slash));
            ephemeral(&Message {
                text: "Opening the setup window…".to_owned(),
                blocks: vec![blocks::context(&[
                    ":lock: The setup opens in a window only you can see; secrets are typed only there.".to_owned(),
                ])],
            })
        }
        Err(command) => {
            let word = core::command_word(&command);
            tokio::spawn(run_command(app, slash));
            ephemeral(&Message {
                text: format!("Working on {word}…"),
                blocks: vec![blocks::context(&[format!(
                    ":hourglass_flowing_sand: Working on `{word}`…"
                )])],
            })
        }
    }
}

/// The answer that needs no work (help, a typing mistake, a command Slack cannot do yet), or
/// the command to run through the core.
pub fn immediate_reply(parsed: &Result<Command, ParseError>) -> Result<Reply, Command> {
    match parsed {
        Ok(Command::Help) | Err(ParseError::Empty) => Ok(help_card()),
        Err(err @ ParseError::Unknown(_)) => Ok(Reply::notice(
            Tone::Default,
            "I understand commands; type /m365 help",
            &err.to_string(),
            None,
        )),
        Err(err) => Ok(Reply::notice(
            Tone::Attention,
            "I didn't understand that",
            &err.to_string(),
            None,
        )),
        Ok(command) if !works_in_slack(command) => Ok(not_in_slack_yet(command)),
        Ok(command) => Err(command.clone()),
    }
}

/// Runs a command through the core and posts its replies to the `response_url`.
async fn run_command(app: Arc<App>, slash: SlashCommand) {
    let event = command_event(&slash);
    let replies = crate::chat::handle(&app, event).await;
    let Some(slack) = app.slack.as_ref() else {
        return;
    };
    for reply in replies {
        let message = blocks::render(&reply);
        if let Err(err) = slack
            .api
            .respond(&slash.response_url, &message, false, false)
            .await
        {
            tracing::warn!(error = %err, retry = ?err.retry_kind(), "Slack reply not delivered");
        }
    }
}

/// The core event of a slash command. Its answers go to the `response_url` ephemerally, so a
/// personal command (see [`is_personal_command`]) counts as typed in private.
pub fn command_event(slash: &SlashCommand) -> InboundEvent {
    let personal = slash.is_direct_message()
        || command::parse(&slash.text).is_ok_and(|c| is_personal_command(&c));
    let conversation_type = if personal { "personal" } else { "channel" };
    InboundEvent {
        actor: Actor {
            user_id: slash.user_id.clone(),
            aad_object_id: None,
            name: slash.user_name.clone(),
        },
        platform: Platform::Slack,
        conversation_id: slash.channel_id.clone(),
        conversation_type: conversation_type.to_owned(),
        address: ConversationAddress {
            team_id: Some(slash.team_id.clone()),
            channel_id: Some(slash.channel_id.clone()),
            thread_conversation_id: slash.channel_id.clone(),
            ..ConversationAddress::default()
        },
        mentions: people::mentions(&slash.text),
        kind: EventKind::Message(slash.text.clone()),
    }
}

/// `POST /slack/interactions`: clicks acknowledged at once (their work follows); a setup
/// window's submission answered with its next view or its errors within 3 seconds.
async fn interactions(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let slack = match verified(&app, &headers, &body) {
        Ok(slack) => slack,
        Err(refused) => return refused.into_response(),
    };
    let interaction = match Interaction::from_form(&body) {
        Ok(interaction) => interaction,
        Err(err) => return ApiError::BadRequest(err.to_string()).into_response(),
    };
    let answer = match interaction {
        Interaction::ViewSubmission(payload) => {
            Some(wizard::submitted(app.clone(), payload).await).filter(|v| !v.is_null())
        }
        other => answer_interaction(&app, slack, other),
    };
    match answer {
        Some(body) => Json(body).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

/// The immediate answer to an interaction (`None`: an empty acknowledgement). A view
/// submission is answered by [`wizard::submitted`], which may take up to 3 seconds; here it
/// gets the empty answer that closes the window.
pub fn answer_interaction(
    app: &Arc<App>,
    slack: &Slack,
    interaction: Interaction,
) -> Option<Value> {
    match interaction {
        Interaction::BlockActions(actions) if actions.container.kind == "view" => {
            tokio::spawn(wizard::clicked(app.clone(), *actions));
            None
        }
        Interaction::BlockActions(actions) => {
            // Link buttons need nothing; only the help button asks for an answer. Elements of
            // other apps' messages are acknowledged and ignored.
            let wants_help = actions
                .actions
                .iter()
                .any(|a| a.action_id == HELP_ACTION && a.url.is_none());
            if let (true, Some(url)) = (wants_help, actions.response_url.clone()) {
                let api = slack.api.clone();
                tokio::spawn(async move {
                    let message = blocks::render(&help_card());
                    if let Err(err) = api.respond(&url, &message, false, false).await {
                        tracing::warn!(error = %err, "Slack reply not delivered");
                    }
                });
            }
            None
        }
        // Closing a setup window keeps the setup where it is (`/m365 setup` resumes it).
        Interaction::ViewSubmission(_) | Interaction::ViewClosed(_) | Interaction::Other => None,
    }
}

/// `POST /slack/events`: the `url_verification` handshake; events are acknowledged at once
/// and mentions and direct messages answered after ([`events::accept`]).
async fn events(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = verified(&app, &headers, &body) {
        return refused.into_response();
    }
    match EventEnvelope::from_json(&body) {
        Ok(EventEnvelope::UrlVerification { challenge }) => {
            Json(json!({"challenge": challenge})).into_response()
        }
        Ok(envelope @ EventEnvelope::EventCallback { .. }) => {
            if let EventEnvelope::EventCallback { event, team_id, .. } = &envelope
                && install::on_event(&app, team_id.as_deref(), event).await
            {
                return StatusCode::OK.into_response();
            }
            if let Some(retry) = headers.get("x-slack-retry-num") {
                tracing::debug!(retry = ?retry, "Slack retried an event");
            }
            events::accept(app.clone(), envelope);
            StatusCode::OK.into_response()
        }
        Ok(EventEnvelope::Other) => StatusCode::OK.into_response(),
        Err(err) => ApiError::BadRequest(err.to_string()).into_response(),
    }
}

impl PlatformDirectory for Slack {
    /// What Slack says about `user_id` (`users.info`; the e-mail needs `users:read.email`), or
    /// a card saying why it cannot be used.
    fn lookup<'a>(
        &'a self,
        event: &'a InboundEvent,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<PlatformIdentity, Reply>> {
        Box::pin(self.user_identity(event.address.team_id.as_deref(), user_id))
    }
}

impl Slack {
    /// What Slack says about `user_id` of the workspace `team_id` (`users.info` with that
    /// workspace's token), or a card saying why it cannot be used.
    async fn user_identity(
        &self,
        team_id: Option<&str>,
        user_id: &str,
    ) -> Result<PlatformIdentity, Reply> {
        let api = match (team_id, self.db.as_ref()) {
            (Some(team_id), Some(db)) => self.api_for(db, team_id).await.map_err(|err| {
                tracing::warn!(error = %err, "no Slack token for the workspace");
                Reply::notice(
                    Tone::Attention,
                    "I could not find out who you are",
                    &err.to_string(),
                    Some("Ask your Slack admin to install m365bot in this workspace again."),
                )
            })?,
            _ => self.api.clone(),
        };
        let user = api.user_info(user_id).await.map_err(|err| {
            tracing::warn!(error = %err, "cannot read the Slack user's e-mail");
            let next = if err.code() == Some("missing_scope") {
                "Ask your Slack admin to add the users:read and users:read.email scopes to the app and reinstall it."
            } else {
                "Try again in a minute; if it keeps failing, ask the bot's operator to check its log."
            };
            Reply::notice(
                Tone::Attention,
                "I could not find out who you are",
                &format!("Slack did not tell me your e-mail address ({err})."),
                Some(next),
            )
        })?;
        if user.deleted || user.is_bot {
            return Err(Reply::notice(
                Tone::Attention,
                "This Slack user cannot use m365bot",
                "Deactivated users and bots are not mapped to ServiceNow users.",
                None,
            ));
        }
        let email = user.profile.email.clone().filter(|e| !e.trim().is_empty());
        if email.is_none() {
            return Err(Reply::notice(
                Tone::Attention,
                "Your Slack profile has no e-mail I can read",
                "I match Slack users to ServiceNow users by e-mail, and Slack did not give me yours.",
                Some(
                    "Ask your Slack admin to grant the app the users:read.email scope and reinstall it.",
                ),
            ));
        }
        Ok(PlatformIdentity {
            user_id: user.id,
            name: user.real_name.or(user.profile.real_name).or(user.name),
            aad_object_id: None,
            email,
            user_principal_name: None,
        })
    }
}
