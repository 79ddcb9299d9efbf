//! The pieces of `rotate-secret` that talk to ServiceNow: which app, which checks cover it,
//! and the one record that holds its client secret (looked up with resolved columns and
//! checked in code, so a secret is never written into a record nobody selected).

use secrecy::{ExposeSecret, SecretString};

use super::schema::{self, ResolvedTable};
use super::{AppCredentials, IntegrationSpec};
use crate::upstream::servicenow::{ServiceNowClient, ServiceNowError};

pub use crate::core::command::SecretTarget;

impl SecretTarget {
    /// The app's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Outbound => "Outbound app",
            Self::Inbound => "Inbound REST API app",
            Self::RestUser => "REST-user app",
        }
    }

    /// The live checks that cover the app and the places its secret is used.
    pub fn checks(self) -> &'static [&'static str] {
        match self {
            Self::Outbound => &[
                "tenant",
                "graph.permissions",
                "servicenow.reachable",
                "outbound_app.token",
                "outbound_app.registration",
                "servicenow.oauth_provider",
            ],
            Self::Inbound => &[
                "tenant",
                "graph.permissions",
                "servicenow.reachable",
                "inbound_app.token",
                "inbound_app.registration",
                "servicenow.oidc_provider",
                "servicenow.oidc_entity",
                "rest_user_app.token",
                "servicenow.inbound_flow",
            ],
            Self::RestUser => &[
                "tenant",
                "graph.permissions",
                "servicenow.reachable",
                "rest_user_app.token",
                "rest_user_app.registration",
                "servicenow.integration_user",
                "servicenow.inbound_flow",
            ],
        }
    }

    /// The app's recorded credentials, when the integration has this app.
    pub fn credentials(self, spec: &IntegrationSpec) -> Option<&AppCredentials> {
        match self {
            Self::Outbound => Some(&spec.outbound_app),
            Self::Inbound => spec.inbound_app.as_ref(),
            Self::RestUser => spec.rest_user_app.as_ref(),
        }
        .filter(|credentials| !credentials.client_id.is_empty())
    }

    /// `spec` with this app's secret replaced.
    pub fn with_secret(self, spec: &IntegrationSpec, secret: SecretString) -> IntegrationSpec {
        let mut spec = spec.clone();
        let slot = match self {
            Self::Outbound => Some(&mut spec.outbound_app),
            Self::Inbound => spec.inbound_app.as_mut(),
            Self::RestUser => spec.rest_user_app.as_mut(),
        };
        if let Some(credentials) = slot {
            credentials.client_secret = secret;
        }
        spec
    }

    fn record_spec(self) -> Option<&'static schema::TableSpec> {
        match self {
            Self::Outbound => Some(&schema::OAUTH_ENTITY),
            Self::Inbound => Some(&schema::OAUTH_OIDC_ENTITY),
            Self::RestUser => None,
        }
    }
}

/// The ServiceNow record that holds an app's client secret.
pub struct SecretRecord {
    table: ResolvedTable,
    sys_id: String,
    /// The record's name, for messages.
    pub name: String,
}

impl SecretRecord {
    /// Where the record is, for messages (`oauth_entity` record "…").
    pub fn describe(&self) -> String {
        format!("{} record \"{}\"", self.table.table(), self.name)
    }
}

/// The record holding the secret of `target` (`Ok(None)` for the REST-user app, whose secret
/// ServiceNow does not hold); an error when it is missing, ambiguous or unreadable.
pub async fn find_secret_record(
    client: &ServiceNowClient,
    target: SecretTarget,
    client_id: &str,
) -> Result<Option<SecretRecord>, String> {
    let Some(spec) = target.record_spec() else {
        return Ok(None);
    };
    let table = schema::load(client, spec)
        .await
        .map_err(|e| format!("reading the columns of {}: {e}", spec.table))?;
    if table.name("client_secret").is_none() {
        return Err(format!(
            "this instance has no Client Secret column on {}: set the new secret by hand in {}",
            spec.table,
            table.manual()
        ));
    }
    let query = table
        .lookup("client_id", client_id)
        .map_err(|e| e.to_string())?;
    let record = client
        .find_one(&query, &[])
        .await
        .map_err(|e| format!("looking up the {} record: {e}", spec.table))?
        .ok_or_else(|| {
            format!(
                "no {} record with client id {client_id}: run doctor, then setup, to recreate it",
                spec.table
            )
        })?;
    let sys_id = record
        .sys_id()
        .ok_or_else(|| format!("the {} record has no sys_id", spec.table))?
        .to_owned();
    let name = table.get(&record, "name").unwrap_or(client_id).to_owned();
    Ok(Some(SecretRecord {
        table,
        sys_id,
        name,
    }))
}

/// Writes `secret` into the record's Client Secret (ServiceNow stores it encrypted).
pub async fn write_secret(
    client: &ServiceNowClient,
    record: &SecretRecord,
    secret: &SecretString,
) -> Result<(), ServiceNowError> {
    let (body, _) = record
        .table
        .body(&[("client_secret", secret.expose_secret().to_owned())]);
    let saved = client
        .update(record.table.table(), &record.sys_id, &body)
        .await?;
    match saved.sys_id() {
        Some(found) if found != record.sys_id => Err(ServiceNowError::QueryNotApplied {
            table: record.table.table().to_owned(),
            query: format!("sys_id={}", record.sys_id),
            sys_id: found.to_owned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_typed() {
        for target in SecretTarget::ALL {
            assert_eq!(SecretTarget::parse(target.word()), Some(target));
        }
        assert_eq!(
            SecretTarget::parse("REST_USER"),
            Some(SecretTarget::RestUser)
        );
        assert_eq!(SecretTarget::parse("graph"), None);
    }
}
