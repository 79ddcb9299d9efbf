//! Crash safety of notification delivery with a real process: the bot binary delivers a
//! fan-out to a fake connector, is killed with SIGKILL in the middle, and is started again.
//! Every message must arrive; duplicates are at most the deliveries in flight at the kill.
//!
//! Sizes (for `scripts/notify-reliability.sh`): `NOTIFY_CRASH_CASES` (default 10)
//! cases to `NOTIFY_CRASH_CONVERSATIONS` (default 50) channels; set
//! `NOTIFY_CRASH_DB=postgres` to run on `TEST_POSTGRES_URL` instead of SQLite.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use m365bot::db::{Db, now_millis};
use m365bot::notify::filter::Filter;
use m365bot::notify::outbox;
use m365bot::notify::store::{self, NewSubscription};
use support::notify::{
    APP_ID, Faults, LoadConnector, TENANT_ID, channel_id, channel_ref, incident,
};

fn size(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bot process, killed when dropped (also when an assertion fails).
struct Bot(Child);

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_bot(config: &std::path::Path) -> Bot {
    Bot(Command::new(env!("CARGO_BIN_EXE_m365bot"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the bot binary starts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_fan_out_loses_nothing() {
    let cases = size("NOTIFY_CRASH_CASES", 10);
    let conversations = size("NOTIFY_CRASH_CONVERSATIONS", 50);
    let total = cases * conversations;
    let dir = tempfile::tempdir().expect("temp dir");
    let on_postgres = std::env::var("NOTIFY_CRASH_DB").as_deref() == Ok("postgres");
    let (_pg_guard, database_url) = if on_postgres {
        let test = support::db::postgres_test_db()
            .await
            .expect("NOTIFY_CRASH_DB=postgres needs TEST_POSTGRES_URL");
        let url = test.url.clone();
        (Some(test), url)
    } else {
        (
            None,
            format!("sqlite://{}", dir.path().join("crash.db").display()),
        )
    };
    // Slow enough (rate-limited on the bot's side) that the kill lands mid-fan-out.
    let fake = LoadConnector::start(Faults::default()).await;
    let db = Db::connect(&database_url, 4).await.expect("database");
    db.migrate().await.expect("migrate");
    let everything = Filter::default();
    for n in 0..conversations {
        let channel = channel_id(n);
        db.upsert_conversation(&channel_ref(&channel, &fake.service_url()))
            .await
            .expect("conversation");
        store::subscribe(
            &db,
            &NewSubscription {
                conversation_id: &channel,
                conversation_type: "channel",
                filter: &everything,
                user_id: "29:beth",
                user_name: None,
            },
        )
        .await
        .expect("subscribe");
    }
    for case in 0..cases {
        outbox::record_event(&db, &incident(case, 1, "New"))
            .await
            .expect("record");
    }
    let rate = (total / 4).max(100);
    let log = std::env::var("NOTIFY_CRASH_LOG").unwrap_or_else(|_| "warn".to_owned());
    let config = dir.path().join("bot.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{database_url}\"\n\
             [bot]\napp_id = \"{APP_ID}\"\napp_password = \"crash-test-secret\"\ntenant_id = \"{TENANT_ID}\"\n\
             outbound_token_url = \"{}\"\nallowed_service_url_hosts = [\"127.0.0.1\"]\n\
             [log]\nfilter = \"{log}\"\n\
             [notifications]\nlease_seconds = 2\nper_conversation_per_second = 0\n\
             per_app_per_second = {rate}\nbatch_size = 100\nconcurrency = 32\npoll_interval_ms = 20\n\
             retry_base_ms = 20\nretry_max_ms = 200\n",
            fake.token_url()
        ),
    )
    .expect("config");

    let before = outbox::counts(&db).await.expect("counts");
    assert_eq!(before.pending, total as i64, "{before:?}");
    let mut bot = spawn_bot(&config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while fake.delivery_count() < total * 2 / 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bot did not start delivering"
        );
        assert!(
            bot.0.try_wait().expect("status").is_none(),
            "the bot exited"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bot.0.kill().expect("SIGKILL");
    bot.0.wait().expect("reaped");
    // Answers the connector gives after the kill still count as delivered at the fake.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delivered_at_kill = fake.delivery_count();
    let in_flight = outbox::in_flight(&db, now_millis())
        .await
        .expect("in flight");
    let counts = outbox::counts(&db).await.expect("counts");
    assert!(
        counts.pending > 0,
        "the kill landed after the fan-out: {counts:?}"
    );

    let mut bot = spawn_bot(&config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let counts = outbox::counts(&db).await.expect("counts");
        if counts.pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {counts:?}"
        );
        assert!(
            bot.0.try_wait().expect("status").is_none(),
            "the bot exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(bot);

    let counts = outbox::counts(&db).await.expect("counts");
    assert_eq!(counts.delivered, total as i64, "{counts:?}");
    assert_eq!(counts.dead, 0);
    assert_eq!(fake.unique_messages(), total, "every message arrived");
    let duplicates = fake.delivery_count() - fake.unique_messages();
    println!(
        "crash run ({}): {total} messages, {delivered_at_kill} delivered before the kill, \
         {in_flight} in flight at the kill, {duplicates} duplicates",
        if on_postgres { "postgres" } else { "sqlite" }
    );
    assert!(
        i64::try_from(duplicates).expect("count") <= in_flight,
        "{duplicates} duplicates but only {in_flight} deliveries were in flight"
    );
}
