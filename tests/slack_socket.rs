//! Socket Mode against the Slack emulator: `hello`, acknowledgements with the immediate
//! answer, `disconnect` and dropped connections followed by a reconnect, a burst of 100
//! commands across a dropped connection with none lost and none answered twice, removal events
//! over the socket, and `m365bot sandbox --slack-transport socket` driven by `slack-say`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use m365bot::app::{App, Application};
use m365bot::demo::Demo;
use m365bot::sandbox::SandboxOptions;
use m365bot::sandbox::slack::{SlackEmulator, SlackHandle};
use m365bot::slack::install;
use support::slack::text_of;
use tokio_util::sync::CancellationToken;

struct SocketBot {
    _demo: Demo,
    slack: SlackEmulator,
    app: Arc<App>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for SocketBot {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl SocketBot {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("socket.db").display());
        let demo = Demo::start(
            SandboxOptions::default(),
            "127.0.0.1:0".parse().expect("addr"),
            &url,
        )
        .await
        .expect("demo");
        let slack = SlackEmulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            &demo.sandbox.demo().tenant_domain,
        )
        .await
        .expect("emulator");
        let mut settings = demo.settings.clone();
        m365bot::sandbox::slack::configure(&mut settings, &slack.api_url()).expect("settings");
        settings.slack.transport = m365bot::slack::Transport::Socket;
        settings.validate().expect("socket settings are valid");
        let application = Application::build(settings).await.expect("bot");
        let app = application.app();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { application.run_until_stopped(stop).await });
        let bot = Self {
            _demo: demo,
            slack,
            app,
            shutdown,
            _dir: dir,
        };
        bot.wait_connected(1).await;
        bot
    }

    fn world(&self) -> SlackHandle {
        self.slack.handle()
    }

    /// Waits until `count` connections were opened and one is open.
    async fn wait_connected(&self, count: u32) {
        let started = Instant::now();
        loop {
            let (opened, open) = self.world().socket_connections();
            if opened >= count && open {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no connection {count} ({opened} opened)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_until(&self, what: &str, mut done: impl FnMut(&SlackHandle) -> bool) {
        let started = Instant::now();
        while !done(&self.world()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test]
async fn commands_are_acknowledged_with_their_answer_and_the_bot_reconnects() {
    let bot = SocketBot::start().await;
    let (help, _) = bot.world().socket_command("U0ADMIN", "C0GENERAL", "help");
    bot.wait_until("the help ack", |w| {
        w.socket_acks().iter().any(|a| a.envelope_id == help)
    })
    .await;
    let ack = bot
        .world()
        .socket_acks()
        .into_iter()
        .find(|a| a.envelope_id == help)
        .expect("ack");
    let payload = ack.payload.expect("help travels in the ack");
    assert!(text_of(&payload["blocks"]).contains("m365bot commands"));

    bot.world().socket_disconnect("refresh_requested");
    bot.wait_connected(2).await;
    let (doctor, ticket) = bot.world().socket_command("U0ADMIN", "C0GENERAL", "doctor");
    bot.wait_until("the doctor report", |w| {
        w.messages()
            .iter()
            .any(|m| m.response_url.as_deref() == Some(ticket.response_id.as_str()))
    })
    .await;
    let acks = bot.world().socket_acks();
    let ack = acks
        .iter()
        .find(|a| a.envelope_id == doctor)
        .expect("acked");
    assert!(text_of(&ack.payload.clone().unwrap_or_default()["blocks"]).contains("Working on"));
    let report = bot
        .world()
        .messages()
        .into_iter()
        .find(|m| m.response_url.as_deref() == Some(ticket.response_id.as_str()))
        .expect("report");
    assert!(
        text_of(&report.blocks).contains("20 passed"),
        "{}",
        text_of(&report.blocks)
    );

    bot.world().socket_drop();
    bot.wait_connected(3).await;
    let (again, _) = bot.world().socket_command("U0JANE", "C0GENERAL", "help");
    bot.wait_until("an ack after the drop", |w| {
        w.socket_acks().iter().any(|a| a.envelope_id == again)
    })
    .await;
}

#[tokio::test]
async fn a_dropped_connection_in_a_burst_of_100_commands_loses_none_and_doubles_none() {
    let bot = SocketBot::start().await;
    let mut tickets = Vec::new();
    for i in 0..100 {
        if i == 50 {
            bot.world().socket_drop();
        }
        tickets.push(
            bot.world()
                .socket_command("U0ADMIN", "C0GENERAL", "setup status"),
        );
    }
    bot.wait_until("every envelope acknowledged", |w| {
        w.socket_unacknowledged() == 0
    })
    .await;
    bot.wait_until("every answer posted", |w| {
        let posted = w.messages();
        tickets.iter().all(|(_, t)| {
            posted
                .iter()
                .any(|m| m.response_url.as_deref() == Some(t.response_id.as_str()))
        })
    })
    .await;
    // Late duplicates would arrive within this pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut answers: HashMap<String, usize> = HashMap::new();
    for message in bot.world().messages() {
        if let Some(id) = message.response_url {
            *answers.entry(id).or_default() += 1;
        }
    }
    for (envelope, ticket) in &tickets {
        assert_eq!(
            answers.get(&ticket.response_id),
            Some(&1),
            "{envelope} answered exactly once"
        );
    }
    let acks = bot.world().socket_acks();
    assert!(
        tickets
            .iter()
            .all(|(id, _)| acks.iter().any(|a| &a.envelope_id == id)),
        "every envelope acknowledged"
    );
    let (connections, _) = bot.world().socket_connections();
    assert!(connections >= 2, "reconnected after the drop");
}

#[tokio::test]
async fn app_uninstalled_and_tokens_revoked_over_socket_mode_delete_the_token() {
    let bot = SocketBot::start().await;
    let db = &bot.app.db;
    let secrets = bot
        .app
        .slack
        .as_ref()
        .and_then(|s| s.secrets.as_ref())
        .expect("installs are configured in the sandbox");
    let access = |team: &str| -> m365bot::slack::api::OAuthAccess {
        serde_json::from_value(serde_json::json!({
            "ok": true, "access_token": format!("xoxb-{team}-token"), "token_type": "bot",
            "scope": "commands", "bot_user_id": "U0BOT", "app_id": "A0SANDBOX",
            "team": {"id": team, "name": team},
        }))
        .expect("answer")
    };
    for team in ["T0SECOND", "T0THIRD"] {
        install::save_installation(db, secrets, &access(team))
            .await
            .expect("stored");
    }
    let stored = |team: &'static str| async move {
        install::installation(db, team)
            .await
            .expect("read")
            .is_some()
    };
    let uninstalled = bot
        .world()
        .socket_event("T0SECOND", serde_json::json!({"type": "app_uninstalled"}));
    let revoked = bot.world().socket_event(
        "T0THIRD",
        serde_json::json!({"type": "tokens_revoked", "tokens": {"bot": ["U0BOT"]}}),
    );
    bot.wait_until("both events acknowledged", |w| {
        let acks = w.socket_acks();
        [&uninstalled, &revoked]
            .iter()
            .all(|id| acks.iter().any(|a| &&a.envelope_id == id))
    })
    .await;
    let started = Instant::now();
    while stored("T0SECOND").await || stored("T0THIRD").await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the tokens were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `m365bot sandbox`, stopped when dropped.
struct SandboxProcess(std::process::Child);

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slack_say(bot: &str, slack: &str, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_m365bot"))
        .args(["slack-say", "--bot", bot, "--slack", slack])
        .args(args)
        .output()
        .expect("slack-say runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn the_sandbox_over_socket_mode_answers_slack_say() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (bot_port, slack_port) = (free_port(), free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_m365bot"))
        .args([
            "sandbox",
            "--listen",
            &format!("127.0.0.1:{bot_port}"),
            "--database",
            &format!("sqlite://{}", dir.path().join("sandbox.db").display()),
            "--slack-port",
            &slack_port.to_string(),
            "--slack-transport",
            "socket",
        ])
        .env_remove("M365BOT_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the sandbox starts");
    let _sandbox = SandboxProcess(child);
    let bot = format!("http://127.0.0.1:{bot_port}");
    let slack = format!("http://127.0.0.1:{slack_port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let connected = match client.get(format!("{slack}/_sandbox/socket")).send().await {
            Ok(response) => response
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["connected"] == true),
            Err(_) => false,
        };
        if connected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the sandbox bot never opened its Socket Mode connection"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No HTTP request URLs in Socket Mode: the answers can only have come through the socket.
    let refused = client
        .post(format!("{bot}{}", m365bot::slack::COMMANDS_PATH))
        .body("text=help")
        .send()
        .await
        .expect("the bot answers");
    assert_eq!(refused.status(), 404);

    let (ok, help) = tokio::task::spawn_blocking({
        let (bot, slack) = (bot.clone(), slack.clone());
        move || slack_say(&bot, &slack, &["/m365 help"])
    })
    .await
    .expect("joined");
    assert!(ok, "{help}");
    assert!(help.contains("m365bot commands"), "{help}");
    let (ok, doctor) = tokio::task::spawn_blocking({
        let (bot, slack) = (bot.clone(), slack.clone());
        move || slack_say(&bot, &slack, &["/m365 doctor"])
    })
    .await
    .expect("joined");
    assert!(ok, "{doctor}");
    assert!(doctor.contains("Working on"), "{doctor}");
    assert!(doctor.contains("20 passed"), "{doctor}");
    // A mention, and the setup window walked from the terminal, all through the socket.
    let say = |args: &'static [&'static str]| {
        let (bot, slack) = (bot.clone(), slack.clone());
        tokio::task::spawn_blocking(move || slack_say(&bot, &slack, args))
    };
    let (ok, roles) = say(&["@m365bot roles"]).await.expect("joined");
    assert!(ok, "{roles}");
    assert!(
        roles.contains("x_mioms_m365_assis.administrator"),
        "{roles}"
    );
    let (ok, window) = say(&["/m365 setup"]).await.expect("joined");
    assert!(ok, "{window}");
    assert!(window.contains("What setup will do"), "{window}");
    let (ok, next) = say(&["--submit"]).await.expect("joined");
    assert!(ok, "{next}");
    assert!(
        next.contains("Environment and authentication type"),
        "{next}"
    );
}
