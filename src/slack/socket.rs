//! Socket Mode: the bot opens the WebSocket itself (`apps.connections.open` with the app-level
//! token), so Slack needs no way in. Slack sends the same payloads as over HTTP, wrapped in
//! envelopes (`{"type", "envelope_id", "payload", "accepts_response_payload", "retry_attempt"}`);
//! each is acknowledged with `{"envelope_id", "payload"?}` as soon as its immediate answer is
//! known (well within Slack's 3 seconds), and the work continues after the ack, as over HTTP.
//!
//! `hello` starts a session; `disconnect` (Slack refreshes connections regularly) or a dropped
//! socket ends it, and the loop reconnects with exponential backoff (0.5 s doubling to 30 s,
//! with jitter; reset by the next `hello`). Slack redelivers envelopes that were not
//! acknowledged; the bot remembers the envelope ids it handled, acknowledges a redelivered one
//! again and does not handle it twice.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::sync::CancellationToken;

use super::payload::{EventEnvelope, Interaction, SlashCommand};
use crate::app::App;

/// First wait before reconnecting.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait before reconnecting.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Envelope ids remembered to recognise redeliveries.
const REMEMBERED_ENVELOPES: usize = 4096;

/// One Socket Mode message.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    accepts_response_payload: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// Envelope ids already handled, oldest forgotten first.
#[derive(Default)]
struct Handled {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Handled {
    /// True the first time `id` is seen.
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == REMEMBERED_ENVELOPES
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// Why a session ended.
enum SessionEnd {
    /// Shutting down.
    Stopped,
    /// Slack asked to reconnect, or the connection broke.
    Reconnect(String),
}

/// Runs Socket Mode until `shutdown`: connect, serve, reconnect.
pub async fn run(app: Arc<App>, app_token: SecretString, shutdown: CancellationToken) {
    let mut handled = Handled::default();
    let mut backoff = BACKOFF_START;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match session(&app, &app_token, &shutdown, &mut handled, &mut backoff).await {
            SessionEnd::Stopped => return,
            SessionEnd::Reconnect(reason) => {
                let jitter = rand::rng().random_range(0.8..1.2);
                let wait = backoff.mul_f64(jitter);
                tracing::info!(reason = %reason, wait_ms = wait.as_millis() as u64, "Slack Socket Mode reconnecting");
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn session(
    app: &Arc<App>,
    app_token: &SecretString,
    shutdown: &CancellationToken,
    handled: &mut Handled,
    backoff: &mut Duration,
) -> SessionEnd {
    let Some(slack) = app.slack.as_ref() else {
        return SessionEnd::Stopped;
    };
    let url = match slack.api.open_connection(app_token).await {
        Ok(url) => url,
        Err(err) => {
            tracing::warn!(error = %err, "Slack Socket Mode: apps.connections.open failed");
            return SessionEnd::Reconnect(err.to_string());
        }
    };
    let (mut socket, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(connected) => connected,
        Err(err) => {
            tracing::warn!(error = %err, "Slack Socket Mode: cannot connect");
            return SessionEnd::Reconnect(err.to_string());
        }
    };
    // Acks of envelopes answered by a task (a setup window's submission may take seconds).
    let (late_acks, mut late) = tokio::sync::mpsc::unbounded_channel::<Value>();
    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = socket.close(None).await;
                return SessionEnd::Stopped;
            }
            Some(ack) = late.recv() => {
                if let Err(err) = socket.send(Frame::text(ack.to_string())).await {
                    return SessionEnd::Reconnect(err.to_string());
                }
                continue;
            }
            frame = socket.next() => frame,
        };
        let text = match frame {
            Some(Ok(Frame::Text(text))) => text,
            Some(Ok(Frame::Ping(data))) => {
                let _ = socket.send(Frame::Pong(data)).await;
                continue;
            }
            Some(Ok(Frame::Close(_))) | None => {
                return SessionEnd::Reconnect("the connection was closed".to_owned());
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => return SessionEnd::Reconnect(err.to_string()),
        };
        let envelope: Envelope = match serde_json::from_str(text.as_str()) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(error = %err, "Slack Socket Mode: unreadable message ignored");
                continue;
            }
        };
        match envelope.kind.as_str() {
            "hello" => {
                *backoff = BACKOFF_START;
                tracing::info!("Slack Socket Mode connected");
                continue;
            }
            "disconnect" => {
                let _ = socket.close(None).await;
                return SessionEnd::Reconnect(
                    envelope.reason.unwrap_or_else(|| "disconnect".to_owned()),
                );
            }
            _ => {}
        }
        let Some(id) = envelope.envelope_id.clone() else {
            continue;
        };
        let first_time = handled.first_time(&id);
        if first_time && let Some(submission) = view_submission(&envelope) {
            let (app, late_acks) = (app.clone(), late_acks.clone());
            let wants_payload = envelope.accepts_response_payload;
            tokio::spawn(async move {
                let answer = super::wizard::submitted(app, submission).await;
                let mut ack = json!({"envelope_id": id});
                if wants_payload && !answer.is_null() {
                    ack["payload"] = answer;
                }
                let _ = late_acks.send(ack);
            });
            continue;
        }
        let answer = if first_time {
            answer(app, &envelope)
        } else {
            tracing::debug!(envelope = %id, "Slack redelivered an envelope already handled");
            None
        };
        let mut ack = json!({"envelope_id": id});
        if let Some(payload) = answer.filter(|_| envelope.accepts_response_payload) {
            ack["payload"] = payload;
        }
        if let Err(err) = socket.send(Frame::text(ack.to_string())).await {
            return SessionEnd::Reconnect(err.to_string());
        }
    }
}

/// The setup window submission an `interactive` envelope carries, if any.
fn view_submission(envelope: &Envelope) -> Option<super::payload::ViewPayload> {
    if envelope.kind != "interactive" {
        return None;
    }
    match serde_json::from_value::<Interaction>(envelope.payload.clone()) {
        Ok(Interaction::ViewSubmission(payload)) => Some(payload),
        _ => None,
    }
}

/// The immediate answer to an envelope, from the same handlers as the HTTP request URLs.
fn answer(app: &Arc<App>, envelope: &Envelope) -> Option<Value> {
    let slack = app.slack.as_ref()?;
    match envelope.kind.as_str() {
        "slash_commands" => {
            match serde_json::from_value::<SlashCommand>(envelope.payload.clone()) {
                Ok(command) => Some(super::answer_command(app.clone(), command)),
                Err(err) => {
                    tracing::warn!(error = %err, "Slack Socket Mode: malformed slash command");
                    None
                }
            }
        }
        "interactive" => match serde_json::from_value::<Interaction>(envelope.payload.clone()) {
            Ok(interaction) => super::answer_interaction(app, slack, interaction),
            Err(err) => {
                tracing::warn!(error = %err, "Slack Socket Mode: malformed interaction");
                None
            }
        },
        "events_api" => {
            match serde_json::from_value::<EventEnvelope>(envelope.payload.clone()) {
                Ok(EventEnvelope::EventCallback { team_id, event, .. }) => {
                    let app = app.clone();
                    tokio::spawn(async move {
                        super::install::on_event(&app, team_id.as_deref(), &event).await;
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "Slack Socket Mode: malformed event");
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_are_recognised_and_memory_is_bounded() {
        let mut handled = Handled::default();
        assert!(handled.first_time("a"));
        assert!(!handled.first_time("a"));
        for i in 0..REMEMBERED_ENVELOPES {
            assert!(handled.first_time(&i.to_string()));
        }
        assert_eq!(handled.ids.len(), REMEMBERED_ENVELOPES);
        assert!(handled.first_time("a"), "the oldest was forgotten");
    }
}
