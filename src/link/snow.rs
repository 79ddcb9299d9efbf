//! Writing a link to ServiceNow: the linked Microsoft 365 account (its UPN) in a configurable
//! field, by default `sys_user.u_m365_admin_account` of the linked user. The column is checked
//! through `sys_dictionary` first, so an unknown column is a clear error, never a silent no-op.

use serde_json::{Map, Value, json};

use super::LinkSettings;
use crate::upstream::servicenow::{CheckedQuery, ServiceNowClient, ServiceNowError};

/// Where the link goes in ServiceNow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Table (`sys_user` or a table with a reference to `sys_user`).
    pub table: &'a str,
    /// Field that holds the Microsoft 365 account.
    pub field: &'a str,
    /// Reference to `sys_user` (tables other than `sys_user`).
    pub user_field: &'a str,
}

impl<'a> Target<'a> {
    /// The target configured in `[link]`.
    pub fn from_settings(settings: &'a LinkSettings) -> Self {
        Self {
            table: &settings.servicenow_table,
            field: &settings.servicenow_field,
            user_field: &settings.servicenow_user_field,
        }
    }

    fn on_sys_user(&self) -> bool {
        self.table == "sys_user"
    }

    async fn check(&self, client: &ServiceNowClient) -> Result<(), ServiceNowError> {
        if self.on_sys_user() {
            client.ensure_fields(self.table, &[self.field]).await
        } else {
            client
                .ensure_fields(self.table, &[self.field, self.user_field])
                .await
        }
    }

    /// The row of `sys_user_id` in a table other than `sys_user`: a checked lookup, so an
    /// ignored condition or two rows for one user refuse the write.
    async fn lookup(
        &self,
        client: &ServiceNowClient,
        sys_user_id: &str,
    ) -> Result<CheckedQuery, ServiceNowError> {
        let user = client.resolve_column(self.table, self.user_field).await?;
        CheckedQuery::on(self.table).eq(&user, sys_user_id)
    }

    /// The value stored for `sys_user_id` (`None`: no value or no row).
    pub async fn read(
        &self,
        client: &ServiceNowClient,
        sys_user_id: &str,
    ) -> Result<Option<String>, ServiceNowError> {
        self.check(client).await?;
        let record = if self.on_sys_user() {
            client.get(self.table, sys_user_id, &[self.field]).await?
        } else {
            client
                .find_one(&self.lookup(client, sys_user_id).await?, &[self.field])
                .await?
        };
        Ok(record.and_then(|r| r.non_empty(self.field).map(str::to_owned)))
    }

    /// Stores `value` for `sys_user_id` (empty clears it) and returns the previous value.
    pub async fn write(
        &self,
        client: &ServiceNowClient,
        sys_user_id: &str,
        value: &str,
    ) -> Result<Option<String>, ServiceNowError> {
        self.check(client).await?;
        let mut fields = Map::new();
        fields.insert(self.field.to_owned(), json!(value));
        if self.on_sys_user() {
            let previous = client
                .get(self.table, sys_user_id, &[self.field])
                .await?
                .and_then(|r| r.non_empty(self.field).map(str::to_owned));
            client.update(self.table, sys_user_id, &fields).await?;
            return Ok(previous);
        }
        let existing = client
            .find_one(&self.lookup(client, sys_user_id).await?, &[self.field])
            .await?;
        match existing {
            Some(row) => {
                let previous = row.non_empty(self.field).map(str::to_owned);
                let sys_id = row.sys_id().unwrap_or_default().to_owned();
                client.update(self.table, &sys_id, &fields).await?;
                Ok(previous)
            }
            None if value.is_empty() => Ok(None),
            None => {
                fields.insert(self.user_field.to_owned(), Value::from(sys_user_id));
                client.create(self.table, &fields).await?;
                Ok(None)
            }
        }
    }
}

/// What an administrator does about a ServiceNow write that failed.
pub fn fix_hint(err: &ServiceNowError, target: &Target<'_>) -> String {
    match err {
        ServiceNowError::MissingFields { table, missing } => format!(
            "Ask a ServiceNow admin to add the column **{}** (type String) to the table **{table}**, or set **link.servicenow_field** / **link.servicenow_table** to where linked accounts are kept; then type **link-account** again.",
            missing.join(", ")
        ),
        ServiceNowError::UnknownTable(table) => format!(
            "The table **{table}** does not exist in ServiceNow. Set **link.servicenow_table** to an existing table; then type **link-account** again."
        ),
        _ => format!(
            "Check that ServiceNow is up and that the bot's ServiceNow account may write **{}.{}**; then type **link-account** again.",
            target.table, target.field
        ),
    }
}
