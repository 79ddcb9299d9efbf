//! The account-linking store on SQLite and PostgreSQL: single-use states, links, audit.

mod support;

use m365bot::db::now_millis;
use m365bot::link::store::{
    AccountLink, AuditEntry, ChatAddress, LinkStore, PendingLink, StateUse, state_hash,
};
use support::db::test_databases;

fn pending(expires_in_ms: i64) -> PendingLink {
    let now = now_millis();
    PendingLink {
        address: ChatAddress {
            platform: "teams".to_owned(),
            chat_user_id: "29:a".to_owned(),
            chat_user_name: Some("A".to_owned()),
            aad_object_id: Some("oid-a".to_owned()),
            conversation_id: "a:1".to_owned(),
            conversation_type: "personal".to_owned(),
            service_url: "https://smba.trafficmanager.net/emea/".to_owned(),
            tenant_id: "t".to_owned(),
            bot_id: "28:bot".to_owned(),
        },
        servicenow_user_sys_id: "sys-a".to_owned(),
        servicenow_user_name: "a.user".to_owned(),
        nonce: "n".to_owned(),
        created_at: now,
        expires_at: now + expires_in_ms,
        consumed_at: None,
    }
}

fn audit(action: &str, outcome: &str) -> AuditEntry {
    AuditEntry {
        action: action.to_owned(),
        outcome: outcome.to_owned(),
        actor_platform: "teams".to_owned(),
        actor_user_id: "29:a".to_owned(),
        actor_servicenow_user: Some("a.user".to_owned()),
        target_servicenow_user: Some("a.user".to_owned()),
        role: None,
        detail: None,
    }
}

#[tokio::test]
async fn a_state_is_used_once() {
    for test in test_databases().await {
        let store = LinkStore::new(&test.db);
        let fresh = pending(600_000);
        store
            .insert_pending("state-1", &fresh)
            .await
            .expect("insert");
        let now = now_millis();
        let first = store.consume("state-1", now).await.expect("consume");
        let StateUse::Fresh(found) = first else {
            panic!("{}: first use must be fresh: {first:?}", test.label);
        };
        assert_eq!(found.address, fresh.address, "{}", test.label);
        assert_eq!(found.nonce, "n");
        assert!(
            matches!(
                store.consume("state-1", now).await.expect("consume"),
                StateUse::Replayed(_)
            ),
            "{}",
            test.label
        );
        assert_eq!(
            store.consume("never-issued", now).await.expect("consume"),
            StateUse::Unknown,
            "{}",
            test.label
        );
        let raw: Vec<(String,)> = sqlx::query_as("SELECT state_hash FROM link_states")
            .fetch_all(&test.db.pool)
            .await
            .expect("rows");
        assert_eq!(raw, vec![(state_hash("state-1"),)], "{}", test.label);
    }
}

#[tokio::test]
async fn an_expired_state_is_spent() {
    for test in test_databases().await {
        let store = LinkStore::new(&test.db);
        store
            .insert_pending("old", &pending(-1))
            .await
            .expect("insert");
        let now = now_millis();
        assert!(
            matches!(
                store.consume("old", now).await.expect("consume"),
                StateUse::Expired(_)
            ),
            "{}",
            test.label
        );
        // Marked used: a second attempt is a replay, not another expiry.
        assert!(
            matches!(
                store.consume("old", now).await.expect("consume"),
                StateUse::Replayed(_)
            ),
            "{}",
            test.label
        );
        // Long-expired rows are removed when a new sign-in starts.
        sqlx::query("UPDATE link_states SET expires_at = 1")
            .execute(&test.db.pool)
            .await
            .expect("age");
        store
            .insert_pending("new", &pending(600_000))
            .await
            .expect("insert");
        assert_eq!(
            store.pending_count().await.expect("count"),
            1,
            "{}",
            test.label
        );
    }
}

#[tokio::test]
async fn links_are_replaced_and_deleted_with_their_audit() {
    for test in test_databases().await {
        let store = LinkStore::new(&test.db);
        let mut link = AccountLink {
            platform: "teams".to_owned(),
            chat_user_id: "29:a".to_owned(),
            servicenow_user_sys_id: "sys-a".to_owned(),
            servicenow_user_name: "a.user".to_owned(),
            m365_object_id: "oid-a".to_owned(),
            m365_upn: "a@contoso.com".to_owned(),
            m365_tenant_id: "t".to_owned(),
            m365_roles: vec!["Global Administrator".to_owned()],
            linked_at: 1,
            linked_by: "a.user".to_owned(),
            chat_team_id: None,
        };
        store
            .save_link(&link, &audit("link", "linked"))
            .await
            .expect("save");
        link.m365_upn = "b@contoso.com".to_owned();
        link.m365_roles = Vec::new();
        store
            .save_link(&link, &audit("link", "linked"))
            .await
            .expect("save");
        let stored = store
            .link("teams", "29:a")
            .await
            .expect("read")
            .expect("row");
        assert_eq!(stored, link, "{}", test.label);
        assert_eq!(store.links().await.expect("all").len(), 1, "{}", test.label);
        assert!(
            store
                .delete_link("teams", "29:a", &audit("unlink", "unlinked"))
                .await
                .expect("delete"),
            "{}",
            test.label
        );
        assert!(
            !store
                .delete_link("teams", "29:a", &audit("unlink", "unlinked"))
                .await
                .expect("delete"),
            "{}",
            test.label
        );
        let entries = store.recent_audit(10).await.expect("audit");
        assert_eq!(
            entries.len(),
            3,
            "{}: no audit for a no-op delete",
            test.label
        );
        assert!(store.link("teams", "29:a").await.expect("read").is_none());
    }
}
