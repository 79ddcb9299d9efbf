//! Wire fidelity of the sandbox emulators: every endpoint that has a real sample in
//! `tests/fixtures/samples/servicenow-entra-graph/` is called over HTTP and its JSON is
//! compared with the sample: every field of the sample present at every level, the same JSON
//! types (null is compatible with anything), and extra fields only where a test says why.

use m365bot::sandbox::{Emulator, FaultConfig, Sandbox, SandboxOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

// ------------------------------------------------------------------------------------------
// the comparison
// ------------------------------------------------------------------------------------------

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `path.key` is an allowed extra: a pattern equals it or is `path.*`.
fn extra_allowed(path: &str, key: &str, allowed: &[&str]) -> bool {
    let full = format!("{path}.{key}");
    allowed
        .iter()
        .any(|p| *p == full || *p == format!("{path}.*"))
}

fn walk(path: &str, sample: &Value, actual: &Value, allowed: &[&str], out: &mut Vec<String>) {
    if sample.is_null() || actual.is_null() {
        return;
    }
    if type_name(sample) != type_name(actual) {
        out.push(format!(
            "{path}: sample has {} ({}), emulator has {} ({})",
            type_name(sample),
            sample,
            type_name(actual),
            actual
        ));
        return;
    }
    match (sample, actual) {
        (Value::Object(s), Value::Object(a)) => {
            for (key, s_value) in s {
                if key.starts_with('_') {
                    continue; // annotations of the sample files (`_note`, `_source`)
                }
                match a.get(key) {
                    Some(a_value) => walk(&format!("{path}.{key}"), s_value, a_value, allowed, out),
                    None => out.push(format!("{path}.{key}: missing in the emulator's answer")),
                }
            }
            for key in a.keys() {
                if !s.contains_key(key) && !extra_allowed(path, key, allowed) {
                    out.push(format!(
                        "{path}.{key}: extra field in the emulator's answer (not in the sample)"
                    ));
                }
            }
        }
        (Value::Array(s), Value::Array(a)) => {
            if let Some(first) = s.first() {
                if a.is_empty() {
                    out.push(format!("{path}: emulator array is empty, sample has items"));
                }
                for item in a {
                    walk(&format!("{path}[]"), first, item, allowed, out);
                }
            }
        }
        _ => {}
    }
}

/// The differences between a sample and an emulator answer, each with its JSON path.
fn shape_diff(sample: &Value, actual: &Value, allowed_extra: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    walk("$", sample, actual, allowed_extra, &mut out);
    out
}

/// Panics with a readable list of differences.
#[track_caller]
fn assert_same_shape(what: &str, sample: &Value, actual: &Value, allowed_extra: &[&str]) {
    let diffs = shape_diff(sample, actual, allowed_extra);
    assert!(
        diffs.is_empty(),
        "{what}: the emulator's JSON differs from the sample:\n  {}\n--- emulator answer:\n{}",
        diffs.join("\n  "),
        serde_json::to_string_pretty(actual).unwrap_or_default()
    );
}

#[test]
fn the_comparison_finds_missing_extra_and_mistyped_fields() {
    let sample = json!({"a": "x", "b": {"c": 1, "d": [{"e": true}]}, "n": null, "_note": "skip"});
    let same = json!({"a": "y", "b": {"c": 2, "d": [{"e": false}, {"e": true}]}, "n": {"any": 1}});
    assert!(shape_diff(&sample, &same, &[]).is_empty());
    let broken = json!({"a": 1, "b": {"d": [{"e": true, "f": 0}]}, "n": null, "z": 0});
    let diffs = shape_diff(&sample, &broken, &[]);
    assert!(
        diffs
            .iter()
            .any(|d| d.starts_with("$.a: sample has string")),
        "{diffs:?}"
    );
    assert!(
        diffs.iter().any(|d| d.starts_with("$.b.c: missing")),
        "{diffs:?}"
    );
    assert!(
        diffs.iter().any(|d| d.starts_with("$.b.d[].f: extra")),
        "{diffs:?}"
    );
    assert!(
        diffs.iter().any(|d| d.starts_with("$.z: extra")),
        "{diffs:?}"
    );
    assert!(shape_diff(&sample, &broken, &["$.z", "$.b.d[].*"]).len() == 2);
    let empty = json!({"a": "y", "b": {"c": 2, "d": []}, "n": null});
    assert_eq!(
        shape_diff(&sample, &empty, &[]),
        vec!["$.b.d: emulator array is empty, sample has items"]
    );
}

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

fn sample(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/samples/servicenow-entra-graph/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn sample_body(name: &str) -> Value {
    sample(name)["response"]["body"].clone()
}

async fn start() -> Sandbox {
    Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn json_of(response: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, body)
}

fn admin(sb: &Sandbox) -> (String, String) {
    (
        sb.demo().servicenow_admin_user.clone(),
        sb.demo().servicenow_admin_password.clone(),
    )
}

fn plain(sb: &Sandbox) -> (String, String) {
    (
        sb.demo().servicenow_plain_user.clone(),
        sb.demo().servicenow_plain_password.clone(),
    )
}

async fn sn_get(sb: &Sandbox, path: &str, user: (String, String)) -> reqwest::Response {
    client()
        .get(format!("{}{path}", sb.urls().servicenow))
        .basic_auth(user.0, Some(user.1))
        .header("accept", "application/json")
        .send()
        .await
        .expect("request")
}

async fn graph_token(sb: &Sandbox) -> String {
    let response = client()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sb.urls().entra,
            sb.demo().tenant_id
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", sb.demo().graph_client_id.as_str()),
            ("client_secret", sb.demo().graph_client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token request");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

async fn graph(
    sb: &Sandbox,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let token = graph_token(sb).await;
    let mut request = client()
        .request(method, format!("{}/v1.0{path}", sb.urls().graph))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.expect("graph request")).await
}

fn sys_id_of(sb: &Sandbox, table: &str, query: &str) -> String {
    sb.handle()
        .sn_query(table, query)
        .and_then(|rows| rows.into_iter().next())
        .and_then(|row| row.get("sys_id").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {table} row for {query}"))
}

// ------------------------------------------------------------------------------------------
// ServiceNow
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn servicenow_list_matches_the_recorded_list() {
    let sb = start().await;
    let path = "/api/now/v2/table/incident?sysparm_exclude_reference_link=true&sysparm_fields=number&sysparm_query=number%3DINC0010001&sysparm_offset=0&sysparm_suppress_pagination_header=true&sysparm_limit=1";
    let (status, headers, body) = json_of(sn_get(&sb, path, admin(&sb)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(
        "sn-table-get-list-200",
        &sample_body("sn-table-get-list-200.json"),
        &body,
        &[],
    );
    assert_eq!(body["result"][0]["number"], "INC0010001");
    assert_eq!(headers["x-total-count"], "1");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/json")
    );
    assert!(
        headers.get("link").is_none(),
        "suppressed pagination header"
    );
}

#[tokio::test]
async fn servicenow_record_matches_the_documented_record() {
    let sb = start().await;
    let group = sys_id_of(&sb, "sys_user_group", "name=Service Desk");
    let caller = sys_id_of(&sb, "sys_user", "user_name=jane.doe");
    let created = client()
        .post(format!("{}/api/now/table/incident", sb.urls().servicenow))
        .basic_auth(admin(&sb).0, Some(admin(&sb).1))
        .json(&json!({
            "short_description": "Can't access SFA software",
            "impact": "1",
            "urgency": "3",
            "category": "software",
            "assignment_group": group,
            "caller_id": caller,
            "opened_by": caller,
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let (_, _, created) = json_of(created).await;
    let sys_id = created["result"]["sys_id"]
        .as_str()
        .expect("sys_id")
        .to_owned();
    assert!(location.ends_with(&format!("/api/now/table/incident/{sys_id}")));
    let (status, _, body) = json_of(
        sn_get(
            &sb,
            &format!("/api/now/table/incident/{sys_id}"),
            admin(&sb),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The documented record is truncated ("~80 fields"): further columns are expected.
    assert_same_shape(
        "sn-table-get-incident-record-200",
        &sample_body("sn-table-get-incident-record-200.json"),
        &body,
        &["$.result.*"],
    );
    assert_eq!(body["result"]["sys_id"].as_str().map(str::len), Some(32));
    assert_eq!(body["result"]["sys_mod_count"], "0");
}

#[tokio::test]
async fn servicenow_dotwalk_with_display_values_matches_the_doc() {
    let sb = start().await;
    let admin_role = sys_id_of(&sb, "sys_user_role", "name=admin");
    let insights = sys_id_of(
        &sb,
        "sys_user_role",
        "name=x_mioms_m365_assis.insights_user",
    );
    let path = format!(
        "/api/now/table/sys_user_has_role?sysparm_fields=role%2Crole.name%2Cuser%2Cuser.name%2Cuser.sys_id%2Cuser.department&sysparm_query=role%3D{admin_role}%5EORrole%3D{insights}&sysparm_display_value=true"
    );
    let (status, _, body) = json_of(sn_get(&sb, &path, admin(&sb)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(
        "sn-table-dotwalk-display-value-200",
        &sample_body("sn-table-dotwalk-display-value-200.json"),
        &body,
        &[],
    );
    let rows = body["result"].as_array().expect("rows");
    assert!(
        rows.len() >= 3,
        "admin, jane and beth hold these roles: {body}"
    );
    assert!(rows.iter().any(|r| r["role.name"] == "admin"));
}

#[tokio::test]
async fn servicenow_pagination_headers_match_the_doc() {
    let sb = start().await;
    let response = sn_get(
        &sb,
        "/api/now/table/sys_user_role?sysparm_limit=2&sysparm_offset=2",
        admin(&sb),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let link = response.headers()["link"]
        .to_str()
        .expect("link")
        .to_owned();
    let rels = |value: &str| -> Vec<String> {
        value
            .split(',')
            .filter_map(|part| part.split("rel=\"").nth(1))
            .map(|rel| rel.trim_end_matches('"').to_owned())
            .collect()
    };
    let sample_link = sample("sn-table-link-header-pagination.json")["response"]["headers"]["Link"]
        .as_str()
        .expect("sample link")
        .to_owned();
    assert_eq!(rels(&link), rels(&sample_link), "{link}");
    assert!(link.contains("sysparm_offset=4"), "{link}");
    assert_eq!(response.headers()["x-total-count"], "5");
}

#[tokio::test]
async fn servicenow_errors_use_the_real_envelopes() {
    let sb = start().await;
    let base = sb.urls().servicenow.clone();

    // 401 without credentials.
    let (status, headers, body) = json_of(
        client()
            .get(format!("{base}/api/now/v2/table/incident?sysparm_limit=1"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    let expected = sample("sn-error-401-not-authenticated.json");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_same_shape("401", &expected["response"]["body"], &body, &[]);
    assert_eq!(body, expected["response"]["body"]);
    assert_eq!(
        headers["www-authenticate"],
        expected["response"]["headers"]["WWW-Authenticate"]
            .as_str()
            .expect("sample header")
    );

    // 404 for a missing record.
    let (status, _, body) = json_of(
        client()
            .delete(format!("{base}/api/now/v2/table/incident/NoId"))
            .basic_auth(admin(&sb).0, Some(admin(&sb).1))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, sample_body("sn-error-404-no-record.json"));

    // 400 for an unknown table.
    let (status, _, body) = json_of(
        sn_get(
            &sb,
            "/api/now/table/x_does_not_exist?sysparm_limit=1",
            admin(&sb),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, sample_body("sn-error-400-invalid-table.json"));

    // 403 on insert by a user without the rights.
    let (status, _, body) = json_of(
        client()
            .post(format!("{base}/api/now/v2/table/incident"))
            .basic_auth(plain(&sb).0, Some(plain(&sb).1))
            .json(&json!({"short_description": "x"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for example in sample("sn-error-403-operation-failed.json")["examples"]
        .as_array()
        .expect("examples")
    {
        assert_same_shape(
            "403 operation failed",
            &example["response"]["body"],
            &body,
            &[],
        );
    }
    assert_eq!(body["error"]["message"], "Operation Failed");

    // 403 on a query over a table the user may not read.
    let (status, _, body) = json_of(
        sn_get(
            &sb,
            "/api/now/table/oauth_entity?sysparm_query=client_id%3Dx",
            plain(&sb),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, sample_body("sn-error-403-insufficient-rights.json"));
}

#[tokio::test]
async fn servicenow_rate_limit_matches_the_doc() {
    let sb = start().await;
    sb.handle().set_faults(
        Emulator::ServiceNow,
        FaultConfig::none().with_throttle_every(1, 7),
    );
    let (status, headers, body) =
        json_of(sn_get(&sb, "/api/now/table/incident", admin(&sb)).await).await;
    let expected = sample("sn-error-429-rate-limit.json");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, expected["response"]["body"]);
    for name in expected["response"]["headers"]
        .as_object()
        .expect("headers")
        .keys()
    {
        assert!(
            headers.contains_key(name.to_ascii_lowercase().as_str()),
            "{name}"
        );
    }
    assert_eq!(headers["retry-after"], "7");
}

#[tokio::test]
async fn servicenow_oauth_token_endpoint_matches_the_doc() {
    let sb = start().await;
    let url = format!("{}/oauth_token.do", sb.urls().servicenow);
    let (status, _, body) = json_of(
        client()
            .post(&url)
            .form(&[
                ("grant_type", "password"),
                ("client_id", sb.demo().servicenow_oauth_client_id.as_str()),
                (
                    "client_secret",
                    sb.demo().servicenow_oauth_client_secret.as_str(),
                ),
                ("username", sb.demo().servicenow_admin_user.as_str()),
                ("password", sb.demo().servicenow_admin_password.as_str()),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(
        "sn-oauth-token-200",
        &sample_body("sn-oauth-token-200.json"),
        &body,
        &[],
    );
    let (status, _, body) = json_of(
        client()
            .post(&url)
            .form(&[
                ("grant_type", "password"),
                ("client_id", sb.demo().servicenow_oauth_client_id.as_str()),
                ("client_secret", "wrong"),
                ("username", "admin"),
                ("password", "x"),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, sample_body("sn-oauth-token-401.json"));
}

// ------------------------------------------------------------------------------------------
// Entra ID
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn entra_metadata_and_keys_match_the_samples() {
    let sb = start().await;
    let base = sb.urls().entra.clone();
    let tid = sb.demo().tenant_id.clone();

    let (status, _, v1) = json_of(
        client()
            .get(format!(
                "{base}/{}/.well-known/openid-configuration",
                sb.demo().tenant_domain
            ))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(
        "entra-openid-configuration-v1-tenant",
        &sample_body("entra-openid-configuration-v1-tenant.json"),
        &v1,
        &[],
    );
    assert_eq!(v1["issuer"], format!("https://sts.windows.net/{tid}/"));
    assert_eq!(v1["token_endpoint"], format!("{base}/{tid}/oauth2/token"));

    for tenant in ["common", tid.as_str()] {
        let (status, _, v2) = json_of(
            client()
                .get(format!(
                    "{base}/{tenant}/v2.0/.well-known/openid-configuration"
                ))
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_same_shape(
            "entra-openid-configuration-v2",
            &sample_body("entra-openid-configuration-v2-common.json"),
            &v2,
            &[],
        );
    }

    let (status, _, keys) = json_of(
        client()
            .get(format!("{base}/common/discovery/keys"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(
        "entra-jwks-v1-common",
        &sample_body("entra-jwks-v1-common.json"),
        &keys,
        &[],
    );
    let (status, _, keys_v2) = json_of(
        client()
            .get(format!("{base}/{tid}/discovery/v2.0/keys"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // v2 key sets carry the issuer of each key (entra-docs access-tokens.md).
    assert_same_shape(
        "v2 keys",
        &sample_body("entra-jwks-v1-common.json"),
        &keys_v2,
        &["$.keys[].issuer"],
    );

    let (status, _, error) = json_of(
        client()
            .get(format!("{base}/test/v2.0/.well-known/openid-configuration"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_same_shape(
        "entra-error-90002",
        &sample_body("entra-error-90002-tenant-not-found.json"),
        &error,
        &[],
    );
    assert_eq!(error["error_codes"], json!([90002]));
}

#[tokio::test]
async fn entra_token_answers_match_the_samples() {
    let sb = start().await;
    let base = sb.urls().entra.clone();
    let demo = sb.demo().clone();
    let v1_url = format!("{base}/{}/oauth2/token", demo.tenant_domain);
    let v2_url = format!("{base}/{}/oauth2/v2.0/token", demo.tenant_id);

    let (status, _, v1) = json_of(
        client()
            .post(&v1_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", demo.graph_client_id.as_str()),
                ("client_secret", demo.graph_client_secret.as_str()),
                ("resource", "https://graph.microsoft.com/"),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // ext_expires_in and not_before are part of real v1 answers (reference §4.1).
    assert_same_shape(
        "entra-v1-token-200",
        &sample_body("entra-v1-token-200.json"),
        &v1,
        &["$.ext_expires_in", "$.not_before"],
    );
    assert_eq!(v1["resource"], "https://graph.microsoft.com/");

    let (status, _, v2) = json_of(
        client()
            .post(&v2_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", demo.graph_client_id.as_str()),
                ("client_secret", demo.graph_client_secret.as_str()),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // ext_expires_in is sent by the real v2 endpoint as well.
    assert_same_shape(
        "entra-v2-token-200",
        &sample_body("entra-v2-token-200.json"),
        &v2,
        &["$.ext_expires_in"],
    );

    let (status, _, wrong) = json_of(
        client()
            .post(&v1_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", demo.graph_client_id.as_str()),
                ("client_secret", "not-the-secret"),
                ("resource", "https://graph.microsoft.com/"),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_same_shape(
        "7000215",
        &sample_body("entra-token-error-7000215-invalid-secret.json"),
        &wrong,
        &[],
    );
    assert_eq!(wrong["error"], "invalid_client");

    let (status, _, unknown) = json_of(
        client()
            .post(&v1_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "11111111-2222-3333-4444-555555555555"),
                ("client_secret", "x"),
                ("resource", "https://graph.microsoft.com/"),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_same_shape(
        "700016",
        &sample_body("entra-token-error-700016-app-not-found.json"),
        &unknown,
        &[],
    );
    assert_eq!(unknown["error_codes"], json!([700016]));

    let (status, _, scope) = json_of(
        client()
            .post(&v2_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", demo.graph_client_id.as_str()),
                ("client_secret", demo.graph_client_secret.as_str()),
                ("scope", "https://graph.microsoft.com/User.Read"),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_same_shape(
        "invalid_scope",
        &sample_body("entra-token-error-doc.json"),
        &scope,
        &[],
    );
    assert_eq!(scope["error"], "invalid_scope");
}

// ------------------------------------------------------------------------------------------
// Graph
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn graph_application_answers_match_the_samples() {
    let sb = start().await;
    let create = sample("graph-application-create-201.json");
    let (status, headers, app) = graph(
        &sb,
        reqwest::Method::POST,
        "/applications",
        Some(create["request"]["body"].clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    assert!(headers.contains_key("location"));
    assert_same_shape(
        "graph-application-create-201",
        &create["response"]["body"],
        &app,
        &[],
    );
    assert_eq!(app["signInAudience"], "AzureADMyOrg");
    assert_eq!(
        app["web"]["redirectUris"],
        json!(["https://contoso.service-now.com/oauth_redirect.do"])
    );
    let id = app["id"].as_str().expect("id").to_owned();
    let app_id = app["appId"].as_str().expect("appId").to_owned();

    let add = sample("graph-application-addpassword-200.json");
    // The sample's end date may be past by now; an end before the start is refused.
    let mut request = add["request"]["body"].clone();
    request["passwordCredential"]["endDateTime"] = json!("2099-01-01T00:00:00Z");
    let (status, _, password) = graph(
        &sb,
        reqwest::Method::POST,
        &format!("/applications/{id}/addPassword"),
        Some(request),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{password}");
    // Real answers carry an OData context annotation; the doc example omits it.
    assert_same_shape(
        "graph-application-addpassword-200",
        &add["response"]["body"],
        &password,
        &["$.@odata.context"],
    );
    assert_eq!(password["endDateTime"], "2099-01-01T00:00:00.000Z");
    assert!(
        password["secretText"]
            .as_str()
            .is_some_and(|s| s.len() >= 16)
    );

    let sp_sample = sample("graph-serviceprincipal-create-201.json");
    let (status, _, sp) = graph(
        &sb,
        reqwest::Method::POST,
        "/servicePrincipals",
        Some(json!({"appId": app_id})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sp}");
    assert_same_shape(
        "graph-serviceprincipal-create-201",
        &sp_sample["response"]["body"],
        &sp,
        &[],
    );
    assert_eq!(sp["appId"], app_id.as_str());
}

#[tokio::test]
async fn graph_organization_matches_the_sample() {
    let sb = start().await;
    let expected = sample_body("graph-organization-get-200.json");
    let tid = sb.demo().tenant_id.clone();
    let (status, _, org) = graph(
        &sb,
        reqwest::Method::GET,
        &format!("/organization/{tid}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape("graph-organization-get-200", &expected, &org, &[]);
    assert_eq!(org["id"], tid.as_str());

    // The collection wraps the same entity in `value` (see the sample's note).
    let (status, _, list) = graph(&sb, reqwest::Method::GET, "/organization", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut entity = expected.clone();
    entity
        .as_object_mut()
        .expect("object")
        .remove("@odata.context");
    assert_same_shape("organization value[0]", &entity, &list["value"][0], &[]);
}

#[tokio::test]
async fn graph_service_communications_match_the_samples() {
    let sb = start().await;
    let (status, _, issues) = graph(
        &sb,
        reqwest::Method::GET,
        "/admin/serviceAnnouncement/issues?$top=1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(
        "graph-serviceannouncement-issues-200",
        &sample_body("graph-serviceannouncement-issues-200.json"),
        &issues,
        &[],
    );
    assert!(
        issues["@odata.nextLink"]
            .as_str()
            .is_some_and(|l| l.contains("$skip=1"))
    );

    let (status, _, overviews) = graph(
        &sb,
        reqwest::Method::GET,
        "/admin/serviceAnnouncement/healthOverviews",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(
        "graph-serviceannouncement-healthoverviews-200",
        &sample_body("graph-serviceannouncement-healthoverviews-200.json"),
        &overviews,
        &[],
    );
}

#[tokio::test]
async fn graph_errors_match_the_samples() {
    let sb = start().await;
    sb.handle().set_graph_writes_denied(true);
    let (status, headers, denied) = graph(
        &sb,
        reqwest::Method::POST,
        "/applications",
        Some(json!({"displayName": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let expected = sample("graph-error-403.json");
    assert_same_shape(
        "graph-error-403",
        &expected["real_example"]["body"],
        &denied,
        &[],
    );
    assert_eq!(denied["error"]["code"], "Authorization_RequestDenied");
    assert!(headers.contains_key("request-id"));

    let token = graph_token(&sb).await;
    sb.handle().set_faults(
        Emulator::Graph,
        FaultConfig::none().with_throttle_every(1, 10),
    );
    let (status, headers, throttled) = json_of(
        client()
            .get(format!("{}/v1.0/organization", sb.urls().graph))
            .bearer_auth(token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    let expected = sample("graph-error-429.json");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_same_shape(
        "graph-error-429",
        &expected["response"]["body"],
        &throttled,
        &[],
    );
    assert_eq!(headers["retry-after"], "10");
}
