//! `m365bot init`: asks for the answers a first configuration needs (or takes them as flags),
//! checks each one as it comes (shape, then live: the bot's token, the ServiceNow login, the
//! PostgreSQL connection), generates `setup.encryption_key`, writes the TOML file with mode
//! 0600 and prints the next steps with the exact values. Nothing is written when a check fails.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use url::{Host, Url};

use crate::config::Settings;
use crate::ids::is_guid;
use crate::upstream::entra::EntraClient;
use crate::upstream::servicenow::{EncodedQuery, ServiceNowAuth, ServiceNowClient};

/// Where `init` writes when neither `--out` nor `--config` names a file.
pub const DEFAULT_CONFIG_FILE: &str = "m365bot.toml";
/// Scope of the bot's own token for the Bot Connector.
const BOT_FRAMEWORK_SCOPE: &str = "https://api.botframework.com/.default";
/// The Debian package's state directory (systemd `StateDirectory=m365bot`).
const PACKAGE_STATE_DIRECTORY: &str = "/var/lib/m365bot";
/// How long the PostgreSQL check may take.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times an interactive answer is asked again after a failed check.
const ATTEMPTS: usize = 3;

/// The answers of `init`, as flags; what is missing is asked for on a terminal.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The file to write (default: --config, else ./m365bot.toml).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
    /// Never ask: a missing answer is an error naming its flag (implied when stdin is not a
    /// terminal).
    #[arg(long)]
    pub non_interactive: bool,
    /// Public HTTPS base URL of the bot, e.g. https://m365bot.contoso.com/.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Where the bot listens, behind the TLS reverse proxy.
    #[arg(long, default_value = "127.0.0.1:3978")]
    pub listen: SocketAddr,
    /// The bot's Microsoft App ID (GUID) from its Entra app registration.
    #[arg(long, env = "MicrosoftAppId")]
    pub app_id: Option<String>,
    /// The bot's client secret (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "MicrosoftAppPassword", hide_env_values = true)]
    pub app_password: Option<String>,
    /// The Entra tenant id (GUID) the bot serves.
    #[arg(long, env = "MicrosoftAppTenantId")]
    pub tenant_id: Option<String>,
    /// sqlite://PATH (one instance) or postgres://USER:PASSWORD@HOST/DB (several replicas).
    #[arg(long, env = "M365BOT_INIT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// ServiceNow instance URL, e.g. https://dev12345.service-now.com.
    #[arg(long)]
    pub servicenow_url: Option<String>,
    /// The bot's ServiceNow user (role admin, for setup, doctor and grant).
    #[arg(long)]
    pub servicenow_user: Option<String>,
    /// Its password (prefer the environment variable).
    #[arg(long, env = "M365BOT_INIT_SERVICENOW_PASSWORD", hide_env_values = true)]
    pub servicenow_password: Option<String>,
    /// Leave ServiceNow out for now (setup and doctor need it later).
    #[arg(long, conflicts_with_all = ["servicenow_url", "servicenow_user", "servicenow_password"])]
    pub no_servicenow: bool,
    /// Keep an existing setup.encryption_key (restoring a backup) instead of generating one.
    #[arg(long, env = "M365BOT_INIT_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Entra authority (national clouds, test doubles).
    #[arg(long, default_value = crate::upstream::entra::DEFAULT_AUTHORITY)]
    pub authority_url: Url,
}

/// Asks for one answer.
pub trait Prompt {
    /// Shows `question` (with `default`, which an empty answer keeps) and returns the answer;
    /// `secret` answers are not echoed.
    fn ask(
        &mut self,
        question: &str,
        default: Option<&str>,
        secret: bool,
    ) -> anyhow::Result<String>;
}

/// Never asks: a missing answer takes its default, or is an error naming its flag.
pub struct NoPrompt;

impl Prompt for NoPrompt {
    fn ask(&mut self, question: &str, default: Option<&str>, _: bool) -> anyhow::Result<String> {
        match default {
            Some(value) => Ok(value.to_owned()),
            None => {
                bail!("missing answer: {question} (give it as a flag; see `m365bot init --help`)")
            }
        }
    }
}

/// Asks on the terminal (stdin/stderr); secrets are read with echo off (`stty -echo`).
pub struct TerminalPrompt;

impl Prompt for TerminalPrompt {
    fn ask(
        &mut self,
        question: &str,
        default: Option<&str>,
        secret: bool,
    ) -> anyhow::Result<String> {
        let mut stderr = std::io::stderr();
        match default {
            Some(value) if secret && !value.is_empty() => {
                write!(stderr, "{question} [keep the one entered]: ")?;
            }
            Some(value) if !value.is_empty() => write!(stderr, "{question} [{value}]: ")?,
            _ => write!(stderr, "{question}: ")?,
        }
        stderr.flush()?;
        let echo_off = secret && set_echo(false);
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line);
        if echo_off {
            set_echo(true);
            writeln!(stderr)?;
        }
        if read.context("cannot read the answer")? == 0 {
            bail!("no answer (end of input) for: {question}");
        }
        let answer = line.trim().to_owned();
        Ok(match default {
            Some(value) if answer.is_empty() => value.to_owned(),
            _ => answer,
        })
    }
}

/// Turns terminal echo on or off; false when that is not possible (then input is visible).
fn set_echo(on: bool) -> bool {
    std::process::Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The bot's ServiceNow account, checked.
struct ServiceNowAnswers {
    url: Url,
    user: String,
    password: SecretString,
}

/// Everything checked, ready to be written.
struct Answers {
    public_url: Url,
    listen: SocketAddr,
    app_id: String,
    app_password: SecretString,
    tenant_id: String,
    database_url: SecretString,
    servicenow: Option<ServiceNowAnswers>,
    encryption_key: SecretString,
    push_secret: SecretString,
    authority_url: Url,
}

/// Runs `init`: answers from `args`, the rest from `prompt`; progress lines to `out`.
/// Returns the path written.
pub async fn run(
    args: InitArgs,
    config: Option<&Path>,
    prompt: &mut dyn Prompt,
    out: &mut dyn Write,
) -> anyhow::Result<PathBuf> {
    let path = args
        .out
        .clone()
        .or_else(|| config.map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    refuse_overwrite(&path, args.force)?;
    let directory = parent_directory(&path);
    if !directory.is_dir() {
        bail!(
            "{} does not exist: create the directory first",
            directory.display()
        );
    }
    let answers = collect(&args, prompt, out).await?;
    write_config(&path, &answers, args.force)?;
    progress(out, "ok", &format!("wrote {} (mode 0600)", path.display()))?;
    writeln!(out)?;
    write!(out, "{}", next_steps(&path, &answers))?;
    Ok(path)
}

async fn collect(
    args: &InitArgs,
    prompt: &mut dyn Prompt,
    out: &mut dyn Write,
) -> anyhow::Result<Answers> {
    let http = http_client()?;
    let public_url = ask_checked(
        prompt,
        out,
        args.public_url.as_deref(),
        "Public HTTPS base URL of the bot (--public-url)",
        None,
        false,
        check_public_url,
    )?;
    progress(
        out,
        "ok",
        &format!("public URL {public_url} (messaging endpoint {public_url}api/messages)"),
    )?;

    // The bot's identity: shape first, then a live token request; on a terminal a refused
    // request asks the three answers again, keeping the previous ones as defaults.
    let mut app_id = args.app_id.clone();
    let mut tenant_id = args.tenant_id.clone();
    let mut app_password = args.app_password.clone();
    let mut attempt = 0;
    let (app_id, tenant_id, app_password) = loop {
        attempt += 1;
        let id = ask_checked(
            prompt,
            out,
            app_id.as_deref().filter(|_| attempt == 1),
            "Bot app id, the Microsoft App ID (--app-id)",
            app_id.as_deref(),
            false,
            |answer| check_guid(answer, "the app id"),
        )?;
        let tenant = ask_checked(
            prompt,
            out,
            tenant_id.as_deref().filter(|_| attempt == 1),
            "Entra tenant id (--tenant-id)",
            tenant_id.as_deref(),
            false,
            |answer| check_guid(answer, "the tenant id"),
        )?;
        progress(out, "ok", "app id and tenant id are GUIDs")?;
        let secret = ask_checked(
            prompt,
            out,
            app_password.as_deref().filter(|_| attempt == 1),
            "Bot client secret (--app-password or MicrosoftAppPassword)",
            app_password.as_deref(),
            true,
            |answer| non_empty(answer, "the client secret"),
        )?;
        let secret = SecretString::from(secret);
        let entra = EntraClient::new(http.clone(), args.authority_url.clone());
        match entra
            .client_credentials_v2(&tenant, &id, &secret, BOT_FRAMEWORK_SCOPE)
            .await
        {
            Ok(_) => {
                progress(
                    out,
                    "ok",
                    "Entra ID issued the bot a token for the Bot Framework",
                )?;
                break (id, tenant, secret);
            }
            Err(err) => {
                let problem = format!("the bot's token request failed: {err}");
                progress(out, "fail", &problem)?;
                if !can_retry(args, attempt) {
                    bail!(
                        "{problem}\nCheck the app id, tenant id and client secret of the bot's Entra app registration; nothing was written."
                    );
                }
                app_id = Some(id);
                tenant_id = Some(tenant);
                app_password = Some(secret.expose_secret().to_owned());
            }
        }
    };

    let database_url = ask_checked(
        prompt,
        out,
        args.database_url.as_deref(),
        "Database URL: sqlite://PATH or postgres://USER:PASSWORD@HOST/DB (--database-url)",
        Some(default_database_url()),
        false,
        |answer| Ok(answer.to_owned()),
    )?;
    check_database(&database_url, out).await?;

    let servicenow = if args.no_servicenow {
        progress(
            out,
            "skip",
            "ServiceNow left out (--no-servicenow): setup and doctor need [servicenow] later",
        )?;
        None
    } else {
        Some(ask_servicenow(args, prompt, out, &http).await?)
    };

    let encryption_key = match &args.encryption_key {
        Some(key) => {
            let key = SecretString::from(key.trim().to_owned());
            crate::setup::crypto::check_key(Some(&key))
                .map_err(|err| anyhow::anyhow!("--encryption-key: {err}"))?;
            progress(out, "ok", "setup.encryption_key: kept the key given")?;
            key
        }
        None => {
            let key = crate::setup::crypto::generate_key()
                .map_err(|err| anyhow::anyhow!("cannot generate setup.encryption_key: {err}"))?;
            progress(
                out,
                "ok",
                "setup.encryption_key generated (32 random bytes)",
            )?;
            SecretString::from(key)
        }
    };
    Ok(Answers {
        public_url,
        listen: args.listen,
        app_id,
        app_password,
        tenant_id,
        database_url: SecretString::from(database_url),
        servicenow,
        encryption_key,
        push_secret: SecretString::from(crate::upstream::entra::random_token(32)),
        authority_url: args.authority_url.clone(),
    })
}

async fn ask_servicenow(
    args: &InitArgs,
    prompt: &mut dyn Prompt,
    out: &mut dyn Write,
    http: &reqwest::Client,
) -> anyhow::Result<ServiceNowAnswers> {
    let mut url = args.servicenow_url.clone();
    let mut user = args.servicenow_user.clone();
    let mut password = args.servicenow_password.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let instance = ask_checked(
            prompt,
            out,
            url.as_deref().filter(|_| attempt == 1),
            "ServiceNow instance URL (--servicenow-url)",
            url.as_deref(),
            false,
            check_servicenow_url,
        )?;
        let name = ask_checked(
            prompt,
            out,
            user.as_deref().filter(|_| attempt == 1),
            "The bot's ServiceNow user name, role admin (--servicenow-user)",
            user.as_deref(),
            false,
            |answer| non_empty(answer, "the user name"),
        )?;
        let secret = ask_checked(
            prompt,
            out,
            password.as_deref().filter(|_| attempt == 1),
            "Its password (--servicenow-password or M365BOT_INIT_SERVICENOW_PASSWORD)",
            password.as_deref(),
            true,
            |answer| non_empty(answer, "the password"),
        )?;
        let secret = SecretString::from(secret);
        let client = ServiceNowClient::new(
            http.clone(),
            instance.clone(),
            ServiceNowAuth::Basic {
                user: name.clone(),
                password: secret.clone(),
            },
        );
        let query = EncodedQuery::new().eq("user_name", &name);
        let signed_in = match query.text() {
            Ok(text) => client.query("sys_user", text, &["sys_id"], Some(1)).await,
            Err(refused) => Err(refused.into()),
        };
        let problem = match signed_in {
            Ok(_) => {
                progress(
                    out,
                    "ok",
                    &format!("ServiceNow login as {name} at {instance}"),
                )?;
                return Ok(ServiceNowAnswers {
                    url: instance,
                    user: name,
                    password: secret,
                });
            }
            Err(err) if err.status() == Some(401) => format!(
                "ServiceNow refused the login of {name} at {instance}: check the user name and password (User Administration > Users)"
            ),
            Err(err) => format!("ServiceNow login as {name} at {instance} failed: {err}"),
        };
        progress(out, "fail", &problem)?;
        if !can_retry(args, attempt) {
            bail!("{problem}; nothing was written.");
        }
        url = Some(instance.to_string());
        user = Some(name);
        password = Some(secret.expose_secret().to_owned());
    }
}

/// True when a failed live check may be answered again (on a terminal, attempts left).
fn can_retry(args: &InitArgs, attempt: usize) -> bool {
    !args.non_interactive && attempt < ATTEMPTS && interactive()
}

/// True when answers may be asked for.
pub fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// The flag's value checked, or the prompt's answer checked (asked again while it fails, on a
/// terminal). A flag that fails its check is an error straight away.
fn ask_checked<T>(
    prompt: &mut dyn Prompt,
    out: &mut dyn Write,
    given: Option<&str>,
    question: &str,
    default: Option<&str>,
    secret: bool,
    check: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<T> {
    if let Some(value) = given {
        return check(value.trim()).map_err(|problem| {
            let _ = progress(out, "fail", &problem);
            anyhow::anyhow!("{problem}; nothing was written.")
        });
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = prompt.ask(question, default, secret)?;
        match check(answer.trim()) {
            Ok(value) => return Ok(value),
            Err(problem) => {
                progress(out, "fail", &problem)?;
                if tries >= ATTEMPTS {
                    bail!("{problem}; nothing was written.");
                }
            }
        }
    }
}

fn progress(out: &mut dyn Write, status: &str, line: &str) -> std::io::Result<()> {
    writeln!(out, "[{status}] {line}")
}

fn non_empty(answer: &str, what: &str) -> Result<String, String> {
    if answer.is_empty() {
        Err(format!("{what} is empty"))
    } else {
        Ok(answer.to_owned())
    }
}

fn check_guid(answer: &str, what: &str) -> Result<String, String> {
    if is_guid(answer) {
        Ok(answer.to_ascii_lowercase())
    } else {
        Err(format!(
            "{what} {answer:?} is not a GUID (8-4-4-4-12 hexadecimal digits, as the Entra portal shows it)"
        ))
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An absolute `https` URL with a host and nothing after the path (plain `http` only on
/// loopback, for local tests); the path ends with `/`.
fn base_url(answer: &str, what: &str) -> Result<Url, String> {
    let mut url = Url::parse(answer).map_err(|err| format!("{what} {answer:?}: {err}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{what} {answer:?} has no host"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        other => {
            return Err(format!(
                "{what} {answer:?} must use https (not {other}); put a TLS reverse proxy in front of the bot"
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{what} must not carry a user name or password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{what} {answer:?} must not have a query or fragment"
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn check_public_url(answer: &str) -> Result<Url, String> {
    base_url(answer, "the public URL")
}

fn check_servicenow_url(answer: &str) -> Result<Url, String> {
    base_url(answer, "the ServiceNow instance URL")
}

/// The package's state directory when it exists, else a file in the working directory.
fn default_database_url() -> &'static str {
    if Path::new(PACKAGE_STATE_DIRECTORY).is_dir() {
        "sqlite:///var/lib/m365bot/m365bot.db"
    } else {
        "sqlite://m365bot.db"
    }
}

/// PostgreSQL: connects and reads the migration level (nothing is created). SQLite: the
/// file's directory must exist (the file is created by `migrate`).
async fn check_database(url: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            let problem = "the SQLite URL names no file (sqlite://PATH)";
            progress(out, "fail", problem)?;
            bail!("{problem}; nothing was written.");
        }
        let directory = parent_directory(Path::new(path));
        if !directory.is_dir() {
            let problem = format!(
                "the SQLite file's directory {} does not exist (the Debian package uses /var/lib/m365bot)",
                directory.display()
            );
            progress(out, "fail", &problem)?;
            bail!("{problem}; nothing was written.");
        }
        let place = if Path::new(path).is_relative() {
            " (relative to the bot's working directory)"
        } else {
            ""
        };
        progress(
            out,
            "ok",
            &format!(
                "SQLite database {path}{place}: one instance only; `m365bot migrate` creates it"
            ),
        )?;
        return Ok(());
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        let problem = "the database URL must start with sqlite:, postgres:// or postgresql://";
        progress(out, "fail", problem)?;
        bail!("{problem}; nothing was written.");
    }
    let shown = crate::db::redact_url(url);
    let level = tokio::time::timeout(DATABASE_TIMEOUT, async {
        let db = crate::db::Db::connect(url, 1).await?;
        let level = db.migration_level().await?;
        db.pool.close().await;
        anyhow::Ok(level)
    })
    .await;
    let level = match level {
        Ok(Ok(level)) => level,
        Ok(Err(err)) => {
            let problem = format!("PostgreSQL at {shown}: {err:#}");
            progress(out, "fail", &problem)?;
            bail!("{problem}; nothing was written.");
        }
        Err(_) => {
            let problem = format!(
                "PostgreSQL at {shown} did not answer within {} s",
                DATABASE_TIMEOUT.as_secs()
            );
            progress(out, "fail", &problem)?;
            bail!("{problem}; nothing was written.");
        }
    };
    progress(
        out,
        "ok",
        &format!(
            "PostgreSQL at {shown}: connected; {} of {} migrations applied (`m365bot migrate` applies the rest)",
            level.applied_count, level.known
        ),
    )?;
    Ok(())
}

fn parent_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// True when `path` holds settings: any line that is neither blank nor a comment (the
/// package's commented template holds none).
fn holds_settings(path: &Path) -> bool {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().any(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        }),
        Err(_) => path.exists(),
    }
}

fn refuse_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && holds_settings(path) {
        bail!(
            "{} already exists: refusing to overwrite it (give --force to replace it; keep its setup.encryption_key with --encryption-key)",
            path.display()
        );
    }
    Ok(())
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The configuration file's text.
fn render(answers: &Answers) -> String {
    let q = toml_string;
    let mut text = String::new();
    text.push_str(
        "# m365bot configuration, written by `m365bot init`.\n\
         # Every key and its default: see the README's configuration table. Environment\n\
         # variables (M365BOT_SECTION__KEY) override this file.\n\
         # This file holds secrets: keep it mode 0600, readable by the service user only.\n\n",
    );
    text.push_str(&format!(
        "[server]\n\
         # Where the bot listens; a TLS reverse proxy in front forwards the public routes.\n\
         listen = {}\n\
         # Public HTTPS base URL: Teams posts to {{public_url}}api/messages.\n\
         public_url = {}\n\n",
        q(&answers.listen.to_string()),
        q(answers.public_url.as_str()),
    ));
    text.push_str(&format!(
        "[database]\n\
         # sqlite://PATH for one instance; postgres://USER:PASSWORD@HOST/DB for several.\n\
         url = {}\n\n",
        q(answers.database_url.expose_secret()),
    ));
    text.push_str(&format!(
        "[bot]\n\
         # The bot's Entra app registration (Azure Bot resource > Configuration).\n\
         app_id = {}\n\
         app_password = {}\n\
         tenant_id = {}\n",
        q(&answers.app_id),
        q(answers.app_password.expose_secret()),
        q(&answers.tenant_id),
    ));
    let authority = answers.authority_url.as_str();
    let default_authority = authority == crate::upstream::entra::DEFAULT_AUTHORITY;
    if !default_authority {
        text.push_str(&format!(
            "outbound_token_url = {}\n",
            q(&format!("{authority}{{tenant}}/oauth2/v2.0/token")),
        ));
    }
    text.push('\n');
    if !default_authority {
        text.push_str(&format!("[entra]\nauthority_url = {}\n\n", q(authority)));
    }
    if let Some(sn) = &answers.servicenow {
        text.push_str(&format!(
            "[servicenow]\n\
             # The bot's own account (role admin): setup, doctor and grant act as it.\n\
             instance_url = {}\n\
             username = {}\n\
             password = {}\n\n",
            q(sn.url.as_str()),
            q(&sn.user),
            q(sn.password.expose_secret()),
        ));
    }
    text.push_str(&format!(
        "[setup]\n\
         # Encrypts the secrets the setup wizard stores. Back it up with the database:\n\
         # without it those secrets cannot be read and setup must be run again.\n\
         encryption_key = {}\n\n",
        q(answers.encryption_key.expose_secret()),
    ));
    text.push_str(&format!(
        "[notifications.sources.push]\n\
         # Shared secret of the ServiceNow Business Rule (`m365bot servicenow-script`).\n\
         hmac_secret = {}\n",
        q(answers.push_secret.expose_secret()),
    ));
    text
}

/// Writes the file through a temporary sibling (mode 0600), loads it back as the bot would,
/// then moves it in place; on any failure nothing is left behind.
fn write_config(path: &Path, answers: &Answers, force: bool) -> anyhow::Result<()> {
    let directory = parent_directory(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_owned());
    let temporary = directory.join(format!(
        ".{name}.{}.tmp",
        crate::upstream::entra::random_token(6)
    ));
    let result = (|| {
        let mut file = open_private(&temporary)?;
        file.write_all(render(answers).as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        drop(file);
        let figment = figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::file(&temporary),
        );
        Settings::from_figment(figment)
            .context("the written configuration does not load (this is a bug in init)")?;
        refuse_overwrite(path, force)?;
        keep_owner(path, &temporary)?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot move the configuration to {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Gives `replacement` the owner and group of the file it replaces (the package's file belongs
/// to the service user); nothing to do for a new file.
#[cfg(unix)]
fn keep_owner(existing: &Path, replacement: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::metadata(existing) else {
        return Ok(());
    };
    let current = std::fs::metadata(replacement)
        .with_context(|| format!("cannot read {}", replacement.display()))?;
    if (metadata.uid(), metadata.gid()) == (current.uid(), current.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(replacement, Some(metadata.uid()), Some(metadata.gid()))
        .with_context(|| {
            format!(
                "cannot give the new configuration the owner of {} (run init as root, or as its owner)",
                existing.display()
            )
        })
}

#[cfg(not(unix))]
fn keep_owner(_existing: &Path, _replacement: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn open_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// The outbound HTTP client with the configuration's defaults.
fn http_client() -> anyhow::Result<reqwest::Client> {
    let defaults: Settings = figment::Figment::new()
        .extract()
        .context("default settings")?;
    crate::app::http_client(&defaults)
}

/// What to do after `init`, with the exact values.
fn next_steps(path: &Path, answers: &Answers) -> String {
    let config = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let config = config.display();
    let base = answers.public_url.as_str();
    let domain = answers.public_url.host_str().unwrap_or_default();
    let mut steps = vec![
        format!(
            "Azure Bot resource > Configuration > Messaging endpoint:\n     {base}api/messages"
        ),
        format!(
            "Bot's app registration > Authentication > Web > Redirect URI (account linking):\n     {base}{}",
            crate::link::flow::CALLBACK_PATH.trim_start_matches('/')
        ),
        format!(
            "TLS reverse proxy: forward https://{domain}/api/messages, /api/servicenow/events,\n     /auth/link/* (and /slack/*) to http://{}; keep /metrics internal (docs/deploy.md)",
            answers.listen
        ),
        format!("Create or upgrade the database schema:\n     m365bot --config {config} migrate"),
        format!(
            "Teams app package, then upload it (Teams admin center > Manage apps > Upload):\n     m365bot --config {config} manifest --out m365bot-teams-app.zip"
        ),
        format!(
            "Start the bot: systemctl enable --now m365bot (package), or\n     m365bot --config {config} serve"
        ),
    ];
    if answers.servicenow.is_some() {
        steps.push(format!(
            "ServiceNow Business Rule for case updates (replace <SECRET> with\n     notifications.sources.push.hmac_secret from {config}):\n     m365bot --config {config} servicenow-script"
        ));
    }
    steps.push("In Teams, open a 1:1 chat with the bot and type: setup".to_owned());
    let mut text = String::from("Next steps:\n");
    for (number, step) in steps.iter().enumerate() {
        text.push_str(&format!("  {}. {step}\n", number + 1));
    }
    text.push_str(&format!(
        "Back up {config} (it holds setup.encryption_key) together with the database.\n"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_must_be_https_off_loopback() {
        assert_eq!(
            check_public_url("https://bot.contoso.com")
                .expect("valid")
                .as_str(),
            "https://bot.contoso.com/"
        );
        assert!(check_public_url("http://bot.contoso.com/").is_err());
        assert!(check_public_url("http://127.0.0.1:3978/").is_ok());
        assert!(check_public_url("https://bot.contoso.com/?x=1").is_err());
        assert!(check_public_url("https://user:pw@bot.contoso.com/").is_err());
        assert!(check_public_url("bot.contoso.com").is_err());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        let parsed: toml::Value =
            toml::from_str(&format!("x = {}", toml_string("p\"w\\\u{1}d"))).expect("TOML");
        assert_eq!(parsed["x"].as_str(), Some("p\"w\\\u{1}d"));
    }

    #[test]
    fn guids_are_checked_and_lowercased() {
        assert_eq!(
            check_guid("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE", "x").expect("GUID"),
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        );
        assert!(check_guid("contoso.onmicrosoft.com", "the tenant id").is_err());
    }
}
