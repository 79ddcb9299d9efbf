//! A full wizard run with known secrets: no card (the completion and hand-over cards
//! included), no message through the connector, no log line, no audit entry and no database byte contains any of them.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use m365bot::config::{LogFormat, LogSettings};
use serde_json::{Value, json};
use support::setup::{ADMIN, M365_ADMIN, World, card_text, create, heading};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_in_cards_logs_audit_or_database() {
    let captured = Captured::default();
    m365bot::telemetry::init(
        &LogSettings {
            format: LogFormat::Json,
            filter: "trace".to_owned(),
        },
        captured.clone(),
    );
    let world = World::start().await;
    let handle = world.sandbox.handle();
    let redirect = format!("{}/oauth_redirect.do", handle.urls().servicenow);
    let (outbound_id, outbound_secret) =
        handle.create_app("Outbound (by hand)", &[redirect.as_str()]);
    let (inbound_id, inbound_secret) = handle.create_app("Inbound (by hand)", &[]);
    let (rest_id, rest_secret) = handle.create_app("REST user (by hand)", &[]);
    let secrets = [
        outbound_secret.clone(),
        inbound_secret.clone(),
        rest_secret.clone(),
        world.key.clone(),
    ];
    let bot = world.bot().await;
    // The fred.luddy 1:1 chat exists, so the card can be handed over.
    let mut hello = json!({"type": "message", "id": "hello", "channelId": "msteams", "serviceUrl": world.connector.service_url(),
        "from": {"id": M365_ADMIN}, "recipient": {"id": "28:bot"}, "text": "help",
        "conversation": {"id": "a:fred-personal", "conversationType": "personal", "tenantId": support::TEST_TENANT_ID},
        "channelData": {"tenant": {"id": support::TEST_TENANT_ID}}});
    assert_eq!(bot.post(&hello).await.0, 200);
    hello["id"] = json!("hello-2");

    let mut cards: Vec<Value> = Vec::new();
    let consent = bot.say(&world, ADMIN, "setup").await;
    let env = bot.press(&world, ADMIN, &consent, "Agree", json!({})).await;
    let tenant = bot
        .press(&world, ADMIN, &env, "Start setup", json!({"auth": "aad"}))
        .await;
    let mut card = bot
        .press(
            &world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    cards.extend([consent, env, tenant, card.clone()]);
    // A wrong secret first: refused, and not echoed.
    card = bot.press(&world, ADMIN, &card, "Continue", json!({"mode": "existing", "client_id": outbound_id, "client_secret": format!("{outbound_secret}x")})).await;
    cards.push(card.clone());
    for (id, secret) in [(&outbound_id, &outbound_secret)] {
        card = bot
            .press(
                &world,
                ADMIN,
                &card,
                "Continue",
                json!({"mode": "existing", "client_id": id, "client_secret": secret}),
            )
            .await;
        cards.push(card.clone());
    }
    card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    cards.push(card.clone());
    card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": inbound_id, "client_secret": inbound_secret}),
        )
        .await;
    cards.push(card.clone());
    card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    cards.push(card.clone());
    card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    cards.push(card.clone());
    card = bot
        .press(
            &world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "existing", "client_id": rest_id, "client_secret": rest_secret}),
        )
        .await;
    cards.push(card.clone());
    card = bot.press(&world, ADMIN, &card, "Continue", create()).await;
    cards.push(card.clone());
    let complete = bot
        .press(&world, ADMIN, &card, "Check again", json!({}))
        .await;
    assert!(card_text(&complete).contains("Setup complete"));
    // Not even the completion card carries a secret: it offers a one-time Reveal page.
    assert!(
        card_text(&complete).contains("Reveal the secrets (once)"),
        "{}",
        card_text(&complete)
    );
    cards.push(complete.clone());
    let results = bot
        .press(&world, ADMIN, &complete, "Run tests", json!({}))
        .await;
    assert!(
        card_text(&results).contains("0 failed"),
        "{}",
        card_text(&results)
    );
    let shown = bot
        .press(&world, ADMIN, &results, "Show the values", json!({}))
        .await;
    let handed = bot
        .press(
            &world,
            ADMIN,
            &shown,
            "Hand over",
            json!({"handover_email": "fred.luddy@contoso.onmicrosoft.com"}),
        )
        .await;
    assert!(
        card_text(&handed).contains("Handed over to"),
        "{}",
        card_text(&handed)
    );
    let status = bot.say(&world, ADMIN, "setup status").await;
    let doctor = bot.say(&world, ADMIN, "doctor").await;
    cards.extend([
        results,
        shown,
        handed.clone(),
        status,
        doctor,
        bot.say(&world, ADMIN, "setup").await,
    ]);
    assert_eq!(heading(&cards[0]), "What setup will do");

    // The hand-over went to fred's 1:1 chat as a Reveal link, without the values.
    let requests = world.connector.requests();
    let to_fred: Vec<_> = requests
        .iter()
        .filter(|r| r.conversation_id.as_deref() == Some("a:fred-personal"))
        .collect();
    assert!(
        to_fred
            .iter()
            .any(|r| r.body.to_string().contains("/setup/reveal?token=")),
        "the M365 admin got a Reveal link"
    );

    let mut leaks = Vec::new();
    for card in &cards {
        let text = card.to_string();
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                leaks.push(format!("card {}", heading(card)));
            }
        }
    }
    // Every message the bot sent through the connector, the hand-over included.
    for request in &requests {
        let text = request.body.to_string();
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                leaks.push(format!("message to {:?}", request.conversation_id));
            }
        }
    }
    let logs = String::from_utf8(captured.0.lock().expect("logs").clone()).expect("utf8");
    assert!(logs.contains("setup audit"), "the run was logged");
    for secret in &secrets {
        if logs.contains(secret.as_str()) {
            leaks.push("log".to_owned());
        }
    }
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT action, detail FROM setup_audit")
        .fetch_all(&bot.app.db.pool)
        .await
        .expect("audit rows");
    assert!(rows.len() >= 10, "audited: {rows:?}");
    for (action, detail) in &rows {
        for secret in &secrets {
            if action.contains(secret.as_str()) || detail.contains(secret.as_str()) {
                leaks.push("audit".to_owned());
            }
        }
    }
    drop(bot);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for entry in std::fs::read_dir(world.dir.path()).expect("dir").flatten() {
        let bytes = std::fs::read(entry.path()).expect("db file");
        for secret in &secrets {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                leaks.push(format!("database file {}", entry.path().display()));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets found in: {leaks:?}");
}
