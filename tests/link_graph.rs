//! The Graph emulator's directory role assignments (`GET /roleManagement/directory/
//! roleAssignments`, shape of `rbacapplication-list-roleassignments.md`) and the client call
//! the link check uses.

use std::sync::Arc;

use m365bot::config::Settings;
use m365bot::integration::Upstreams;
use m365bot::link::directory::{self, RoleCheck};
use m365bot::sandbox::{Sandbox, SandboxOptions};
use serde_json::Value;

const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
const HELPDESK_ADMINISTRATOR: &str = "729827e3-9c14-49f7-bb1b-9608f156bbb8";
const JANE_OID: &str = "7c1e0f4a-0000-4000-8000-000000000002";

async fn setup() -> (Sandbox, Upstreams) {
    let sandbox = Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox");
    let demo = sandbox.demo().clone();
    let toml = format!(
        "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
         [entra]\nauthority_url = \"{}/\"\ngraph_url = \"{}/\"\ngraph_client_id = \"{}\"\ngraph_client_secret = \"{}\"\n",
        demo.tenant_id,
        sandbox.urls().entra,
        sandbox.urls().graph_v1(),
        demo.graph_client_id,
        demo.graph_client_secret
    );
    let settings = Settings::from_toml_str(&toml).expect("settings");
    let upstreams = Upstreams::from_settings(&settings, reqwest::Client::new(), Arc::default());
    (sandbox, upstreams)
}

async fn token(sandbox: &Sandbox) -> String {
    let demo = sandbox.demo();
    let answer: Value = reqwest::Client::new()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sandbox.urls().entra,
            demo.tenant_id
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", demo.graph_client_id.as_str()),
            ("client_secret", demo.graph_client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    answer["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn role_assignments_have_the_graph_shape() {
    let (sandbox, _) = setup().await;
    let handle = sandbox.handle();
    let admin = handle.default_signed_in_oid();
    let bearer = token(&sandbox).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/roleManagement/directory/roleAssignments",
        sandbox.urls().graph_v1()
    );
    let answer = http
        .get(&url)
        .query(&[("$filter", format!("principalId eq '{admin}'"))])
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("graph");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("json");
    assert!(
        body["@odata.context"]
            .as_str()
            .expect("context")
            .ends_with("/$metadata#roleManagement/directory/roleAssignments"),
        "{body}"
    );
    let items = body["value"].as_array().expect("value");
    assert_eq!(items.len(), 1, "{body}");
    let item = &items[0];
    assert_eq!(item["principalId"], admin);
    assert_eq!(item["roleDefinitionId"], GLOBAL_ADMINISTRATOR);
    assert_eq!(item["directoryScopeId"], "/");
    assert_eq!(item["resourceScope"], "/");
    // Entra's id: the role template id and the principal id as .NET GUID bytes, then "-1".
    let id = item["id"].as_str().expect("id");
    assert!(
        id.starts_with("lAPpYvVpN0KRkAEhdxReE") && id.ends_with("-1"),
        "{id}"
    );

    // Filter by role, with the role definition expanded.
    handle.assign_directory_role(JANE_OID, HELPDESK_ADMINISTRATOR);
    let body: Value = http
        .get(&url)
        .query(&[
            (
                "$filter",
                format!("roleDefinitionId eq '{HELPDESK_ADMINISTRATOR}'"),
            ),
            ("$expand", "roleDefinition".to_owned()),
        ])
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("graph")
        .json()
        .await
        .expect("json");
    assert_eq!(body["value"][0]["principalId"], JANE_OID, "{body}");
    assert_eq!(
        body["value"][0]["roleDefinition"]["displayName"],
        "Helpdesk Administrator"
    );

    // An unsupported filter is refused as Graph does.
    let answer = http
        .get(&url)
        .query(&[("$filter", "appScopeId eq '/'")])
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("graph");
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "Request_UnsupportedQuery");

    // Without permission: 403 Authorization_RequestDenied.
    handle.set_directory_role_reads_denied(true);
    let answer = http
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("graph");
    assert_eq!(answer.status(), 403);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "Authorization_RequestDenied");
}

#[tokio::test]
async fn the_role_check_reads_assignments_through_the_client() {
    let (sandbox, upstreams) = setup().await;
    let handle = sandbox.handle();
    let graph = upstreams.graph.as_ref();
    let accepted = directory::default_accepted_roles();
    let admin = handle.default_signed_in_oid();
    assert_eq!(
        directory::check(graph, admin, &accepted)
            .await
            .expect("check"),
        RoleCheck::Holds(vec!["Global Administrator".to_owned()])
    );
    assert_eq!(
        directory::check(graph, JANE_OID, &accepted)
            .await
            .expect("check"),
        RoleCheck::Missing
    );
    handle.assign_directory_role(JANE_OID, HELPDESK_ADMINISTRATOR);
    handle.assign_directory_role(JANE_OID, HELPDESK_ADMINISTRATOR);
    assert_eq!(handle.directory_roles(JANE_OID).len(), 1, "assigned once");
    assert_eq!(
        directory::check(graph, JANE_OID, &accepted)
            .await
            .expect("check"),
        RoleCheck::Holds(vec!["Helpdesk Administrator".to_owned()])
    );
    assert!(handle.unassign_directory_role(JANE_OID, HELPDESK_ADMINISTRATOR));
    assert!(!handle.unassign_directory_role(JANE_OID, HELPDESK_ADMINISTRATOR));
    handle.set_directory_role_reads_denied(true);
    assert!(matches!(
        directory::check(graph, admin, &accepted).await.expect("check"),
        RoleCheck::Skipped(reason) if reason.contains("RoleManagement.Read.Directory")
    ));
    assert!(matches!(
        directory::check(None, admin, &accepted)
            .await
            .expect("check"),
        RoleCheck::Skipped(_)
    ));
}
