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
#[command(version = m365bot::VERSION, about, long_about = None)]
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
    Serve {
        /// Confirm `bot.auth_mode = insecure-local` (no inbound authentication, for the Agents
        /// Playground on this machine); without it that mode is refused.
        #[arg(long)]
        insecure_local: bool,
    },
    /// Write a first configuration file: asks for (or takes as flags) the public URL, the bot's
    /// identity, the database and ServiceNow, checks each answer live, writes it with mode 0600.
    Init(Box<m365bot::init::InitArgs>),
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Run the bot with in-process emulators of ServiceNow, Entra ID and Graph (SQLite, local
    /// no-auth mode for the Microsoft 365 Agents Playground).
    Sandbox {
        /// Where the bot listens (loopback only).
        #[arg(long, default_value = "127.0.0.1:3978")]
        listen: std::net::SocketAddr,
        /// The sandbox's database.
        #[arg(long, default_value = "sqlite://m365bot-sandbox.db")]
        database: String,
        /// Run doctor against the demo integration, print the report and exit.
        #[arg(long)]
        doctor: bool,
        /// Inject a misconfiguration first: wrong-secret, missing-role, cross-scope, v2-tokens.
        #[arg(long = "break", value_name = "PROBLEM")]
        break_it: Vec<m365bot::demo::Misconfiguration>,
        /// With --doctor: print JSON.
        #[arg(long)]
        json: bool,
        /// Start without the demo integration, so `setup` in chat builds it from scratch.
        #[arg(long)]
        fresh: bool,
        /// Emulate another ServiceNow release: the columns no public source confirms carry
        /// other names (labels kept), and the instance already holds the company's own SSO
        /// OIDC provider and another OAuth provider, which setup must leave alone.
        #[arg(long)]
        other_release: bool,
        /// Port of the emulated Slack Web API (loopback), which `slack-say` talks to.
        #[arg(long, default_value_t = m365bot::sandbox::slack::DEFAULT_PORT)]
        slack_port: u16,
        /// How the emulated Slack reaches the bot: http (signed request URLs) or socket
        /// (Socket Mode: the bot connects to the emulator's WebSocket).
        #[arg(long, value_enum, default_value_t = SlackTransport::Http)]
        slack_transport: SlackTransport,
    },
    /// Type a Slack slash command into the running sandbox: signs it as Slack would, posts it
    /// to the bot and prints what the bot answered and posted, as text.
    SlackSay {
        /// The command line, e.g. "/m365 help" (not with --submit or --click).
        #[arg(required_unless_present_any = ["submit", "click"])]
        line: Option<String>,
        /// Submit the open window, with fields typed in: `--submit domain=contoso.onmicrosoft.com`
        /// (a choice by its value, a checkbox true/false; other fields keep what they show).
        #[arg(long, num_args = 0.., value_name = "FIELD=VALUE", conflicts_with = "click")]
        submit: Option<Vec<String>>,
        /// Click a button of the open window by the id the window shows (`--click setup.back`).
        #[arg(long, value_name = "ACTION_ID")]
        click: Option<String>,
        /// Fields typed in before the click (`--field handover_email=…`).
        #[arg(long, value_name = "FIELD=VALUE", requires = "click")]
        field: Vec<String>,
        /// The sandbox bot.
        #[arg(long, default_value = "http://127.0.0.1:3978")]
        bot: String,
        /// The sandbox's Slack emulator.
        #[arg(long, default_value = "http://127.0.0.1:3979")]
        slack: String,
        /// Who types it: U0ADMIN (ServiceNow admin), U0JANE (jane.doe) or U0GONE (deactivated).
        #[arg(long, default_value = "U0ADMIN")]
        user: String,
        /// Where: C0GENERAL, C0PRIVATE, C0OLD or the direct message D0ADMIN.
        #[arg(long, default_value = "C0GENERAL")]
        channel: String,
        /// Stop listening after this many quiet seconds.
        #[arg(long, default_value_t = 2)]
        wait_secs: u64,
    },
    /// Verify the integration end to end: one line per check, a fix for every failure.
    /// Reads the `[integration]` section of the configuration file.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Apply the fixes the bot may apply (cross-scope access).
        #[arg(long)]
        repair: bool,
    },
    /// Rotate an app's client secret: add a new one through Graph, write it where it is used
    /// (ServiceNow and the bot's encrypted store), verify it live, then remove the old one.
    /// Exits 1 when the secret was not rotated (the old one is kept and still works).
    RotateSecret {
        /// Which app: outbound, inbound or rest-user.
        #[arg(value_parser = parse_secret_target)]
        app: m365bot::integration::rotate::SecretTarget,
    },
    /// Print the ServiceNow Business Rule that pushes case updates to the bot (JavaScript,
    /// for the configured case table; replace <SECRET> with notifications.sources.push.hmac_secret).
    ServicenowScript {
        /// The bot's push endpoint; defaults to server.public_url + /api/servicenow/events.
        #[arg(long)]
        endpoint: Option<String>,
        /// Sign pushes with notifications.sources.push.hmac_secret even when an integration
        /// exists (by default the script then uses the outbound app's OAuth provider).
        #[arg(long)]
        hmac: bool,
    },
    /// Write the Teams app package (manifest.json and icons, zipped); with --slack, print the
    /// Slack app manifest (JSON) instead.
    Manifest {
        /// Print the Slack app manifest for server.public_url and slack.transport.
        #[arg(long)]
        slack: bool,
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

/// The Slack transport of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SlackTransport {
    /// Signed HTTP requests to /slack/commands, /slack/interactions, /slack/events.
    Http,
    /// Socket Mode.
    Socket,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Commands::Serve {
        insecure_local: false,
    });
    if let Commands::Manifest { slack: true, .. } = &command {
        slack_manifest(cli.config.as_deref())?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Commands::Manifest {
        out,
        app_id,
        domain,
        ..
    } = &command
    {
        manifest(cli.config.as_deref(), out, app_id.clone(), domain.clone())?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Commands::Init(args) = command {
        return init(*args, cli.config.as_deref()).await;
    }
    if let Commands::SlackSay {
        line,
        submit,
        click,
        field,
        bot,
        slack,
        user,
        channel,
        wait_secs,
    } = &command
    {
        use m365bot::sandbox::slack::WindowInput;
        let fields =
            |pairs: &[String]| -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
                pairs
                    .iter()
                    .map(|pair| {
                        let (key, value) = pair
                            .split_once('=')
                            .ok_or_else(|| anyhow::anyhow!("{pair:?}: write FIELD=VALUE"))?;
                        Ok((key.trim().to_owned(), serde_json::Value::from(value)))
                    })
                    .collect()
            };
        let input = match (submit, click) {
            (Some(pairs), _) => Some(WindowInput::Submit(fields(pairs)?)),
            (None, Some(action_id)) => Some(WindowInput::Click(action_id.clone(), fields(field)?)),
            (None, None) => None,
        };
        if let Some(input) = input {
            let window = m365bot::sandbox::slack::act_in_window(
                bot.trim_end_matches('/'),
                slack.trim_end_matches('/'),
                user,
                input,
            )
            .await?;
            println!("{window}");
            return Ok(std::process::ExitCode::SUCCESS);
        }
        let conversation = m365bot::sandbox::slack::say(
            bot.trim_end_matches('/'),
            slack.trim_end_matches('/'),
            channel,
            user,
            line.as_deref().unwrap_or_default(),
            std::time::Duration::from_secs(*wait_secs),
        )
        .await?;
        print!("{conversation}");
        return Ok(if conversation.status == 200 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        });
    }
    if let Commands::Sandbox {
        listen,
        database,
        doctor,
        break_it,
        json,
        fresh,
        other_release,
        slack_port,
        slack_transport,
    } = command
    {
        let options = m365bot::sandbox::SandboxOptions {
            servicenow_renamed_columns: other_release,
            servicenow_decoys: other_release,
            ..m365bot::sandbox::SandboxOptions::default()
        };
        let ports = SandboxPorts {
            slack: slack_port,
            slack_transport: match slack_transport {
                SlackTransport::Http => m365bot::slack::Transport::Http,
                SlackTransport::Socket => m365bot::slack::Transport::Socket,
            },
        };
        return sandbox(
            listen, &database, doctor, &break_it, json, fresh, options, ports,
        )
        .await;
    }
    let settings = Settings::load(cli.config.as_deref())?;
    if let Commands::ServicenowScript { endpoint, hmac } = &command {
        use m365bot::notify::sources::script;
        let endpoint = endpoint
            .clone()
            .unwrap_or_else(|| script::endpoint(&settings));
        let auth = if *hmac {
            script::PushAuth::Hmac
        } else {
            // The latest completed setup, else [integration]: its outbound app pushes. A SQLite
            // file that does not exist holds no setup (and is not created here).
            let stored = if sqlite_file_missing(&settings.database.url) {
                None
            } else {
                m365bot::setup::stored_integration_spec(&settings)
                    .await
                    .with_context(|| {
                        "cannot read the completed setup (use --hmac for a script signed with notifications.sources.push.hmac_secret)"
                    })?
            };
            match stored.or_else(|| settings.integration.clone()) {
                Some(spec) => script::PushAuth::for_integration(&spec),
                None => script::PushAuth::Hmac,
            }
        };
        print!(
            "{}",
            script::business_rule_with(&settings, &endpoint, &auth)
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    m365bot::telemetry::init(&settings.log, std::io::stderr);
    match command {
        Commands::Serve { insecure_local } => serve(settings, insecure_local)
            .await
            .map(|()| std::process::ExitCode::SUCCESS),
        Commands::Migrate => {
            let db = m365bot::db::Db::connect(&settings.database.url, 1).await?;
            db.migrate().await?;
            println!("database is up to date");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Commands::Doctor { json, repair } => {
            // The integration the last completed setup stored wins over `[integration]`.
            let stored = m365bot::setup::stored_integration_spec(&settings).await?;
            let spec = stored.or_else(|| settings.integration.clone()).context(
                "no integration to check: run setup in chat, or add an [integration] section to the configuration file (see README)",
            )?;
            let mut settings = settings;
            settings.integration = Some(spec.clone());
            doctor(&settings, &spec, json, repair).await
        }
        Commands::RotateSecret { app } => rotate_secret(settings, app).await,
        Commands::Manifest { .. }
        | Commands::Init(_)
        | Commands::Sandbox { .. }
        | Commands::SlackSay { .. }
        | Commands::ServicenowScript { .. } => Ok(std::process::ExitCode::SUCCESS),
    }
}

async fn init(
    args: m365bot::init::InitArgs,
    config: Option<&std::path::Path>,
) -> anyhow::Result<std::process::ExitCode> {
    let mut stdout = std::io::stdout();
    if args.non_interactive || !m365bot::init::interactive() {
        m365bot::init::run(args, config, &mut m365bot::init::NoPrompt, &mut stdout).await?;
    } else {
        m365bot::init::run(
            args,
            config,
            &mut m365bot::init::TerminalPrompt,
            &mut stdout,
        )
        .await?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve(settings: Settings, insecure_local: bool) -> anyhow::Result<()> {
    if settings.bot.auth_mode == m365bot::config::AuthMode::InsecureLocal && !insecure_local {
        anyhow::bail!(
            "bot.auth_mode = insecure-local turns inbound authentication off: start with `m365bot serve --insecure-local` to confirm (local Agents Playground only), or run `m365bot sandbox`"
        );
    }
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

async fn doctor(
    settings: &Settings,
    spec: &m365bot::integration::IntegrationSpec,
    json: bool,
    repair: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let http = m365bot::app::http_client(settings)?;
    let upstreams =
        m365bot::integration::Upstreams::from_settings(settings, http, std::sync::Arc::default());
    let outcomes = m365bot::integration::doctor::run(&upstreams, spec, repair).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print!("{}", m365bot::integration::doctor::render_text(&outcomes));
    }
    Ok(if m365bot::integration::doctor::has_failures(&outcomes) {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

fn parse_secret_target(word: &str) -> Result<m365bot::integration::rotate::SecretTarget, String> {
    m365bot::integration::rotate::SecretTarget::parse(word)
        .ok_or_else(|| "expected outbound, inbound or rest-user".to_owned())
}

async fn rotate_secret(
    settings: Settings,
    target: m365bot::integration::rotate::SecretTarget,
) -> anyhow::Result<std::process::ExitCode> {
    let mut settings = settings;
    // A stored setup that cannot be opened is explained by the rotation itself.
    if let Ok(Some(spec)) = m365bot::setup::stored_integration_spec(&settings).await {
        settings.integration = Some(spec);
    }
    let db = m365bot::db::Db::connect(&settings.database.url, 1).await?;
    db.migrate().await?;
    let http = m365bot::app::http_client(&settings)?;
    let upstreams =
        m365bot::integration::Upstreams::from_settings(&settings, http, std::sync::Arc::default());
    let report = m365bot::setup::rotate::rotate_secret(
        &db,
        &settings,
        &upstreams,
        target,
        "command line (m365bot rotate-secret)",
    )
    .await;
    println!("{}", report.text());
    if let Some(next) = &report.next_step {
        println!("next: {next}");
    }
    Ok(if report.rotated {
        println!("rotated the {}'s client secret", target.label());
        std::process::ExitCode::SUCCESS
    } else {
        println!(
            "NOT rotated: the {}'s old client secret is kept",
            target.label()
        );
        std::process::ExitCode::FAILURE
    })
}

/// Ports of the sandbox's extra emulators.
struct SandboxPorts {
    slack: u16,
    slack_transport: m365bot::slack::Transport,
}

#[allow(clippy::too_many_arguments)]
async fn sandbox(
    listen: std::net::SocketAddr,
    database: &str,
    run_doctor: bool,
    problems: &[m365bot::demo::Misconfiguration],
    json: bool,
    fresh: bool,
    options: m365bot::sandbox::SandboxOptions,
    ports: SandboxPorts,
) -> anyhow::Result<std::process::ExitCode> {
    if fresh && (run_doctor || !problems.is_empty()) {
        anyhow::bail!(
            "--fresh starts without the demo integration: run setup in chat instead of --doctor / --break"
        );
    }
    if !listen.ip().is_loopback() {
        anyhow::bail!(
            "the sandbox runs without authentication: --listen must be a loopback address"
        );
    }
    let log = m365bot::config::LogSettings::default();
    m365bot::telemetry::init(&log, std::io::stderr);
    let demo = m365bot::demo::Demo::start_with(options, listen, database, fresh).await?;
    for problem in problems {
        demo.break_it(*problem);
    }
    let spec = demo.spec.clone();
    if run_doctor {
        return doctor(&demo.settings, &spec, json, false).await;
    }
    let slack = m365bot::sandbox::slack::SlackEmulator::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], ports.slack)),
        &demo.sandbox.demo().tenant_domain,
    )
    .await?;
    let mut settings = demo.settings.clone();
    m365bot::sandbox::slack::configure_with(
        &mut settings,
        &slack.api_url(),
        ports.slack_transport,
    )?;
    let install_url = m365bot::slack::install::redirect_uri(&settings.server.public_url).replace(
        m365bot::slack::install::CALLBACK_PATH,
        m365bot::slack::install::INSTALL_PATH,
    );
    let application = Application::build(settings).await?;
    println!("{}", demo.welcome());
    let transport = match ports.slack_transport {
        m365bot::slack::Transport::Http => "signed requests to the bot's /slack/* URLs",
        m365bot::slack::Transport::Socket => {
            "Socket Mode: the bot holds a WebSocket to the emulator"
        }
    };
    println!(
        "\nSlack: an emulated Slack Web API runs at {} (workspace {}), reaching the bot by {transport}.\n\
         \x20 m365bot slack-say \"/m365 help\"\n\
         \x20 m365bot slack-say \"/m365 doctor\"          (as U0ADMIN, the ServiceNow admin)\n\
         \x20 m365bot slack-say --user U0JANE \"/m365 doctor\"   (refused: jane.doe is no admin)\n\
         \x20 m365bot slack-say \"/m365 setup\"           (opens the setup window; then:)\n\
         \x20 m365bot slack-say --submit                 (submit it; fields as --submit domain=contoso.onmicrosoft.com)\n\
         \x20 m365bot slack-say --click setup.back       (a button of the window, by the id it shows)\n\
         Install into a second workspace ({}): open {install_url} in a browser and click Allow.",
        slack.api_url(),
        m365bot::sandbox::slack::SANDBOX_TEAM_ID,
        m365bot::sandbox::slack::SECOND_TEAM_ID,
    );
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        on_signal.cancel();
    });
    application.run_until_stopped(shutdown).await?;
    Ok(std::process::ExitCode::SUCCESS)
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
    // The package needs only the app id and the domain: read those two keys on their own, so
    // the rest of the configuration may be missing or incomplete.
    let sources = Settings::sources(config)?;
    let configured = |key: &str| -> Option<String> {
        sources
            .extract_inner::<String>(key)
            .ok()
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    };
    let app_id = app_id.or_else(|| configured("bot.app_id")).context(
        "the bot's app id is missing: give --app-id, or set bot.app_id (M365BOT_BOT__APP_ID or MicrosoftAppId)",
    )?;
    let domain = match domain {
        Some(domain) => domain,
        None => match configured("server.public_url") {
            Some(url) => url::Url::parse(&url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .with_context(|| {
                    format!("server.public_url {url:?} is not a URL with a host: give --domain, or correct it")
                })?,
            None => {
                let host = Settings::default_public_host();
                eprintln!(
                    "server.public_url is not set: using its default host {host}; give --domain or set server.public_url (M365BOT_SERVER__PUBLIC_URL) for your own"
                );
                host
            }
        },
    };
    m365bot::manifest::write_package(&app_id, &domain, out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Prints the Slack app manifest for the configured public URL and transport; only those two
/// keys are read, so the rest of the configuration may be incomplete.
fn slack_manifest(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let sources = Settings::sources(config)?;
    let public_url = match sources.extract_inner::<String>("server.public_url") {
        Ok(url) => url::Url::parse(url.trim())
            .with_context(|| format!("server.public_url {url:?} is not a URL"))?,
        Err(_) => {
            eprintln!(
                "server.public_url is not set: using its default; set server.public_url (M365BOT_SERVER__PUBLIC_URL) for your own"
            );
            m365bot::config::ServerSettings::default().public_url
        }
    };
    let transport = sources
        .extract_inner::<m365bot::slack::Transport>("slack.transport")
        .unwrap_or(m365bot::slack::Transport::Http);
    let manifest = m365bot::slack::manifest::manifest(&public_url, transport);
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(())
}

/// True when `url` names a SQLite database file that does not exist.
fn sqlite_file_missing(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return false;
    };
    let path = rest.split('?').next().unwrap_or_default();
    !path.is_empty() && path != ":memory:" && !std::path::Path::new(path).exists()
}
