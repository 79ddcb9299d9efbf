//! Behaviour of the sandbox emulators over real HTTP: ServiceNow encoded queries, pagination,
//! ACLs and write rules; Entra token versions and claims, errors, authorize + PKCE; Graph app
//! registration feeding Entra, service-health changes; fault injection and the
//! misconfiguration knobs.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use m365bot::sandbox::{
    AuthorizeOutcome, Emulator, FaultConfig, IssueAdvance, Sandbox, SandboxOptions, SignedInUser,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

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

async fn body_of(response: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
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

/// GET on the ServiceNow emulator; `path_and_query` is appended to the instance URL.
async fn sn_get(
    sb: &Sandbox,
    path_and_query: &str,
    user: &(String, String),
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    body_of(
        client()
            .get(format!("{}{path_and_query}", sb.urls().servicenow))
            .basic_auth(&user.0, Some(&user.1))
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn sn_send(
    sb: &Sandbox,
    method: reqwest::Method,
    path: &str,
    user: &(String, String),
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    body_of(
        client()
            .request(method, format!("{}{path}", sb.urls().servicenow))
            .basic_auth(&user.0, Some(&user.1))
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// Incident numbers of a v2 query.
async fn incident_numbers(sb: &Sandbox, query: &str) -> Vec<String> {
    let mut url = url::Url::parse("http://x/api/now/v2/table/incident").expect("url");
    url.query_pairs_mut()
        .append_pair("sysparm_query", query)
        .append_pair("sysparm_fields", "number");
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let (status, _, body) = sn_get(sb, &path, &admin(sb)).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|r| r["number"].as_str().expect("number").to_owned())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        part.contains("rel=\"next\"").then(|| {
            part.trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
    })
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = URL_SAFE_NO_PAD.decode(payload).expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// Verifies a token's signature with the emulator's published JWKS.
async fn verify_with_jwks(sb: &Sandbox, token: &str) {
    let (_, _, keys) = body_of(
        client()
            .get(format!("{}/common/discovery/keys", sb.urls().entra))
            .send()
            .await
            .expect("jwks"),
    )
    .await;
    let header = jsonwebtoken::decode_header(token).expect("header");
    let kid = header.kid.expect("kid");
    let key = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid is published");
    let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().expect("n"),
        key["e"].as_str().expect("e"),
    )
    .expect("RSA key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &decoding, &validation).expect("signature verifies");
}

async fn token_v1(
    sb: &Sandbox,
    client_id: &str,
    secret: &str,
    resource: &str,
) -> (StatusCode, Value) {
    let (status, _, body) = body_of(
        client()
            .post(format!(
                "{}/{}/oauth2/token",
                sb.urls().entra,
                sb.demo().tenant_domain
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("resource", resource),
            ])
            .send()
            .await
            .expect("request"),
    )
    .await;
    (status, body)
}

async fn token_v2(sb: &Sandbox, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let (status, _, body) = body_of(
        client()
            .post(format!(
                "{}/{}/oauth2/v2.0/token",
                sb.urls().entra,
                sb.demo().tenant_id
            ))
            .form(form)
            .send()
            .await
            .expect("request"),
    )
    .await;
    (status, body)
}

async fn graph_token(sb: &Sandbox) -> String {
    let demo = sb.demo().clone();
    let (status, body) = token_v2(
        sb,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &demo.graph_client_id),
            ("client_secret", &demo.graph_client_secret),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

async fn graph(
    sb: &Sandbox,
    token: &str,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let url = if path_and_query.starts_with("http") {
        path_and_query.to_owned()
    } else {
        format!("{}/v1.0{path_and_query}", sb.urls().graph)
    };
    let mut request = client().request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    body_of(request.send().await.expect("graph request")).await
}

// ------------------------------------------------------------------------------------------
// ServiceNow
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn encoded_queries_follow_the_servicenow_subset() {
    let sb = start().await;
    assert_eq!(
        sorted(incident_numbers(&sb, "number=INC0010001^ORnumber=INC0010003").await),
        vec!["INC0010001", "INC0010003"]
    );
    // An unknown field is ignored silently, like the real instance does.
    assert_eq!(
        incident_numbers(&sb, "no_such_field=zzz^number=INC0010002").await,
        vec!["INC0010002"]
    );
    assert_eq!(
        incident_numbers(&sb, "short_descriptionLIKEmeetings").await,
        vec!["INC0010002"]
    );
    assert_eq!(
        incident_numbers(&sb, "numberSTARTSWITHINC001000")
            .await
            .len(),
        4
    );
    assert_eq!(
        sorted(incident_numbers(&sb, "numberININC0010001,INC0010004").await),
        vec!["INC0010001", "INC0010004"]
    );
    assert_eq!(
        incident_numbers(&sb, "state!=1^ORDERBYnumber").await,
        vec!["INC0010001", "INC0010004"]
    );
    assert_eq!(
        incident_numbers(&sb, "ORDERBYDESCnumber").await,
        vec!["INC0010004", "INC0010003", "INC0010002", "INC0010001"]
    );
    // AND binds looser than OR: active=true AND (number=1 OR number=4); 4 is resolved.
    assert_eq!(
        incident_numbers(&sb, "active=true^number=INC0010001^ORnumber=INC0010004").await,
        vec!["INC0010001"]
    );
    assert_eq!(
        incident_numbers(&sb, "caller_id.user_name=jane.doe^number=INC0010003").await,
        vec!["INC0010003"]
    );
    // Date comparison on `YYYY-MM-DD HH:MM:SS` strings (seeded 72, 48, 24 and 120 hours ago).
    let watermark = (chrono::Utc::now() - chrono::Duration::hours(50))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    assert_eq!(
        incident_numbers(
            &sb,
            &format!("sys_updated_on>={watermark}^ORDERBYsys_updated_on")
        )
        .await,
        vec!["INC0010002", "INC0010003"]
    );
    // `^^` is a literal caret.
    let (status, _, _) = sn_send(
        &sb,
        reqwest::Method::POST,
        "/api/now/table/incident",
        &admin(&sb),
        json!({"short_description": "a^b"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        incident_numbers(&sb, "short_description=a^^b").await,
        vec!["INC0010005"]
    );
    // With glide.invalid_query.returns_no_rows=true an unknown field empties the result.
    let handle = sb.handle();
    let property = handle
        .sn_query("sys_properties", "name=glide.invalid_query.returns_no_rows")
        .and_then(|rows| rows.into_iter().next())
        .expect("property row");
    handle
        .sn_update(
            "sys_properties",
            property["sys_id"].as_str().expect("sys_id"),
            json!({"value": "true"}),
        )
        .expect("update");
    assert!(
        incident_numbers(&sb, "no_such_field=zzz^number=INC0010002")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn link_header_pagination_walks_every_row() {
    let sb = start().await;
    let mut url = Some(format!(
        "{}/api/now/table/sys_user_role?sysparm_limit=2&sysparm_fields=name",
        sb.urls().servicenow
    ));
    let mut names = Vec::new();
    let mut pages = 0;
    while let Some(next) = url.take() {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        let (status, headers, body) = body_of(
            client()
                .get(&next)
                .basic_auth(admin(&sb).0, Some(admin(&sb).1))
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-total-count"], "5");
        for row in body["result"].as_array().expect("rows") {
            names.push(row["name"].as_str().expect("name").to_owned());
        }
        url = next_link(&headers);
    }
    assert_eq!(pages, 3);
    // Absurd paging values are no reason to fail.
    let (status, _, body) = sn_get(
        &sb,
        "/api/now/v2/table/sys_user_role?sysparm_limit=18446744073709551615&sysparm_offset=18446744073709551615",
        &admin(&sb),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], json!([]));
    assert_eq!(
        sorted(names),
        vec![
            "admin",
            "incident_manager",
            "itil",
            "x_mioms_m365_assis.administrator",
            "x_mioms_m365_assis.insights_user"
        ]
    );
}

#[tokio::test]
async fn v1_answers_404_where_v2_answers_an_empty_list() {
    let sb = start().await;
    let (status, _, body) = sn_get(
        &sb,
        "/api/now/table/incident?sysparm_query=number%3DINC9999999",
        &admin(&sb),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "No Record found");
    assert_eq!(body["status"], "failure");
    let (status, _, body) = sn_get(
        &sb,
        "/api/now/v1/table/incident?sysparm_query=number%3DINC9999999",
        &admin(&sb),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, headers, body) = sn_get(
        &sb,
        "/api/now/v2/table/incident?sysparm_query=number%3DINC9999999",
        &admin(&sb),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"result": []}));
    assert_eq!(headers["x-total-count"], "0");
}

#[tokio::test]
async fn acl_filtering_gives_a_plain_user_short_pages() {
    let sb = start().await;
    let (_, _, everything) = sn_get(
        &sb,
        "/api/now/v2/table/sys_user_has_role?sysparm_exclude_reference_link=true",
        &admin(&sb),
    )
    .await;
    let total = everything["result"].as_array().expect("rows").len();
    assert!(total >= 7, "{total}");
    let jane = everything["result"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| {
            sb.handle()
                .sn_record("sys_user", r["user"].as_str().unwrap_or_default())
                .is_some_and(|u| u["user_name"] == "jane.doe")
        })
        .count();
    assert_eq!(jane, 1);

    let mut url = Some(format!(
        "{}/api/now/v2/table/sys_user_has_role?sysparm_limit=3&sysparm_exclude_reference_link=true",
        sb.urls().servicenow
    ));
    let mut seen = 0;
    let mut short_pages = 0;
    while let Some(next) = url.take() {
        let (status, headers, body) = body_of(
            client()
                .get(&next)
                .basic_auth(plain(&sb).0, Some(plain(&sb).1))
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // The count is of the query, before the ACL filter.
        assert_eq!(headers["x-total-count"], total.to_string().as_str());
        let rows = body["result"].as_array().expect("rows").len();
        url = next_link(&headers);
        if rows < 3 && url.is_some() {
            short_pages += 1;
        }
        seen += rows;
    }
    assert_eq!(seen, jane, "the plain user sees only her own grants");
    assert!(short_pages >= 1, "a short page came before the last one");
}

#[tokio::test]
async fn plain_user_cannot_write_setup_tables_but_admin_can() {
    let sb = start().await;
    let writes = [
        (
            "oauth_entity",
            json!({"name": "x", "type": "oauth_provider", "client_id": "abc"}),
        ),
        (
            "oidc_provider_configuration",
            json!({"name": "Contoso Azure", "user_claim": "appid"}),
        ),
        ("sys_user_has_role", json!({"user": "x", "role": "y"})),
    ];
    for (table, body) in &writes {
        let (status, _, answer) = sn_send(
            &sb,
            reqwest::Method::POST,
            &format!("/api/now/table/{table}"),
            &plain(&sb),
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{table}: {answer}");
        assert_eq!(answer["status"], "failure");
        let (status, _, answer) = sn_send(
            &sb,
            reqwest::Method::POST,
            &format!("/api/now/table/{table}"),
            &admin(&sb),
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{table}: {answer}");
    }
    // The new outbound provider got its system-generated default profile.
    let entity = sb
        .handle()
        .sn_query("oauth_entity", "client_id=abc")
        .and_then(|rows| rows.into_iter().next())
        .expect("created");
    let profiles = sb
        .handle()
        .sn_query(
            "oauth_entity_profile",
            &format!(
                "oauth_entity={}",
                entity["sys_id"].as_str().expect("sys_id")
            ),
        )
        .expect("table");
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0]["default"], "true");
    // A plain user cannot even see the providers.
    let (status, _, body) = sn_get(&sb, "/api/now/v2/table/oauth_entity", &plain(&sb)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], json!([]));
}

#[tokio::test]
async fn records_keep_servicenow_conventions_on_update() {
    let sb = start().await;
    let (status, _, created) = sn_send(
        &sb,
        reqwest::Method::POST,
        "/api/now/v2/table/incident?sysparm_exclude_reference_link=true",
        &admin(&sb),
        json!({"short_description": "Mailbox full", "impact": 2, "caller_id": "", "unknown_column": "dropped"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let record = &created["result"];
    let sys_id = record["sys_id"].as_str().expect("sys_id").to_owned();
    assert_eq!(sys_id.len(), 32);
    assert!(sys_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(record["impact"], "2", "numbers are stored as strings");
    assert!(record.get("unknown_column").is_none());
    assert_eq!(record["sys_mod_count"], "0");
    let stamp = record["sys_created_on"].as_str().expect("stamp");
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{stamp}"
    );
    assert!(record["opened_by"].is_string(), "bare sys_id without links");

    let path = format!("/api/now/v2/table/incident/{sys_id}");
    let (status, _, updated) = sn_send(
        &sb,
        reqwest::Method::PATCH,
        &path,
        &admin(&sb),
        json!({"state": "2", "work_notes": "Looking into it"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["result"]["sys_mod_count"], "1");
    assert_eq!(
        updated["result"]["work_notes"], "",
        "journal fields read back empty"
    );
    assert!(
        updated["result"]["opened_by"]["link"].is_string(),
        "{{link,value}} by default"
    );
    let (_, _, updated) = sn_send(
        &sb,
        reqwest::Method::PUT,
        &path,
        &admin(&sb),
        json!({"state": "6", "close_code": "Closed/Resolved by Caller"}),
    )
    .await;
    assert_eq!(updated["result"]["sys_mod_count"], "2");
    assert_eq!(updated["result"]["active"], "false");
    let notes = sb
        .handle()
        .sn_query(
            "sys_journal_field",
            &format!("element_id={sys_id}^element=work_notes"),
        )
        .expect("journal");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["value"], "Looking into it");

    let (status, _, _) = sn_send(&sb, reqwest::Method::DELETE, &path, &admin(&sb), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = sn_get(&sb, &path, &admin(&sb)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn servicenow_oauth_bearer_tokens_authenticate_table_calls() {
    let sb = start().await;
    let demo = sb.demo().clone();
    let url = format!("{}/oauth_token.do", sb.urls().servicenow);
    for grant in ["password", "client_credentials"] {
        let (status, _, token) = body_of(
            client()
                .post(&url)
                .form(&[
                    ("grant_type", grant),
                    ("client_id", &demo.servicenow_oauth_client_id),
                    ("client_secret", &demo.servicenow_oauth_client_secret),
                    ("username", &demo.servicenow_plain_user),
                    ("password", &demo.servicenow_plain_password),
                ])
                .send()
                .await
                .expect("token"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{grant}: {token}");
        let access = token["access_token"].as_str().expect("access token");
        let (status, _, body) = body_of(
            client()
                .get(format!(
                    "{}/api/now/v2/table/oauth_entity?sysparm_fields=client_id",
                    sb.urls().servicenow
                ))
                .bearer_auth(access)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // The password grant acts as jane (no admin); client credentials as the app user (admin).
        let visible = body["result"].as_array().expect("rows").len();
        if grant == "password" {
            assert_eq!(visible, 0);
        } else {
            assert!(visible >= 1);
        }
    }
    let (status, headers, _) = body_of(
        client()
            .get(format!(
                "{}/api/now/v2/table/incident",
                sb.urls().servicenow
            ))
            .bearer_auth("not-a-token")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
}

#[tokio::test]
async fn misconfiguration_knobs_change_what_the_setup_reads() {
    let sb = start().await;
    let handle = sb.handle();
    let query = "/api/now/v2/table/sys_user_has_role?sysparm_query=user.user_name%3Dfred.luddy%5Erole.name%3Dincident_manager";
    let (_, _, before) = sn_get(&sb, query, &admin(&sb)).await;
    assert_eq!(before["result"].as_array().map(Vec::len), Some(1));
    assert!(handle.sn_remove_role("fred.luddy", "incident_manager"));
    let (_, _, after) = sn_get(&sb, query, &admin(&sb)).await;
    assert_eq!(after["result"], json!([]));
    assert!(handle.sn_grant_role("fred.luddy", "incident_manager"));

    let cross_scope = "/api/now/v2/table/sys_db_object?sysparm_query=name%3Doauth_entity&sysparm_fields=name,access,read_access,ws_access";
    let (_, _, readable) = sn_get(&sb, cross_scope, &admin(&sb)).await;
    assert_eq!(readable["result"][0]["read_access"], "true");
    assert_eq!(readable["result"][0]["access"], "public");
    handle.sn_set_oauth_entity_cross_scope_readable(false);
    let (_, _, refused) = sn_get(&sb, cross_scope, &admin(&sb)).await;
    assert_eq!(refused["result"][0]["read_access"], "false");
    assert_eq!(refused["result"][0]["access"], "package_private");

    // Column names are discoverable through sys_dictionary.
    let (_, _, dictionary) = sn_get(
        &sb,
        "/api/now/v2/table/sys_dictionary?sysparm_query=name%3Doidc_provider_configuration%5EelementISNOTEMPTY&sysparm_fields=element,internal_type",
        &admin(&sb),
    )
    .await;
    let elements: Vec<&str> = dictionary["result"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["element"].as_str())
        .collect();
    // The names Microsoft verified on a Zurich instance.
    for expected in [
        "name",
        "oidc_url",
        "oidc_config_cache_life_span",
        "user_claim",
        "user_field",
        "enable_jti_verification",
    ] {
        assert!(elements.contains(&expected), "{elements:?}");
    }
    // Inherited columns are described on the parent table only.
    let entity_columns = dictionary_elements(&sb, "oauth_oidc_entity").await;
    assert!(entity_columns.contains(&"oidc_provider_configuration".to_owned()));
    assert!(
        !entity_columns.contains(&"client_id".to_owned()),
        "{entity_columns:?}"
    );
    let parent_columns = dictionary_elements(&sb, "oauth_entity").await;
    for inherited in ["name", "client_id", "active"] {
        assert!(
            parent_columns.contains(&inherited.to_owned()),
            "{parent_columns:?}"
        );
    }
}

async fn dictionary_elements(sb: &Sandbox, table: &str) -> Vec<String> {
    let (_, _, dictionary) = sn_get(
        sb,
        &format!("/api/now/v2/table/sys_dictionary?sysparm_query=name%3D{table}%5EelementISNOTEMPTY&sysparm_fields=element,column_label"),
        &admin(sb),
    )
    .await;
    dictionary["result"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["element"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn renamed_columns_keep_their_labels_and_the_emulator_still_works() {
    let options = SandboxOptions {
        servicenow_renamed_columns: true,
        ..SandboxOptions::default()
    };
    let sb = Sandbox::start(options).await.expect("starts");
    let (_, _, dictionary) = sn_get(
        &sb,
        "/api/now/v2/table/sys_dictionary?sysparm_query=name%3Dsys_db_object%5Ecolumn_label%3DCan%20read&sysparm_fields=element,column_label",
        &admin(&sb),
    )
    .await;
    assert_eq!(
        dictionary["result"][0]["element"], "u_read_access",
        "{dictionary}"
    );
    // The misconfiguration knob writes the renamed column.
    sb.handle().sn_set_oauth_entity_cross_scope_readable(false);
    let rows = sb
        .handle()
        .sn_query("sys_db_object", "name=oauth_entity")
        .expect("table");
    assert_eq!(rows[0]["u_read_access"], "false");
    assert!(rows[0].get("read_access").is_none());
    // A query on the verified-but-absent name is ignored, as the platform does: every row.
    let all = sb
        .handle()
        .sn_query("sys_db_object", "read_access=false")
        .expect("table");
    assert!(all.len() > 1, "an invalid condition selects every row");
    // The seeded OAuth client still gets tokens through its renamed Application User column.
    let demo = sb.demo().clone();
    let token = client()
        .post(format!("{}/oauth_token.do", sb.urls().servicenow))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", demo.servicenow_oauth_client_id.as_str()),
            (
                "client_secret",
                demo.servicenow_oauth_client_secret.as_str(),
            ),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(token.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_password_written_without_display_values_lands_raw_and_cannot_sign_in() {
    let sb = start().await;
    let admin = admin(&sb);
    for (user, display_values, signs_in) in
        [("raw.user", false, false), ("hashed.user", true, true)]
    {
        let path = if display_values {
            "/api/now/v2/table/sys_user?sysparm_input_display_value=true"
        } else {
            "/api/now/v2/table/sys_user"
        };
        let (status, _, created) = sn_send(
            &sb,
            reqwest::Method::POST,
            path,
            &admin,
            json!({"user_name": user, "user_password": "Corr3ct-Horse-Battery", "web_service_access_only": "true"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let (status, _, _) = sn_get(
            &sb,
            "/api/now/v2/table/incident?sysparm_limit=1",
            &(user.to_owned(), "Corr3ct-Horse-Battery".to_owned()),
        )
        .await;
        let expected = if signs_in {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, expected, "{user}");
    }
}

// ------------------------------------------------------------------------------------------
// Entra
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_version_follows_the_resource_app() {
    let sb = start().await;
    let handle = sb.handle();
    let tid = sb.demo().tenant_id.clone();
    let (inbound, _) = handle.create_app("Inbound REST API", &[]);
    let (rest_user, rest_secret) = handle.create_app("REST user", &[]);

    // v1: appid, sts issuer, aud = the resource as requested.
    let (status, body) = token_v1(&sb, &rest_user, &rest_secret, &inbound).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["expires_in"].is_string());
    let token = body["access_token"].as_str().expect("token");
    verify_with_jwks(&sb, token).await;
    let claims = jwt_claims(token);
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{tid}/"));
    assert_eq!(claims["appid"], rest_user.as_str());
    assert_eq!(claims["aud"], inbound.as_str());
    assert_eq!(claims["tid"], tid.as_str());
    assert!(claims["oid"].is_string() && claims["iat"].is_number() && claims["nbf"].is_number());
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());
    assert!(claims.get("azp").is_none());

    // The v2 endpoint still gives v1 tokens for a resource that did not ask for v2.
    let scope = format!("{inbound}/.default");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", rest_user.as_str()),
        ("client_secret", rest_secret.as_str()),
        ("scope", scope.as_str()),
    ];
    let (status, body) = token_v2(&sb, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["expires_in"].is_number());
    assert_eq!(
        jwt_claims(body["access_token"].as_str().expect("token"))["ver"],
        "1.0"
    );

    // Misconfiguration: the inbound app asks for v2 tokens; both endpoints now issue v2.
    assert!(handle.set_requested_access_token_version(&inbound, Some(2)));
    for v2_endpoint in [false, true] {
        let body = if v2_endpoint {
            token_v2(&sb, &form).await.1
        } else {
            token_v1(&sb, &rest_user, &rest_secret, &inbound).await.1
        };
        let token = body["access_token"].as_str().expect("token");
        verify_with_jwks(&sb, token).await;
        let claims = jwt_claims(token);
        assert_eq!(claims["ver"], "2.0");
        assert_eq!(claims["iss"], format!("{}/{tid}/v2.0", sb.urls().entra));
        assert_eq!(claims["azp"], rest_user.as_str());
        assert_eq!(claims["aud"], inbound.as_str());
        assert!(claims.get("appid").is_none(), "v2 tokens have no appid");
    }
}

#[tokio::test]
async fn token_errors_name_the_failure() {
    let sb = start().await;
    let handle = sb.handle();
    let (app, secret) = handle.create_app("Outbound", &[]);
    let graph = "https://graph.microsoft.com";

    let (status, body) = token_v1(&sb, &app, "wrong", graph).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_codes"], json!([7000215]));
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS7000215:"))
    );
    assert!(!body.to_string().contains(&secret), "no secret in errors");

    // Knob "wrong secret": the stored secret stops working, the new one works.
    let rotated = handle.rotate_secret(&app).expect("app exists");
    assert_eq!(
        token_v1(&sb, &app, &secret, graph).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(token_v1(&sb, &app, &rotated, graph).await.0, StatusCode::OK);

    let (status, body) = token_v1(&sb, &app, &rotated, "https://unknown.example/").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_resource");

    assert!(handle.expire_secrets(&app));
    let (status, body) = token_v1(&sb, &app, &rotated, graph).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_codes"], json!([7000222]));

    let (status, body) = token_v1(&sb, "00000000-1111-2222-3333-444444444444", "x", graph).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_codes"], json!([700016]));

    // Unknown tenant: on the metadata document and on the token endpoint.
    for path in [
        "/nosuchtenant.onmicrosoft.com/.well-known/openid-configuration",
        "/nosuchtenant.onmicrosoft.com/v2.0/.well-known/openid-configuration",
    ] {
        let (status, _, body) = body_of(
            client()
                .get(format!("{}{path}", sb.urls().entra))
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["error_codes"], json!([90002]));
    }
    let (status, _, body) = body_of(
        client()
            .post(format!("{}/nosuchtenant.com/oauth2/token", sb.urls().entra))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_codes"], json!([90002]));

    // The tenant id is found from the domain's metadata.
    let (status, _, metadata) = body_of(
        client()
            .get(format!(
                "{}/contoso.com/.well-known/openid-configuration",
                sb.urls().entra
            ))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        metadata["issuer"],
        format!("https://sts.windows.net/{}/", sb.demo().tenant_id)
    );
}

fn pkce_pair(seed: &str) -> (String, String) {
    let verifier = format!("{seed}-verifier-{}", "x".repeat(43));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn authorize(
    sb: &Sandbox,
    client_id: &str,
    redirect_uri: &str,
    challenge: &str,
) -> reqwest::Response {
    let mut url = url::Url::parse(&format!(
        "{}/{}/oauth2/v2.0/authorize",
        sb.urls().entra,
        sb.demo().tenant_id
    ))
    .expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid profile offline_access User.Read")
        .append_pair("state", "st-123")
        .append_pair("nonce", "n-456")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    client().get(url).send().await.expect("authorize")
}

fn location_params(response: &reqwest::Response) -> (String, Vec<(String, String)>) {
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let url = url::Url::parse(&location).expect("absolute location");
    let params = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let base = format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.path()
    );
    (base, params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn authorize_with_pkce_issues_single_use_codes() {
    let sb = start().await;
    let handle = sb.handle();
    let redirect = "https://bot.example.test/auth/link/callback";
    let (app, secret) = handle.create_app("m365bot link", &[redirect]);
    handle.set_signed_in_user(SignedInUser {
        oid: "aaaaaaaa-1111-2222-3333-bbbbbbbbbbbb".to_owned(),
        upn: "megan@contoso.onmicrosoft.com".to_owned(),
        name: "Megan Bowen".to_owned(),
        tenant_id: None,
    });

    // Unregistered redirect URI: an error page, never a redirect.
    let response = authorize(&sb, &app, "https://evil.example/cb", "c").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());

    // A wrong verifier fails.
    let (_, challenge) = pkce_pair("one");
    let response = authorize(&sb, &app, redirect, &challenge).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let (base, params) = location_params(&response);
    assert_eq!(base, redirect);
    assert_eq!(param(&params, "state"), Some("st-123"));
    let code = param(&params, "code").expect("code").to_owned();
    let (status, body) = token_v2(
        &sb,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &app),
            ("client_secret", &secret),
            ("code", &code),
            ("redirect_uri", redirect),
            (
                "code_verifier",
                "not-the-verifier-at-all-not-the-verifier-at-all",
            ),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([501481]));

    // The right verifier: tokens, then the code is spent.
    let (verifier, challenge) = pkce_pair("two");
    let response = authorize(&sb, &app, redirect, &challenge).await;
    let (_, params) = location_params(&response);
    let code = param(&params, "code").expect("code").to_owned();
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", app.as_str()),
        ("client_secret", secret.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, body) = token_v2(&sb, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["refresh_token"].is_string(),
        "offline_access was asked"
    );
    let id_token = body["id_token"].as_str().expect("id_token");
    verify_with_jwks(&sb, id_token).await;
    let id = jwt_claims(id_token);
    let tid = sb.demo().tenant_id.clone();
    assert_eq!(id["aud"], app.as_str());
    assert_eq!(id["iss"], format!("{}/{tid}/v2.0", sb.urls().entra));
    assert_eq!(id["ver"], "2.0");
    assert_eq!(id["tid"], tid.as_str());
    assert_eq!(id["oid"], "aaaaaaaa-1111-2222-3333-bbbbbbbbbbbb");
    assert_eq!(id["preferred_username"], "megan@contoso.onmicrosoft.com");
    assert_eq!(id["name"], "Megan Bowen");
    assert_eq!(id["nonce"], "n-456");
    let access = jwt_claims(body["access_token"].as_str().expect("access"));
    assert_eq!(access["aud"], "https://graph.microsoft.com");
    assert_eq!(access["scp"], "User.Read");

    let (status, body) = token_v2(&sb, &form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_codes"], json!([54005]), "codes are single-use");

    // The user cancels.
    handle.set_authorize_outcome(AuthorizeOutcome::Cancel);
    let response = authorize(&sb, &app, redirect, &challenge).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let (_, params) = location_params(&response);
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert_eq!(param(&params, "state"), Some("st-123"));
    assert!(param(&params, "error_description").is_some());
    assert!(param(&params, "code").is_none());
}

// ------------------------------------------------------------------------------------------
// Graph
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn graph_created_app_gets_entra_tokens_at_once() {
    let sb = start().await;
    let token = graph_token(&sb).await;
    let (status, _, app) = graph(
        &sb,
        &token,
        reqwest::Method::POST,
        "/applications",
        Some(json!({
            "displayName": "Contoso M365 support integration - Outbound",
            "signInAudience": "AzureADMyOrg",
            "web": {"redirectUris": ["https://dev12345.service-now.com/oauth_redirect.do"]},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    assert_eq!(app["api"]["requestedAccessTokenVersion"], Value::Null);
    let id = app["id"].as_str().expect("id").to_owned();
    let app_id = app["appId"].as_str().expect("appId").to_owned();

    let (status, _, password) = graph(
        &sb,
        &token,
        reqwest::Method::POST,
        &format!("/applications(appId='{app_id}')/addPassword"),
        Some(json!({"passwordCredential": {"displayName": "m365bot"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{password}");
    let secret = password["secretText"].as_str().expect("secret").to_owned();

    let (status, body) = token_v1(&sb, &app_id, &secret, "https://graph.microsoft.com").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jwt_claims(body["access_token"].as_str().expect("token"))["appid"],
        app_id.as_str()
    );

    // Found by $filter; the secret text is not shown again.
    let (status, _, list) = graph(
        &sb,
        &token,
        reqwest::Method::GET,
        &format!("/applications?$filter=appId%20eq%20'{app_id}'"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let found = list["value"].as_array().expect("value");
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0]["passwordCredentials"][0]["secretText"],
        Value::Null
    );
    assert_eq!(found[0]["passwordCredentials"][0]["hint"], &secret[..3]);
    let (_, _, by_name) = graph(
        &sb,
        &token,
        reqwest::Method::GET,
        "/applications?$filter=displayName%20eq%20'Contoso%20M365%20support%20integration%20-%20Outbound'",
        None,
    )
    .await;
    assert_eq!(by_name["value"].as_array().map(Vec::len), Some(1));

    // PATCH is visible in the shared registry and in tokens.
    let (status, _, _) = graph(
        &sb,
        &token,
        reqwest::Method::PATCH,
        &format!("/applications/{id}"),
        Some(json!({"api": {"requestedAccessTokenVersion": 2}, "identifierUris": [format!("api://{app_id}")]})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        sb.handle()
            .app(&app_id)
            .expect("registered")
            .requested_access_token_version,
        Some(2)
    );
    let (status, body) = token_v1(&sb, &app_id, &secret, &format!("api://{app_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jwt_claims(body["access_token"].as_str().expect("token"))["ver"],
        "2.0"
    );

    let (status, _, sp) = graph(
        &sb,
        &token,
        reqwest::Method::POST,
        "/servicePrincipals",
        Some(json!({"appId": app_id})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, _, sps) = graph(
        &sb,
        &token,
        reqwest::Method::GET,
        &format!("/servicePrincipals?$filter=appId%20eq%20'{app_id}'"),
        None,
    )
    .await;
    assert_eq!(sps["value"][0]["id"], sp["id"]);
    let (status, _, _) = graph(
        &sb,
        &token,
        reqwest::Method::POST,
        "/servicePrincipals",
        Some(json!({"appId": app_id})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn graph_requires_a_graph_token_from_the_emulator() {
    let sb = start().await;
    let url = format!("{}/v1.0/organization", sb.urls().graph);
    let (status, _, body) = body_of(client().get(&url).send().await.expect("request")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");

    let (status, _, _) = body_of(
        client()
            .get(&url)
            .bearer_auth("eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ4In0.")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A valid token for another resource is refused (audience).
    let (other, other_secret) = sb.handle().create_app("Some API", &[]);
    let (_, token) = token_v1(&sb, &other, &other_secret, &other).await;
    let (status, _, body) = body_of(
        client()
            .get(&url)
            .bearer_auth(token["access_token"].as_str().expect("token"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let token = graph_token(&sb).await;
    let (status, _, org) = graph(&sb, &token, reqwest::Method::GET, "/organization", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(org["value"][0]["id"], sb.demo().tenant_id.as_str());
    let (status, _, domains) = graph(&sb, &token, reqwest::Method::GET, "/domains", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        domains["value"]
            .as_array()
            .expect("domains")
            .iter()
            .any(|d| d["id"] == "contoso.onmicrosoft.com" && d["isInitial"] == true)
    );
}

#[tokio::test]
async fn service_health_issues_change_and_page() {
    let sb = start().await;
    let token = graph_token(&sb).await;

    // Paging with @odata.nextLink.
    let mut next = Some(format!(
        "{}/v1.0/admin/serviceAnnouncement/issues?$top=1",
        sb.urls().graph
    ));
    let mut ids = Vec::new();
    while let Some(url) = next.take() {
        assert!(ids.len() < 10, "paging does not end");
        let (status, _, page) = graph(&sb, &token, reqwest::Method::GET, &url, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for issue in page["value"].as_array().expect("value") {
            ids.push(issue["id"].as_str().expect("id").to_owned());
        }
        next = page["@odata.nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(sorted(ids), vec!["EX512345", "SP487654", "TM498765"]);

    // A watermark poll sees only what changed.
    let watermark = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let filter = format!(
        "/admin/serviceAnnouncement/issues?$filter=lastModifiedDateTime%20ge%20{watermark}"
    );
    let (_, _, before) = graph(&sb, &token, reqwest::Method::GET, &filter, None).await;
    assert_eq!(before["value"], json!([]));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(sb.handle().advance_issue(
        "TM498765",
        IssueAdvance {
            post: Some("We've identified the cause and are deploying a fix.".to_owned()),
            status: Some("RestoringService".to_owned()),
            resolve: false,
        }
    ));
    let (_, _, after) = graph(&sb, &token, reqwest::Method::GET, &filter, None).await;
    let changed = after["value"].as_array().expect("value");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["id"], "TM498765");
    assert_eq!(changed[0]["status"], "RestoringService");
    assert_eq!(changed[0]["posts"].as_array().map(Vec::len), Some(2));

    assert!(sb.handle().advance_issue(
        "TM498765",
        IssueAdvance {
            post: Some("Final status: resolved.".to_owned()),
            status: None,
            resolve: true,
        }
    ));
    let (status, _, issue) = graph(
        &sb,
        &token,
        reqwest::Method::GET,
        "/admin/serviceAnnouncement/issues/TM498765",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(issue["isResolved"], true);
    assert_eq!(issue["status"], "ServiceRestored");
    assert!(issue["endDateTime"].is_string());
    let (_, _, overviews) = graph(
        &sb,
        &token,
        reqwest::Method::GET,
        "/admin/serviceAnnouncement/healthOverviews?$expand=issues",
        None,
    )
    .await;
    let exchange = overviews["value"]
        .as_array()
        .expect("value")
        .iter()
        .find(|o| o["service"] == "Exchange Online")
        .expect("exchange")
        .clone();
    assert_eq!(exchange["status"], "ServiceDegradation");
    assert_eq!(exchange["issues"].as_array().map(Vec::len), Some(1));
    let (status, _, _) = graph(
        &sb,
        &token,
        reqwest::Method::GET,
        "/admin/serviceAnnouncement/issues/NOPE1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// ------------------------------------------------------------------------------------------
// faults
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn latency_is_added_to_every_request() {
    let sb = start().await;
    let url = format!(
        "{}/common/v2.0/.well-known/openid-configuration",
        sb.urls().entra
    );
    sb.handle()
        .set_faults(Emulator::Entra, FaultConfig::none().with_latency_ms(150));
    let before = sb.handle().request_count(Emulator::Entra);
    let started = Instant::now();
    for _ in 0..3 {
        let response = client().get(&url).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(440), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(sb.handle().request_count(Emulator::Entra) - before, 3);
    sb.handle().set_faults(Emulator::Entra, FaultConfig::none());
    let started = Instant::now();
    client().get(&url).send().await.expect("request");
    assert!(started.elapsed() < Duration::from_millis(140));
}

#[tokio::test]
async fn every_nth_request_is_throttled_with_retry_after() {
    let sb = start().await;
    sb.handle().set_faults(
        Emulator::ServiceNow,
        FaultConfig::none()
            .with_throttle_every(3, 2)
            .with_path_prefix("/api/"),
    );
    let mut throttled = 0;
    for _ in 0..9 {
        let (status, headers, body) = sn_get(
            &sb,
            "/api/now/v2/table/sys_user_role?sysparm_limit=1",
            &admin(&sb),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            throttled += 1;
            assert_eq!(headers["retry-after"], "2");
            assert_eq!(body["error"]["message"], "Rate limit exceeded");
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert_eq!(throttled, 3);
    // The prefix keeps /oauth_token.do out of it.
    let demo = sb.demo().clone();
    for _ in 0..3 {
        let response = client()
            .post(format!("{}/oauth_token.do", sb.urls().servicenow))
            .form(&[
                ("grant_type", "password"),
                ("client_id", demo.servicenow_oauth_client_id.as_str()),
                (
                    "client_secret",
                    demo.servicenow_oauth_client_secret.as_str(),
                ),
                ("username", demo.servicenow_admin_user.as_str()),
                ("password", demo.servicenow_admin_password.as_str()),
            ])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn server_error_rate_is_roughly_honoured() {
    let sb = start().await;
    let token = graph_token(&sb).await;
    sb.handle().set_faults(
        Emulator::Graph,
        FaultConfig::none().with_error_rate(0.3).with_seed(7),
    );
    let url = format!("{}/v1.0/organization", sb.urls().graph);
    let mut errors = 0;
    for _ in 0..200 {
        let response = client()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("request");
        match response.status() {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                errors += 1;
                assert!(response.headers().contains_key("retry-after"));
                let body: Value = response.json().await.expect("json");
                assert!(body["error"]["innerError"]["request-id"].is_string());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((30..=90).contains(&errors), "{errors} of 200");
    // Probabilistic 429 as well.
    sb.handle().set_faults(
        Emulator::Graph,
        FaultConfig::none().with_throttle_probability(1.0, 4),
    );
    let response = client()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "4");
}

#[tokio::test]
async fn faults_set_at_start_apply_from_the_first_request() {
    let options = SandboxOptions {
        entra_faults: FaultConfig::none().with_throttle_every(1, 3),
        ..SandboxOptions::default()
    };
    let sb = Sandbox::start(options).await.expect("starts");
    let response = client()
        .get(format!("{}/common/discovery/keys", sb.urls().entra))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(sb.handle().faults(Emulator::Entra).retry_after_secs, 3);
}

#[tokio::test]
async fn shutdown_stops_the_emulators() {
    let sb = start().await;
    let url = format!("{}/common/discovery/keys", sb.urls().entra);
    assert!(client().get(&url).send().await.is_ok());
    sb.shutdown().await;
    assert!(client().get(&url).send().await.is_err());
}

#[tokio::test]
async fn inbound_entra_tokens_authenticate_through_the_oidc_configuration() {
    let sb = start().await;
    let handle = sb.handle();
    let (inbound, _) = handle.create_app("Inbound REST API", &[]);
    let (rest_user, rest_secret) = handle.create_app("REST user", &[]);
    let admin = admin(&sb);
    let (status, _, user) = sn_send(
        &sb,
        reqwest::Method::POST,
        "/api/now/v2/table/sys_user",
        &admin,
        json!({"user_name": rest_user, "name": "M365 integration", "web_service_access_only": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let role = sb
        .handle()
        .sn_query("sys_user_role", "name=incident_manager")
        .and_then(|rows| rows.into_iter().next())
        .expect("role");
    let (status, _, _) = sn_send(
        &sb,
        reqwest::Method::POST,
        "/api/now/v2/table/sys_user_has_role",
        &admin,
        json!({"user": user["result"]["sys_id"], "role": role["sys_id"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, config) = sn_send(
        &sb,
        reqwest::Method::POST,
        "/api/now/v2/table/oidc_provider_configuration",
        &admin,
        json!({
            "name": "Contoso Azure",
            "oidc_url": format!("{}/contoso.onmicrosoft.com/.well-known/openid-configuration", sb.urls().entra),
            "user_claim": "appid",
            "user_field": "user_name",
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, entity) = sn_send(
        &sb,
        reqwest::Method::POST,
        "/api/now/v2/table/oauth_oidc_entity",
        &admin,
        json!({
            "name": "contoso_application_inbound_api",
            "type": "oidc_provider",
            "client_id": inbound,
            "oidc_provider_configuration": config["result"]["sys_id"],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{entity}");
    // The OIDC entity is listed with its parent table, like in the real instance.
    let (_, _, parents) = sn_get(
        &sb,
        &format!("/api/now/v2/table/oauth_entity?sysparm_query=client_id%3D{inbound}&sysparm_fields=name,sys_class_name"),
        &admin,
    )
    .await;
    assert_eq!(parents["result"][0]["sys_class_name"], "oauth_oidc_entity");

    let call = |token: String| {
        let url = format!(
            "{}/api/now/v2/table/incident?sysparm_limit=1",
            sb.urls().servicenow
        );
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("request")
                .status()
        }
    };
    let (status, body) = token_v1(&sb, &rest_user, &rest_secret, &inbound).await;
    assert_eq!(status, StatusCode::OK);
    let v1 = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(call(v1).await, StatusCode::OK);

    // An inbound app issuing v2 tokens breaks the chain: no appid claim, other issuer.
    handle.set_requested_access_token_version(&inbound, Some(2));
    let (_, body) = token_v1(&sb, &rest_user, &rest_secret, &inbound).await;
    let v2 = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(jwt_claims(&v2)["ver"], "2.0");
    assert_eq!(call(v2).await, StatusCode::UNAUTHORIZED);

    // A token for another audience is refused as well.
    handle.set_requested_access_token_version(&inbound, None);
    let (_, body) = token_v1(&sb, &rest_user, &rest_secret, "https://graph.microsoft.com").await;
    let graph = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(call(graph).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn seed_has_the_app_scope_and_a_configurable_case_field() {
    let options = SandboxOptions {
        case_reference_field: "u_microsoft_case".to_owned(),
        ..SandboxOptions::default()
    };
    let sb = Sandbox::start(options).await.expect("starts");
    let admin = admin(&sb);
    let (_, _, cases) = sn_get(
        &sb,
        "/api/now/v2/table/incident?sysparm_query=u_microsoft_caseISNOTEMPTY&sysparm_fields=number,u_microsoft_case",
        &admin,
    )
    .await;
    let cases = cases["result"].as_array().expect("rows").clone();
    assert_eq!(cases.len(), 3, "{cases:?}");
    assert!(cases.iter().all(|c| {
        c["u_microsoft_case"]
            .as_str()
            .is_some_and(|v| v.len() == 16)
    }));
    let (_, _, dictionary) = sn_get(
        &sb,
        "/api/now/v2/table/sys_dictionary?sysparm_query=name%3Dincident%5Eelement%3Du_microsoft_case",
        &admin,
    )
    .await;
    assert_eq!(dictionary["result"][0]["internal_type"], "string");

    // The app is installed: found as a store app and, like any sys_store_app row, in sys_scope.
    for table in ["sys_store_app", "sys_scope"] {
        let (status, _, scope) = sn_get(
            &sb,
            &format!("/api/now/v2/table/{table}?sysparm_query=scope%3Dx_mioms_m365_assis"),
            &admin,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            scope["result"][0]["sys_class_name"], "sys_store_app",
            "{table}"
        );
    }

    // Turning cross-scope reads off leaves the app's refusal in the system log.
    sb.handle().sn_set_oauth_entity_cross_scope_readable(false);
    let (_, _, log) = sn_get(
        &sb,
        "/api/now/v2/table/syslog?sysparm_query=messageLIKErefused%20due%20to%20the%20table%27s%20cross-scope",
        &admin,
    )
    .await;
    assert_eq!(log["result"].as_array().map(Vec::len), Some(1));
}
