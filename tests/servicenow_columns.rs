//! ServiceNow columns are resolved, never guessed, and nothing is written that a lookup did not
//! select: setup and `doctor` against an emulated instance with the verified Zurich names,
//! with the unverified columns renamed (labels kept), and with records that are not the
//! integration's (the company's SSO OIDC provider, another OAuth provider).
use std::collections::HashMap;

use m365bot::demo::{Demo, Misconfiguration};
use m365bot::integration::doctor::{self, CheckOutcome, Status};
use m365bot::integration::provision::{ProvisionRequest, provision_aad};
use m365bot::integration::schema;
use m365bot::integration::{IntegrationSpec, Upstreams};
use m365bot::sandbox::servicenow::{
    DECOY_OAUTH_PROVIDER_CLIENT_ID, DECOY_OIDC_ENTITY_CLIENT_ID, DECOY_OIDC_PROVIDER_SUFFIX,
};
use m365bot::sandbox::{SandboxHandle, SandboxOptions};
use m365bot::upstream::servicenow::{CheckedQuery, ServiceNowError};
use serde_json::{Map, Value};

type Row = Map<String, Value>;

async fn fresh(options: SandboxOptions) -> (Demo, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("columns.db").display());
    let demo = Demo::start_with(options, "127.0.0.1:0".parse().expect("addr"), &url, true)
        .await
        .expect("sandbox");
    (demo, dir)
}

fn upstreams(demo: &Demo) -> Upstreams {
    Upstreams::from_settings(
        &demo.settings,
        reqwest::Client::new(),
        std::sync::Arc::default(),
    )
}

fn request(demo: &Demo) -> ProvisionRequest {
    ProvisionRequest {
        tenant: demo.sandbox.demo().tenant_domain.clone(),
        organization_name: Some("Contoso".to_owned()),
        instance_url: url::Url::parse(&demo.sandbox.urls().servicenow).expect("url"),
        app_name_prefix: "Microsoft 365 support".to_owned(),
    }
}

/// Every record of the tables setup writes, by sys_id.
fn snapshot(handle: &SandboxHandle) -> HashMap<String, Row> {
    [
        "oauth_entity",
        "oidc_provider_configuration",
        "sys_user",
        "sys_db_object",
    ]
    .iter()
    .flat_map(|table| handle.sn_records(table).expect("table"))
    .map(|row| {
        let sys_id = row["sys_id"].as_str().expect("sys_id").to_owned();
        (sys_id, row)
    })
    .collect()
}

async fn doctor(demo: &Demo, spec: &IntegrationSpec) -> HashMap<&'static str, CheckOutcome> {
    doctor::run(&upstreams(demo), spec, false)
        .await
        .into_iter()
        .map(|o| (o.id, o))
        .collect()
}

fn assert_all_pass(outcomes: &HashMap<&'static str, CheckOutcome>) {
    assert!(outcomes.len() >= 13, "{outcomes:?}");
    for (id, outcome) in outcomes {
        assert_eq!(outcome.status, Status::Pass, "{id}: {outcome:?}");
    }
}

async fn setup_leaves_other_records_unchanged(options: SandboxOptions) {
    let (demo, _dir) = fresh(options).await;
    let handle = demo.sandbox.handle();
    let before = snapshot(&handle);
    let decoy_name = format!("Contoso{DECOY_OIDC_PROVIDER_SUFFIX}");
    assert_eq!(
        handle
            .sn_query("oidc_provider_configuration", &format!("name={decoy_name}"))
            .expect("table")
            .len(),
        1,
        "the company's SSO provider configuration comes first"
    );
    let upstreams = upstreams(&demo);
    let (spec, log) = provision_aad(&upstreams, &request(&demo))
        .await
        .expect("provisioned");
    assert!(
        log.iter()
            .any(|line| line == "created the OIDC provider configuration"),
        "{log:?}"
    );
    // Twice: the second run finds and reuses the bot's own records only.
    drop(spec);
    let (spec, log) = provision_aad(&upstreams, &request(&demo))
        .await
        .expect("provisioned again");
    assert!(
        log.iter()
            .any(|line| line.starts_with("reused") && line.contains("OIDC provider configuration")),
        "{log:?}"
    );
    let after = snapshot(&handle);
    for (sys_id, row) in &before {
        assert_eq!(after.get(sys_id), Some(row), "record {sys_id} changed");
    }
    let configurations = handle
        .sn_records("oidc_provider_configuration")
        .expect("table");
    assert_eq!(configurations.len(), 2, "{configurations:?}");
    let entities = handle.sn_records("oauth_oidc_entity").expect("table");
    let decoy_entity = entities
        .iter()
        .find(|e| e["client_id"] == DECOY_OIDC_ENTITY_CLIENT_ID)
        .expect("decoy entity");
    assert_eq!(decoy_entity["sys_mod_count"], "0");
    assert!(
        handle
            .sn_records("oauth_entity")
            .expect("table")
            .iter()
            .any(|e| e["client_id"] == DECOY_OAUTH_PROVIDER_CLIENT_ID && e["sys_mod_count"] == "0")
    );
    assert_all_pass(&doctor(&demo, &spec).await);
}

#[tokio::test]
async fn setup_beside_the_companys_sso_provider_creates_its_own_and_changes_nothing_else() {
    setup_leaves_other_records_unchanged(SandboxOptions {
        servicenow_decoys: true,
        ..SandboxOptions::default()
    })
    .await;
}

#[tokio::test]
async fn setup_and_doctor_work_with_renamed_unverified_columns() {
    setup_leaves_other_records_unchanged(SandboxOptions {
        servicenow_decoys: true,
        servicenow_renamed_columns: true,
        ..SandboxOptions::default()
    })
    .await;
}

#[tokio::test]
async fn doctor_reads_renamed_columns_by_label_and_repairs_through_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("renamed.db").display());
    let options = SandboxOptions {
        servicenow_renamed_columns: true,
        servicenow_decoys: true,
        ..SandboxOptions::default()
    };
    let demo = Demo::start(options, "127.0.0.1:0".parse().expect("addr"), &url)
        .await
        .expect("provisioned");
    assert_all_pass(&doctor(&demo, &demo.spec).await);
    demo.break_it(Misconfiguration::CrossScope);
    let broken = doctor(&demo, &demo.spec).await;
    let cross_scope = &broken["servicenow.cross_scope"];
    assert_eq!(cross_scope.status, Status::Fail, "{cross_scope:?}");
    assert!(
        cross_scope.detail.contains("package_private"),
        "{cross_scope:?}"
    );
    let repaired = doctor::run(&upstreams(&demo), &demo.spec, true).await;
    assert!(
        repaired
            .iter()
            .any(|o| o.id == "servicenow.cross_scope" && o.detail.contains("repaired"))
    );
    let row = demo
        .sandbox
        .handle()
        .sn_query("sys_db_object", "name=oauth_entity")
        .expect("table")
        .remove(0);
    assert_eq!(row["u_read_access"], "true");
    assert_eq!(row["u_access"], "public");
    assert_all_pass(&doctor(&demo, &demo.spec).await);
}

#[tokio::test]
async fn a_condition_the_instance_ignores_is_caught_before_anything_is_used() {
    // A column resolved on one instance, sent to another that names it differently: the
    // instance ignores the condition and answers with every row; the client refuses them.
    let (verified, _a) = fresh(SandboxOptions::default()).await;
    let (renamed, _b) = fresh(SandboxOptions {
        servicenow_renamed_columns: true,
        ..SandboxOptions::default()
    })
    .await;
    let on_verified = upstreams(&verified);
    let table = schema::load(
        on_verified.servicenow.as_ref().expect("servicenow"),
        &schema::SYS_DB_OBJECT,
    )
    .await
    .expect("resolved");
    assert_eq!(table.name("read_access"), Some("read_access"));
    let query = table.lookup("read_access", "false").expect("query");
    let on_renamed = upstreams(&renamed);
    let client = on_renamed.servicenow.as_ref().expect("servicenow");
    let err = client.find_one(&query, &[]).await.expect_err("refused");
    assert!(
        matches!(err, ServiceNowError::QueryNotApplied { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("ignored a condition"), "{err}");
    let resolved = schema::load(client, &schema::SYS_DB_OBJECT)
        .await
        .expect("resolved by label");
    assert_eq!(resolved.name("read_access"), Some("u_read_access"));
    assert_eq!(resolved.name("access"), Some("u_access"));
    let readable = client
        .find_checked(
            &resolved.lookup("read_access", "true").expect("query"),
            &[],
            None,
        )
        .await
        .expect("rows");
    assert!(!readable.is_empty());
}

#[tokio::test]
async fn two_records_with_the_guides_name_refuse_the_update() {
    let (demo, _dir) = fresh(SandboxOptions::default()).await;
    let handle = demo.sandbox.handle();
    for claim in ["sub", "oid"] {
        handle
            .sn_insert(
                "oidc_provider_configuration",
                serde_json::json!({"name": "Contoso Azure", "user_claim": claim}),
            )
            .expect("inserted");
    }
    let before = snapshot(&handle);
    let err = provision_aad(&upstreams(&demo), &request(&demo))
        .await
        .expect_err("ambiguous");
    assert!(err.message.contains("2 records"), "{err}");
    assert!(err.message.contains("exactly one"), "{err}");
    let after = snapshot(&handle);
    for (sys_id, row) in &before {
        assert_eq!(after.get(sys_id), Some(row), "record {sys_id} changed");
    }
    let table = schema::load(
        upstreams(&demo).servicenow.as_ref().expect("servicenow"),
        &schema::OIDC_PROVIDER_CONFIGURATION,
    )
    .await
    .expect("resolved");
    assert!(
        CheckedQuery::on("oidc_provider_configuration")
            .eq(
                table.column("name").expect("name"),
                "javascript:gs.getUserID()"
            )
            .is_err()
    );
}

#[tokio::test]
async fn a_column_the_instance_does_not_describe_is_a_clear_failure_not_a_guess() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("unresolved.db").display());
    let demo = Demo::start(
        SandboxOptions::default(),
        "127.0.0.1:0".parse().expect("addr"),
        &url,
    )
    .await
    .expect("provisioned");
    let handle = demo.sandbox.handle();
    // An instance whose dictionary has no "User Claim" column under any known name or label.
    let entries = handle
        .sn_query(
            "sys_dictionary",
            "name=oidc_provider_configuration^element=user_claim",
        )
        .expect("table");
    assert_eq!(entries.len(), 1);
    assert!(handle.sn_delete(
        "sys_dictionary",
        entries[0]["sys_id"].as_str().expect("sys_id")
    ));
    let before = snapshot(&handle);
    let outcomes = doctor(&demo, &demo.spec).await;
    let check = &outcomes["servicenow.oidc_provider"];
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(
        check.detail.contains("oidc_provider_configuration"),
        "{check:?}"
    );
    assert!(check.detail.contains("\"User Claim\""), "{check:?}");
    assert!(check.detail.contains("user_claim"), "{check:?}");
    let fix = check.fix.as_deref().unwrap_or_default();
    assert!(fix.contains("by hand"), "{fix}");
    assert!(fix.contains("oidc_provider_configuration.list"), "{fix}");
    assert_eq!(outcomes["servicenow.oauth_provider"].status, Status::Pass);
    let err = provision_aad(&upstreams(&demo), &request(&demo))
        .await
        .expect_err("setup stops at the unresolved column");
    assert!(err.message.contains("\"User Claim\""), "{err}");
    let after = snapshot(&handle);
    for (sys_id, row) in &before {
        if row.get("sys_class_name").and_then(Value::as_str) == Some("oauth_entity") {
            // The outbound provider step ran before and may have been corrected; it is the
            // bot's own record, found by its client id.
            continue;
        }
        assert_eq!(after.get(sys_id), Some(row), "record {sys_id} changed");
    }
}
