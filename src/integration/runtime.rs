//! The runtime identity: who the bot is when it reads and writes cases in ServiceNow (both
//! pollers, `status`, service-health mirroring and its work notes).
//!
//! With an integration (the latest completed setup, else `[integration]`), the bot plays the
//! part of Microsoft's retired service and calls the instance as the integration user: with
//! AAD auth through a v1 client-credentials token of the REST-user app for the inbound app
//! (mapped by the instance's OIDC provider to the user whose User ID is the REST-user app's
//! client id), cached until shortly before expiry and renewed by one request at a time; with
//! Basic auth with the integration user's password. The bot's own ServiceNow account stays for
//! setup, `doctor --repair`, `grant`/`revoke` and reading roles and users.
//!
//! While no integration exists, runtime calls use the bot's own account when
//! `servicenow.runtime_admin_fallback` is true (the default), and say so; once an integration
//! exists they never do, so a broken trust is seen instead of hidden.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{AuthType, IntegrationSpec};
use crate::metrics::Metrics;
use crate::upstream::entra::{EntraClient, EntraError};
use crate::upstream::servicenow::{AuthEvent, ServiceNowAuth, ServiceNowClient, ServiceNowError};

/// Whose credentials runtime calls use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeMode {
    /// The integration user, through the chain setup built.
    IntegrationUser {
        /// How it authenticates.
        auth_type: AuthType,
        /// Its User ID.
        user_name: String,
    },
    /// The bot's own account, because no integration exists yet.
    AdminFallback,
    /// No runtime calls are possible.
    Unavailable,
}

/// The latest failure of the runtime chain: what the instance or Entra ID answered and which
/// part of the integration is likely broken.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeFailure {
    /// When it happened (the latest occurrence).
    pub at: DateTime<Utc>,
    /// The HTTP status of ServiceNow's answer (401, 403), `None` when no token was obtained.
    pub status: Option<u16>,
    /// The part of the integration that is likely broken, e.g. "REST-user secret".
    pub step: String,
    /// What was answered, without secrets.
    pub detail: String,
    /// What to do.
    pub fix: String,
}

/// The app whose tokens ServiceNow's pushes carry: the integration's outbound app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushIdentity {
    /// Tenant (domain or id) the tokens come from.
    pub tenant: String,
    /// The outbound app's client id: `appid`/`azp` and the audience the Business Rule asks for.
    pub client_id: String,
}

struct Active {
    /// What was installed (a digest of the integration, secrets included), to skip reloads
    /// that change nothing and keep the cached token.
    digest: Option<[u8; 32]>,
    client: Option<ServiceNowClient>,
    push: Option<PushIdentity>,
    mode: RuntimeMode,
    /// Why runtime calls use the admin account or none, for logs and cards.
    note: Option<String>,
}

/// The runtime identity held by the application; reloaded at start and when a setup completes.
pub struct RuntimeIdentity {
    active: RwLock<Arc<Active>>,
    failures: watch::Sender<Option<RuntimeFailure>>,
    entra: EntraClient,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    admin: Option<ServiceNowClient>,
    admin_fallback: bool,
}

impl RuntimeIdentity {
    /// An identity with nothing loaded yet: no runtime calls until [`Self::install`] (or
    /// [`reload`]) runs, as the application does at start.
    pub fn new(
        entra: EntraClient,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
        admin: Option<ServiceNowClient>,
        admin_fallback: bool,
    ) -> Self {
        Self {
            active: RwLock::new(Arc::new(Active {
                digest: None,
                client: None,
                push: None,
                mode: RuntimeMode::Unavailable,
                note: Some("the runtime identity is not loaded yet".to_owned()),
            })),
            failures: watch::channel(None).0,
            entra,
            http,
            metrics,
            admin,
            admin_fallback,
        }
    }

    /// Uses `spec` (the latest integration) from now on; `None` when none exists, with
    /// `problem` saying why when it could not be read. A past failure is forgotten.
    pub fn install(&self, spec: Option<&IntegrationSpec>, problem: Option<&str>) {
        let digest = digest(spec, problem);
        if self.current().digest == Some(digest) {
            return;
        }
        let push = spec
            .filter(|spec| !spec.outbound_app.client_id.trim().is_empty())
            .map(|spec| PushIdentity {
                tenant: spec.tenant.clone(),
                client_id: spec.outbound_app.client_id.clone(),
            });
        let active = match spec.map(|spec| self.integration_client(spec)) {
            Some(Ok((client, mode))) => Active {
                digest: Some(digest),
                client: Some(client),
                push,
                mode,
                note: None,
            },
            Some(Err(why)) => Active {
                digest: Some(digest),
                client: None,
                push,
                mode: RuntimeMode::Unavailable,
                note: Some(why),
            },
            None => {
                let why = match problem {
                    Some(problem) => format!("the integration cannot be read ({problem})"),
                    None => "no integration is set up yet (no completed setup, no [integration])"
                        .to_owned(),
                };
                match (&self.admin, self.admin_fallback && problem.is_none()) {
                    (Some(admin), true) => Active {
                        digest: Some(digest),
                        client: Some(admin.clone()),
                        push: None,
                        mode: RuntimeMode::AdminFallback,
                        note: Some(format!(
                            "{why}: cases are read with the bot's own ServiceNow account until setup completes"
                        )),
                    },
                    _ => Active {
                        digest: Some(digest),
                        client: None,
                        push: None,
                        mode: RuntimeMode::Unavailable,
                        note: Some(format!(
                            "{why}: the bot makes no runtime calls to ServiceNow"
                        )),
                    },
                }
            }
        };
        match (&active.mode, &active.note) {
            (
                RuntimeMode::IntegrationUser {
                    user_name,
                    auth_type,
                },
                _,
            ) => {
                tracing::info!(user = %user_name, auth = ?auth_type, "runtime ServiceNow calls run as the integration user");
            }
            (_, Some(note)) => tracing::warn!("{note}"),
            (_, None) => {}
        }
        *self
            .active
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(active);
        self.failures
            .send_if_modified(|failure| failure.take().is_some());
    }

    fn integration_client(
        &self,
        spec: &IntegrationSpec,
    ) -> Result<(ServiceNowClient, RuntimeMode), String> {
        let user_name = spec
            .integration_user_name()
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| "the integration names no integration user".to_owned())?;
        let auth = match spec.auth_type {
            AuthType::Aad => {
                let (Some(rest_user), Some(inbound)) = (&spec.rest_user_app, &spec.inbound_app)
                else {
                    return Err("the integration has no REST-user or inbound app".to_owned());
                };
                ServiceNowAuth::EntraClientCredentials {
                    entra: self.entra.clone(),
                    tenant: spec.tenant.clone(),
                    client_id: rest_user.client_id.clone(),
                    client_secret: rest_user.client_secret.clone(),
                    resource: inbound.client_id.clone(),
                }
            }
            AuthType::Basic => {
                let password = spec
                    .integration_user_password
                    .clone()
                    .ok_or_else(|| "the integration user has no password stored".to_owned())?;
                ServiceNowAuth::Basic {
                    user: user_name.clone(),
                    password,
                }
            }
        };
        let failures = self.failures.clone();
        let metrics = self.metrics.clone();
        let auth_type = spec.auth_type;
        let user = user_name.clone();
        let client = ServiceNowClient::new(self.http.clone(), spec.instance_url.clone(), auth)
            .with_metrics(self.metrics.clone())
            .with_auth_observer(Arc::new(move |event| {
                observe(&failures, &metrics, auth_type, &user, event);
            }));
        Ok((
            client,
            RuntimeMode::IntegrationUser {
                auth_type,
                user_name,
            },
        ))
    }

    /// The client for runtime calls, or why there is none.
    pub fn client(&self) -> Result<ServiceNowClient, String> {
        let active = self.current();
        active.client.clone().ok_or_else(|| {
            active
                .note
                .clone()
                .unwrap_or_else(|| "ServiceNow is not configured".to_owned())
        })
    }

    /// The app whose bearer tokens the push endpoint accepts, when an integration exists.
    pub fn push_identity(&self) -> Option<PushIdentity> {
        self.current().push.clone()
    }

    /// Whose credentials runtime calls use now.
    pub fn mode(&self) -> RuntimeMode {
        self.current().mode.clone()
    }

    /// Why runtime calls do not run as the integration user, when they do not.
    pub fn note(&self) -> Option<String> {
        self.current().note.clone()
    }

    /// A short description of the runtime identity, e.g. for cards.
    pub fn describe(&self) -> String {
        let active = self.current();
        match &active.mode {
            RuntimeMode::IntegrationUser { user_name, .. } => {
                format!("the integration user {user_name}")
            }
            RuntimeMode::AdminFallback => "the bot's own ServiceNow account".to_owned(),
            RuntimeMode::Unavailable => "no ServiceNow identity".to_owned(),
        }
    }

    /// Forgets the cached token, so the next call requests a new one (after a secret change).
    pub async fn forget_token(&self) {
        if let Some(client) = self.current().client.clone() {
            client.forget_cached_token().await;
        }
    }

    /// The latest failure of the runtime chain, `None` once a call succeeded again.
    pub fn last_failure(&self) -> Option<RuntimeFailure> {
        self.failures.borrow().clone()
    }

    /// Signalled when a new failure starts (or its likely step changes) and on recovery.
    pub fn subscribe(&self) -> watch::Receiver<Option<RuntimeFailure>> {
        self.failures.subscribe()
    }

    fn current(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How often every instance reloads the integration (a setup completed on another replica).
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// A digest of what [`RuntimeIdentity::install`] is given, secrets included (never stored).
fn digest(spec: Option<&IntegrationSpec>, problem: Option<&str>) -> [u8; 32] {
    use secrecy::ExposeSecret;
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    part(problem.unwrap_or_default().as_bytes());
    if let Some(spec) = spec {
        part(&serde_json::to_vec(spec).unwrap_or_default());
        for app in [
            Some(&spec.outbound_app),
            spec.inbound_app.as_ref(),
            spec.rest_user_app.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            part(app.client_secret.expose_secret().as_bytes());
        }
        if let Some(password) = &spec.integration_user_password {
            part(password.expose_secret().as_bytes());
        }
    }
    hasher.finalize().into()
}

/// Reloads the integration every [`RELOAD_INTERVAL`] until `shutdown`, so a setup completed
/// (or a secret stored) by another instance is used here too; an unchanged one keeps its token.
pub fn spawn_reloader(
    app: std::sync::Arc<crate::app::App>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RELOAD_INTERVAL) => reload(&app).await,
            }
        }
    });
}

/// Loads the latest integration (completed setup, else `[integration]`) into `app.runtime`.
pub async fn reload(app: &crate::app::App) {
    match crate::setup::flow::stored_integration(app).await {
        Ok(spec) => app.runtime.install(spec.as_ref(), None),
        Err(problem) => app.runtime.install(None, Some(&problem)),
    }
}

/// Records a call's outcome: a failure (counted, logged once per new failure) or a recovery.
fn observe(
    failures: &watch::Sender<Option<RuntimeFailure>>,
    metrics: &Metrics,
    auth_type: AuthType,
    user: &str,
    event: AuthEvent<'_>,
) {
    let failure = match event {
        AuthEvent::Accepted => {
            if failures.send_if_modified(|failure| failure.take().is_some()) {
                tracing::info!(user, "runtime ServiceNow calls work again");
            }
            return;
        }
        AuthEvent::Refused { status, message } => refused(auth_type, user, status, &message),
        AuthEvent::TokenFailed(err) => match token_failure(err) {
            Some(failure) => failure,
            None => return,
        },
    };
    metrics.record_runtime_auth_failure();
    let new = failures.send_if_modified(|current| {
        let changed = current
            .as_ref()
            .is_none_or(|known| known.step != failure.step || known.status != failure.status);
        *current = Some(failure.clone());
        changed
    });
    if new {
        tracing::error!(
            status = ?failure.status,
            step = %failure.step,
            detail = %failure.detail,
            "runtime ServiceNow calls fail"
        );
    }
}

fn refused(auth_type: AuthType, user: &str, status: u16, message: &str) -> RuntimeFailure {
    let (step, fix) = match (status, auth_type) {
        (403, _) => (
            "integration user role".to_owned(),
            format!(
                "User Administration > Users > {user}: the user needs the role incident_manager (and read access to the case table)."
            ),
        ),
        (_, AuthType::Aad) => (
            "OIDC provider user claim / OIDC entity / integration user".to_owned(),
            format!(
                "ServiceNow refused the REST-user token: check the OIDC provider configuration (User Claim = appid, User Field = User ID), the OIDC entity's Client ID and Active, and that the user {user} exists, is active and not locked out. Run **doctor** to pinpoint it."
            ),
        ),
        (_, AuthType::Basic) => (
            "integration user password".to_owned(),
            format!(
                "ServiceNow refused the integration user {user}: check its password (set through setup), that it is active, not locked out and has web service access. Run **doctor** to pinpoint it."
            ),
        ),
    };
    RuntimeFailure {
        at: Utc::now(),
        status: Some(status),
        step,
        detail: format!("ServiceNow answered {status}: {message}"),
        fix,
    }
}

/// A failed token request as a runtime failure; `None` for a network failure (not about trust).
fn token_failure(err: &ServiceNowError) -> Option<RuntimeFailure> {
    let ServiceNowError::EntraToken(entra) = err else {
        return None;
    };
    if matches!(**entra, EntraError::Network(_)) {
        return None;
    }
    let (step, fix) = match entra.aadsts_code() {
        Some(7_000_215 | 7_000_222) => (
            "REST-user secret",
            "Entra ID refused the REST-user app's secret (wrong or expired): type **rotate-secret rest-user** (a new client secret, stored in the bot and verified), or run setup again with a new secret; **doctor** shows the secrets' state.",
        ),
        Some(700_016) => (
            "REST-user app registration",
            "Entra ID does not know the REST-user app in this tenant: check that it still exists (Entra ID > App registrations), or run setup again.",
        ),
        Some(500_011 | 500_021) => (
            "inbound app",
            "Entra ID does not know the inbound app as a resource: check that its service principal exists in the tenant, or run setup again.",
        ),
        Some(90_002 | 900_023) => (
            "tenant",
            "Entra ID does not know the tenant: check the tenant domain of the integration.",
        ),
        _ => (
            "REST-user token",
            "Entra ID gave no token to the REST-user app: run **doctor** for details.",
        ),
    };
    Some(RuntimeFailure {
        at: Utc::now(),
        status: None,
        step: step.to_owned(),
        detail: entra.to_string(),
        fix: fix.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_likely_step() {
        assert_eq!(
            refused(AuthType::Aad, "rest", 401, "User Not Authenticated").step,
            "OIDC provider user claim / OIDC entity / integration user"
        );
        assert_eq!(
            refused(AuthType::Basic, "m365", 401, "x").step,
            "integration user password"
        );
        let forbidden = refused(AuthType::Aad, "rest", 403, "Insufficient rights");
        assert_eq!(forbidden.step, "integration user role");
        assert!(forbidden.fix.contains("rest"), "{}", forbidden.fix);
    }
}
