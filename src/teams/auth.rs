//! Inbound Bot Framework token validation (channel → bot).
//!
//! Interface only; the full validation is implemented in this file.

use crate::config::BotSettings;

/// Why a request was refused; every variant answers 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    MissingToken,
    /// The token failed a check; the text names which.
    #[error("{0}")]
    Rejected(String),
    /// Signing keys could not be fetched.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// Claims of a token that passed signature, algorithm, issuer, audience and lifetime checks.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The `serviceurl` claim.
    pub service_url: Option<String>,
    /// Endorsements of the key that signed the token.
    pub endorsements: Vec<String>,
}

impl VerifiedToken {
    /// Checks the token against the activity it came with (`serviceurl`, endorsements).
    pub fn check_activity(&self, _service_url: &str, _channel_id: &str) -> Result<(), AuthError> {
        Err(AuthError::Rejected("not implemented".to_owned()))
    }
}

/// Validates inbound tokens against the configured OpenID metadata, caching the keys.
pub struct BotAuthenticator {
    _settings: BotSettings,
    _http: reqwest::Client,
}

impl BotAuthenticator {
    /// Creates the validator; keys are fetched on first use.
    pub fn new(settings: &BotSettings, http: reqwest::Client) -> Self {
        Self {
            _settings: settings.clone(),
            _http: http,
        }
    }

    /// Validates the `Authorization` header value.
    pub async fn verify(&self, _authorization: Option<&str>) -> Result<VerifiedToken, AuthError> {
        Err(AuthError::MissingToken)
    }
}
