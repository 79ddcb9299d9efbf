//! Account linking end to end against the emulators: the chat command, the browser's walk
//! through the redirects (start → Entra authorize → callback → page), the checks, what is
//! stored in ServiceNow and the database, and the confirmation in the chat.

mod support;

use m365bot::link::store::LinkStore;
use m365bot::sandbox::{AuthorizeOutcome, SignedInUser};
use support::link::{
    ADMIN, BETH, JANE, LinkHarness, card_text, query_param, sign_in_url_of, signed_in,
};

const SERVICE_SUPPORT_ADMINISTRATOR: &str = "f023fd81-a637-4b56-95fd-791ac0226033";

async fn link_rows(h: &LinkHarness) -> usize {
    LinkStore::new(&h.app.app.db)
        .links()
        .await
        .expect("links")
        .len()
}

#[tokio::test]
async fn admin_links_through_the_redirect_chain() {
    let h = LinkHarness::start().await;
    let start = h.sign_in_url(ADMIN).await;
    assert!(
        start.starts_with(&format!("{}/auth/link/start?state=", h.app.base_url)),
        "{start}"
    );
    let state = query_param(&start, "state").expect("state");

    // 1. The bot's start page redirects to the Entra authorize endpoint with PKCE.
    let first = h.get(&start).await;
    assert_eq!(first.status(), 302);
    assert_eq!(
        first.headers()["referrer-policy"].to_str().expect("text"),
        "no-referrer"
    );
    let authorize = first.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let entra = &h.sandbox.urls().entra;
    assert!(authorize.starts_with(entra), "{authorize}");
    assert!(authorize.contains("/oauth2/v2.0/authorize?"), "{authorize}");
    assert_eq!(
        query_param(&authorize, "state").as_deref(),
        Some(state.as_str())
    );
    assert_eq!(
        query_param(&authorize, "client_id").as_deref(),
        Some(h.sign_in_client_id.as_str())
    );
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&authorize, "redirect_uri"),
        Some(format!("{}/auth/link/callback", h.app.base_url))
    );
    assert!(query_param(&authorize, "nonce").is_some_and(|n| !n.is_empty()));

    // 2. Entra signs the user in and redirects back with a code.
    let second = h.get(&authorize).await;
    assert_eq!(second.status(), 302);
    let callback = second.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(
        callback.starts_with(&format!("{}/auth/link/callback?", h.app.base_url)),
        "{callback}"
    );
    assert!(query_param(&callback, "code").is_some());

    // 3. The callback completes the link and shows a page.
    let page = h.get(&callback).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Your Microsoft 365 account is linked"),
        "{html}"
    );
    assert!(html.contains("return to Microsoft Teams"), "{html}");
    assert!(html.contains(ADMIN.upn), "{html}");

    // Stored in ServiceNow and in the database.
    assert_eq!(h.servicenow_link("admin").as_deref(), Some(ADMIN.upn));
    let link = h.stored_link(ADMIN).await.expect("stored");
    assert_eq!(link.m365_upn, ADMIN.upn);
    assert_eq!(link.m365_object_id, ADMIN.oid);
    assert_eq!(link.servicenow_user_name, "admin");
    assert_eq!(link.linked_by, "admin");
    assert_eq!(link.m365_tenant_id, h.sandbox.demo().tenant_id);
    assert_eq!(link.m365_roles, vec!["Global Administrator".to_owned()]);

    // Confirmed in the chat, in the conversation the command came from.
    let (request, text) = h.chat_card(1).await;
    assert_eq!(
        request.conversation_id.as_deref(),
        Some(format!("a:personal-{}", ADMIN.id).as_str())
    );
    assert!(text.contains("Microsoft 365 account linked"), "{text}");
    assert!(text.contains(ADMIN.upn), "{text}");

    // Status shows it; ServiceNow agrees.
    let status = card_text(&h.command(ADMIN, "link-account status").await);
    assert!(status.contains(ADMIN.upn), "{status}");
    assert!(status.contains("agrees"), "{status}");

    // Replaying the callback (a reload, a second tab) changes nothing and says so on the page
    // only: the chat already has its "account linked" card and gets no second one.
    let replay = h.get(&callback).await;
    assert_eq!(replay.status(), 400);
    let html = replay.text().await.expect("html");
    assert!(html.contains("already used"), "{html}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sent = h.connector.requests();
    assert_eq!(sent.len(), 1, "only the confirmation card: {sent:?}");
    assert_eq!(link_rows(&h).await, 1);

    // Nothing secret in the database.
    let pending = LinkStore::new(&h.app.app.db)
        .pending(&state)
        .await
        .expect("read")
        .expect("row");
    assert!(pending.consumed_at.is_some());
    let raw: Vec<(String,)> = sqlx::query_as("SELECT state_hash FROM link_states")
        .fetch_all(&h.app.app.db.pool)
        .await
        .expect("rows");
    assert!(raw.iter().all(|(hash,)| hash != &state && hash.len() == 64));

    // Unlink clears both places.
    let unlinked = card_text(&h.command(ADMIN, "unlink-account").await);
    assert!(unlinked.contains("unlinked"), "{unlinked}");
    assert_eq!(h.servicenow_link("admin"), None);
    assert!(h.stored_link(ADMIN).await.is_none());
    let audit = LinkStore::new(&h.app.app.db)
        .recent_audit(10)
        .await
        .expect("audit");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.outcome.as_str()))
        .collect();
    assert!(actions.contains(&("link", "linked")), "{actions:?}");
    assert!(actions.contains(&("unlink", "unlinked")), "{actions:?}");
}

#[tokio::test]
async fn only_app_administrators_may_link() {
    let h = LinkHarness::start().await;
    let reply = h.command(JANE, "link-account").await;
    let text = card_text(&reply);
    assert!(sign_in_url_of(&reply).is_none(), "{text}");
    assert!(text.contains("x_mioms_m365_assis.administrator"), "{text}");
    assert!(text.contains("grant @you administrator"), "{text}");
    assert_eq!(
        LinkStore::new(&h.app.app.db)
            .pending_count()
            .await
            .expect("count"),
        0
    );
}

#[tokio::test]
async fn cancelling_at_the_sign_in_page_stores_nothing() {
    let h = LinkHarness::start().await;
    h.sandbox
        .handle()
        .set_authorize_outcome(AuthorizeOutcome::Cancel);
    let start = h.sign_in_url(ADMIN).await;
    let (locations, status, html) = h.walk(&start).await;
    assert_eq!(locations.len(), 2, "{locations:?}");
    assert_eq!(
        query_param(&locations[1], "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(status, 400);
    assert!(html.contains("Sign-in cancelled"), "{html}");
    assert!(html.contains("Return to Microsoft Teams"), "{html}");
    let (_, text) = h.chat_card(1).await;
    assert!(text.contains("Sign-in cancelled"), "{text}");
    assert_eq!(h.servicenow_link("admin"), None);
    assert_eq!(link_rows(&h).await, 0);
}

#[tokio::test]
async fn an_account_of_another_tenant_is_refused() {
    let h = LinkHarness::start().await;
    h.sandbox.handle().set_signed_in_user(SignedInUser {
        tenant_id: Some("0b5c7d3e-1111-4222-8333-944455556666".to_owned()),
        ..signed_in(ADMIN)
    });
    let (_, status, html) = h.walk(&h.sign_in_url(ADMIN).await).await;
    assert_eq!(status, 403);
    assert!(html.contains("another organisation"), "{html}");
    assert!(
        html.contains("0b5c7d3e-1111-4222-8333-944455556666"),
        "{html}"
    );
    let (_, text) = h.chat_card(1).await;
    assert!(text.contains("another organisation"), "{text}");
    assert_eq!(h.servicenow_link("admin"), None);
    assert_eq!(link_rows(&h).await, 0);
}

#[tokio::test]
async fn a_different_person_finishing_the_sign_in_is_refused() {
    let h = LinkHarness::start().await;
    h.sandbox.handle().set_signed_in_user(signed_in(JANE));
    let (_, status, html) = h.walk(&h.sign_in_url(ADMIN).await).await;
    assert_eq!(status, 403);
    assert!(html.contains("Someone else signed in"), "{html}");
    assert!(html.contains(JANE.upn), "{html}");
    let (request, text) = h.chat_card(1).await;
    assert_eq!(
        request.conversation_id.as_deref(),
        Some(format!("a:personal-{}", ADMIN.id).as_str())
    );
    assert!(text.contains("Someone else signed in"), "{text}");
    assert_eq!(h.servicenow_link("admin"), None);
    assert_eq!(h.servicenow_link("jane.doe"), None);
    assert_eq!(link_rows(&h).await, 0);
}

#[tokio::test]
async fn an_account_without_an_admin_role_is_refused_until_it_gets_one() {
    let h = LinkHarness::start().await;
    let handle = h.sandbox.handle();
    handle.set_signed_in_user(signed_in(BETH));
    let (_, status, html) = h.walk(&h.sign_in_url(BETH).await).await;
    assert_eq!(status, 403);
    assert!(html.contains("no Microsoft 365 admin"), "{html}");
    assert!(html.contains("Service Support Administrator"), "{html}");
    assert!(html.contains("Global Administrator"), "{html}");
    let (_, text) = h.chat_card(1).await;
    assert!(text.contains("no Microsoft 365 admin"), "{text}");
    assert_eq!(h.servicenow_link("beth.anglin"), None);
    assert_eq!(link_rows(&h).await, 0);

    handle.assign_directory_role(BETH.oid, SERVICE_SUPPORT_ADMINISTRATOR);
    let (_, status, html) = h.walk(&h.sign_in_url(BETH).await).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Service Support Administrator"), "{html}");
    assert_eq!(h.servicenow_link("beth.anglin").as_deref(), Some(BETH.upn));
    let link = h.stored_link(BETH).await.expect("stored");
    assert_eq!(
        link.m365_roles,
        vec!["Service Support Administrator".to_owned()]
    );
}

#[tokio::test]
async fn without_graph_permission_the_link_is_refused() {
    let h = LinkHarness::start().await;
    h.sandbox.handle().set_directory_role_reads_denied(true);
    let (_, status, html) = h.walk(&h.sign_in_url(ADMIN).await).await;
    assert_eq!(status, 503, "{html}");
    assert!(html.contains("could not be checked"), "{html}");
    assert!(html.contains("RoleManagement.Read.Directory"), "{html}");
    assert!(h.stored_link(ADMIN).await.is_none());
    assert_eq!(link_rows(&h).await, 0);
}

#[tokio::test]
async fn the_role_check_is_skipped_only_when_switched_off() {
    let h = LinkHarness::start_with(true, "check_directory_roles = false").await;
    h.sandbox.handle().set_directory_role_reads_denied(true);
    let (_, status, html) = h.walk(&h.sign_in_url(ADMIN).await).await;
    assert_eq!(status, 200, "{html}");
    let link = h.stored_link(ADMIN).await.expect("stored");
    assert!(link.m365_roles.is_empty());
}

#[tokio::test]
async fn an_expired_link_is_refused_at_start() {
    let h = LinkHarness::start().await;
    let start = h.sign_in_url(ADMIN).await;
    sqlx::query("UPDATE link_states SET expires_at = 1")
        .execute(&h.app.app.db.pool)
        .await
        .expect("expire");
    let response = h.get(&start).await;
    assert_eq!(response.status(), 400);
    let html = response.text().await.expect("html");
    assert!(html.contains("expired"), "{html}");
    let (_, text) = h.chat_card(1).await;
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("link-account"), "{text}");
    assert_eq!(link_rows(&h).await, 0);
}

#[tokio::test]
async fn a_state_that_expires_between_start_and_callback_is_refused() {
    let h = LinkHarness::start().await;
    let start = h.sign_in_url(ADMIN).await;
    let authorize = h.get(&start).await.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let callback = h.get(&authorize).await.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    sqlx::query("UPDATE link_states SET expires_at = 1")
        .execute(&h.app.app.db.pool)
        .await
        .expect("expire");
    let response = h.get(&callback).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.expect("html").contains("expired"));
    assert_eq!(h.servicenow_link("admin"), None);
    assert_eq!(link_rows(&h).await, 0);
    // Spent: it cannot complete later either.
    let again = h.get(&callback).await;
    assert_eq!(again.status(), 400);
}

#[tokio::test]
async fn unknown_or_missing_state_gets_a_clear_page() {
    let h = LinkHarness::start().await;
    for url in [
        format!("{}/auth/link/start?state=forged", h.app.base_url),
        format!("{}/auth/link/start", h.app.base_url),
        format!("{}/auth/link/callback?code=x&state=forged", h.app.base_url),
        format!("{}/auth/link/callback?%zz", h.app.base_url),
    ] {
        let response = h.get(&url).await;
        assert_eq!(response.status(), 400, "{url}");
        let html = response.text().await.expect("html");
        assert!(html.contains("not valid"), "{url}: {html}");
        assert!(html.contains("link-account"), "{url}: {html}");
    }
    assert!(h.connector.requests().is_empty());
}

#[tokio::test]
async fn an_unknown_servicenow_column_is_a_clear_error() {
    let h = LinkHarness::start_with(false, "").await;
    let (_, status, html) = h.walk(&h.sign_in_url(ADMIN).await).await;
    assert_eq!(status, 502);
    assert!(html.contains("u_m365_admin_account"), "{html}");
    let (_, text) = h.chat_card(1).await;
    assert!(text.contains("u_m365_admin_account"), "{text}");
    assert!(text.contains("link.servicenow_field"), "{text}");
    assert_eq!(link_rows(&h).await, 0);
}

#[tokio::test]
async fn status_without_a_link_says_how_to_link() {
    let h = LinkHarness::start().await;
    let text = card_text(&h.command(ADMIN, "link-account status").await);
    assert!(
        text.contains("No Microsoft 365 account is linked"),
        "{text}"
    );
    let text = card_text(&h.command(ADMIN, "unlink-account").await);
    assert!(text.contains("Nothing to unlink"), "{text}");
}

#[tokio::test]
async fn sign_in_links_are_handed_out_in_private_only() {
    let h = LinkHarness::start().await;
    let mut event = h.message(ADMIN, "link-account");
    event.conversation_type = "channel".to_owned();
    let replies = m365bot::chat::handle(&h.app.app, event).await;
    assert!(sign_in_url_of(&replies[0]).is_none());
    assert!(card_text(&replies[0]).contains("1:1 chat"));
    assert_eq!(
        LinkStore::new(&h.app.app.db)
            .pending_count()
            .await
            .expect("count"),
        0
    );
}
