//! End-to-end smoke test with the real Microsoft 365 Agents Playground: the bot runs in
//! insecure-local mode, `tools/node/playground-smoke.js` drives the Playground over HTTP and
//! WebSocket (personal `help`, card invoke, channel mention, installation welcome card).
//! Needs Node >= 20 and `npm ci --prefix tools/node`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::TestApp;
use support::playground::{assert_playground_installed, repo, run_node_script};

/// The tenant of `sandbox/m365agentsplayground.yml`.
const PLAYGROUND_TENANT: &str = "8eaef023-2b34-4da1-9baa-8bc8c9d6a490";
/// Longer than the script's own 60 s timeout, so the script reports its failure itself.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_playground_drives_the_teams_endpoint() {
    let repo = repo();
    assert_playground_installed(&repo);
    let bot = TestApp::spawn(&format!(
        "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"{PLAYGROUND_TENANT}\"\n\
         allowed_service_url_hosts = [\"localhost\", \"127.0.0.1\"]\n"
    ))
    .await;
    let endpoint = format!("{}/api/messages", bot.base_url);

    let run = tokio::task::spawn_blocking(move || {
        run_node_script(&repo, "playground-smoke.js", &[&endpoint], SCRIPT_TIMEOUT)
    })
    .await
    .expect("script runner");
    assert!(
        run.status.success(),
        "playground-smoke.js failed ({}):\n{}\n{}",
        run.status,
        run.stderr,
        run.stdout
    );
    eprintln!("playground-smoke.js finished in {:?}", run.elapsed);

    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON summary line expected:\n{}",
        run.stdout
    );
    let summary: Value = serde_json::from_str(lines[0]).expect("the summary is JSON");
    assert_eq!(summary["ok"], true, "{summary}");
    // help reply, channel reply, welcome card.
    assert!(
        summary["cardsSeen"].as_u64().expect("cardsSeen") >= 3,
        "{summary}"
    );
    assert_eq!(
        summary["personalHelp"]["title"], "m365bot commands",
        "{summary}"
    );
    assert!(
        summary["personalHelp"]["messageId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{summary}"
    );
    assert_eq!(
        summary["invoke"]["type"], "application/vnd.microsoft.card.adaptive",
        "{summary}"
    );
    assert_eq!(summary["invoke"]["card"], true, "{summary}");
    assert_eq!(summary["invoke"]["title"], "m365bot commands", "{summary}");
    assert!(
        summary["channel"]["conversationId"]
            .as_str()
            .is_some_and(|id| id.starts_with("19:sandboxM365Support@thread.tacv2;messageid=")),
        "{summary}"
    );
    assert_eq!(
        summary["channel"]["title"], "I understand commands; type help",
        "{summary}"
    );
    assert_eq!(summary["welcome"]["title"], "m365bot commands", "{summary}");

    // The bot stored the personal chat and the channel.
    let stored = bot.app.db.conversation_count().await.expect("count");
    assert!(
        stored >= 2,
        "expected personal + channel conversations, found {stored}"
    );
}
