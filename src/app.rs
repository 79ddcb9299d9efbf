//! The application: shared state and the one builder used by `main`, the sandbox and tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cards::CardRenderer;
use crate::config::{AuthMode, Settings};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::teams::auth::BotAuthenticator;
use crate::teams::connector::ConnectorClient;

/// Everything a request handler may need.
pub struct App {
    /// The validated settings.
    pub settings: Settings,
    /// Storage.
    pub db: Db,
    /// Card templates.
    pub cards: CardRenderer,
    /// Inbound token validation; `None` in insecure-local mode.
    pub authenticator: Option<BotAuthenticator>,
    /// Outbound Teams client.
    pub connector: ConnectorClient,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The shared outbound HTTP client.
    pub http: reqwest::Client,
    /// Conversation references already stored unchanged, to skip redundant writes.
    pub stored_conversations: crate::db::conversations::RecentlyStored,
    /// Entra ID, Graph and the bot's own ServiceNow account.
    pub upstreams: crate::integration::Upstreams,
    /// Chat users' e-mail and UPN, as the platform reported them recently.
    pub identities: crate::identity::IdentityCache,
    /// The Slack adapter, when `slack.enabled`.
    pub slack: Option<crate::slack::Slack>,
    /// Who the bot is when it reads and writes cases (the integration user).
    pub runtime: crate::integration::runtime::RuntimeIdentity,
}

impl App {
    /// The account-linking side of a chat platform whose users carry no Entra object id
    /// (`slack`), when the bot is configured for it.
    pub fn link_platform(
        &self,
        platform: &str,
    ) -> Option<&dyn crate::link::platform::LinkPlatform> {
        match platform {
            "slack" => self
                .slack
                .as_ref()
                .map(|slack| slack as &dyn crate::link::platform::LinkPlatform),
            _ => None,
        }
    }

    /// The delivery of Slack notification lanes, when Slack is enabled.
    pub fn slack_lanes(&self) -> Option<Box<dyn crate::notify::slack::LaneDelivery>> {
        self.slack.as_ref()?;
        Some(Box::new(crate::slack::deliver::SlackDelivery::new(self)))
    }

    /// The doctor's checks of the chat platforms beyond Teams (Slack, when enabled).
    pub async fn platform_checks(&self) -> Vec<crate::integration::doctor::CheckOutcome> {
        crate::slack::doctor::run(self).await
    }

    /// The user directory of a chat platform, when the bot is configured for it.
    pub fn directory(
        &self,
        platform: crate::core::Platform,
    ) -> Option<&dyn crate::core::identity::PlatformDirectory> {
        match platform {
            crate::core::Platform::Teams => Some(&self.connector),
            crate::core::Platform::Slack => self
                .slack
                .as_ref()
                .map(|slack| slack as &dyn crate::core::identity::PlatformDirectory),
        }
    }
}

/// A built application, bound to its port and ready to serve.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    app: Arc<App>,
}

/// The outbound HTTP client: timeouts, no redirects, the extra CA file if configured.
pub fn http_client(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("m365bot/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(path) = &settings.bot.extra_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("bot.extra_ca_file: cannot read {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("bot.extra_ca_file: {} is not a PEM bundle", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("cannot build the HTTP client")
}

impl Application {
    /// Opens the database (migrating it), loads the cards, binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = Db::connect(&settings.database.url, settings.database.max_connections).await?;
        db.migrate().await?;
        crate::setup::check_stored_secrets(&db, &settings).await?;
        let cards = CardRenderer::new().context("card templates")?;
        let http = http_client(&settings)?;
        let metrics = Arc::new(Metrics::default());
        let authenticator = match settings.bot.auth_mode {
            AuthMode::BotFramework => Some(BotAuthenticator::new(&settings.bot, http.clone())),
            AuthMode::InsecureLocal => {
                tracing::warn!(
                    listen = %settings.server.listen,
                    "insecure-local mode: inbound requests are NOT authenticated; for the Agents Playground on this machine only"
                );
                None
            }
        };
        let connector = ConnectorClient::new(&settings, http.clone(), metrics.clone());
        let upstreams =
            crate::integration::Upstreams::from_settings(&settings, http.clone(), metrics.clone());
        let slack = crate::slack::Slack::from_settings(&settings.slack, http.clone())
            .map(|slack| slack.with_installs(&settings, &db));
        let runtime = crate::integration::runtime::RuntimeIdentity::new(
            upstreams.entra.clone(),
            http.clone(),
            metrics.clone(),
            upstreams.servicenow.clone(),
            settings.servicenow.runtime_admin_fallback,
        );
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| {
                format!("server.listen: cannot listen on {}", settings.server.listen)
            })?;
        let metrics_listener =
            match settings.server.metrics_listen {
                Some(address) => Some(TcpListener::bind(address).await.with_context(|| {
                    format!("server.metrics_listen: cannot listen on {address}")
                })?),
                None => None,
            };
        let app = Arc::new(App {
            settings,
            db,
            cards,
            authenticator,
            connector,
            metrics,
            http,
            stored_conversations: Default::default(),
            upstreams,
            identities: Default::default(),
            slack,
            runtime,
        });
        crate::integration::runtime::reload(&app).await;
        Ok(Self {
            listener,
            metrics_listener,
            app,
        })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.app.settings.server.listen)
    }

    /// The address of the internal metrics listener, when `server.metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The shared state, for tests and background workers.
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = crate::routes::router(self.app.clone());
        crate::notify::start_background(self.app.clone(), shutdown.clone());
        crate::slack::start_background(self.app.clone(), shutdown.clone());
        crate::integration::runtime::spawn_reloader(self.app.clone(), shutdown.clone());
        crate::integration::watch::spawn(self.app.clone(), shutdown.clone());
        tracing::info!(listen = %self.local_addr(), "m365bot listening");
        if let Some(listener) = self.metrics_listener {
            let metrics = crate::routes::metrics_router(self.app.clone());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, metrics)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(err) = served {
                    tracing::error!(error = %err, "the metrics listener failed");
                }
            });
        }
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("HTTP server failed")
    }
}
