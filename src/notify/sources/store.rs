//! Storage of the sources: poller watermarks, the latest known revision of each case, push
//! replay protection and mirrored service-health issues.

use std::collections::HashMap;

use sqlx::{Any, Row, Transaction};

use crate::db::{Db, now_millis};

/// A poller's position: everything up to `(watermark, last_key)` has been handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// ServiceNow `YYYY-MM-DD HH:MM:SS` (UTC) or an RFC 3339 time.
    pub watermark: String,
    /// Tie-breaker within the same `watermark` (`sys_id`); empty before the first row.
    pub last_key: String,
}

/// The stored watermark of `source`.
pub async fn watermark(db: &Db, source: &str) -> Result<Option<Watermark>, sqlx::Error> {
    let row =
        sqlx::query("SELECT watermark, last_key FROM notify_source_watermarks WHERE source = $1")
            .bind(source)
            .fetch_optional(&db.pool)
            .await?;
    row.map(|row| {
        Ok(Watermark {
            watermark: row.try_get("watermark")?,
            last_key: row.try_get("last_key")?,
        })
    })
    .transpose()
}

/// Stores the watermark of `source`.
pub async fn set_watermark(db: &Db, source: &str, mark: &Watermark) -> Result<(), sqlx::Error> {
    watermark_upsert(source, mark)
        .execute(&db.pool)
        .await
        .map(drop)
}

/// Stores the watermark of `source` in the caller's transaction.
pub async fn set_watermark_in(
    tx: &mut Transaction<'static, Any>,
    source: &str,
    mark: &Watermark,
) -> Result<(), sqlx::Error> {
    watermark_upsert(source, mark)
        .execute(&mut **tx)
        .await
        .map(drop)
}

fn watermark_upsert<'q>(
    source: &'q str,
    mark: &'q Watermark,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "INSERT INTO notify_source_watermarks (source, watermark, last_key, updated_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (source) DO UPDATE SET watermark = excluded.watermark, \
         last_key = excluded.last_key, updated_at = excluded.updated_at",
    )
    .bind(source)
    .bind(&mark.watermark)
    .bind(&mark.last_key)
    .bind(now_millis())
}

/// The latest known revision of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseState {
    /// The revision text.
    pub revision: String,
    /// Its sort order (`sys_mod_count`, or milliseconds of `lastModifiedDateTime`).
    pub revision_order: i64,
    /// The state at that revision.
    pub state: String,
    /// The state before it, when known.
    pub previous_state: Option<String>,
}

/// The latest known revision of `case_key`.
pub async fn case_state(db: &Db, case_key: &str) -> Result<Option<CaseState>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT revision, revision_order, state, previous_state FROM notify_source_cases \
         WHERE case_key = $1",
    )
    .bind(case_key)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|row| {
        Ok(CaseState {
            revision: row.try_get("revision")?,
            revision_order: row.try_get("revision_order")?,
            state: row.try_get("state")?,
            previous_state: row.try_get("previous_state")?,
        })
    })
    .transpose()
}

/// Cases looked up at once (one statement per chunk of keys).
const CASE_CHUNK: usize = 100;

/// The latest known revisions of `case_keys`, read in the caller's transaction.
pub async fn case_states_in(
    tx: &mut Transaction<'static, Any>,
    case_keys: &[&str],
) -> Result<HashMap<String, CaseState>, sqlx::Error> {
    let mut states = HashMap::with_capacity(case_keys.len());
    for chunk in case_keys.chunks(CASE_CHUNK) {
        let sql = format!(
            "SELECT case_key, revision, revision_order, state, previous_state \
             FROM notify_source_cases WHERE case_key IN ({})",
            crate::notify::outbox::placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for key in chunk {
            query = query.bind(*key);
        }
        for row in query.fetch_all(&mut **tx).await? {
            states.insert(
                row.try_get("case_key")?,
                CaseState {
                    revision: row.try_get("revision")?,
                    revision_order: row.try_get("revision_order")?,
                    state: row.try_get("state")?,
                    previous_state: row.try_get("previous_state")?,
                },
            );
        }
    }
    Ok(states)
}

/// The latest known revisions of `case_keys` (outside a transaction).
pub async fn case_states(
    db: &Db,
    case_keys: &[&str],
) -> Result<HashMap<String, CaseState>, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let states = case_states_in(&mut tx, case_keys).await?;
    tx.rollback().await?;
    Ok(states)
}

/// Remembers a revision of a case unless a later one is already known.
pub async fn remember_case(
    db: &Db,
    case_key: &str,
    revision: &str,
    revision_order: i64,
    state: &str,
    previous_state: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    remember_case_in(
        &mut tx,
        case_key,
        revision,
        revision_order,
        state,
        previous_state,
    )
    .await?;
    tx.commit().await
}

/// Remembers a revision of a case unless a later one is already known, in the caller's
/// transaction.
pub async fn remember_case_in(
    tx: &mut Transaction<'static, Any>,
    case_key: &str,
    revision: &str,
    revision_order: i64,
    state: &str,
    previous_state: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_source_cases \
         (case_key, revision, revision_order, state, previous_state, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (case_key) DO UPDATE SET revision = excluded.revision, \
         revision_order = excluded.revision_order, state = excluded.state, \
         previous_state = excluded.previous_state, updated_at = excluded.updated_at \
         WHERE notify_source_cases.revision_order < excluded.revision_order",
    )
    .bind(case_key)
    .bind(revision)
    .bind(revision_order)
    .bind(state)
    .bind(previous_state)
    .bind(now_millis())
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Of `sys_ids`, the incidents the bot created as service-health mirrors; of `references`,
/// the issue ids the bot mirrors (each list looked up in chunks).
pub async fn mirror_matches(
    db: &Db,
    sys_ids: &[&str],
    references: &[&str],
) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
    let mut found = (Vec::new(), Vec::new());
    for (column, values, out) in [
        ("incident_sys_id", sys_ids, &mut found.0),
        ("issue_id", references, &mut found.1),
    ] {
        for chunk in values.chunks(CASE_CHUNK) {
            let sql = format!(
                "SELECT {column} FROM notify_health_mirrors WHERE {column} IN ({})",
                crate::notify::outbox::placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for value in chunk {
                query = query.bind(*value);
            }
            for row in query.fetch_all(&db.pool).await? {
                out.push(row.try_get(0)?);
            }
        }
    }
    Ok(found)
}

/// Claims a push signature for its replay window: false when it was seen before (a replay).
/// Expired claims are removed on the way.
pub async fn claim_replay(
    db: &Db,
    signature_hash: &str,
    expires_at: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM notify_push_replays WHERE expires_at < $1")
        .bind(now_millis())
        .execute(&db.pool)
        .await?;
    let done = sqlx::query(
        "INSERT INTO notify_push_replays (signature_hash, expires_at) VALUES ($1, $2) \
         ON CONFLICT (signature_hash) DO NOTHING",
    )
    .bind(signature_hash)
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Releases a claim (the event could not be recorded, so the sender may retry).
pub async fn release_replay(db: &Db, signature_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notify_push_replays WHERE signature_hash = $1")
        .bind(signature_hash)
        .execute(&db.pool)
        .await
        .map(drop)
}

/// A service-health issue mirrored into a ServiceNow incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The issue id (`EX123456`).
    pub issue_id: String,
    /// The incident's sys_id.
    pub incident_sys_id: String,
    /// `createdDateTime` (ms) of the latest post already written as a work note.
    pub last_post_at: i64,
    /// The incident was resolved.
    pub resolved: bool,
}

/// The mirror of `issue_id`.
pub async fn mirror(db: &Db, issue_id: &str) -> Result<Option<Mirror>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT issue_id, incident_sys_id, last_post_at, resolved FROM notify_health_mirrors \
         WHERE issue_id = $1",
    )
    .bind(issue_id)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|row| {
        Ok(Mirror {
            issue_id: row.try_get("issue_id")?,
            incident_sys_id: row.try_get("incident_sys_id")?,
            last_post_at: row.try_get("last_post_at")?,
            resolved: row.try_get::<i64, _>("resolved")? != 0,
        })
    })
    .transpose()
}

/// True when `sys_id` is an incident the bot created as a mirror.
pub async fn is_mirror_incident(db: &Db, sys_id: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT issue_id FROM notify_health_mirrors WHERE incident_sys_id = $1")
        .bind(sys_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

/// True when `value` is the id of an issue the bot mirrors (the correlation value of the
/// incident it creates, known before the incident exists).
pub async fn is_mirror_reference(db: &Db, value: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT issue_id FROM notify_health_mirrors WHERE issue_id = $1")
        .bind(value)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

/// Stores the progress of a mirror.
pub async fn save_mirror(db: &Db, mirror: &Mirror) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_health_mirrors \
         (issue_id, incident_sys_id, last_post_at, resolved, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (issue_id) DO UPDATE SET incident_sys_id = excluded.incident_sys_id, \
         last_post_at = excluded.last_post_at, resolved = excluded.resolved, \
         updated_at = excluded.updated_at",
    )
    .bind(&mirror.issue_id)
    .bind(&mirror.incident_sys_id)
    .bind(mirror.last_post_at)
    .bind(i64::from(mirror.resolved))
    .bind(now_millis())
    .execute(&db.pool)
    .await
    .map(drop)
}
