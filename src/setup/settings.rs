//! The `[setup]` configuration section.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The `[setup]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupSettings {
    /// Key for the secrets the wizard stores: base64 of 32 random bytes (AES-256-GCM).
    /// Required to run `setup`; a present but malformed or weak key stops start-up.
    #[serde(default, skip_serializing)]
    pub encryption_key: Option<SecretString>,
    /// A setup idle this long expires (its secrets are dropped).
    #[serde(default = "default_idle_timeout_minutes")]
    pub idle_timeout_minutes: u64,
    /// A step whose verification has been running this long is offered again (after a crash).
    #[serde(default = "default_busy_timeout_secs")]
    pub busy_timeout_secs: u64,
    /// Prefix of the display names of the Entra apps the wizard creates.
    #[serde(default = "default_app_name_prefix")]
    pub app_name_prefix: String,
    /// The Repository ID the Microsoft 365 admin enters (default: the ServiceNow instance
    /// name, e.g. `dev12345`).
    #[serde(default)]
    pub repository_id: Option<String>,
}

fn default_idle_timeout_minutes() -> u64 {
    24 * 60
}
fn default_busy_timeout_secs() -> u64 {
    120
}
fn default_app_name_prefix() -> String {
    "Microsoft 365 support".to_owned()
}

impl Default for SetupSettings {
    fn default() -> Self {
        Self {
            encryption_key: None,
            idle_timeout_minutes: default_idle_timeout_minutes(),
            busy_timeout_secs: default_busy_timeout_secs(),
            app_name_prefix: default_app_name_prefix(),
            repository_id: None,
        }
    }
}

impl SetupSettings {
    /// Start-up validation: a configured key must be usable (a missing key only disables
    /// `setup`, with a clear card).
    pub fn validate(&self) -> Result<(), String> {
        let configured = self
            .encryption_key
            .as_ref()
            .filter(|k| !secrecy::ExposeSecret::expose_secret(*k).trim().is_empty());
        if configured.is_some() {
            super::crypto::check_key(configured).map_err(|e| e.to_string())?;
        }
        if self.idle_timeout_minutes == 0 {
            return Err("setup.idle_timeout_minutes must be at least 1".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    const BASE: &str = "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\n[server]\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn a_weak_or_malformed_key_stops_start_up_and_a_missing_one_does_not() {
        let weak = format!(
            "{BASE}[setup]\nencryption_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n"
        );
        let err = Settings::from_toml_str(&weak).expect_err("weak key refused");
        assert!(err.to_string().contains("weak"), "{err}");
        let short = format!("{BASE}[setup]\nencryption_key = \"c2hvcnQ=\"\n");
        assert!(Settings::from_toml_str(&short).is_err());
        let empty = format!("{BASE}[setup]\nencryption_key = \"\"\n");
        Settings::from_toml_str(&empty).expect("an empty key only disables setup");
        let settings = Settings::from_toml_str(BASE).expect("no key");
        assert_eq!(settings.setup.idle_timeout_minutes, 24 * 60);
    }
}
