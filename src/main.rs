//! The `m365bot` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use m365bot::app::Application;
use m365bot::config::Settings;
use tokio_util::sync::CancellationToken;

/// m365bot: sets up, verifies and operates the Microsoft 365 support integration between
/// ServiceNow and Microsoft 365, from Microsoft Teams.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Optional TOML configuration file (environment variables M365BOT_* override it).
    #[arg(long, short, global = true, env = "M365BOT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Commands>,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the bot (the default).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Write the Teams app package (manifest.json and icons, zipped).
    Manifest {
        /// Where to write the zip.
        #[arg(long, default_value = "m365bot-teams-app.zip")]
        out: PathBuf,
        /// Bot app id; defaults to bot.app_id from the configuration.
        #[arg(long)]
        app_id: Option<String>,
        /// Public domain of the bot; defaults to the host of server.public_url.
        #[arg(long)]
        domain: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Commands::Serve);
    if let Commands::Manifest {
        out,
        app_id,
        domain,
    } = &command
    {
        return manifest(cli.config.as_deref(), out, app_id.clone(), domain.clone());
    }
    let settings = Settings::load(cli.config.as_deref())?;
    m365bot::telemetry::init(&settings.log, std::io::stderr);
    match command {
        Commands::Serve => serve(settings).await,
        Commands::Migrate => {
            let db = m365bot::db::Db::connect(&settings.database.url, 1).await?;
            db.migrate().await?;
            println!("database is up to date");
            Ok(())
        }
        Commands::Manifest { .. } => Ok(()),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    application.run_until_stopped(shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn manifest(
    config: Option<&std::path::Path>,
    out: &std::path::Path,
    app_id: Option<String>,
    domain: Option<String>,
) -> anyhow::Result<()> {
    // The package needs only the app id and domain, so a partial configuration is fine here.
    let loaded = Settings::load(config).ok();
    let app_id = app_id
        .or_else(|| {
            loaded
                .as_ref()
                .map(|s| s.bot.app_id.clone())
                .filter(|id| !id.is_empty())
        })
        .context("give --app-id or set bot.app_id (MicrosoftAppId)")?;
    let domain = domain
        .or_else(|| {
            loaded
                .as_ref()
                .and_then(|s| s.server.public_url.host_str().map(str::to_owned))
        })
        .context("give --domain or set server.public_url")?;
    m365bot::manifest::write_package(&app_id, &domain, out)?;
    println!("wrote {}", out.display());
    Ok(())
}
