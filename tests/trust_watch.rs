//! Watching the trust and rotating its secrets, end to end against the emulators: the
//! scheduled doctor (shortened interval) alerting once per change of state, secret expiry,
//! the schedule claimed by one replica, and `rotate-secret` in chat and on the command line.

mod support;

use std::time::Duration;

use chrono::Utc;
use m365bot::integration::watch;
use m365bot::sandbox::{Emulator, FaultConfig};
use m365bot::upstream::entra::EntraClient;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::db::test_databases;
use support::setup::{ADMIN, Bot, JANE, PERSONAL, World, aad_created_to_cross_scope, card_text};

/// The admin channel alerts go to besides the admin's 1:1 chat.
const CHANNEL: &str = "19:channel@thread.tacv2";

/// Settings of a bot whose scheduled doctor runs every second.
const FAST_WATCH: &str =
    "[watch]\ndoctor_interval_secs = 1\nadmin_channel = \"19:channel@thread.tacv2\"\n";

/// Walks the AAD branch with every piece created by the bot; returns the completion card.
async fn complete_aad_setup(bot: &Bot, world: &World) -> Value {
    let card = aad_created_to_cross_scope(bot, world, json!({"test_environment": "true"})).await;
    let complete = bot
        .press(world, ADMIN, &card, "Check again", json!({}))
        .await;
    assert!(
        card_text(&complete).contains("Setup complete"),
        "{}",
        card_text(&complete)
    );
    complete
}

/// Client id of the app setup created with this name suffix.
fn app_id(world: &World, suffix: &str) -> String {
    world
        .sandbox
        .handle()
        .apps()
        .into_iter()
        .find(|a| a.display_name == format!("Microsoft 365 support {suffix}"))
        .map(|a| a.app_id)
        .unwrap_or_else(|| panic!("no app {suffix}"))
}

/// Alert cards the connector received so far: (conversation id, card).
fn alerts(world: &World) -> Vec<(String, Value)> {
    world
        .connector
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| {
            let card = r.body["attachments"][0]["content"].clone();
            let text = card_text(&card);
            let is_alert = text.contains("You hear from me again only when this changes");
            is_alert.then(|| (r.conversation_id.clone().unwrap_or_default(), card))
        })
        .collect()
}

/// Waits until at least `count` alerts arrived (at most `limit`), returns them.
async fn wait_for_alerts(world: &World, count: usize, limit: Duration) -> Vec<(String, Value)> {
    let started = std::time::Instant::now();
    loop {
        let found = alerts(world);
        if found.len() >= count || started.elapsed() > limit {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the bot finished `runs` more scheduled doctor runs than now.
async fn wait_for_runs(bot: &Bot, runs: i64) {
    let start = watch::gauges(&bot.app.db)
        .await
        .expect("gauges")
        .last_doctor_run
        .unwrap_or(0);
    // last_run_at moves once per claimed run (one per second at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = watch::gauges(&bot.app.db)
            .await
            .expect("gauges")
            .last_doctor_run
            .unwrap_or(0);
        if now > start + runs || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The run claimed last may still be working: give it time to record.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// A bot in a world with a completed AAD setup, whose scheduled doctor runs every second; the
/// bot has seen the admin channel. No alert was sent while everything is fine.
async fn watched_world() -> (World, Bot) {
    let world = World::start().await;
    let bot = world.bot_with(FAST_WATCH).await;
    assert_eq!(bot.say_in_channel(&world, ADMIN, "help").await, 200);
    complete_aad_setup(&bot, &world).await;
    wait_for_runs(&bot, 2).await;
    assert!(
        alerts(&world).is_empty(),
        "no alert while all is well: {:?}",
        alerts(&world)
    );
    (world, bot)
}

#[tokio::test]
async fn a_broken_rest_user_secret_alerts_once_and_its_repair_recovers_once() {
    let (world, bot) = watched_world().await;
    let rest_user = app_id(&world, "REST user");
    let handle = world.sandbox.handle();
    assert!(handle.expire_secrets(&rest_user));
    let found = wait_for_alerts(&world, 2, Duration::from_secs(10)).await;
    assert_eq!(found.len(), 2, "one card to the admin, one to the channel");
    let mut destinations: Vec<&str> = found.iter().map(|(c, _)| c.as_str()).collect();
    destinations.sort_unstable();
    assert_eq!(destinations, vec![CHANNEL, PERSONAL]);
    let text = card_text(&found[0].1);
    assert!(text.contains("new problem"), "{text}");
    assert!(
        text.contains("REST-user app gets a token (failing)"),
        "{text}"
    );
    assert!(text.contains("AADSTS7000222"), "{text}");
    // Later runs see the same failure: nothing more is sent.
    wait_for_runs(&bot, 3).await;
    assert_eq!(
        alerts(&world).len(),
        2,
        "no second alert for the same failure"
    );
    let status = card_text(&bot.say(&world, ADMIN, "setup status").await);
    assert!(status.contains("scheduled doctor last ran"), "{status}");
    assert!(
        status.contains("REST-user app gets a token (failing)"),
        "{status}"
    );
    let metrics = bot.app.metrics.render();
    assert!(
        !metrics.contains("m365bot_doctor_failing_checks 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("m365bot_doctor_last_run_timestamp_seconds"),
        "{metrics}"
    );
    // Fixed: one recovery card per destination.
    assert!(handle.set_secret_end(&rest_user, Utc::now() + chrono::Duration::days(365)));
    let found = wait_for_alerts(&world, 4, Duration::from_secs(10)).await;
    assert_eq!(found.len(), 4, "one recovery card per destination");
    let recovery = card_text(&found[3].1);
    assert!(recovery.contains("The integration recovered"), "{recovery}");
    assert!(
        recovery.contains("REST-user app gets a token (recovered)"),
        "{recovery}"
    );
    wait_for_runs(&bot, 2).await;
    assert_eq!(alerts(&world).len(), 4, "no second recovery card");
    watch::refresh_metrics(&bot.app).await;
    let metrics = bot.app.metrics.render();
    assert!(
        metrics.contains("m365bot_doctor_failing_checks 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_secret_twenty_days_from_expiry_warns_once_even_after_a_restart() {
    let (world, bot) = watched_world().await;
    let outbound = app_id(&world, "outbound");
    let handle = world.sandbox.handle();
    assert!(handle.set_secret_end(&outbound, Utc::now() + chrono::Duration::days(20)));
    let found = wait_for_alerts(&world, 2, Duration::from_secs(10)).await;
    assert_eq!(found.len(), 2, "{found:?}");
    let text = card_text(&found[0].1);
    assert!(text.contains("A client secret expires soon"), "{text}");
    assert!(
        text.contains("Outbound app client secret (expiring)"),
        "{text}"
    );
    assert!(
        text.contains("in 19 day(s)") || text.contains("in 20 day(s)"),
        "{text}"
    );
    assert!(text.contains("rotate-secret outbound"), "{text}");
    let metrics = bot.app.metrics.render();
    assert!(
        metrics.contains("m365bot_secret_expiry_days 19.")
            || metrics.contains("m365bot_secret_expiry_days 20.0"),
        "{metrics}"
    );
    // A restart (a new replica on the same database) does not warn again.
    drop(bot);
    let second = world.bot_with(FAST_WATCH).await;
    wait_for_runs(&second, 3).await;
    assert_eq!(alerts(&world).len(), 2, "no second warning");
}

#[tokio::test]
async fn each_scheduled_run_is_claimed_by_exactly_one_replica() {
    for test_db in test_databases().await {
        let db = &test_db.db;
        let now = m365bot::db::now_millis();
        // The schedule is created on first use, due one interval later.
        assert!(
            !watch::claim_run(db, "replica-a", 60_000, now - 60_000)
                .await
                .expect("claim")
        );
        let mut claims = Vec::new();
        for owner in ["replica-a", "replica-b", "replica-c", "replica-d"] {
            claims.push(watch::claim_run(db, owner, 60_000, now));
        }
        let won: Vec<bool> = futures_util::future::join_all(claims)
            .await
            .into_iter()
            .map(|r| r.expect("claim"))
            .collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "{}: {won:?}",
            test_db.label
        );
        // Not due again before the interval; due after it.
        assert!(
            !watch::claim_run(db, "replica-a", 60_000, now + 59_000)
                .await
                .expect("claim")
        );
        assert!(
            watch::claim_run(db, "replica-b", 60_000, now + 60_000)
                .await
                .expect("claim")
        );
    }
}

#[tokio::test]
async fn a_state_change_is_alerted_once_across_replicas() {
    for test_db in test_databases().await {
        let db = &test_db.db;
        let failing = watch::Observation {
            subject: "runtime.inbound".to_owned(),
            state: watch::SubjectState::Failing,
            title: "Calls to ServiceNow as the integration user".to_owned(),
            detail: "ServiceNow answered 401".to_owned(),
            fix: Some("Check the OIDC entity".to_owned()),
            expires_at: None,
        };
        let to = [watch::Recipient {
            conversation_id: "a:1".to_owned(),
            service_url: Some("https://smba.trafficmanager.net/emea/".to_owned()),
        }];
        let context = watch::AlertContext::default();
        let (a, b) = tokio::join!(
            watch::record(db, std::slice::from_ref(&failing), &to, &context),
            watch::record(db, std::slice::from_ref(&failing), &to, &context)
        );
        let transitions = a.expect("a").len() + b.expect("b").len();
        assert_eq!(transitions, 1, "{}", test_db.label);
        let again = watch::record(db, std::slice::from_ref(&failing), &to, &context)
            .await
            .expect("again");
        assert!(again.is_empty(), "{}", test_db.label);
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trust_alerts")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(pending, 1, "{}", test_db.label);
        let problems = watch::current_problems(db).await.expect("problems");
        assert_eq!(problems.len(), 1, "{}", test_db.label);
        let gauges = watch::gauges(db).await.expect("gauges");
        assert_eq!(gauges.failing_checks, 1, "{}", test_db.label);
    }
}

/// A v1 token for `client_id` with `secret` straight from the Entra emulator.
async fn token_works(world: &World, client_id: &str, secret: &str) -> bool {
    let authority = url::Url::parse(&format!("{}/", world.sandbox.urls().entra)).expect("url");
    EntraClient::new(reqwest::Client::new(), authority)
        .client_credentials_v1(
            "contoso.onmicrosoft.com",
            client_id,
            &SecretString::from(secret.to_owned()),
            "https://graph.microsoft.com",
        )
        .await
        .is_ok()
}

/// The stored integration (secrets decrypted) as the bot's command line reads it.
async fn stored_spec(world: &World) -> m365bot::integration::IntegrationSpec {
    m365bot::setup::stored_integration_spec(&world.settings_with(""))
        .await
        .expect("readable")
        .expect("a completed setup")
}

fn secret_of(spec: &m365bot::integration::IntegrationSpec, target: &str) -> String {
    let credentials = match target {
        "outbound" => &spec.outbound_app,
        "inbound" => spec.inbound_app.as_ref().expect("inbound"),
        _ => spec.rest_user_app.as_ref().expect("rest user"),
    };
    secrecy::ExposeSecret::expose_secret(&credentials.client_secret).to_owned()
}

/// The ServiceNow record holding an app's secret: (table, sys_id).
fn secret_record(world: &World, table: &str, client_id: &str) -> String {
    let rows = world
        .sandbox
        .handle()
        .sn_query(table, &format!("client_id={client_id}"))
        .expect("table");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0]["sys_id"].as_str().expect("sys_id").to_owned()
}

#[tokio::test]
async fn rotate_secret_for_each_app_end_to_end() {
    let world = World::start().await;
    let bot = world.bot().await;
    complete_aad_setup(&bot, &world).await;
    let handle = world.sandbox.handle();
    for (target, suffix, table) in [
        ("outbound", "outbound", Some("oauth_entity")),
        ("inbound", "inbound REST API", Some("oauth_oidc_entity")),
        ("rest-user", "REST user", None),
    ] {
        let client_id = app_id(&world, suffix);
        let before = stored_spec(&world).await;
        let old = secret_of(&before, target);
        let secrets_before = handle
            .app(&client_id)
            .expect("app")
            .password_credentials
            .len();
        let card = bot
            .say(&world, ADMIN, &format!("rotate-secret {target}"))
            .await;
        let text = card_text(&card);
        assert!(
            text.contains("client secret was rotated"),
            "{target}: {text}"
        );
        assert!(
            text.contains("verified with the new secret"),
            "{target}: {text}"
        );
        assert!(
            text.contains("removed the old client secret"),
            "{target}: {text}"
        );
        let after = stored_spec(&world).await;
        let new = secret_of(&after, target);
        assert_ne!(new, old, "{target}: the bot's store holds the new secret");
        assert!(
            !text.contains(&new) && !text.contains(&old),
            "no secret on the card"
        );
        assert!(
            token_works(&world, &client_id, &new).await,
            "{target}: new works"
        );
        assert!(
            !token_works(&world, &client_id, &old).await,
            "{target}: old removed"
        );
        assert_eq!(
            handle
                .app(&client_id)
                .expect("app")
                .password_credentials
                .len(),
            secrets_before,
            "{target}: one secret replaced by one"
        );
        if let Some(table) = table {
            let sys_id = secret_record(&world, table, &client_id);
            assert_eq!(
                handle
                    .sn_stored_password(table, &sys_id, "client_secret")
                    .as_deref(),
                Some(new.as_str()),
                "{target}: ServiceNow holds the new secret"
            );
        }
    }
    // The runtime identity uses the new REST-user secret (a fresh token is requested).
    bot.app.runtime.forget_token().await;
    m365bot::notify::sources::poll_servicenow_once(&bot.app)
        .await
        .expect("runtime calls work with the new secret");
    assert!(bot.app.runtime.last_failure().is_none());
    // Everything still verifies, and the audit trail names each rotation without secrets.
    let doctor = bot.say(&world, ADMIN, "doctor").await;
    assert!(
        card_text(&doctor).contains("0 failed"),
        "{}",
        card_text(&doctor)
    );
    let row = m365bot::setup::store::latest_completed(&bot.app.db)
        .await
        .expect("db")
        .expect("row");
    let log = m365bot::setup::store::audit_log(&bot.app.db, &row.setup_id, 50)
        .await
        .expect("audit");
    let spec = stored_spec(&world).await;
    for target in ["outbound", "inbound", "rest-user"] {
        let entry = log
            .iter()
            .find(|e| e.action == format!("rotate-secret {target}"))
            .unwrap_or_else(|| panic!("no audit entry for {target}: {log:?}"));
        assert_eq!(entry.outcome, "ok");
        for secret in ["outbound", "inbound", "rest-user"].map(|t| secret_of(&spec, t)) {
            assert!(
                !entry.detail.contains(&secret),
                "no secret in the audit trail"
            );
        }
    }
}

#[tokio::test]
async fn a_failed_servicenow_write_keeps_the_old_outbound_secret_and_removes_the_new() {
    let world = World::start().await;
    let bot = world.bot().await;
    complete_aad_setup(&bot, &world).await;
    let handle = world.sandbox.handle();
    let client_id = app_id(&world, "outbound");
    let old = secret_of(&stored_spec(&world).await, "outbound");
    let secrets_before = handle
        .app(&client_id)
        .expect("app")
        .password_credentials
        .len();
    // The record is found, then writing it fails (ServiceNow answers 500 on the record URL).
    handle.set_faults(
        Emulator::ServiceNow,
        FaultConfig::none()
            .with_error_rate(1.0)
            .with_path_prefix("/api/now/v2/table/oauth_entity/"),
    );
    let card = bot.say(&world, ADMIN, "rotate-secret outbound").await;
    handle.set_faults(Emulator::ServiceNow, FaultConfig::none());
    let text = card_text(&card);
    assert!(text.contains("was not rotated"), "{text}");
    assert!(text.contains("added a new client secret"), "{text}");
    assert!(
        text.contains("writing the new secret into the ServiceNow"),
        "{text}"
    );
    assert!(
        text.contains("removed the new client secret again"),
        "{text}"
    );
    assert!(text.contains("The old secret is still in use"), "{text}");
    assert_eq!(secret_of(&stored_spec(&world).await, "outbound"), old);
    assert!(
        token_works(&world, &client_id, &old).await,
        "the old secret works"
    );
    assert_eq!(
        handle
            .app(&client_id)
            .expect("app")
            .password_credentials
            .len(),
        secrets_before,
        "the new secret is gone"
    );
    let sys_id = secret_record(&world, "oauth_entity", &client_id);
    assert_eq!(
        handle
            .sn_stored_password("oauth_entity", &sys_id, "client_secret")
            .as_deref(),
        Some(old.as_str())
    );
}

#[tokio::test]
async fn a_failed_verification_restores_the_rest_user_secret_and_reports_what_it_could_not_remove()
{
    let world = World::start().await;
    let bot = world.bot().await;
    complete_aad_setup(&bot, &world).await;
    let handle = world.sandbox.handle();
    let client_id = app_id(&world, "REST user");
    let object_id = handle.app(&client_id).expect("app").object_id;
    let old = secret_of(&stored_spec(&world).await, "rest-user");
    // The integration user is locked out: the live checks fail with any secret; and Graph
    // refuses to remove the new secret again.
    let users = handle
        .sn_query("sys_user", &format!("user_name={client_id}"))
        .expect("users");
    let user_id = users[0]["sys_id"].as_str().expect("sys_id").to_owned();
    handle
        .sn_update("sys_user", &user_id, json!({"locked_out": "true"}))
        .expect("locked");
    handle.set_faults(
        Emulator::Graph,
        FaultConfig::none()
            .with_html_errors(500)
            .with_path_prefix(&format!("/v1.0/applications/{object_id}/removePassword")),
    );
    let card = bot.say(&world, ADMIN, "rotate-secret rest-user").await;
    handle.set_faults(Emulator::Graph, FaultConfig::none());
    let text = card_text(&card);
    assert!(text.contains("was not rotated"), "{text}");
    assert!(
        text.contains("verification with the new secret failed"),
        "{text}"
    );
    assert!(text.contains("locked out"), "{text}");
    assert!(
        text.contains("restored the old secret in the bot's store"),
        "{text}"
    );
    assert!(text.contains("could not be removed"), "{text}");
    assert!(
        text.contains("Remove the unused new secret by hand"),
        "{text}"
    );
    assert_eq!(secret_of(&stored_spec(&world).await, "rest-user"), old);
    assert!(
        token_works(&world, &client_id, &old).await,
        "the old secret works"
    );
}

#[tokio::test]
async fn rotate_secret_is_refused_to_non_admins() {
    let world = World::start().await;
    let bot = world.bot().await;
    let card = bot.say(&world, JANE, "rotate-secret outbound").await;
    let text = card_text(&card);
    assert!(text.contains("admin"), "{text}");
    assert!(!text.contains("rotated"), "{text}");
    let usage = bot.say(&world, ADMIN, "rotate-secret everything").await;
    assert!(
        card_text(&usage).contains("rotate-secret outbound|inbound|rest-user"),
        "{}",
        card_text(&usage)
    );
}

#[tokio::test]
async fn the_command_line_rotates_and_says_so_in_its_exit_code() {
    let world = World::start().await;
    let config = world.dir.path().join("bot.toml");
    let toml = support::merge_toml(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n",
            world.db_path().display()
        ),
        &world.toml,
    );
    std::fs::write(&config, toml).expect("config");
    let run = |args: &[&str]| {
        let config = config.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_m365bot"))
                .args(&args)
                .arg("--config")
                .arg(&config)
                .env_remove("M365BOT_CONFIG")
                .output()
                .expect("m365bot runs")
        })
    };
    let usage = run(&["rotate-secret", "graph"]).await.expect("joins");
    assert_eq!(usage.status.code(), Some(2), "a wrong app is a usage error");
    assert!(String::from_utf8_lossy(&usage.stderr).contains("outbound, inbound or rest-user"));
    let nothing = run(&["rotate-secret", "outbound"]).await.expect("joins");
    let stdout = String::from_utf8_lossy(&nothing.stdout);
    assert_eq!(nothing.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("no setup has been completed"), "{stdout}");
    let bot = world.bot().await;
    complete_aad_setup(&bot, &world).await;
    let old = secret_of(&stored_spec(&world).await, "rest-user");
    let rotated = run(&["rotate-secret", "rest-user"]).await.expect("joins");
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(
        stdout.contains("rotated the REST-user app's client secret"),
        "{stdout}"
    );
    let new = secret_of(&stored_spec(&world).await, "rest-user");
    assert_ne!(new, old);
    assert!(
        !stdout.contains(&new) && !stdout.contains(&old),
        "no secret printed"
    );
    let client_id = app_id(&world, "REST user");
    assert!(token_works(&world, &client_id, &new).await);
}

#[tokio::test]
async fn alerts_go_to_the_admin_who_completed_setup() {
    for test_db in test_databases().await {
        let db = &test_db.db;
        let entry = |actor: &str, action: &str| m365bot::setup::store::AuditEntry {
            setup_id: "s1".to_owned(),
            at: m365bot::db::now_millis(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: "ok".to_owned(),
            detail: String::new(),
        };
        m365bot::setup::store::audit(db, &entry("Beth Anglin (29:beth)", "start"))
            .await
            .expect("audit");
        assert_eq!(
            m365bot::setup::store::completed_by(db, "s1")
                .await
                .expect("read"),
            None
        );
        m365bot::setup::store::audit(db, &entry("admin (ops) (29:admin)", "complete"))
            .await
            .expect("audit");
        assert_eq!(
            m365bot::setup::store::completed_by(db, "s1")
                .await
                .expect("read")
                .as_deref(),
            Some("29:admin"),
            "{}",
            test_db.label
        );
    }
}

#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_or_the_database_in_clear_when_rotating() {
    let captured = CapturedLog::default();
    m365bot::telemetry::init(
        &m365bot::config::LogSettings {
            format: m365bot::config::LogFormat::Json,
            filter: "trace".to_owned(),
        },
        captured.clone(),
    );
    let world = World::start().await;
    let bot = world.bot().await;
    complete_aad_setup(&bot, &world).await;
    let before = stored_spec(&world).await;
    for target in ["outbound", "inbound", "rest-user"] {
        let card = bot
            .say(&world, ADMIN, &format!("rotate-secret {target}"))
            .await;
        assert!(
            card_text(&card).contains("was rotated"),
            "{}",
            card_text(&card)
        );
    }
    let after = stored_spec(&world).await;
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("log lock")).into_owned();
    assert!(logs.contains("rotate-secret"), "the rotations are logged");
    let database = std::fs::read(world.db_path()).expect("database file");
    let wal = std::fs::read(world.db_path().with_extension("db-wal")).unwrap_or_default();
    for spec in [&before, &after] {
        for target in ["outbound", "inbound", "rest-user"] {
            let secret = secret_of(spec, target);
            assert!(!logs.contains(&secret), "{target} secret in the logs");
            for bytes in [&database, &wal] {
                assert!(
                    !bytes
                        .windows(secret.len())
                        .any(|window| window == secret.as_bytes()),
                    "{target} secret in the database in clear"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_refused_runtime_call_alerts_naming_the_step_and_its_verified_repair_recovers() {
    let world = World::start().await;
    let bot = world
        .bot_with("[notifications]\ndeliver = false\n[watch]\nadmin_channel = \"19:channel@thread.tacv2\"\n")
        .await;
    assert_eq!(bot.say_in_channel(&world, ADMIN, "help").await, 200);
    complete_aad_setup(&bot, &world).await;
    let handle = world.sandbox.handle();
    // ServiceNow stops mapping the REST-user token: the OIDC entity is made inactive.
    let inbound = app_id(&world, "inbound REST API");
    let entity_id = secret_record(&world, "oauth_oidc_entity", &inbound);
    handle
        .sn_update("oauth_oidc_entity", &entity_id, json!({"active": "false"}))
        .expect("deactivate");
    m365bot::notify::sources::poll_servicenow_once(&bot.app)
        .await
        .expect_err("refused");
    let found = wait_for_alerts(&world, 2, Duration::from_secs(10)).await;
    assert_eq!(found.len(), 2, "{found:?}");
    let text = card_text(&found[0].1);
    assert!(text.contains("Found by a runtime call"), "{text}");
    assert!(
        text.contains("Runtime calls to ServiceNow as the integration user (failing)"),
        "{text}"
    );
    assert!(text.contains("likely broken: OIDC"), "{text}");
    // The same refusal again is not a new failure.
    m365bot::notify::sources::poll_servicenow_once(&bot.app)
        .await
        .expect_err("still refused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&world).len(), 2, "no second alert");
    // Fixed: the next call works, the chain is verified live, one recovery card each.
    handle
        .sn_update("oauth_oidc_entity", &entity_id, json!({"active": "true"}))
        .expect("reactivate");
    m365bot::notify::sources::poll_servicenow_once(&bot.app)
        .await
        .expect("works again");
    let found = wait_for_alerts(&world, 4, Duration::from_secs(10)).await;
    assert_eq!(found.len(), 4, "{found:?}");
    let recovery = card_text(&found[3].1);
    assert!(
        recovery.contains("Runtime calls to ServiceNow as the integration user (recovered)"),
        "{recovery}"
    );
}
