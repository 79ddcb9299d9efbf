//! The Slack Web API client, on the shared reqwest client (no SDK crate).
//!
//! Every method is `POST {api_url}{method}` with the token in `Authorization: Bearer`; JSON
//! bodies where Slack accepts them, forms for `users.info` and `conversations.info`. Slack
//! answers HTTP 200 with `{"ok": false, "error": "<code>"}` for failures, mapped to
//! [`SlackApiError::Slack`]; HTTP 429 carries `Retry-After`, waited out once when short, else
//! returned as [`SlackApiError::RateLimited`]. Tokens go in headers only, never in URLs,
//! errors or logs.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use super::blocks::Message;
use crate::error::{RetryKind, parse_retry_after};

/// The host of Slack's `response_url`s.
pub const RESPONSE_URL_HOST: &str = "hooks.slack.com";
/// A 429 asking for at most this long is waited out and retried once.
pub const MAX_INLINE_RETRY_WAIT: Duration = Duration::from_secs(3);

/// A failed Web API call.
#[derive(Debug, thiserror::Error)]
pub enum SlackApiError {
    /// Slack answered `ok: false`.
    #[error("Slack {method}: {error}{}", details(.messages))]
    Slack {
        /// The method.
        method: &'static str,
        /// Slack's error code (`channel_not_found`, `invalid_auth`, …).
        error: String,
        /// `response_metadata.messages` (the only diagnostic of `invalid_blocks`).
        messages: Vec<String>,
        /// Scopes a `missing_scope` error needs.
        needed: Option<String>,
    },
    /// HTTP 429.
    #[error("Slack {method}: rate limited, retry after {retry_after:?}")]
    RateLimited {
        /// The method.
        method: &'static str,
        /// How long Slack asked to wait.
        retry_after: Duration,
    },
    /// Another HTTP status.
    #[error("Slack {method}: HTTP {status}")]
    Status {
        /// The method.
        method: &'static str,
        /// The status.
        status: u16,
    },
    /// No answer (connection, timeout).
    #[error("Slack {method}: {message}")]
    Network {
        /// The method.
        method: &'static str,
        /// What failed.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("Slack {method}: unexpected answer: {message}")]
    Decode {
        /// The method.
        method: &'static str,
        /// What did not fit.
        message: String,
    },
    /// A `response_url` that is not Slack's.
    #[error("refusing to post to a response_url outside {RESPONSE_URL_HOST}")]
    ForeignResponseUrl,
}

fn details(messages: &[String]) -> String {
    if messages.is_empty() {
        String::new()
    } else {
        format!(" ({})", messages.join("; "))
    }
}

impl SlackApiError {
    /// Slack's error code, for `ok: false` answers.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Slack { error, .. } => Some(error),
            _ => None,
        }
    }

    /// How a retrying caller should treat it.
    pub fn retry_kind(&self) -> RetryKind {
        match self {
            Self::RateLimited { retry_after, .. } => RetryKind::Transient {
                retry_after: Some(*retry_after),
            },
            Self::Network { .. } => RetryKind::Network,
            Self::Status { status, .. } => RetryKind::from_status(*status, None),
            Self::Slack { error, .. }
                if matches!(
                    error.as_str(),
                    "ratelimited"
                        | "rate_limited"
                        | "fatal_error"
                        | "internal_error"
                        | "service_unavailable"
                        | "request_timeout"
                ) =>
            {
                RetryKind::Transient { retry_after: None }
            }
            _ => RetryKind::Permanent,
        }
    }

    /// True when the destination is gone for good (the bot left, the channel was archived,
    /// the token was revoked): stop sending there and tell someone.
    pub fn is_destination_gone(&self) -> bool {
        self.code().is_some_and(|code| {
            matches!(
                code,
                "not_in_channel"
                    | "channel_not_found"
                    | "is_archived"
                    | "account_inactive"
                    | "token_revoked"
                    | "invalid_auth"
            )
        })
    }
}

/// `auth.test`: who the token is.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AuthIdentity {
    /// Workspace URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Workspace name.
    #[serde(default)]
    pub team: Option<String>,
    /// Workspace id.
    pub team_id: String,
    /// The bot user's id.
    pub user_id: String,
    /// The bot id.
    #[serde(default)]
    pub bot_id: Option<String>,
}

/// A posted message's address.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Posted {
    /// The channel.
    pub channel: String,
    /// The message `ts` (its id in the channel).
    pub ts: String,
}

/// `users.info`: the fields the bot reads.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SlackUser {
    /// `U…` or `W…`.
    pub id: String,
    /// Workspace.
    #[serde(default)]
    pub team_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub name: Option<String>,
    /// Full name.
    #[serde(default)]
    pub real_name: Option<String>,
    /// Deactivated.
    #[serde(default)]
    pub deleted: bool,
    /// A bot user.
    #[serde(default)]
    pub is_bot: bool,
    /// Profile (the e-mail needs `users:read.email`).
    #[serde(default)]
    pub profile: SlackProfile,
}

/// A user's profile.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct SlackProfile {
    /// E-mail address (absent without `users:read.email`).
    #[serde(default)]
    pub email: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Real name.
    #[serde(default)]
    pub real_name: Option<String>,
}

/// `conversations.info`: the fields the bot reads.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Conversation {
    /// The id.
    pub id: String,
    /// The name (channels).
    #[serde(default)]
    pub name: Option<String>,
    /// Private channel.
    #[serde(default)]
    pub is_private: bool,
    /// Direct message.
    #[serde(default)]
    pub is_im: bool,
    /// Archived.
    #[serde(default)]
    pub is_archived: bool,
    /// Whether the bot is a member (not always reported).
    #[serde(default)]
    pub is_member: Option<bool>,
}

/// One message of `conversations.history`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HistoryMessage {
    /// Its `ts`.
    pub ts: String,
    /// The thread it belongs to, if any.
    #[serde(default)]
    pub thread_ts: Option<String>,
    /// Its metadata (`event_type`, `event_payload`), when it has some.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// An id and a name (`team`, `enterprise` of `oauth.v2.access`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct IdName {
    /// The id.
    pub id: String,
    /// The name.
    #[serde(default)]
    pub name: Option<String>,
}

/// The installing user of `oauth.v2.access` (their user token, if any, is not read).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AuthedUser {
    /// Their user id.
    pub id: String,
}

/// `oauth.v2.access`: the bot token of the workspace the app was installed into.
#[derive(Deserialize)]
pub struct OAuthAccess {
    /// The bot token (`xoxb-…`).
    #[serde(deserialize_with = "secret_string")]
    pub access_token: SecretString,
    /// `bot`.
    #[serde(default)]
    pub token_type: Option<String>,
    /// Granted scopes, comma-separated.
    #[serde(default)]
    pub scope: String,
    /// The bot user's id.
    pub bot_user_id: String,
    /// The app's id.
    #[serde(default)]
    pub app_id: Option<String>,
    /// The workspace.
    pub team: IdName,
    /// The Enterprise Grid organisation, if any.
    #[serde(default)]
    pub enterprise: Option<IdName>,
    /// Who installed it.
    #[serde(default)]
    pub authed_user: Option<AuthedUser>,
}

impl std::fmt::Debug for OAuthAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthAccess")
            .field("team", &self.team)
            .field("bot_user_id", &self.bot_user_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn secret_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SecretString, D::Error> {
    String::deserialize(deserializer).map(SecretString::from)
}

/// The Web API client of one workspace.
#[derive(Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
}

impl std::fmt::Debug for SlackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    needed: Option<String>,
    #[serde(default)]
    response_metadata: Option<ResponseMetadata>,
}

#[derive(Deserialize, Default)]
struct ResponseMetadata {
    #[serde(default)]
    messages: Vec<String>,
}

/// How a method takes its arguments.
enum Body<'a> {
    Json(&'a Value),
    Form(&'a [(&'a str, &'a str)]),
}

impl SlackClient {
    /// A client for `base` (`https://slack.com/api/`) with the bot token.
    pub fn new(http: reqwest::Client, base: Url, token: SecretString) -> Self {
        Self { http, base, token }
    }

    /// The API base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The same client with another workspace's bot token.
    pub fn with_token(&self, token: SecretString) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            token,
        }
    }

    /// `oauth.v2.access`: exchanges an install's `code` for the workspace's bot token, the
    /// app's credentials in HTTP Basic (Slack's preference), the code and redirect URI in the
    /// form.
    ///
    /// Not on the `oauth2` crate (unlike the Entra and ServiceNow token requests): Slack
    /// answers refusals with HTTP 200 and `{"ok": false, "error": "invalid_code"}` instead of
    /// an RFC 6749 error body, which `oauth2` reads as an undecodable token answer and loses the
    /// code; and the bot token's fields (`team`, `bot_user_id`, `token_type: "bot"`) are
    /// Slack's own. The same decoding as every other Web API method keeps Slack's error codes.
    pub async fn oauth_v2_access(
        &self,
        client_id: &str,
        client_secret: &SecretString,
        code: &str,
        redirect_uri: &str,
    ) -> Result<OAuthAccess, SlackApiError> {
        const METHOD: &str = "oauth.v2.access";
        let url = self.base.join(METHOD).map_err(|e| SlackApiError::Decode {
            method: METHOD,
            message: e.to_string(),
        })?;
        let request = self
            .http
            .post(url)
            .basic_auth(client_id, Some(client_secret.expose_secret()))
            .form(&[("code", code), ("redirect_uri", redirect_uri)]);
        let response = send_checked(METHOD, request).await?;
        read_answer(METHOD, response).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        token: &SecretString,
        body: Body<'_>,
    ) -> Result<T, SlackApiError> {
        self.call_with(method, token, body, true).await
    }

    /// A call; with `wait_short_limits`, a short `Retry-After` is waited out once.
    async fn call_with<T: DeserializeOwned>(
        &self,
        method: &'static str,
        token: &SecretString,
        body: Body<'_>,
        wait_short_limits: bool,
    ) -> Result<T, SlackApiError> {
        let url = self.base.join(method).map_err(|e| SlackApiError::Decode {
            method,
            message: e.to_string(),
        })?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self
                .http
                .post(url.clone())
                .bearer_auth(token.expose_secret());
            let request = match &body {
                Body::Json(value) => request.json(value),
                Body::Form(pairs) => request.form(pairs),
            };
            match send_checked(method, request).await {
                Err(SlackApiError::RateLimited { retry_after, .. })
                    if wait_short_limits
                        && attempt == 1
                        && retry_after <= MAX_INLINE_RETRY_WAIT =>
                {
                    tracing::debug!(
                        slack.method = method,
                        wait_ms = retry_after.as_millis() as u64,
                        "Slack rate limit: waiting"
                    );
                    tokio::time::sleep(retry_after).await;
                }
                Err(err) => return Err(err),
                Ok(response) => return read_answer(method, response).await,
            }
        }
    }

    /// `auth.test`: checks the token and says whose it is.
    pub async fn auth_test(&self) -> Result<AuthIdentity, SlackApiError> {
        self.call("auth.test", &self.token, Body::Json(&json!({})))
            .await
    }

    /// `chat.postMessage` into `channel` (a thread reply with `thread_ts`).
    pub async fn post_message(
        &self,
        channel: &str,
        message: &Message,
        thread_ts: Option<&str>,
    ) -> Result<Posted, SlackApiError> {
        let mut body = message.to_json();
        body["channel"] = json!(channel);
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        self.call("chat.postMessage", &self.token, Body::Json(&body))
            .await
    }

    /// `chat.postMessage` for the notification outbox: never waits out a 429 (the caller
    /// pauses its rate limits instead), carries `metadata` (`event_type`, `event_payload`) so
    /// the message can be found again when the outcome of the call is unknown.
    pub async fn post_notification(
        &self,
        channel: &str,
        message: &Message,
        thread_ts: Option<&str>,
        metadata: &Value,
    ) -> Result<Posted, SlackApiError> {
        let mut body = message.to_json();
        body["channel"] = json!(channel);
        body["metadata"] = metadata.clone();
        body["unfurl_links"] = json!(false);
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        self.call_with("chat.postMessage", &self.token, Body::Json(&body), false)
            .await
    }

    /// `chat.update` for the notification outbox (a 429 is returned, not waited out).
    pub async fn update_notification(
        &self,
        channel: &str,
        ts: &str,
        message: &Message,
    ) -> Result<Posted, SlackApiError> {
        let mut body = message.to_json();
        body["channel"] = json!(channel);
        body["ts"] = json!(ts);
        self.call_with("chat.update", &self.token, Body::Json(&body), false)
            .await
    }

    /// `conversations.history` of `channel` from `oldest` (a Slack `ts`), newest first, with
    /// the messages' metadata.
    pub async fn conversation_history(
        &self,
        channel: &str,
        oldest: &str,
        limit: u32,
    ) -> Result<Vec<HistoryMessage>, SlackApiError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            messages: Vec<HistoryMessage>,
        }
        let limit = limit.to_string();
        let answer: Answer = self
            .call(
                "conversations.history",
                &self.token,
                Body::Form(&[
                    ("channel", channel),
                    ("oldest", oldest),
                    ("limit", &limit),
                    ("include_all_metadata", "true"),
                ]),
            )
            .await?;
        Ok(answer.messages)
    }

    /// `auth.test` with the scopes the token has (Slack lists them in the `x-oauth-scopes`
    /// response header; `None` when the header is missing).
    pub async fn auth_test_scopes(
        &self,
    ) -> Result<(AuthIdentity, Option<Vec<String>>), SlackApiError> {
        const METHOD: &str = "auth.test";
        let url = self.base.join(METHOD).map_err(|e| SlackApiError::Decode {
            method: METHOD,
            message: e.to_string(),
        })?;
        let request = self
            .http
            .post(url)
            .bearer_auth(self.token.expose_secret())
            .json(&json!({}));
        let response = send_checked(METHOD, request).await?;
        let scopes = response
            .headers()
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
        Ok((read_answer(METHOD, response).await?, scopes))
    }

    /// `chat.update` of the message `ts` in `channel`.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        message: &Message,
    ) -> Result<Posted, SlackApiError> {
        let mut body = message.to_json();
        body["channel"] = json!(channel);
        body["ts"] = json!(ts);
        self.call("chat.update", &self.token, Body::Json(&body))
            .await
    }

    /// `chat.postEphemeral`: a message only `user` sees in `channel`.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        message: &Message,
    ) -> Result<(), SlackApiError> {
        self.post_ephemeral_in_thread(channel, user, message, None)
            .await
    }

    /// `chat.postEphemeral` into the thread `thread_ts` (the channel itself with `None`).
    pub async fn post_ephemeral_in_thread(
        &self,
        channel: &str,
        user: &str,
        message: &Message,
        thread_ts: Option<&str>,
    ) -> Result<(), SlackApiError> {
        let mut body = message.to_json();
        body["channel"] = json!(channel);
        body["user"] = json!(user);
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        let _: Value = self
            .call("chat.postEphemeral", &self.token, Body::Json(&body))
            .await?;
        Ok(())
    }

    /// `views.open` with a `trigger_id` (valid for 3 seconds, once): the view's id and hash.
    pub async fn views_open(
        &self,
        trigger_id: &str,
        view: &Value,
    ) -> Result<ShownView, SlackApiError> {
        let answer: Value = self
            .call(
                "views.open",
                &self.token,
                Body::Json(&json!({"trigger_id": trigger_id, "view": view})),
            )
            .await?;
        shown_view("views.open", &answer)
    }

    /// `views.push` of a view on top of the open one (a `trigger_id` of an action in it).
    pub async fn views_push(
        &self,
        trigger_id: &str,
        view: &Value,
    ) -> Result<ShownView, SlackApiError> {
        let answer: Value = self
            .call(
                "views.push",
                &self.token,
                Body::Json(&json!({"trigger_id": trigger_id, "view": view})),
            )
            .await?;
        shown_view("views.push", &answer)
    }

    /// `views.update` of `view_id`; with `hash`, refused (`hash_conflict`) if the view changed
    /// meanwhile. Returns the view's id and new hash.
    pub async fn views_update(
        &self,
        view_id_to_update: &str,
        view: &Value,
        hash: Option<&str>,
    ) -> Result<ShownView, SlackApiError> {
        let mut body = json!({"view_id": view_id_to_update, "view": view});
        if let Some(hash) = hash {
            body["hash"] = json!(hash);
        }
        let answer: Value = self
            .call("views.update", &self.token, Body::Json(&body))
            .await?;
        shown_view("views.update", &answer)
    }

    /// `users.info`: the user's names and profile e-mail.
    pub async fn user_info(&self, user: &str) -> Result<SlackUser, SlackApiError> {
        #[derive(Deserialize)]
        struct Answer {
            user: SlackUser,
        }
        let answer: Answer = self
            .call("users.info", &self.token, Body::Form(&[("user", user)]))
            .await?;
        Ok(answer.user)
    }

    /// `conversations.info`: the channel's kind and state.
    pub async fn conversation_info(&self, channel: &str) -> Result<Conversation, SlackApiError> {
        #[derive(Deserialize)]
        struct Answer {
            channel: Conversation,
        }
        let answer: Answer = self
            .call(
                "conversations.info",
                &self.token,
                Body::Form(&[("channel", channel)]),
            )
            .await?;
        Ok(answer.channel)
    }

    /// `conversations.open` with one user: the id of the bot's direct message with them
    /// (opened if needed; needs `im:write`).
    pub async fn open_direct_message(&self, user: &str) -> Result<String, SlackApiError> {
        #[derive(Deserialize)]
        struct Answer {
            channel: Conversation,
        }
        let answer: Answer = self
            .call(
                "conversations.open",
                &self.token,
                Body::Json(&json!({"users": user, "return_im": true})),
            )
            .await?;
        Ok(answer.channel.id)
    }

    /// `apps.connections.open` with the app-level token: the Socket Mode WebSocket URL.
    pub async fn open_connection(&self, app_token: &SecretString) -> Result<String, SlackApiError> {
        #[derive(Deserialize)]
        struct Answer {
            url: String,
        }
        let answer: Answer = self
            .call("apps.connections.open", app_token, Body::Json(&json!({})))
            .await?;
        Ok(answer.url)
    }

    /// True for a `response_url` the bot may post to: `https://hooks.slack.com/…`, or the
    /// configured API host itself (the sandbox).
    pub fn is_response_url(&self, url: &str) -> bool {
        let Ok(url) = Url::parse(url) else {
            return false;
        };
        let slack = url.scheme() == "https" && url.host_str() == Some(RESPONSE_URL_HOST);
        let same_origin = url.origin() == self.base.origin();
        slack || same_origin
    }

    /// Posts `message` to a `response_url` (ephemeral unless `in_channel`), replacing the
    /// message the URL belongs to when `replace_original`.
    pub async fn respond(
        &self,
        response_url: &str,
        message: &Message,
        in_channel: bool,
        replace_original: bool,
    ) -> Result<(), SlackApiError> {
        const METHOD: &str = "response_url";
        if !self.is_response_url(response_url) {
            return Err(SlackApiError::ForeignResponseUrl);
        }
        let mut body = message.to_json();
        body["response_type"] = json!(if in_channel {
            "in_channel"
        } else {
            "ephemeral"
        });
        body["replace_original"] = json!(replace_original);
        let request = self.http.post(response_url).json(&body);
        send_checked(METHOD, request).await?;
        Ok(())
    }
}

/// Sends `request` for `method`: a 429 becomes [`SlackApiError::RateLimited`] with its
/// `Retry-After` (1 s when missing), another status outside 2xx [`SlackApiError::Status`].
async fn send_checked(
    method: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, SlackApiError> {
    let response = request.send().await.map_err(|e| SlackApiError::Network {
        method,
        message: e.without_url().to_string(),
    })?;
    let status = response.status().as_u16();
    if status == 429 {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .unwrap_or(Duration::from_secs(1));
        return Err(SlackApiError::RateLimited {
            method,
            retry_after,
        });
    }
    if !(200..300).contains(&status) {
        return Err(SlackApiError::Status { method, status });
    }
    Ok(response)
}

/// Reads and decodes the body of a Web API answer (see [`decode_answer`]).
async fn read_answer<T: DeserializeOwned>(
    method: &'static str,
    response: reqwest::Response,
) -> Result<T, SlackApiError> {
    let bytes = response.bytes().await.map_err(|e| SlackApiError::Network {
        method,
        message: e.without_url().to_string(),
    })?;
    decode_answer(method, &bytes)
}

/// Decodes a Web API answer: `ok: false` becomes [`SlackApiError::Slack`] with the error code
/// and `response_metadata.messages`, anything else the expected type.
pub fn decode_answer<T: DeserializeOwned>(
    method: &'static str,
    bytes: &[u8],
) -> Result<T, SlackApiError> {
    let decode = |e: serde_json::Error| SlackApiError::Decode {
        method,
        message: e.to_string(),
    };
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(decode)?;
    if !envelope.ok {
        return Err(SlackApiError::Slack {
            method,
            error: envelope.error.unwrap_or_else(|| "unknown_error".to_owned()),
            messages: envelope.response_metadata.unwrap_or_default().messages,
            needed: envelope.needed,
        });
    }
    serde_json::from_slice(bytes).map_err(decode)
}

/// A view Slack shows: its id and its hash (the race guard of the next `views.update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownView {
    /// The view id.
    pub id: String,
    /// Its current hash.
    pub hash: Option<String>,
}

fn shown_view(method: &'static str, answer: &Value) -> Result<ShownView, SlackApiError> {
    Ok(ShownView {
        id: answer
            .pointer("/view/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| SlackApiError::Decode {
                method,
                message: "no view.id in the answer".to_owned(),
            })?,
        hash: answer
            .pointer("/view/hash")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}
