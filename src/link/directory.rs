//! Does a Microsoft 365 account hold an admin role that can manage support requests? Read
//! with the bot's app-only Graph client: `GET /roleManagement/directory/roleAssignments?
//! $filter=principalId eq '{oid}'` (needs `RoleManagement.Read.Directory`).

use crate::upstream::graph::{GraphClient, GraphError, PERMISSION_ROLE_ASSIGNMENTS};

/// Built-in Entra roles by template id, with their display names.
pub const KNOWN_ROLES: &[(&str, &str)] = &[
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
    ),
    (
        "f023fd81-a637-4b56-95fd-791ac0226033",
        "Service Support Administrator",
    ),
    (
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
        "Helpdesk Administrator",
    ),
    ("f2ef992c-3afb-46b9-b7cf-a126ee74c451", "Global Reader"),
    ("fe930be7-5e62-47db-91af-98c3a49a38b1", "User Administrator"),
];

/// The default roles that may manage Microsoft 365 support requests: Global Administrator,
/// Service Support Administrator, Helpdesk Administrator.
pub fn default_accepted_roles() -> Vec<String> {
    KNOWN_ROLES[..3]
        .iter()
        .map(|(id, _)| (*id).to_owned())
        .collect()
}

/// The display name of a role template id (the id itself when unknown).
pub fn role_name(template_id: &str) -> String {
    KNOWN_ROLES
        .iter()
        .find(|(id, _)| id.eq_ignore_ascii_case(template_id))
        .map_or_else(|| template_id.to_owned(), |(_, name)| (*name).to_owned())
}

/// The answer of the role check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleCheck {
    /// The account holds these accepted roles (names).
    Holds(Vec<String>),
    /// It holds none of the accepted roles.
    Missing,
    /// The check could not be made (no Graph access or permission); why.
    Skipped(String),
}

/// Checks the tenant-wide role assignments of `oid` against `accepted` template ids.
/// Without credentials or permission the check is `Skipped` (the caller refuses the link);
/// any other failure is an error.
pub async fn check(
    graph: Option<&GraphClient>,
    oid: &str,
    accepted: &[String],
) -> Result<RoleCheck, GraphError> {
    let Some(graph) = graph else {
        return Ok(RoleCheck::Skipped(format!(
            "the bot has no Microsoft Graph credentials (entra.graph_client_id and entra.graph_client_secret of an app with {PERMISSION_ROLE_ASSIGNMENTS})"
        )));
    };
    let assignments = match graph.role_assignments_of(oid).await {
        Ok(assignments) => assignments,
        Err(err) if err.status() == Some(403) => {
            return Ok(RoleCheck::Skipped(format!(
                "Microsoft Graph refused to list role assignments; grant the bot's Graph app {PERMISSION_ROLE_ASSIGNMENTS}"
            )));
        }
        Err(err) => return Err(err),
    };
    let mut held: Vec<String> = assignments
        .iter()
        .filter(|a| a.directory_scope_id.as_deref().is_none_or(|s| s == "/"))
        .filter(|a| {
            accepted
                .iter()
                .any(|id| id.eq_ignore_ascii_case(&a.role_definition_id))
        })
        .map(|a| role_name(&a.role_definition_id))
        .collect();
    held.sort();
    held.dedup();
    Ok(if held.is_empty() {
        RoleCheck::Missing
    } else {
        RoleCheck::Holds(held)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_known_or_the_id() {
        assert_eq!(
            role_name("62E90394-69F5-4237-9190-012177145E10"),
            "Global Administrator"
        );
        assert_eq!(role_name("x"), "x");
        assert_eq!(default_accepted_roles().len(), 3);
    }
}
