//! Shared test harness: a running bot on loopback with a fresh database, plus fakes.
#![allow(dead_code, unused_imports)]

pub mod botframework;
pub mod connector;
pub mod db;
pub mod link;
pub mod notify;
pub mod notify_scale;
pub mod playground;
pub mod setup;
pub mod slack;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use m365bot::app::{App, Application};
use m365bot::config::Settings;
use tokio_util::sync::CancellationToken;

/// A bot serving on 127.0.0.1 with its own SQLite file; stopped when dropped.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base_url: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// Shared state (database, metrics, …).
    pub app: Arc<App>,
    /// HTTP client for requests to the bot.
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// Spawns the bot with `settings_toml` (TOML) merged over the test defaults: SQLite in a
    /// temporary directory, an ephemeral loopback port.
    pub async fn spawn(settings_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_path = dir.path().join("bot.db");
        let base = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n",
            db_path.display()
        );
        let settings =
            Settings::from_toml_str(&merge_toml(&base, settings_toml)).expect("test settings");
        let application = Application::build(settings)
            .await
            .expect("application builds");
        let addr = application.local_addr();
        let app = application.app();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { application.run_until_stopped(stop).await });
        Self {
            base_url: format!("http://{addr}"),
            addr,
            app,
            client: reqwest::Client::new(),
            shutdown,
            _dir: dir,
        }
    }

    /// POSTs a JSON body to `/api/messages` with an optional `Authorization` header.
    pub async fn post_activity(
        &self,
        body: &serde_json::Value,
        authorization: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api/messages", self.base_url))
            .json(body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.expect("request reaches the bot")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Merges two TOML documents (tables merged key by key, `extra` wins).
pub fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml_value::Table, from: toml_value::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml_value::Value::Table(a)), toml_value::Value::Table(b)) => merge(a, b),
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut base: toml_value::Table = base.parse().expect("base toml");
    let extra: toml_value::Table = extra.parse().expect("extra toml");
    merge(&mut base, extra);
    toml_value::to_string(&base).expect("toml")
}

/// The `toml` crate under a name that says what it is for here.
pub use toml as toml_value;

/// Settings every authenticated test uses: the bot's identity in a fixed test tenant.
pub const TEST_APP_ID: &str = "11111111-2222-3333-4444-555555555555";
/// The tenant the test bot serves.
pub const TEST_TENANT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
