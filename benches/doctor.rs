//! How long `doctor` takes when every emulator call costs 200 ms: the checks overlap, so the
//! total is a few round trips, not the sum of all calls.
//!
//! Run: `cargo bench --bench doctor`.

use std::time::Instant;

use m365bot::demo::Demo;
use m365bot::integration::{Upstreams, doctor};
use m365bot::sandbox::{Emulator, FaultConfig, SandboxOptions};

const LATENCY_MS: u64 = 200;
const RUNS: usize = 5;

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
    .expect("demo integration");
    let handle = demo.sandbox.handle();
    for emulator in [Emulator::ServiceNow, Emulator::Entra, Emulator::Graph] {
        handle.set_faults(
            emulator,
            FaultConfig {
                latency_ms: LATENCY_MS,
                ..FaultConfig::default()
            },
        );
    }
    println!("doctor, {LATENCY_MS} ms added to every emulator call, {RUNS} runs");
    println!(
        "{:>4} {:>10} {:>8} {:>14} {:>16}",
        "run", "wall ms", "checks", "upstream calls", "sequential ms"
    );
    let mut walls = Vec::new();
    for run in 1..=RUNS {
        // Fresh clients each run, so cached tokens do not flatter the figure.
        let upstreams = Upstreams::from_settings(
            &demo.settings,
            reqwest::Client::new(),
            std::sync::Arc::default(),
        );
        let before = calls(&handle);
        let started = Instant::now();
        let outcomes = doctor::run(&upstreams, &demo.spec, false).await;
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        let made = calls(&handle) - before;
        assert!(
            outcomes.iter().all(|o| o.status == doctor::Status::Pass),
            "every check passes: {outcomes:?}"
        );
        println!(
            "{run:>4} {wall:>10.0} {:>8} {made:>14} {:>16}",
            outcomes.len(),
            made * LATENCY_MS
        );
        walls.push(wall);
    }
    walls.sort_by(f64::total_cmp);
    println!("median wall time: {:.0} ms", walls[walls.len() / 2]);
}

fn calls(handle: &m365bot::sandbox::SandboxHandle) -> u64 {
    [Emulator::ServiceNow, Emulator::Entra, Emulator::Graph]
        .into_iter()
        .map(|emulator| handle.request_count(emulator))
        .sum()
}
