//! Conversation references: where the bot can send proactive messages.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use sqlx::Row;

use super::{Db, now_millis};

/// What the bot needs to message a conversation later.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConversationRef {
    /// Conversation id without any `;messageid=` suffix.
    pub conversation_id: String,
    /// `msteams` or `slack`.
    pub platform: String,
    /// Base URL of the channel's connector (ends in `/`).
    pub service_url: String,
    /// Entra tenant id.
    pub tenant_id: String,
    /// `personal`, `channel` or `groupChat`.
    pub conversation_type: String,
    /// Team id, for channel conversations.
    pub team_id: Option<String>,
    /// Channel id, for channel conversations.
    pub channel_id: Option<String>,
    /// The bot's id in that conversation (`28:<app id>`).
    pub bot_id: String,
    /// The user who installed or last spoke, when known.
    pub user_id: Option<String>,
    /// That user's Entra object id, when known.
    pub user_aad_object_id: Option<String>,
}

/// Remembers which references this process stored recently, so a conversation that keeps
/// talking does not rewrite an unchanged row on every message.
#[derive(Debug, Default)]
pub struct RecentlyStored {
    fingerprints: Mutex<HashMap<String, u64>>,
}

/// Entries kept before the memory is cleared.
const RECENTLY_STORED_CAPACITY: usize = 10_000;

impl RecentlyStored {
    /// True when exactly this reference was stored by this process and not forgotten since.
    pub fn is_current(&self, reference: &ConversationRef) -> bool {
        let fingerprint = fingerprint(reference);
        self.fingerprints
            .lock()
            .is_ok_and(|map| map.get(&reference.conversation_id) == Some(&fingerprint))
    }

    /// Records that `reference` is now stored.
    pub fn remember(&self, reference: &ConversationRef) {
        if let Ok(mut map) = self.fingerprints.lock() {
            if map.len() >= RECENTLY_STORED_CAPACITY {
                map.clear();
            }
            map.insert(reference.conversation_id.clone(), fingerprint(reference));
        }
    }

    /// Forgets every entry (after deletions).
    pub fn forget_all(&self) {
        if let Ok(mut map) = self.fingerprints.lock() {
            map.clear();
        }
    }
}

fn fingerprint(reference: &ConversationRef) -> u64 {
    let mut hasher = DefaultHasher::new();
    reference.hash(&mut hasher);
    hasher.finish()
}

impl Db {
    /// Inserts or refreshes a conversation reference (latest serviceUrl wins).
    pub async fn upsert_conversation(&self, reference: &ConversationRef) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO conversation_refs (conversation_id, platform, service_url, tenant_id, \
             conversation_type, team_id, channel_id, bot_id, user_id, user_aad_object_id, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (conversation_id) DO UPDATE SET service_url = excluded.service_url, \
             tenant_id = excluded.tenant_id, conversation_type = excluded.conversation_type, \
             team_id = COALESCE(excluded.team_id, conversation_refs.team_id), \
             channel_id = COALESCE(excluded.channel_id, conversation_refs.channel_id), \
             bot_id = excluded.bot_id, \
             user_id = COALESCE(excluded.user_id, conversation_refs.user_id), \
             user_aad_object_id = COALESCE(excluded.user_aad_object_id, conversation_refs.user_aad_object_id), \
             updated_at = excluded.updated_at",
        )
        .bind(&reference.conversation_id)
        .bind(&reference.platform)
        .bind(&reference.service_url)
        .bind(&reference.tenant_id)
        .bind(&reference.conversation_type)
        .bind(&reference.team_id)
        .bind(&reference.channel_id)
        .bind(&reference.bot_id)
        .bind(&reference.user_id)
        .bind(&reference.user_aad_object_id)
        .bind(now_millis())
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// The stored reference of one conversation.
    pub async fn conversation(
        &self,
        conversation_id: &str,
    ) -> sqlx::Result<Option<ConversationRef>> {
        let row = sqlx::query(
            "SELECT conversation_id, platform, service_url, tenant_id, conversation_type, team_id, \
             channel_id, bot_id, user_id, user_aad_object_id FROM conversation_refs WHERE conversation_id = $1",
        )
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ConversationRef {
                conversation_id: row.try_get(0)?,
                platform: row.try_get(1)?,
                service_url: row.try_get(2)?,
                tenant_id: row.try_get(3)?,
                conversation_type: row.try_get(4)?,
                team_id: row.try_get(5)?,
                channel_id: row.try_get(6)?,
                bot_id: row.try_get(7)?,
                user_id: row.try_get(8)?,
                user_aad_object_id: row.try_get(9)?,
            })
        })
        .transpose()
    }

    /// Removes one conversation; returns whether it existed.
    pub async fn delete_conversation(&self, conversation_id: &str) -> sqlx::Result<bool> {
        let done = sqlx::query("DELETE FROM conversation_refs WHERE conversation_id = $1")
            .bind(conversation_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes every conversation of a team (the bot was uninstalled from it).
    pub async fn delete_team_conversations(&self, team_id: &str) -> sqlx::Result<u64> {
        let done = sqlx::query("DELETE FROM conversation_refs WHERE team_id = $1")
            .bind(team_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Number of stored conversations.
    pub async fn conversation_count(&self) -> sqlx::Result<i64> {
        sqlx::query("SELECT COUNT(*) FROM conversation_refs")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(service_url: &str) -> ConversationRef {
        ConversationRef {
            conversation_id: "a:1".to_owned(),
            platform: "msteams".to_owned(),
            service_url: service_url.to_owned(),
            tenant_id: "t".to_owned(),
            conversation_type: "personal".to_owned(),
            team_id: None,
            channel_id: None,
            bot_id: "28:bot".to_owned(),
            user_id: Some("29:user".to_owned()),
            user_aad_object_id: None,
        }
    }

    #[test]
    fn only_an_identical_reference_counts_as_stored() {
        let recent = RecentlyStored::default();
        let first = reference("https://smba.trafficmanager.net/amer/");
        assert!(!recent.is_current(&first));
        recent.remember(&first);
        assert!(recent.is_current(&first));
        assert!(
            !recent.is_current(&reference("https://smba.trafficmanager.net/emea/")),
            "moved"
        );
        recent.forget_all();
        assert!(!recent.is_current(&first), "forgotten after a deletion");
    }
}
