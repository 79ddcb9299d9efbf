//! Secrets at rest: AES-256-GCM with a random 96-bit nonce per sealing, the setup id as
//! associated data (a sealed blob moved to another row does not open), base64 on the wire.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};

/// The encryption key is missing or unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// `setup.encryption_key` is not set.
    #[error(
        "setup.encryption_key is not set: the wizard stores client secrets encrypted and needs a key (32 random bytes, base64; e.g. `openssl rand -base64 32`, then M365BOT_SETUP__ENCRYPTION_KEY)"
    )]
    Missing,
    /// Not base64 or not 32 bytes.
    #[error("setup.encryption_key must be the base64 encoding of exactly 32 random bytes")]
    Malformed,
    /// 32 bytes but obviously not random (e.g. all equal).
    #[error(
        "setup.encryption_key is weak (too few distinct bytes); generate one with `openssl rand -base64 32`"
    )]
    Weak,
}

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The blob is not ours, was changed, or another key sealed it.
    #[error("the stored secrets cannot be decrypted (wrong setup.encryption_key, or tampered)")]
    Open,
    /// The system random generator failed.
    #[error("no randomness available for encryption")]
    Random,
}

/// An AES-256-GCM key for the wizard's secrets.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// Checks a configured key: base64 of 32 bytes with at least 16 distinct byte values.
pub fn check_key(key: Option<&SecretString>) -> Result<[u8; 32], KeyError> {
    let text = key.map(|k| k.expose_secret().trim()).unwrap_or_default();
    if text.is_empty() {
        return Err(KeyError::Missing);
    }
    let bytes = STANDARD.decode(text).map_err(|_| KeyError::Malformed)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
    let mut seen = [false; 256];
    for b in bytes {
        seen[usize::from(b)] = true;
    }
    if seen.iter().filter(|s| **s).count() < 16 {
        return Err(KeyError::Weak);
    }
    Ok(bytes)
}

/// A fresh random key, base64 (for the sandbox and for documentation).
pub fn generate_key() -> Result<String, SealError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SealError::Random)?;
    Ok(STANDARD.encode(bytes))
}

/// The sandbox's setup key: kept in `<sqlite file>.setup-key` beside the sandbox database (so
/// a restarted sandbox still opens the secrets it stored), created on first use; a fresh key
/// per run for other databases.
pub fn sandbox_key(database_url: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|p| !p.is_empty() && !p.contains(":memory:"));
    let Some(path) = path else {
        return generate_key().context("sandbox setup key");
    };
    let key_path = std::path::PathBuf::from(format!("{path}.setup-key"));
    if let Ok(text) = std::fs::read_to_string(&key_path) {
        let key = SecretString::from(text.trim().to_owned());
        if check_key(Some(&key)).is_ok() {
            return Ok(key.expose_secret().to_owned());
        }
    }
    let key = generate_key().context("sandbox setup key")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&key_path)
        .with_context(|| format!("cannot write the sandbox setup key {}", key_path.display()))?;
    std::io::Write::write_all(&mut file, key.as_bytes())
        .with_context(|| format!("cannot write the sandbox setup key {}", key_path.display()))?;
    Ok(key)
}

impl SecretBox {
    /// The box of a configured key.
    pub fn new(key: Option<&SecretString>) -> Result<Self, KeyError> {
        let bytes = check_key(key)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::Malformed)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypts `plain`, bound to `context` (the setup id): `base64(nonce || ciphertext || tag)`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buffer = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(STANDARD.encode(out))
    }

    /// Decrypts what [`Self::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = STANDARD
            .decode(sealed.trim())
            .map_err(|_| SealError::Open)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Open);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buffer = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretString {
        SecretString::from(generate_key().expect("random"))
    }

    #[test]
    fn round_trip_is_bound_to_the_context() {
        let k = key();
        let sealed_box = SecretBox::new(Some(&k)).expect("key");
        let sealed = sealed_box.seal("setup-1", b"hunter2").expect("seal");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            sealed_box.open("setup-1", &sealed).expect("open"),
            b"hunter2"
        );
        assert_eq!(sealed_box.open("setup-2", &sealed), Err(SealError::Open));
        let other = SecretBox::new(Some(&key())).expect("key");
        assert_eq!(other.open("setup-1", &sealed), Err(SealError::Open));
        assert_eq!(sealed_box.open("setup-1", "AAAA"), Err(SealError::Open));
        // A fresh nonce every time.
        assert_ne!(
            sealed,
            sealed_box.seal("setup-1", b"hunter2").expect("seal")
        );
    }

    #[test]
    fn missing_malformed_and_weak_keys_are_refused() {
        assert_eq!(check_key(None).err(), Some(KeyError::Missing));
        let short = SecretString::from(STANDARD.encode([7u8; 16]));
        assert_eq!(check_key(Some(&short)).err(), Some(KeyError::Malformed));
        let zeros = SecretString::from(STANDARD.encode([0u8; 32]));
        assert_eq!(check_key(Some(&zeros)).err(), Some(KeyError::Weak));
        let junk = SecretString::from("not base64!");
        assert_eq!(check_key(Some(&junk)).err(), Some(KeyError::Malformed));
        assert!(check_key(Some(&key())).is_ok());
    }
}
