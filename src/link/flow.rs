//! The linking flow, platform-neutral: chat command → pending sign-in → browser start →
//! Entra ID → callback → checks → link stored in ServiceNow and the database → confirmation.
//! Every outcome of the browser side is an [`Outcome`]: a page for the browser and, when the
//! conversation is known, a card for the chat.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::directory::{self, RoleCheck};
use super::page::{Page, PageTone};
use super::snow::{self, Target};
use super::store::{AccountLink, AuditEntry, ChatAddress, LinkStore, PendingLink, StateUse};
use super::{cards, token};
use crate::app::App;
use crate::core::{InboundEvent, Platform, Reply, Tone};
use crate::db::now_millis;
use crate::identity::{self, RoleNeed};
use crate::upstream::entra::{AuthorizeRequest, Pkce, random_token};

/// Path of the browser's first stop (redirects to Entra ID).
pub const START_PATH: &str = "/auth/link/start";
/// Path Entra ID redirects back to.
pub const CALLBACK_PATH: &str = "/auth/link/callback";
/// Scopes of the sign-in: an ID token with the user's name and UPN.
pub const SIGN_IN_SCOPE: &str = "openid profile email";

/// The Entra app and tenant of the sign-in.
#[derive(Debug, Clone)]
pub struct SignInApp {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Tenant (id or domain).
    pub tenant: String,
    /// `{public_url}/auth/link/callback`.
    pub redirect_uri: String,
}

fn public_base(app: &App) -> String {
    app.settings
        .server
        .public_url
        .as_str()
        .trim_end_matches('/')
        .to_owned()
}

/// The sign-in app from `[link]`, falling back to the bot's Graph app and tenant.
pub fn sign_in_app(app: &App) -> Result<SignInApp, Reply> {
    let settings = &app.settings;
    let link = &settings.link;
    let client_id = link
        .client_id
        .clone()
        .or_else(|| settings.entra.graph_client_id.clone())
        .or_else(|| Some(settings.bot.app_id.clone()))
        .filter(|id| !id.trim().is_empty());
    let client_secret = link
        .client_secret
        .clone()
        .or_else(|| settings.entra.graph_client_secret.clone())
        .or_else(|| settings.bot.app_password.clone())
        .filter(|s| !s.expose_secret().is_empty());
    let tenant = link
        .tenant
        .clone()
        .or_else(|| {
            settings
                .integration
                .as_ref()
                .and_then(|spec| spec.tenant_id.clone().or_else(|| Some(spec.tenant.clone())))
        })
        .or_else(|| Some(settings.bot.tenant_id.clone()))
        .filter(|t| !t.trim().is_empty());
    match (client_id, client_secret, tenant) {
        (Some(client_id), Some(client_secret), Some(tenant)) => Ok(SignInApp {
            client_id,
            client_secret,
            tenant,
            redirect_uri: format!("{}{CALLBACK_PATH}", public_base(app)),
        }),
        _ => Err(Reply::notice(
            Tone::Attention,
            "Account linking is not configured",
            "The bot has no Entra app for the sign-in (client id and secret) or no tenant.",
            Some(
                "Ask the bot's operator to set **link.client_id** and **link.client_secret** (or **entra.graph_client_id** / **entra.graph_client_secret**) and the tenant.",
            ),
        )),
    }
}

/// The PKCE verifier of a state: HMAC-SHA256 of the state under the sign-in app's secret, so it
/// is never stored and only this bot (any replica) can derive it.
pub fn pkce_for(secret: &SecretString, state: &str) -> Option<Pkce> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    let tag = hmac::sign(&key, format!("m365bot link pkce\0{state}").as_bytes());
    Pkce::from_verifier(&URL_SAFE_NO_PAD.encode(tag.as_ref())).ok()
}

fn platform_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Teams => "teams",
        Platform::Slack => "slack",
    }
}

/// The chat's display name for pages (`Microsoft Teams`, `Slack`).
pub fn chat_name(platform: &str) -> &'static str {
    match platform {
        "teams" => "Microsoft Teams",
        "slack" => "Slack",
        _ => "the chat",
    }
}

/// Platforms whose users carry an Entra object id that the signed-in account must match.
fn binds_object_id(platform: &str) -> bool {
    platform == "teams"
}

fn storage_failure(err: &sqlx::Error) -> Reply {
    tracing::error!(error = %err, "account linking storage failed");
    Reply::notice(
        Tone::Attention,
        "I could not save that",
        "The bot's database did not answer.",
        Some("Try again in a minute; if it keeps failing, tell the bot's operator."),
    )
}

fn address_of(event: &InboundEvent, aad_object_id: Option<String>) -> ChatAddress {
    let conversation_id = if event.address.thread_conversation_id.is_empty() {
        event.conversation_id.clone()
    } else {
        event.address.thread_conversation_id.clone()
    };
    ChatAddress {
        platform: platform_name(event.platform).to_owned(),
        chat_user_id: event.actor.user_id.clone(),
        chat_user_name: event.actor.name.clone(),
        aad_object_id,
        conversation_id,
        conversation_type: event.conversation_type.clone(),
        service_url: event.address.service_url.clone(),
        tenant_id: event.address.tenant_id.clone(),
        bot_id: event.address.bot_id.clone(),
    }
}

/// `link-account`: the role check, then a single-use sign-in link.
pub async fn link_account(app: &App, event: &InboundEvent) -> Reply {
    if !event.is_personal() {
        return Reply::notice(
            Tone::Default,
            "Let's do this in private",
            "The sign-in link is for you only, so I hand it out in a 1:1 chat.",
            Some("Open a 1:1 chat with me and type **link-account** there."),
        );
    }
    let user = match identity::require(app, event, RoleNeed::AppAdministrator).await {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    if let Err(card) = sign_in_app(app) {
        return card;
    }
    let aad_object_id = event
        .actor
        .aad_object_id
        .clone()
        .or_else(|| user.platform.aad_object_id.clone())
        .filter(|id| !id.trim().is_empty());
    let address = address_of(event, aad_object_id);
    if binds_object_id(&address.platform) && address.aad_object_id.is_none() {
        return Reply::notice(
            Tone::Attention,
            "I cannot tell which Microsoft 365 account is yours",
            "Teams did not send your Microsoft Entra object id with this message, so I could not check that the account you sign in with is yours.",
            Some("Try again from the Teams desktop or web client."),
        );
    }
    let store = LinkStore::new(&app.db);
    let existing = match store.link(&address.platform, &address.chat_user_id).await {
        Ok(existing) => existing,
        Err(err) => return storage_failure(&err),
    };
    let state = random_token(32);
    let ttl_secs = app.settings.link.state_ttl_secs.max(60);
    let now = now_millis();
    let pending = PendingLink {
        address,
        servicenow_user_sys_id: user.sys_id.clone(),
        servicenow_user_name: user.user_name.clone(),
        nonce: random_token(16),
        created_at: now,
        expires_at: now + i64::try_from(ttl_secs).unwrap_or(600) * 1000,
        consumed_at: None,
    };
    if let Err(err) = store.insert_pending(&state, &pending).await {
        return storage_failure(&err);
    }
    let mut url = match Url::parse(&format!("{}{START_PATH}", public_base(app))) {
        Ok(url) => url,
        Err(err) => {
            tracing::error!(error = %err, "server.public_url does not make a sign-in URL");
            return Reply::notice(
                Tone::Attention,
                "Account linking is not configured",
                "The bot's public URL (server.public_url) does not make a valid sign-in link.",
                Some("Ask the bot's operator to check **server.public_url**."),
            );
        }
    };
    url.query_pairs_mut().append_pair("state", &state);
    cards::sign_in(
        url.as_str(),
        ttl_secs.div_ceil(60),
        &user.user_name,
        existing.as_ref().map(|l| l.m365_upn.as_str()),
    )
}

/// `link-account status`: the stored link of the chat user and what ServiceNow says.
pub async fn link_status(app: &App, event: &InboundEvent) -> Reply {
    let user = match identity::resolve_actor(app, event).await {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let store = LinkStore::new(&app.db);
    let link = match store
        .link(platform_name(event.platform), &event.actor.user_id)
        .await
    {
        Ok(link) => link,
        Err(err) => return storage_failure(&err),
    };
    let Some(link) = link else {
        return Reply::notice(
            Tone::Default,
            "No Microsoft 365 account is linked",
            &format!(
                "Your ServiceNow user **{}** has no linked Microsoft 365 admin account.",
                user.user_name
            ),
            Some(
                "Type **link-account** to link one (needs the role x_mioms_m365_assis.administrator).",
            ),
        );
    };
    let target = Target::from_settings(&app.settings.link);
    let in_servicenow = match identity::servicenow(app) {
        Ok(client) => match target.read(client, &link.servicenow_user_sys_id).await {
            Ok(Some(value)) if value.eq_ignore_ascii_case(&link.m365_upn) => {
                format!("ServiceNow ({}.{}) agrees.", target.table, target.field)
            }
            Ok(Some(value)) => format!(
                "ServiceNow ({}.{}) now says **{value}**: it was changed there.",
                target.table, target.field
            ),
            Ok(None) => format!(
                "ServiceNow ({}.{}) has no account any more: it was cleared there.",
                target.table, target.field
            ),
            Err(err) => format!("ServiceNow could not be read ({err})."),
        },
        Err(_) => "ServiceNow is not configured.".to_owned(),
    };
    let roles = if link.m365_roles.is_empty() {
        "its admin roles were not checked".to_owned()
    } else {
        format!("admin role: {}", link.m365_roles.join(", "))
    };
    let when = chrono::DateTime::from_timestamp_millis(link.linked_at)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    Reply::notice(
        Tone::Good,
        "Your Microsoft 365 account is linked",
        &format!(
            "**{}** ({roles}) is linked to your ServiceNow user **{}** since {when}, by {}. {in_servicenow}",
            link.m365_upn, link.servicenow_user_name, link.linked_by
        ),
        Some("Type **unlink-account** to remove the link."),
    )
}

/// `unlink-account`: removes the link from ServiceNow (if it still names the account) and the
/// database.
pub async fn unlink_account(app: &App, event: &InboundEvent) -> Reply {
    let user = match identity::resolve_actor(app, event).await {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let platform = platform_name(event.platform);
    let store = LinkStore::new(&app.db);
    let link = match store.link(platform, &event.actor.user_id).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            return Reply::notice(
                Tone::Default,
                "Nothing to unlink",
                "No Microsoft 365 account is linked to you.",
                None,
            );
        }
        Err(err) => return storage_failure(&err),
    };
    let client = match identity::servicenow(app) {
        Ok(client) => client,
        Err(card) => return card,
    };
    let target = Target::from_settings(&app.settings.link);
    let current = match target.read(client, &link.servicenow_user_sys_id).await {
        Ok(current) => current,
        Err(err) => return servicenow_card(&err, &target),
    };
    if current
        .as_deref()
        .is_some_and(|value| value.eq_ignore_ascii_case(&link.m365_upn))
        && let Err(err) = target.write(client, &link.servicenow_user_sys_id, "").await
    {
        return servicenow_card(&err, &target);
    }
    let audit = AuditEntry {
        action: "unlink".to_owned(),
        outcome: "unlinked".to_owned(),
        actor_platform: platform.to_owned(),
        actor_user_id: event.actor.user_id.clone(),
        actor_servicenow_user: Some(user.user_name.clone()),
        target_servicenow_user: Some(link.servicenow_user_name.clone()),
        role: None,
        detail: Some(link.m365_upn.clone()),
    };
    if let Err(err) = store
        .delete_link(platform, &event.actor.user_id, &audit)
        .await
    {
        return storage_failure(&err);
    }
    Reply::notice(
        Tone::Good,
        "Microsoft 365 account unlinked",
        &format!(
            "**{}** is no longer linked to your ServiceNow user **{}**.",
            link.m365_upn, link.servicenow_user_name
        ),
        Some("Type **link-account** to link an account again."),
    )
}

fn servicenow_card(
    err: &crate::upstream::servicenow::ServiceNowError,
    target: &Target<'_>,
) -> Reply {
    Reply::notice(
        Tone::Attention,
        "ServiceNow did not take the change",
        &err.to_string(),
        Some(&snow::fix_hint(err, target)),
    )
}

/// What the browser sees and, when the conversation is known, what the chat gets.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The HTML page.
    pub page: Page,
    /// A card for the conversation the link was asked from.
    pub chat: Option<(ChatAddress, Reply)>,
}

impl Outcome {
    fn page_only(page: Page) -> Self {
        Self { page, chat: None }
    }
}

/// A failure after the state was identified: the same words on the page and in the chat.
fn failed(pending: &PendingLink, status: u16, title: &str, text: &str, next_step: &str) -> Outcome {
    let chat = chat_name(&pending.address.platform);
    Outcome {
        page: Page {
            status,
            tone: PageTone::Error,
            title: title.to_owned(),
            message: text.to_owned(),
            next_step: format!("Return to {chat}. {}", strip_markdown(next_step)),
        },
        chat: Some((
            pending.address.clone(),
            Reply::notice(Tone::Attention, title, text, Some(next_step)),
        )),
    }
}

fn strip_markdown(text: &str) -> String {
    text.replace("**", "")
}

fn unknown_state() -> Outcome {
    Outcome::page_only(Page {
        status: 400,
        tone: PageTone::Error,
        title: "This sign-in link is not valid".to_owned(),
        message: "I do not know this sign-in link: it is incomplete, or it is so old that it was deleted. Nothing was linked.".to_owned(),
        next_step: "Return to the chat and type link-account to get a new link.".to_owned(),
    })
}

fn state_problem(used: &StateUse) -> Option<Outcome> {
    match used {
        StateUse::Fresh(_) => None,
        StateUse::Unknown => Some(unknown_state()),
        // Reopening a spent link (a reload, a second tab) shows the page only: the chat
        // already has the outcome of its one use and gets no second card.
        StateUse::Replayed(pending) => Some(Outcome::page_only(
            failed(
                pending,
                400,
                "This sign-in link was already used",
                "Each sign-in link works once. Nothing was changed by this attempt.",
                "Type **link-account status** to see what is linked, or **link-account** for a new link.",
            )
            .page,
        )),
        StateUse::Expired(pending) => Some(failed(
            pending,
            400,
            "This sign-in link has expired",
            &format!(
                "Sign-in links are valid for {} minutes. Nothing was linked.",
                ((pending.expires_at - pending.created_at).max(60_000) + 59_999) / 60_000
            ),
            "Type **link-account** to get a new link.",
        )),
    }
}

/// `GET /auth/link/start?state=…`: the Entra ID sign-in URL, or the reason there is none.
pub async fn start(app: &App, state: Option<&str>) -> Result<Url, Outcome> {
    let Some(state) = state.filter(|s| !s.is_empty() && s.len() <= 200) else {
        return Err(unknown_state());
    };
    let store = LinkStore::new(&app.db);
    let pending = match store.pending(state).await {
        Ok(Some(pending)) => pending,
        Ok(None) => return Err(unknown_state()),
        Err(err) => return Err(database_outcome(&err, None)),
    };
    if pending.consumed_at.is_some() {
        return Err(
            state_problem(&StateUse::Replayed(pending.clone())).unwrap_or_else(unknown_state)
        );
    }
    if pending.expires_at <= now_millis() {
        return Err(
            state_problem(&StateUse::Expired(pending.clone())).unwrap_or_else(unknown_state)
        );
    }
    let sign_in = sign_in_app(app).map_err(|_| not_configured(&pending))?;
    let pkce = pkce_for(&sign_in.client_secret, state).ok_or_else(|| not_configured(&pending))?;
    app.upstreams
        .entra
        .authorize_url(
            &sign_in.tenant,
            &AuthorizeRequest {
                client_id: &sign_in.client_id,
                redirect_uri: &sign_in.redirect_uri,
                scope: SIGN_IN_SCOPE,
                state,
                nonce: &pending.nonce,
                pkce: &pkce,
                login_hint: None,
                prompt: Some("select_account"),
            },
        )
        .map_err(|err| {
            tracing::error!(error = %err, "cannot build the Entra sign-in URL");
            not_configured(&pending)
        })
}

fn not_configured(pending: &PendingLink) -> Outcome {
    failed(
        pending,
        503,
        "Account linking is not configured",
        "The bot has no usable Entra app or tenant for the sign-in. Nothing was linked.",
        "Ask the bot's operator to check the **[link]** settings.",
    )
}

fn database_outcome(err: &sqlx::Error, pending: Option<&PendingLink>) -> Outcome {
    tracing::error!(error = %err, "account linking storage failed");
    let title = "The bot could not save the link";
    let text = "The bot's database did not answer. Nothing was linked.";
    match pending {
        Some(pending) => failed(
            pending,
            500,
            title,
            text,
            "Type **link-account** to try again.",
        ),
        None => Outcome::page_only(Page {
            status: 500,
            tone: PageTone::Error,
            title: title.to_owned(),
            message: text.to_owned(),
            next_step: "Return to the chat and try again in a minute.".to_owned(),
        }),
    }
}

/// The query of `GET /auth/link/callback`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct CallbackParams {
    /// The state sent to Entra ID.
    #[serde(default)]
    pub state: Option<String>,
    /// The authorization code.
    #[serde(default)]
    pub code: Option<String>,
    /// OAuth error (`access_denied`, …).
    #[serde(default)]
    pub error: Option<String>,
    /// Its description (`AADSTS…: …`).
    #[serde(default)]
    pub error_description: Option<String>,
}

/// First line of an Entra error description, without trace and correlation ids, at most 300
/// characters.
fn short_description(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let line = line.split(" Trace ID:").next().unwrap_or(line);
    line.chars().take(300).collect()
}

/// `GET /auth/link/callback`: completes the sign-in, or says why it did not.
pub async fn callback(app: &App, params: &CallbackParams) -> Outcome {
    let Some(state) = params
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 200)
    else {
        return unknown_state();
    };
    let store = LinkStore::new(&app.db);
    let used = match store.consume(state, now_millis()).await {
        Ok(used) => used,
        Err(err) => return database_outcome(&err, None),
    };
    if let Some(problem) = state_problem(&used) {
        return problem;
    }
    let StateUse::Fresh(pending) = used else {
        return unknown_state();
    };
    let outcome = complete(app, state, &pending, params).await;
    if outcome.page.tone == PageTone::Error {
        let audit = AuditEntry {
            action: "link".to_owned(),
            outcome: "refused".to_owned(),
            actor_platform: pending.address.platform.clone(),
            actor_user_id: pending.address.chat_user_id.clone(),
            actor_servicenow_user: Some(pending.servicenow_user_name.clone()),
            target_servicenow_user: Some(pending.servicenow_user_name.clone()),
            role: None,
            detail: Some(outcome.page.title.clone()),
        };
        if let Err(err) = store.audit(&audit).await {
            tracing::warn!(error = %err, "link refusal not audited");
        }
    }
    outcome
}

async fn complete(
    app: &App,
    state: &str,
    pending: &PendingLink,
    params: &CallbackParams,
) -> Outcome {
    if let Some(error) = params.error.as_deref() {
        if error == "access_denied" {
            return failed(
                pending,
                400,
                "Sign-in cancelled",
                "The sign-in was cancelled at Microsoft, so nothing was linked.",
                "Type **link-account** when you want to try again.",
            );
        }
        let description = params
            .error_description
            .as_deref()
            .map(short_description)
            .unwrap_or_default();
        return failed(
            pending,
            502,
            "Microsoft Entra ID refused the sign-in",
            &format!(
                "Entra ID answered **{}**: {description}. Nothing was linked.",
                short_description(error)
            ),
            "Ask your Entra admin whether the sign-in app allows you; then type **link-account** again.",
        );
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return failed(
            pending,
            400,
            "The sign-in came back incomplete",
            "Entra ID sent neither a code nor an error. Nothing was linked.",
            "Type **link-account** to try again.",
        );
    };
    let Ok(sign_in) = sign_in_app(app) else {
        return not_configured(pending);
    };
    let Some(pkce) = pkce_for(&sign_in.client_secret, state) else {
        return not_configured(pending);
    };
    let entra = &app.upstreams.entra;
    let tokens = match entra
        .exchange_code(
            &sign_in.tenant,
            &sign_in.client_id,
            &sign_in.client_secret,
            code,
            &sign_in.redirect_uri,
            pkce.verifier(),
        )
        .await
    {
        Ok(tokens) => tokens,
        Err(err) => {
            let hint = err
                .hint()
                .map(str::to_owned)
                .unwrap_or_else(|| "Try again; if it keeps failing, ask the bot's operator to check the sign-in app.".to_owned());
            return failed(
                pending,
                502,
                "The sign-in could not be completed",
                &format!("Entra ID did not redeem the sign-in: {err}. Nothing was linked."),
                &format!("{hint} Then type **link-account** again."),
            );
        }
    };
    let Some(id_token) = tokens.id_token.as_ref() else {
        return failed(
            pending,
            502,
            "The sign-in could not be completed",
            "Entra ID sent no ID token. Nothing was linked.",
            "Ask the bot's operator to check that the sign-in app may use openid; then type **link-account** again.",
        );
    };
    let claims = match token::validate_id_token(
        entra,
        &sign_in.tenant,
        &sign_in.client_id,
        id_token.expose_secret(),
        &pending.nonce,
    )
    .await
    {
        Ok(claims) => claims,
        Err(token::TokenProblem::WrongTenant { actual }) => {
            return failed(
                pending,
                403,
                "That account belongs to another organisation",
                &format!(
                    "You signed in with an account of the tenant {actual}; only accounts of your organisation's Microsoft 365 tenant can be linked. Nothing was linked."
                ),
                "Type **link-account** again and sign in with your organisation's admin account.",
            );
        }
        Err(problem) => {
            return failed(
                pending,
                502,
                "The sign-in could not be verified",
                &format!("{problem}. Nothing was linked."),
                "Type **link-account** to try again; if it keeps failing, tell the bot's operator.",
            );
        }
    };
    if binds_object_id(&pending.address.platform) {
        let matches = pending
            .address
            .aad_object_id
            .as_deref()
            .is_some_and(|expected| expected.eq_ignore_ascii_case(&claims.oid));
        if !matches {
            let who = pending
                .address
                .chat_user_name
                .clone()
                .unwrap_or_else(|| pending.servicenow_user_name.clone());
            return failed(
                pending,
                403,
                "Someone else signed in",
                &format!(
                    "The link was asked for by **{who}**, but the sign-in was made with **{}**, another person's account. Only your own account can be linked. Nothing was linked.",
                    claims.username
                ),
                "Type **link-account** again and sign in with your own account (use a private browser window if another account is signed in).",
            );
        }
    }
    let roles = if app.settings.link.check_directory_roles {
        match directory::check(
            app.upstreams.graph.as_ref(),
            &claims.oid,
            &app.settings.link.directory_roles,
        )
        .await
        {
            Ok(RoleCheck::Holds(roles)) => roles,
            Ok(RoleCheck::Missing) => {
                let wanted: Vec<String> = app
                    .settings
                    .link
                    .directory_roles
                    .iter()
                    .map(|id| directory::role_name(id))
                    .collect();
                return failed(
                    pending,
                    403,
                    "That account is no Microsoft 365 admin",
                    &format!(
                        "**{}** holds none of the Microsoft 365 admin roles that may manage support requests: it needs **{}**. Nothing was linked.",
                        claims.username,
                        wanted.join("** or **")
                    ),
                    "Ask your Global Administrator to assign you one of these roles (Microsoft 365 admin center > Roles), or sign in with an admin account; then type **link-account** again.",
                );
            }
            Ok(RoleCheck::Skipped(reason)) => {
                // Fail closed: an account whose roles cannot be read is not linked.
                tracing::warn!(reason = %reason, "Microsoft 365 admin role not checked; link refused");
                return failed(
                    pending,
                    503,
                    "The admin role could not be checked",
                    &format!(
                        "I could not check whether **{}** holds a Microsoft 365 admin role: {reason}. Nothing was linked.",
                        claims.username
                    ),
                    "Ask the bot's operator to grant that permission (or to set **link.check_directory_roles = false** to link without the check); then type **link-account** again.",
                );
            }
            Err(err) => {
                return failed(
                    pending,
                    502,
                    "Microsoft Graph did not answer",
                    &format!(
                        "I could not check the account's admin roles: {err}. Nothing was linked."
                    ),
                    "Type **link-account** to try again in a minute.",
                );
            }
        }
    } else {
        Vec::new()
    };
    store_link(app, pending, &claims, roles).await
}

async fn store_link(
    app: &App,
    pending: &PendingLink,
    claims: &token::IdClaims,
    roles: Vec<String>,
) -> Outcome {
    let Ok(client) = identity::servicenow(app) else {
        return failed(
            pending,
            503,
            "ServiceNow is not configured",
            "The bot has no ServiceNow account, so the link cannot be written there. Nothing was linked.",
            "Ask the bot's operator to configure **servicenow**.",
        );
    };
    let target = Target::from_settings(&app.settings.link);
    let previous = match target
        .write(client, &pending.servicenow_user_sys_id, &claims.username)
        .await
    {
        Ok(previous) => previous,
        Err(err) => {
            return failed(
                pending,
                502,
                "ServiceNow did not take the link",
                &format!("{err}. Nothing was linked."),
                &snow::fix_hint(&err, &target),
            );
        }
    };
    let link = AccountLink {
        platform: pending.address.platform.clone(),
        chat_user_id: pending.address.chat_user_id.clone(),
        servicenow_user_sys_id: pending.servicenow_user_sys_id.clone(),
        servicenow_user_name: pending.servicenow_user_name.clone(),
        m365_object_id: claims.oid.clone(),
        m365_upn: claims.username.clone(),
        m365_tenant_id: claims.tid.clone(),
        m365_roles: roles,
        linked_at: now_millis(),
        linked_by: pending.servicenow_user_name.clone(),
    };
    let audit = AuditEntry {
        action: "link".to_owned(),
        outcome: "linked".to_owned(),
        actor_platform: pending.address.platform.clone(),
        actor_user_id: pending.address.chat_user_id.clone(),
        actor_servicenow_user: Some(pending.servicenow_user_name.clone()),
        target_servicenow_user: Some(pending.servicenow_user_name.clone()),
        role: None,
        detail: Some(claims.username.clone()),
    };
    if let Err(err) = LinkStore::new(&app.db).save_link(&link, &audit).await {
        // No partial write: put ServiceNow back as it was.
        let restore = previous.as_deref().unwrap_or("");
        if let Err(undo) = target
            .write(client, &pending.servicenow_user_sys_id, restore)
            .await
        {
            tracing::error!(error = %undo, "ServiceNow link not rolled back after a database failure");
        }
        return database_outcome(&err, Some(pending));
    }
    tracing::info!(
        servicenow.user = %link.servicenow_user_name,
        "Microsoft 365 account linked"
    );
    let roles_text = if link.m365_roles.is_empty() {
        "Its admin roles could not be checked.".to_owned()
    } else {
        format!("Admin role: {}.", link.m365_roles.join(", "))
    };
    let chat = chat_name(&pending.address.platform);
    Outcome {
        page: Page {
            status: 200,
            tone: PageTone::Success,
            title: "Your Microsoft 365 account is linked".to_owned(),
            message: format!(
                "{} is now linked to the ServiceNow user {}. {roles_text}",
                link.m365_upn, link.servicenow_user_name
            ),
            next_step: format!("You can close this tab and return to {chat}."),
        },
        chat: Some((
            pending.address.clone(),
            Reply::notice(
                Tone::Good,
                "Microsoft 365 account linked",
                &format!(
                    "**{}** is now linked to your ServiceNow user **{}**. {roles_text}",
                    link.m365_upn, link.servicenow_user_name
                ),
                Some(
                    "Type **link-account status** to check it later, **unlink-account** to remove it.",
                ),
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_derived_from_state_and_secret() {
        let secret = SecretString::from("s3cret");
        let a = pkce_for(&secret, "state-a").expect("verifier");
        let again = pkce_for(&secret, "state-a").expect("verifier");
        assert_eq!(a.verifier(), again.verifier());
        assert_ne!(
            a.verifier(),
            pkce_for(&secret, "state-b").expect("verifier").verifier()
        );
        assert_ne!(
            a.verifier(),
            pkce_for(&SecretString::from("other"), "state-a")
                .expect("verifier")
                .verifier()
        );
        assert_eq!(a.verifier().len(), 43);
    }

    #[test]
    fn entra_descriptions_are_shortened() {
        assert_eq!(
            short_description("AADSTS65004: User declined. Trace ID: abc\r\nCorrelation ID: x"),
            "AADSTS65004: User declined."
        );
        assert_eq!(short_description(&"x".repeat(500)).len(), 300);
    }
}
