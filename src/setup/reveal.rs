//! "Reveal": the one-time page that shows a completed setup's secrets (inbound client secret,
//! REST-user secret or integration user password) instead of any chat card.
//!
//! A Reveal link (`/setup/reveal?token=…`, valid ten minutes, the token stored only as SHA-256)
//! is bound to one person: the admin who ran setup or the hand-over recipient, by Entra object
//! id or, when none is known, by e-mail/UPN. Opening it starts the same Entra sign-in as
//! `link-account` (authorization code + PKCE, same sign-in app and callback, ID token validated
//! as link does); the callback checks the account, for a hand-over also its admin role (failing
//! closed as link does), marks the link used in one conditional write and shows the values once
//! on a `no-store` page. The setup audit records who viewed which values, never the values.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use sqlx::Row;
use std::sync::Arc;

use super::crypto::SecretBox;
use super::state::{AppSlot, SecretSlot};
use super::store::{self, AuditEntry, status};
use crate::app::App;
use crate::db::{Db, now_millis};
use crate::integration::AuthType;
use crate::link::directory::{self, RoleCheck};
use crate::link::flow::{CallbackParams, SIGN_IN_SCOPE, pkce_for, sign_in_app};
use crate::link::page::{Page, PageTone, escape_html, no_store};
use crate::link::store::state_hash;
use crate::link::token::{self, TokenProblem};
use crate::upstream::entra::{AuthorizeRequest, random_token};

/// Path of a Reveal link.
pub const REVEAL_PATH: &str = "/setup/reveal";
/// How long a Reveal link stays valid, in minutes.
pub const REVEAL_MINUTES: i64 = 10;

/// `setup_reveals.purpose` values.
pub mod purpose {
    /// For the admin who ran setup.
    pub const SETUP_ADMIN: &str = "setup admin";
    /// For the Microsoft 365 admin the setup was handed over to.
    pub const HANDOVER: &str = "hand-over";
}

/// Who may open a Reveal link: the Entra object id when known, else the e-mail/UPN the
/// signed-in account must carry; `label` names the person in audit and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Entra object id (lower case).
    pub oid: Option<String>,
    /// E-mail or UPN (lower case), used only when `oid` is `None`.
    pub login: Option<String>,
    /// Display label.
    pub label: String,
}

impl Binding {
    /// True when the signed-in account is the bound person.
    fn accepts(&self, claims: &token::IdClaims) -> bool {
        match (&self.oid, &self.login) {
            (Some(oid), _) => oid.eq_ignore_ascii_case(&claims.oid),
            (None, Some(login)) => login.eq_ignore_ascii_case(&claims.username),
            (None, None) => false,
        }
    }
}

/// One stored Reveal link.
#[derive(Debug, Clone)]
pub struct RevealRow {
    /// SHA-256 of the token.
    pub token_hash: String,
    /// The setup.
    pub setup_id: String,
    /// [`purpose`].
    pub purpose: String,
    /// Who may open it.
    pub binding: Binding,
    /// The nonce of the sign-in in progress.
    pub nonce: Option<String>,
    /// Issued (unix ms).
    pub created_at: i64,
    /// Expires (unix ms).
    pub expires_at: i64,
    /// Used (unix ms).
    pub used_at: Option<i64>,
    /// Who viewed the values.
    pub viewed_by: Option<String>,
    /// Revoked (unix ms).
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str = "token_hash, setup_id, purpose, bound_oid, bound_login, recipient, nonce, \
                       created_at, expires_at, used_at, viewed_by, revoked_at";

fn to_row(row: &sqlx::any::AnyRow) -> sqlx::Result<RevealRow> {
    Ok(RevealRow {
        token_hash: row.try_get(0)?,
        setup_id: row.try_get(1)?,
        purpose: row.try_get(2)?,
        binding: Binding {
            oid: row.try_get(3)?,
            login: row.try_get(4)?,
            label: row.try_get(5)?,
        },
        nonce: row.try_get(6)?,
        created_at: row.try_get(7)?,
        expires_at: row.try_get(8)?,
        used_at: row.try_get(9)?,
        viewed_by: row.try_get(10)?,
        revoked_at: row.try_get(11)?,
    })
}

/// Stores a new Reveal link for `setup_id` and returns its token (never stored in clear).
pub async fn issue(
    db: &Db,
    setup_id: &str,
    purpose: &str,
    binding: &Binding,
) -> sqlx::Result<String> {
    let token = random_token(32);
    let now = now_millis();
    sqlx::query(
        "INSERT INTO setup_reveals (token_hash, setup_id, purpose, bound_oid, bound_login, \
         recipient, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(state_hash(&token))
    .bind(setup_id)
    .bind(purpose)
    .bind(binding.oid.as_deref().map(str::to_ascii_lowercase))
    .bind(binding.login.as_deref().map(str::to_ascii_lowercase))
    .bind(&binding.label)
    .bind(now)
    .bind(now + REVEAL_MINUTES * 60_000)
    .execute(&db.pool)
    .await?;
    Ok(token)
}

/// The Reveal link of `token` on this bot.
pub fn url(app: &App, token: &str) -> String {
    let mut url = app.settings.server.public_url.clone();
    url.set_path(REVEAL_PATH);
    url.query_pairs_mut().clear().append_pair("token", token);
    url.to_string()
}

async fn by(db: &Db, column: &str, hash: &str) -> sqlx::Result<Option<RevealRow>> {
    let sql = format!("SELECT {COLUMNS} FROM setup_reveals WHERE {column} = $1");
    let row = sqlx::query(&sql)
        .bind(hash)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(to_row).transpose()
}

/// Marks the link used by `viewed_by` if it is still unused, unrevoked and unexpired at `now`;
/// false when another request used it first (or it lapsed meanwhile).
pub async fn mark_used(db: &Db, token_hash: &str, now: i64, viewed_by: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE setup_reveals SET used_at = $1, viewed_by = $2, state_hash = NULL, nonce = NULL \
         WHERE token_hash = $3 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $4",
    )
    .bind(now)
    .bind(viewed_by)
    .bind(token_hash)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes the unused hand-over links of a setup; returns how many.
pub async fn revoke_handover(db: &Db, setup_id: &str) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE setup_reveals SET revoked_at = $1, state_hash = NULL WHERE setup_id = $2 \
         AND purpose = $3 AND revoked_at IS NULL AND used_at IS NULL",
    )
    .bind(now_millis())
    .bind(setup_id)
    .bind(purpose::HANDOVER)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}

/// The Reveal links of a setup, oldest first.
pub async fn links_of(db: &Db, setup_id: &str) -> sqlx::Result<Vec<RevealRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM setup_reveals WHERE setup_id = $1 ORDER BY created_at, token_hash"
    );
    let rows = sqlx::query(&sql).bind(setup_id).fetch_all(&db.pool).await?;
    rows.iter().map(to_row).collect()
}

/// True when `state` is the sign-in state of a Reveal link (the callback is shared with
/// `link-account`).
pub async fn owns_state(app: &App, state: &str) -> bool {
    matches!(
        by(&app.db, "state_hash", &state_hash(state)).await,
        Ok(Some(_))
    )
}

/// The names of the secrets a setup's Reveal page shows, in order.
pub fn secret_names(auth: Option<AuthType>) -> Vec<(SecretSlot, &'static str)> {
    if auth == Some(AuthType::Basic) {
        vec![(SecretSlot::IntegrationPassword, "Rest user password")]
    } else {
        vec![
            (SecretSlot::InboundSecret, "Client secret"),
            (SecretSlot::RestUserSecret, "Rest user password"),
        ]
    }
}

const NEW_LINK: &str = "The admin who ran setup gets a new link with the Reveal button (or by typing setup) in the 1:1 chat with the bot; a hand-over recipient asks that admin to revoke the hand-over and hand over again.";

fn error_page(status: u16, title: &str, message: &str, next_step: &str) -> Response {
    Page {
        status,
        tone: PageTone::Error,
        title: title.to_owned(),
        message: message.to_owned(),
        next_step: next_step.to_owned(),
    }
    .response()
}

/// Why an unusable link cannot be opened, if it cannot.
fn unusable(row: &RevealRow, now: i64) -> Option<Response> {
    if row.used_at.is_some() {
        return Some(error_page(
            410,
            "This Reveal link was already used",
            "Each Reveal link shows the values once, and this one was opened before. Nothing is shown again.",
            NEW_LINK,
        ));
    }
    if row.revoked_at.is_some() {
        return Some(error_page(
            410,
            "This Reveal link was revoked",
            "The admin who ran setup revoked this hand-over. Nothing is shown.",
            NEW_LINK,
        ));
    }
    if row.expires_at <= now {
        return Some(error_page(
            410,
            "This Reveal link has expired",
            &format!("Reveal links are valid for {REVEAL_MINUTES} minutes. Nothing is shown."),
            NEW_LINK,
        ));
    }
    None
}

fn unknown_link() -> Response {
    error_page(
        404,
        "This Reveal link is not valid",
        "I do not know this Reveal link: it is incomplete or was never issued. Nothing is shown.",
        NEW_LINK,
    )
}

/// `GET /setup/reveal?token=…`: redirects to the Entra ID sign-in, or says why not.
pub async fn start(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let token = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
        .filter(|t| !t.is_empty() && t.len() <= 200);
    let Some(token) = token else {
        return unknown_link();
    };
    let row = match by(&app.db, "token_hash", &state_hash(&token)).await {
        Ok(Some(row)) => row,
        Ok(None) => return unknown_link(),
        Err(err) => return database_failure(&err),
    };
    if let Some(page) = unusable(&row, now_millis()) {
        return page;
    }
    let Ok(sign_in) = sign_in_app(&app) else {
        return not_configured();
    };
    let state = random_token(32);
    let nonce = random_token(16);
    let Some(pkce) = pkce_for(&sign_in.client_secret, &state) else {
        return not_configured();
    };
    // A new sign-in replaces an unfinished one of the same link.
    let begun = sqlx::query(
        "UPDATE setup_reveals SET state_hash = $1, nonce = $2 WHERE token_hash = $3 \
         AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(state_hash(&state))
    .bind(&nonce)
    .bind(&row.token_hash)
    .execute(&app.db.pool)
    .await;
    match begun {
        Ok(done) if done.rows_affected() == 1 => {}
        Ok(_) => return unknown_link(),
        Err(err) => return database_failure(&err),
    }
    let authorize = app.upstreams.entra.authorize_url(
        &sign_in.tenant,
        &AuthorizeRequest {
            client_id: &sign_in.client_id,
            redirect_uri: &sign_in.redirect_uri,
            scope: SIGN_IN_SCOPE,
            state: &state,
            nonce: &nonce,
            pkce: &pkce,
            login_hint: row.binding.login.as_deref(),
            prompt: Some("select_account"),
        },
    );
    match authorize
        .ok()
        .and_then(|url| HeaderValue::from_str(url.as_str()).ok())
    {
        Some(location) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            no_store(&mut response);
            response
        }
        None => not_configured(),
    }
}

fn not_configured() -> Response {
    error_page(
        503,
        "The sign-in is not configured",
        "The bot has no usable Entra app or tenant for the sign-in (the one link-account uses). Nothing is shown.",
        "Ask the bot's operator to check the [link] settings.",
    )
}

fn database_failure(err: &sqlx::Error) -> Response {
    tracing::error!(error = %err, "reveal: storage failed");
    error_page(
        500,
        "The bot's database did not answer",
        "Nothing is shown.",
        "Open the Reveal link again in a minute.",
    )
}

async fn audit(app: &App, setup_id: &str, actor: &str, outcome: &str, detail: &str) {
    let entry = AuditEntry {
        setup_id: setup_id.to_owned(),
        at: now_millis(),
        actor: actor.to_owned(),
        action: "reveal".to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(err) = store::audit(&app.db, &entry).await {
        tracing::warn!(error = %err, "reveal: audit entry not written");
    }
    tracing::info!(
        setup.id = setup_id,
        setup.action = "reveal",
        setup.outcome = outcome,
        "setup audit"
    );
}

/// `GET /auth/link/callback` for a Reveal sign-in: checks the account and shows the values
/// once.
pub async fn callback(app: &App, state: &str, params: &CallbackParams) -> Response {
    let row = match by(&app.db, "state_hash", &state_hash(state)).await {
        Ok(Some(row)) => row,
        Ok(None) => return unknown_link(),
        Err(err) => return database_failure(&err),
    };
    if let Some(page) = unusable(&row, now_millis()) {
        return page;
    }
    let who = format!("the {} link of {}", row.purpose, row.binding.label);
    let setup = match store::get(&app.db, &row.setup_id).await {
        Ok(Some(setup)) if setup.status == status::COMPLETED => setup,
        Ok(_) => {
            return error_page(
                410,
                "This setup is no longer live",
                "The setup this link belongs to was replaced or removed. Nothing is shown.",
                NEW_LINK,
            );
        }
        Err(err) => {
            tracing::error!(error = %err, "reveal: setup unreadable");
            return error_page(
                500,
                "The bot's database did not answer",
                "Nothing is shown.",
                "Open the Reveal link again in a minute.",
            );
        }
    };
    // The recipient's roles are read in the integration's tenant, as setup's Graph calls are.
    let tenant = setup
        .wizard
        .data
        .tenant_id
        .clone()
        .or_else(|| setup.wizard.data.tenant.clone())
        .unwrap_or_default();
    let upstreams = super::effects::upstreams_for(app, &tenant);
    let checked = check_sign_in(app, state, &row, params, upstreams.graph.as_ref()).await;
    let claims = match checked {
        Ok(claims) => claims,
        Err((status, title, message, next)) => {
            audit(
                app,
                &row.setup_id,
                "m365bot",
                "refused",
                &format!("{who}: {title}: {message}"),
            )
            .await;
            return error_page(status, title, &message, next);
        }
    };
    let viewer = format!("{} (Entra {})", claims.username, claims.oid);
    let secrets = match SecretBox::new(app.settings.setup.encryption_key.as_ref())
        .map_err(|e| e.to_string())
        .and_then(|secret_box| super::flow::open_secrets(&secret_box, &setup))
    {
        Ok(secrets) => secrets,
        Err(err) => {
            return error_page(
                500,
                "The stored secrets cannot be read",
                &err,
                "Ask the bot's operator to check setup.encryption_key.",
            );
        }
    };
    let names = secret_names(setup.wizard.data.auth_type);
    match mark_used(&app.db, &row.token_hash, now_millis(), &viewer).await {
        Ok(true) => {}
        Ok(false) => {
            let now = now_millis();
            return unusable(
                &RevealRow {
                    used_at: Some(now),
                    ..row
                },
                now,
            )
            .unwrap_or_else(unknown_link);
        }
        Err(err) => return database_failure(&err),
    }
    let shown: Vec<&str> = names.iter().map(|(_, name)| *name).collect();
    audit(
        app,
        &row.setup_id,
        &viewer,
        "ok",
        &format!("viewed {} through {who}", shown.join(", ")),
    )
    .await;
    let data = &setup.wizard.data;
    let owner = |slot: SecretSlot| match slot {
        SecretSlot::InboundSecret => data
            .app(AppSlot::Inbound)
            .map(|a| format!("secret of the inbound REST API app {}", a.client_id)),
        SecretSlot::RestUserSecret => data
            .app(AppSlot::RestUser)
            .map(|a| format!("secret of the REST-user app {}", a.client_id)),
        SecretSlot::IntegrationPassword => data
            .integration_user
            .as_ref()
            .map(|u| format!("password of the integration user {u}")),
        SecretSlot::OutboundSecret => None,
    };
    let values: Vec<(String, String, String)> = names
        .iter()
        .map(|(slot, name)| {
            (
                (*name).to_owned(),
                owner(*slot).unwrap_or_default(),
                secrets
                    .get(*slot)
                    .map(|s| s.expose_secret().to_owned())
                    .unwrap_or_else(|| "(not recorded)".to_owned()),
            )
        })
        .collect();
    values_page(&claims.username, &values)
}

/// A refused sign-in: status, title, message, next step.
type Refusal = (u16, &'static str, String, &'static str);

fn refuse(status: u16, title: &'static str, message: String, next: &'static str) -> Refusal {
    (status, title, message, next)
}

async fn check_sign_in(
    app: &App,
    state: &str,
    row: &RevealRow,
    params: &CallbackParams,
    graph: Option<&crate::upstream::graph::GraphClient>,
) -> Result<token::IdClaims, Refusal> {
    let again = "Open the Reveal link again and sign in.";
    if let Some(error) = params.error.as_deref() {
        return Err(refuse(
            400,
            "Sign-in cancelled or refused",
            format!("Entra ID answered {error}. Nothing is shown."),
            again,
        ));
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return Err(refuse(
            400,
            "The sign-in came back incomplete",
            "Entra ID sent neither a code nor an error. Nothing is shown.".to_owned(),
            again,
        ));
    };
    let (Ok(sign_in), Some(nonce)) = (sign_in_app(app), row.nonce.as_deref()) else {
        return Err(refuse(
            503,
            "The sign-in is not configured",
            "The bot has no usable Entra app for the sign-in. Nothing is shown.".to_owned(),
            "Ask the bot's operator to check the [link] settings.",
        ));
    };
    let Some(pkce) = pkce_for(&sign_in.client_secret, state) else {
        return Err(refuse(
            503,
            "The sign-in is not configured",
            "Nothing is shown.".to_owned(),
            "Ask the bot's operator to check the [link] settings.",
        ));
    };
    let entra = &app.upstreams.entra;
    let tokens = entra
        .exchange_code(
            &sign_in.tenant,
            &sign_in.client_id,
            &sign_in.client_secret,
            code,
            &sign_in.redirect_uri,
            pkce.verifier(),
        )
        .await
        .map_err(|err| {
            refuse(
                502,
                "The sign-in could not be completed",
                format!("Entra ID did not redeem the sign-in: {err}. Nothing is shown."),
                again,
            )
        })?;
    let Some(id_token) = tokens.id_token.as_ref() else {
        return Err(refuse(
            502,
            "The sign-in could not be completed",
            "Entra ID sent no ID token. Nothing is shown.".to_owned(),
            again,
        ));
    };
    let claims = token::validate_id_token(
        entra,
        &sign_in.tenant,
        &sign_in.client_id,
        id_token.expose_secret(),
        nonce,
    )
    .await
    .map_err(|problem| match problem {
        TokenProblem::WrongTenant { actual } => refuse(
            403,
            "That account belongs to another organisation",
            format!("You signed in with an account of the tenant {actual}. Nothing is shown."),
            again,
        ),
        other => refuse(
            502,
            "The sign-in could not be verified",
            format!("{other}. Nothing is shown."),
            again,
        ),
    })?;
    if !row.binding.accepts(&claims) {
        return Err(refuse(
            403,
            "Someone else signed in",
            format!(
                "This Reveal link is for {}, but the sign-in was made with {}. Nothing is shown.",
                row.binding.label, claims.username
            ),
            "Open the link again and sign in with the account it was issued for (use a private browser window if another account is signed in).",
        ));
    }
    if row.purpose == purpose::HANDOVER && app.settings.link.check_directory_roles {
        let wanted: Vec<String> = app
            .settings
            .link
            .directory_roles
            .iter()
            .map(|id| directory::role_name(id))
            .collect();
        match directory::check(graph, &claims.oid, &app.settings.link.directory_roles).await {
            Ok(RoleCheck::Holds(_)) => {}
            Ok(RoleCheck::Missing) => {
                return Err(refuse(
                    403,
                    "That account is no Microsoft 365 admin",
                    format!(
                        "{} holds none of the admin roles that may receive the integration's secrets: it needs {}. Nothing is shown.",
                        claims.username,
                        wanted.join(" or ")
                    ),
                    "Ask your Global Administrator for one of these roles, then open the link again.",
                ));
            }
            Ok(RoleCheck::Skipped(reason)) => {
                return Err(refuse(
                    503,
                    "The admin role could not be checked",
                    format!("{reason}. Nothing is shown."),
                    "Ask the bot's operator to grant that permission; then open the link again.",
                ));
            }
            Err(err) => {
                return Err(refuse(
                    502,
                    "Microsoft Graph did not answer",
                    format!("The admin role could not be checked: {err}. Nothing is shown."),
                    "Open the link again in a minute.",
                ));
            }
        }
    }
    Ok(claims)
}

/// The page with the values: (name, whose, value) rows; never cached.
fn values_page(viewer: &str, values: &[(String, String, String)]) -> Response {
    let rows: String = values
        .iter()
        .map(|(name, whose, value)| {
            format!(
                "<tr><th style=\"text-align:left;padding:.4em 1em .4em 0;vertical-align:top\">{}<br><span style=\"font-weight:normal;color:#616161;font-size:.85em\">{}</span></th>\
                 <td><code style=\"word-break:break-all\">{}</code></td></tr>",
                escape_html(name),
                escape_html(whose),
                escape_html(value)
            )
        })
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Setup secrets - m365bot</title></head>\
         <body style=\"font-family:Segoe UI,system-ui,sans-serif;max-width:44em;margin:4em auto;padding:0 1em;color:#242424\">\
         <h1 style=\"color:#107c10;font-size:1.5em\">&#10003; The integration's secrets</h1>\
         <p id=\"message\">Signed in as {viewer}. These values are shown once: this page is not stored and the link no longer works. The bot keeps them encrypted and uses them itself.</p>\
         <table id=\"values\">{rows}</table>\
         <p id=\"next\"><strong>Copy what you need now, then close this tab. Who viewed them is recorded (not the values).</strong></p>\
         <p style=\"color:#616161;font-size:.85em\">m365bot setup</p></body></html>",
        viewer = escape_html(viewer),
    );
    let mut response = (StatusCode::OK, axum::response::Html(html)).into_response();
    no_store(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(oid: &str, username: &str) -> token::IdClaims {
        token::IdClaims {
            oid: oid.to_owned(),
            tid: "t".to_owned(),
            username: username.to_owned(),
            name: None,
            email: None,
            upn: Some(username.to_owned()),
        }
    }

    #[test]
    fn a_binding_accepts_only_its_person() {
        let by_oid = Binding {
            oid: Some("7C1E0F4A-0000-4000-8000-000000000001".to_owned()),
            login: Some("admin@contoso.com".to_owned()),
            label: "admin".to_owned(),
        };
        assert!(by_oid.accepts(&claims("7c1e0f4a-0000-4000-8000-000000000001", "x@y")));
        // With an object id known, the e-mail alone is not enough.
        assert!(!by_oid.accepts(&claims("other", "admin@contoso.com")));
        let by_login = Binding {
            oid: None,
            login: Some("admin@contoso.com".to_owned()),
            label: "admin".to_owned(),
        };
        assert!(by_login.accepts(&claims("any", "Admin@Contoso.com")));
        assert!(!by_login.accepts(&claims("any", "jane@contoso.com")));
        let nobody = Binding {
            oid: None,
            login: None,
            label: "?".to_owned(),
        };
        assert!(!nobody.accepts(&claims("any", "admin@contoso.com")));
    }
}
