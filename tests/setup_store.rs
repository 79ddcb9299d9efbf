//! The setup store on SQLite and PostgreSQL: one active setup, versioned writes that let
//! exactly one writer through, expiry that drops secrets, the audit log.

mod support;

use m365bot::setup::state::Step;
use m365bot::setup::store::{self, AuditEntry, status};
use support::db::test_databases;

#[tokio::test]
async fn versioned_writes_one_active_setup_expiry_and_audit() {
    for test_db in test_databases().await {
        let label = test_db.label;
        let db = &test_db.db;
        let row = store::new_row(
            "admin (29:admin)",
            Some("a:1".into()),
            Some("http://x/".into()),
        );
        assert!(store::insert(db, &row).await.expect("insert"), "{label}");
        let second = store::new_row("admin (29:other)", None, None);
        assert!(
            !store::insert(db, &second).await.expect("insert"),
            "{label}: one active setup only"
        );
        let active = store::active(db).await.expect("read").expect("active");
        assert_eq!(active.setup_id, row.setup_id, "{label}");
        assert_eq!(active.version, 1);

        let mut next = active.wizard.clone();
        next.step = Step::Environment;
        let version =
            store::compare_and_set(db, &row.setup_id, 1, &next, Some("sealed"), status::ACTIVE)
                .await
                .expect("cas");
        assert_eq!(version, Some(2), "{label}");
        // The same version again (a double click) changes nothing.
        let mut other = next.clone();
        other.step = Step::Cancelled;
        assert_eq!(
            store::compare_and_set(db, &row.setup_id, 1, &other, None, status::CANCELLED)
                .await
                .expect("cas"),
            None,
            "{label}"
        );
        let stored = store::get(db, &row.setup_id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(stored.wizard.step, Step::Environment, "{label}");
        assert_eq!(stored.sealed_secrets.as_deref(), Some("sealed"));

        for (i, action) in ["start", "agree"].iter().enumerate() {
            store::audit(
                db,
                &AuditEntry {
                    setup_id: row.setup_id.clone(),
                    at: 1000 + i as i64,
                    actor: "admin".into(),
                    action: (*action).into(),
                    outcome: "ok".into(),
                    detail: String::new(),
                },
            )
            .await
            .expect("audit");
        }
        let log = store::audit_log(db, &row.setup_id, 10).await.expect("log");
        assert_eq!(
            log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["start", "agree"],
            "{label}"
        );

        // Idle past the cutoff: expired, secrets dropped, the slot free again.
        let expired = store::expire_idle(db, m365bot::db::now_millis() + 1)
            .await
            .expect("expire");
        assert_eq!(expired, vec![row.setup_id.clone()], "{label}");
        let stored = store::get(db, &row.setup_id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(stored.status, status::EXPIRED);
        assert_eq!(stored.sealed_secrets, None);
        assert!(store::active(db).await.expect("read").is_none());
        assert!(
            store::insert(db, &second).await.expect("insert"),
            "{label}: a new setup may start"
        );
        assert!(store::latest_completed(db).await.expect("read").is_none());
        assert!(
            store::compare_and_set(db, &second.setup_id, 1, &next, None, status::COMPLETED)
                .await
                .expect("cas")
                .is_some()
        );
        assert_eq!(
            store::latest_completed(db)
                .await
                .expect("read")
                .map(|r| r.setup_id),
            Some(second.setup_id.clone()),
            "{label}"
        );
    }
}

#[tokio::test]
async fn reveal_links_are_hashed_single_use_expiring_and_revocable() {
    use m365bot::link::store::state_hash;
    use m365bot::setup::reveal::{self, Binding, purpose};
    for test_db in test_databases().await {
        let label = test_db.label;
        let db = &test_db.db;
        let admin = Binding {
            oid: Some("7C1E0F4A-0000-4000-8000-000000000001".into()),
            login: None,
            label: "admin (29:admin)".into(),
        };
        let fred = Binding {
            oid: None,
            login: Some("Fred.Luddy@contoso.com".into()),
            label: "Fred Luddy".into(),
        };
        let own = reveal::issue(db, "s1", purpose::SETUP_ADMIN, &admin)
            .await
            .expect("issue");
        let handed = reveal::issue(db, "s1", purpose::HANDOVER, &fred)
            .await
            .expect("issue");
        let links = reveal::links_of(db, "s1").await.expect("links");
        assert_eq!(links.len(), 2, "{label}");
        for link in &links {
            assert_ne!(link.token_hash, own, "{label}: never the token itself");
            assert_eq!(link.token_hash.len(), 64, "{label}");
            assert_eq!(link.expires_at - link.created_at, 10 * 60_000, "{label}");
        }
        let stored_fred = links
            .iter()
            .find(|l| l.purpose == purpose::HANDOVER)
            .expect("hand-over link");
        assert_eq!(
            stored_fred.binding.login.as_deref(),
            Some("fred.luddy@contoso.com"),
            "{label}"
        );
        let now = m365bot::db::now_millis();
        // Single use, first writer wins.
        assert!(
            reveal::mark_used(db, &state_hash(&own), now, "admin@contoso.com")
                .await
                .expect("use"),
            "{label}"
        );
        assert!(
            !reveal::mark_used(db, &state_hash(&own), now, "admin@contoso.com")
                .await
                .expect("use"),
            "{label}: second use refused"
        );
        // Expiry is enforced by the write itself.
        assert!(
            !reveal::mark_used(db, &state_hash(&handed), now + 11 * 60_000, "fred")
                .await
                .expect("use"),
            "{label}: expired"
        );
        // Revoking touches only unused hand-over links.
        assert_eq!(
            reveal::revoke_handover(db, "s1").await.expect("revoke"),
            1,
            "{label}"
        );
        assert!(
            !reveal::mark_used(db, &state_hash(&handed), now, "fred")
                .await
                .expect("use"),
            "{label}: revoked"
        );
        let links = reveal::links_of(db, "s1").await.expect("links");
        let viewed: Vec<_> = links.iter().filter_map(|l| l.viewed_by.clone()).collect();
        assert_eq!(viewed, vec!["admin@contoso.com".to_owned()], "{label}");
    }
}
