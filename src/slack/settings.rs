//! The `[slack]` section: workspace credentials, transport and the identity rule.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

/// How Slack reaches the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Slack POSTs to `/slack/commands`, `/slack/interactions` and `/slack/events`, signed with
    /// the signing secret (needs a public HTTPS URL).
    Http,
    /// The bot opens an outbound WebSocket with the app-level token (no inbound port).
    Socket,
}

/// Which address of the Entra account signed in by `link-account` must equal the Slack
/// profile e-mail (Slack knows no Entra object id, so the e-mail ties the two together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmailMatch {
    /// The account's `email` claim or its UPN (`preferred_username`).
    EmailOrUpn,
    /// The account's UPN only (the e-mail claim can be edited by users in some tenants).
    UpnOnly,
}

impl EmailMatch {
    /// True when the Slack profile e-mail is the signed-in account's address under this rule
    /// (compared without case; an empty address never matches).
    pub fn matches(self, slack_email: &str, email: Option<&str>, upn: Option<&str>) -> bool {
        let slack_email = slack_email.trim();
        if slack_email.is_empty() {
            return false;
        }
        let same = |candidate: Option<&str>| {
            candidate.is_some_and(|value| value.trim().eq_ignore_ascii_case(slack_email))
        };
        match self {
            Self::EmailOrUpn => same(email) || same(upn),
            Self::UpnOnly => same(upn),
        }
    }
}

/// The Slack app this bot is installed as (one workspace).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// Serve Slack at all.
    #[serde(default)]
    pub enabled: bool,
    /// Bot token (`xoxb-…`), for the Web API.
    #[serde(default, skip_serializing)]
    pub bot_token: Option<SecretString>,
    /// Signing secret (Basic Information > App Credentials), for HTTP requests from Slack.
    #[serde(default, skip_serializing)]
    pub signing_secret: Option<SecretString>,
    /// App-level token (`xapp-…`, scope `connections:write`), for Socket Mode.
    #[serde(default, skip_serializing)]
    pub app_token: Option<SecretString>,
    /// `http` (request URLs) or `socket` (Socket Mode).
    #[serde(default = "default_transport")]
    pub transport: Transport,
    /// The rule tying a `link-account` sign-in to the Slack user.
    #[serde(default = "default_email_match")]
    pub email_match: EmailMatch,
    /// Web API base URL (with the trailing `/api/`).
    #[serde(default = "default_api_url")]
    pub api_url: Url,
    /// Requests signed longer ago (or further ahead) than this are refused, in seconds.
    #[serde(default = "default_signature_window_secs")]
    pub signature_window_secs: u64,
    /// Workspace id (`T…`) of `bot_token`; when unset it is asked once with `auth.test` (needed
    /// only with installs into more workspaces, to tell the configured workspace apart).
    #[serde(default)]
    pub team_id: Option<String>,
    /// Client ID (Basic Information > App Credentials), for installs into more workspaces
    /// through `/slack/install` (OAuth v2); unset: only the configured workspace.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Client secret, with `client_id`.
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretString>,
    /// Slack's authorize page (OAuth v2).
    #[serde(default = "default_authorize_url")]
    pub authorize_url: Url,
    /// How long an install link (`state`) stays valid, in seconds.
    #[serde(default = "default_install_state_ttl_secs")]
    pub install_state_ttl_secs: u64,
}

fn default_transport() -> Transport {
    Transport::Http
}
fn default_email_match() -> EmailMatch {
    EmailMatch::EmailOrUpn
}
fn default_api_url() -> Url {
    Url::parse("https://slack.com/api/").expect("static URL")
}
fn default_signature_window_secs() -> u64 {
    300
}
fn default_authorize_url() -> Url {
    Url::parse("https://slack.com/oauth/v2/authorize").expect("static URL")
}
fn default_install_state_ttl_secs() -> u64 {
    600
}

impl Default for SlackSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            bot_token: None,
            signing_secret: None,
            app_token: None,
            transport: default_transport(),
            email_match: default_email_match(),
            api_url: default_api_url(),
            signature_window_secs: default_signature_window_secs(),
            team_id: None,
            client_id: None,
            client_secret: None,
            authorize_url: default_authorize_url(),
            install_state_ttl_secs: default_install_state_ttl_secs(),
        }
    }
}

fn present(secret: Option<&SecretString>) -> Option<&str> {
    secret
        .map(|s| s.expose_secret().trim())
        .filter(|s| !s.is_empty())
}

impl SlackSettings {
    /// Checks the section; the error names the key and says what to do.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !crate::config::is_https_or_loopback(&self.api_url) {
            return Err((
                "slack.api_url",
                format!(
                    "{} must be https:// (plain http only for loopback hosts): the bot token would travel in clear",
                    self.api_url
                ),
            ));
        }
        if !self.api_url.path().ends_with('/') {
            return Err((
                "slack.api_url",
                "must end with a slash, e.g. https://slack.com/api/".to_owned(),
            ));
        }
        if !(30..=300).contains(&self.signature_window_secs) {
            return Err((
                "slack.signature_window_secs",
                "must be between 30 and 300 seconds (Slack's replay window is 300)".to_owned(),
            ));
        }
        self.validate_install()?;
        if !self.enabled {
            return Ok(());
        }
        match present(self.bot_token.as_ref()) {
            Some(token) if token.starts_with("xoxb-") => {}
            Some(_) => {
                return Err((
                    "slack.bot_token",
                    "must be a bot token (xoxb-…), from OAuth & Permissions in the Slack app's settings".to_owned(),
                ));
            }
            None => {
                return Err((
                    "slack.bot_token",
                    "set the bot token (xoxb-…) with M365BOT_SLACK__BOT_TOKEN, or set slack.enabled = false".to_owned(),
                ));
            }
        }
        match self.transport {
            Transport::Http => match present(self.signing_secret.as_ref()) {
                Some(secret) if secret.len() >= 16 => Ok(()),
                Some(_) => Err((
                    "slack.signing_secret",
                    "is shorter than 16 characters; copy the whole signing secret from Basic Information > App Credentials".to_owned(),
                )),
                None => Err((
                    "slack.signing_secret",
                    "set the signing secret (Basic Information > App Credentials) with M365BOT_SLACK__SIGNING_SECRET: every request from Slack is checked with it".to_owned(),
                )),
            },
            Transport::Socket => match present(self.app_token.as_ref()) {
                Some(token) if token.starts_with("xapp-") => Ok(()),
                _ => Err((
                    "slack.app_token",
                    "Socket Mode needs an app-level token (xapp-…, scope connections:write, Basic Information > App-Level Tokens) in M365BOT_SLACK__APP_TOKEN".to_owned(),
                )),
            },
        }
    }
}

impl SlackSettings {
    /// True when installs into more workspaces are configured (`client_id` and `client_secret`).
    pub fn installs_enabled(&self) -> bool {
        self.enabled && self.client_id.is_some() && present(self.client_secret.as_ref()).is_some()
    }

    /// Checks the OAuth v2 install settings: both credentials or neither, a safe authorize
    /// URL and a sensible state lifetime.
    fn validate_install(&self) -> Result<(), (&'static str, String)> {
        if !crate::config::is_https_or_loopback(&self.authorize_url) {
            return Err((
                "slack.authorize_url",
                format!(
                    "{} must be https:// (plain http only for loopback hosts)",
                    self.authorize_url
                ),
            ));
        }
        if !(60..=3600).contains(&self.install_state_ttl_secs) {
            return Err((
                "slack.install_state_ttl_secs",
                "must be between 60 and 3600 seconds".to_owned(),
            ));
        }
        if let Some(team) = self.team_id.as_deref()
            && !(team.len() >= 2
                && team.starts_with('T')
                && team
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
        {
            return Err((
                "slack.team_id",
                "must be the workspace id of slack.bot_token (T…, as auth.test reports it), or unset".to_owned(),
            ));
        }
        let client_id = self.client_id.as_deref().map(str::trim);
        match (client_id, present(self.client_secret.as_ref())) {
            (None, None) => Ok(()),
            (Some(id), _) if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '.') => Err((
                "slack.client_id",
                "must be the app's Client ID as Slack shows it (digits and a dot, e.g. 1234567890.1234567890), from Basic Information > App Credentials".to_owned(),
            )),
            (Some(_), None) => Err((
                "slack.client_secret",
                "set the client secret (Basic Information > App Credentials) with M365BOT_SLACK__CLIENT_SECRET, or remove slack.client_id".to_owned(),
            )),
            (None, Some(_)) => Err((
                "slack.client_id",
                "set the Client ID beside slack.client_secret (Basic Information > App Credentials), or remove the secret".to_owned(),
            )),
            (Some(_), Some(secret)) if secret.len() < 16 => Err((
                "slack.client_secret",
                "is shorter than 16 characters; copy the whole client secret from Basic Information > App Credentials".to_owned(),
            )),
            (Some(_), Some(_)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:3978\"\n[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\n";

    fn load(slack: &str) -> Result<Settings, String> {
        Settings::from_toml_str(&format!("{BASE}[slack]\n{slack}")).map_err(|e| e.to_string())
    }

    #[test]
    fn each_missing_or_wrong_value_names_its_key() {
        let secret = "signing_secret = \"0123456789abcdef0123\"\n";
        let cases = [
            ("enabled = true\n".to_owned(), "slack.bot_token"),
            (
                format!("enabled = true\nbot_token = \"xoxp-user\"\n{secret}"),
                "slack.bot_token",
            ),
            (
                "enabled = true\nbot_token = \"xoxb-1\"\n".to_owned(),
                "slack.signing_secret",
            ),
            (
                "enabled = true\nbot_token = \"xoxb-1\"\nsigning_secret = \"short\"\n".to_owned(),
                "slack.signing_secret",
            ),
            (
                "enabled = true\nbot_token = \"xoxb-1\"\ntransport = \"socket\"\n".to_owned(),
                "slack.app_token",
            ),
            (
                "api_url = \"http://slack.example.com/api/\"\n".to_owned(),
                "slack.api_url",
            ),
            (
                "api_url = \"https://slack.com/api\"\n".to_owned(),
                "slack.api_url",
            ),
            (
                "signature_window_secs = 3600\n".to_owned(),
                "slack.signature_window_secs",
            ),
        ];
        for (toml, key) in cases {
            let err = load(&toml).expect_err(&toml);
            assert!(err.contains(key), "{toml}: {err}");
        }
        let http =
            load(&format!("enabled = true\nbot_token = \"xoxb-1\"\n{secret}")).expect("valid");
        assert!(http.slack.enabled);
        assert!(
            !format!("{http:?}").contains("0123456789abcdef0123"),
            "secrets stay out of Debug"
        );
        load("enabled = true\nbot_token = \"xoxb-1\"\ntransport = \"socket\"\napp_token = \"xapp-1\"\n")
            .expect("socket with an app token");
        load("").expect("off by default needs nothing");
    }

    #[test]
    fn install_credentials_come_in_pairs_and_need_the_encryption_key() {
        let base =
            "enabled = true\nbot_token = \"xoxb-1\"\nsigning_secret = \"0123456789abcdef0123\"\n";
        let cases = [
            ("client_id = \"123.456\"\n", "slack.client_secret"),
            (
                "client_secret = \"0123456789abcdef0123\"\n",
                "slack.client_id",
            ),
            (
                "client_id = \"not an id\"\nclient_secret = \"0123456789abcdef0123\"\n",
                "slack.client_id",
            ),
            (
                "client_id = \"123.456\"\nclient_secret = \"short\"\n",
                "slack.client_secret",
            ),
            ("team_id = \"contoso\"\n", "slack.team_id"),
            (
                "authorize_url = \"http://slack.example.com/oauth\"\n",
                "slack.authorize_url",
            ),
            (
                "install_state_ttl_secs = 5\n",
                "slack.install_state_ttl_secs",
            ),
            // Both credentials, but no setup.encryption_key to seal the tokens with.
            (
                "client_id = \"123.456\"\nclient_secret = \"0123456789abcdef0123\"\n",
                "setup.encryption_key",
            ),
        ];
        for (extra, key) in cases {
            let toml = format!("{base}{extra}");
            let err = load(&toml).expect_err(&toml);
            assert!(err.contains(key), "{toml}: {err}");
        }
        let key = crate::setup::crypto::generate_key().expect("key");
        let valid = Settings::from_toml_str(&format!(
            "{BASE}[setup]\nencryption_key = \"{key}\"\n[slack]\n{base}client_id = \"123.456\"\nclient_secret = \"0123456789abcdef0123\"\nteam_id = \"T0ABC\"\n"
        ))
        .expect("valid");
        assert!(valid.slack.installs_enabled());
        assert!(!format!("{valid:?}").contains("0123456789abcdef0123"));
    }

    #[test]
    fn the_email_rule_compares_without_case_and_never_matches_empty() {
        let rule = EmailMatch::EmailOrUpn;
        assert!(rule.matches("Jane@Contoso.com", Some("jane@contoso.com"), None));
        assert!(rule.matches("jane@contoso.com", None, Some("JANE@contoso.com")));
        assert!(!rule.matches("jane@contoso.com", Some("john@contoso.com"), None));
        assert!(!rule.matches("", Some(""), Some("")));
        let upn_only = EmailMatch::UpnOnly;
        assert!(!upn_only.matches("jane@contoso.com", Some("jane@contoso.com"), None));
        assert!(upn_only.matches("jane@contoso.com", None, Some("jane@contoso.com")));
    }
}
