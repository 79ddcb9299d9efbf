//! Client-side rate limits for connector calls: per conversation and per app (this process).
//!
//! Each call reserves the next free slot of its conversation and of the app; slots are spaced
//! evenly (1 / rate, plus a small safety margin), so no window of one second ever holds more
//! calls than allowed, and the achieved rate stays within a few percent of the allowed one. A
//! conversation can be frozen (after a `Retry-After`): its next slot moves past the freeze.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Slots are spaced this much wider than 1 / rate, so that network jitter cannot squeeze one
/// call too many into a one-second window on the server's side.
const SAFETY: f64 = 1.03;
/// Conversations remembered before the ones with no future slot are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// Reserves connector-call slots.
#[derive(Debug)]
pub struct RateLimiter {
    conversation_interval: Option<Duration>,
    global_interval: Option<Duration>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Reserved app-wide call times still to come (and the last past one), so that a
    /// conversation waiting for its own slot does not hold back the others.
    global: BTreeSet<Instant>,
    conversations: HashMap<String, Instant>,
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
}

fn interval(per_second: f64) -> Option<Duration> {
    (per_second.is_finite() && per_second > 0.0)
        .then(|| Duration::from_secs_f64(SAFETY / per_second))
}

impl RateLimiter {
    /// A limiter allowing `per_conversation` calls per second in each conversation and
    /// `global` per second in total; zero or less means unlimited.
    pub fn new(per_conversation: f64, global: f64) -> Self {
        Self {
            conversation_interval: interval(per_conversation),
            global_interval: interval(global),
            state: Mutex::new(State {
                global: BTreeSet::new(),
                conversations: HashMap::new(),
            }),
        }
    }

    /// Reserves the earliest slot for one call in `conversation`, if it is no later than
    /// `not_after`; returns when the call may be made. Nothing is reserved otherwise.
    pub fn reserve(&self, conversation: &str, not_after: Instant) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let conversation_next = state
            .conversations
            .get(conversation)
            .copied()
            .unwrap_or(now);
        let at = state.global_slot(now.max(conversation_next), self.global_interval);
        if at > not_after {
            return None;
        }
        if let Some(step) = self.global_interval {
            // Past slots only matter within one step of now.
            let horizon = now.checked_sub(step).unwrap_or(now);
            while state.global.first().is_some_and(|first| *first < horizon) {
                state.global.pop_first();
            }
            state.global.insert(at);
        }
        if state.conversations.len() > PRUNE_ABOVE {
            state.conversations.retain(|_, next| *next > now);
        }
        let step = self.conversation_interval.unwrap_or_default();
        if !step.is_zero() || state.conversations.contains_key(conversation) {
            let next = state
                .conversations
                .entry(conversation.to_owned())
                .or_insert(at);
            *next = (*next).max(at + step);
        }
        Some(at)
    }

    /// The earliest time a call in `conversation` could be made.
    pub fn earliest(&self, conversation: &str) -> Instant {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let conversation_next = state
            .conversations
            .get(conversation)
            .copied()
            .unwrap_or(now);
        state.global_slot(now.max(conversation_next), self.global_interval)
    }

    /// No call in `conversation` before `until`.
    pub fn freeze(&self, conversation: &str, until: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let next = state
            .conversations
            .entry(conversation.to_owned())
            .or_insert(until);
        if *next < until {
            *next = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_per_conversation_and_globally() {
        let limiter = RateLimiter::new(7.0, 50.0);
        let far = Instant::now() + Duration::from_secs(100);
        let slots: Vec<Instant> = (0..8)
            .map(|_| limiter.reserve("a", far).expect("slot"))
            .collect();
        for pair in slots.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs_f64(1.0 / 7.0));
        }
        // 8 calls in one conversation span more than one second.
        assert!(slots[7] - slots[0] >= Duration::from_secs(1));
        // Another conversation is only held back by the global spacing.
        let other = limiter.reserve("b", far).expect("slot");
        assert!(other < slots[1], "not behind conversation a's queue");
        // A deadline that cannot be met reserves nothing.
        let before = limiter.earliest("a");
        assert!(limiter.reserve("a", Instant::now()).is_none());
        assert_eq!(limiter.earliest("a"), before);
        let thaw = Instant::now() + Duration::from_secs(30);
        limiter.freeze("c", thaw);
        assert!(limiter.reserve("c", far).expect("slot") >= thaw);
        let unlimited = RateLimiter::new(0.0, 0.0);
        let now = Instant::now();
        assert!(unlimited.reserve("a", far).expect("slot") <= Instant::now());
        assert!(unlimited.reserve("a", far).expect("slot") >= now);
    }
}
