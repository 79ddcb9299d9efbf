//! Notification sources: the signed / bearer push endpoint, the ServiceNow poller and the
//! service-health poller with mirroring, against the in-process emulators.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use m365bot::app::{App, Application};
use m365bot::config::Settings;
use m365bot::notify::sources::{self, push, store};
use m365bot::sandbox::{Emulator, IssueAdvance, Sandbox, SandboxOptions};
use m365bot::upstream::entra::EntraClient;
use serde_json::{Value, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-push-secret-0123456789";

/// A bot on loopback whose database lives in `dir` (so a second one can reopen it).
struct Bot {
    base_url: String,
    app: Arc<App>,
    shutdown: CancellationToken,
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Bot {
    async fn start(dir: &Path, extra: &str) -> Self {
        let base = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"8eaef023-2b34-4da1-9baa-8bc8c9d6a490\"\n",
            dir.join("bot.db").display()
        );
        let settings =
            Settings::from_toml_str(&support::merge_toml(&base, extra)).expect("test settings");
        let application = Application::build(settings).await.expect("bot builds");
        let base_url = format!("http://{}", application.local_addr());
        let app = application.app();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { application.run_until_stopped(stop).await });
        Self {
            base_url,
            app,
            shutdown,
        }
    }

    async fn post(&self, body: &[u8], headers: &[(&str, String)]) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}{}", self.base_url, push::PATH))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.expect("request reaches the bot")
    }

    async fn post_signed(&self, body: &[u8], timestamp: i64) -> reqwest::Response {
        let signature = push::sign(SECRET.as_bytes(), timestamp, body);
        self.post(
            body,
            &[
                (push::TIMESTAMP_HEADER, timestamp.to_string()),
                (push::SIGNATURE_HEADER, signature),
            ],
        )
        .await
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.app.db.pool)
            .await
            .expect("count")
            .try_get::<i64, _>("n")
            .expect("n")
    }
}

fn sandbox_toml(sandbox: &Sandbox, user: &str, password: &str) -> String {
    let demo = sandbox.demo();
    let urls = sandbox.urls();
    format!(
        "[servicenow]\ninstance_url = \"{sn}\"\nusername = \"{user}\"\npassword = \"{password}\"\n\
         [entra]\nauthority_url = \"{entra}/\"\ngraph_url = \"{graph}/\"\ngraph_client_id = \"{gid}\"\ngraph_client_secret = \"{gsecret}\"\n\
         [notifications.sources.push]\nhmac_secret = \"{SECRET}\"\n",
        sn = urls.servicenow,
        entra = urls.entra,
        graph = urls.graph_v1(),
        gid = demo.graph_client_id,
        gsecret = demo.graph_client_secret,
    )
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts")
}

fn payload(sys_id: &str, mod_count: u32, state: (&str, &str)) -> Vec<u8> {
    let field = |value: &str| json!({"value": value, "display_value": value});
    serde_json::to_vec(&json!({
        "table": "incident",
        "record": {
            "sys_id": field(sys_id),
            "sys_mod_count": field(&mod_count.to_string()),
            "sys_updated_on": field("2026-01-02 10:00:00"),
            "number": field("INC0099999"),
            "short_description": field("Mail is down"),
            "state": {"value": state.0, "display_value": state.1},
            "correlation_id": field("2502170040001234"),
        },
        "note": "Microsoft asked for logs",
    }))
    .expect("json")
}

const CASE_ID: &str = "0123456789abcdef0123456789abcdef";

/// The cases of the poller's table that track a Microsoft case, oldest number first.
fn open_cases(sandbox: &Sandbox) -> Vec<String> {
    sandbox
        .handle()
        .sn_query(
            "incident",
            "correlation_idISNOTEMPTY^active=true^ORDERBYnumber",
        )
        .expect("incident table")
        .iter()
        .filter_map(|row| row.get("sys_id").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn mod_count(sandbox: &Sandbox, sys_id: &str) -> i64 {
    sandbox
        .handle()
        .sn_record("incident", sys_id)
        .and_then(|row| {
            row.get("sys_mod_count")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .and_then(|text| text.parse().ok())
        .expect("sys_mod_count")
}

async fn known_revision(app: &App, case_key: &str) -> Option<String> {
    store::case_state(&app.db, case_key)
        .await
        .expect("case state")
        .map(|state| state.revision)
}

// ---- push: HMAC ----

#[tokio::test]
async fn signed_push_is_accepted_once_and_refusals_store_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let bot = Bot::start(
        dir.path(),
        &format!("[notifications.sources.push]\nhmac_secret = \"{SECRET}\"\n"),
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let body = payload(CASE_ID, 3, ("2", "In Progress"));

    // Refusals first: nothing may be stored by any of them.
    let missing = bot.post(&body, &[]).await;
    assert_eq!(missing.status(), 401);
    let wrong = bot
        .post(
            &body,
            &[
                (push::TIMESTAMP_HEADER, now.to_string()),
                (
                    push::SIGNATURE_HEADER,
                    push::sign(b"other secret", now, &body),
                ),
            ],
        )
        .await;
    assert_eq!(wrong.status(), 401);
    let tampered = bot
        .post(
            &payload(CASE_ID, 4, ("6", "Resolved")),
            &[
                (push::TIMESTAMP_HEADER, now.to_string()),
                (
                    push::SIGNATURE_HEADER,
                    push::sign(SECRET.as_bytes(), now, &body),
                ),
            ],
        )
        .await;
    assert_eq!(tampered.status(), 401);
    let stale = bot.post_signed(&body, now - 600).await;
    assert_eq!(stale.status(), 401);
    let future = bot.post_signed(&body, now + 600).await;
    assert_eq!(future.status(), 401);
    let bearer = bot
        .post(&body, &[("authorization", "Bearer abc.def.ghi".to_owned())])
        .await;
    assert_eq!(bearer.status(), 401, "bearer tokens are not configured");
    let malformed = bot.post_signed(b"{not json", now).await;
    assert_eq!(malformed.status(), 400);
    let wrong_shape = bot.post_signed(br#"{"table":"incident"}"#, now).await;
    assert_eq!(wrong_shape.status(), 400);
    let other_table = bot
        .post_signed(
            &serde_json::to_vec(&json!({"table": "problem", "record": {}})).expect("json"),
            now,
        )
        .await;
    assert_eq!(other_table.status(), 400);
    let no_revision = bot
        .post_signed(
            &serde_json::to_vec(&json!({"table": "incident", "record": {"sys_id": CASE_ID}}))
                .expect("json"),
            now,
        )
        .await;
    assert_eq!(no_revision.status(), 400);
    let huge = vec![b' '; 70 * 1024];
    let too_large = bot.post_signed(&huge, now).await;
    assert_eq!(too_large.status(), 413);
    let refusal: Value = missing_body(&bot, &body).await;
    assert_eq!(refusal["error"]["code"], "unauthorized");
    for table in [
        "notify_source_cases",
        "notify_push_replays",
        "notify_events",
    ] {
        assert_eq!(bot.count(table).await, 0, "{table} after refusals");
    }

    // A valid signature is accepted and the case remembered.
    let accepted = bot.post_signed(&body, now).await;
    let status = accepted.status();
    let answer: Value = accepted.json().await.expect("json answer");
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["status"] == "recorded" || answer["status"] == "duplicate",
        "{answer}"
    );
    let key = format!("servicenow:incident:{CASE_ID}");
    assert_eq!(known_revision(&bot.app, &key).await.as_deref(), Some("3"));

    // The very same request again is a replay.
    let replay = bot.post_signed(&body, now).await;
    assert_eq!(replay.status(), 401);
    // The same update signed anew is fine and yields no second event.
    let again = bot.post_signed(&body, now + 1).await;
    let answer: Value = again.json().await.expect("json");
    assert_eq!(answer["status"], "duplicate", "{answer}");
    // An older revision arriving late is dropped.
    let older = bot
        .post_signed(&payload(CASE_ID, 2, ("1", "New")), now + 2)
        .await;
    let answer: Value = older.json().await.expect("json");
    assert_eq!(answer["status"], "stale", "{answer}");
    assert_eq!(known_revision(&bot.app, &key).await.as_deref(), Some("3"));
    // A newer one moves the case on and knows the state it came from.
    let newer = bot
        .post_signed(&payload(CASE_ID, 5, ("6", "Resolved")), now + 3)
        .await;
    assert_eq!(newer.status(), 200);
    let state = store::case_state(&bot.app.db, &key)
        .await
        .expect("db")
        .expect("known");
    assert_eq!(state.revision, "5");
    assert_eq!(state.state, "Resolved");
    assert_eq!(state.previous_state.as_deref(), Some("In Progress"));
}

async fn missing_body(bot: &Bot, body: &[u8]) -> Value {
    bot.post(body, &[]).await.json().await.expect("json error")
}

// ---- push: Entra bearer ----

#[tokio::test]
async fn bearer_push_needs_an_allowed_app_of_the_tenant() {
    let sandbox = sandbox().await;
    let handle = sandbox.handle();
    let (pusher, pusher_secret) = handle.create_app("ServiceNow pusher", &[]);
    let (stranger, stranger_secret) = handle.create_app("Someone else", &[]);
    let (audience, _) = handle.create_app("m365bot events", &[]);
    let dir = tempfile::tempdir().expect("dir");
    let bot = Bot::start(
        dir.path(),
        &format!(
            "[entra]\nauthority_url = \"{}/\"\n[notifications.sources.push]\nbearer_audiences = [\"{audience}\"]\nbearer_allowed_app_ids = [\"{pusher}\"]\n",
            sandbox.urls().entra
        ),
    )
    .await;
    let entra = EntraClient::new(
        reqwest::Client::new(),
        url::Url::parse(&format!("{}/", sandbox.urls().entra)).expect("url"),
    );
    let tenant = sandbox.demo().tenant_id.clone();
    let token = |client: String, secret: String, resource: String| {
        let entra = entra.clone();
        let tenant = tenant.clone();
        async move {
            use secrecy::ExposeSecret;
            entra
                .client_credentials_v1(&tenant, &client, &secret.into(), &resource)
                .await
                .expect("token")
                .access_token
                .expose_secret()
                .to_owned()
        }
    };
    let body = payload(CASE_ID, 1, ("1", "New"));
    let good = token(pusher.clone(), pusher_secret.clone(), audience.clone()).await;
    let accepted = bot
        .post(&body, &[("authorization", format!("Bearer {good}"))])
        .await;
    assert_eq!(accepted.status(), 200);

    let not_allowed = token(stranger, stranger_secret, audience.clone()).await;
    let refused = bot
        .post(&body, &[("authorization", format!("Bearer {not_allowed}"))])
        .await;
    assert_eq!(refused.status(), 401, "app not in the allow-list");
    let other_audience = token(pusher.clone(), pusher_secret.clone(), pusher.clone()).await;
    let refused = bot
        .post(
            &body,
            &[("authorization", format!("Bearer {other_audience}"))],
        )
        .await;
    assert_eq!(refused.status(), 401, "token for another audience");
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    let refused = bot
        .post(&body, &[("authorization", format!("Bearer {forged}"))])
        .await;
    assert_eq!(refused.status(), 401, "bad signature");
    let refused = bot
        .post(&body, &[("authorization", "Bearer not-a-jwt".to_owned())])
        .await;
    assert_eq!(refused.status(), 401);
    // v2 tokens (the resource asks for them) carry `azp` and the v2 issuer: accepted too.
    assert!(handle.set_requested_access_token_version(&audience, Some(2)));
    let v2 = token(pusher.clone(), pusher_secret.clone(), audience.clone()).await;
    let accepted = bot
        .post(
            &payload(CASE_ID, 2, ("2", "In Progress")),
            &[("authorization", format!("Bearer {v2}"))],
        )
        .await;
    assert_eq!(accepted.status(), 200, "v2 token");
    // A valid token does not excuse a malformed body.
    let malformed = bot
        .post(b"[]", &[("authorization", format!("Bearer {good}"))])
        .await;
    assert_eq!(malformed.status(), 400);
    assert_eq!(bot.count("notify_source_cases").await, 1);

    // Re-signed with the tenant's key, the same claims are accepted (the control) ...
    let claims = support::tokens::claims_of(&good);
    let resigned = support::tokens::sandbox_signed(&claims);
    let accepted = bot
        .post(
            &payload(CASE_ID, 3, ("2", "In Progress")),
            &[("authorization", format!("Bearer {resigned}"))],
        )
        .await;
    assert_eq!(accepted.status(), 200, "re-signed app token");
    // ... but a delegated (user) token, a token without nbf or not yet valid is refused.
    let now = chrono::Utc::now().timestamp();
    let mut delegated = claims.clone();
    delegated["idtyp"] = json!("user");
    delegated["scp"] = json!("user_impersonation");
    let mut no_nbf = claims.clone();
    no_nbf.as_object_mut().expect("object").remove("nbf");
    let mut not_yet = claims.clone();
    not_yet["nbf"] = json!(now + 3600);
    let mut neither = claims.clone();
    neither.as_object_mut().expect("object").remove("idtyp");
    for (what, claims) in [
        ("delegated", delegated),
        ("without nbf", no_nbf),
        ("nbf in the future", not_yet),
        ("neither idtyp=app nor roles", neither),
    ] {
        let token = support::tokens::sandbox_signed(&claims);
        let refused = bot
            .post(
                &payload(CASE_ID, 9, ("6", "Resolved")),
                &[("authorization", format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(refused.status(), 401, "{what}");
    }
    let state = store::case_state(&bot.app.db, &format!("servicenow:incident:{CASE_ID}"))
        .await
        .expect("db")
        .expect("known");
    assert_eq!(state.revision, "3", "nothing stored by a refused token");
}

#[tokio::test]
async fn oversized_or_crowded_signature_headers_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let bot = Bot::start(
        dir.path(),
        &format!("[notifications.sources.push]\nhmac_secret = \"{SECRET}\"\n"),
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let body = payload(CASE_ID, 3, ("2", "In Progress"));
    let good = push::sign(SECRET.as_bytes(), now, &body);
    let wrong = push::sign(b"other", now, &body);
    for (what, header) in [
        ("three candidates", format!("{wrong},{wrong},{good}")),
        ("over 1 KiB", format!("{good},{}", "x".repeat(1100))),
    ] {
        let refused = bot
            .post(
                &body,
                &[
                    (push::TIMESTAMP_HEADER, now.to_string()),
                    (push::SIGNATURE_HEADER, header),
                ],
            )
            .await;
        assert_eq!(refused.status(), 401, "{what}");
    }
    assert_eq!(bot.count("notify_events").await, 0);
    // Two candidates (secret rotation) still work.
    let accepted = bot
        .post(
            &body,
            &[
                (push::TIMESTAMP_HEADER, now.to_string()),
                (push::SIGNATURE_HEADER, format!("{wrong},{good}")),
            ],
        )
        .await;
    assert_eq!(accepted.status(), 200);
}

// ---- the ServiceNow poller ----

#[tokio::test]
async fn poller_picks_up_changes_once_and_survives_a_restart() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let toml = sandbox_toml(&sandbox, "admin", &sandbox.demo().servicenow_admin_password);
    let cases = open_cases(&sandbox);
    assert!(cases.len() >= 2, "seeded cases: {cases:?}");
    {
        let bot = Bot::start(dir.path(), &toml).await;
        // The seed is older than the look-back: the first poll starts from "now - 1 h".
        let first = sources::poll_servicenow_once(&bot.app).await.expect("poll");
        assert_eq!(first.recorded + first.duplicates, 0, "{first:?}");
        sandbox
            .handle()
            .sn_update(
                "incident",
                &cases[0],
                json!({"state": "3", "comments": "Waiting for Microsoft"}),
            )
            .expect("update");
        let second = sources::poll_servicenow_once(&bot.app).await.expect("poll");
        assert_eq!(second.recorded, 1, "{second:?}");
        let key = format!("servicenow:incident:{}", cases[0]);
        let state = store::case_state(&bot.app.db, &key)
            .await
            .expect("db")
            .expect("case known");
        assert_eq!(state.revision, mod_count(&sandbox, &cases[0]).to_string());
        assert_eq!(state.state, "On Hold");
        let third = sources::poll_servicenow_once(&bot.app).await.expect("poll");
        assert_eq!(third.recorded + third.duplicates, 0, "{third:?}");
        assert_eq!(third.skipped, 1, "the watermark row is skipped: {third:?}");
    }
    // A new process on the same database continues from the stored watermark.
    let bot = Bot::start(dir.path(), &toml).await;
    let after_restart = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(
        after_restart.recorded + after_restart.duplicates,
        0,
        "{after_restart:?}"
    );
    sandbox
        .handle()
        .sn_update("incident", &cases[1], json!({"state": "2"}))
        .expect("update");
    let picked = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(picked.recorded, 1, "{picked:?}");
}

#[tokio::test]
async fn poller_handles_ties_and_acl_short_pages() {
    let sandbox = sandbox().await;
    let handle = sandbox.handle();
    let stamp = m365bot::upstream::servicenow::format_datetime(chrono::Utc::now());
    let mut inserted = Vec::new();
    for n in 0..5 {
        let sys_id = handle
            .sn_insert(
                "incident",
                json!({
                    "short_description": format!("tie {n}"),
                    "state": "1",
                    "correlation_id": format!("25030100400000{n:02}"),
                    "sys_updated_on": stamp,
                }),
            )
            .expect("insert");
        inserted.push(sys_id);
    }
    inserted.sort();
    // A row ACL hides two of them from the bot's (non-admin) user: pages come back short.
    handle.sn_set_row_hidden(&inserted[0], true);
    handle.sn_set_row_hidden(&inserted[2], true);
    let dir = tempfile::tempdir().expect("dir");
    let toml = format!(
        "{}\n[notifications.sources.servicenow]\nbatch_size = 2\n",
        sandbox_toml(
            &sandbox,
            "jane.doe",
            &sandbox.demo().servicenow_plain_password
        )
    );
    let bot = Bot::start(dir.path(), &toml).await;
    let report = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(report.recorded, 3, "{report:?}");
    for (index, sys_id) in inserted.iter().enumerate() {
        let known = known_revision(&bot.app, &format!("servicenow:incident:{sys_id}")).await;
        assert_eq!(known.is_some(), index != 0 && index != 2, "{index}");
    }
    let mark = store::watermark(&bot.app.db, "servicenow:incident")
        .await
        .expect("db")
        .expect("watermark");
    assert_eq!(mark.watermark, stamp);
    assert_eq!(&mark.last_key, &inserted[4], "ties are ordered by sys_id");
    // Nothing is read twice although every row shares the watermark's second.
    let again = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(again.recorded + again.duplicates, 0, "{again:?}");
    // A record committed later in the watermark's second, sorting before the last sys_id,
    // is still found (the overlap is re-read; known rows are skipped).
    let late = handle
        .sn_insert(
            "incident",
            json!({
                "sys_id": "00000000000000000000000000000001",
                "short_description": "late in the same second",
                "state": "1",
                "correlation_id": "2503010040000099",
                "sys_updated_on": stamp,
            }),
        )
        .expect("insert");
    let found = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(found.recorded, 1, "{found:?}");
    assert!(
        known_revision(&bot.app, &format!("servicenow:incident:{late}"))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn poller_records_a_page_of_many_changes_once_with_batched_lookups() {
    let sandbox = sandbox().await;
    let handle = sandbox.handle();
    let dir = tempfile::tempdir().expect("dir");
    let toml = sandbox_toml(&sandbox, "admin", &sandbox.demo().servicenow_admin_password);
    let bot = Bot::start(dir.path(), &toml).await;
    let first = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(first.recorded, 0, "{first:?}");
    let events_before = bot.count("notify_events").await;
    // 120 cases change at once, each with its own note: one page of the poller.
    const CHANGES: usize = 120;
    let mut changed = Vec::new();
    for n in 0..CHANGES {
        let sys_id = handle
            .sn_insert(
                "incident",
                json!({
                    "short_description": format!("bulk {n}"),
                    "state": "1",
                    "correlation_id": format!("2503020040{n:06}"),
                }),
            )
            .expect("insert");
        handle
            .sn_update(
                "incident",
                &sys_id,
                json!({"comments": format!("note of case {n}")}),
            )
            .expect("note");
        changed.push(sys_id);
    }
    let requests_before = handle.request_count(Emulator::ServiceNow);
    let report = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    let requests = handle.request_count(Emulator::ServiceNow) - requests_before;
    assert_eq!(report.recorded, CHANGES, "{report:?}");
    // The journal is read per chunk of cases, not once per change.
    assert!(
        requests < 20,
        "{requests} requests to ServiceNow for {CHANGES} changes"
    );
    assert_eq!(
        bot.count("notify_events").await - events_before,
        CHANGES as i64,
        "one event per change"
    );
    for (n, sys_id) in changed.iter().enumerate() {
        let key = format!("servicenow:incident:{sys_id}");
        assert_eq!(
            known_revision(&bot.app, &key).await,
            Some(mod_count(&sandbox, sys_id).to_string()),
            "case {n}"
        );
        let payload: String =
            sqlx::query_scalar("SELECT payload FROM notify_events WHERE case_key = $1")
                .bind(&key)
                .fetch_one(&bot.app.db.pool)
                .await
                .expect("event");
        let event: Value = serde_json::from_str(&payload).expect("payload");
        assert_eq!(
            event["latest_note"],
            json!(format!("note of case {n}")),
            "each case carries its own note"
        );
    }
    let mark = store::watermark(&bot.app.db, "servicenow:incident")
        .await
        .expect("db")
        .expect("watermark");
    let (stamp, last) = changed
        .iter()
        .map(|id| (first_stamp(&handle, id), id.clone()))
        .max()
        .expect("changes");
    assert_eq!(
        (mark.watermark.as_str(), mark.last_key.as_str()),
        (stamp.as_str(), last.as_str()),
        "the watermark is the page's last change"
    );
    // Polled again (the overlap is re-read): nothing is recorded twice.
    let again = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(again.recorded + again.duplicates, 0, "{again:?}");
    assert_eq!(
        bot.count("notify_events").await - events_before,
        CHANGES as i64
    );
}

/// `sys_updated_on` of a record of the incident table.
fn first_stamp(handle: &m365bot::sandbox::SandboxHandle, sys_id: &str) -> String {
    handle
        .sn_record("incident", sys_id)
        .and_then(|row| {
            row.get("sys_updated_on")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .expect("sys_updated_on")
}

#[tokio::test]
async fn a_missing_column_is_an_error_not_a_silently_ignored_query() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let toml = format!(
        "{}\n[notifications.sources.servicenow]\ncase_reference_field = \"u_no_such_column\"\n",
        sandbox_toml(&sandbox, "admin", &sandbox.demo().servicenow_admin_password)
    );
    let bot = Bot::start(dir.path(), &toml).await;
    let err = sources::poll_servicenow_once(&bot.app)
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("u_no_such_column"), "{err}");
    assert_eq!(
        err.retry_kind(),
        m365bot::error::RetryKind::Permanent,
        "{err}"
    );
}

#[tokio::test]
async fn push_and_poll_of_one_update_yield_one_event() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let toml = sandbox_toml(&sandbox, "admin", &sandbox.demo().servicenow_admin_password);
    let bot = Bot::start(dir.path(), &toml).await;
    let sources_settings = &bot.app.settings.notifications.sources;
    // The emulator acts as the Business Rule.
    sandbox
        .handle()
        .sn_set_push_target(Some(m365bot::sandbox::servicenow::PushTarget {
            url: format!("{}{}", bot.base_url, push::PATH),
            secret: SECRET.to_owned(),
            table: "incident".to_owned(),
            filter: sources_settings.servicenow.filter(),
            fields: sources_settings.servicenow.fields(),
        }));
    let case = open_cases(&sandbox)[0].clone();
    sandbox
        .handle()
        .sn_update(
            "incident",
            &case,
            json!({"state": "3", "work_notes": "Escalated to Microsoft"}),
        )
        .expect("update");
    let expected = mod_count(&sandbox, &case).to_string();
    let key = format!("servicenow:incident:{case}");
    let mut pushed = None;
    for _ in 0..100 {
        pushed = known_revision(&bot.app, &key).await;
        if pushed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pushed.as_deref(),
        Some(expected.as_str()),
        "the push arrived"
    );
    // The poller sees the same update: the outbox already has it.
    let report = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert_eq!(report.recorded, 0, "{report:?}");
    assert_eq!(report.duplicates, 1, "{report:?}");
    assert_eq!(known_revision(&bot.app, &key).await, Some(expected));
    let events = sqlx::query("SELECT COUNT(*) AS n FROM notify_events WHERE case_key = $1")
        .bind(&key)
        .fetch_one(&bot.app.db.pool)
        .await
        .expect("count")
        .try_get::<i64, _>("n")
        .expect("n");
    assert_eq!(events, 1, "one event for the update");
}

// ---- service health ----

#[tokio::test]
async fn service_health_is_polled_and_mirrored_into_incidents() {
    let sandbox = sandbox().await;
    let handle = sandbox.handle();
    let dir = tempfile::tempdir().expect("dir");
    let toml = format!(
        "{}\n[notifications.sources.service_health]\nmirror = true\nmirror_category = \"software\"\n",
        sandbox_toml(&sandbox, "admin", &sandbox.demo().servicenow_admin_password)
    );
    let bot = Bot::start(dir.path(), &toml).await;
    let first = sources::poll_service_health_once(&bot.app)
        .await
        .expect("poll");
    assert_eq!(first.fetched, 3, "{first:?}");
    assert_eq!(first.recorded, 3, "{first:?}");
    // Two open issues get an incident; the one already resolved does not.
    assert_eq!(first.mirrored_created, 2, "{first:?}");
    let mirrored = |id: &str| {
        handle
            .sn_query("incident", &format!("correlation_id={id}"))
            .expect("incident table")
    };
    assert_eq!(mirrored("EX512345").len(), 1);
    assert_eq!(mirrored("SP487654").len(), 0);
    let incident = mirrored("EX512345").remove(0);
    let sys_id = incident["sys_id"].as_str().expect("sys_id").to_owned();
    assert_eq!(incident["category"], "software");
    assert_eq!(
        incident["correlation_display"],
        "Microsoft 365 service health"
    );
    let notes = |sys_id: &str| {
        handle
            .sn_query(
                "sys_journal_field",
                &format!("element_id={sys_id}^element=work_notes"),
            )
            .expect("journal")
            .len()
    };
    assert_eq!(notes(&sys_id), 1, "the first post");

    // Nothing changed: nothing new.
    let idle = sources::poll_service_health_once(&bot.app)
        .await
        .expect("poll");
    assert_eq!(
        idle.recorded + idle.mirrored_notes + idle.mirrored_created,
        0,
        "{idle:?}"
    );

    // A new post: one event, one work note.
    assert!(handle.advance_issue(
        "EX512345",
        IssueAdvance {
            post: Some("Current status: <b>we deployed a fix</b>".to_owned()),
            ..IssueAdvance::default()
        }
    ));
    let posted = sources::poll_service_health_once(&bot.app)
        .await
        .expect("poll");
    assert_eq!(posted.recorded, 1, "{posted:?}");
    assert_eq!(posted.mirrored_notes, 1, "{posted:?}");
    assert_eq!(posted.mirrored_created, 0, "{posted:?}");
    assert_eq!(notes(&sys_id), 2);
    let state = store::case_state(&bot.app.db, "service_health:EX512345")
        .await
        .expect("db")
        .expect("known");
    assert_eq!(state.previous_state.as_deref(), Some("serviceDegradation"));

    // Resolution resolves the incident once.
    assert!(handle.advance_issue(
        "EX512345",
        IssueAdvance {
            resolve: true,
            ..IssueAdvance::default()
        }
    ));
    let resolved = sources::poll_service_health_once(&bot.app)
        .await
        .expect("poll");
    assert_eq!(resolved.mirrored_resolved, 1, "{resolved:?}");
    let incident = handle.sn_record("incident", &sys_id).expect("incident");
    assert_eq!(incident["state"], "6");
    assert_eq!(incident["close_code"], "Closed/Resolved by Caller");
    assert!(
        incident["close_notes"]
            .as_str()
            .is_some_and(|text| text.contains("was resolved on")),
        "{incident:?}"
    );
    let after = sources::poll_service_health_once(&bot.app)
        .await
        .expect("poll");
    assert_eq!(
        after.mirrored_resolved + after.mirrored_notes,
        0,
        "{after:?}"
    );

    // The ServiceNow poller leaves the bot's own mirrors alone.
    let sn = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert!(
        known_revision(&bot.app, &format!("servicenow:incident:{sys_id}"))
            .await
            .is_none(),
        "{sn:?}"
    );
}

#[tokio::test]
async fn a_reset_database_adopts_mirrors_without_duplicating_notes() {
    let sandbox = sandbox().await;
    let handle = sandbox.handle();
    let toml = format!(
        "{}\n[notifications.sources.service_health]\nmirror = true\n",
        sandbox_toml(&sandbox, "admin", &sandbox.demo().servicenow_admin_password)
    );
    let first_dir = tempfile::tempdir().expect("dir");
    {
        let bot = Bot::start(first_dir.path(), &toml).await;
        sources::poll_service_health_once(&bot.app)
            .await
            .expect("poll");
    }
    let second_dir = tempfile::tempdir().expect("dir");
    let bot = Bot::start(second_dir.path(), &toml).await;
    let report = sources::poll_service_health_once(&bot.app)
        .await
        .expect("poll");
    assert_eq!(report.mirrored_created, 0, "{report:?}");
    assert_eq!(report.mirrored_notes, 0, "{report:?}");
    assert_eq!(
        handle
            .sn_query("incident", "correlation_id=TM498765")
            .expect("incidents")
            .len(),
        1
    );
}

// ---- the Business Rule script ----

#[test]
fn servicenow_script_prints_the_business_rule() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("m365bot.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:3978\"\npublic_url = \"https://bot.contoso.com/\"\n[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\n[notifications.sources.servicenow]\ncase_reference_field = \"u_ms_case\"\n",
    )
    .expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_m365bot"))
        .arg("--config")
        .arg(&config)
        .arg("servicenow-script")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let script = String::from_utf8(output.stdout).expect("utf-8");
    for needle in [
        "https://bot.contoso.com/api/servicenow/events",
        "'<SECRET>'",
        "'u_ms_caseISNOTEMPTY'",
        "'sys_mod_count'",
        "sn_ws.RESTMessageV2",
        "GlideFilter.checkRecord",
    ] {
        assert!(script.contains(needle), "{needle}:\n{script}");
    }
}

// ---- storage on both backends ----

#[tokio::test]
async fn source_storage_works_on_every_backend() {
    for test in support::db::test_databases().await {
        let db = &test.db;
        let label = test.label;
        assert_eq!(store::watermark(db, "s").await.expect(label), None);
        let mark = store::Watermark {
            watermark: "2026-01-01 00:00:00".to_owned(),
            last_key: "a".to_owned(),
        };
        store::set_watermark(db, "s", &mark).await.expect(label);
        let later = store::Watermark {
            watermark: "2026-01-01 00:00:01".to_owned(),
            last_key: "b".to_owned(),
        };
        store::set_watermark(db, "s", &later).await.expect(label);
        assert_eq!(store::watermark(db, "s").await.expect(label), Some(later));

        store::remember_case(db, "k", "2", 2, "New", None)
            .await
            .expect(label);
        store::remember_case(db, "k", "1", 1, "Old", None)
            .await
            .expect(label);
        let state = store::case_state(db, "k").await.expect(label).expect(label);
        assert_eq!(
            (state.revision.as_str(), state.state.as_str()),
            ("2", "New"),
            "{label}"
        );
        store::remember_case(db, "k", "3", 3, "Done", Some("New"))
            .await
            .expect(label);
        let state = store::case_state(db, "k").await.expect(label).expect(label);
        assert_eq!(state.previous_state.as_deref(), Some("New"), "{label}");
        store::remember_case(db, "k2", "1", 1, "New", None)
            .await
            .expect(label);
        let states = store::case_states(db, &["k", "k2", "unknown"])
            .await
            .expect(label);
        assert_eq!(states.len(), 2, "{label}");
        assert_eq!(states["k"].revision_order, 3, "{label}");
        assert_eq!(states["k2"].state, "New", "{label}");

        let future = chrono::Utc::now().timestamp_millis() + 60_000;
        assert!(
            store::claim_replay(db, "h", future).await.expect(label),
            "{label}"
        );
        assert!(
            !store::claim_replay(db, "h", future).await.expect(label),
            "{label}"
        );
        store::release_replay(db, "h").await.expect(label);
        assert!(
            store::claim_replay(db, "h", future).await.expect(label),
            "{label}"
        );
        // Expired claims are cleared.
        assert!(
            store::claim_replay(db, "old", 1).await.expect(label),
            "{label}"
        );
        assert!(
            store::claim_replay(db, "old", future).await.expect(label),
            "{label}"
        );

        let mirror = store::Mirror {
            issue_id: "EX1".to_owned(),
            incident_sys_id: "0123456789abcdef0123456789abcdef".to_owned(),
            last_post_at: i64::MIN,
            resolved: false,
        };
        store::save_mirror(db, &mirror).await.expect(label);
        assert_eq!(
            store::mirror(db, "EX1").await.expect(label),
            Some(mirror.clone())
        );
        assert!(
            store::is_mirror_incident(db, &mirror.incident_sys_id)
                .await
                .expect(label)
        );
        let (incidents, issues) = store::mirror_matches(
            db,
            &[
                mirror.incident_sys_id.as_str(),
                "ffffffffffffffffffffffffffffffff",
            ],
            &["EX1", "EX2"],
        )
        .await
        .expect(label);
        assert_eq!(incidents, vec![mirror.incident_sys_id.clone()], "{label}");
        assert_eq!(issues, vec!["EX1".to_owned()], "{label}");
        let done = store::Mirror {
            resolved: true,
            last_post_at: 5,
            ..mirror
        };
        store::save_mirror(db, &done).await.expect(label);
        assert_eq!(store::mirror(db, "EX1").await.expect(label), Some(done));
    }
}

// ---- the sandbox: a case changed through the emulator reaches the bot ----

#[tokio::test]
async fn sandbox_case_changes_reach_the_bot_by_push_and_service_health_by_poll() {
    let dir = tempfile::tempdir().expect("dir");
    let database = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let listen: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let demo = m365bot::demo::Demo::start(SandboxOptions::default(), listen, &database)
        .await
        .expect("demo starts");
    let welcome = demo.welcome();
    let command = demo.case_change_command().expect("a demo case");
    assert!(welcome.contains(&command), "{welcome}");
    assert!(command.contains("-X PATCH"), "{command}");
    let application = Application::build(demo.settings.clone())
        .await
        .expect("bot builds");
    let addr = application.local_addr();
    let app = application.app();
    demo.connect_push(addr);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { application.run_until_stopped(stop).await });

    // What the welcome text tells the user to do, through the emulator's Table API.
    let case = open_cases(&demo.sandbox)[0].clone();
    let sandbox_demo = demo.sandbox.demo();
    let patched = reqwest::Client::new()
        .patch(format!(
            "{}/api/now/table/incident/{case}",
            demo.sandbox.urls().servicenow
        ))
        .basic_auth(
            &sandbox_demo.servicenow_admin_user,
            Some(&sandbox_demo.servicenow_admin_password),
        )
        .header("accept", "application/json")
        .json(&json!({"state": "3", "comments": "Waiting for Microsoft support"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let expected = mod_count(&demo.sandbox, &case).to_string();
    let key = format!("servicenow:incident:{case}");
    let mut seen = None;
    for _ in 0..150 {
        seen = known_revision(&app, &key).await;
        if seen.as_deref() == Some(expected.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.as_deref(), Some(expected.as_str()));
    // The service-health poller runs in the background and mirrors the open issues.
    let mut mirrored = 0;
    for _ in 0..150 {
        mirrored = demo
            .sandbox
            .handle()
            .sn_query(
                "incident",
                "correlation_display=Microsoft 365 service health",
            )
            .map_or(0, |rows| rows.len());
        if mirrored == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mirrored, 2);
    assert!(
        known_revision(&app, "service_health:TM498765")
            .await
            .is_some()
    );
    // The emulator pushed the mirrors' creation too; the bot knows them as its own.
    sources::poll_servicenow_once(&app).await.expect("poll");
    for row in demo
        .sandbox
        .handle()
        .sn_query(
            "incident",
            "correlation_display=Microsoft 365 service health",
        )
        .expect("incidents")
    {
        let sys_id = row["sys_id"].as_str().expect("sys_id");
        assert_eq!(
            known_revision(&app, &format!("servicenow:incident:{sys_id}")).await,
            None,
            "mirror {sys_id} is not a support case event"
        );
    }
    shutdown.cancel();
}

// ---- the background poller survives failures ----

#[tokio::test]
async fn background_poller_retries_after_upstream_failures() {
    use m365bot::sandbox::{Emulator, FaultConfig};
    let sandbox = sandbox().await;
    let handle = sandbox.handle();
    let dir = tempfile::tempdir().expect("dir");
    let toml = format!(
        "{}\n[notifications.sources.servicenow]\npoll = true\ninterval_secs = 1\n",
        sandbox_toml(&sandbox, "admin", &sandbox.demo().servicenow_admin_password)
    );
    // Every ServiceNow request fails while the bot starts.
    handle.set_faults(
        Emulator::ServiceNow,
        FaultConfig::none().with_error_rate(1.0),
    );
    let bot = Bot::start(dir.path(), &toml).await;
    let failing_since = handle.request_count(Emulator::ServiceNow);
    for _ in 0..50 {
        if handle.request_count(Emulator::ServiceNow) > failing_since {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        handle.request_count(Emulator::ServiceNow) > failing_since,
        "the poller tried"
    );
    let case = open_cases(&sandbox)[0].clone();
    handle
        .sn_update(
            "incident",
            &case,
            json!({"state": "2", "comments": "retry me"}),
        )
        .expect("update");
    handle.set_faults(Emulator::ServiceNow, FaultConfig::none());
    let key = format!("servicenow:incident:{case}");
    let mut known = None;
    for _ in 0..200 {
        known = known_revision(&bot.app, &key).await;
        if known.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(known, Some(mod_count(&sandbox, &case).to_string()));
    let health = reqwest::get(format!("{}/healthz", bot.base_url))
        .await
        .expect("bot still serves");
    assert_eq!(health.status(), 200);
}
