//! `grant`, `revoke` and `roles` against the ServiceNow emulator: idempotent, audited, only
//! for ServiceNow admins; users named by mention, e-mail or user name.

mod support;

use m365bot::core::{EventKind, Mention};
use m365bot::link::store::LinkStore;
use support::link::{ADMIN, FRED, JANE, LinkHarness, card_text};

const INSIGHTS: &str = "x_mioms_m365_assis.insights_user";
const ADMINISTRATOR: &str = "x_mioms_m365_assis.administrator";

fn grants(h: &LinkHarness, user_name: &str, role: &str) -> usize {
    h.sandbox
        .handle()
        .sn_query(
            "sys_user_has_role",
            &format!("user.user_name={user_name}^role.name={role}"),
        )
        .expect("table")
        .len()
}

#[tokio::test]
async fn grant_is_idempotent_and_revoke_undoes_it() {
    let h = LinkHarness::start().await;
    assert_eq!(grants(&h, "abel.tuter", INSIGHTS), 0);

    let text = card_text(
        &h.command(
            ADMIN,
            "grant abel.tuter@contoso.onmicrosoft.com insights_user",
        )
        .await,
    );
    assert!(text.contains("now holds"), "{text}");
    assert!(text.contains("abel.tuter"), "{text}");
    assert_eq!(grants(&h, "abel.tuter", INSIGHTS), 1);

    let text = card_text(&h.command(ADMIN, "grant abel.tuter insights_user").await);
    assert!(text.contains("already holds"), "{text}");
    assert_eq!(grants(&h, "abel.tuter", INSIGHTS), 1, "no second row");

    let text = card_text(&h.command(ADMIN, "revoke abel.tuter insights_user").await);
    assert!(text.contains("no longer holds"), "{text}");
    assert_eq!(grants(&h, "abel.tuter", INSIGHTS), 0);

    let text = card_text(&h.command(ADMIN, "revoke abel.tuter insights_user").await);
    assert!(text.contains("does not hold"), "{text}");

    let audit = LinkStore::new(&h.app.app.db)
        .recent_audit(10)
        .await
        .expect("audit");
    let outcomes: Vec<&str> = audit.iter().rev().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["granted", "already_held", "revoked", "not_held"]);
    assert!(
        audit
            .iter()
            .all(|a| a.actor_servicenow_user.as_deref() == Some("admin")
                && a.target_servicenow_user.as_deref() == Some("abel.tuter")
                && a.role.as_deref() == Some(INSIGHTS))
    );
}

#[tokio::test]
async fn a_mentioned_user_is_resolved_through_teams() {
    let h = LinkHarness::start().await;
    let event = h.event(
        ADMIN,
        EventKind::Message("grant <at>Fred Luddy</at> administrator".to_owned()),
        vec![Mention {
            user_id: FRED.id.to_owned(),
            name: Some(FRED.name.to_owned()),
            text: "<at>Fred Luddy</at>".to_owned(),
        }],
    );
    let replies = m365bot::chat::handle(&h.app.app, event).await;
    let text = card_text(&replies[0]);
    assert!(text.contains("**fred.luddy** now holds"), "{text}");
    assert!(text.contains(ADMINISTRATOR), "{text}");
    assert_eq!(grants(&h, "fred.luddy", ADMINISTRATOR), 1);
    // The card lists the holders of both roles.
    assert!(text.contains("beth.anglin"), "{text}");
    assert!(text.contains("jane.doe"), "{text}");
}

#[tokio::test]
async fn only_servicenow_admins_may_grant() {
    let h = LinkHarness::start().await;
    let text = card_text(&h.command(JANE, "grant fred.luddy insights_user").await);
    assert!(text.contains("**admin**"), "{text}");
    assert_eq!(grants(&h, "fred.luddy", INSIGHTS), 0);
    let text = card_text(&h.command(JANE, "roles").await);
    assert!(text.contains("**admin**"), "{text}");
}

#[tokio::test]
async fn unknown_users_are_explained() {
    let h = LinkHarness::start().await;
    let text = card_text(
        &h.command(ADMIN, "grant nobody@contoso.onmicrosoft.com insights_user")
            .await,
    );
    assert!(text.contains("No ServiceNow user matches"), "{text}");
    assert!(text.contains("nobody@contoso.onmicrosoft.com"), "{text}");
    let text = card_text(&h.command(ADMIN, "grant two words insights_user").await);
    assert!(text.contains("Whom do you mean"), "{text}");
}

#[tokio::test]
async fn roles_lists_the_holders_of_both_roles() {
    let h = LinkHarness::start().await;
    let text = card_text(&h.command(ADMIN, "roles").await);
    assert!(text.contains(INSIGHTS), "{text}");
    assert!(text.contains(ADMINISTRATOR), "{text}");
    assert!(text.contains("jane.doe"), "{text}");
    assert!(text.contains("beth.anglin"), "{text}");
    assert!(!text.contains("fred.luddy"), "{text}");
}
