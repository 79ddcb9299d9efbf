//! `m365bot init` against the in-process emulators: with flags it checks every answer live and
//! writes a configuration `serve` starts with; every failed check leaves nothing behind.
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use m365bot::init::{InitArgs, Prompt};
use m365bot::sandbox::{Emulator, Sandbox, SandboxOptions};

fn m365bot() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_m365bot"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    command
}

/// The emulators, a bot app registered in their Entra ID, and a directory to write into.
struct World {
    sandbox: Sandbox,
    app_id: String,
    app_secret: String,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        let sandbox = Sandbox::start(SandboxOptions::default())
            .await
            .expect("emulators start");
        let (app_id, app_secret) = sandbox.handle().create_app("m365bot", &[]);
        Self {
            sandbox,
            app_id,
            app_secret,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("m365bot.toml")
    }

    /// `init` with every answer as a flag (secrets in the environment, as documented).
    fn init_command(&self, bot_port: u16) -> Command {
        self.init_command_with(bot_port, &[])
    }

    /// Like [`Self::init_command`], with some flags' values replaced (an empty value leaves the
    /// flag out).
    fn init_command_with(&self, bot_port: u16, replaced: &[(&str, &str)]) -> Command {
        let urls = self.sandbox.urls();
        let demo = self.sandbox.demo();
        let flags = [
            ("--public-url", format!("http://127.0.0.1:{bot_port}/")),
            ("--listen", format!("127.0.0.1:{bot_port}")),
            ("--app-id", self.app_id.clone()),
            ("--tenant-id", demo.tenant_id.clone()),
            ("--authority-url", format!("{}/", urls.entra)),
            (
                "--database-url",
                format!("sqlite://{}", self.dir.path().join("bot.db").display()),
            ),
            ("--servicenow-url", urls.servicenow.clone()),
            ("--servicenow-user", demo.servicenow_admin_user.clone()),
        ];
        let mut command = m365bot();
        command.arg("init").arg("--out").arg(self.config());
        for (flag, value) in flags {
            let value = replaced
                .iter()
                .find(|(name, _)| *name == flag)
                .map_or(value, |(_, v)| (*v).to_owned());
            if !value.is_empty() {
                command.arg(flag).arg(value);
            }
        }
        command.env("MicrosoftAppPassword", &self.app_secret).env(
            "M365BOT_INIT_SERVICENOW_PASSWORD",
            &demo.servicenow_admin_password,
        );
        command
    }

    fn files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("m365bot runs"))
        .await
        .expect("joined")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Stops the child process when the test ends, passed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_flags_writes_a_configuration_that_serve_starts_with() {
    let world = World::start().await;
    let port = free_port();
    let entra_before = world.sandbox.handle().request_count(Emulator::Entra);
    let output = run(world.init_command(port)).await;
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    for line in [
        "[ok] public URL http://127.0.0.1:",
        "[ok] app id and tenant id are GUIDs",
        "[ok] Entra ID issued the bot a token",
        "[ok] SQLite database",
        "[ok] ServiceNow login as admin",
        "[ok] setup.encryption_key generated",
        "(mode 0600)",
        &format!("http://127.0.0.1:{port}/api/messages"),
        &format!("http://127.0.0.1:{port}/auth/link/callback"),
        "manifest --out m365bot-teams-app.zip",
        "migrate",
    ] {
        assert!(all.contains(line), "missing {line:?} in:\n{all}");
    }
    assert!(
        world.sandbox.handle().request_count(Emulator::Entra) > entra_before,
        "the token request was live"
    );
    let demo = world.sandbox.demo();
    for secret in [&world.app_secret, &demo.servicenow_admin_password] {
        assert!(
            !all.contains(secret.as_str()),
            "a secret was printed:\n{all}"
        );
    }
    let config = world.config();
    #[cfg(unix)]
    assert_eq!(mode(&config), 0o600);
    let written = std::fs::read_to_string(&config).expect("written");
    let parsed: toml::Value = toml::from_str(&written).expect("TOML");
    let key = parsed["setup"]["encryption_key"].as_str().expect("key");
    m365bot::setup::crypto::check_key(Some(&key.to_owned().into())).expect("a usable key");
    assert_eq!(
        parsed["bot"]["app_id"].as_str(),
        Some(world.app_id.as_str())
    );
    assert_eq!(
        world.files(),
        vec!["m365bot.toml".to_owned()],
        "no leftovers"
    );

    let migrated = run({
        let mut command = m365bot();
        command.arg("--config").arg(&config).arg("migrate");
        command
    })
    .await;
    assert!(migrated.status.success(), "{}", text(&migrated));

    let child = m365bot()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut serving = Running(child);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        if let Ok(Some(status)) = serving.0.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = serving.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("serve exited with {status}:\n{stderr}");
        }
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && response.status() == 200
        {
            break response.json::<serde_json::Value>().await.expect("JSON");
        }
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["migrations"]["state"], "current", "{ready}");
    // The bot refuses an unauthenticated activity: it runs in Bot Framework mode.
    let refused = client
        .post(format!("http://127.0.0.1:{port}/api/messages"))
        .json(&serde_json::json!({"type": "message", "text": "help"}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_fails_with_the_fix_and_writes_nothing() {
    let world = World::start().await;
    let mut command = world.init_command(free_port());
    command.env("MicrosoftAppPassword", "not-the-secret");
    let output = run(command).await;
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("[fail] the bot's token request failed"),
        "{all}"
    );
    assert!(all.contains("AADSTS7000215"), "{all}");
    assert!(all.contains("nothing was written"), "{all}");
    assert!(!all.contains("not-the-secret"), "{all}");
    assert!(world.files().is_empty(), "{:?}", world.files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_servicenow_password_fails_and_writes_nothing() {
    let world = World::start().await;
    let mut command = world.init_command(free_port());
    command.env("M365BOT_INIT_SERVICENOW_PASSWORD", "wrong-password");
    let output = run(command).await;
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("[ok] Entra ID issued the bot a token"),
        "{all}"
    );
    assert!(
        all.contains("ServiceNow refused the login of admin"),
        "{all}"
    );
    assert!(world.files().is_empty(), "{:?}", world.files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_app_id_fails_before_any_request() {
    let world = World::start().await;
    let entra_before = world.sandbox.handle().request_count(Emulator::Entra);
    let command = world.init_command_with(free_port(), &[("--app-id", "my-bot")]);
    let output = run(command).await;
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("\"my-bot\" is not a GUID"), "{all}");
    assert_eq!(
        world.sandbox.handle().request_count(Emulator::Entra),
        entra_before,
        "no token request with a malformed app id"
    );
    assert!(world.files().is_empty());
}

/// A configuration someone wrote before.
const MINE: &str = "[server]\nlisten = \"127.0.0.1:3978\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_kept_unless_forced() {
    let world = World::start().await;
    std::fs::write(world.config(), MINE).expect("write");
    let output = run(world.init_command(free_port())).await;
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("--force"), "{all}");
    assert_eq!(std::fs::read_to_string(world.config()).expect("read"), MINE);
    let mut forced = world.init_command(free_port());
    forced.arg("--force");
    let output = run(forced).await;
    assert!(output.status.success(), "{}", text(&output));
    let written = std::fs::read_to_string(world.config()).expect("read");
    assert!(written.contains("[setup]"), "{written}");
    #[cfg(unix)]
    assert_eq!(mode(&world.config()), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packages_commented_template_is_replaced_without_force() {
    let world = World::start().await;
    std::fs::copy("debian/m365bot.toml", world.config()).expect("copy the template");
    let output = run(world.init_command(free_port())).await;
    assert!(output.status.success(), "{}", text(&output));
    let written = std::fs::read_to_string(world.config()).expect("read");
    assert!(written.contains("\napp_id = "), "{written}");
    assert!(
        !written.contains("Write this file with"),
        "replaced: {written}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_fails_without_showing_its_password() {
    let world = World::start().await;
    let url = format!("postgres://bot:pg-secret@127.0.0.1:{}/m365bot", free_port());
    let command = world.init_command_with(free_port(), &[("--database-url", &url)]);
    let output = run(command).await;
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("[fail] PostgreSQL at"), "{all}");
    assert!(!all.contains("pg-secret"), "{all}");
    assert!(world.files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_is_checked_live() {
    let Some(database) = support::db::postgres_test_db().await else {
        return;
    };
    let world = World::start().await;
    let command = world.init_command_with(free_port(), &[("--database-url", &database.url)]);
    let output = run(command).await;
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let known = std::fs::read_dir("migrations/postgres")
        .expect("migrations")
        .count();
    assert!(
        all.contains(&format!("connected; {known} of {known} migrations applied")),
        "{all}"
    );
}

/// Answers from a list, recording the questions.
struct Scripted {
    answers: Vec<&'static str>,
    asked: Vec<String>,
}

impl Prompt for Scripted {
    fn ask(
        &mut self,
        question: &str,
        default: Option<&str>,
        _secret: bool,
    ) -> anyhow::Result<String> {
        self.asked.push(question.to_owned());
        anyhow::ensure!(!self.answers.is_empty(), "unexpected question: {question}");
        let answer = self.answers.remove(0);
        Ok(match default {
            Some(value) if answer.is_empty() => value.to_owned(),
            _ => answer.to_owned(),
        })
    }
}

#[derive(Parser)]
struct InitCli {
    #[command(flatten)]
    args: InitArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_answers_are_checked_and_asked_again() {
    let world = World::start().await;
    let demo = world.sandbox.demo().clone();
    let urls = world.sandbox.urls().clone();
    let cli = InitCli::parse_from([
        "init",
        "--authority-url",
        &format!("{}/", urls.entra),
        "--no-servicenow",
    ]);
    let app_id: &'static str = Box::leak(world.app_id.clone().into_boxed_str());
    let secret: &'static str = Box::leak(world.app_secret.clone().into_boxed_str());
    let tenant: &'static str = Box::leak(demo.tenant_id.clone().into_boxed_str());
    let database: &'static str = Box::leak(
        format!("sqlite://{}", world.dir.path().join("bot.db").display()).into_boxed_str(),
    );
    let mut prompt = Scripted {
        answers: vec![
            "http://bot.contoso.com/", // refused: not https
            "https://bot.contoso.com",
            "not-a-guid", // refused
            app_id,
            tenant,
            secret,
            database,
        ],
        asked: Vec::new(),
    };
    let mut out = Vec::new();
    let path = m365bot::init::run(cli.args, Some(&world.config()), &mut prompt, &mut out)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", String::from_utf8_lossy(&out)));
    let out = String::from_utf8_lossy(&out);
    assert_eq!(path, world.config());
    assert!(out.contains("[fail] the public URL"), "{out}");
    assert!(out.contains("must use https"), "{out}");
    assert!(out.contains("\"not-a-guid\" is not a GUID"), "{out}");
    assert!(out.contains("[skip] ServiceNow left out"), "{out}");
    assert!(
        out.contains("https://bot.contoso.com/api/messages"),
        "{out}"
    );
    assert_eq!(prompt.asked.len(), 7, "{:?}", prompt.asked);
    assert!(prompt.answers.is_empty());
    let written = std::fs::read_to_string(world.config()).expect("written");
    assert!(!written.contains("[servicenow]"), "{written}");
    std::io::stdout().flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_missing_answers_name_their_flag_and_defaults_apply() {
    let world = World::start().await;
    let mut command = world.init_command_with(free_port(), &[("--servicenow-url", "")]);
    command.arg("--non-interactive");
    let output = run(command).await;
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("(--servicenow-url)"), "{all}");
    assert!(world.files().is_empty());

    let mut command = world.init_command_with(free_port(), &[("--database-url", "")]);
    command.current_dir(world.dir.path());
    let output = run(command).await;
    assert!(output.status.success(), "{}", text(&output));
    let written = std::fs::read_to_string(world.config()).expect("read");
    // The package's state directory when it is installed, else the working directory.
    let expected = if Path::new("/var/lib/m365bot").is_dir() {
        "url = \"sqlite:///var/lib/m365bot/m365bot.db\""
    } else {
        "url = \"sqlite://m365bot.db\""
    };
    assert!(
        written.contains(expected),
        "the default database: {written}"
    );
}
