//! Storage of the wizard: one row per setup in `setup_wizards` (optimistic concurrency on
//! `version`, at most one `active` row), the audit log `setup_audit`, and the read of the
//! conversation references the hand-over needs.

use sqlx::Row;

use super::state::Wizard;
use crate::db::{Db, now_millis};

/// `setup_wizards.status` values.
pub mod status {
    /// In progress.
    pub const ACTIVE: &str = "active";
    /// Reached the completion step.
    pub const COMPLETED: &str = "completed";
    /// Cancelled by an admin.
    pub const CANCELLED: &str = "cancelled";
    /// Idle longer than `setup.idle_timeout_minutes`.
    pub const EXPIRED: &str = "expired";
}

/// One stored setup.
#[derive(Debug, Clone)]
pub struct SetupRow {
    /// Id.
    pub setup_id: String,
    /// `active`, `completed`, `cancelled` or `expired`.
    pub status: String,
    /// The state (no secrets).
    pub wizard: Wizard,
    /// The secrets, sealed with the setup key (`None`: none yet).
    pub sealed_secrets: Option<String>,
    /// Optimistic-concurrency version; every write increments it.
    pub version: i64,
    /// The chat user who started it.
    pub started_by: String,
    /// The 1:1 conversation the wizard runs in.
    pub conversation_id: Option<String>,
    /// Its serviceUrl.
    pub service_url: Option<String>,
    /// Created (unix ms).
    pub created_at: i64,
    /// Last written (unix ms).
    pub updated_at: i64,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The setup.
    pub setup_id: String,
    /// When (unix ms).
    pub at: i64,
    /// Who (chat user id and ServiceNow user name).
    pub actor: String,
    /// What (`start`, `submit tenant`, `create outbound app`, …).
    pub action: String,
    /// `ok`, `failed`, `refused`, …
    pub outcome: String,
    /// Details, never a secret.
    pub detail: String,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored state does not parse.
    #[error("the stored setup state is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

const COLUMNS: &str = "setup_id, status, state, secrets, version, started_by, conversation_id, \
                       service_url, created_at, updated_at";

fn row_to_setup(row: &sqlx::any::AnyRow) -> Result<SetupRow, StoreError> {
    let state: String = row.try_get(2)?;
    Ok(SetupRow {
        setup_id: row.try_get(0)?,
        status: row.try_get(1)?,
        wizard: serde_json::from_str(&state)?,
        sealed_secrets: row.try_get(3)?,
        version: row.try_get(4)?,
        started_by: row.try_get(5)?,
        conversation_id: row.try_get(6)?,
        service_url: row.try_get(7)?,
        created_at: row.try_get(8)?,
        updated_at: row.try_get(9)?,
    })
}

/// A random id (128 bits, hex).
pub fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The active setup, if any.
pub async fn active(db: &Db) -> Result<Option<SetupRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM setup_wizards WHERE status = $1");
    let row = sqlx::query(&sql)
        .bind(status::ACTIVE)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(row_to_setup).transpose()
}

/// One setup by id.
pub async fn get(db: &Db, setup_id: &str) -> Result<Option<SetupRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM setup_wizards WHERE setup_id = $1");
    let row = sqlx::query(&sql)
        .bind(setup_id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(row_to_setup).transpose()
}

/// The most recently completed setup (what `doctor` verifies).
pub async fn latest_completed(db: &Db) -> Result<Option<SetupRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM setup_wizards WHERE status = $1 ORDER BY updated_at DESC LIMIT 1"
    );
    let row = sqlx::query(&sql)
        .bind(status::COMPLETED)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(row_to_setup).transpose()
}

/// How many setups hold encrypted secrets.
pub async fn count_with_secrets(db: &Db) -> Result<i64, StoreError> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM setup_wizards WHERE secrets IS NOT NULL AND secrets <> ''",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(count)
}

/// Inserts a new active setup; `Ok(false)` when another one is active already.
pub async fn insert(db: &Db, row: &SetupRow) -> Result<bool, StoreError> {
    let state = serde_json::to_string(&row.wizard)?;
    let result = sqlx::query(&format!(
        "INSERT INTO setup_wizards ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&row.setup_id)
    .bind(&row.status)
    .bind(state)
    .bind(&row.sealed_secrets)
    .bind(row.version)
    .bind(&row.started_by)
    .bind(&row.conversation_id)
    .bind(&row.service_url)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(&db.pool)
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Writes a new state if the row is still at `expected_version`; `Ok(None)` when someone else
/// wrote first (nothing changed), else the new version.
pub async fn compare_and_set(
    db: &Db,
    setup_id: &str,
    expected_version: i64,
    wizard: &Wizard,
    sealed_secrets: Option<&str>,
    new_status: &str,
) -> Result<Option<i64>, StoreError> {
    let state = serde_json::to_string(wizard)?;
    let result = sqlx::query(
        "UPDATE setup_wizards SET state = $1, secrets = $2, status = $3, version = version + 1, \
         updated_at = $4 WHERE setup_id = $5 AND version = $6",
    )
    .bind(state)
    .bind(sealed_secrets)
    .bind(new_status)
    .bind(now_millis())
    .bind(setup_id)
    .bind(expected_version)
    .execute(&db.pool)
    .await?;
    Ok((result.rows_affected() == 1).then_some(expected_version + 1))
}

/// Marks active setups idle since before `cutoff` as expired and drops their secrets; returns
/// the ids expired.
pub async fn expire_idle(db: &Db, cutoff: i64) -> Result<Vec<String>, StoreError> {
    let rows =
        sqlx::query("SELECT setup_id FROM setup_wizards WHERE status = $1 AND updated_at < $2")
            .bind(status::ACTIVE)
            .bind(cutoff)
            .fetch_all(&db.pool)
            .await?;
    let mut expired = Vec::new();
    for row in rows {
        let id: String = row.try_get(0)?;
        let done = sqlx::query(
            "UPDATE setup_wizards SET status = $1, secrets = NULL, version = version + 1, \
             updated_at = $2 WHERE setup_id = $3 AND status = $4 AND updated_at < $5",
        )
        .bind(status::EXPIRED)
        .bind(now_millis())
        .bind(&id)
        .bind(status::ACTIVE)
        .bind(cutoff)
        .execute(&db.pool)
        .await?;
        if done.rows_affected() == 1 {
            expired.push(id);
        }
    }
    Ok(expired)
}

/// Appends an audit entry.
pub async fn audit(db: &Db, entry: &AuditEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO setup_audit (audit_id, setup_id, at, actor, action, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(&entry.setup_id)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.outcome)
    .bind(&entry.detail)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The latest `limit` audit entries of a setup, oldest first.
pub async fn audit_log(db: &Db, setup_id: &str, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT setup_id, at, actor, action, outcome, detail FROM setup_audit \
         WHERE setup_id = $1 ORDER BY at DESC, audit_id DESC LIMIT $2",
    )
    .bind(setup_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut entries = rows
        .iter()
        .map(|row| {
            Ok(AuditEntry {
                setup_id: row.try_get(0)?,
                at: row.try_get(1)?,
                actor: row.try_get(2)?,
                action: row.try_get(3)?,
                outcome: row.try_get(4)?,
                detail: row.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    entries.reverse();
    Ok(entries)
}

/// The chat user id of whoever completed a setup (from its `complete` audit entry, whose
/// actor reads `user name (platform id)`), if known.
pub async fn completed_by(db: &Db, setup_id: &str) -> Result<Option<String>, StoreError> {
    let actor: Option<String> = sqlx::query_scalar(
        "SELECT actor FROM setup_audit WHERE setup_id = $1 AND action = $2 ORDER BY at DESC LIMIT 1",
    )
    .bind(setup_id)
    .bind("complete")
    .fetch_optional(&db.pool)
    .await?;
    Ok(actor.and_then(|actor| {
        let inner = actor.strip_suffix(')')?;
        let start = inner.rfind(" (")?;
        Some(inner[start + 2..].to_owned()).filter(|id| !id.is_empty())
    }))
}

/// The newest 1:1 conversation with a chat user: (conversation id, serviceUrl).
pub async fn personal_conversation_of(
    db: &Db,
    user_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let row = sqlx::query(
        "SELECT conversation_id, service_url FROM conversation_refs \
         WHERE conversation_type = $1 AND user_id = $2 ORDER BY updated_at DESC LIMIT 1",
    )
    .bind("personal")
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
        .map_err(|err: sqlx::Error| err.into())
}

/// A stored personal conversation: (conversation id, serviceUrl, user id, bot id).
pub type PersonalConversation = (String, String, String, String);

/// Personal conversations with a known user, newest first (for the hand-over).
pub async fn personal_conversations(db: &Db) -> Result<Vec<PersonalConversation>, StoreError> {
    let rows = sqlx::query(
        "SELECT conversation_id, service_url, user_id, bot_id FROM conversation_refs \
         WHERE conversation_type = $1 AND user_id IS NOT NULL ORDER BY updated_at DESC LIMIT 500",
    )
    .bind("personal")
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(Into::into)
}

/// A new setup row at version 1.
pub fn new_row(
    started_by: &str,
    conversation_id: Option<String>,
    service_url: Option<String>,
) -> SetupRow {
    let now = now_millis();
    SetupRow {
        setup_id: new_id(),
        status: status::ACTIVE.to_owned(),
        wizard: Wizard::default(),
        sealed_secrets: None,
        version: 1,
        started_by: started_by.to_owned(),
        conversation_id,
        service_url,
        created_at: now,
        updated_at: now,
    }
}
