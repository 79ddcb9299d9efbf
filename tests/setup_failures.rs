//! The wizard explains each misconfiguration on the step that finds it, with the field at
//! fault and the fix; and it survives throttling, restarts and concurrent clicks.

mod support;

use m365bot::sandbox::{Emulator, FaultConfig, SandboxOptions};
use serde_json::{Value, json};
use support::setup::{ADMIN, ADMIN_TWO, Bot, JANE, World, card_text, create, heading};

async fn to_step(bot: &Bot, world: &World, basic: bool, domain: &str) -> Value {
    let consent = bot.say(world, ADMIN, "setup").await;
    let env = bot.press(world, ADMIN, &consent, "Agree", json!({})).await;
    let tenant = bot
        .press(
            world,
            ADMIN,
            &env,
            "Start setup",
            json!({"auth": if basic { "basic" } else { "aad" }}),
        )
        .await;
    bot.press(
        world,
        ADMIN,
        &tenant,
        "Verify and continue",
        json!({"domain": domain}),
    )
    .await
}

/// The error shown beside input `id` (the TextBlock right after it), if any.
fn field_error(card: &Value, id: &str) -> Option<String> {
    let body = card["body"].as_array()?;
    let index = body.iter().position(|item| item["id"] == id)?;
    let next = body.get(index + 1)?;
    (next["color"] == "Attention").then(|| next["text"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn invalid_input_comes_back_with_the_error_beside_the_field_and_nothing_called() {
    let world = World::start().await;
    let bot = world.bot().await;
    let consent = bot.say(&world, ADMIN, "setup").await;
    let env = bot.press(&world, ADMIN, &consent, "Agree", json!({})).await;
    let tenant = bot
        .press(&world, ADMIN, &env, "Start setup", json!({"auth": "aad"}))
        .await;
    let entra_calls = world.sandbox.handle().request_count(Emulator::Entra);
    let again = bot
        .press(
            &world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "not a domain"}),
        )
        .await;
    assert_eq!(heading(&again), "Microsoft 365 tenant");
    assert!(
        field_error(&again, "domain").is_some_and(|e| e.contains("not a domain")),
        "{}",
        card_text(&again)
    );
    assert_eq!(
        world.sandbox.handle().request_count(Emulator::Entra),
        entra_calls,
        "nothing was called"
    );
    let outbound = bot
        .press(
            &world,
            ADMIN,
            &again,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    let bad = bot
        .press(
            &world,
            ADMIN,
            &outbound,
            "Continue",
            json!({"mode": "existing", "client_id": "nope", "client_secret": "x"}),
        )
        .await;
    let entered = bad["body"]
        .as_array()
        .and_then(|b| b.iter().find(|i| i["id"] == "client_id"))
        .cloned()
        .expect("client id input");
    assert_eq!(entered["value"], "nope", "what was typed stays");
    assert!(
        field_error(&bad, "client_id").is_some_and(|e| e.contains("GUID")),
        "{}",
        card_text(&bad)
    );
    // Password inputs are never echoed back.
    let secret_input = bad["body"]
        .as_array()
        .and_then(|b| b.iter().find(|i| i["id"] == "client_secret"))
        .cloned()
        .expect("secret input");
    assert_eq!(secret_input["style"], "Password");
    assert!(secret_input.get("value").is_none());
}

#[tokio::test]
async fn unknown_tenant_is_explained_beside_the_domain() {
    let world = World::start().await;
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "nosuchtenant.onmicrosoft.com").await;
    assert_eq!(heading(&card), "Microsoft 365 tenant");
    let error = field_error(&card, "domain").expect("error beside the domain");
    assert!(error.starts_with("The tenant was not found"), "{error}");
    assert!(!error.contains("AADSTS"), "plain words only: {error}");
    let details = hidden_details(&card, "domain").expect("collapsed details");
    assert!(details.contains("AADSTS90002"), "{details}");
    assert!(details.contains("trace id "), "{details}");
    assert_eq!(entered(&card, "domain"), "nosuchtenant.onmicrosoft.com");
}

/// The value of input `id` on a card.
fn entered(card: &Value, id: &str) -> Value {
    card["body"]
        .as_array()
        .and_then(|b| b.iter().find(|i| i["id"] == id))
        .map(|i| i["value"].clone())
        .unwrap_or(Value::Null)
}

/// The collapsed *Details* of the error beside input `id`: a hidden TextBlock that a
/// `Details` Action.ToggleVisibility shows.
fn hidden_details(card: &Value, id: &str) -> Option<String> {
    let body = card["body"].as_array()?;
    let target = format!("{id}_details");
    let toggle = body.iter().any(|item| {
        item["type"] == "ActionSet"
            && item["actions"][0]["type"] == "Action.ToggleVisibility"
            && item["actions"][0]["title"] == "Details"
            && item["actions"][0]["targetElements"][0] == target.as_str()
    });
    let block = body.iter().find(|item| item["id"] == target.as_str())?;
    (toggle && block["isVisible"] == false).then(|| block["text"].as_str().unwrap_or("").to_owned())
}

/// The top box of a step card with an error (the attention container after the text).
fn top_box(card: &Value) -> String {
    card["body"]
        .as_array()
        .and_then(|b| {
            b.iter()
                .skip(1)
                .find(|i| i["type"] == "Container" && i["style"] == "attention")
        })
        .map(card_text)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_wrong_secret_is_refused_live_with_aadsts7000215() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let (client_id, _secret) = handle.create_app("Outbound by hand", &[]);
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": client_id, "client_secret": "not-the-secret"}),
        )
        .await;
    assert_eq!(heading(&card), "Outbound Entra app");
    let error = field_error(&card, "client_secret").expect("error beside the secret");
    assert!(
        error.starts_with("The client secret is wrong: copy the secret's Value"),
        "{error}"
    );
    assert!(!error.contains("AADSTS"), "plain words only: {error}");
    let details = hidden_details(&card, "client_secret").expect("collapsed details");
    assert!(details.contains("AADSTS7000215"), "{details}");
    assert!(details.contains("trace id "), "{details}");
    // The fix is said once: under the field; the top box only counts.
    assert_eq!(top_box(&card), "1 field needs attention");
    assert_eq!(
        card_text(&card).matches("Secret ID").count(),
        1,
        "{}",
        card_text(&card)
    );
    assert!(!card_text(&card).contains("not-the-secret"));
}

#[tokio::test]
async fn a_failed_live_check_keeps_the_existing_app_and_retries_it_not_create() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let redirect = format!("{}/oauth_redirect.do", handle.urls().servicenow);
    let (client_id, secret) = handle.create_app("Outbound by hand", &[redirect.as_str()]);
    let (no_redirect_id, no_redirect_secret) = handle.create_app("Outbound without redirect", &[]);
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    let apps_before = handle.apps().len();
    // "Redirect URI missing" keeps the choice and the client id too.
    let missing = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": no_redirect_id, "client_secret": no_redirect_secret}),
        )
        .await;
    assert!(
        field_error(&missing, "client_id").is_some_and(|e| e.contains("redirect URI")),
        "{}",
        card_text(&missing)
    );
    assert_eq!(entered(&missing, "mode"), "existing");
    assert_eq!(entered(&missing, "client_id"), no_redirect_id.as_str());
    let card = bot
        .press(
            &world,
            ADMIN,
            &missing,
            "Continue",
            json!({"mode": "existing", "client_id": client_id, "client_secret": "not-the-secret"}),
        )
        .await;
    assert_eq!(heading(&card), "Outbound Entra app");
    assert!(
        field_error(&card, "client_secret").is_some(),
        "{}",
        card_text(&card)
    );
    // Every input survives the live-check error, the choice included (never the secret).
    assert_eq!(entered(&card, "mode"), "existing", "{}", card_text(&card));
    assert_eq!(entered(&card, "client_id"), client_id.as_str());
    assert_eq!(entered(&card, "client_secret"), Value::Null);
    // The admin re-types only the secret: the card's own values go back with it.
    let mut resubmit = json!({"client_secret": secret});
    for id in ["mode", "client_id"] {
        resubmit[id] = entered(&card, id);
    }
    let next = bot.press(&world, ADMIN, &card, "Continue", resubmit).await;
    assert_eq!(
        heading(&next),
        "ServiceNow outbound OAuth provider",
        "{}",
        card_text(&next)
    );
    assert_eq!(handle.apps().len(), apps_before, "nothing was created");
    assert!(
        !card_text(&next).contains("added a client secret"),
        "{}",
        card_text(&next)
    );
}

#[tokio::test]
async fn an_app_step_never_guesses_the_mode() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    let graph_calls = handle.request_count(Emulator::Graph);
    for (inputs, expected) in [
        (
            json!({"client_secret": "typed-only-the-secret"}),
            "Choose Create it for me or Use an existing one.",
        ),
        (
            json!({"mode": "create", "client_id": "00000000-0000-0000-0000-000000000001"}),
            "You chose Create it for me but also entered a client ID or secret",
        ),
        (
            json!({"mode": "create", "client_secret": "a-secret"}),
            "You chose Create it for me but also entered a client ID or secret",
        ),
    ] {
        let refused = bot
            .press(&world, ADMIN, &card, "Continue", inputs.clone())
            .await;
        assert_eq!(heading(&refused), "Outbound Entra app", "{inputs}");
        let error = field_error(&refused, "mode").unwrap_or_default();
        assert!(
            error.starts_with(expected),
            "{inputs}: {}",
            card_text(&refused)
        );
    }
    assert_eq!(
        handle.request_count(Emulator::Graph),
        graph_calls,
        "no app was looked up or created"
    );
}

#[tokio::test]
async fn an_inbound_app_issuing_v2_tokens_is_refused_with_the_manifest_fix() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert_eq!(heading(&card), "Inbound REST API Entra app");
    let (inbound_id, inbound_secret) = handle.create_app("Inbound by hand", &[]);
    assert!(handle.set_requested_access_token_version(&inbound_id, Some(2)));
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": inbound_id, "client_secret": inbound_secret}),
        )
        .await;
    assert_eq!(heading(&card), "Inbound REST API Entra app");
    let text = card_text(&card);
    assert!(text.contains("requestedAccessTokenVersion"), "{text}");
}

#[tokio::test]
async fn an_integration_user_without_the_role_is_refused() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    handle
        .sn_insert("sys_user", json!({"user_name": "svc_m365", "first_name": "Svc", "last_name": "M365", "web_service_access_only": "true", "active": "true", "user_password": "Sv3c-pass-1234"}))
        .expect("user");
    let bot = world.bot().await;
    let card = to_step(&bot, &world, true, "contoso.onmicrosoft.com").await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert_eq!(heading(&card), "Integration user");
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "user_name": "svc_m365", "password": "Sv3c-pass-1234"}),
        )
        .await;
    assert_eq!(heading(&card), "Integration user");
    let text = card_text(&card);
    assert!(text.contains("incident_manager is missing"), "{text}");
    assert!(!text.contains("Sv3c-pass-1234"));
}

#[tokio::test]
async fn cross_scope_refusal_is_explained_and_repaired_on_request() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    handle.sn_set_oauth_entity_cross_scope_readable(false);
    let bot = world.bot().await;
    let mut card = to_step(&bot, &world, true, "contoso.onmicrosoft.com").await;
    card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "create", "user_name": "m365_integration"}),
        )
        .await;
    assert_eq!(heading(&card), "Cross-scope access to oauth_entity");
    let checked = bot
        .press(&world, ADMIN, &card, "Check again", json!({}))
        .await;
    let text = card_text(&checked);
    assert_eq!(heading(&checked), "Cross-scope access to oauth_entity");
    assert!(
        text.contains("All application scopes") && text.contains("Can read"),
        "{text}"
    );
    let repaired = bot
        .press(&world, ADMIN, &checked, "Fix it for me", json!({}))
        .await;
    assert!(
        card_text(&repaired).contains("Setup complete"),
        "{}",
        card_text(&repaired)
    );
    let rows = handle
        .sn_query("sys_db_object", "name=oauth_entity")
        .expect("table");
    assert_eq!(rows[0]["read_access"], "true");
}

#[tokio::test]
async fn servicenow_403_on_create_names_the_missing_permission() {
    // The bot's ServiceNow account is jane.doe (no admin); she runs setup with a configured
    // admin role she holds, so the wizard gets as far as the first ServiceNow write.
    let world = World::start_with(
        SandboxOptions::default(),
        Some(("jane.doe", "sandbox-user-password")),
    )
    .await;
    let bot = world
        .bot_with("[servicenow]\nadmin_role = \"x_mioms_m365_assis.insights_user\"\n")
        .await;
    let consent = bot.say(&world, JANE, "setup").await;
    let env = bot.press(&world, JANE, &consent, "Agree", json!({})).await;
    let tenant = bot
        .press(&world, JANE, &env, "Start setup", json!({"auth": "basic"}))
        .await;
    let card = bot
        .press(
            &world,
            JANE,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    let card = bot.press(&world, JANE, &card, "Continue", create()).await;
    assert_eq!(heading(&card), "ServiceNow outbound OAuth provider");
    let card = bot.press(&world, JANE, &card, "Continue", create()).await;
    assert_eq!(heading(&card), "ServiceNow outbound OAuth provider");
    let text = card_text(&card);
    assert!(text.contains("403"), "{text}");
    assert!(
        text.contains("admin role") && text.contains("Use an existing one"),
        "{text}"
    );
}

#[tokio::test]
async fn a_429_storm_leaves_nothing_half_done_and_the_step_succeeds_later() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert_eq!(heading(&card), "ServiceNow outbound OAuth provider");
    handle.set_faults(
        Emulator::ServiceNow,
        FaultConfig {
            throttle_probability: 1.0,
            retry_after_secs: 1,
            path_prefix: Some("/api/now/v2/table/oauth_entity".to_owned()),
            ..FaultConfig::default()
        },
    );
    let throttled = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert_eq!(heading(&throttled), "ServiceNow outbound OAuth provider");
    let text = card_text(&throttled);
    assert!(
        text.contains("429") && text.contains("wait a minute"),
        "{text}"
    );
    let count = |h: &m365bot::sandbox::SandboxHandle| {
        h.sn_query("oauth_entity", "type=oauth_provider^nameLIKEoutbound")
            .map(|r| r.len())
            .unwrap_or(0)
    };
    assert_eq!(count(&handle), 0, "nothing created during the storm");
    handle.set_faults(Emulator::ServiceNow, FaultConfig::none());
    let next = bot
        .press(&world, ADMIN, &throttled, "Continue", create())
        .await;
    assert_eq!(
        heading(&next),
        "Inbound REST API Entra app",
        "{}",
        card_text(&next)
    );
    assert_eq!(count(&handle), 1);
}

#[tokio::test]
async fn a_restart_in_the_middle_resumes_at_the_same_step() {
    let world = World::start().await;
    let card = {
        let bot = world.bot().await;
        let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
        let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
        bot.press(&world, ADMIN, &card, "Continue", create()).await
    };
    assert_eq!(heading(&card), "Inbound REST API Entra app");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let bot = world.bot().await;
    let resumed = bot.say(&world, ADMIN, "setup").await;
    assert_eq!(heading(&resumed), "Inbound REST API Entra app");
    assert!(
        card_text(&resumed).contains("resumes where it was"),
        "{}",
        card_text(&resumed)
    );
    // The card from before the restart still works (same version).
    let next = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert_eq!(
        heading(&next),
        "ServiceNow OIDC provider configuration",
        "{}",
        card_text(&next)
    );
}

#[tokio::test]
async fn two_admins_clicking_at_once_make_exactly_one_transition_and_one_creation() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    assert_eq!(heading(&card), "Outbound Entra app");
    let first = bot.invoke_activity(&world, ADMIN, &card, "Continue", create());
    let second = bot.invoke_activity(&world, ADMIN_TWO, &card, "Continue", create());
    let retried = first.clone();
    let (a, b, c) = tokio::join!(
        bot.send_invoke(&first),
        bot.send_invoke(&second),
        bot.send_invoke(&retried)
    );
    let headings = [heading(&a), heading(&b), heading(&c)];
    // A click that lost the race answers "already answered" with the current step, which is
    // the next step when it arrives after the winner finished: only one card made the move.
    let advanced = [&a, &b, &c]
        .iter()
        .filter(|card| {
            heading(card) == "ServiceNow outbound OAuth provider"
                && !card_text(card).contains("already answered")
        })
        .count();
    assert_eq!(advanced, 1, "{headings:?}");
    let outbound: Vec<_> = handle
        .apps()
        .into_iter()
        .filter(|a| a.display_name == "Microsoft 365 support outbound")
        .collect();
    assert_eq!(outbound.len(), 1);
    assert_eq!(
        outbound[0].password_credentials.len(),
        1,
        "one secret added"
    );
    for card in [&a, &b, &c] {
        let text = card_text(card);
        assert!(
            heading(card) == "ServiceNow outbound OAuth provider"
                || text.contains("already answered")
                || text.contains("Working on it"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn an_idle_setup_expires_and_its_secrets_are_dropped() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let redirect = format!("{}/oauth_redirect.do", handle.urls().servicenow);
    let (client_id, secret) = handle.create_app("Outbound by hand", &[redirect.as_str()]);
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    let card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": client_id, "client_secret": secret}),
        )
        .await;
    assert_eq!(heading(&card), "ServiceNow outbound OAuth provider");
    // Two days without a click.
    sqlx::query("UPDATE setup_wizards SET updated_at = updated_at - 172800000")
        .execute(&bot.app.db.pool)
        .await
        .expect("age the row");
    let fresh = bot.say(&world, ADMIN, "setup").await;
    assert_eq!(heading(&fresh), "What setup will do");
    assert!(
        card_text(&fresh).contains("previous setup expired"),
        "{}",
        card_text(&fresh)
    );
    let old = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert!(card_text(&old).contains("expired"), "{}", card_text(&old));
    let secrets: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT secrets, status FROM setup_wizards ORDER BY created_at")
            .fetch_all(&bot.app.db.pool)
            .await
            .expect("rows");
    assert_eq!(
        secrets,
        vec![(None, "expired".to_owned()), (None, "active".to_owned())]
    );
}

#[tokio::test]
async fn without_an_encryption_key_setup_says_what_to_configure() {
    let world = World::start().await;
    let bot = world.bot_with("[setup]\nencryption_key = \"\"\n").await;
    let card = bot.say(&world, ADMIN, "setup").await;
    let text = card_text(&card);
    assert!(text.contains("setup.encryption_key"), "{text}");
    let rows: Vec<(String,)> = sqlx::query_as("SELECT setup_id FROM setup_wizards")
        .fetch_all(&bot.app.db.pool)
        .await
        .expect("rows");
    assert!(rows.is_empty(), "nothing stored without a key");
}

#[tokio::test]
async fn a_step_interrupted_by_a_crash_is_offered_again() {
    let world = World::start().await;
    {
        let bot = world.bot().await;
        let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
        assert_eq!(heading(&card), "Outbound Entra app");
        // The bot died while the step's effect ran: the row stays busy.
        let mut row = m365bot::setup::store::active(&bot.app.db)
            .await
            .expect("db")
            .expect("active");
        row.wizard.busy_since = Some(1);
        m365bot::setup::store::compare_and_set(
            &bot.app.db,
            &row.setup_id,
            row.version,
            &row.wizard,
            None,
            "active",
        )
        .await
        .expect("write")
        .expect("version");
    }
    let bot = world.bot().await;
    let card = bot.say(&world, ADMIN, "setup").await;
    assert_eq!(heading(&card), "Outbound Entra app", "{}", card_text(&card));
    assert!(
        card_text(&card).contains("interrupted"),
        "{}",
        card_text(&card)
    );
    let next = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert_eq!(heading(&next), "ServiceNow outbound OAuth provider");
}

#[tokio::test]
async fn start_up_refuses_stored_secrets_without_the_key() {
    let world = World::start().await;
    {
        let bot = world.bot().await;
        let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
        let next = bot.press(&world, ADMIN, &card, "Continue", create()).await;
        assert_eq!(heading(&next), "ServiceNow outbound OAuth provider");
    }
    let mut settings = world.settings_with("");
    settings.setup.encryption_key = None;
    let refused = m365bot::app::Application::build(settings).await;
    let message = format!("{:#}", refused.err().expect("start-up refused"));
    assert!(
        message.contains("setup.encryption_key is not set"),
        "{message}"
    );
    assert!(
        message.contains("M365BOT_SETUP__ENCRYPTION_KEY"),
        "{message}"
    );
    // An empty key is no key.
    let mut settings = world.settings_with("");
    settings.setup.encryption_key = Some(secrecy::SecretString::from("  "));
    let refused = m365bot::app::Application::build(settings).await;
    let message = format!("{:#}", refused.err().expect("start-up refused"));
    assert!(
        message.contains("setup.encryption_key is not set"),
        "{message}"
    );
    // With the key it starts and resumes.
    let bot = world.bot().await;
    let resumed = bot.say(&world, ADMIN, "setup").await;
    assert_eq!(heading(&resumed), "ServiceNow outbound OAuth provider");
}

#[tokio::test]
async fn entra_replication_lag_is_waited_out_without_a_second_app_or_secret() {
    let world = World::start().await;
    let handle = world.sandbox.handle();
    handle.set_replication_lag(std::time::Duration::from_secs(3));
    let bot = world.bot().await;
    let card = to_step(&bot, &world, false, "contoso.onmicrosoft.com").await;
    let apps_before = handle.apps().len();
    let started = std::time::Instant::now();
    let card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    assert_eq!(
        heading(&card),
        "ServiceNow outbound OAuth provider",
        "{}",
        card_text(&card)
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "the step waited for replication"
    );
    assert!(
        card_text(&card).contains("waiting for Entra ID to replicate the new app"),
        "{}",
        card_text(&card)
    );
    let apps = handle.apps();
    assert_eq!(apps.len(), apps_before + 1, "exactly one app was created");
    let created = apps.last().expect("the new app");
    assert_eq!(created.password_credentials.len(), 1, "exactly one secret");
}
