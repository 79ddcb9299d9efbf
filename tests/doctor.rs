//! `doctor` against the emulators: every check passes on the provisioned demo integration,
//! and each injected misconfiguration fails exactly its check with a fix a person can act on.
use std::collections::HashMap;
use std::process::Command;

use m365bot::demo::{Demo, Misconfiguration};
use m365bot::integration::Upstreams;
use m365bot::integration::doctor::{self, CheckOutcome, Status};
use m365bot::sandbox::SandboxOptions;

async fn demo() -> (Demo, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("doctor.db").display());
    let demo = Demo::start(
        SandboxOptions::default(),
        "127.0.0.1:0".parse().expect("addr"),
        &url,
    )
    .await
    .expect("the demo integration is provisioned");
    (demo, dir)
}

async fn run(demo: &Demo, repair: bool) -> HashMap<&'static str, CheckOutcome> {
    let upstreams = Upstreams::from_settings(
        &demo.settings,
        reqwest::Client::new(),
        std::sync::Arc::default(),
    );
    doctor::run(&upstreams, &demo.spec, repair)
        .await
        .into_iter()
        .map(|o| (o.id, o))
        .collect()
}

fn sn_query(
    handle: &m365bot::sandbox::SandboxHandle,
    table: &str,
    query: &str,
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    handle.sn_query(table, query).expect("known table")
}

const ALL_CHECKS: [&str; 13] = [
    "tenant",
    "outbound_app.token",
    "outbound_app.registration",
    "servicenow.oauth_provider",
    "inbound_app.token",
    "inbound_app.registration",
    "servicenow.oidc_provider",
    "servicenow.oidc_entity",
    "rest_user_app.token",
    "rest_user_app.registration",
    "servicenow.integration_user",
    "servicenow.cross_scope",
    "servicenow.app_roles",
];

fn assert_only_failures(outcomes: &HashMap<&'static str, CheckOutcome>, failing: &[&str]) {
    for id in ALL_CHECKS {
        let outcome = outcomes
            .get(id)
            .unwrap_or_else(|| panic!("check {id} missing"));
        let expected = if failing.contains(&id) {
            Status::Fail
        } else {
            Status::Pass
        };
        assert_eq!(outcome.status, expected, "{id}: {outcome:?}");
        if expected == Status::Fail {
            assert!(
                outcome.fix.as_deref().is_some_and(|fix| fix.len() > 20),
                "{id} has a fix"
            );
        }
    }
}

fn fix_of<'a>(outcomes: &'a HashMap<&'static str, CheckOutcome>, id: &str) -> &'a str {
    outcomes[id].fix.as_deref().unwrap_or_default()
}

#[tokio::test]
async fn a_provisioned_integration_passes_every_check() {
    let (demo, _dir) = demo().await;
    let outcomes = run(&demo, false).await;
    assert_eq!(outcomes.len(), ALL_CHECKS.len());
    assert_only_failures(&outcomes, &[]);
    assert!(
        outcomes["tenant"]
            .detail
            .contains("8eaef023-2b34-4da1-9baa-8bc8c9d6a490")
    );
}

#[tokio::test]
async fn a_rotated_secret_fails_the_token_check_with_the_aadsts_hint() {
    let (demo, _dir) = demo().await;
    demo.break_it(Misconfiguration::WrongSecret);
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["outbound_app.token"]);
    assert!(
        outcomes["outbound_app.token"]
            .detail
            .contains("AADSTS7000215")
    );
    assert!(
        fix_of(&outcomes, "outbound_app.token").contains("Value"),
        "tells to copy the value"
    );
}

#[tokio::test]
async fn an_expired_secret_fails_token_and_registration_checks() {
    let (demo, _dir) = demo().await;
    let rest_user = demo.spec.rest_user_app.as_ref().expect("rest user app");
    assert!(demo.sandbox.handle().expire_secrets(&rest_user.client_id));
    let outcomes = run(&demo, false).await;
    assert_only_failures(
        &outcomes,
        &["rest_user_app.token", "rest_user_app.registration"],
    );
    assert!(
        outcomes["rest_user_app.token"].detail.contains("7000222"),
        "{:?}",
        outcomes["rest_user_app.token"]
    );
    assert!(
        outcomes["rest_user_app.registration"]
            .detail
            .contains("no unexpired client secret")
    );
}

#[tokio::test]
async fn a_missing_role_fails_the_integration_user_check() {
    let (demo, _dir) = demo().await;
    demo.break_it(Misconfiguration::MissingRole);
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["servicenow.integration_user"]);
    assert!(
        outcomes["servicenow.integration_user"]
            .detail
            .contains("incident_manager")
    );
    assert!(
        fix_of(&outcomes, "servicenow.integration_user").contains("add the role incident_manager")
    );
}

#[tokio::test]
async fn v2_tokens_fail_the_inbound_checks() {
    let (demo, _dir) = demo().await;
    demo.break_it(Misconfiguration::V2Tokens);
    let outcomes = run(&demo, false).await;
    assert_only_failures(
        &outcomes,
        &["inbound_app.token", "inbound_app.registration"],
    );
    assert!(fix_of(&outcomes, "inbound_app.token").contains("requestedAccessTokenVersion"));
}

#[tokio::test]
async fn cross_scope_is_explained_and_repaired_on_request() {
    let (demo, _dir) = demo().await;
    demo.break_it(Misconfiguration::CrossScope);
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["servicenow.cross_scope"]);
    assert!(fix_of(&outcomes, "servicenow.cross_scope").contains("All application scopes"));
    let repaired = run(&demo, true).await;
    assert_eq!(repaired["servicenow.cross_scope"].status, Status::Pass);
    assert!(
        repaired["servicenow.cross_scope"]
            .detail
            .contains("repaired")
    );
    assert_only_failures(&run(&demo, false).await, &[]);
}

#[tokio::test]
async fn drifted_servicenow_records_are_reported_field_by_field() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    let providers = sn_query(
        &handle,
        "oauth_entity",
        &format!("client_id={}", demo.spec.outbound_app.client_id),
    );
    let provider = providers.first().expect("provider");
    let sys_id = provider["sys_id"].as_str().expect("sys_id").to_owned();
    handle
        .sn_update(
            "oauth_entity",
            &sys_id,
            serde_json::json!({"default_grant_type": "authorization_code"}),
        )
        .expect("update");
    let configs = sn_query(&handle, "oidc_provider_configuration", "name=Contoso Azure");
    let config_id = configs.first().expect("config")["sys_id"]
        .as_str()
        .expect("sys_id")
        .to_owned();
    handle
        .sn_update(
            "oidc_provider_configuration",
            &config_id,
            serde_json::json!({"user_claim": "azp"}),
        )
        .expect("update");
    let outcomes = run(&demo, false).await;
    assert_only_failures(
        &outcomes,
        &["servicenow.oauth_provider", "servicenow.oidc_provider"],
    );
    assert!(
        outcomes["servicenow.oauth_provider"]
            .detail
            .contains("default_grant_type")
    );
    assert!(
        outcomes["servicenow.oidc_provider"]
            .detail
            .contains("user_claim")
    );
    assert!(fix_of(&outcomes, "servicenow.oidc_provider").contains("User Claim = appid"));
}

#[tokio::test]
async fn unassigned_app_roles_and_missing_records_are_found() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    for row in sn_query(&handle, "sys_user_has_role", "") {
        let role = row["role"].as_str().unwrap_or_default().to_owned();
        let names = sn_query(&handle, "sys_user_role", &format!("sys_id={role}"));
        if names
            .first()
            .and_then(|r| r["name"].as_str())
            .is_some_and(|n| n.starts_with("x_mioms_m365_assis."))
        {
            assert!(handle.sn_delete("sys_user_has_role", row["sys_id"].as_str().expect("sys_id")));
        }
    }
    let entities = sn_query(&handle, "oauth_oidc_entity", "");
    for entity in entities {
        handle.sn_delete(
            "oauth_oidc_entity",
            entity["sys_id"].as_str().expect("sys_id"),
        );
    }
    let outcomes = run(&demo, false).await;
    assert_only_failures(
        &outcomes,
        &["servicenow.app_roles", "servicenow.oidc_entity"],
    );
    assert!(fix_of(&outcomes, "servicenow.app_roles").contains("grant @user"));
    assert!(fix_of(&outcomes, "servicenow.oidc_entity").contains("_application_inbound_api"));
}

#[tokio::test]
async fn an_unknown_tenant_fails_with_the_spelling_hint() {
    let (demo, _dir) = demo().await;
    let mut spec = demo.spec.clone();
    spec.tenant = "contsoo.onmicrosoft.com".to_owned();
    let upstreams = Upstreams::from_settings(
        &demo.settings,
        reqwest::Client::new(),
        std::sync::Arc::default(),
    );
    let outcomes = doctor::run(&upstreams, &spec, false).await;
    let tenant = outcomes
        .iter()
        .find(|o| o.id == "tenant")
        .expect("tenant check");
    assert_eq!(tenant.status, Status::Fail);
    assert!(tenant.detail.contains("90002"), "{tenant:?}");
}

#[tokio::test]
async fn wrong_bot_credentials_or_missing_access_say_what_to_configure() {
    let (demo, _dir) = demo().await;
    let mut settings = demo.settings.clone();
    settings.servicenow.password = Some("wrong".to_owned().into());
    settings.entra.graph_client_id = None;
    settings.entra.graph_client_secret = None;
    settings.bot.app_id.clear();
    let upstreams =
        Upstreams::from_settings(&settings, reqwest::Client::new(), std::sync::Arc::default());
    let outcomes: HashMap<_, _> = doctor::run(&upstreams, &demo.spec, false)
        .await
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    assert_eq!(outcomes["outbound_app.registration"].status, Status::Skip);
    assert!(fix_of(&outcomes, "outbound_app.registration").contains("graph_client_id"));
    assert_eq!(outcomes["servicenow.integration_user"].status, Status::Fail);
    assert!(fix_of(&outcomes, "servicenow.integration_user").contains("credentials"));
    assert_eq!(
        outcomes["outbound_app.token"].status,
        Status::Pass,
        "Entra checks still run"
    );
}

#[test]
fn the_sandbox_command_runs_doctor_and_sets_the_exit_status() {
    let binary = env!("CARGO_BIN_EXE_m365bot");
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("cli.db").display());
    let ok = Command::new(binary)
        .args([
            "sandbox",
            "--doctor",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &database,
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("13 checks passed, 0 failed"), "{stdout}");
    let broken = Command::new(binary)
        .args([
            "sandbox",
            "--doctor",
            "--json",
            "--break",
            "missing-role",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &database,
        ])
        .output()
        .expect("runs");
    assert_eq!(broken.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&broken.stdout).expect("JSON report");
    let failed: Vec<&str> = report
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["status"] == "fail")
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(failed, ["servicenow.integration_user"]);
    let bad = Command::new(binary)
        .args(["sandbox", "--doctor", "--break", "nonsense"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("wrong-secret"),
        "lists the choices"
    );
}

#[tokio::test]
async fn the_basic_auth_branch_is_provisioned_and_verified() {
    use m365bot::integration::provision::{ProvisionRequest, provision_basic};
    let (demo, _dir) = demo().await;
    let upstreams = Upstreams::from_settings(
        &demo.settings,
        reqwest::Client::new(),
        std::sync::Arc::default(),
    );
    let request = ProvisionRequest {
        tenant: demo.spec.tenant.clone(),
        organization_name: Some("Contoso".to_owned()),
        instance_url: demo.spec.instance_url.clone(),
        app_name_prefix: "Basic branch".to_owned(),
    };
    let (spec, log) = provision_basic(&upstreams, &request, "m365_integration")
        .await
        .expect("provisioned");
    assert!(
        log.iter()
            .any(|line| line.contains("created the integration user")),
        "{log:?}"
    );
    let outcomes: HashMap<_, _> = doctor::run(&upstreams, &spec, false)
        .await
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    assert!(
        !outcomes.contains_key("inbound_app.token"),
        "no inbound app on the basic branch"
    );
    for (id, outcome) in &outcomes {
        assert_eq!(outcome.status, Status::Pass, "{id}: {outcome:?}");
    }
    assert!(outcomes.contains_key("servicenow.basic_login"));

    // A wrong password is caught by signing in as the integration user.
    let mut wrong = spec.clone();
    wrong.integration_user_password = Some("not-the-password".to_owned().into());
    let outcomes: HashMap<_, _> = doctor::run(&upstreams, &wrong, false)
        .await
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    assert_eq!(outcomes["servicenow.basic_login"].status, Status::Fail);
    assert!(fix_of(&outcomes, "servicenow.basic_login").contains("Set Password"));
}

#[tokio::test]
async fn an_outbound_app_without_the_redirect_uri_is_reported() {
    use m365bot::upstream::graph::ApplicationUpdate;
    let (demo, _dir) = demo().await;
    let upstreams = Upstreams::from_settings(
        &demo.settings,
        reqwest::Client::new(),
        std::sync::Arc::default(),
    );
    let graph = upstreams.graph.as_ref().expect("graph configured");
    let app = graph
        .find_application_by_app_id(&demo.spec.outbound_app.client_id)
        .await
        .expect("graph")
        .expect("app exists");
    let update = ApplicationUpdate {
        display_name: None,
        redirect_uris: Some(vec!["https://elsewhere.example.com/callback".to_owned()]),
        requested_access_token_version: None,
    };
    graph
        .update_application(&app.id, &update)
        .await
        .expect("updated through Graph");
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["outbound_app.registration"]);
    assert!(
        outcomes["outbound_app.registration"]
            .detail
            .contains("oauth_redirect.do")
    );
    assert!(fix_of(&outcomes, "outbound_app.registration").contains("Add a platform > Web"));
}
