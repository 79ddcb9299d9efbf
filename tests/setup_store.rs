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
