//! Chat user → ServiceNow user → roles, against the ServiceNow emulator and a fake connector.

mod support;

use m365bot::core::{Actor, ConversationAddress, EventKind, InboundEvent, Platform, Reply};
use m365bot::identity::{self, RoleNeed};
use m365bot::sandbox::{Sandbox, SandboxOptions};
use support::TestApp;
use support::connector::FakeConnector;

async fn setup() -> (Sandbox, FakeConnector, TestApp) {
    let sandbox = Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts");
    let connector = FakeConnector::start().await;
    let demo = sandbox.demo().clone();
    let toml = format!(
        "{}\n[servicenow]\ninstance_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n",
        support::connector::connector_settings_toml(&connector),
        sandbox.urls().servicenow,
        demo.servicenow_admin_user,
        demo.servicenow_admin_password,
    );
    let app = TestApp::spawn(&toml).await;
    (sandbox, connector, app)
}

fn event(connector: &FakeConnector, user_id: &str) -> InboundEvent {
    InboundEvent {
        actor: Actor {
            user_id: user_id.to_owned(),
            aad_object_id: None,
            name: None,
        },
        platform: Platform::Teams,
        conversation_id: "a:personal".to_owned(),
        conversation_type: "personal".to_owned(),
        address: ConversationAddress {
            service_url: connector.service_url(),
            tenant_id: support::TEST_TENANT_ID.to_owned(),
            bot_id: "28:bot".to_owned(),
            thread_conversation_id: "a:personal".to_owned(),
            ..ConversationAddress::default()
        },
        mentions: Vec::new(),
        kind: EventKind::Message("setup".to_owned()),
    }
}

fn card_text(reply: &Reply) -> String {
    let Reply::Card { data, .. } = reply;
    format!("{} {} {}", data["title"], data["text"], data["next_step"])
}

#[tokio::test]
async fn admin_is_resolved_by_email_and_holds_admin() {
    let (_sandbox, connector, app) = setup().await;
    connector.add_member(
        "29:admin",
        "System Administrator",
        "admin@contoso.onmicrosoft.com",
        "7c1e0f4a-0000-4000-8000-000000000001",
    );
    let user = identity::require(
        &app.app,
        &event(&connector, "29:admin"),
        RoleNeed::ServiceNowAdmin,
    )
    .await
    .expect("admin may");
    assert_eq!(user.user_name, "admin");
    assert!(user.has_role("admin"));
    // A second check reuses the member lookup.
    identity::require(
        &app.app,
        &event(&connector, "29:admin"),
        RoleNeed::ServiceNowAdmin,
    )
    .await
    .expect("admin may");
    assert_eq!(connector.member_request_count(), 1);
}

#[tokio::test]
async fn user_without_the_role_gets_a_card_naming_it() {
    let (_sandbox, connector, app) = setup().await;
    connector.add_member(
        "29:jane",
        "Jane Doe",
        "jane.doe@contoso.onmicrosoft.com",
        "7c1e0f4a-0000-4000-8000-000000000002",
    );
    let refusal = identity::require(
        &app.app,
        &event(&connector, "29:jane"),
        RoleNeed::ServiceNowAdmin,
    )
    .await
    .expect_err("jane is no admin");
    let text = card_text(&refusal);
    assert!(text.contains("**admin**"), "{text}");
    assert!(text.contains("jane.doe"), "{text}");
    // Jane holds insights_user, so she may subscribe.
    let jane = identity::require(
        &app.app,
        &event(&connector, "29:jane"),
        RoleNeed::InsightsOrAdministrator,
    )
    .await
    .expect("jane is an insights user");
    assert!(jane.has_role("x_mioms_m365_assis.insights_user"));
    let refusal = identity::require(
        &app.app,
        &event(&connector, "29:jane"),
        RoleNeed::AppAdministrator,
    )
    .await
    .expect_err("jane is no app administrator");
    assert!(card_text(&refusal).contains("x_mioms_m365_assis.administrator"));
}

#[tokio::test]
async fn unknown_email_and_unknown_member_are_explained() {
    let (_sandbox, connector, app) = setup().await;
    connector.add_member("29:ghost", "Ghost", "ghost@contoso.onmicrosoft.com", "x");
    let refusal = identity::require(
        &app.app,
        &event(&connector, "29:ghost"),
        RoleNeed::ServiceNowAdmin,
    )
    .await
    .expect_err("no such user");
    let text = card_text(&refusal);
    assert!(text.contains("ghost@contoso.onmicrosoft.com"), "{text}");
    let refusal = identity::require(
        &app.app,
        &event(&connector, "29:nobody"),
        RoleNeed::ServiceNowAdmin,
    )
    .await
    .expect_err("not a member");
    assert!(card_text(&refusal).contains("could not find out who you are"));
}

#[tokio::test]
async fn two_users_with_one_email_are_refused_and_locked_users_skipped() {
    let (sandbox, connector, app) = setup().await;
    // A second active user claims Beth's e-mail (e-mail is not unique in ServiceNow).
    sandbox
        .handle()
        .sn_insert(
            "sys_user",
            serde_json::json!({
                "user_name": "beth.impostor",
                "name": "Beth Impostor",
                "email": "beth.anglin@contoso.onmicrosoft.com",
            }),
        )
        .expect("insert");
    connector.add_member(
        "29:beth",
        "Beth Anglin",
        "beth.anglin@contoso.onmicrosoft.com",
        "7c1e0f4a-0000-4000-8000-000000000004",
    );
    let refusal = identity::require(
        &app.app,
        &event(&connector, "29:beth"),
        RoleNeed::AppAdministrator,
    )
    .await
    .expect_err("ambiguous e-mail");
    let text = card_text(&refusal);
    assert!(
        text.contains("Two ServiceNow users have this e-mail"),
        "{text}"
    );

    // A locked-out user (or an inactive one) is never matched.
    sandbox
        .handle()
        .sn_insert(
            "sys_user",
            serde_json::json!({
                "user_name": "locked.admin",
                "email": "locked.admin@contoso.onmicrosoft.com",
                "locked_out": "true",
            }),
        )
        .expect("insert");
    assert!(sandbox.handle().sn_grant_role("locked.admin", "admin"));
    connector.add_member(
        "29:locked",
        "Locked Admin",
        "locked.admin@contoso.onmicrosoft.com",
        "7c1e0f4a-0000-4000-8000-000000000009",
    );
    let refusal = identity::require(
        &app.app,
        &event(&connector, "29:locked"),
        RoleNeed::ServiceNowAdmin,
    )
    .await
    .expect_err("locked out");
    assert!(
        card_text(&refusal).contains("No ServiceNow user matches"),
        "{}",
        card_text(&refusal)
    );
}

#[tokio::test]
async fn a_stored_link_beats_the_email() {
    use m365bot::link::store::{AccountLink, AuditEntry, LinkStore};
    let (sandbox, connector, app) = setup().await;
    let beth = sandbox
        .handle()
        .sn_query("sys_user", "user_name=beth.anglin")
        .and_then(|rows| rows.into_iter().next())
        .and_then(|row| {
            row.get("sys_id")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .expect("beth");
    sandbox
        .handle()
        .sn_insert(
            "sys_user",
            serde_json::json!({
                "user_name": "beth.impostor",
                "email": "beth.anglin@contoso.onmicrosoft.com",
            }),
        )
        .expect("insert");
    let oid = "7c1e0f4a-0000-4000-8000-000000000004";
    connector.add_member(
        "29:beth",
        "Beth Anglin",
        "beth.anglin@contoso.onmicrosoft.com",
        oid,
    );
    LinkStore::new(&app.app.db)
        .save_link(
            &AccountLink {
                platform: "teams".to_owned(),
                chat_user_id: "29:beth".to_owned(),
                servicenow_user_sys_id: beth,
                servicenow_user_name: "beth.anglin".to_owned(),
                m365_object_id: oid.to_owned(),
                m365_upn: "beth@contoso.onmicrosoft.com".to_owned(),
                m365_tenant_id: support::TEST_TENANT_ID.to_owned(),
                m365_roles: Vec::new(),
                linked_at: 1,
                linked_by: "beth.anglin".to_owned(),
            },
            &AuditEntry {
                action: "link".to_owned(),
                outcome: "linked".to_owned(),
                actor_platform: "teams".to_owned(),
                actor_user_id: "29:beth".to_owned(),
                actor_servicenow_user: Some("beth.anglin".to_owned()),
                target_servicenow_user: None,
                role: None,
                detail: None,
            },
        )
        .await
        .expect("link saved");
    let user = identity::require(
        &app.app,
        &event(&connector, "29:beth"),
        RoleNeed::AppAdministrator,
    )
    .await
    .expect("the linked user");
    assert_eq!(user.user_name, "beth.anglin");
}

#[test]
fn lookup_values_refuse_query_syntax() {
    assert!(identity::is_lookup_value("beth.anglin@contoso.com"));
    for bad in ["a^ORactive=true", "a\nb", "JavaScript:gs.log(1)", ""] {
        assert!(!identity::is_lookup_value(bad), "{bad:?}");
    }
}
