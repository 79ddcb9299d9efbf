//! `doctor` against the emulators: every check passes on the provisioned demo integration,
//! and each injected misconfiguration fails exactly its check with a fix a person can act on.
use std::collections::HashMap;
use std::process::Command;

use m365bot::demo::{Demo, Misconfiguration};
use m365bot::integration::Upstreams;
use m365bot::integration::doctor::{self, CheckOutcome, Status};
use m365bot::sandbox::{Emulator, FaultConfig, SandboxOptions};

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

const ALL_CHECKS: [&str; 17] = [
    "tenant",
    "graph.permissions",
    "servicenow.reachable",
    "servicenow.app_installed",
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
    "servicenow.inbound_flow",
    "servicenow.cross_scope",
    "servicenow.app_roles",
];

fn assert_only_failures(outcomes: &HashMap<&'static str, CheckOutcome>, failing: &[&str]) {
    assert_outcomes(outcomes, failing, &[]);
}

/// Exactly `failing` fail (each with a fix), exactly `skipped` are skipped because a
/// prerequisite failed (each naming it), every other check passes.
fn assert_outcomes(
    outcomes: &HashMap<&'static str, CheckOutcome>,
    failing: &[&str],
    skipped: &[&str],
) {
    assert_eq!(outcomes.len(), ALL_CHECKS.len(), "{outcomes:#?}");
    for id in ALL_CHECKS {
        let outcome = outcomes
            .get(id)
            .unwrap_or_else(|| panic!("check {id} missing"));
        let expected = if failing.contains(&id) {
            Status::Fail
        } else if skipped.contains(&id) {
            Status::Skip
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
        if expected == Status::Skip {
            let blocker = outcome
                .blocked_by
                .unwrap_or_else(|| panic!("{id}: {outcome:?}"));
            assert!(failing.contains(&blocker), "{id} names a failed check");
            assert!(outcome.detail.contains(blocker), "{outcome:?}");
        }
    }
    let outcomes: Vec<CheckOutcome> = outcomes.values().cloned().collect();
    assert_eq!(
        doctor::has_failures(&outcomes),
        !failing.is_empty(),
        "exit status follows the failures"
    );
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
    assert_outcomes(
        &outcomes,
        &["rest_user_app.token", "rest_user_app.registration"],
        &["servicenow.inbound_flow"],
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
        &[
            "inbound_app.token",
            "inbound_app.registration",
            "servicenow.inbound_flow",
        ],
    );
    assert!(fix_of(&outcomes, "inbound_app.token").contains("requestedAccessTokenVersion"));
    assert!(
        outcomes["servicenow.inbound_flow"]
            .detail
            .contains("not 1.0"),
        "{:?}",
        outcomes["servicenow.inbound_flow"]
    );
    assert!(fix_of(&outcomes, "servicenow.inbound_flow").contains("requestedAccessTokenVersion"));
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
    let configs = sn_query(
        &handle,
        "oidc_provider_configuration",
        "oidc_provider=Contoso Azure",
    );
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
        &[
            "servicenow.oauth_provider",
            "servicenow.oidc_provider",
            "servicenow.inbound_flow",
        ],
    );
    let flow = &outcomes["servicenow.inbound_flow"];
    assert!(
        flow.detail.contains("401") && flow.detail.contains("because of servicenow.oidc_provider"),
        "the refusal is explained by the user claim: {flow:?}"
    );
    assert!(fix_of(&outcomes, "servicenow.inbound_flow").contains("User Claim = appid"));
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
        &[
            "servicenow.app_roles",
            "servicenow.oidc_entity",
            "servicenow.inbound_flow",
        ],
    );
    assert!(
        outcomes["servicenow.inbound_flow"]
            .detail
            .contains("because of servicenow.oidc_entity")
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
    let outcomes: HashMap<_, _> = doctor::run(&upstreams, &spec, false)
        .await
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    let tenant = &outcomes["tenant"];
    assert!(tenant.detail.contains("90002"), "{tenant:?}");
    assert_outcomes(
        &outcomes,
        &["tenant"],
        &[
            "outbound_app.token",
            "inbound_app.token",
            "rest_user_app.token",
            "servicenow.oauth_provider",
            "servicenow.oidc_provider",
            "servicenow.oidc_entity",
            "servicenow.inbound_flow",
        ],
    );
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
    assert_eq!(outcomes["servicenow.reachable"].status, Status::Fail);
    assert!(fix_of(&outcomes, "servicenow.reachable").contains("credentials"));
    assert_eq!(outcomes["servicenow.integration_user"].status, Status::Skip);
    assert_eq!(
        outcomes["servicenow.integration_user"].blocked_by,
        Some("servicenow.reachable")
    );
    assert_eq!(outcomes["graph.permissions"].status, Status::Skip);
    assert_eq!(outcomes["graph.permissions"].blocked_by, None);
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
    assert!(
        stdout.contains("17 checks passed, 0 failed, 0 skipped"),
        "{stdout}"
    );
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
    // Graph refusing everything leaves no check failing but the permission check, and the
    // registration checks skipped: the run still ends non-zero.
    let graph_denied = Command::new(binary)
        .args([
            "sandbox",
            "--doctor",
            "--break",
            "graph-403",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &database,
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&graph_denied.stdout);
    assert_eq!(graph_denied.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("13 checks passed, 1 failed, 3 skipped"),
        "{stdout}"
    );
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

fn first_sys_id(handle: &m365bot::sandbox::SandboxHandle, table: &str, query: &str) -> String {
    sn_query(handle, table, query)
        .first()
        .and_then(|row| row["sys_id"].as_str())
        .unwrap_or_else(|| panic!("a {table} row for {query}"))
        .to_owned()
}

/// Sets `fields` on the first `table` row matching `query`, as an admin would in the form.
fn set_fields(
    handle: &m365bot::sandbox::SandboxHandle,
    table: &str,
    query: &str,
    fields: serde_json::Value,
) {
    let sys_id = first_sys_id(handle, table, query);
    handle.sn_update(table, &sys_id, fields).expect("update");
}

#[tokio::test]
async fn a_multi_tenant_inbound_app_fails_its_registration() {
    let (demo, _dir) = demo().await;
    let inbound = demo.spec.inbound_app.as_ref().expect("inbound app");
    assert!(
        demo.sandbox
            .handle()
            .set_sign_in_audience(&inbound.client_id, "AzureADMultipleOrgs")
    );
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["inbound_app.registration"]);
    assert!(fix_of(&outcomes, "inbound_app.registration").contains("Supported account types"));
}

#[tokio::test]
async fn a_token_url_of_another_tenant_fails_the_oauth_provider() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    let other = format!(
        "{}/fabrikam.onmicrosoft.com/oauth2/token",
        demo.sandbox.urls().entra.trim_end_matches('/')
    );
    set_fields(
        &handle,
        "oauth_entity",
        &format!("client_id={}", demo.spec.outbound_app.client_id),
        serde_json::json!({"token_url": other}),
    );
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["servicenow.oauth_provider"]);
    assert!(
        outcomes["servicenow.oauth_provider"]
            .detail
            .contains("fabrikam")
    );
    assert!(fix_of(&outcomes, "servicenow.oauth_provider").contains("Token URL = "));
}

#[tokio::test]
async fn urls_naming_the_tenant_by_id_or_in_another_case_pass() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    let tenant_id = demo.sandbox.demo().tenant_id.clone();
    let entra = demo.sandbox.urls().entra.trim_end_matches('/').to_owned();
    // The tenant id (upper case, trailing slash) and another verified domain of the tenant.
    for (token_url, metadata_url) in [
        (
            format!("{entra}/{}/OAuth2/Token/", tenant_id.to_uppercase()),
            format!("{entra}/{tenant_id}/.well-known/openid-configuration"),
        ),
        (
            format!("{entra}/Contoso.com/oauth2/token"),
            format!("{entra}/contoso.com/.well-known/openid-configuration/"),
        ),
    ] {
        set_fields(
            &handle,
            "oauth_entity",
            &format!("client_id={}", demo.spec.outbound_app.client_id),
            serde_json::json!({ "token_url": token_url }),
        );
        set_fields(
            &handle,
            "oidc_provider_configuration",
            "oidc_provider=Contoso Azure",
            serde_json::json!({ "oidc_metadata_url": metadata_url }),
        );
        let outcomes = run(&demo, false).await;
        assert_only_failures(&outcomes, &[]);
    }
}

#[tokio::test]
async fn an_integration_user_with_itil_but_not_incident_manager_fails() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    demo.break_it(Misconfiguration::MissingRole);
    handle
        .sn_insert(
            "sys_user_role",
            serde_json::json!({"name": "major_incident_manager"}),
        )
        .expect("role");
    let user = demo.spec.integration_user_name().expect("user");
    assert!(handle.sn_grant_role(&user, "itil"));
    assert!(handle.sn_grant_role(&user, "major_incident_manager"));
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["servicenow.integration_user"]);
    assert!(
        fix_of(&outcomes, "servicenow.integration_user").contains("add the role incident_manager")
    );
}

#[tokio::test]
async fn an_interactive_integration_user_fails() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    let user = demo.spec.integration_user_name().expect("user");
    set_fields(
        &handle,
        "sys_user",
        &format!("user_name={user}"),
        serde_json::json!({"web_service_access_only": "false"}),
    );
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &["servicenow.integration_user"]);
    assert!(
        outcomes["servicenow.integration_user"]
            .detail
            .contains("Web service access only")
    );
    assert!(fix_of(&outcomes, "servicenow.integration_user").contains("Web service access only"));
}

#[tokio::test]
async fn a_missing_app_fails_the_install_check_and_skips_the_role_check() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    let app = first_sys_id(&handle, "sys_store_app", "scope=x_mioms_m365_assis");
    assert!(handle.sn_delete("sys_store_app", &app));
    let outcomes = run(&demo, false).await;
    assert_outcomes(
        &outcomes,
        &["servicenow.app_installed"],
        &["servicenow.app_roles"],
    );
    assert!(fix_of(&outcomes, "servicenow.app_installed").contains("All Available Applications"));
}

#[tokio::test]
async fn lost_graph_permissions_fail_the_run() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    assert!(handle.revoke_graph_permissions(&demo.sandbox.demo().graph_client_id));
    let outcomes = run(&demo, false).await;
    assert_outcomes(
        &outcomes,
        &["graph.permissions"],
        &[
            "outbound_app.registration",
            "inbound_app.registration",
            "rest_user_app.registration",
        ],
    );
    let permissions = &outcomes["graph.permissions"];
    assert!(permissions.detail.contains("403"), "{permissions:?}");
    assert!(fix_of(&outcomes, "graph.permissions").contains("API permissions"));
    assert!(fix_of(&outcomes, "graph.permissions").contains("Application.ReadWrite.OwnedBy"));
}

#[tokio::test]
async fn servicenow_failing_with_html_is_not_a_missing_record() {
    let (demo, _dir) = demo().await;
    demo.sandbox.handle().set_faults(
        Emulator::ServiceNow,
        FaultConfig::none().with_html_errors(500),
    );
    let outcomes = run(&demo, false).await;
    assert_outcomes(
        &outcomes,
        &["servicenow.reachable"],
        &[
            "servicenow.app_installed",
            "servicenow.oauth_provider",
            "servicenow.oidc_provider",
            "servicenow.oidc_entity",
            "servicenow.integration_user",
            "servicenow.inbound_flow",
            "servicenow.cross_scope",
            "servicenow.app_roles",
        ],
    );
    let reachable = &outcomes["servicenow.reachable"];
    assert!(
        reachable.detail.contains("ServiceNow is failing"),
        "{reachable:?}"
    );
    assert!(fix_of(&outcomes, "servicenow.reachable").contains("not a missing record"));
    for outcome in outcomes.values() {
        assert!(!outcome.detail.contains("no "), "{outcome:?}");
    }
}

#[tokio::test]
async fn a_429_storm_passes_and_no_request_is_repeated_early() {
    let (demo, _dir) = demo().await;
    let handle = demo.sandbox.handle();
    // Requests two checks send identically cannot be told apart in the log; find them first.
    let baseline_start = all_requests(&handle).len();
    assert_only_failures(&run(&demo, false).await, &[]);
    let baseline = &all_requests(&handle)[baseline_start..];
    let mut seen = std::collections::HashSet::new();
    let shared: std::collections::HashSet<u64> = baseline
        .iter()
        .filter(|r| !seen.insert(r.fingerprint))
        .map(|r| r.fingerprint)
        .collect();

    let storm_start = all_requests(&handle).len();
    for emulator in [Emulator::ServiceNow, Emulator::Entra, Emulator::Graph] {
        handle.set_faults(emulator, FaultConfig::none().with_throttle_window(1_500, 1));
    }
    let outcomes = run(&demo, false).await;
    assert_only_failures(&outcomes, &[]);
    let log = &all_requests(&handle)[storm_start..];
    let throttled: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert!(throttled.len() >= 10, "a real storm: {}", throttled.len());
    let mut checked = 0;
    for answer in &throttled {
        if shared.contains(&answer.fingerprint) {
            continue;
        }
        let wait = std::time::Duration::from_secs(answer.retry_after_secs.expect("Retry-After"));
        if let Some(again) = log
            .iter()
            .find(|r| r.fingerprint == answer.fingerprint && r.at > answer.at)
        {
            checked += 1;
            assert!(
                again.at.duration_since(answer.at) >= wait,
                "{} {} repeated after {:?}, asked to wait {wait:?}",
                again.method,
                again.target,
                again.at.duration_since(answer.at)
            );
        }
    }
    assert!(checked >= 10, "retries were checked: {checked}");
}

fn all_requests(handle: &m365bot::sandbox::SandboxHandle) -> Vec<m365bot::sandbox::LoggedRequest> {
    let mut all: Vec<_> = [Emulator::ServiceNow, Emulator::Entra, Emulator::Graph]
        .into_iter()
        .flat_map(|emulator| handle.request_log(emulator))
        .collect();
    all.sort_by_key(|r| r.at);
    all
}

#[tokio::test]
async fn a_new_secret_replaces_the_ones_setup_added_before() {
    use m365bot::integration::provision::ensure_app;
    let (demo, _dir) = demo().await;
    let upstreams = Upstreams::from_settings(
        &demo.settings,
        reqwest::Client::new(),
        std::sync::Arc::default(),
    );
    let graph = upstreams.graph.as_ref().expect("graph configured");
    let mut log = Vec::new();
    let first = ensure_app(graph, "Secrets test", &[], false, None, &mut log)
        .await
        .expect("created");
    let second = ensure_app(graph, "Secrets test", &[], false, None, &mut log)
        .await
        .expect("reused");
    assert_eq!(
        first.client_id, second.client_id,
        "the app is reused: {log:?}"
    );
    let app = demo
        .sandbox
        .handle()
        .app(&first.client_id)
        .expect("app exists");
    assert_eq!(app.password_credentials.len(), 1, "{log:?}");
    assert!(
        log.iter()
            .any(|line| line.contains("removed an unused client secret")),
        "{log:?}"
    );
    use secrecy::ExposeSecret;
    assert_eq!(
        app.password_credentials[0].secret_text(),
        second.client_secret.expose_secret()
    );
}

#[tokio::test]
async fn a_wait_longer_than_the_budget_is_not_taken_and_the_check_says_it_gave_up() {
    let (demo, _dir) = demo().await;
    demo.sandbox.handle().set_faults(
        Emulator::ServiceNow,
        FaultConfig::none().with_throttle_window(60_000, 120),
    );
    let started = std::time::Instant::now();
    let outcomes = run(&demo, false).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let reachable = &outcomes["servicenow.reachable"];
    assert_eq!(reachable.status, Status::Fail);
    assert!(
        reachable.detail.contains("429") && reachable.detail.contains("gave up"),
        "{reachable:?}"
    );
    assert!(reachable.detail.contains("120 s"), "{reachable:?}");
    assert_eq!(
        outcomes["servicenow.integration_user"].blocked_by,
        Some("servicenow.reachable")
    );
}
