//! A bot wired to the demo emulators and to the Slack emulator, with signed Slack requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use m365bot::app::{App, Application};
use m365bot::demo::Demo;
use m365bot::sandbox::SandboxOptions;
use m365bot::sandbox::slack::{
    CommandTicket, SANDBOX_SIGNING_SECRET, SANDBOX_TEAM_ID, SlackEmulator, SlackHandle, SlackPosted,
};
use m365bot::slack::verify::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The bot, its emulators and a client.
pub struct SlackBot {
    /// ServiceNow, Entra and Graph emulators with the demo integration.
    pub demo: Demo,
    /// The Slack emulator.
    pub slack: SlackEmulator,
    /// The bot's base URL.
    pub base_url: String,
    /// Shared state.
    pub app: Arc<App>,
    /// Client for requests to the bot.
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

/// An answer of the bot: status and body (JSON when it is JSON, else `Null`).
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON.
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl SlackBot {
    /// Starts everything on loopback with a fresh SQLite database.
    pub async fn start() -> Self {
        Self::start_with(false, None, |_| {}).await
    }

    /// Like [`Self::start`]; with `fixed_port` the bot listens on a port chosen before the
    /// emulators start, so that `server.public_url` (and the sign-in app's redirect URI) is
    /// its real address; `url` is the database (a fresh SQLite file when `None`); `adjust`
    /// changes the settings before the bot is built.
    pub async fn start_with(
        fixed_port: bool,
        url: Option<&str>,
        adjust: impl FnOnce(&mut m365bot::config::Settings),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = url
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("slack.db").display()));
        let port = if fixed_port {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        } else {
            0
        };
        let demo = Demo::start(
            SandboxOptions::default(),
            format!("127.0.0.1:{port}").parse().expect("addr"),
            &url,
        )
        .await
        .expect("the demo integration is provisioned");
        let slack = SlackEmulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            &demo.sandbox.demo().tenant_domain,
        )
        .await
        .expect("the Slack emulator starts");
        let mut settings = demo.settings.clone();
        m365bot::sandbox::slack::configure(&mut settings, &slack.api_url())
            .expect("Slack settings");
        adjust(&mut settings);
        settings.validate().expect("adjusted settings are valid");
        let application = Application::build(settings).await.expect("bot builds");
        let addr = application.local_addr();
        let app = application.app();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { application.run_until_stopped(stop).await });
        Self {
            demo,
            slack,
            base_url: format!("http://{addr}"),
            app,
            client: reqwest::Client::new(),
            shutdown,
            _dir: dir,
        }
    }

    /// The Slack emulator's world.
    pub fn world(&self) -> SlackHandle {
        self.slack.handle()
    }

    /// POSTs `body` to `path` with the given signature headers (`None` leaves one out).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        timestamp: Option<&str>,
        signature: Option<&str>,
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", content_type)
            .body(body);
        if let Some(ts) = timestamp {
            request = request.header(TIMESTAMP_HEADER, ts);
        }
        if let Some(sig) = signature {
            request = request.header(SIGNATURE_HEADER, sig);
        }
        let response = request.send().await.expect("the bot answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        Answer {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// POSTs `body` to `path`, signed now with the sandbox signing secret.
    pub async fn post_signed(&self, path: &str, content_type: &str, body: &str) -> Answer {
        let ts = chrono::Utc::now().timestamp().to_string();
        let signature = sign(SANDBOX_SIGNING_SECRET.as_bytes(), &ts, body.as_bytes());
        self.post_raw(
            path,
            content_type,
            body.to_owned(),
            Some(&ts),
            Some(&signature),
        )
        .await
    }

    /// The form body of `/m365 <text>` typed by `user` in `channel`, with a fresh ticket.
    pub fn command_form(&self, user: &str, channel: &str, text: &str) -> (String, CommandTicket) {
        let ticket = self.world().new_command(channel, user);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", "unused")
            .append_pair("team_id", SANDBOX_TEAM_ID)
            .append_pair("channel_id", channel)
            .append_pair("user_id", user)
            .append_pair("user_name", user)
            .append_pair("command", "/m365")
            .append_pair("text", text)
            .append_pair("response_url", &ticket.response_url)
            .append_pair("trigger_id", &ticket.trigger_id)
            .finish();
        (form, ticket)
    }

    /// Types `/m365 <text>` as `user` in `channel`: the immediate answer and the ticket.
    pub async fn command(&self, user: &str, channel: &str, text: &str) -> (Answer, CommandTicket) {
        let (form, ticket) = self.command_form(user, channel, text);
        let answer = self
            .post_signed(
                m365bot::slack::COMMANDS_PATH,
                "application/x-www-form-urlencoded",
                &form,
            )
            .await;
        (answer, ticket)
    }

    /// Waits (up to 20 s) until `count` messages reached the response URL of `ticket`.
    pub async fn responses(&self, ticket: &CommandTicket, count: usize) -> Vec<SlackPosted> {
        let started = Instant::now();
        loop {
            let posted: Vec<SlackPosted> = self
                .world()
                .messages()
                .into_iter()
                .filter(|m| m.response_url.as_deref() == Some(ticket.response_id.as_str()))
                .collect();
            if posted.len() >= count || started.elapsed() > Duration::from_secs(20) {
                return posted;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `body` (from [`m365bot::sandbox::slack::event_callback`]) to `/slack/events`,
    /// signed; `retry` sets `X-Slack-Retry-Num`. Returns the HTTP status.
    pub async fn send_event(&self, body: &Value, retry: Option<u32>) -> u16 {
        m365bot::sandbox::slack::send_event(&self.client, &self.base_url, body, retry)
            .await
            .expect("the bot answers")
    }

    /// Waits (up to 20 s) until `count` messages match `wanted`; returns those that do.
    pub async fn posted_where(
        &self,
        count: usize,
        wanted: impl Fn(&SlackPosted) -> bool,
    ) -> Vec<SlackPosted> {
        let started = Instant::now();
        loop {
            let posted: Vec<SlackPosted> = self
                .world()
                .messages()
                .into_iter()
                .filter(&wanted)
                .collect();
            if posted.len() >= count || started.elapsed() > Duration::from_secs(20) {
                return posted;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SlackBot {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The readable text of a message's blocks.
pub fn text_of(blocks: &Value) -> String {
    m365bot::slack::blocks::to_text(blocks, "")
}

/// The sign-in URL of a Slack message (the link button).
pub fn sign_in_url(blocks: &Value) -> Option<String> {
    blocks
        .as_array()?
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find_map(|e| {
            e["url"]
                .as_str()
                .filter(|u| u.contains("/auth/link/start"))
                .map(str::to_owned)
        })
}

/// Follows start → Entra authorize → callback without a browser; the final status and page.
pub async fn walk(start: &str) -> (u16, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    let mut url = start.to_owned();
    for _ in 0..5 {
        let response = browser.get(&url).send().await.expect("request");
        let status = response.status().as_u16();
        if status == 302 {
            url = response.headers()["location"]
                .to_str()
                .expect("location")
                .to_owned();
            continue;
        }
        return (status, response.text().await.expect("page"));
    }
    panic!("too many redirects");
}
