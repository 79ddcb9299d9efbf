//! Storage of account linking: pending sign-ins, links and the audit (migration `0003_link`).
//! The same SQL runs on SQLite and PostgreSQL.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{Db, now_millis};

/// Pending sign-ins older than this (past their expiry) are deleted.
const STATE_RETENTION_MILLIS: i64 = 24 * 3600 * 1000;

/// Where a chat user asked for a link: enough to answer them later in the same conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatAddress {
    /// `teams` or `slack`.
    pub platform: String,
    /// Platform user id.
    pub chat_user_id: String,
    /// Display name, when known.
    pub chat_user_name: Option<String>,
    /// Entra object id of the chat user (Teams `aadObjectId`), when the platform gives one.
    pub aad_object_id: Option<String>,
    /// Conversation id to answer in (a channel thread keeps its suffix).
    pub conversation_id: String,
    /// `personal`, `channel` or `groupChat`.
    pub conversation_type: String,
    /// Teams `serviceUrl` (empty for Slack).
    pub service_url: String,
    /// Tenant of the conversation (Slack: the workspace's team id).
    pub tenant_id: String,
    /// The bot's id in the conversation.
    pub bot_id: String,
}

/// A sign-in in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLink {
    /// Where it was asked for.
    pub address: ChatAddress,
    /// `sys_user.sys_id` of the chat user.
    pub servicenow_user_sys_id: String,
    /// `sys_user.user_name` of the chat user.
    pub servicenow_user_name: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// Created, unix ms.
    pub created_at: i64,
    /// Expires, unix ms.
    pub expires_at: i64,
    /// Used, unix ms.
    pub consumed_at: Option<i64>,
}

/// What became of an attempt to use a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUse {
    /// First use within its lifetime: the sign-in may complete.
    Fresh(PendingLink),
    /// Used before.
    Replayed(PendingLink),
    /// Past its expiry.
    Expired(PendingLink),
    /// Never issued (or deleted long ago).
    Unknown,
}

/// A stored link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLink {
    /// `teams` or `slack`.
    pub platform: String,
    /// Platform user id.
    pub chat_user_id: String,
    /// `sys_user.sys_id`.
    pub servicenow_user_sys_id: String,
    /// `sys_user.user_name`.
    pub servicenow_user_name: String,
    /// Entra object id of the Microsoft 365 account.
    pub m365_object_id: String,
    /// Its user principal name.
    pub m365_upn: String,
    /// Its tenant id.
    pub m365_tenant_id: String,
    /// The admin roles found at linking time (names), empty when they could not be read.
    pub m365_roles: Vec<String>,
    /// When, unix ms.
    pub linked_at: i64,
    /// Who linked it (ServiceNow user name of the chat user who signed in).
    pub linked_by: String,
    /// The chat user's workspace, where the platform has one beside the user id (Slack team
    /// id); `None` for Teams.
    pub chat_team_id: Option<String>,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// `link`, `unlink`, `grant` or `revoke`.
    pub action: String,
    /// `linked`, `unlinked`, `granted`, `already_held`, `revoked`, `not_held`, `failed`, ….
    pub outcome: String,
    /// Platform of the actor.
    pub actor_platform: String,
    /// Platform user id of the actor.
    pub actor_user_id: String,
    /// ServiceNow user name of the actor.
    pub actor_servicenow_user: Option<String>,
    /// ServiceNow user name of the target.
    pub target_servicenow_user: Option<String>,
    /// Role name, for grants and revocations.
    pub role: Option<String>,
    /// Free text (never a secret).
    pub detail: Option<String>,
}

/// The stored form of a state: its SHA-256, hex.
pub fn state_hash(state: &str) -> String {
    Sha256::digest(state.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn audit_id() -> String {
    crate::upstream::entra::random_token(16)
}

const PENDING_COLUMNS: &str = "platform, chat_user_id, chat_user_name, aad_object_id, conversation_id, \
     conversation_type, service_url, tenant_id, bot_id, servicenow_user_sys_id, servicenow_user_name, \
     nonce, created_at, expires_at, consumed_at";

fn pending_from_row(row: &sqlx::any::AnyRow) -> sqlx::Result<PendingLink> {
    Ok(PendingLink {
        address: ChatAddress {
            platform: row.try_get(0)?,
            chat_user_id: row.try_get(1)?,
            chat_user_name: row.try_get(2)?,
            aad_object_id: row.try_get(3)?,
            conversation_id: row.try_get(4)?,
            conversation_type: row.try_get(5)?,
            service_url: row.try_get(6)?,
            tenant_id: row.try_get(7)?,
            bot_id: row.try_get(8)?,
        },
        servicenow_user_sys_id: row.try_get(9)?,
        servicenow_user_name: row.try_get(10)?,
        nonce: row.try_get(11)?,
        created_at: row.try_get(12)?,
        expires_at: row.try_get(13)?,
        consumed_at: row.try_get(14)?,
    })
}

const LINK_COLUMNS: &str = "platform, chat_user_id, servicenow_user_sys_id, servicenow_user_name, \
     m365_object_id, m365_upn, m365_tenant_id, m365_roles, linked_at, linked_by, chat_team_id";

fn link_from_row(row: &sqlx::any::AnyRow) -> sqlx::Result<AccountLink> {
    let roles: String = row.try_get(7)?;
    Ok(AccountLink {
        platform: row.try_get(0)?,
        chat_user_id: row.try_get(1)?,
        servicenow_user_sys_id: row.try_get(2)?,
        servicenow_user_name: row.try_get(3)?,
        m365_object_id: row.try_get(4)?,
        m365_upn: row.try_get(5)?,
        m365_tenant_id: row.try_get(6)?,
        m365_roles: roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
        linked_at: row.try_get(8)?,
        linked_by: row.try_get(9)?,
        chat_team_id: row.try_get(10)?,
    })
}

/// Account-linking storage over the shared pool.
#[derive(Debug, Clone, Copy)]
pub struct LinkStore<'a> {
    db: &'a Db,
}

impl<'a> LinkStore<'a> {
    /// The store over `db`.
    pub fn new(db: &'a Db) -> Self {
        Self { db }
    }

    /// Stores a new pending sign-in under the hash of `state`, and deletes long-expired ones.
    pub async fn insert_pending(&self, state: &str, pending: &PendingLink) -> sqlx::Result<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM link_states WHERE expires_at < $1")
            .bind(now_millis() - STATE_RETENTION_MILLIS)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO link_states (state_hash, {PENDING_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(state_hash(state))
        .bind(&pending.address.platform)
        .bind(&pending.address.chat_user_id)
        .bind(&pending.address.chat_user_name)
        .bind(&pending.address.aad_object_id)
        .bind(&pending.address.conversation_id)
        .bind(&pending.address.conversation_type)
        .bind(&pending.address.service_url)
        .bind(&pending.address.tenant_id)
        .bind(&pending.address.bot_id)
        .bind(&pending.servicenow_user_sys_id)
        .bind(&pending.servicenow_user_name)
        .bind(&pending.nonce)
        .bind(pending.created_at)
        .bind(pending.expires_at)
        .bind(pending.consumed_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The pending sign-in of `state`, used or not.
    pub async fn pending(&self, state: &str) -> sqlx::Result<Option<PendingLink>> {
        let row = sqlx::query(&format!(
            "SELECT {PENDING_COLUMNS} FROM link_states WHERE state_hash = $1"
        ))
        .bind(state_hash(state))
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(pending_from_row).transpose()
    }

    /// Uses `state` once: only the first use within its lifetime is [`StateUse::Fresh`]; an
    /// expired state is spent as well, so it can never complete later.
    pub async fn consume(&self, state: &str, now: i64) -> sqlx::Result<StateUse> {
        let hash = state_hash(state);
        let won = sqlx::query(
            "UPDATE link_states SET consumed_at = $1 \
             WHERE state_hash = $2 AND consumed_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(&hash)
        .execute(&self.db.pool)
        .await?
        .rows_affected()
            == 1;
        let Some(pending) = self.pending(state).await? else {
            return Ok(StateUse::Unknown);
        };
        if won {
            return Ok(StateUse::Fresh(pending));
        }
        if pending.consumed_at.is_some() {
            return Ok(StateUse::Replayed(pending));
        }
        sqlx::query(
            "UPDATE link_states SET consumed_at = $1 WHERE state_hash = $2 AND consumed_at IS NULL",
        )
        .bind(now)
        .bind(&hash)
        .execute(&self.db.pool)
        .await?;
        Ok(StateUse::Expired(pending))
    }

    /// Stores (or replaces) the link of a chat user and audits it, in one transaction.
    pub async fn save_link(&self, link: &AccountLink, audit: &AuditEntry) -> sqlx::Result<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM account_links WHERE platform = $1 AND chat_user_id = $2")
            .bind(&link.platform)
            .bind(&link.chat_user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO account_links ({LINK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&link.platform)
        .bind(&link.chat_user_id)
        .bind(&link.servicenow_user_sys_id)
        .bind(&link.servicenow_user_name)
        .bind(&link.m365_object_id)
        .bind(&link.m365_upn)
        .bind(&link.m365_tenant_id)
        .bind(link.m365_roles.join(","))
        .bind(link.linked_at)
        .bind(&link.linked_by)
        .bind(&link.chat_team_id)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// The link of a chat user.
    pub async fn link(
        &self,
        platform: &str,
        chat_user_id: &str,
    ) -> sqlx::Result<Option<AccountLink>> {
        let row = sqlx::query(&format!(
            "SELECT {LINK_COLUMNS} FROM account_links WHERE platform = $1 AND chat_user_id = $2"
        ))
        .bind(platform)
        .bind(chat_user_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(link_from_row).transpose()
    }

    /// Every stored link.
    pub async fn links(&self) -> sqlx::Result<Vec<AccountLink>> {
        let rows = sqlx::query(&format!(
            "SELECT {LINK_COLUMNS} FROM account_links ORDER BY linked_at"
        ))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(link_from_row).collect()
    }

    /// Deletes the link of a chat user and audits it; false when there was none.
    pub async fn delete_link(
        &self,
        platform: &str,
        chat_user_id: &str,
        audit: &AuditEntry,
    ) -> sqlx::Result<bool> {
        let mut tx = self.db.pool.begin().await?;
        let done =
            sqlx::query("DELETE FROM account_links WHERE platform = $1 AND chat_user_id = $2")
                .bind(platform)
                .bind(chat_user_id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Appends an audit entry.
    pub async fn audit(&self, entry: &AuditEntry) -> sqlx::Result<()> {
        let mut tx = self.db.pool.begin().await?;
        insert_audit(&mut tx, entry).await?;
        tx.commit().await
    }

    /// The latest audit entries, newest first.
    pub async fn recent_audit(&self, limit: i64) -> sqlx::Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT action, outcome, actor_platform, actor_user_id, actor_servicenow_user, \
             target_servicenow_user, role, detail FROM link_audit ORDER BY at DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    action: row.try_get(0)?,
                    outcome: row.try_get(1)?,
                    actor_platform: row.try_get(2)?,
                    actor_user_id: row.try_get(3)?,
                    actor_servicenow_user: row.try_get(4)?,
                    target_servicenow_user: row.try_get(5)?,
                    role: row.try_get(6)?,
                    detail: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// Number of pending sign-in rows (used or not), for tests.
    pub async fn pending_count(&self) -> sqlx::Result<i64> {
        sqlx::query("SELECT COUNT(*) FROM link_states")
            .fetch_one(&self.db.pool)
            .await?
            .try_get(0)
    }
}

async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    entry: &AuditEntry,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO link_audit (id, at, action, outcome, actor_platform, actor_user_id, \
         actor_servicenow_user, target_servicenow_user, role, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(audit_id())
    .bind(now_millis())
    .bind(&entry.action)
    .bind(&entry.outcome)
    .bind(&entry.actor_platform)
    .bind(&entry.actor_user_id)
    .bind(&entry.actor_servicenow_user)
    .bind(&entry.target_servicenow_user)
    .bind(&entry.role)
    .bind(&entry.detail)
    .execute(&mut **tx)
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_stored_hashed() {
        let hash = state_hash("abc");
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(state_hash("abd"), hash);
    }
}
