//! An in-process emulator of the Slack Web API, of Slack's `response_url`s and of Socket Mode,
//! for the sandbox and the end-to-end tests.
//!
//! [`SlackEmulator::start`] binds one loopback server that stands for both
//! `https://slack.com/api/` (under `/api/`) and `https://hooks.slack.com/` (response URLs under
//! `/commands/` and `/actions/`). It answers like Slack: HTTP 200 with `{"ok": false, "error":
//! "<code>"}` for failures (`not_authed`, `invalid_auth`, `channel_not_found`,
//! `not_in_channel`, `is_archived`, `message_not_found`, `msg_too_long`, `invalid_blocks` with
//! `response_metadata.messages`, `user_not_found`, `expired_trigger_id`, `hash_conflict`,
//! `unknown_method`, …), HTTP 429 with `Retry-After` when `chat.postMessage` posts twice into
//! one channel within a second, and response URLs good for 5 posts within 30 minutes.
//! `auth.test` lists the token's scopes in `x-oauth-scopes` ([`SlackHandle::set_scopes`]);
//! `conversations.history` returns a channel's top-level messages with their metadata; a
//! user id as `chat.postMessage` channel posts into the bot's direct message with that user.
//! Faults: scripted Slack errors per method ([`SlackHandle::fail_next`]) and a
//! `chat.postMessage` stored but answered late, optionally missing from the history
//! ([`SlackHandle::fault_next_post`]). Every
//! call lands in a request log; every message posted lands in a message log, readable through
//! [`SlackHandle`] or `GET /_sandbox/messages` (the `slack-say` driver reads it there).
//! `apps.connections.open` (app-level token) returns the URL of a Socket Mode WebSocket that
//! says `hello`, sends the envelopes of [`SlackHandle::socket_command`], records the acks,
//! redelivers unacknowledged envelopes to the next connection with `retry_attempt` raised, and
//! can send `disconnect` or drop the connection.
//!
//! Seed: workspace `T0SANDBOX` with the bot `U0BOT`, users `U0ADMIN` (e-mail of the ServiceNow
//! emulator's `admin`) and `U0JANE` (`jane.doe`), a deactivated `U0GONE`, channels `C0GENERAL`
//! (public, bot a member), `C0PRIVATE` (private, bot not a member), `C0OLD` (archived) and
//! the direct message `D0ADMIN` (of `U0ADMIN`; `conversations.open` opens others).
//! [`event_callback`] and [`send_event`] (or the `event` of its body through
//! [`SlackHandle::socket_event`]) send the bot an `@m365bot` mention or a direct message as
//! Slack would.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::slack::blocks::{MAX_FALLBACK_TEXT, Surface, check_limits, check_modal};

/// The sandbox workspace's bot token.
pub const SANDBOX_BOT_TOKEN: &str = "xoxb-sandbox-0000000000-m365bot";
/// The sandbox app's signing secret (the `slack-say` driver signs with it).
pub const SANDBOX_SIGNING_SECRET: &str = "sandbox-signing-secret-0123456789abcdef";
/// The sandbox app-level token.
pub const SANDBOX_APP_TOKEN: &str = "xapp-1-sandbox-0000000000-m365bot";
/// The sandbox workspace id.
pub const SANDBOX_TEAM_ID: &str = "T0SANDBOX";
/// The sandbox workspace's name.
pub const SANDBOX_TEAM_NAME: &str = "Contoso (sandbox)";
/// A second workspace, which the install flow (`/oauth/v2/authorize`) installs into.
pub const SECOND_TEAM_ID: &str = "T0SECOND";
/// The second workspace's name.
pub const SECOND_TEAM_NAME: &str = "Fabrikam (sandbox)";
/// The sandbox app's client id (OAuth v2 installs).
pub const SANDBOX_CLIENT_ID: &str = "1111111111.2222222222";
/// The sandbox app's client secret.
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-client-secret-0123456789abcdef";
/// How long an install code may be exchanged (Slack: 10 minutes).
const CODE_TTL: Duration = Duration::from_secs(600);
/// Default port of the emulator in `m365bot sandbox`.
pub const DEFAULT_PORT: u16 = 3979;
/// How long a trigger id may be used.
const TRIGGER_TTL: Duration = Duration::from_secs(3);
/// Uses of one response URL.
const RESPONSE_URL_USES: u32 = 5;
/// Lifetime of one response URL.
const RESPONSE_URL_TTL: Duration = Duration::from_secs(30 * 60);

/// One message as the emulator received it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlackPosted {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// `chat.postMessage`, `chat.update`, `chat.postEphemeral` or `response_url`.
    pub via: String,
    /// The channel.
    pub channel: String,
    /// The message `ts` (after `chat.update`: the updated message's).
    pub ts: String,
    /// Thread root, for replies.
    pub thread_ts: Option<String>,
    /// The only user who sees it (ephemeral).
    pub ephemeral_to: Option<String>,
    /// The response URL id, for `response_url` posts.
    pub response_url: Option<String>,
    /// Fallback text.
    pub text: String,
    /// Blocks.
    pub blocks: Value,
    /// Message metadata (`event_type`, `event_payload`), when given.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// A fault of the next `chat.postMessage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostFault {
    /// The message is stored, but the answer comes only after this delay (a client timeout:
    /// the caller cannot know that it was posted). With `hidden_from_history`, the message is
    /// also left out of `conversations.history` (Slack's history lagging behind).
    AnswerLate {
        /// How late the answer comes.
        delay: Duration,
        /// Leave the message out of `conversations.history`.
        hidden_from_history: bool,
    },
}

/// One call to the emulator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlackLogged {
    /// The method (`chat.postMessage`) or `response_url`.
    pub method: String,
    /// HTTP status answered.
    pub status: u16,
    /// Slack error code, when `ok` was false.
    pub error: Option<String>,
    /// The workspace whose token the call carried (`None`: no valid token, or none needed).
    #[serde(default)]
    pub team: Option<String>,
}

#[derive(Debug, Clone)]
struct Channel {
    name: String,
    is_private: bool,
    is_im: bool,
    is_member: bool,
    is_archived: bool,
    /// The user of a direct message with the bot.
    im_user: Option<String>,
}

struct ResponseUrl {
    channel: String,
    user: String,
    uses: u32,
    created: Instant,
}

/// A `trigger_id`: when issued, whether used, for whom.
#[derive(Debug, Clone)]
struct Trigger {
    issued: Instant,
    used: bool,
    user: String,
}

/// A modal the emulator shows: the view as last set, its hash, its user, whether it is
/// still open, the view under it (pushed views) and the errors shown beside its fields.
#[derive(Debug, Clone)]
struct ShownView {
    view: Value,
    hash: String,
    user: String,
    open: bool,
    previous: Option<String>,
    touched: u64,
    errors: Map<String, Value>,
}

struct World {
    users: Vec<Value>,
    channels: HashMap<String, Channel>,
    messages: Vec<SlackPosted>,
    log: Vec<SlackLogged>,
    response_urls: HashMap<String, ResponseUrl>,
    triggers: HashMap<String, Trigger>,
    views: HashMap<String, ShownView>,
    view_history: Vec<Value>,
    submission_answers: Vec<(String, Value)>,
    last_post: HashMap<String, Instant>,
    next: u64,
    per_channel_interval: Duration,
    socket: SocketState,
    /// Scopes `auth.test` lists in `x-oauth-scopes`.
    scopes: Vec<String>,
    /// Errors the next calls of a method answer, in order.
    scripted_errors: HashMap<String, VecDeque<String>>,
    /// Faults of the next `chat.postMessage` calls, in order.
    post_faults: VecDeque<PostFault>,
    /// A delay to wait before the answer of the call being served.
    answer_delay: Option<Duration>,
    /// `ts` of messages left out of `conversations.history`.
    hidden: Vec<String>,
    /// When each accepted `chat.postMessage` arrived, per channel.
    post_times: HashMap<String, Vec<Instant>>,
    /// Valid bot tokens and their workspace.
    tokens: HashMap<String, String>,
    /// Tokens of uninstalled workspaces (`token_revoked`).
    revoked: Vec<String>,
    /// Install codes issued by the authorize page.
    codes: HashMap<String, InstallCode>,
}

/// A code the authorize page issued.
struct InstallCode {
    team: String,
    redirect_uri: String,
    issued: Instant,
    used: bool,
}

/// Socket Mode: the open connection, envelopes not yet sent, sent but not acknowledged, and
/// the acknowledgements received.
#[derive(Default)]
struct SocketState {
    link: Option<tokio::sync::mpsc::UnboundedSender<SocketOrder>>,
    connections: u32,
    queued: VecDeque<Value>,
    unacked: Vec<Value>,
    acks: Vec<SocketAck>,
}

enum SocketOrder {
    Send(Value),
    Disconnect(String),
    Drop,
}

/// An acknowledgement the bot sent over Socket Mode.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketAck {
    /// The envelope acknowledged.
    pub envelope_id: String,
    /// Its retry attempt when acknowledged (0: first delivery).
    pub retry_attempt: u64,
    /// The response payload, if any.
    pub payload: Option<Value>,
}

struct Shared {
    world: Mutex<World>,
    base_url: String,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running emulator.
pub struct SlackEmulator {
    url: String,
    handle: SlackHandle,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Reads and changes the emulator's world.
#[derive(Clone)]
pub struct SlackHandle {
    shared: Arc<Shared>,
}

fn user(id: &str, name: &str, real_name: &str, email: &str, deleted: bool) -> Value {
    json!({
        "id": id, "team_id": SANDBOX_TEAM_ID, "name": name, "real_name": real_name,
        "deleted": deleted, "is_bot": false,
        "profile": {"email": email, "display_name": name, "real_name": real_name},
    })
}

impl SlackEmulator {
    /// Binds `bind` (port 0 picks one) and serves; users' e-mails are at `email_domain`.
    pub async fn start(bind: SocketAddr, email_domain: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bind.ip().is_loopback(),
            "the Slack emulator has no security: bind it to loopback only"
        );
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("Slack emulator: cannot listen on {bind}"))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let mut channels = HashMap::new();
        for (id, name, is_private, is_im, is_member, is_archived) in [
            ("C0GENERAL", "general", false, false, true, false),
            ("C0PRIVATE", "secret-project", true, false, false, false),
            ("C0OLD", "old-stuff", false, false, true, true),
            ("D0ADMIN", "", false, true, true, false),
        ] {
            channels.insert(
                id.to_owned(),
                Channel {
                    name: name.to_owned(),
                    is_private,
                    is_im,
                    is_member,
                    is_archived,
                    im_user: is_im.then(|| "U0ADMIN".to_owned()),
                },
            );
        }
        let world = World {
            users: vec![
                user(
                    "U0ADMIN",
                    "admin",
                    "System Administrator",
                    &format!("admin@{email_domain}"),
                    false,
                ),
                user(
                    "U0JANE",
                    "jane.doe",
                    "Jane Doe",
                    &format!("jane.doe@{email_domain}"),
                    false,
                ),
                user(
                    "U0GONE",
                    "gone",
                    "Former Employee",
                    &format!("gone@{email_domain}"),
                    true,
                ),
            ],
            channels,
            messages: Vec::new(),
            log: Vec::new(),
            response_urls: HashMap::new(),
            triggers: HashMap::new(),
            views: HashMap::new(),
            view_history: Vec::new(),
            submission_answers: Vec::new(),
            last_post: HashMap::new(),
            next: 0,
            per_channel_interval: Duration::from_secs(1),
            socket: SocketState::default(),
            scopes: crate::slack::manifest::BOT_SCOPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            scripted_errors: HashMap::new(),
            post_faults: VecDeque::new(),
            answer_delay: None,
            hidden: Vec::new(),
            post_times: HashMap::new(),
            tokens: HashMap::from([(SANDBOX_BOT_TOKEN.to_owned(), SANDBOX_TEAM_ID.to_owned())]),
            revoked: Vec::new(),
            codes: HashMap::new(),
        };
        let shared = Arc::new(Shared {
            world: Mutex::new(world),
            base_url: url.clone(),
        });
        let router = Router::new()
            .route("/api/{method}", post(api))
            .route("/commands/{team}/{id}/{secret}", post(respond))
            .route("/actions/{team}/{id}/{secret}", post(respond))
            .route("/_sandbox/messages", get(messages))
            .route("/_sandbox/command", post(new_command))
            .route("/_sandbox/views/current", get(current_view))
            .route("/_sandbox/views/{id}/submission", post(submission))
            .route("/_sandbox/views/{id}/action", post(action))
            .route("/_sandbox/views/{id}/answer", post(answer))
            .route("/socket-mode", get(socket_mode))
            .route("/oauth/v2/authorize", get(authorize))
            .route("/_sandbox/socket", get(socket_status))
            .route("/_sandbox/socket-command", post(socket_command))
            .route("/_sandbox/socket-interaction", post(socket_interaction))
            .with_state(shared.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "Slack emulator stopped");
            }
        });
        Ok(Self {
            url,
            handle: SlackHandle { shared },
            shutdown,
            task,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:3979`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Web API base for `slack.api_url`.
    pub fn api_url(&self) -> String {
        format!("{}/api/", self.url)
    }

    /// The world.
    pub fn handle(&self) -> SlackHandle {
        self.handle.clone()
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// A slash command's per-invocation values: where answers go and the modal trigger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommandTicket {
    /// The `response_url`.
    pub response_url: String,
    /// Its id (the `response_url` field of [`SlackPosted`]).
    pub response_id: String,
    /// The `trigger_id`.
    pub trigger_id: String,
}

impl SlackHandle {
    /// Every message received so far.
    pub fn messages(&self) -> Vec<SlackPosted> {
        self.shared.world().messages.clone()
    }

    /// True once something was posted to the response URL `response_id`.
    pub fn has_response(&self, response_id: &str) -> bool {
        self.shared
            .world()
            .messages
            .iter()
            .rev()
            .any(|m| m.response_url.as_deref() == Some(response_id))
    }

    /// Every call so far.
    pub fn request_log(&self) -> Vec<SlackLogged> {
        self.shared.world().log.clone()
    }

    /// A fresh response URL and trigger id for a command `user` types in `channel`.
    pub fn new_command(&self, channel: &str, user: &str) -> CommandTicket {
        new_ticket(&self.shared, channel, user)
    }

    /// Archives, un-archives or removes the bot from `channel` (created if unknown).
    pub fn set_channel(&self, channel: &str, is_member: bool, is_archived: bool) {
        let mut world = self.shared.world();
        let entry = world
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel {
                name: channel.to_lowercase(),
                is_private: false,
                is_im: false,
                is_member,
                is_archived,
                im_user: None,
            });
        entry.is_member = is_member;
        entry.is_archived = is_archived;
    }

    /// Sends `/m365 <text>` typed by `user` in `channel` over Socket Mode (queued until the
    /// bot is connected); returns the envelope id and the command's ticket.
    pub fn socket_command(&self, user: &str, channel: &str, text: &str) -> (String, CommandTicket) {
        let ticket = new_ticket(&self.shared, channel, user);
        let payload = json!({
            "token": "unused", "team_id": SANDBOX_TEAM_ID, "team_domain": "contoso-sandbox",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": user,
            "command": "/m365", "text": text, "api_app_id": "A0SANDBOX",
            "is_enterprise_install": "false",
            "response_url": ticket.response_url, "trigger_id": ticket.trigger_id,
        });
        let envelope_id = self.socket_send("slash_commands", true, payload);
        (envelope_id, ticket)
    }

    /// Sends an Events API callback of workspace `team` (e.g. `{"type": "app_uninstalled"}`)
    /// over Socket Mode; returns the envelope id.
    pub fn socket_event(&self, team: &str, event: Value) -> String {
        let payload = json!({
            "token": "unused", "team_id": team, "api_app_id": "A0SANDBOX",
            "type": "event_callback", "event_id": format!("Ev{}", crate::upstream::entra::random_token(6)),
            "event_time": chrono::Utc::now().timestamp(), "event": event,
        });
        self.socket_send("events_api", false, payload)
    }

    /// Revokes the tokens of workspace `team`, as uninstalling the app does: later calls with
    /// them answer `token_revoked`.
    pub fn uninstall(&self, team: &str) {
        let mut world = self.shared.world();
        let gone: Vec<String> = world
            .tokens
            .iter()
            .filter(|(_, t)| t.as_str() == team)
            .map(|(token, _)| token.clone())
            .collect();
        for token in gone {
            world.tokens.remove(&token);
            world.revoked.push(token);
        }
    }

    /// Queues or sends one envelope; returns its id.
    fn socket_send(&self, kind: &str, accepts_response_payload: bool, payload: Value) -> String {
        let mut world = self.shared.world();
        world.next += 1;
        let envelope_id = format!("env-{:08}", world.next);
        let envelope = json!({
            "type": kind,
            "envelope_id": envelope_id,
            "accepts_response_payload": accepts_response_payload,
            "retry_attempt": 0,
            "retry_reason": "",
            "payload": payload,
        });
        let link = world.socket.link.clone();
        match link {
            Some(link) => {
                world.socket.unacked.push(envelope.clone());
                if link.send(SocketOrder::Send(envelope)).is_err() {
                    tracing::debug!(
                        "Socket Mode link gone; the envelope waits for the next connection"
                    );
                }
            }
            None => world.socket.queued.push_back(envelope),
        }
        envelope_id
    }

    /// Sends an interaction `payload` (from [`Self::submission`] or [`Self::action`]) over
    /// Socket Mode, as Slack does (`interactive`, a response payload accepted); returns the
    /// envelope id.
    pub fn socket_interaction(&self, payload: Value) -> String {
        let accepts_response_payload = payload["type"] == "view_submission";
        self.socket_send("interactive", accepts_response_payload, payload)
    }

    /// Asks the bot to reconnect (`disconnect` with `reason`), as Slack does regularly.
    pub fn socket_disconnect(&self, reason: &str) {
        if let Some(link) = self.shared.world().socket.link.take() {
            let _ = link.send(SocketOrder::Disconnect(reason.to_owned()));
        }
    }

    /// Drops the Socket Mode connection without a word, as a network failure would.
    pub fn socket_drop(&self) {
        if let Some(link) = self.shared.world().socket.link.take() {
            let _ = link.send(SocketOrder::Drop);
        }
    }

    /// Acknowledgements received over Socket Mode.
    pub fn socket_acks(&self) -> Vec<SocketAck> {
        self.shared.world().socket.acks.clone()
    }

    /// Socket Mode connections opened so far, and whether one is open now.
    pub fn socket_connections(&self) -> (u32, bool) {
        let world = self.shared.world();
        (world.socket.connections, world.socket.link.is_some())
    }

    /// Envelopes sent or queued and not acknowledged yet.
    pub fn socket_unacknowledged(&self) -> usize {
        let world = self.shared.world();
        world.socket.unacked.len() + world.socket.queued.len()
    }

    /// Changes the profile e-mail of the Slack user `user` (`None` when unknown).
    pub fn set_user_email(&self, user: &str, email: &str) -> Option<()> {
        let mut world = self.shared.world();
        let found = world
            .users
            .iter_mut()
            .find(|u| u["id"].as_str() == Some(user))?;
        found["profile"]["email"] = json!(email);
        Some(())
    }

    /// The direct message of `user` with the bot, when one was opened.
    pub fn direct_message_of(&self, user: &str) -> Option<String> {
        self.shared
            .world()
            .channels
            .iter()
            .find(|(_, c)| c.im_user.as_deref() == Some(user))
            .map(|(id, _)| id.clone())
    }

    /// Sets the scopes the bot token has (listed by `auth.test` in `x-oauth-scopes`).
    pub fn set_scopes(&self, scopes: &[&str]) {
        self.shared.world().scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Makes the next call of `method` answer Slack's error `error` (`ok: false`).
    pub fn fail_next(&self, method: &str, error: &str) {
        self.shared
            .world()
            .scripted_errors
            .entry(method.to_owned())
            .or_default()
            .push_back(error.to_owned());
    }

    /// Applies `fault` to the next `chat.postMessage`.
    pub fn fault_next_post(&self, fault: PostFault) {
        self.shared.world().post_faults.push_back(fault);
    }

    /// The messages posted (`chat.postMessage`) into `channel`, oldest first.
    pub fn posts_in(&self, channel: &str) -> Vec<SlackPosted> {
        self.shared
            .world()
            .messages
            .iter()
            .filter(|m| m.channel == channel && m.via == "chat.postMessage")
            .cloned()
            .collect()
    }

    /// When each accepted `chat.postMessage` arrived, per channel.
    pub fn post_times(&self) -> HashMap<String, Vec<Instant>> {
        self.shared.world().post_times.clone()
    }

    /// Answers 429 to the calls logged so far.
    pub fn rate_limited_count(&self) -> usize {
        self.shared
            .world()
            .log
            .iter()
            .filter(|l| l.status == 429)
            .count()
    }

    /// The open view `user` sees on top, with the errors shown beside its fields (`errors`).
    pub fn current_view(&self, user: &str) -> Option<Value> {
        let world = self.shared.world();
        let id = current_view_of(&world, user)?;
        world.views.get(&id).map(|v| {
            let mut view = v.view.clone();
            view["errors"] = Value::Object(v.errors.clone());
            view
        })
    }

    /// The view `id` as last set (closed ones too).
    pub fn view(&self, id: &str) -> Option<Value> {
        self.shared.world().views.get(id).map(|v| v.view.clone())
    }

    /// The bot's answers to view submissions so far: (view id, answer), in order.
    pub fn submission_answers(&self) -> Vec<(String, Value)> {
        self.shared.world().submission_answers.clone()
    }

    /// Every view opened, pushed or updated so far, in order.
    pub fn view_history(&self) -> Vec<Value> {
        self.shared.world().view_history.clone()
    }

    /// The `view_submission` payload Slack sends when the user submits view `id` with
    /// `entered` typed in (by `block_id`; other inputs keep their initial values).
    pub fn submission(&self, id: &str, entered: &Map<String, Value>) -> Result<Value, String> {
        let mut world = self.shared.world();
        let shown = world
            .views
            .get(id)
            .filter(|v| v.open)
            .cloned()
            .ok_or_else(|| format!("no open view {id}"))?;
        if shown.view.get("submit").is_none() {
            return Err("this window has no submit button".to_owned());
        }
        let values = view_state(&shown.view, entered)?;
        let trigger = interaction_trigger(&mut world, &shown.user);
        let mut view = shown.view.clone();
        view["state"] = json!({"values": values});
        view["root_view_id"] = json!(root_of(&world, id));
        Ok(json!({
            "type": "view_submission",
            "team": {"id": SANDBOX_TEAM_ID, "domain": "contoso-sandbox"},
            "user": interaction_user(&shown.user),
            "api_app_id": "A0SANDBOX", "token": "sandbox-verification-token",
            "trigger_id": trigger, "view": view, "response_urls": [],
            "is_enterprise_install": false, "enterprise": null,
        }))
    }

    /// The `block_actions` payload Slack sends when the user clicks the button `action_id`
    /// in view `id` (with the inputs as they are, plus `entered`).
    pub fn action(
        &self,
        id: &str,
        action_id: &str,
        entered: &Map<String, Value>,
    ) -> Result<Value, String> {
        let mut world = self.shared.world();
        let shown = world
            .views
            .get(id)
            .filter(|v| v.open)
            .cloned()
            .ok_or_else(|| format!("no open view {id}"))?;
        let (block_id, element) = shown.view["blocks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| {
                b["elements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |e| (b["block_id"].clone(), e.clone()))
            })
            .find(|(_, e)| e["action_id"] == action_id)
            .ok_or_else(|| format!("the window has no button {action_id}"))?;
        let values = view_state(&shown.view, entered)?;
        let trigger = interaction_trigger(&mut world, &shown.user);
        world.next += 1;
        let mut view = shown.view.clone();
        view["state"] = json!({"values": values});
        view["root_view_id"] = json!(root_of(&world, id));
        Ok(json!({
            "type": "block_actions",
            "team": {"id": SANDBOX_TEAM_ID, "domain": "contoso-sandbox"},
            "user": interaction_user(&shown.user),
            "api_app_id": "A0SANDBOX", "token": "sandbox-verification-token",
            "container": {"type": "view", "view_id": id},
            "trigger_id": trigger, "view": view,
            "actions": [{
                "action_id": action_id, "block_id": block_id, "text": element["text"],
                "value": element.get("value"), "url": element.get("url"),
                "type": element["type"],
                "action_ts": format!("{}.{:06}", chrono::Utc::now().timestamp(), world.next % 1_000_000),
            }],
        }))
    }

    /// Applies the bot's answer to a submission of view `id` as Slack does: `update` replaces
    /// it (validated), `errors` shows messages beside input blocks, `push` stacks a view,
    /// `clear` closes them all, an empty answer closes it.
    pub fn answer_submission(&self, id: &str, answer: &Value) -> Result<(), String> {
        let mut world = self.shared.world();
        let shown = world
            .views
            .get(id)
            .filter(|v| v.open)
            .cloned()
            .ok_or_else(|| format!("no open view {id}"))?;
        world
            .submission_answers
            .push((id.to_owned(), answer.clone()));
        let close = |world: &mut World, id: &str| {
            if let Some(v) = world.views.get_mut(id) {
                v.open = false;
            }
        };
        match answer.get("response_action").and_then(Value::as_str) {
            None if answer.is_null() || answer.as_object().is_some_and(Map::is_empty) => {
                close(&mut world, id);
                Ok(())
            }
            Some("update") => {
                let problems = view_problems(answer.get("view"));
                if !problems.is_empty() {
                    return Err(format!("invalid view: {}", problems.join("; ")));
                }
                show_view(
                    &mut world,
                    id.to_owned(),
                    &answer["view"],
                    shown.user,
                    shown.previous,
                );
                Ok(())
            }
            Some("push") => {
                let problems = view_problems(answer.get("view"));
                if !problems.is_empty() {
                    return Err(format!("invalid view: {}", problems.join("; ")));
                }
                let new_id = new_view_id(&mut world);
                show_view(
                    &mut world,
                    new_id,
                    &answer["view"],
                    shown.user,
                    Some(id.to_owned()),
                );
                Ok(())
            }
            Some("errors") => {
                let errors = answer["errors"]
                    .as_object()
                    .filter(|e| !e.is_empty())
                    .ok_or("errors: an object of block_id -> message is required")?;
                let inputs: Vec<&str> = shown.view["blocks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b["type"] == "input")
                    .filter_map(|b| b["block_id"].as_str())
                    .collect();
                if let Some(unknown) = errors.keys().find(|k| !inputs.contains(&k.as_str())) {
                    return Err(format!(
                        "errors: {unknown} is not an input block of the view"
                    ));
                }
                let errors = errors.clone();
                if let Some(v) = world.views.get_mut(id) {
                    v.errors = errors;
                }
                Ok(())
            }
            Some("clear") => {
                let user = shown.user.clone();
                for v in world.views.values_mut().filter(|v| v.user == user) {
                    v.open = false;
                }
                Ok(())
            }
            other => Err(format!("unknown response_action {other:?}")),
        }
    }

    /// Changes the per-channel `chat.postMessage` spacing (1 s, as Slack).
    pub fn set_per_channel_interval(&self, interval: Duration) {
        self.shared.world().per_channel_interval = interval;
    }
}

fn new_ticket(shared: &Shared, channel: &str, user: &str) -> CommandTicket {
    let mut world = shared.world();
    world.next += 1;
    let id = format!("{}{:06}", 7_000_000, world.next);
    let secret = crate::upstream::entra::random_token(12);
    world.response_urls.insert(
        id.clone(),
        ResponseUrl {
            channel: channel.to_owned(),
            user: user.to_owned(),
            uses: 0,
            created: Instant::now(),
        },
    );
    let trigger_id = format!("{id}.{}", crate::upstream::entra::random_token(8));
    world.triggers.insert(
        trigger_id.clone(),
        Trigger {
            issued: Instant::now(),
            used: false,
            user: user.to_owned(),
        },
    );
    CommandTicket {
        response_url: format!(
            "{}/commands/{SANDBOX_TEAM_ID}/{id}/{secret}",
            shared.base_url
        ),
        response_id: id,
        trigger_id,
    }
}

#[derive(Deserialize)]
struct NewCommand {
    channel: String,
    user: String,
}

async fn new_command(State(shared): State<Arc<Shared>>, Json(body): Json<NewCommand>) -> Response {
    Json(new_ticket(&shared, &body.channel, &body.user)).into_response()
}

#[derive(Deserialize)]
struct MessagesQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    response_url: Option<String>,
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<MessagesQuery>,
) -> Response {
    let world = shared.world();
    let list: Vec<&SlackPosted> = world
        .messages
        .iter()
        .filter(|m| m.seq > query.after)
        .filter(|m| {
            query
                .response_url
                .as_ref()
                .is_none_or(|id| m.response_url.as_ref() == Some(id))
        })
        .collect();
    Json(json!({"messages": list})).into_response()
}

/// A Slack error answer (HTTP 200, `ok: false`).
fn slack_error(world: &mut World, method: &str, error: &str, messages: &[String]) -> Response {
    world.log.push(SlackLogged {
        method: method.to_owned(),
        status: 200,
        error: Some(error.to_owned()),
        team: None,
    });
    let mut body = json!({"ok": false, "error": error});
    if !messages.is_empty() {
        body["response_metadata"] = json!({"messages": messages});
    }
    Json(body).into_response()
}

fn slack_ok(world: &mut World, method: &str, body: Value) -> Response {
    world.log.push(SlackLogged {
        method: method.to_owned(),
        status: 200,
        error: None,
        team: None,
    });
    let mut body = body;
    body["ok"] = json!(true);
    Json(body).into_response()
}

/// The arguments of a call, JSON or form.
fn arguments(headers: &HeaderMap, body: &[u8]) -> Option<Map<String, Value>> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        }
    } else {
        Some(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    }
}

fn arg<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    args.get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

/// Blocks given as JSON or as a JSON string (form bodies).
fn blocks_of(args: &Map<String, Value>) -> Value {
    match args.get("blocks") {
        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
        Some(value) => value.clone(),
        None => json!([]),
    }
}

fn next_ts(world: &mut World) -> String {
    world.next += 1;
    format!(
        "{}.{:06}",
        chrono::Utc::now().timestamp(),
        world.next % 1_000_000
    )
}

fn check_blocks(blocks: &Value) -> Result<(), Vec<String>> {
    let Some(list) = blocks.as_array() else {
        return Err(vec![
            "[ERROR] must be an array [json-pointer:/blocks]".to_owned(),
        ]);
    };
    let problems = check_limits(list, Surface::Message);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems
            .into_iter()
            .map(|p| format!("[ERROR] {p}"))
            .collect())
    }
}

async fn api(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = api_now(&shared, method, &headers, &body);
    let delay = shared.world().answer_delay.take();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    response
}

/// Serves one Web API call (the answer may be delayed by a fault, see [`PostFault`]).
fn api_now(shared: &Shared, method: String, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut world = shared.world();
    if method == "oauth.v2.access" {
        return oauth_access(&mut world, headers, body);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else {
        return slack_error(&mut world, &method, "not_authed", &[]);
    };
    let app_level = method == "apps.connections.open";
    if app_level && token == SANDBOX_APP_TOKEN {
        world.next += 1;
        let url = format!(
            "{}/socket-mode?ticket={}",
            shared.base_url.replacen("http://", "ws://", 1),
            world.next
        );
        return slack_ok(&mut world, &method, json!({"url": url}));
    }
    let team = world.tokens.get(&token).cloned();
    match (app_level, team.is_some(), token == SANDBOX_APP_TOKEN) {
        (false, true, _) | (true, _, true) => {}
        (true, true, _) | (false, _, true) => {
            return slack_error(&mut world, &method, "not_allowed_token_type", &[]);
        }
        _ if world.revoked.contains(&token) => {
            return slack_error(&mut world, &method, "token_revoked", &[]);
        }
        _ => return slack_error(&mut world, &method, "invalid_auth", &[]),
    }
    let Some(args) = arguments(headers, body) else {
        return slack_error(&mut world, &method, "invalid_json", &[]);
    };
    let team = team.unwrap_or_default();
    let scripted = world
        .scripted_errors
        .get_mut(&method)
        .and_then(VecDeque::pop_front);
    if let Some(error) = scripted {
        return slack_error(&mut world, &method, &error, &[]);
    }
    let answer = web_api(&mut world, &method, &team, &args);
    if let Some(last) = world.log.last_mut() {
        last.team = Some(team);
    }
    answer
}

/// The name of a sandbox workspace.
fn team_name(team: &str) -> &'static str {
    if team == SECOND_TEAM_ID {
        SECOND_TEAM_NAME
    } else {
        SANDBOX_TEAM_NAME
    }
}

/// The bot-token methods, called with `team`'s token.
fn web_api(world: &mut World, method: &str, team: &str, args: &Map<String, Value>) -> Response {
    match method {
        "auth.test" => {
            let scopes = world.scopes.join(",");
            let mut response = slack_ok(
                world,
                method,
                json!({"url": "https://sandbox.slack.com/", "team": team_name(team), "user": "m365bot",
                    "team_id": team, "user_id": "U0BOT", "bot_id": "B0BOT"}),
            );
            if let Ok(value) = axum::http::HeaderValue::from_str(&scopes) {
                response.headers_mut().insert("x-oauth-scopes", value);
            }
            response
        }
        "conversations.history" => history(world, method, args),
        "chat.postMessage" => post_message(world, method, args),
        "chat.update" => update_message(world, method, args),
        "chat.postEphemeral" => post_ephemeral(world, method, args),
        "views.open" => open_view(world, method, args),
        "views.update" => update_view(world, method, args),
        "views.push" => push_view(world, method, args),
        "users.info" => {
            let found = arg(args, "user").and_then(|id| {
                world
                    .users
                    .iter()
                    .find(|u| u["id"].as_str() == Some(id))
                    .cloned()
            });
            match found {
                Some(mut user) => {
                    user["team_id"] = json!(team);
                    slack_ok(world, method, json!({"user": user}))
                }
                None => slack_error(world, method, "user_not_found", &[]),
            }
        }
        "conversations.open" => open_conversation(world, method, args),
        "conversations.info" => {
            let found = arg(args, "channel")
                .and_then(|id| world.channels.get(id).map(|c| (id.to_owned(), c.clone())));
            match found {
                Some((id, c)) => slack_ok(
                    world,
                    method,
                    json!({"channel": {"id": id, "name": c.name, "is_channel": !c.is_im && !c.is_private,
                        "is_private": c.is_private, "is_im": c.is_im, "is_archived": c.is_archived,
                        "is_member": c.is_member}}),
                ),
                None => slack_error(world, method, "channel_not_found", &[]),
            }
        }
        _ => slack_error(world, method, "unknown_method", &[]),
    }
}

/// `conversations.open` with one user: their direct message with the bot, opened on first
/// use (`users` missing: `users_list_not_supplied`; unknown: `user_not_found`; deactivated:
/// `user_disabled`; several users would be a group DM, not emulated: `not_implemented`).
fn open_conversation(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let Some(users) = arg(args, "users") else {
        return slack_error(world, method, "users_list_not_supplied", &[]);
    };
    if users.contains(',') {
        return slack_error(world, method, "not_implemented", &[]);
    }
    let Some(user) = world
        .users
        .iter()
        .find(|u| u["id"].as_str() == Some(users))
        .cloned()
    else {
        return slack_error(world, method, "user_not_found", &[]);
    };
    if user["deleted"].as_bool() == Some(true) {
        return slack_error(world, method, "user_disabled", &[]);
    }
    let existing = world
        .channels
        .iter()
        .find(|(_, c)| c.im_user.as_deref() == Some(users))
        .map(|(id, _)| id.clone());
    let id = existing.unwrap_or_else(|| {
        let id = format!("D{}", users.trim_start_matches(['U', 'W']));
        world.channels.insert(
            id.clone(),
            Channel {
                name: String::new(),
                is_private: false,
                is_im: true,
                is_member: true,
                is_archived: false,
                im_user: Some(users.to_owned()),
            },
        );
        id
    });
    slack_ok(
        world,
        method,
        json!({"channel": {"id": id, "is_im": true, "user": users}}),
    )
}

/// `conversations.history`: top-level messages of a channel the bot is in, newest first,
/// from `oldest`, at most `limit` (metadata with `include_all_metadata`).
fn history(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let Some(id) = arg(args, "channel").map(str::to_owned) else {
        return slack_error(world, method, "channel_not_found", &[]);
    };
    match world.channels.get(&id) {
        None => return slack_error(world, method, "channel_not_found", &[]),
        Some(c) if !c.is_member => return slack_error(world, method, "not_in_channel", &[]),
        Some(_) => {}
    }
    let oldest: f64 = arg(args, "oldest")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let limit: usize = arg(args, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, 999);
    let metadata = arg(args, "include_all_metadata") == Some("true");
    let list: Vec<Value> = world
        .messages
        .iter()
        .rev()
        .filter(|m| m.channel == id && m.via == "chat.postMessage" && m.thread_ts.is_none())
        .filter(|m| m.ts.parse::<f64>().unwrap_or(0.0) >= oldest)
        .filter(|m| !world.hidden.contains(&m.ts))
        .take(limit)
        .map(|m| {
            let mut message = json!({"type": "message", "subtype": "bot_message", "ts": m.ts,
                "text": m.text, "bot_id": "B0BOT"});
            if metadata && let Some(meta) = &m.metadata {
                message["metadata"] = meta.clone();
            }
            message
        })
        .collect();
    slack_ok(world, method, json!({"messages": list, "has_more": false}))
}

/// `oauth.v2.access`: the app's credentials in HTTP Basic (or `client_id`/`client_secret` in
/// the form), a code of the authorize page used once within 10 minutes, the same
/// `redirect_uri`; answers a new bot token of the code's workspace.
fn oauth_access(world: &mut World, headers: &HeaderMap, body: &[u8]) -> Response {
    const METHOD: &str = "oauth.v2.access";
    use base64::Engine;
    let args: Map<String, Value> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| {
            v.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    let (client_id, client_secret) = match basic {
        Some(pair) => pair,
        None => (
            arg(&args, "client_id").unwrap_or_default().to_owned(),
            arg(&args, "client_secret").unwrap_or_default().to_owned(),
        ),
    };
    if client_id != SANDBOX_CLIENT_ID {
        return slack_error(world, METHOD, "invalid_client_id", &[]);
    }
    if client_secret != SANDBOX_CLIENT_SECRET {
        return slack_error(world, METHOD, "bad_client_secret", &[]);
    }
    let Some(code) = arg(&args, "code").and_then(|c| world.codes.get_mut(c)) else {
        return slack_error(world, METHOD, "invalid_code", &[]);
    };
    if code.used || code.issued.elapsed() > CODE_TTL {
        return slack_error(world, METHOD, "invalid_code", &[]);
    }
    if arg(&args, "redirect_uri").is_some_and(|uri| uri != code.redirect_uri) {
        return slack_error(world, METHOD, "bad_redirect_uri", &[]);
    }
    code.used = true;
    let team = code.team.clone();
    let token = format!(
        "xoxb-sandbox-{team}-{}",
        crate::upstream::entra::random_token(12)
    );
    world.tokens.insert(token.clone(), team.clone());
    slack_ok(
        world,
        METHOD,
        json!({
            "access_token": token, "token_type": "bot",
            "scope": crate::slack::manifest::BOT_SCOPES.join(","),
            "bot_user_id": "U0BOT", "app_id": "A0SANDBOX",
            "team": {"id": team, "name": team_name(&team)},
            "enterprise": null, "is_enterprise_install": false,
            "authed_user": {"id": "U0ADMIN"},
        }),
    )
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    team: Option<String>,
}

/// `GET /oauth/v2/authorize`: the sandbox's "Allow" page. It issues a code for the workspace
/// `team` (default the second workspace, `T0SECOND`) and links to `redirect_uri` with the code
/// and the state (`#allow`), or with `error=access_denied` (`#cancel`).
async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    use crate::link::page::escape_html;
    let refuse = |problem: &str| {
        let html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Slack (sandbox)</title></head>\
             <body><h1>Cannot install</h1><p id=\"error\">{}</p></body></html>",
            escape_html(problem)
        );
        (StatusCode::BAD_REQUEST, axum::response::Html(html)).into_response()
    };
    if query.client_id != SANDBOX_CLIENT_ID {
        return refuse("invalid_client_id: no app has this client_id");
    }
    let Ok(redirect) = url::Url::parse(&query.redirect_uri) else {
        return refuse("bad_redirect_uri: redirect_uri is missing or not a URL");
    };
    let team = query.team.unwrap_or_else(|| SECOND_TEAM_ID.to_owned());
    if team != SANDBOX_TEAM_ID && team != SECOND_TEAM_ID {
        return refuse("team_not_found: the sandbox has the workspaces T0SANDBOX and T0SECOND");
    }
    let code = format!("{team}.{}", crate::upstream::entra::random_token(16));
    shared.world().codes.insert(
        code.clone(),
        InstallCode {
            team: team.clone(),
            redirect_uri: query.redirect_uri.clone(),
            issued: Instant::now(),
            used: false,
        },
    );
    let mut allow = redirect.clone();
    allow
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &query.state);
    let mut cancel = redirect;
    cancel
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("state", &query.state);
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Slack (sandbox)</title></head>\
         <body><h1>m365bot is requesting permission to access the {name} Slack workspace</h1>\
         <p id=\"scopes\">{scopes}</p>\
         <p><a id=\"allow\" href=\"{allow}\">Allow</a> <a id=\"cancel\" href=\"{cancel}\">Cancel</a></p>\
         </body></html>",
        name = escape_html(team_name(&team)),
        scopes = escape_html(&query.scope),
        allow = escape_html(allow.as_str()),
        cancel = escape_html(cancel.as_str()),
    );
    axum::response::Html(html).into_response()
}

/// Checks the channel for posting: known, not archived, the bot a member (or public). A
/// user id stands for the bot's direct message with that user.
fn postable(world: &mut World, channel: Option<&str>) -> Result<String, &'static str> {
    let id = channel.ok_or("channel_not_found")?;
    if id.starts_with('U') && world.users.iter().any(|u| u["id"].as_str() == Some(id)) {
        let dm = format!("D{}", &id[1..]);
        world.channels.entry(dm.clone()).or_insert(Channel {
            name: String::new(),
            is_private: false,
            is_im: true,
            is_member: true,
            is_archived: false,
            im_user: Some(id.to_owned()),
        });
        return Ok(dm);
    }
    let found = world.channels.get(id).ok_or("channel_not_found")?;
    if found.is_archived {
        return Err("is_archived");
    }
    if !found.is_member {
        // chat:write.public lets the bot post into public channels it has not joined.
        return if found.is_private {
            Err("not_in_channel")
        } else {
            Ok(id.to_owned())
        };
    }
    Ok(id.to_owned())
}

fn post_message(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let channel = match postable(world, arg(args, "channel")) {
        Ok(channel) => channel,
        Err(code) => return slack_error(world, method, code, &[]),
    };
    let text = arg(args, "text").unwrap_or_default().to_owned();
    let blocks = blocks_of(args);
    if text.is_empty() && blocks.as_array().is_none_or(Vec::is_empty) {
        return slack_error(world, method, "no_text", &[]);
    }
    if let Err(messages) = check_blocks(&blocks) {
        return slack_error(world, method, "invalid_blocks", &messages);
    }
    let now = Instant::now();
    if let Some(last) = world.last_post.get(&channel)
        && now.duration_since(*last) < world.per_channel_interval
    {
        let wait = world.per_channel_interval - now.duration_since(*last);
        world.log.push(SlackLogged {
            method: method.to_owned(),
            status: 429,
            error: Some("ratelimited".to_owned()),
            team: None,
        });
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    world.last_post.insert(channel.clone(), now);
    world
        .post_times
        .entry(channel.clone())
        .or_default()
        .push(now);
    let ts = next_ts(world);
    if let Some(PostFault::AnswerLate {
        delay,
        hidden_from_history,
    }) = world.post_faults.pop_front()
    {
        world.answer_delay = Some(delay);
        if hidden_from_history {
            world.hidden.push(ts.clone());
        }
    }
    let metadata = args.get("metadata").and_then(|m| match m {
        Value::String(text) => serde_json::from_str(text).ok(),
        Value::Object(_) => Some(m.clone()),
        _ => None,
    });
    let thread_ts = arg(args, "thread_ts").map(str::to_owned);
    if let Some(root) = &thread_ts
        && !world
            .messages
            .iter()
            .any(|m| &m.ts == root && m.channel == channel)
    {
        // Slack accepts an unknown thread_ts and posts to the channel; keep it, as Slack does.
        tracing::debug!(thread_ts = %root, "thread root unknown to the emulator");
    }
    world.next += 1;
    let seq = world.next;
    world.messages.push(SlackPosted {
        seq,
        via: method.to_owned(),
        channel: channel.clone(),
        ts: ts.clone(),
        thread_ts,
        ephemeral_to: None,
        response_url: None,
        text: text.clone(),
        blocks,
        metadata,
    });
    slack_ok(
        world,
        method,
        json!({"channel": channel, "ts": ts, "message": {"type": "message", "subtype": "bot_message",
            "text": text, "ts": ts, "bot_id": "B0BOT"}}),
    )
}

fn update_message(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let channel = match postable(world, arg(args, "channel")) {
        Ok(channel) => channel,
        Err(code) => return slack_error(world, method, code, &[]),
    };
    let Some(ts) = arg(args, "ts").map(str::to_owned) else {
        return slack_error(world, method, "message_not_found", &[]);
    };
    if !world
        .messages
        .iter()
        .any(|m| m.ts == ts && m.channel == channel && m.via == "chat.postMessage")
    {
        return slack_error(world, method, "message_not_found", &[]);
    }
    let text = arg(args, "text").unwrap_or_default().to_owned();
    if text.chars().count() > MAX_FALLBACK_TEXT {
        return slack_error(world, method, "msg_too_long", &[]);
    }
    let blocks = blocks_of(args);
    if let Err(messages) = check_blocks(&blocks) {
        return slack_error(world, method, "invalid_blocks", &messages);
    }
    world.next += 1;
    let seq = world.next;
    world.messages.push(SlackPosted {
        seq,
        via: method.to_owned(),
        channel: channel.clone(),
        ts: ts.clone(),
        thread_ts: None,
        ephemeral_to: None,
        response_url: None,
        text: text.clone(),
        blocks,
        metadata: None,
    });
    slack_ok(
        world,
        method,
        json!({"channel": channel, "ts": ts, "text": text}),
    )
}

fn post_ephemeral(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let channel = match postable(world, arg(args, "channel")) {
        Ok(channel) => channel,
        Err(code) => return slack_error(world, method, code, &[]),
    };
    let Some(user) = arg(args, "user").map(str::to_owned) else {
        return slack_error(world, method, "user_not_found", &[]);
    };
    if !world.users.iter().any(|u| u["id"].as_str() == Some(&user)) {
        return slack_error(world, method, "user_not_found", &[]);
    }
    let blocks = blocks_of(args);
    if let Err(messages) = check_blocks(&blocks) {
        return slack_error(world, method, "invalid_blocks", &messages);
    }
    let ts = next_ts(world);
    world.next += 1;
    let seq = world.next;
    world.messages.push(SlackPosted {
        seq,
        via: method.to_owned(),
        channel,
        ts: ts.clone(),
        thread_ts: arg(args, "thread_ts").map(str::to_owned),
        ephemeral_to: Some(user),
        response_url: None,
        text: arg(args, "text").unwrap_or_default().to_owned(),
        blocks,
        metadata: None,
    });
    slack_ok(world, method, json!({"message_ts": ts}))
}

fn view_problems(view: Option<&Value>) -> Vec<String> {
    match view {
        Some(view) if view.get("type").and_then(Value::as_str) == Some("modal") => {
            check_modal(view)
        }
        _ => vec!["invalid `view`: a modal is required".to_owned()],
    }
}

/// Checks a `trigger_id` and uses it up: its user, or Slack's error code and messages.
fn use_trigger(
    world: &mut World,
    trigger: Option<&str>,
) -> Result<String, (&'static str, Vec<String>)> {
    let invalid = || ("invalid_arguments", vec!["invalid `trigger_id`".to_owned()]);
    let trigger = trigger.ok_or_else(invalid)?;
    let found = world.triggers.get(trigger).cloned().ok_or_else(invalid)?;
    if found.used {
        return Err(("exchanged_trigger_id", Vec::new()));
    }
    if found.issued.elapsed() > TRIGGER_TTL {
        return Err(("expired_trigger_id", Vec::new()));
    }
    if let Some(entry) = world.triggers.get_mut(trigger) {
        entry.used = true;
    }
    Ok(found.user)
}

/// Stores `view` as the view `id` (new or replaced) with a fresh hash; returns it as Slack
/// answers it.
fn show_view(
    world: &mut World,
    id: String,
    view: &Value,
    user: String,
    previous: Option<String>,
) -> Value {
    world.next += 1;
    let hash = format!("{}.{}", chrono::Utc::now().timestamp(), world.next);
    let mut shown = view.clone();
    shown["id"] = json!(id);
    shown["hash"] = json!(hash);
    shown["team_id"] = json!(SANDBOX_TEAM_ID);
    shown["app_id"] = json!("A0SANDBOX");
    shown["bot_id"] = json!("B0BOT");
    shown["state"] = json!({"values": {}});
    shown["previous_view_id"] = json!(previous);
    let touched = world.next;
    world.view_history.push(shown.clone());
    world.views.insert(
        id,
        ShownView {
            view: shown.clone(),
            hash,
            user,
            open: true,
            previous,
            touched,
            errors: Map::new(),
        },
    );
    shown
}

fn new_view_id(world: &mut World) -> String {
    world.next += 1;
    format!("V{:08}", world.next)
}

fn open_view(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let user = match use_trigger(world, arg(args, "trigger_id")) {
        Ok(user) => user,
        Err((error, messages)) => return slack_error(world, method, error, &messages),
    };
    let problems = view_problems(args.get("view"));
    if !problems.is_empty() {
        return slack_error(world, method, "invalid_arguments", &problems);
    }
    let id = new_view_id(world);
    let view = show_view(world, id, &args["view"], user, None);
    slack_ok(world, method, json!({"view": view}))
}

fn push_view(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let user = match use_trigger(world, arg(args, "trigger_id")) {
        Ok(user) => user,
        Err((error, messages)) => return slack_error(world, method, error, &messages),
    };
    let Some(top) = current_view_of(world, &user) else {
        return slack_error(
            world,
            method,
            "push_limit_reached",
            &["no open view to push onto".to_owned()],
        );
    };
    let depth = std::iter::successors(Some(top.clone()), |id| {
        world.views.get(id).and_then(|v| v.previous.clone())
    })
    .count();
    if depth >= 3 {
        return slack_error(world, method, "push_limit_reached", &[]);
    }
    let problems = view_problems(args.get("view"));
    if !problems.is_empty() {
        return slack_error(world, method, "invalid_arguments", &problems);
    }
    let id = new_view_id(world);
    let view = show_view(world, id, &args["view"], user, Some(top));
    slack_ok(world, method, json!({"view": view}))
}

fn update_view(world: &mut World, method: &str, args: &Map<String, Value>) -> Response {
    let Some(id) = arg(args, "view_id").map(str::to_owned) else {
        return slack_error(world, method, "not_found", &[]);
    };
    let Some(current) = world.views.get(&id).filter(|v| v.open).cloned() else {
        return slack_error(world, method, "not_found", &[]);
    };
    if let Some(hash) = arg(args, "hash")
        && hash != current.hash
    {
        return slack_error(world, method, "hash_conflict", &[]);
    }
    let problems = view_problems(args.get("view"));
    if !problems.is_empty() {
        return slack_error(world, method, "invalid_arguments", &problems);
    }
    let view = show_view(world, id, &args["view"], current.user, current.previous);
    slack_ok(world, method, json!({"view": view}))
}

/// The open view `user` sees on top (the last one opened, pushed or updated).
fn current_view_of(world: &World, user: &str) -> Option<String> {
    world
        .views
        .iter()
        .filter(|(_, v)| v.open && v.user == user)
        .max_by_key(|(_, v)| v.touched)
        .map(|(id, _)| id.clone())
}

/// The `state.values` Slack sends for `view` with `entered` typed in (by `block_id`):
/// initial values for the rest; an option is chosen by its value or its text.
fn view_state(view: &Value, entered: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut values = Map::new();
    for block in view["blocks"].as_array().into_iter().flatten() {
        if block["type"] != "input" {
            continue;
        }
        let block_id = block["block_id"].as_str().unwrap_or_default().to_owned();
        let element = &block["element"];
        let action_id = element["action_id"].as_str().unwrap_or_default().to_owned();
        let kind = element["type"].as_str().unwrap_or_default();
        let typed = entered.get(&block_id).and_then(Value::as_str);
        let find_option = |wanted: &str| {
            element["options"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["value"] == wanted || o["text"]["text"] == wanted)
                .cloned()
        };
        let state = match kind {
            "plain_text_input" => {
                let value = typed
                    .map(str::to_owned)
                    .or_else(|| element["initial_value"].as_str().map(str::to_owned))
                    .filter(|v| !v.is_empty());
                json!({"type": kind, "value": value})
            }
            "radio_buttons" | "static_select" => {
                let chosen = match typed {
                    Some(wanted) => Some(find_option(wanted).ok_or_else(|| {
                        let known: Vec<&str> = element["options"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|o| o["value"].as_str())
                            .collect();
                        format!(
                            "{block_id}: no option {wanted:?} (choose one of {})",
                            known.join(", ")
                        )
                    })?),
                    None => element.get("initial_option").cloned(),
                };
                json!({"type": kind, "selected_option": chosen})
            }
            "checkboxes" => {
                let selected = match typed {
                    Some("true" | "yes" | "on") => element["options"].clone(),
                    Some(_) => json!([]),
                    None => element.get("initial_options").cloned().unwrap_or(json!([])),
                };
                json!({"type": kind, "selected_options": selected})
            }
            other => return Err(format!("{block_id}: the emulator cannot fill a {other}")),
        };
        let empty = state.get("value").is_some_and(Value::is_null)
            || state.get("selected_option").is_some_and(Value::is_null);
        if empty && block["optional"].as_bool() != Some(true) {
            return Err(format!("{block_id}: this field is required"));
        }
        values.insert(block_id, json!({ action_id: state }));
    }
    if let Some(unknown) = entered.keys().find(|k| !values.contains_key(k.as_str())) {
        return Err(format!("{unknown}: the window has no such field"));
    }
    Ok(values)
}

fn interaction_user(user: &str) -> Value {
    json!({"id": user, "username": user, "name": user, "team_id": SANDBOX_TEAM_ID})
}

/// A fresh trigger id for an interaction of `user`.
fn interaction_trigger(world: &mut World, user: &str) -> String {
    world.next += 1;
    let trigger = format!(
        "{}.{}",
        8_000_000 + world.next,
        crate::upstream::entra::random_token(8)
    );
    world.triggers.insert(
        trigger.clone(),
        Trigger {
            issued: Instant::now(),
            used: false,
            user: user.to_owned(),
        },
    );
    trigger
}

/// The first view of the stack `id` is in.
fn root_of(world: &World, id: &str) -> String {
    let mut root = id.to_owned();
    while let Some(previous) = world.views.get(&root).and_then(|v| v.previous.clone()) {
        root = previous;
    }
    root
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

async fn current_view(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<UserQuery>,
) -> Response {
    let handle = SlackHandle { shared };
    Json(json!({"view": handle.current_view(&query.user)})).into_response()
}

#[derive(Deserialize)]
struct Entered {
    #[serde(default)]
    values: Map<String, Value>,
    #[serde(default)]
    action_id: Option<String>,
}

async fn submission(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<Entered>,
) -> Response {
    let handle = SlackHandle { shared };
    match handle.submission(&id, &body.values) {
        Ok(payload) => Json(json!({"payload": payload})).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response(),
    }
}

async fn action(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<Entered>,
) -> Response {
    let handle = SlackHandle { shared };
    let action_id = body.action_id.unwrap_or_default();
    match handle.action(&id, &action_id, &body.values) {
        Ok(payload) => Json(json!({"payload": payload})).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response(),
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let handle = SlackHandle { shared };
    match handle.answer_submission(&id, &body) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(error) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": error})),
        )
            .into_response(),
    }
}

/// A response URL: 5 posts within 30 minutes; `404 expired_url` / `used_url` after.
async fn respond(
    State(shared): State<Arc<Shared>>,
    Path((_team, id, _secret)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let mut world = shared.world();
    let refuse = |world: &mut World, status: StatusCode, text: &'static str| {
        world.log.push(SlackLogged {
            method: "response_url".to_owned(),
            status: status.as_u16(),
            error: Some(text.to_owned()),
            team: None,
        });
        (status, text).into_response()
    };
    let Some(url) = world.response_urls.get_mut(&id) else {
        return refuse(&mut world, StatusCode::NOT_FOUND, "expired_url");
    };
    if url.created.elapsed() > RESPONSE_URL_TTL {
        return refuse(&mut world, StatusCode::NOT_FOUND, "expired_url");
    }
    if url.uses >= RESPONSE_URL_USES {
        return refuse(&mut world, StatusCode::NOT_FOUND, "used_url");
    }
    url.uses += 1;
    let (channel, user) = (url.channel.clone(), url.user.clone());
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&mut world, StatusCode::BAD_REQUEST, "invalid_payload");
    };
    let text = arg(&message, "text").unwrap_or_default().to_owned();
    let blocks = blocks_of(&message);
    if text.is_empty() && blocks.as_array().is_none_or(Vec::is_empty) {
        return refuse(&mut world, StatusCode::BAD_REQUEST, "no_text");
    }
    if check_blocks(&blocks).is_err() {
        return refuse(&mut world, StatusCode::BAD_REQUEST, "invalid_blocks");
    }
    let in_channel = arg(&message, "response_type") == Some("in_channel");
    let ts = next_ts(&mut world);
    world.next += 1;
    let seq = world.next;
    world.messages.push(SlackPosted {
        seq,
        via: "response_url".to_owned(),
        channel,
        ts,
        thread_ts: None,
        ephemeral_to: (!in_channel).then_some(user),
        response_url: Some(id),
        text,
        blocks,
        metadata: None,
    });
    world.log.push(SlackLogged {
        method: "response_url".to_owned(),
        status: 200,
        error: None,
        team: None,
    });
    (StatusCode::OK, "ok").into_response()
}

/// Points the `[slack]` section of sandbox settings at the emulator at `api_url`, with request
/// URLs (HTTP).
pub fn configure(settings: &mut crate::config::Settings, api_url: &str) -> anyhow::Result<()> {
    configure_with(settings, api_url, crate::slack::Transport::Http)
}

/// Points the `[slack]` section of sandbox settings at the emulator at `api_url`, over
/// `transport`, with the sandbox app's credentials for installs into more workspaces.
pub fn configure_with(
    settings: &mut crate::config::Settings,
    api_url: &str,
    transport: crate::slack::Transport,
) -> anyhow::Result<()> {
    use secrecy::SecretString;
    let api_url = url::Url::parse(api_url).context("Slack emulator URL")?;
    let slack = &mut settings.slack;
    slack.enabled = true;
    slack.transport = transport;
    slack.bot_token = Some(SecretString::from(SANDBOX_BOT_TOKEN));
    slack.signing_secret = Some(SecretString::from(SANDBOX_SIGNING_SECRET));
    slack.app_token = Some(SecretString::from(SANDBOX_APP_TOKEN));
    slack.team_id = Some(SANDBOX_TEAM_ID.to_owned());
    slack.client_id = Some(SANDBOX_CLIENT_ID.to_owned());
    slack.client_secret = Some(SecretString::from(SANDBOX_CLIENT_SECRET));
    slack.authorize_url = api_url
        .join("/oauth/v2/authorize")
        .context("Slack emulator URL")?;
    slack.api_url = api_url;
    settings.validate().context("sandbox Slack settings")?;
    Ok(())
}

/// What the `slack-say` driver saw: the bot's immediate answer and what it posted after.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// HTTP status of the bot's answer to the command.
    pub status: u16,
    /// The immediate answer, as readable text (empty when the bot answered nothing).
    pub ack: String,
    /// Messages the bot posted to the command's response URL, as readable text.
    pub posted: Vec<String>,
    /// The window (modal) the command opened, as readable text.
    pub window: Option<String>,
    /// How the command reached the bot.
    pub transport: crate::slack::Transport,
}

impl std::fmt::Display for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status != 200 {
            writeln!(f, "the bot answered HTTP {}: {}", self.status, self.ack)?;
            return Ok(());
        }
        if !self.ack.is_empty() {
            writeln!(f, "{}", self.ack)?;
        }
        for message in &self.posted {
            writeln!(f, "\n{message}")?;
        }
        if let Some(window) = &self.window {
            writeln!(f, "\n{window}")?;
        }
        Ok(())
    }
}

/// Types a slash command as Slack would send it. When the bot holds a Socket Mode connection
/// to the emulator at `emulator`, the emulator sends the envelope and waits for the ack;
/// otherwise the driver takes a response URL from the emulator, signs the form with the
/// sandbox signing secret and posts it to the bot at `bot`. Then it collects what the bot
/// posts to the response URL until `wait` passes with nothing new (or at once when the
/// immediate answer was all).
pub async fn say(
    bot: &str,
    emulator: &str,
    channel: &str,
    user: &str,
    line: &str,
    wait: Duration,
) -> anyhow::Result<Conversation> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let line = line.trim();
    if let Some(text) = line.strip_prefix("@m365bot") {
        return say_event(
            &http,
            bot,
            emulator,
            EventPlace::Mention(channel),
            user,
            text.trim(),
            wait,
        )
        .await;
    }
    if channel.starts_with('D') && !line.starts_with('/') {
        return say_event(
            &http,
            bot,
            emulator,
            EventPlace::Direct(channel),
            user,
            line,
            wait,
        )
        .await;
    }
    let (command, text) = match line.split_once(char::is_whitespace) {
        Some((command, text)) => (command, text.trim()),
        None => (line, ""),
    };
    anyhow::ensure!(
        command.starts_with('/'),
        "type a slash command (\"/m365 help\"), a mention (\"@m365bot help\") or, with --channel D0ADMIN, a direct message (\"help\")"
    );
    let socket: Value = http
        .get(format!("{emulator}/_sandbox/socket"))
        .send()
        .await
        .with_context(|| {
            format!(
                "the Slack emulator at {emulator} does not answer: is `m365bot sandbox` running?"
            )
        })?
        .json()
        .await?;
    if socket["connected"] == json!(true) {
        return say_over_socket(&http, emulator, channel, user, text, wait).await;
    }
    let ticket: CommandTicket = http
        .post(format!("{emulator}/_sandbox/command"))
        .json(&json!({"channel": channel, "user": user}))
        .send()
        .await
        .with_context(|| {
            format!(
                "the Slack emulator at {emulator} does not answer: is `m365bot sandbox` running?"
            )
        })?
        .error_for_status()?
        .json()
        .await?;
    let channel_name = if channel.starts_with('D') {
        "directmessage"
    } else {
        "general"
    };
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "sandbox-verification-token")
        .append_pair("team_id", SANDBOX_TEAM_ID)
        .append_pair("team_domain", "contoso-sandbox")
        .append_pair("channel_id", channel)
        .append_pair("channel_name", channel_name)
        .append_pair("user_id", user)
        .append_pair("user_name", user)
        .append_pair("command", command)
        .append_pair("text", text)
        .append_pair("api_app_id", "A0SANDBOX")
        .append_pair("response_url", &ticket.response_url)
        .append_pair("trigger_id", &ticket.trigger_id)
        .finish();
    let response = post_signed(
        &http,
        bot,
        crate::slack::COMMANDS_PATH,
        "application/x-www-form-urlencoded",
        form,
        None,
    )
    .await?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let ack = match serde_json::from_str::<Value>(&body) {
        Ok(answer) if status == 200 => crate::slack::blocks::to_text(
            answer.get("blocks").unwrap_or(&Value::Null),
            answer
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        ),
        _ => body.clone(),
    };
    let mut conversation = Conversation {
        status,
        ack,
        posted: Vec::new(),
        window: None,
        transport: crate::slack::Transport::Http,
    };
    if status == 200 && body.contains("setup window") {
        let view = settled_view(&http, emulator, user, None).await?;
        conversation.window = Some(match view {
            Some(view) => view_text(&view),
            None => "(no window opened: see the messages above)".to_owned(),
        });
        return Ok(conversation);
    }
    // Only a "working on it" acknowledgement is followed by posts.
    if status != 200 || !body.contains("Working on") {
        return Ok(conversation);
    }
    conversation.posted = collect_posts(&http, emulator, &ticket, wait).await?;
    Ok(conversation)
}

/// `say` over Socket Mode: the emulator sends the envelope and answers with the ack.
async fn say_over_socket(
    http: &reqwest::Client,
    emulator: &str,
    channel: &str,
    user: &str,
    text: &str,
    wait: Duration,
) -> anyhow::Result<Conversation> {
    let response = http
        .post(format!("{emulator}/_sandbox/socket-command"))
        .json(&json!({"channel": channel, "user": user, "text": text}))
        .send()
        .await
        .with_context(|| format!("the Slack emulator at {emulator} does not answer"))?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or_default();
    if status != 200 {
        return Ok(Conversation {
            status,
            ack: answer["error"].as_str().unwrap_or_default().to_owned(),
            posted: Vec::new(),
            window: None,
            transport: crate::slack::Transport::Socket,
        });
    }
    let payload = &answer["payload"];
    let ack = crate::slack::blocks::to_text(
        payload.get("blocks").unwrap_or(&Value::Null),
        payload
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    let ticket: CommandTicket =
        serde_json::from_value(answer["ticket"].clone()).context("the emulator's ticket")?;
    let working = payload.to_string().contains("Working on");
    let posted = if working {
        collect_posts(http, emulator, &ticket, wait).await?
    } else {
        Vec::new()
    };
    let window = if payload.to_string().contains("setup window") {
        Some(match settled_view(http, emulator, user, None).await? {
            Some(view) => view_text(&view),
            None => "(no window opened: see the messages above)".to_owned(),
        })
    } else {
        None
    };
    Ok(Conversation {
        status,
        ack,
        posted,
        window,
        transport: crate::slack::Transport::Socket,
    })
}

/// What the bot posts to the ticket's response URL, as text, until `wait` passes quietly.
async fn collect_posts(
    http: &reqwest::Client,
    emulator: &str,
    ticket: &CommandTicket,
    wait: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut posted = Vec::new();
    let mut seen = 0;
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let page: Value = http
            .get(format!("{emulator}/_sandbox/messages"))
            .query(&[
                ("after", seen.to_string()),
                ("response_url", ticket.response_id.clone()),
            ])
            .send()
            .await?
            .json()
            .await?;
        let messages: Vec<SlackPosted> =
            serde_json::from_value(page["messages"].clone()).unwrap_or_default();
        if messages.is_empty() {
            if !posted.is_empty() && quiet_since.elapsed() >= wait {
                break;
            }
            continue;
        }
        for message in messages {
            seen = seen.max(message.seq);
            posted.push(crate::slack::blocks::to_text(
                &message.blocks,
                &message.text,
            ));
        }
        quiet_since = Instant::now();
    }
    Ok(posted)
}

/// `GET /_sandbox/socket`: whether the bot holds a Socket Mode connection.
async fn socket_status(State(shared): State<Arc<Shared>>) -> Response {
    let world = shared.world();
    Json(json!({
        "connected": world.socket.link.is_some(),
        "connections": world.socket.connections,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SocketCommand {
    channel: String,
    user: String,
    text: String,
}

/// How long `/_sandbox/socket-command` waits for the bot's ack (Slack's limit).
const ACK_WAIT: Duration = Duration::from_secs(3);

/// `POST /_sandbox/socket-command`: sends `/m365 <text>` over the bot's Socket Mode
/// connection and waits for the ack; answers the ticket and the ack's payload, `409` when the
/// bot is not connected and `504` when no ack came within 3 seconds.
async fn socket_command(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<SocketCommand>,
) -> Response {
    let handle = SlackHandle {
        shared: shared.clone(),
    };
    if shared.world().socket.link.is_none() {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "the bot holds no Socket Mode connection: start the sandbox with --slack-transport socket"})),
        )
            .into_response();
    }
    let (envelope_id, ticket) = handle.socket_command(&body.user, &body.channel, &body.text);
    let started = Instant::now();
    loop {
        let ack = handle
            .socket_acks()
            .into_iter()
            .find(|a| a.envelope_id == envelope_id);
        if let Some(ack) = ack {
            return Json(json!({
                "envelope_id": envelope_id,
                "ticket": ticket,
                "payload": ack.payload,
            }))
            .into_response();
        }
        if started.elapsed() > ACK_WAIT {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                Json(json!({"error": format!("the bot did not acknowledge {envelope_id} within 3 seconds")})),
            )
                .into_response();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `POST /_sandbox/socket-interaction` with `{"payload": …}`: sends an interaction (a window's
/// `view_submission` or `block_actions`) over the bot's Socket Mode connection, or with
/// `"type": "events_api"` an Events API body, and waits for the ack; answers the ack's payload
/// (the bot's `response_action`, if any), `409` when the bot is not connected and `504` when
/// no ack came within 3 seconds.
async fn socket_interaction(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Value>,
) -> Response {
    let handle = SlackHandle {
        shared: shared.clone(),
    };
    if shared.world().socket.link.is_none() {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "the bot holds no Socket Mode connection"})),
        )
            .into_response();
    }
    let envelope_id = if body["type"] == "events_api" {
        handle.socket_send("events_api", false, body["payload"].clone())
    } else {
        handle.socket_interaction(body["payload"].clone())
    };
    let started = Instant::now();
    loop {
        if let Some(ack) = handle
            .socket_acks()
            .into_iter()
            .find(|a| a.envelope_id == envelope_id)
        {
            return Json(json!({"envelope_id": envelope_id, "payload": ack.payload}))
                .into_response();
        }
        if started.elapsed() > ACK_WAIT {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                Json(json!({"error": format!("the bot did not acknowledge {envelope_id} within 3 seconds")})),
            )
                .into_response();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where a message to the bot is written: `@m365bot` in a channel, or its direct message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPlace<'a> {
    /// An `app_mention` in this channel (the text gets the bot's mention in front).
    Mention(&'a str),
    /// A `message` in this direct message (`channel_type = "im"`).
    Direct(&'a str),
}

/// The Events API body Slack sends when `user` writes `text` at `place` (in the thread
/// `thread_ts`, if any): `(event_id, body)`. `event_id`s are fresh unless `event_id` is given
/// (a retry repeats its event's id).
pub fn event_callback(
    place: EventPlace<'_>,
    user: &str,
    text: &str,
    thread_ts: Option<&str>,
    event_id: Option<&str>,
) -> (String, Value) {
    let now = chrono::Utc::now();
    let ts = format!("{}.{:06}", now.timestamp(), now.timestamp_subsec_micros());
    let event_id = event_id.map_or_else(
        || {
            format!(
                "Ev{}",
                crate::upstream::entra::random_token(10).to_uppercase()
            )
        },
        str::to_owned,
    );
    let mut event = match place {
        EventPlace::Mention(channel) => json!({
            "type": "app_mention", "user": user, "text": format!("<@U0BOT> {text}"),
            "ts": ts, "channel": channel, "event_ts": ts, "team": SANDBOX_TEAM_ID,
        }),
        EventPlace::Direct(channel) => json!({
            "type": "message", "user": user, "text": text, "ts": ts, "channel": channel,
            "event_ts": ts, "channel_type": "im", "team": SANDBOX_TEAM_ID,
        }),
    };
    if let Some(thread) = thread_ts {
        event["thread_ts"] = json!(thread);
    }
    let body = json!({
        "token": "unused", "team_id": SANDBOX_TEAM_ID, "api_app_id": "A0SANDBOX",
        "event": event, "type": "event_callback", "event_id": event_id,
        "event_time": now.timestamp(),
        "authorizations": [{"enterprise_id": null, "team_id": SANDBOX_TEAM_ID,
            "user_id": "U0BOT", "is_bot": true, "is_enterprise_install": false}],
        "is_ext_shared_channel": false,
        "event_context": format!("4-{}", crate::upstream::entra::random_token(8)),
    });
    (event_id, body)
}

/// POSTs an Events API `body` to the bot at `bot`, signed with the sandbox signing secret;
/// `retry` sets `X-Slack-Retry-Num` (and `X-Slack-Retry-Reason: http_timeout`). Returns the
/// HTTP status.
pub async fn send_event(
    http: &reqwest::Client,
    bot: &str,
    body: &Value,
    retry: Option<u32>,
) -> anyhow::Result<u16> {
    let response = post_signed(
        http,
        bot,
        crate::slack::EVENTS_PATH,
        "application/json",
        body.to_string(),
        retry,
    )
    .await?;
    Ok(response.status().as_u16())
}

/// Messages of the emulator after `after` (all when `response_url` is `None`).
async fn posted_after(
    http: &reqwest::Client,
    emulator: &str,
    after: u64,
    response_url: Option<&str>,
) -> anyhow::Result<Vec<SlackPosted>> {
    let mut query = vec![("after", after.to_string())];
    if let Some(id) = response_url {
        query.push(("response_url", id.to_owned()));
    }
    let page: Value = http
        .get(format!("{emulator}/_sandbox/messages"))
        .query(&query)
        .send()
        .await
        .with_context(|| {
            format!(
                "the Slack emulator at {emulator} does not answer: is `m365bot sandbox` running?"
            )
        })?
        .json()
        .await?;
    Ok(serde_json::from_value(page["messages"].clone()).unwrap_or_default())
}

/// Writes `text` to the bot as an `@m365bot` mention or a direct message (a signed Events API
/// request), then prints what the bot posted until `wait` passes with nothing new.
async fn say_event(
    http: &reqwest::Client,
    bot: &str,
    emulator: &str,
    place: EventPlace<'_>,
    user: &str,
    text: &str,
    wait: Duration,
) -> anyhow::Result<Conversation> {
    let mut seen = posted_after(http, emulator, 0, None)
        .await?
        .iter()
        .map(|m| m.seq)
        .max()
        .unwrap_or(0);
    let (_, body) = event_callback(place, user, text, None, None);
    let socket: Value = http
        .get(format!("{emulator}/_sandbox/socket"))
        .send()
        .await?
        .json()
        .await
        .unwrap_or_default();
    let status = if socket["connected"] == true {
        // Socket Mode: the emulator sends the event over the bot's connection.
        http.post(format!("{emulator}/_sandbox/socket-interaction"))
            .json(&json!({"type": "events_api", "payload": body}))
            .send()
            .await?
            .status()
            .as_u16()
    } else {
        send_event(http, bot, &body, None).await?
    };
    let mut conversation = Conversation {
        status,
        ack: String::new(),
        posted: Vec::new(),
        transport: crate::slack::Transport::Http,
        window: None,
    };
    if status != 200 {
        conversation.ack = format!("the bot refused the event (HTTP {status})");
        return Ok(conversation);
    }
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let messages: Vec<SlackPosted> = posted_after(http, emulator, seen, None)
            .await?
            .into_iter()
            .filter(|m| m.response_url.is_none())
            .collect();
        if messages.is_empty() {
            if !conversation.posted.is_empty() && quiet_since.elapsed() >= wait {
                break;
            }
            continue;
        }
        for message in messages {
            seen = seen.max(message.seq);
            let whom = match &message.ephemeral_to {
                Some(to) => format!("(only {to} sees this, in {})", message.channel),
                None => format!(
                    "(in {}{})",
                    message.channel,
                    message
                        .thread_ts
                        .as_ref()
                        .map(|t| format!(", thread {t}"))
                        .unwrap_or_default()
                ),
            };
            conversation.posted.push(format!(
                "{whom}\n{}",
                crate::slack::blocks::to_text(&message.blocks, &message.text)
            ));
        }
        quiet_since = Instant::now();
    }
    Ok(conversation)
}

async fn socket_mode(
    State(shared): State<Arc<Shared>>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| serve_socket(shared, socket))
}

/// One Socket Mode connection: `hello`, then unacknowledged envelopes again (with their retry
/// attempt raised), queued ones, and whatever [`SlackHandle::socket_command`] sends; acks are
/// recorded as they come.
async fn serve_socket(shared: Arc<Shared>, mut socket: axum::extract::ws::WebSocket) {
    use axum::extract::ws::Message as Frame;
    use futures_util::StreamExt;
    let (link, mut orders) = tokio::sync::mpsc::unbounded_channel();
    let replay: Vec<Value> = {
        let mut world = shared.world();
        let state = &mut world.socket;
        state.connections += 1;
        state.link = Some(link.clone());
        let mut replay: Vec<Value> = state
            .unacked
            .iter_mut()
            .map(|envelope| {
                let attempt = envelope["retry_attempt"].as_u64().unwrap_or(0) + 1;
                envelope["retry_attempt"] = json!(attempt);
                envelope["retry_reason"] = json!("timeout");
                envelope.clone()
            })
            .collect();
        let queued: Vec<Value> = state.queued.drain(..).collect();
        state.unacked.extend(queued.iter().cloned());
        replay.extend(queued);
        replay
    };
    let hello = json!({"type": "hello", "num_connections": 1,
        "debug_info": {"host": "sandbox", "approximate_connection_time": 3600},
        "connection_info": {"app_id": "A0SANDBOX"}});
    if socket
        .send(Frame::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    for envelope in replay {
        if socket
            .send(Frame::Text(envelope.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        tokio::select! {
            order = orders.recv() => match order {
                Some(SocketOrder::Send(envelope)) => {
                    if socket.send(Frame::Text(envelope.to_string().into())).await.is_err() {
                        return;
                    }
                }
                Some(SocketOrder::Disconnect(reason)) => {
                    let message = json!({"type": "disconnect", "reason": reason,
                        "debug_info": {"host": "sandbox"}});
                    let _ = socket.send(Frame::Text(message.to_string().into())).await;
                    return;
                }
                Some(SocketOrder::Drop) | None => return,
            },
            frame = socket.next() => match frame {
                Some(Ok(Frame::Text(text))) => {
                    let Ok(ack) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    let Some(id) = ack["envelope_id"].as_str() else { continue };
                    let mut world = shared.world();
                    let state = &mut world.socket;
                    let attempt = state
                        .unacked
                        .iter()
                        .position(|e| e["envelope_id"].as_str() == Some(id))
                        .map(|at| state.unacked.remove(at)["retry_attempt"].as_u64().unwrap_or(0));
                    state.acks.push(SocketAck {
                        envelope_id: id.to_owned(),
                        retry_attempt: attempt.unwrap_or(u64::MAX),
                        payload: ack.get("payload").cloned(),
                    });
                }
                Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => {
                    let mut world = shared.world();
                    if world.socket.link.as_ref().is_some_and(|current| current.same_channel(&link)) {
                        world.socket.link = None;
                    }
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The open window of `user` once the bot is done with it: neither "Checking…" nor
/// "Working…", and not `before` (a hash); `None` when no window is open after 30 seconds.
async fn settled_view(
    http: &reqwest::Client,
    emulator: &str,
    user: &str,
    before: Option<&str>,
) -> anyhow::Result<Option<Value>> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(30) {
        let answer: Value = http
            .get(format!("{emulator}/_sandbox/views/current"))
            .query(&[("user", user)])
            .send()
            .await?
            .json()
            .await?;
        let view = answer["view"].clone();
        if !view.is_null() {
            let text = view.to_string();
            let busy = text.contains(":hourglass_flowing_sand:");
            let same = before.is_some() && view["hash"].as_str() == before;
            if !busy && !same {
                return Ok(Some(view));
            }
            last = Some(view);
        } else if before.is_some() && started.elapsed() > Duration::from_millis(500) {
            // The window was closed.
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(last)
}

/// A window (modal) as readable text: title, blocks, inputs with their `block_id` and value,
/// errors beside the fields, buttons with the `--click` id, and the submit button.
pub fn view_text(view: &Value) -> String {
    let mut lines = vec![format!(
        "┌─ {} ─ (window {})",
        view["title"]["text"].as_str().unwrap_or_default(),
        view["id"].as_str().unwrap_or("?")
    )];
    let errors = view["errors"].as_object().cloned().unwrap_or_default();
    for block in view["blocks"].as_array().into_iter().flatten() {
        match block["type"].as_str().unwrap_or_default() {
            "input" => {
                let id = block["block_id"].as_str().unwrap_or_default();
                let label = block["label"]["text"].as_str().unwrap_or_default();
                let element = &block["element"];
                let shown = match element["type"].as_str().unwrap_or_default() {
                    "radio_buttons" | "static_select" => {
                        let chosen = element["initial_option"]["value"].as_str();
                        let options: Vec<String> = element["options"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|o| {
                                let value = o["value"].as_str().unwrap_or_default();
                                let mark = if Some(value) == chosen {
                                    "(•)"
                                } else {
                                    "( )"
                                };
                                format!(
                                    "\n      {mark} {value}: {}",
                                    o["text"]["text"].as_str().unwrap_or_default()
                                )
                            })
                            .collect();
                        options.concat()
                    }
                    "checkboxes" => {
                        let on = element["initial_options"]
                            .as_array()
                            .is_some_and(|o| !o.is_empty());
                        format!(" [{}] (true/false)", if on { "x" } else { " " })
                    }
                    _ => match element["initial_value"].as_str() {
                        Some(value) => format!(" \"{value}\""),
                        None => " ____".to_owned(),
                    },
                };
                lines.push(format!("  {id}= {label}:{shown}"));
                if let Some(error) = errors.get(id).and_then(Value::as_str) {
                    lines.push(format!("  !! {error}"));
                }
            }
            "actions" => {
                for element in block["elements"].as_array().into_iter().flatten() {
                    let text = element["text"]["text"].as_str().unwrap_or_default();
                    match element["url"].as_str() {
                        Some(url) => lines.push(format!("  [{text}]({url})")),
                        None => lines.push(format!(
                            "  [{text}]  --click {}",
                            element["action_id"].as_str().unwrap_or_default()
                        )),
                    }
                }
            }
            _ => {
                let text = crate::slack::blocks::to_text(&json!([block]), "");
                lines.extend(text.lines().map(|l| format!("  {l}")));
            }
        }
    }
    match view["submit"]["text"].as_str() {
        Some(submit) => lines.push(format!(
            "└─ [{submit}]  --submit field=value …   [{}]",
            view["close"]["text"].as_str().unwrap_or("Close")
        )),
        None => lines.push(format!(
            "└─ [{}]",
            view["close"]["text"].as_str().unwrap_or("Close")
        )),
    }
    lines.join("\n")
}

/// What to do in the open window.
#[derive(Debug, Clone)]
pub enum WindowInput {
    /// Submit it with these fields typed in (`block_id` → text or option value).
    Submit(Map<String, Value>),
    /// Click the button with this `action_id` (with these fields typed in first).
    Click(String, Map<String, Value>),
}

/// Acts in `user`'s open window as Slack would: builds the signed `view_submission` or
/// `block_actions` from the emulator's view, posts it to the bot, applies the bot's answer
/// (refusing one later than 3 seconds, as Slack does) and returns the window as it then is,
/// as text.
pub async fn act_in_window(
    bot: &str,
    emulator: &str,
    user: &str,
    input: WindowInput,
) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let current: Value = http
        .get(format!("{emulator}/_sandbox/views/current"))
        .query(&[("user", user)])
        .send()
        .await
        .with_context(|| {
            format!(
                "the Slack emulator at {emulator} does not answer: is `m365bot sandbox` running?"
            )
        })?
        .json()
        .await?;
    let view = &current["view"];
    let Some(id) = view["id"].as_str() else {
        anyhow::bail!("{user} has no open window: type `m365bot slack-say \"/m365 setup\"` first");
    };
    let hash = view["hash"].as_str().map(str::to_owned);
    let (path, body, submit) = match &input {
        WindowInput::Submit(values) => ("submission", json!({"values": values}), true),
        WindowInput::Click(action_id, values) => (
            "action",
            json!({"values": values, "action_id": action_id}),
            false,
        ),
    };
    let built = http
        .post(format!("{emulator}/_sandbox/views/{id}/{path}"))
        .json(&body)
        .send()
        .await?;
    let ok = built.status().is_success();
    let built: Value = built.json().await?;
    if !ok {
        anyhow::bail!(
            "{}",
            built["error"].as_str().unwrap_or("the window refused that")
        );
    }
    let socket: Value = http
        .get(format!("{emulator}/_sandbox/socket"))
        .send()
        .await?
        .json()
        .await
        .unwrap_or_default();
    let started = Instant::now();
    let text = if socket["connected"] == true {
        // Socket Mode: the emulator sends the interaction over the bot's connection.
        let response = http
            .post(format!("{emulator}/_sandbox/socket-interaction"))
            .json(&json!({"payload": built["payload"]}))
            .send()
            .await?;
        let status = response.status();
        let acked: Value = response.json().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "{}",
            acked["error"]
                .as_str()
                .unwrap_or("the bot did not acknowledge")
        );
        match &acked["payload"] {
            Value::Null => String::new(),
            payload => payload.to_string(),
        }
    } else {
        post_interaction_form(&http, bot, &built["payload"]).await?
    };
    let elapsed = started.elapsed();
    anyhow::ensure!(
        elapsed <= TRIGGER_TTL,
        "the bot answered after {} ms; Slack gives up after 3 s and shows an error in the window",
        elapsed.as_millis()
    );
    if submit {
        let answer: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).context("the bot's answer is not JSON")?
        };
        let applied = http
            .post(format!("{emulator}/_sandbox/views/{id}/answer"))
            .json(&answer)
            .send()
            .await?;
        if !applied.status().is_success() {
            let refused: Value = applied.json().await.unwrap_or_default();
            anyhow::bail!(
                "Slack would refuse the bot's answer: {}",
                refused["error"].as_str().unwrap_or("unknown")
            );
        }
    }
    // A click is answered later by views.update; a slow step by "Working…" first.
    let before = (!submit).then_some(hash.as_deref()).flatten();
    Ok(match settled_view(&http, emulator, user, before).await? {
        Some(view) => view_text(&view),
        None => "(the window closed)".to_owned(),
    })
}

/// Posts an interaction payload to the bot's `/slack/interactions`, signed as Slack does; the
/// body of its answer.
async fn post_interaction_form(
    http: &reqwest::Client,
    bot: &str,
    payload: &Value,
) -> anyhow::Result<String> {
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let response = post_signed(
        http,
        bot,
        crate::slack::INTERACTIONS_PATH,
        "application/x-www-form-urlencoded",
        form,
        None,
    )
    .await?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "the bot answered HTTP {status}: {text}"
    );
    Ok(text)
}

/// POSTs `body` to the bot's `path`, signed with the sandbox signing secret as Slack signs;
/// `retry` sets `X-Slack-Retry-Num` (and `X-Slack-Retry-Reason: http_timeout`).
async fn post_signed(
    http: &reqwest::Client,
    bot: &str,
    path: &str,
    content_type: &str,
    body: String,
    retry: Option<u32>,
) -> anyhow::Result<reqwest::Response> {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = crate::slack::verify::sign(
        SANDBOX_SIGNING_SECRET.as_bytes(),
        &timestamp,
        body.as_bytes(),
    );
    let mut request = http
        .post(format!("{bot}{path}"))
        .header(header::CONTENT_TYPE, content_type)
        .header(crate::slack::verify::TIMESTAMP_HEADER, &timestamp)
        .header(crate::slack::verify::SIGNATURE_HEADER, signature);
    if let Some(retry) = retry {
        request = request
            .header("x-slack-retry-num", retry.to_string())
            .header("x-slack-retry-reason", "http_timeout");
    }
    request
        .body(body)
        .send()
        .await
        .with_context(|| format!("the bot at {bot} does not answer: is `m365bot sandbox` running?"))
}
