//! The setup wizard end to end over HTTP: activities and invokes posted to a running bot,
//! the emulators behind it, the fake connector for proactive messages.

mod support;

use serde_json::{Value, json};
use support::setup::{ADMIN, Bot, JANE, World, card_text, create, heading};

/// Walks from `setup` to the tenant step (AAD or Basic).
async fn to_tenant(bot: &Bot, world: &World, basic: bool) -> Value {
    let consent = bot.say(world, ADMIN, "setup").await;
    assert_eq!(
        heading(&consent),
        "What setup will do",
        "{}",
        card_text(&consent)
    );
    let env = bot.press(world, ADMIN, &consent, "Agree", json!({})).await;
    assert_eq!(heading(&env), "Environment and authentication type");
    let tenant = bot
        .press(
            world,
            ADMIN,
            &env,
            "Start setup",
            json!({"test_environment": "true", "auth": if basic { "basic" } else { "aad" }}),
        )
        .await;
    assert_eq!(heading(&tenant), "Microsoft 365 tenant");
    tenant
}

async fn expect_step(card: &Value, title: &str) {
    assert_eq!(heading(card), title, "{}", card_text(card));
}

/// AAD branch with every piece created by the bot; returns the completion card.
async fn aad_create_all(bot: &Bot, world: &World) -> Value {
    let tenant = to_tenant(bot, world, false).await;
    let card = bot
        .press(
            world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    expect_step(&card, "Outbound Entra app").await;
    let card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "ServiceNow outbound OAuth provider").await;
    let card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "Inbound REST API Entra app").await;
    let card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "ServiceNow OIDC provider configuration").await;
    let card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "ServiceNow OIDC entity").await;
    let card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "REST-user Entra app").await;
    let card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "Integration user").await;
    let card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "Cross-scope access to oauth_entity").await;
    let card = bot
        .press(world, ADMIN, &card, "Check again", json!({}))
        .await;
    assert!(
        card_text(&card).contains("Setup complete"),
        "{}",
        card_text(&card)
    );
    card
}

fn apps_named(world: &World, suffix: &str) -> usize {
    world
        .sandbox
        .handle()
        .apps()
        .iter()
        .filter(|a| a.display_name == format!("Microsoft 365 support {suffix}"))
        .count()
}

#[tokio::test]
async fn aad_branch_create_for_me_then_run_tests_all_green() {
    let world = World::start().await;
    let bot = world.bot().await;
    let complete = aad_create_all(&bot, &world).await;
    let text = card_text(&complete);
    for label in [
        "Application ID to issue Auth Token",
        "Repository ID",
        "Endpoint",
        "Authentication type",
        "Client ID",
        "Client secret",
        "Rest username",
        "Rest user password",
        "Organization profiles",
        "AAD Auth",
    ] {
        assert!(text.contains(label), "{label} missing: {text}");
    }
    assert_eq!(apps_named(&world, "outbound"), 1);
    assert_eq!(apps_named(&world, "inbound REST API"), 1);
    assert_eq!(apps_named(&world, "REST user"), 1);
    let results = bot
        .press(&world, ADMIN, &complete, "Run tests", json!({}))
        .await;
    let results_text = card_text(&results);
    assert!(results_text.contains("0 failed"), "{results_text}");
    assert!(!results_text.contains('❌'), "{results_text}");
    assert!(
        results_text.contains("Microsoft's call path: REST-user token accepted by ServiceNow"),
        "Run tests proves the inbound chain: {results_text}"
    );
    // Typing setup again shows the completed setup without secrets; doctor uses it.
    let again = bot.say(&world, ADMIN, "setup").await;
    assert!(
        card_text(&again).contains("New Reveal link")
            && card_text(&again).contains("(on the Reveal page, not in chat)"),
        "{}",
        card_text(&again)
    );
    let doctor = bot.say(&world, ADMIN, "doctor").await;
    assert!(
        card_text(&doctor).contains("0 failed"),
        "{}",
        card_text(&doctor)
    );
    let status = bot.say(&world, ADMIN, "setup status").await;
    let status_text = card_text(&status);
    assert!(status_text.contains("completed"), "{status_text}");
    assert!(status_text.contains("0 drifted"), "{status_text}");
    assert!(status_text.contains("complete · ok"), "{status_text}");
    // `m365bot doctor` on the command line verifies the stored integration too.
    let config = world.dir.path().join("bot.toml");
    let toml = support::merge_toml(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n",
            world.db_path().display()
        ),
        &world.toml,
    );
    std::fs::write(&config, toml).expect("config");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_m365bot"))
            .args(["doctor", "--config"])
            .arg(&config)
            .env_remove("M365BOT_CONFIG")
            .output()
    })
    .await
    .expect("joins")
    .expect("m365bot doctor runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
}

#[tokio::test]
async fn a_second_setup_reuses_everything_and_creates_nothing_twice() {
    let world = World::start().await;
    let bot = world.bot().await;
    let complete = aad_create_all(&bot, &world).await;
    let entities_before = world
        .sandbox
        .handle()
        .sn_records("oauth_entity")
        .map(|r| r.len());
    let consent = bot
        .press(&world, ADMIN, &complete, "Start a new setup", json!({}))
        .await;
    expect_step(&consent, "What setup will do").await;
    let env = bot.press(&world, ADMIN, &consent, "Agree", json!({})).await;
    let tenant = bot
        .press(&world, ADMIN, &env, "Start setup", json!({"auth": "aad"}))
        .await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert!(
        card_text(&card).contains("reused app Microsoft 365 support outbound"),
        "{}",
        card_text(&card)
    );
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert!(
        card_text(&card).contains("reused the outbound OAuth provider (it matches)"),
        "{}",
        card_text(&card)
    );
    assert_eq!(apps_named(&world, "outbound"), 1);
    assert_eq!(
        world
            .sandbox
            .handle()
            .sn_records("oauth_entity")
            .map(|r| r.len()),
        entities_before
    );
}

#[tokio::test]
async fn basic_branch_create_for_me() {
    let world = World::start().await;
    let bot = world.bot().await;
    let tenant = to_tenant(&bot, &world, true).await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "ServiceNow outbound OAuth provider").await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "Integration user").await;
    assert!(
        card_text(&card).contains("step 6 of 8"),
        "{}",
        card_text(&card)
    );
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "create", "user_name": "m365_integration"}),
        )
        .await;
    expect_step(&card, "Cross-scope access to oauth_entity").await;
    let complete = bot
        .press(&world, ADMIN, &card, "Check again", json!({}))
        .await;
    let text = card_text(&complete);
    assert!(
        text.contains("Basic Auth") && text.contains("m365_integration"),
        "{text}"
    );
    let users = world
        .sandbox
        .handle()
        .sn_query("sys_user", "user_name=m365_integration")
        .expect("table");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["web_service_access_only"], "true");
    let results = bot
        .press(&world, ADMIN, &complete, "Run tests", json!({}))
        .await;
    assert!(
        card_text(&results).contains("0 failed"),
        "{}",
        card_text(&results)
    );
    // Drift: the user loses its role after setup; status says so, doctor gives the fix.
    assert!(
        world
            .sandbox
            .handle()
            .sn_remove_role("m365_integration", "incident_manager")
    );
    let status = bot.say(&world, ADMIN, "setup status").await;
    let text = card_text(&status);
    assert!(
        text.contains("1 drifted") && text.contains("incident_manager is missing"),
        "{text}"
    );
    let doctor = bot.say(&world, ADMIN, "doctor").await;
    assert!(
        card_text(&doctor).contains("1 failed"),
        "{}",
        card_text(&doctor)
    );
}

#[tokio::test]
async fn aad_branch_with_existing_apps_and_an_existing_record() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let instance = handle.urls().servicenow.clone();
    let redirect = format!("{instance}/oauth_redirect.do");
    let (outbound_id, outbound_secret) =
        handle.create_app("Contoso outbound (by hand)", &[redirect.as_str()]);
    let (inbound_id, inbound_secret) = handle.create_app("Contoso inbound (by hand)", &[]);
    let (rest_id, rest_secret) = handle.create_app("Contoso REST user (by hand)", &[]);
    let bot = world.bot().await;
    let tenant = to_tenant(&bot, &world, false).await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": outbound_id, "client_secret": outbound_secret}),
        )
        .await;
    expect_step(&card, "ServiceNow outbound OAuth provider").await;
    // An OAuth provider made by hand, then picked from the list the bot reads.
    let sys_id = handle
        .sn_insert("oauth_entity", json!({"name": "Hand-made provider", "type": "oauth_provider", "client_id": outbound_id, "client_secret": outbound_secret,
            "default_grant_type": "client_credentials", "token_url": format!("{}/contoso.onmicrosoft.com/oauth2/token", handle.urls().entra), "redirect_url": redirect, "active": "true"}))
        .expect("insert");
    let refreshed = bot.press(&world, ADMIN, &card, "Back", json!({})).await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &refreshed,
            "Continue",
            json!({"mode": "existing", "client_id": outbound_id, "client_secret": outbound_secret}),
        )
        .await;
    assert!(
        card_text(&card).contains("Hand-made provider"),
        "the pick list shows it: {}",
        card_text(&card)
    );
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "record": sys_id}),
        )
        .await;
    expect_step(&card, "Inbound REST API Entra app").await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": inbound_id, "client_secret": inbound_secret}),
        )
        .await;
    expect_step(&card, "ServiceNow OIDC provider configuration").await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    expect_step(&card, "REST-user Entra app").await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": rest_id, "client_secret": rest_secret}),
        )
        .await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    let complete = bot
        .press(&world, ADMIN, &card, "Check again", json!({}))
        .await;
    let text = card_text(&complete);
    assert!(
        text.contains(&outbound_id) && text.contains(&inbound_id) && text.contains(&rest_id),
        "{text}"
    );
    assert!(
        !complete.to_string().contains(&inbound_secret)
            && !complete.to_string().contains(&rest_secret),
        "no secret in the completion card: {text}"
    );
    assert!(text.contains("Reveal the secrets (once)"), "{text}");
    // What is left for a person names what the wizard recorded, the picked record included.
    assert!(text.contains("Microsoft 365 support > Setup"), "{text}");
    assert!(text.contains("Hand-made provider"), "{text}");
    assert!(text.contains(&rest_id), "{text}");
    assert_eq!(apps_named(&world, "outbound"), 0, "nothing created");
    let results = bot
        .press(&world, ADMIN, &complete, "Run tests", json!({}))
        .await;
    assert!(
        card_text(&results).contains("0 failed"),
        "{}",
        card_text(&results)
    );
    assert!(!card_text(&results).contains(&inbound_secret));
}

#[tokio::test]
async fn non_admins_get_a_card_naming_the_role() {
    let world = World::start().await;
    let bot = world.bot().await;
    let card = bot.say(&world, JANE, "setup").await;
    let text = card_text(&card);
    assert!(text.contains("**admin**"), "{text}");
    let doctor = bot.say(&world, JANE, "doctor").await;
    assert!(card_text(&doctor).contains("**admin**"));
}

#[tokio::test]
async fn started_in_a_channel_it_continues_in_a_personal_chat() {
    let world = World::start().await;
    let bot = world.bot().await;
    assert_eq!(bot.say_in_channel(&world, ADMIN, "setup").await, 200);
    let requests = world
        .connector
        .wait_for_requests(3, std::time::Duration::from_secs(10))
        .await;
    let create = requests
        .iter()
        .find(|r| r.path.ends_with("v3/conversations"))
        .expect("a conversation was created");
    assert_eq!(create.body["members"][0]["id"], ADMIN);
    assert_eq!(
        create.body["channelData"]["tenant"]["id"],
        support::TEST_TENANT_ID
    );
    let in_personal = requests
        .iter()
        .find(|r| {
            r.path.contains("/activities")
                && r.body["attachments"][0]["content"]["body"]
                    .to_string()
                    .contains("What setup will do")
        })
        .expect("the first step went to the new chat");
    assert_ne!(
        in_personal.conversation_id.as_deref(),
        Some("19:channel@thread.tacv2")
    );
    let notice = requests
        .iter()
        .find(|r| r.body.to_string().contains("continues in our 1:1 chat"))
        .expect("the channel was told");
    assert!(
        notice
            .conversation_id
            .as_deref()
            .is_some_and(|c| c.starts_with("19:channel"))
    );
}

#[tokio::test]
async fn the_repository_id_is_asked_for_when_the_instance_address_does_not_tell_it() {
    let world = World::start().await;
    let bot = world.bot().await;
    // The sandbox instance is http://127.0.0.1:<port>: no instance name in it.
    let complete = aad_create_all(&bot, &world).await;
    let text = card_text(&complete);
    assert!(!text.contains("| 127 |"), "{text}");
    assert!(text.contains("Repository ID | (enter it below)"), "{text}");
    assert!(text.contains("not a *.service-now.com name"), "{text}");
    let refused = bot
        .press(
            &world,
            ADMIN,
            &complete,
            "Save Repository ID",
            json!({"repository_id": "dev 1/2"}),
        )
        .await;
    assert!(
        card_text(&refused).contains("Enter the instance name"),
        "{}",
        card_text(&refused)
    );
    let saved = bot
        .press(
            &world,
            ADMIN,
            &complete,
            "Save Repository ID",
            json!({"repository_id": "dev12345"}),
        )
        .await;
    let saved_text = card_text(&saved);
    assert!(
        saved_text.contains("Repository ID | dev12345"),
        "{saved_text}"
    );
    assert!(
        !saved_text.contains("Save Repository ID"),
        "asked once: {saved_text}"
    );
}

#[tokio::test]
async fn setup_status_shows_the_live_integration_and_a_new_setup_by_title() {
    let world = World::start().await;
    let bot = world.bot().await;
    let complete = aad_create_all(&bot, &world).await;
    let status = bot.say(&world, ADMIN, "setup status").await;
    let text = card_text(&status);
    // Titles as Run tests shows them, never internal ids.
    assert!(text.contains("Outbound app gets a token"), "{text}");
    for id in [
        "inbound_app.registration",
        "outbound_app.token",
        "servicenow.oidc_entity",
    ] {
        assert!(!text.contains(id), "{id} shown: {text}");
    }
    // The audit trail is collapsed behind a toggle and holds the last 5 entries at most.
    let body = status["body"].as_array().expect("body");
    let trail = body
        .iter()
        .find(|item| item["id"] == "lines")
        .expect("audit container");
    assert_eq!(trail["isVisible"], false);
    let entries = trail["items"].as_array().map_or(0, Vec::len);
    assert!((1..=5).contains(&entries), "{entries} audit lines");
    assert!(body.iter().any(|item| item["type"] == "ActionSet"
        && item["actions"][0]["type"] == "Action.ToggleVisibility"
        && item["actions"][0]["title"] == format!("Audit trail (last {entries})")));

    // A new setup in progress does not hide the live integration.
    let new = bot
        .press(&world, ADMIN, &complete, "Start a new setup", json!({}))
        .await;
    assert_eq!(heading(&new), "What setup will do");
    let both = bot.say(&world, ADMIN, "setup status").await;
    let text = card_text(&both);
    assert!(text.contains("Live integration: 1"), "{text}");
    assert!(text.contains("0 drifted since"), "{text}");
    assert!(
        text.contains("A new setup is in progress: step 1 of 12"),
        "{text}"
    );
    assert!(text.contains("New setup in progress"), "{text}");
    assert!(text.contains("Outbound app gets a token"), "{text}");
}

#[tokio::test]
async fn a_refused_hand_over_keeps_the_address_that_was_typed() {
    let world = World::start().await;
    let bot = world.bot().await;
    let complete = aad_create_all(&bot, &world).await;
    for (typed, error) in [
        (
            "not an address",
            "Enter the Microsoft 365 admin's e-mail address.",
        ),
        (
            "nobody@contoso.com",
            "I have no chat with nobody@contoso.com yet.",
        ),
    ] {
        let refused = bot
            .press(
                &world,
                ADMIN,
                &complete,
                "Hand over",
                json!({"handover_email": typed}),
            )
            .await;
        let text = card_text(&refused);
        assert!(text.contains(error), "{typed}: {text}");
        let input = refused["body"]
            .as_array()
            .and_then(|body| body.iter().find(|item| item["id"] == "handover_email"))
            .expect("the e-mail input");
        assert_eq!(input["value"], typed, "{typed}");
    }
}
