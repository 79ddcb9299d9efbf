//! `doctor`: verifies an integration end to end, every check of the setup guide, concurrently,
//! with a fix hint for every failure.

use std::collections::HashMap;

use chrono::Utc;
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::Value;

use secrecy::ExposeSecret;
use url::Url;

use super::schema::{self, ResolvedTable};
use super::{AppCredentials, AuthType, IntegrationSpec, Upstreams, roles};
use crate::error::RetryKind;
use crate::ids::is_guid;
use crate::upstream::entra::{EntraClient, EntraError, unverified_claims};
use crate::upstream::graph::{Application, GraphClient, PERMISSION_APPLICATIONS};
use crate::upstream::retry;
use crate::upstream::servicenow::{
    CheckedQuery, Column, EncodedQuery, Record, ServiceNowAuth, ServiceNowClient, ServiceNowError,
};

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Verified.
    Pass,
    /// Verified wrong, or could not be verified because of an error.
    Fail,
    /// Not applicable, or the bot lacks access to verify it.
    Skip,
}

/// One line of the doctor's report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    /// Stable id, e.g. `servicenow.integration_user`.
    pub id: &'static str,
    /// What was checked.
    pub title: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to fix and where, for failures and skips.
    pub fix: Option<String>,
    /// For a skip: the failed check that kept this one from saying anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<&'static str>,
}

impl CheckOutcome {
    /// A passed check.
    pub fn pass(id: &'static str, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            id,
            title: title.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
            blocked_by: None,
        }
    }

    /// A failed check, with what to do.
    pub fn fail(
        id: &'static str,
        title: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            id,
            title: title.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
            blocked_by: None,
        }
    }

    fn skip(id: &'static str, title: impl Into<String>, why: impl Into<String>) -> Self {
        let why = why.into();
        Self {
            id,
            title: title.into(),
            status: Status::Skip,
            detail: why.clone(),
            fix: Some(why),
            blocked_by: None,
        }
    }
}

/// Runs every check the configuration enables, concurrently, and returns them in report order.
pub async fn run(upstreams: &Upstreams, spec: &IntegrationSpec, repair: bool) -> Vec<CheckOutcome> {
    let ids: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|id| enabled(id, spec.auth_type))
        .collect();
    run_only(upstreams, spec, &ids, repair).await
}

/// True when the check applies to this authentication type.
fn enabled(id: &str, auth: AuthType) -> bool {
    let aad_only = [
        "inbound_app.token",
        "inbound_app.registration",
        "rest_user_app.token",
        "rest_user_app.registration",
        "servicenow.oidc_provider",
        "servicenow.oidc_entity",
        "servicenow.inbound_flow",
    ];
    match auth {
        AuthType::Aad => id != "servicenow.basic_login",
        AuthType::Basic => !aad_only.contains(&id),
    }
}

/// Runs only the checks whose ids are in `ids` (concurrently), in report order; unknown ids
/// are ignored. Used by the setup wizard to verify one step. A check whose prerequisite
/// failed in the same run is reported as `skip` naming it.
pub async fn run_only(
    upstreams: &Upstreams,
    spec: &IntegrationSpec,
    ids: &[&str],
    repair: bool,
) -> Vec<CheckOutcome> {
    type Check<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = CheckOutcome> + Send + 'a>>;
    let tenants = Tenants::new(&upstreams.entra, spec);
    let tenants = &tenants;
    let mut checks: Vec<Check<'_>> = Vec::new();
    for id in ids {
        let check: Option<Check<'_>> = match *id {
            "tenant" => Some(Box::pin(check_tenant(upstreams, spec))),
            "graph.permissions" => Some(Box::pin(check_graph_permissions(upstreams, spec))),
            "outbound_app.token" => Some(Box::pin(check_app_token(
                upstreams,
                spec,
                AppRole::Outbound,
            ))),
            "outbound_app.registration" => Some(Box::pin(check_app_registration(
                upstreams,
                spec,
                AppRole::Outbound,
            ))),
            "inbound_app.token" => {
                Some(Box::pin(check_app_token(upstreams, spec, AppRole::Inbound)))
            }
            "inbound_app.registration" => Some(Box::pin(check_app_registration(
                upstreams,
                spec,
                AppRole::Inbound,
            ))),
            "rest_user_app.token" => Some(Box::pin(check_app_token(
                upstreams,
                spec,
                AppRole::RestUser,
            ))),
            "rest_user_app.registration" => Some(Box::pin(check_app_registration(
                upstreams,
                spec,
                AppRole::RestUser,
            ))),
            "servicenow.reachable" => Some(Box::pin(check_reachable(upstreams))),
            "servicenow.app_installed" => Some(Box::pin(check_app_installed(upstreams))),
            "servicenow.oauth_provider" => {
                Some(Box::pin(check_oauth_provider(upstreams, spec, tenants)))
            }
            "servicenow.oidc_provider" => {
                Some(Box::pin(check_oidc_provider(upstreams, spec, tenants)))
            }
            "servicenow.oidc_entity" => Some(Box::pin(check_oidc_entity(upstreams, spec))),
            "servicenow.integration_user" => {
                Some(Box::pin(check_integration_user(upstreams, spec)))
            }
            "servicenow.inbound_flow" => Some(Box::pin(check_inbound_flow(upstreams, spec))),
            "servicenow.basic_login" => Some(Box::pin(check_basic_login(upstreams, spec))),
            "servicenow.cross_scope" => Some(Box::pin(check_cross_scope(upstreams, repair))),
            "servicenow.app_roles" => Some(Box::pin(check_app_roles_assigned(upstreams))),
            _ => None,
        };
        checks.extend(check);
    }
    let mut outcomes = join_all(checks).await;
    outcomes.sort_by_key(|outcome| {
        ORDER
            .iter()
            .position(|id| *id == outcome.id)
            .unwrap_or(usize::MAX)
    });
    apply_prerequisites(&mut outcomes);
    explain_inbound_refusal(&mut outcomes);
    outcomes
}

/// Report order: the guide's order, with what the other checks need first.
const ORDER: &[&str] = &[
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
    "servicenow.basic_login",
    "servicenow.cross_scope",
    "servicenow.app_roles",
];

/// What each check needs to have passed to say anything: when one of these fails, the check
/// is reported as `skip` naming it (the checks still run concurrently, so this costs no time).
fn prerequisites(id: &str) -> &'static [&'static str] {
    match id {
        "outbound_app.token" | "inbound_app.token" | "rest_user_app.token" => &["tenant"],
        "outbound_app.registration" | "inbound_app.registration" | "rest_user_app.registration" => {
            &["graph.permissions"]
        }
        "servicenow.oauth_provider" | "servicenow.oidc_provider" | "servicenow.oidc_entity" => {
            &["servicenow.reachable", "tenant"]
        }
        "servicenow.app_installed"
        | "servicenow.integration_user"
        | "servicenow.basic_login"
        | "servicenow.cross_scope" => &["servicenow.reachable"],
        "servicenow.app_roles" => &["servicenow.reachable", "servicenow.app_installed"],
        "servicenow.inbound_flow" => &["tenant", "rest_user_app.token", "servicenow.reachable"],
        _ => &[],
    }
}

/// Turns every check whose prerequisite failed into a `skip` that names the prerequisite.
fn apply_prerequisites(outcomes: &mut [CheckOutcome]) {
    let failed: Vec<&'static str> = outcomes
        .iter()
        .filter(|o| o.status == Status::Fail)
        .map(|o| o.id)
        .collect();
    for outcome in outcomes.iter_mut() {
        if let Some(blocker) = prerequisites(outcome.id)
            .iter()
            .find(|id| failed.contains(id))
        {
            outcome.status = Status::Skip;
            outcome.blocked_by = Some(blocker);
            outcome.detail = format!("not verified because the check {blocker} failed");
            outcome.fix = Some(format!("Fix {blocker} first, then run doctor again."));
        }
    }
}

/// True when a run should end non-zero: a check failed, or an enabled check was skipped
/// because another failed (a scheduler must not see success when Graph refuses everything).
pub fn has_failures(outcomes: &[CheckOutcome]) -> bool {
    outcomes
        .iter()
        .any(|o| o.status == Status::Fail || o.blocked_by.is_some())
}

/// Which of the three Entra apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppRole {
    Outbound,
    Inbound,
    RestUser,
}

impl AppRole {
    fn label(self) -> &'static str {
        match self {
            Self::Outbound => "Outbound app",
            Self::Inbound => "Inbound REST API app",
            Self::RestUser => "REST-user app",
        }
    }

    fn token_id(self) -> &'static str {
        match self {
            Self::Outbound => "outbound_app.token",
            Self::Inbound => "inbound_app.token",
            Self::RestUser => "rest_user_app.token",
        }
    }

    fn registration_id(self) -> &'static str {
        match self {
            Self::Outbound => "outbound_app.registration",
            Self::Inbound => "inbound_app.registration",
            Self::RestUser => "rest_user_app.registration",
        }
    }

    fn credentials(self, spec: &IntegrationSpec) -> Option<&AppCredentials> {
        match self {
            Self::Outbound => Some(&spec.outbound_app),
            Self::Inbound => spec.inbound_app.as_ref(),
            Self::RestUser => spec.rest_user_app.as_ref(),
        }
    }
}

/// `detail`, with what the retry policy tried when the service kept throttling (429 / 503).
fn with_retry_note(detail: String, status: Option<u16>, kind: RetryKind) -> String {
    match kind {
        RetryKind::Transient { retry_after } if matches!(status, Some(429 | 503)) => {
            format!("{detail}; {}", retry::STANDARD.gave_up(retry_after))
        }
        _ => detail,
    }
}

/// The error of an Entra ID call, with the retry note when it was throttled.
fn entra_detail(err: &EntraError) -> String {
    let status = match err {
        EntraError::Aadsts { status, .. }
        | EntraError::Http { status, .. }
        | EntraError::Decode { status, .. } => Some(*status),
        _ => None,
    };
    with_retry_note(err.to_string(), status, err.retry_kind())
}

fn entra_fix(err: &EntraError, app: &str) -> String {
    match err.hint() {
        Some(hint) => format!("{app}: {hint}"),
        None => format!("{app}: check the client id and secret in Entra ID > App registrations."),
    }
}

async fn check_tenant(upstreams: &Upstreams, spec: &IntegrationSpec) -> CheckOutcome {
    let title = format!("Tenant {} exists", spec.tenant);
    match upstreams.entra.openid_configuration(&spec.tenant).await {
        Ok(config) => match (&config.tenant_id, &spec.tenant_id) {
            (Some(found), Some(expected)) if !found.eq_ignore_ascii_case(expected) => CheckOutcome::fail(
                "tenant",
                title,
                format!("{} resolves to tenant {found}, not {expected}", spec.tenant),
                "Use the domain of the Microsoft 365 tenant the integration belongs to.",
            ),
            (found, _) => CheckOutcome::pass(
                "tenant",
                title,
                format!("tenant id {}", found.as_deref().unwrap_or("unknown")),
            ),
        },
        Err(err) => CheckOutcome::fail(
            "tenant",
            title,
            err.to_string(),
            err.hint().map_or_else(
                || "Check the tenant domain (e.g. contoso.onmicrosoft.com) and the network path to Entra ID.".to_owned(),
                str::to_owned,
            ),
        ),
    }
}

/// Live v1 client-credentials token; for the inbound app also checks the token is v1 with an
/// `appid` claim (the OIDC provider's user claim).
async fn check_app_token(
    upstreams: &Upstreams,
    spec: &IntegrationSpec,
    app: AppRole,
) -> CheckOutcome {
    let id = app.token_id();
    let title = format!("{} gets a token", app.label());
    let Some(credentials) = app.credentials(spec) else {
        return CheckOutcome::fail(
            id,
            title,
            "no client id recorded",
            format!(
                "Run setup, or add the {} client id and secret to the integration.",
                app.label()
            ),
        );
    };
    // The inbound app is its own resource: the token ServiceNow validates has aud = its id.
    let resource = match app {
        AppRole::Inbound => credentials.client_id.clone(),
        AppRole::Outbound | AppRole::RestUser => "https://graph.microsoft.com".to_owned(),
    };
    let token = match upstreams
        .entra
        .client_credentials_v1(
            &spec.tenant,
            &credentials.client_id,
            &credentials.client_secret,
            &resource,
        )
        .await
    {
        Ok(token) => token,
        Err(err) => {
            return CheckOutcome::fail(id, title, entra_detail(&err), entra_fix(&err, app.label()));
        }
    };
    if app != AppRole::Inbound {
        return CheckOutcome::pass(id, title, "v1 client-credentials token issued");
    }
    let Some(claims) = unverified_claims(token.access_token.expose_secret()) else {
        return CheckOutcome::fail(
            id,
            title,
            "the access token is not a readable JWT",
            "Check that the inbound app is an Entra ID app registration in this tenant.",
        );
    };
    let version = claims
        .get("ver")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if version == "1.0" && claims.get("appid").is_some() {
        CheckOutcome::pass(id, title, "v1 token with an appid claim")
    } else {
        CheckOutcome::fail(
            id,
            title,
            format!(
                "the token is version {version:?} without the appid claim the OIDC provider reads"
            ),
            "In Entra ID > App registrations > the inbound app > Manifest, set \"requestedAccessTokenVersion\" (accessTokenAcceptedVersion) to null or 1.",
        )
    }
}

async fn check_app_registration(
    upstreams: &Upstreams,
    spec: &IntegrationSpec,
    app: AppRole,
) -> CheckOutcome {
    let id = app.registration_id();
    let title = format!("{} registration", app.label());
    let Some(graph) = &upstreams.graph else {
        return CheckOutcome::skip(
            id,
            title,
            "Graph access is not configured (entra.graph_client_id / secret); the live token check above still ran.",
        );
    };
    let Some(credentials) = app.credentials(spec) else {
        return CheckOutcome::fail(id, title, "no client id recorded", "Run setup.");
    };
    let application = match find_app(graph, &credentials.client_id).await {
        Ok(Some(application)) => application,
        Ok(None) => {
            return CheckOutcome::fail(
                id,
                title,
                format!(
                    "no application with client id {} in the tenant",
                    credentials.client_id
                ),
                "Create the app registration again, or correct the client id.",
            );
        }
        Err(detail) => {
            return CheckOutcome::skip(
                id,
                title,
                format!("Graph refused to read the app: {detail}"),
            );
        }
    };
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !application.is_single_tenant() {
        problems.push("it is not single-tenant".to_owned());
        fixes.push("Authentication > Supported account types: Accounts in this organizational directory only");
    }
    if app == AppRole::Outbound
        && !application
            .web
            .redirect_uris
            .iter()
            .any(|uri| uri == &spec.redirect_url())
    {
        problems.push(format!(
            "the Web redirect URI {} is missing",
            spec.redirect_url()
        ));
        fixes.push("Authentication > Add a platform > Web: add the redirect URI");
    }
    if app == AppRole::Inbound && !application.issues_v1_tokens() {
        problems.push("it issues v2 access tokens".to_owned());
        fixes.push("Manifest: set requestedAccessTokenVersion to null or 1");
    }
    let now = Utc::now();
    let valid_secrets = application
        .password_credentials
        .iter()
        .filter(|secret| !secret.is_expired(now))
        .count();
    if valid_secrets == 0 {
        problems.push("it has no unexpired client secret".to_owned());
        fixes.push("Certificates & secrets: create a new client secret and enter it in setup");
    }
    if problems.is_empty() {
        CheckOutcome::pass(
            id,
            title,
            format!("single-tenant, {valid_secrets} valid secret(s)"),
        )
    } else {
        CheckOutcome::fail(
            id,
            title,
            problems.join("; "),
            format!(
                "Entra ID > App registrations > {}: {}.",
                application
                    .display_name
                    .as_deref()
                    .unwrap_or(&credentials.client_id),
                fixes.join("; ")
            ),
        )
    }
}

async fn find_app(graph: &GraphClient, client_id: &str) -> Result<Option<Application>, String> {
    graph
        .find_application_by_app_id(client_id)
        .await
        .map_err(|e| e.to_string())
}

fn servicenow_or_skip<'a>(
    upstreams: &'a Upstreams,
    id: &'static str,
    title: &str,
) -> Result<&'a ServiceNowClient, CheckOutcome> {
    upstreams.servicenow.as_ref().ok_or_else(|| {
        CheckOutcome::skip(
            id,
            title,
            "ServiceNow access is not configured (servicenow.instance_url and credentials).",
        )
    })
}

fn sn_fail(id: &'static str, title: &str, err: &ServiceNowError) -> CheckOutcome {
    let status = err.status();
    let fix = match (err, status) {
        (ServiceNowError::UnresolvedColumn { manual, .. }, _) => manual.clone(),
        (ServiceNowError::Ambiguous { .. }, _) => {
            "Keep one of the matching records in ServiceNow (delete or rename the others), then run doctor again.".to_owned()
        }
        (ServiceNowError::QueryNotApplied { .. }, _) => {
            "Check the table's columns in ServiceNow (System Definition > Dictionary); the bot reads nothing it did not select.".to_owned()
        }
        (ServiceNowError::UnsafeValue(_), _) => {
            "Correct the value in the integration's configuration: it cannot be looked up in ServiceNow.".to_owned()
        }
        (_, Some(401)) => {
            "Check the bot's ServiceNow credentials (servicenow.username / password).".to_owned()
        }
        (_, Some(403)) => {
            "Give the bot's ServiceNow account the admin role (or read access to this table)."
                .to_owned()
        }
        (_, Some(429)) => "ServiceNow is throttling the bot's account (System Web Services > REST > Rate Limit Rules); run doctor again later.".to_owned(),
        (_, Some(status @ 500..=599)) => format!(
            "ServiceNow itself is failing (HTTP {status}), this is not a missing record: check that the instance is up (a developer instance may be hibernating) and run doctor again."
        ),
        _ => "Check that the ServiceNow instance is reachable and try again.".to_owned(),
    };
    let detail = match status {
        Some(500..=599) => format!("ServiceNow is failing: {err}"),
        _ => err.to_string(),
    };
    let detail = with_retry_note(detail, status, err.retry_kind());
    CheckOutcome::fail(id, title, detail, fix)
}

/// The one record of a platform basic table with `column = value` for each pair.
async fn first_standard(
    client: &ServiceNowClient,
    table: &str,
    conditions: &[(&str, &str)],
) -> Result<Option<Record>, ServiceNowError> {
    let mut query = CheckedQuery::on(table);
    for (column, value) in conditions {
        query = query.eq(&Column::standard(table, column)?, value)?;
    }
    client.find_one(&query, &[]).await
}

/// Compares expected values by key; returns "Label (column) is X, expected Y" lines.
fn differences(table: &ResolvedTable, record: &Record, expected: &[(&str, &str)]) -> Vec<String> {
    expected
        .iter()
        .filter_map(|(key, want)| {
            let found = table.get(record, key).unwrap_or_default();
            (!found.eq_ignore_ascii_case(want))
                .then(|| format!("{} is {found:?}, expected {want:?}", table.describe(key)))
        })
        .collect()
}

async fn check_oauth_provider(
    upstreams: &Upstreams,
    spec: &IntegrationSpec,
    tenants: &Tenants<'_>,
) -> CheckOutcome {
    let id = "servicenow.oauth_provider";
    let title = "ServiceNow outbound OAuth provider";
    let client = match servicenow_or_skip(upstreams, id, title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let table = match schema::load(client, &schema::OAUTH_ENTITY).await {
        Ok(table) => table,
        Err(err) => return sn_fail(id, title, &err),
    };
    let found = match table.lookup("client_id", &spec.outbound_app.client_id) {
        Ok(query) => client.find_one(&query, &[]).await,
        Err(err) => Err(err),
    };
    let record = match found {
        Ok(Some(record)) => record,
        Ok(None) => {
            return CheckOutcome::fail(
                id,
                title,
                format!(
                    "no Application Registry with client id {}",
                    spec.outbound_app.client_id
                ),
                "System OAuth > Application Registry > New > Connect to a third party OAuth Provider, with the outbound app's client id and secret.",
            );
        }
        Err(err) => return sn_fail(id, title, &err),
    };
    let token_url = spec.token_url(&upstreams.authority);
    let redirect_url = spec.redirect_url();
    let mut problems = differences(
        &table,
        &record,
        &[
            ("default_grant_type", "client_credentials"),
            ("redirect_url", &redirect_url),
        ],
    );
    let found_token_url = table.get(&record, "token_url").unwrap_or_default();
    if !tenants
        .is_tenant_url(&upstreams.authority, found_token_url, &["oauth2", "token"])
        .await
    {
        problems.push(format!(
            "{} is {found_token_url:?}, expected {token_url:?} (the tenant may be named by domain or id)",
            table.describe("token_url")
        ));
    }
    if table.get(&record, "active") == Some("false") {
        problems.push("it is inactive".to_owned());
    }
    let name = table
        .get(&record, "name")
        .unwrap_or("the provider")
        .to_owned();
    if problems.is_empty() {
        CheckOutcome::pass(
            id,
            title,
            format!("{name}: client credentials, token and redirect URLs match"),
        )
    } else {
        CheckOutcome::fail(
            id,
            title,
            problems.join("; "),
            format!(
                "System OAuth > Application Registry > {name}: set Default Grant type = Client Credentials, Token URL = {token_url}, Redirect URL = {redirect_url}, Active."
            ),
        )
    }
}

async fn check_oidc_provider(
    upstreams: &Upstreams,
    spec: &IntegrationSpec,
    tenants: &Tenants<'_>,
) -> CheckOutcome {
    let id = "servicenow.oidc_provider";
    let title = "ServiceNow OIDC provider configuration";
    let client = match servicenow_or_skip(upstreams, id, title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let table = match schema::load(client, &schema::OIDC_PROVIDER_CONFIGURATION).await {
        Ok(table) => table,
        Err(err) => return sn_fail(id, title, &err),
    };
    match find_oidc_provider(client, &table, spec, &upstreams.authority).await {
        Ok(Some(record)) => {
            let metadata_url = spec.metadata_url(&upstreams.authority);
            let mut problems = differences(
                &table,
                &record,
                &[("user_claim", "appid"), ("user_field", "user_name")],
            );
            let found_url = table.get(&record, "metadata_url").unwrap_or_default();
            if !tenants
                .is_tenant_url(
                    &upstreams.authority,
                    found_url,
                    &[".well-known", "openid-configuration"],
                )
                .await
            {
                problems.push(format!(
                    "{} is {found_url:?}, expected {metadata_url:?} (the tenant may be named by domain or id)",
                    table.describe("metadata_url")
                ));
            }
            if table.get(&record, "active") == Some("false") {
                problems.push("it is inactive".to_owned());
            }
            if problems.is_empty() {
                CheckOutcome::pass(
                    id,
                    title,
                    format!(
                        "{}: metadata URL, user claim appid, user field User ID",
                        table.get(&record, "name").unwrap_or_default()
                    ),
                )
            } else {
                CheckOutcome::fail(
                    id,
                    title,
                    problems.join("; "),
                    format!(
                        "oidc_provider_configuration.list > {}: OIDC Metadata URL = {metadata_url}, User Claim = appid, User Field = User ID.",
                        spec.oidc_provider_name()
                    ),
                )
            }
        }
        Ok(None) => CheckOutcome::fail(
            id,
            title,
            format!(
                "no OIDC provider configuration named {} or using the tenant's metadata URL",
                spec.oidc_provider_name()
            ),
            "System OAuth > Application Registry > New > Create new Open ID Connect Provider, then create the provider configuration (guide prerequisite 14).",
        ),
        Err(err) => sn_fail(id, title, &err),
    }
}

/// The tenant's OIDC provider configuration: the one named as the guide says, else the one
/// using the tenant's metadata URL. Several matches are an error, never a pick.
async fn find_oidc_provider(
    client: &ServiceNowClient,
    table: &ResolvedTable,
    spec: &IntegrationSpec,
    authority: &url::Url,
) -> Result<Option<Record>, ServiceNowError> {
    let by_name = table.lookup("name", &spec.oidc_provider_name())?;
    if let Some(record) = client.find_one(&by_name, &[]).await? {
        return Ok(Some(record));
    }
    let by_url = table.lookup("metadata_url", &spec.metadata_url(authority))?;
    client.find_one(&by_url, &[]).await
}

async fn check_oidc_entity(upstreams: &Upstreams, spec: &IntegrationSpec) -> CheckOutcome {
    let id = "servicenow.oidc_entity";
    let title = "ServiceNow OIDC entity for the inbound app";
    let client = match servicenow_or_skip(upstreams, id, title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let Some(inbound) = &spec.inbound_app else {
        return CheckOutcome::fail(id, title, "no inbound app recorded", "Run setup.");
    };
    let (table, configurations) = match futures_util::future::try_join(
        schema::load(client, &schema::OAUTH_OIDC_ENTITY),
        schema::load(client, &schema::OIDC_PROVIDER_CONFIGURATION),
    )
    .await
    {
        Ok(tables) => tables,
        Err(err) => return sn_fail(id, title, &err),
    };
    let found = match table.lookup("client_id", &inbound.client_id) {
        Ok(query) => client.find_one(&query, &[]).await,
        Err(err) => Err(err),
    };
    let record = match found {
        Ok(Some(record)) => record,
        Ok(None) => {
            return CheckOutcome::fail(
                id,
                title,
                format!("no OIDC entity with client id {}", inbound.client_id),
                format!(
                    "Application Registry > New > Configure an OIDC provider to verify ID tokens: name {}, client id and secret of the inbound app, the provider configuration {}.",
                    spec.oidc_entity_name(),
                    spec.oidc_provider_name()
                ),
            );
        }
        Err(err) => return sn_fail(id, title, &err),
    };
    let mut problems = Vec::new();
    let provider = find_oidc_provider(client, &configurations, spec, &upstreams.authority)
        .await
        .ok()
        .flatten();
    let linked = table
        .name("provider_configuration")
        .and_then(|column| record.reference(column))
        .and_then(|r| r.sys_id);
    match (
        provider.as_ref().and_then(Record::sys_id),
        linked.as_deref(),
    ) {
        (Some(expected), Some(found)) if expected == found => {}
        _ => problems.push(format!(
            "it does not use the tenant's OIDC provider configuration ({})",
            table.describe("provider_configuration")
        )),
    }
    if table.get(&record, "active") == Some("false") {
        problems.push("it is inactive".to_owned());
    }
    let name = table.get(&record, "name").unwrap_or_default().to_owned();
    if problems.is_empty() {
        CheckOutcome::pass(
            id,
            title,
            format!("{name} uses {}", spec.oidc_provider_name()),
        )
    } else {
        CheckOutcome::fail(
            id,
            title,
            problems.join("; "),
            format!(
                "Application Registry > {name}: set OAuth OIDC Provider Configuration = {} and Active.",
                spec.oidc_provider_name()
            ),
        )
    }
}

/// `sys_user_role` sys_ids by role name.
async fn role_ids(
    client: &ServiceNowClient,
    names: &[&str],
) -> Result<HashMap<String, String>, ServiceNowError> {
    let query = EncodedQuery::new().is_in("name", names);
    let records = client
        .query("sys_user_role", query.text()?, &["sys_id", "name"], None)
        .await?;
    Ok(records
        .iter()
        .filter_map(|r| Some((r.str("name")?.to_owned(), r.sys_id()?.to_owned())))
        .collect())
}

async fn check_integration_user(upstreams: &Upstreams, spec: &IntegrationSpec) -> CheckOutcome {
    let id = "servicenow.integration_user";
    let title = "Integration user";
    let client = match servicenow_or_skip(upstreams, id, title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let Some(user_name) = spec.integration_user_name() else {
        return CheckOutcome::fail(id, title, "no integration user recorded", "Run setup.");
    };
    let user = match first_standard(client, "sys_user", &[("user_name", &user_name)]).await {
        Ok(Some(user)) => user,
        Ok(None) => {
            return CheckOutcome::fail(
                id,
                title,
                format!("no sys_user with User ID {user_name}"),
                format!(
                    "User Administration > Users > New: User ID = {user_name}, Web service access only, role incident_manager."
                ),
            );
        }
        Err(err) => return sn_fail(id, title, &err),
    };
    let mut problems = Vec::new();
    if user.bool("active") == Some(false) {
        problems.push("the user is inactive".to_owned());
    }
    if user.bool("locked_out") == Some(true) {
        problems.push("the user is locked out".to_owned());
    }
    if user.bool("web_service_access_only") != Some(true) {
        problems.push("Web service access only is not set".to_owned());
    }
    match has_role(
        client,
        user.sys_id().unwrap_or_default(),
        roles::INCIDENT_MANAGER,
    )
    .await
    {
        Ok(true) => {}
        Ok(false) => problems.push("the role incident_manager is missing".to_owned()),
        Err(err) => return sn_fail(id, title, &err),
    }
    if problems.is_empty() {
        CheckOutcome::pass(
            id,
            title,
            format!("{user_name}: active, web service access only, incident_manager"),
        )
    } else {
        CheckOutcome::fail(
            id,
            title,
            problems.join("; "),
            format!(
                "User Administration > Users > {user_name}: tick Active and Web service access only, unlock, and add the role incident_manager (Roles related list > Edit)."
            ),
        )
    }
}

async fn has_role(
    client: &ServiceNowClient,
    user_sys_id: &str,
    role: &str,
) -> Result<bool, ServiceNowError> {
    let ids = role_ids(client, &[role]).await?;
    let Some(role_id) = ids.get(role) else {
        return Ok(false);
    };
    let assignment = first_standard(
        client,
        "sys_user_has_role",
        &[("user", user_sys_id), ("role", role_id)],
    )
    .await?;
    Ok(assignment.is_some())
}

async fn check_basic_login(upstreams: &Upstreams, spec: &IntegrationSpec) -> CheckOutcome {
    let id = "servicenow.basic_login";
    let title = "Integration user signs in with Basic auth";
    let (Some(user), Some(password)) = (&spec.integration_user, &spec.integration_user_password)
    else {
        return CheckOutcome::fail(
            id,
            title,
            "no integration user name and password recorded",
            "Run setup (Basic auth branch).",
        );
    };
    let Some(admin) = &upstreams.servicenow else {
        return CheckOutcome::skip(id, title, "ServiceNow access is not configured.");
    };
    let as_user = ServiceNowClient::new(
        upstreams.http.clone(),
        admin.base_url().clone(),
        crate::upstream::servicenow::ServiceNowAuth::Basic {
            user: user.clone(),
            password: password.clone(),
        },
    );
    let query = EncodedQuery::new().eq("user_name", user);
    let signed_in = match query.text() {
        Ok(text) => as_user.query("sys_user", text, &["sys_id"], Some(1)).await,
        Err(err) => Err(err.into()),
    };
    match signed_in {
        Ok(_) => CheckOutcome::pass(id, title, format!("{user} authenticated to the Table API")),
        Err(err) if err.status() == Some(401) => CheckOutcome::fail(
            id,
            title,
            "ServiceNow refused the user name or password",
            format!(
                "User Administration > Users > {user}: Set Password, then enter it again in setup (Rest user password)."
            ),
        ),
        Err(err) => sn_fail(id, title, &err),
    }
}

async fn check_cross_scope(upstreams: &Upstreams, repair: bool) -> CheckOutcome {
    let id = "servicenow.cross_scope";
    let title = format!("oauth_entity readable from scope {}", upstreams.app_scope);
    let client = match servicenow_or_skip(upstreams, id, &title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let table = match schema::load(client, &schema::SYS_DB_OBJECT).await {
        Ok(table) => table,
        Err(err) => return sn_fail(id, &title, &err),
    };
    let found = match table.lookup("name", "oauth_entity") {
        Ok(query) => client.find_one(&query, &[]).await,
        Err(err) => Err(err),
    };
    let record = match found {
        Ok(Some(record)) => record,
        Ok(None) => {
            return CheckOutcome::fail(
                id,
                title,
                "the oauth_entity table definition was not found",
                "Check that the bot's ServiceNow account may read sys_db_object.",
            );
        }
        Err(err) => return sn_fail(id, &title, &err),
    };
    let readable = table.get(&record, "read_access") == Some("true");
    let public = table
        .get(&record, "access")
        .is_some_and(|access| access.eq_ignore_ascii_case("public"));
    if readable && public {
        return CheckOutcome::pass(
            id,
            title,
            "Accessible from: All application scopes; Can read: on",
        );
    }
    let fix = "System Definition > Tables > oauth_entity > Application Access: set Accessible from = All application scopes and tick Can read (or run doctor --repair).";
    if repair && let Some(sys_id) = record.sys_id() {
        let (fields, _) = table.body(&[
            ("access", "public".to_owned()),
            ("read_access", "true".to_owned()),
        ]);
        return match client.update("sys_db_object", sys_id, &fields).await {
            Ok(_) => CheckOutcome::pass(
                id,
                title,
                "repaired: oauth_entity is now readable from all application scopes",
            ),
            Err(err) => CheckOutcome::fail(id, title, format!("repair failed: {err}"), fix),
        };
    }
    CheckOutcome::fail(
        id,
        title,
        format!(
            "Accessible from = {:?}, Can read = {:?}; the app's scripts are refused silently (a REST caller never sees it)",
            table.get(&record, "access").unwrap_or_default(),
            table.get(&record, "read_access").unwrap_or_default()
        ),
        fix,
    )
}

async fn check_app_roles_assigned(upstreams: &Upstreams) -> CheckOutcome {
    let id = "servicenow.app_roles";
    let title = "The app's roles are assigned to someone";
    let client = match servicenow_or_skip(upstreams, id, title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let scope = &upstreams.app_scope;
    let insights = format!("{scope}.{}", roles::INSIGHTS_USER);
    let administrator = format!("{scope}.{}", roles::ADMINISTRATOR);
    let ids = match role_ids(client, &[&insights, &administrator]).await {
        Ok(ids) => ids,
        Err(err) => return sn_fail(id, title, &err),
    };
    if ids.is_empty() {
        return CheckOutcome::fail(
            id,
            title,
            format!("the roles {insights} and {administrator} do not exist"),
            "Install the Microsoft 365 support app from the ServiceNow Store (its roles come with it).",
        );
    }
    let role_list: Vec<&str> = ids.values().map(String::as_str).collect();
    let query = EncodedQuery::new().is_in("role", &role_list);
    let assignments = match query.text() {
        Ok(text) => {
            client
                .query("sys_user_has_role", text, &["user", "role"], None)
                .await
        }
        Err(err) => Err(err.into()),
    };
    match assignments {
        Ok(assignments) if !assignments.is_empty() => {
            CheckOutcome::pass(id, title, format!("{} assignment(s)", assignments.len()))
        }
        Ok(_) => CheckOutcome::fail(
            id,
            title,
            "nobody holds insights_user or administrator",
            format!(
                "In chat: grant @user insights_user (or administrator), or User Administration > Users > Roles: add {insights}."
            ),
        ),
        Err(err) => sn_fail(id, title, &err),
    }
}

/// Renders the outcomes as text lines for the terminal.
pub fn render_text(outcomes: &[CheckOutcome]) -> String {
    let mut out = String::new();
    for outcome in outcomes {
        let mark = match outcome.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        out.push_str(&format!("{mark}  {}: {}\n", outcome.title, outcome.detail));
        if (outcome.status == Status::Fail || outcome.blocked_by.is_some())
            && let Some(fix) = &outcome.fix
        {
            out.push_str(&format!("      fix: {fix}\n"));
        }
    }
    let count = |status| outcomes.iter().filter(|o| o.status == status).count();
    let (passed, failed, skipped) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
    );
    out.push_str(&format!(
        "{passed} checks passed, {failed} failed, {skipped} skipped\n"
    ));
    out
}

/// Tenant spellings (domain, another verified domain, tenant id) resolved to tenant ids
/// through the tenant's OpenID metadata, each at most once per run.
struct Tenants<'a> {
    entra: &'a EntraClient,
    expected: String,
    expected_id: Option<String>,
    resolved: tokio::sync::Mutex<HashMap<String, Option<String>>>,
}

impl<'a> Tenants<'a> {
    fn new(entra: &'a EntraClient, spec: &IntegrationSpec) -> Self {
        Self {
            entra,
            expected: spec.tenant.clone(),
            expected_id: spec.tenant_id.clone(),
            resolved: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The tenant id a spelling names, `None` when Entra ID does not know it.
    async fn id_of(&self, spelling: &str) -> Option<String> {
        let key = spelling.to_ascii_lowercase();
        if is_guid(&key) {
            return Some(key);
        }
        let mut resolved = self.resolved.lock().await;
        if let Some(found) = resolved.get(&key) {
            return found.clone();
        }
        let found = self
            .entra
            .openid_configuration(&key)
            .await
            .ok()
            .and_then(|config| config.tenant_id)
            .map(|id| id.to_ascii_lowercase());
        resolved.insert(key, found.clone());
        found
    }

    /// True when `spelling` names the integration's tenant.
    async fn is_expected(&self, spelling: &str) -> bool {
        if spelling.eq_ignore_ascii_case(&self.expected)
            || self
                .expected_id
                .as_deref()
                .is_some_and(|id| spelling.eq_ignore_ascii_case(id))
        {
            return true;
        }
        match (self.id_of(spelling).await, self.id_of(&self.expected).await) {
            (Some(found), Some(expected)) => found == expected,
            _ => false,
        }
    }

    /// True when `found` is `{authority}/{tenant}/{rest…}` for any spelling of the
    /// integration's tenant; case and trailing slashes do not matter.
    async fn is_tenant_url(&self, authority: &Url, found: &str, rest: &[&str]) -> bool {
        let Ok(url) = Url::parse(found.trim()) else {
            return false;
        };
        if url.scheme() != authority.scheme()
            || url.host_str() != authority.host_str()
            || url.port_or_known_default() != authority.port_or_known_default()
        {
            return false;
        }
        let segments = |url: &Url| -> Vec<String> {
            url.path_segments()
                .map(|parts| {
                    parts
                        .filter(|part| !part.is_empty())
                        .map(str::to_ascii_lowercase)
                        .collect()
                })
                .unwrap_or_default()
        };
        let base = segments(authority);
        let path = segments(&url);
        let Some([tenant, tail @ ..]) = path.strip_prefix(base.as_slice()) else {
            return false;
        };
        tail.len() == rest.len()
            && tail
                .iter()
                .zip(rest)
                .all(|(found, want)| found.eq_ignore_ascii_case(want))
            && self.is_expected(tenant).await
    }
}

/// Application permissions that let the bot read (and create) the integration's apps.
const APPLICATION_PERMISSIONS: [&str; 3] = [
    "Application.ReadWrite.OwnedBy",
    "Application.ReadWrite.All",
    "Application.Read.All",
];

async fn check_graph_permissions(upstreams: &Upstreams, spec: &IntegrationSpec) -> CheckOutcome {
    let id = "graph.permissions";
    let title = "The bot's Graph app holds its permissions";
    let Some(graph) = &upstreams.graph else {
        return CheckOutcome::skip(
            id,
            title,
            "Graph access is not configured (entra.graph_client_id / secret).",
        );
    };
    let consent = "Entra ID > App registrations > the bot's Graph app (entra.graph_client_id) > API permissions > Add a permission > Microsoft Graph > Application permissions";
    let roles = match graph.token_roles().await {
        Ok(roles) => roles,
        Err(err) => {
            return CheckOutcome::fail(
                id,
                title,
                err.to_string(),
                "Check entra.graph_client_id and entra.graph_client_secret against Entra ID > App registrations > the bot's Graph app > Certificates & secrets.",
            );
        }
    };
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    if roles.is_empty() {
        problems.push("the app-only token carries no application permissions (roles)".to_owned());
    }
    if !roles
        .iter()
        .any(|role| APPLICATION_PERMISSIONS.contains(&role.as_str()))
    {
        missing.push(PERMISSION_APPLICATIONS);
    }
    match graph
        .find_application_by_app_id(&spec.outbound_app.client_id)
        .await
    {
        Ok(_) => {}
        Err(err) if err.status() == Some(403) => {
            problems.push(format!("Graph refused to read applications: {err}"));
            if !missing.contains(&PERMISSION_APPLICATIONS) {
                missing.push(PERMISSION_APPLICATIONS);
            }
        }
        Err(err) => {
            let detail = with_retry_note(err.to_string(), err.status(), err.retry_kind());
            return CheckOutcome::fail(
                id,
                title,
                detail,
                "Check the network path to Microsoft Graph and run doctor again.",
            );
        }
    }
    if missing.is_empty() && problems.is_empty() {
        return CheckOutcome::pass(
            id,
            title,
            format!("token roles: {}; applications readable", roles.join(", ")),
        );
    }
    if missing.is_empty() {
        missing.push(PERMISSION_APPLICATIONS);
    }
    CheckOutcome::fail(
        id,
        title,
        problems.join("; "),
        format!(
            "{consent}: add {}, then Grant admin consent.",
            missing.join(", ")
        ),
    )
}

async fn check_reachable(upstreams: &Upstreams) -> CheckOutcome {
    let id = "servicenow.reachable";
    let title = "ServiceNow answers the bot's account with JSON";
    let client = match servicenow_or_skip(upstreams, id, title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    match client.query("sys_user", "", &["sys_id"], Some(1)).await {
        Ok(_) => CheckOutcome::pass(
            id,
            title,
            format!(
                "{} answered a Table API read as the bot's account",
                client.base_url().host_str().unwrap_or("the instance")
            ),
        ),
        Err(err) => sn_fail(id, title, &err),
    }
}

async fn check_app_installed(upstreams: &Upstreams) -> CheckOutcome {
    let id = "servicenow.app_installed";
    let scope = upstreams.app_scope.as_str();
    let title = format!("The Microsoft 365 support app ({scope}) is installed");
    let client = match servicenow_or_skip(upstreams, id, &title) {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let mut found = None;
    for spec in [&schema::SYS_STORE_APP, &schema::SYS_SCOPE] {
        let table = match schema::load(client, spec).await {
            Ok(table) => table,
            Err(ServiceNowError::UnknownTable(_)) => continue,
            Err(err) => return sn_fail(id, &title, &err),
        };
        // A checked lookup: only a row that really has the scope counts.
        let rows = match table.lookup("scope", scope) {
            Ok(query) => client.find_checked(&query, &[], Some(5)).await,
            Err(err) => Err(err),
        };
        match rows {
            Ok(rows) => {
                if let Some(row) = rows.into_iter().next() {
                    found = Some((table, row));
                    break;
                }
            }
            Err(err) => return sn_fail(id, &title, &err),
        }
    }
    let install = format!(
        "System Applications > All Available Applications > All: find Microsoft 365 support (scope {scope}) and Install it (ServiceNow Store), then run doctor again."
    );
    let Some((table, app)) = found else {
        return CheckOutcome::fail(
            id,
            title,
            format!("no application with scope {scope} in sys_store_app or sys_scope"),
            install,
        );
    };
    let name = table.get(&app, "name").unwrap_or(scope).to_owned();
    let version = table
        .get(&app, "version")
        .filter(|version| !version.is_empty())
        .unwrap_or("unknown version")
        .to_owned();
    let inactive = table.get(&app, "active") == Some("false");
    let table = table.table();
    if inactive {
        return CheckOutcome::fail(
            id,
            title,
            format!("{name} {version} is installed but inactive"),
            format!(
                "System Applications > All Available Applications > Installed: open {name} and activate it."
            ),
        );
    }
    CheckOutcome::pass(id, title, format!("{name} {version} ({table})"))
}

/// Start of the inbound-flow detail when ServiceNow refused the token.
const INBOUND_REFUSED: &str = "ServiceNow refused the REST-user app's token (401)";

/// Checks, in the order they explain a refused inbound token: claim and user field, entity,
/// user and role, token version.
const INBOUND_EXPLAINERS: [&str; 5] = [
    "servicenow.oidc_provider",
    "servicenow.oidc_entity",
    "servicenow.integration_user",
    "inbound_app.token",
    "inbound_app.registration",
];

/// Microsoft's call path: a v1 client-credentials token of the REST-user app for the inbound
/// app, then a Table API read with it, which ServiceNow must accept as the integration user.
async fn check_inbound_flow(upstreams: &Upstreams, spec: &IntegrationSpec) -> CheckOutcome {
    let id = "servicenow.inbound_flow";
    let title = "Microsoft's call path: REST-user token accepted by ServiceNow";
    let (Some(rest_user), Some(inbound)) = (&spec.rest_user_app, &spec.inbound_app) else {
        return CheckOutcome::fail(
            id,
            title,
            "no REST-user or inbound app recorded",
            "Run setup (AAD auth branch).",
        );
    };
    let Some(admin) = &upstreams.servicenow else {
        return CheckOutcome::skip(id, title, "ServiceNow access is not configured.");
    };
    let token = match upstreams
        .entra
        .client_credentials_v1(
            &spec.tenant,
            &rest_user.client_id,
            &rest_user.client_secret,
            &inbound.client_id,
        )
        .await
    {
        Ok(token) => token,
        Err(err) => {
            return CheckOutcome::fail(
                id,
                title,
                format!(
                    "no REST-user token for the inbound app: {}",
                    entra_detail(&err)
                ),
                entra_fix(&err, AppRole::RestUser.label()),
            );
        }
    };
    let Some(claims) = unverified_claims(token.access_token.expose_secret()) else {
        return CheckOutcome::fail(
            id,
            title,
            "the REST-user token is not a readable JWT",
            "Check that the REST-user app is an Entra ID app registration in this tenant.",
        );
    };
    let claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if claim("ver") != "1.0" {
        problems.push(format!(
            "the token is version {:?}, not 1.0 (no appid claim)",
            claim("ver")
        ));
        fixes.push("Entra ID > App registrations > the inbound app > Manifest: set requestedAccessTokenVersion to null or 1");
    } else if !claim("appid").eq_ignore_ascii_case(&rest_user.client_id) {
        problems.push(format!(
            "appid is {:?}, expected the REST-user app {}",
            claim("appid"),
            rest_user.client_id
        ));
        fixes.push("enter the REST-user app's client id and secret in setup");
    }
    let aud = claim("aud").trim_end_matches('/');
    if !aud.eq_ignore_ascii_case(&inbound.client_id)
        && !aud.eq_ignore_ascii_case(&format!("api://{}", inbound.client_id))
    {
        problems.push(format!(
            "aud is {aud:?}, expected the inbound app {}",
            inbound.client_id
        ));
        fixes.push("enter the inbound app's client id in setup and in the OIDC entity's Client ID");
    }
    if !problems.is_empty() {
        return CheckOutcome::fail(
            id,
            title,
            problems.join("; "),
            format!("{}.", fixes.join("; ")),
        );
    }
    let as_integration_user = ServiceNowClient::new(
        upstreams.http.clone(),
        admin.base_url().clone(),
        ServiceNowAuth::Bearer {
            token: token.access_token.clone(),
        },
    );
    match as_integration_user
        .query("incident", "", &["sys_id"], Some(1))
        .await
    {
        Ok(_) => CheckOutcome::pass(
            id,
            title,
            format!(
                "v1 token (appid {}, aud {aud}) accepted; Table API read of incident answered",
                rest_user.client_id
            ),
        ),
        Err(err) if err.status() == Some(401) => CheckOutcome::fail(
            id,
            title,
            format!("{INBOUND_REFUSED}; none of the other checks explains it"),
            format!(
                "Check the OIDC provider configuration (User Claim = appid, User Field = User ID), the OIDC entity's Client ID ({}) and Active, and that the user {} exists and is active.",
                inbound.client_id, rest_user.client_id
            ),
        ),
        Err(err) if err.status() == Some(403) => CheckOutcome::fail(
            id,
            title,
            format!("ServiceNow accepted the token but refused the read: {err}"),
            format!(
                "User Administration > Users > {}: add the role incident_manager.",
                rest_user.client_id
            ),
        ),
        Err(err) => sn_fail(id, title, &err),
    }
}

/// A refused inbound token is explained by the first failed check that can cause it.
fn explain_inbound_refusal(outcomes: &mut [CheckOutcome]) {
    let Some(index) = outcomes.iter().position(|o| {
        o.id == "servicenow.inbound_flow"
            && o.status == Status::Fail
            && o.detail.starts_with(INBOUND_REFUSED)
    }) else {
        return;
    };
    let cause = INBOUND_EXPLAINERS.iter().find_map(|id| {
        outcomes
            .iter()
            .find(|o| o.id == *id && o.status == Status::Fail)
            .map(|o| (o.id, o.detail.clone(), o.fix.clone().unwrap_or_default()))
    });
    if let Some((cause, detail, fix)) = cause {
        let outcome = &mut outcomes[index];
        outcome.detail = format!("{INBOUND_REFUSED}, because of {cause}: {detail}");
        outcome.fix = Some(format!("Fix {cause}: {fix}"));
    }
}
