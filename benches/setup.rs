//! The setup wizard's figures:
//! 1. server-side handling of one wizard submit that calls no upstream for its own work (a
//!    validation error answered with the same card), over HTTP, and its in-process core
//!    (validate, transition, versioned write, card); the HTTP figure includes the role check
//!    against the local ServiceNow emulator (0 ms latency);
//! 2. Run tests with 200 ms added to every emulator call: the checks run concurrently, so
//!    the wall time is about the slowest check, not the sum.
//!
//! Run: `cargo bench --bench setup`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::routing::{get, post};
use m365bot::demo::Demo;
use m365bot::sandbox::{Emulator, FaultConfig, SandboxOptions};
use m365bot::setup::state::{AppRecord, AppSlot, Collected, Secrets};
use m365bot::setup::{effects, flow, state, store, view};
use serde_json::{Value, json};

const LATENCY_MS: u64 = 200;
const SUBMITS: usize = 300;

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
    // A minimal connector: member look-up (the admin) and message posts (recorded).
    let sent: Arc<Mutex<Vec<Value>>> = Arc::default();
    let record = sent.clone();
    let router = axum::Router::new()
        .route(
            "/v3/conversations/{c}/members/{m}",
            get(|| async { Json(json!({"id": "29:admin", "name": "Admin", "email": "admin@contoso.onmicrosoft.com"})) }),
        )
        .route(
            "/v3/conversations/{c}/activities/{a}",
            post(move |Json(body): Json<Value>| {
                let record = record.clone();
                async move {
                    record.lock().expect("lock").push(body);
                    Json(json!({"id": "m1"}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let service_url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let application = m365bot::app::Application::build(demo.settings.clone())
        .await
        .expect("bot");
    let bot_url = format!("http://{}/api/messages", application.local_addr());
    let app = application.app();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { application.run_until_stopped(stop).await });
    let client = reqwest::Client::new();
    let tenant = demo.settings.bot.tenant_id.clone();
    let activity = |kind: &str| {
        json!({"type": kind, "id": "a1", "channelId": "msteams", "serviceUrl": service_url,
               "from": {"id": "29:admin"}, "recipient": {"id": "28:bot"},
               "conversation": {"id": "a:bench", "conversationType": "personal", "tenantId": tenant},
               "channelData": {"tenant": {"id": tenant}}})
    };
    let mut message = activity("message");
    message["text"] = json!("setup");
    client
        .post(&bot_url)
        .json(&message)
        .send()
        .await
        .expect("setup");
    let consent = sent
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("consent card")["attachments"][0]["content"]
        .clone();
    let press = |card: &Value, title: &str, inputs: Value| {
        let action = card["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["title"] == title))
            .cloned()
            .expect("action");
        let mut data = action["data"].clone();
        if let (Some(d), Value::Object(i)) = (data.as_object_mut(), inputs) {
            d.extend(i);
        }
        let mut invoke = activity("invoke");
        invoke["name"] = json!("adaptiveCard/action");
        invoke["value"] =
            json!({"action": {"type": "Action.Execute", "verb": action["verb"], "data": data}});
        invoke
    };
    let send = |invoke: Value| {
        let client = client.clone();
        let bot_url = bot_url.clone();
        async move {
            let body: Value = client
                .post(&bot_url)
                .json(&invoke)
                .send()
                .await
                .expect("invoke")
                .json()
                .await
                .expect("json");
            body["value"].clone()
        }
    };
    let env = send(press(&consent, "Agree", json!({}))).await;
    let tenant_card = send(press(&env, "Start setup", json!({"auth": "aad"}))).await;
    let invalid = press(
        &tenant_card,
        "Verify and continue",
        json!({"domain": "not a domain"}),
    );
    for _ in 0..20 {
        send(invalid.clone()).await;
    }
    let mut times = Vec::with_capacity(SUBMITS);
    for _ in 0..SUBMITS {
        let started = Instant::now();
        let card = send(invalid.clone()).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(card.to_string().contains("not a domain"));
    }
    times.sort_by(f64::total_cmp);
    println!("wizard submit over HTTP (validation error, same card back), {SUBMITS} submits:");
    println!(
        "  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms",
        times[SUBMITS / 2],
        times[SUBMITS * 9 / 10],
        times[SUBMITS * 99 / 100]
    );

    // The in-process core of a submit: validate, transition, versioned write, render.
    let mut row = store::active(&app.db)
        .await
        .expect("db")
        .expect("active setup");
    let mut core = Vec::with_capacity(SUBMITS);
    for i in 0..SUBMITS {
        let started = Instant::now();
        let verb = if i % 2 == 0 {
            "setup.back"
        } else {
            "setup.environment"
        };
        let input = flow::parse_input(verb, &json!({"auth": "aad"}), None).expect("valid");
        let next = state::transition(&row.wizard, input, 0).expect("transition");
        let version = store::compare_and_set(
            &app.db,
            &row.setup_id,
            row.version,
            &next.wizard,
            None,
            store::status::ACTIVE,
        )
        .await
        .expect("write")
        .expect("version");
        row.wizard = next.wizard;
        row.version = version;
        let card = view::step_card(&app, &row, &[], None);
        let m365bot::core::Reply::Card { template, data } = card;
        app.cards
            .render(&format!("teams/{template}"), &data)
            .expect("render");
        core.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    core.sort_by(f64::total_cmp);
    println!(
        "  in-process core (validate + transition + versioned write + card): p50 {:.2} ms  p99 {:.2} ms",
        core[SUBMITS / 2],
        core[SUBMITS * 99 / 100]
    );

    // Run tests with 200 ms per emulator call.
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
    let spec = &demo.spec;
    let mut data = Collected {
        tenant: Some(spec.tenant.clone()),
        tenant_id: spec.tenant_id.clone(),
        auth_type: Some(spec.auth_type),
        ..Collected::default()
    };
    let mut secrets = Secrets::default();
    for (slot, creds) in [
        (AppSlot::Outbound, Some(&spec.outbound_app)),
        (AppSlot::Inbound, spec.inbound_app.as_ref()),
        (AppSlot::RestUser, spec.rest_user_app.as_ref()),
    ] {
        if let Some(creds) = creds {
            data.set_app(
                slot,
                AppRecord {
                    client_id: creds.client_id.clone(),
                    name: None,
                    created: true,
                    made: false,
                },
            );
            secrets.0.insert(slot.secret(), creds.client_secret.clone());
        }
    }
    println!("Run tests, {LATENCY_MS} ms added to every emulator call:");
    println!(
        "{:>4} {:>10} {:>8} {:>8} {:>14} {:>16}",
        "run", "wall ms", "checks", "failed", "upstream calls", "sequential ms"
    );
    for run in 1..=4 {
        let before = calls(&handle);
        let started = Instant::now();
        let outcomes = effects::run_tests(&app, &data, &secrets, false).await;
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        let made = calls(&handle) - before;
        let failed = outcomes
            .iter()
            .filter(|o| o.status == m365bot::integration::doctor::Status::Fail)
            .count();
        println!(
            "{run:>4} {wall:>10.0} {:>8} {failed:>8} {made:>14} {:>16}",
            outcomes.len(),
            made * LATENCY_MS
        );
    }
    println!("(run 1 includes the Graph token request; later runs reuse the cached token)");
    shutdown.cancel();
}

fn calls(handle: &m365bot::sandbox::SandboxHandle) -> u64 {
    [Emulator::ServiceNow, Emulator::Entra, Emulator::Graph]
        .into_iter()
        .map(|e| handle.request_count(e))
        .sum()
}
