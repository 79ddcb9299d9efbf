//! The upstream clients over real HTTP against small fakes on 127.0.0.1 serving the wire
//! samples with their statuses and headers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use m365bot::error::RetryKind;
use m365bot::metrics::Metrics;
use m365bot::upstream::DecodeError;
use m365bot::upstream::entra::{EntraClient, EntraError, Pkce};
use m365bot::upstream::graph::{
    self, ApplicationUpdate, ClientCredentials, GraphClient, GraphError, SignInAudience,
    StaticToken,
};
use m365bot::upstream::servicenow::{
    EncodedQuery, ServiceNowAuth, ServiceNowClient, ServiceNowError,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use url::Url;

#[path = "support/upstream.rs"]
mod fake;

use fake::{Canned, Fake, http};

const TABLE: &str = "/api/now/v2/table/incident";

fn basic() -> ServiceNowAuth {
    ServiceNowAuth::Basic {
        user: "bot".to_owned(),
        password: SecretString::from("pa55word"),
    }
}

fn servicenow(fake: &Fake, auth: ServiceNowAuth) -> ServiceNowClient {
    ServiceNowClient::new(http(), fake.base.clone(), auth)
}

fn rows(numbers: &[&str]) -> Value {
    json!({"result": numbers.iter().map(|n| json!({"number": n, "sys_id": format!("id{n}")})).collect::<Vec<_>>()})
}

fn graph_client(fake: &Fake) -> GraphClient {
    GraphClient::new(
        http(),
        Url::parse(&fake.url("v1.0/")).expect("url"),
        Arc::new(StaticToken(SecretString::from("graph-token"))),
    )
}

// ---------------------------------------------------------------- ServiceNow

#[tokio::test]
async fn pagination_continues_past_a_short_acl_filtered_page() {
    let fake = Fake::start().await;
    let next = |offset: u32| {
        format!(
            "<{}?sysparm_query=active%3Dtrue&sysparm_limit=2&sysparm_offset={offset}&sysparm_exclude_reference_link=true&sysparm_display_value=false>;rel=\"next\",<{}?sysparm_offset=0>;rel=\"first\"",
            fake.url(TABLE),
            fake.url(TABLE)
        )
    };
    fake.on(
        "GET",
        TABLE,
        &["sysparm_offset=0&"],
        vec![Canned::json(200, &rows(&["INC1", "INC2"])).header("link", &next(2))],
    );
    // Two rows matched, one was hidden by an ACL after the limit: a short page, not the end.
    fake.on(
        "GET",
        TABLE,
        &["sysparm_offset=2&"],
        vec![Canned::json(200, &rows(&["INC3"])).header("link", &next(4))],
    );
    fake.on(
        "GET",
        TABLE,
        &["sysparm_offset=4&"],
        vec![Canned::json(200, &rows(&["INC5", "INC6"])).header(
            "link",
            &format!("<{}?sysparm_offset=0>;rel=\"first\"", fake.url(TABLE)),
        )],
    );
    let client = servicenow(&fake, basic()).with_page_size(2);
    let records = client
        .query("incident", "active=true", &["number", "sys_id"], None)
        .await
        .unwrap();
    let numbers: Vec<&str> = records.iter().filter_map(|r| r.str("number")).collect();
    assert_eq!(numbers, ["INC1", "INC2", "INC3", "INC5", "INC6"]);

    let requests = fake.requests_to(TABLE);
    assert_eq!(requests.len(), 3);
    let first = &requests[0];
    assert_eq!(
        first.query_param("sysparm_query").as_deref(),
        Some("active=true")
    );
    assert_eq!(
        first.query_param("sysparm_fields").as_deref(),
        Some("number,sys_id")
    );
    assert_eq!(first.query_param("sysparm_limit").as_deref(), Some("2"));
    assert_eq!(
        first
            .query_param("sysparm_exclude_reference_link")
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        first.query_param("sysparm_display_value").as_deref(),
        Some("false")
    );
    assert!(first.header("authorization").unwrap().starts_with("Basic "));
    assert_eq!(first.header("accept"), Some("application/json"));
    assert_eq!(
        requests[2].query_param("sysparm_offset").as_deref(),
        Some("4")
    );
}

#[tokio::test]
async fn a_limit_stops_paging_and_truncates() {
    let fake = Fake::start().await;
    let link = format!("<{}?sysparm_offset=2>;rel=\"next\"", fake.url(TABLE));
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![Canned::json(200, &rows(&["INC1", "INC2"])).header("link", &link)],
    );
    let records = servicenow(&fake, basic())
        .query("incident", "", &[], Some(1))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(fake.requests_to(TABLE).len(), 1);
    assert_eq!(
        fake.requests_to(TABLE)[0]
            .query_param("sysparm_limit")
            .as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn a_repeated_next_link_is_an_error_not_a_loop() {
    let fake = Fake::start().await;
    let link = format!("<{}?sysparm_offset=2>;rel=\"next\"", fake.url(TABLE));
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![Canned::json(200, &rows(&["INC1"])).header("link", &link)],
    );
    let err = servicenow(&fake, basic())
        .query("incident", "", &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceNowError::Pagination(_)), "{err:?}");
    assert_eq!(fake.requests_to(TABLE).len(), 2);
}

#[tokio::test]
async fn list_404_no_record_found_is_empty_and_get_is_none() {
    let fake = Fake::start().await;
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![Canned::sample("sn-error-404-no-record.json")],
    );
    let missing = format!("{TABLE}/0123456789abcdef0123456789abcdef");
    fake.on(
        "GET",
        &missing,
        &[],
        vec![Canned::sample("sn-error-404-no-record.json")],
    );
    fake.on(
        "DELETE",
        &missing,
        &[],
        vec![Canned::sample("sn-error-404-no-record.json")],
    );
    let client = servicenow(&fake, basic());
    assert!(
        client
            .query("incident", "active=true", &[], None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        client
            .get("incident", "0123456789abcdef0123456789abcdef", &["number"])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !client
            .delete("incident", "0123456789abcdef0123456789abcdef")
            .await
            .unwrap()
    );
    assert_eq!(
        fake.requests_to(&missing)[0]
            .query_param("sysparm_fields")
            .as_deref(),
        Some("number")
    );
}

#[tokio::test]
async fn create_update_delete_send_json_and_read_the_result() {
    let fake = Fake::start().await;
    let one = format!("{TABLE}/a9e30c7dc61122760116894de7bcc7bd");
    fake.on(
        "POST",
        TABLE,
        &[],
        vec![Canned::json(201, &json!({"result": {"sys_id": "a9e30c7dc61122760116894de7bcc7bd", "short_description": "Mail down"}}))],
    );
    fake.on(
        "PATCH",
        &one,
        &[],
        vec![Canned::sample("sn-table-get-incident-record-200.json")],
    );
    fake.on(
        "DELETE",
        &one,
        &[],
        vec![Canned::raw(204, "text/plain", "")],
    );
    let client = servicenow(&fake, basic());
    let mut fields = serde_json::Map::new();
    fields.insert("short_description".to_owned(), json!("Mail down"));
    let created = client.create("incident", &fields).await.unwrap();
    assert_eq!(created.sys_id(), Some("a9e30c7dc61122760116894de7bcc7bd"));
    let mut note = serde_json::Map::new();
    note.insert("work_notes".to_owned(), json!("from the bot"));
    let updated = client
        .update("incident", "a9e30c7dc61122760116894de7bcc7bd", &note)
        .await
        .unwrap();
    assert_eq!(updated.str("number"), Some("INC0000046"));
    assert!(
        client
            .delete("incident", "a9e30c7dc61122760116894de7bcc7bd")
            .await
            .unwrap()
    );

    let post = &fake.requests_to(TABLE)[0];
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&post.body).unwrap(),
        json!({"short_description": "Mail down"})
    );
    let patch = &fake.requests_to(&one)[0];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        serde_json::from_str::<Value>(&patch.body).unwrap(),
        json!({"work_notes": "from the bot"})
    );
}

#[tokio::test]
async fn rate_limit_429_is_transient_with_its_retry_after() {
    let fake = Fake::start().await;
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![Canned::sample("sn-error-429-rate-limit.json").header("retry-after", "120")],
    );
    let err = servicenow(&fake, basic())
        .query("incident", "", &[], None)
        .await
        .unwrap_err();
    // A wait beyond the retry budget is not taken: the 429 comes back at once.
    assert_eq!(fake.requests_to(TABLE).len(), 1);
    assert_eq!(
        err.retry_kind(),
        RetryKind::Transient {
            retry_after: Some(Duration::from_secs(120))
        }
    );
    assert!(
        matches!(err, ServiceNowError::Api { status: 429, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn html_pages_become_typed_errors() {
    let fake = Fake::start().await;
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![
            Canned::raw(
                502,
                "text/html",
                "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>",
            ),
            Canned::raw(
                200,
                "text/html",
                "<!DOCTYPE html><html><head><title>Instance Hibernating page</title></head><body>Your instance is hibernating</body></html>",
            ),
        ],
    );
    let client = servicenow(&fake, basic());
    let err = client.query("incident", "", &[], None).await.unwrap_err();
    let ServiceNowError::Http {
        status,
        summary,
        retry,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*status, 502);
    assert_eq!(summary, "HTML page \"502 Bad Gateway\"");
    assert!(retry.is_retryable());

    let err = client.query("incident", "", &[], None).await.unwrap_err();
    let ServiceNowError::Decode {
        status: 200, cause, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        *cause,
        DecodeError::Html {
            title: Some("Instance Hibernating page".to_owned())
        }
    );
    assert!(err.to_string().contains("hibernating"), "{err}");
}

#[tokio::test]
async fn truncated_json_is_a_decode_error() {
    let fake = Fake::start().await;
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![Canned::raw(
            200,
            "application/json",
            r#"{"result":[{"number":"INC1"},{"numb"#,
        )],
    );
    let err = servicenow(&fake, basic())
        .query("incident", "", &[], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ServiceNowError::Decode {
                cause: DecodeError::Truncated { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.retry_kind(), RetryKind::Transient { retry_after: None });
}

#[tokio::test]
async fn wrong_types_are_decode_errors_not_panics() {
    let fake = Fake::start().await;
    let one = format!("{TABLE}/a9e30c7dc61122760116894de7bcc7bd");
    fake.on(
        "GET",
        &one,
        &[],
        vec![Canned::json(200, &json!({"result": "not a record"}))],
    );
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![Canned::json(200, &json!({"result": [1, 2]}))],
    );
    fake.on(
        "GET",
        "/v1.0/applications",
        &[],
        vec![Canned::json(
            200,
            &json!({"value": [{"id": "x", "appId": 5}]}),
        )],
    );
    fake.on(
        "POST",
        "/contoso.com/oauth2/token",
        &[],
        vec![Canned::json(
            200,
            &json!({"access_token": "leaky-token-value", "expires_in": true}),
        )],
    );
    let client = servicenow(&fake, basic());
    let err = client
        .get("incident", "a9e30c7dc61122760116894de7bcc7bd", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ServiceNowError::Decode {
                cause: DecodeError::Shape { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let err = client.query("incident", "", &[], None).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ServiceNowError::Decode {
                cause: DecodeError::Shape { .. },
                ..
            }
        ),
        "{err:?}"
    );

    let err = graph_client(&fake)
        .find_application_by_app_id("x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            GraphError::Decode {
                cause: DecodeError::Shape { .. },
                ..
            }
        ),
        "{err:?}"
    );

    let entra = EntraClient::new(http(), fake.base.clone());
    let err = entra
        .client_credentials_v1("contoso.com", "cid", &SecretString::from("s3cret"), "res")
        .await
        .unwrap_err();
    assert!(matches!(&err, EntraError::Decode { .. }), "{err:?}");
    assert!(!err.to_string().contains("leaky-token-value"), "{err}");
    assert!(!format!("{err:?}").contains("leaky-token-value"));
}

#[tokio::test]
async fn oauth_token_is_fetched_once_and_reused() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/oauth_token.do",
        &[],
        vec![Canned::sample("sn-oauth-token-200.json")],
    );
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![Canned::sample("sn-table-get-list-200.json")],
    );
    let client = servicenow(
        &fake,
        ServiceNowAuth::OAuthClientCredentials {
            client_id: "sn-client".to_owned(),
            client_secret: SecretString::from("sn-secret"),
        },
    );
    let (a, b) = tokio::join!(
        client.query("incident", "", &[], None),
        client.query("incident", "", &[], None)
    );
    a.unwrap();
    b.unwrap();
    client.query("incident", "", &[], None).await.unwrap();

    let tokens = fake.requests_to("/oauth_token.do");
    assert_eq!(tokens.len(), 1, "one token for three calls");
    assert_eq!(
        tokens[0].form_param("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        tokens[0].form_param("client_id").as_deref(),
        Some("sn-client")
    );
    assert_eq!(
        tokens[0].form_param("client_secret").as_deref(),
        Some("sn-secret")
    );
    for request in fake.requests_to(TABLE) {
        assert_eq!(
            request.header("authorization"),
            Some(
                "Bearer 2wRlsRCT2SYjCCJP91kwo2EFzj5qg4O3I3aC09e0-0hz6Ib3YK7If-LMiNorNuglfqbkL4AfkYC92KYHUCcbpQ"
            )
        );
    }
    assert!(!format!("{client:?}").contains("sn-secret"));
}

#[tokio::test]
async fn a_401_renews_the_oauth_token_once() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/oauth_token.do",
        &[],
        vec![Canned::sample("sn-oauth-token-200.json")],
    );
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![
            Canned::sample("sn-error-401-not-authenticated.json"),
            Canned::sample("sn-table-get-list-200.json"),
        ],
    );
    let client = servicenow(
        &fake,
        ServiceNowAuth::OAuthClientCredentials {
            client_id: "c".to_owned(),
            client_secret: SecretString::from("s"),
        },
    );
    let records = client.query("incident", "", &[], None).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(fake.requests_to("/oauth_token.do").len(), 2);
}

#[tokio::test]
async fn token_endpoint_refusal_is_a_token_error() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/oauth_token.do",
        &[],
        vec![Canned::sample("sn-oauth-token-401.json")],
    );
    let client = servicenow(
        &fake,
        ServiceNowAuth::OAuthClientCredentials {
            client_id: "c".to_owned(),
            client_secret: SecretString::from("do-not-show"),
        },
    );
    let err = client.query("incident", "", &[], None).await.unwrap_err();
    assert!(
        matches!(&err, ServiceNowError::Token { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains("do-not-show"));
    assert!(
        fake.requests_to(TABLE).is_empty(),
        "no table call without a token"
    );
}

/// `incident` extends `task`; each has its own dictionary rows (plus the collection row with
/// an empty element).
fn dictionary_fakes(fake: &Fake) {
    let objects = "/api/now/v2/table/sys_db_object";
    fake.on(
        "GET",
        objects,
        &["sysparm_query=name=incident&"],
        vec![Canned::json(
            200,
            &json!({"result": [{"name": "incident", "super_class": "1d2a6c9dc0a8016501a3cd2ba8d54e24"}]}),
        )],
    );
    fake.on(
        "GET",
        &format!("{objects}/1d2a6c9dc0a8016501a3cd2ba8d54e24"),
        &[],
        vec![Canned::json(
            200,
            &json!({"result": {"name": "task", "super_class": ""}}),
        )],
    );
    fake.on(
        "GET",
        objects,
        &[],
        vec![Canned::json(200, &json!({"result": []}))],
    );
    let dictionary = "/api/now/v2/table/sys_dictionary";
    fake.on(
        "GET",
        dictionary,
        &["sysparm_query=nameINincident,task&"],
        vec![Canned::json(
            200,
            &json!({"result": [
                {"name": "incident", "element": ""},
                {"name": "incident", "element": "caller_id", "column_label": "Caller"},
                {"name": "incident", "element": "close_code", "column_label": "Resolution code"},
                {"name": "task", "element": ""},
                {"name": "task", "element": "number", "column_label": "Number"},
                {"name": "task", "element": "short_description", "column_label": "Short description"},
                {"name": "task", "element": "sys_id", "column_label": "Sys ID"},
                {"name": "task", "element": "sys_updated_on", "column_label": "Updated"}
            ]}),
        )],
    );
}

#[tokio::test]
async fn ensure_fields_names_missing_columns_including_inherited_ones() {
    let fake = Fake::start().await;
    dictionary_fakes(&fake);
    let client = servicenow(&fake, basic());
    assert_eq!(
        client.table_hierarchy("incident").await.unwrap(),
        ["incident", "task"]
    );
    let err = client
        .ensure_fields(
            "incident",
            &[
                "number",
                "caller_id.email",
                "u_m365_case_id",
                "sys_updated_on",
            ],
        )
        .await
        .unwrap_err();
    let ServiceNowError::MissingFields { table, missing } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(table, "incident");
    assert_eq!(missing, &["u_m365_case_id"]);
    assert!(err.to_string().contains("u_m365_case_id"));
    assert!(err.to_string().contains("silently ignored"));

    let query = EncodedQuery::new()
        .and(
            "sys_updated_on",
            m365bot::upstream::servicenow::Operator::Ge,
            "2025-01-01 00:00:00",
        )
        .order_by("sys_updated_on");
    client
        .ensure_fields("incident", &query.fields())
        .await
        .unwrap();
    assert_eq!(
        fake.requests_to("/api/now/v2/table/sys_dictionary").len(),
        1,
        "one read for the table and its parents, then cached"
    );

    let err = client.columns("x_nope").await.unwrap_err();
    assert!(
        matches!(&err, ServiceNowError::UnknownTable(t) if t == "x_nope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn query_checked_refuses_before_querying_an_unknown_column() {
    let fake = Fake::start().await;
    dictionary_fakes(&fake);
    fake.on("GET", TABLE, &[], vec![Canned::json(200, &rows(&["INC1"]))]);
    let client = servicenow(&fake, basic());
    let query = EncodedQuery::new().eq("u_missing", "x");
    let err = client
        .query_checked("incident", &query, &["number"], None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceNowError::MissingFields { .. }));
    assert!(fake.requests_to(TABLE).is_empty());
    let query = EncodedQuery::new().eq("number", "INC1");
    assert_eq!(
        client
            .query_checked("incident", &query, &["number"], None)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn unreachable_instance_is_a_network_error_and_metrics_count_outcomes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let metrics = Arc::new(Metrics::default());
    let client = ServiceNowClient::new(
        http(),
        Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
        basic(),
    )
    .with_metrics(metrics.clone());
    let err = client.query("incident", "", &[], None).await.unwrap_err();
    assert_eq!(err.retry_kind(), RetryKind::Network, "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        !text.contains("pa55word") && !text.contains("sysparm"),
        "{text}"
    );

    let fake = Fake::start().await;
    fake.on(
        "GET",
        TABLE,
        &[],
        vec![
            Canned::sample("sn-table-get-list-200.json"),
            Canned::sample("sn-error-429-rate-limit.json"),
        ],
    );
    let client = servicenow(&fake, basic()).with_metrics(metrics.clone());
    client.query("incident", "", &[], None).await.unwrap();
    client.query("incident", "", &[], None).await.unwrap_err();
    let text = metrics.render();
    for outcome in ["network", "ok", "transient"] {
        assert!(
            text.contains(&format!(
                "m365bot_upstream_calls_total{{upstream=\"servicenow\",outcome=\"{outcome}\"}} 1"
            )),
            "{outcome}: {text}"
        );
    }
}

// ---------------------------------------------------------------- Entra ID

#[tokio::test]
async fn v1_client_credentials_against_a_fake_token_endpoint() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/contoso.com/oauth2/token",
        &[],
        vec![
            Canned::sample("entra-v1-token-200.json"),
            Canned::sample("entra-token-error-7000215-invalid-secret.json"),
        ],
    );
    let entra = EntraClient::new(http(), fake.base.clone());
    let secret = SecretString::from("the-secret-value");
    let token = entra
        .client_credentials_v1(
            "contoso.com",
            "625bc9f6",
            &secret,
            "https://service.contoso.com/",
        )
        .await
        .unwrap();
    assert_eq!(token.expires_in, Duration::from_secs(3599));
    assert_eq!(
        token.resource.as_deref(),
        Some("https://service.contoso.com/")
    );
    let request = &fake.requests_to("/contoso.com/oauth2/token")[0];
    assert_eq!(
        request.form_param("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        request.form_param("resource").as_deref(),
        Some("https://service.contoso.com/")
    );
    assert_eq!(
        request.form_param("client_secret").as_deref(),
        Some("the-secret-value")
    );
    assert_eq!(request.form_param("scope"), None);

    let err = entra
        .client_credentials_v1(
            "contoso.com",
            "625bc9f6",
            &secret,
            "https://service.contoso.com/",
        )
        .await
        .unwrap_err();
    assert_eq!(err.aadsts_code(), Some(7000215));
    assert!(err.hint().unwrap().contains("Secret ID"));
    assert!(!err.to_string().contains("the-secret-value"));
    assert!(!format!("{err:?}").contains("the-secret-value"));
}

#[tokio::test]
async fn v2_client_credentials_send_a_scope() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/8eaef023-2b34-4da1-9baa-8bc8c9d6a490/oauth2/v2.0/token",
        &[],
        vec![Canned::sample("entra-v2-token-200.json")],
    );
    let entra = EntraClient::new(http(), fake.base.clone());
    let token = entra
        .client_credentials_v2(
            "8eaef023-2b34-4da1-9baa-8bc8c9d6a490",
            "cid",
            &SecretString::from("s"),
            graph::GRAPH_DEFAULT_SCOPE,
        )
        .await
        .unwrap();
    assert_eq!(token.expires_in, Duration::from_secs(3599));
    let request = &fake.requests()[0];
    assert_eq!(
        request.form_param("scope").as_deref(),
        Some("https://graph.microsoft.com/.default")
    );
    assert_eq!(request.form_param("resource"), None);
}

#[tokio::test]
async fn openid_metadata_validates_the_tenant() {
    let fake = Fake::start().await;
    fake.on(
        "GET",
        "/contoso.onmicrosoft.com/.well-known/openid-configuration",
        &[],
        vec![Canned::sample("entra-openid-configuration-v1-tenant.json")],
    );
    fake.on(
        "GET",
        "/test/.well-known/openid-configuration",
        &[],
        vec![Canned::sample("entra-error-90002-tenant-not-found.json")],
    );
    fake.on(
        "GET",
        "/common/discovery/keys",
        &[],
        vec![Canned::sample("entra-jwks-v1-common.json")],
    );
    let entra = EntraClient::new(http(), fake.base.clone());
    let config = entra
        .openid_configuration("contoso.onmicrosoft.com")
        .await
        .unwrap();
    assert_eq!(
        config.tenant_id.as_deref(),
        Some("8eaef023-2b34-4da1-9baa-8bc8c9d6a490")
    );
    let err = entra.openid_configuration("test").await.unwrap_err();
    assert_eq!(err.aadsts_code(), Some(90002));
    assert!(err.to_string().contains("spelling"), "{err}");
    let jwks = entra
        .jwks(&Url::parse(&fake.url("common/discovery/keys")).unwrap())
        .await
        .unwrap();
    assert_eq!(jwks.keys.len(), 2);
    let err = entra.openid_configuration("bad/tenant").await.unwrap_err();
    assert!(matches!(err, EntraError::InvalidInput(_)));
    assert_eq!(fake.requests().len(), 3, "an invalid tenant sends nothing");
}

#[tokio::test]
async fn authorization_code_exchange_sends_the_pkce_verifier() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/contoso.com/oauth2/v2.0/token",
        &[],
        vec![Canned::json(
            200,
            &json!({"token_type": "Bearer", "scope": "openid profile", "expires_in": 3600,
                    "access_token": "at", "id_token": "header.payload.sig"}),
        )],
    );
    let entra = EntraClient::new(http(), fake.base.clone());
    let pkce = Pkce::generate();
    let tokens = entra
        .exchange_code(
            "contoso.com",
            "cid",
            &SecretString::from("s"),
            "the-code",
            "https://bot.example/auth/callback",
            pkce.verifier(),
        )
        .await
        .unwrap();
    assert_eq!(
        tokens.id_token.unwrap().expose_secret(),
        "header.payload.sig"
    );
    assert_eq!(tokens.expires_in, Duration::from_secs(3600));
    let request = &fake.requests()[0];
    assert_eq!(
        request.form_param("grant_type").as_deref(),
        Some("authorization_code")
    );
    assert_eq!(request.form_param("code").as_deref(), Some("the-code"));
    assert_eq!(
        request.form_param("code_verifier").as_deref(),
        Some(pkce.verifier())
    );
    assert_eq!(
        request.form_param("redirect_uri").as_deref(),
        Some("https://bot.example/auth/callback")
    );
}

// ---------------------------------------------------------------- Graph

#[tokio::test]
async fn graph_service_health_follows_next_links() {
    let fake = Fake::start().await;
    let issues = "/v1.0/admin/serviceAnnouncement/issues";
    let mut first = Canned::sample("graph-serviceannouncement-issues-200.json");
    let mut body: Value = serde_json::from_slice(&first.body).unwrap();
    body["@odata.nextLink"] = json!(fake.url(&format!("{issues}?$skiptoken=page2")));
    first.body = serde_json::to_vec(&body).unwrap();
    let mut second_issue = body["value"][0].clone();
    second_issue["id"] = json!("EX999999");
    second_issue["status"] = json!("investigating");
    fake.on(
        "GET",
        issues,
        &["$skiptoken=page2"],
        vec![Canned::json(200, &json!({"value": [second_issue]}))],
    );
    fake.on(
        "GET",
        issues,
        &["$filter=lastModifiedDateTime ge 2020-11-01T00:00:00Z"],
        vec![first],
    );
    let client = graph_client(&fake);
    let since = Utc.with_ymd_and_hms(2020, 11, 1, 0, 0, 0).unwrap();
    let found = client.service_health_issues(Some(since)).await.unwrap();
    let ids: Vec<&str> = found.iter().map(|issue| issue.id.as_str()).collect();
    assert_eq!(ids, ["EX226792", "EX999999"]);
    assert_eq!(
        found[1].status,
        Some(graph::ServiceHealthStatus::Investigating)
    );
    let requests = fake.requests_to(issues);
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].header("authorization"),
        Some("Bearer graph-token")
    );
    assert!(
        requests[0].query.contains("%20ge%20"),
        "spaces as %20: {}",
        requests[0].query
    );
}

#[tokio::test]
async fn graph_refuses_next_links_to_other_hosts() {
    let fake = Fake::start().await;
    fake.on(
        "GET",
        "/v1.0/admin/serviceAnnouncement/issues",
        &[],
        vec![Canned::sample("graph-serviceannouncement-issues-200.json")],
    );
    let err = graph_client(&fake)
        .service_health_issues(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GraphError::Pagination(m) if m.contains("graph.microsoft.com")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn graph_application_lifecycle() {
    let fake = Fake::start().await;
    let app =
        serde_json::from_slice::<Value>(&Canned::sample("graph-application-create-201.json").body)
            .unwrap();
    fake.on(
        "POST",
        "/v1.0/applications",
        &[],
        vec![Canned::sample("graph-application-create-201.json")],
    );
    fake.on(
        "GET",
        "/v1.0/applications",
        &["$filter=appId eq '631a96bc-a705-4eda-9f99-fdaf9f54f6a2'"],
        vec![Canned::json(200, &json!({"value": [app]}))],
    );
    fake.on(
        "GET",
        "/v1.0/applications",
        &[],
        vec![Canned::json(200, &json!({"value": []}))],
    );
    let object = "/v1.0/applications/03ef14b0-ca33-4840-8f4f-d6e91916010e";
    fake.on(
        "POST",
        &format!("{object}/addPassword"),
        &[],
        vec![Canned::sample("graph-application-addpassword-200.json")],
    );
    fake.on(
        "PATCH",
        object,
        &[],
        vec![Canned::raw(204, "text/plain", "")],
    );
    fake.on(
        "POST",
        "/v1.0/servicePrincipals",
        &[],
        vec![Canned::sample("graph-serviceprincipal-create-201.json")],
    );
    fake.on(
        "GET",
        "/v1.0/servicePrincipals",
        &[],
        vec![Canned::json(200, &json!({"value": []}))],
    );

    let client = graph_client(&fake);
    let redirect = vec!["https://contoso.service-now.com/oauth_redirect.do".to_owned()];
    let created = client
        .create_application(
            "Contoso - Outbound",
            &redirect,
            SignInAudience::AzureAdMyOrg,
        )
        .await
        .unwrap();
    assert_eq!(created.app_id, "631a96bc-a705-4eda-9f99-fdaf9f54f6a2");
    let sent: Value = serde_json::from_str(&fake.requests()[0].body).unwrap();
    assert_eq!(
        sent,
        json!({"displayName": "Contoso - Outbound", "signInAudience": "AzureADMyOrg",
               "web": {"redirectUris": ["https://contoso.service-now.com/oauth_redirect.do"]}})
    );

    let found = client
        .find_application_by_app_id("631a96bc-a705-4eda-9f99-fdaf9f54f6a2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, created.id);
    assert!(
        client
            .find_application_by_app_id("0000")
            .await
            .unwrap()
            .is_none()
    );

    let secret = client.add_password(&created.id, "m365bot").await.unwrap();
    assert_eq!(secret.key_id, "f0b0b335-1d71-4883-8f98-567911bfdca6");

    client
        .update_application(
            &created.id,
            &ApplicationUpdate {
                requested_access_token_version: Some(None),
                ..ApplicationUpdate::default()
            },
        )
        .await
        .unwrap();
    let patch = fake.requests_to(object);
    assert_eq!(
        serde_json::from_str::<Value>(&patch[0].body).unwrap(),
        json!({"api": {"requestedAccessTokenVersion": null}})
    );

    assert!(
        client
            .find_service_principal(&created.app_id)
            .await
            .unwrap()
            .is_none()
    );
    let sp = client
        .create_service_principal(&created.app_id)
        .await
        .unwrap();
    assert_eq!(sp.id, "59e617e5-e447-4adc-8b88-00af644d7c92");
}

#[tokio::test]
async fn graph_403_and_429_are_typed_with_hints() {
    let fake = Fake::start().await;
    let denied = fake::sample("graph-error-403.json")["real_example"]["body"].clone();
    fake.on(
        "POST",
        "/v1.0/applications",
        &[],
        vec![Canned::json(403, &denied)],
    );
    fake.on(
        "GET",
        "/v1.0/organization",
        &[],
        vec![Canned::sample("graph-error-429.json")],
    );
    let client = graph_client(&fake);
    let err = client
        .create_application("x", &[], SignInAudience::AzureAdMyOrg)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Application.ReadWrite.OwnedBy"),
        "{err}"
    );
    assert_eq!(err.retry_kind(), RetryKind::Permanent);
    let err = client.organization().await.unwrap_err();
    assert_eq!(
        err.retry_kind(),
        RetryKind::Transient {
            retry_after: Some(Duration::from_secs(10))
        }
    );
}

#[tokio::test]
async fn graph_tokens_come_from_client_credentials_and_are_cached() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/contoso.com/oauth2/v2.0/token",
        &[],
        vec![Canned::sample("entra-v2-token-200.json")],
    );
    let org =
        serde_json::from_slice::<Value>(&Canned::sample("graph-organization-get-200.json").body)
            .unwrap();
    fake.on(
        "GET",
        "/v1.0/organization",
        &[],
        vec![Canned::json(200, &json!({"value": [org]}))],
    );
    let entra = EntraClient::new(http(), fake.base.clone());
    let tokens = ClientCredentials::new(entra, "contoso.com", "cid", SecretString::from("s"));
    let client = GraphClient::new(
        http(),
        Url::parse(&fake.url("v1.0/")).unwrap(),
        Arc::new(tokens),
    );
    let org = client.organization().await.unwrap();
    assert_eq!(org.id, "84841066-274d-4ec0-a5c1-276be684bdd3");
    client.organization().await.unwrap();
    assert_eq!(fake.requests_to("/contoso.com/oauth2/v2.0/token").len(), 1);
    let reads = fake.requests_to("/v1.0/organization");
    assert_eq!(reads.len(), 2);
    assert!(
        reads[0]
            .header("authorization")
            .unwrap()
            .starts_with("Bearer eyJ0eXAi")
    );
    assert_eq!(
        reads[0].query_param("$select").as_deref(),
        Some("id,displayName,verifiedDomains")
    );
}
