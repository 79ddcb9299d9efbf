//! How long `doctor` takes when every emulator call costs 200 ms: the checks overlap, so the
//! total is a few round trips, not the sum of all calls.
//!
//! Run: `cargo bench --bench doctor` (the figures are dominated by the added latency, so
//! `cargo bench --profile dev --bench doctor` gives the same picture without a release build).
//! It also times each check alone and requires the whole run to stay within 1.5x of the
//! slowest one.

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
    let median = walls[walls.len() / 2];
    println!("median wall time: {median:.0} ms");

    // Each check alone: its own chain of dependent calls, the floor for the whole run.
    let ids: Vec<&'static str> = doctor::run(&fresh(&demo), &demo.spec, false)
        .await
        .iter()
        .map(|o| o.id)
        .collect();
    assert!(
        ids.contains(&"servicenow.inbound_flow"),
        "inbound_flow runs"
    );
    let mut slowest = ("", 0.0_f64);
    for id in &ids {
        let mut chain = Vec::new();
        for _ in 0..3 {
            let upstreams = fresh(&demo);
            let started = Instant::now();
            let outcome = doctor::run_only(&upstreams, &demo.spec, &[id], false).await;
            chain.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(outcome.len(), 1);
        }
        chain.sort_by(f64::total_cmp);
        let chain = chain[chain.len() / 2];
        println!("  {id:<30} alone: {chain:>6.0} ms");
        if chain > slowest.1 {
            slowest = (id, chain);
        }
    }
    let ratio = median / slowest.1;
    println!(
        "slowest single check: {} at {:.0} ms; whole run / slowest check = {ratio:.2} (target <= 1.5)",
        slowest.0, slowest.1
    );
    assert!(ratio <= 1.5, "the checks no longer overlap: {ratio:.2}");
}

/// Clients without cached tokens.
fn fresh(demo: &Demo) -> Upstreams {
    Upstreams::from_settings(
        &demo.settings,
        reqwest::Client::new(),
        std::sync::Arc::default(),
    )
}

fn calls(handle: &m365bot::sandbox::SandboxHandle) -> u64 {
    [Emulator::ServiceNow, Emulator::Entra, Emulator::Graph]
        .into_iter()
        .map(|emulator| handle.request_count(emulator))
        .sum()
}
