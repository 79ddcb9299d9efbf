//! The three user journeys of the release, end to end with the real Microsoft 365 Agents
//! Playground against `m365bot sandbox --fresh` (the real binary, its emulators and pollers):
//! setup through every card of the AAD branch and Run tests, link-account through the emulated
//! Entra sign-in, and case notifications in a channel (root card, update in place, thread reply).
//! `tools/node/playground-journeys.js` drives the Playground; this test starts the sandbox, reads
//! the demo case's change command from its welcome text and checks the script's summary.
//! Every card seen is rendered with the official Adaptive Cards renderer in headless Chromium.
//! Needs Node >= 20, `npm ci --prefix tools/node` and Debian's `chromium`.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::playground::{assert_playground_installed, repo, run_node_script};

/// Longer than the script's own 90 s timeout, so the script reports its failure itself.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the sandbox may take to print its welcome text.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// `m365bot sandbox --fresh` on a free loopback port with a temporary SQLite file; killed on drop.
struct SandboxProcess {
    child: Child,
    endpoint: String,
    welcome: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl SandboxProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let database = format!("sqlite://{}", dir.path().join("sandbox.db").display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_m365bot"))
            .args(["sandbox", "--fresh", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database")
            .arg(&database)
            .current_dir(dir.path())
            .env_remove("M365BOT_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn m365bot sandbox");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || drain_into(stderr, &sink));
        let stdout = child.stdout.take().expect("stdout piped");
        let mut sandbox = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}/api/messages"),
            welcome: String::new(),
            log,
            _dir: dir,
        };
        sandbox.welcome = sandbox.read_welcome(stdout);
        sandbox
    }

    /// The welcome text, up to its last line ("Stop with Ctrl-C."); stdout keeps draining after.
    fn read_welcome(&mut self, stdout: ChildStdout) -> String {
        let (lines, received) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    // The test stopped listening: keep draining so the sandbox never blocks.
                    continue;
                }
            }
        });
        let started = Instant::now();
        let mut welcome = String::new();
        loop {
            let left = STARTUP_TIMEOUT.saturating_sub(started.elapsed());
            match received.recv_timeout(left) {
                Ok(line) => {
                    welcome.push_str(&line);
                    welcome.push('\n');
                    if line.trim() == "Stop with Ctrl-C." {
                        return welcome;
                    }
                }
                Err(err) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "m365bot sandbox printed no complete welcome text ({err}; exit status {status:?}); stdout:\n{welcome}\nstderr:\n{}",
                        self.log_text()
                    );
                }
            }
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain_into(mut pipe: impl Read, sink: &Mutex<String>) {
    let mut buffer = [0_u8; 8192];
    while let Ok(read) = pipe.read(&mut buffer) {
        if read == 0 {
            break;
        }
        if let Ok(mut text) = sink.lock() {
            text.push_str(&String::from_utf8_lossy(&buffer[..read]));
            if text.len() > 256_000 {
                let cut = text.len() - 128_000;
                let cut = (cut..text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text.drain(..cut);
            }
        }
    }
}

/// The demo case's Table API URL and the Basic credentials of the welcome text's `curl`.
fn case_change(welcome: &str) -> (String, String) {
    let words: Vec<&str> = welcome.split_whitespace().collect();
    let auth = words
        .windows(3)
        .find(|w| w[0] == "curl" && w[1] == "-u")
        .map(|w| w[2].to_owned())
        .unwrap_or_else(|| panic!("no `curl -u user:password` in the welcome text:\n{welcome}"));
    let url = words
        .iter()
        .find(|w| w.starts_with("http://") && w.contains("/api/now/table/"))
        .map(|w| (*w).to_owned())
        .unwrap_or_else(|| {
            panic!("no Table API URL of a demo case in the welcome text:\n{welcome}")
        });
    (url, auth)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn agents_playground_runs_the_three_journeys_against_the_sandbox() {
    let repo = repo();
    assert_playground_installed(&repo);
    let mut sandbox = SandboxProcess::start();
    assert!(
        sandbox.welcome.contains("none (--fresh)"),
        "the sandbox did not start fresh:\n{}",
        sandbox.welcome
    );
    assert!(
        sandbox.welcome.contains(&sandbox.endpoint),
        "the welcome text names another bot endpoint than {}:\n{}",
        sandbox.endpoint,
        sandbox.welcome
    );
    let (case_url, auth) = case_change(&sandbox.welcome);
    let saved = tempfile::tempdir().expect("temp dir");
    let saved_dir = saved.path().display().to_string();

    let run = run_node_script(
        &repo,
        "playground-journeys.js",
        &[
            &sandbox.endpoint,
            "--case-url",
            &case_url,
            "--servicenow-auth",
            &auth,
            "--save-cards",
            &saved_dir,
        ],
        SCRIPT_TIMEOUT,
    );
    assert!(
        run.status.success(),
        "playground-journeys.js failed ({}):\n{}\n{}\n--- m365bot sandbox log (last lines) ---\n{}",
        run.status,
        run.stderr,
        run.stdout,
        tail(&sandbox.log_text(), 40)
    );
    eprintln!("playground-journeys.js finished in {:?}", run.elapsed);

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

    // (a) setup: every card of the AAD branch, created for me, then all checks passed.
    let setup = &summary["setup"];
    assert_eq!(setup["cards"][0], "What setup will do", "{summary}");
    assert_eq!(
        setup["created"].as_array().map(Vec::len),
        Some(7),
        "{summary}"
    );
    assert_eq!(setup["created"][6], "Integration user", "{summary}");
    assert_eq!(
        setup["completion"]["title"], "Setup complete: the bot now runs the integration",
        "{summary}"
    );
    // The completion card's Reveal button: the Entra sign-in, the values once, then refused.
    assert_eq!(setup["reveal"]["status"], 200, "{summary}");
    assert_eq!(setup["reveal"]["again"], 410, "{summary}");
    assert_eq!(setup["reveal"]["hops"][0], "302 /setup/reveal", "{summary}");
    assert_eq!(setup["runTests"]["failed"], 0, "{summary}");
    assert_eq!(setup["runTests"]["skipped"], 0, "{summary}");
    assert!(
        setup["runTests"]["passed"].as_u64().is_some_and(|n| n > 0),
        "{summary}"
    );

    // (b) link-account: the sign-in went through the Entra emulator back to the bot.
    let link = &summary["link"];
    let hops: Vec<&str> = link["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(hops.first(), Some(&"302 /auth/link/start"), "{summary}");
    assert!(
        hops.iter().any(|h| h.ends_with("/oauth2/v2.0/authorize")),
        "{summary}"
    );
    assert_eq!(hops.last(), Some(&"200 /auth/link/callback"), "{summary}");
    assert!(
        link["page"]
            .as_str()
            .is_some_and(|p| p.contains("admin@contoso.onmicrosoft.com")),
        "{summary}"
    );

    // (c) notifications: root card, the same card updated, a reply in its thread.
    let notify = &summary["notify"];
    assert_eq!(notify["subscribed"], "Subscribed", "{summary}");
    let root = notify["root"]["messageId"].as_str().expect("root id");
    assert_eq!(notify["updated"]["messageId"], root, "{summary}");
    assert_eq!(
        notify["reply"]["conversationId"],
        format!("19:sandboxM365Support@thread.tacv2;messageid={root}"),
        "{summary}"
    );
    // What a careful admin meets along the way.
    assert_eq!(setup["refusedApp"]["kept"]["mode"], "existing", "{summary}");
    assert_eq!(
        setup["refusedApp"]["kept"]["clientId"], "0badc0de-0000-4000-8000-00000000dead",
        "{summary}"
    );
    assert!(
        setup["refusedApp"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Entra ID has no application with this client id")),
        "{summary}"
    );
    assert_eq!(setup["status"], "Setup status", "{summary}");
    assert_eq!(
        setup["freeText"], "I understand commands; type help",
        "{summary}"
    );
    assert_eq!(link["spentLink"]["status"], 400, "{summary}");
    assert_eq!(link["spentLink"]["chatCards"], 0, "{summary}");
    assert_eq!(notify["refused"], "That filter is not valid", "{summary}");
    assert_eq!(notify["replyColour"], "Good", "{summary}");

    // Every card seen went through the official Adaptive Cards renderer without a problem.
    assert_eq!(summary["rendered"]["problems"], 0, "{summary}");
    assert!(
        summary["rendered"]["cards"]
            .as_u64()
            .is_some_and(|n| n >= 20),
        "{summary}"
    );
    for name in [
        "notify_root",
        "setup_complete",
        "setup_error",
        "setup_status",
        "setup_step",
    ] {
        let file = saved.path().join(format!("{name}.json"));
        let card: Value = serde_json::from_slice(&std::fs::read(&file).expect("saved card"))
            .expect("saved card is JSON");
        assert_eq!(card["type"], "AdaptiveCard", "{name}");
    }

    let exited = sandbox.child.try_wait().ok().flatten();
    assert!(
        exited.is_none(),
        "the sandbox exited during the journeys ({exited:?}):\n{}",
        tail(&sandbox.log_text(), 40)
    );
}
