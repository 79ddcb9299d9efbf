//! The Reveal page of a completed setup, end to end: the completion card carries a Reveal
//! button instead of secrets; the link walks the same Entra sign-in as `link-account` (bot →
//! Entra emulator → callback); only the bound account sees the values, once, on a `no-store`
//! page; expiry, second use, a wrong account, a hand-over recipient without an admin role and a
//! second hand-over are refused; the audit names who viewed what, never the values.

mod support;

use m365bot::sandbox::SignedInUser;
use serde_json::{Value, json};
use support::setup::{
    ADMIN, Bot, M365_ADMIN, World, aad_created_to_cross_scope, card_text, create, find_action,
};

const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
const ADMIN_OID: &str = "00000000-0000-4000-8000-000000000001";
const FRED_OID: &str = "00000000-0000-4000-8000-000000000003";
const REVEAL: &str = "Reveal the secrets (once)";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn person(oid: &str, upn: &str, name: &str) -> SignedInUser {
    SignedInUser {
        oid: oid.to_owned(),
        upn: upn.to_owned(),
        name: name.to_owned(),
        tenant_id: None,
    }
}

fn admin() -> SignedInUser {
    person(
        ADMIN_OID,
        "admin@contoso.onmicrosoft.com",
        "System Administrator",
    )
}

fn fred() -> SignedInUser {
    person(FRED_OID, "fred.luddy@contoso.onmicrosoft.com", "Fred Luddy")
}

struct Harness {
    world: World,
    bot: Bot,
    browser: reqwest::Client,
}

/// A world whose bot has a public URL and the account-linking sign-in app (the Reveal page
/// signs in through it), and fred's 1:1 chat for hand-overs.
async fn harness() -> Harness {
    let world = World::start().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let handle = world.sandbox.handle();
    let (client_id, secret) = handle.create_app(
        "m365bot account linking",
        &[&format!("{base}/auth/link/callback")],
    );
    let tenant = world.sandbox.demo().tenant_id.clone();
    let bot = world
        .bot_with(&format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}/\"\n\
             [link]\nclient_id = \"{client_id}\"\nclient_secret = \"{secret}\"\ntenant = \"{tenant}\"\n"
        ))
        .await;
    let hello = json!({"type": "message", "id": "hello", "channelId": "msteams", "serviceUrl": world.connector.service_url(),
        "from": {"id": M365_ADMIN}, "recipient": {"id": "28:bot"}, "text": "help",
        "conversation": {"id": "a:fred-personal", "conversationType": "personal", "tenantId": support::TEST_TENANT_ID},
        "channelData": {"tenant": {"id": support::TEST_TENANT_ID}}});
    assert_eq!(bot.post(&hello).await.0, 200);
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    Harness {
        world,
        bot,
        browser,
    }
}

impl Harness {
    /// The AAD branch, everything created by the bot; the completion card.
    async fn complete(&self) -> Value {
        let (bot, world) = (&self.bot, &self.world);
        let card = aad_created_to_cross_scope(bot, world, json!({})).await;
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

    /// The secrets the setup stored (decrypted), for assertions.
    async fn stored_secrets(&self) -> Vec<String> {
        let row = m365bot::setup::store::latest_completed(&self.bot.app.db)
            .await
            .expect("read")
            .expect("completed");
        let secret_box = m365bot::setup::crypto::SecretBox::new(
            self.bot.app.settings.setup.encryption_key.as_ref(),
        )
        .expect("key");
        let secrets = m365bot::setup::flow::open_secrets(&secret_box, &row).expect("open");
        secrets
            .0
            .values()
            .map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned())
            .collect()
    }

    /// Opens `url` as `who` through the sign-in; (status, cache-control, page).
    async fn open(&self, url: &str, who: SignedInUser) -> (u16, String, String) {
        self.world.sandbox.handle().set_signed_in_user(who);
        let mut url = url.to_owned();
        for _ in 0..5 {
            let response = self.browser.get(&url).send().await.expect("request");
            let status = response.status().as_u16();
            let cache = response
                .headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if status == 302 {
                url = response.headers()["location"]
                    .to_str()
                    .expect("location")
                    .to_owned();
                continue;
            }
            return (status, cache, response.text().await.expect("page"));
        }
        panic!("too many redirects");
    }

    async fn audit(&self) -> Vec<(String, String, String, String)> {
        sqlx::query_as("SELECT actor, action, outcome, detail FROM setup_audit ORDER BY at")
            .fetch_all(&self.bot.app.db.pool)
            .await
            .expect("audit")
    }
}

fn reveal_url(card: &Value) -> String {
    let action = find_action(card, REVEAL);
    assert_eq!(action["type"], "Action.OpenUrl", "{action}");
    action["url"].as_str().expect("url").to_owned()
}

fn contains_any(text: &str, secrets: &[String]) -> bool {
    secrets.iter().any(|s| text.contains(s.as_str()))
}

#[tokio::test]
async fn the_setup_admin_sees_the_values_once_after_signing_in() {
    let h = harness().await;
    let complete = h.complete().await;
    let secrets = h.stored_secrets().await;
    assert_eq!(secrets.len(), 3, "outbound, inbound and REST-user secrets");
    assert!(
        !contains_any(&complete.to_string(), &secrets),
        "no secret in the card"
    );
    let text = card_text(&complete);
    assert!(text.contains("retired"), "{text}");
    assert!(text.contains("Microsoft 365 support > Setup"), "{text}");
    let url = reveal_url(&complete);
    assert!(url.contains("/setup/reveal?token="), "{url}");

    // Someone else signing in is refused and does not use the link up.
    let (status, _, page) = h
        .open(
            &url,
            person(
                "00000000-0000-4000-8000-000000000002",
                "jane.doe@contoso.onmicrosoft.com",
                "Jane Doe",
            ),
        )
        .await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("Someone else signed in"), "{page}");
    assert!(!contains_any(&page, &secrets));

    // The admin who ran setup sees the inbound and REST-user secrets, never cached.
    let (status, cache, page) = h.open(&url, admin()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(cache, "no-store");
    let shown = secrets.iter().filter(|s| page.contains(s.as_str())).count();
    assert_eq!(shown, 2, "inbound and REST-user secrets only: {page}");
    assert!(page.contains("Client secret") && page.contains("Rest user password"));

    // Second use: refused, with how to get a new link.
    let (status, _, page) = h.open(&url, admin()).await;
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("already used"), "{page}");
    assert!(page.contains("new link"), "{page}");
    assert!(!contains_any(&page, &secrets));

    // Audited by name, never by value; setup status says who viewed them and when.
    let audit = h.audit().await;
    let viewed: Vec<_> = audit
        .iter()
        .filter(|(_, action, outcome, _)| action == "reveal" && outcome == "ok")
        .collect();
    assert_eq!(viewed.len(), 1, "{audit:?}");
    assert!(
        viewed[0].0.contains("admin@contoso.onmicrosoft.com"),
        "{viewed:?}"
    );
    assert!(
        viewed[0].3.contains("Client secret, Rest user password"),
        "{viewed:?}"
    );
    assert!(
        audit
            .iter()
            .any(|(_, action, outcome, _)| action == "reveal" && outcome == "refused"),
        "the wrong account is audited: {audit:?}"
    );
    for (actor, action, outcome, detail) in &audit {
        let all = format!("{actor}{action}{outcome}{detail}");
        assert!(!contains_any(&all, &secrets), "secret in the audit: {all}");
    }
    let stored: Vec<(String,)> = sqlx::query_as("SELECT token_hash FROM setup_reveals")
        .fetch_all(&h.bot.app.db.pool)
        .await
        .expect("rows");
    let token = url.split("token=").nth(1).expect("token");
    assert!(
        stored
            .iter()
            .all(|(hash,)| hash != token && hash.len() == 64)
    );
    let status = h.bot.say(&h.world, ADMIN, "setup status").await;
    let status_text = card_text(&status);
    assert!(status_text.contains("Secrets viewed"), "{status_text}");
    assert!(
        status_text.contains("by admin@contoso.onmicrosoft.com"),
        "{status_text}"
    );

    // After completion nothing in chat shows a secret: every card and message.
    let shown_again = h.bot.say(&h.world, ADMIN, "setup").await;
    let new_link = h
        .bot
        .press(&h.world, ADMIN, &shown_again, "New Reveal link", json!({}))
        .await;
    assert_ne!(reveal_url(&new_link), url);
    for request in h.world.connector.requests() {
        assert!(
            !contains_any(&request.body.to_string(), &secrets),
            "secret sent to {:?}",
            request.conversation_id
        );
    }
    assert!(!contains_any(&new_link.to_string(), &secrets));
}

#[tokio::test]
async fn an_expired_link_is_refused_before_and_after_the_sign_in() {
    let h = harness().await;
    let complete = h.complete().await;
    let url = reveal_url(&complete);
    // Expired at the start page.
    sqlx::query("UPDATE setup_reveals SET expires_at = 1")
        .execute(&h.bot.app.db.pool)
        .await
        .expect("update");
    let (status, _, page) = h.open(&url, admin()).await;
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("expired"), "{page}");

    // Expired between the start page and the callback: the server refuses at the callback.
    let shown = h.bot.say(&h.world, ADMIN, "setup").await;
    let fresh = h
        .bot
        .press(&h.world, ADMIN, &shown, "New Reveal link", json!({}))
        .await;
    let url = reveal_url(&fresh);
    h.world.sandbox.handle().set_signed_in_user(admin());
    let start = h.browser.get(&url).send().await.expect("start");
    assert_eq!(start.status(), 302);
    let authorize = start.headers()["location"]
        .to_str()
        .expect("loc")
        .to_owned();
    let entra = h.browser.get(&authorize).send().await.expect("authorize");
    let callback = entra.headers()["location"]
        .to_str()
        .expect("loc")
        .to_owned();
    sqlx::query("UPDATE setup_reveals SET expires_at = 1")
        .execute(&h.bot.app.db.pool)
        .await
        .expect("update");
    let page = h.browser.get(&callback).send().await.expect("callback");
    assert_eq!(page.status(), 410);
    let html = page.text().await.expect("html");
    assert!(html.contains("expired"), "{html}");
    let secrets = h.stored_secrets().await;
    assert!(!contains_any(&html, &secrets));
    let viewed: Vec<(i64,)> =
        sqlx::query_as("SELECT COUNT(*) FROM setup_reveals WHERE used_at IS NOT NULL")
            .fetch_all(&h.bot.app.db.pool)
            .await
            .expect("count");
    assert_eq!(viewed[0].0, 0);
}

#[tokio::test]
async fn a_hand_over_goes_once_to_an_admin_and_can_be_revoked() {
    let h = harness().await;
    let complete = h.complete().await;
    let secrets = h.stored_secrets().await;
    let handed = h
        .bot
        .press(
            &h.world,
            ADMIN,
            &complete,
            "Hand over",
            json!({"handover_email": "fred.luddy@contoso.onmicrosoft.com"}),
        )
        .await;
    assert!(
        card_text(&handed).contains("Handed over to"),
        "{}",
        card_text(&handed)
    );
    let to_fred: Vec<_> = h
        .world
        .connector
        .requests()
        .into_iter()
        .filter(|r| r.conversation_id.as_deref() == Some("a:fred-personal"))
        .collect();
    let fred_card = to_fred
        .iter()
        .map(|r| r.body["attachments"][0]["content"].clone())
        .find(|card| card_text(card).contains("handed the Microsoft 365 support integration"))
        .expect("fred got the hand-over card");
    assert!(
        !contains_any(&fred_card.to_string(), &secrets),
        "no secret to fred"
    );
    let url = reveal_url(&fred_card);

    // Fred holds no admin role yet: refused, the link stays unused.
    let (status, _, page) = h.open(&url, fred()).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("no Microsoft 365 admin"), "{page}");
    // Roles that cannot be read: refused (fail closed), the link stays unused.
    h.world
        .sandbox
        .handle()
        .set_directory_role_reads_denied(true);
    let (status, _, page) = h.open(&url, fred()).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("could not be checked"), "{page}");
    h.world
        .sandbox
        .handle()
        .set_directory_role_reads_denied(false);
    // Another account than fred's: refused.
    let (status, _, page) = h.open(&url, admin()).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("Someone else signed in"), "{page}");
    // With a role, fred sees the values once.
    h.world
        .sandbox
        .handle()
        .assign_directory_role(FRED_OID, GLOBAL_ADMINISTRATOR);
    let (status, _, page) = h.open(&url, fred()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        secrets.iter().filter(|s| page.contains(s.as_str())).count(),
        2
    );

    // A second hand-over is refused until the setup admin revokes the first.
    let again = h
        .bot
        .press(&h.world, ADMIN, &handed, "Revoke hand-over", json!({}))
        .await;
    assert!(
        !card_text(&again).contains("Handed over to"),
        "{}",
        card_text(&again)
    );
    let second = h
        .bot
        .press(
            &h.world,
            ADMIN,
            &again,
            "Hand over",
            json!({"handover_email": "fred.luddy@contoso.onmicrosoft.com"}),
        )
        .await;
    assert!(
        card_text(&second).contains("Handed over to"),
        "{}",
        card_text(&second)
    );
    let refused = h
        .bot
        .press(
            &h.world,
            ADMIN,
            &complete,
            "Hand over",
            json!({"handover_email": "fred.luddy@contoso.onmicrosoft.com"}),
        )
        .await;
    assert!(
        card_text(&refused).contains("already handed over"),
        "{}",
        card_text(&refused)
    );
    // Revoking makes the unused second link useless.
    let second_url = h
        .world
        .connector
        .requests()
        .into_iter()
        .filter(|r| r.conversation_id.as_deref() == Some("a:fred-personal"))
        .rev()
        .find_map(|r| {
            let card = r.body["attachments"][0]["content"].clone();
            card_text(&card)
                .contains("handed the Microsoft 365 support integration")
                .then(|| reveal_url(&card))
        })
        .expect("second hand-over card");
    assert_ne!(second_url, url);
    h.bot
        .press(&h.world, ADMIN, &second, "Revoke hand-over", json!({}))
        .await;
    let (status, _, page) = h.open(&second_url, fred()).await;
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("revoked"), "{page}");
    let audit = h.audit().await;
    let actions: Vec<&str> = audit.iter().map(|(_, a, _, _)| a.as_str()).collect();
    assert!(actions.contains(&"revoke hand-over"), "{actions:?}");
    assert!(
        audit
            .iter()
            .any(|(_, a, o, d)| a == "hand over" && o == "refused" && d.contains("already")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn with_basic_auth_the_page_shows_the_integration_password_only() {
    let h = harness().await;
    let (bot, world) = (&h.bot, &h.world);
    let consent = bot.say(world, ADMIN, "setup").await;
    let env = bot.press(world, ADMIN, &consent, "Agree", json!({})).await;
    let tenant = bot
        .press(world, ADMIN, &env, "Start setup", json!({"auth": "basic"}))
        .await;
    let mut card = bot
        .press(
            world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    for _ in 0..2 {
        card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    }
    card = bot
        .press(
            world,
            ADMIN,
            &card,
            "Continue",
            json!({"mode": "create", "user_name": "m365_integration"}),
        )
        .await;
    let complete = bot
        .press(world, ADMIN, &card, "Check again", json!({}))
        .await;
    let secrets = h.stored_secrets().await;
    assert_eq!(secrets.len(), 2, "outbound secret and generated password");
    assert!(!contains_any(&complete.to_string(), &secrets));
    let text = card_text(&complete);
    assert!(
        text.contains("Integration user") && text.contains("m365_integration"),
        "{text}"
    );
    assert!(
        !text.contains("OIDC entity"),
        "no OIDC entity with Basic Auth: {text}"
    );
    let (status, _, page) = h.open(&reveal_url(&complete), admin()).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("password of the integration user m365_integration"),
        "{page}"
    );
    assert_eq!(
        secrets.iter().filter(|s| page.contains(s.as_str())).count(),
        1,
        "the password only, not the outbound secret: {page}"
    );
}
