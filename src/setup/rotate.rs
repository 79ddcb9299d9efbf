//! `rotate-secret outbound|inbound|rest-user`: adds a new client secret through Graph, writes
//! it where it is used (the ServiceNow OAuth provider or OIDC entity, and the completed
//! setup's encrypted secrets), verifies it with the live checks that cover the app, then
//! removes the old secret. On any failure the old secret stays in use everywhere, the new one
//! is removed (or the report says it could not be), and the report says exactly what happened.
//! Every rotation is written to the setup audit trail (key ids, never a secret).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::crypto::SecretBox;
use super::flow::{open_secrets, seal_secrets};
use super::state::{AppSlot, Secrets};
use super::store::{self, AuditEntry, SetupRow};
use crate::config::Settings;
use crate::db::{Db, now_millis};
use crate::integration::doctor::{self, Status};
use crate::integration::rotate::{self, SecretRecord, SecretTarget};
use crate::integration::{IntegrationSpec, Upstreams};

/// What a rotation did, step by step.
#[derive(Debug, Clone, Default)]
pub struct RotationReport {
    /// True when the new secret is in use everywhere and verified.
    pub rotated: bool,
    /// One line per step: (succeeded, what happened).
    pub steps: Vec<(bool, String)>,
    /// What the admin should do now.
    pub next_step: Option<String>,
}

impl RotationReport {
    fn done(&mut self, line: impl Into<String>) {
        self.steps.push((true, line.into()));
    }

    fn failed(&mut self, line: impl Into<String>) {
        self.steps.push((false, line.into()));
    }

    fn refused(line: impl Into<String>, next: impl Into<String>) -> Self {
        let mut report = Self::default();
        report.failed(line);
        report.next_step = Some(next.into());
        report
    }

    /// The report as text lines (for the command line and the audit trail).
    pub fn text(&self) -> String {
        self.steps
            .iter()
            .map(|(ok, line)| format!("{}  {line}", if *ok { "ok  " } else { "FAIL" }))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The completed setup a rotation changes, with its secrets opened.
struct Stored {
    row: SetupRow,
    secret_box: SecretBox,
    secrets: Secrets,
    spec: IntegrationSpec,
}

async fn load(db: &Db, settings: &Settings) -> Result<Stored, RotationReport> {
    let row = match store::latest_completed(db).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Err(RotationReport::refused(
                "no setup has been completed in this bot's database, so it holds no secret to rotate",
                "Complete setup in chat first; a secret configured in the [integration] section of the configuration file is changed there.",
            ));
        }
        Err(err) => {
            return Err(RotationReport::refused(
                format!("the stored setup could not be read: {err}"),
                "Check the database, then try again.",
            ));
        }
    };
    let secret_box = SecretBox::new(settings.setup.encryption_key.as_ref()).map_err(|err| {
        RotationReport::refused(
            format!("the stored secrets cannot be opened: {err}"),
            "Configure setup.encryption_key (the key the setup was stored with).",
        )
    })?;
    let secrets = open_secrets(&secret_box, &row).map_err(|err| {
        RotationReport::refused(
            format!("the stored secrets cannot be opened: {err}"),
            "Configure setup.encryption_key (the key the setup was stored with).",
        )
    })?;
    let spec =
        super::effects::spec_from(settings, &row.wizard.data, &secrets).ok_or_else(|| {
            RotationReport::refused(
                "servicenow.instance_url is not configured",
                "Configure the ServiceNow instance the integration lives on.",
            )
        })?;
    Ok(Stored {
        row,
        secret_box,
        secrets,
        spec,
    })
}

fn slot_of(target: SecretTarget) -> AppSlot {
    match target {
        SecretTarget::Outbound => AppSlot::Outbound,
        SecretTarget::Inbound => AppSlot::Inbound,
        SecretTarget::RestUser => AppSlot::RestUser,
    }
}

/// Writes `secret` as the app's secret into the completed setup (same version only).
async fn store_secret(
    db: &Db,
    stored: &Stored,
    version: i64,
    target: SecretTarget,
    secret: &SecretString,
) -> Result<i64, String> {
    let mut secrets = stored.secrets.clone();
    secrets.0.insert(slot_of(target).secret(), secret.clone());
    let sealed = seal_secrets(&stored.secret_box, &stored.row.setup_id, &secrets)?;
    match store::compare_and_set(
        db,
        &stored.row.setup_id,
        version,
        &stored.row.wizard,
        sealed.as_deref(),
        &stored.row.status,
    )
    .await
    {
        Ok(Some(version)) => Ok(version),
        Ok(None) => Err("the setup was changed meanwhile (another admin?)".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

/// How long a new secret may take to be accepted by Entra ID (replication).
const NEW_SECRET_WAIT: Duration = Duration::from_secs(30);

/// Rotates the client secret of `target` in the completed setup; `actor` is written to the
/// audit trail.
pub async fn rotate_secret(
    db: &Db,
    settings: &Settings,
    upstreams: &Upstreams,
    target: SecretTarget,
    actor: &str,
) -> RotationReport {
    let stored = match load(db, settings).await {
        Ok(stored) => stored,
        Err(report) => return report,
    };
    let report = rotate_stored(db, upstreams, &stored, target).await;
    let entry = AuditEntry {
        setup_id: stored.row.setup_id.clone(),
        at: now_millis(),
        actor: actor.to_owned(),
        action: format!("rotate-secret {}", target.word()),
        outcome: if report.rotated { "ok" } else { "failed" }.to_owned(),
        detail: report
            .steps
            .iter()
            .map(|(_, line)| line.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    };
    if let Err(err) = store::audit(db, &entry).await {
        tracing::warn!(error = %err, "rotate-secret: audit entry not written");
    }
    tracing::info!(
        setup.id = %stored.row.setup_id,
        target = target.word(),
        rotated = report.rotated,
        "rotate-secret"
    );
    report
}

async fn rotate_stored(
    db: &Db,
    upstreams: &Upstreams,
    stored: &Stored,
    target: SecretTarget,
) -> RotationReport {
    let label = target.label();
    let Some(credentials) = target.credentials(&stored.spec).cloned() else {
        return RotationReport::refused(
            format!(
                "this integration has no {label} (it uses {} authentication)",
                if stored.spec.auth_type == crate::integration::AuthType::Basic {
                    "Basic"
                } else {
                    "another"
                }
            ),
            "Nothing to rotate: rotate-secret outbound covers the app a Basic-auth integration uses.",
        );
    };
    let Some(graph) = &upstreams.graph else {
        return RotationReport::refused(
            "the bot has no Graph access (entra.graph_client_id / secret), so it cannot add a secret",
            "Configure the bot's Graph app, or rotate the secret by hand in Entra ID > App registrations > Certificates & secrets.",
        );
    };
    // Everything the rotation needs is looked up before anything changes.
    let application = match graph
        .find_application_by_app_id(&credentials.client_id)
        .await
    {
        Ok(Some(application)) => application,
        Ok(None) => {
            return RotationReport::refused(
                format!(
                    "Graph has no application with client id {}",
                    credentials.client_id
                ),
                "Run doctor: the app registration is missing or the client id is wrong.",
            );
        }
        Err(err) => {
            return RotationReport::refused(
                format!("Graph refused to read the {label}: {err}"),
                "Run doctor to see what the bot's Graph app is missing, then try again.",
            );
        }
    };
    let old_secret = credentials.client_secret.expose_secret().to_owned();
    let old_keys: Vec<String> = application
        .password_credentials
        .iter()
        .filter(|c| {
            c.hint
                .as_deref()
                .is_some_and(|hint| !hint.is_empty() && old_secret.starts_with(hint))
        })
        .map(|c| c.key_id.clone())
        .collect();
    let record: Option<SecretRecord> = match target {
        SecretTarget::RestUser => None,
        SecretTarget::Outbound | SecretTarget::Inbound => {
            let Some(client) = &upstreams.servicenow else {
                return RotationReport::refused(
                    "the bot has no ServiceNow access, so it cannot write the new secret",
                    "Configure [servicenow] instance_url and the bot's account.",
                );
            };
            match rotate::find_secret_record(client, target, &credentials.client_id).await {
                Ok(record) => record,
                Err(err) => {
                    return RotationReport::refused(
                        err,
                        "Nothing was changed. Fix the record (doctor names what is wrong), then try again.",
                    );
                }
            }
        }
    };
    let mut report = RotationReport::default();
    // 1. A new secret on the app.
    let added = match graph
        .add_password(&application.id, crate::integration::provision::SECRET_NAME)
        .await
    {
        Ok(added) => added,
        Err(err) => {
            report.failed(format!(
                "adding a new client secret to the {label} failed: {err}"
            ));
            report.next_step = Some(
                "Nothing was changed; the old secret stays in use. Check the bot's Graph permissions (doctor), then try again.".to_owned(),
            );
            return report;
        }
    };
    report.done(format!(
        "added a new client secret to the {label} (key id {}{})",
        added.key_id,
        added
            .end_date_time
            .map(|end| format!(", expires {}", end.format("%Y-%m-%d")))
            .unwrap_or_default()
    ));
    let new_secret = added.secret_text.clone();
    let mut stored_version = None;
    let mut servicenow_written = false;
    let failure = 'work: {
        // 2. Entra ID accepts it (a new secret can take a moment to replicate).
        if let Err(err) =
            wait_until_accepted(upstreams, &stored.spec, &credentials.client_id, &new_secret).await
        {
            break 'work Some(format!("Entra ID did not accept the new secret: {err}"));
        }
        // 3. Where it is used: the bot's store first (a versioned write, so of two rotations
        // at once only one gets past this point), then ServiceNow.
        match store_secret(db, stored, stored.row.version, target, &new_secret).await {
            Ok(version) => {
                stored_version = Some(version);
                report.done("stored the new secret in the bot's encrypted setup store");
            }
            Err(err) => {
                break 'work Some(format!("storing the new secret in the bot failed: {err}"));
            }
        }
        if let (Some(record), Some(client)) = (&record, &upstreams.servicenow) {
            if let Err(err) = rotate::write_secret(client, record, &new_secret).await {
                break 'work Some(format!(
                    "writing the new secret into the ServiceNow {} failed: {err}",
                    record.describe()
                ));
            }
            servicenow_written = true;
            report.done(format!(
                "wrote the new secret into the ServiceNow {}",
                record.describe()
            ));
        }
        // 4. The live checks that cover the app, with the new secret.
        let spec = target.with_secret(&stored.spec, new_secret.clone());
        let outcomes = doctor::run_only(upstreams, &spec, target.checks(), false).await;
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| o.status == Status::Fail || o.blocked_by.is_some())
            .map(|o| format!("{}: {}", o.title, o.detail))
            .collect();
        if !failed.is_empty() {
            break 'work Some(format!(
                "verification with the new secret failed: {}",
                failed.join("; ")
            ));
        }
        let passed = outcomes.iter().filter(|o| o.status == Status::Pass).count();
        report.done(format!(
            "verified with the new secret: {passed} live check(s) passed"
        ));
        None
    };
    let Some(failure) = failure else {
        // 5. The old secret goes.
        report.rotated = true;
        if old_keys.is_empty() {
            report.done(format!(
                "the secret the bot used before is no longer on the {label}; nothing to remove"
            ));
        }
        let mut leftovers = Vec::new();
        for key_id in &old_keys {
            match graph.remove_password(&application.id, key_id).await {
                Ok(()) => report.done(format!("removed the old client secret (key id {key_id})")),
                Err(err) => {
                    report.failed(format!(
                        "the old client secret (key id {key_id}) could not be removed: {err}"
                    ));
                    leftovers.push(key_id.clone());
                }
            }
        }
        report.next_step = Some(if leftovers.is_empty() {
            "Nothing else to do: the new secret is in use and verified.".to_owned()
        } else {
            format!(
                "The new secret is in use. Remove the old one by hand: Entra ID > App registrations > {} > Certificates & secrets > key id {}.",
                application
                    .display_name
                    .as_deref()
                    .unwrap_or(&credentials.client_id),
                leftovers.join(", ")
            )
        });
        return report;
    };
    // Failed between "added" and "removed": put the old secret back everywhere.
    report.failed(failure);
    if let Some(version) = stored_version {
        match store_secret(db, stored, version, target, &credentials.client_secret).await {
            Ok(_) => report.done("restored the old secret in the bot's store"),
            Err(err) => report.failed(format!(
                "the old secret could not be restored in the bot's store: {err}"
            )),
        }
    }
    if servicenow_written && let (Some(record), Some(client)) = (&record, &upstreams.servicenow) {
        match rotate::write_secret(client, record, &credentials.client_secret).await {
            Ok(()) => report.done(format!(
                "restored the old secret in the ServiceNow {}",
                record.describe()
            )),
            Err(err) => report.failed(format!(
                "the old secret could not be restored in the ServiceNow {}: {err}",
                record.describe()
            )),
        }
    }
    let removed = graph.remove_password(&application.id, &added.key_id).await;
    match &removed {
        Ok(()) => report.done(format!(
            "removed the new client secret again (key id {})",
            added.key_id
        )),
        Err(err) => report.failed(format!(
            "the new client secret (key id {}) could not be removed: {err}",
            added.key_id
        )),
    }
    report.next_step = Some(match removed {
        Ok(()) => {
            "The old secret is still in use and works. Fix what failed (doctor), then try again."
                .to_owned()
        }
        Err(_) => format!(
            "The old secret is still in use. Remove the unused new secret by hand: Entra ID > App registrations > {} > Certificates & secrets > key id {}.",
            application
                .display_name
                .as_deref()
                .unwrap_or(&credentials.client_id),
            added.key_id
        ),
    });
    report
}

/// Waits until Entra ID issues a token for the new secret (replication), at most
/// [`NEW_SECRET_WAIT`].
async fn wait_until_accepted(
    upstreams: &Upstreams,
    spec: &IntegrationSpec,
    client_id: &str,
    secret: &SecretString,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match upstreams
            .entra
            .client_credentials_v1(
                &spec.tenant,
                client_id,
                secret,
                "https://graph.microsoft.com",
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) if started.elapsed() + delay < NEW_SECRET_WAIT => {
                tracing::debug!(error = %err, "rotate-secret: the new secret is not accepted yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err.to_string()),
        }
    }
}
