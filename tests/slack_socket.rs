//! Socket Mode against the Slack emulator: `hello`, acknowledgements with the immediate
//! answer, `disconnect` and dropped connections followed by a reconnect, and a burst of 100
//! commands across a dropped connection with none lost and none answered twice.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use m365bot::app::{App, Application};
use m365bot::demo::Demo;
use m365bot::sandbox::SandboxOptions;
use m365bot::sandbox::slack::{SlackEmulator, SlackHandle};
use support::slack::text_of;
use tokio_util::sync::CancellationToken;

struct SocketBot {
    _demo: Demo,
    slack: SlackEmulator,
    _app: Arc<App>,
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
            _app: app,
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
