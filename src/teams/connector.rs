//! Bot Connector REST client (bot → channel): token cache, reply, send, update, create.
//!
//! Interface only; the full client is implemented in this file.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::config::Settings;
use crate::error::RetryKind;
use crate::metrics::Metrics;

/// A failed connector call, classified once.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The serviceUrl host is not allow-listed; no token was sent.
    #[error("serviceUrl host {0} is not allowed")]
    HostNotAllowed(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl ConnectorError {
    /// How a retrier should treat this failure.
    pub fn retry_kind(&self) -> RetryKind {
        RetryKind::Permanent
    }
}

/// `{"id": …}` returned by send, reply and update.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceResponse {
    /// The activity id.
    #[serde(default)]
    pub id: String,
}

/// Sends activities to Teams.
pub struct ConnectorClient {
    _settings: Settings,
    _http: reqwest::Client,
    _metrics: Arc<Metrics>,
}

impl ConnectorClient {
    /// Creates the client.
    pub fn new(settings: &Settings, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            _settings: settings.clone(),
            _http: http,
            _metrics: metrics,
        }
    }

    /// `POST /v3/conversations/{conversation}/activities/{activity}`.
    pub async fn reply(
        &self,
        _service_url: &str,
        _conversation_id: &str,
        _activity_id: &str,
        _activity: &Value,
    ) -> Result<ResourceResponse, ConnectorError> {
        Err(ConnectorError::Other("not implemented".to_owned()))
    }

    /// `POST /v3/conversations/{conversation}/activities`.
    pub async fn send(
        &self,
        _service_url: &str,
        _conversation_id: &str,
        _activity: &Value,
    ) -> Result<ResourceResponse, ConnectorError> {
        Err(ConnectorError::Other("not implemented".to_owned()))
    }
}
