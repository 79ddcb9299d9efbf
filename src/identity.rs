//! Who is the chat user in ServiceNow, and may they do this: chat user → e-mail / UPN (from the
//! platform) → `sys_user` → roles (`sys_user_has_role`). Every refusal is a card naming the
//! missing role.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::App;
pub use crate::core::identity::{PlatformDirectory, PlatformIdentity};
use crate::core::{InboundEvent, Platform, Reply, Tone};
use crate::integration::roles;
use crate::upstream::servicenow::{EncodedQuery, Record, ServiceNowClient, ServiceNowError};

/// How long a resolved chat identity is reused.
const IDENTITY_TTL: Duration = Duration::from_secs(600);

/// A chat user mapped to ServiceNow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatUser {
    /// What the platform said.
    pub platform: PlatformIdentity,
    /// `sys_user.sys_id`.
    pub sys_id: String,
    /// `sys_user.user_name`.
    pub user_name: String,
    /// `sys_user.name`.
    pub display_name: Option<String>,
    /// `sys_user.email`.
    pub email: Option<String>,
    /// Names of the roles the user holds (directly or inherited, as `sys_user_has_role` lists).
    pub roles: Vec<String>,
}

impl ChatUser {
    /// True when the user holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|held| held == role)
    }
}

/// What an action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleNeed {
    /// The ServiceNow admin role (`servicenow.admin_role`, default `admin`): setup, doctor,
    /// grant, revoke.
    ServiceNowAdmin,
    /// `<scope>.administrator`: link-account.
    AppAdministrator,
    /// `<scope>.insights_user` or `<scope>.administrator`: subscribe, status.
    InsightsOrAdministrator,
}

impl RoleNeed {
    /// The role names that satisfy the need (any one of them).
    pub fn roles(self, app: &App) -> Vec<String> {
        let scope = &app.settings.servicenow.app_scope;
        match self {
            Self::ServiceNowAdmin => vec![app.settings.servicenow.admin_role.clone()],
            Self::AppAdministrator => vec![format!("{scope}.{}", roles::ADMINISTRATOR)],
            Self::InsightsOrAdministrator => vec![
                format!("{scope}.{}", roles::INSIGHTS_USER),
                format!("{scope}.{}", roles::ADMINISTRATOR),
            ],
        }
    }
}

/// Cache of platform identities by platform user id.
#[derive(Debug, Default)]
pub struct IdentityCache {
    entries: Mutex<HashMap<String, (Instant, PlatformIdentity)>>,
}

impl IdentityCache {
    fn get(&self, user_id: &str) -> Option<PlatformIdentity> {
        let entries = self.entries.lock().ok()?;
        let (at, identity) = entries.get(user_id)?;
        (at.elapsed() < IDENTITY_TTL).then(|| identity.clone())
    }

    fn put(&self, identity: &PlatformIdentity) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() > 10_000 {
                entries.retain(|_, (at, _)| at.elapsed() < IDENTITY_TTL);
            }
            entries.insert(identity.user_id.clone(), (Instant::now(), identity.clone()));
        }
    }
}

/// Asks the event's platform for the e-mail and UPN of `user_id` (Teams: the conversation
/// member; Slack: `users.info`), cached for ten minutes.
pub async fn platform_identity(
    app: &App,
    event: &InboundEvent,
    user_id: &str,
) -> Result<PlatformIdentity, Reply> {
    if let Some(identity) = app.identities.get(user_id) {
        return Ok(identity);
    }
    let Some(directory) = app.directory(event.platform) else {
        let (name, keys) = match event.platform {
            Platform::Teams => ("Teams", "**bot.app_id**"),
            Platform::Slack => ("Slack", "**slack.enabled** and **slack.bot_token**"),
        };
        return Err(Reply::notice(
            Tone::Attention,
            &format!("{name} is not configured"),
            &format!("This bot has no {name} credentials, so it cannot look up {name} users."),
            Some(&format!("Ask the bot's operator to set {keys}.")),
        ));
    };
    let identity = directory.lookup(event, user_id).await?;
    app.identities.put(&identity);
    Ok(identity)
}

/// The bot's own ServiceNow client, or a card saying what to configure.
pub fn servicenow(app: &App) -> Result<&ServiceNowClient, Reply> {
    app.upstreams.servicenow.as_ref().ok_or_else(|| {
        Reply::notice(
            Tone::Attention,
            "ServiceNow is not configured",
            "The bot has no ServiceNow account, so it cannot check your roles.",
            Some("Ask the bot's operator to set **servicenow.instance_url** and **servicenow.username** / **servicenow.password** (or client id and secret)."),
        )
    })
}

/// Why a chat user could not be mapped to one ServiceNow user.
#[derive(Debug, thiserror::Error)]
pub enum FindUserError {
    /// ServiceNow did not answer as expected.
    #[error(transparent)]
    Upstream(#[from] ServiceNowError),
    /// More than one active, unlocked user has this e-mail or user ID.
    #[error("more than one active ServiceNow user has the e-mail or user ID {0}")]
    Ambiguous(String),
    /// The value cannot be part of a ServiceNow query.
    #[error("{0:?} cannot be looked up")]
    NotSearchable(String),
}

impl FindUserError {
    /// The card that explains the failure and what to do.
    pub fn card(&self) -> Reply {
        match self {
            Self::Upstream(err) => upstream_failure_card(err),
            Self::Ambiguous(address) => Reply::notice(
                Tone::Attention,
                "Two ServiceNow users have this e-mail",
                &format!(
                    "More than one active ServiceNow user has the e-mail or user ID **{}**, so I cannot tell which one you are.",
                    crate::cards::escape_markdown(address)
                ),
                Some(
                    "Ask a ServiceNow admin to make the e-mail unique (User Administration > Users), or to link your account with **link-account**.",
                ),
            ),
            Self::NotSearchable(value) => Reply::notice(
                Tone::Attention,
                "This value cannot be looked up",
                &format!(
                    "**{}** contains characters that cannot be part of a ServiceNow lookup.",
                    crate::cards::escape_markdown(&value.chars().take(80).collect::<String>())
                ),
                Some("Use a plain e-mail address or ServiceNow user ID."),
            ),
        }
    }
}

/// True when `value` may be part of a user lookup: an e-mail address or user ID, without
/// `^`, control characters or a `javascript:` prefix (which ServiceNow may evaluate).
pub fn is_lookup_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 254
        && !value.contains('^')
        && !value.chars().any(char::is_control)
        && !value
            .trim_start()
            .get(..11)
            .is_some_and(|head| head.eq_ignore_ascii_case("javascript:"))
}

const USER_FIELDS: &[&str] = &[
    "sys_id",
    "user_name",
    "name",
    "email",
    "active",
    "locked_out",
];

/// True when the row is an active user who is not locked out.
fn is_usable_user(record: &Record) -> bool {
    record.bool("active") == Some(true) && record.bool("locked_out") != Some(true)
}

/// Finds the one active, unlocked `sys_user` whose e-mail or user name is one of
/// `addresses` (checked in code on every returned row); an error when several match.
pub async fn find_sys_user(
    client: &ServiceNowClient,
    addresses: &[String],
) -> Result<Option<Record>, FindUserError> {
    if let Some(bad) = addresses.iter().find(|a| !is_lookup_value(a)) {
        return Err(FindUserError::NotSearchable(bad.clone()));
    }
    let mut query = EncodedQuery::new();
    for (index, address) in addresses.iter().enumerate() {
        if index > 0 {
            query = query.new_query();
        }
        query = query.eq("active", "true").eq("email", address);
        query = query
            .new_query()
            .eq("active", "true")
            .eq("user_name", address);
    }
    let users = client
        .query(
            "sys_user",
            query.text().map_err(ServiceNowError::from)?,
            USER_FIELDS,
            Some(10),
        )
        .await?;
    let mut found: Vec<Record> = Vec::new();
    for user in users {
        let matches = addresses.iter().any(|address| {
            [user.str("email"), user.str("user_name")]
                .into_iter()
                .flatten()
                .any(|value| value.trim().eq_ignore_ascii_case(address.trim()))
        });
        if matches
            && is_usable_user(&user)
            && !found.iter().any(|known| known.sys_id() == user.sys_id())
        {
            found.push(user);
        }
    }
    if found.len() > 1 {
        return Err(FindUserError::Ambiguous(
            addresses.first().cloned().unwrap_or_default(),
        ));
    }
    Ok(found.pop())
}

/// Reads the `sys_user` with this `sys_id`, when it is active and not locked out.
async fn sys_user_by_id(
    client: &ServiceNowClient,
    sys_id: &str,
) -> Result<Option<Record>, ServiceNowError> {
    if !crate::notify::sources::servicenow::is_sys_id(sys_id) {
        return Ok(None);
    }
    let query = EncodedQuery::new().eq("sys_id", sys_id);
    let users = client
        .query("sys_user", query.text()?, USER_FIELDS, Some(1))
        .await?;
    Ok(users
        .into_iter()
        .find(|user| user.sys_id() == Some(sys_id) && is_usable_user(user)))
}

/// The names of the roles `sys_user_id` holds.
pub async fn user_roles(
    client: &ServiceNowClient,
    sys_user_id: &str,
) -> Result<Vec<String>, ServiceNowError> {
    let query = EncodedQuery::new().eq("user", sys_user_id);
    let rows = client
        .query(
            "sys_user_has_role",
            query.text()?,
            &["role", "role.name"],
            None,
        )
        .await?;
    let mut names: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            row.str("role.name")
                .map(str::to_owned)
                .or_else(|| row.reference("role").and_then(|r| r.display_value))
        })
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Maps a platform identity to its ServiceNow user with roles; `Ok(None)` when no active
/// user has that e-mail or user name.
pub async fn servicenow_user(
    client: &ServiceNowClient,
    identity: &PlatformIdentity,
) -> Result<Option<ChatUser>, FindUserError> {
    let addresses = identity.addresses();
    if addresses.is_empty() {
        return Ok(None);
    }
    let Some(record) = find_sys_user(client, &addresses).await? else {
        return Ok(None);
    };
    Ok(Some(chat_user(client, identity, &record).await?))
}

/// The chat user of a `sys_user` row, with its roles.
async fn chat_user(
    client: &ServiceNowClient,
    identity: &PlatformIdentity,
    record: &Record,
) -> Result<ChatUser, ServiceNowError> {
    let sys_id = record.sys_id().unwrap_or_default().to_owned();
    let roles = user_roles(client, &sys_id).await?;
    Ok(ChatUser {
        platform: identity.clone(),
        sys_id,
        user_name: record.str("user_name").unwrap_or_default().to_owned(),
        display_name: record.non_empty("name").map(str::to_owned),
        email: record.non_empty("email").map(str::to_owned),
        roles,
    })
}

/// The ServiceNow user of the chat user's stored account link, when the link's Entra object
/// id is the one the platform reports for this user (a link beats the e-mail).
async fn linked_user(
    app: &App,
    client: &ServiceNowClient,
    event: &InboundEvent,
    identity: &PlatformIdentity,
) -> Result<Option<ChatUser>, Reply> {
    let Some(oid) = identity
        .aad_object_id
        .as_deref()
        .or(event.actor.aad_object_id.as_deref())
        .filter(|oid| !oid.is_empty())
    else {
        return Ok(None);
    };
    let platform = match event.platform {
        Platform::Teams => "teams",
        Platform::Slack => "slack",
    };
    let link = match crate::link::store::LinkStore::new(&app.db)
        .link(platform, &identity.user_id)
        .await
    {
        Ok(Some(link)) if link.m365_object_id.eq_ignore_ascii_case(oid) => link,
        Ok(_) => return Ok(None),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the account link");
            return Ok(None);
        }
    };
    let record = match sys_user_by_id(client, &link.servicenow_user_sys_id).await {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(None),
        Err(err) => return Err(upstream_failure_card(&err)),
    };
    chat_user(client, identity, &record)
        .await
        .map(Some)
        .map_err(|err| upstream_failure_card(&err))
}

/// Resolves the acting chat user to ServiceNow (any role).
pub async fn resolve_actor(app: &App, event: &InboundEvent) -> Result<ChatUser, Reply> {
    let identity = platform_identity(app, event, &event.actor.user_id).await?;
    if let Some(user) = linked_user(app, servicenow(app)?, event, &identity).await? {
        return Ok(user);
    }
    resolve_identity(app, &identity).await
}

/// Resolves a platform identity to ServiceNow, or a card saying why not.
pub async fn resolve_identity(app: &App, identity: &PlatformIdentity) -> Result<ChatUser, Reply> {
    let client = servicenow(app)?;
    match servicenow_user(client, identity).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => {
            let who = identity.addresses().first().cloned().unwrap_or_else(|| {
                identity
                    .name
                    .clone()
                    .unwrap_or_else(|| "this user".to_owned())
            });
            Err(Reply::notice(
                Tone::Attention,
                "No ServiceNow user matches",
                &format!("I found no active ServiceNow user whose e-mail or user ID is **{who}**."),
                Some(
                    "Ask a ServiceNow admin to set that e-mail address on the user's record (User Administration > Users), then try again.",
                ),
            ))
        }
        Err(err) => Err(err.card()),
    }
}

/// Resolves the actor and checks that they hold one of the roles `need` names; otherwise a
/// card naming the missing role and who can grant it.
pub async fn require(app: &App, event: &InboundEvent, need: RoleNeed) -> Result<ChatUser, Reply> {
    let user = resolve_actor(app, event).await?;
    let accepted = need.roles(app);
    if accepted.iter().any(|role| user.has_role(role)) {
        return Ok(user);
    }
    Err(missing_role_card(app, &user, need, &accepted))
}

/// The refusal card: which role is missing and who can grant it.
pub fn missing_role_card(app: &App, user: &ChatUser, need: RoleNeed, accepted: &[String]) -> Reply {
    let wanted = accepted
        .iter()
        .map(|role| format!("**{role}**"))
        .collect::<Vec<_>>()
        .join(" or ");
    let granter = match need {
        RoleNeed::ServiceNowAdmin => {
            "a ServiceNow admin (User Administration > Users > Roles)".to_owned()
        }
        RoleNeed::AppAdministrator | RoleNeed::InsightsOrAdministrator => format!(
            "a ServiceNow admin, in ServiceNow or here with **grant @you {}**",
            if need == RoleNeed::AppAdministrator {
                roles::ADMINISTRATOR
            } else {
                roles::INSIGHTS_USER
            }
        ),
    };
    let _ = app;
    Reply::Card {
        template: "notice",
        data: json!({
            "tone": Tone::Attention,
            "title": "You need another ServiceNow role",
            "text": format!("This needs the role {wanted}, and your ServiceNow user **{}** does not hold it.", user.user_name),
            "next_step": format!("Ask {granter}."),
        }),
    }
}

/// A card for a ServiceNow call that failed.
pub fn upstream_failure_card(err: &ServiceNowError) -> Reply {
    if let ServiceNowError::UnsafeValue(refused) = err {
        return Reply::notice(
            Tone::Attention,
            "This value cannot be looked up",
            &refused.to_string(),
            Some(
                "Check what was typed (no '^', no line breaks, nothing starting with javascript:) and try again.",
            ),
        );
    }
    Reply::notice(
        Tone::Attention,
        "ServiceNow did not answer as expected",
        &format!("{err}"),
        Some(
            "Check that the instance is up and that the bot's ServiceNow account may read **sys_user** and **sys_user_has_role**; then try again.",
        ),
    )
}
