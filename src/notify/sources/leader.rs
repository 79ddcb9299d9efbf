//! Leader election of the pollers: each source is polled by the one instance holding its row
//! in `notify_poller_leases`, on SQLite and PostgreSQL alike.
//!
//! A lease lasts one poll interval (at least a second) by the database's clock and is
//! renewed every third of it, concurrently with the poll. An instance polls only while its
//! lease is valid by its own clock, counted from when it asked for it, less a margin, so it
//! stops before anyone else can take over; a poll in progress is abandoned when the lease
//! lapses (polls are idempotent: events are deduplicated by revision). When the leader dies,
//! its lease expires and the next renewal of another instance takes it; the new leader waits a
//! third of an interval more before its first poll, so it polls within 1⅔ intervals of the old
//! leader's last renewal and never within one interval of the old leader's last poll. A leader
//! that stops cleanly gives its lease up, and a free lease is polled at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::Row;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Db};
use crate::metrics::Metrics;

/// The database's clock in milliseconds, as SQL.
fn clock_ms(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000 AS BIGINT)",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    }
}

/// Takes or renews the lease of `source` for `holder` for `ttl`; true when `holder` holds it.
pub async fn try_acquire(
    db: &Db,
    source: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let clock = clock_ms(db.backend);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let sql = format!(
        "INSERT INTO notify_poller_leases (source, holder, lease_until) VALUES ($1, $2, {clock} + $3) \
         ON CONFLICT (source) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until \
         WHERE notify_poller_leases.holder = excluded.holder \
         OR notify_poller_leases.lease_until < excluded.lease_until - $3 \
         RETURNING holder"
    );
    let row = sqlx::query(&sql)
        .bind(source)
        .bind(holder)
        .bind(ttl_ms)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<String, _>(0)? == holder,
        None => false,
    })
}

/// Gives up the lease of `source` if `holder` holds it.
pub async fn release(db: &Db, source: &str, holder: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notify_poller_leases WHERE source = $1 AND holder = $2")
        .bind(source)
        .bind(holder)
        .execute(&db.pool)
        .await
        .map(drop)
}

/// The holder and remaining lease (ms, by the database's clock) of `source`.
pub async fn current(db: &Db, source: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
    let sql = format!(
        "SELECT holder, lease_until - {} FROM notify_poller_leases WHERE source = $1",
        clock_ms(db.backend)
    );
    let row = sqlx::query(&sql)
        .bind(source)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}

/// A fresh holder id for one poller of this process.
pub fn holder_id() -> String {
    format!("instance-{:016x}", rand::rng().random::<u64>())
}

/// How long a lease of a poller polling every `interval` lasts.
pub fn lease_ttl(interval: Duration) -> Duration {
    interval.max(Duration::from_secs(1))
}

/// Keeps trying to hold the lease of `source` until `shutdown`, telling `leading` whether
/// this instance leads and from when it may poll; gives the lease up at the end.
pub async fn hold(
    db: Db,
    metrics: Arc<Metrics>,
    source: &'static str,
    holder: String,
    interval: Duration,
    leading: watch::Sender<Option<Instant>>,
    shutdown: CancellationToken,
) {
    let ttl = lease_ttl(interval);
    let renew_every = ttl / 3;
    // Valid by this clock until asked-at + ttl - margin: stops before the database's lease ends.
    let margin = ttl / 6;
    let mut valid_until: Option<Instant> = None;
    loop {
        let asked = Instant::now();
        // Taking over from another holder (whose lease ran out) waits a third of an interval
        // before polling; a free lease is polled at once.
        let takeover = if valid_until.is_none() {
            match current(&db, source).await {
                Ok(Some((other, _))) => other != holder,
                Ok(None) => false,
                Err(_) => true,
            }
        } else {
            false
        };
        match try_acquire(&db, source, &holder, ttl).await {
            Ok(true) => {
                if valid_until.is_none() {
                    tracing::info!(source, holder = %holder, takeover, "this instance now polls the source (leader)");
                    let from = if takeover { asked + renew_every } else { asked };
                    leading.send_replace(Some(from));
                }
                valid_until = Some(asked + ttl - margin);
            }
            Ok(false) => {
                if valid_until.take().is_some() {
                    tracing::warn!(source, holder = %holder, "another instance took over the poller");
                }
            }
            Err(err) => {
                tracing::warn!(source, error = %err, "cannot renew the poller lease");
            }
        }
        let now = Instant::now();
        if valid_until.is_some_and(|until| until <= now) {
            valid_until = None;
        }
        metrics.set_leader(source, valid_until.is_some());
        if valid_until.is_none() {
            leading.send_replace(None);
        }
        // Next renewal, but no later than the end of the local validity.
        let next = match valid_until {
            Some(until) => (asked + renew_every).min(until),
            None => asked + renew_every,
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next.max(now)) => {}
        }
        if valid_until.is_some_and(|until| until <= Instant::now()) {
            valid_until = None;
            metrics.set_leader(source, false);
            leading.send_replace(None);
        }
    }
    leading.send_replace(None);
    metrics.set_leader(source, false);
    if let Err(err) = release(&db, source, &holder).await {
        tracing::warn!(source, error = %err, "cannot give up the poller lease");
    }
}

/// Runs `poll` every time it is due while this instance leads `source` (see the module
/// docs); `poll` returns the wait before the next poll. Returns at `shutdown`.
pub async fn run_led<F, Fut>(
    db: Db,
    metrics: Arc<Metrics>,
    source: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    mut poll: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let (sender, mut leading) = watch::channel(None);
    // One task for both: stopping it (or the process) stops the renewals with the polls.
    let keeper = hold(
        db,
        metrics,
        source,
        holder_id(),
        interval,
        sender,
        shutdown.clone(),
    );
    let polling = async move {
        loop {
            // Wait for the lease, then for the moment this leader may poll.
            let from = tokio::select! {
                () = shutdown.cancelled() => break,
                lead = leading.wait_for(Option::is_some) => match lead {
                    Ok(lead) => (*lead).unwrap_or_else(Instant::now),
                    Err(_) => break,
                },
            };
            let outcome = tokio::select! {
                () = shutdown.cancelled() => break,
                lost = leading.wait_for(Option::is_none) => {
                    if lost.is_err() { break }
                    tracing::warn!(source, "poll abandoned: the poller lease lapsed");
                    continue;
                }
                wait = async {
                    tokio::time::sleep_until(from).await;
                    poll().await
                } => wait,
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(outcome) => {}
            }
        }
    };
    tokio::join!(keeper, polling);
}
