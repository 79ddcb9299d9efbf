//! Every wire sample in `tests/fixtures/samples/servicenow-entra-graph/` parsed by the client
//! type that would receive it, errors included.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use m365bot::error::RetryKind;
use m365bot::upstream::RawResponse;
use m365bot::upstream::entra::{self, EntraError};
use m365bot::upstream::graph::{
    self, Application, Collection, GraphError, IssueClassification, Organization,
    PasswordCredential, ServiceHealthIssue, ServiceHealthOverview, ServiceHealthStatus,
    ServicePrincipal, SignInAudience,
};
use m365bot::upstream::servicenow::{self, Record, ServiceNowError};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde_json::Value;

#[path = "support/upstream.rs"]
mod fake;

/// The samples this file checks; a new sample without a check fails `every_sample_is_checked`.
const CHECKED: &[&str] = &[
    "entra-error-90002-tenant-not-found.json",
    "entra-jwks-v1-common.json",
    "entra-openid-configuration-v1-tenant.json",
    "entra-openid-configuration-v2-common.json",
    "entra-token-error-700016-app-not-found.json",
    "entra-token-error-7000215-invalid-secret.json",
    "entra-token-error-doc.json",
    "entra-v1-token-200.json",
    "entra-v2-token-200.json",
    "graph-application-addpassword-200.json",
    "graph-application-create-201.json",
    "graph-error-403.json",
    "graph-error-429.json",
    "graph-organization-get-200.json",
    "graph-serviceannouncement-healthoverviews-200.json",
    "graph-serviceannouncement-issues-200.json",
    "graph-serviceprincipal-create-201.json",
    "sn-error-400-invalid-table.json",
    "sn-error-401-not-authenticated.json",
    "sn-error-403-insufficient-rights.json",
    "sn-error-403-operation-failed.json",
    "sn-error-404-no-record.json",
    "sn-error-429-rate-limit.json",
    "sn-oauth-token-200.json",
    "sn-oauth-token-401.json",
    "sn-table-dotwalk-display-value-200.json",
    "sn-table-get-incident-record-200.json",
    "sn-table-get-list-200.json",
    "sn-table-link-header-pagination.json",
];

fn headers_of(response: &Value) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(map) = response.get("headers").and_then(Value::as_object) {
        for (name, value) in map {
            headers.append(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).expect("name"),
                HeaderValue::from_str(value.as_str().expect("text")).expect("value"),
            );
        }
    }
    headers
}

/// The response object at `pointer` of a sample as a read response.
fn raw_at(name: &str, pointer: &str) -> RawResponse {
    let file = fake::sample(name);
    let response = file
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{name}: {pointer}"));
    let status = response["status"].as_u64().unwrap_or(200) as u16;
    let body = serde_json::to_vec(&response["body"]).expect("json");
    RawResponse::new(status, headers_of(response), body)
}

fn raw(name: &str) -> RawResponse {
    raw_at(name, "/response")
}

#[test]
fn every_sample_is_checked() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fake::samples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let checked: BTreeSet<String> = CHECKED.iter().map(|name| (*name).to_owned()).collect();
    assert_eq!(on_disk, checked, "samples and checks differ");
    for name in CHECKED {
        assert!(
            fake::sample(name)["_source"].is_string(),
            "{name} has no _source"
        );
    }
}

// ---------------------------------------------------------------- ServiceNow

#[test]
fn sn_list_record_and_total_count() {
    let raw = raw("sn-table-get-list-200.json");
    let records: Vec<Record> = servicenow::parse_response(&raw).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].str("number"), Some("INC0000010"));
    assert_eq!(servicenow::total_count(&raw.headers), Some(1));
    assert_eq!(servicenow::next_link(&raw.headers), None);
}

#[test]
fn sn_single_record_with_reference_links() {
    let record: Record =
        servicenow::parse_response(&raw("sn-table-get-incident-record-200.json")).unwrap();
    assert_eq!(record.sys_id(), Some("a9e30c7dc61122760116894de7bcc7bd"));
    assert_eq!(record.bool("active"), Some(true));
    assert_eq!(record.i64("sys_mod_count"), Some(4));
    assert_eq!(record.i64("state"), Some(1));
    assert_eq!(
        record.datetime("sys_updated_on"),
        Some(Utc.with_ymd_and_hms(2015, 11, 1, 22, 37, 27).unwrap())
    );
    let group = record.reference("assignment_group").unwrap();
    assert_eq!(
        group.sys_id.as_deref(),
        Some("8a4dde73c6112278017a6a4baf547aa7")
    );
    assert!(
        group
            .link
            .unwrap()
            .ends_with("/sys_user_group/8a4dde73c6112278017a6a4baf547aa7")
    );
    assert_eq!(
        record
            .reference("sys_domain")
            .and_then(|r| r.sys_id)
            .as_deref(),
        Some("global")
    );
    assert_eq!(record.reference("assigned_to"), None, "empty reference");
    assert_eq!(record.non_empty("description"), None);
}

#[test]
fn sn_dot_walk_with_display_values() {
    let records: Vec<Record> =
        servicenow::parse_response(&raw("sn-table-dotwalk-display-value-200.json")).unwrap();
    let row = &records[0];
    assert_eq!(row.str("role.name"), Some("support"));
    assert_eq!(
        row.str("user.sys_id"),
        Some("f5a3716d0f6002003a2d47bce1050ed4")
    );
    let user = row.reference("user").unwrap();
    assert_eq!(user.display_value.as_deref(), Some("Fred Johnson"));
    assert_eq!(
        user.sys_id.as_deref(),
        Some("f5a3716d0f6002003a2d47bce1050ed4"),
        "sys_id recovered from the link"
    );
    let role = row.reference("role").unwrap();
    assert_eq!(
        role.sys_id.as_deref(),
        Some("3d43716d0f6002003a2d47bce1050e0d")
    );
    assert_eq!(
        row.reference("user.department")
            .unwrap()
            .display_value
            .as_deref(),
        Some("Accounting")
    );
    assert_eq!(row.display_value("user"), Some("Fred Johnson"));
}

#[test]
fn sn_link_header_next_url_is_extracted() {
    let file = fake::sample("sn-table-link-header-pagination.json");
    let headers = headers_of(&file["response"]);
    assert_eq!(
        servicenow::next_link(&headers).as_deref(),
        Some(
            "https://<instance name>.servicenow.com/api/now/table/cmdb_ci?sysparm_offset=40&sysparm_limit=1000"
        )
    );
    assert_eq!(servicenow::total_count(&headers), Some(3780));
    let links = servicenow::parse_link_header(headers.get("link").unwrap().to_str().unwrap());
    let rels: Vec<&str> = links.iter().map(|l| l.rels[0].as_str()).collect();
    assert_eq!(rels, ["next", "prev", "first", "last"]);
    assert!(
        links[3]
            .target
            .ends_with("sysparm_offset=2780&sysparm_limit=1000")
    );
}

#[test]
fn sn_401_is_unauthorized_with_a_hint() {
    let err =
        servicenow::parse_response::<Vec<Record>>(&raw("sn-error-401-not-authenticated.json"))
            .unwrap_err();
    let ServiceNowError::Unauthorized {
        message,
        detail,
        hint,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(message, "User Not Authenticated");
    assert_eq!(
        detail.as_deref(),
        Some("Required to provide Auth information")
    );
    assert!(hint.contains("credentials"), "{hint}");
    assert_eq!(err.retry_kind(), RetryKind::Permanent);
    assert_eq!(err.status(), Some(401));
}

#[test]
fn sn_403_insufficient_rights_names_the_acl() {
    let err =
        servicenow::parse_response::<Vec<Record>>(&raw("sn-error-403-insufficient-rights.json"))
            .unwrap_err();
    let ServiceNowError::Forbidden {
        message,
        detail,
        hint,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(message, "Insufficient rights to query records");
    assert_eq!(
        detail.as_deref(),
        Some("Field(s) present in the query do not have permission to be read")
    );
    assert!(hint.contains("ACL"), "{hint}");
    assert!(
        err.to_string()
            .contains("Insufficient rights to query records")
    );
}

#[test]
fn sn_403_operation_failed_examples() {
    for (index, expected_detail) in [
        "Error during insert of incident (2135483521432)",
        "ACL Exception Update Failed due to security constraints",
    ]
    .iter()
    .enumerate()
    {
        let raw = raw_at(
            "sn-error-403-operation-failed.json",
            &format!("/examples/{index}/response"),
        );
        let err = servicenow::parse_response::<Record>(&raw).unwrap_err();
        let ServiceNowError::Forbidden {
            message,
            detail,
            hint,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(message, "Operation Failed");
        assert_eq!(detail.as_deref(), Some(*expected_detail));
        assert!(hint.contains("business rule"), "{hint}");
    }
}

#[test]
fn sn_400_invalid_table_with_null_detail() {
    let err = servicenow::parse_response::<Vec<Record>>(&raw("sn-error-400-invalid-table.json"))
        .unwrap_err();
    assert!(err.is_invalid_table(), "{err:?}");
    let ServiceNowError::Api {
        status,
        message,
        detail,
        retry,
    } = err
    else {
        panic!();
    };
    assert_eq!(status, 400);
    assert_eq!(message, "Invalid table x_does_not_exist");
    assert_eq!(detail, None);
    assert_eq!(retry, RetryKind::Permanent);
}

#[test]
fn sn_404_is_no_record() {
    let err =
        servicenow::parse_response::<Record>(&raw("sn-error-404-no-record.json")).unwrap_err();
    assert!(err.is_no_record(), "{err:?}");
    assert!(err.to_string().contains("No Record found"));
}

#[test]
fn sn_429_is_transient_and_reads_retry_after() {
    // The doc sample has a placeholder instead of seconds: transient, wait unknown.
    let placeholder = raw("sn-error-429-rate-limit.json");
    let err = servicenow::parse_response::<Vec<Record>>(&placeholder).unwrap_err();
    assert_eq!(err.retry_kind(), RetryKind::Transient { retry_after: None });
    assert!(err.to_string().contains("Rate limit exceeded"));
    let mut with_seconds = placeholder.clone();
    with_seconds
        .headers
        .insert("retry-after", HeaderValue::from_static("30"));
    let err = servicenow::parse_response::<Vec<Record>>(&with_seconds).unwrap_err();
    assert_eq!(
        err.retry_kind(),
        RetryKind::Transient {
            retry_after: Some(Duration::from_secs(30))
        }
    );
}

#[test]
fn sn_oauth_token_and_its_failure() {
    let token = servicenow::parse_token_response(&raw("sn-oauth-token-200.json")).unwrap();
    assert_eq!(token.expires_in, 1799);
    assert_eq!(token.scope.as_deref(), Some("useraccount"));
    assert!(
        token
            .access_token
            .expose_secret()
            .starts_with("2wRlsRCT2SYj")
    );
    assert!(
        !format!("{token:?}").contains("2wRlsRCT2SYj"),
        "token in Debug"
    );

    let err = servicenow::parse_token_response(&raw("sn-oauth-token-401.json")).unwrap_err();
    let ServiceNowError::Token {
        status,
        error,
        description,
        hint,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*status, 401);
    assert_eq!(error, "server_error");
    assert_eq!(description, "access_denied");
    assert!(
        hint.contains("glide.oauth.inbound.client.credential.grant_type.enabled"),
        "{hint}"
    );
}

// ---------------------------------------------------------------- Entra ID

#[test]
fn entra_v1_metadata_yields_the_tenant_id() {
    let config =
        entra::parse_openid_configuration(&raw("entra-openid-configuration-v1-tenant.json"))
            .unwrap();
    assert_eq!(
        config.tenant_id.as_deref(),
        Some("8eaef023-2b34-4da1-9baa-8bc8c9d6a490")
    );
    assert!(config.is_v1());
    assert_eq!(
        config.issuer,
        "https://sts.windows.net/8eaef023-2b34-4da1-9baa-8bc8c9d6a490/"
    );
    assert_eq!(
        config.jwks_uri.as_str(),
        "https://login.microsoftonline.com/common/discovery/keys"
    );
    assert_eq!(
        config.token_endpoint.path(),
        "/8eaef023-2b34-4da1-9baa-8bc8c9d6a490/oauth2/token"
    );
    assert_eq!(config.tenant_region_scope.as_deref(), Some("EU"));
    assert_eq!(config.id_token_signing_alg_values_supported, ["RS256"]);
}

#[test]
fn entra_v2_common_metadata_has_no_tenant() {
    let config =
        entra::parse_openid_configuration(&raw("entra-openid-configuration-v2-common.json"))
            .unwrap();
    assert_eq!(config.tenant_id, None);
    assert!(!config.is_v1());
    assert_eq!(config.token_endpoint.path(), "/common/oauth2/v2.0/token");
    assert_eq!(
        config.authorization_endpoint.path(),
        "/common/oauth2/v2.0/authorize"
    );
    assert_eq!(config.tenant_region_scope, None);
}

#[test]
fn entra_90002_tenant_not_found() {
    let err = entra::parse_openid_configuration(&raw("entra-error-90002-tenant-not-found.json"))
        .unwrap_err();
    let EntraError::Aadsts {
        status,
        code,
        error,
        description,
        hint,
        trace_id,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((*status, *code), (400, 90002));
    assert_eq!(error, "invalid_tenant");
    assert!(description.starts_with("AADSTS90002: Tenant 'test' not found."));
    assert!(!description.contains("Trace ID"), "first line only");
    assert!(hint.contains("spelling"), "{hint}");
    assert_eq!(
        trace_id.as_deref(),
        Some("a21cd225-ecbb-419b-b73e-b78595fd6c00")
    );
    assert_eq!(err.aadsts_code(), Some(90002));
}

#[test]
fn entra_7000215_wrong_secret_value() {
    let err = entra::parse_token_response(&raw("entra-token-error-7000215-invalid-secret.json"))
        .unwrap_err();
    let EntraError::Aadsts {
        status,
        code,
        error,
        description,
        hint,
        trace_id,
        retry,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((*status, *code), (401, 7000215));
    assert_eq!(error, "invalid_client");
    assert_eq!(
        description,
        "AADSTS7000215: Invalid client secret is provided."
    );
    assert!(
        hint.contains("Value") && hint.contains("Secret ID"),
        "{hint}"
    );
    assert_eq!(
        trace_id.as_deref(),
        Some("b179b7db-c957-4917-a1b6-66fab2042a00")
    );
    assert_eq!(*retry, RetryKind::Permanent);
    let text = err.to_string();
    assert!(
        text.contains("AADSTS7000215") && text.contains("Secret ID"),
        "{text}"
    );
}

#[test]
fn entra_700016_app_not_found() {
    let err = entra::parse_token_response(&raw("entra-token-error-700016-app-not-found.json"))
        .unwrap_err();
    assert_eq!(err.aadsts_code(), Some(700016));
    let hint = err.hint().unwrap();
    assert!(
        hint.contains("client id") && hint.contains("tenant"),
        "{hint}"
    );
    let EntraError::Aadsts { error, .. } = &err else {
        panic!()
    };
    assert_eq!(error, "unauthorized_client");
}

#[test]
fn entra_doc_error_70011_invalid_scope() {
    let err = entra::parse_token_response(&raw("entra-token-error-doc.json")).unwrap_err();
    assert_eq!(err.aadsts_code(), Some(70011));
    assert!(err.hint().unwrap().contains(".default"));
}

#[test]
fn entra_v1_token_has_string_lifetimes() {
    let token = entra::parse_token_response(&raw("entra-v1-token-200.json")).unwrap();
    assert_eq!(token.expires_in, Duration::from_secs(3599));
    assert_eq!(token.expires_at.timestamp(), 1_388_452_167);
    assert_eq!(
        token.resource.as_deref(),
        Some("https://service.contoso.com/")
    );
    assert_eq!(token.token_type, "Bearer");
    assert!(token.access_token.expose_secret().starts_with("eyJ0eXAiO"));
    assert!(!format!("{token:?}").contains("eyJ0eXAiO"));
}

#[test]
fn entra_v2_token_has_number_lifetimes() {
    let token = entra::parse_token_response(&raw("entra-v2-token-200.json")).unwrap();
    assert_eq!(token.expires_in, Duration::from_secs(3599));
    assert_eq!(token.resource, None);
    let left = token.expires_at - Utc::now();
    assert!(
        left.num_seconds() > 3500 && left.num_seconds() <= 3599,
        "{left}"
    );
}

#[test]
fn entra_jwks_keys_are_usable() {
    let jwks: entra::Jwks = entra::parse_response(&raw("entra-jwks-v1-common.json")).unwrap();
    assert_eq!(jwks.keys.len(), 2);
    let key = jwks.find("l3sQ-50cCH4xBVZLHTGwnSR7680").unwrap();
    assert_eq!(key.use_.as_deref(), Some("sig"));
    assert_eq!(key.x5t.as_deref(), Some("l3sQ-50cCH4xBVZLHTGwnSR7680"));
    assert!(key.decoding_key().is_ok());
    assert!(jwks.find("unknown").is_none());
}

// ---------------------------------------------------------------- Graph

#[test]
fn graph_created_application() {
    let app: Application = graph::parse_response(
        &raw("graph-application-create-201.json"),
        graph::PERMISSION_APPLICATIONS,
    )
    .unwrap();
    assert_eq!(app.id, "03ef14b0-ca33-4840-8f4f-d6e91916010e");
    assert_eq!(app.app_id, "631a96bc-a705-4eda-9f99-fdaf9f54f6a2");
    assert_eq!(
        app.sign_in_audience,
        Some(SignInAudience::AzureAdAndPersonalMicrosoftAccount)
    );
    assert_eq!(app.api.requested_access_token_version, Some(2));
    assert!(
        !app.issues_v1_tokens(),
        "v2 tokens break the OIDC appid claim"
    );
    assert!(!app.is_single_tenant());
    assert!(app.web.redirect_uris.is_empty());
    assert!(app.password_credentials.is_empty());
    assert_eq!(
        app.publisher_domain.as_deref(),
        Some("contoso.onmicrosoft.com")
    );
}

#[test]
fn graph_added_password_is_secret() {
    let credential: PasswordCredential = graph::parse_response(
        &raw("graph-application-addpassword-200.json"),
        graph::PERMISSION_APPLICATIONS,
    )
    .unwrap();
    assert_eq!(
        credential.secret_text.expose_secret(),
        "[6gyXA5S20@MN+WRXAJ]I-TO7g1:h2P8"
    );
    assert_eq!(credential.key_id, "f0b0b335-1d71-4883-8f98-567911bfdca6");
    assert_eq!(
        credential.end_date_time.unwrap().date_naive().to_string(),
        "2021-09-09"
    );
    assert_eq!(credential.hint.as_deref(), Some("[6g"));
    assert!(!format!("{credential:?}").contains("6gyXA5S20"));
}

#[test]
fn graph_service_principal() {
    let sp: ServicePrincipal = graph::parse_response(
        &raw("graph-serviceprincipal-create-201.json"),
        graph::PERMISSION_APPLICATIONS,
    )
    .unwrap();
    assert_eq!(sp.id, "59e617e5-e447-4adc-8b88-00af644d7c92");
    assert_eq!(sp.app_id, "65415bb1-9267-4313-bbf5-ae259732ee12");
    assert_eq!(
        sp.app_owner_organization_id.as_deref(),
        Some("1bc1c026-2f7b-48a5-98da-afa2fd8bc7bc")
    );
    assert_eq!(sp.account_enabled, Some(true));
}

#[test]
fn graph_organization() {
    let org: Organization = graph::parse_response(
        &raw("graph-organization-get-200.json"),
        graph::PERMISSION_ORGANIZATION,
    )
    .unwrap();
    assert_eq!(org.id, "84841066-274d-4ec0-a5c1-276be684bdd3");
    assert_eq!(org.display_name.as_deref(), Some("Contoso"));
    assert_eq!(org.initial_domain(), Some("Contoso.com"));
    assert!(org.has_domain("contoso.com"));
    assert_eq!(org.verified_domains[0].kind.as_deref(), Some("Managed"));
}

#[test]
fn graph_service_health_issues_page() {
    let page: Collection<ServiceHealthIssue> = graph::parse_response(
        &raw("graph-serviceannouncement-issues-200.json"),
        graph::PERMISSION_SERVICE_HEALTH,
    )
    .unwrap();
    assert_eq!(
        page.next_link.as_deref(),
        Some("https://graph.microsoft.com/v1.0/admin/serviceAnnouncement/issues?$skip=100")
    );
    let issue = &page.value[0];
    assert_eq!(issue.id, "EX226792");
    assert_eq!(issue.status, Some(ServiceHealthStatus::ServiceRestored));
    assert_eq!(issue.classification, Some(IssueClassification::Incident));
    assert_eq!(issue.origin, Some(graph::IssueOrigin::Microsoft));
    assert!(issue.is_resolved);
    assert_eq!(
        issue.last_modified_date_time,
        Utc.with_ymd_and_hms(2020, 11, 14, 18, 20, 24).unwrap()
            + chrono::Duration::milliseconds(767)
    );
    assert_eq!(issue.posts.len(), 1);
    assert!(issue.posts[0].description.content.contains("User Impact"));
    assert_eq!(issue.details[0].value.as_deref(), Some("True"));
}

#[test]
fn graph_health_overviews() {
    let page: Collection<ServiceHealthOverview> = graph::parse_response(
        &raw("graph-serviceannouncement-healthoverviews-200.json"),
        graph::PERMISSION_SERVICE_HEALTH,
    )
    .unwrap();
    assert_eq!(page.value.len(), 3);
    assert_eq!(page.value[1].id, "OrgLiveID");
    assert_eq!(
        page.value[1].status,
        Some(ServiceHealthStatus::ServiceRestored)
    );
    assert_eq!(
        page.value[0].status.as_ref().unwrap().as_str(),
        "serviceOperational"
    );
    assert_eq!(page.next_link, None);
}

#[test]
fn graph_403_names_the_permission() {
    let err = graph::parse_response::<Application>(
        &raw_at("graph-error-403.json", "/real_example"),
        graph::PERMISSION_APPLICATIONS,
    )
    .unwrap_err();
    let GraphError::Api {
        status,
        code,
        message,
        hint,
        request_id,
        retry,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*status, 403);
    assert_eq!(code, "Authorization_RequestDenied");
    assert_eq!(
        message,
        "Insufficient privileges to complete the operation."
    );
    assert!(
        hint.as_deref()
            .unwrap()
            .contains("Application.ReadWrite.OwnedBy")
    );
    assert_eq!(
        request_id.as_deref(),
        Some("799ac1b2-b3e0-46c9-877e-6eeb72508938")
    );
    assert_eq!(*retry, RetryKind::Permanent);

    let err = graph::parse_response::<Collection<ServiceHealthIssue>>(
        &raw_at("graph-error-403.json", "/real_example"),
        graph::PERMISSION_SERVICE_HEALTH,
    )
    .unwrap_err();
    assert!(err.to_string().contains("ServiceHealth.Read.All"), "{err}");

    // The doc example is a bare envelope (no status): any error status parses it.
    let doc = fake::sample("graph-error-403.json")["doc_example"].clone();
    let raw = RawResponse::new(416, HeaderMap::new(), serde_json::to_vec(&doc).unwrap());
    let err = graph::parse_response::<Value>(&raw, "x").unwrap_err();
    assert!(
        matches!(err, GraphError::Api { ref code, .. } if code == "invalidRange"),
        "{err:?}"
    );
}

#[test]
fn graph_429_retry_after() {
    let err = graph::parse_response::<Value>(&raw("graph-error-429.json"), "x").unwrap_err();
    assert_eq!(
        err.retry_kind(),
        RetryKind::Transient {
            retry_after: Some(Duration::from_secs(10))
        }
    );
    assert!(matches!(err, GraphError::Api { ref code, .. } if code == "TooManyRequests"));
}
