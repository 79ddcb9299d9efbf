//! The runtime identity after setup: the pollers, `status` and mirroring call ServiceNow as the
//! integration user (AAD: the REST-user token mapped by the OIDC provider; Basic: its
//! password), never as the bot's admin account; ServiceNow's read ACLs decide what they see;
//! the token is requested once under concurrency; a broken REST-user secret is reported with
//! the step it breaks and the identity recovers after the fix.

mod support;

use m365bot::integration::runtime::RuntimeMode;
use m365bot::notify::{outbox, sources};
use m365bot::sandbox::{AuthMethod, Emulator, LoggedRequest};
use serde_json::{Value, json};
use support::setup::{ADMIN, Bot, World, card_text, create, heading};

/// Pollers off (the test runs them), no deliveries, mirroring on.
const BOT_EXTRA: &str = "[notifications]\ndeliver = false\n\
    [notifications.sources.service_health]\nmirror = true\n";

/// Tables the admin account still reads at run time: the chat user's ServiceNow user and roles.
const USER_TABLES: &[&str] = &["sys_user", "sys_user_has_role", "sys_user_role"];

async fn press_step(bot: &Bot, world: &World, card: &Value, inputs: Value, next: &str) -> Value {
    let card = bot.press(world, ADMIN, card, "Continue", inputs).await;
    assert_eq!(heading(&card), next, "{}", card_text(&card));
    card
}

/// Walks the wizard to its end, creating everything (AAD or Basic); returns the last card.
async fn complete_setup(bot: &Bot, world: &World, basic: bool) -> Value {
    let consent = bot.say(world, ADMIN, "setup").await;
    let env = bot.press(world, ADMIN, &consent, "Agree", json!({})).await;
    let auth = if basic { "basic" } else { "aad" };
    let tenant = bot
        .press(
            world,
            ADMIN,
            &env,
            "Start setup",
            json!({"test_environment": "true", "auth": auth}),
        )
        .await;
    let card = bot
        .press(
            world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    assert_eq!(heading(&card), "Outbound Entra app", "{}", card_text(&card));
    let mut card = press_step(
        bot,
        world,
        &card,
        create(),
        "ServiceNow outbound OAuth provider",
    )
    .await;
    if basic {
        card = press_step(bot, world, &card, create(), "Integration user").await;
        card = press_step(
            bot,
            world,
            &card,
            json!({"mode": "create", "user_name": "m365_integration"}),
            "Cross-scope access to oauth_entity",
        )
        .await;
    } else {
        for next in [
            "Inbound REST API Entra app",
            "ServiceNow OIDC provider configuration",
            "ServiceNow OIDC entity",
            "REST-user Entra app",
            "Integration user",
            "Cross-scope access to oauth_entity",
        ] {
            card = press_step(bot, world, &card, create(), next).await;
        }
    }
    let done = bot
        .press(world, ADMIN, &card, "Check again", json!({}))
        .await;
    assert!(
        card_text(&done).contains("Setup complete"),
        "{}",
        card_text(&done)
    );
    done
}

/// A second bot on the same database whose Graph tenant is the sandbox's (the chat bot's test
/// tenant is another one): it loads the completed setup at start, as every replica does.
async fn health_replica(world: &World) -> Bot {
    let replica = world
        .bot_with(&format!(
            "{BOT_EXTRA}[bot]\ntenant_id = \"{}\"\n",
            world.sandbox.demo().tenant_id
        ))
        .await;
    assert!(
        matches!(
            replica.app.runtime.mode(),
            RuntimeMode::IntegrationUser { .. }
        ),
        "{:?}",
        replica.app.runtime.mode()
    );
    replica
}

fn table_of(request: &LoggedRequest) -> Option<&str> {
    let path = request.target.split('?').next()?;
    let rest = path
        .strip_prefix("/api/now/v2/table/")
        .or_else(|| path.strip_prefix("/api/now/table/"))?;
    rest.split('/').next()
}

/// ServiceNow requests after `from` (an index into the log).
fn servicenow_requests(bot_world: &World, from: usize) -> Vec<LoggedRequest> {
    bot_world
        .sandbox
        .handle()
        .request_log(Emulator::ServiceNow)
        .into_iter()
        .skip(from)
        .collect()
}

/// Every Table API request is authenticated as `user` by `method`, except reads of the chat
/// user's ServiceNow user and roles (the admin account's remaining job at run time).
fn assert_runtime_identity(requests: &[LoggedRequest], user: &str, method: AuthMethod) {
    let mut runtime_calls = 0;
    for request in requests {
        let Some(table) = table_of(request) else {
            continue;
        };
        if USER_TABLES.contains(&table) {
            assert_eq!(request.method, "GET", "{request:?}");
            continue;
        }
        runtime_calls += 1;
        assert_eq!(
            request.authenticated_as.as_deref(),
            Some(user),
            "{request:?}"
        );
        assert_eq!(request.auth_method, Some(method), "{request:?}");
    }
    assert!(runtime_calls > 0, "no runtime call was made: {requests:?}");
    assert!(
        requests
            .iter()
            .filter(|r| r.authenticated_as.as_deref() == Some("admin"))
            .all(|r| table_of(r).is_some_and(|t| USER_TABLES.contains(&t))),
        "the admin account read cases: {requests:?}"
    );
}

/// A Microsoft support case only the security team may read (a read ACL on the row).
fn add_confidential_case(world: &World) -> String {
    let handle = world.sandbox.handle();
    let sys_id = handle
        .sn_insert(
            "incident",
            json!({
                "short_description": "Confidential: executive mailbox export",
                "correlation_id": "2512070099000001",
                "impact": "1",
            }),
        )
        .expect("insert");
    handle.sn_set_read_role(&sys_id, Some("sn_si.analyst"));
    // The chat user may use `status`.
    assert!(handle.sn_grant_role("admin", "x_mioms_m365_assis.insights_user"));
    // A case the integration user may read changes too, so the poller has work.
    let visible = handle
        .sn_query("incident", "number=INC0010001")
        .expect("table")
        .remove(0);
    handle
        .sn_update(
            "incident",
            visible["sys_id"].as_str().expect("sys_id"),
            json!({"state": "3", "comments": "Waiting for Microsoft"}),
        )
        .expect("update");
    let record = handle.sn_record("incident", &sys_id).expect("record");
    record["number"].as_str().expect("number").to_owned()
}

#[tokio::test]
async fn after_aad_setup_pollers_status_and_mirroring_run_as_the_integration_user() {
    let world = World::start().await;
    let bot = world.bot_with(BOT_EXTRA).await;
    assert_eq!(bot.app.runtime.mode(), RuntimeMode::AdminFallback);
    assert!(
        bot.app
            .runtime
            .note()
            .is_some_and(|note| note.contains("no integration is set up yet")),
        "{:?}",
        bot.app.runtime.note()
    );
    complete_setup(&bot, &world, false).await;
    let RuntimeMode::IntegrationUser { user_name, .. } = bot.app.runtime.mode() else {
        panic!("not the integration user: {:?}", bot.app.runtime.mode());
    };
    let rest_user = world
        .sandbox
        .handle()
        .apps()
        .into_iter()
        .find(|app| app.display_name.ends_with("REST user"))
        .map(|app| app.app_id)
        .expect("REST-user app");
    assert_eq!(user_name, rest_user);
    let confidential = add_confidential_case(&world);
    let from = world
        .sandbox
        .handle()
        .request_log(Emulator::ServiceNow)
        .len();

    let polled = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert!(
        polled.recorded >= 1,
        "{polled:?} {:?}",
        servicenow_requests(&world, from)
    );
    let replica = health_replica(&world).await;
    let mirrored = sources::poll_service_health_once(&replica.app)
        .await
        .expect("health poll");
    assert!(mirrored.mirrored_created >= 1, "{mirrored:?}");
    let shown = bot.say(&world, ADMIN, "status INC0010001").await;
    assert!(
        card_text(&shown).contains("INC0010001"),
        "{}",
        card_text(&shown)
    );
    let hidden = bot
        .say(&world, ADMIN, &format!("status {confidential}"))
        .await;
    let text = card_text(&hidden);
    assert!(
        text.contains("not found, or not visible to the integration user"),
        "{text}"
    );
    assert!(!text.contains("executive mailbox"), "{text}");

    let requests = servicenow_requests(&world, from);
    assert_runtime_identity(&requests, &rest_user, AuthMethod::Bearer);
    assert!(
        requests
            .iter()
            .any(|r| table_of(r) == Some("incident") && r.target.contains(&confidential)),
        "status asked ServiceNow live: {requests:?}"
    );
    // A read by sys_id answers as ServiceNow does for a row its ACLs remove: not found for the
    // integration user, found for the admin.
    let hidden_id = world
        .sandbox
        .handle()
        .sn_query("incident", &format!("number={confidential}"))
        .expect("table")
        .remove(0)["sys_id"]
        .as_str()
        .expect("sys_id")
        .to_owned();
    let runtime = bot.app.runtime.client().expect("runtime client");
    assert!(
        runtime
            .get("incident", &hidden_id, &["number"])
            .await
            .expect("answered")
            .is_none()
    );
    let admin = bot.app.upstreams.servicenow.as_ref().expect("admin client");
    assert!(
        admin
            .get("incident", &hidden_id, &["number"])
            .await
            .expect("answered")
            .is_some()
    );
    assert!(
        requests
            .iter()
            .any(|r| r.method == "POST" && table_of(r) == Some("incident")),
        "mirroring created an incident: {requests:?}"
    );
    // The poller never relayed the case the integration user may not read; the admin sees it.
    assert!(
        outbox::latest_event(&bot.app.db, &confidential)
            .await
            .expect("outbox")
            .is_none()
    );
    assert!(
        outbox::latest_event(&bot.app.db, "INC0010001")
            .await
            .expect("outbox")
            .is_some()
    );
    assert!(bot.app.runtime.last_failure().is_none());
}

#[tokio::test]
async fn after_basic_setup_runtime_calls_use_the_integration_users_password() {
    let world = World::start().await;
    let bot = world.bot_with(BOT_EXTRA).await;
    complete_setup(&bot, &world, true).await;
    assert_eq!(
        bot.app.runtime.mode(),
        RuntimeMode::IntegrationUser {
            auth_type: m365bot::integration::AuthType::Basic,
            user_name: "m365_integration".to_owned()
        }
    );
    let confidential = add_confidential_case(&world);
    let from = world
        .sandbox
        .handle()
        .request_log(Emulator::ServiceNow)
        .len();
    let polled = sources::poll_servicenow_once(&bot.app).await.expect("poll");
    assert!(polled.recorded >= 1, "{polled:?}");
    let replica = health_replica(&world).await;
    let mirrored = sources::poll_service_health_once(&replica.app)
        .await
        .expect("health poll");
    assert!(mirrored.mirrored_created >= 1, "{mirrored:?}");
    let shown = bot.say(&world, ADMIN, "status INC0010001").await;
    assert!(card_text(&shown).contains("INC0010001"));
    let hidden = bot
        .say(&world, ADMIN, &format!("status {confidential}"))
        .await;
    assert!(
        card_text(&hidden).contains("not visible to the integration user m365_integration"),
        "{}",
        card_text(&hidden)
    );
    let requests = servicenow_requests(&world, from);
    assert_runtime_identity(&requests, "m365_integration", AuthMethod::Basic);
}

fn token_requests(world: &World, from: usize) -> usize {
    world
        .sandbox
        .handle()
        .request_log(Emulator::Entra)
        .iter()
        .skip(from)
        .filter(|r| r.method == "POST" && r.target.contains("/oauth2/token"))
        .count()
}

#[tokio::test]
async fn concurrent_calls_share_one_token_request() {
    let world = World::start().await;
    let bot = world.bot_with(BOT_EXTRA).await;
    complete_setup(&bot, &world, false).await;
    bot.app.runtime.forget_token().await;
    let from = world.sandbox.handle().request_log(Emulator::Entra).len();
    let client = bot.app.runtime.client().expect("runtime client");
    let calls = (0..16).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.query("incident", "", &["sys_id"], Some(1)).await })
    });
    for call in calls {
        call.await
            .expect("task")
            .expect("read as the integration user");
    }
    assert_eq!(token_requests(&world, from), 1, "one token for 16 calls");
    // Cached: later calls request none, also after a reload that changes nothing (as the
    // periodic reload of every instance does).
    client
        .query("incident", "", &["sys_id"], Some(1))
        .await
        .expect("read");
    m365bot::integration::runtime::reload(&bot.app).await;
    bot.app
        .runtime
        .client()
        .expect("runtime client")
        .query("incident", "", &["sys_id"], Some(1))
        .await
        .expect("read");
    assert_eq!(token_requests(&world, from), 1);
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_the_failure_names_the_step() {
    let world = World::start().await;
    let bot = world.bot_with(BOT_EXTRA).await;
    complete_setup(&bot, &world, false).await;
    let handle = world.sandbox.handle();
    let client = bot.app.runtime.client().expect("runtime client");
    client
        .query("incident", "", &["sys_id"], Some(1))
        .await
        .expect("token cached");
    // ServiceNow stops mapping the token: the OIDC entity is made inactive.
    let entity = handle
        .sn_query("oauth_oidc_entity", "nameLIKEinbound_api")
        .expect("table")
        .remove(0);
    let entity_id = entity["sys_id"].as_str().expect("sys_id").to_owned();
    handle
        .sn_update("oauth_oidc_entity", &entity_id, json!({"active": "false"}))
        .expect("deactivate");
    let mut changes = bot.app.runtime.subscribe();
    changes.borrow_and_update();
    let entra_from = handle.request_log(Emulator::Entra).len();
    let sn_from = handle.request_log(Emulator::ServiceNow).len();
    let err = client
        .query("incident", "", &["sys_id"], Some(1))
        .await
        .expect_err("refused");
    assert_eq!(err.status(), Some(401), "{err}");
    assert_eq!(token_requests(&world, entra_from), 1, "renewed once");
    assert_eq!(
        servicenow_requests(&world, sn_from).len(),
        2,
        "retried once"
    );
    let failure = bot.app.runtime.last_failure().expect("failure recorded");
    assert_eq!(failure.status, Some(401));
    assert!(failure.step.contains("OIDC"), "{failure:?}");
    assert!(changes.has_changed().expect("open"), "signalled");
    handle
        .sn_update("oauth_oidc_entity", &entity_id, json!({"active": "true"}))
        .expect("reactivate");
    changes.borrow_and_update();
    client
        .query("incident", "", &["sys_id"], Some(1))
        .await
        .expect("accepted again");
    assert!(bot.app.runtime.last_failure().is_none());
    assert!(changes.has_changed().expect("open"), "recovery signalled");
    // A locked-out integration user is refused as ServiceNow refuses it: 401, its error body.
    let RuntimeMode::IntegrationUser { user_name, .. } = bot.app.runtime.mode() else {
        panic!("not the integration user");
    };
    let user = handle
        .sn_query("sys_user", &format!("user_name={user_name}"))
        .expect("table")
        .remove(0);
    let user_id = user["sys_id"].as_str().expect("sys_id").to_owned();
    handle
        .sn_update("sys_user", &user_id, json!({"locked_out": "true"}))
        .expect("lock");
    let err = client
        .query("incident", "", &["sys_id"], Some(1))
        .await
        .expect_err("locked out");
    assert!(err.to_string().contains("User Not Authenticated"), "{err}");
    handle
        .sn_update("sys_user", &user_id, json!({"locked_out": "false"}))
        .expect("unlock");
    client
        .query("incident", "", &["sys_id"], Some(1))
        .await
        .expect("accepted again");
}

#[tokio::test]
async fn a_broken_rest_user_secret_is_reported_and_recovers_after_the_fix() {
    let world = World::start().await;
    let bot = world.bot_with(BOT_EXTRA).await;
    complete_setup(&bot, &world, false).await;
    let spec = m365bot::setup::flow::stored_integration(&bot.app)
        .await
        .expect("stored")
        .expect("integration");
    use secrecy::ExposeSecret;
    let rest_user = spec.rest_user_app.expect("REST-user app");
    let handle = world.sandbox.handle();
    handle
        .rotate_secret(&rest_user.client_id)
        .expect("secret replaced");
    bot.app.runtime.forget_token().await;
    let mut changes = bot.app.runtime.subscribe();
    changes.borrow_and_update();

    let err = sources::poll_servicenow_once(&bot.app)
        .await
        .expect_err("no token");
    assert!(err.to_string().contains("7000215"), "{err}");
    let failure = bot.app.runtime.last_failure().expect("failure");
    assert_eq!(failure.step, "REST-user secret");
    assert_eq!(failure.status, None);
    assert!(failure.fix.contains("new client secret"), "{failure:?}");
    assert!(changes.has_changed().expect("open"));
    changes.borrow_and_update();
    // The same failure again is not a new one.
    sources::poll_servicenow_once(&bot.app)
        .await
        .expect_err("still no token");
    assert!(!changes.has_changed().expect("open"), "signalled once");
    let metrics = bot.app.metrics.render();
    assert!(
        metrics.contains("m365bot_runtime_auth_failures_total 2"),
        "{metrics}"
    );
    let readiness: Value = reqwest::get(format!("{}/readyz", bot.base_url))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    let shown = &readiness["servicenow_identity"]["last_failure"];
    assert_eq!(shown["step"], "REST-user secret", "{readiness}");
    assert!(
        !readiness
            .to_string()
            .contains(rest_user.client_secret.expose_secret()),
        "no secret in readiness"
    );

    // The fix: the stored secret is valid again.
    assert!(handle.add_secret(
        &rest_user.client_id,
        rest_user.client_secret.expose_secret()
    ));
    sources::poll_servicenow_once(&bot.app)
        .await
        .expect("works again");
    assert!(bot.app.runtime.last_failure().is_none());
    assert!(changes.has_changed().expect("open"), "recovery signalled");
}

// ---- pushes from ServiceNow with the outbound app's token ----

/// Runs the printed Business Rule in node against stand-ins of ServiceNow's scripting objects
/// (off the runtime's thread: the emulators and the bot answer meanwhile); returns the report.
async fn run_business_rule(dir: &std::path::Path, script: &str, world: &Value) -> Value {
    let script_path = dir.join("business-rule.js");
    let world_path = dir.join("world.json");
    std::fs::write(&script_path, script).expect("script");
    std::fs::write(&world_path, world.to_string()).expect("world");
    let harness = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join("node")
        .join("servicenow-script.js");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&harness)
            .arg(&script_path)
            .arg(&world_path)
            .output()
    })
    .await
    .expect("task")
    .expect("node runs (it is needed for this test)");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("one JSON report")
}

#[tokio::test]
async fn the_printed_business_rule_pushes_with_the_outbound_apps_token() {
    let world = World::start().await;
    let bot = world.bot_with(BOT_EXTRA).await;
    complete_setup(&bot, &world, false).await;
    let spec = m365bot::setup::flow::stored_integration(&bot.app)
        .await
        .expect("stored")
        .expect("integration");
    assert!(
        bot.app
            .settings
            .notifications
            .sources
            .push
            .bearer_allowed_app_ids
            .is_empty(),
        "no allow-list configured"
    );

    // `m365bot servicenow-script` with the bot's configuration and database.
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("m365bot.toml");
    let toml = support::merge_toml(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{}/\"\n[database]\nurl = \"sqlite://{}\"\n",
            bot.base_url,
            world.db_path().display()
        ),
        &world.toml,
    );
    std::fs::write(&config, toml).expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_m365bot"))
        .arg("--config")
        .arg(&config)
        .arg("servicenow-script")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let script = String::from_utf8(output.stdout).expect("utf-8");
    let provider = spec.outbound_provider_name();
    for needle in [
        "sn_auth.GlideOAuthClient",
        "requestTokenByRequest",
        "'Bearer '",
        provider.as_str(),
        spec.outbound_app.client_id.as_str(),
    ] {
        assert!(script.contains(needle), "{needle}:\n{script}");
    }
    assert!(!script.contains("<SECRET>"), "{script}");

    // The provider as setup created it in ServiceNow (the emulator masks its secret).
    let handle = world.sandbox.handle();
    let record = handle
        .sn_query(
            "oauth_entity",
            &format!("client_id={}", spec.outbound_app.client_id),
        )
        .expect("table")
        .remove(0);
    assert_eq!(record["name"], provider.as_str());
    let token_url = record["token_url"].as_str().expect("token url").to_owned();
    // The case as the Business Rule sees it.
    let admin = bot.app.upstreams.servicenow.as_ref().expect("admin");
    let settings = &bot.app.settings.notifications.sources.servicenow;
    let case = admin
        .list(
            "incident",
            &m365bot::upstream::servicenow::ListOptions {
                query: "number=INC0010001".to_owned(),
                fields: settings.fields(),
                limit: Some(1),
                page_size: Some(1),
                display_value: m365bot::upstream::servicenow::DisplayValue::All,
                include_reference_links: false,
            },
        )
        .await
        .expect("case")
        .remove(0);
    use secrecy::ExposeSecret;
    let world_with = |client_id: &str, client_secret: &str| {
        json!({
            "providers": {provider.as_str(): {
                "client_id": client_id,
                "client_secret": client_secret,
                "token_url": token_url,
            }},
            "table": "incident",
            "fields": case.fields(),
            "changed": ["state", "comments"],
            "journal": {"comments": "Microsoft asked for a trace"},
            "previous": {"state": "New"},
        })
    };
    let accepted = run_business_rule(
        dir.path(),
        &script,
        &world_with(
            &spec.outbound_app.client_id,
            spec.outbound_app.client_secret.expose_secret(),
        ),
    )
    .await;
    assert_eq!(accepted["token_requests"], 1, "{accepted}");
    assert_eq!(accepted["errors"], json!([]), "{accepted}");
    assert_eq!(accepted["pushes"][0]["status"], 200, "{accepted}");
    let event = outbox::latest_event(&bot.app.db, "INC0010001")
        .await
        .expect("outbox")
        .expect("the push was recorded");
    assert_eq!(
        event.latest_note.as_deref(),
        Some("Microsoft asked for a trace")
    );
    assert_eq!(event.previous_state.as_deref(), Some("New"));

    // A token of another app of the tenant (the REST-user app) is refused.
    let rest_user = spec.rest_user_app.as_ref().expect("REST-user app");
    let refused = run_business_rule(
        dir.path(),
        &script,
        &world_with(
            &rest_user.client_id,
            rest_user.client_secret.expose_secret(),
        ),
    )
    .await;
    assert_eq!(refused["token_requests"], 1, "{refused}");
    assert_eq!(refused["pushes"][0]["status"], 401, "{refused}");
    assert!(
        refused["pushes"][0]["body"]
            .as_str()
            .is_some_and(|body| body.contains("appid") || body.contains("audience")),
        "{refused}"
    );
    // A wrong provider secret: no token, nothing pushed, the rule logs why.
    let no_token = run_business_rule(
        dir.path(),
        &script,
        &world_with(&spec.outbound_app.client_id, "not-the-secret"),
    )
    .await;
    assert_eq!(no_token["pushes"], json!([]), "{no_token}");
    assert!(
        no_token["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("gave no token") && e.contains("7000215")),
        "{no_token}"
    );
}

#[tokio::test]
async fn without_an_integration_the_fallback_is_a_choice_and_says_so() {
    let world = World::start().await;
    let strict = world
        .bot_with(&format!(
            "{BOT_EXTRA}[servicenow]\nruntime_admin_fallback = false\n"
        ))
        .await;
    assert_eq!(strict.app.runtime.mode(), RuntimeMode::Unavailable);
    let err = sources::poll_servicenow_once(&strict.app)
        .await
        .expect_err("no runtime identity");
    assert!(
        err.to_string().contains("no integration is set up yet"),
        "{err}"
    );
    let from = world
        .sandbox
        .handle()
        .request_log(Emulator::ServiceNow)
        .len();
    assert!(
        servicenow_requests(&world, from).is_empty(),
        "nothing was asked"
    );
    // With the default, the bot's own account reads cases until setup completes, and says so.
    let lenient = world.bot_with(BOT_EXTRA).await;
    assert_eq!(lenient.app.runtime.mode(), RuntimeMode::AdminFallback);
    let readiness: Value = reqwest::get(format!("{}/readyz", lenient.base_url))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(
        readiness["servicenow_identity"]["mode"], "admin_fallback",
        "{readiness}"
    );
    assert!(
        readiness["servicenow_identity"]["note"]
            .as_str()
            .is_some_and(|note| note.contains("bot's own ServiceNow account")),
        "{readiness}"
    );
    sources::poll_servicenow_once(&lenient.app)
        .await
        .expect("polled with the admin account");
}
