//! Proactive delivery of a reply to a stored conversation, per chat platform: Teams here, other
//! platforms through their [`super::platform::LinkPlatform`] (Slack: the user's direct message
//! with the bot, since the sign-in may have been asked for in a channel).

use serde_json::json;

use super::store::ChatAddress;
use crate::app::App;
use crate::core::Reply;

/// Posts `reply` into the conversation of `address` (a new message, or in a channel thread
/// when the conversation id carries one).
pub async fn deliver(app: &App, address: &ChatAddress, reply: &Reply) -> Result<(), String> {
    match address.platform.as_str() {
        "teams" => {
            let card = crate::teams::render(app, reply)
                .ok_or_else(|| "the card could not be rendered".to_owned())?;
            let activity = json!({
                "type": "message",
                "from": {"id": address.bot_id},
                "recipient": {"id": address.chat_user_id, "name": address.chat_user_name},
                "conversation": {
                    "id": address.conversation_id,
                    "conversationType": address.conversation_type,
                    "tenantId": address.tenant_id,
                },
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": card,
                }],
            });
            app.connector
                .send(&address.service_url, &address.conversation_id, &activity)
                .await
                .map(drop)
                .map_err(|err| err.to_string())
        }
        other => match app.link_platform(other) {
            Some(platform) => platform.deliver(address, reply).await,
            None => Err(format!("replies to {other} are not available")),
        },
    }
}
