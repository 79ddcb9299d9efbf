//! Running the Agents Playground driver scripts of `tools/node` from tests.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test with the fix when the Playground is not installed.
pub fn assert_playground_installed(repo: &Path) {
    assert!(
        repo.join("tools/node/node_modules/@microsoft/m365agentsplayground/cli.js")
            .is_file(),
        "the Microsoft 365 Agents Playground is not installed: run `npm ci --prefix tools/node`"
    );
}

/// What a script run produced.
pub struct ScriptRun {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

fn read_in_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs `node tools/node/<script> <args> --watch-stdin`. Its stdin is a pipe the script
/// watches: if this test dies or `timeout` passes, the script stops its Playground.
pub fn run_node_script(repo: &Path, script: &str, args: &[&str], timeout: Duration) -> ScriptRun {
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg(repo.join("tools/node").join(script))
        .args(args)
        .arg("--watch-stdin")
        .current_dir(repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`node` (>= 20) must be on PATH to run the Agents Playground scripts");
    let stdin = child.stdin.take();
    let stdout = read_in_thread(child.stdout.take().expect("stdout piped"));
    let stderr = read_in_thread(child.stderr.take().expect("stderr piped"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > timeout {
            // Closing stdin makes the script stop the Playground; then make sure it is gone.
            drop(stdin);
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} did not finish within {timeout:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(stdin);
    ScriptRun {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        elapsed: started.elapsed(),
    }
}
