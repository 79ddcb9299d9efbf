//! Role enablement from chat (guide step 9): `grant` / `revoke` add or remove
//! `sys_user_has_role` rows for `<scope>.insights_user` or `<scope>.administrator`, idempotent
//! and audited; `roles` lists who holds them.

use serde_json::{Map, json};

use super::cards::{self, Holder};
use super::store::{AuditEntry, LinkStore};
use crate::app::App;
use crate::core::command::AppRole;
use crate::core::{InboundEvent, Platform, Reply, Tone};
use crate::identity::{self, ChatUser, RoleNeed};
use crate::integration::roles as app_roles;
use crate::upstream::servicenow::{EncodedQuery, Operator, Record, ServiceNowClient};

/// One role change at a time in this process, so a double click cannot add a second row.
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn role_name(app: &App, role: AppRole) -> String {
    let suffix = match role {
        AppRole::InsightsUser => app_roles::INSIGHTS_USER,
        AppRole::Administrator => app_roles::ADMINISTRATOR,
    };
    format!("{}.{suffix}", app.settings.servicenow.app_scope)
}

fn both_roles(app: &App) -> [String; 2] {
    [
        role_name(app, AppRole::InsightsUser),
        role_name(app, AppRole::Administrator),
    ]
}

/// The ServiceNow user a `grant` / `revoke` names: a mention, an e-mail or a user name.
async fn resolve_target(
    app: &App,
    event: &InboundEvent,
    client: &ServiceNowClient,
    typed: &str,
) -> Result<Record, Reply> {
    let typed = typed.trim();
    let mention = event
        .mentions
        .iter()
        .find(|m| !m.text.is_empty() && typed.contains(&m.text))
        .or_else(|| {
            (typed.starts_with("<at>") && event.mentions.len() == 1).then(|| &event.mentions[0])
        });
    let addresses: Vec<String> = if let Some(mention) = mention {
        let identity = identity::platform_identity(app, event, &mention.user_id).await?;
        let addresses = identity.addresses();
        if addresses.is_empty() {
            return Err(Reply::notice(
                Tone::Attention,
                "I could not find that user's e-mail",
                &format!(
                    "The chat did not tell me the e-mail address of **{}**.",
                    mention.name.clone().unwrap_or_else(|| mention.text.clone())
                ),
                Some("Type their e-mail address or ServiceNow user ID instead of the mention."),
            ));
        }
        addresses
    } else {
        let plain = typed
            .trim_start_matches('@')
            .trim_matches(|c: char| c == '<' || c == '>')
            .trim()
            .to_lowercase();
        if plain.is_empty() || plain.contains(char::is_whitespace) || plain.len() > 200 {
            return Err(Reply::notice(
                Tone::Attention,
                "Whom do you mean?",
                &format!(
                    "I cannot tell a user from **{}**.",
                    typed.chars().take(80).collect::<String>()
                ),
                Some(
                    "Mention the user (@Name), or type their e-mail address or ServiceNow user ID.",
                ),
            ));
        }
        vec![plain]
    };
    match identity::find_sys_user(client, &addresses).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(Reply::notice(
            Tone::Attention,
            "No ServiceNow user matches",
            &format!(
                "I found no active ServiceNow user whose e-mail or user ID is **{}**.",
                addresses.join("** or **")
            ),
            Some(
                "Check the spelling, or ask a ServiceNow admin to set the e-mail address on the user's record.",
            ),
        )),
        Err(err) => Err(err.card()),
    }
}

async fn role_sys_id(client: &ServiceNowClient, role: &str) -> Result<String, Reply> {
    let query = EncodedQuery::new().eq("name", role);
    let text = match query.text() {
        Ok(text) => text,
        Err(err) => return Err(identity::upstream_failure_card(&err.into())),
    };
    match client
        .query("sys_user_role", text, &["sys_id", "name"], Some(1))
        .await
    {
        Ok(rows) => rows
            .into_iter()
            .next()
            .and_then(|r| r.sys_id().map(str::to_owned))
            .ok_or_else(|| {
                Reply::notice(
                    Tone::Attention,
                    "ServiceNow has no such role",
                    &format!("The role **{role}** does not exist in ServiceNow."),
                    Some("Install the Microsoft 365 support integration app (scope x_mioms_m365_assis) in ServiceNow, or check **servicenow.app_scope**."),
                )
            }),
        Err(err) => Err(identity::upstream_failure_card(&err)),
    }
}

fn platform_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Teams => "teams",
        Platform::Slack => "slack",
    }
}

/// Who changes which role of whom, for the audit.
struct Change<'a> {
    app: &'a App,
    event: &'a InboundEvent,
    admin: &'a ChatUser,
    action: &'a str,
    target: &'a str,
    role: &'a str,
}

impl Change<'_> {
    async fn audit(&self, outcome: &str, detail: Option<String>) {
        let entry = AuditEntry {
            action: self.action.to_owned(),
            outcome: outcome.to_owned(),
            actor_platform: platform_name(self.event.platform).to_owned(),
            actor_user_id: self.event.actor.user_id.clone(),
            actor_servicenow_user: Some(self.admin.user_name.clone()),
            target_servicenow_user: Some(self.target.to_owned()),
            role: Some(self.role.to_owned()),
            detail,
        };
        if let Err(err) = LinkStore::new(&self.app.db).audit(&entry).await {
            tracing::error!(error = %err, "role change not audited");
        }
    }
}

/// `grant` (`grant == true`) or `revoke` `role` for the user named by `typed`.
pub async fn change(
    app: &App,
    event: &InboundEvent,
    typed: &str,
    role: AppRole,
    grant: bool,
) -> Reply {
    let admin = match identity::require(app, event, RoleNeed::ServiceNowAdmin).await {
        Ok(admin) => admin,
        Err(refusal) => return refusal,
    };
    let client = match identity::servicenow(app) {
        Ok(client) => client,
        Err(card) => return card,
    };
    let role = role_name(app, role);
    let action = if grant { "grant" } else { "revoke" };
    let target = match resolve_target(app, event, client, typed).await {
        Ok(target) => target,
        Err(card) => return card,
    };
    let target_id = target.sys_id().unwrap_or_default().to_owned();
    let target_name = target.str("user_name").unwrap_or_default().to_owned();
    let role_id = match role_sys_id(client, &role).await {
        Ok(id) => id,
        Err(card) => return card,
    };
    let change = Change {
        app,
        event,
        admin: &admin,
        action,
        target: &target_name,
        role: &role,
    };
    let guard = CHANGES.lock().await;
    let query = EncodedQuery::new()
        .eq("user", &target_id)
        .eq("role", &role_id);
    let text = match query.text() {
        Ok(text) => text,
        Err(err) => return identity::upstream_failure_card(&err.into()),
    };
    let rows = match client
        .query("sys_user_has_role", text, &["sys_id", "inherited"], None)
        .await
    {
        Ok(rows) => rows,
        Err(err) => return identity::upstream_failure_card(&err),
    };
    let (outcome, tone, headline) = if grant {
        if rows.is_empty() {
            let mut fields = Map::new();
            fields.insert("user".to_owned(), json!(target_id));
            fields.insert("role".to_owned(), json!(role_id));
            if let Err(err) = client.create("sys_user_has_role", &fields).await {
                change.audit("failed", Some(err.to_string())).await;
                return identity::upstream_failure_card(&err);
            }
            (
                "granted",
                Tone::Good,
                format!("**{target_name}** now holds **{role}**."),
            )
        } else {
            (
                "already_held",
                Tone::Default,
                format!("**{target_name}** already holds **{role}**; nothing changed."),
            )
        }
    } else {
        let direct: Vec<&Record> = rows
            .iter()
            .filter(|r| r.bool("inherited") != Some(true))
            .collect();
        if rows.is_empty() {
            (
                "not_held",
                Tone::Default,
                format!("**{target_name}** does not hold **{role}**; nothing changed."),
            )
        } else if direct.is_empty() {
            change.audit("inherited", None).await;
            return Reply::notice(
                Tone::Warning,
                "That role is inherited",
                &format!(
                    "**{target_name}** holds **{role}** through a group or another role, so it cannot be revoked from the user."
                ),
                Some(
                    "Remove the user from the group (or the role that contains it) in ServiceNow.",
                ),
            );
        } else {
            for row in direct {
                let sys_id = row.sys_id().unwrap_or_default();
                if let Err(err) = client.delete("sys_user_has_role", sys_id).await {
                    change.audit("failed", Some(err.to_string())).await;
                    return identity::upstream_failure_card(&err);
                }
            }
            (
                "revoked",
                Tone::Good,
                format!("**{target_name}** no longer holds **{role}**."),
            )
        }
    };
    change.audit(outcome, None).await;
    drop(guard);
    holders_card(app, client, Some((tone, headline))).await
}

/// `roles`: who holds the integration's roles.
pub async fn list(app: &App, event: &InboundEvent) -> Reply {
    if let Err(refusal) = identity::require(app, event, RoleNeed::ServiceNowAdmin).await {
        return refusal;
    }
    let client = match identity::servicenow(app) {
        Ok(client) => client,
        Err(card) => return card,
    };
    holders_card(app, client, None).await
}

async fn holders_card(
    app: &App,
    client: &ServiceNowClient,
    headline: Option<(Tone, String)>,
) -> Reply {
    let names = both_roles(app);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let query = EncodedQuery::new().and("role.name", Operator::In, &refs.join(","));
    let text = match query.text() {
        Ok(text) => text,
        Err(err) => return identity::upstream_failure_card(&err.into()),
    };
    let rows = match client
        .query(
            "sys_user_has_role",
            text,
            &["user", "user.user_name", "user.name", "role.name"],
            None,
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) => return identity::upstream_failure_card(&err),
    };
    let sections: Vec<(String, Vec<Holder>)> = names
        .iter()
        .map(|role| {
            let mut holders: Vec<Holder> = rows
                .iter()
                .filter(|r| r.str("role.name") == Some(role.as_str()))
                .filter_map(|r| {
                    let user_name = r.non_empty("user.user_name")?.to_owned();
                    Some(Holder {
                        user_name,
                        name: r.non_empty("user.name").map(str::to_owned),
                    })
                })
                .collect();
            holders.sort_by(|a, b| a.user_name.cmp(&b.user_name));
            holders.dedup();
            (role.clone(), holders)
        })
        .collect();
    cards::role_list(
        "Microsoft 365 support integration roles",
        headline,
        &sections,
    )
}
