//! Cancelling a setup against the emulators: the card lists exactly the Entra apps and
//! ServiceNow records this setup created (not the ones it found or reused), and deletes them
//! only when asked, each after checking it is still what the setup made; decoys and
//! pre-existing records stay byte for byte; a partial failure says what remains.

mod support;

use serde_json::{Map, Value, json};
use support::setup::{ADMIN, Bot, World, aad_created_to_cross_scope, card_text, heading};

type Row = Map<String, Value>;

/// A decoy OAuth provider and an app named as the bot would name its REST-user app (so the
/// bot reuses it by name and must not count it as its own).
fn plant_decoys(world: &World) -> (String, String) {
    let handle = world.sandbox.handle();
    let decoy = handle
        .sn_insert(
            "oauth_entity",
            json!({"name": "Decoy provider", "type": "oauth_provider", "client_id": "0badc0de-0000-4000-8000-00000000d3c0", "active": "true"}),
        )
        .expect("decoy inserted");
    let (reused_app, _) = handle.create_app("Microsoft 365 support REST user", &[]);
    (decoy, reused_app)
}

/// The AAD branch, everything "create it for me", up to the cross-scope step; then Cancel.
async fn create_then_cancel(bot: &Bot, world: &World) -> Value {
    let card = aad_created_to_cross_scope(bot, world, json!({})).await;
    let cancelled = bot
        .press(world, ADMIN, &card, "Cancel setup", json!({}))
        .await;
    assert_eq!(
        heading(&cancelled),
        "Setup cancelled",
        "{}",
        card_text(&cancelled)
    );
    cancelled
}

fn records(world: &World, table: &str) -> Vec<Row> {
    world.sandbox.handle().sn_records(table).unwrap_or_default()
}

fn named(world: &World, table: &str, name: &str) -> Option<Row> {
    records(world, table)
        .into_iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
}

fn app_exists(world: &World, display_name: &str) -> bool {
    world
        .sandbox
        .handle()
        .apps()
        .iter()
        .any(|a| a.display_name == display_name)
}

const OUTBOUND: &str = "Microsoft 365 support outbound";
const INBOUND: &str = "Microsoft 365 support inbound REST API";
const REST_USER: &str = "Microsoft 365 support REST user";
const ENTITY: &str = "contoso.onmicrosoft.com_application_inbound_api";

#[tokio::test]
async fn cancel_lists_what_this_setup_created_and_deletes_only_that() {
    let world = World::start().await;
    let (decoy, reused_app) = plant_decoys(&world);
    let decoy_before = world.sandbox.handle().sn_record("oauth_entity", &decoy);
    let bot = world.bot().await;
    let cancelled = create_then_cancel(&bot, &world).await;
    let text = card_text(&cancelled);
    for listed in [
        OUTBOUND,
        INBOUND,
        ENTITY,
        "oidc_provider_configuration",
        "sys_user",
    ] {
        assert!(text.contains(listed), "{listed} missing: {text}");
    }
    assert!(
        !text.contains(REST_USER),
        "a reused app is not listed: {text}"
    );
    assert!(!text.contains("Decoy provider"), "{text}");
    // The integration user (User ID = the reused app's client id) was created by this setup.
    let user_name = reused_app;
    assert!(text.contains(&format!("sys_user {user_name}")), "{text}");

    let deleted = bot
        .press(
            &world,
            ADMIN,
            &cancelled,
            "Delete what this setup created",
            json!({}),
        )
        .await;
    let text = card_text(&deleted);
    assert!(text.contains("deleted Entra app"), "{text}");
    assert!(!text.contains("not deleted"), "{text}");
    assert!(text.contains("Nothing it created still exists"), "{text}");
    // Gone: both apps it created and every record it created.
    assert!(!app_exists(&world, OUTBOUND));
    assert!(!app_exists(&world, INBOUND));
    assert!(named(&world, "oauth_oidc_entity", ENTITY).is_none());
    assert!(
        named(
            &world,
            "oauth_entity",
            "contoso.onmicrosoft.com Microsoft 365 outbound"
        )
        .is_none()
    );
    assert!(
        world
            .sandbox
            .handle()
            .sn_query("sys_user", &format!("user_name={user_name}"))
            .unwrap_or_default()
            .is_empty(),
        "integration user deleted"
    );
    // Untouched: the reused app and the decoy, byte for byte.
    assert!(app_exists(&world, REST_USER));
    assert_eq!(
        world.sandbox.handle().sn_record("oauth_entity", &decoy),
        decoy_before
    );
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT outcome, detail FROM setup_audit WHERE action = 'delete created'")
            .fetch_all(&bot.app.db.pool)
            .await
            .expect("audit");
    assert_eq!(audit.len(), 6, "{audit:?}");
    assert!(
        audit.iter().all(|(outcome, _)| outcome == "ok"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn without_delete_everything_stays_and_a_partial_failure_says_what_remains() {
    let world = World::start().await;
    let (decoy, _) = plant_decoys(&world);
    let bot = world.bot().await;
    let cancelled = create_then_cancel(&bot, &world).await;
    // Without the delete button nothing is removed, and showing the card again says so.
    let again = bot.say(&world, ADMIN, "setup").await;
    assert_eq!(heading(&again), "What setup will do", "a new setup starts");
    assert!(app_exists(&world, OUTBOUND) && app_exists(&world, INBOUND));
    assert!(named(&world, "oauth_oidc_entity", ENTITY).is_some());

    // The OIDC provider was renamed by someone since: it is no longer this setup's record.
    let (state,): (String,) =
        sqlx::query_as("SELECT state FROM setup_wizards WHERE status = 'cancelled'")
            .fetch_one(&bot.app.db.pool)
            .await
            .expect("the cancelled setup");
    let state: Value = serde_json::from_str(&state).expect("state");
    let provider_id = state["data"]["records"]
        .as_object()
        .expect("records")
        .values()
        .filter_map(|r| r["sys_id"].as_str())
        .find(|id| {
            world
                .sandbox
                .handle()
                .sn_record("oidc_provider_configuration", id)
                .is_some()
        })
        .expect("the provider this setup created")
        .to_owned();
    world
        .sandbox
        .handle()
        .sn_update(
            "oidc_provider_configuration",
            &provider_id,
            json!({"name": "Renamed by someone"}),
        )
        .expect("renamed");
    // And Graph refuses writes: the apps stay.
    world.sandbox.handle().set_graph_writes_denied(true);
    let partial = bot
        .press(
            &world,
            ADMIN,
            &cancelled,
            "Delete what this setup created",
            json!({}),
        )
        .await;
    let text = card_text(&partial);
    assert!(text.contains("not deleted: Entra app"), "{text}");
    assert!(
        text.contains("no longer the record this setup created"),
        "{text}"
    );
    assert!(
        text.contains("deleted ServiceNow oauth_oidc_entity"),
        "{text}"
    );
    assert!(app_exists(&world, OUTBOUND) && app_exists(&world, INBOUND));
    assert!(
        world
            .sandbox
            .handle()
            .sn_record("oidc_provider_configuration", &provider_id)
            .is_some(),
        "the renamed record is left alone"
    );
    assert!(named(&world, "oauth_oidc_entity", ENTITY).is_none());
    // What remains is listed with the button again; a second press finishes the apps.
    assert!(text.contains(OUTBOUND), "{text}");
    world.sandbox.handle().set_graph_writes_denied(false);
    let finished = bot
        .press(
            &world,
            ADMIN,
            &partial,
            "Delete what this setup created",
            json!({}),
        )
        .await;
    let text = card_text(&finished);
    assert!(text.contains("deleted Entra app"), "{text}");
    assert!(!app_exists(&world, OUTBOUND) && !app_exists(&world, INBOUND));
    assert!(app_exists(&world, REST_USER));
    assert!(
        world
            .sandbox
            .handle()
            .sn_record("oauth_entity", &decoy)
            .is_some()
    );
}
