//! Client-side rate limits for connector calls: per conversation (this process) and per app
//! (this process, or every replica through the database).
//!
//! Each call reserves the next free slot of its conversation and of the app; slots are spaced
//! evenly (1 / rate, plus a small safety margin), so no window of one second ever holds more
//! calls than allowed, and the achieved rate stays within a few percent of the allowed one. A
//! conversation can be frozen (after a `Retry-After`): its next slot moves past the freeze. A
//! 429 with `Retry-After` also pauses the app's slots until then.
//!
//! Shared mode ([`RateLimiter::shared`]): the app's slots are leased in small batches from one
//! row of `notify_rate_buckets` (`UPDATE … SET next_slot_us = max(next_slot_us, now) + k ×
//! step RETURNING …`, timed by the database's clock), so the replicas' slots never overlap and
//! together keep the app's rate. The hot path costs one round trip per batch of slots, not
//! per call. The per-conversation limit stays in the process: the claim gives every
//! conversation one sending replica at a time (see [`crate::notify::outbox::claim`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::Row;
use tokio::time::Instant;

use crate::db::{Backend, Db};

/// Slots are spaced this much wider than 1 / rate, so that network jitter cannot squeeze one
/// call too many into a one-second window on the server's side.
const SAFETY: f64 = 1.03;
/// Conversations remembered before the ones with no future slot are dropped.
const PRUNE_ABOVE: usize = 10_000;
/// A shared lease holds at most this share of a second's slots.
const LEASE_SECONDS: f64 = 0.2;

/// Reserves connector-call slots.
#[derive(Debug)]
pub struct RateLimiter {
    conversation_interval: Option<Duration>,
    global_interval: Option<Duration>,
    state: Mutex<State>,
    shared: Option<SharedBucket>,
}

/// The app-wide bucket row shared by the replicas.
#[derive(Debug)]
struct SharedBucket {
    db: Db,
    name: String,
    step_us: i64,
    lease_max: usize,
    /// One lease at a time per process.
    leasing: tokio::sync::Mutex<()>,
    /// Bumped by every lease, so a caller that waited for the lock sees it was served.
    generation: AtomicU64,
    /// Calls waiting for a slot right now: the size of the next lease.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// Local mode: reserved app-wide call times still to come (and the last past one), so
    /// that a conversation waiting for its own slot does not hold back the others. Shared
    /// mode: the leased slots not used yet.
    global: BTreeSet<Instant>,
    conversations: HashMap<String, Instant>,
    /// No app-wide call before this (a 429 with `Retry-After`).
    paused_until: Option<Instant>,
}

impl State {
    /// The earliest time at or after `from` at least `step` away from every global slot.
    fn global_slot(&self, from: Instant, step: Option<Duration>) -> Instant {
        let Some(step) = step else {
            return from;
        };
        let mut at = from;
        loop {
            if let Some(before) = self.global.range(..=at).next_back()
                && at.duration_since(*before) < step
            {
                at = *before + step;
                continue;
            }
            if let Some(after) = self.global.range(at..).next()
                && after.duration_since(at) < step
            {
                at = *after + step;
                continue;
            }
            return at;
        }
    }

    /// The earliest time `conversation` may call, ignoring the app's slots.
    fn conversation_from(&self, conversation: &str, now: Instant) -> Instant {
        let next = self.conversations.get(conversation).copied().unwrap_or(now);
        now.max(next).max(self.paused_until.unwrap_or(now))
    }

    fn take_conversation_slot(
        &mut self,
        conversation: &str,
        at: Instant,
        step: Duration,
        now: Instant,
    ) {
        if self.conversations.len() > PRUNE_ABOVE {
            self.conversations.retain(|_, next| *next > now);
        }
        if !step.is_zero() || self.conversations.contains_key(conversation) {
            let next = self
                .conversations
                .entry(conversation.to_owned())
                .or_insert(at);
            *next = (*next).max(at + step);
        }
    }
}

/// The answer of [`RateLimiter::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved: call at this time.
    At(Instant),
    /// Nothing reserved: the earliest slot is later than the deadline.
    TooLate(Instant),
    /// Shared mode, nothing reserved: the conversation may call at this time, but this
    /// process holds no app slot then; lease more ([`RateLimiter::lease`]) or wait until it.
    NeedSlots(Instant),
}

fn interval(per_second: f64) -> Option<Duration> {
    (per_second.is_finite() && per_second > 0.0)
        .then(|| Duration::from_secs_f64(SAFETY / per_second))
}

/// The database's clock in microseconds, as SQL.
fn clock_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000 AS BIGINT)",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
    }
}

fn greatest(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "GREATEST",
        Backend::Sqlite => "MAX",
    }
}

/// Leases `count` slots `step_us` apart from the bucket `name`; returns the first slot and
/// the database's time, both in microseconds.
pub async fn lease_slots(
    db: &Db,
    name: &str,
    count: usize,
    step_us: i64,
) -> Result<(i64, i64), sqlx::Error> {
    let total = step_us.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX));
    let clock = clock_sql(db.backend);
    let greatest = greatest(db.backend);
    // `excluded.next_slot_us - $2` is the database's time of this statement.
    let sql = format!(
        "INSERT INTO notify_rate_buckets (name, next_slot_us, paused_until_us) \
         VALUES ($1, {clock} + $2, 0) ON CONFLICT (name) DO UPDATE SET next_slot_us = \
         {greatest}(notify_rate_buckets.next_slot_us, notify_rate_buckets.paused_until_us, \
         excluded.next_slot_us - $2) + $2 RETURNING next_slot_us, {clock}"
    );
    let row = sqlx::query(&sql)
        .bind(name)
        .bind(total)
        .fetch_one(&db.pool)
        .await?;
    let next: i64 = row.try_get(0)?;
    let now: i64 = row.try_get(1)?;
    Ok((next - total, now))
}

/// Pauses the bucket `name` for `wait` from the database's current time.
pub async fn pause_bucket(db: &Db, name: &str, wait: Duration) -> Result<(), sqlx::Error> {
    let wait_us = i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
    let clock = clock_sql(db.backend);
    let greatest = greatest(db.backend);
    let sql = format!(
        "INSERT INTO notify_rate_buckets (name, next_slot_us, paused_until_us) \
         VALUES ($1, {clock}, {clock} + $2) ON CONFLICT (name) DO UPDATE SET paused_until_us = \
         {greatest}(notify_rate_buckets.paused_until_us, excluded.paused_until_us)"
    );
    sqlx::query(&sql)
        .bind(name)
        .bind(wait_us)
        .execute(&db.pool)
        .await
        .map(drop)
}

impl RateLimiter {
    /// A limiter allowing `per_conversation` calls per second in each conversation and
    /// `global` per second in total, in this process; zero or less means unlimited.
    pub fn new(per_conversation: f64, global: f64) -> Self {
        Self {
            conversation_interval: interval(per_conversation),
            global_interval: interval(global),
            state: Mutex::new(State::default()),
            shared: None,
        }
    }

    /// Like [`RateLimiter::new`], but the `global` rate is shared by every process that uses
    /// the bucket `name` in `db`. Unlimited (`global` ≤ 0) stays local.
    pub fn shared(per_conversation: f64, global: f64, db: Db, name: &str) -> Self {
        let mut limiter = Self::new(per_conversation, global);
        if let Some(step) = limiter.global_interval {
            let lease_max = (global * LEASE_SECONDS).ceil().max(1.0) as usize;
            limiter.shared = Some(SharedBucket {
                db,
                name: name.to_owned(),
                step_us: i64::try_from(step.as_micros()).unwrap_or(i64::MAX).max(1),
                lease_max,
                leasing: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
            });
        }
        limiter
    }

    /// True when the app's slots come from the database.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves the earliest slot for one call in `conversation`, if it is no later than
    /// `not_after`. Nothing is reserved otherwise.
    pub fn reserve(&self, conversation: &str, not_after: Instant) -> Reservation {
        let now = Instant::now();
        let mut state = self.lock();
        let from = state.conversation_from(conversation, now);
        let step = self.conversation_interval.unwrap_or_default();
        if self.shared.is_some() {
            while state.global.first().is_some_and(|first| *first < now) {
                state.global.pop_first();
            }
            let Some(&at) = state.global.range(from..).next() else {
                return if from > not_after {
                    Reservation::TooLate(from)
                } else {
                    Reservation::NeedSlots(from)
                };
            };
            if at > not_after {
                return Reservation::TooLate(at);
            }
            state.global.remove(&at);
            state.take_conversation_slot(conversation, at, step, now);
            return Reservation::At(at);
        }
        let at = state.global_slot(from, self.global_interval);
        if at > not_after {
            return Reservation::TooLate(at);
        }
        if let Some(step) = self.global_interval {
            // Past slots only matter within one step of now.
            let horizon = now.checked_sub(step).unwrap_or(now);
            while state.global.first().is_some_and(|first| *first < horizon) {
                state.global.pop_first();
            }
            state.global.insert(at);
        }
        state.take_conversation_slot(conversation, at, step, now);
        Reservation::At(at)
    }

    /// Waits for a slot of `conversation` no later than `not_after`, leasing app slots from
    /// the database when this process has none left (shared mode). `Err` holds the earliest
    /// time worth trying again.
    pub async fn acquire(&self, conversation: &str, not_after: Instant) -> Result<(), Instant> {
        let _waiting = self
            .shared
            .as_ref()
            .map(|bucket| Waiting::new(&bucket.waiting));
        loop {
            let generation = self
                .shared
                .as_ref()
                .map(|bucket| bucket.generation.load(Ordering::Acquire));
            match self.reserve(conversation, not_after) {
                Reservation::At(at) => {
                    tokio::time::sleep_until(at).await;
                    return Ok(());
                }
                Reservation::TooLate(at) => return Err(at),
                Reservation::NeedSlots(from) => {
                    // The conversation itself must wait: come back then, without leasing
                    // slots it could not use.
                    let soon = Instant::now() + self.global_interval.unwrap_or_default();
                    if from > soon {
                        tokio::time::sleep_until(from).await;
                        continue;
                    }
                    if let Err(err) = self.lease(generation.unwrap_or_default()).await {
                        tracing::warn!(error = %err, "cannot lease send slots from the shared rate limit; retrying");
                        return Err(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
    }

    /// Leases slots from the shared bucket, unless another call did since `seen` (a
    /// generation read before the failed reservation).
    async fn lease(&self, seen: u64) -> Result<(), sqlx::Error> {
        let Some(bucket) = &self.shared else {
            return Ok(());
        };
        let _one_at_a_time = bucket.leasing.lock().await;
        if bucket.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let count = bucket
            .waiting
            .load(Ordering::Relaxed)
            .clamp(1, bucket.lease_max);
        let (first_us, db_now_us) =
            lease_slots(&bucket.db, &bucket.name, count, bucket.step_us).await?;
        let now = Instant::now();
        {
            let mut state = self.lock();
            for n in 0..count {
                let offset = first_us + bucket.step_us * n as i64 - db_now_us;
                let at = now + Duration::from_micros(u64::try_from(offset).unwrap_or(0));
                state.global.insert(at);
            }
        }
        bucket.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The earliest time a call in `conversation` could be made (local mode; shared mode: not
    /// before the conversation's own next slot).
    pub fn earliest(&self, conversation: &str) -> Instant {
        let now = Instant::now();
        let state = self.lock();
        let from = state.conversation_from(conversation, now);
        if self.shared.is_some() {
            return from;
        }
        state.global_slot(from, self.global_interval)
    }

    /// No call in `conversation` before `until`.
    pub fn freeze(&self, conversation: &str, until: Instant) {
        let mut state = self.lock();
        let next = state
            .conversations
            .entry(conversation.to_owned())
            .or_insert(until);
        if *next < until {
            *next = until;
        }
    }

    /// No app-wide call for `wait` (a 429 with `Retry-After`): in this process at once and,
    /// in shared mode, in every replica through the bucket.
    pub async fn pause(&self, wait: Duration) -> Result<(), sqlx::Error> {
        let until = Instant::now() + wait;
        {
            let mut state = self.lock();
            state.paused_until = Some(state.paused_until.map_or(until, |at| at.max(until)));
            if self.shared.is_some() {
                // Leased slots inside the pause are given up.
                state.global = state.global.split_off(&until);
            }
        }
        match &self.shared {
            Some(bucket) => pause_bucket(&bucket.db, &bucket.name, wait).await,
            None => Ok(()),
        }
    }
}

/// Counts a caller waiting for a slot while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(reservation: Reservation) -> Instant {
        match reservation {
            Reservation::At(at) => at,
            other => panic!("no slot: {other:?}"),
        }
    }

    #[test]
    fn slots_are_spaced_per_conversation_and_globally() {
        let limiter = RateLimiter::new(7.0, 50.0);
        let far = Instant::now() + Duration::from_secs(100);
        let slots: Vec<Instant> = (0..8).map(|_| at(limiter.reserve("a", far))).collect();
        for pair in slots.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs_f64(1.0 / 7.0));
        }
        // 8 calls in one conversation span more than one second.
        assert!(slots[7] - slots[0] >= Duration::from_secs(1));
        // Another conversation is only held back by the global spacing.
        let other = at(limiter.reserve("b", far));
        assert!(other < slots[1], "not behind conversation a's queue");
        // A deadline that cannot be met reserves nothing.
        let before = limiter.earliest("a");
        assert!(matches!(
            limiter.reserve("a", Instant::now()),
            Reservation::TooLate(_)
        ));
        assert_eq!(limiter.earliest("a"), before);
        let thaw = Instant::now() + Duration::from_secs(30);
        limiter.freeze("c", thaw);
        assert!(at(limiter.reserve("c", far)) >= thaw);
        let unlimited = RateLimiter::new(0.0, 0.0);
        let now = Instant::now();
        assert!(at(unlimited.reserve("a", far)) <= Instant::now());
        assert!(at(unlimited.reserve("a", far)) >= now);
    }

    #[tokio::test]
    async fn a_pause_holds_every_conversation() {
        let limiter = RateLimiter::new(7.0, 50.0);
        let far = Instant::now() + Duration::from_secs(100);
        limiter
            .pause(Duration::from_secs(2))
            .await
            .expect("local pause");
        let paused_until = Instant::now() + Duration::from_millis(1_900);
        assert!(at(limiter.reserve("a", far)) >= paused_until);
        assert!(at(limiter.reserve("b", far)) >= paused_until);
    }
}
