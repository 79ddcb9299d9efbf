//! Acknowledgement latency of signed Slack slash commands on loopback: the bot (in this
//! process, release build) verifies the signature, parses the form and answers. `help` is
//! answered in full in the acknowledgement; `roles` is acknowledged with "working on it" while
//! its work (users.info, ServiceNow) runs after the answer, against the in-process emulators.
//!
//! Run: `cargo bench --bench slack` (prints p50 / p99 / max per command, measured by the
//! client from sending the request to reading the whole answer, one request at a time).

use std::time::{Duration, Instant};

use m365bot::app::Application;
use m365bot::demo::Demo;
use m365bot::sandbox::SandboxOptions;
use m365bot::sandbox::slack::{SANDBOX_SIGNING_SECRET, SANDBOX_TEAM_ID, SlackEmulator};
use tokio_util::sync::CancellationToken;

const REQUESTS: usize = 2000;
const WARM_UP: usize = 200;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
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
    settings.log.filter = "warn".to_owned();
    let application = Application::build(settings).await.expect("bot");
    let bot = format!("http://{}", application.local_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { application.run_until_stopped(stop).await });
    let client = reqwest::Client::new();
    let handle = slack.handle();

    println!(
        "signed POST /slack/commands on loopback, {REQUESTS} requests one at a time after {WARM_UP} warm-up ones; \
         bot, emulators and client share this process and the machine's {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for text in ["help", "roles"] {
        let mut times = Vec::with_capacity(REQUESTS);
        for i in 0..WARM_UP + REQUESTS {
            let ticket = handle.new_command("C0GENERAL", "U0ADMIN");
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("team_id", SANDBOX_TEAM_ID)
                .append_pair("channel_id", "C0GENERAL")
                .append_pair("user_id", "U0ADMIN")
                .append_pair("command", "/m365")
                .append_pair("text", text)
                .append_pair("response_url", &ticket.response_url)
                .append_pair("trigger_id", &ticket.trigger_id)
                .finish();
            let ts = chrono::Utc::now().timestamp().to_string();
            let signature = m365bot::slack::verify::sign(
                SANDBOX_SIGNING_SECRET.as_bytes(),
                &ts,
                form.as_bytes(),
            );
            let started = Instant::now();
            let response = client
                .post(format!("{bot}/slack/commands"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header(m365bot::slack::verify::TIMESTAMP_HEADER, &ts)
                .header(m365bot::slack::verify::SIGNATURE_HEADER, signature)
                .body(form)
                .send()
                .await
                .expect("answer");
            let status = response.status();
            let _ = response.bytes().await.expect("body");
            let elapsed = started.elapsed();
            assert!(status.is_success(), "{text}: HTTP {status}");
            if i >= WARM_UP {
                times.push(elapsed);
            }
            if text == "roles" {
                // Keep the background work from piling up: one command's work at a time.
                wait_for_answer(&handle, &ticket.response_id).await;
            }
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "/m365 {text:<6} ack: p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
            ms(at(0.50)),
            ms(at(0.99)),
            ms(*times.last().expect("times"))
        );
    }
    shutdown.cancel();
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn wait_for_answer(handle: &m365bot::sandbox::slack::SlackHandle, id: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if handle.has_response(id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no answer to a roles command within 10 s");
}
