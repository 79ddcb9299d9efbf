//! Creates the integration's pieces through Microsoft Graph and the ServiceNow Table API, the
//! way the guide does by hand. Every step looks up what exists first (by name or client id),
//! reuses what matches and reports what it changed, so running it twice creates nothing twice.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, json};

use super::schema::{self, ResolvedTable};
use super::{AppCredentials, AuthType, IntegrationSpec, Upstreams, roles};
use crate::upstream::graph::{Application, ApplicationUpdate, GraphClient, SignInAudience};
use crate::upstream::servicenow::{CheckedQuery, Column, Record, ServiceNowClient};

/// A provisioning step failed; the text says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct ProvisionError {
    /// The step, e.g. `create the outbound app`.
    pub step: &'static str,
    /// What went wrong (never a secret).
    pub message: String,
    /// HTTP status of the upstream refusal, when there was one (403: not allowed).
    pub status: Option<u16>,
    /// True when retrying later can help (429, 5xx, network).
    pub transient: bool,
}

/// An upstream error as provisioning reports it.
pub trait UpstreamFailure: std::fmt::Display {
    /// HTTP status, if any.
    fn http_status(&self) -> Option<u16>;
    /// Whether a retry can help.
    fn retry(&self) -> crate::error::RetryKind;
}

impl UpstreamFailure for crate::upstream::graph::GraphError {
    fn http_status(&self) -> Option<u16> {
        self.status()
    }
    fn retry(&self) -> crate::error::RetryKind {
        self.retry_kind()
    }
}

impl UpstreamFailure for crate::upstream::servicenow::ServiceNowError {
    fn http_status(&self) -> Option<u16> {
        self.status()
    }
    fn retry(&self) -> crate::error::RetryKind {
        self.retry_kind()
    }
}

fn failed<E: UpstreamFailure>(step: &'static str) -> impl Fn(E) -> ProvisionError {
    move |err| ProvisionError {
        step,
        message: err.to_string(),
        status: err.http_status(),
        transient: !matches!(err.retry(), crate::error::RetryKind::Permanent),
    }
}

fn problem(step: &'static str, message: &str) -> ProvisionError {
    ProvisionError {
        step,
        message: message.to_owned(),
        status: None,
        transient: false,
    }
}

/// What the caller asks for.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    /// Tenant domain.
    pub tenant: String,
    /// Organisation display name (for `{Name} Azure`).
    pub organization_name: Option<String>,
    /// ServiceNow instance base URL.
    pub instance_url: url::Url,
    /// Prefix of the app display names, e.g. `Microsoft 365 support`.
    pub app_name_prefix: String,
}

/// Provisions the AAD-auth branch: three apps, the OAuth provider, the OIDC provider and
/// entity, the integration user with `incident_manager`. Returns the resulting spec and a log
/// of what was created or reused.
pub async fn provision_aad(
    upstreams: &Upstreams,
    request: &ProvisionRequest,
) -> Result<(IntegrationSpec, Vec<String>), ProvisionError> {
    let (graph, servicenow) = clients(upstreams)?;
    let mut log = Vec::new();
    let redirect = format!(
        "{}/oauth_redirect.do",
        request.instance_url.as_str().trim_end_matches('/')
    );
    let prefix = &request.app_name_prefix;
    let outbound = ensure_app(
        graph,
        &format!("{prefix} outbound"),
        std::slice::from_ref(&redirect),
        false,
        None,
        &mut log,
    )
    .await?;
    let inbound = ensure_app(
        graph,
        &format!("{prefix} inbound REST API"),
        &[],
        true,
        None,
        &mut log,
    )
    .await?;
    let rest_user = ensure_app(
        graph,
        &format!("{prefix} REST user"),
        &[],
        false,
        None,
        &mut log,
    )
    .await?;
    let spec = IntegrationSpec {
        tenant: request.tenant.clone(),
        tenant_id: None,
        organization_name: request.organization_name.clone(),
        instance_url: request.instance_url.clone(),
        auth_type: AuthType::Aad,
        outbound_app: outbound,
        inbound_app: Some(inbound),
        rest_user_app: Some(rest_user),
        integration_user: None,
        integration_user_password: None,
    };
    ensure_oauth_provider(servicenow, &spec, &upstreams.authority, &mut log).await?;
    let provider = ensure_oidc_provider(servicenow, &spec, &upstreams.authority, &mut log).await?;
    let provider_id = provider.sys_id().unwrap_or_default().to_owned();
    ensure_oidc_entity(servicenow, &spec, &provider_id, &mut log).await?;
    ensure_integration_user(servicenow, &spec, &mut log).await?;
    Ok((spec, log))
}

/// The Graph and ServiceNow clients provisioning needs, or which one is not configured.
fn clients(upstreams: &Upstreams) -> Result<(&GraphClient, &ServiceNowClient), ProvisionError> {
    Ok((graph_client(upstreams)?, servicenow_client(upstreams)?))
}

/// The bot's Graph client, or why there is none.
pub fn graph_client(upstreams: &Upstreams) -> Result<&GraphClient, ProvisionError> {
    upstreams.graph.as_ref().ok_or_else(|| {
        problem(
            "Microsoft Graph",
            "Graph access is not configured (entra.graph_client_id / graph_client_secret)",
        )
    })
}

/// The bot's ServiceNow client, or why there is none.
pub fn servicenow_client(upstreams: &Upstreams) -> Result<&ServiceNowClient, ProvisionError> {
    upstreams.servicenow.as_ref().ok_or_else(|| {
        problem(
            "ServiceNow",
            "ServiceNow access is not configured (servicenow.instance_url and credentials)",
        )
    })
}

/// Provisions the Basic-auth branch: the outbound app and OAuth provider, and an integration
/// user `user_name` with a generated password and `incident_manager` (no inbound apps, no OIDC).
pub async fn provision_basic(
    upstreams: &Upstreams,
    request: &ProvisionRequest,
    user_name: &str,
) -> Result<(IntegrationSpec, Vec<String>), ProvisionError> {
    let (graph, servicenow) = clients(upstreams)?;
    let mut log = Vec::new();
    let redirect = format!(
        "{}/oauth_redirect.do",
        request.instance_url.as_str().trim_end_matches('/')
    );
    let outbound = ensure_app(
        graph,
        &format!("{} outbound", request.app_name_prefix),
        std::slice::from_ref(&redirect),
        false,
        None,
        &mut log,
    )
    .await?;
    let spec = IntegrationSpec {
        tenant: request.tenant.clone(),
        tenant_id: None,
        organization_name: request.organization_name.clone(),
        instance_url: request.instance_url.clone(),
        auth_type: AuthType::Basic,
        outbound_app: outbound,
        inbound_app: None,
        rest_user_app: None,
        integration_user: Some(user_name.to_owned()),
        integration_user_password: Some(generate_password()),
    };
    ensure_oauth_provider(servicenow, &spec, &upstreams.authority, &mut log).await?;
    ensure_integration_user(servicenow, &spec, &mut log).await?;
    Ok((spec, log))
}

/// Longest time a step waits for Entra ID to replicate a new app or secret.
pub const REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`ensure_app_tracked`] got as far as, kept even when a later part fails, so a retry
/// never creates a second app or a second secret.
#[derive(Debug, Default)]
pub struct AppProgress {
    /// Client id of the app found or created.
    pub client_id: Option<String>,
    /// The secret this run added, when it added one.
    pub secret: Option<SecretString>,
    /// True when this run created the app.
    pub created: bool,
}

/// Display name of the secrets setup adds (and removes again when no longer used).
pub const SECRET_NAME: &str = "m365bot";

/// True for the answers Entra ID gives while a just-created app replicates: Graph 404, or
/// 400 "does not reference a valid application object".
fn replicating(err: &crate::upstream::graph::GraphError) -> bool {
    match err.status() {
        Some(404) => true,
        Some(400) => err
            .to_string()
            .contains("does not reference a valid application object"),
        _ => false,
    }
}

/// True when a Graph call failed with replication lag.
fn graph_lag<T>(result: &Result<T, crate::upstream::graph::GraphError>) -> bool {
    result.as_ref().err().is_some_and(replicating)
}

/// Runs `call` again while `lagging` says the answer is replication lag, with growing waits
/// (1 s, 2 s, 4 s, … ) for at most [`REPLICATION_WAIT`]; notes the wait once in `log`.
pub async fn while_replicating<T, E, F, Fut>(
    log: &mut Vec<String>,
    lagging: impl Fn(&Result<T, E>) -> bool,
    mut call: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_secs(1);
    let mut noted = false;
    loop {
        let result = call().await;
        if !lagging(&result) || started.elapsed() + wait > REPLICATION_WAIT {
            return result;
        }
        if !noted {
            log.push("waiting for Entra ID to replicate the new app".to_owned());
            tracing::info!("waiting for Entra ID to replicate the new app");
            noted = true;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(15));
    }
}

/// Finds the app by display name or creates it (single tenant), makes sure it has a service
/// principal, the redirect URIs and (for the inbound app) v1 tokens, and adds a new secret,
/// unless `known` holds a secret of this very app (then it is reused and nothing is added).
pub async fn ensure_app(
    graph: &GraphClient,
    name: &str,
    redirect_uris: &[String],
    v1_tokens: bool,
    known: Option<&AppCredentials>,
    log: &mut Vec<String>,
) -> Result<AppCredentials, ProvisionError> {
    let mut progress = AppProgress::default();
    ensure_app_tracked(
        graph,
        name,
        redirect_uris,
        v1_tokens,
        known,
        log,
        &mut progress,
    )
    .await
}

/// [`ensure_app`], recording in `progress` the app as soon as it exists and the secret as
/// soon as it was added. A recorded app (`known`) is looked up by client id first, waiting out
/// replication, so it is never created twice; replication errors right after creation are
/// waited out; the secrets setup added before and no longer uses are removed.
pub async fn ensure_app_tracked(
    graph: &GraphClient,
    name: &str,
    redirect_uris: &[String],
    v1_tokens: bool,
    known: Option<&AppCredentials>,
    log: &mut Vec<String>,
    progress: &mut AppProgress,
) -> Result<AppCredentials, ProvisionError> {
    let recorded = match known {
        Some(known) => while_replicating(
            log,
            |found: &Result<Option<Application>, _>| matches!(found, Ok(None)),
            || graph.find_application_by_app_id(&known.client_id),
        )
        .await
        .map_err(failed("find the app"))?,
        None => None,
    };
    let existing = match recorded {
        Some(app) => Some(app),
        None => graph
            .find_applications_by_name(name)
            .await
            .map_err(failed("find the app"))?
            .into_iter()
            .next(),
    };
    let application: Application = match existing {
        Some(app) => {
            log.push(format!("reused app {name} ({})", app.app_id));
            app
        }
        None => {
            let app = graph
                .create_application(name, redirect_uris, SignInAudience::AzureAdMyOrg)
                .await
                .map_err(failed("create the app"))?;
            log.push(format!("created app {name} ({})", app.app_id));
            progress.created = true;
            app
        }
    };
    progress.client_id = Some(application.app_id.clone());
    let missing_redirects = redirect_uris
        .iter()
        .any(|uri| !application.web.redirect_uris.contains(uri));
    let needs_v1 = v1_tokens && application.api.requested_access_token_version != Some(1);
    if missing_redirects || needs_v1 {
        let mut uris = application.web.redirect_uris.clone();
        uris.extend(
            redirect_uris
                .iter()
                .filter(|uri| !application.web.redirect_uris.contains(uri))
                .cloned(),
        );
        let update = ApplicationUpdate {
            display_name: None,
            redirect_uris: missing_redirects.then_some(uris),
            requested_access_token_version: needs_v1.then_some(Some(1)),
        };
        while_replicating(log, graph_lag, || {
            graph.update_application(&application.id, &update)
        })
        .await
        .map_err(failed("update the app"))?;
        let mut changes = Vec::new();
        if missing_redirects {
            changes.push("added the redirect URI");
        }
        if needs_v1 {
            changes.push("set requestedAccessTokenVersion to 1 (v1 tokens)");
        }
        log.push(format!("updated app {name}: {}", changes.join(", ")));
    }
    if graph
        .find_service_principal(&application.app_id)
        .await
        .map_err(failed("find the service principal"))?
        .is_none()
    {
        while_replicating(log, graph_lag, || {
            graph.create_service_principal(&application.app_id)
        })
        .await
        .map_err(failed("create the service principal"))?;
        log.push(format!("created service principal for {name}"));
    }
    if let Some(known) = known.filter(|k| k.client_id == application.app_id) {
        log.push(format!(
            "kept the client secret already recorded for {name}"
        ));
        return Ok(known.clone());
    }
    let secret = while_replicating(log, graph_lag, || {
        graph.add_password(&application.id, SECRET_NAME)
    })
    .await
    .map_err(failed("add a client secret"))?;
    progress.secret = Some(secret.secret_text.clone());
    log.push(format!("added a client secret to {name}"));
    // The secrets setup added earlier are no longer used: only the new one is recorded.
    for old in application
        .password_credentials
        .iter()
        .filter(|c| c.display_name.as_deref() == Some(SECRET_NAME) && c.key_id != secret.key_id)
    {
        match graph.remove_password(&application.id, &old.key_id).await {
            Ok(()) => log.push(format!(
                "removed an unused client secret of {name} (hint {})",
                old.hint.as_deref().unwrap_or("?")
            )),
            Err(err) => log.push(format!(
                "could not remove an unused client secret of {name}: {err}"
            )),
        }
    }
    Ok(AppCredentials {
        client_id: application.app_id,
        client_secret: secret.secret_text,
    })
}

/// Creates the record `lookup` selects, or updates it when exactly one record matches. The
/// lookup uses resolved columns only and every row it returns is checked in code
/// ([`ServiceNowClient::find_one`]), so an ignored condition or a duplicate refuses the write
/// instead of changing a record nobody selected. Values of optional columns the instance lacks
/// are not written; the log says which to set by hand.
async fn upsert(
    client: &ServiceNowClient,
    table: &ResolvedTable,
    lookup: &CheckedQuery,
    values: &[(&str, String)],
    what: &str,
    log: &mut Vec<String>,
) -> Result<Record, ProvisionError> {
    let found = client
        .find_one(lookup, &[])
        .await
        .map_err(failed("look up the ServiceNow record"))?;
    let (body, skipped) = table.body(values);
    if !skipped.is_empty() {
        log.push(format!(
            "{what}: this instance has no column for {}; set it by hand in {} if the form shows it",
            skipped.join(", "),
            table.manual()
        ));
    }
    match found.as_ref().and_then(|r| Some((r, r.sys_id()?))) {
        Some((existing, sys_id)) => {
            let differs: Vec<String> = values
                .iter()
                .filter(|(key, _)| !SECRET_FIELDS.contains(key))
                .filter_map(|(key, want)| {
                    let name = table.name(key)?;
                    let was = existing.str(name).unwrap_or_default();
                    (!was.eq_ignore_ascii_case(want))
                        .then(|| format!("{} was {was:?}, now {want:?}", table.describe(key)))
                })
                .collect();
            let record = client
                .update(table.table(), sys_id, &body)
                .await
                .map_err(failed("update a ServiceNow record"))?;
            if record.sys_id().is_some_and(|saved| saved != sys_id) {
                return Err(problem(
                    "update a ServiceNow record",
                    "ServiceNow answered the update with another record",
                ));
            }
            if differs.is_empty() {
                log.push(format!("reused {what} (it matches)"));
            } else {
                log.push(format!(
                    "reused and corrected {what}: {}",
                    differs.join("; ")
                ));
            }
            Ok(record)
        }
        None => {
            let record = client
                .create(table.table(), &body)
                .await
                .map_err(failed("create a ServiceNow record"))?;
            log.push(format!("created {what}"));
            Ok(record)
        }
    }
}

/// True when the log of one `ensure_*` call says it created a ServiceNow record (rather than
/// reusing or correcting one): only such records are this setup's to delete.
pub fn log_says_created(log: &[String]) -> bool {
    log.iter().any(|entry| entry.starts_with("created the "))
}

/// Keys of values never reported (secrets or write-only).
const SECRET_FIELDS: &[&str] = &["client_secret", "user_password"];

/// Reads the table's columns from the instance, or says which one is missing.
async fn columns_of(
    client: &ServiceNowClient,
    spec: &'static schema::TableSpec,
) -> Result<ResolvedTable, ProvisionError> {
    schema::load(client, spec)
        .await
        .map_err(failed("read the table's columns"))
}

fn lookup_of(
    table: &ResolvedTable,
    key: &str,
    value: &str,
) -> Result<CheckedQuery, ProvisionError> {
    table
        .lookup(key, value)
        .map_err(failed("look up the ServiceNow record"))
}

fn owned(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .map(|(key, value)| (*key, (*value).to_owned()))
        .collect()
}

/// Creates or corrects the outbound OAuth provider (`oauth_entity`, looked up by client id).
pub async fn ensure_oauth_provider(
    client: &ServiceNowClient,
    spec: &IntegrationSpec,
    authority: &url::Url,
    log: &mut Vec<String>,
) -> Result<Record, ProvisionError> {
    let table = columns_of(client, &schema::OAUTH_ENTITY).await?;
    let token_url = spec.token_url(authority);
    let redirect = spec.redirect_url();
    let name = spec.outbound_provider_name();
    let values = owned(&[
        ("name", &name),
        ("type", "oauth_provider"),
        ("client_id", &spec.outbound_app.client_id),
        (
            "client_secret",
            spec.outbound_app.client_secret.expose_secret(),
        ),
        ("default_grant_type", "client_credentials"),
        ("token_url", &token_url),
        ("redirect_url", &redirect),
        ("active", "true"),
    ]);
    let lookup = lookup_of(&table, "client_id", &spec.outbound_app.client_id)?;
    upsert(
        client,
        &table,
        &lookup,
        &values,
        "the outbound OAuth provider",
        log,
    )
    .await
}

/// Creates or corrects the OIDC provider configuration (looked up by its name).
pub async fn ensure_oidc_provider(
    client: &ServiceNowClient,
    spec: &IntegrationSpec,
    authority: &url::Url,
    log: &mut Vec<String>,
) -> Result<Record, ProvisionError> {
    let table = columns_of(client, &schema::OIDC_PROVIDER_CONFIGURATION).await?;
    let name = spec.oidc_provider_name();
    let metadata_url = spec.metadata_url(authority);
    let values = owned(&[
        ("name", &name),
        ("metadata_url", &metadata_url),
        ("user_claim", "appid"),
        ("user_field", "user_name"),
        ("active", "true"),
    ]);
    let lookup = lookup_of(&table, "name", &name)?;
    let saved = upsert(
        client,
        &table,
        &lookup,
        &values,
        "the OIDC provider configuration",
        log,
    )
    .await?;
    if saved.sys_id().is_none() {
        return Err(problem(
            "create the OIDC provider configuration",
            "ServiceNow returned no sys_id",
        ));
    }
    Ok(saved)
}

/// Creates or corrects the OIDC entity of the inbound app (looked up by client id); `None`
/// without an inbound app.
pub async fn ensure_oidc_entity(
    client: &ServiceNowClient,
    spec: &IntegrationSpec,
    provider_id: &str,
    log: &mut Vec<String>,
) -> Result<Option<Record>, ProvisionError> {
    let Some(inbound) = &spec.inbound_app else {
        return Ok(None);
    };
    let table = columns_of(client, &schema::OAUTH_OIDC_ENTITY).await?;
    let name = spec.oidc_entity_name();
    let redirect = spec.redirect_url();
    let values = owned(&[
        ("name", &name),
        ("type", "oidc_provider"),
        ("client_id", &inbound.client_id),
        ("client_secret", inbound.client_secret.expose_secret()),
        ("provider_configuration", provider_id),
        ("redirect_url", &redirect),
        ("active", "true"),
    ]);
    let lookup = lookup_of(&table, "client_id", &inbound.client_id)?;
    upsert(client, &table, &lookup, &values, "the OIDC entity", log)
        .await
        .map(Some)
}

/// Creates or corrects the integration user (looked up by User ID), sets its password as a
/// display value (Basic auth) and grants `incident_manager`; `None` when the spec names no
/// user.
pub async fn ensure_integration_user(
    client: &ServiceNowClient,
    spec: &IntegrationSpec,
    log: &mut Vec<String>,
) -> Result<Option<Record>, ProvisionError> {
    let Some(user_name) = spec.integration_user_name() else {
        return Ok(None);
    };
    let table =
        ResolvedTable::standard(&schema::SYS_USER).map_err(failed("read the table's columns"))?;
    let values = owned(&[
        ("user_name", &user_name),
        ("first_name", "Microsoft 365"),
        ("last_name", "Integration"),
        ("web_service_access_only", "true"),
        ("active", "true"),
    ]);
    let lookup = lookup_of(&table, "user_name", &user_name)?;
    let user = upsert(
        client,
        &table,
        &lookup,
        &values,
        "the integration user",
        log,
    )
    .await?;
    let user_id = user.sys_id().unwrap_or_default().to_owned();
    if let Some(password) = &spec.integration_user_password {
        // Without sysparm_input_display_value the raw text lands in the one-way field and
        // the user cannot sign in.
        let mut body = Map::new();
        body.insert(
            table
                .column("user_password")
                .map_err(failed("set the integration user's password"))?
                .name()
                .to_owned(),
            json!(password.expose_secret()),
        );
        client
            .update_display_values(table.table(), &user_id, &body)
            .await
            .map_err(failed("set the integration user's password"))?;
        log.push("set the integration user's password".to_owned());
    }
    let role_name = Column::standard("sys_user_role", "name")
        .and_then(|name| CheckedQuery::on("sys_user_role").eq(&name, roles::INCIDENT_MANAGER))
        .map_err(failed("find the incident_manager role"))?;
    let Some(role_id) = client
        .find_one(&role_name, &["sys_id"])
        .await
        .map_err(failed("find the incident_manager role"))?
        .as_ref()
        .and_then(Record::sys_id)
        .map(str::to_owned)
    else {
        return Err(problem(
            "grant incident_manager",
            "the role incident_manager does not exist on this instance",
        ));
    };
    let assignment = Column::standard("sys_user_has_role", "user")
        .and_then(|user| Column::standard("sys_user_has_role", "role").map(|role| (user, role)))
        .and_then(|(user, role)| {
            CheckedQuery::on("sys_user_has_role")
                .eq(&user, &user_id)?
                .eq(&role, &role_id)
        })
        .map_err(failed("read the user's roles"))?;
    let existing = client
        .find_checked(&assignment, &["sys_id"], Some(1))
        .await
        .map_err(failed("read the user's roles"))?;
    if existing.is_empty() {
        let mut grant = Map::new();
        grant.insert("user".to_owned(), json!(user_id));
        grant.insert("role".to_owned(), json!(role_id));
        client
            .create("sys_user_has_role", &grant)
            .await
            .map_err(failed("grant incident_manager"))?;
        log.push("granted incident_manager to the integration user".to_owned());
    }
    Ok(Some(user))
}

/// A random password for a Basic-auth integration user (24 characters, mixed classes).
pub fn generate_password() -> SecretString {
    use rand::Rng;
    const CLASSES: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"!#%+-=?@_",
    ];
    let mut rng = rand::rng();
    let mut password: Vec<u8> = CLASSES
        .iter()
        .map(|class| class[rng.random_range(0..class.len())])
        .collect();
    let all: Vec<u8> = CLASSES.concat();
    password.extend((0..20).map(|_| all[rng.random_range(0..all.len())]));
    for i in (1..password.len()).rev() {
        password.swap(i, rng.random_range(0..=i));
    }
    SecretString::from(String::from_utf8_lossy(&password).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_mix_classes_and_differ() {
        let a = generate_password();
        let b = generate_password();
        let text = a.expose_secret();
        assert_eq!(text.len(), 24);
        assert!(text.chars().any(|c| c.is_ascii_uppercase()));
        assert!(text.chars().any(|c| c.is_ascii_lowercase()));
        assert!(text.chars().any(|c| c.is_ascii_digit()));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
