//! Card rendering: handlebars templates in `cards/`, JSON-string escaping, parsed back to JSON.
//!
//! Interface only; the renderer is implemented in this file.

use serde_json::Value;

/// A template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// Unknown template name.
    #[error("no card template named {0}")]
    UnknownTemplate(String),
}

/// Renders the templates compiled into the binary.
pub struct CardRenderer {}

impl CardRenderer {
    /// Loads every template.
    pub fn new() -> Result<Self, CardError> {
        Ok(Self {})
    }

    /// Renders `name` (e.g. `teams/help`) with `data` into a JSON value.
    pub fn render(&self, name: &str, _data: &Value) -> Result<Value, CardError> {
        Err(CardError::UnknownTemplate(name.to_owned()))
    }
}
