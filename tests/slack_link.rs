//! Slack people commands end to end against the Slack, Entra ID and ServiceNow emulators:
//! `/m365 link-account` followed through the Entra sign-in to a stored link (Slack user and
//! workspace bound to the account's object id), `link-account status` and `unlink-account`,
//! the Slack e-mail rule (`slack.email_match`) refusing another person's account with nothing
//! stored, and `grant` / `revoke` with `<@U…>` mentions, refused for a non-admin.

mod support;

use std::sync::Arc;

use m365bot::link::store::LinkStore;
use m365bot::sandbox::slack::SANDBOX_TEAM_ID;
use m365bot::slack::EmailMatch;
use serde_json::{Value, json};
use support::slack::{SlackBot, sign_in_url, text_of, walk};

/// Object id of the Entra emulator's default signed-in user (`admin@<tenant>`).
const ADMIN_OID: &str = "7c1e0f4a-0000-4000-8000-000000000001";
/// The ServiceNow column links are written to (the `[link]` default).
const LINK_FIELD: &str = "u_m365_admin_account";

fn admin_upn(bot: &SlackBot) -> String {
    format!("admin@{}", bot.demo.sandbox.demo().tenant_domain)
}

/// `/m365 <text>` as `user` in `channel`: the immediate answer's text and the first message
/// posted to the response URL.
async fn say(
    bot: &SlackBot,
    user: &str,
    channel: &str,
    text: &str,
) -> (String, m365bot::sandbox::slack::SlackPosted) {
    let (answer, ticket) = bot.command(user, channel, text).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["response_type"], "ephemeral", "{}", answer.text);
    let ack = text_of(&answer.json["blocks"]);
    let posted = bot.responses(&ticket, 1).await;
    let first = posted
        .first()
        .unwrap_or_else(|| panic!("no answer to {text:?} (ack: {ack})"))
        .clone();
    (ack, first)
}

/// `/m365 link-account` in #general as U0ADMIN: the sign-in URL, posted to the user alone.
async fn link_account_url(bot: &SlackBot) -> String {
    let (ack, posted) = say(bot, "U0ADMIN", "C0GENERAL", "link-account").await;
    assert!(ack.contains("Working on"), "{ack}");
    assert_eq!(posted.via, "response_url");
    assert_eq!(
        posted.ephemeral_to.as_deref(),
        Some("U0ADMIN"),
        "the link is personal"
    );
    let url = sign_in_url(&posted.blocks)
        .unwrap_or_else(|| panic!("no sign-in link in {}", text_of(&posted.blocks)));
    assert!(
        url.starts_with(&format!("{}/auth/link/start?state=", bot.base_url)),
        "{url}"
    );
    url
}

fn servicenow_link(bot: &SlackBot) -> Option<String> {
    bot.demo
        .sandbox
        .handle()
        .sn_query("sys_user", "user_name=admin")
        .expect("sys_user")
        .first()
        .and_then(|row| row.get(LINK_FIELD))
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Messages the bot posted into a direct message.
fn direct_messages(bot: &SlackBot) -> Vec<String> {
    bot.world()
        .messages()
        .into_iter()
        .filter(|m| m.channel.starts_with('D') && m.via == "chat.postMessage")
        .map(|m| text_of(&m.blocks))
        .collect()
}

#[tokio::test]
async fn link_account_is_followed_through_the_sign_in_to_a_stored_link_then_status_and_unlink() {
    let bot = SlackBot::start_with(true, None, |_| {}).await;
    let start = link_account_url(&bot).await;
    // Nothing of it reached the channel.
    assert!(
        bot.world()
            .messages()
            .iter()
            .all(|m| m.ephemeral_to.is_some() || !m.text.contains("auth/link")),
        "the sign-in link is never posted to the channel"
    );

    let (status, page) = walk(&start).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Your Microsoft 365 account is linked"),
        "{page}"
    );
    assert!(
        page.contains("Slack"),
        "the page sends the user back to Slack: {page}"
    );

    let link = LinkStore::new(&bot.app.db)
        .link("slack", "U0ADMIN")
        .await
        .expect("readable")
        .expect("a link is stored");
    assert_eq!(link.m365_object_id, ADMIN_OID);
    assert_eq!(link.m365_upn, admin_upn(&bot));
    assert_eq!(link.chat_team_id.as_deref(), Some(SANDBOX_TEAM_ID));
    assert_eq!(link.servicenow_user_name, "admin");
    assert_eq!(servicenow_link(&bot), Some(admin_upn(&bot)));

    // The confirmation reaches the user in their direct message with the bot.
    let confirmations = bot
        .posted_where(1, |m| m.channel == "D0ADMIN" && m.via == "chat.postMessage")
        .await;
    let confirmation = text_of(&confirmations.first().expect("a confirmation").blocks);
    assert!(
        confirmation.contains("Microsoft 365 account linked"),
        "{confirmation}"
    );

    // A second use of the same link is refused.
    let (replayed, page) = walk(&start).await;
    assert!(replayed >= 400, "{page}");

    let (_, status) = say(&bot, "U0ADMIN", "C0GENERAL", "link-account status").await;
    let text = text_of(&status.blocks);
    assert!(
        text.contains("Your Microsoft 365 account is linked"),
        "{text}"
    );
    assert!(text.contains(&admin_upn(&bot)), "{text}");
    assert_eq!(status.ephemeral_to.as_deref(), Some("U0ADMIN"));

    let (_, unlinked) = say(&bot, "U0ADMIN", "C0GENERAL", "unlink-account").await;
    let text = text_of(&unlinked.blocks);
    assert!(text.contains("Microsoft 365 account unlinked"), "{text}");
    assert!(
        LinkStore::new(&bot.app.db)
            .link("slack", "U0ADMIN")
            .await
            .expect("readable")
            .is_none()
    );
    assert_eq!(servicenow_link(&bot), None, "cleared in ServiceNow too");
    let (_, again) = say(&bot, "U0ADMIN", "C0GENERAL", "link-account status").await;
    assert!(text_of(&again.blocks).contains("No Microsoft 365 account is linked"));
}

#[tokio::test]
async fn a_sign_in_that_is_not_the_slack_profile_email_is_refused_with_nothing_stored() {
    let bot = SlackBot::start_with(true, None, |_| {}).await;
    let domain = bot.demo.sandbox.demo().tenant_domain.clone();
    let start = link_account_url(&bot).await;
    // Someone else's account signs in (another person at the same browser).
    sign_in_as(&bot, ADMIN_OID, &format!("someone.else@{domain}"));
    let (status, page) = walk(&start).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("not the one of your Slack profile"), "{page}");
    assert!(page.contains(&format!("someone.else@{domain}")), "{page}");
    assert!(
        page.contains(&format!("admin@{domain}")),
        "names the Slack e-mail: {page}"
    );
    assert!(page.contains("Nothing was linked"), "{page}");
    assert!(
        LinkStore::new(&bot.app.db)
            .links()
            .await
            .expect("links")
            .is_empty(),
        "no link stored"
    );
    assert_eq!(servicenow_link(&bot), None, "ServiceNow untouched");
    // Slack says it too, with what to do, in private.
    let told = bot
        .posted_where(1, |m| m.channel == "D0ADMIN" && m.via == "chat.postMessage")
        .await;
    let text = text_of(&told.first().expect("a refusal in Slack").blocks);
    assert!(text.contains("not the one of your Slack profile"), "{text}");
    assert!(text.contains("link-account"), "says what to do: {text}");
}

/// The Entra emulator signs in `upn` with object id `oid` from now on.
fn sign_in_as(bot: &SlackBot, oid: &str, upn: &str) {
    bot.demo
        .sandbox
        .handle()
        .set_signed_in_user(m365bot::sandbox::SignedInUser {
            oid: oid.to_owned(),
            upn: upn.to_owned(),
            name: "Signed-in user".to_owned(),
            tenant_id: None,
        });
}

/// The ID token's `email` claim set to `email`.
fn email_claim(bot: &SlackBot, email: String) {
    bot.demo
        .sandbox
        .handle()
        .set_id_token_rewrite(Some(Arc::new(move |claims: &Value, _: &str| {
            let mut claims = claims.clone();
            claims["email"] = json!(email);
            support::tokens::sandbox_signed(&claims)
        })));
}

#[tokio::test]
async fn email_or_upn_accepts_the_email_claim_and_upn_only_refuses_it() {
    for (rule, linked) in [(EmailMatch::EmailOrUpn, true), (EmailMatch::UpnOnly, false)] {
        let bot =
            SlackBot::start_with(true, None, |settings| settings.slack.email_match = rule).await;
        // The account's UPN differs from the Slack e-mail; its e-mail claim is the same.
        let domain = bot.demo.sandbox.demo().tenant_domain.clone();
        sign_in_as(&bot, ADMIN_OID, &format!("cloud.admin@{domain}"));
        email_claim(&bot, admin_upn(&bot));
        let (status, page) = walk(&link_account_url(&bot).await).await;
        let stored = LinkStore::new(&bot.app.db)
            .link("slack", "U0ADMIN")
            .await
            .expect("readable");
        if linked {
            assert_eq!(status, 200, "{rule:?}: {page}");
            assert_eq!(stored.expect("linked").m365_object_id, ADMIN_OID);
        } else {
            assert_eq!(status, 403, "{rule:?}: {page}");
            assert!(page.contains("upn-only"), "{page}");
            assert!(stored.is_none(), "{rule:?}: nothing stored");
            assert_eq!(servicenow_link(&bot), None);
        }
    }
}

fn role_rows(bot: &SlackBot) -> usize {
    bot.demo
        .sandbox
        .handle()
        .sn_query("sys_user_has_role", "")
        .expect("table")
        .len()
}

#[tokio::test]
async fn grant_and_revoke_with_slack_mentions_by_an_admin_and_refused_for_others() {
    let bot = SlackBot::start().await;
    let role = "x_mioms_m365_assis.administrator";

    let (ack, granted) = say(
        &bot,
        "U0ADMIN",
        "C0GENERAL",
        "grant <@U0JANE|jane.doe> administrator",
    )
    .await;
    assert!(ack.contains("Working on"), "{ack}");
    let text = text_of(&granted.blocks);
    assert!(
        text.contains(&format!("*jane.doe* now holds *{role}*")),
        "{text}"
    );
    let after_grant = role_rows(&bot);

    // Again, with the role first and a bare mention: already held, nothing added.
    let (_, again) = say(
        &bot,
        "U0ADMIN",
        "C0GENERAL",
        "grant administrator <@U0JANE>",
    )
    .await;
    assert!(
        text_of(&again.blocks).contains("already holds"),
        "{}",
        text_of(&again.blocks)
    );
    assert_eq!(role_rows(&bot), after_grant);

    // jane.doe is no ServiceNow admin: she cannot revoke, and nothing changes.
    let (_, refused) = say(
        &bot,
        "U0JANE",
        "C0GENERAL",
        "revoke <@U0JANE> administrator",
    )
    .await;
    let text = text_of(&refused.blocks);
    assert!(text.contains("You need another ServiceNow role"), "{text}");
    assert!(text.contains("admin"), "{text}");
    assert_eq!(role_rows(&bot), after_grant, "nothing changed");

    let (_, revoked) = say(
        &bot,
        "U0ADMIN",
        "C0GENERAL",
        "revoke <@U0JANE|jane.doe> administrator",
    )
    .await;
    let text = text_of(&revoked.blocks);
    assert!(text.contains("no longer holds"), "{text}");
    assert_eq!(role_rows(&bot), after_grant - 1);

    // A mention of a user Slack does not know says so and changes nothing.
    let (_, unknown) = say(
        &bot,
        "U0ADMIN",
        "C0GENERAL",
        "grant <@U0NOBODY> insights_user",
    )
    .await;
    assert!(
        text_of(&unknown.blocks).contains("user_not_found"),
        "{}",
        text_of(&unknown.blocks)
    );
    assert_eq!(role_rows(&bot), after_grant - 1);
    assert!(direct_messages(&bot).is_empty(), "grants answer in place");
}

#[tokio::test]
async fn a_slack_link_keeps_its_workspace_on_both_databases() {
    for test in support::db::test_databases().await {
        let store = LinkStore::new(&test.db);
        let link = m365bot::link::store::AccountLink {
            platform: "slack".to_owned(),
            chat_user_id: "U0ADMIN".to_owned(),
            servicenow_user_sys_id: "6816f79cc0a8016401c5a33be04be441".to_owned(),
            servicenow_user_name: "admin".to_owned(),
            m365_object_id: ADMIN_OID.to_owned(),
            m365_upn: "admin@contoso.onmicrosoft.com".to_owned(),
            m365_tenant_id: "t".to_owned(),
            m365_roles: vec!["Global Administrator".to_owned()],
            linked_at: 1,
            linked_by: "admin".to_owned(),
            chat_team_id: Some(SANDBOX_TEAM_ID.to_owned()),
        };
        let audit = m365bot::link::store::AuditEntry {
            action: "link".to_owned(),
            outcome: "linked".to_owned(),
            actor_platform: "slack".to_owned(),
            actor_user_id: "U0ADMIN".to_owned(),
            actor_servicenow_user: Some("admin".to_owned()),
            target_servicenow_user: Some("admin".to_owned()),
            role: None,
            detail: None,
        };
        store.save_link(&link, &audit).await.expect("saved");
        let read = store
            .link("slack", "U0ADMIN")
            .await
            .expect("readable")
            .expect("stored");
        assert_eq!(read, link, "{}", test.label);
    }
}

#[tokio::test]
async fn a_slack_user_without_a_readable_email_is_told_what_to_do() {
    let bot = SlackBot::start().await;
    bot.world().set_user_email("U0ADMIN", "").expect("user");
    let (_, answer) = say(&bot, "U0ADMIN", "C0GENERAL", "link-account").await;
    let text = text_of(&answer.blocks);
    assert!(text.contains("no e-mail I can read"), "{text}");
    assert!(text.contains("users:read.email"), "{text}");
    assert!(sign_in_url(&answer.blocks).is_none(), "no sign-in link");
    assert!(
        LinkStore::new(&bot.app.db)
            .links()
            .await
            .expect("links")
            .is_empty()
    );
}
