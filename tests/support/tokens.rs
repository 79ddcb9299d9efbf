//! Tokens signed with the sandbox's throw-away Entra key (or forged), to test what the bot
//! refuses.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// The sandbox's signing key (sandbox only; it protects nothing).
const SANDBOX_KEY_PEM: &str = include_str!("../../src/sandbox/sandbox-signing-key.pem");
/// Its key id as the sandbox's JWKS publishes it.
pub const SANDBOX_KID: &str = "KChIFb-rQW68hfrqC4WxH1zcSjw";

/// The claims of a JWT (unverified).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

/// `claims` signed RS256 with the sandbox key, as the sandbox's Entra signs.
pub fn sandbox_signed(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(SANDBOX_KID.to_owned());
    let key = EncodingKey::from_rsa_pem(SANDBOX_KEY_PEM.as_bytes()).expect("sandbox key");
    jsonwebtoken::encode(&header, claims, &key).expect("signed")
}

/// `claims` signed HS256 with `secret` (a confused-algorithm forgery), sandbox key id.
pub fn hs256_signed(claims: &Value, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(SANDBOX_KID.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("signed")
}

/// An unsigned token (`alg: none`) with the sandbox key id.
pub fn unsigned(claims: &Value) -> String {
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": SANDBOX_KID});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// `token` with its signature's last character changed.
pub fn with_forged_signature(token: &str) -> String {
    let mut forged = token.to_owned();
    let last = forged.pop().expect("not empty");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    forged
}
