//! The slow work of each step: creating or reading the Entra apps and ServiceNow records
//! (through `integration::provision`) and verifying them live (through `integration::doctor`).
//! Every effect is idempotent, so a retried effect (429 storm, restart) creates nothing twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;

use super::state::{
    AppChoice, AppRecord, AppSlot, Collected, Effect, EffectResult, RecordChoice, RecordRef,
    RecordSlot, SecretSlot, Secrets, Step, StepError, UserChoice, Verdict,
};
use crate::app::App;
use crate::db::now_millis;
use crate::integration::doctor::{self, CheckOutcome, Status};
use crate::integration::provision::{self, ProvisionError};
use crate::integration::schema::{self, ResolvedTable};
use crate::integration::{AppCredentials, AuthType, IntegrationSpec, Upstreams};
use crate::upstream::servicenow::Record;

/// A spec naming only the tenant and instance of a provisioning request (no apps yet).
pub fn placeholder_spec(
    request: &crate::integration::provision::ProvisionRequest,
) -> IntegrationSpec {
    IntegrationSpec {
        tenant: request.tenant.clone(),
        tenant_id: None,
        organization_name: request.organization_name.clone(),
        instance_url: request.instance_url.clone(),
        auth_type: AuthType::Aad,
        outbound_app: AppCredentials {
            client_id: String::new(),
            client_secret: SecretString::from(String::new()),
        },
        inbound_app: None,
        rest_user_app: None,
        integration_user: None,
        integration_user_password: None,
    }
}

/// Clients for the integration's tenant: Graph tokens are requested in the tenant the admin
/// entered (the bot's own tenant may differ). Cached per tenant and endpoints.
pub fn upstreams_for(app: &App, tenant: &str) -> Arc<Upstreams> {
    static CACHE: Mutex<Vec<(String, Arc<Upstreams>)>> = Mutex::new(Vec::new());
    if tenant.is_empty() {
        return Arc::new(Upstreams::from_settings(
            &app.settings,
            app.http.clone(),
            app.metrics.clone(),
        ));
    }
    let key = format!(
        "{tenant}|{}|{}|{:?}",
        app.settings.entra.graph_url,
        app.settings.entra.authority_url,
        app.settings
            .servicenow
            .instance_url
            .as_ref()
            .map(url::Url::as_str)
    );
    if let Ok(cache) = CACHE.lock()
        && let Some((_, found)) = cache.iter().find(|(k, _)| *k == key)
    {
        return found.clone();
    }
    let mut settings = app.settings.clone();
    let instance_url = settings
        .servicenow
        .instance_url
        .clone()
        .unwrap_or_else(|| settings.entra.graph_url.clone());
    settings.integration = Some(IntegrationSpec {
        tenant: tenant.to_owned(),
        tenant_id: None,
        organization_name: None,
        instance_url,
        auth_type: AuthType::Aad,
        outbound_app: AppCredentials {
            client_id: String::new(),
            client_secret: SecretString::from(String::new()),
        },
        inbound_app: None,
        rest_user_app: None,
        integration_user: None,
        integration_user_password: None,
    });
    let built = Arc::new(Upstreams::from_settings(
        &settings,
        app.http.clone(),
        app.metrics.clone(),
    ));
    if let Ok(mut cache) = CACHE.lock() {
        if cache.len() > 16 {
            cache.clear();
        }
        cache.push((key, built.clone()));
    }
    built
}

/// Attempts of an effect whose failure is transient (429, 5xx, network).
const ATTEMPTS: u32 = 3;

/// The integration as far as the wizard knows it (missing apps have an empty client id).
pub fn spec(app: &App, data: &Collected, secrets: &Secrets) -> Option<IntegrationSpec> {
    spec_from(&app.settings, data, secrets)
}

/// [`spec`] from the settings alone (for the command line).
pub fn spec_from(
    settings: &crate::config::Settings,
    data: &Collected,
    secrets: &Secrets,
) -> Option<IntegrationSpec> {
    let instance_url = settings.servicenow.instance_url.clone()?;
    let creds = |slot: AppSlot| {
        data.app(slot).map(|record| AppCredentials {
            client_id: record.client_id.clone(),
            client_secret: secrets
                .get(slot.secret())
                .cloned()
                .unwrap_or_else(|| SecretString::from(String::new())),
        })
    };
    let auth_type = data.auth_type.unwrap_or(AuthType::Aad);
    Some(IntegrationSpec {
        tenant: data.tenant.clone().unwrap_or_default(),
        tenant_id: data.tenant_id.clone(),
        organization_name: None,
        instance_url,
        auth_type,
        outbound_app: creds(AppSlot::Outbound).unwrap_or(AppCredentials {
            client_id: String::new(),
            client_secret: SecretString::from(String::new()),
        }),
        inbound_app: creds(AppSlot::Inbound).filter(|_| auth_type == AuthType::Aad),
        rest_user_app: creds(AppSlot::RestUser).filter(|_| auth_type == AuthType::Aad),
        integration_user: data
            .integration_user
            .clone()
            .filter(|_| auth_type == AuthType::Basic),
        integration_user_password: secrets.get(SecretSlot::IntegrationPassword).cloned(),
    })
}

fn set_app(spec: &mut IntegrationSpec, slot: AppSlot, creds: AppCredentials) {
    match slot {
        AppSlot::Outbound => spec.outbound_app = creds,
        AppSlot::Inbound => spec.inbound_app = Some(creds),
        AppSlot::RestUser => spec.rest_user_app = Some(creds),
    }
}

/// True when an error text shows a failure a retry can fix.
fn transient_text(text: &str) -> bool {
    [
        "answered 429",
        "answered 502",
        "answered 503",
        "answered 504",
        "unreachable",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Runs an effect, retrying transient failures a few times (the effects are idempotent).
pub async fn run(
    app: &App,
    step: Step,
    data: &Collected,
    secrets: &Secrets,
    effect: &Effect,
) -> EffectResult {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut result = run_once(app, step, data, secrets, effect).await;
        result.step = Some(step);
        let transient = result
            .error
            .as_ref()
            .is_some_and(|e| transient_text(&e.message));
        if !transient || attempt >= ATTEMPTS {
            if transient && let Some(error) = result.error.as_mut() {
                error.fix = Some(
                    "The service is throttling or briefly unavailable. Nothing was left half-done: wait a minute and submit this step again.".to_owned(),
                );
            }
            return result;
        }
        tokio::time::sleep(Duration::from_millis(700 * u64::from(attempt))).await;
    }
}

async fn run_once(
    app: &App,
    step: Step,
    data: &Collected,
    secrets: &Secrets,
    effect: &Effect,
) -> EffectResult {
    let Some(mut spec) = spec(app, data, secrets) else {
        return failure(
            None,
            "servicenow.instance_url is not configured",
            Some(
                "Configure the bot's ServiceNow access ([servicenow] instance_url, username, password).",
            ),
        );
    };
    let tenant_upstreams = upstreams_for(app, &spec.tenant);
    let ups: &Upstreams = &tenant_upstreams;
    let auth = spec.auth_type;
    match effect {
        Effect::VerifyTenant { domain } => verify_tenant(ups, domain).await,
        Effect::App { slot, choice } => {
            let mut notes = Vec::new();
            let mut progress = provision::AppProgress::default();
            let (creds, record) = match choice {
                AppChoice::Create => {
                    let graph = match provision::graph_client(ups) {
                        Ok(graph) => graph,
                        Err(err) => return provision_failure(&err, None),
                    };
                    let name = format!(
                        "{} {}",
                        app.settings.setup.app_name_prefix,
                        slot.name_suffix()
                    );
                    let redirects = if *slot == AppSlot::Outbound {
                        vec![spec.redirect_url()]
                    } else {
                        Vec::new()
                    };
                    // An app an earlier attempt of this setup created stays this setup's own.
                    let made_before = |client_id: &str| {
                        data.app(*slot)
                            .is_some_and(|a| a.made && a.client_id == client_id)
                    };
                    let known = data.app(*slot).and_then(|record| {
                        Some(AppCredentials {
                            client_id: record.client_id.clone(),
                            client_secret: secrets.get(slot.secret())?.clone(),
                        })
                    });
                    match provision::ensure_app_tracked(
                        graph,
                        &name,
                        &redirects,
                        *slot == AppSlot::Inbound,
                        known.as_ref(),
                        &mut notes,
                        &mut progress,
                    )
                    .await
                    {
                        Ok(creds) => {
                            let record = AppRecord {
                                made: progress.created || made_before(&creds.client_id),
                                client_id: creds.client_id.clone(),
                                name: Some(name),
                                created: true,
                            };
                            (creds, record)
                        }
                        Err(err) => {
                            let mut result = provision_failure(&err, None);
                            result.notes = notes;
                            if let Some(client_id) = progress.client_id {
                                result.app = Some((
                                    *slot,
                                    AppRecord {
                                        made: progress.created || made_before(&client_id),
                                        client_id,
                                        name: Some(name),
                                        created: true,
                                    },
                                ));
                                result
                                    .secrets
                                    .extend(progress.secret.map(|secret| (slot.secret(), secret)));
                            }
                            return result;
                        }
                    }
                }
                AppChoice::Existing { client_id, secret } => (
                    AppCredentials {
                        client_id: client_id.clone(),
                        client_secret: secret.clone(),
                    },
                    AppRecord {
                        client_id: client_id.clone(),
                        name: None,
                        created: false,
                        made: false,
                    },
                ),
            };
            let secret = creds.client_secret.clone();
            set_app(&mut spec, *slot, creds);
            let field_of = |outcome: &CheckOutcome| {
                let text = outcome.detail.as_str();
                if text.contains("7000215") || text.contains("7000222") || text.contains("7000218")
                {
                    "client_secret"
                } else {
                    "client_id"
                }
            };
            // A new app or secret is refused by the token endpoint until Entra ID replicated
            // it (AADSTS700016, 7000215): wait that out instead of blaming the admin.
            let fresh = progress.created || progress.secret.is_some();
            let lagging = |result: &Result<EffectResult, std::convert::Infallible>| {
                fresh
                    && result
                        .as_ref()
                        .ok()
                        .and_then(|r| r.error.as_ref())
                        .is_some_and(|e| {
                            // The upstream's words are in `details` (shown collapsed), the
                            // plain-words message may carry them too.
                            [Some(e.message.as_str()), e.details.as_deref()]
                                .into_iter()
                                .flatten()
                                .any(|text| {
                                    text.contains("AADSTS700016")
                                        || text.contains("AADSTS7000215")
                                        || text.contains("no application with client id")
                                })
                        })
            };
            let verified = provision::while_replicating(&mut notes, lagging, || async {
                Ok(verify(ups, &spec, step.checks(auth), false, field_of).await)
            })
            .await;
            let mut result = verified.unwrap_or_else(|never| match never {});
            result.notes.splice(0..0, notes);
            let created = matches!(record, AppRecord { created: true, .. }) && fresh;
            if result.error.is_none() || created {
                result.app = Some((*slot, record));
                result.secrets.push((slot.secret(), secret));
            }
            result
        }
        Effect::Record { slot, choice } => {
            record_effect(ups, &spec, data, *slot, choice, step).await
        }
        Effect::User(choice) => user_effect(ups, &mut spec, data, choice, step).await,
        Effect::CrossScope { repair } => {
            verify(ups, &spec, step.checks(auth), *repair, |_| "repair").await
        }
    }
}

fn failure(field: Option<&str>, message: &str, fix: Option<&str>) -> EffectResult {
    EffectResult {
        error: Some(plain_error(field, message, fix)),
        ..EffectResult::default()
    }
}

/// A step error in plain words: an Entra ID refusal becomes what to do about its AADSTS code,
/// and the raw answer (code, trace id) goes under *Details*.
pub fn plain_error(field: Option<&str>, raw: &str, fix: Option<&str>) -> StepError {
    match crate::upstream::entra::code_from_description(raw) {
        Some(code) => {
            let hint = crate::upstream::entra::hint_for(code);
            let details = raw.strip_suffix(hint).unwrap_or(raw).trim_end();
            StepError {
                field: field.map(str::to_owned),
                message: format!("{hint}."),
                fix: None,
                details: Some(details.to_owned()),
            }
        }
        None => StepError {
            field: field.map(str::to_owned),
            message: raw.to_owned(),
            fix: fix.map(str::to_owned),
            details: None,
        },
    }
}

fn provision_failure(err: &ProvisionError, field: Option<&str>) -> EffectResult {
    let fix = match err.status {
        Some(403) => Some(
            "The bot's account is not allowed to do this. Give the bot's ServiceNow account the admin role (or the Graph app Application.ReadWrite.All), or choose *Use an existing one*.",
        ),
        _ if err.transient => None,
        _ => Some("Check the bot's access and try again, or choose *Use an existing one*."),
    };
    failure(field, &err.to_string(), fix)
}

async fn verify_tenant(ups: &Upstreams, domain: &str) -> EffectResult {
    match ups.entra.openid_configuration(domain).await {
        Ok(config) => {
            let tenant_id = config.tenant_id.clone();
            EffectResult {
                tenant_id: tenant_id.clone(),
                verdicts: vec![(
                    "tenant".to_owned(),
                    Verdict {
                        status: "pass".to_owned(),
                        detail: format!("tenant id {}", tenant_id.as_deref().unwrap_or("unknown")),
                        at: now_millis(),
                    },
                )],
                notes: vec![format!(
                    "{domain} is tenant {}",
                    tenant_id.as_deref().unwrap_or("(id not published)")
                )],
                ..EffectResult::default()
            }
        }
        Err(err) => failure(
            Some("domain"),
            &err.to_string(),
            Some(err.hint().unwrap_or(
                "Enter the tenant's domain, e.g. contoso.onmicrosoft.com (Entra ID > Overview > Primary domain).",
            )),
        ),
    }
}

fn verdict(outcome: &CheckOutcome) -> (String, Verdict) {
    (
        outcome.id.to_owned(),
        Verdict {
            status: match outcome.status {
                Status::Pass => "pass",
                Status::Fail => "fail",
                Status::Skip => "skip",
            }
            .to_owned(),
            detail: outcome.detail.clone(),
            at: now_millis(),
        },
    )
}

/// Runs the step's checks; the first failure becomes the step's error, beside the field
/// `field_of` names.
async fn verify(
    ups: &Upstreams,
    spec: &IntegrationSpec,
    ids: &[&str],
    repair: bool,
    field_of: impl Fn(&CheckOutcome) -> &'static str,
) -> EffectResult {
    let outcomes = doctor::run_only(ups, spec, ids, repair).await;
    let mut result = EffectResult {
        verdicts: outcomes.iter().map(verdict).collect(),
        ..EffectResult::default()
    };
    for outcome in &outcomes {
        match outcome.status {
            Status::Pass => result
                .notes
                .push(format!("verified: {}: {}", outcome.title, outcome.detail)),
            Status::Skip => result.notes.push(format!(
                "not verified: {}: {}",
                outcome.title, outcome.detail
            )),
            Status::Fail => {}
        }
    }
    if let Some(failed) = outcomes.iter().find(|o| o.status == Status::Fail) {
        result.error = Some(plain_error(
            Some(field_of(failed)),
            &format!("{}: {}", failed.title, failed.detail),
            failed.fix.as_deref(),
        ));
    }
    result
}

async fn record_effect(
    ups: &Upstreams,
    spec: &IntegrationSpec,
    data: &Collected,
    slot: RecordSlot,
    choice: &RecordChoice,
    step: Step,
) -> EffectResult {
    let client = match provision::servicenow_client(ups) {
        Ok(client) => client,
        Err(err) => return provision_failure(&err, None),
    };
    let mut notes = Vec::new();
    let mut made = false;
    let record: Record = match choice {
        RecordChoice::Create => {
            let saved = match slot {
                RecordSlot::OauthProvider => {
                    provision::ensure_oauth_provider(client, spec, &ups.authority, &mut notes)
                        .await
                        .map(Some)
                }
                RecordSlot::OidcProvider => {
                    provision::ensure_oidc_provider(client, spec, &ups.authority, &mut notes)
                        .await
                        .map(Some)
                }
                RecordSlot::OidcEntity => {
                    let provider = data
                        .record(RecordSlot::OidcProvider)
                        .map(|r| r.sys_id.clone())
                        .unwrap_or_default();
                    provision::ensure_oidc_entity(client, spec, &provider, &mut notes).await
                }
            };
            // Created now, or by an earlier attempt of this setup and found again.
            made = provision::log_says_created(&notes)
                || saved
                    .as_ref()
                    .ok()
                    .and_then(Option::as_ref)
                    .is_some_and(|record| {
                        data.record(slot)
                            .is_some_and(|r| r.made && Some(r.sys_id.as_str()) == record.sys_id())
                    });
            match saved {
                Ok(Some(record)) => record,
                Ok(None) => {
                    return failure(
                        None,
                        "the inbound app is not recorded yet",
                        Some("Go back to the inbound app step."),
                    );
                }
                Err(err) => return provision_failure(&err, None),
            }
        }
        RecordChoice::Existing(sys_id) => match client.get(slot.table(), sys_id, &[]).await {
            Ok(Some(record)) => {
                let table = match schema::load(client, slot_spec(slot)).await {
                    Ok(table) => table,
                    Err(err) => return failure(Some("record"), &err.to_string(), None),
                };
                let expected = match slot {
                    RecordSlot::OauthProvider => Some(spec.outbound_app.client_id.clone()),
                    RecordSlot::OidcEntity => {
                        spec.inbound_app.as_ref().map(|a| a.client_id.clone())
                    }
                    RecordSlot::OidcProvider => None,
                };
                let found = table.get(&record, "client_id").unwrap_or_default();
                if let Some(want) = expected
                    && found != want
                {
                    return failure(
                        Some("record"),
                        &format!(
                            "The record you picked has client id {found:?}, but the app recorded in this setup is {want:?}."
                        ),
                        Some(
                            "Pick the record that uses this app's client id, or choose *Create it for me* to create or correct it.",
                        ),
                    );
                }
                notes.push(format!(
                    "using the existing record {}",
                    record_name(&table, &record)
                ));
                record
            }
            Ok(None) => {
                return failure(
                    Some("record"),
                    "That record no longer exists (or the bot may not read it).",
                    Some("Pick another record, or choose *Create it for me*."),
                );
            }
            Err(err) => return failure(Some("record"), &err.to_string(), None),
        },
    };
    let name = match schema::load(client, slot_spec(slot)).await {
        Ok(table) => record_name(&table, &record),
        Err(err) => return failure(Some("record"), &err.to_string(), None),
    };
    let mut result = verify(ups, spec, step.checks(spec.auth_type), false, |_| "record").await;
    result.notes.splice(0..0, notes);
    if result.error.is_none() {
        result.record = Some((
            slot,
            RecordRef {
                sys_id: record.sys_id().unwrap_or_default().to_owned(),
                name,
                created: matches!(choice, RecordChoice::Create),
                made,
            },
        ));
    }
    result
}

/// The columns the bot needs on a slot's table.
fn slot_spec(slot: RecordSlot) -> &'static schema::TableSpec {
    match slot {
        RecordSlot::OauthProvider => &schema::OAUTH_ENTITY,
        RecordSlot::OidcProvider => &schema::OIDC_PROVIDER_CONFIGURATION,
        RecordSlot::OidcEntity => &schema::OAUTH_OIDC_ENTITY,
    }
}

/// The display name of a record (its name column as this instance calls it).
pub fn record_name(table: &ResolvedTable, record: &Record) -> String {
    table.get(record, "name").unwrap_or_default().to_owned()
}

async fn user_effect(
    ups: &Upstreams,
    spec: &mut IntegrationSpec,
    data: &Collected,
    choice: &UserChoice,
    step: Step,
) -> EffectResult {
    let client = match provision::servicenow_client(ups) {
        Ok(client) => client,
        Err(err) => return provision_failure(&err, None),
    };
    let basic = spec.auth_type == AuthType::Basic;
    let mut notes = Vec::new();
    let mut secrets = Vec::new();
    let mut user_record = None;
    let created = match choice {
        UserChoice::Create { user_name } => {
            if basic {
                spec.integration_user = user_name.clone();
                let password = provision::generate_password();
                spec.integration_user_password = Some(password.clone());
                secrets.push((SecretSlot::IntegrationPassword, password));
            }
            let record = match provision::ensure_integration_user(client, spec, &mut notes).await {
                Ok(record) => record,
                Err(err) => return provision_failure(&err, None),
            };
            // Created now, or by an earlier attempt of this setup and found again.
            let sys_id = record
                .as_ref()
                .and_then(|r| r.sys_id())
                .unwrap_or_default()
                .to_owned();
            let made_before = data
                .user_record
                .as_ref()
                .is_some_and(|r| r.made && r.sys_id == sys_id);
            if !sys_id.is_empty() && (provision::log_says_created(&notes) || made_before) {
                user_record = Some(RecordRef {
                    sys_id,
                    name: spec.integration_user_name().unwrap_or_default(),
                    created: true,
                    made: true,
                });
            }
            true
        }
        UserChoice::Existing {
            user_name,
            password,
        } => {
            if basic {
                spec.integration_user = Some(user_name.clone());
                spec.integration_user_password = password.clone();
                if let Some(password) = password {
                    secrets.push((SecretSlot::IntegrationPassword, password.clone()));
                }
            } else if spec.integration_user_name().as_deref() != Some(user_name.as_str()) {
                return failure(
                    Some("user_name"),
                    &format!(
                        "With AAD auth the integration user's User ID must be the REST-user app's client id ({}).",
                        spec.integration_user_name().unwrap_or_default()
                    ),
                    Some("Enter that client id, or choose *Create it for me*."),
                );
            }
            false
        }
    };
    let mut result = verify(ups, spec, step.checks(spec.auth_type), false, |outcome| {
        if outcome.id == "servicenow.basic_login" {
            "password"
        } else {
            "user_name"
        }
    })
    .await;
    result.notes.splice(0..0, notes);
    if result.error.is_none() {
        result.user = spec.integration_user_name().map(|name| (name, created));
        result.user_record = user_record;
        result.secrets = secrets;
    }
    result
}

/// The records of a table the admin may pick from: (sys_id, label).
pub async fn pick_list(app: &App, slot: RecordSlot) -> Vec<(String, String)> {
    let Some(client) = app.upstreams.servicenow.as_ref() else {
        return Vec::new();
    };
    let listed = match schema::load(client, slot_spec(slot)).await {
        Ok(table) => {
            let records = match slot {
                RecordSlot::OauthProvider => match table.lookup("type", "oauth_provider") {
                    Ok(query) => client.find_checked(&query, &[], Some(50)).await,
                    Err(err) => Err(err),
                },
                RecordSlot::OidcProvider | RecordSlot::OidcEntity => {
                    client.query(slot.table(), "", &[], Some(50)).await
                }
            };
            records.map(|records| (table, records))
        }
        Err(err) => Err(err),
    };
    match listed {
        Ok((table, records)) => records
            .iter()
            .filter_map(|r| {
                let sys_id = r.sys_id()?.to_owned();
                let name = record_name(&table, r);
                let client_id = table.get(r, "client_id").unwrap_or_default();
                let label = if client_id.is_empty() {
                    name
                } else {
                    format!("{name} (client id {client_id})")
                };
                Some((sys_id, label))
            })
            .collect(),
        Err(err) => {
            tracing::warn!(table = slot.table(), error = %err, "setup: cannot list records to pick from");
            Vec::new()
        }
    }
}

/// Runs every doctor check on the finished integration (Run tests).
pub async fn run_tests(
    app: &App,
    data: &Collected,
    secrets: &Secrets,
    repair: bool,
) -> Vec<CheckOutcome> {
    match spec(app, data, secrets) {
        Some(spec) => doctor::run(&upstreams_for(app, &spec.tenant), &spec, repair).await,
        None => Vec::new(),
    }
}

/// Verdicts of outcomes, for the stored state.
pub fn verdicts(outcomes: &[CheckOutcome]) -> Vec<(String, Verdict)> {
    outcomes.iter().map(verdict).collect()
}

/// Something this setup created, which cancel may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// An Entra app registration.
    App {
        /// Client id.
        client_id: String,
        /// Display name it was created with.
        name: String,
    },
    /// A ServiceNow record.
    Record {
        /// Table.
        table: &'static str,
        /// sys_id.
        sys_id: String,
        /// Name recorded when it was created.
        name: String,
        /// The wizard's slot (`None`: the integration user).
        slot: Option<RecordSlot>,
    },
}

impl Made {
    /// The id stored in `Collected::removed` once deleted.
    pub fn key(&self) -> &str {
        match self {
            Self::App { client_id, .. } => client_id,
            Self::Record { sys_id, .. } => sys_id,
        }
    }

    /// "Entra app NAME (app id …)" / "ServiceNow oauth_entity NAME (sys_id …)".
    pub fn describe(&self) -> String {
        match self {
            Self::App { client_id, name } => format!("Entra app {name} (app id {client_id})"),
            Self::Record {
                table,
                sys_id,
                name,
                ..
            } => format!("ServiceNow {table} {name} (sys_id {sys_id})"),
        }
    }
}

/// What this setup created and has not deleted yet, in the order it is deleted (records that
/// reference others first, apps last). Found, reused, corrected or picked ones are not listed.
pub fn made_by(data: &Collected) -> Vec<Made> {
    let mut made = Vec::new();
    for slot in [
        RecordSlot::OidcEntity,
        RecordSlot::OidcProvider,
        RecordSlot::OauthProvider,
    ] {
        if let Some(record) = data.record(slot).filter(|r| r.made) {
            made.push(Made::Record {
                table: slot.table(),
                sys_id: record.sys_id.clone(),
                name: record.name.clone(),
                slot: Some(slot),
            });
        }
    }
    if let Some(user) = data.user_record.as_ref().filter(|r| r.made) {
        made.push(Made::Record {
            table: "sys_user",
            sys_id: user.sys_id.clone(),
            name: user.name.clone(),
            slot: None,
        });
    }
    for slot in [AppSlot::RestUser, AppSlot::Inbound, AppSlot::Outbound] {
        if let Some(app) = data.app(slot).filter(|a| a.made) {
            made.push(Made::App {
                client_id: app.client_id.clone(),
                name: app.name.clone().unwrap_or_default(),
            });
        }
    }
    made.retain(|m| !data.removed.iter().any(|key| key == m.key()));
    made
}

/// What became of one deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Deleted now.
    Deleted,
    /// It did not exist any more.
    AlreadyGone,
    /// Left alone: it is no longer what this setup created (why), or the call failed (why).
    Kept(String),
}

/// Deletes what [`made_by`] lists, each after checking it is still what this setup created
/// (an app by its display name, a record by its name); reports each result.
pub async fn delete_made(app: &App, data: &Collected) -> Vec<(Made, Removal)> {
    let tenant = data
        .tenant_id
        .clone()
        .or_else(|| data.tenant.clone())
        .unwrap_or_default();
    let ups = upstreams_for(app, &tenant);
    let mut results = Vec::new();
    for made in made_by(data) {
        let outcome = match &made {
            Made::App { client_id, name } => delete_app(&ups, client_id, name).await,
            Made::Record {
                table,
                sys_id,
                name,
                slot,
            } => delete_record(&ups, table, sys_id, name, *slot).await,
        };
        results.push((made, outcome));
    }
    results
}

async fn delete_app(ups: &Upstreams, client_id: &str, name: &str) -> Removal {
    let graph = match provision::graph_client(ups) {
        Ok(graph) => graph,
        Err(err) => return Removal::Kept(err.to_string()),
    };
    match graph.find_application_by_app_id(client_id).await {
        Ok(None) => Removal::AlreadyGone,
        Ok(Some(found)) if found.display_name.as_deref() != Some(name) => Removal::Kept(format!(
            "it is no longer the app this setup created (its name is now {:?})",
            found.display_name.unwrap_or_default()
        )),
        Ok(Some(found)) => match graph.delete_application(&found.id).await {
            Ok(()) => Removal::Deleted,
            Err(err) if err.status() == Some(404) => Removal::AlreadyGone,
            Err(err) => Removal::Kept(format!("Microsoft Graph refused: {err}")),
        },
        Err(err) => Removal::Kept(format!("Microsoft Graph could not be read: {err}")),
    }
}

async fn delete_record(
    ups: &Upstreams,
    table: &str,
    sys_id: &str,
    name: &str,
    slot: Option<RecordSlot>,
) -> Removal {
    let client = match provision::servicenow_client(ups) {
        Ok(client) => client,
        Err(err) => return Removal::Kept(err.to_string()),
    };
    let record = match client.get(table, sys_id, &[]).await {
        Ok(Some(record)) => record,
        Ok(None) => return Removal::AlreadyGone,
        Err(err) => return Removal::Kept(format!("ServiceNow could not be read: {err}")),
    };
    let now_named = match slot {
        Some(slot) => match schema::load(client, slot_spec(slot)).await {
            Ok(resolved) => record_name(&resolved, &record),
            Err(err) => return Removal::Kept(err.to_string()),
        },
        None => record.str("user_name").unwrap_or_default().to_owned(),
    };
    if now_named != name {
        return Removal::Kept(format!(
            "it is no longer the record this setup created (its name is now {now_named:?})"
        ));
    }
    match client.delete(table, sys_id).await {
        Ok(true) => Removal::Deleted,
        Ok(false) => Removal::AlreadyGone,
        Err(err) => Removal::Kept(format!("ServiceNow refused: {err}")),
    }
}
