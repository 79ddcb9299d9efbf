//! The subset of the Bot Framework Activity schema the bot reads, lenient about extra fields.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A channel account (user or bot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelAccount {
    /// Channel-specific id (`29:…` users, `28:…` bots in Teams).
    #[serde(default)]
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Entra object id of a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad_object_id: Option<String>,
}

/// The conversation an activity belongs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationAccount {
    /// Conversation id; channel threads carry `;messageid=…`.
    #[serde(default)]
    pub id: String,
    /// `personal`, `channel` or `groupChat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_type: Option<String>,
    /// Tenant of the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// True for channels and group chats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_group: Option<bool>,
    /// Display name, when Teams sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One inbound activity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// `message`, `invoke`, `conversationUpdate`, `installationUpdate`, …
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Activity id.
    #[serde(default)]
    pub id: Option<String>,
    /// Channel id, `msteams` for Teams.
    #[serde(default)]
    pub channel_id: String,
    /// Where replies go.
    #[serde(default)]
    pub service_url: String,
    /// Sender.
    #[serde(default)]
    pub from: ChannelAccount,
    /// The bot.
    #[serde(default)]
    pub recipient: ChannelAccount,
    /// Conversation.
    #[serde(default)]
    pub conversation: ConversationAccount,
    /// Message text.
    #[serde(default)]
    pub text: Option<String>,
    /// Card submit values or invoke payload.
    #[serde(default)]
    pub value: Option<Value>,
    /// Invoke name, e.g. `adaptiveCard/action`.
    #[serde(default)]
    pub name: Option<String>,
    /// The message this one answers (the card message for submits and invokes).
    #[serde(default)]
    pub reply_to_id: Option<String>,
    /// `add`, `remove`, … on `installationUpdate`.
    #[serde(default)]
    pub action: Option<String>,
    /// Mentions, client info.
    #[serde(default)]
    pub entities: Vec<Value>,
    /// Teams channel data (tenant, team, channel, eventType).
    #[serde(default)]
    pub channel_data: Option<Value>,
    /// Members added (`conversationUpdate`).
    #[serde(default)]
    pub members_added: Vec<ChannelAccount>,
    /// Members removed (`conversationUpdate`).
    #[serde(default)]
    pub members_removed: Vec<ChannelAccount>,
    /// Locale of the sender's client.
    #[serde(default)]
    pub locale: Option<String>,
}

impl Activity {
    /// The tenant: `channelData.tenant.id`, else `conversation.tenantId`.
    pub fn tenant_id(&self) -> Option<&str> {
        self.channel_data
            .as_ref()
            .and_then(|data| data.pointer("/tenant/id"))
            .and_then(Value::as_str)
            .or(self.conversation.tenant_id.as_deref())
            .filter(|tenant| !tenant.is_empty())
    }

    /// The team id of a channel conversation.
    pub fn team_id(&self) -> Option<&str> {
        self.channel_data_str("/team/id")
    }

    /// The channel id of a channel conversation.
    pub fn teams_channel_id(&self) -> Option<&str> {
        self.channel_data_str("/channel/id")
            .or_else(|| self.channel_data_str("/settings/selectedChannel/id"))
    }

    /// `channelData.eventType` (`teamMemberAdded`, `channelCreated`, …).
    pub fn event_type(&self) -> Option<&str> {
        self.channel_data_str("/eventType")
    }

    fn channel_data_str(&self, pointer: &str) -> Option<&str> {
        self.channel_data.as_ref()?.pointer(pointer)?.as_str()
    }

    /// The conversation id without a `;messageid=` thread suffix.
    pub fn base_conversation_id(&self) -> &str {
        base_conversation_id(&self.conversation.id)
    }

    /// `personal`, `channel` or `groupChat` (personal when Teams does not say).
    pub fn conversation_type(&self) -> &str {
        self.conversation
            .conversation_type
            .as_deref()
            .unwrap_or("personal")
    }

    /// The message text with the bot's own @mentions removed, `&nbsp;` decoded and trimmed.
    pub fn text_without_bot_mention(&self) -> String {
        let mut text = self.text.clone().unwrap_or_default();
        for entity in &self.entities {
            let is_bot_mention = entity.get("type").and_then(Value::as_str) == Some("mention")
                && entity.pointer("/mentioned/id").and_then(Value::as_str)
                    == Some(self.recipient.id.as_str());
            if let (true, Some(mention)) =
                (is_bot_mention, entity.get("text").and_then(Value::as_str))
            {
                text = text.replace(mention, " ");
            }
        }
        text.replace("&nbsp;", " ")
            .replace('\u{a0}', " ")
            .trim()
            .to_owned()
    }

    /// The users mentioned in the message, the bot excluded.
    pub fn user_mentions(&self) -> Vec<crate::core::Mention> {
        self.entities
            .iter()
            .filter(|entity| entity.get("type").and_then(Value::as_str) == Some("mention"))
            .filter_map(|entity| {
                let user_id = entity.pointer("/mentioned/id")?.as_str()?;
                if user_id == self.recipient.id || user_id.is_empty() {
                    return None;
                }
                Some(crate::core::Mention {
                    user_id: user_id.to_owned(),
                    name: entity
                        .pointer("/mentioned/name")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    text: entity
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                })
            })
            .collect()
    }

    /// True when the bot itself is among `members_added`.
    pub fn bot_was_added(&self) -> bool {
        self.members_added
            .iter()
            .any(|member| member.id == self.recipient.id)
    }

    /// True when the bot itself is among `members_removed`.
    pub fn bot_was_removed(&self) -> bool {
        self.members_removed
            .iter()
            .any(|member| member.id == self.recipient.id)
    }
}

/// Strips `;messageid=…` from a Teams conversation id.
pub fn base_conversation_id(id: &str) -> &str {
    id.split(";messageid=").next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mention_is_stripped_and_nbsp_decoded() {
        let activity: Activity = serde_json::from_value(serde_json::json!({
            "type": "message",
            "text": "<at>m365bot</at>&nbsp;setup status ",
            "recipient": {"id": "28:bot"},
            "entities": [
                {"type": "mention", "text": "<at>m365bot</at>", "mentioned": {"id": "28:bot"}},
                {"type": "mention", "text": "<at>Alex</at>", "mentioned": {"id": "29:alex"}}
            ]
        }))
        .expect("parses");
        assert_eq!(activity.text_without_bot_mention(), "setup status");
        let mentions = activity.user_mentions();
        assert_eq!(mentions.len(), 1);
        assert_eq!(mentions[0].user_id, "29:alex");
        assert_eq!(mentions[0].text, "<at>Alex</at>");
    }

    #[test]
    fn other_mentions_stay() {
        let activity: Activity = serde_json::from_value(serde_json::json!({
            "type": "message",
            "text": "<at>m365bot</at> grant <at>Alex</at> insights_user",
            "recipient": {"id": "28:bot"},
            "entities": [
                {"type": "mention", "text": "<at>m365bot</at>", "mentioned": {"id": "28:bot"}},
                {"type": "mention", "text": "<at>Alex</at>", "mentioned": {"id": "29:alex"}}
            ]
        }))
        .expect("parses");
        assert_eq!(
            activity.text_without_bot_mention(),
            "grant <at>Alex</at> insights_user"
        );
    }

    #[test]
    fn thread_suffix_is_removed() {
        assert_eq!(
            base_conversation_id("19:abc@thread.tacv2;messageid=123"),
            "19:abc@thread.tacv2"
        );
        assert_eq!(base_conversation_id("a:personal"), "a:personal");
    }
}
