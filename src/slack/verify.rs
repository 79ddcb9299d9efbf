//! Verification of requests from Slack: HMAC-SHA256 of `v0:{timestamp}:{raw body}` keyed with
//! the signing secret, compared in constant time, within a replay window, each signature
//! accepted once.
//!
//! The check runs on the raw bytes before anything is parsed; a refused request changes
//! nothing but the log at debug level.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::http::HeaderMap;

/// Header with the signing time (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// Header with the signature (`v0=<64 hex digits>`).
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// Signatures remembered at most; past that, requests are refused until older ones expire.
pub const REPLAY_CACHE_CAPACITY: usize = 65_536;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header is absent or not text.
    #[error("missing {0} header: requests must come from Slack, signed with the signing secret")]
    MissingHeader(&'static str),
    /// The timestamp is not unix seconds.
    #[error("X-Slack-Request-Timestamp is not a unix time in seconds")]
    BadTimestamp,
    /// The timestamp is older than the window.
    #[error("the request was signed more than {0} seconds ago; check the server clock")]
    Stale(u64),
    /// The timestamp is further ahead than the window.
    #[error("the request is signed more than {0} seconds in the future; check the server clock")]
    Future(u64),
    /// The signature is not `v0=` and 64 hex digits.
    #[error("X-Slack-Signature is not v0= followed by 64 hex digits")]
    MalformedSignature,
    /// The signature does not match the body.
    #[error("the signature does not match: check slack.signing_secret")]
    Mismatch,
    /// This exact signature was accepted before.
    #[error("this request was already received once")]
    Replayed,
    /// Too many distinct requests inside one window to remember them all.
    #[error("too many requests inside the replay window; try again shortly")]
    Busy,
}

/// Checks Slack's request signatures and remembers those it accepted.
pub struct SignatureVerifier {
    key: hmac::Key,
    window_secs: u64,
    seen: Mutex<HashMap<[u8; 32], i64>>,
    capacity: usize,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("window_secs", &self.window_secs)
            .finish_non_exhaustive()
    }
}

/// The signature of `body` at `timestamp`: `v0=` and the hex HMAC-SHA256 of
/// `v0:{timestamp}:{body}` (what Slack sends; used by the sandbox driver and tests).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &base_string(timestamp, body));
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

fn base_string(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + timestamp.len() + 4);
    message.extend_from_slice(b"v0:");
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b':');
    message.extend_from_slice(body);
    message
}

fn decode_signature(value: &str) -> Option<[u8; 32]> {
    let hex = value.trim().strip_prefix("v0=")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut tag = [0u8; 32];
    for (byte, pair) in tag.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(tag)
}

impl SignatureVerifier {
    /// A verifier for `secret`, refusing requests signed more than `window` away from now.
    pub fn new(secret: &[u8], window: Duration) -> Self {
        Self::with_capacity(secret, window, REPLAY_CACHE_CAPACITY)
    }

    /// As [`new`](Self::new), remembering at most `capacity` signatures.
    pub fn with_capacity(secret: &[u8], window: Duration, capacity: usize) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            window_secs: window.as_secs(),
            seen: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Verifies a request against the real clock.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(VerifyError::MissingHeader(name))
        };
        let timestamp = header(TIMESTAMP_HEADER)?;
        let signature = header(SIGNATURE_HEADER)?;
        self.verify_at(timestamp, signature, body, chrono::Utc::now().timestamp())
    }

    /// Verifies `signature` of `body` signed at `timestamp`, with `now` as the current unix
    /// time: window first, then the MAC, then the replay check.
    pub fn verify_at(
        &self,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let timestamp = timestamp.trim();
        let signed_at: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
        if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::BadTimestamp);
        }
        let age = i128::from(now) - i128::from(signed_at);
        let window = i128::from(self.window_secs);
        if age > window {
            return Err(VerifyError::Stale(self.window_secs));
        }
        if -age > window {
            return Err(VerifyError::Future(self.window_secs));
        }
        let tag = decode_signature(signature).ok_or(VerifyError::MalformedSignature)?;
        hmac::verify(&self.key, &base_string(timestamp, body), &tag)
            .map_err(|_| VerifyError::Mismatch)?;
        self.remember(
            tag,
            signed_at.saturating_add(i64::try_from(self.window_secs).unwrap_or(300)),
            now,
        )
    }

    /// Records an accepted signature until `expires_at`; refuses one seen before.
    fn remember(&self, tag: [u8; 32], expires_at: i64, now: i64) -> Result<(), VerifyError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(&tag).is_some_and(|expiry| *expiry >= now) {
            return Err(VerifyError::Replayed);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, expiry| *expiry >= now);
            if seen.len() >= self.capacity {
                return Err(VerifyError::Busy);
            }
        }
        seen.insert(tag, expires_at);
        Ok(())
    }

    /// How many signatures are remembered now.
    pub fn remembered(&self) -> usize {
        self.seen.lock().map(|seen| seen.len()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXPECTED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn verifier() -> SignatureVerifier {
        SignatureVerifier::new(SECRET.as_bytes(), Duration::from_secs(300))
    }

    #[test]
    fn the_official_vector_signs_and_verifies_with_a_fixed_clock() {
        assert_eq!(
            sign(SECRET.as_bytes(), TIMESTAMP, BODY.as_bytes()),
            EXPECTED
        );
        let now: i64 = 1_531_420_618;
        assert_eq!(
            verifier().verify_at(TIMESTAMP, EXPECTED, BODY.as_bytes(), now),
            Ok(())
        );
    }

    #[test]
    fn the_official_vector_is_stale_with_the_real_clock() {
        let mut headers = HeaderMap::new();
        headers.insert(TIMESTAMP_HEADER, TIMESTAMP.parse().expect("header"));
        headers.insert(SIGNATURE_HEADER, EXPECTED.parse().expect("header"));
        assert_eq!(
            verifier().verify(&headers, BODY.as_bytes()),
            Err(VerifyError::Stale(300))
        );
    }

    #[test]
    fn one_signature_is_accepted_once() {
        let verifier = verifier();
        let now = 1_531_420_700;
        verifier
            .verify_at(TIMESTAMP, EXPECTED, BODY.as_bytes(), now)
            .expect("first");
        assert_eq!(
            verifier.verify_at(TIMESTAMP, EXPECTED, BODY.as_bytes(), now),
            Err(VerifyError::Replayed)
        );
    }

    #[test]
    fn window_edges_body_and_format_are_checked() {
        let verifier = verifier();
        let signed = 1_700_000_000_i64;
        let ts = signed.to_string();
        let good = sign(SECRET.as_bytes(), &ts, b"a=1");
        assert_eq!(
            verifier.verify_at(&ts, &good, b"a=1", signed + 301),
            Err(VerifyError::Stale(300))
        );
        assert_eq!(
            verifier.verify_at(&ts, &good, b"a=1", signed - 301),
            Err(VerifyError::Future(300))
        );
        assert_eq!(
            verifier.verify_at(&ts, &good, b"a=2", signed),
            Err(VerifyError::Mismatch)
        );
        let upper = good.to_ascii_uppercase().replacen("V0=", "v0=", 1);
        assert_eq!(
            verifier.verify_at(&ts, &upper, b"a=1", signed),
            Ok(()),
            "hex digits in any case"
        );
        for bad in ["", "v1=00", "v0=zz", &good[..good.len() - 1]] {
            assert_eq!(
                verifier.verify_at(&ts, bad, b"a=1", signed),
                Err(VerifyError::MalformedSignature),
                "{bad:?}"
            );
        }
        for bad in ["", "soon", "-5", "+1700000000", "1e9"] {
            assert_eq!(
                verifier.verify_at(bad, &good, b"a=1", signed),
                Err(VerifyError::BadTimestamp),
                "{bad:?}"
            );
        }
        let other_secret = sign(b"another-signing-secret", &ts, b"a=1");
        assert_eq!(
            verifier.verify_at(&ts, &other_secret, b"a=1", signed),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_expired_signatures() {
        let verifier =
            SignatureVerifier::with_capacity(SECRET.as_bytes(), Duration::from_secs(300), 2);
        let at = |t: i64, body: &[u8]| {
            let ts = t.to_string();
            let sig = sign(SECRET.as_bytes(), &ts, body);
            verifier.verify_at(&ts, &sig, body, t)
        };
        assert_eq!(at(1_000, b"1"), Ok(()));
        assert_eq!(at(1_001, b"2"), Ok(()));
        assert_eq!(
            at(1_002, b"3"),
            Err(VerifyError::Busy),
            "full inside the window"
        );
        assert_eq!(at(1_400, b"4"), Ok(()), "expired entries make room");
        assert!(verifier.remembered() <= 2);
    }
}
