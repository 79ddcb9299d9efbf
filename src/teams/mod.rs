//! Microsoft Teams: the `/api/messages` endpoint, inbound auth, the connector client and the
//! translation between activities and the core's events and replies.

pub mod activity;
pub mod auth;
pub mod connector;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::app::App;
use crate::core::identity::{PlatformDirectory, PlatformIdentity};
use crate::core::{Actor, ConversationAddress, EventKind, InboundEvent, Platform, Reply};
use crate::db::conversations::ConversationRef;
use crate::error::ApiError;
use activity::{Activity, ChannelAccount, ConversationAccount};
use connector::ConnectorClient;
use futures_util::future::BoxFuture;

/// The `channelId` of Microsoft Teams activities.
pub const TEAMS_CHANNEL_ID: &str = "msteams";

/// In insecure-local mode (no token check) a request must be JSON (a browser form cannot send
/// it without a preflight) and name a loopback `Host` (a rebound DNS name cannot reach it).
fn check_local_request(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::BadRequest(
            "insecure-local mode accepts Content-Type: application/json only".to_owned(),
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(ApiError::Forbidden(
            "insecure-local mode accepts requests addressed to a loopback host only".to_owned(),
        ));
    }
    Ok(())
}

/// Content type of an Adaptive Card attachment or invoke response.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";

/// `POST /api/messages`: authenticate (before reading the body), parse, check the tenant,
/// dispatch.
pub async fn messages(State(app): State<Arc<App>>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let verified = match &app.authenticator {
        Some(authenticator) => {
            let authorization = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            Some(
                authenticator
                    .verify(authorization)
                    .await
                    .map_err(|e| ApiError::Unauthorized(e.to_string()))?,
            )
        }
        None => {
            check_local_request(&parts.headers)?;
            None
        }
    };
    let body = axum::body::to_bytes(body, app.settings.server.max_body_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let activity: Activity = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a valid activity: {e}")))?;
    if let Some(verified) = verified {
        verified
            .check_activity(&activity.service_url, &activity.channel_id)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    }
    // Other channels of the same Azure Bot (Web Chat, Direct Line) authenticate the same way
    // but let their clients set channelData; this endpoint serves Teams only.
    if activity.channel_id != TEAMS_CHANNEL_ID {
        return Err(ApiError::Forbidden(format!(
            "this endpoint accepts Microsoft Teams activities only (channelId {TEAMS_CHANNEL_ID})"
        )));
    }
    if activity.tenant_id() != Some(app.settings.bot.tenant_id.as_str()) {
        return Err(ApiError::Forbidden(
            "this bot serves one tenant only; the activity comes from another".to_owned(),
        ));
    }
    if activity.service_url.is_empty() {
        return Err(ApiError::BadRequest(
            "the activity has no serviceUrl".to_owned(),
        ));
    }
    dispatch(&app, activity).await
}

async fn dispatch(app: &App, activity: Activity) -> Result<Response, ApiError> {
    match activity.kind.as_str() {
        "message" => {
            remember_conversation(app, &activity).await?;
            let Some(event) = message_event(&activity) else {
                return Ok(StatusCode::OK.into_response());
            };
            let replies = crate::chat::handle(app, event).await;
            send_replies(app, &activity, replies).await;
            Ok(StatusCode::OK.into_response())
        }
        "invoke" => invoke(app, &activity).await,
        "conversationUpdate" => {
            if activity.bot_was_removed() {
                forget_conversation(app, &activity).await?;
            } else {
                remember_conversation(app, &activity).await?;
                if activity.bot_was_added() && activity.conversation_type() == "personal" {
                    send_replies(app, &activity, vec![crate::chat::help_card()]).await;
                }
            }
            Ok(StatusCode::OK.into_response())
        }
        "installationUpdate" => {
            match activity.action.as_deref() {
                Some("remove" | "remove-upgrade") => forget_conversation(app, &activity).await?,
                _ => remember_conversation(app, &activity).await?,
            }
            Ok(StatusCode::OK.into_response())
        }
        _ => Ok(StatusCode::OK.into_response()),
    }
}

/// Builds the core event of a `message` activity: a card submit (`value`) or typed text.
fn message_event(activity: &Activity) -> Option<InboundEvent> {
    let kind = match &activity.value {
        Some(value) if value.is_object() => EventKind::CardAction {
            verb: value
                .get("verb")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            data: value.clone(),
        },
        _ => {
            let text = activity.text_without_bot_mention();
            EventKind::Message(text)
        }
    };
    Some(inbound_event(activity, kind))
}

/// The core event of `activity`: actor, address, mentions and `kind`.
pub fn inbound_event(activity: &Activity, kind: EventKind) -> InboundEvent {
    InboundEvent {
        actor: Actor {
            user_id: activity.from.id.clone(),
            aad_object_id: activity.from.aad_object_id.clone(),
            name: activity.from.name.clone(),
        },
        platform: Platform::Teams,
        conversation_id: activity.base_conversation_id().to_owned(),
        conversation_type: activity.conversation_type().to_owned(),
        address: ConversationAddress {
            service_url: activity.service_url.clone(),
            tenant_id: activity.tenant_id().unwrap_or_default().to_owned(),
            bot_id: activity.recipient.id.clone(),
            bot_name: activity.recipient.name.clone(),
            thread_conversation_id: activity.conversation.id.clone(),
            activity_id: activity
                .reply_to_id
                .clone()
                .filter(|_| activity.kind == "invoke")
                .or_else(|| activity.id.clone()),
            team_id: activity.team_id().map(str::to_owned),
            channel_id: activity.teams_channel_id().map(str::to_owned),
        },
        mentions: activity.user_mentions(),
        kind,
    }
}

/// `invoke`: `adaptiveCard/action` is answered in the HTTP response, replacing the card.
async fn invoke(app: &App, activity: &Activity) -> Result<Response, ApiError> {
    match activity.name.as_deref() {
        Some("adaptiveCard/action") => {}
        // The bot does no single sign-on: 412 tells Teams to fall back to the sign-in card.
        Some("signin/tokenExchange") => {
            let value = activity.value.as_ref();
            let field = |name: &str| value.and_then(|v| v.get(name)).cloned();
            return Ok((
                StatusCode::PRECONDITION_FAILED,
                Json(json!({
                    "id": field("id"),
                    "connectionName": field("connectionName"),
                    "failureDetail": "this bot does not use single sign-on; sign in with link-account",
                })),
            )
                .into_response());
        }
        // Nothing to verify: sign-in goes through the bot's own pages, not an OAuth card.
        Some("signin/verifyState") => return Ok(StatusCode::OK.into_response()),
        _ => {
            return Ok((
                StatusCode::BAD_REQUEST,
                Json(invoke_error(
                    400,
                    "NotSupported",
                    "this invoke is not supported by m365bot",
                )),
            )
                .into_response());
        }
    }
    let action = activity.value.as_ref().and_then(|v| v.get("action"));
    let Some(verb) = action.and_then(|a| a.get("verb")).and_then(Value::as_str) else {
        return Ok(Json(invoke_error(
            400,
            "BadRequest",
            "the card action has no verb",
        ))
        .into_response());
    };
    let data = action
        .and_then(|a| a.get("data"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let event = inbound_event(
        activity,
        EventKind::CardAction {
            verb: verb.to_owned(),
            data,
        },
    );
    let replies = crate::chat::handle(app, event).await;
    let mut rendered = replies.iter().filter_map(|reply| render(app, reply));
    let body = match rendered.next() {
        Some(card) => json!({"statusCode": 200, "type": ADAPTIVE_CARD, "value": card}),
        None => {
            json!({"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": "Done."})
        }
    };
    let rest: Vec<Value> = rendered.collect();
    for card in rest {
        post_card(app, activity, &card).await;
    }
    Ok(Json(body).into_response())
}

fn invoke_error(status: u16, code: &str, message: &str) -> Value {
    json!({"statusCode": status, "type": "application/vnd.microsoft.error",
        "value": {"code": code, "message": message}})
}

/// Renders a reply as an Adaptive Card; a template failure is logged and yields nothing.
pub fn render(app: &App, reply: &Reply) -> Option<Value> {
    let Reply::Card { template, data } = reply;
    match app.cards.render(&format!("teams/{template}"), data) {
        Ok(card) => Some(card),
        Err(err) => {
            tracing::error!(card.template = template, error = %err, "card rendering failed");
            None
        }
    }
}

/// Renders a reply as compact Adaptive Card JSON, embedded as is in the outgoing activity; a
/// template failure is logged and yields nothing.
pub fn render_raw(app: &App, reply: Reply) -> Option<Box<RawValue>> {
    let Reply::Card { template, data } = reply;
    match app.cards.render_raw(&format!("teams/{template}"), data) {
        Ok(card) => Some(card),
        Err(err) => {
            tracing::error!(card.template = template, error = %err, "card rendering failed");
            None
        }
    }
}

/// A message activity carrying one Adaptive Card, addressed as a reply to `activity`; it
/// borrows from the inbound activity and serializes without building a JSON tree.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardMessage<'a, C: ?Sized> {
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a ChannelAccount,
    recipient: &'a ChannelAccount,
    conversation: &'a ConversationAccount,
    reply_to_id: Option<&'a str>,
    attachments: [CardAttachment<'a, C>; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CardAttachment<'a, C: ?Sized> {
    content_type: &'static str,
    content: &'a C,
}

impl<'a, C: Serialize + ?Sized> CardMessage<'a, C> {
    /// The reply to `activity` (from its recipient, to its sender, in its conversation).
    pub fn new(activity: &'a Activity, card: &'a C) -> Self {
        Self {
            kind: "message",
            from: &activity.recipient,
            recipient: &activity.from,
            conversation: &activity.conversation,
            reply_to_id: activity.id.as_deref(),
            attachments: [CardAttachment {
                content_type: ADAPTIVE_CARD,
                content: card,
            }],
        }
    }
}

/// A message activity carrying one Adaptive Card, addressed as a reply to `activity`, as a
/// JSON value (see [`CardMessage`] for the form sent on the reply path).
pub fn card_message(activity: &Activity, card: Value) -> Value {
    serde_json::to_value(CardMessage::new(activity, &card)).unwrap_or_default()
}

async fn send_replies(app: &App, activity: &Activity, replies: Vec<Reply>) {
    for reply in replies {
        if let Some(card) = render_raw(app, reply) {
            post_card(app, activity, &*card).await;
        }
    }
}

async fn post_card<C: Serialize + ?Sized>(app: &App, activity: &Activity, card: &C) {
    let message = CardMessage::new(activity, card);
    let result = match activity.id.as_deref() {
        Some(activity_id) => {
            app.connector
                .reply(
                    &activity.service_url,
                    &activity.conversation.id,
                    activity_id,
                    &message,
                )
                .await
        }
        None => {
            app.connector
                .send(&activity.service_url, &activity.conversation.id, &message)
                .await
        }
    };
    if let Err(err) = result {
        tracing::warn!(conversation.kind = activity.conversation_type(), error = %err, retry = ?err.retry_kind(), "reply not delivered");
    }
}

async fn remember_conversation(app: &App, activity: &Activity) -> Result<(), ApiError> {
    let reference = ConversationRef {
        conversation_id: activity.base_conversation_id().to_owned(),
        platform: "msteams".to_owned(),
        service_url: activity.service_url.clone(),
        tenant_id: activity.tenant_id().unwrap_or_default().to_owned(),
        conversation_type: activity.conversation_type().to_owned(),
        team_id: activity.team_id().map(str::to_owned),
        channel_id: activity.teams_channel_id().map(str::to_owned),
        bot_id: activity.recipient.id.clone(),
        user_id: Some(activity.from.id.clone()).filter(|id| !id.is_empty()),
        user_aad_object_id: activity.from.aad_object_id.clone(),
    };
    if app.stored_conversations.is_current(&reference) {
        return Ok(());
    }
    app.db
        .upsert_conversation(&reference)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    app.stored_conversations.remember(&reference);
    Ok(())
}

async fn forget_conversation(app: &App, activity: &Activity) -> Result<(), ApiError> {
    app.stored_conversations.forget_all();
    let result = match activity.team_id() {
        Some(team) if activity.conversation_type() == "channel" => {
            app.db.delete_team_conversations(team).await.map(drop)
        }
        _ => app
            .db
            .delete_conversation(activity.base_conversation_id())
            .await
            .map(drop),
    };
    result.map_err(|e| ApiError::Internal(e.into()))
}

impl PlatformDirectory for ConnectorClient {
    /// The conversation member (`GET /v3/conversations/{id}/members/{user}`): name, Entra
    /// object id, e-mail and UPN.
    fn lookup<'a>(
        &'a self,
        event: &'a InboundEvent,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<PlatformIdentity, Reply>> {
        Box::pin(async move {
            let member = self
                .get_member(&event.address.service_url, &event.conversation_id, user_id)
                .await
                .map_err(|err| {
                    tracing::warn!(error = %err, "cannot read the chat member's e-mail");
                    Reply::notice(
                        crate::core::Tone::Attention,
                        "I could not find out who you are",
                        &format!("Teams did not tell me the e-mail address of this user ({err})."),
                        Some("Try again in a minute; if it keeps failing, ask your Teams admin whether the bot is installed for this user."),
                    )
                })?;
            Ok(PlatformIdentity {
                user_id: user_id.to_owned(),
                name: member.name,
                aad_object_id: member.aad_object_id,
                email: member.email,
                user_principal_name: member.user_principal_name,
            })
        })
    }
}
