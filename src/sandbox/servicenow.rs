//! ServiceNow emulator: Table API (`/api/now/table/…`, `/api/now/v2/table/…`) and
//! `/oauth_token.do`, with the tables the setup touches, simple ACLs, Basic and OAuth bearer
//! authentication and the error envelopes of the real instance.
//!
//! Faithful quirks: all values are strings; `sys_id` is 32 hex; dates are UTC
//! `YYYY-MM-DD HH:MM:SS`; unknown parts of `sysparm_query` are ignored (unless the property
//! `glide.invalid_query.returns_no_rows` is `true`); `sysparm_limit` is applied before ACLs, so
//! a plain user gets short pages; v1 answers 404 to an empty list where v2 answers `[]`;
//! references are `{link,value}` unless `sysparm_exclude_reference_link=true`; child tables
//! (`oauth_oidc_entity` under `oauth_entity`, `sys_store_app` under `sys_scope`) are listed
//! with their parent; journal fields (`work_notes`, `comments`) read back as `""` and land in
//! `sys_journal_field`; password fields read back as `""`.
//!
//! Column names follow the platform, not the bot: `oidc_provider_configuration` and
//! `oauth_oidc_entity` have the names Microsoft verified on a Zurich instance (`name`,
//! `oidc_url`, `user_claim`, `user_field`, …); inherited columns are described in
//! `sys_dictionary` under the parent table only. Columns no public source confirms are listed
//! in [`UNVERIFIED_COLUMNS`]; with [`SandboxOptions::servicenow_renamed_columns`] each gets
//! another name (its label kept), so a test proves the bot resolves columns instead of
//! guessing them. The emulator's own reads and writes of those columns go through
//! [`SnState::physical`], the one place that knows the names in use. With
//! [`SandboxOptions::servicenow_decoys`] the instance also holds records that are not the
//! integration's (the company's SSO OIDC provider, another OAuth provider), seeded first.
//! A password written over REST without `sysparm_input_display_value=true` lands in the
//! one-way field as raw text, as on a real instance, and the user cannot sign in.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::entra::{Directory, SigningKeys};
use super::faults::{AuthMethod, Authenticated, Emulator, Fault, FaultLayer};
use super::{SandboxOptions, Shared, new_sys_id, now, query_pairs, random_token, sn_datetime};

/// Client id of the seeded inbound OAuth client (`oauth_entity` type `client`).
pub(crate) const SEED_OAUTH_CLIENT_ID: &str = "ac0dd1c8f2a1101026e5e0e2a3b1c0d4";
/// Its secret (sandbox only).
pub(crate) const SEED_OAUTH_CLIENT_SECRET: &str = "sandbox-oauth-client-secret";
/// Lifetime of access tokens from `/oauth_token.do`, as in the sample.
const ACCESS_TOKEN_SECS: i64 = 1799;
/// Tables only `admin` may read (rows of others are filtered out, like a row ACL).
const ADMIN_READ_TABLES: &[&str] = &[
    "oauth_entity",
    "oauth_entity_profile",
    "oauth_entity_scope",
    "oidc_provider_configuration",
    "sys_properties",
    "sys_scope_privilege",
];
/// Roles that may write incidents and journal entries besides `admin`.
const INCIDENT_WRITERS: &[&str] = &["itil", "incident_manager"];
/// The application scope of the retired Microsoft app.
pub(crate) const APP_SCOPE: &str = "x_mioms_m365_assis";
/// `(table, column)` of the columns whose names no public source confirms (their labels are
/// documented). Renamed to `u_<column>` when the sandbox runs with renamed columns.
pub const UNVERIFIED_COLUMNS: &[(&str, &str)] = &[
    ("oauth_entity", "refresh_token_lifespan"),
    ("oauth_entity", "access_token_lifespan"),
    ("oauth_entity", "logo_url"),
    ("oauth_entity", "access"),
    ("oauth_entity", "application_user"),
    ("oauth_entity", "send_credentials"),
    ("oauth_entity", "comments"),
    ("oauth_oidc_entity", "clock_skew"),
    ("oauth_oidc_entity", "enforce_token_restrictions"),
    ("oidc_provider_configuration", "active"),
    ("sys_db_object", "access"),
    ("sys_db_object", "read_access"),
    ("sys_db_object", "create_access"),
    ("sys_db_object", "update_access"),
    ("sys_db_object", "delete_access"),
    ("sys_db_object", "ws_access"),
    ("sys_db_object", "caller_access"),
    ("sys_db_object", "configuration_access"),
    ("sys_db_object", "alter_access"),
    ("sys_scope_privilege", "source_scope"),
    ("sys_scope_privilege", "target_scope"),
    ("sys_scope_privilege", "target_name"),
    ("sys_scope_privilege", "target_type"),
    ("sys_scope_privilege", "operation"),
    ("sys_scope_privilege", "status"),
];
/// Name of the decoy OIDC provider configuration (the company's SSO), after the organisation name.
pub const DECOY_OIDC_PROVIDER_SUFFIX: &str = " SSO";
/// Client id of the decoy OIDC entity (the company's SSO portal).
pub const DECOY_OIDC_ENTITY_CLIENT_ID: &str = "5f0c3a9e-1b7d-4c2e-9a61-2d8f4e7b3c10";
/// Client id of the decoy outbound OAuth provider (another Graph connector).
pub const DECOY_OAUTH_PROVIDER_CLIENT_ID: &str = "c7e1d2a4-6b3f-4f8e-8d2a-91b0e5c4a7f3";

type Record = BTreeMap<String, String>;
/// Seed choices: table, element, `(value, label)` pairs.
type SeedChoices = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);
/// Seed user: user name, first, last, mail local part, password, roles.
type SeedUser<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a [&'a str],
);
/// Seed incident: short description, state, impact, case reference, age in hours.
type SeedIncident = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    i64,
);

/// One column of a table.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    label: String,
    internal_type: String,
    reference: Option<String>,
    default: String,
}

impl Column {
    fn is_password(&self) -> bool {
        self.internal_type.starts_with("password")
    }
    fn is_journal(&self) -> bool {
        self.internal_type == "journal_input"
    }
    fn is_numeric(&self) -> bool {
        matches!(self.internal_type.as_str(), "integer" | "decimal" | "float")
    }
    fn is_boolean(&self) -> bool {
        self.internal_type == "boolean"
    }
}

/// A table: its own columns (inherited ones live on the parent).
#[derive(Debug, Clone)]
struct TableDef {
    label: String,
    parent: Option<String>,
    display: String,
    columns: Vec<Column>,
}

/// An `/oauth_token.do` grant.
#[derive(Debug, Clone)]
struct Grant {
    user_sys_id: String,
    expires: DateTime<Utc>,
}

/// The instance's state.
pub(crate) struct SnState {
    base_url: String,
    tables: BTreeMap<String, TableDef>,
    rows: BTreeMap<String, Vec<Record>>,
    tokens: HashMap<String, Grant>,
    refresh_tokens: HashMap<String, Grant>,
    next_incident: u64,
    /// Where case changes are pushed, as the bot's Business Rule would (`None`: no push).
    push_target: Option<PushTarget>,
    /// sys_ids of rows only `admin` may read (a row ACL), for short-page tests.
    hidden_rows: HashSet<String>,
    /// sys_id to the role a read ACL requires for that row (besides `admin`).
    read_roles: HashMap<String, String>,
    /// Whether [`UNVERIFIED_COLUMNS`] carry other names.
    renamed_columns: bool,
}

/// Where the emulator posts signed case changes, acting as the Business Rule that
/// `m365bot servicenow-script` prints.
#[derive(Debug, Clone)]
pub struct PushTarget {
    /// The bot's push endpoint, e.g. `http://127.0.0.1:3978/api/servicenow/events`.
    pub url: String,
    /// The shared HMAC secret.
    pub secret: String,
    /// The case table (`incident`).
    pub table: String,
    /// Encoded query a record must match to be pushed.
    pub filter: String,
    /// Fields sent as `{value, display_value}`.
    pub fields: Vec<String>,
}

/// Who is calling.
#[derive(Debug, Clone)]
struct Caller {
    sys_id: String,
    user_name: String,
    roles: HashSet<String>,
}

impl Caller {
    fn is_admin(&self) -> bool {
        self.roles.contains("admin")
    }
    fn system() -> Self {
        Self {
            sys_id: String::new(),
            user_name: "admin".to_owned(),
            roles: HashSet::from(["admin".to_owned()]),
        }
    }
}

// ------------------------------------------------------------------------------------------
// schema and seed
// ------------------------------------------------------------------------------------------

fn col(name: &str, label: &str, kind: &str) -> Column {
    let (internal_type, reference) = match kind.strip_prefix("reference:") {
        Some(table) => ("reference".to_owned(), Some(table.to_owned())),
        None => (kind.to_owned(), None),
    };
    Column {
        name: name.to_owned(),
        label: label.to_owned(),
        internal_type,
        reference,
        default: String::new(),
    }
}

fn col_default(name: &str, label: &str, kind: &str, default: &str) -> Column {
    Column {
        default: default.to_owned(),
        ..col(name, label, kind)
    }
}

fn sys_columns() -> Vec<Column> {
    vec![
        col("sys_id", "Sys ID", "GUID"),
        col("sys_class_name", "Class", "sys_class_name"),
        col("sys_created_on", "Created", "glide_date_time"),
        col("sys_created_by", "Created by", "string"),
        col("sys_updated_on", "Updated", "glide_date_time"),
        col("sys_updated_by", "Updated by", "string"),
        col_default("sys_mod_count", "Updates", "integer", "0"),
    ]
}

fn table(label: &str, parent: Option<&str>, display: &str, columns: Vec<Column>) -> TableDef {
    let mut all = if parent.is_none() {
        sys_columns()
    } else {
        Vec::new()
    };
    all.extend(columns);
    TableDef {
        label: label.to_owned(),
        parent: parent.map(str::to_owned),
        display: display.to_owned(),
        columns: all,
    }
}

/// The name a column has on this instance: `u_<column>` for an unverified column when
/// `renamed`, else the column itself.
fn instance_name(table: &str, column: &str, renamed: bool) -> String {
    if renamed && UNVERIFIED_COLUMNS.contains(&(table, column)) {
        format!("u_{column}")
    } else {
        column.to_owned()
    }
}

fn schema(case_field: &str, renamed: bool) -> BTreeMap<String, TableDef> {
    let mut t = BTreeMap::new();
    t.insert(
        "sys_user".to_owned(),
        table(
            "User",
            None,
            "name",
            vec![
                col("user_name", "User ID", "string"),
                col("name", "Name", "string"),
                col("first_name", "First name", "string"),
                col("last_name", "Last name", "string"),
                col("email", "Email", "email"),
                col("title", "Title", "string"),
                col_default("active", "Active", "boolean", "true"),
                col_default("locked_out", "Locked out", "boolean", "false"),
                col_default(
                    "web_service_access_only",
                    "Web service access only",
                    "boolean",
                    "false",
                ),
                col_default(
                    "internal_integration_user",
                    "Internal Integration User",
                    "boolean",
                    "false",
                ),
                col("user_password", "Password", "password"),
                col_default("failed_attempts", "Failed login attempts", "integer", "0"),
                col("last_login_time", "Last login time", "glide_date_time"),
                col_default("time_zone", "Time zone", "string", "GMT"),
                col("department", "Department", "reference:cmn_department"),
            ],
        ),
    );
    t.insert(
        "sys_user_role".to_owned(),
        table(
            "Role",
            None,
            "name",
            vec![
                col("name", "Name", "string"),
                col("description", "Description", "string"),
                col("suffix", "Suffix", "string"),
                col_default(
                    "elevated_privilege",
                    "Elevated privilege",
                    "boolean",
                    "false",
                ),
            ],
        ),
    );
    t.insert(
        "sys_user_has_role".to_owned(),
        table(
            "User Role",
            None,
            "role",
            vec![
                col("user", "User", "reference:sys_user"),
                col("role", "Role", "reference:sys_user_role"),
                col_default("inherited", "Inherited", "boolean", "false"),
                col_default("state", "State", "string", "active"),
            ],
        ),
    );
    t.insert(
        "cmn_department".to_owned(),
        table(
            "Department",
            None,
            "name",
            vec![
                col("name", "Name", "string"),
                col("description", "Description", "string"),
            ],
        ),
    );
    t.insert(
        "sys_user_group".to_owned(),
        table(
            "Group",
            None,
            "name",
            vec![
                col("name", "Name", "string"),
                col("description", "Description", "string"),
                col("email", "Group email", "email"),
                col("manager", "Manager", "reference:sys_user"),
                col_default("active", "Active", "boolean", "true"),
            ],
        ),
    );
    t.insert(
        "oauth_entity".to_owned(),
        table(
            "Application Registries",
            None,
            "name",
            vec![
                col("name", "Name", "string"),
                col("client_id", "Client ID", "string"),
                col("client_secret", "Client Secret", "password2"),
                col("type", "Type", "choice"),
                col("default_grant_type", "Default Grant type", "choice"),
                col("token_url", "Token URL", "url"),
                col("auth_url", "Authorization URL", "url"),
                col("revoke_token_url", "Token Revocation URL", "url"),
                col("redirect_url", "Redirect URL", "url"),
                col_default(
                    "use_mutual_auth",
                    "Use mTLS Authentication",
                    "boolean",
                    "false",
                ),
                col_default("public_client", "Public Client", "boolean", "false"),
                col("code_challenge_method", "Code Challenge Method", "choice"),
                col(
                    "oauth_api_script",
                    "OAuth API Script",
                    "reference:sys_script_include",
                ),
                col_default(
                    "refresh_token_lifespan",
                    "Refresh Token Lifespan",
                    "integer",
                    "8640000",
                ),
                col_default(
                    "access_token_lifespan",
                    "Access Token Lifespan",
                    "integer",
                    "1800",
                ),
                col_default("active", "Active", "boolean", "true"),
                col("logo_url", "Logo URL", "url"),
                col_default("access", "Accessible from", "choice", "public"),
                col_default("sys_scope", "Application", "reference:sys_scope", "global"),
                col(
                    "application_user",
                    "OAuth Application User",
                    "reference:sys_user",
                ),
                col("send_credentials", "Send Credentials", "choice"),
                col("comments", "Comments", "string"),
            ],
        ),
    );
    t.insert(
        "oauth_oidc_entity".to_owned(),
        table(
            "OIDC Entity",
            Some("oauth_entity"),
            "name",
            vec![
                col(
                    "oidc_provider_configuration",
                    "OAuth OIDC Provider Configuration",
                    "reference:oidc_provider_configuration",
                ),
                col_default("clock_skew", "Clock Skew", "integer", "300"),
                col_default(
                    "enforce_token_restrictions",
                    "Enforce Token Restrictions",
                    "boolean",
                    "false",
                ),
            ],
        ),
    );
    t.insert(
        "oauth_entity_profile".to_owned(),
        table(
            "OAuth Entity Profile",
            None,
            "name",
            vec![
                col("name", "Name", "string"),
                col("oauth_entity", "OAuth Entity", "reference:oauth_entity"),
                col("grant_type", "Grant type", "choice"),
                col_default("default", "Is default", "boolean", "false"),
            ],
        ),
    );
    t.insert(
        "oauth_entity_scope".to_owned(),
        table(
            "OAuth Entity Scope",
            None,
            "name",
            vec![
                col("name", "Name", "string"),
                col("oauth_entity", "OAuth Entity", "reference:oauth_entity"),
                col("oauth_entity_scope", "OAuth scope", "string"),
            ],
        ),
    );
    t.insert(
        "oidc_provider_configuration".to_owned(),
        table(
            "OIDC Provider Configuration",
            None,
            "name",
            vec![
                col("name", "OIDC Provider", "string"),
                col("oidc_url", "OIDC Metadata URL", "url"),
                col_default(
                    "oidc_config_cache_life_span",
                    "OIDC Configuration Cache Lifespan",
                    "integer",
                    "120",
                ),
                col("user_claim", "User Claim", "string"),
                col("user_field", "User Field", "field_name"),
                col_default(
                    "enable_jti_verification",
                    "Enable JTI claim verification",
                    "boolean",
                    "false",
                ),
                col_default("active", "Active", "boolean", "true"),
            ],
        ),
    );
    t.insert(
        "sys_db_object".to_owned(),
        table(
            "Table",
            None,
            "label",
            vec![
                col("name", "Name", "string"),
                col("label", "Label", "string"),
                col("super_class", "Extends table", "reference:sys_db_object"),
                col_default("sys_scope", "Application", "reference:sys_scope", "global"),
                col_default("access", "Accessible from", "choice", "public"),
                col_default("read_access", "Can read", "boolean", "true"),
                col_default("create_access", "Can create", "boolean", "false"),
                col_default("update_access", "Can update", "boolean", "false"),
                col_default("delete_access", "Can delete", "boolean", "false"),
                col_default(
                    "ws_access",
                    "Allow access to this table via web services",
                    "boolean",
                    "true",
                ),
                col("caller_access", "Caller Access", "choice"),
                col_default(
                    "configuration_access",
                    "Allow configuration",
                    "boolean",
                    "false",
                ),
                col("alter_access", "Alter access", "boolean"),
                col_default("is_extendable", "Extensible", "boolean", "false"),
            ],
        ),
    );
    t.insert(
        "sys_dictionary".to_owned(),
        table(
            "Dictionary Entry",
            None,
            "column_label",
            vec![
                col("name", "Table", "table_name"),
                col("element", "Column name", "string"),
                col("column_label", "Column label", "string"),
                col("internal_type", "Type", "string"),
                col("reference", "Reference", "table_name"),
                col_default("max_length", "Max length", "integer", "40"),
                col_default("mandatory", "Mandatory", "boolean", "false"),
                col_default("active", "Active", "boolean", "true"),
                col("default_value", "Default value", "string"),
            ],
        ),
    );
    t.insert(
        "sys_scope".to_owned(),
        table(
            "Application",
            None,
            "name",
            vec![
                col("scope", "Scope", "string"),
                col("name", "Name", "string"),
                col("version", "Version", "version"),
                col("vendor", "Vendor", "string"),
                col_default("active", "Active", "boolean", "true"),
            ],
        ),
    );
    t.insert(
        "sys_store_app".to_owned(),
        table(
            "Store Application",
            Some("sys_scope"),
            "name",
            vec![col("dependencies", "Dependencies", "string")],
        ),
    );
    t.insert(
        "sys_scope_privilege".to_owned(),
        table(
            "Cross scope privilege",
            None,
            "target_name",
            vec![
                col("source_scope", "Source Scope", "reference:sys_scope"),
                col("target_scope", "Target Scope", "reference:sys_scope"),
                col("target_name", "Target Name", "string"),
                col("target_type", "Target Type", "choice"),
                col("operation", "Operation", "choice"),
                col("status", "Status", "choice"),
            ],
        ),
    );
    t.insert(
        "sys_properties".to_owned(),
        table(
            "System Property",
            None,
            "name",
            vec![
                col("name", "Name", "string"),
                col("value", "Value", "string"),
                col_default("type", "Type", "choice", "string"),
                col("description", "Description", "string"),
            ],
        ),
    );
    t.insert(
        "sys_choice".to_owned(),
        table(
            "Choice",
            None,
            "label",
            vec![
                col("name", "Table", "table_name"),
                col("element", "Element", "string"),
                col("value", "Value", "string"),
                col("label", "Label", "string"),
                col_default("sequence", "Sequence", "integer", "0"),
                col_default("language", "Language", "string", "en"),
                col_default("inactive", "Inactive", "boolean", "false"),
            ],
        ),
    );
    t.insert(
        "syslog".to_owned(),
        table(
            "System Log",
            None,
            "message",
            vec![
                col_default("level", "Level", "integer", "0"),
                col("source", "Source", "string"),
                col("message", "Message", "string"),
            ],
        ),
    );
    t.insert(
        "sys_journal_field".to_owned(),
        table(
            "Journal Entry",
            None,
            "value",
            vec![
                col("name", "Table name", "string"),
                col("element", "Element", "string"),
                col("element_id", "Element ID", "GUID"),
                col("value", "Value", "string"),
            ],
        ),
    );
    let mut incident = vec![
        col("number", "Number", "string"),
        col("short_description", "Short description", "string"),
        col("description", "Description", "string"),
        col_default("state", "State", "integer", "1"),
        col_default("incident_state", "Incident state", "integer", "1"),
        col_default("impact", "Impact", "integer", "3"),
        col_default("urgency", "Urgency", "integer", "3"),
        col_default("priority", "Priority", "integer", "5"),
        col_default("severity", "Severity", "integer", "3"),
        col_default("category", "Category", "string", "inquiry"),
        col("subcategory", "Subcategory", "string"),
        col("assigned_to", "Assigned to", "reference:sys_user"),
        col(
            "assignment_group",
            "Assignment group",
            "reference:sys_user_group",
        ),
        col("caller_id", "Caller", "reference:sys_user"),
        col("opened_by", "Opened by", "reference:sys_user"),
        col("opened_at", "Opened", "glide_date_time"),
        col("resolved_at", "Resolved", "glide_date_time"),
        col("resolved_by", "Resolved by", "reference:sys_user"),
        col("closed_at", "Closed", "glide_date_time"),
        col("closed_by", "Closed by", "reference:sys_user"),
        col("close_code", "Resolution code", "string"),
        col("close_notes", "Resolution notes", "string"),
        col("work_notes", "Work notes", "journal_input"),
        col("comments", "Additional comments", "journal_input"),
        col(
            "comments_and_work_notes",
            "Comments and Work notes",
            "journal_list",
        ),
        col("work_notes_list", "Work notes list", "glide_list"),
        col("watch_list", "Watch list", "glide_list"),
        col("correlation_id", "Correlation ID", "string"),
        col("correlation_display", "Correlation display", "string"),
        col_default("active", "Active", "boolean", "true"),
        col_default("sys_domain", "Domain", "reference:sys_user_group", "global"),
    ];
    if !incident.iter().any(|c| c.name == case_field) && is_column_name(case_field) {
        incident.push(col(case_field, "Microsoft support case", "string"));
    }
    t.insert(
        "incident".to_owned(),
        table("Incident", None, "number", incident),
    );
    for (name, def) in &mut t {
        for column in &mut def.columns {
            column.name = instance_name(name, &column.name, renamed);
        }
    }
    t
}

/// Column and table names: lowercase letters, digits and underscores.
fn is_column_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn hash_password(password: &str) -> String {
    let digest = Sha256::digest(format!("m365bot-sandbox:{password}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl SnState {
    /// The seeded instance.
    pub(crate) fn seed(options: &SandboxOptions, base_url: &str) -> Self {
        let mut state = Self {
            base_url: base_url.to_owned(),
            tables: schema(
                &options.case_reference_field,
                options.servicenow_renamed_columns,
            ),
            rows: BTreeMap::new(),
            tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            next_incident: 10001,
            push_target: None,
            hidden_rows: HashSet::new(),
            read_roles: HashMap::new(),
            renamed_columns: options.servicenow_renamed_columns,
        };
        state.seed_metadata();
        state.seed_data(options);
        state
    }

    fn seed_metadata(&mut self) {
        let names: Vec<String> = self.tables.keys().cloned().collect();
        // sys_db_object rows first (super_class references need the parent's sys_id).
        for name in &names {
            self.ensure_db_object(name);
        }
        for name in &names {
            self.write_dictionary(name);
        }
        let choices: &[SeedChoices] = &[
            (
                "incident",
                "state",
                &[
                    ("1", "New"),
                    ("2", "In Progress"),
                    ("3", "On Hold"),
                    ("6", "Resolved"),
                    ("7", "Closed"),
                    ("8", "Canceled"),
                ],
            ),
            (
                "incident",
                "impact",
                &[("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")],
            ),
            (
                "incident",
                "priority",
                &[
                    ("1", "1 - Critical"),
                    ("2", "2 - High"),
                    ("3", "3 - Moderate"),
                    ("4", "4 - Low"),
                    ("5", "5 - Planning"),
                ],
            ),
            (
                "incident",
                "category",
                &[
                    ("inquiry", "Inquiry / Help"),
                    ("software", "Software"),
                    ("hardware", "Hardware"),
                    ("network", "Network"),
                    ("database", "Database"),
                ],
            ),
            (
                "incident",
                "urgency",
                &[("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")],
            ),
            (
                "oauth_entity",
                "type",
                &[
                    ("oauth_provider", "OAuth Provider"),
                    ("client", "OAuth Client"),
                    ("oidc_provider", "External OIDC Provider"),
                ],
            ),
            (
                "oauth_entity",
                "default_grant_type",
                &[
                    ("authorization_code", "Authorization Code"),
                    ("password", "Resource Owner Password Credentials"),
                    ("client_credentials", "Client Credentials"),
                    ("urn:ietf:params:oauth:grant-type:jwt-bearer", "JWT Bearer"),
                ],
            ),
            (
                "oauth_entity",
                "access",
                &[
                    ("public", "All application scopes"),
                    ("package_private", "This application scope only"),
                ],
            ),
            (
                "sys_db_object",
                "access",
                &[
                    ("public", "All application scopes"),
                    ("package_private", "This application scope only"),
                ],
            ),
        ];
        for (table_name, element, values) in choices {
            let element = self.physical(table_name, element);
            for (i, (value, label)) in values.iter().enumerate() {
                let sequence = i.to_string();
                self.seed_row(
                    "sys_choice",
                    &[
                        ("name", table_name),
                        ("element", &element),
                        ("value", value),
                        ("label", label),
                        ("sequence", &sequence),
                    ],
                );
            }
        }
    }

    fn seed_data(&mut self, options: &SandboxOptions) {
        let domain = options.tenant_domain.clone();
        let global = self.seed_row("sys_scope", &[("scope", "global"), ("name", "Global")]);
        self.replace_sys_id("sys_scope", &global, "global");
        let app_scope = self.seed_row(
            "sys_store_app",
            &[
                ("scope", APP_SCOPE),
                ("name", "Microsoft 365 support integration"),
                ("version", "2.1.1"),
                ("vendor", "Microsoft"),
            ],
        );
        let instance_title = format!("{} ServiceNow instance (sandbox)", options.instance_name);
        self.seed_row(
            "sys_properties",
            &[
                (
                    "name",
                    "glide.oauth.inbound.client.credential.grant_type.enabled",
                ),
                ("value", "true"),
                ("type", "true|false"),
                (
                    "description",
                    "Sandbox: enabled so the client-credentials grant of /oauth_token.do works",
                ),
            ],
        );
        self.seed_row(
            "sys_properties",
            &[
                ("name", "glide.invalid_query.returns_no_rows"),
                ("value", "false"),
                ("type", "true|false"),
            ],
        );
        self.seed_row(
            "sys_properties",
            &[
                ("name", "glide.product.description"),
                ("value", &instance_title),
            ],
        );
        for (name, description) in [
            ("admin", "System administrator"),
            ("itil", "Fulfiller"),
            ("incident_manager", "Incident manager"),
            (
                "x_mioms_m365_assis.administrator",
                "Microsoft 365 support integration administrator",
            ),
            (
                "x_mioms_m365_assis.insights_user",
                "Microsoft 365 support integration insights user",
            ),
        ] {
            self.seed_row(
                "sys_user_role",
                &[("name", name), ("description", description)],
            );
        }
        let users: [SeedUser<'_>; 5] = [
            (
                "admin",
                "System",
                "Administrator",
                "admin",
                Some(options.servicenow_admin_password.as_str()),
                &["admin"],
            ),
            (
                "jane.doe",
                "Jane",
                "Doe",
                "jane.doe",
                Some(options.servicenow_user_password.as_str()),
                &["x_mioms_m365_assis.insights_user"],
            ),
            (
                "fred.luddy",
                "Fred",
                "Luddy",
                "fred.luddy",
                None,
                &["itil", "incident_manager"],
            ),
            (
                "beth.anglin",
                "Beth",
                "Anglin",
                "beth.anglin",
                None,
                &[
                    "itil",
                    "x_mioms_m365_assis.administrator",
                    "x_mioms_m365_assis.insights_user",
                ],
            ),
            ("abel.tuter", "Abel", "Tuter", "abel.tuter", None, &[]),
        ];
        let it = self.seed_row("cmn_department", &[("name", "IT")]);
        let accounting = self.seed_row("cmn_department", &[("name", "Accounting")]);
        let mut user_ids = HashMap::new();
        for (user_name, first, last, mail, password, roles) in users {
            let password = password
                .map(str::to_owned)
                .unwrap_or_else(|| random_token(24));
            let email = format!("{mail}@{domain}");
            let full = format!("{first} {last}");
            let id = self.seed_row(
                "sys_user",
                &[
                    ("user_name", user_name),
                    ("first_name", first),
                    ("last_name", last),
                    ("name", &full),
                    ("email", &email),
                    ("user_password", &hash_password(&password)),
                    (
                        "department",
                        if user_name == "jane.doe" {
                            &accounting
                        } else {
                            &it
                        },
                    ),
                ],
            );
            for role in roles {
                self.grant_role(user_name, role);
            }
            user_ids.insert(user_name, id);
        }
        let service_desk = self.seed_row(
            "sys_user_group",
            &[("name", "Service Desk"), ("description", "First line")],
        );
        self.seed_row(
            "sys_user_group",
            &[
                ("name", "Microsoft 365 Support"),
                ("description", "Escalations to Microsoft"),
            ],
        );
        let admin_id = user_ids.get("admin").cloned().unwrap_or_default();
        let mut client = Record::new();
        for (k, v) in [
            ("name", "m365bot sandbox API client"),
            ("client_id", SEED_OAUTH_CLIENT_ID),
            ("type", "client"),
            ("default_grant_type", "password"),
            (
                "comments",
                "Inbound OAuth client of the sandbox, for /oauth_token.do",
            ),
        ] {
            client.insert(self.physical("oauth_entity", k), v.to_owned());
        }
        client.insert(
            "client_secret".to_owned(),
            SEED_OAUTH_CLIENT_SECRET.to_owned(),
        );
        client.insert(
            self.physical("oauth_entity", "application_user"),
            admin_id.clone(),
        );
        let _ = self.insert("oauth_entity", client, &Caller::system(), true);
        for target in ["oauth_entity", "oauth_entity_profile"] {
            let privilege = [
                ("source_scope", app_scope.as_str()),
                ("target_scope", "global"),
                ("target_name", target),
                ("target_type", "sys_db_object"),
                ("operation", "read"),
                ("status", "allowed"),
            ];
            let privilege: Vec<(String, &str)> = privilege
                .iter()
                .map(|(column, value)| (self.physical("sys_scope_privilege", column), *value))
                .collect();
            let privilege: Vec<(&str, &str)> = privilege
                .iter()
                .map(|(column, value)| (column.as_str(), *value))
                .collect();
            self.seed_row("sys_scope_privilege", &privilege);
        }
        if options.servicenow_decoys {
            self.seed_decoys(options);
        }
        // Demo incidents, some tracking a Microsoft support case.
        let case_field = options.case_reference_field.clone();
        let start = now();
        let caller = user_ids.get("jane.doe").cloned().unwrap_or_default();
        let fred = user_ids.get("fred.luddy").cloned().unwrap_or_default();
        let incidents: [SeedIncident; 4] = [
            (
                "Outlook cannot connect to Exchange Online",
                "2",
                "1",
                Some("2502170040001234"),
                72,
            ),
            (
                "Teams meetings drop audio for remote staff",
                "1",
                "2",
                Some("2502180040005678"),
                48,
            ),
            ("Printer on floor 3 is jammed", "1", "3", None, 24),
            (
                "SharePoint site returns access denied",
                "6",
                "2",
                Some("2502100040009012"),
                120,
            ),
        ];
        for (short, state, impact, case, hours) in incidents {
            let at = sn_datetime(start - ChronoDuration::hours(hours));
            let mut rec = Record::new();
            for (k, v) in [
                ("short_description", short),
                ("state", state),
                ("incident_state", state),
                ("impact", impact),
                ("category", "software"),
            ] {
                rec.insert(k.to_owned(), v.to_owned());
            }
            rec.insert("caller_id".to_owned(), caller.clone());
            rec.insert("opened_by".to_owned(), caller.clone());
            rec.insert("assignment_group".to_owned(), service_desk.clone());
            rec.insert("assigned_to".to_owned(), fred.clone());
            rec.insert("opened_at".to_owned(), at.clone());
            rec.insert("sys_created_on".to_owned(), at.clone());
            rec.insert("sys_updated_on".to_owned(), at);
            if let Some(case) = case {
                rec.insert(case_field.clone(), case.to_owned());
                if case_field != "correlation_display" {
                    rec.insert(
                        "correlation_display".to_owned(),
                        "Microsoft Support".to_owned(),
                    );
                }
            }
            let _ = self.insert("incident", rec, &Caller::system(), true);
        }
    }

    /// Inserts a seed row as the system (no business rules besides defaults).
    fn seed_row(&mut self, table: &str, fields: &[(&str, &str)]) -> String {
        let rec: Record = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.insert(table, rec, &Caller::system(), true)
            .unwrap_or_default()
    }

    fn replace_sys_id(&mut self, table: &str, old: &str, new: &str) {
        if let Some(rows) = self.rows.get_mut(table) {
            for row in rows.iter_mut() {
                if row.get("sys_id").map(String::as_str) == Some(old) {
                    row.insert("sys_id".to_owned(), new.to_owned());
                }
            }
        }
    }

    fn ensure_db_object(&mut self, name: &str) -> String {
        if let Some(existing) = self
            .rows
            .get("sys_db_object")
            .and_then(|rows| {
                rows.iter()
                    .find(|r| r.get("name").map(String::as_str) == Some(name))
            })
            .and_then(|r| r.get("sys_id").cloned())
        {
            return existing;
        }
        let Some(def) = self.tables.get(name).cloned() else {
            return String::new();
        };
        let super_class = match &def.parent {
            Some(parent) => self.ensure_db_object(parent),
            None => String::new(),
        };
        let extendable = self
            .tables
            .values()
            .any(|t| t.parent.as_deref() == Some(name));
        let scope = if name.starts_with(APP_SCOPE) {
            self.find_by("sys_scope", "scope", APP_SCOPE)
                .unwrap_or_else(|| "global".to_owned())
        } else {
            "global".to_owned()
        };
        self.seed_row(
            "sys_db_object",
            &[
                ("name", name),
                ("label", &def.label),
                ("super_class", &super_class),
                ("sys_scope", &scope),
                ("is_extendable", if extendable { "true" } else { "false" }),
            ],
        )
    }

    fn write_dictionary(&mut self, name: &str) {
        let Some(def) = self.tables.get(name).cloned() else {
            return;
        };
        let collection_label = def.label.clone();
        self.seed_row(
            "sys_dictionary",
            &[
                ("name", name),
                ("element", ""),
                ("column_label", &collection_label),
                ("internal_type", "collection"),
            ],
        );
        for column in &def.columns {
            self.write_dictionary_column(name, column);
        }
    }

    fn write_dictionary_column(&mut self, table_name: &str, column: &Column) {
        let max_length = match column.internal_type.as_str() {
            "GUID" | "reference" => "32",
            "url" | "string" | "email" => "255",
            "journal_input" | "journal_list" => "4000",
            _ => "40",
        };
        let reference = column.reference.clone().unwrap_or_default();
        self.seed_row(
            "sys_dictionary",
            &[
                ("name", table_name),
                ("element", &column.name),
                ("column_label", &column.label),
                ("internal_type", &column.internal_type),
                ("reference", &reference),
                ("max_length", max_length),
                ("default_value", &column.default),
            ],
        );
    }

    fn find_by(&self, table: &str, field: &str, value: &str) -> Option<String> {
        self.rows_of(table)
            .into_iter()
            .find(|(_, r)| r.get(field).map(String::as_str) == Some(value))
            .and_then(|(_, r)| r.get("sys_id").cloned())
    }

    /// The name `column` (a platform name, as in the verified schema) has on this instance,
    /// looked up along `table`'s parents: `u_<column>` for an [`UNVERIFIED_COLUMNS`] entry in
    /// renamed mode. Every emulator read or write of such a column goes through here (or
    /// [`Self::field`]), so the renamed mode cannot break the emulator's own behaviour.
    pub(crate) fn physical(&self, table: &str, column: &str) -> String {
        self.lineage(table)
            .iter()
            .map(|defined_on| instance_name(defined_on, column, self.renamed_columns))
            .find(|name| name != column)
            .unwrap_or_else(|| column.to_owned())
    }

    /// The value of `column` (a platform name) in a record of `table`.
    pub(crate) fn field<'r>(
        &self,
        record: &'r Record,
        table: &str,
        column: &str,
    ) -> Option<&'r str> {
        record
            .get(&self.physical(table, column))
            .map(String::as_str)
    }

    /// Records that are not the integration's, seeded before anything the bot creates, so a
    /// lookup that selected the first row of a table would find them first.
    fn seed_decoys(&mut self, options: &SandboxOptions) {
        let organization = &options.organization_name;
        let tenant = &options.tenant_id;
        let sso = format!("{organization}{DECOY_OIDC_PROVIDER_SUFFIX}");
        let metadata = format!(
            "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
        );
        let config = self.seed_row(
            "oidc_provider_configuration",
            &[
                ("name", &sso),
                ("oidc_url", &metadata),
                ("user_claim", "upn"),
                ("user_field", "email"),
            ],
        );
        let portal = format!("{organization} SSO portal");
        let redirect = format!(
            "https://{}.service-now.com/navpage.do",
            options.instance_name
        );
        self.seed_row(
            "oauth_oidc_entity",
            &[
                ("name", &portal),
                ("type", "oidc_provider"),
                ("client_id", DECOY_OIDC_ENTITY_CLIENT_ID),
                ("client_secret", "decoy-sso-secret"),
                ("redirect_url", &redirect),
                ("oidc_provider_configuration", &config),
            ],
        );
        let connector = format!("{organization} Graph connector");
        let token_url = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token");
        self.seed_row(
            "oauth_entity",
            &[
                ("name", &connector),
                ("type", "oauth_provider"),
                ("client_id", DECOY_OAUTH_PROVIDER_CLIENT_ID),
                ("client_secret", "decoy-graph-secret"),
                ("default_grant_type", "client_credentials"),
                ("token_url", &token_url),
            ],
        );
    }

    /// Hashes the clear passwords in `fields` of a `sys_user` write, as the form (or a write
    /// with `sysparm_input_display_value=true`) does; a value already hashed stays.
    fn hash_passwords(&self, table: &str, fields: &mut Record) {
        if self.root(table) != "sys_user" {
            return;
        }
        for (key, value) in fields.iter_mut() {
            let password = self.column(table, key).is_some_and(|c| c.is_password());
            if password && !value.starts_with("sha256:") {
                *value = hash_password(value);
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // schema helpers
    // --------------------------------------------------------------------------------------

    /// The table and its ancestors, child first.
    fn lineage(&self, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = Some(table.to_owned());
        while let Some(name) = current {
            if out.contains(&name) {
                break;
            }
            current = self.tables.get(&name).and_then(|t| t.parent.clone());
            out.push(name);
        }
        out
    }

    /// The table and all its descendants.
    fn descendants(&self, table: &str) -> Vec<String> {
        let mut out = vec![table.to_owned()];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i].clone();
            for (name, def) in &self.tables {
                if def.parent.as_deref() == Some(parent.as_str()) && !out.contains(name) {
                    out.push(name.clone());
                }
            }
            i += 1;
        }
        out
    }

    /// The root ancestor (for ACL rules).
    fn root(&self, table: &str) -> String {
        self.lineage(table)
            .last()
            .cloned()
            .unwrap_or_else(|| table.to_owned())
    }

    /// Every column of a table, ancestors' first.
    fn columns(&self, table: &str) -> Vec<Column> {
        let mut lineage = self.lineage(table);
        lineage.reverse();
        lineage
            .iter()
            .filter_map(|t| self.tables.get(t))
            .flat_map(|t| t.columns.iter().cloned())
            .collect()
    }

    fn column(&self, table: &str, name: &str) -> Option<Column> {
        self.lineage(table).iter().find_map(|t| {
            self.tables
                .get(t)
                .and_then(|def| def.columns.iter().find(|c| c.name == name).cloned())
        })
    }

    fn display_column(&self, table: &str) -> String {
        self.tables
            .get(table)
            .map(|t| self.physical(table, &t.display))
            .unwrap_or_else(|| "sys_id".to_owned())
    }

    /// Resolves a dot-walked path from `table`; `None` if a part is unknown.
    fn resolve_path(&self, table: &str, path: &str) -> Option<Vec<Column>> {
        let mut out = Vec::new();
        let mut current = table.to_owned();
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let column = self.column(&current, part)?;
            if i + 1 < parts.len() {
                current = column.reference.clone()?;
            }
            out.push(column);
        }
        Some(out)
    }

    /// `(concrete table, record)` of `table` and its descendants, in insertion order.
    fn rows_of(&self, table: &str) -> Vec<(String, &Record)> {
        self.descendants(table)
            .into_iter()
            .flat_map(|t| {
                self.rows
                    .get(&t)
                    .into_iter()
                    .flatten()
                    .map(move |r| (t.clone(), r))
            })
            .collect()
    }

    fn find_record(&self, table: &str, sys_id: &str) -> Option<(String, &Record)> {
        self.rows_of(table)
            .into_iter()
            .find(|(_, r)| r.get("sys_id").map(String::as_str) == Some(sys_id))
    }

    /// The value at a resolved path (walking references).
    fn value_at(&self, record: &Record, path: &[Column]) -> String {
        let mut current: Option<Record> = Some(record.clone());
        let mut value = String::new();
        for (i, column) in path.iter().enumerate() {
            let Some(rec) = current.take() else {
                return String::new();
            };
            value = rec.get(&column.name).cloned().unwrap_or_default();
            if i + 1 < path.len() {
                let target = column.reference.clone().unwrap_or_default();
                current = self.find_record(&target, &value).map(|(_, r)| r.clone());
            }
        }
        value
    }

    fn display_of(&self, column: &Column, table: &str, value: &str) -> String {
        if column.is_password() {
            return String::new();
        }
        if let Some(target) = &column.reference {
            if value.is_empty() {
                return String::new();
            }
            let display = self.display_column(target);
            return self
                .find_record(target, value)
                .and_then(|(_, r)| r.get(&display).cloned())
                .unwrap_or_default();
        }
        let lineage = self.lineage(table);
        self.rows_of("sys_choice")
            .into_iter()
            .find(|(_, r)| {
                r.get("element") == Some(&column.name)
                    && r.get("value").map(String::as_str) == Some(value)
                    && r.get("name").is_some_and(|n| lineage.contains(n))
            })
            .and_then(|(_, r)| r.get("label").cloned())
            .unwrap_or_else(|| value.to_owned())
    }

    fn property(&self, name: &str) -> Option<String> {
        self.rows_of("sys_properties")
            .into_iter()
            .find(|(_, r)| r.get("name").map(String::as_str) == Some(name))
            .and_then(|(_, r)| r.get("value").cloned())
    }

    fn link(&self, table: &str, sys_id: &str) -> String {
        format!("{}/api/now/table/{table}/{sys_id}", self.base_url)
    }

    // --------------------------------------------------------------------------------------
    // auth and ACLs
    // --------------------------------------------------------------------------------------

    fn caller_for(&self, user_sys_id: &str) -> Option<Caller> {
        let (_, user) = self.find_record("sys_user", user_sys_id)?;
        if user.get("active").map(String::as_str) != Some("true") {
            return None;
        }
        let roles = self
            .rows_of("sys_user_has_role")
            .into_iter()
            .filter(|(_, r)| r.get("user").map(String::as_str) == Some(user_sys_id))
            .filter_map(|(_, r)| r.get("role").cloned())
            .filter_map(|role_id| {
                self.find_record("sys_user_role", &role_id)
                    .and_then(|(_, r)| r.get("name").cloned())
            })
            .collect();
        Some(Caller {
            sys_id: user_sys_id.to_owned(),
            user_name: user.get("user_name").cloned().unwrap_or_default(),
            roles,
        })
    }

    fn check_password(&self, user_name: &str, password: &str) -> Option<Caller> {
        let (_, user) = self
            .rows_of("sys_user")
            .into_iter()
            .find(|(_, r)| r.get("user_name").map(String::as_str) == Some(user_name))?;
        let stored = user.get("user_password")?;
        if stored.is_empty() || *stored != hash_password(password) {
            return None;
        }
        if user.get("locked_out").map(String::as_str) == Some("true") {
            return None;
        }
        let sys_id = user.get("sys_id")?.clone();
        self.caller_for(&sys_id)
    }

    /// Basic, an `/oauth_token.do` bearer token, or an external OIDC bearer (an Entra JWT
    /// accepted through `oauth_oidc_entity` and its `oidc_provider_configuration`).
    fn authenticate(
        &mut self,
        headers: &HeaderMap,
        oidc: Option<(&SigningKeys, &Directory, &str)>,
    ) -> Option<(Caller, AuthMethod)> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
        let (scheme, credentials) = value.split_once(' ')?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, password) = decoded.split_once(':')?;
            return self
                .check_password(user, password)
                .map(|caller| (caller, AuthMethod::Basic));
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            if credentials.split('.').count() == 3 {
                let (keys, dir, entra_base) = oidc?;
                return self
                    .oidc_caller(keys, dir, entra_base, credentials)
                    .map(|caller| (caller, AuthMethod::Bearer));
            }
            let grant = self.tokens.get(credentials)?.clone();
            if grant.expires <= now() {
                self.tokens.remove(credentials);
                return None;
            }
            return self
                .caller_for(&grant.user_sys_id)
                .map(|caller| (caller, AuthMethod::OAuth));
        }
        None
    }

    /// The user an external OIDC bearer maps to, as ServiceNow's "OIDC provider to verify ID
    /// tokens" does: the entity whose Client ID equals `aud`, the issuer of its provider
    /// configuration's metadata URL (v1 `sts.windows.net` or v2), then `sys_user` where the
    /// configured user field equals the configured claim.
    ///
    /// Column reads of the OIDC tables in this mapping (and nowhere else in the bearer path),
    /// all through [`Self::field`] (so renamed columns are found):
    /// `oauth_oidc_entity`: `client_id`, `active`, `oidc_provider_configuration`;
    /// `oidc_provider_configuration`: `active`, `oidc_url`, `user_claim`, `user_field`.
    fn oidc_caller(
        &self,
        keys: &SigningKeys,
        dir: &Directory,
        entra_base: &str,
        token: &str,
    ) -> Option<Caller> {
        let claims = keys.verify_any_audience(token).ok()?;
        let aud = claims.get("aud")?.as_str()?;
        let entity_table = "oauth_oidc_entity";
        let (_, entity) = self.rows_of(entity_table).into_iter().find(|(_, r)| {
            self.field(r, entity_table, "client_id") == Some(aud)
                && self.field(r, entity_table, "active") == Some("true")
        })?;
        let config_table = "oidc_provider_configuration";
        let config_id = self.field(entity, entity_table, "oidc_provider_configuration")?;
        let (_, config) = self.find_record(config_table, config_id)?;
        if self.field(config, config_table, "active") == Some("false") {
            return None;
        }
        let metadata = url::Url::parse(self.field(config, config_table, "oidc_url")?).ok()?;
        let tenant_segment = metadata.path_segments()?.next()?;
        let tid = dir.resolve_tenant(tenant_segment)?;
        let expected_issuer = if metadata.path().contains("/v2.0/") {
            format!("{entra_base}/{tid}/v2.0")
        } else {
            format!("https://sts.windows.net/{tid}/")
        };
        if claims.get("iss").and_then(Value::as_str) != Some(expected_issuer.as_str()) {
            return None;
        }
        let claim = self.field(config, config_table, "user_claim")?;
        let value = claims.get(claim)?.as_str()?;
        let field = match self.field(config, config_table, "user_field") {
            None | Some("" | "User ID" | "user_id") => "user_name",
            Some("Email") => "email",
            Some(other) => other,
        };
        let user = self.find_by("sys_user", field, value)?;
        let (_, record) = self.find_record("sys_user", &user)?;
        if record.get("locked_out").map(String::as_str) == Some("true") {
            return None;
        }
        self.caller_for(&user)
    }

    fn can_read_table(&self, caller: &Caller, table: &str) -> bool {
        caller.is_admin() || !ADMIN_READ_TABLES.contains(&self.root(table).as_str())
    }

    fn can_read_row(&self, caller: &Caller, table: &str, record: &Record) -> bool {
        if caller.is_admin() {
            return true;
        }
        if record
            .get("sys_id")
            .is_some_and(|id| self.hidden_rows.contains(id))
        {
            return false;
        }
        if let Some(role) = record.get("sys_id").and_then(|id| self.read_roles.get(id))
            && !caller.roles.contains(role)
        {
            return false;
        }
        let root = self.root(table);
        if ADMIN_READ_TABLES.contains(&root.as_str()) {
            return false;
        }
        if root == "sys_user_has_role" {
            return record.get("user") == Some(&caller.sys_id);
        }
        true
    }

    fn can_write(&self, caller: &Caller, table: &str) -> bool {
        if caller.is_admin() {
            return true;
        }
        let root = self.root(table);
        match root.as_str() {
            "incident" | "sys_journal_field" => {
                INCIDENT_WRITERS.iter().any(|r| caller.roles.contains(*r))
            }
            other if other.starts_with(APP_SCOPE) => {
                caller.roles.contains(&format!("{APP_SCOPE}.administrator"))
            }
            _ => false,
        }
    }

    // --------------------------------------------------------------------------------------
    // writes
    // --------------------------------------------------------------------------------------

    /// Stores a JSON value as ServiceNow would: strings as they are, numbers and booleans as
    /// text, null as "", `{value}` objects by their value.
    fn stringify(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Object(map) => map
                .get("value")
                .map(Self::stringify)
                .unwrap_or_else(|| value.to_string()),
            Value::Array(_) => value.to_string(),
        }
    }

    /// Keeps only known, writable columns of `table` (plus sys_* when `keep_sys`).
    fn accept_fields(&self, table: &str, body: &Map<String, Value>, keep_sys: bool) -> Record {
        let mut out = Record::new();
        for (key, value) in body {
            let Some(column) = self.column(table, key) else {
                continue;
            };
            let is_sys = key.starts_with("sys_") && key != "sys_domain" && key != "sys_scope";
            if is_sys && !(keep_sys || key == "sys_id") {
                continue;
            }
            let mut text = Self::stringify(value);
            if column.is_boolean() {
                text = match text.as_str() {
                    "1" | "true" | "TRUE" | "True" => "true".to_owned(),
                    "0" | "false" | "FALSE" | "False" | "" => "false".to_owned(),
                    _ => text,
                };
            }
            out.insert(key.clone(), text);
        }
        out
    }

    /// Inserts `fields` (already filtered) into `table`, running the business rules.
    fn insert(
        &mut self,
        table: &str,
        mut fields: Record,
        caller: &Caller,
        keep_sys: bool,
    ) -> Result<String, String> {
        if !self.tables.contains_key(table) {
            return Err(format!("Invalid table {table}"));
        }
        let stamp = sn_datetime(now());
        let sys_id = match fields.remove("sys_id") {
            Some(id)
                if id.len() == 32
                    && id.chars().all(|c| c.is_ascii_hexdigit())
                    && self.find_record(&self.root(table), &id).is_none() =>
            {
                id.to_ascii_lowercase()
            }
            _ => new_sys_id(),
        };
        let mut record = Record::new();
        for column in self.columns(table) {
            record.insert(column.name.clone(), column.default.clone());
        }
        record.insert("sys_id".to_owned(), sys_id.clone());
        record.insert("sys_class_name".to_owned(), table.to_owned());
        record.insert("sys_created_on".to_owned(), stamp.clone());
        record.insert("sys_updated_on".to_owned(), stamp.clone());
        record.insert("sys_created_by".to_owned(), caller.user_name.clone());
        record.insert("sys_updated_by".to_owned(), caller.user_name.clone());
        record.insert("sys_mod_count".to_owned(), "0".to_owned());
        let mut journal = Vec::new();
        for (key, value) in fields {
            let Some(column) = self.column(table, &key) else {
                continue;
            };
            if column.is_journal() {
                if !value.is_empty() {
                    journal.push((key, value));
                }
                continue;
            }
            if key.starts_with("sys_") && !keep_sys && key != "sys_domain" && key != "sys_scope" {
                continue;
            }
            record.insert(key, value);
        }
        self.before_insert(table, &mut record, caller, &stamp);
        self.rows
            .entry(table.to_owned())
            .or_default()
            .push(record.clone());
        let journal_note = journal.last().map(|(_, value)| value.clone());
        for (element, value) in journal {
            self.add_journal(table, &sys_id, &element, &value, &caller.user_name);
        }
        self.after_insert(table, &record);
        self.fire_push(table, &sys_id, None, journal_note);
        Ok(sys_id)
    }

    fn before_insert(&mut self, table: &str, record: &mut Record, caller: &Caller, stamp: &str) {
        if self.root(table) == "incident" {
            if record.get("number").is_none_or(String::is_empty) {
                record.insert("number".to_owned(), format!("INC{:07}", self.next_incident));
                self.next_incident += 1;
            }
            if record.get("opened_at").is_none_or(String::is_empty) {
                let opened = record
                    .get("sys_created_on")
                    .cloned()
                    .unwrap_or_else(|| stamp.to_owned());
                record.insert("opened_at".to_owned(), opened);
            }
            if record.get("opened_by").is_none_or(String::is_empty) && !caller.sys_id.is_empty() {
                record.insert("opened_by".to_owned(), caller.sys_id.clone());
            }
            incident_state_rules(record, caller, stamp);
        }
    }

    fn after_insert(&mut self, table: &str, record: &Record) {
        if self.root(table) == "oauth_entity" && table != "oauth_oidc_entity" {
            // The system-generated default profile of an application registry.
            let name = format!(
                "{} default_profile",
                record.get("name").cloned().unwrap_or_default()
            );
            let grant = record
                .get("default_grant_type")
                .cloned()
                .unwrap_or_default();
            let entity = record.get("sys_id").cloned().unwrap_or_default();
            self.seed_row(
                "oauth_entity_profile",
                &[
                    ("name", &name),
                    ("oauth_entity", &entity),
                    ("grant_type", &grant),
                    ("default", "true"),
                ],
            );
        }
    }

    fn add_journal(&mut self, table: &str, sys_id: &str, element: &str, value: &str, by: &str) {
        let stamp = sn_datetime(now());
        let mut rec = Record::new();
        for column in self.columns("sys_journal_field") {
            rec.insert(column.name.clone(), column.default.clone());
        }
        for (k, v) in [
            ("sys_id", new_sys_id()),
            ("sys_class_name", "sys_journal_field".to_owned()),
            ("sys_created_on", stamp.clone()),
            ("sys_updated_on", stamp),
            ("sys_created_by", by.to_owned()),
            ("sys_updated_by", by.to_owned()),
            ("name", table.to_owned()),
            ("element", element.to_owned()),
            ("element_id", sys_id.to_owned()),
            ("value", value.to_owned()),
        ] {
            rec.insert(k.to_owned(), v);
        }
        self.rows
            .entry("sys_journal_field".to_owned())
            .or_default()
            .push(rec);
    }

    /// Applies `fields` to a record; returns the concrete table, or `None` if it is missing.
    fn update(
        &mut self,
        table: &str,
        sys_id: &str,
        fields: Record,
        caller: &Caller,
    ) -> Option<String> {
        let (concrete, before) = self.find_record(table, sys_id)?;
        let previous_state = before.get("state").cloned();
        let mut journal = Vec::new();
        let mut changes = Record::new();
        for (key, value) in fields {
            let Some(column) = self.column(&concrete, &key) else {
                continue;
            };
            if key == "sys_id" {
                continue;
            }
            if column.is_journal() {
                if !value.is_empty() {
                    journal.push((key, value));
                }
                continue;
            }
            changes.insert(key, value);
        }
        let stamp = sn_datetime(now());
        let is_incident = self.root(&concrete) == "incident";
        let rows = self.rows.get_mut(&concrete)?;
        let record = rows
            .iter_mut()
            .find(|r| r.get("sys_id").map(String::as_str) == Some(sys_id))?;
        let mut changed = !journal.is_empty();
        for (key, value) in changes {
            if record.get(&key) != Some(&value) {
                record.insert(key, value);
                changed = true;
            }
        }
        if changed {
            if is_incident {
                incident_state_rules(record, caller, &stamp);
            }
            let count: u64 = record
                .get("sys_mod_count")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            record.insert("sys_mod_count".to_owned(), (count + 1).to_string());
            record.insert("sys_updated_on".to_owned(), stamp);
            record.insert("sys_updated_by".to_owned(), caller.user_name.clone());
        }
        let journal_note = journal.last().map(|(_, value)| value.clone());
        for (element, value) in journal {
            self.add_journal(&concrete, sys_id, &element, &value, &caller.user_name);
        }
        if changed {
            self.fire_push(&concrete, sys_id, previous_state, journal_note);
        }
        Some(concrete)
    }

    fn delete(&mut self, table: &str, sys_id: &str) -> bool {
        let Some((concrete, _)) = self.find_record(table, sys_id) else {
            return false;
        };
        if let Some(rows) = self.rows.get_mut(&concrete) {
            rows.retain(|r| r.get("sys_id").map(String::as_str) != Some(sys_id));
        }
        true
    }

    // --------------------------------------------------------------------------------------
    // reads
    // --------------------------------------------------------------------------------------

    /// Matching `(concrete table, record)` in query order; `invalid` tells whether some part of
    /// the query was ignored.
    fn select(&self, table: &str, query: &EncodedQuery) -> Vec<(String, Record)> {
        let mut rows: Vec<(String, Record)> = self
            .rows_of(table)
            .into_iter()
            .filter(|(_, r)| query.matches(self, table, r))
            .map(|(t, r)| (t, r.clone()))
            .collect();
        if !query.order.is_empty() {
            rows.sort_by(|(_, a), (_, b)| {
                for (path, desc) in &query.order {
                    let numeric = path.last().is_some_and(Column::is_numeric);
                    let ordering =
                        compare_values(&self.value_at(a, path), &self.value_at(b, path), numeric);
                    let ordering = if *desc { ordering.reverse() } else { ordering };
                    if ordering != Ordering::Equal {
                        return ordering;
                    }
                }
                Ordering::Equal
            });
        }
        rows
    }

    fn render(&self, table: &str, record: &Record, opts: &RenderOptions) -> Map<String, Value> {
        let mut out = Map::new();
        let paths: Vec<(String, Vec<Column>)> = match &opts.fields {
            Some(fields) => fields
                .iter()
                .filter_map(|f| self.resolve_path(table, f).map(|p| (f.clone(), p)))
                .collect(),
            None => self
                .columns(table)
                .into_iter()
                .map(|c| (c.name.clone(), vec![c]))
                .collect(),
        };
        for (key, path) in paths {
            let Some(last) = path.last() else {
                continue;
            };
            let owner_table = if path.len() > 1 {
                path[path.len() - 2].reference.clone().unwrap_or_default()
            } else {
                table.to_owned()
            };
            let raw = self.value_at(record, &path);
            let value = if last.is_password() || last.is_journal() {
                String::new()
            } else {
                raw
            };
            let rendered = self.render_value(last, &owner_table, &value, opts);
            out.insert(key, rendered);
        }
        out
    }

    fn render_value(
        &self,
        column: &Column,
        table: &str,
        value: &str,
        opts: &RenderOptions,
    ) -> Value {
        let link = column
            .reference
            .as_ref()
            .filter(|_| !value.is_empty() && !opts.exclude_links)
            .map(|target| self.link(target, value));
        match opts.display {
            DisplayMode::Value => match link {
                Some(link) => json!({"link": link, "value": value}),
                None => Value::String(value.to_owned()),
            },
            DisplayMode::Display => {
                let display = self.display_of(column, table, value);
                match link {
                    Some(link) => json!({"display_value": display, "link": link}),
                    None => Value::String(display),
                }
            }
            DisplayMode::All => {
                let display = self.display_of(column, table, value);
                match link {
                    Some(link) => json!({"display_value": display, "link": link, "value": value}),
                    None => json!({"display_value": display, "value": value}),
                }
            }
        }
    }

    fn raw_export(&self, table: &str, record: &Record) -> Map<String, Value> {
        record
            .iter()
            .map(|(k, v)| {
                let masked = self.column(table, k).is_some_and(|c| c.is_password());
                let v = if masked { String::new() } else { v.clone() };
                (k.clone(), Value::String(v))
            })
            .collect()
    }

    // --------------------------------------------------------------------------------------
    // handle API
    // --------------------------------------------------------------------------------------

    pub(crate) fn export_records(&self, table: &str) -> Option<Vec<Map<String, Value>>> {
        self.tables.get(table)?;
        Some(
            self.rows_of(table)
                .into_iter()
                .map(|(t, r)| self.raw_export(&t, r))
                .collect(),
        )
    }

    pub(crate) fn stored_value(&self, table: &str, sys_id: &str, column: &str) -> Option<String> {
        let (t, r) = self.find_record(table, sys_id)?;
        self.field(r, &t, column).map(str::to_owned)
    }

    pub(crate) fn export_record(&self, table: &str, sys_id: &str) -> Option<Map<String, Value>> {
        let (t, r) = self.find_record(table, sys_id)?;
        Some(self.raw_export(&t, r))
    }

    pub(crate) fn export_query(&self, table: &str, query: &str) -> Option<Vec<Map<String, Value>>> {
        self.tables.get(table)?;
        let parsed = EncodedQuery::parse(self, table, query);
        Some(
            self.select(table, &parsed)
                .iter()
                .map(|(t, r)| self.raw_export(t, r))
                .collect(),
        )
    }

    pub(crate) fn insert_as_system(
        &mut self,
        table: &str,
        fields: &Value,
    ) -> Result<String, String> {
        let Value::Object(map) = fields else {
            return Err("fields must be a JSON object".to_owned());
        };
        if !self.tables.contains_key(table) {
            return Err(format!("Invalid table {table}"));
        }
        let mut accepted = self.accept_fields(table, map, true);
        self.hash_passwords(table, &mut accepted);
        self.insert(table, accepted, &self.system_caller(), true)
    }

    pub(crate) fn update_as_system(
        &mut self,
        table: &str,
        sys_id: &str,
        fields: &Value,
    ) -> Result<(), String> {
        let Value::Object(map) = fields else {
            return Err("fields must be a JSON object".to_owned());
        };
        let (concrete, _) = self
            .find_record(table, sys_id)
            .ok_or_else(|| format!("no record {sys_id} in {table}"))?;
        let mut accepted = self.accept_fields(&concrete, map, false);
        self.hash_passwords(&concrete, &mut accepted);
        let caller = self.system_caller();
        self.update(table, sys_id, accepted, &caller)
            .map(|_| ())
            .ok_or_else(|| format!("no record {sys_id} in {table}"))
    }

    pub(crate) fn delete_as_system(&mut self, table: &str, sys_id: &str) -> bool {
        self.delete(table, sys_id)
    }

    fn system_caller(&self) -> Caller {
        self.find_by("sys_user", "user_name", "admin")
            .and_then(|id| self.caller_for(&id))
            .unwrap_or_else(Caller::system)
    }

    pub(crate) fn add_column(
        &mut self,
        table: &str,
        element: &str,
        internal_type: &str,
        label: Option<&str>,
    ) -> Result<(), String> {
        if !is_column_name(element) {
            return Err(format!("invalid column name {element:?}"));
        }
        if self.column(table, element).is_some() {
            return Ok(());
        }
        let column = col(element, label.unwrap_or(element), internal_type);
        let def = self
            .tables
            .get_mut(table)
            .ok_or_else(|| format!("Invalid table {table}"))?;
        def.columns.push(column.clone());
        let affected = self.descendants(table);
        for t in affected {
            if let Some(rows) = self.rows.get_mut(&t) {
                for row in rows.iter_mut() {
                    row.entry(column.name.clone()).or_default();
                }
            }
        }
        self.write_dictionary_column(table, &column);
        Ok(())
    }

    /// Adds a table (for the app's own tables, whose schema is not public).
    pub(crate) fn add_table(
        &mut self,
        name: &str,
        label: &str,
        columns: &[(&str, &str)],
    ) -> Result<(), String> {
        if !is_column_name(name) {
            return Err(format!("invalid table name {name:?}"));
        }
        if self.tables.contains_key(name) {
            return Err(format!("table {name} exists"));
        }
        let cols = columns
            .iter()
            .map(|(n, kind)| col(n, n, kind))
            .collect::<Vec<_>>();
        if cols.iter().any(|c| !is_column_name(&c.name)) {
            return Err("invalid column name".to_owned());
        }
        let display = cols
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "sys_id".to_owned());
        self.tables
            .insert(name.to_owned(), table(label, None, &display, cols));
        self.ensure_db_object(name);
        self.write_dictionary(name);
        Ok(())
    }

    pub(crate) fn set_push_target(&mut self, target: Option<PushTarget>) {
        self.push_target = target;
    }

    pub(crate) fn set_read_role(&mut self, sys_id: &str, role: Option<&str>) {
        match role {
            Some(role) => {
                self.read_roles.insert(sys_id.to_owned(), role.to_owned());
            }
            None => {
                self.read_roles.remove(sys_id);
            }
        }
    }

    pub(crate) fn set_row_hidden(&mut self, sys_id: &str, hidden: bool) {
        if hidden {
            self.hidden_rows.insert(sys_id.to_owned());
        } else {
            self.hidden_rows.remove(sys_id);
        }
    }

    /// Posts a signed change of a case record to the push target, like the Business Rule;
    /// sent from a task so the world lock is not held, unordered like async rules.
    fn fire_push(
        &self,
        table: &str,
        sys_id: &str,
        previous_state: Option<String>,
        note: Option<String>,
    ) {
        let Some(target) = &self.push_target else {
            return;
        };
        if self.root(table) != target.table && table != target.table {
            return;
        }
        let Some((concrete, record)) = self.find_record(table, sys_id) else {
            return;
        };
        if !target.filter.trim().is_empty() {
            let query = EncodedQuery::parse(self, &concrete, &target.filter);
            if !query.matches(self, &concrete, record) {
                return;
            }
        }
        let mut fields = Map::new();
        for name in &target.fields {
            let Some(column) = self.column(&concrete, name) else {
                continue;
            };
            let value = record.get(name).cloned().unwrap_or_default();
            let display = self.display_of(&column, &concrete, &value);
            fields.insert(
                name.clone(),
                json!({"value": value, "display_value": display}),
            );
        }
        let current_state = record.get("state").cloned();
        let previous_display = match (previous_state, self.column(&concrete, "state")) {
            (Some(previous), Some(column)) if Some(&previous) != current_state.as_ref() => {
                Some(self.display_of(&column, &concrete, &previous))
            }
            _ => None,
        };
        let mut body = json!({"table": target.table, "record": fields});
        if let Some(previous) = previous_display {
            body["previous_state"] = Value::String(previous);
        }
        if let Some(note) = note {
            body["note"] = Value::String(note);
        }
        let Ok(body) = serde_json::to_vec(&body) else {
            return;
        };
        let timestamp = now().timestamp();
        let signature =
            crate::notify::sources::push::sign(target.secret.as_bytes(), timestamp, &body);
        let url = target.url.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let sent = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .header("x-m365bot-timestamp", timestamp.to_string())
                .header("x-m365bot-signature", signature)
                .body(body)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => tracing::warn!(
                    status = response.status().as_u16(),
                    "sandbox ServiceNow: the bot refused a pushed case change"
                ),
                Err(err) => tracing::warn!(
                    error = %err,
                    "sandbox ServiceNow: cannot push a case change to the bot"
                ),
            }
        });
    }

    pub(crate) fn remove_role(&mut self, user_name: &str, role: &str) -> bool {
        let (Some(user), Some(role)) = (
            self.find_by("sys_user", "user_name", user_name),
            self.find_by("sys_user_role", "name", role),
        ) else {
            return false;
        };
        let Some(rows) = self.rows.get_mut("sys_user_has_role") else {
            return false;
        };
        let before = rows.len();
        rows.retain(|r| !(r.get("user") == Some(&user) && r.get("role") == Some(&role)));
        rows.len() != before
    }

    pub(crate) fn grant_role(&mut self, user_name: &str, role: &str) -> bool {
        let (Some(user), Some(role)) = (
            self.find_by("sys_user", "user_name", user_name),
            self.find_by("sys_user_role", "name", role),
        ) else {
            return false;
        };
        self.seed_row("sys_user_has_role", &[("user", &user), ("role", &role)]);
        true
    }

    pub(crate) fn set_cross_scope_readable(&mut self, table_name: &str, readable: bool) {
        let Some(id) = self.find_by("sys_db_object", "name", table_name) else {
            return;
        };
        let (read, access) = if readable {
            ("true", "public")
        } else {
            ("false", "package_private")
        };
        let mut fields = Map::new();
        fields.insert(self.physical("sys_db_object", "read_access"), json!(read));
        fields.insert(self.physical("sys_db_object", "access"), json!(access));
        let fields = Value::Object(fields);
        let _ = self.update_as_system("sys_db_object", &id, &fields);
        if !readable {
            // What the app's scripts would log once they hit the refusal (reference §1.9).
            let message = format!(
                "Read operation against '{table_name}' from scope '{APP_SCOPE}' has been refused due to the table's cross-scope access policy"
            );
            self.seed_row(
                "syslog",
                &[
                    ("level", "2"),
                    ("source", "x_mioms_m365_assit"),
                    ("message", &message),
                ],
            );
        }
    }

    // --------------------------------------------------------------------------------------
    // OAuth
    // --------------------------------------------------------------------------------------

    /// The client's OAuth Application User (sys_id), when the id and secret are right.
    fn oauth_client(&self, client_id: &str, client_secret: &str) -> Option<String> {
        let table = "oauth_entity";
        self.rows_of(table)
            .into_iter()
            .find(|(_, r)| {
                self.field(r, table, "client_id") == Some(client_id)
                    && self.field(r, table, "type") == Some("client")
                    && self.field(r, table, "active") == Some("true")
            })
            .filter(|(_, r)| self.field(r, table, "client_secret") == Some(client_secret))
            .map(|(_, r)| {
                self.field(r, table, "application_user")
                    .unwrap_or_default()
                    .to_owned()
            })
    }

    fn issue_token(&mut self, user_sys_id: &str, with_refresh: bool) -> Value {
        let access = random_token(86);
        let expires = now() + ChronoDuration::seconds(ACCESS_TOKEN_SECS + 1);
        self.tokens.insert(
            access.clone(),
            Grant {
                user_sys_id: user_sys_id.to_owned(),
                expires,
            },
        );
        let mut body = json!({
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_SECS,
            "access_token": access,
        });
        if with_refresh {
            let refresh = random_token(86);
            self.refresh_tokens.insert(
                refresh.clone(),
                Grant {
                    user_sys_id: user_sys_id.to_owned(),
                    expires: now() + ChronoDuration::days(100),
                },
            );
            body["refresh_token"] = Value::String(refresh);
        }
        body
    }
}

/// Incident state side effects: resolved/closed stamps and `active`.
fn incident_state_rules(record: &mut Record, caller: &Caller, stamp: &str) {
    let state = record.get("state").cloned().unwrap_or_default();
    record.insert("incident_state".to_owned(), state.clone());
    let active = !matches!(state.as_str(), "6" | "7" | "8");
    record.insert("active".to_owned(), active.to_string());
    if state == "6" && record.get("resolved_at").is_none_or(String::is_empty) {
        record.insert("resolved_at".to_owned(), stamp.to_owned());
        if !caller.sys_id.is_empty() {
            record.insert("resolved_by".to_owned(), caller.sys_id.clone());
        }
    }
    if state == "7" && record.get("closed_at").is_none_or(String::is_empty) {
        record.insert("closed_at".to_owned(), stamp.to_owned());
        if !caller.sys_id.is_empty() {
            record.insert("closed_by".to_owned(), caller.sys_id.clone());
        }
    }
}

/// Compares two stored values: numerically when asked and both parse, else as text (which
/// orders `YYYY-MM-DD HH:MM:SS` correctly). Empty sorts first.
fn compare_values(a: &str, b: &str, numeric: bool) -> Ordering {
    if numeric && let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    a.cmp(b)
}

// ------------------------------------------------------------------------------------------
// encoded queries
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Like,
    NotLike,
    StartsWith,
    EndsWith,
    In,
    NotIn,
    Ge,
    Gt,
    Le,
    Lt,
    IsEmpty,
    IsNotEmpty,
    Between,
}

/// Operators, longest first so that `>=` wins over `>` and `NOT LIKE` over `LIKE`.
const OPERATORS: &[(&str, Op)] = &[
    ("ISNOTEMPTY", Op::IsNotEmpty),
    ("ISEMPTY", Op::IsEmpty),
    ("NOT LIKE", Op::NotLike),
    ("NOT IN", Op::NotIn),
    ("STARTSWITH", Op::StartsWith),
    ("ENDSWITH", Op::EndsWith),
    ("BETWEEN", Op::Between),
    ("LIKE", Op::Like),
    ("IN", Op::In),
    ("!=", Op::Ne),
    (">=", Op::Ge),
    ("<=", Op::Le),
    ("=", Op::Eq),
    (">", Op::Gt),
    ("<", Op::Lt),
];

#[derive(Debug, Clone)]
struct Condition {
    path: Vec<Column>,
    op: Op,
    value: String,
}

/// A parsed `sysparm_query`: OR of `^NQ` groups; each group an AND of clauses; each clause an
/// OR of conditions (`^OR`).
#[derive(Debug, Clone, Default)]
struct EncodedQuery {
    groups: Vec<Vec<Vec<Condition>>>,
    order: Vec<(Vec<Column>, bool)>,
    /// Some part was not understood (unknown field or operator) and was ignored.
    invalid: bool,
}

/// Splits on `^`, where `^^` stands for a literal caret.
fn split_terms(query: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut chars = query.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '^' {
            if chars.peek() == Some(&'^') {
                chars.next();
                current.push('^');
            } else {
                terms.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    terms.push(current);
    terms
}

/// `javascript:gs.dateGenerate('2025-01-01','10:00:00')` → `2025-01-01 10:00:00`.
fn literal_value(value: &str) -> String {
    let Some(args) = value
        .strip_prefix("javascript:gs.dateGenerate(")
        .and_then(|rest| rest.strip_suffix(')'))
    else {
        return value.to_owned();
    };
    let parts: Vec<String> = args
        .split(',')
        .map(|p| p.trim().trim_matches('\'').trim_matches('"').to_owned())
        .collect();
    match parts.as_slice() {
        [date, time] => format!("{date} {time}"),
        [date] => format!("{date} 00:00:00"),
        _ => value.to_owned(),
    }
}

impl EncodedQuery {
    fn parse(state: &SnState, table: &str, query: &str) -> Self {
        let mut parsed = Self {
            groups: vec![Vec::new()],
            ..Self::default()
        };
        if query.trim().is_empty() {
            return parsed;
        }
        for term in split_terms(query) {
            if term.is_empty() || term == "EQ" {
                continue;
            }
            if let Some(field) = term.strip_prefix("ORDERBYDESC") {
                match state.resolve_path(table, field) {
                    Some(path) => parsed.order.push((path, true)),
                    None => parsed.invalid = true,
                }
                continue;
            }
            if let Some(field) = term.strip_prefix("ORDERBY") {
                match state.resolve_path(table, field) {
                    Some(path) => parsed.order.push((path, false)),
                    None => parsed.invalid = true,
                }
                continue;
            }
            if term.starts_with("GROUPBY") {
                continue;
            }
            let (mode, body) = if let Some(rest) = term.strip_prefix("NQ") {
                parsed.groups.push(Vec::new());
                ("and", rest)
            } else if let Some(rest) = term.strip_prefix("OR") {
                ("or", rest)
            } else {
                ("and", term.as_str())
            };
            if body.is_empty() {
                continue;
            }
            let Some(condition) = Self::condition(state, table, body) else {
                parsed.invalid = true;
                continue;
            };
            let Some(group) = parsed.groups.last_mut() else {
                continue;
            };
            match (mode, group.last_mut()) {
                ("or", Some(clause)) => clause.push(condition),
                _ => group.push(vec![condition]),
            }
        }
        parsed
    }

    fn condition(state: &SnState, table: &str, term: &str) -> Option<Condition> {
        let field_len = term
            .char_indices()
            .find(|(_, c)| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '.')
            })
            .map(|(i, _)| i)
            .unwrap_or(term.len());
        let (field, rest) = term.split_at(field_len);
        let path = state.resolve_path(table, field)?;
        let (op, value) = OPERATORS
            .iter()
            .find_map(|(token, op)| rest.strip_prefix(token).map(|v| (*op, v)))?;
        Some(Condition {
            path,
            op,
            value: literal_value(value),
        })
    }

    /// Whether a record matches; an invalid query matches nothing when the instance says so.
    fn matches(&self, state: &SnState, _table: &str, record: &Record) -> bool {
        self.groups.iter().any(|group| {
            group.iter().all(|clause| {
                clause
                    .iter()
                    .any(|condition| condition.matches(&state.value_at(record, &condition.path)))
            })
        })
    }
}

impl Condition {
    fn matches(&self, actual: &str) -> bool {
        let Some(column) = self.path.last() else {
            return true;
        };
        let normalize = |v: &str| -> String {
            if column.is_boolean() {
                match v {
                    "1" | "true" => "true".to_owned(),
                    "0" | "false" | "" => "false".to_owned(),
                    other => other.to_owned(),
                }
            } else {
                v.to_owned()
            }
        };
        let actual = normalize(actual);
        let expected = normalize(&self.value);
        let lower_actual = actual.to_lowercase();
        let lower_expected = expected.to_lowercase();
        let numeric = column.is_numeric();
        match self.op {
            Op::Eq => actual == expected,
            Op::Ne => actual != expected,
            Op::Like => lower_actual.contains(&lower_expected),
            Op::NotLike => !lower_actual.contains(&lower_expected),
            Op::StartsWith => lower_actual.starts_with(&lower_expected),
            Op::EndsWith => lower_actual.ends_with(&lower_expected),
            Op::In => expected.split(',').any(|v| normalize(v.trim()) == actual),
            Op::NotIn => !expected.split(',').any(|v| normalize(v.trim()) == actual),
            Op::IsEmpty => actual.is_empty(),
            Op::IsNotEmpty => !actual.is_empty(),
            Op::Ge | Op::Gt | Op::Le | Op::Lt => {
                if actual.is_empty() {
                    return false;
                }
                let ordering = compare_values(&actual, &expected, numeric);
                match self.op {
                    Op::Ge => ordering != Ordering::Less,
                    Op::Gt => ordering == Ordering::Greater,
                    Op::Le => ordering != Ordering::Greater,
                    _ => ordering == Ordering::Less,
                }
            }
            Op::Between => {
                let Some((low, high)) = expected.split_once('@') else {
                    return false;
                };
                let low = literal_value(low);
                let high = literal_value(high);
                !actual.is_empty()
                    && compare_values(&actual, &low, numeric) != Ordering::Less
                    && compare_values(&actual, &high, numeric) != Ordering::Greater
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DisplayMode {
    Value,
    Display,
    All,
}

#[derive(Debug, Clone)]
struct RenderOptions {
    fields: Option<Vec<String>>,
    display: DisplayMode,
    exclude_links: bool,
}

impl RenderOptions {
    fn from_params(params: &[(String, String)]) -> Self {
        let get = |name: &str| super::query_param(params, name);
        let fields = get("sysparm_fields")
            .map(|f| {
                f.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            })
            .filter(|f| !f.is_empty());
        let display = match get("sysparm_display_value")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("true") => DisplayMode::Display,
            Some("all") => DisplayMode::All,
            _ => DisplayMode::Value,
        };
        let exclude_links =
            get("sysparm_exclude_reference_link").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Self {
            fields,
            display,
            exclude_links,
        }
    }
}

/// The ServiceNow error envelope.
pub(crate) fn error_body(message: &str, detail: Option<&str>) -> Value {
    json!({
        "error": {"message": message, "detail": detail},
        "status": "failure",
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
        .headers_mut()
        .insert("server", HeaderValue::from_static("ServiceNow"));
    response
}

fn error_response(status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    json_response(status, &error_body(message, detail))
}

fn unauthenticated() -> Response {
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "User Not Authenticated",
        Some("Required to provide Auth information"),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("BASIC realm=\"Service-now\""),
    );
    response
}

fn not_found_record() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "No Record found",
        Some("Record doesn't exist or ACL restricts the record retrieval"),
    )
}

fn invalid_table(table: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        &format!("Invalid table {table}"),
        None,
    )
}

fn acl_refused(action: &str) -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "Operation Failed",
        Some(&format!(
            "ACL Exception {action} Failed due to security constraints"
        )),
    )
}

/// The answer of an injected fault.
pub(crate) fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::Throttle(seconds) => {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit exceeded",
                Some("Rate limit of 100 requests per hour for Table API exceeded"),
            );
            let reset = (now() + ChronoDuration::seconds(seconds as i64)).timestamp();
            let headers = response.headers_mut();
            for (name, value) in [
                ("retry-after", seconds.to_string()),
                ("x-ratelimit-limit", "100".to_owned()),
                ("x-ratelimit-reset", reset.to_string()),
                (
                    "x-ratelimit-rule",
                    "5c5e4d1fdb0b1010a4f0e3a8f39619c2".to_owned(),
                ),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            response
        }
        Fault::ServerError(status) | Fault::HtmlError(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            error_response(
                status,
                status.canonical_reason().unwrap_or("Server Error"),
                None,
            )
        }
    }
}

/// The ServiceNow emulator's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let layer = FaultLayer {
        shared: shared.clone(),
        emulator: Emulator::ServiceNow,
    };
    Router::new()
        .route("/api/now/table/{table}", any(table_api))
        .route("/api/now/table/{table}/{sys_id}", any(table_api))
        .route("/api/now/{version}/table/{table}", any(table_api))
        .route("/api/now/{version}/table/{table}/{sys_id}", any(table_api))
        .route("/oauth_token.do", post(oauth_token))
        .fallback(unknown_resource)
        .layer(axum::middleware::from_fn_with_state(
            layer,
            super::faults::middleware,
        ))
        .with_state(shared)
}

async fn unknown_resource() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "Requested URI does not represent any resource",
        None,
    )
}

async fn table_api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path(path): Path<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let version = path.get("version").map(String::as_str).unwrap_or("v1");
    if version != "v1" && version != "v2" {
        return unknown_resource().await;
    }
    let Some(table) = path.get("table").cloned() else {
        return unknown_resource().await;
    };
    let sys_id = path.get("sys_id").cloned();
    let params = query_pairs(&uri);
    let mut world = shared.world();
    let world = &mut *world;
    let sn = &mut world.sn;
    let oidc = (&shared.keys, &world.dir, shared.urls.entra.as_str());
    let Some((caller, auth_method)) = sn.authenticate(&headers, Some(oidc)) else {
        return unauthenticated();
    };
    let authenticated = Authenticated {
        user: caller.user_name.clone(),
        method: auth_method,
    };
    if !sn.tables.contains_key(&table) {
        return invalid_table(&table);
    }
    let mut response = match (method.clone(), sys_id) {
        (Method::GET, None) => list(sn, &caller, &table, version, uri.path(), &params),
        (Method::GET, Some(id)) => read_one(sn, &caller, &table, &id, &params),
        (Method::POST, None) => create(sn, &caller, &table, &params, &body),
        (Method::PUT | Method::PATCH, Some(id)) => update(sn, &caller, &table, &id, &params, &body),
        (Method::DELETE, Some(id)) => delete(sn, &caller, &table, &id),
        _ => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not Supported",
            Some(&format!("{method} is not supported on this resource")),
        ),
    };
    response
        .headers_mut()
        .insert("x-is-logged-in", HeaderValue::from_static("true"));
    response.extensions_mut().insert(authenticated);
    response
}

fn list(
    sn: &SnState,
    caller: &Caller,
    table: &str,
    version: &str,
    request_path: &str,
    params: &[(String, String)],
) -> Response {
    let get = |name: &str| super::query_param(params, name);
    let encoded = match get("sysparm_query") {
        Some(q) => q.to_owned(),
        None => params
            .iter()
            .filter(|(k, _)| !k.starts_with("sysparm_"))
            .map(|(k, v)| format!("{k}={}", v.replace('^', "^^")))
            .collect::<Vec<_>>()
            .join("^"),
    };
    if !sn.can_read_table(caller, table) && !encoded.trim().is_empty() {
        return error_response(
            StatusCode::FORBIDDEN,
            "Insufficient rights to query records",
            Some("Field(s) present in the query do not have permission to be read"),
        );
    }
    let query = EncodedQuery::parse(sn, table, &encoded);
    let rows = if query.invalid
        && sn
            .property("glide.invalid_query.returns_no_rows")
            .as_deref()
            == Some("true")
    {
        Vec::new()
    } else {
        sn.select(table, &query)
    };
    let limit = get("sysparm_limit")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(10_000);
    let offset = get("sysparm_offset")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let total = rows.len();
    let opts = RenderOptions::from_params(params);
    // sysparm_limit is applied before the ACL check: pages can come back short.
    let result: Vec<Value> = rows
        .iter()
        .skip(offset)
        .take(limit)
        .filter(|(t, r)| sn.can_read_row(caller, t, r))
        .map(|(_, r)| Value::Object(sn.render(table, r, &opts)))
        .collect();
    if result.is_empty() && version == "v1" {
        return error_response(
            StatusCode::NOT_FOUND,
            "No Record found",
            Some("Records not found"),
        );
    }
    let mut response = json_response(StatusCode::OK, &json!({ "result": result }));
    let headers = response.headers_mut();
    let no_count = get("sysparm_no_count").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !no_count && let Ok(value) = HeaderValue::from_str(&total.to_string()) {
        headers.insert("x-total-count", value);
    }
    let suppress =
        get("sysparm_suppress_pagination_header").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !suppress {
        let link = link_header(&sn.base_url, request_path, params, offset, limit, total);
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    response
}

fn page_url(
    base: &str,
    path: &str,
    params: &[(String, String)],
    offset: usize,
    limit: usize,
) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if k != "sysparm_offset" && k != "sysparm_limit" {
            serializer.append_pair(k, v);
        }
    }
    serializer.append_pair("sysparm_offset", &offset.to_string());
    serializer.append_pair("sysparm_limit", &limit.to_string());
    format!("{base}{path}?{}", serializer.finish())
}

/// `Link` with `next`, `prev`, `first` and `last`, in the order of the documentation.
fn link_header(
    base: &str,
    path: &str,
    params: &[(String, String)],
    offset: usize,
    limit: usize,
    total: usize,
) -> String {
    let mut links = Vec::new();
    if offset.saturating_add(limit) < total {
        links.push((
            page_url(base, path, params, offset.saturating_add(limit), limit),
            "next",
        ));
    }
    if offset > 0 {
        links.push((
            page_url(base, path, params, offset.saturating_sub(limit), limit),
            "prev",
        ));
    }
    links.push((page_url(base, path, params, 0, limit), "first"));
    let last = if total == 0 {
        0
    } else {
        ((total - 1) / limit) * limit
    };
    links.push((page_url(base, path, params, last, limit), "last"));
    links
        .into_iter()
        .map(|(url, rel)| format!("<{url}>;rel=\"{rel}\""))
        .collect::<Vec<_>>()
        .join(",")
}

fn read_one(
    sn: &SnState,
    caller: &Caller,
    table: &str,
    sys_id: &str,
    params: &[(String, String)],
) -> Response {
    match sn.find_record(table, sys_id) {
        Some((concrete, record)) if sn.can_read_row(caller, &concrete, record) => {
            let opts = RenderOptions::from_params(params);
            json_response(
                StatusCode::OK,
                &json!({ "result": sn.render(table, record, &opts) }),
            )
        }
        _ => not_found_record(),
    }
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, Box<Response>> {
    let bad = || {
        error_response(
            StatusCode::BAD_REQUEST,
            "Exception while reading request",
            Some("The payload is not valid JSON."),
        )
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| Box::new(bad()))?;
    match value {
        Value::Object(map) => Ok(map),
        // Only the first record of an array is processed (KB0534905).
        Value::Array(items) => match items.into_iter().next() {
            Some(Value::Object(map)) => Ok(map),
            _ => Err(Box::new(bad())),
        },
        _ => Err(Box::new(bad())),
    }
}

/// `sysparm_input_display_value=true`: values are display values; a password is the clear text
/// the instance hashes. Without it a password value is stored as sent (and no login matches it).
fn input_display_values(params: &[(String, String)]) -> bool {
    params
        .iter()
        .any(|(key, value)| key == "sysparm_input_display_value" && value == "true")
}

fn create(
    sn: &mut SnState,
    caller: &Caller,
    table: &str,
    params: &[(String, String)],
    body: &Bytes,
) -> Response {
    if !sn.can_write(caller, table) {
        return acl_refused("Insert");
    }
    let map = match parse_body(body) {
        Ok(map) => map,
        Err(response) => return *response,
    };
    let mut fields = sn.accept_fields(table, &map, false);
    if input_display_values(params) {
        sn.hash_passwords(table, &mut fields);
    }
    let sys_id = match sn.insert(table, fields, caller, false) {
        Ok(id) => id,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message, None),
    };
    let opts = RenderOptions::from_params(params);
    let Some((_, record)) = sn.find_record(table, &sys_id) else {
        return not_found_record();
    };
    let mut response = json_response(
        StatusCode::CREATED,
        &json!({ "result": sn.render(table, record, &opts) }),
    );
    if let Ok(location) = HeaderValue::from_str(&sn.link(table, &sys_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn update(
    sn: &mut SnState,
    caller: &Caller,
    table: &str,
    sys_id: &str,
    params: &[(String, String)],
    body: &Bytes,
) -> Response {
    let visible = sn
        .find_record(table, sys_id)
        .is_some_and(|(t, r)| sn.can_read_row(caller, &t, r) || sn.can_write(caller, &t));
    if !visible {
        return not_found_record();
    }
    if !sn.can_write(caller, table) {
        return acl_refused("Update");
    }
    let map = match parse_body(body) {
        Ok(map) => map,
        Err(response) => return *response,
    };
    let Some((concrete, _)) = sn.find_record(table, sys_id) else {
        return not_found_record();
    };
    let mut fields = sn.accept_fields(&concrete, &map, false);
    if input_display_values(params) {
        sn.hash_passwords(&concrete, &mut fields);
    }
    if sn.update(table, sys_id, fields, caller).is_none() {
        return not_found_record();
    }
    let opts = RenderOptions::from_params(params);
    match sn.find_record(table, sys_id) {
        Some((_, record)) => json_response(
            StatusCode::OK,
            &json!({ "result": sn.render(table, record, &opts) }),
        ),
        None => not_found_record(),
    }
}

fn delete(sn: &mut SnState, caller: &Caller, table: &str, sys_id: &str) -> Response {
    let visible = sn
        .find_record(table, sys_id)
        .is_some_and(|(t, r)| sn.can_read_row(caller, &t, r) || sn.can_write(caller, &t));
    if !visible {
        return not_found_record();
    }
    if !sn.can_write(caller, table) {
        return acl_refused("Delete");
    }
    if sn.delete(table, sys_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found_record()
    }
}

fn oauth_failure() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"error_description": "access_denied", "error": "server_error"}),
    )
}

async fn oauth_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let mut world = shared.world();
    let sn = &mut world.sn;
    let Some(application_user) = sn.oauth_client(field("client_id"), field("client_secret")) else {
        return oauth_failure();
    };
    let body = match field("grant_type") {
        "password" => match sn.check_password(field("username"), field("password")) {
            Some(caller) => sn.issue_token(&caller.sys_id, true),
            None => return oauth_failure(),
        },
        "client_credentials" => {
            let enabled = sn
                .property("glide.oauth.inbound.client.credential.grant_type.enabled")
                .as_deref()
                == Some("true");
            let user = application_user;
            if !enabled || sn.caller_for(&user).is_none() {
                return oauth_failure();
            }
            sn.issue_token(&user, false)
        }
        "refresh_token" => {
            let Some(grant) = sn.refresh_tokens.get(field("refresh_token")).cloned() else {
                return oauth_failure();
            };
            if grant.expires <= now() || sn.caller_for(&grant.user_sys_id).is_none() {
                return oauth_failure();
            }
            sn.issue_token(&grant.user_sys_id, true)
        }
        _ => return oauth_failure(),
    };
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SnState {
        SnState::seed(&SandboxOptions::default(), "http://sn.test")
    }

    fn numbers(sn: &SnState, query: &str) -> Vec<String> {
        let q = EncodedQuery::parse(sn, "incident", query);
        sn.select("incident", &q)
            .into_iter()
            .filter_map(|(_, r)| r.get("number").cloned())
            .collect()
    }

    #[test]
    fn caret_escape_and_terms() {
        assert_eq!(
            split_terms("a=1^b=x^^y^ORc=2"),
            vec!["a=1", "b=x^y", "ORc=2"]
        );
    }

    #[test]
    fn query_operators_follow_the_encoded_query_rules() {
        let sn = state();
        assert_eq!(numbers(&sn, "number=INC0010002"), vec!["INC0010002"]);
        assert_eq!(
            numbers(&sn, "number=INC0010001^ORnumber=INC0010003").len(),
            2
        );
        assert_eq!(
            numbers(&sn, "short_descriptionLIKEteams"),
            vec!["INC0010002"]
        );
        assert_eq!(numbers(&sn, "numberININC0010001,INC0010004").len(), 2);
        assert_eq!(
            numbers(&sn, "bogus_field=1^number=INC0010003"),
            vec!["INC0010003"]
        );
        assert_eq!(numbers(&sn, "correlation_idISEMPTY"), vec!["INC0010003"]);
        let desc = numbers(&sn, "ORDERBYDESCnumber");
        assert_eq!(desc.first().map(String::as_str), Some("INC0010004"));
        assert_eq!(numbers(&sn, "active=true^state!=2").len(), 2);
        assert!(numbers(&sn, "sys_created_on>=2999-01-01 00:00:00").is_empty());
        assert_eq!(numbers(&sn, "sys_created_on>=2000-01-01 00:00:00").len(), 4);
        assert_eq!(
            numbers(&sn, "caller_id.user_name=jane.doe^number=INC0010001"),
            vec!["INC0010001"]
        );
    }

    #[test]
    fn dictionary_describes_columns() {
        let sn = state();
        let rows = sn
            .export_query(
                "sys_dictionary",
                "name=oidc_provider_configuration^element=user_claim",
            )
            .unwrap_or_default();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["internal_type"], "string");
    }
}
