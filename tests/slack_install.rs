//! Installs into more workspaces (OAuth v2) followed over HTTP against the Slack emulator: the
//! token stored sealed (never in clear in the database), states that are replayed, expired or
//! forged refused with nothing stored, the new workspace answered with its own token, and
//! `app_uninstalled` / `tokens_revoked` deleting the token. The store runs on SQLite and
//! PostgreSQL.

mod support;

use m365bot::sandbox::slack::{SANDBOX_TEAM_ID, SECOND_TEAM_ID, SlackPosted};
use m365bot::setup::crypto::{SecretBox, generate_key};
use m365bot::slack::api::OAuthAccess;
use m365bot::slack::install::{self, StateCheck};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::Row;
use support::slack::{SlackBot, text_of};

/// A client that does not follow redirects (each hop is checked).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The `href` of the element with `id` in an HTML page, unescaped.
fn link(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\" href=\"");
    let start = html.find(&marker).expect("the link") + marker.len();
    let end = start + html[start..].find('"').expect("link end");
    html[start..end].replace("&amp;", "&")
}

/// Starts an install at the bot: Slack's authorize URL it redirects to.
async fn start_install(bot: &SlackBot) -> url::Url {
    let response = browser()
        .get(format!("{}{}", bot.base_url, install::INSTALL_PATH))
        .send()
        .await
        .expect("the bot answers");
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().expect("ascii");
    url::Url::parse(location).expect("a URL")
}

/// Follows the emulator's authorize page: the callback URL its Allow (or Cancel) link names.
async fn authorize(authorize_url: &url::Url, choice: &str) -> url::Url {
    let page = browser()
        .get(authorize_url.clone())
        .send()
        .await
        .expect("the emulator answers");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    url::Url::parse(&link(&html, choice)).expect("callback URL")
}

/// Calls the bot's callback with the query Slack sent (the host of `redirect_uri` is the
/// configured public URL; the test bot listens elsewhere).
async fn callback(bot: &SlackBot, sent_back: &url::Url) -> (u16, String) {
    let response = browser()
        .get(format!(
            "{}{}?{}",
            bot.base_url,
            sent_back.path(),
            sent_back.query().unwrap_or_default()
        ))
        .send()
        .await
        .expect("the bot answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("html"))
}

/// Installs into the second workspace through the whole flow.
async fn install_second_workspace(bot: &SlackBot) {
    let authorize_url = start_install(bot).await;
    let sent_back = authorize(&authorize_url, "allow").await;
    let (status, page) = callback(bot, &sent_back).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Fabrikam (sandbox)"), "{page}");
}

async fn stored_rows(bot: &SlackBot) -> Vec<(String, String)> {
    sqlx::query("SELECT team_id, bot_token_sealed FROM slack_installations ORDER BY team_id")
        .fetch_all(&bot.app.db.pool)
        .await
        .expect("query")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The form of `/m365 <text>` typed by `user` in `channel` of the workspace `team`.
fn command_form(bot: &SlackBot, team: &str, user: &str, text: &str) -> (String, String) {
    let ticket = bot.world().new_command("C0GENERAL", user);
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "unused")
        .append_pair("team_id", team)
        .append_pair("channel_id", "C0GENERAL")
        .append_pair("user_id", user)
        .append_pair("user_name", user)
        .append_pair("command", "/m365")
        .append_pair("text", text)
        .append_pair("response_url", &ticket.response_url)
        .append_pair("trigger_id", &ticket.trigger_id)
        .finish();
    (form, ticket.response_id)
}

async fn answers_to(bot: &SlackBot, response_id: &str) -> Vec<SlackPosted> {
    let started = std::time::Instant::now();
    loop {
        let posted: Vec<SlackPosted> = bot
            .world()
            .messages()
            .into_iter()
            .filter(|m| m.response_url.as_deref() == Some(response_id))
            .collect();
        if !posted.is_empty() || started.elapsed() > std::time::Duration::from_secs(20) {
            return posted;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn event(team: &str, event: Value) -> String {
    json!({
        "token": "unused", "team_id": team, "api_app_id": "A0SANDBOX", "type": "event_callback",
        "event_id": "Ev0INSTALL", "event_time": 1_700_000_000, "event": event,
    })
    .to_string()
}

#[tokio::test]
async fn an_install_stores_the_token_sealed_and_the_new_workspace_is_answered_with_it() {
    let bot = SlackBot::start().await;
    let authorize_url = start_install(&bot).await;
    let query: std::collections::HashMap<String, String> =
        authorize_url.query_pairs().into_owned().collect();
    assert_eq!(query["client_id"], "1111111111.2222222222");
    assert_eq!(
        query["scope"],
        m365bot::slack::manifest::BOT_SCOPES.join(",")
    );
    assert!(
        query["redirect_uri"].ends_with("/slack/oauth/callback"),
        "{query:?}"
    );
    // Only the state's hash is kept.
    let state = &query["state"];
    let kept: Vec<String> = sqlx::query("SELECT state_hash FROM slack_install_states")
        .fetch_all(&bot.app.db.pool)
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(kept, vec![m365bot::link::store::state_hash(state)]);

    let sent_back = authorize(&authorize_url, "allow").await;
    let (status, page) = callback(&bot, &sent_back).await;
    assert_eq!(status, 200, "{page}");

    // The token the emulator issued works, and it is in the database only sealed.
    let rows = stored_rows(&bot).await;
    assert_eq!(rows.len(), 1);
    let (team, sealed) = &rows[0];
    assert_eq!(team, SECOND_TEAM_ID);
    assert!(!sealed.contains("xoxb-"), "sealed, not in clear");
    let secrets = bot
        .app
        .slack
        .as_ref()
        .and_then(|s| s.secrets.as_ref())
        .expect("key");
    let token = install::stored_token(&bot.app.db, secrets, SECOND_TEAM_ID)
        .await
        .expect("readable")
        .expect("stored");
    assert!(token.expose_secret().starts_with("xoxb-sandbox-T0SECOND-"));
    let dump: Vec<String> = sqlx::query(
        "SELECT team_id || ' ' || COALESCE(team_name, '') || ' ' || bot_user_id || ' ' || scopes || ' ' || bot_token_sealed FROM slack_installations",
    )
    .fetch_all(&bot.app.db.pool)
    .await
    .expect("query")
    .iter()
    .map(|row| row.get(0))
    .collect();
    assert!(dump.iter().all(|row| !row.contains(token.expose_secret())));
    let audit = install::audit_log(&bot.app.db, 10).await.expect("audit");
    assert_eq!(audit[0].outcome, "stored");
    assert_eq!(audit[0].team_id.as_deref(), Some(SECOND_TEAM_ID));
    assert!(
        audit
            .iter()
            .all(|a| !a.detail.contains(token.expose_secret())),
        "the audit never holds the token"
    );

    // A command from the new workspace: users.info goes out with that workspace's token.
    let before = bot.world().request_log().len();
    let (form, response_id) = command_form(&bot, SECOND_TEAM_ID, "U0ADMIN", "doctor");
    let answer = bot
        .post_signed(
            m365bot::slack::COMMANDS_PATH,
            "application/x-www-form-urlencoded",
            &form,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let report = answers_to(&bot, &response_id).await;
    assert!(
        // The integration's 17 checks and the Slack checks (token, scopes, channels).
        text_of(&report[0].blocks).contains("20 passed"),
        "{}",
        text_of(&report[0].blocks)
    );
    let calls: Vec<_> = bot.world().request_log()[before..]
        .iter()
        .filter(|c| c.method == "users.info")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].team.as_deref(), Some(SECOND_TEAM_ID));
    assert_eq!(calls[0].error, None);

    // The configured workspace keeps its configured token.
    let api = bot
        .app
        .slack
        .as_ref()
        .expect("slack")
        .api_for(&bot.app.db, SANDBOX_TEAM_ID)
        .await
        .expect("configured workspace");
    let who = api.auth_test().await.expect("auth.test");
    assert_eq!(who.team_id, SANDBOX_TEAM_ID);
    let second = bot
        .app
        .slack
        .as_ref()
        .expect("slack")
        .api_for(&bot.app.db, SECOND_TEAM_ID)
        .await
        .expect("second workspace");
    assert_eq!(
        second.auth_test().await.expect("auth.test").team_id,
        SECOND_TEAM_ID
    );
    // Without slack.team_id the configured workspace is learned with auth.test, once.
    let mut settings = bot.app.settings.clone();
    settings.slack.team_id = None;
    let unpinned = m365bot::slack::Slack::from_settings(&settings.slack, reqwest::Client::new())
        .expect("slack")
        .with_installs(&settings, &bot.app.db);
    let before = bot.world().request_log().len();
    for _ in 0..2 {
        let api = unpinned
            .api_for(&bot.app.db, SANDBOX_TEAM_ID)
            .await
            .expect("configured workspace");
        assert_eq!(
            api.base(),
            bot.app.slack.as_ref().expect("slack").api.base()
        );
    }
    let learned: Vec<_> = bot.world().request_log()[before..]
        .iter()
        .map(|c| (c.method.clone(), c.team.clone()))
        .collect();
    assert_eq!(
        learned,
        [("auth.test".to_owned(), Some(SANDBOX_TEAM_ID.to_owned()))]
    );
    // A workspace with neither is refused, saying what to do.
    let err = bot
        .app
        .slack
        .as_ref()
        .expect("slack")
        .api_for(&bot.app.db, "T0UNKNOWN")
        .await
        .expect_err("not installed");
    assert!(err.to_string().contains("/slack/install"), "{err}");
}

#[tokio::test]
async fn replayed_expired_forged_and_cancelled_states_are_refused_with_nothing_stored() {
    let bot = SlackBot::start().await;

    // Forged: a state this bot never issued, with a real code.
    let authorize_url = start_install(&bot).await;
    let sent_back = authorize(&authorize_url, "allow").await;
    let mut forged = sent_back.clone();
    let code = sent_back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code)
        .append_pair("state", "forged-state-value");
    let (status, page) = callback(&bot, &forged).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("not issued by this bot"), "{page}");
    // Without any state.
    let mut stateless = sent_back.clone();
    stateless
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code);
    let (status, _) = callback(&bot, &stateless).await;
    assert_eq!(status, 400);
    assert!(stored_rows(&bot).await.is_empty());

    // Replayed: the first use installs, the second is refused before any exchange.
    let (status, page) = callback(&bot, &sent_back).await;
    assert_eq!(status, 200, "{page}");
    sqlx::query("DELETE FROM slack_installations")
        .execute(&bot.app.db.pool)
        .await
        .expect("reset");
    let exchanges = |log: &[m365bot::sandbox::slack::SlackLogged]| {
        log.iter().filter(|c| c.method == "oauth.v2.access").count()
    };
    let before = exchanges(&bot.world().request_log());
    let (status, page) = callback(&bot, &sent_back).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("already used"), "{page}");
    assert_eq!(exchanges(&bot.world().request_log()), before, "no exchange");
    assert!(stored_rows(&bot).await.is_empty());

    // Expired: a state issued long ago.
    let authorize_url = start_install(&bot).await;
    sqlx::query("UPDATE slack_install_states SET expires_at = 1 WHERE used_at IS NULL")
        .execute(&bot.app.db.pool)
        .await
        .expect("age the state");
    let sent_back = authorize(&authorize_url, "allow").await;
    let (status, page) = callback(&bot, &sent_back).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("expired"), "{page}");
    assert!(stored_rows(&bot).await.is_empty());

    // Cancelled on Slack's page.
    let authorize_url = start_install(&bot).await;
    let sent_back = authorize(&authorize_url, "cancel").await;
    let (status, page) = callback(&bot, &sent_back).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("access_denied"), "{page}");
    assert!(stored_rows(&bot).await.is_empty());

    // A code Slack refuses (already exchanged): Slack's error on the page, nothing stored.
    let authorize_url = start_install(&bot).await;
    let fresh_state = authorize_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let mut used_code = sent_back.clone();
    used_code
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code)
        .append_pair("state", &fresh_state);
    let (status, page) = callback(&bot, &used_code).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("invalid_code"), "{page}");
    assert!(stored_rows(&bot).await.is_empty());

    let audit = install::audit_log(&bot.app.db, 20).await.expect("audit");
    let refused = audit.iter().filter(|a| a.outcome == "refused").count();
    assert!(refused >= 5, "{audit:?}");
}

#[tokio::test]
async fn app_uninstalled_and_tokens_revoked_delete_the_workspace_token() {
    let bot = SlackBot::start().await;
    install_second_workspace(&bot).await;
    assert_eq!(stored_rows(&bot).await.len(), 1);

    // tokens_revoked naming only user tokens keeps the bot token.
    let answer = bot
        .post_signed(
            m365bot::slack::EVENTS_PATH,
            "application/json",
            &event(
                SECOND_TEAM_ID,
                json!({"type": "tokens_revoked", "tokens": {"oauth": ["U0ADMIN"]}}),
            ),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(stored_rows(&bot).await.len(), 1);

    // tokens_revoked naming the bot user deletes it.
    let answer = bot
        .post_signed(
            m365bot::slack::EVENTS_PATH,
            "application/json",
            &event(
                SECOND_TEAM_ID,
                json!({"type": "tokens_revoked", "tokens": {"bot": ["U0BOT"]}}),
            ),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(stored_rows(&bot).await.is_empty());

    // A command from the removed workspace is answered with what to do, not with a stale token.
    bot.world().uninstall(SECOND_TEAM_ID);
    let (form, response_id) = command_form(&bot, SECOND_TEAM_ID, "U0ADMIN", "doctor");
    bot.post_signed(
        m365bot::slack::COMMANDS_PATH,
        "application/x-www-form-urlencoded",
        &form,
    )
    .await;
    let answer = answers_to(&bot, &response_id).await;
    assert!(
        text_of(&answer[0].blocks).contains("not installed in the Slack workspace T0SECOND"),
        "{}",
        text_of(&answer[0].blocks)
    );

    // Installed again, then app_uninstalled deletes it.
    install_second_workspace(&bot).await;
    assert_eq!(stored_rows(&bot).await.len(), 1);
    // Unsigned events change nothing.
    let unsigned = bot
        .post_raw(
            m365bot::slack::EVENTS_PATH,
            "application/json",
            event(SECOND_TEAM_ID, json!({"type": "app_uninstalled"})),
            Some(&chrono::Utc::now().timestamp().to_string()),
            Some("v0=0000"),
        )
        .await;
    assert_eq!(unsigned.status, 401);
    assert_eq!(stored_rows(&bot).await.len(), 1);
    let answer = bot
        .post_signed(
            m365bot::slack::EVENTS_PATH,
            "application/json",
            &event(SECOND_TEAM_ID, json!({"type": "app_uninstalled"})),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(stored_rows(&bot).await.is_empty());
    let audit = install::audit_log(&bot.app.db, 5).await.expect("audit");
    assert_eq!(audit[0].action, "app_uninstalled");
    assert_eq!(audit[0].outcome, "deleted");
}

#[tokio::test]
async fn the_installation_store_works_on_every_backend() {
    let sample: Value = serde_json::from_str(include_str!(
        "fixtures/samples/slack/api.oauth.v2.access.examples.json"
    ))
    .expect("sample");
    for test_db in support::db::test_databases().await {
        let db = &test_db.db;
        let label = test_db.label;
        let key = SecretString::from(generate_key().expect("key"));
        let secrets = SecretBox::new(Some(&key)).expect("box");
        // States: valid once, then used; unknown; expired.
        let state = install::new_state(db, 600, 10)
            .await
            .expect("state")
            .expect("issued");
        assert_eq!(
            install::take_state(db, &state).await.expect("take"),
            StateCheck::Valid,
            "{label}"
        );
        assert_eq!(
            install::take_state(db, &state).await.expect("take"),
            StateCheck::Used,
            "{label}"
        );
        assert_eq!(
            install::take_state(db, "never-issued").await.expect("take"),
            StateCheck::Unknown,
            "{label}"
        );
        let old = install::new_state(db, 600, 10)
            .await
            .expect("state")
            .expect("issued");
        // Unused links are bounded; used and expired ones do not count.
        let pending = install::new_state(db, 600, 2)
            .await
            .expect("state")
            .expect("a second pending link");
        assert_eq!(
            install::new_state(db, 600, 2).await.expect("state"),
            None,
            "{label}: a third pending link is refused"
        );
        assert_eq!(
            install::take_state(db, &pending).await.expect("take"),
            StateCheck::Valid
        );
        sqlx::query("UPDATE slack_install_states SET expires_at = 1 WHERE used_at IS NULL")
            .execute(&db.pool)
            .await
            .expect("age");
        assert_eq!(
            install::take_state(db, &old).await.expect("take"),
            StateCheck::Expired,
            "{label}"
        );
        assert!(
            install::new_state(db, 600, 1)
                .await
                .expect("state")
                .is_some(),
            "{label}: expired links do not count"
        );
        // Links expired a day ago are forgotten.
        assert_eq!(
            install::take_state(db, &old).await.expect("take"),
            StateCheck::Unknown,
            "{label}"
        );

        // The documented answer, stored sealed, replaced on reinstall, deleted.
        let access: OAuthAccess =
            serde_json::from_value(sample["success"]["example"].clone()).expect("sample parses");
        assert_eq!(access.team.id, "T9TK3CUKW");
        install::save_installation(db, &secrets, &access)
            .await
            .expect("save");
        install::save_installation(db, &secrets, &access)
            .await
            .expect("reinstall");
        let token = install::stored_token(db, &secrets, "T9TK3CUKW")
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(
            token.expose_secret(),
            "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
        );
        let raw: String = sqlx::query("SELECT bot_token_sealed FROM slack_installations")
            .fetch_one(&db.pool)
            .await
            .expect("row")
            .get(0);
        assert!(!raw.contains("xoxb-"), "{label}: sealed");
        // Another key cannot open it.
        let other =
            SecretBox::new(Some(&SecretString::from(generate_key().expect("key")))).expect("box");
        assert!(
            install::stored_token(db, &other, "T9TK3CUKW")
                .await
                .is_err(),
            "{label}"
        );
        let stored = install::installation(db, "T9TK3CUKW")
            .await
            .expect("read")
            .expect("row");
        assert_eq!(stored.bot_user_id, "U0KRQLJ9H");
        assert_eq!(stored.installed_by.as_deref(), Some("U1234"));
        assert!(
            install::delete_installation(db, "T9TK3CUKW")
                .await
                .expect("delete"),
            "{label}"
        );
        assert!(
            !install::delete_installation(db, "T9TK3CUKW")
                .await
                .expect("delete"),
            "{label}"
        );
        assert!(
            install::stored_token(db, &secrets, "T9TK3CUKW")
                .await
                .expect("read")
                .is_none()
        );
    }
}
