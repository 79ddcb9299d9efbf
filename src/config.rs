//! Settings: code defaults, then an optional TOML file, then environment variables.
//!
//! Environment variables use the prefix `M365BOT_` and `__` between levels
//! (`M365BOT_BOT__APP_ID`). The Bot Framework names `MicrosoftAppId`, `MicrosoftAppPassword`
//! and `MicrosoftAppTenantId` are accepted as well.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ids::is_guid;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

/// Everything the bot reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP listener.
    #[serde(default)]
    pub server: ServerSettings,
    /// Storage.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Bot Framework (Teams) identity and endpoints.
    #[serde(default)]
    pub bot: BotSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// The bot's own access to ServiceNow.
    #[serde(default)]
    pub servicenow: ServiceNowSettings,
    /// Entra ID and Microsoft Graph endpoints and the bot's Graph credentials.
    #[serde(default)]
    pub entra: EntraSettings,
    /// The integration to verify (`doctor`), when not read from the database.
    #[serde(default)]
    pub integration: Option<crate::integration::IntegrationSpec>,
    /// The setup wizard.
    #[serde(default)]
    pub setup: crate::setup::SetupSettings,
    /// Account linking and role enablement.
    #[serde(default)]
    pub link: crate::link::LinkSettings,
    /// Case-status and service-health notifications.
    #[serde(default)]
    pub notifications: crate::notify::NotifySettings,
    /// The Slack app.
    #[serde(default)]
    pub slack: crate::slack::SlackSettings,
    /// Watching the trust: the scheduled doctor, secret expiry and alerts.
    #[serde(default)]
    pub watch: crate::integration::watch::WatchSettings,
}

/// The bot's own ServiceNow account, used to set up and verify the integration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowSettings {
    /// Instance base URL, e.g. `https://dev12345.service-now.com`.
    #[serde(default)]
    pub instance_url: Option<Url>,
    /// User name for Basic authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for Basic authentication.
    #[serde(default, skip_serializing)]
    pub password: Option<SecretString>,
    /// OAuth client id (instead of Basic), for `/oauth_token.do` client credentials.
    #[serde(default)]
    pub client_id: Option<String>,
    /// OAuth client secret.
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretString>,
    /// Scope of the Microsoft 365 support app.
    #[serde(default = "default_app_scope")]
    pub app_scope: String,
    /// Role that may run `setup`, `doctor` and `grant`.
    #[serde(default = "default_admin_role")]
    pub admin_role: String,
    /// While no integration exists (no completed setup, no `[integration]`), the pollers,
    /// `status` and mirroring use this account instead of the integration user. Never used once
    /// an integration exists.
    #[serde(default = "default_true")]
    pub runtime_admin_fallback: bool,
}

/// Entra ID and Microsoft Graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraSettings {
    /// Entra authority base URL.
    #[serde(default = "default_authority_url")]
    pub authority_url: Url,
    /// Microsoft Graph base URL (with the version segment).
    #[serde(default = "default_graph_url")]
    pub graph_url: Url,
    /// Client id of the app the bot uses for Graph (defaults to `bot.app_id`).
    #[serde(default)]
    pub graph_client_id: Option<String>,
    /// Its secret (defaults to `bot.app_password`).
    #[serde(default, skip_serializing)]
    pub graph_client_secret: Option<SecretString>,
}

impl Default for ServiceNowSettings {
    fn default() -> Self {
        Self {
            instance_url: None,
            username: None,
            password: None,
            client_id: None,
            client_secret: None,
            app_scope: default_app_scope(),
            admin_role: default_admin_role(),
            runtime_admin_fallback: true,
        }
    }
}

impl Default for EntraSettings {
    fn default() -> Self {
        Self {
            authority_url: default_authority_url(),
            graph_url: default_graph_url(),
            graph_client_id: None,
            graph_client_secret: None,
        }
    }
}

fn default_app_scope() -> String {
    "x_mioms_m365_assis".to_owned()
}
fn default_true() -> bool {
    true
}

fn default_admin_role() -> String {
    "admin".to_owned()
}
fn default_authority_url() -> Url {
    Url::parse("https://login.microsoftonline.com/").expect("static URL")
}
fn default_graph_url() -> Url {
    Url::parse("https://graph.microsoft.com/v1.0/").expect("static URL")
}

/// HTTP listener settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Public HTTPS base URL of the bot (used in the manifest and in sign-in links).
    #[serde(default = "default_public_url")]
    pub public_url: Url,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A separate, internal address for `/metrics`; when set, the public listener does not
    /// serve it.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Storage settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` (default) or `postgres://user:pass@host/db`.
    #[serde(default = "default_database_url")]
    pub url: String,
    /// Largest number of pooled connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

/// How inbound Bot Framework requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Full Bot Framework JWT validation (production).
    BotFramework,
    /// No inbound token check, for the Microsoft 365 Agents Playground. Refused unless the
    /// listener is on loopback.
    InsecureLocal,
}

/// Bot Framework identity and endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotSettings {
    /// The bot's Microsoft App ID (GUID).
    #[serde(default)]
    pub app_id: String,
    /// The bot's client secret.
    #[serde(default, skip_serializing)]
    pub app_password: Option<SecretString>,
    /// The Entra tenant the bot serves; activities from other tenants are refused.
    #[serde(default)]
    pub tenant_id: String,
    /// Inbound authentication mode.
    #[serde(default = "default_auth_mode")]
    pub auth_mode: AuthMode,
    /// OpenID metadata document for channel → bot tokens.
    #[serde(default = "default_openid_metadata_url")]
    pub openid_metadata_url: Url,
    /// Expected `iss` of channel → bot tokens.
    #[serde(default = "default_token_issuer")]
    pub token_issuer: String,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    #[serde(default = "default_clock_skew_secs")]
    pub clock_skew_secs: u64,
    /// Token endpoint for bot → channel calls; `{tenant}` is replaced by `tenant_id`.
    #[serde(default = "default_outbound_token_url")]
    pub outbound_token_url: String,
    /// Scope requested for bot → channel calls.
    #[serde(default = "default_outbound_scope")]
    pub outbound_scope: String,
    /// Hosts the bot may send its bearer token to (`*.example.com` matches sub-domains).
    #[serde(default = "default_allowed_service_url_hosts")]
    pub allowed_service_url_hosts: Vec<String>,
    /// Extra PEM file of CA certificates to trust for outbound HTTPS.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Output format.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info,m365bot=debug`.
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 3978))
}
fn default_public_url() -> Url {
    Url::parse("https://m365bot.example.com/").expect("static URL")
}
fn default_max_body_bytes() -> usize {
    256 * 1024
}
fn default_database_url() -> String {
    "sqlite://m365bot.db?mode=rwc".to_owned()
}
fn default_max_connections() -> u32 {
    8
}
fn default_auth_mode() -> AuthMode {
    AuthMode::BotFramework
}
fn default_openid_metadata_url() -> Url {
    Url::parse("https://login.botframework.com/v1/.well-known/openidconfiguration")
        .expect("static URL")
}
fn default_token_issuer() -> String {
    "https://api.botframework.com".to_owned()
}
fn default_clock_skew_secs() -> u64 {
    300
}
fn default_outbound_token_url() -> String {
    "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token".to_owned()
}
fn default_outbound_scope() -> String {
    "https://api.botframework.com/.default".to_owned()
}
fn default_allowed_service_url_hosts() -> Vec<String> {
    [
        "smba.trafficmanager.net",
        "*.botframework.com",
        "smba.infra.gcc.teams.microsoft.com",
        "smba.infra.gov.teams.microsoft.us",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}
fn default_log_format() -> LogFormat {
    LogFormat::Pretty
}
fn default_log_filter() -> String {
    "info".to_owned()
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: default_public_url(),
            max_body_bytes: default_max_body_bytes(),
            metrics_listen: None,
        }
    }
}
impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redacted_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A connection URL with its password (and any query, which may hold one) replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed
                .query()
                .is_some_and(|q| q.to_ascii_lowercase().contains("password"))
            {
                parsed.set_query(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable URL, not shown)".to_owned(),
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            max_connections: default_max_connections(),
        }
    }
}
impl Default for BotSettings {
    fn default() -> Self {
        Self {
            app_id: String::new(),
            app_password: None,
            tenant_id: String::new(),
            auth_mode: default_auth_mode(),
            openid_metadata_url: default_openid_metadata_url(),
            token_issuer: default_token_issuer(),
            clock_skew_secs: default_clock_skew_secs(),
            outbound_token_url: default_outbound_token_url(),
            outbound_scope: default_outbound_scope(),
            allowed_service_url_hosts: default_allowed_service_url_hosts(),
            extra_ca_file: None,
        }
    }
}
impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            filter: default_log_filter(),
        }
    }
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The sources could not be read or did not fit the expected types.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is present but unusable.
    #[error("configuration key `{key}`: {problem}")]
    Invalid {
        /// Dotted key, e.g. `bot.app_id`.
        key: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// The Bot Framework environment names accepted besides the `M365BOT_` ones.
const BOT_FRAMEWORK_ALIASES: [(&str, &str); 3] = [
    ("microsoftappid", "bot.app_id"),
    ("microsoftapppassword", "bot.app_password"),
    ("microsoftapptenantid", "bot.tenant_id"),
];

impl Settings {
    /// Loads defaults, then `config_file` if given (it must exist), then the environment.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::sources(config_file)?)
    }

    /// The configuration sources `load` merges (file, then environment), unvalidated, so that a
    /// command needing one key can read it without the whole configuration.
    pub fn sources(config_file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    problem: format!("file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        let figment = figment
            .merge(Env::raw().filter_map(|key| {
                BOT_FRAMEWORK_ALIASES
                    .iter()
                    .find(|(alias, _)| key.as_str().eq_ignore_ascii_case(alias))
                    .map(|(_, target)| (*target).into())
            }))
            .merge(
                Env::prefixed("M365BOT_")
                    .filter(|key| !is_not_a_setting(key.as_str()))
                    .split("__"),
            );
        Ok(figment)
    }

    /// The public URL's host when `server.public_url` is not configured.
    pub fn default_public_host() -> String {
        default_public_url()
            .host_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Builds settings from an explicit figment (used by `load` and by tests).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Settings for tests and the sandbox: defaults with the given overrides (a TOML string).
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if !self.database.url.starts_with("sqlite:")
            && !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        match self.bot.auth_mode {
            AuthMode::BotFramework => {
                if !is_guid(&self.bot.app_id) {
                    return Err(invalid(
                        "bot.app_id",
                        "set the bot's Microsoft App ID (a GUID) with M365BOT_BOT__APP_ID or MicrosoftAppId",
                    ));
                }
                let missing = self
                    .bot
                    .app_password
                    .as_ref()
                    .is_none_or(|p| p.expose_secret().is_empty());
                if missing {
                    return Err(invalid(
                        "bot.app_password",
                        "set the bot's client secret with M365BOT_BOT__APP_PASSWORD or MicrosoftAppPassword",
                    ));
                }
            }
            AuthMode::InsecureLocal => {
                if !self.server.listen.ip().is_loopback() {
                    return Err(invalid(
                        "bot.auth_mode",
                        "insecure-local is only allowed when server.listen is a loopback address (127.0.0.1 or ::1)",
                    ));
                }
                // A real bot password means a real bot: never run it unauthenticated.
                if self
                    .bot
                    .app_password
                    .as_ref()
                    .is_some_and(|p| !p.expose_secret().is_empty())
                {
                    return Err(invalid(
                        "bot.auth_mode",
                        "insecure-local is refused when bot.app_password is set: remove the password, or use bot-framework",
                    ));
                }
            }
        }
        let tenant_ok = match self.bot.auth_mode {
            AuthMode::BotFramework => is_guid(&self.bot.tenant_id),
            // The Agents Playground's mock tenant id is not a canonical GUID.
            AuthMode::InsecureLocal => !self.bot.tenant_id.trim().is_empty(),
        };
        if !tenant_ok {
            return Err(invalid(
                "bot.tenant_id",
                "set the Entra tenant id (a GUID) with M365BOT_BOT__TENANT_ID or MicrosoftAppTenantId",
            ));
        }
        if self.bot.allowed_service_url_hosts.is_empty() {
            return Err(invalid(
                "bot.allowed_service_url_hosts",
                "must list at least one host",
            ));
        }
        if let Some(path) = &self.bot.extra_ca_file
            && !path.is_file()
        {
            return Err(invalid(
                "bot.extra_ca_file",
                &format!("{} is not a readable file", path.display()),
            ));
        }
        let upstreams = [
            (
                "servicenow.instance_url",
                self.servicenow.instance_url.as_ref(),
            ),
            ("entra.authority_url", Some(&self.entra.authority_url)),
            ("entra.graph_url", Some(&self.entra.graph_url)),
            (
                "bot.openid_metadata_url",
                Some(&self.bot.openid_metadata_url),
            ),
        ];
        for (key, url) in upstreams {
            if let Some(url) = url
                && !is_https_or_loopback(url)
            {
                return Err(invalid(
                    key,
                    &format!(
                        "{url} must be https:// (plain http only for loopback hosts): credentials and signing keys would travel in clear"
                    ),
                ));
            }
        }
        self.setup
            .validate()
            .map_err(|problem| invalid("setup", &problem))?;
        self.slack
            .validate()
            .map_err(|(key, problem)| invalid(key, &problem))?;
        crate::slack::install::validate_settings(self)
            .map_err(|(key, problem)| invalid(key, &problem))?;
        self.watch
            .validate()
            .map_err(|(key, problem)| invalid(key, &problem))?;
        Ok(())
    }

    /// The outbound token URL with the tenant filled in.
    pub fn outbound_token_url(&self) -> String {
        self.bot
            .outbound_token_url
            .replace("{tenant}", &self.bot.tenant_id)
    }

    /// Clock skew allowed on inbound token lifetimes.
    pub fn clock_skew(&self) -> Duration {
        Duration::from_secs(self.bot.clock_skew_secs)
    }
}

fn invalid(key: &'static str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.to_owned(),
    }
}

/// True for an `https` URL, or an `http` URL of a loopback host (`localhost`, 127.0.0.0/8,
/// `::1`), where nothing travels over a network.
pub fn is_https_or_loopback(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// True for `M365BOT_` variables that are not settings: command-line options
/// (`M365BOT_CONFIG`, the `M365BOT_INIT_*` answers of `m365bot init`) and the test runner's
/// switch (`M365BOT_TESTS_WITHOUT_POSTGRES`).
fn is_not_a_setting(key: &str) -> bool {
    key.eq_ignore_ascii_case("config")
        || key.eq_ignore_ascii_case("tests_without_postgres")
        || key
            .get(..5)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("init_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [bot]
        app_id = "11111111-2222-3333-4444-555555555555"
        app_password = "s3cret"
        tenant_id = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    "#;

    #[test]
    fn defaults_with_identity_are_valid() {
        let settings = Settings::from_toml_str(VALID).expect("valid");
        assert_eq!(settings.bot.token_issuer, "https://api.botframework.com");
        assert_eq!(settings.server.max_body_bytes, 256 * 1024);
        assert!(
            settings
                .outbound_token_url()
                .contains("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
            "tenant substituted"
        );
    }

    #[test]
    fn missing_app_id_names_the_key() {
        let err =
            Settings::from_toml_str("[bot]\ntenant_id = \"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"")
                .expect_err("must fail");
        assert!(err.to_string().contains("bot.app_id"), "{err}");
    }

    #[test]
    fn upstreams_must_be_https_unless_on_loopback() {
        let base = "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\n[server]\nlisten = \"127.0.0.1:3978\"\n";
        for (section, key) in [
            ("servicenow", "instance_url"),
            ("entra", "authority_url"),
            ("entra", "graph_url"),
        ] {
            let plain =
                format!("{base}[{section}]\n{key} = \"http://dev12345.service-now.com/\"\n");
            let err = Settings::from_toml_str(&plain).expect_err("plain http refused");
            assert!(err.to_string().contains("https"), "{err}");
            for local in [
                "http://127.0.0.1:8080/",
                "http://localhost:9/",
                "http://[::1]:9/",
            ] {
                let ok = format!("{base}[{section}]\n{key} = \"{local}\"\n");
                Settings::from_toml_str(&ok).unwrap_or_else(|e| panic!("{local}: {e}"));
            }
        }
    }

    #[test]
    fn insecure_local_is_refused_with_a_bot_password() {
        let toml = "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\napp_password = \"real\"\n[server]\nlisten = \"127.0.0.1:3978\"\n";
        let err = Settings::from_toml_str(toml).expect_err("refused");
        assert!(err.to_string().contains("app_password"), "{err}");
    }

    #[test]
    fn insecure_local_is_refused_off_loopback() {
        let toml = r#"
            [server]
            listen = "0.0.0.0:3978"
            [bot]
            auth_mode = "insecure-local"
            tenant_id = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        "#;
        let err = Settings::from_toml_str(toml).expect_err("must fail");
        assert!(err.to_string().contains("bot.auth_mode"), "{err}");
        let ok = toml.replace("0.0.0.0", "127.0.0.1");
        Settings::from_toml_str(&ok).expect("loopback is fine");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Settings::from_toml_str("[server]\nmax_body_bytes = \"lots\"").expect_err("fail");
        assert!(err.to_string().contains("max_body_bytes"), "{err}");
    }

    /// The Bot Framework names of the bot's app id, password and tenant.
    fn set_bot_framework_names(jail: &mut figment::Jail) {
        jail.set_env("MicrosoftAppId", "11111111-2222-3333-4444-555555555555");
        jail.set_env("MicrosoftAppPassword", "pw");
        jail.set_env(
            "MicrosoftAppTenantId",
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        );
    }

    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment's Jail API returns its own error type"
    )]
    fn bot_framework_environment_names_are_accepted() {
        figment::Jail::expect_with(|jail| {
            set_bot_framework_names(jail);
            jail.set_env("M365BOT_SERVER__MAX_BODY_BYTES", "4096");
            let settings = Settings::load(None).expect("loads");
            assert_eq!(settings.bot.app_id, "11111111-2222-3333-4444-555555555555");
            assert_eq!(settings.server.max_body_bytes, 4096);
            assert_eq!(
                settings
                    .bot
                    .app_password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned()),
                Some("pw".to_owned())
            );
            Ok(())
        });
    }

    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment's Jail API returns its own error type"
    )]
    fn command_line_variables_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            set_bot_framework_names(jail);
            jail.set_env("M365BOT_CONFIG", "/etc/m365bot/m365bot.toml");
            jail.set_env("M365BOT_INIT_SERVICENOW_PASSWORD", "secret");
            jail.set_env("M365BOT_TESTS_WITHOUT_POSTGRES", "1");
            let settings = Settings::load(None).expect("loads");
            assert_eq!(settings.bot.app_id, "11111111-2222-3333-4444-555555555555");
            jail.set_env("M365BOT_CONFIGURATION", "x");
            let err = Settings::load(None).expect_err("other unknown keys still fail");
            assert!(
                err.to_string().contains("configuration"),
                "names the key: {err}"
            );
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let settings = Settings::from_toml_str(VALID).expect("valid");
        assert!(!format!("{settings:?}").contains("s3cret"));
    }
}
