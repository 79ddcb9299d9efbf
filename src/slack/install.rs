//! Installs into more workspaces (OAuth v2) and their removal.
//!
//! `GET /slack/install` sends the installer to Slack's authorize page with the manifest's bot
//! scopes and a fresh `state` (stored only as SHA-256, single use, expiring after
//! `slack.install_state_ttl_secs`). `GET /slack/oauth/callback` takes the state once (unknown,
//! expired or already used: a 400 page and nothing stored), exchanges the code with
//! `oauth.v2.access` and stores the workspace's bot token sealed with `setup.encryption_key`
//! (AES-256-GCM, the team id as associated data), audited without the token.
//!
//! `app_uninstalled` and `tokens_revoked` (over HTTP or Socket Mode) delete the workspace's
//! stored token and disable its subscriptions. The workspace of `slack.bot_token` keeps working
//! from configuration without any of this.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::Row;
use url::Url;

use super::api::OAuthAccess;
use super::manifest::BOT_SCOPES;
use crate::app::App;
use crate::config::Settings;
use crate::db::{Db, now_millis};
use crate::link::page::{escape_html, no_store};
use crate::setup::crypto::SecretBox;

/// Where an installer starts.
pub const INSTALL_PATH: &str = "/slack/install";
/// Where Slack sends the installer back (`oauth_config.redirect_urls` of the manifest).
pub const CALLBACK_PATH: &str = "/slack/oauth/callback";

/// The callback URL for a bot at `public_url`.
pub fn redirect_uri(public_url: &Url) -> String {
    public_url
        .join(CALLBACK_PATH.trim_start_matches('/'))
        .map(String::from)
        .unwrap_or_default()
}

/// Start-up checks across sections once installs are configured: the tokens need
/// `setup.encryption_key`, the callback a public URL that is HTTPS (or loopback).
pub fn validate_settings(settings: &Settings) -> Result<(), (&'static str, String)> {
    if !settings.slack.installs_enabled() {
        return Ok(());
    }
    crate::setup::crypto::check_key(settings.setup.encryption_key.as_ref()).map_err(|err| {
        (
            "setup.encryption_key",
            format!("slack.client_id is set, so installed workspaces' bot tokens are stored encrypted with this key: {err}"),
        )
    })?;
    if !crate::config::is_https_or_loopback(&settings.server.public_url) {
        return Err((
            "server.public_url",
            format!(
                "{} must be https:// for Slack installs: Slack sends the installer back to {} with a code",
                settings.server.public_url, CALLBACK_PATH
            ),
        ));
    }
    Ok(())
}

/// The install routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(INSTALL_PATH, get(install))
        .route(CALLBACK_PATH, get(callback))
}

/// The associated data a workspace's token is sealed with.
fn seal_context(team_id: &str) -> String {
    format!("slack-install:{team_id}")
}

/// Why a workspace's stored token cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The sealed token does not open with `setup.encryption_key`.
    #[error(
        "the stored Slack token of {0} cannot be decrypted (setup.encryption_key changed?); reinstall the app in that workspace"
    )]
    Sealed(String),
    /// Sealing failed.
    #[error("cannot encrypt the Slack token: {0}")]
    Seal(String),
}

/// One installed workspace, as stored (the token sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// Workspace id.
    pub team_id: String,
    /// Workspace name.
    pub team_name: Option<String>,
    /// The bot user's id (what `tokens_revoked` names).
    pub bot_user_id: String,
    /// Granted scopes, comma-separated.
    pub scopes: String,
    /// Who installed it.
    pub installed_by: Option<String>,
}

/// The bot token stored for `team_id`, opened.
pub async fn stored_token(
    db: &Db,
    secrets: &SecretBox,
    team_id: &str,
) -> Result<Option<SecretString>, StoreError> {
    let row = sqlx::query("SELECT bot_token_sealed FROM slack_installations WHERE team_id = $1")
        .bind(team_id)
        .fetch_optional(&db.pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let sealed: String = row.try_get(0)?;
    let plain = secrets
        .open(&seal_context(team_id), &sealed)
        .map_err(|_| StoreError::Sealed(team_id.to_owned()))?;
    let token = String::from_utf8(plain).map_err(|_| StoreError::Sealed(team_id.to_owned()))?;
    Ok(Some(SecretString::from(token)))
}

/// The installation of `team_id`, without its token.
pub async fn installation(db: &Db, team_id: &str) -> Result<Option<Installation>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT team_id, team_name, bot_user_id, scopes, installed_by FROM slack_installations \
         WHERE team_id = $1",
    )
    .bind(team_id)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|row| {
        Ok(Installation {
            team_id: row.try_get(0)?,
            team_name: row.try_get(1)?,
            bot_user_id: row.try_get(2)?,
            scopes: row.try_get(3)?,
            installed_by: row.try_get(4)?,
        })
    })
    .transpose()
}

/// Stores (or replaces) the workspace's token, sealed.
pub async fn save_installation(
    db: &Db,
    secrets: &SecretBox,
    access: &OAuthAccess,
) -> Result<(), StoreError> {
    let sealed = secrets
        .seal(
            &seal_context(&access.team.id),
            access.access_token.expose_secret().as_bytes(),
        )
        .map_err(|err| StoreError::Seal(err.to_string()))?;
    sqlx::query(
        "INSERT INTO slack_installations (team_id, team_name, enterprise_id, app_id, bot_user_id, \
         scopes, bot_token_sealed, installed_by, installed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (team_id) DO UPDATE SET team_name = excluded.team_name, \
         enterprise_id = excluded.enterprise_id, app_id = excluded.app_id, \
         bot_user_id = excluded.bot_user_id, scopes = excluded.scopes, \
         bot_token_sealed = excluded.bot_token_sealed, installed_by = excluded.installed_by, \
         installed_at = excluded.installed_at",
    )
    .bind(&access.team.id)
    .bind(&access.team.name)
    .bind(access.enterprise.as_ref().map(|e| e.id.clone()))
    .bind(&access.app_id)
    .bind(&access.bot_user_id)
    .bind(&access.scope)
    .bind(sealed)
    .bind(access.authed_user.as_ref().map(|u| u.id.clone()))
    .bind(now_millis())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Deletes the workspace's stored token; true when there was one.
pub async fn delete_installation(db: &Db, team_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM slack_installations WHERE team_id = $1")
        .bind(team_id)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// One line of the install audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Workspace, when known.
    pub team_id: Option<String>,
    /// `install`, `uninstall`, `tokens_revoked`.
    pub action: String,
    /// `stored`, `refused`, `failed`, `deleted`, `nothing_stored`.
    pub outcome: String,
    /// What happened (never a token).
    pub detail: String,
}

/// Appends to the install audit; a failure is logged, not raised (the audit never blocks).
pub async fn audit(db: &Db, team_id: Option<&str>, action: &str, outcome: &str, detail: &str) {
    let written = sqlx::query(
        "INSERT INTO slack_install_audit (audit_id, at, team_id, action, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(crate::upstream::entra::random_token(16))
    .bind(now_millis())
    .bind(team_id)
    .bind(action)
    .bind(outcome)
    .bind(detail)
    .execute(&db.pool)
    .await;
    if let Err(err) = written {
        tracing::warn!(error = %err, action, outcome, "Slack install audit not written");
    }
}

/// The latest `limit` audit lines, newest first.
pub async fn audit_log(db: &Db, limit: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT team_id, action, outcome, detail FROM slack_install_audit \
         ORDER BY at DESC, audit_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AuditEntry {
                team_id: row.try_get(0)?,
                action: row.try_get(1)?,
                outcome: row.try_get(2)?,
                detail: row.try_get(3)?,
            })
        })
        .collect()
}

/// What the callback found for its `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateCheck {
    /// Issued here, not expired, and now used.
    Valid,
    /// Never issued here (or forged).
    Unknown,
    /// Issued but too old.
    Expired,
    /// Already used once.
    Used,
}

/// Install links that may be pending at once (`/slack/install` needs no sign-in, so this
/// bounds what anonymous requests can make the bot store).
pub const MAX_PENDING_STATES: i64 = 1000;

/// Issues a fresh install `state`, valid for `ttl_secs`, and forgets expired ones; `None` when
/// `max_pending` unused, unexpired states exist already.
pub async fn new_state(
    db: &Db,
    ttl_secs: u64,
    max_pending: i64,
) -> Result<Option<String>, sqlx::Error> {
    let state = crate::upstream::entra::random_token(32);
    let now = now_millis();
    let ttl = i64::try_from(ttl_secs).unwrap_or(600) * 1000;
    sqlx::query("DELETE FROM slack_install_states WHERE expires_at < $1")
        .bind(now - 86_400_000)
        .execute(&db.pool)
        .await?;
    let pending: i64 = sqlx::query(
        "SELECT COUNT(*) FROM slack_install_states WHERE used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .fetch_one(&db.pool)
    .await?
    .try_get(0)?;
    if pending >= max_pending {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO slack_install_states (state_hash, created_at, expires_at, used_at) \
         VALUES ($1, $2, $3, NULL)",
    )
    .bind(crate::link::store::state_hash(&state))
    .bind(now)
    .bind(now + ttl)
    .execute(&db.pool)
    .await?;
    Ok(Some(state))
}

/// Uses `state` once: [`StateCheck::Valid`] for exactly one caller.
pub async fn take_state(db: &Db, state: &str) -> Result<StateCheck, sqlx::Error> {
    let hash = crate::link::store::state_hash(state);
    let now = now_millis();
    let taken = sqlx::query(
        "UPDATE slack_install_states SET used_at = $1 \
         WHERE state_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(&hash)
    .execute(&db.pool)
    .await?;
    if taken.rows_affected() == 1 {
        return Ok(StateCheck::Valid);
    }
    let row =
        sqlx::query("SELECT expires_at, used_at FROM slack_install_states WHERE state_hash = $1")
            .bind(&hash)
            .fetch_optional(&db.pool)
            .await?;
    let Some(row) = row else {
        return Ok(StateCheck::Unknown);
    };
    let used_at: Option<i64> = row.try_get(1)?;
    Ok(if used_at.is_some() {
        StateCheck::Used
    } else {
        StateCheck::Expired
    })
}

/// A small result page, never cached.
fn page(status: StatusCode, title: &str, message: &str, next_step: &str) -> Response {
    let color = if status.is_success() {
        "#107c10"
    } else {
        "#a4262c"
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - m365bot</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#242424\">\
         <h1 style=\"color:{color};font-size:1.5em\">{title}</h1>\
         <p id=\"message\">{message}</p>\
         <p id=\"next\"><strong>{next}</strong></p>\
         <p style=\"color:#616161;font-size:.85em\">m365bot Slack installation</p>\
         </body></html>",
        title = escape_html(title),
        message = escape_html(message),
        next = escape_html(next_step),
    );
    let mut response = (status, axum::response::Html(html)).into_response();
    no_store(&mut response);
    response
}

const START_AGAIN: &str = "Start the installation again from the install link (/slack/install).";

/// `GET /slack/install`: a redirect to Slack's authorize page with a fresh state.
async fn install(State(app): State<Arc<App>>) -> Response {
    let settings = &app.settings.slack;
    let (true, Some(client_id)) = (settings.installs_enabled(), settings.client_id.as_deref())
    else {
        return page(
            StatusCode::NOT_FOUND,
            "Slack installs are not enabled",
            "This bot serves only the workspace of its configured bot token.",
            "To install it into more workspaces, its operator sets slack.client_id and slack.client_secret.",
        );
    };
    let state = match new_state(&app.db, settings.install_state_ttl_secs, MAX_PENDING_STATES).await
    {
        Ok(Some(state)) => state,
        Ok(None) => {
            tracing::warn!("Slack install: too many install links pending");
            return page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many installations in progress",
                "The bot holds as many unused install links as it accepts.",
                "Try again in a few minutes, when older links have expired.",
            );
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot store the Slack install state");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The installation cannot start",
                "The bot could not write to its database.",
                "Try again in a minute; if it keeps failing, ask the bot's operator to check its log.",
            );
        }
    };
    let mut url = settings.authorize_url.clone();
    url.query_pairs_mut()
        .append_pair("client_id", client_id.trim())
        .append_pair("scope", &BOT_SCOPES.join(","))
        .append_pair(
            "redirect_uri",
            &redirect_uri(&app.settings.server.public_url),
        )
        .append_pair("state", &state);
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    no_store(&mut response);
    response
}

/// `GET /slack/oauth/callback`: the state checked and used, the code exchanged, the token
/// stored sealed.
async fn callback(
    State(app): State<Arc<App>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(slack) = app.slack.as_ref() else {
        return page(
            StatusCode::NOT_FOUND,
            "Slack is not enabled",
            "This bot does not serve Slack.",
            "Ask the bot's operator to set slack.enabled.",
        );
    };
    let settings = &app.settings.slack;
    let (true, Some(client_id), Some(client_secret), Some(secrets)) = (
        settings.installs_enabled(),
        settings.client_id.as_deref(),
        settings.client_secret.as_ref(),
        slack.secrets.as_ref(),
    ) else {
        return page(
            StatusCode::NOT_FOUND,
            "Slack installs are not enabled",
            "This bot serves only the workspace of its configured bot token.",
            "To install it into more workspaces, its operator sets slack.client_id and slack.client_secret.",
        );
    };
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let Some(state) = param("state") else {
        audit(
            &app.db,
            None,
            "install",
            "refused",
            "callback without state",
        )
        .await;
        return page(
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "The address has no state: it did not come from this bot's install link.",
            START_AGAIN,
        );
    };
    let check = match take_state(&app.db, state).await {
        Ok(check) => check,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the Slack install state");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The installation cannot finish",
                "The bot could not read its database.",
                START_AGAIN,
            );
        }
    };
    let refusal = match check {
        StateCheck::Valid => None,
        StateCheck::Unknown => Some((
            "unknown state",
            "This install link was not issued by this bot (or was changed).",
        )),
        StateCheck::Expired => Some((
            "expired state",
            "This install link expired before Slack sent you back.",
        )),
        StateCheck::Used => Some((
            "state used twice",
            "This install link was already used once; each works only once.",
        )),
    };
    if let Some((detail, message)) = refusal {
        audit(&app.db, None, "install", "refused", detail).await;
        return page(
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            message,
            START_AGAIN,
        );
    }
    if let Some(error) = param("error") {
        audit(
            &app.db,
            None,
            "install",
            "refused",
            &format!("Slack said {error}"),
        )
        .await;
        return page(
            StatusCode::BAD_REQUEST,
            "The installation was cancelled",
            &format!("Slack did not install the app ({error})."),
            START_AGAIN,
        );
    }
    let Some(code) = param("code") else {
        audit(&app.db, None, "install", "refused", "callback without code").await;
        return page(
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "Slack sent no code.",
            START_AGAIN,
        );
    };
    let redirect = redirect_uri(&app.settings.server.public_url);
    let access = match slack
        .api
        .oauth_v2_access(client_id.trim(), client_secret, code, &redirect)
        .await
    {
        Ok(access) => access,
        Err(err) => {
            tracing::warn!(error = %err, "Slack install: oauth.v2.access refused");
            audit(&app.db, None, "install", "failed", &err.to_string()).await;
            let (status, next) = match err.code() {
                Some("invalid_code" | "code_already_used" | "code_expired") => {
                    (StatusCode::BAD_REQUEST, START_AGAIN)
                }
                Some(_) => (
                    StatusCode::BAD_GATEWAY,
                    "Ask the bot's operator to check slack.client_id, slack.client_secret and that the app's redirect URL is the bot's /slack/oauth/callback.",
                ),
                None => (
                    StatusCode::BAD_GATEWAY,
                    "Try again in a minute; if it keeps failing, ask the bot's operator to check its log.",
                ),
            };
            return page(
                status,
                "Slack did not install the app",
                &format!("Slack refused the installation: {err}."),
                next,
            );
        }
    };
    let is_bot_token = access.token_type.as_deref().is_none_or(|t| t == "bot")
        && access.access_token.expose_secret().starts_with("xoxb-");
    if !is_bot_token {
        audit(
            &app.db,
            Some(&access.team.id),
            "install",
            "failed",
            "Slack returned no bot token",
        )
        .await;
        return page(
            StatusCode::BAD_GATEWAY,
            "Slack did not install the bot",
            "Slack returned no bot token (xoxb-…) for this workspace.",
            "Ask the bot's operator to check that the app has a bot user and the manifest's bot scopes.",
        );
    }
    if let Err(err) = save_installation(&app.db, secrets, &access).await {
        tracing::error!(error = %err, team = %access.team.id, "cannot store the Slack installation");
        audit(
            &app.db,
            Some(&access.team.id),
            "install",
            "failed",
            "not stored",
        )
        .await;
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The installation cannot finish",
            "The bot could not store the workspace's token.",
            START_AGAIN,
        );
    }
    let team_name = access
        .team
        .name
        .clone()
        .unwrap_or_else(|| access.team.id.clone());
    let installer = access
        .authed_user
        .as_ref()
        .map_or("unknown", |u| u.id.as_str());
    audit(
        &app.db,
        Some(&access.team.id),
        "install",
        "stored",
        &format!(
            "workspace {team_name} installed by {installer}; bot user {}; scopes {}",
            access.bot_user_id, access.scope
        ),
    )
    .await;
    tracing::info!(team = %access.team.id, "Slack workspace installed");
    page(
        StatusCode::OK,
        "m365bot is installed",
        &format!("m365bot is now installed in the Slack workspace {team_name}."),
        "Return to Slack and type /m365 help.",
    )
}

/// Handles `app_uninstalled` and `tokens_revoked` of `team_id`; false for other events.
pub async fn on_event(app: &App, team_id: Option<&str>, event: &Value) -> bool {
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "app_uninstalled" && kind != "tokens_revoked" {
        return false;
    }
    let Some(team_id) = team_id.filter(|t| !t.is_empty()) else {
        tracing::warn!(slack.event = kind, "Slack event without team_id ignored");
        return true;
    };
    if kind == "tokens_revoked" {
        let revoked_bots: Vec<&str> = event
            .pointer("/tokens/bot")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if revoked_bots.is_empty() {
            // Only user tokens, which the bot never keeps.
            audit(
                &app.db,
                Some(team_id),
                kind,
                "nothing_stored",
                "no bot token revoked",
            )
            .await;
            return true;
        }
        match installation(&app.db, team_id).await {
            Ok(Some(stored)) if !revoked_bots.contains(&stored.bot_user_id.as_str()) => {
                audit(
                    &app.db,
                    Some(team_id),
                    kind,
                    "nothing_stored",
                    "another bot user's token was revoked",
                )
                .await;
                return true;
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the Slack installation"),
        }
    }
    remove_workspace(app, team_id, kind).await;
    true
}

/// Deletes the workspace's stored token and disables its subscriptions, with `reason`.
pub async fn remove_workspace(app: &App, team_id: &str, reason: &str) {
    match delete_installation(&app.db, team_id).await {
        Ok(true) => {
            tracing::info!(team = %team_id, reason, "Slack workspace token deleted");
            audit(
                &app.db,
                Some(team_id),
                reason,
                "deleted",
                "bot token deleted",
            )
            .await;
        }
        Ok(false) => {
            tracing::warn!(
                team = %team_id,
                reason,
                "Slack workspace without a stored token: if it is the configured workspace, remove slack.bot_token from the configuration"
            );
            audit(
                &app.db,
                Some(team_id),
                reason,
                "nothing_stored",
                "no stored token (the configured workspace keeps slack.bot_token until the operator removes it)",
            )
            .await;
        }
        Err(err) => {
            tracing::error!(error = %err, team = %team_id, "cannot delete the Slack token");
            audit(
                &app.db,
                Some(team_id),
                reason,
                "failed",
                "token not deleted",
            )
            .await;
        }
    }
    disable_team_subscriptions(app, team_id, reason).await;
}

/// Stops notifications into the workspace's channels: the one place where the uninstall
/// reaches notifications (`crate::notify::slack::disable_slack_team`).
pub async fn disable_team_subscriptions(app: &App, team_id: &str, reason: &str) {
    match crate::notify::slack::disable_slack_team(app, team_id, reason).await {
        Ok(count) => {
            tracing::info!(team = %team_id, reason, subscriptions = count, "Slack workspace removed: its subscriptions are disabled")
        }
        Err(err) => {
            tracing::error!(team = %team_id, error = %err, "Slack workspace removed, but its subscriptions could not be disabled")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_uri_follows_the_public_url() {
        let base = Url::parse("https://bot.contoso.example/m365/").expect("url");
        assert_eq!(
            redirect_uri(&base),
            "https://bot.contoso.example/m365/slack/oauth/callback"
        );
    }

    #[test]
    fn pages_are_never_cached() {
        let response = page(StatusCode::BAD_REQUEST, "<b>", "a & b", "x");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response
                .headers()
                .get(header::CACHE_CONTROL)
                .map(|v| v.as_bytes()),
            Some(&b"no-store"[..])
        );
    }
}
