//! The ServiceNow columns the integration reads and writes, resolved at run time from the
//! instance's `sys_dictionary` (own and inherited columns, following
//! `sys_db_object.super_class`) instead of guessed: column names differ between releases, and
//! ServiceNow ignores a query condition on a column that does not exist and returns every row.
//!
//! Each column is found by a list of candidate names (the names verified on a Zurich instance
//! first, then older ones), then by the labels the setup guide shows. A column that cannot be
//! found is a [`ServiceNowError::UnresolvedColumn`] naming the table, the label, what was tried
//! and the manual step; it is never a guess. The platform basics (`sys_user`,
//! `sys_user_has_role`, `sys_user_role`, `incident`) are used by their documented names
//! ([`ResolvedTable::standard`]).
//!
//! Dictionaries are cached per instance by the [`ServiceNowClient`] (see
//! [`crate::upstream::servicenow::COLUMNS_CACHE_TTL`]); [`load`] reads the instance again once
//! when a required column is missing from a cached answer.

use serde_json::{Map, Value};

use crate::upstream::servicenow::{
    CheckedQuery, Column, Record, ServiceNowClient, ServiceNowError, TableDictionary,
};

/// How to find one column the bot needs.
#[derive(Debug, Clone, Copy)]
pub struct ColumnSpec {
    /// The bot's name for it (stable across releases).
    pub key: &'static str,
    /// The guide's label, used in messages.
    pub label: &'static str,
    /// Column names to try, in order (verified Zurich names first).
    pub candidates: &'static [&'static str],
    /// Labels to try when no candidate exists, in order.
    pub labels: &'static [&'static str],
    /// Whether the bot cannot work without it (an optional column is skipped, with a note).
    pub required: bool,
}

/// The columns the bot needs on one table.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// The table.
    pub table: &'static str,
    /// Where a person sets these fields by hand in ServiceNow.
    pub manual: &'static str,
    /// The columns.
    pub columns: &'static [ColumnSpec],
}

impl TableSpec {
    fn spec(&self, key: &str) -> Option<&'static ColumnSpec> {
        self.columns.iter().find(|column| column.key == key)
    }
}

const fn required(
    key: &'static str,
    label: &'static str,
    candidates: &'static [&'static str],
    labels: &'static [&'static str],
) -> ColumnSpec {
    ColumnSpec {
        key,
        label,
        candidates,
        labels,
        required: true,
    }
}

const fn optional(
    key: &'static str,
    label: &'static str,
    candidates: &'static [&'static str],
    labels: &'static [&'static str],
) -> ColumnSpec {
    ColumnSpec {
        key,
        label,
        candidates,
        labels,
        required: false,
    }
}

/// `oauth_entity`: the outbound OAuth provider ("Connect to a third party OAuth Provider").
pub const OAUTH_ENTITY: TableSpec = TableSpec {
    table: "oauth_entity",
    manual: "System OAuth > Application Registry > the outbound OAuth provider",
    columns: &[
        required("name", "Name", &["name"], &["Name"]),
        required("type", "Type", &["type"], &["Type"]),
        required("client_id", "Client ID", &["client_id"], &["Client ID"]),
        required(
            "client_secret",
            "Client Secret",
            &["client_secret"],
            &["Client Secret"],
        ),
        required(
            "default_grant_type",
            "Default Grant type",
            &["default_grant_type"],
            &["Default Grant type"],
        ),
        required("token_url", "Token URL", &["token_url"], &["Token URL"]),
        required(
            "redirect_url",
            "Redirect URL",
            &["redirect_url"],
            &["Redirect URL"],
        ),
        required("active", "Active", &["active"], &["Active"]),
    ],
};

/// `oauth_oidc_entity` (extends `oauth_entity`): "Configure an OIDC provider to verify ID
/// tokens", the inbound app's entity.
pub const OAUTH_OIDC_ENTITY: TableSpec = TableSpec {
    table: "oauth_oidc_entity",
    manual: "System OAuth > Application Registry > the OIDC provider of the inbound app (oauth_oidc_entity.list)",
    columns: &[
        required("name", "Name", &["name"], &["Name"]),
        required("client_id", "Client ID", &["client_id"], &["Client ID"]),
        required(
            "client_secret",
            "Client Secret",
            &["client_secret"],
            &["Client Secret"],
        ),
        optional("type", "Type", &["type"], &["Type"]),
        optional(
            "redirect_url",
            "Redirect URL",
            &["redirect_url"],
            &["Redirect URL"],
        ),
        required("active", "Active", &["active"], &["Active"]),
        required(
            "provider_configuration",
            "OAuth OIDC Provider Configuration",
            &["oidc_provider_configuration"],
            &[
                "OAuth OIDC Provider Configuration",
                "OIDC Provider Configuration",
            ],
        ),
    ],
};

/// `oidc_provider_configuration`: metadata URL, user claim and user field of the OIDC provider.
pub const OIDC_PROVIDER_CONFIGURATION: TableSpec = TableSpec {
    table: "oidc_provider_configuration",
    manual: "System OAuth > Application Registry > the OIDC provider > OAuth OIDC Provider Configuration (oidc_provider_configuration.list)",
    columns: &[
        required(
            "name",
            "OIDC Provider",
            &["name", "oidc_provider"],
            &["OIDC Provider", "Name", "OIDC Provider Configuration Name"],
        ),
        required(
            "metadata_url",
            "OIDC Metadata URL",
            &["oidc_url", "oidc_metadata_url"],
            &["OIDC Metadata URL"],
        ),
        required("user_claim", "User Claim", &["user_claim"], &["User Claim"]),
        required("user_field", "User Field", &["user_field"], &["User Field"]),
        optional("active", "Active", &["active"], &["Active"]),
    ],
};

/// `sys_db_object`: the Application Access settings of a table (cross-scope access).
pub const SYS_DB_OBJECT: TableSpec = TableSpec {
    table: "sys_db_object",
    manual: "System Definition > Tables > the table > Application Access",
    columns: &[
        required("name", "Name", &["name"], &["Name"]),
        required(
            "access",
            "Accessible from",
            &["access"],
            &["Accessible from"],
        ),
        required("read_access", "Can read", &["read_access"], &["Can read"]),
    ],
};

const APPLICATION_COLUMNS: &[ColumnSpec] = &[
    required("scope", "Scope", &["scope"], &["Scope"]),
    required("name", "Name", &["name"], &["Name"]),
    optional("version", "Version", &["version"], &["Version"]),
    optional("active", "Active", &["active"], &["Active"]),
];

/// `sys_scope`: installed applications by scope.
pub const SYS_SCOPE: TableSpec = TableSpec {
    table: "sys_scope",
    manual: "System Applications > All Available Applications > All",
    columns: APPLICATION_COLUMNS,
};

/// `sys_store_app` (extends `sys_scope`): applications installed from the ServiceNow Store.
pub const SYS_STORE_APP: TableSpec = TableSpec {
    table: "sys_store_app",
    manual: "System Applications > All Available Applications > All",
    columns: APPLICATION_COLUMNS,
};

/// `sys_user`, a platform basic: the integration user.
pub const SYS_USER: TableSpec = TableSpec {
    table: "sys_user",
    manual: "User Administration > Users",
    columns: &[
        required("user_name", "User ID", &["user_name"], &["User ID"]),
        required("first_name", "First name", &["first_name"], &["First name"]),
        required("last_name", "Last name", &["last_name"], &["Last name"]),
        required(
            "web_service_access_only",
            "Web service access only",
            &["web_service_access_only"],
            &["Web service access only"],
        ),
        required("active", "Active", &["active"], &["Active"]),
        required("locked_out", "Locked out", &["locked_out"], &["Locked out"]),
        required(
            "user_password",
            "Password",
            &["user_password"],
            &["Password"],
        ),
    ],
};

/// The columns of one table as this instance names them.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    spec: &'static TableSpec,
    columns: Vec<(&'static str, Option<Column>)>,
}

impl ResolvedTable {
    /// A platform basic table's columns by their documented names (no dictionary lookup).
    pub fn standard(spec: &'static TableSpec) -> Result<Self, ServiceNowError> {
        let columns = spec
            .columns
            .iter()
            .map(|column| {
                let name = column.candidates.first().copied().unwrap_or(column.key);
                Ok((column.key, Some(Column::standard(spec.table, name)?)))
            })
            .collect::<Result<_, ServiceNowError>>()?;
        Ok(Self { spec, columns })
    }

    /// The table.
    pub fn table(&self) -> &'static str {
        self.spec.table
    }

    /// Where a person sets these fields by hand.
    pub fn manual(&self) -> &'static str {
        self.spec.manual
    }

    /// A column by key; an optional column the instance lacks is `None`.
    pub fn optional(&self, key: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|(known, _)| *known == key)
            .and_then(|(_, column)| column.as_ref())
    }

    /// A column by key, or the error naming what is missing.
    pub fn column(&self, key: &str) -> Result<&Column, ServiceNowError> {
        self.optional(key).ok_or_else(|| self.unresolved(key, None))
    }

    /// The column name by key (`None`: the instance has no such column).
    pub fn name(&self, key: &str) -> Option<&str> {
        self.optional(key).map(Column::name)
    }

    /// The guide's label of a column.
    pub fn label(&self, key: &str) -> &'static str {
        self.spec.spec(key).map_or("", |spec| spec.label)
    }

    /// "Label (column)", for messages.
    pub fn describe(&self, key: &str) -> String {
        match self.name(key) {
            Some(name) => format!("{} ({name})", self.label(key)),
            None => self.label(key).to_owned(),
        }
    }

    /// A field of `record` as text, by key.
    pub fn get<'r>(&self, record: &'r Record, key: &str) -> Option<&'r str> {
        record.str(self.name(key)?)
    }

    /// A lookup `key = value` on this table.
    pub fn lookup(&self, key: &str, value: &str) -> Result<CheckedQuery, ServiceNowError> {
        CheckedQuery::on(self.spec.table).eq(self.column(key)?, value)
    }

    /// A record body from `(key, value)` pairs with this instance's column names; the keys of
    /// optional columns the instance lacks are returned instead of written.
    pub fn body(&self, values: &[(&str, String)]) -> (Map<String, Value>, Vec<&'static str>) {
        let mut body = Map::new();
        let mut skipped = Vec::new();
        for (key, value) in values {
            match self.optional(key) {
                Some(column) => {
                    body.insert(column.name().to_owned(), Value::String(value.clone()));
                }
                None => skipped.extend(self.spec.spec(key).map(|spec| spec.label)),
            }
        }
        (body, skipped)
    }

    fn unresolved(&self, key: &str, ambiguous: Option<&[Column]>) -> ServiceNowError {
        let spec = self.spec.spec(key);
        let label = spec.map_or(key, |spec| spec.label);
        let mut manual = format!(
            "Set \"{label}\" by hand in {}, and tell the bot's maintainers the column's name on this instance (System Definition > Dictionary, table {}).",
            self.spec.manual, self.spec.table
        );
        if let Some(columns) = ambiguous {
            let names: Vec<&str> = columns.iter().map(Column::name).collect();
            manual = format!(
                "Several columns carry that label ({}). {manual}",
                names.join(", ")
            );
        }
        ServiceNowError::UnresolvedColumn {
            table: self.spec.table.to_owned(),
            label: label.to_owned(),
            candidates: spec
                .map(|spec| spec.candidates.iter().map(|c| (*c).to_owned()).collect())
                .unwrap_or_default(),
            labels: spec
                .map(|spec| spec.labels.iter().map(|l| (*l).to_owned()).collect())
                .unwrap_or_default(),
            manual,
        }
    }
}

/// Resolves every column of `spec` in `dictionary`: the first candidate name the table has,
/// else the one column carrying one of the labels. A required column that is missing, or a
/// label carried by several columns, is an error; never a guess.
pub fn resolve(
    dictionary: &TableDictionary,
    spec: &'static TableSpec,
) -> Result<ResolvedTable, ServiceNowError> {
    let mut resolved = ResolvedTable {
        spec,
        columns: Vec::with_capacity(spec.columns.len()),
    };
    for column in spec.columns {
        let by_name = column
            .candidates
            .iter()
            .find_map(|name| dictionary.column(name));
        let found = match by_name {
            Some(found) => Some(found),
            None => {
                let mut found = None;
                for label in column.labels {
                    let matches = dictionary.by_label(label);
                    match matches.len() {
                        0 => continue,
                        1 => {
                            found = matches.into_iter().next();
                            break;
                        }
                        _ => return Err(resolved.unresolved(column.key, Some(&matches))),
                    }
                }
                found
            }
        };
        if found.is_none() && column.required {
            return Err(resolved.unresolved(column.key, None));
        }
        resolved.columns.push((column.key, found));
    }
    Ok(resolved)
}

/// Reads the table's dictionary (cached per instance) and resolves `spec`; when a required
/// column is missing from a cached answer, reads the dictionary again once.
pub async fn load(
    client: &ServiceNowClient,
    spec: &'static TableSpec,
) -> Result<ResolvedTable, ServiceNowError> {
    let dictionary = client.dictionary(spec.table, false).await?;
    match resolve(&dictionary, spec) {
        Err(ServiceNowError::UnresolvedColumn { .. })
            if dictionary.age() > std::time::Duration::from_secs(1) =>
        {
            let fresh = client.dictionary(spec.table, true).await?;
            resolve(&fresh, spec)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::servicenow::DictionaryColumn;

    fn dictionary(table: &str, columns: &[(&str, &str, &str)]) -> TableDictionary {
        let hierarchy: Vec<String> =
            columns
                .iter()
                .map(|(on, _, _)| (*on).to_owned())
                .fold(Vec::new(), |mut seen, on| {
                    if !seen.contains(&on) {
                        seen.push(on);
                    }
                    seen
                });
        TableDictionary::from_columns(
            table,
            hierarchy,
            columns
                .iter()
                .map(|(on, element, label)| DictionaryColumn {
                    defined_on: (*on).to_owned(),
                    element: (*element).to_owned(),
                    label: (*label).to_owned(),
                })
                .collect(),
        )
    }

    const ZURICH_CONFIG: &[(&str, &str, &str)] = &[
        ("oidc_provider_configuration", "name", "OIDC Provider"),
        (
            "oidc_provider_configuration",
            "oidc_url",
            "OIDC Metadata URL",
        ),
        ("oidc_provider_configuration", "user_claim", "User Claim"),
        ("oidc_provider_configuration", "user_field", "User Field"),
    ];

    #[test]
    fn verified_names_are_found_first() {
        let table = resolve(
            &dictionary("oidc_provider_configuration", ZURICH_CONFIG),
            &OIDC_PROVIDER_CONFIGURATION,
        )
        .expect("resolves");
        assert_eq!(table.name("name"), Some("name"));
        assert_eq!(table.name("metadata_url"), Some("oidc_url"));
        assert_eq!(table.name("active"), None, "optional and absent");
        let (body, skipped) = table.body(&[
            ("metadata_url", "https://x".to_owned()),
            ("active", "true".to_owned()),
        ]);
        assert_eq!(body.len(), 1);
        assert_eq!(body["oidc_url"], "https://x");
        assert_eq!(skipped, vec!["Active"]);
    }

    #[test]
    fn older_names_and_labels_resolve_too() {
        let older = dictionary(
            "oidc_provider_configuration",
            &[
                (
                    "oidc_provider_configuration",
                    "oidc_provider",
                    "OIDC Provider",
                ),
                (
                    "oidc_provider_configuration",
                    "u_metadata",
                    "OIDC Metadata URL",
                ),
                ("oidc_provider_configuration", "user_claim", "User Claim"),
                ("oidc_provider_configuration", "u_field", "user field"),
                ("oidc_provider_configuration", "u_on", "Active"),
            ],
        );
        let table = resolve(&older, &OIDC_PROVIDER_CONFIGURATION).expect("resolves");
        assert_eq!(table.name("name"), Some("oidc_provider"));
        assert_eq!(table.name("metadata_url"), Some("u_metadata"));
        assert_eq!(table.name("user_field"), Some("u_field"));
        assert_eq!(table.name("active"), Some("u_on"));
        assert_eq!(
            table.describe("metadata_url"),
            "OIDC Metadata URL (u_metadata)"
        );
    }

    #[test]
    fn inherited_columns_resolve_on_the_child_table() {
        let entity = dictionary(
            "oauth_oidc_entity",
            &[
                (
                    "oauth_oidc_entity",
                    "oidc_provider_configuration",
                    "OAuth OIDC Provider Configuration",
                ),
                ("oauth_entity", "name", "Name"),
                ("oauth_entity", "client_id", "Client ID"),
                ("oauth_entity", "client_secret", "Client Secret"),
                ("oauth_entity", "active", "Active"),
            ],
        );
        let table = resolve(&entity, &OAUTH_OIDC_ENTITY).expect("resolves");
        let client_id = table.column("client_id").expect("inherited");
        assert_eq!(client_id.table(), "oauth_oidc_entity");
        assert_eq!(
            table.name("provider_configuration"),
            Some("oidc_provider_configuration")
        );
        assert!(table.lookup("client_id", "abc").is_ok());
    }

    #[test]
    fn a_missing_or_ambiguous_column_is_an_error_that_names_it() {
        let missing = dictionary(
            "oidc_provider_configuration",
            &[
                ("oidc_provider_configuration", "name", "OIDC Provider"),
                ("oidc_provider_configuration", "user_claim", "User Claim"),
                ("oidc_provider_configuration", "user_field", "User Field"),
            ],
        );
        let err = resolve(&missing, &OIDC_PROVIDER_CONFIGURATION).expect_err("unresolved");
        let text = err.to_string();
        assert!(text.contains("oidc_provider_configuration"), "{text}");
        assert!(text.contains("\"OIDC Metadata URL\""), "{text}");
        assert!(text.contains("oidc_url, oidc_metadata_url"), "{text}");
        assert!(text.contains("by hand"), "{text}");
        let twice = dictionary(
            "oidc_provider_configuration",
            &[
                ("oidc_provider_configuration", "name", "OIDC Provider"),
                ("oidc_provider_configuration", "u_a", "OIDC Metadata URL"),
                ("oidc_provider_configuration", "u_b", "OIDC Metadata URL"),
                ("oidc_provider_configuration", "user_claim", "User Claim"),
                ("oidc_provider_configuration", "user_field", "User Field"),
            ],
        );
        let err = resolve(&twice, &OIDC_PROVIDER_CONFIGURATION).expect_err("ambiguous");
        assert!(err.to_string().contains("u_a, u_b"), "{err}");
    }

    #[test]
    fn standard_tables_only_use_documented_names() {
        let user = ResolvedTable::standard(&SYS_USER).expect("basic table");
        assert_eq!(user.name("user_name"), Some("user_name"));
        assert!(ResolvedTable::standard(&OAUTH_ENTITY).is_err());
    }
}
