//! Slack fan-out: 1,000 case notifications over 100 Slack channels (10 cases, each subscribed
//! in every channel: 10 root messages per channel), delivered by the outbox worker of a bot
//! in this process to the in-process Slack emulator, which enforces Slack's 1 `chat.postMessage`
//! per second per channel (429 with `Retry-After` above it).
//!
//! Reports the share of the per-channel budget achieved (per channel: the posts after its first
//! divided by the seconds between its first and last post, averaged; and over all channels) and
//! the count of 429 answers. Run: `cargo bench --bench slack_fanout`.

#[path = "support/conditions.rs"]
mod conditions;

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use m365bot::app::Application;
use m365bot::demo::Demo;
use m365bot::notify::event::{CaseEvent, EventSource};
use m365bot::notify::filter::Filter;
use m365bot::notify::{outbox, store};
use m365bot::sandbox::SandboxOptions;
use m365bot::sandbox::slack::{SANDBOX_TEAM_ID, SlackEmulator};
use tokio_util::sync::CancellationToken;

const CHANNELS: usize = 100;
const CASES: usize = 10;

fn case(n: usize) -> CaseEvent {
    CaseEvent {
        source: EventSource::ServiceNow,
        case_key: format!("servicenow:incident:{n:032x}"),
        revision: "1".to_owned(),
        number: format!("INC{:07}", 20_000 + n),
        title: format!("Teams calls dropping ({n})"),
        state: "New".to_owned(),
        previous_state: None,
        priority: Some("2 - High".to_owned()),
        service: Some("Microsoft Teams".to_owned()),
        assignment_group: Some("Service Desk".to_owned()),
        microsoft_case: Some(format!("25120700{n:08}")),
        url: Some(format!(
            "https://contoso.service-now.com/incident.do?sys_id={n:032x}"
        )),
        latest_note: Some("Opened with Microsoft support.".to_owned()),
        resolved: false,
        updated_at: Utc
            .timestamp_millis_opt(1_765_000_000_000 + n as i64 * 1_000)
            .single()
            .expect("valid time"),
    }
}

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
    settings.notifications.sources.servicenow.poll = false;
    settings.notifications.sources.service_health.poll = false;
    // Enough lanes and calls in flight to hold every channel's next slot (each call waits for
    // its slot while it is in flight).
    settings.notifications.batch_size = 200;
    settings.notifications.concurrency = 200;
    let (per_channel, batch, concurrency) = (
        settings.notifications.slack_per_channel_per_second,
        settings.notifications.batch_size,
        settings.notifications.concurrency,
    );
    let application = Application::build(settings).await.expect("bot");
    let app = application.app();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { application.run_until_stopped(stop).await });
    let world = slack.handle();

    conditions::print_header(
        "slack_fanout",
        "this process: the bot's outbox worker, the Slack emulator and the database (SQLite)",
        &[&app.db],
    )
    .await;
    println!(
        "   {CASES} cases x {CHANNELS} channels = {} root messages; emulator limit 1 chat.postMessage/s/channel; \
         slack_per_channel_per_second = {per_channel}, batch_size = {batch}, concurrency = {concurrency}",
        CASES * CHANNELS
    );

    let filter = Filter::parse("").expect("filter");
    for n in 0..CHANNELS {
        let channel = format!("C0FAN{n:03}");
        world.set_channel(&channel, true, false);
        let conversation = format!("slack:{SANDBOX_TEAM_ID}:{channel}");
        store::subscribe_at(
            &app.db,
            &store::NewSubscription {
                conversation_id: &conversation,
                conversation_type: "channel",
                filter: &filter,
                user_id: "U0ADMIN",
                user_name: Some("admin"),
            },
            &store::Place {
                platform: "slack",
                team_id: Some(SANDBOX_TEAM_ID),
                channel_id: Some(&channel),
            },
        )
        .await
        .expect("subscribe");
    }
    let started = Instant::now();
    for n in 1..=CASES {
        outbox::record_event(&app.db, &case(n))
            .await
            .expect("record");
    }
    let total = CASES * CHANNELS;
    loop {
        let posted: usize = world.post_times().values().map(Vec::len).sum();
        if posted >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {posted} of {total} posted after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // Let the last outcomes be committed, then check nothing was lost or doubled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = outbox::counts(&app.db).await.expect("counts");
    let times = world.post_times();
    let mut shares = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for posts in times.values() {
        let (Some(a), Some(b)) = (posts.first(), posts.last()) else {
            continue;
        };
        first = Some(first.map_or(*a, |f| f.min(*a)));
        last = Some(last.map_or(*b, |l| l.max(*b)));
        let span = b.duration_since(*a).as_secs_f64();
        if posts.len() > 1 && span > 0.0 {
            shares.push((posts.len() - 1) as f64 / (span * per_channel));
        }
    }
    let mean = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
    let (median, low, high) = conditions::median_and_spread(&mut shares);
    let span = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => f64::NAN,
    };
    let overall = (total - CHANNELS) as f64 / (CHANNELS as f64 * span * per_channel);
    println!(
        "   delivered {} (pending {}, dead {}) in {:.2} s from the first event recorded",
        counts.delivered,
        counts.pending,
        counts.dead,
        elapsed.as_secs_f64()
    );
    println!(
        "   budget share per channel: mean {:.1}%, median {:.1}% (min {:.1}%, max {:.1}%); over all channels {:.1}% \
         ({} posts after each channel's first in {span:.2} s)",
        mean * 100.0,
        median * 100.0,
        low * 100.0,
        high * 100.0,
        overall * 100.0,
        total - CHANNELS
    );
    println!(
        "   429 answers: {} (target 0); target share >= 95%; load after: {}",
        world.rate_limited_count(),
        conditions::load()
    );
    shutdown.cancel();
}
