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
    // Cached: later calls request none.
    client
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
    assert!(
        failure.fix.contains("rotate-secret rest-user"),
        "{failure:?}"
    );
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

    // The fix: the stored secret is valid again.
    use secrecy::ExposeSecret;
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
